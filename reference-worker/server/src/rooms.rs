//! One task per room owning that room's engine (the native twin of one Durable Object per room).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fluxy_protocol::common::MemberRole;
use fluxy_protocol::server::ErrorFrame;
use fluxy_protocol::CloseCode;
use fluxy_room::{
    ConnId, ConnectOptions, Effect, Identity, Input, PostOutcome, Room, RoomConfig, RoomPolicy,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::{now_ms, App};

/// What a room sends to one WebSocket connection's writer.
#[derive(Debug)]
pub enum Out {
    /// A text frame.
    Text(Arc<str>),
    /// A timeline event (a text frame the writer may coalesce into a `batch` frame for a
    /// connection that opted in, `[FX-TRN-10]`).
    Event(Arc<str>),
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

/// The room's end of one connection's bounded outgoing queue.
pub struct ConnTx {
    tx: mpsc::Sender<Out>,
    bytes: Arc<AtomicUsize>,
    kill: Option<oneshot::Sender<CloseCode>>,
}

/// The writer's end of one connection's bounded outgoing queue.
pub struct ConnRx {
    /// Queued frames.
    pub rx: mpsc::Receiver<Out>,
    /// Bytes of frame text queued (the writer subtracts what it takes).
    pub bytes: Arc<AtomicUsize>,
    /// Fires when the room gives up on the connection (queue full): close at once with this
    /// code, whatever is still queued.
    pub kill: oneshot::Receiver<CloseCode>,
}

/// A bounded outgoing queue: at most `frames` frames (at least 1).
pub fn out_queue(frames: usize) -> (ConnTx, ConnRx) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let (kill_tx, kill_rx) = oneshot::channel();
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        ConnTx {
            tx,
            bytes: bytes.clone(),
            kill: Some(kill_tx),
        },
        ConnRx {
            rx,
            bytes,
            kill: kill_rx,
        },
    )
}

/// The queue of a connection is full (frames or bytes).
#[derive(Debug, thiserror::Error)]
#[error("outgoing queue full")]
pub struct QueueFull;

impl ConnTx {
    /// Queue without waiting. A single frame larger than the byte budget is accepted when
    /// nothing else is queued. A writer that is gone counts as success (its reader reports the
    /// close).
    fn push(&self, out: Out, max_bytes: usize) -> Result<(), QueueFull> {
        let len = match &out {
            Out::Text(t) | Out::Event(t) => t.len(),
            Out::Close(_) => 0,
        };
        let queued = self.bytes.load(Ordering::Relaxed);
        if queued > 0 && queued.saturating_add(len) > max_bytes {
            return Err(QueueFull);
        }
        // Count before sending: the writer may take (and subtract) the frame at once.
        self.bytes.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => Err(QueueFull),
                    TrySendError::Closed(_) => Ok(()),
                }
            }
        }
    }

    /// Queue a close after what is queued; when the queue is full, close at once instead.
    fn close(mut self, code: CloseCode, max_bytes: usize) {
        if self.push(Out::Close(code), max_bytes).is_err() {
            if let Some(k) = self.kill.take() {
                let _ = k.send(code);
            }
        }
    }

    /// Close at once, dropping what is queued.
    fn kill(mut self, code: CloseCode) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(code);
        }
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
    /// Subscribe an SSE listener; replies with the committed seq at subscription time.
    Sse {
        /// Listener.
        tx: mpsc::UnboundedSender<SseItem>,
        /// Reply.
        reply: oneshot::Sender<u64>,
    },
    /// Wake me when something with seq > `after` is committed.
    Poll {
        /// Position.
        after: u64,
        /// Wake-up.
        reply: oneshot::Sender<()>,
    },
    /// Close a user's connections (membership removed).
    Kick(String),
    /// A user's room role changed.
    SetRole(String, Option<MemberRole>),
    /// A persist batch finished.
    PersistDone {
        /// Batch id.
        batch: u64,
        /// Success.
        ok: bool,
    },
    /// Server shutdown: close everything with 1001.
    Shutdown,
}

/// Handle to a room task.
#[derive(Clone)]
pub struct RoomHandle {
    /// Input channel.
    pub tx: mpsc::UnboundedSender<RoomMsg>,
}

impl RoomHandle {
    /// Send a message (a stopped room is ignored).
    pub fn send(&self, m: RoomMsg) {
        let _ = self.tx.send(m);
    }
}

/// The task of room (tenant, room) if it is running (no task is started).
pub fn running_room(app: &Arc<App>, tenant: &str, room: &str) -> Option<RoomHandle> {
    let rooms = match app.rooms.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    rooms
        .get(&(tenant.to_owned(), room.to_owned()))
        .filter(|h| !h.tx.is_closed())
        .cloned()
}

