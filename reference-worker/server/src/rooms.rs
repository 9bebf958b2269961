//! One task per room owning that room's engine (the native twin of one Durable Object per room).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use fluxy_protocol::common::MemberRole;
use fluxy_protocol::server::ErrorFrame;
use fluxy_protocol::CloseCode;
use fluxy_room::{
    ConnId, ConnectOptions, Effect, Identity, Input, PostOutcome, Room, RoomConfig, RoomPolicy,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::{now_ms, App};
use axum::extract::ws::Utf8Bytes;

/// What a room sends to one WebSocket connection's writer.
///
/// Frames are `Utf8Bytes` (reference-counted bytes, the type the socket writes): a broadcast
/// converts the engine's `Arc<str>` once and every connection's queue holds a clone, so the
/// writers send the same bytes without copying them per connection.
#[derive(Debug)]
pub enum Out {
    /// A text frame.
    Text(Utf8Bytes),
    /// A timeline event (a text frame the writer may coalesce into a `batch` frame for a
    /// connection that opted in, `[FX-TRN-10]`).
    Event(Utf8Bytes),
    /// Close with this code.
    Close(CloseCode),
}

/// Close code for a connection whose outgoing queue overflowed (a slow consumer, `[FX-ORD-2]`):
/// 1011 `internal_error`, action reconnect. Of the existing codes with action reconnect it is
/// the honest one: the server failed to deliver. 1001 would claim a shutdown, 4008 would blame
/// the client's sending rate, 4000 its heartbeat.
pub const SLOW_CONSUMER_CLOSE: CloseCode = CloseCode::InternalError;

/// How often (at most) a room prunes expired idempotency keys from storage with a commit.
const PRUNE_EVERY_MS: u64 = 60_000;
/// Rows pruned per statement (bounded work per commit).
const PRUNE_ROWS: u64 = 1_000;

/// Most frames a room stages for one connection before handing them to its writer as one
/// chunk. The room stages a connection's frames while it carries out effects and hands them
/// over when this many are staged and at the end of the effects, so a group commit that
/// releases hundreds of events costs each connection one channel operation per chunk, not one
/// per frame (issue 13, item 6).
const STAGE_CHUNK: usize = 64;

/// Frames and bytes handed to a connection's writer and not yet taken by it.
#[derive(Debug, Default)]
struct Queued {
    frames: AtomicUsize,
    bytes: AtomicUsize,
}

/// Frames handed to a writer at once, in order.
#[derive(Debug)]
pub struct Chunk {
    frames: Vec<Out>,
    /// Bytes of frame text in `frames`.
    bytes: usize,
}

/// The room's end of one connection's bounded outgoing queue.
///
/// The bounds count every frame not yet taken by the writer, staged ones included: at most
/// `max_frames` frames, and at most the byte budget unless a single frame is all there is.
pub struct ConnTx {
    tx: mpsc::UnboundedSender<Chunk>,
    queued: Arc<Queued>,
    max_frames: usize,
    /// Frames not yet handed to the writer ([`STAGE_CHUNK`]).
    staged: Vec<Out>,
    staged_bytes: usize,
    kill: Option<oneshot::Sender<CloseCode>>,
}

/// The writer's end of one connection's outgoing frames.
pub struct OutRx {
    rx: mpsc::UnboundedReceiver<Chunk>,
    queued: Arc<Queued>,
}

/// The writer's end of one connection's bounded outgoing queue.
pub struct ConnRx {
    /// Queued frames.
    pub frames: OutRx,
    /// Fires when the room gives up on the connection (queue full): close at once with this
    /// code, whatever is still queued.
    pub kill: oneshot::Receiver<CloseCode>,
}

/// A bounded outgoing queue: at most `frames` frames (at least 1).
pub fn out_queue(frames: usize) -> (ConnTx, ConnRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (kill_tx, kill_rx) = oneshot::channel();
    let queued = Arc::new(Queued::default());
    (
        ConnTx {
            tx,
            queued: queued.clone(),
            max_frames: frames.max(1),
            staged: Vec::new(),
            staged_bytes: 0,
            kill: Some(kill_tx),
        },
        ConnRx {
            frames: OutRx { rx, queued },
            kill: kill_rx,
        },
    )
}

impl OutRx {
    /// The next chunk, waiting for one; `None` when the room dropped the queue and everything
    /// was taken. Taken frames no longer count against the bounds.
    pub async fn recv(&mut self) -> Option<Vec<Out>> {
        let c = self.rx.recv().await?;
        Some(self.took(c))
    }

    /// The next chunk if one is queued.
    pub fn try_recv(&mut self) -> Option<Vec<Out>> {
        let c = self.rx.try_recv().ok()?;
        Some(self.took(c))
    }

    fn took(&self, c: Chunk) -> Vec<Out> {
        self.queued
            .frames
            .fetch_sub(c.frames.len(), Ordering::Relaxed);
        self.queued.bytes.fetch_sub(c.bytes, Ordering::Relaxed);
        c.frames
    }
}

/// The queue of a connection is full (frames or bytes).
#[derive(Debug, thiserror::Error)]
#[error("outgoing queue full")]
pub struct QueueFull;

impl ConnTx {
    /// Queue without waiting (staged: [`ConnTx::flush`] hands it over). A single frame larger
    /// than the byte budget is accepted when nothing else is queued. A writer that is gone
    /// counts as success (its reader reports the close).
    fn push(&mut self, out: Out, max_bytes: usize) -> Result<(), QueueFull> {
        if self.tx.is_closed() {
            self.staged.clear();
            self.staged_bytes = 0;
            return Ok(());
        }
        let len = match &out {
            Out::Text(t) | Out::Event(t) => t.len(),
            Out::Close(_) => 0,
        };
        let frames = self.queued.frames.load(Ordering::Relaxed) + self.staged.len();
        if frames >= self.max_frames {
            return Err(QueueFull);
        }
        let bytes = self.queued.bytes.load(Ordering::Relaxed) + self.staged_bytes;
        if bytes > 0 && bytes.saturating_add(len) > max_bytes {
            return Err(QueueFull);
        }
        // No reserve up front: a chunk of one frame (an ack, a presence update) stays small
        // while a slow writer holds many of them.
        self.staged.push(out);
        self.staged_bytes += len;
        if self.staged.len() >= STAGE_CHUNK {
            self.flush();
        }
        Ok(())
    }

    /// Whether frames are staged (waiting for [`ConnTx::flush`]).
    fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Hand the staged frames to the writer as one chunk.
    fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let chunk = Chunk {
            frames: std::mem::take(&mut self.staged),
            bytes: std::mem::take(&mut self.staged_bytes),
        };
        let (frames, bytes) = (chunk.frames.len(), chunk.bytes);
        // Count before sending: the writer may take (and subtract) the chunk at once.
        self.queued.frames.fetch_add(frames, Ordering::Relaxed);
        self.queued.bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.tx.send(chunk).is_err() {
            self.queued.frames.fetch_sub(frames, Ordering::Relaxed);
            self.queued.bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Queue a close after what is queued; when the queue is full, close at once instead.
    fn close(mut self, code: CloseCode, max_bytes: usize) {
        if self.push(Out::Close(code), max_bytes).is_err() {
            self.kill(code);
        }
        // Dropping hands over what is staged.
    }

    /// Close at once, dropping what is queued.
    fn kill(mut self, code: CloseCode) {
        self.staged.clear();
        self.staged_bytes = 0;
        if let Some(k) = self.kill.take() {
            let _ = k.send(code);
        }
    }
}

impl Drop for ConnTx {
    /// Whatever is staged still goes out (the writer sends it, then closes when the room
    /// dropped the queue without a close).
    fn drop(&mut self) {
        self.flush();
    }
}

/// What a room sends to an SSE listener.
#[derive(Debug, Clone)]
pub struct SseItem {
    /// Timeline seq (none for presence, typing…).
    pub seq: Option<u64>,
    /// Frame type.
    pub kind: &'static str,
    /// The frame JSON (the same text as on the WebSocket).
    pub frame: Arc<str>,
}

/// Raised (on drop) by an SSE listener's relay when it ends, so that its room forgets the
/// listener at once instead of at its next broadcast or idleness check: the relay ends as soon
/// as the HTTP body is dropped, which hyper does when it sees the client's socket close.
pub struct SseGone(Arc<tokio::sync::Notify>);

impl Drop for SseGone {
    fn drop(&mut self) {
        // Stores a permit when the room is not waiting right now: never lost.
        self.0.notify_one();
    }
}

/// Messages to a room task.
pub enum RoomMsg {
    /// A connection opened.
    Open {
        /// Connection id.
        conn: ConnId,
        /// Verified identity.
        identity: Identity,
        /// Handshake options.
        options: ConnectOptions,
        /// Writer queue.
        out: ConnTx,
    },
    /// A text frame.
    Text(ConnId, String),
    /// A binary frame.
    Binary(ConnId),
    /// The transport closed.
    Closed(ConnId),
    /// `POST /messages`.
    Post {
        /// Verified identity.
        identity: Identity,
        /// The message.
        frame: fluxy_protocol::client::SendMessageFrame,
        /// Reply.
        reply: oneshot::Sender<Result<PostOutcome, ErrorFrame>>,
    },
    /// Subscribe an SSE listener; replies with the committed seq at subscription time and
    /// the room's [`SseGone`] signal, which the listener's relay raises when it ends.
    Sse {
        /// Listener (bounded: a full queue drops the listener, `ServerConfig::sse_queue`).
        tx: mpsc::Sender<SseItem>,
        /// Reply.
        reply: oneshot::Sender<(u64, SseGone)>,
    },
    /// Wake me when something with seq > `after` is committed.
    Poll {
        /// Position.
        after: u64,
        /// Wake-up.
        reply: oneshot::Sender<()>,
    },
    /// Close a user's connections (membership removed): user, membership version after it.
    Kick(String, u64),
    /// A user's room role changed: user, role, membership version after it.
    SetRole(String, Option<MemberRole>, u64),
    /// Server shutdown: close everything with 1001.
    Shutdown,
}

/// A persist batch finished (the room task's internal channel, apart from its inbox: the
/// spawned persist task waits for space there, never the room task itself).
struct PersistDone {
    batch: u64,
    ok: bool,
}

/// A lookup finished (like [`PersistDone`], on its own channel). `generation` tells results
/// for an engine that was since rebuilt (after a storage failure) from current ones.
struct FetchDone {
    generation: u64,
    fetch: u64,
    result: Result<fluxy_room::Found, fluxy_room::FetchFailed>,
}

/// Capacity of a room's lookup completion channel (the spawned lookup tasks wait for space,
/// never the room task).
const FETCH_QUEUE: usize = 64;

/// Capacity of a room's internal completion channel. The engine has at most one batch in
/// flight, so one slot is enough; a few more absorb completions of batches from before a reset.
const DONE_QUEUE: usize = 4;

/// When only SSE listeners or long-poll waiters keep a room loaded, how often (at least) the
/// room checks whether they went away (they do not tell it).
const LISTENER_RECHECK_MS: u64 = 1_000;

/// The room task is gone (stopped by shutdown); the message is returned.
#[derive(Debug, thiserror::Error)]
#[error("room task stopped")]
pub struct RoomGone(pub RoomMsg);

impl std::fmt::Debug for RoomMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoomMsg::Open { .. } => "Open",
            RoomMsg::Text(..) => "Text",
            RoomMsg::Binary(_) => "Binary",
            RoomMsg::Closed(_) => "Closed",
            RoomMsg::Post { .. } => "Post",
            RoomMsg::Sse { .. } => "Sse",
            RoomMsg::Poll { .. } => "Poll",
            RoomMsg::Kick(..) => "Kick",
            RoomMsg::SetRole(..) => "SetRole",
            RoomMsg::Shutdown => "Shutdown",
        })
    }
}

