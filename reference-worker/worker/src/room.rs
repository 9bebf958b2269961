//! `RoomDurableObject`: one object per (tenant, room), the single writer of its room. A thin
//! driver of the `fluxy-room` engine: it feeds inputs (socket frames, posts, commits, timers),
//! carries out the engine's effects (sends, broadcasts, closes, D1 batches), and keeps whatever
//! a connection needs after hibernation in the socket's attachment.
//!
//! - WebSockets use the hibernation API (`state.accept_web_socket`); after eviction the next
//!   event rebuilds the engine from D1 inside `blockConcurrencyWhile` and re-registers every
//!   hibernated socket from its attachment before any frame is handled.
//! - Group commit: the engine emits one `Persist` at a time; everything accepted while a D1
//!   `batch()` is in flight goes into the next one. Acks and broadcasts are released in seq
//!   order as each batch commits.
//! - Idle and token-expiry deadlines run on the object's alarm.
//! - Bounded wake-up: the engine is built from the newest events, MAX(seq), the room type,
//!   the streaming messages and the open agent runs; state older than that is read on demand
//!   (`Effect::Fetch`): the lookups queued by a drain go to D1 in one `batch()`, and their
//!   results are fed back as `Input::Fetched` (dropped if the engine was rebuilt meanwhile).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use fluxy_protocol::common::{MemberRole, MAX_PAGE_LIMIT, SUBPROTOCOL};
use fluxy_protocol::cursor::Cursor;
use fluxy_protocol::events::TimelineEvent;
use fluxy_protocol::http::{Direction, PostMessageResponse};
use fluxy_protocol::server::{BatchFrame, ErrorFrame};
use fluxy_protocol::ErrorCode;
use fluxy_room::sql::{self, SqlValue, Stmt};
use fluxy_room::{
    ConnId, ConnectOptions, Effect, FetchFailed, Input, LoadedRoom, Lookup, MessageRow,
    PostOutcome, Room, RoomConfig, RunRow,
};
use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::{
    durable_object, D1Database, DurableObject, Env, Headers, Request, Response, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

use crate::api::{EventHead, RawHistoryPage};
use crate::config::{config, Config};
use crate::db::{self, first, int, now_ms, only, prepare, prepare_stmt, rows, text};
use crate::error::{json_response, ApiError, ApiResult};
use crate::forward::{Forward, IdentityWire, Op};

#[wasm_bindgen]
extern "C" {
    /// A WebSocket seen through its `send` method only.
    type RawSocket;
    /// `WebSocket.send` with an already converted JS string (one UTF-8 decode per broadcast,
    /// not one per receiver).
    #[wasm_bindgen(method, catch, js_name = send)]
    fn send_js(this: &RawSocket, data: &JsValue) -> Result<(), JsValue>;
}

/// What a hibernatable socket carries across eviction.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attachment {
    /// Tenant id.
    t: String,
    /// Room id.
    r: String,
    /// Connection id within the room.
    c: ConnId,
    /// Verified identity (user, roles, room role, token expiry).
    id: IdentityWire,
    /// Last time a frame was received (epoch ms, refreshed at most every [`RX_SAVE_MS`]).
    rx: u64,
    /// Highest committed seq when `rx` was saved (the connection had been delivered every
    /// event up to it: broadcasts are sent synchronously at commit).
    s: u64,
    /// Opted in to `batch` frames with `?batch=1` `[FX-TRN-9]` (absent in attachments written
    /// before the extension existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    b: bool,
}

/// How often the idle clock in a socket's attachment is refreshed.
fn rx_save_ms(cfg: &Config) -> u64 {
    (cfg.idle_timeout_ms / 10).clamp(100, 5000)
}

struct Sock {
    ws: WebSocket,
    att: Attachment,
    /// For a batching connection: index into the current drain's [`Run`] of its first
    /// timeline event not yet sent.
    pending: Option<usize>,
}

/// Timeline bodies broadcast during one drain of the engine's effects, for batching
/// connections `[FX-TRN-10]`. A connection's pending events are always a suffix `run[from..]`
/// (every timeline broadcast goes to every connection), so connections with the same `from`
/// share one frame, built once.
#[derive(Default)]
struct Run {
    bodies: Vec<Arc<str>>,
    /// `from` → the frame for `bodies[from..]` (valid until `bodies` grows).
    built: HashMap<usize, JsValue>,
}

impl Run {
    fn push(&mut self, body: Arc<str>) {
        self.bodies.push(body);
        self.built.clear();
    }

    /// Send the connection's pending events: one `batch` frame, or the event itself when
    /// only one is pending.
    fn flush(&mut self, s: &mut Sock) {
        let Some(from) = s.pending.take() else { return };
        let bodies = &self.bodies;
        let js = self.built.entry(from).or_insert_with(|| {
            let tail = &bodies[from..];
            if let [one] = tail {
                return JsValue::from_str(one);
            }
            JsValue::from_str(&BatchFrame::join(tail))
        });
        send_raw(&s.ws, js);
    }

    fn flush_all(&mut self, sockets: &mut HashMap<ConnId, Sock>) {
        for s in sockets.values_mut() {
            self.flush(s);
        }
    }
}

fn send_raw(ws: &WebSocket, js: &JsValue) {
    let raw: &web_sys::WebSocket = ws.as_ref();
    let _ = raw.unchecked_ref::<RawSocket>().send_js(js);
}

