//! `wakeup`: how long the native shell takes to wake a room with N stored events, and how much
//! memory the woken room holds.
//!
//! For each N the room is generated once (`native-N.db` under `--dir`, reused while it holds
//! the same room) by [`crate::gen::generate`]. Each repetition then starts a fresh server
//! process on that file (this binary's hidden `serve` subcommand, so nothing else lives in the
//! measured process), gets a token over HTTP, reads the process's `VmRSS`, opens a WebSocket to
//! the room — whose engine is therefore not loaded — and times the `welcome` frame and the
//! `history` snapshot from the start of the connect. `VmRSS` and `VmHWM` are read again once the
//! snapshot has arrived. The OS page cache is warm (the file was just written or read), so the
//! times are CPU and SQLite cost, not disk latency.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::gen::{generate, GenSpec};

/// Tenant, key, secret and users of the generated rooms (private to the benchmark files).
pub const TENANT: &str = "wakebench";
/// API key of [`TENANT`].
pub const API_KEY: &str = "fxk_wakebench_0123456789abcdef";
/// JWT secret of [`TENANT`].
pub const JWT_SECRET: &str = "wakebench-secret-0123456789abcdef0123456789";
/// The room's owner; the benchmark connects as this user.
pub const OWNER: &str = "wake-owner";
/// The room id.
pub const ROOM: &str = "wake";

/// Options of `wakeup`.
#[derive(Debug, clap::Args)]
pub struct WakeArgs {
    /// Stored events per room, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    pub events: Vec<u64>,
    /// Wake-ups per room size (a fresh server process each).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Directory of the generated databases.
    #[arg(long, default_value = "target/wakebench")]
    pub dir: PathBuf,
    /// Simulated time between two generated events, in ms.
    #[arg(long, default_value_t = 5_000)]
    pub step_ms: u64,
    /// Regenerate the databases even if they exist.
    #[arg(long)]
    pub regen: bool,
    /// Delete each database after its measurements.
    #[arg(long)]
    pub delete: bool,
}

/// Options of the hidden `serve` subcommand: the measured server process.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// SQLite file.
    #[arg(long)]
    pub db: PathBuf,
}

/// One wake-up.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Connect start to the WebSocket handshake's end, ms.
    open_ms: f64,
    /// Connect start to `welcome`, ms.
    welcome_ms: f64,
    /// Connect start to `history`, ms.
    history_ms: f64,
    /// VmRSS after the snapshot minus before the connect, MiB.
    rss_delta: f64,
    /// VmRSS after the snapshot, MiB.
    rss_after: f64,
    /// VmHWM (peak RSS) after the snapshot minus VmRSS before the connect, MiB.
    peak_delta: f64,
}

/// `kB` value of a `/proc/<pid>/status` field, in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The load average line, for the record.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Run the server on `args.db` until stdin closes; print `listening ADDR` once it serves.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = fluxy_server::ServerConfig {
        db_path: Some(args.db),
        dev: false,
        // The measured wake-up is the first load; no unload in between.
        room_idle_unload_ms: 0,
        ..fluxy_server::ServerConfig::default()
    };
    let server = fluxy_server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("listening {}", server.local_addr);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // The parent closes our stdin to stop us.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while matches!(std::io::stdin().read_line(&mut sink), Ok(n) if n > 0) {}
    })
    .await;
    server.shutdown().await;
    Ok(())
}

/// A running `serve` child; killed on drop.
struct ServerProc {
    child: Child,
    addr: String,
}

impl ServerProc {
    fn start(db: &Path) -> Result<ServerProc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--db")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn server: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("server output: {e}"))?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected server output {line:?}"))?
            .to_owned();
        Ok(ServerProc { child, addr })
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `db` already holds the benchmark room with exactly `events` events.
fn holds_room(db: &Path, events: u64) -> bool {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    c.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = ?1 AND room_id = ?2",
        rusqlite::params![TENANT, ROOM],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| u64::try_from(n).is_ok_and(|n| n == events))
}

fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// The spec of the benchmark room with `events` events.
pub fn spec(events: u64, step_ms: u64) -> GenSpec {
    GenSpec {
        tenant: TENANT.into(),
        jwt_secret: JWT_SECRET.into(),
        api_key: API_KEY.into(),
        room: ROOM.into(),
        owner: OWNER.into(),
        events,
        step_ms,
        seed: 0x5eed_0000 ^ events,
    }
}