/// Handle to a room task: the sending side of its bounded inbox.
///
/// Every live `RoomHandle` is a strong sender of the inbox, and the only way to get one is
/// [`room_handle`] or [`running_room`], both under the `app.rooms` lock. The room task
/// relies on that to unload safely (see [`try_unload`]).
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomMsg>,
    /// Which inbox this is (unique per server), so a task recognises its own map entry.
    id: u64,
}

impl RoomHandle {
    /// Send a message, waiting while the inbox is full (backpressure: a WebSocket reader that
    /// waits here stops reading its socket). Fails only when the task stopped (shutdown).
    pub async fn send(&self, m: RoomMsg) -> Result<(), RoomGone> {
        self.tx.send(m).await.map_err(|e| RoomGone(e.0))
    }
}

fn lock_rooms(app: &App) -> std::sync::MutexGuard<'_, HashMap<(String, String), RoomHandle>> {
    match app.rooms.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The task of room (tenant, room) if it is running (no task is started).
pub fn running_room(app: &Arc<App>, tenant: &str, room: &str) -> Option<RoomHandle> {
    lock_rooms(app)
        .get(&(tenant.to_owned(), room.to_owned()))
        .filter(|h| !h.tx.is_closed())
        .cloned()
}

/// Get (or start) the task of room (tenant, room).
pub fn room_handle(app: &Arc<App>, tenant: &str, room: &str, secret: Vec<u8>) -> RoomHandle {
    let key = (tenant.to_owned(), room.to_owned());
    let mut rooms = lock_rooms(app);
    if let Some(h) = rooms.get(&key) {
        if !h.tx.is_closed() {
            return h.clone();
        }
    }
    let (h, rx) = new_inbox(app);
    rooms.insert(key.clone(), h.clone());
    let cfg = RoomConfig {
        tenant: Arc::from(tenant),
        room_id: Arc::from(room),
        jwt_secret: secret,
        idle_timeout_ms: app.config.idle_timeout_ms,
        rate_burst: app.config.rate_burst,
        rate_per_second: app.config.rate_per_second,
        resume_window: app.config.resume_window,
        faults: app.faults,
    };
    // Counted here, under the lock, so that a task that is spawned but not yet polled counts.
    app.room_tasks.fetch_add(1, Ordering::SeqCst);
    app.room_loads.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(room_task(app.clone(), cfg, key, h.id, rx));
    h
}

