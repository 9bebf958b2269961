//! `fluxy-bench`: throughput, latency and history-page benchmarks of the native shell.
//!
//! Runs the server in-process on a temporary SQLite file (WAL) and drives it over real
//! loopback sockets; the `c10k` and `storm` modes run `fluxy-server` as a child process
//! instead (memory measurement, real restarts), and `worker-storm` drives an external
//! endpoint (the Durable Object shell under `wrangler dev`). `raw` runs the fan-out scenario
//! against a plain tokio-tungstenite broadcast server in the same process for comparison.
//! Every mode adds rows to one summary table printed at the end. Not a test: run it in
//! release mode, e.g. `nice cargo run --release -p fluxy-server --bin fluxy-bench`.

mod api;
mod c10k;
mod child;
mod raw;
mod storm;
// The wake-up benchmark's modules live in a sibling directory without `main.rs` (so Cargo does
// not take it for another binary).
#[path = "../wakebench/gen.rs"]
mod gen;
#[path = "../wakebench/wakeup.rs"]
mod wakeup;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use fluxy_protocol::common::format_timestamp;
use fluxy_protocol::events::{MessageEvent, TimelineEvent};
use fluxy_server::{start, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A benchmark mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Acked ingest throughput, 10 clients in one room.
    Ingest,
    /// Fan-out to 100 connections (saturated and paced) against fluxy-server.
    Fanout,
    /// The same fan-out against a raw tokio-tungstenite broadcast server, and the ratio.
    Raw,
    /// History pages in a 1,000-event and a large room.
    History,
    /// 10,000 connections held by a fluxy-server child process.
    C10k,
    /// Resume storm against a fluxy-server child process (restarted on the same file).
    Storm,
    /// Resume storm against an external endpoint (`--endpoint`, `--api-key`, `--restart-cmd`).
    WorkerStorm,
}