/// Get (or start) the task of room (tenant, room).
pub fn room_handle(app: &Arc<App>, tenant: &str, room: &str, secret: Vec<u8>) -> RoomHandle {
    let key = (tenant.to_owned(), room.to_owned());
    let mut rooms = match app.rooms.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(h) = rooms.get(&key) {
        if !h.tx.is_closed() {
            return h.clone();
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let h = RoomHandle { tx: tx.clone() };
    rooms.insert(key, h.clone());
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
    tokio::spawn(room_task(app.clone(), cfg, tx, rx));
    h
}

struct Shell {
    app: Arc<App>,
    self_tx: mpsc::UnboundedSender<RoomMsg>,
    conns: HashMap<ConnId, ConnTx>,
    /// Connections dropped for a full queue, to report to the engine as closed.
    overflowed: Vec<ConnId>,
    /// Last time expired idempotency keys were pruned from storage.
    last_prune_ms: u64,
    sse: Vec<mpsc::UnboundedSender<SseItem>>,
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

async fn room_task(
    app: Arc<App>,
    cfg: RoomConfig,
    self_tx: mpsc::UnboundedSender<RoomMsg>,
    mut rx: mpsc::UnboundedReceiver<RoomMsg>,
) {
    let mut room = load(&app, &cfg).await;
    let mut shell = Shell {
        app: app.clone(),
        self_tx,
        conns: HashMap::new(),
        overflowed: Vec::new(),
        last_prune_ms: now_ms(),
        sse: Vec::new(),
        waiters: Vec::new(),
        posts: HashMap::new(),
        next_post: 1,
        reset: false,
    };
    loop {
        let deadline = room.poll_timeout();
        let msg = match deadline {
            Some(d) => {
                let wait = d.saturating_sub(now_ms());
                tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {
                        room.handle_timeout(now_ms());
                        shell.run_effects(&mut room);
                        continue;
                    }
                }
            }
            None => rx.recv().await,
        };
        let Some(msg) = msg else { break };
        let mut stop = shell.on_msg(&mut room, msg);
        // Drain what is already queued before yielding: this is what lets commits group.
        let mut n = 0;
        while !stop && n < 1024 {
            match rx.try_recv() {
                Ok(m) => stop = shell.on_msg(&mut room, m),
                Err(_) => break,
            }
            n += 1;
        }
        shell.run_effects(&mut room);
        if shell.reset {
            shell.reset = false;
            shell.sse.clear();
            room = load(&app, &cfg).await;
        }
        if stop {
            break;
        }
    }
}

impl Shell {
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
                let _ = reply.send(room.committed_seq());
            }
            RoomMsg::Poll { after, reply } => {
                if room.committed_seq() > after {
                    let _ = reply.send(());
                } else {
                    self.waiters.push((after, reply));
                }
            }
            RoomMsg::Kick(user_id) => room.handle(now, Input::Kick { user_id }),
            RoomMsg::SetRole(user_id, member_role) => room.handle(
                now,
                Input::SetRole {
                    user_id,
                    member_role,
                },
            ),
            RoomMsg::PersistDone { batch, ok } => room.handle(
                now,
                if ok {
                    Input::Committed { batch }
                } else {
                    Input::CommitFailed { batch }
                },
            ),
            RoomMsg::Shutdown => {
                let max = self.app.config.out_queue_bytes;
                for (_, out) in self.conns.drain() {
                    out.close(CloseCode::GoingAway, max);
                }
                self.sse.clear();
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
        let Some(o) = self.conns.get(&conn) else {
            return;
        };
        if o.push(Out::Text(frame), max).is_err() {
            self.drop_slow(conn);
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

    fn run_effects_once(&mut self, room: &mut Room) {
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
                    for (id, o) in &self.conns {
                        let out = if seq.is_some() {
                            Out::Event(frame.clone())
                        } else {
                            Out::Text(frame.clone())
                        };
                        if Some(*id) != except && o.push(out, max).is_err() {
                            full.push(*id);
                        }
                    }
                    for id in full {
                        self.drop_slow(id);
                    }
                    if !self.sse.is_empty() {
                        let item = SseItem { seq, kind, frame };
                        self.sse.retain(|s| s.send(item.clone()).is_ok());
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
                    let tx = self.self_tx.clone();
                    tokio::spawn(async move {
                        let ok = match db.persist(statements).await {
                            Ok(()) => true,
                            Err(e) => {
                                eprintln!("fluxy-server: commit failed: {e}");
                                false
                            }
                        };
                        let _ = tx.send(RoomMsg::PersistDone { batch, ok });
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