/// A fresh bounded inbox with a new identity.
fn new_inbox(app: &App) -> (RoomHandle, mpsc::Receiver<RoomMsg>) {
    let (tx, rx) = mpsc::channel(app.config.room_inbox.max(1));
    let id = app.next_room.fetch_add(1, Ordering::Relaxed);
    (RoomHandle { tx, id }, rx)
}

/// What [`try_unload`] decided.
enum Unload {
    /// The room left the table and no message can reach it any more: stop the task.
    Done,
    /// Someone holds a handle, or messages are queued: stay, try again later.
    Busy,
    /// Messages were found after the last sender was dropped (impossible by the argument on
    /// [`try_unload`], handled anyway): the room stays loaded under a fresh inbox, which
    /// replaced the old one in the table, and must handle these first.
    Revived(Vec<RoomMsg>),
}

/// Unload an idle room, losing no message to the race with concurrent requests.
///
/// The argument. Senders of the inbox exist only as [`RoomHandle`]s, which are cloned out of
/// the `app.rooms` table under its lock ([`room_handle`], [`running_room`]); the room task
/// itself holds none (its persist completions come over a separate channel). Under that
/// lock, then:
///
/// 1. If `sender_strong_count() == 1`, the table's entry is the only sender: no request holds
///    a handle it could still send on, and a new one can only be cloned from the table, which
///    needs the lock we hold. A request that sent and then dropped its handle did so before
///    the count fell (the push happens before the `AcqRel` decrement our `Acquire` load
///    observes), so its message is visible to `is_empty()`.
/// 2. If also the inbox is empty, no message exists and none can be sent: removing the entry
///    drops the last sender and the channel is closed for good.
/// 3. A request that arrives after we release the lock finds no entry and
///    [`room_handle`] starts a fresh task, which loads the room from storage. Nothing of this
///    room is uncommitted (unload needs no batch in flight and no pending reply), so the
///    fresh task sees exactly the state this one had (seq, history, idempotency keys,
///    reactions, agent runs). The old task does nothing more after removal, so the two never
///    write concurrently.
///
/// Otherwise the room stays (`Busy`) and retries after another idle period. As a belt and
/// braces check, the inbox is drained after the removal while still holding the lock; should
/// anything be there, the room re-registers itself under a fresh inbox (nobody else can have
/// inserted one: we hold the lock) and handles those messages before any sent later.
fn try_unload(
    app: &App,
    key: &(String, String),
    id: &mut u64,
    rx: &mut mpsc::Receiver<RoomMsg>,
) -> Unload {
    let mut rooms = lock_rooms(app);
    if rooms.get(key).map(|h| h.id) != Some(*id) {
        // Not in the table (cannot happen: only this task removes its entry, and an entry is
        // only replaced when its channel is closed). Nobody can find this room; stop when no
        // one can send either.
        return if rx.sender_strong_count() == 0 && rx.is_empty() {
            Unload::Done
        } else {
            Unload::Busy
        };
    }
    if rx.sender_strong_count() != 1 || !rx.is_empty() {
        return Unload::Busy;
    }
    rooms.remove(key);
    rx.close();
    let mut left = Vec::new();
    while let Ok(m) = rx.try_recv() {
        left.push(m);
    }
    if left.is_empty() {
        return Unload::Done;
    }
    eprintln!(
        "fluxy-server: room {} received {} message(s) while unloading; staying loaded",
        key.1,
        left.len()
    );
    let (h, fresh) = new_inbox(app);
    *id = h.id;
    *rx = fresh;
    rooms.insert(key.clone(), h);
    Unload::Revived(left)
}

