//! `fluxy-bench`: throughput, latency, history-page and wake-up benchmarks of the native shell.
//!
//! Without a subcommand: runs the server in-process on a temporary SQLite file (WAL) and drives
//! it over real loopback sockets (ingest, fan-out, history pages). `wakeup` measures how long a
//! fresh server process takes to wake a room with 1k, 100k or 1M stored events, and the memory
//! it then holds; `gen-room` writes such a room into any SQLite file with the schema (also the
//! local D1 file of `wrangler dev`, for the Durable Object shell's wake-up benchmark). Not
//! tests: run them in release mode, e.g.
//! `nice cargo run --release -p fluxy-server --bin fluxy-bench -- wakeup`.

// The wake-up benchmark's modules live next to this file, in a directory without `main.rs`
// (so Cargo does not take it for another binary).
#[path = "wakebench/gen.rs"]
mod gen;
#[path = "wakebench/wakeup.rs"]
mod wakeup;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use fluxy_protocol::common::format_timestamp;
use fluxy_protocol::events::{MessageEvent, TimelineEvent};
use fluxy_server::{start, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Fluxy native shell benchmarks.
#[derive(Debug, Parser)]
#[command(
    about = "Fluxy native shell benchmarks",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// A benchmark other than the default throughput run.
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Options of the default throughput run.
    #[command(flatten)]
    throughput: Args,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Wake-up time and memory of a room with N stored events (fresh server process per wake).
    Wakeup(wakeup::WakeArgs),
    /// Write a room with N stored events into a SQLite file (native database or local D1).
    GenRoom(GenArgs),
    /// Serve a database until stdin closes (the measured process of `wakeup`).
    #[command(hide = true)]
    Serve(wakeup::ServeArgs),
}

/// Options of `gen-room`.
#[derive(Debug, clap::Args)]
struct GenArgs {
    /// SQLite file (created and migrated if needed; the room must not exist in it).
    #[arg(long)]
    db: PathBuf,
    /// Number of stored events.
    #[arg(long)]
    events: u64,
    /// Tenant id (inserted if absent).
    #[arg(long, default_value = wakeup::TENANT)]
    tenant: String,
    /// The tenant's JWT secret (used only if the tenant is inserted).
    #[arg(long, default_value = wakeup::JWT_SECRET)]
    jwt_secret: String,
    /// An API key for the tenant (inserted as its SHA-256 digest if absent).
    #[arg(long, default_value = wakeup::API_KEY)]
    api_key: String,
    /// Room id.
    #[arg(long, default_value = wakeup::ROOM)]
    room: String,
    /// Owner of the room (the user the benchmarks connect as).
    #[arg(long, default_value = wakeup::OWNER)]
    owner: String,
    /// Simulated time between two events, in ms (the last event is now).
    #[arg(long, default_value_t = 5_000)]
    step_ms: u64,
}

/// Options of the default throughput run.
#[derive(Debug, clap::Args)]
struct Args {
    /// Messages sent in the ingest benchmark (split over the ingest clients).
    #[arg(long, default_value_t = 50_000)]
    ingest_messages: usize,
    /// Clients in the ingest benchmark.
    #[arg(long, default_value_t = 10)]
    ingest_clients: usize,
    /// Messages broadcast in the fan-out benchmark.
    #[arg(long, default_value_t = 3_000)]
    fanout_messages: usize,
    /// Receiving connections in the fan-out benchmark.
    #[arg(long, default_value_t = 100)]
    fanout_clients: usize,
    /// Paced send rate (messages/s) for the latency run of the fan-out benchmark.
    #[arg(long, default_value_t = 2_000)]
    fanout_rate: usize,
    /// Rows of the large history room (the small one has 1,000).
    #[arg(long, default_value_t = 1_000_000)]
    history_rows: u64,
    /// SQLite synchronous mode: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Directory for the database (a temporary one by default).
    #[arg(long)]
    dir: Option<PathBuf>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Ctx {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl Ctx {
    async fn token(&self, user: &str) -> String {
        let v: Value = self
            .http
            .post(format!("{}/auth/token", self.base))
            .header("X-Fluxy-Api-Key", &self.api_key)
            .json(&json!({"userId": user, "roles": ["admin"], "ttlSeconds": 86400}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        v["token"].as_str().unwrap_or_default().to_owned()
    }

    async fn room(&self, token: &str, id: &str) {
        let r = self
            .http
            .post(format!("{}/rooms", self.base))
            .bearer_auth(token)
            .json(&json!({"id": id, "name": id}))
            .send()
            .await
            .expect("room");
        assert!(r.status().is_success(), "room {id}: {}", r.status());
    }

    async fn ws(&self, room: &str, token: &str) -> Ws {
        let url = format!(
            "{}/ws/room/{room}?token={token}&replay=off",
            self.base.replacen("http", "ws", 1)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        // Skip the connect sequence.
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                if t.contains("\"type\":\"subscription_succeeded\"") {
                    break;
                }
            }
        }
        ws
    }
}

fn num_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn ingest(ctx: &Ctx, clients: usize, total: usize) {
    let owner = ctx.token("ingest-owner").await;
    ctx.room(&owner, "ingest").await;
    let per = total / clients;
    let mut socks = Vec::new();
    for c in 0..clients {
        let t = ctx.token(&format!("ingest{c}")).await;
        socks.push(ctx.ws("ingest", &t).await);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, ws) in socks.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let writer = tokio::spawn(async move {
                for i in 0..per {
                    let m = format!(
                        r#"{{"type":"message","content":"c{c} m{i}","clientMessageId":"bench-{c}-{i:08}"}}"#
                    );
                    if sink.feed(Message::Text(m.into())).await.is_err() {
                        return;
                    }
                    if i % 64 == 63 && sink.flush().await.is_err() {
                        return;
                    }
                }
                let _ = sink.flush().await;
                // Keep the sink alive until the reader is done.
                tokio::time::sleep(Duration::from_secs(600)).await;
            });
            let mut acks = 0;
            while acks < per {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if t.starts_with("{\"type\":\"ack\"") {
                            acks += 1;
                        }
                    }
                    _ => break,
                }
            }
            writer.abort();
            acks
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap_or(0);
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "ingest: {clients} clients, {acked} acked messages in {dt:.2} s = {:.0} acked msg/s",
        acked as f64 / dt
    );
}