/// Errors of the benches that drive other processes.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// WebSocket.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Unexpected HTTP status.
    #[error("{0}: HTTP {1}")]
    Status(&'static str, u16),
    /// A field was missing.
    #[error("missing or malformed {0}")]
    Parse(&'static str),
    /// An `error` frame where none was expected.
    #[error("error frame: {0}")]
    Frame(String),
    /// The socket closed early.
    #[error("closed {0}")]
    Closed(&'static str),
    /// The server binary could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// A child process or task went away.
    #[error("child process or task ended unexpectedly")]
    ChildGone,
    /// The restart command failed.
    #[error("restart command failed: {0}")]
    Restart(String),
    /// Missing option.
    #[error("{0}")]
    Usage(&'static str),
}

/// One line of the summary table.
pub struct Row {
    bench: String,
    figure: String,
    detail: String,
}

impl Row {
    /// A row.
    pub fn new(bench: &str, figure: String, detail: String) -> Row {
        Row {
            bench: bench.to_owned(),
            figure,
            detail,
        }
    }
}

/// Fluxy native shell benchmarks.
#[derive(Debug, Parser)]
#[command(
    about = "Fluxy native shell benchmarks",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// A benchmark other than the `--modes` run.
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Options of the `--modes` run.
    #[command(flatten)]
    modes: Args,
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

/// Options of the `--modes` run.
#[derive(Debug, clap::Args)]
struct Args {
    /// Modes to run, in this order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ingest,fanout,raw,history"
    )]
    modes: Vec<Mode>,
    /// Connections of the c10k mode.
    #[arg(long, default_value_t = 10_000)]
    c10k_connections: usize,
    /// Connections per room in the c10k mode (every join broadcasts a presence frame to the
    /// whole room, so one room of n connections costs n²/2 presence frames).
    #[arg(long, default_value_t = 100)]
    c10k_room_size: usize,
    /// Distinct users in the c10k mode (connections share them round-robin).
    #[arg(long, default_value_t = 10)]
    c10k_users: usize,
    /// Handshakes in flight at once in the c10k mode.
    #[arg(long, default_value_t = 256)]
    c10k_concurrency: usize,
    /// Events committed before the restart in the storm modes.
    #[arg(long, default_value_t = 3_000)]
    storm_events: u64,
    /// Reconnecting clients in the native storm.
    #[arg(long, default_value_t = 1_000)]
    storm_clients: usize,
    /// Reconnecting clients in the worker storm.
    #[arg(long, default_value_t = 200)]
    worker_storm_clients: usize,
    /// Distinct users among the storm clients.
    #[arg(long, default_value_t = 10)]
    storm_users: usize,
    /// Connections filling the storm room (each paced by the advertised rate limit).
    #[arg(long, default_value_t = 10)]
    storm_fillers: usize,
    /// The fluxy-server binary for the c10k and storm modes (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// worker-storm: base URL of the server, e.g. `http://127.0.0.1:8797`.
    #[arg(long)]
    endpoint: Option<String>,
    /// worker-storm: tenant API key.
    #[arg(long)]
    api_key: Option<String>,
    /// worker-storm: shell command that restarts the server on the same storage and port and
    /// returns once it serves again (e.g. `scripts/worker-restart …`).
    #[arg(long)]
    restart_cmd: Option<String>,
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
    /// Saturated fan-out rounds, alternating fluxy-server and the raw server (with `raw`);
    /// the summary gives the median and range of each and the ratio of the medians.
    #[arg(long, default_value_t = 1)]
    fanout_rounds: usize,
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

/// WebSocket settings of the bench's clients and of the raw server: the buffer sizes of
/// fluxy-server (`ws.rs`: 8 KiB read, 16 KiB write threshold) instead of tungstenite's
/// 128 KiB, so the raw baseline is tuned like the server it is compared with, and the
/// clients do not burn the shared CPU zeroing 128 KiB per read.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
}

/// `connect_async` with [`ws_config`].
pub async fn connect_ws(
    url: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false).await
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
        let (mut ws, _) = crate::connect_ws(url).await.expect("ws");
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

/// A frame shaped like the delivered fluxy-server event `sample`, with `seq` as its `seq` and
/// `id` and `t{micros}` as its content: the raw sender sends these, so the raw server moves
/// the same bytes as fluxy-server and the clients parse the same layout.
fn shaped(sample: &str, seq: u64, micros: u128) -> String {
    let s = set_num_after(sample, "\"seq\":", &seq.to_string());
    let s = set_num_after(&s, "\"id\":", &seq.to_string());
    set_num_after(&s, "\"content\":\"t", &micros.to_string())
}

/// `text` with the digits after the first `key` replaced by `value` (unchanged without `key`).
fn set_num_after(text: &str, key: &str, value: &str) -> String {
    let Some(at) = text.find(key) else {
        return text.to_owned();
    };
    let start = at + key.len();
    let rest = &text[start..];
    let end = start
        + rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
    format!("{}{value}{}", &text[..start], &text[end..])
}

fn num_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// CPU time (user + system) of this process so far, in µs. Unlike wall-clock throughput it
/// is not inflated by other jobs on a shared machine.
fn cpu_us() -> u64 {
    // SAFETY: getrusage with a valid pointer to a zeroed local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Median of a few figures.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// "n runs: min–max" of a few figures.
fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{} runs: {min:.0}–{max:.0}", v.len())
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn ingest(ctx: &Ctx, clients: usize, total: usize) -> f64 {
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
    acked as f64 / dt
}

/// Where the fan-out benchmark connects.
enum Target<'a> {
    /// fluxy-server (in-process, SQLite file).
    Fluxy(&'a Ctx),
    /// The raw tokio-tungstenite broadcast server.
    Raw(std::net::SocketAddr),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Fluxy(_) => "fluxy",
            Target::Raw(_) => "raw",
        }
    }

    /// A connection subscribed to `room` (every later broadcast reaches it).
    async fn join(&self, room: &str, who: &str) -> Ws {
        match self {
            Target::Fluxy(ctx) => {
                let t = ctx.token(who).await;
                ctx.ws(room, &t).await
            }
            Target::Raw(addr) => {
                let (mut ws, _) = crate::connect_ws(format!("ws://{addr}/"))
                    .await
                    .expect("raw ws");
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(&m, Message::Text(t) if t.as_str() == raw::READY) {
                        break;
                    }
                }
                ws
            }
        }
    }
}