/// Why a room is (not) idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idleness {
    /// Connections, pending replies, a batch in flight or a rebuild: not idle, and each of
    /// these ends with a message to the room, which re-evaluates.
    Active,
    /// Only SSE listeners or long-poll waiters, which leave without telling the room.
    Listening,
    /// Nothing: may unload.
    Idle,
}

struct Shell {
    app: Arc<App>,
    done_tx: mpsc::Sender<PersistDone>,
    /// Persist batches spawned whose completion the engine has not been told yet.
    persisting: usize,
    fetch_tx: mpsc::Sender<FetchDone>,
    /// Lookups spawned whose result the engine has not been told yet.
    fetching: usize,
    /// Engine generation: bumped when the engine is rebuilt, so late lookup results of the
    /// previous one are dropped (fetch ids restart at 1).
    generation: u64,
    conns: HashMap<ConnId, ConnTx>,
    /// Connections that may have staged frames, handed over at the end of the effects.
    staged: Vec<ConnId>,
    /// Connections dropped for a full queue, to report to the engine as closed.
    overflowed: Vec<ConnId>,
    /// Last time expired idempotency keys were pruned from storage.
    last_prune_ms: u64,
    sse: Vec<mpsc::Sender<SseItem>>,
    /// How many of `sse` are counted in `App::sse_listeners`.
    sse_counted: usize,
    /// Raised by a listener's relay when it ends ([`SseGone`]).
    sse_gone: Arc<tokio::sync::Notify>,
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    posts: HashMap<u64, oneshot::Sender<Result<PostOutcome, ErrorFrame>>>,
    next_post: u64,
    reset: bool,
}