struct SseSub {
    /// Which listener (to remove it when its stream ends).
    id: u64,
    tx: mpsc::UnboundedSender<Result<Vec<u8>, worker::Error>>,
    last: u64,
}

/// An SSE response body. The runtime drops it when the stream is cancelled (the client went
/// away: workerd cancels the body it was piping to the closed connection, across the Worker →
/// object hop); dropping `_gone` then wakes the listener's keep-alive task, which removes the
/// listener from the room at once rather than at the next ping that would fail.
struct SseBody {
    rx: mpsc::UnboundedReceiver<Result<Vec<u8>, worker::Error>>,
    _gone: oneshot::Sender<()>,
}

impl futures_util::Stream for SseBody {
    type Item = Result<Vec<u8>, worker::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.rx).poll_next(cx)
    }
}

#[derive(Default)]
struct Core {
    key: Option<(Arc<str>, Arc<str>)>,
    room: Option<Room>,
    loading: bool,
    load_waiters: Vec<oneshot::Sender<()>>,
    /// Hibernated sockets have been re-registered (only once per instance).
    restored: bool,
    sockets: HashMap<ConnId, Sock>,
    next_conn: ConnId,
    persist: VecDeque<(u64, Vec<Stmt>)>,
    committing: bool,
    /// Lookups the engine asked for, not yet sent to D1.
    lookups: VecDeque<(u64, Lookup, Stmt)>,
    /// A lookup loop is running.
    fetching: bool,
    /// Bumped when the engine is dropped (storage failure): results of lookups of the old
    /// engine are not fed to the new one (fetch ids restart at 1).
    generation: u64,
    posts: HashMap<u64, oneshot::Sender<Result<PostOutcome, ErrorFrame>>>,
    next_request: u64,
    sse: Vec<SseSub>,
    next_sse: u64,
    pollers: Vec<(u64, oneshot::Sender<()>)>,
    alarm_at: Option<u64>,
    stats: CommitStats,
}

/// Commit statistics, logged at most every few seconds while the room is busy.
#[derive(Default)]
struct CommitStats {
    batches: u64,
    statements: u64,
    busy_ms: u64,
    since_ms: u64,
}

struct Shell {
    state: State,
    env: Env,
    cfg: Rc<Config>,
    core: RefCell<Core>,
}

/// The Durable Object class (exported to JS under this name).
#[durable_object]
pub struct RoomDurableObject {
    shell: Rc<Shell>,
}

