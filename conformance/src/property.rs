//! Model-based property group: random schedules of operations by several clients (send, edit,
//! delete, react, read, disconnect, reconnect with resume, page history, read over SSE or
//! long-polling), generated and shrunk by proptest, run against the endpoint and checked
//! against a model of the room timeline. A failing schedule is shrunk and printed; the same
//! `--seed` replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fluxy_protocol::ServerFrame;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{json, Value};

use crate::case;
use crate::case::{fail, Case, CaseError};
use crate::ctx::{Conn, Ctx, User};

/// The clause id a failure message names (`FX-HS-5 violated: …` → `FX-HS-5`) and the rest;
/// `FX-ORD-4` (the model's own clause) when it names none.
fn clause_of(msg: &str) -> (&str, &str) {
    let id = msg
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| {
            let mut p = w.split('-');
            p.next() == Some("FX")
                && p.next()
                    .is_some_and(|g| !g.is_empty() && g.chars().all(|c| c.is_ascii_uppercase()))
                && p.next()
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                && p.next().is_none()
        });
    match id {
        Some(id) => {
            let rest = msg.split_once(": ").map(|(_, r)| r).unwrap_or(msg);
            (id, rest)
        }
        None => ("FX-ORD-4", msg),
    }
}

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![case!(
        "prop/model-schedules",
        ["FX-ORD-1", "FX-ORD-2", "FX-ORD-4", "FX-ORD-5", "FX-EDT-2", "FX-EDT-4", "FX-EDT-5", "FX-RES-3", "FX-HIS-3", "FX-TRN-8"],
        // Keep in step with `MODEL_CLAUSES`.
        "random multi-client schedules agree with a model of the timeline on every path (shrunk on failure, replayable by --seed)",
        model_schedules
    )]
}

/// The clauses `prop/model-schedules` checks: a schedule failing another clause failed a
/// precondition, which shrinking cannot make more informative.
const MODEL_CLAUSES: [&str; 10] = [
    "FX-ORD-1", "FX-ORD-2", "FX-ORD-4", "FX-ORD-5", "FX-EDT-2", "FX-EDT-4", "FX-EDT-5", "FX-RES-3",
    "FX-HIS-3", "FX-TRN-8",
];

const CLIENTS: usize = 3;
const EMOJIS: [&str; 3] = ["👍", "🎉", "x"];

/// One operation of a schedule.
#[derive(Debug, Clone)]
pub enum Op {
    /// Client sends a message (over HTTP when disconnected).
    Send(usize, u8),
    /// Client edits the n-th message.
    Edit(usize, usize, u8),
    /// Client deletes the n-th message.
    Delete(usize, usize),
    /// Client adds or removes a reaction.
    React(usize, usize, usize, bool),
    /// Client reads up to the n-th message.
    Read(usize, usize),
    /// Client's connection dies without a close frame.
    Disconnect(usize),
    /// Client reconnects with `?lastSeq=` its last applied seq.
    Reconnect(usize),
    /// Walk the history forward with this page size.
    PageHistory(u32),
    /// Read the whole timeline over SSE.
    ReadSse,
    /// Long-poll after the n-th event.
    Poll(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS;
    prop_oneof![
        4 => (c.clone(), any::<u8>()).prop_map(|(c, t)| Op::Send(c, t)),
        2 => (c.clone(), 0..8usize, any::<u8>()).prop_map(|(c, m, t)| Op::Edit(c, m, t)),
        1 => (c.clone(), 0..8usize).prop_map(|(c, m)| Op::Delete(c, m)),
        2 => (c.clone(), 0..8usize, 0..EMOJIS.len(), any::<bool>()).prop_map(|(c, m, e, a)| Op::React(c, m, e, a)),
        1 => (c.clone(), 0..8usize).prop_map(|(c, m)| Op::Read(c, m)),
        1 => c.clone().prop_map(Op::Disconnect),
        1 => c.clone().prop_map(Op::Reconnect),
        1 => (1u32..6).prop_map(Op::PageHistory),
        1 => Just(Op::ReadSse),
        1 => (0..20usize).prop_map(Op::Poll),
    ]
}

/// A schedule of 4 to 24 operations.
pub fn schedule() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 4..24)
}

