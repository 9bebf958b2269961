//! # fluxy-server
//!
//! Native shell of the Fluxy reference server: tokio + axum (HTTP, WebSocket, SSE,
//! long-polling) and SQLite (rusqlite, WAL) around the I/O-free room engine `fluxy-room`.
//! One task per room owns that room's engine, as one Durable Object per room does at the edge.
//!
//! Embed it with [`start`]; the `fluxy-server` binary is a thin CLI over the same function.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub mod db;
mod http;
mod limiter;
mod rooms;
mod ws;

pub use fluxy_room::faults::FAULTS;
use fluxy_room::Faults;

/// Server configuration (the CLI flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// SQLite file; `None` for an in-memory database.
    pub db_path: Option<PathBuf>,
    /// Create two development tenants with API keys.
    pub dev: bool,
    /// Idle timeout before close 4000, in ms.
    pub idle_timeout_ms: u64,
    /// Token-bucket capacity per connection.
    pub rate_burst: u32,
    /// Token-bucket refill per second.
    pub rate_per_second: u32,
    /// Events `resume` can replay.
    pub resume_window: u32,
    /// Deliberate faults, by name (see [`FAULTS`]).
    pub faults: Vec<String>,
    /// `PRAGMA synchronous=FULL` (true, the default) or `NORMAL`.
    pub synchronous_full: bool,
    /// Outgoing queue bound per WebSocket connection, in frames. A connection whose queue is
    /// full is closed with 1011 rather than skipping an event (`[FX-ORD-2]`).
    pub out_queue_frames: usize,
    /// Outgoing queue bound per WebSocket connection, in bytes of queued frame text.
    pub out_queue_bytes: usize,
    /// Close a connection after this many invalid frames in a row with 4010 (0 disables).
    pub max_invalid_frames: u32,
    /// Close a connection after this many rate-limited frames within one bucket period with
    /// 4008 (0 disables).
    pub max_rate_rejects: u32,
    /// `POST /auth/token` token bucket per API key: capacity (0 disables the limit).
    pub http_token_burst: u32,
    /// `POST /auth/token` token bucket per API key: refill per second.
    pub http_token_per_second: u32,
    /// `POST /messages` token bucket per (tenant, user): capacity (0 disables the limit).
    pub http_post_burst: u32,
    /// `POST /messages` token bucket per (tenant, user): refill per second.
    pub http_post_per_second: u32,
    /// Unload a room (stop its task, drop its engine) after it has been idle this long, in
    /// ms: no WebSocket connection, SSE listener, long-poll waiter, pending `POST /messages`
    /// or uncommitted batch. The next request reloads it from storage. 0 never unloads.
    pub room_idle_unload_ms: u64,
    /// Bound of each room's inbound queue, in messages (at least 1). WebSocket readers and
    /// HTTP handlers wait for space (backpressure); nothing is dropped.
    pub room_inbox: usize,
    /// Bound of each SSE listener's queue, in events (at least 1). A listener whose queue is
    /// full is dropped: its stream ends after what is queued, and the client resumes with
    /// `Last-Event-ID`.
    pub sse_queue: usize,
    /// Test hook (`None` in normal use): awaited by every WebSocket handshake after it read
    /// the user's membership and before the room registers the connection.
    #[doc(hidden)]
    pub handshake_hook: Option<HandshakeHook>,
}

/// A test hook awaited by a WebSocket handshake between its membership read and the room's
/// `Open`, given the user id: lets a test run a kick or role change exactly there.
#[doc(hidden)]
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct HandshakeHook(
    pub  Arc<
        dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for HandshakeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeHook")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: None,
            dev: true,
            idle_timeout_ms: 60_000,
            rate_burst: 200,
            rate_per_second: 100,
            resume_window: 1000,
            faults: Vec::new(),
            synchronous_full: true,
            out_queue_frames: 4096,
            out_queue_bytes: 8 << 20,
            max_invalid_frames: 100,
            max_rate_rejects: 200,
            http_token_burst: 1000,
            http_token_per_second: 100,
            http_post_burst: 500,
            http_post_per_second: 100,
            room_idle_unload_ms: 60_000,
            room_inbox: 4096,
            sse_queue: 4096,
            handshake_hook: None,
        }
    }
}