async fn load(app: &Arc<App>, cfg: &RoomConfig) -> Room {
    let window = u64::from(cfg.resume_window).max(500);
    loop {
        match app
            .db
            .load_room(
                cfg.tenant.to_string(),
                cfg.room_id.to_string(),
                window,
                now_ms(),
            )
            .await
        {
            Ok(l) => {
                let mut room = Room::new(cfg.clone(), l);
                room.set_policy(policy(&app.config));
                return room;
            }
            Err(e) => {
                eprintln!(
                    "fluxy-server: loading room {} failed: {e}; retrying",
                    cfg.room_id
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The engine's abuse policy from the server flags (0 disables a limit).
fn policy(c: &crate::ServerConfig) -> RoomPolicy {
    RoomPolicy {
        max_invalid_streak: (c.max_invalid_frames > 0).then_some(c.max_invalid_frames),
        max_rate_rejects: (c.max_rate_rejects > 0).then_some(c.max_rate_rejects),
        ..RoomPolicy::default()
    }
}

/// Decrements the running-task count when a room task ends (however it ends).
struct TaskCount(Arc<App>);

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.room_tasks.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Most inbox messages handled in one go before effects are carried out (what lets commits
/// group, without starving the rest).
const DRAIN: usize = 1024;

async fn room_task(
    app: Arc<App>,
    cfg: RoomConfig,
    key: (String, String),
    mut id: u64,
    mut rx: mpsc::Receiver<RoomMsg>,
) {
    let _count = TaskCount(app.clone());
    let (done_tx, mut done_rx) = mpsc::channel::<PersistDone>(DONE_QUEUE);
    let (fetch_tx, mut fetch_rx) = mpsc::channel::<FetchDone>(FETCH_QUEUE);
    let mut room = load(&app, &cfg).await;
    let mut shell = Shell {
        app: app.clone(),
        done_tx,
        persisting: 0,
        fetch_tx,
        fetching: 0,
        generation: 0,
        conns: HashMap::new(),
        staged: Vec::new(),
        overflowed: Vec::new(),
        last_prune_ms: now_ms(),
        sse: Vec::new(),
        sse_counted: 0,
        sse_gone: Arc::new(tokio::sync::Notify::new()),
        waiters: Vec::new(),
        posts: HashMap::new(),
        next_post: 1,
        reset: false,
    };
    let sse_gone = shell.sse_gone.clone();
    let idle_after = app.config.room_idle_unload_ms;
    // Since when the room has been idle (reset by any inbox message).
    let mut idle_since: Option<Instant> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);
    loop {
        let engine_at = room
            .poll_timeout()
            .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(now_ms())));
        let unload_at = if idle_after == 0 {
            None
        } else {
            match shell.idleness(&room) {
                Idleness::Active => {
                    idle_since = None;
                    None
                }
                Idleness::Listening => {
                    idle_since = None;
                    Some(
                        Instant::now() + Duration::from_millis(idle_after.max(LISTENER_RECHECK_MS)),
                    )
                }
                Idleness::Idle => Some(
                    *idle_since.get_or_insert_with(Instant::now)
                        + Duration::from_millis(idle_after),
                ),
            }
        };
        let mut stop = false;
        tokio::select! {
            // Completions first: they release acks and let the next batch start.
            biased;
            Some(d) = done_rx.recv() => shell.on_done(&mut room, d),
            Some(f) = fetch_rx.recv() => shell.on_fetched(&mut room, f),
            m = rx.recv() => {
                let Some(m) = m else {
                    // Every sender is gone, the table's included: nobody can reach this room.
                    break;
                };
                idle_since = None;
                stop = shell.on_msg(&mut room, m);
                let mut n = 0;
                while !stop && n < DRAIN {
                    match rx.try_recv() {
                        Ok(m) => stop = shell.on_msg(&mut room, m),
                        Err(_) => break,
                    }
                    n += 1;
                }
            }
            _ = sse_gone.notified() => shell.prune_sse(),
            _ = tokio::time::sleep_until(engine_at.unwrap_or_else(far)), if engine_at.is_some() => {
                room.handle_timeout(now_ms());
            }
            _ = tokio::time::sleep_until(unload_at.unwrap_or_else(far)), if unload_at.is_some() => {
                if shell.idleness(&room) == Idleness::Idle {
                    match try_unload(&app, &key, &mut id, &mut rx) {
                        Unload::Done => break,
                        Unload::Busy => idle_since = Some(Instant::now()),
                        Unload::Revived(left) => {
                            idle_since = None;
                            for m in left {
                                stop = shell.on_msg(&mut room, m) || stop;
                            }
                        }
                    }
                }
            }
        }
        // The select is biased towards the inbox: under a steady flood the timer branch may
        // never be polled, so fire the engine's timeouts here when they are due.
        if engine_at.is_some_and(|t| t <= Instant::now()) {
            room.handle_timeout(now_ms());
        }
        shell.run_effects(&mut room);
        if shell.reset {
            shell.reset = false;
            shell.sse.clear();
            shell.count_sse();
            shell.generation += 1;
            shell.fetching = 0;
            room = load(&app, &cfg).await;
        }
        if stop {
            break;
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.sse.clear();
        self.count_sse();
    }
}

impl Shell {
    /// Forget SSE listeners whose stream ended.
    fn prune_sse(&mut self) {
        self.sse.retain(|s| !s.is_closed());
        self.count_sse();
    }

    /// Bring `App::sse_listeners` in line with `sse` after it changed.
    fn count_sse(&mut self) {
        let n = self.sse.len();
        let g = &self.app.sse_listeners;
        if n > self.sse_counted {
            g.fetch_add(n - self.sse_counted, Ordering::SeqCst);
        } else {
            g.fetch_sub(self.sse_counted - n, Ordering::SeqCst);
        }
        self.sse_counted = n;
    }

    /// Tell the engine a batch finished.
    fn on_done(&mut self, room: &mut Room, d: PersistDone) {
        self.persisting = self.persisting.saturating_sub(1);
        let input = if d.ok {
            Input::Committed { batch: d.batch }
        } else {
            Input::CommitFailed { batch: d.batch }
        };
        room.handle(now_ms(), input);
    }

    /// Tell the engine a lookup finished (unless it was for an engine since rebuilt).
    fn on_fetched(&mut self, room: &mut Room, f: FetchDone) {
        if f.generation != self.generation {
            return;
        }
        self.fetching = self.fetching.saturating_sub(1);
        room.handle(
            now_ms(),
            Input::Fetched {
                fetch: f.fetch,
                result: f.result,
            },
        );
    }

    /// Whether the room may unload; forgets SSE listeners and long-poll waiters that left.
    fn idleness(&mut self, room: &Room) -> Idleness {
        if !self.conns.is_empty()
            || room.connection_count() > 0
            || !self.posts.is_empty()
            || self.persisting > 0
            || self.fetching > 0
            || self.reset
            || room.is_failed()
        {
            return Idleness::Active;
        }
        self.prune_sse();
        self.waiters.retain(|(_, w)| !w.is_closed());
        if self.sse.is_empty() && self.waiters.is_empty() {
            Idleness::Idle
        } else {
            Idleness::Listening
        }
    }

    /// Handle one message; true when the room must stop.
    fn on_msg(&mut self, room: &mut Room, msg: RoomMsg) -> bool {
        let now = now_ms();
        match msg {
            RoomMsg::Open {
                conn,
                identity,
                options,
                out,
            } => {
                // Effects queued before this open (broadcasts of earlier joins, commits) are
                // not for this connection: carry them out before it is registered, so that its
                // first frame is its `welcome` [FX-HS-5].
                self.run_effects(room);
                if self.reset || room.is_failed() {
                    // Storage failed: the room is about to be rebuilt; reconnect then.
                    out.close(CloseCode::InternalError, self.app.config.out_queue_bytes);
                    return false;
                }
                self.conns.insert(conn, out);
                room.handle(
                    now,
                    Input::Open {
                        conn,
                        identity,
                        options,
                    },
                );
            }
            RoomMsg::Text(conn, text) => room.handle(now, Input::Text { conn, text }),
            RoomMsg::Binary(conn) => room.handle(now, Input::Binary { conn }),
            RoomMsg::Closed(conn) => {
                self.conns.remove(&conn);
                room.handle(now, Input::Closed { conn });
            }
            RoomMsg::Post {
                identity,
                frame,
                reply,
            } => {
                let request = self.next_post;
                self.next_post += 1;
                self.posts.insert(request, reply);
                room.handle(
                    now,
                    Input::Post {
                        request,
                        identity,
                        frame,
                    },
                );
            }
            RoomMsg::Sse { tx, reply } => {
                self.sse.push(tx);
                self.count_sse();
                let gone = SseGone(self.sse_gone.clone());
                if reply.send((room.committed_seq(), gone)).is_err() {
                    // The request went away before its stream started.
                    self.prune_sse();
                }
            }
            RoomMsg::Poll { after, reply } => {
                if room.committed_seq() > after {
                    let _ = reply.send(());
                } else {
                    self.waiters.push((after, reply));
                }
            }
            RoomMsg::Kick(user_id, version) => room.handle(now, Input::Kick { user_id, version }),
            RoomMsg::SetRole(user_id, member_role, version) => room.handle(
                now,
                Input::SetRole {
                    user_id,
                    member_role,
                    version,
                },
            ),
            RoomMsg::Shutdown => {
                let max = self.app.config.out_queue_bytes;
                for (_, out) in self.conns.drain() {
                    out.close(CloseCode::GoingAway, max);
                }
                self.sse.clear();
                self.count_sse();
                for (_, w) in self.waiters.drain(..) {
                    let _ = w.send(());
                }
                return true;
            }
        }
        false
    }

    /// Queue a frame for a connection without waiting; a full queue drops the connection
    /// (closed with [`SLOW_CONSUMER_CLOSE`]) so that it never skips an event (`[FX-ORD-2]`)
    /// and the room task never blocks on one slow socket.
    fn deliver(&mut self, conn: ConnId, frame: Arc<str>) {
        let max = self.app.config.out_queue_bytes;
        let Some(o) = self.conns.get_mut(&conn) else {
            return;
        };
        let had = o.has_staged();
        match o.push(Out::Text(Utf8Bytes::from(&*frame)), max) {
            Ok(()) if !had && o.has_staged() => self.staged.push(conn),
            Ok(()) => {}
            Err(QueueFull) => self.drop_slow(conn),
        }
    }

    /// Forget a connection whose queue is full and close it at once.
    fn drop_slow(&mut self, conn: ConnId) {
        if let Some(o) = self.conns.remove(&conn) {
            eprintln!(
                "fluxy-server: connection c{conn} is not reading; closing it with {}",
                SLOW_CONSUMER_CLOSE.code()
            );
            o.kill(SLOW_CONSUMER_CLOSE);
            self.overflowed.push(conn);
        }
    }

    fn run_effects(&mut self, room: &mut Room) {
        loop {
            self.run_effects_once(room);
            if self.overflowed.is_empty() {
                return;
            }
            // The engine forgets dropped connections (presence, member_left to the others).
            let now = now_ms();
            for conn in std::mem::take(&mut self.overflowed) {
                room.handle(now, Input::Closed { conn });
            }
        }
    }

    /// Hand every connection's staged frames to its writer.
    fn flush_staged(&mut self) {
        for id in self.staged.drain(..) {
            if let Some(o) = self.conns.get_mut(&id) {
                o.flush();
            }
        }
    }

    fn run_effects_once(&mut self, room: &mut Room) {
        self.run_effect_list(room);
        self.flush_staged();
    }

    fn run_effect_list(&mut self, room: &mut Room) {
        while let Some(e) = room.poll_effect() {
            match e {
                Effect::Send { conn, frame } => self.deliver(conn, frame),
                Effect::Broadcast {
                    frame,
                    except,
                    seq,
                    kind,
                } => {
                    let max = self.app.config.out_queue_bytes;
                    let mut full = Vec::new();
                    // One copy per broadcast, not per connection.
                    let bytes = Utf8Bytes::from(&*frame);
                    for (id, o) in &mut self.conns {
                        if Some(*id) == except {
                            continue;
                        }
                        let out = if seq.is_some() {
                            Out::Event(bytes.clone())
                        } else {
                            Out::Text(bytes.clone())
                        };
                        let had = o.has_staged();
                        match o.push(out, max) {
                            Ok(()) if !had && o.has_staged() => self.staged.push(*id),
                            Ok(()) => {}
                            Err(QueueFull) => full.push(*id),
                        }
                    }
                    for id in full {
                        self.drop_slow(id);
                    }
                    if !self.sse.is_empty() {
                        let item = SseItem { seq, kind, frame };
                        let dropped = &self.app.sse_dropped;
                        // Never wait for a listener: a full queue drops it. Dropping the
                        // sender ends its stream after what is queued; the client resumes
                        // with `Last-Event-ID` and loses nothing (`[FX-TRN]`).
                        self.sse.retain(|s| match s.try_send(item.clone()) {
                            Ok(()) => true,
                            Err(TrySendError::Closed(_)) => false,
                            Err(TrySendError::Full(_)) => {
                                dropped.fetch_add(1, Ordering::SeqCst);
                                eprintln!(
                                    "fluxy-server: an SSE listener is not reading; ending its stream"
                                );
                                false
                            }
                        });
                        self.count_sse();
                    }
                    if let Some(s) = seq {
                        if !self.waiters.is_empty() {
                            let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
                                .into_iter()
                                .partition(|(after, _)| s > *after);
                            self.waiters = rest;
                            for (_, w) in ready {
                                let _ = w.send(());
                            }
                        }
                    }
                }
                Effect::Close { conn, code } => {
                    if let Some(o) = self.conns.remove(&conn) {
                        o.close(code, self.app.config.out_queue_bytes);
                    }
                }
                Effect::Persist {
                    batch,
                    mut statements,
                } => {
                    let now = now_ms();
                    if now.saturating_sub(self.last_prune_ms) >= PRUNE_EVERY_MS {
                        self.last_prune_ms = now;
                        let c = room.config();
                        statements.push(fluxy_room::sql::prune_idempotency(
                            &c.tenant, &c.room_id, now, PRUNE_ROWS,
                        ));
                    }
                    let db = self.app.db.clone();
                    let tx = self.done_tx.clone();
                    self.persisting += 1;
                    tokio::spawn(async move {
                        let ok = match db.persist(statements).await {
                            Ok(()) => true,
                            Err(e) => {
                                eprintln!("fluxy-server: commit failed: {e}");
                                false
                            }
                        };
                        // This task waits for space, never the room task; the room task
                        // always listens on this channel.
                        let _ = tx.send(PersistDone { batch, ok }).await;
                    });
                }
                Effect::Fetch {
                    fetch,
                    lookup,
                    statement,
                } => {
                    // Off the room task, like a commit: the room goes on with other
                    // connections; the result comes back on `fetch_tx`.
                    let db = self.app.db.clone();
                    let tx = self.fetch_tx.clone();
                    let generation = self.generation;
                    self.fetching += 1;
                    self.app.room_lookups.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let result = db.fetch(lookup, statement).await.map_err(|e| {
                            eprintln!("fluxy-server: lookup failed: {e}");
                            fluxy_room::FetchFailed
                        });
                        let _ = tx
                            .send(FetchDone {
                                generation,
                                fetch,
                                result,
                            })
                            .await;
                    });
                }
                Effect::PostDone { request, result } => {
                    if let Some(r) = self.posts.remove(&request) {
                        let _ = r.send(result);
                    }
                }
                Effect::Reset => {
                    self.conns.clear();
                    self.reset = true;
                }
                // Identities live in the engine only; this shell keeps no copy.
                Effect::IdentityChanged { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Out {
        Out::Text(Utf8Bytes::from(s))
    }

    /// The frames of the chunks queued right now, in order, and how many chunks there were.
    fn take_all(rx: &mut OutRx) -> (Vec<String>, usize) {
        let (mut frames, mut chunks) = (Vec::new(), 0);
        while let Some(c) = rx.try_recv() {
            chunks += 1;
            for o in c {
                frames.push(match o {
                    Out::Text(t) | Out::Event(t) => t.as_str().to_owned(),
                    Out::Close(code) => format!("close {}", code.code()),
                });
            }
        }
        (frames, chunks)
    }

    #[test]
    fn frames_are_handed_over_in_order_in_chunks() {
        let (mut tx, mut rx) = out_queue(10_000);
        let n = 3 * STAGE_CHUNK + 5;
        for i in 0..n {
            tx.push(text(&i.to_string()), usize::MAX).expect("room");
        }
        // Full chunks are handed over at once; the rest waits for a flush.
        let (first, chunks) = take_all(&mut rx.frames);
        assert_eq!((first.len(), chunks), (3 * STAGE_CHUNK, 3));
        assert!(tx.has_staged());
        tx.flush();
        let (rest, chunks) = take_all(&mut rx.frames);
        assert_eq!(chunks, 1);
        let all: Vec<String> = first.into_iter().chain(rest).collect();
        let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(all, want);
        assert_eq!(rx.frames.queued.frames.load(Ordering::Relaxed), 0);
        assert_eq!(rx.frames.queued.bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_frame_bound_counts_staged_and_handed_over_frames_until_taken() {
        let (mut tx, mut rx) = out_queue(3);
        tx.push(text("a"), usize::MAX).expect("1");
        tx.flush();
        tx.push(text("b"), usize::MAX).expect("2");
        tx.push(text("c"), usize::MAX).expect("3");
        assert!(tx.push(text("d"), usize::MAX).is_err(), "4 frames > 3");
        // The writer takes the handed-over frame: room for exactly one more.
        assert_eq!(take_all(&mut rx.frames).0, ["a"]);
        tx.push(text("d"), usize::MAX).expect("room again");
        assert!(tx
            .push(Out::Close(CloseCode::GoingAway), usize::MAX)
            .is_err());
        tx.flush();
        assert_eq!(take_all(&mut rx.frames).0, ["b", "c", "d"]);
    }

    #[test]
    fn the_byte_bound_counts_staged_and_handed_over_bytes_until_taken() {
        let (mut tx, mut rx) = out_queue(100);
        // A frame over the budget is accepted when nothing is queued.
        tx.push(text("0123456789ab"), 10).expect("alone");
        assert!(tx.push(text("x"), 10).is_err(), "nothing more fits");
        tx.flush();
        assert_eq!(take_all(&mut rx.frames).0, ["0123456789ab"]);
        tx.push(text("01234"), 10).expect("5 bytes");
        tx.flush();
        tx.push(text("5678"), 10).expect("9 bytes");
        assert!(tx.push(text("9a"), 10).is_err(), "11 bytes > 10");
        tx.push(text("9"), 10).expect("10 bytes");
        assert_eq!(take_all(&mut rx.frames).0, ["01234"]);
        tx.push(text("abcde"), 10).expect("10 bytes again");
        assert!(tx.push(text("f"), 10).is_err());
    }

    #[test]
    fn close_goes_after_the_staged_frames_and_kill_drops_them() {
        let (mut tx, mut rx) = out_queue(100);
        tx.push(text("a"), usize::MAX).expect("a");
        tx.close(CloseCode::GoingAway, usize::MAX);
        let (frames, _) = take_all(&mut rx.frames);
        assert_eq!(frames, ["a", "close 1001"]);

        let (mut tx, mut rx) = out_queue(100);
        tx.push(text("a"), usize::MAX).expect("a");
        tx.kill(SLOW_CONSUMER_CLOSE);
        assert_eq!(take_all(&mut rx.frames).0, Vec::<String>::new());
        assert_eq!(rx.kill.try_recv().ok(), Some(SLOW_CONSUMER_CLOSE));

        // A full queue closes at once instead.
        let (mut tx, mut rx) = out_queue(1);
        tx.push(text("a"), usize::MAX).expect("a");
        tx.close(CloseCode::GoingAway, usize::MAX);
        assert_eq!(rx.kill.try_recv().ok(), Some(CloseCode::GoingAway));
    }

    #[test]
    fn a_gone_writer_counts_as_success() {
        let (mut tx, rx) = out_queue(1);
        drop(rx);
        for _ in 0..10 {
            tx.push(text("a"), 1).expect("writer gone");
        }
        assert!(!tx.has_staged());
    }
}