#[derive(Debug, Clone)]
struct MsgModel {
    id: u64,
    author: usize,
    version: u64,
    deleted: bool,
}

/// The model of one room.
#[derive(Debug, Default)]
struct Model {
    /// Expected (type, actor client, message id or target, content/version) per seq, 1-based.
    events: Vec<Value>,
    msgs: Vec<MsgModel>,
    reactions: BTreeSet<(usize, u64, usize)>,
    reads: BTreeMap<usize, u64>,
}

struct Client {
    user: User,
    conn: Option<Conn>,
    /// Highest seq this client applied.
    applied: u64,
}

/// The optional profiles the server answers: a schedule leaves out the operations of the
/// absent ones (FX-PRF-2), so the group judges core on a core-only server.
#[derive(Debug, Clone, Copy)]
struct Features {
    edits: bool,
    history: bool,
    fallback: bool,
}

impl Features {
    /// Probe once, with `u`'s token, on a room of its own.
    async fn probe(ctx: &Ctx, u: &User) -> Result<Features, CaseError> {
        let room = ctx.room(u, &[]).await?;
        let history = crate::cases::has_history(ctx, u, &room).await?;
        let poll = ctx
            .get(
                &format!("/rooms/{room}/poll?afterSeq=0&timeoutMs=0"),
                &u.token,
            )
            .await?;
        let mut c = ctx.connect(u, &room).await?;
        let m = crate::cases::send(ctx, &mut c, "feature probe").await?;
        let r = ctx.r();
        c.send_json(&json!({"type":"reaction","messageId":m.id,"emoji":"👍","ref":r}))?;
        let edits = !matches!(
            c.answer("FX-PRF-2", &r).await?,
            ServerFrame::Error(e) if e.code == fluxy_protocol::ErrorCode::UnknownType
        );
        let f = Features {
            edits,
            history,
            fallback: poll.status != 404,
        };
        ctx.note(&format!("profiles used by the schedules: {f:?}"));
        Ok(f)
    }

    fn allows(&self, op: &Op) -> bool {
        match op {
            Op::Edit(..) | Op::Delete(..) | Op::React(..) | Op::Read(..) => self.edits,
            Op::ReadSse | Op::Poll(_) => self.fallback,
            _ => true,
        }
    }
}

struct Run<'a> {
    ctx: &'a Ctx,
    features: Features,
    room: String,
    clients: Vec<Client>,
    model: Model,
    /// First JSON observed per seq (every later observation must be identical).
    seen: BTreeMap<u64, Value>,
}

type R = Result<(), String>;

fn err(clause: &str, msg: String) -> String {
    format!("{clause}: {msg}")
}