/// Development credentials, printed as one JSON line by `--dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevInfo {
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// API key of the first tenant.
    pub api_key: String,
    /// API key of the second tenant.
    pub api_key2: String,
    /// First tenant id.
    pub tenant: String,
    /// Second tenant id.
    pub tenant2: String,
    /// JWT secret of the first tenant.
    pub jwt_secret: String,
    /// JWT secret of the second tenant.
    pub jwt_secret2: String,
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// SQLite failed.
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Binding or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Unknown fault name.
    #[error(transparent)]
    Fault(#[from] fluxy_room::UnknownFault),
    /// A lock was poisoned or a blocking task panicked.
    #[error("internal task failure")]
    Poisoned,
    /// A lookup's row had an unexpected shape.
    #[error("lookup: {0}")]
    Lookup(#[from] fluxy_room::FetchFailed),
    /// Random numbers unavailable.
    #[error("no randomness: {0}")]
    Random(String),
}

/// A running server.
pub struct RunningServer {
    /// Bound address.
    pub local_addr: SocketAddr,
    /// Development credentials (when `dev`).
    pub dev: Option<DevInfo>,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stop accepting, close every connection with 1001 and wait (at most 5 s) for the end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let rooms: Vec<rooms::RoomHandle> = match self.app.rooms.lock() {
            Ok(g) => g.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
        for r in rooms {
            let _ = r.send(rooms::RoomMsg::Shutdown).await;
        }
        // Let the 1001 close handshakes finish (bounded).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while self
            .app
            .live_sessions
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// Rooms currently loaded (entries of the room table; a room leaves it when it unloads
    /// after [`ServerConfig::room_idle_unload_ms`] of idleness).
    pub fn loaded_rooms(&self) -> usize {
        match self.app.rooms.lock() {
            Ok(g) => g.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    /// Room tasks currently running (a task ends after it left the room table, or at
    /// shutdown).
    pub fn room_tasks(&self) -> usize {
        self.app
            .room_tasks
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Room loads so far (a room that unloads and is used again is loaded again).
    pub fn room_loads(&self) -> u64 {
        self.app
            .room_loads
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Storage lookups the room engines asked for so far (`Effect::Fetch`: state a woken room
    /// did not load; see `fluxy_room::Lookup`).
    pub fn room_lookups(&self) -> u64 {
        self.app
            .room_lookups
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// SSE listeners dropped so far because their queue was full
    /// ([`ServerConfig::sse_queue`]).
    pub fn sse_listeners_dropped(&self) -> u64 {
        self.app
            .sse_dropped
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// SSE listeners currently registered with a room, over all rooms. A listener leaves when
    /// its stream ends: its client closed the connection (seen by the HTTP layer at once), its
    /// queue overflowed, or the server stops.
    pub fn sse_listeners(&self) -> usize {
        self.app
            .sse_listeners
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when the server stopped by itself (it normally never does).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Shared state of the shell.
pub(crate) struct App {
    pub(crate) config: ServerConfig,
    pub(crate) faults: Faults,
    pub(crate) db: db::Db,
    pub(crate) rooms: Mutex<HashMap<(String, String), rooms::RoomHandle>>,
    pub(crate) secrets: RwLock<HashMap<String, Vec<u8>>>,
    pub(crate) cursor_key: Vec<u8>,
    pub(crate) next_conn: std::sync::atomic::AtomicU64,
    /// Live WebSocket sessions (shutdown waits for their close handshakes).
    pub(crate) live_sessions: std::sync::atomic::AtomicUsize,
    /// HTTP rate limit of `POST /auth/token`, per API key hash.
    pub(crate) token_limiter: limiter::Limiter,
    /// HTTP rate limit of `POST /messages`, per (tenant, user).
    pub(crate) post_limiter: limiter::Limiter,
    pub(crate) stop: watch::Receiver<bool>,
    /// Room tasks running.
    pub(crate) room_tasks: std::sync::atomic::AtomicUsize,
    /// Room tasks started.
    pub(crate) room_loads: std::sync::atomic::AtomicU64,
    /// SSE listeners dropped for a full queue.
    pub(crate) sse_dropped: std::sync::atomic::AtomicU64,
    /// SSE listeners registered with a room (all rooms).
    pub(crate) sse_listeners: std::sync::atomic::AtomicUsize,
    /// Storage lookups (`Effect::Fetch`) carried out.
    pub(crate) room_lookups: std::sync::atomic::AtomicU64,
    /// Identity of the next room task's inbox (see `rooms::RoomHandle`).
    pub(crate) next_room: std::sync::atomic::AtomicU64,
}

/// Milliseconds since the Unix epoch (the shell's clock; the engine has none).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn random_hex(bytes: usize) -> Result<String, ServerError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| ServerError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// SHA-256 hex digest of an API key (how keys are stored).
pub fn hash_api_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

async fn setup_dev(
    db: &db::Db,
) -> Result<(String, String, String, String, String, String), ServerError> {
    let mut out = Vec::new();
    for tenant in ["tenant-a", "tenant-b"] {
        let secret = random_hex(32)?;
        let key = format!("fxk_{}", random_hex(24)?);
        let hash = hash_api_key(&key);
        let t = tenant.to_owned();
        let stored = db
            .write(move |tx| {
                let now = db::sql_int(now_ms());
                tx.execute(
                    fluxy_room::sql::INSERT_TENANT,
                    rusqlite::params![t, t, secret, now],
                )?;
                tx.execute(
                    fluxy_room::sql::INSERT_API_KEY,
                    rusqlite::params![hash, t, now],
                )?;
                let s: String =
                    tx.query_row(fluxy_room::sql::TENANT_SECRET, rusqlite::params![t], |r| {
                        r.get(0)
                    })?;
                Ok(s)
            })
            .await?;
        out.push((tenant.to_owned(), key, stored));
    }
    let b = out.pop().ok_or(ServerError::Poisoned)?;
    let a = out.pop().ok_or(ServerError::Poisoned)?;
    Ok((a.0, a.1, a.2, b.0, b.1, b.2))
}

async fn cursor_key(db: &db::Db) -> Result<Vec<u8>, ServerError> {
    let fresh = random_hex(32)?;
    let k = db
        .write(move |tx| {
            tx.execute(
                fluxy_room::sql::INSERT_META,
                rusqlite::params!["cursor_key", fresh],
            )?;
            let k: String = tx.query_row(
                fluxy_room::sql::GET_META,
                rusqlite::params!["cursor_key"],
                |r| r.get(0),
            )?;
            Ok(k)
        })
        .await?;
    Ok(k.into_bytes())
}

/// Start the server: open storage, bind, serve in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let faults = Faults::from_names(&config.faults)?;
    let mut config = config;
    // FX-RES-5: the resume window is at least 100 events.
    config.resume_window = config.resume_window.max(100);
    let db = db::Db::open(config.db_path.as_deref(), config.synchronous_full)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let local_addr = listener.local_addr()?;
    let dev = if config.dev {
        let (tenant, api_key, jwt_secret, tenant2, api_key2, jwt_secret2) = setup_dev(&db).await?;
        Some(DevInfo {
            endpoint: format!("http://{local_addr}"),
            api_key,
            api_key2,
            tenant,
            tenant2,
            jwt_secret,
            jwt_secret2,
        })
    } else {
        None
    };
    let cursor_key = cursor_key(&db).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let token_limiter =
        limiter::Limiter::new(config.http_token_burst, config.http_token_per_second);
    let post_limiter = limiter::Limiter::new(config.http_post_burst, config.http_post_per_second);
    let app = Arc::new(App {
        config,
        faults,
        db,
        rooms: Mutex::new(HashMap::new()),
        secrets: RwLock::new(HashMap::new()),
        cursor_key,
        next_conn: std::sync::atomic::AtomicU64::new(1),
        live_sessions: std::sync::atomic::AtomicUsize::new(0),
        token_limiter,
        post_limiter,
        stop: stop_rx.clone(),
        room_tasks: std::sync::atomic::AtomicUsize::new(0),
        room_loads: std::sync::atomic::AtomicU64::new(0),
        sse_dropped: std::sync::atomic::AtomicU64::new(0),
        sse_listeners: std::sync::atomic::AtomicUsize::new(0),
        room_lookups: std::sync::atomic::AtomicU64::new(0),
        next_room: std::sync::atomic::AtomicU64::new(1),
    });
    let router = http::router(app.clone());
    let mut stop = stop_rx;
    let task = tokio::spawn(async move {
        // No Nagle: a client waiting for an ack to send its next frame would otherwise stall
        // on delayed ACKs (about 40 ms a round trip on Linux).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                eprintln!("fluxy-server: TCP_NODELAY: {e}");
            }
        });
        let r = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
        if let Err(e) = r {
            eprintln!("fluxy-server: serve failed: {e}");
        }
    });
    Ok(RunningServer {
        local_addr,
        dev,
        app,
        stop: stop_tx,
        task,
    })
}