/// Figures of one fan-out run.
#[derive(Debug, Clone)]
struct Fanout {
    /// Length of the first delivered `message` frame, in bytes.
    frame_len: usize,
    /// The first delivered `message` frame.
    sample: String,
    /// CPU time of the whole process (server and clients) per delivery, in ns.
    cpu_ns_per_delivery: f64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// `shape`: send frames shaped like this delivered fluxy-server event (see [`shaped`]) instead
/// of plain `message` frames, so that the raw server forwards frames with the same bytes and
/// layout as the events fluxy-server delivers and the clients do the same work for both.
async fn fanout(
    target: &Target<'_>,
    receivers: usize,
    total: usize,
    rate: usize,
    shape: Option<&str>,
) -> Fanout {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let room = format!("fanout{rate}-{run}");
    if let Target::Fluxy(ctx) = target {
        let owner = ctx.token("fan-owner").await;
        ctx.room(&owner, &room).await;
    }
    let t0 = Arc::new(Instant::now());
    let mut recv_tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(receivers);
    for r in 0..receivers {
        let mut ws = target.join(&room, &format!("fan{r}")).await;
        let t0 = t0.clone();
        let ready = ready_tx.clone();
        recv_tasks.push(tokio::spawn(async move {
            let _ = ready.send(()).await;
            drop(ready);
            let mut lat = Vec::with_capacity(total);
            let mut sample = String::new();
            let mut last_seq = 0u64;
            while lat.len() < total {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if !t.starts_with("{\"type\":\"message\"") {
                            continue;
                        }
                        let now = t0.elapsed().as_micros() as u64;
                        if sample.is_empty() {
                            sample = t.as_str().to_owned();
                        }
                        // Cheap field extraction: the client must not eat the server's CPU.
                        // The same extraction and order check for both targets (equal client
                        // work): the raw sender's frames carry the same fields.
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
            (lat, sample)
        }));
    }
    drop(ready_tx);
    while ready_rx.recv().await.is_some() {}
    let ws = target.join(&room, "fan-sender").await;
    let (mut sink, mut stream) = ws.split();
    let start = Instant::now();
    let cpu0 = cpu_us();
    let t0s = t0.clone();
    let shape = shape.map(str::to_owned);
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
            let micros = t0s.elapsed().as_micros();
            let m = match &shape {
                Some(s) => shaped(s, i as u64 + 1, micros),
                None => format!(r#"{{"type":"message","content":"t{micros}"}}"#),
            };
            if sink.send(Message::Text(m.into())).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let mut all = Vec::new();
    let mut sample = String::new();
    for t in recv_tasks {
        let (lat, s) = t.await.unwrap_or_default();
        all.extend(lat);
        if s.len() > sample.len() {
            sample = s;
        }
    }
    let dt = start.elapsed().as_secs_f64();
    let cpu = cpu_us().saturating_sub(cpu0);
    sender.abort();
    drain.abort();
    all.sort_unstable();
    let f = Fanout {
        frame_len: sample.len(),
        sample,
        cpu_ns_per_delivery: cpu as f64 * 1000.0 / all.len().max(1) as f64,
        deliveries_per_s: all.len() as f64 / dt,
        p50_ms: pct(&all, 0.50),
        p99_ms: pct(&all, 0.99),
        max_ms: pct(&all, 1.0),
    };
    println!(
        "fanout {}: {total} messages ({} B frames) to {receivers} connections, offered {} msg/s: {} deliveries in {dt:.2} s = {:.0} deliveries/s, {:.0} ns CPU/delivery; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        target.name(),
        f.frame_len,
        if rate == 0 { "max".to_owned() } else { rate.to_string() },
        all.len(),
        f.deliveries_per_s,
        f.cpu_ns_per_delivery,
        f.p50_ms,
        f.p99_ms,
        f.max_ms,
    );
    f
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

async fn history(ctx: &Ctx, token: &str, room: &str, rows: u64) -> String {
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
    report.join("; ")
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
        None => return rt.block_on(modes_run(cli.modes)),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxy-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `--modes` run: one summary table.
async fn modes_run(args: Args) -> std::process::ExitCode {
    let mut rows = Vec::new();
    let mut failed = false;
    let in_process = args
        .modes
        .iter()
        .any(|m| matches!(m, Mode::Ingest | Mode::Fanout | Mode::Raw | Mode::History));
    if in_process {
        in_process_benches(&args, &mut rows).await;
    }
    for mode in &args.modes {
        let r = match mode {
            Mode::C10k => c10k_mode(&args).await,
            Mode::Storm => storm_mode(&args).await,
            Mode::WorkerStorm => worker_storm_mode(&args).await,
            _ => continue,
        };
        match r {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                eprintln!("fluxy-bench {mode:?}: {e}");
                rows.push(Row::new(
                    &format!("{mode:?}"),
                    "failed".into(),
                    e.to_string(),
                ));
                failed = true;
            }
        }
    }
    println!("\n| benchmark | figure | detail |\n|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.bench, r.figure, r.detail);
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// The benches against the in-process server (ingest, fan-out, raw comparison, history).
async fn in_process_benches(args: &Args, rows: &mut Vec<Row>) {
    let has = |m: Mode| args.modes.contains(&m);
    let dir = bench_dir(args);
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
    if has(Mode::Ingest) {
        let r = ingest(&ctx, args.ingest_clients, args.ingest_messages).await;
        rows.push(Row::new(
            &format!("ingest, {} clients, one room", args.ingest_clients),
            format!("{r:.0} acked msg/s"),
            format!("synchronous={}", args.synchronous),
        ));
    }
    if has(Mode::Fanout) || has(Mode::Raw) {
        let (n, m, rate) = (args.fanout_clients, args.fanout_messages, args.fanout_rate);
        let fluxy = Target::Fluxy(&ctx);
        let raw_server = if has(Mode::Raw) {
            Some(raw::start().await.expect("raw server"))
        } else {
            None
        };
        let raw_target = raw_server.as_ref().map(|r| Target::Raw(r.addr));
        let (mut fl, mut rw) = (Vec::new(), Vec::new());
        let (mut fl_cpu, mut rw_cpu) = (Vec::new(), Vec::new());
        let (mut frame_len, mut sample) = (0, String::new());
        for _ in 0..args.fanout_rounds.max(1) {
            let f = fanout(&fluxy, n, m, 0, None).await;
            frame_len = f.frame_len;
            sample = f.sample;
            fl.push(f.deliveries_per_s);
            fl_cpu.push(f.cpu_ns_per_delivery);
            if let Some(t) = &raw_target {
                // Same bytes and layout on the wire: frames shaped like fluxy's events.
                let r = fanout(t, n, m, 0, Some(&sample)).await;
                rw.push(r.deliveries_per_s);
                rw_cpu.push(r.cpu_ns_per_delivery);
            }
        }
        let paced = fanout(&fluxy, n, m, rate, None).await;
        rows.push(Row::new(
            &format!("fan-out fluxy, {n} connections, saturated"),
            format!("{:.0} deliveries/s", median(&fl)),
            format!(
                "{m} messages, {frame_len} B frames; {}; {:.0} ns CPU/delivery (process); SQLite file, synchronous={}",
                spread(&fl),
                median(&fl_cpu),
                args.synchronous
            ),
        ));
        rows.push(Row::new(
            &format!("fan-out fluxy, paced {rate} msg/s"),
            format!("{:.0} deliveries/s", paced.deliveries_per_s),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                paced.p50_ms, paced.p99_ms, paced.max_ms
            ),
        ));
        if let Some(t) = &raw_target {
            let rpaced = fanout(t, n, m, rate, Some(&sample)).await;
            rows.push(Row::new(
                &format!("fan-out raw tungstenite, {n} connections, saturated"),
                format!("{:.0} deliveries/s", median(&rw)),
                format!(
                    "{}; {:.0} ns CPU/delivery (process); no persistence, no acks, no validation; frames shaped like fluxy's ({frame_len} B)",
                    spread(&rw),
                    median(&rw_cpu)
                ),
            ));
            rows.push(Row::new(
                &format!("fan-out raw tungstenite, paced {rate} msg/s"),
                format!("{:.0} deliveries/s", rpaced.deliveries_per_s),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    rpaced.p50_ms, rpaced.p99_ms, rpaced.max_ms
                ),
            ));
            let per_round: Vec<String> = fl
                .iter()
                .zip(&rw)
                .map(|(f, r)| format!("{:.0} %", 100.0 * f / r.max(1.0)))
                .collect();
            rows.push(Row::new(
                "fan-out ratio fluxy / raw, saturated",
                format!("{:.0} %", 100.0 * median(&fl) / median(&rw).max(1.0)),
                format!(
                    "ratio of medians; per round {}; target >= 70 % with persistence on",
                    per_round.join(", ")
                ),
            ));
            rows.push(Row::new(
                "fan-out CPU ratio raw / fluxy, saturated",
                format!("{:.0} %", 100.0 * median(&rw_cpu) / median(&fl_cpu).max(1.0)),
                "CPU per delivery of the whole process (clients included), medians; insensitive to other jobs on the machine".into(),
            ));
        }
        drop(raw_server);
    }
    if has(Mode::History) {
        let t = Instant::now();
        let tenant = dev.tenant.clone();
        let small = {
            let (db, tenant) = (db.clone(), tenant.clone());
            tokio::task::spawn_blocking(move || seed_history(&db, &tenant, "hist-1k", 1_000))
        };
        small.await.expect("join").expect("seed 1k");
        let n = args.history_rows;
        let big = {
            let (db, tenant) = (db.clone(), tenant.clone());
            tokio::task::spawn_blocking(move || seed_history(&db, &tenant, "hist-big", n))
        };
        big.await.expect("join").expect("seed big");
        println!(
            "seeded {} + 1000 history rows in {:.1} s",
            n,
            t.elapsed().as_secs_f64()
        );
        let admin = ctx.token("hist-admin").await;
        for (room, rows_in) in [("hist-1k", 1_000), ("hist-big", n)] {
            let line = history(&ctx, &admin, room, rows_in).await;
            rows.push(Row::new(
                &format!("history page, {rows_in} events"),
                String::new(),
                line,
            ));
        }
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory for this run's databases.
fn bench_dir(args: &Args) -> PathBuf {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fluxy-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("fluxy-bench: {}: {e}", dir.display());
    }
    dir
}

/// How to start the fluxy-server child of the c10k and storm modes.
fn server_spec(args: &Args, name: &str, extra: &[&str]) -> Result<child::ServerSpec, BenchError> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("fluxy-server"),
    };
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fluxy-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let db = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut a: Vec<String> = vec!["--synchronous".into(), args.synchronous.clone()];
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    Ok(child::ServerSpec {
        bin,
        db,
        args: a,
        log: dir.join(format!("{name}.log")),
    })
}

async fn c10k_mode(args: &Args) -> Result<Vec<Row>, BenchError> {
    // Two descriptors per connection (client + server end) if the server ran in-process; it
    // is a child here, which inherits the raised limit.
    let want = (args.c10k_connections as u64) * 2 + 1024;
    let nofile = child::raise_nofile(want)?;
    println!("c10k: RLIMIT_NOFILE {nofile}");
    if nofile < args.c10k_connections as u64 + 256 {
        return Err(BenchError::Usage(
            "RLIMIT_NOFILE hard limit too low for c10k",
        ));
    }
    // Idle timeout raised so a slow run is not cut by heartbeat_timeout (the clients send
    // no heartbeats).
    let spec = server_spec(args, "c10k", &["--idle-timeout-ms", "600000"])?;
    let server = spec.spawn("127.0.0.1:0").await?;
    let o = c10k::C10kOptions {
        connections: args.c10k_connections,
        room_size: args.c10k_room_size,
        users: args.c10k_users,
        concurrency: args.c10k_concurrency,
    };
    let r = c10k::run(&server, &o).await;
    server.stop().await?;
    r
}

async fn storm_mode(args: &Args) -> Result<Vec<Row>, BenchError> {
    child::raise_nofile(args.storm_clients as u64 * 2 + 1024)?;
    let spec = server_spec(args, "storm", &[])?;
    let server = spec.spawn("127.0.0.1:0").await?;
    let o = storm::StormOptions {
        events: args.storm_events,
        clients: args.storm_clients,
        users: args.storm_users,
        fillers: args.storm_fillers,
        label: "native".into(),
    };
    let api = api::Api::new(&server.dev.endpoint, &server.dev.api_key);
    let filled = storm::fill(&api, &o).await?;
    let listen = server.dev.endpoint.trim_start_matches("http://").to_owned();
    let t = Instant::now();
    server.stop().await?;
    let server = spec.spawn(&listen).await?;
    println!(
        "storm native: restarted on {listen} in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    // The tokens minted before the restart stay valid (same tenant secret in the file).
    let api = api::Api::new(&server.dev.endpoint, &server.dev.api_key);
    let r = storm::storm(&api, &filled, &o).await;
    server.stop().await?;
    r
}

async fn worker_storm_mode(args: &Args) -> Result<Vec<Row>, BenchError> {
    let endpoint = args
        .endpoint
        .as_deref()
        .ok_or(BenchError::Usage("worker-storm needs --endpoint"))?;
    let key = args
        .api_key
        .as_deref()
        .ok_or(BenchError::Usage("worker-storm needs --api-key"))?;
    let cmd = args
        .restart_cmd
        .as_deref()
        .ok_or(BenchError::Usage("worker-storm needs --restart-cmd"))?;
    child::raise_nofile(args.worker_storm_clients as u64 * 2 + 1024)?;
    let o = storm::StormOptions {
        events: args.storm_events,
        clients: args.worker_storm_clients,
        users: args.storm_users,
        fillers: args.storm_fillers,
        label: "worker".into(),
    };
    let api = api::Api::new(endpoint, key);
    let filled = storm::fill(&api, &o).await?;
    let t = Instant::now();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await?;
    if !status.success() {
        return Err(BenchError::Restart(format!("{cmd}: {status}")));
    }
    println!(
        "storm worker: restart command done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Wait until the endpoint answers again.
    for _ in 0..600 {
        if let Ok(r) = api.http.get(format!("{}/health", api.base)).send().await {
            if r.status().is_success() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    storm::storm(&api, &filled, &o).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaped_frames_keep_the_sample_layout() {
        let sample = r#"{"type":"message","seq":7,"id":7,"roomId":"r","content":"t123","x":1}"#;
        let f = shaped(sample, 12, 98_765);
        assert_eq!(
            f,
            r#"{"type":"message","seq":12,"id":12,"roomId":"r","content":"t98765","x":1}"#
        );
        assert_eq!(num_after(&f, "\"seq\":"), Some(12));
        assert_eq!(num_after(&f, "\"content\":\"t"), Some(98_765));
        assert_eq!(set_num_after("{}", "\"seq\":", "1"), "{}");
    }
}