impl Run<'_> {
    fn observe(&mut self, v: &Value, path: &str) -> R {
        let seq = v
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| err("FX-ORD-1", format!("event without seq via {path}: {v}")))?;
        match self.seen.get(&seq) {
            Some(prev) if prev != v => Err(err(
                "FX-ORD-5",
                format!("seq {seq} differs via {path}: {v} vs {prev}"),
            )),
            Some(_) => Ok(()),
            None => {
                let want = self.model.events.get(seq as usize - 1).ok_or_else(|| {
                    err(
                        "FX-ORD-1",
                        format!(
                            "seq {seq} via {path} beyond the model's {} events",
                            self.model.events.len()
                        ),
                    )
                })?;
                for (k, x) in want.as_object().into_iter().flatten() {
                    if v.get(k) != Some(x) {
                        return Err(err(
                            "FX-ORD-4",
                            format!("seq {seq} via {path}: expected {k}={x}, got {v}"),
                        ));
                    }
                }
                self.seen.insert(seq, v.clone());
                Ok(())
            }
        }
    }

    /// Apply every live event a client received since last time, checking order.
    fn drain(&mut self, c: usize) -> R {
        let evs: Vec<Value> = match &self.clients[c].conn {
            Some(conn) => conn.timeline().into_iter().map(|(_, v)| v).collect(),
            None => return Ok(()),
        };
        for v in evs {
            let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
            if seq <= self.clients[c].applied {
                continue;
            }
            if seq != self.clients[c].applied + 1 {
                return Err(err(
                    "FX-ORD-2",
                    format!("client {c} got seq {seq} after {}", self.clients[c].applied),
                ));
            }
            self.observe(&v, &format!("live to client {c}"))?;
            self.clients[c].applied = seq;
        }
        Ok(())
    }

    async fn request(
        &mut self,
        c: usize,
        mut frame: Value,
        expect: Result<Option<Value>, &[&str]>,
    ) -> R {
        let r = self.ctx.r();
        frame["ref"] = json!(r);
        let Some(conn) = self.clients[c].conn.as_mut() else {
            return Ok(());
        };
        conn.send_json(&frame).map_err(|e| e.to_string())?;
        let ans = conn
            .answer("FX-ACK-1", &r)
            .await
            .map_err(|e| e.to_string())?;
        match (ans, expect) {
            (ServerFrame::Ack(a), Ok(Some(ev))) => {
                let seq = a
                    .seq
                    .ok_or_else(|| err("FX-ACK-1", format!("ack without seq for {frame}")))?;
                let want = self.model.events.len() as u64 + 1;
                if seq != want {
                    return Err(err(
                        "FX-ORD-1",
                        format!("{frame} got seq {seq}, model expects {want}"),
                    ));
                }
                self.model.events.push(ev);
                Ok(())
            }
            (ServerFrame::Ack(a), Ok(None)) => match a.seq {
                None => Ok(()),
                Some(s) => Err(err(
                    "FX-ACK-7",
                    format!("{frame} changes nothing but got seq {s}"),
                )),
            },
            (ServerFrame::Error(e), Err(codes)) if codes.contains(&e.code.as_str()) => Ok(()),
            (got, Err(codes)) => Err(err(
                clause_for(codes[0]),
                format!(
                    "{frame}: expected error {}, got {}",
                    codes.join(" or "),
                    got.encode()
                ),
            )),
            (got, Ok(_)) => Err(err(
                "FX-ACK-1",
                format!("{frame}: expected an ack, got {}", got.encode()),
            )),
        }
    }

    async fn step(&mut self, op: &Op) -> R {
        if !self.features.allows(op) {
            return Ok(());
        }
        let m = &self.model;
        let pick = |i: usize| -> Option<MsgModel> {
            if m.msgs.is_empty() {
                None
            } else {
                Some(m.msgs[i % m.msgs.len()].clone())
            }
        };
        match op.clone() {
            Op::Send(c, t) => {
                let content = format!("msg {t}");
                let ev = json!({"type":"message","content":content,"userId":self.clients[c].user.id,"version":1});
                if self.clients[c].conn.is_some() {
                    let id = self.model.events.len() as u64 + 1;
                    self.request(c, json!({"type":"message","content":content}), Ok(Some(ev)))
                        .await?;
                    self.model.msgs.push(MsgModel {
                        id,
                        author: c,
                        version: 1,
                        deleted: false,
                    });
                } else {
                    let r = self
                        .ctx
                        .post(
                            "/messages",
                            &self.clients[c].user.token,
                            &json!({"roomId":self.room,"content":content}),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.status != 201 {
                        return Err(err(
                            "FX-MSG-6",
                            format!("POST /messages answered {} {}", r.status, r.text),
                        ));
                    }
                    let v = r
                        .json()
                        .and_then(|v| v.get("message").cloned())
                        .unwrap_or_default();
                    let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                    let want = self.model.events.len() as u64 + 1;
                    if seq != want {
                        return Err(err(
                            "FX-ORD-1",
                            format!("POST /messages got seq {seq}, model expects {want}"),
                        ));
                    }
                    self.model.events.push(ev);
                    self.model.msgs.push(MsgModel {
                        id: seq,
                        author: c,
                        version: 1,
                        deleted: false,
                    });
                    let mut full = v.clone();
                    full["type"] = json!("message");
                    self.observe(&full, "POST /messages")?;
                }
            }
            Op::Edit(c, i, t) => {
                let Some(msg) = pick(i) else { return Ok(()) };
                let content = format!("edit {t}");
                let f = json!({"type":"edit","messageId":msg.id,"content":content});
                // Which check comes first is not specified: a non-author editing a deleted
                // message may get either code.
                if msg.deleted && msg.author != c {
                    self.request(c, f, Err(&["conflict", "forbidden"])).await?;
                } else if msg.deleted {
                    self.request(c, f, Err(&["conflict"])).await?;
                } else if msg.author != c {
                    self.request(c, f, Err(&["forbidden"])).await?;
                } else if self.clients[c].conn.is_some() {
                    let v = msg.version + 1;
                    self.request(c, f, Ok(Some(json!({"type":"edit","id":msg.id,"content":content,"version":v,"userId":self.clients[c].user.id})))).await?;
                    if let Some(x) = self.model.msgs.iter_mut().find(|x| x.id == msg.id) {
                        x.version = v;
                    }
                }
            }
            Op::Delete(c, i) => {
                let Some(msg) = pick(i) else { return Ok(()) };
                let f = json!({"type":"delete","messageId":msg.id});
                if msg.deleted && msg.author != c && c != 0 {
                    self.request(c, f, Err(&["conflict", "forbidden"])).await?;
                } else if msg.deleted {
                    self.request(c, f, Err(&["conflict"])).await?;
                } else if msg.author != c && c != 0 {
                    self.request(c, f, Err(&["forbidden"])).await?;
                } else if self.clients[c].conn.is_some() {
                    let v = msg.version + 1;
                    self.request(c, f, Ok(Some(json!({"type":"delete","id":msg.id,"version":v,"userId":self.clients[c].user.id})))).await?;
                    if let Some(x) = self.model.msgs.iter_mut().find(|x| x.id == msg.id) {
                        x.version = v;
                        x.deleted = true;
                    }
                }
            }
            Op::React(c, i, e, add) => {
                let Some(msg) = pick(i) else { return Ok(()) };
                let emoji = EMOJIS[e];
                let f = json!({"type":"reaction","messageId":msg.id,"emoji":emoji,"op": if add {"add"} else {"remove"}});
                let key = (c, msg.id, e);
                if msg.deleted {
                    self.request(c, f, Err(&["conflict"])).await?;
                } else if self.clients[c].conn.is_some() {
                    let present = self.model.reactions.contains(&key);
                    if add == present {
                        self.request(c, f, Ok(None)).await?;
                    } else {
                        self.request(c, f, Ok(Some(json!({"type":"reaction","messageId":msg.id,"emoji":emoji,"op": if add {"add"} else {"remove"},"userId":self.clients[c].user.id})))).await?;
                        if add {
                            self.model.reactions.insert(key);
                        } else {
                            self.model.reactions.remove(&key);
                        }
                    }
                }
            }
            Op::Read(c, i) => {
                let Some(msg) = pick(i) else { return Ok(()) };
                let pos = self.model.reads.get(&c).copied().unwrap_or(0);
                let f = json!({"type":"read","messageId":msg.id});
                if self.clients[c].conn.is_some() {
                    if msg.id > pos {
                        self.request(c, f, Ok(Some(json!({"type":"read","messageId":msg.id,"userId":self.clients[c].user.id})))).await?;
                        self.model.reads.insert(c, msg.id);
                    } else {
                        self.request(c, f, Ok(None)).await?;
                    }
                }
            }
            Op::Disconnect(c) => {
                self.drain(c)?;
                if let Some(conn) = self.clients[c].conn.take() {
                    conn.kill();
                }
            }
            Op::Reconnect(c) => {
                if self.clients[c].conn.is_none() {
                    let last = self.clients[c].applied;
                    let conn = self
                        .ctx
                        .connect_q(
                            &self.clients[c].user,
                            &self.room,
                            &format!("lastSeq={last}"),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let rep = conn.snapshot_raw.clone();
                    let mut expect = last + 1;
                    for v in rep {
                        let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                        if seq != expect {
                            return Err(err(
                                "FX-RES-1",
                                format!("replay from {last} gave seq {seq}, expected {expect}"),
                            ));
                        }
                        self.observe(&v, &format!("replay to client {c}"))?;
                        expect += 1;
                    }
                    self.clients[c].applied = expect - 1;
                    self.clients[c].conn = Some(conn);
                }
            }
            Op::PageHistory(limit) => {
                let evs = if self.features.history {
                    self.ctx
                        .walk_forward(&self.clients[0].user, &self.room, limit)
                        .await
                } else {
                    // Without the history profile: the whole timeline over the WebSocket.
                    crate::cases::ws_timeline(self.ctx, &self.clients[0].user, &self.room).await
                }
                .map_err(|e| e.to_string())?;
                let seqs: Vec<u64> = evs.iter().map(|(e, _)| e.seq()).collect();
                let want: Vec<u64> = (1..=self.model.events.len() as u64).collect();
                if seqs != want {
                    return Err(err(
                        "FX-HIS-3",
                        format!("forward walk with limit {limit} gave {seqs:?}, expected {want:?}"),
                    ));
                }
                for (_, v) in evs {
                    self.observe(&v, "history")?;
                }
            }
            Op::ReadSse => {
                let n = self.model.events.len() as u64;
                if n == 0 {
                    return Ok(());
                }
                let mut s = self
                    .ctx
                    .sse(
                        &self.clients[1].user,
                        &self.room,
                        "",
                        &[("Last-Event-ID", "0")],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                s.wait_seq("FX-TRN-8", n).await.map_err(|e| e.to_string())?;
                let got: Vec<Value> = s.timeline().into_iter().map(|(_, _, v)| v).collect();
                if got.len() as u64 != n {
                    return Err(err(
                        "FX-TRN-3",
                        format!("SSE from 0 gave {} events, expected {n}", got.len()),
                    ));
                }
                for v in got {
                    self.observe(&v, "SSE")?;
                }
            }
            Op::Poll(after) => {
                let n = self.model.events.len();
                if n == 0 {
                    return Ok(());
                }
                let after = after % n;
                let r = self
                    .ctx
                    .get(
                        &format!("/rooms/{}/poll?afterSeq={after}&timeoutMs=0", self.room),
                        &self.clients[2].user.token,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let evs = r
                    .json()
                    .and_then(|v| v.get("events").and_then(Value::as_array).cloned())
                    .unwrap_or_default();
                let seqs: Vec<u64> = evs
                    .iter()
                    .filter_map(|v| v.get("seq").and_then(Value::as_u64))
                    .collect();
                let want: Vec<u64> = (after as u64 + 1..=n as u64).collect();
                if seqs != want {
                    return Err(err(
                        "FX-TRN-7",
                        format!("poll after {after} gave {seqs:?}, expected {want:?}"),
                    ));
                }
                for v in evs {
                    self.observe(&v, "poll")?;
                }
            }
        }
        for c in 0..CLIENTS {
            self.drain(c)?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> R {
        let n = self.model.events.len() as u64;
        for c in 0..CLIENTS {
            let applied = self.clients[c].applied;
            if let Some(conn) = self.clients[c].conn.as_mut() {
                if n > applied {
                    conn.wait_seq("FX-ORD-2", n)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            self.drain(c)?;
            if self.clients[c].conn.is_some() && self.clients[c].applied != n {
                return Err(err(
                    "FX-RES-3",
                    format!(
                        "client {c} applied up to {} of {n}",
                        self.clients[c].applied
                    ),
                ));
            }
        }
        self.step(&Op::PageHistory(7)).await
    }
}

fn clause_for(code: &str) -> &'static str {
    match code {
        "conflict" => "FX-EDT-4",
        "forbidden" => "FX-EDT-1",
        _ => "FX-ACK-8",
    }
}

async fn execute(ctx: &Ctx, users: &[User], features: Features, ops: &[Op]) -> R {
    let room = ctx
        .room(&users[0], &[&users[1], &users[2]])
        .await
        .map_err(|e| e.to_string())?;
    let mut clients = Vec::new();
    for u in users {
        let conn = ctx.connect(u, &room).await.map_err(|e| e.to_string())?;
        clients.push(Client {
            user: u.clone(),
            conn: Some(conn),
            applied: 0,
        });
    }
    let mut run = Run {
        ctx,
        features,
        room,
        clients,
        model: Model::default(),
        seen: BTreeMap::new(),
    };
    for op in ops {
        run.step(op).await?;
    }
    run.finish().await
}

async fn model_schedules(ctx: &Ctx) -> Result<(), CaseError> {
    let mut users = Vec::new();
    for i in 0..CLIENTS {
        users.push(ctx.user(&format!("p{i}")).await?);
    }
    let features = Features::probe(ctx, &users[0]).await?;
    let env = ctx.env.clone();
    let users2 = users.clone();
    let handle = tokio::runtime::Handle::current();
    // Set when this case's future is dropped (the runner's timeout): the blocking proptest
    // thread then stops instead of calling into a runtime that is shutting down.
    let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    // The first schedule that failed a precondition (a clause this case does not check, or a
    // block): the remaining schedules are skipped and the case is blocked on it.
    let precondition: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let precondition2 = precondition.clone();
    let cases = ctx.env.schedules.max(1);
    let seed = ctx.env.seed;
    let outcome = tokio::task::spawn_blocking(move || {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        s[8] = 9;
        let config = Config {
            cases,
            max_shrink_iters: 200,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &s));
        let env = Arc::clone(&env);
        runner.run(&schedule(), |ops| {
            if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(TestCaseError::fail("cancelled: the case timed out"));
            }
            if precondition2.lock().map(|p| p.is_some()).unwrap_or(false) {
                return Ok(());
            }
            let sub = Ctx::new(env.clone(), "prop/model-schedules");
            match handle.block_on(execute(&sub, &users2, features, &ops)) {
                Ok(()) => Ok(()),
                Err(msg) => {
                    let (clause, _) = clause_of(&msg);
                    if msg.starts_with("blocked") || !MODEL_CLAUSES.contains(&clause) {
                        if let Ok(mut p) = precondition2.lock() {
                            p.get_or_insert(msg);
                        }
                        return Ok(());
                    }
                    Err(TestCaseError::fail(msg))
                }
            }
        })
    })
    .await
    .map_err(|e| CaseError::Error(format!("property runner: {e}")))?;
    if let Some(msg) = precondition.lock().ok().and_then(|p| p.clone()) {
        let (clause, detail) = clause_of(&msg);
        return Err(crate::case::blocked(
            clause,
            "a schedule's precondition (a clause this case does not check)",
            detail,
        ));
    }
    match outcome {
        Ok(()) => {
            ctx.note(&format!(
                "{cases} schedules agreed with the model (seed {seed})"
            ));
            Ok(())
        }
        Err(TestError::Fail(reason, ops)) => {
            // Replay the minimal schedule with this case's transcript.
            ctx.note(&format!("minimal failing schedule: {ops:?}"));
            let again = execute(ctx, &users, features, &ops)
                .await
                .err()
                .unwrap_or_else(|| reason.to_string());
            let msg = again.to_string();
            let (clause, detail) = clause_of(&msg);
            Err(fail(clause, "the server agrees with the model of the room timeline", format!("{detail}; minimal schedule (replay with --seed {seed} --filter prop/*): {ops:?}")))
        }
        Err(TestError::Abort(r)) => Err(CaseError::Error(format!("property run aborted: {r}"))),
    }
}

/// Sets the flag when dropped.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn failure_messages_name_real_clause_ids() {
        assert_eq!(
            super::clause_of("FX-HS-5 violated: expected a; observed b").0,
            "FX-HS-5"
        );
        assert_eq!(super::clause_of("error: timeout").0, "FX-ORD-4");
        assert_eq!(super::clause_of("x FX-AUTH-12: y").0, "FX-AUTH-12");
    }
}