async fn wake_once(db: &Path) -> Result<Sample, String> {
    let server = ServerProc::start(db)?;
    let pid = server.child.id();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let v: Value = http
        .post(format!("{base}/auth/token"))
        .header("X-Fluxy-Api-Key", API_KEY)
        .json(&json!({"userId": OWNER, "ttlSeconds": 3600}))
        .send()
        .await
        .map_err(|e| format!("token: {e}"))?
        .json()
        .await
        .map_err(|e| format!("token json: {e}"))?;
    let token = v["token"]
        .as_str()
        .ok_or_else(|| format!("no token in {v}"))?
        .to_owned();
    // Let the process settle (allocator, blocking pool) before the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = proc_status_mib(pid, "VmRSS:").ok_or("no VmRSS")?;
    let url = format!("ws://{}/ws/room/{ROOM}?token={token}", server.addr);
    let t0 = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut welcome_ms = None;
    let history_ms = loop {
        let m = tokio::time::timeout(Duration::from_secs(600), ws.next())
            .await
            .map_err(|_| "no history within 600 s".to_owned())?;
        match m {
            Some(Ok(Message::Text(t))) => {
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if t.starts_with("{\"type\":\"welcome\"") {
                    welcome_ms = Some(ms);
                } else if t.starts_with("{\"type\":\"history\"") {
                    break ms;
                } else if t.starts_with("{\"type\":\"error\"") {
                    return Err(format!("error frame: {t}"));
                }
            }
            Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("ws: {e}")),
            None => return Err("connection ended".into()),
        }
    };
    let rss_after = proc_status_mib(pid, "VmRSS:").ok_or("no VmRSS")?;
    let hwm = proc_status_mib(pid, "VmHWM:").ok_or("no VmHWM")?;
    let _ = ws.close(None).await;
    drop(server);
    Ok(Sample {
        open_ms,
        welcome_ms: welcome_ms.ok_or("history before welcome")?,
        history_ms,
        rss_delta: rss_after - rss_before,
        rss_after,
        peak_delta: hwm - rss_before,
    })
}

/// Median, min and max of `xs`.
fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let med = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    (med, xs[0], xs[n - 1])
}

/// Run the native wake-up benchmark.
pub async fn run(args: WakeArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    println!(
        "wakeup (native): {} repetitions per size, fresh fluxy-server process each; load average {}",
        args.reps,
        loadavg()
    );
    let mut rows = Vec::new();
    for &n in &args.events {
        let db = args.dir.join(format!("native-{n}.db"));
        if args.regen || !holds_room(&db, n) {
            remove_db(&db);
            let (path, s) = (db.clone(), spec(n, args.step_ms));
            let r = tokio::task::spawn_blocking(move || generate(&path, &s))
                .await
                .map_err(|e| format!("generator: {e}"))?
                .map_err(|e| format!("generate {n}: {e}"))?;
            println!(
                "generated {n} events in {:.1} s: {} messages, {} reactions, {} read positions, {} idempotency keys, {} agent events, {} open runs, {} open streams; {:.0} MiB",
                r.seconds,
                r.messages,
                r.reactions,
                r.reads,
                r.idempotency,
                r.agent_events,
                r.open_runs,
                r.open_streams,
                std::fs::metadata(&db).map_or(0.0, |m| m.len() as f64 / 1048576.0),
            );
        } else {
            println!("reusing {}", db.display());
        }
        let mut samples = Vec::new();
        for rep in 0..args.reps {
            let s = wake_once(&db)
                .await
                .map_err(|e| format!("{n} events: {e}"))?;
            println!(
                "  {n} events, rep {}: open {:.1} ms, welcome {:.1} ms, history {:.1} ms, RSS {:+.1} MiB (to {:.1} MiB), peak {:+.1} MiB",
                rep + 1,
                s.open_ms,
                s.welcome_ms,
                s.history_ms,
                s.rss_delta,
                s.rss_after,
                s.peak_delta
            );
            samples.push(s);
        }
        if args.delete {
            remove_db(&db);
        }
        rows.push((n, samples));
    }
    println!("load average {}", loadavg());
    println!();
    println!("| stored events | to `welcome` ms, median (min–max) | to `history` ms, median (min–max) | RSS after − before wake, MiB | peak RSS − before, MiB |");
    println!("|---:|---:|---:|---:|---:|");
    let mut first: Option<(u64, f64, f64)> = None;
    for (n, samples) in &rows {
        let col = |f: fn(&Sample) -> f64| stats(samples.iter().map(f).collect());
        let (w, wl, wh) = col(|s| s.welcome_ms);
        let (h, hl, hh) = col(|s| s.history_ms);
        let (r, rl, rh) = col(|s| s.rss_delta);
        let (p, pl, ph) = col(|s| s.peak_delta);
        println!(
            "| {n} | {w:.1} ({wl:.1}–{wh:.1}) | {h:.1} ({hl:.1}–{hh:.1}) | {r:.1} ({rl:.1}–{rh:.1}) | {p:.1} ({pl:.1}–{ph:.1}) |"
        );
        match first {
            None => first = Some((*n, w, h)),
            Some((n0, w0, h0)) if w0 > 0.0 && h0 > 0.0 => println!(
                "  ({n} vs {n0} events: welcome {:.2}×, history {:.2}×)",
                w / w0,
                h / h0
            ),
            Some(_) => {}
        }
    }
    Ok(())
}