async fn fanout(ctx: &Ctx, receivers: usize, total: usize, rate: usize) {
    let owner = ctx.token("fan-owner").await;
    ctx.room(&owner, &format!("fanout{rate}")).await;
    let t0 = Arc::new(Instant::now());
    let mut recv_tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(receivers);
    for r in 0..receivers {
        let t = ctx.token(&format!("fan{r}")).await;
        let mut ws = ctx.ws(&format!("fanout{rate}"), &t).await;
        let t0 = t0.clone();
        let ready = ready_tx.clone();
        recv_tasks.push(tokio::spawn(async move {
            let _ = ready.send(()).await;
            drop(ready);
            let mut lat = Vec::with_capacity(total);
            let mut last_seq = 0u64;
            while lat.len() < total {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if !t.starts_with("{\"type\":\"message\"") {
                            continue;
                        }
                        let now = t0.elapsed().as_micros() as u64;
                        // Cheap field extraction: the client must not eat the server's CPU.
                        let seq = num_after(&t, "\"seq\":").unwrap_or(0);
                        assert!(seq > last_seq, "in order");
                        last_seq = seq;
                        let sent = num_after(&t, "\"content\":\"t").unwrap_or(now);
                        lat.push(now.saturating_sub(sent));
                    }
                    Some(Ok(_)) => {}
                    other => {
                        eprintln!("fanout receiver {r} stopped: {other:?}");
                        break;
                    }
                }
            }
            lat
        }));
    }
    drop(ready_tx);
    while ready_rx.recv().await.is_some() {}
    let st = ctx.token("fan-sender").await;
    let ws = ctx.ws(&format!("fanout{rate}"), &st).await;
    let (mut sink, mut stream) = ws.split();
    let start = Instant::now();
    let t0s = t0.clone();
    let sender = tokio::spawn(async move {
        // Paced at `rate` messages/s (0: as fast as possible) in 1 ms ticks.
        let per_tick = if rate == 0 {
            usize::MAX
        } else {
            (rate / 1000).max(1)
        };
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..total {
            if i % per_tick == 0 && rate != 0 {
                tick.tick().await;
            }
            let m = format!(
                r#"{{"type":"message","content":"t{}"}}"#,
                t0s.elapsed().as_micros()
            );
            if sink.send(Message::Text(m.into())).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let mut all = Vec::new();
    for t in recv_tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let dt = start.elapsed().as_secs_f64();
    sender.abort();
    drain.abort();
    all.sort_unstable();
    println!(
        "fanout: {total} messages to {receivers} connections, offered {} msg/s: {} deliveries in {dt:.2} s = {:.0} deliveries/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if rate == 0 { "max".to_owned() } else { rate.to_string() },
        all.len(),
        all.len() as f64 / dt,
        pct(&all, 0.50),
        pct(&all, 0.99),
        pct(&all, 1.0),
    );
}

fn seed_history(db: &std::path::Path, tenant: &str, room: &str, rows: u64) -> rusqlite::Result<()> {
    let mut c = rusqlite::Connection::open(db)?;
    let tx = c.transaction()?;
    {
        let now = 1_795_000_000_000u64;
        tx.execute(
            fluxy_room::sql::INSERT_ROOM,
            rusqlite::params![tenant, room, room, "group", "seed", now as i64],
        )?;
        let mut st = tx.prepare(fluxy_room::sql::INSERT_EVENT)?;
        for seq in 1..=rows {
            let e = TimelineEvent::Message(MessageEvent {
                seq,
                id: seq,
                room_id: room.into(),
                user_id: "seed".into(),
                sender_id: "seed".into(),
                content: format!("history message number {seq}"),
                created_at: format_timestamp(now + seq),
                parent_id: None,
                client_message_id: None,
                attachments: vec![],
                version: 1,
                streaming: false,
            });
            st.execute(rusqlite::params![
                tenant,
                room,
                seq as i64,
                "message",
                "seed",
                (now + seq) as i64,
                e.encode()
            ])?;
        }
    }
    tx.commit()
}

async fn history(ctx: &Ctx, token: &str, room: &str, rows: u64) {
    let mut report = Vec::new();
    for (label, query) in [
        ("newest page", "limit=50".to_owned()),
        (
            "middle page",
            format!("direction=forward&afterSeq={}&limit=50", rows / 2),
        ),
        (
            "oldest page",
            "direction=forward&afterSeq=0&limit=50".to_owned(),
        ),
    ] {
        let url = format!("{}/rooms/{room}/history?{query}", ctx.base);
        let n = 300;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = ctx
                .http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .expect("history");
            let body = r.bytes().await.expect("body");
            times.push(t.elapsed().as_micros() as u64);
            assert!(body.len() > 100);
        }
        times.sort_unstable();
        report.push(format!(
            "{label} p50 {:.2} ms p99 {:.2} ms",
            pct(&times, 0.5),
            pct(&times, 0.99)
        ));
    }
    println!(
        "history ({rows} stored events, 50 per page): {}",
        report.join("; ")
    );
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::GenRoom(a)) = cli.cmd {
        let spec = gen::GenSpec {
            tenant: a.tenant,
            jwt_secret: a.jwt_secret,
            api_key: a.api_key,
            room: a.room,
            owner: a.owner,
            events: a.events,
            step_ms: a.step_ms,
            seed: 0x5eed_0000 ^ a.events,
        };
        return match gen::generate(&a.db, &spec) {
            Ok(r) => {
                println!(
                    "{}",
                    json!({
                        "events": r.events, "messages": r.messages, "reactions": r.reactions,
                        "reads": r.reads, "idempotency": r.idempotency,
                        "agentEvents": r.agent_events, "openRuns": r.open_runs,
                        "openStreams": r.open_streams, "seconds": r.seconds,
                    })
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fluxy-bench gen-room: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fluxy-bench: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = match cli.cmd {
        Some(Cmd::Wakeup(a)) => rt.block_on(wakeup::run(a)),
        Some(Cmd::Serve(a)) => rt.block_on(wakeup::serve(a)),
        Some(Cmd::GenRoom(_)) => Ok(()),
        None => {
            rt.block_on(throughput(cli.throughput));
            Ok(())
        }
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxy-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The default run: ingest, fan-out and history pages against an in-process server.
async fn throughput(args: Args) {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fluxy-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let db = dir.join("bench.db");
    let config = ServerConfig {
        db_path: Some(db.clone()),
        rate_burst: 10_000_000,
        rate_per_second: 10_000_000,
        // The ingest clients pipeline thousands of frames each and one group commit can release
        // thousands of events at once: raise the slow-consumer bounds as the rate limits are
        // raised, so the benchmark measures throughput, not the queue policy.
        out_queue_frames: 1 << 20,
        out_queue_bytes: 1 << 32,
        synchronous_full: args.synchronous != "normal",
        ..ServerConfig::default()
    };
    println!(
        "fluxy-bench: SQLite WAL synchronous={}, db {}",
        args.synchronous,
        db.display()
    );
    let server = start(config).await.expect("server");
    let dev = server.dev.clone().expect("dev credentials");
    let ctx = Ctx {
        http: reqwest::Client::new(),
        base: dev.endpoint.clone(),
        api_key: dev.api_key.clone(),
    };
    ingest(&ctx, args.ingest_clients, args.ingest_messages).await;
    fanout(&ctx, args.fanout_clients, args.fanout_messages, 0).await;
    fanout(
        &ctx,
        args.fanout_clients,
        args.fanout_messages,
        args.fanout_rate,
    )
    .await;
    let t = Instant::now();
    let tenant = dev.tenant.clone();
    let small = {
        let (db, tenant) = (db.clone(), tenant.clone());
        tokio::task::spawn_blocking(move || seed_history(&db, &tenant, "hist-1k", 1_000))
    };
    small.await.expect("join").expect("seed 1k");
    let rows = args.history_rows;
    let big = {
        let (db, tenant) = (db.clone(), tenant.clone());
        tokio::task::spawn_blocking(move || seed_history(&db, &tenant, "hist-big", rows))
    };
    big.await.expect("join").expect("seed big");
    println!(
        "seeded {} + 1000 history rows in {:.1} s",
        rows,
        t.elapsed().as_secs_f64()
    );
    let admin = ctx.token("hist-admin").await;
    history(&ctx, &admin, "hist-1k", 1_000).await;
    history(&ctx, &admin, "hist-big", rows).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
