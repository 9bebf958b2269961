//! `fluxy-server`: the native Fluxy reference server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use fluxy_server::{start, ServerConfig, FAULTS};

/// Fluxy reference server (native shell: tokio, axum, SQLite).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// SQLite database file (in-memory when absent).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Create two development tenants and print their credentials as one JSON line.
    #[arg(long)]
    dev: bool,
    /// Close connections idle for this long (4000 heartbeat_timeout).
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Per-connection token-bucket capacity.
    #[arg(long, default_value_t = 200)]
    rate_burst: u32,
    /// Per-connection token-bucket refill per second.
    #[arg(long, default_value_t = 100)]
    rate_per_second: u32,
    /// Number of recent events `resume` can replay.
    #[arg(long, default_value_t = 1000)]
    resume_window: u32,
    /// SQLite `synchronous` for the WAL: full (durable across power loss) or normal.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    synchronous: String,
    /// Outgoing queue bound per WebSocket connection, in frames; a connection that falls this
    /// far behind is closed with 1011 (slow consumer).
    #[arg(long, default_value_t = 4096)]
    out_queue_frames: usize,
    /// Outgoing queue bound per WebSocket connection, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    out_queue_bytes: usize,
    /// Close with 4010 after this many invalid frames in a row (0 disables).
    #[arg(long, default_value_t = 100)]
    max_invalid_frames: u32,
    /// Close with 4008 after this many rate-limited frames within one bucket period (0 disables).
    #[arg(long, default_value_t = 200)]
    max_rate_rejects: u32,
    /// POST /auth/token rate limit per API key: bucket capacity (0 disables).
    #[arg(long, default_value_t = 1000)]
    http_token_burst: u32,
    /// POST /auth/token rate limit per API key: refill per second.
    #[arg(long, default_value_t = 100)]
    http_token_per_second: u32,
    /// POST /messages rate limit per user: bucket capacity (0 disables).
    #[arg(long, default_value_t = 500)]
    http_post_burst: u32,
    /// POST /messages rate limit per user: refill per second.
    #[arg(long, default_value_t = 100)]
    http_post_per_second: u32,
    /// Unload a room idle (no connection, listener, waiter or pending write) for this long, in
    /// ms; the next request reloads it from the database (0 never unloads).
    #[arg(long, default_value_t = 60_000)]
    room_idle_unload_ms: u64,
    /// Bound of each room's inbound queue, in messages (senders wait for space).
    #[arg(long, default_value_t = 4096)]
    room_inbox: usize,
    /// Bound of each SSE listener's queue, in events; a listener that falls this far behind is
    /// dropped (its stream ends; the client resumes with Last-Event-ID).
    #[arg(long, default_value_t = 4096)]
    sse_queue: usize,
    /// Enable a deliberate fault (test only; repeatable). `--list-faults` shows them.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Print the fault names and exit.
    #[arg(long)]
    list_faults: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.list_faults {
        for (name, what) in FAULTS {
            println!("{name}\t{what}");
        }
        return std::process::ExitCode::SUCCESS;
    }
    let config = ServerConfig {
        listen: cli.listen,
        db_path: cli.db,
        dev: cli.dev,
        idle_timeout_ms: cli.idle_timeout_ms,
        rate_burst: cli.rate_burst,
        rate_per_second: cli.rate_per_second,
        resume_window: cli.resume_window,
        faults: cli.faults,
        synchronous_full: cli.synchronous == "full",
        out_queue_frames: cli.out_queue_frames,
        out_queue_bytes: cli.out_queue_bytes,
        max_invalid_frames: cli.max_invalid_frames,
        max_rate_rejects: cli.max_rate_rejects,
        http_token_burst: cli.http_token_burst,
        http_token_per_second: cli.http_token_per_second,
        http_post_burst: cli.http_post_burst,
        http_post_per_second: cli.http_post_per_second,
        room_idle_unload_ms: cli.room_idle_unload_ms,
        room_inbox: cli.room_inbox,
        sse_queue: cli.sse_queue,
        handshake_hook: None,
    };
    let server = match start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fluxy-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match &server.dev {
        Some(dev) => match serde_json::to_string(dev) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("fluxy-server: {e}"),
        },
        None => eprintln!("fluxy-server: listening on http://{}", server.local_addr),
    }
    shutdown_signal().await;
    eprintln!("fluxy-server: shutting down");
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
