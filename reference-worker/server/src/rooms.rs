//! One task per room owning that room's engine (the native twin of one Durable Object per room).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fluxy_protocol::server::ErrorFrame;
use fluxy_protocol::CloseCode;
use fluxy_room::{ConnId, ConnectOptions, Effect, Identity, Input, PostOutcome, Room, RoomConfig};
use tokio::sync::{mpsc, oneshot};

use crate::{now_ms, App};

/// What a room sends to one WebSocket connection's writer.
#[derive(Debug)]
pub enum Out {
    /// A text frame.
    Text(Arc<str>),
    /// Close with this code.
    Close(CloseCode),
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
        /// Writer channel.
        out: mpsc::UnboundedSender<Out>,
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
    conns: HashMap<ConnId, mpsc::UnboundedSender<Out>>,
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
            Ok(l) => return Room::new(cfg.clone(), l),
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
            RoomMsg::PersistDone { batch, ok } => room.handle(
                now,
                if ok {
                    Input::Committed { batch }
                } else {
                    Input::CommitFailed { batch }
                },
            ),
            RoomMsg::Shutdown => {
                for (_, out) in self.conns.drain() {
                    let _ = out.send(Out::Close(CloseCode::GoingAway));
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

    fn run_effects(&mut self, room: &mut Room) {
        while let Some(e) = room.poll_effect() {
            match e {
                Effect::Send { conn, frame } => {
                    if let Some(o) = self.conns.get(&conn) {
                        let _ = o.send(Out::Text(frame));
                    }
                }
                Effect::Broadcast {
                    frame,
                    except,
                    seq,
                    kind,
                } => {
                    for (id, o) in &self.conns {
                        if Some(*id) != except {
                            let _ = o.send(Out::Text(frame.clone()));
                        }
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
                        let _ = o.send(Out::Close(code));
                    }
                }
                Effect::Persist { batch, statements } => {
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
            }
        }
    }
}