impl DurableObject for RoomDurableObject {
    fn new(state: State, env: Env) -> Self {
        let cfg = config(&env);
        RoomDurableObject {
            shell: Rc::new(Shell {
                state,
                env,
                cfg,
                core: RefCell::new(Core {
                    next_conn: 1,
                    next_request: 1,
                    ..Core::default()
                }),
            }),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let Some(fwd) = Forward::from_request(&req) else {
            return ApiError::new(ErrorCode::NotFound, "no such route").into_response();
        };
        let body = if matches!(fwd.op, Op::Post { .. }) {
            Some(req.text().await?)
        } else {
            None
        };
        match self.shell.serve(fwd, body).await {
            Ok(r) => Ok(r),
            Err(e) => e.into_response(),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> worker::Result<()> {
        let Some(att) = attachment(&ws) else {
            return Ok(());
        };
        if self.shell.ensure_loaded(&att.t, &att.r).await.is_err() {
            let _ = ws.close(Some(1011), Some("internal_error"));
            return Ok(());
        }
        let conn = att.c;
        let input = match message {
            WebSocketIncomingMessage::String(text) => Input::Text { conn, text },
            WebSocketIncomingMessage::Binary(_) => Input::Binary { conn },
        };
        self.shell.touch(conn);
        self.shell.drive(input).await;
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> worker::Result<()> {
        self.shell.socket_gone(&ws).await;
        // Complete the closing handshake (a no-op if the runtime already did).
        let _ = ws.close(Some(1000), Some("normal"));
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        self.shell.socket_gone(&ws).await;
        Ok(())
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.shell.on_alarm().await;
        Response::ok("")
    }
}

fn attachment(ws: &WebSocket) -> Option<Attachment> {
    ws.deserialize_attachment::<Attachment>().ok().flatten()
}

fn sse_bytes(seq: Option<u64>, kind: &str, data: &str) -> Vec<u8> {
    let mut s = String::with_capacity(data.len() + 48);
    if let Some(seq) = seq {
        s.push_str("id: ");
        s.push_str(&seq.to_string());
        s.push('\n');
    }
    s.push_str("event: ");
    s.push_str(kind);
    s.push_str("\ndata: ");
    s.push_str(data);
    s.push_str("\n\n");
    s.into_bytes()
}

impl Shell {
    fn db(&self) -> ApiResult<D1Database> {
        db::database(&self.env)
    }

    // ------------------------------------------------------------------ loading

    /// Make sure the engine for (tenant, room) is loaded. Loading runs inside
    /// `blockConcurrencyWhile`, so no other event is delivered until the engine (and every
    /// hibernated socket) is in place.
    async fn ensure_loaded(self: &Rc<Self>, tenant: &str, room: &str) -> ApiResult<()> {
        loop {
            let wait = {
                let mut core = self.core.borrow_mut();
                if core.room.is_some() {
                    return match &core.key {
                        Some((t, r)) if &**t == tenant && &**r == room => Ok(()),
                        _ => Err(ApiError::internal("room object", "named for another room")),
                    };
                }
                if core.loading {
                    let (tx, rx) = oneshot::channel();
                    core.load_waiters.push(tx);
                    Some(rx)
                } else {
                    core.loading = true;
                    None
                }
            };
            if let Some(rx) = wait {
                let _ = rx.await;
                continue;
            }
            let shell = self.clone();
            let (t, r) = (tenant.to_owned(), room.to_owned());
            let res = self
                .state
                .block_concurrency_while(async move {
                    let res = shell.load(&t, &r).await;
                    Ok::<_, worker::Error>(res.map_err(|e| e.0.message))
                })
                .await;
            let waiters = {
                let mut core = self.core.borrow_mut();
                core.loading = false;
                std::mem::take(&mut core.load_waiters)
            };
            for w in waiters {
                let _ = w.send(());
            }
            match res {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(ApiError::internal("loading room", e)),
                Err(e) => return Err(ApiError::internal("loading room", e)),
            }
        }
    }

    /// Read the room from D1 (two round trips), build the engine, re-register hibernated
    /// sockets, install it.
    async fn load(self: &Rc<Self>, tenant: &str, room: &str) -> ApiResult<()> {
        let db = self.db()?;
        let (t, r): (SqlValue, SqlValue) = (tenant.into(), room.into());
        let head = db::batch(
            &db,
            vec![
                prepare(&db, sql::LOAD_ROOM_TYPE, &[t.clone(), r.clone()])?,
                prepare(&db, sql::LOAD_MAX_SEQ, &[t.clone(), r.clone()])?,
                prepare(&db, sql::TENANT_SECRET, std::slice::from_ref(&t))?,
            ],
        )
        .await?;
        let room_type = head
            .first()
            .map(first)
            .transpose()?
            .flatten()
            .and_then(|row| text(&row, "type"))
            .map(|s| serde_json::from_value(serde_json::Value::String(s)).unwrap_or_default())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such room"))?;
        let current = head
            .get(1)
            .map(first)
            .transpose()?
            .flatten()
            .and_then(|row| only(&row).and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        let secret = head
            .get(2)
            .map(first)
            .transpose()?
            .flatten()
            .and_then(|row| text(&row, "jwt_secret"))
            .unwrap_or_default();
        let window = u64::from(self.cfg.resume_window).max(u64::from(MAX_PAGE_LIMIT));
        let now = now_ms();
        // Bounded: the newest events, the streaming messages and the open runs; the engine
        // looks up anything older on demand.
        let rest = db::batch(
            &db,
            vec![
                prepare(
                    &db,
                    sql::LOAD_RECENT,
                    &[t.clone(), r.clone(), current.saturating_sub(window).into()],
                )?,
                prepare(&db, sql::LOAD_OPEN_MESSAGES, &[t.clone(), r.clone()])?,
                prepare(&db, sql::LOAD_OPEN_RUNS, &[t.clone(), r.clone()])?,
                prepare(&db, sql::LOAD_OPEN_RUN_ITEMS, &[t, r])?,
            ],
        )
        .await?;
        let get = |i: usize| -> ApiResult<Vec<db::Row>> {
            rest.get(i)
                .map(rows)
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let bodies = |i: usize| -> ApiResult<Vec<String>> {
            Ok(get(i)?.iter().filter_map(|row| text(row, "body")).collect())
        };
        let runs = get(2)?
            .iter()
            .filter_map(|row| {
                Some((
                    text(row, "agent_id")?,
                    text(row, "run_id")?,
                    int(row, "terminal")? != 0,
                ))
            })
            .collect::<Vec<_>>();
        let items = get(3)?
            .iter()
            .filter_map(|row| {
                Some((
                    text(row, "agent_id")?,
                    text(row, "run_id")?,
                    text(row, "kind")?,
                    text(row, "item_id")?,
                    int(row, "pending")? != 0,
                ))
            })
            .collect::<Vec<_>>();
        let loaded = LoadedRoom {
            room_type,
            current_seq: current,
            recent: bodies(0)?,
            messages: get(1)?
                .iter()
                .filter_map(|row| {
                    Some(MessageRow {
                        id: int(row, "id")?,
                        user_id: text(row, "user_id")?,
                        version: u32::try_from(int(row, "version")?).unwrap_or(1),
                        deleted: int(row, "deleted")? != 0,
                        streaming: int(row, "streaming")? != 0,
                    })
                })
                .collect(),
            runs: RunRow::assemble(runs, items),
            ..LoadedRoom::default()
        };
        let (ta, ra): (Arc<str>, Arc<str>) = (Arc::from(tenant), Arc::from(room));
        let cfg = RoomConfig {
            tenant: ta.clone(),
            room_id: ra.clone(),
            jwt_secret: secret.into_bytes(),
            idle_timeout_ms: self.cfg.idle_timeout_ms,
            rate_burst: self.cfg.rate_burst,
            rate_per_second: self.cfg.rate_per_second,
            resume_window: self.cfg.resume_window,
            faults: self.cfg.faults,
        };
        let mut engine = Room::new(cfg, loaded);
        let mut core = self.core.borrow_mut();
        if !core.restored {
            core.restored = true;
            // Re-register hibernated sockets (the engine emits nothing for them: their
            // welcome/snapshot/presence were sent before the eviction). The idle clock resumes
            // from the saved `rx`.
            for ws in self.state.get_websockets() {
                let Some(att) = attachment(&ws) else { continue };
                if *att.t != *tenant || *att.r != *room {
                    continue;
                }
                engine.handle(
                    now,
                    Input::Restore {
                        conn: att.c,
                        identity: att.id.clone().into(),
                        last_rx_ms: att.rx,
                    },
                );
                core.next_conn = core.next_conn.max(att.c + 1);
                core.sockets.insert(
                    att.c,
                    Sock {
                        ws,
                        att,
                        pending: None,
                    },
                );
            }
        }
        worker::console_log!(
            "fluxy-worker: room {tenant}/{room} loaded at seq {current}; {} hibernated socket(s) restored",
            core.sockets.len()
        );
        core.key = Some((ta, ra));
        core.room = Some(engine);
        Ok(())
    }

    // ------------------------------------------------------------------ driving

    /// Feed one input, carry out the effects, run the commit loop, arm the alarm.
    async fn drive(self: &Rc<Self>, input: Input) {
        {
            let mut core = self.core.borrow_mut();
            let Some(room) = core.room.as_mut() else {
                return;
            };
            room.handle(now_ms(), input);
            self.pump(&mut core);
        }
        self.fetch_loop().await;
        self.commit_loop().await;
        self.arm_alarm().await;
    }

    /// Answer the engine's lookups while it has any: each round sends every queued lookup to
    /// D1 in one `batch()` and feeds the results back in fetch order. Only one loop runs at a
    /// time; lookups queued meanwhile go in its next round. Any order of results would do (the
    /// engine never lets a result overwrite newer state); a failed batch fails every lookup
    /// of the round, which answers the requests waiting for them with `internal_error`.
    async fn fetch_loop(self: &Rc<Self>) {
        {
            let mut core = self.core.borrow_mut();
            if core.fetching || core.lookups.is_empty() {
                return;
            }
            core.fetching = true;
        }
        loop {
            let (round, generation) = {
                let mut core = self.core.borrow_mut();
                let round: Vec<(u64, Lookup, Stmt)> = core.lookups.drain(..).collect();
                (round, core.generation)
            };
            if round.is_empty() {
                break;
            }
            let results = self.lookup_round(&round).await;
            let mut core = self.core.borrow_mut();
            if core.generation != generation {
                continue;
            }
            for ((fetch, lookup, _), result) in round.into_iter().zip(results) {
                let result = result.and_then(|row| lookup.found(row.as_deref()));
                if let Some(room) = core.room.as_mut() {
                    room.handle(now_ms(), Input::Fetched { fetch, result });
                }
                self.pump(&mut core);
            }
        }
        self.core.borrow_mut().fetching = false;
    }

    /// Run one round of lookups: per lookup, its first row as values in
    /// [`Lookup::columns`] order (`None`: no row), or a failure.
    async fn lookup_round(
        &self,
        round: &[(u64, Lookup, Stmt)],
    ) -> Vec<Result<Option<Vec<SqlValue>>, FetchFailed>> {
        let failed = || round.iter().map(|_| Err(FetchFailed)).collect();
        let Ok(db) = self.db() else {
            return failed();
        };
        let Ok(prepared) = round
            .iter()
            .map(|(_, _, s)| prepare_stmt(&db, s))
            .collect::<ApiResult<Vec<_>>>()
        else {
            return failed();
        };
        let results = match db::batch(&db, prepared).await {
            Ok(r) => r,
            Err(e) => {
                worker::console_error!("fluxy-worker: {} lookup(s) failed: {e}", round.len());
                return failed();
            }
        };
        round
            .iter()
            .enumerate()
            .map(|(i, (_, lookup, _))| {
                let row = results
                    .get(i)
                    .map(first)
                    .transpose()
                    .map_err(|_| FetchFailed)?
                    .flatten();
                Ok(row.map(|row| {
                    lookup
                        .columns()
                        .iter()
                        .map(|c| match row.get(*c) {
                            Some(serde_json::Value::String(t)) => {
                                SqlValue::Text(Arc::from(t.as_str()))
                            }
                            Some(v) => v
                                .as_i64()
                                .or_else(|| v.as_f64().map(|f| f as i64))
                                .map_or(SqlValue::Null, SqlValue::Int),
                            None => SqlValue::Null,
                        })
                        .collect()
                }))
            })
            .collect()
    }

    /// Run D1 batches while the engine has any to write. Only one loop runs at a time; events
    /// accepted meanwhile are queued by the engine and written together by the next batch.
    async fn commit_loop(self: &Rc<Self>) {
        {
            let mut core = self.core.borrow_mut();
            if core.committing || core.persist.is_empty() {
                return;
            }
            core.committing = true;
        }
        loop {
            let next = self.core.borrow_mut().persist.pop_front();
            let Some((batch, statements)) = next else {
                break;
            };
            let t0 = now_ms();
            let n = statements.len() as u64;
            let ok = match self.write(&statements).await {
                Ok(()) => true,
                Err(e) => {
                    worker::console_error!("fluxy-worker: commit of batch {batch} failed: {e}");
                    false
                }
            };
            let mut core = self.core.borrow_mut();
            let now = now_ms();
            let st = &mut core.stats;
            st.batches += 1;
            st.statements += n;
            st.busy_ms += now.saturating_sub(t0);
            if st.since_ms == 0 {
                st.since_ms = t0;
            }
            if now.saturating_sub(st.since_ms) >= 5000 {
                worker::console_log!(
                    "fluxy-worker: {} D1 batches ({} statements, {:.1}/batch) in {} ms, D1 busy {} ms",
                    st.batches,
                    st.statements,
                    st.statements as f64 / st.batches as f64,
                    now - st.since_ms,
                    st.busy_ms
                );
                *st = CommitStats::default();
            }
            if let Some(room) = core.room.as_mut() {
                let input = if ok {
                    Input::Committed { batch }
                } else {
                    Input::CommitFailed { batch }
                };
                room.handle(now_ms(), input);
            }
            self.pump(&mut core);
        }
        self.core.borrow_mut().committing = false;
    }

    async fn write(&self, statements: &[Stmt]) -> ApiResult<()> {
        let db = self.db()?;
        let prepared = statements
            .iter()
            .map(|s| prepare_stmt(&db, s))
            .collect::<ApiResult<Vec<_>>>()?;
        db::batch(&db, prepared).await?;
        Ok(())
    }

    /// Carry out every queued effect (synchronously, in order).
    ///
    /// Connections that opted in with `?batch=1` get the drain's consecutive timeline events as
    /// one `batch` frame `[FX-TRN-10]`: their pending events are flushed before any other frame
    /// to them (an `ack` excepted: it may overtake earlier events, never the sender's own copy,
    /// which is broadcast after it `[FX-TRN-11]`) and at the end of the drain.
    fn pump(&self, core: &mut Core) {
        let mut run = Run::default();
        while let Some(effect) = core.room.as_mut().and_then(Room::poll_effect) {
            match effect {
                Effect::Send { conn, frame } => {
                    if let Some(s) = core.sockets.get_mut(&conn) {
                        if !frame.starts_with(r#"{"type":"ack""#) {
                            run.flush(s);
                        }
                        let _ = s.ws.send_with_str(&*frame);
                    }
                }
                Effect::Broadcast {
                    frame,
                    except,
                    seq,
                    kind,
                } => {
                    if seq.is_none() {
                        run.flush_all(&mut core.sockets);
                    } else {
                        // A socket that does not get this event: its batch ends before it
                        // (every batch stays gap-free).
                        if let Some(s) = except.and_then(|c| core.sockets.get_mut(&c)) {
                            run.flush(s);
                        }
                        run.push(frame.clone());
                    }
                    let at = run.bodies.len().saturating_sub(1);
                    let mut js = None;
                    for (id, s) in &mut core.sockets {
                        if Some(*id) == except {
                            continue;
                        }
                        if s.att.b && seq.is_some() {
                            s.pending.get_or_insert(at);
                        } else {
                            let js = js.get_or_insert_with(|| JsValue::from_str(&frame));
                            send_raw(&s.ws, js);
                        }
                    }
                    if !core.sse.is_empty() {
                        let with_id = !self.cfg.faults.sse_no_id;
                        core.sse.retain_mut(|sub| match seq {
                            Some(s) if s <= sub.last => true,
                            Some(s) => {
                                sub.last = s;
                                let id = with_id.then_some(s);
                                sub.tx
                                    .unbounded_send(Ok(sse_bytes(id, kind, &frame)))
                                    .is_ok()
                            }
                            None => sub
                                .tx
                                .unbounded_send(Ok(sse_bytes(None, kind, &frame)))
                                .is_ok(),
                        });
                    }
                    if let Some(s) = seq {
                        if !core.pollers.is_empty() {
                            let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut core.pollers)
                                .into_iter()
                                .partition(|(after, _)| s > *after);
                            core.pollers = rest;
                            for (_, w) in ready {
                                let _ = w.send(());
                            }
                        }
                    }
                }
                Effect::Close { conn, code } => {
                    if let Some(mut s) = core.sockets.remove(&conn) {
                        run.flush(&mut s);
                        let _ = s.ws.close(Some(code.code()), Some(code.reason()));
                    }
                }
                Effect::Persist { batch, statements } => {
                    core.persist.push_back((batch, statements))
                }
                Effect::Fetch {
                    fetch,
                    lookup,
                    statement,
                } => core.lookups.push_back((fetch, lookup, statement)),
                Effect::PostDone { request, result } => {
                    if let Some(tx) = core.posts.remove(&request) {
                        let _ = tx.send(result);
                    }
                }
                Effect::IdentityChanged { conn, identity } => {
                    // In-band `auth` or a role change: keep it with the socket, so that a
                    // reload after eviction restores it (expiry, roles, room role).
                    if let Some(s) = core.sockets.get_mut(&conn) {
                        s.att.id = identity.into();
                        let _ = s.ws.serialize_attachment(&s.att);
                    }
                }
                Effect::Reset => {
                    // Storage failed: the engine closed every connection; rebuild on next use.
                    core.room = None;
                    core.sockets.clear();
                    core.sse.clear();
                    core.persist.clear();
                    core.lookups.clear();
                    core.generation += 1;
                    for (_, w) in core.pollers.drain(..) {
                        let _ = w.send(());
                    }
                    break;
                }
            }
        }
        run.flush_all(&mut core.sockets);
    }

    /// Arm the alarm for the engine's next deadline when it is earlier than the armed one.
    async fn arm_alarm(&self) {
        let want = {
            let core = self.core.borrow();
            let Some(deadline) = core.room.as_ref().and_then(Room::poll_timeout) else {
                return;
            };
            match core.alarm_at {
                Some(at) if at <= deadline => return,
                _ => deadline,
            }
        };
        self.core.borrow_mut().alarm_at = Some(want);
        // An absolute time (`From<i64>` would be an offset from now).
        let when = worker::ScheduledTime::new(js_sys::Date::new(&JsValue::from_f64(want as f64)));
        if let Err(e) = self.state.storage().set_alarm(when).await {
            worker::console_error!("fluxy-worker: set_alarm failed: {e}");
            self.core.borrow_mut().alarm_at = None;
        }
    }

    async fn on_alarm(self: &Rc<Self>) {
        self.core.borrow_mut().alarm_at = None;
        let key = {
            let core = self.core.borrow();
            core.key.clone()
        };
        let key = match key {
            Some((t, r)) => Some((t.to_string(), r.to_string())),
            None => self
                .state
                .get_websockets()
                .iter()
                .find_map(attachment)
                .map(|a| (a.t, a.r)),
        };
        let Some((t, r)) = key else { return };
        if self.ensure_loaded(&t, &r).await.is_err() {
            return;
        }
        {
            let mut core = self.core.borrow_mut();
            if let Some(room) = core.room.as_mut() {
                room.handle_timeout(now_ms());
            }
            self.pump(&mut core);
        }
        self.commit_loop().await;
        self.arm_alarm().await;
    }

    /// Refresh the idle clock kept in the socket's attachment (at most every few seconds).
    fn touch(&self, conn: ConnId) {
        let now = now_ms();
        let every = rx_save_ms(&self.cfg);
        let mut core = self.core.borrow_mut();
        let seq = core.room.as_ref().map_or(0, Room::committed_seq);
        if let Some(s) = core.sockets.get_mut(&conn) {
            if now.saturating_sub(s.att.rx) >= every {
                s.att.rx = now;
                s.att.s = seq;
                let _ = s.ws.serialize_attachment(&s.att);
            }
        }
    }

    async fn socket_gone(self: &Rc<Self>, ws: &WebSocket) {
        let Some(att) = attachment(ws) else { return };
        let known = {
            let mut core = self.core.borrow_mut();
            core.room.is_some() && core.sockets.remove(&att.c).is_some()
        };
        if known {
            self.drive(Input::Closed { conn: att.c }).await;
        } else if self.ensure_loaded(&att.t, &att.r).await.is_ok() {
            // Loaded just now: the socket was re-registered from its attachment.
            let removed = self.core.borrow_mut().sockets.remove(&att.c).is_some();
            if removed {
                self.drive(Input::Closed { conn: att.c }).await;
            }
        }
    }

    // ------------------------------------------------------------------ requests

    async fn serve(self: &Rc<Self>, fwd: Forward, body: Option<String>) -> ApiResult<Response> {
        self.ensure_loaded(&fwd.tenant, &fwd.room).await?;
        match fwd.op {
            Op::Connect {
                identity,
                membership_version,
                replay,
                replay_limit,
                last_seq,
                subprotocol,
                batch,
                compat,
            } => {
                self.connect(
                    &fwd.tenant,
                    &fwd.room,
                    identity,
                    ConnectOptions {
                        replay,
                        replay_limit,
                        last_seq,
                        compat,
                        membership_version,
                    },
                    subprotocol,
                    batch,
                )
                .await
            }
            Op::Post { identity } => {
                self.post(&fwd.tenant, &fwd.room, identity, body.unwrap_or_default())
                    .await
            }
            Op::Stream { last_event_id } => {
                self.stream(&fwd.tenant, &fwd.room, last_event_id).await
            }
            Op::Poll {
                after,
                limit,
                timeout_ms,
            } => {
                self.poll(&fwd.tenant, &fwd.room, after, limit, timeout_ms)
                    .await
            }
            Op::SetRole {
                user_id,
                member_role,
                version,
            } => {
                // The engine answers with `IdentityChanged` per socket of the user (kept in
                // their attachments).
                self.drive(Input::SetRole {
                    user_id,
                    member_role,
                    version,
                })
                .await;
                Ok(Response::empty()?.with_status(204))
            }
            Op::Kick { user_id, version } => {
                self.drive(Input::Kick { user_id, version }).await;
                Ok(Response::empty()?.with_status(204))
            }
            Op::Stats => {
                let core = self.core.borrow();
                let stats = serde_json::json!({
                    "sseListeners": core.sse.len(),
                    "sockets": core.sockets.len(),
                    "pollers": core.pollers.len(),
                });
                Ok(json_response(200, &stats)?)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn connect(
        self: &Rc<Self>,
        tenant: &str,
        room: &str,
        identity: IdentityWire,
        options: ConnectOptions,
        subprotocol: bool,
        batch: bool,
    ) -> ApiResult<Response> {
        // Membership again, from inside the object (issue 13: the handshake race). The object
        // cannot be evicted while this request is in flight, so any kick or role change written
        // after this read reaches this engine with a newer version than the one read here. One
        // written since the Worker's read (and maybe applied by an instance evicted since) is
        // given to the engine now, as its latest knowledge of the user; the `Open` below, with
        // the Worker's older version, then takes that newer state (or is closed 4003).
        let (role, version) = self
            .fresh_membership(tenant, room, &identity.user_id)
            .await?;
        if version > options.membership_version {
            let user_id = identity.user_id.clone();
            let input = match role {
                None if identity.member_role.is_some() => Input::Kick { user_id, version },
                member_role => Input::SetRole {
                    user_id,
                    member_role,
                    version,
                },
            };
            self.drive(input).await;
        }
        let pair = WebSocketPair::new()?;
        let now = now_ms();
        let conn = {
            let mut core = self.core.borrow_mut();
            let c = core.next_conn;
            core.next_conn += 1;
            let seq = core.room.as_ref().map_or(0, Room::committed_seq);
            let att = Attachment {
                t: tenant.to_owned(),
                r: room.to_owned(),
                c,
                id: identity.clone(),
                rx: now,
                s: seq,
                b: batch,
            };
            pair.server.serialize_attachment(&att)?;
            self.state.accept_web_socket(&pair.server);
            core.sockets.insert(
                c,
                Sock {
                    ws: pair.server.clone(),
                    att,
                    pending: None,
                },
            );
            c
        };
        self.drive(Input::Open {
            conn,
            identity: identity.into(),
            options,
        })
        .await;
        let resp = Response::from_websocket(pair.client)?;
        if subprotocol {
            let h = Headers::new();
            h.set("sec-websocket-protocol", SUBPROTOCOL)?;
            return Ok(resp.with_headers(h));
        }
        Ok(resp)
    }

    /// A user's room role and membership version as D1 has them now (one statement).
    async fn fresh_membership(
        &self,
        tenant: &str,
        room: &str,
        user: &str,
    ) -> ApiResult<(Option<MemberRole>, u64)> {
        let db = self.db()?;
        let r = prepare(
            &db,
            sql::MEMBER_ROLE_VERSION,
            &[tenant.into(), room.into(), user.into()],
        )?
        .all()
        .await?;
        let row = first(&r)?;
        let role = row
            .as_ref()
            .and_then(|row| text(row, "role"))
            .and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok());
        let version = row
            .as_ref()
            .and_then(|row| int(row, "version"))
            .unwrap_or(0);
        Ok((role, version))
    }

    async fn post(
        self: &Rc<Self>,
        tenant: &str,
        room: &str,
        identity: IdentityWire,
        body: String,
    ) -> ApiResult<Response> {
        let frame: fluxy_protocol::client::SendMessageFrame =
            serde_json::from_str(&body).map_err(|e| ApiError::internal("forwarded frame", e))?;
        let (tx, rx) = oneshot::channel();
        let request = {
            let mut core = self.core.borrow_mut();
            let r = core.next_request;
            core.next_request += 1;
            core.posts.insert(r, tx);
            r
        };
        self.drive(Input::Post {
            request,
            identity: identity.into(),
            frame,
        })
        .await;
        let outcome = rx
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "room unavailable"))??;
        let seq = outcome
            .ack
            .seq
            .ok_or_else(|| ApiError::internal("post", "ack without seq"))?;
        let body = match outcome.event {
            Some(b) => b.to_string(),
            None => {
                let db = self.db()?;
                let r = prepare(
                    &db,
                    sql::EVENT_BY_SEQ,
                    &[tenant.into(), room.into(), seq.into()],
                )?
                .all()
                .await?;
                first(&r)?
                    .and_then(|row| text(&row, "body"))
                    .ok_or_else(|| ApiError::internal("post", "original event missing"))?
            }
        };
        let message = match serde_json::from_str::<TimelineEvent>(&body) {
            Ok(TimelineEvent::Message(m)) => m,
            _ => return Err(ApiError::internal("post", "stored event is not a message")),
        };
        let status = if outcome.ack.duplicate { 200 } else { 201 };
        Ok(json_response(
            status,
            &PostMessageResponse {
                message,
                duplicate: outcome.ack.duplicate,
            },
        )?)
    }

    /// Committed events with seq > `after` (at most `limit`) as (seq, type, body): from the
    /// engine's window, or from D1 when the window no longer covers `after`.
    async fn events_after(
        &self,
        tenant: &str,
        room: &str,
        after: u64,
        limit: usize,
    ) -> ApiResult<Vec<(u64, String, String)>> {
        let recent = self
            .core
            .borrow()
            .room
            .as_ref()
            .and_then(|r| r.recent_after(after, limit));
        if let Some(events) = recent {
            return Ok(events
                .into_iter()
                .map(|(seq, kind, body)| (seq, kind.to_owned(), body.to_string()))
                .collect());
        }
        let db = self.db()?;
        let r = prepare(
            &db,
            sql::HISTORY_AFTER,
            &[
                tenant.into(),
                room.into(),
                after.into(),
                (limit as u64).into(),
            ],
        )?
        .all()
        .await?;
        rows(&r)?
            .iter()
            .filter_map(|row| text(row, "body"))
            .map(|b| {
                let h: EventHead =
                    serde_json::from_str(&b).map_err(|e| ApiError::internal("event", e))?;
                Ok((h.seq, h.kind, b))
            })
            .collect()
    }

    fn committed(&self) -> ApiResult<u64> {
        self.core
            .borrow()
            .room
            .as_ref()
            .map(Room::committed_seq)
            .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "room is reloading"))
    }

    async fn stream(
        self: &Rc<Self>,
        tenant: &str,
        room: &str,
        last: Option<u64>,
    ) -> ApiResult<Response> {
        let (tx, rx) = mpsc::unbounded::<Result<Vec<u8>, worker::Error>>();
        let (gone_tx, mut gone) = oneshot::channel::<()>();
        let rx = SseBody { rx, _gone: gone_tx };
        let id = {
            let mut core = self.core.borrow_mut();
            core.next_sse += 1;
            core.next_sse
        };
        let with_id = !self.cfg.faults.sse_no_id;
        match last {
            None => {
                let current = self.committed()?;
                let ready = format!("{{\"currentSeq\":{current}}}");
                let _ = tx.unbounded_send(Ok(sse_bytes(None, "ready", &ready)));
                self.core.borrow_mut().sse.push(SseSub {
                    id,
                    tx: tx.clone(),
                    last: current,
                });
            }
            Some(pos) if pos > self.committed()? => {
                let mut e = ErrorFrame::new(
                    ErrorCode::ResyncRequired,
                    "Last-Event-ID is ahead of the room; reload history",
                );
                e.field = Some("lastEventId".into());
                let data =
                    serde_json::to_string(&e).map_err(|e| ApiError::internal("encode", e))?;
                let _ = tx.unbounded_send(Ok(sse_bytes(None, "error", &data)));
                drop(tx);
                return sse_response(rx);
            }
            Some(mut pos) => loop {
                // Catch up from storage until the engine's window covers the position, then
                // register in the same synchronous step: no gap, no repeat [FX-TRN-3].
                let covered = {
                    let core = self.core.borrow();
                    let room_ = core.room.as_ref().ok_or_else(|| {
                        ApiError::new(ErrorCode::Unavailable, "room is reloading")
                    })?;
                    room_
                        .recent_after(pos, usize::MAX)
                        .map(|v| (v, room_.committed_seq()))
                };
                if let Some((events, current)) = covered {
                    for (seq, kind, body) in events {
                        let _ =
                            tx.unbounded_send(Ok(sse_bytes(with_id.then_some(seq), kind, &body)));
                    }
                    self.core.borrow_mut().sse.push(SseSub {
                        id,
                        tx: tx.clone(),
                        last: current,
                    });
                    break;
                }
                let events = self
                    .events_after(tenant, room, pos, MAX_PAGE_LIMIT as usize)
                    .await?;
                if events.is_empty() {
                    return Err(ApiError::internal("sse", "storage behind the engine"));
                }
                for (seq, kind, body) in events {
                    pos = seq;
                    let _ = tx.unbounded_send(Ok(sse_bytes(with_id.then_some(seq), &kind, &body)));
                }
            },
        }
        // Keep-alive comments [FX-TRN-6] until the client goes away: its body is dropped
        // (`gone` resolves) or, failing that, a ping cannot be sent. Either way the listener
        // leaves the room now. The pings are also what makes workerd notice a closed client:
        // it learns of it only from a failed write, one hop at a time (the client's socket,
        // then the Worker → object stream), so a gone listener is released about 3 periods
        // (`FLUXY_SSE_PING_MS`, default 3 s) after its client left; measured by
        // bench/sse-release.mjs in scripts/ci-worker.
        let shell = self.clone();
        let ping = Duration::from_millis(self.cfg.sse_ping_ms);
        wasm_bindgen_futures::spawn_local(async move {
            let t0 = now_ms();
            let release = |why: &str| {
                let mut core = shell.core.borrow_mut();
                core.sse.retain(|s| s.id != id);
                worker::console_log!(
                    "fluxy-worker: SSE listener {id} released (open {} ms): {why}; {} left",
                    now_ms().saturating_sub(t0),
                    core.sse.len()
                );
            };
            loop {
                let mut delay = worker::Delay::from(ping);
                match select(&mut delay, &mut gone).await {
                    Either::Left(_) => {
                        if tx.unbounded_send(Ok(b": ping\n\n".to_vec())).is_err() {
                            release("a ping could not be queued");
                            return;
                        }
                    }
                    Either::Right(_) => {
                        release("its body was dropped");
                        // Let the pending timer fire before it is dropped: dropping it now
                        // would clear it from the context of whatever dropped the body,
                        // which workerd refuses (a critical error that resets the object).
                        delay.await;
                        return;
                    }
                }
            }
        });
        sse_response(rx)
    }

    async fn poll(
        self: &Rc<Self>,
        tenant: &str,
        room: &str,
        after: u64,
        limit: u32,
        timeout_ms: u64,
    ) -> ApiResult<Response> {
        let limit_n = limit as usize;
        if self.committed()? <= after && timeout_ms > 0 {
            let (tx, rx) = oneshot::channel();
            self.core.borrow_mut().pollers.push((after, tx));
            let timer = worker::Delay::from(Duration::from_millis(timeout_ms));
            match select(rx, timer).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
        let current = self.committed()?;
        let mut found = self.events_after(tenant, room, after, limit_n + 1).await?;
        let more = found.len() > limit_n;
        found.truncate(limit_n);
        let last = found.last().map_or(after, |(seq, _, _)| *seq);
        let bodies: Vec<String> = found.into_iter().map(|(_, _, body)| body).collect();
        let events = crate::api::raw_events(&bodies)?;
        let key = db::bootstrap(&self.env, &self.db()?).await?;
        let next = Cursor {
            tenant: tenant.to_owned(),
            room: room.to_owned(),
            seq: last,
            direction: Direction::Forward,
        }
        .encode(&key);
        Ok(json_response(
            200,
            &RawHistoryPage {
                room_id: room,
                events,
                has_more: more,
                next_cursor: Some(next),
                current_seq: current.max(last),
            },
        )?)
    }
}

fn sse_response(rx: SseBody) -> ApiResult<Response> {
    let h = Headers::new();
    h.set("content-type", "text/event-stream")?;
    h.set("cache-control", "no-cache")?;
    Ok(Response::from_stream(rx)?.with_headers(h))
}
