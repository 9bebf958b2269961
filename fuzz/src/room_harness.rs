//! A model shell for the room engine: drives `fluxy_room::Room` with a sequence of [`Op`]s,
//! carries out its effects against an in-memory model of storage and of every connection, and
//! checks the engine's invariants after every step. Used by the `room_engine` fuzz target and,
//! through `#[path]`, by `reference-worker/room/tests/fuzz_regressions.rs` (so it depends only
//! on crates fluxy-room already has: fluxy-protocol, serde_json).
//!
//! Invariants (numbering of docs/fuzzing.md):
//! - I1 seq gap-free from 1 in storage; every connection receives the live timeline in strictly
//!   increasing seq order without gaps, starting right after its `welcome.currentSeq`.
//! - I2 one connection's frames are answered, and their events sequenced, in frame order; the
//!   ack reaches the sender before its own copy of the broadcast.
//! - I3 no ack, broadcast or POST answer for an event before its batch is `Committed`.
//! - I4 snapshot (`history`), `replay` and POST bodies equal the committed (= broadcast) bodies.
//! - I5 a repeated clientMessageId of the same user creates no new event; the duplicate ack
//!   names the original seq.
//! - I6 every event's actor is the identity of the connection or request that caused it,
//!   whatever `userId` the frame carried.
//! - I7 tenant isolation is a shell property (the engine is per (tenant, room)); here: an
//!   in-band `auth` with another tenant's token is never accepted.
//!
//! Plus: every frame the engine emits decodes as a `ServerFrame`; presence lists exactly the
//! users with an open connection; heartbeat and token-expiry closes are never premature; every
//! structured request gets exactly one answer (checked after a final drain); never a panic.
//!
//! Eviction ([`Op::Evict`]) does what the Durable Object shell does after its object was evicted
//! with hibernated sockets: the commit loop finishes first (the object is only evicted idle), the
//! engine is dropped and rebuilt from the storage model (the bounded `LOAD_*` rows; anything
//! else it looks up with `Effect::Fetch`, which the model answers), and every open
//! connection is re-registered with `Input::Restore` from its "attachment" (identity as kept
//! from `IdentityChanged`, idle clock as the DO refreshes it). Restores must emit nothing, and
//! a differential probe checks that the old and the rebuilt engine answer the same requests
//! with the same effects.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fluxy_protocol::common::{MemberRole, RoomType};
use fluxy_protocol::events::TimelineEvent;
use fluxy_protocol::jwt::{sign, sign_raw, Claims};
use fluxy_protocol::{ClientFrame, CloseCode, ErrorCode, ServerFrame};
use fluxy_room::sql::{self, SqlValue, Stmt};
use fluxy_room::{
    ConnId, ConnectOptions, Effect, Faults, FetchFailed, Found, IdempotencyRow, Identity, Input,
    LoadedRoom, Lookup, MessageRow, Room, RoomConfig, RoomPolicy, RunRow,
};
use serde_json::{json, Value};

/// Tenant secret of the room under test.
pub const SECRET: &[u8] = b"fuzz-room-secret";
/// Start of time (ms).
pub const T0: u64 = 1_800_000_000_000;
const IDLE_MS: u64 = 30_000;
/// The DO refreshes the idle clock in a socket's attachment at most this often
/// (`rx_save_ms` in reference-worker/worker/src/room.rs: idle / 10, clamped to 100..=5000).
const RX_SAVE_MS: u64 = {
    let v = IDLE_MS / 10;
    if v < 100 {
        100
    } else if v > 5000 {
        5000
    } else {
        v
    }
};
/// The engine keeps (and the shells load) the newest max(resume window, 500) events.
const MIN_RING: u64 = 500;
/// Idempotency keys live 24 h (`[FX-ACK-5]`: at least 24 h; the reference: exactly).
const IDEM_TTL_MS: u64 = 24 * 3600 * 1000;
/// Structured frames carry `ref: "zq<n>"`; raw frames containing "zq" are not sent.
const REF_PREFIX: &str = "zq";

/// Users the fuzzer can connect as: (user id, token roles, room member role).
pub const USERS: &[(&str, &[&str], Option<MemberRole>)] = &[
    ("alice", &["member"], Some(MemberRole::Member)),
    ("bob", &["member"], Some(MemberRole::Member)),
    ("mod", &["moderator"], Some(MemberRole::Member)),
    ("owner", &["member"], Some(MemberRole::Owner)),
    ("agent1", &["agent"], Some(MemberRole::Member)),
    ("agent2", &["agent", "member"], Some(MemberRole::Member)),
    ("admin", &["admin"], None),
];

/// Room-level knobs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// Announcement room (only moderators post).
    pub announcement: bool,
    /// Small token bucket (3 burst, 1/s) to exercise rate limiting.
    pub tight_rate: bool,
    /// Resume window 5 instead of 100.
    pub small_window: bool,
    /// Resume window 1000 (more than a 500-event replay page).
    pub large_window: bool,
    /// Abuse policy closing after 3 invalid frames in a row or 3 rate-limited frames.
    pub tight_policy: bool,
    /// Faults to enable (for checking the checker; none when fuzzing).
    pub faults: Faults,
    /// Storage answers each `Fetch` after this many further steps (0: in the step that
    /// emitted it); [`Op::Fetched`] answers one earlier, out of order, or fails it.
    pub fetch_delay: u8,
}

/// A structured client frame; small numbers index small pools so requests hit real state.
#[derive(Debug, Clone)]
pub enum FrameOp {
    Message {
        content: u8,
        cmid: Option<u8>,
        parent: Option<u8>,
        spoof: bool,
    },
    Edit {
        msg: u8,
        content: u8,
        expected: Option<u8>,
        cmid: Option<u8>,
    },
    Delete {
        msg: u8,
        cmid: Option<u8>,
    },
    Reaction {
        msg: u8,
        emoji: u8,
        add: bool,
    },
    Read {
        msg: u8,
    },
    Typing {
        is_typing: bool,
        intent: u8,
    },
    Resume {
        last: u8,
    },
    Stream {
        op: u8,
        msg: Option<u8>,
        content: u8,
        cmid: Option<u8>,
    },
    AgentRun {
        run: u8,
        status: u8,
    },
    ToolCall {
        run: u8,
        call: u8,
    },
    ToolResult {
        run: u8,
        call: u8,
        error: bool,
    },
    ApprovalRequest {
        run: u8,
        appr: u8,
    },
    ApprovalDecision {
        run: u8,
        appr: u8,
        approve: bool,
    },
    AgentTyping {
        is_typing: bool,
    },
    Ping {
        ts: u64,
    },
    Auth {
        user: u8,
        other_tenant: bool,
        /// 1 wrong secret, 2 `alg: none`, 3 `nbf` in the future, otherwise none.
        defect: u8,
        exp_s: i16,
        agent: bool,
    },
}

/// One step.
#[derive(Debug, Clone)]
pub enum Op {
    /// Open a new connection as `USERS[user]`; `opts` picks replay/limit, `last_seq` a resume.
    Open {
        user: u8,
        opts: u8,
        last_seq: Option<u8>,
        short_token: bool,
    },
    /// A structured frame on connection `conn` (index into every connection ever opened).
    Frame { conn: u8, frame: FrameOp },
    /// Raw text on a connection.
    Raw { conn: u8, text: String },
    /// A binary frame.
    Binary { conn: u8 },
    /// The transport closed.
    Close { conn: u8 },
    /// Storage acknowledges the oldest outstanding batch.
    Commit,
    /// Storage fails the oldest outstanding batch (the room resets and reloads).
    Fail,
    /// A `Committed` for a batch id that is not in flight.
    BogusCommit { batch: u8, fail: bool },
    /// Advance the clock and fire due timeouts.
    Advance { ms: u32 },
    /// `POST /messages`.
    Post {
        user: u8,
        content: u8,
        cmid: Option<u8>,
        parent: Option<u8>,
    },
    /// Membership removed.
    Kick { user: u8 },
    /// The user's room role changed (`None`: no longer a member, connections stay open).
    SetRole { user: u8, role: u8 },
    /// Storage answers the outstanding fetch `index` (modulo their number) now, out of order;
    /// `fail`: the read fails instead.
    Fetched { index: u8, fail: bool },
    /// The object is evicted with hibernated sockets and reloaded (see the module docs).
    /// `exact_rx`: restore the exact last-frame time instead of the DO's attachment copy, which
    /// lags it by less than `RX_SAVE_MS`. `probe` seeds the differential probe.
    Evict { exact_rx: bool, probe: u8 },
}

#[derive(Debug, Default)]
struct ConnState {
    user: String,
    open: bool,
    /// Next live timeline seq this connection must receive.
    live_next: u64,
    welcomed: bool,
    /// The engine's idle clock as the model expects it (the last frame, or the restored time).
    last_rx: u64,
    /// When a frame really arrived last.
    heard_rx: u64,
    /// The DO attachment's copy of the idle clock (refreshed at most every `RX_SAVE_MS`).
    att_rx: u64,
    /// The identity a shell keeps for `Input::Restore`: the one it opened with, replaced by
    /// every `Effect::IdentityChanged`.
    att_identity: Option<Identity>,
    /// Times this connection was re-registered with `Input::Restore`.
    restores: u32,
    token_exp: u64,
    /// Structured frames sent, by number, with whether an answer is required.
    sent: BTreeMap<u64, bool>,
    answered: BTreeSet<u64>,
    last_ack_ref: u64,
    last_ack_seq: u64,
    /// Token bucket model, in thousandths of a token, and its last refill time.
    bucket: i64,
    bucket_at: u64,
    rate_limited: u64,
    /// `?lastSeq=` at open: whether a replay (true) or resync_required (false) is due.
    open_resume: Option<bool>,
    /// Undecodable text and binary frames in a row (`[FX-FRM-11]`).
    invalid_streak: u32,
    /// How the engine closed it, if it did.
    close_code: Option<CloseCode>,
    /// `retryAfterMs` of the last `rate_limited` error.
    last_retry_ms: u64,
    /// The token (as last refreshed) has the agent role.
    agent: bool,
    /// Token roles and room role, for the announcement-room rule.
    roles: Vec<String>,
    member_role: Option<MemberRole>,
}

fn may_moderate(roles: &[String], member_role: Option<MemberRole>) -> bool {
    roles
        .iter()
        .any(|r| r == "owner" || r == "admin" || r == "moderator")
        || matches!(
            member_role,
            Some(MemberRole::Owner | MemberRole::Admin | MemberRole::Moderator)
        )
}

/// Storage model: the rows the engine's statements produce.
#[derive(Debug, Default, Clone)]
struct Store {
    events: BTreeMap<u64, (String, String, Arc<str>)>, // seq -> (type, actor, body)
    messages: BTreeMap<u64, MessageRow>,
    reactions: BTreeSet<(u64, String, String)>,
    reads: BTreeMap<String, u64>,
    idem: BTreeMap<(String, String), IdempotencyRow>,
    /// Agent lifecycles: (agent, run) -> active; (agent, run, call) -> pending;
    /// (agent, run, approval) -> pending.
    runs: BTreeMap<(String, String), bool>,
    calls: BTreeMap<(String, String, String), bool>,
    approvals: BTreeMap<(String, String, String), bool>,
    /// The `agent_runs` table: (agent, run) -> (terminal, open).
    run_rows: BTreeMap<(String, String), (bool, bool)>,
    /// The `agent_items` table: (agent, run, kind, id) -> pending.
    run_items: BTreeMap<(String, String, String, String), bool>,
}

impl Store {
    /// `[FX-AGT]` lifecycle rules, on every committed event, in seq order.
    fn check_lifecycle(&mut self, ev: &TimelineEvent) {
        use fluxy_protocol::common::RunStatus;
        match ev {
            TimelineEvent::AgentRun(r) => {
                let k = (r.agent_id.clone(), r.run_id.clone());
                match (self.runs.get(&k), r.status == RunStatus::Started) {
                    (None, true) => {}
                    (Some(true), false) => {}
                    (state, _) => panic!("agentRun {:?} on run in state {state:?}", r.status),
                }
                self.runs.insert(k, r.status == RunStatus::Started);
            }
            TimelineEvent::ToolCall(c) => {
                let run = (c.agent_id.clone(), c.run_id.clone());
                assert_eq!(
                    self.runs.get(&run),
                    Some(&true),
                    "tool_call without an active run"
                );
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                assert!(self.calls.insert(k, true).is_none(), "toolCallId reused");
            }
            TimelineEvent::ToolResult(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                assert_eq!(
                    self.calls.insert(k, false),
                    Some(true),
                    "tool_result without a pending call"
                );
            }
            TimelineEvent::ToolError(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                assert_eq!(
                    self.calls.insert(k, false),
                    Some(true),
                    "tool_error without a pending call"
                );
            }
            TimelineEvent::ApprovalRequest(a) => {
                let run = (a.agent_id.clone(), a.run_id.clone());
                assert_eq!(
                    self.runs.get(&run),
                    Some(&true),
                    "approval_request without an active run"
                );
                let k = (a.agent_id.clone(), a.run_id.clone(), a.approval_id.clone());
                assert!(
                    self.approvals.insert(k, true).is_none(),
                    "approvalId reused"
                );
            }
            TimelineEvent::ApprovalDecision(d) => {
                // [FX-AGT-12] the event names the agent; exactly that request is decided.
                let k = (d.agent_id.clone(), d.run_id.clone(), d.approval_id.clone());
                assert_eq!(
                    self.approvals.insert(k, false),
                    Some(true),
                    "approval_decision without a pending approval of the agent it names"
                );
            }
            TimelineEvent::Reaction(r) => {
                let m = self
                    .messages
                    .get(&r.message_id)
                    .expect("reaction to a missing message");
                assert!(!m.deleted, "reaction to a deleted message");
            }
            TimelineEvent::Edit(e) => {
                let m = self.messages.get(&e.id).expect("edit of a missing message");
                assert!(!m.deleted, "edit of a deleted message");
                assert!(
                    m.streaming || !e.streaming,
                    "a finished message started streaming again"
                );
            }
            _ => {}
        }
    }
}

fn int(v: &SqlValue) -> u64 {
    match v {
        SqlValue::Int(i) => u64::try_from(*i).expect("non-negative integer"),
        other => panic!("expected INTEGER, got {other:?}"),
    }
}
fn opt_int(v: &SqlValue) -> Option<u64> {
    match v {
        SqlValue::Null => None,
        v => Some(int(v)),
    }
}
fn text(v: &SqlValue) -> String {
    match v {
        SqlValue::Text(s) => s.to_string(),
        other => panic!("expected TEXT, got {other:?}"),
    }
}

impl Store {
    /// Apply one committed batch, with the table constraints SQLite would enforce.
    fn apply(&mut self, stmts: &[Stmt], now: u64) {
        for s in stmts {
            let p = &s.params;
            assert_eq!(text(&p[0]), "t1", "statement for another tenant");
            assert_eq!(text(&p[1]), "r1", "statement for another room");
            match s.sql {
                sql::INSERT_EVENT => {
                    let seq = int(&p[2]);
                    let next = self.events.len() as u64 + 1;
                    assert_eq!(seq, next, "I1: committed seq {seq}, expected {next}");
                    let body = match &p[6] {
                        SqlValue::Text(b) => b.clone(),
                        o => panic!("body {o:?}"),
                    };
                    let ev = TimelineEvent::decode(&body).expect("stored body decodes");
                    assert_eq!(ev.seq(), seq, "body seq differs from row seq");
                    assert_eq!(ev.type_name(), text(&p[3]), "row type");
                    assert_eq!(ev.actor(), text(&p[4]), "row actor");
                    assert_eq!(ev.room_id(), "r1");
                    assert_eq!(ev.encode(), *body, "stored body is not canonical");
                    self.check_lifecycle(&ev);
                    self.events.insert(seq, (text(&p[3]), text(&p[4]), body));
                }
                sql::INSERT_MESSAGE => {
                    let id = int(&p[2]);
                    assert!(
                        !self.messages.contains_key(&id),
                        "message {id} inserted twice"
                    );
                    let body = &self
                        .events
                        .get(&id)
                        .expect("message row without its event")
                        .2;
                    let Ok(TimelineEvent::Message(ev)) = TimelineEvent::decode(body) else {
                        panic!("message row {id} for a non-message event");
                    };
                    // The row agrees with the event (the legacy API and reloads read rows).
                    assert_eq!(text(&p[3]), ev.user_id, "messages.user_id");
                    assert_eq!(text(&p[4]), ev.content, "messages.content");
                    assert_eq!(opt_int(&p[6]), ev.parent_id, "messages.parent_id");
                    assert_eq!(int(&p[7]), u64::from(ev.version), "messages.version");
                    assert_eq!(int(&p[8]) != 0, ev.streaming, "messages.streaming");
                    let cmid = match &p[9] {
                        SqlValue::Null => None,
                        v => Some(text(v)),
                    };
                    assert_eq!(cmid, ev.client_message_id, "messages.client_message_id");
                    let att = match &p[10] {
                        SqlValue::Null => None,
                        v => Some(text(v)),
                    };
                    let want = (!ev.attachments.is_empty())
                        .then(|| serde_json::to_string(&ev.attachments).expect("json"));
                    assert_eq!(att, want, "messages.attachments");
                    self.messages.insert(
                        id,
                        MessageRow {
                            id,
                            user_id: text(&p[3]),
                            version: int(&p[7]) as u32,
                            deleted: false,
                            streaming: int(&p[8]) != 0,
                        },
                    );
                }
                sql::UPDATE_MESSAGE_CONTENT => {
                    let id = int(&p[2]);
                    let m = self
                        .messages
                        .get_mut(&id)
                        .expect("update of a missing message");
                    let v = int(&p[4]) as u32;
                    assert_eq!(v, m.version + 1, "edit version must grow by one");
                    m.version = v;
                    m.streaming = int(&p[6]) != 0;
                }
                sql::DELETE_MESSAGE => {
                    let id = int(&p[2]);
                    let m = self
                        .messages
                        .get_mut(&id)
                        .expect("delete of a missing message");
                    assert!(!m.deleted, "message {id} deleted twice");
                    let v = int(&p[3]) as u32;
                    assert_eq!(v, m.version + 1, "delete version must grow by one");
                    m.version = v;
                    m.deleted = true;
                    m.streaming = false;
                }
                sql::INSERT_REACTION => {
                    let k = (int(&p[2]), text(&p[3]), text(&p[4]));
                    assert!(self.reactions.insert(k), "reaction primary key violated");
                }
                sql::DELETE_REACTION => {
                    let k = (int(&p[2]), text(&p[3]), text(&p[4]));
                    assert!(self.reactions.remove(&k), "removed an absent reaction");
                }
                sql::UPSERT_READ => {
                    self.reads.insert(text(&p[2]), int(&p[3]));
                }
                sql::INSERT_IDEMPOTENCY => {
                    let k = (text(&p[2]), text(&p[3]));
                    // A key may be reused only once the original expired (24 h).
                    if let Some(old) = self.idem.get(&k) {
                        assert!(
                            old.created_ms + IDEM_TTL_MS <= now,
                            "I5: idempotency key {k:?} used twice"
                        );
                    }
                    let seq = int(&p[4]);
                    assert!(
                        self.events.contains_key(&seq),
                        "idempotency row before its event"
                    );
                    self.idem.insert(
                        k.clone(),
                        IdempotencyRow {
                            user_id: k.0,
                            client_message_id: k.1,
                            seq,
                            message_id: opt_int(&p[5]),
                            created_ms: int(&p[6]),
                        },
                    );
                }
                sql::UPSERT_RUN => {
                    let k = (text(&p[2]), text(&p[3]));
                    self.run_rows.insert(k, (int(&p[4]) != 0, int(&p[5]) != 0));
                }
                sql::UPSERT_RUN_ITEM => {
                    let k = (text(&p[2]), text(&p[3]), text(&p[4]), text(&p[5]));
                    self.run_items.insert(k, int(&p[6]) != 0);
                }
                other => panic!("unknown statement {other}"),
            }
        }
        self.check_run_rows();
    }

    /// The `agent_runs` / `agent_items` rows (what wake-up and run lookups read) agree with
    /// the lifecycle model built from the events: every run has its row, terminal and open
    /// as the events say, every tool call and approval its item.
    fn check_run_rows(&self) {
        assert_eq!(self.run_rows.len(), self.runs.len(), "agent_runs rows");
        for ((agent, run), active) in &self.runs {
            let pending = |m: &BTreeMap<(String, String, String), bool>| {
                m.iter().any(|((a, r, _), p)| *p && a == agent && r == run)
            };
            let open = *active || pending(&self.calls) || pending(&self.approvals);
            assert_eq!(
                self.run_rows.get(&(agent.clone(), run.clone())),
                Some(&(!*active, open)),
                "agent_runs row of {agent}/{run}"
            );
        }
        for ((agent, run, call), pending) in &self.calls {
            let k = (
                agent.clone(),
                run.clone(),
                sql::ITEM_TOOL_CALL.to_owned(),
                call.clone(),
            );
            assert_eq!(self.run_items.get(&k), Some(pending), "agent_items {k:?}");
        }
        for ((agent, run, id), pending) in &self.approvals {
            let k = (
                agent.clone(),
                run.clone(),
                sql::ITEM_APPROVAL.to_owned(),
                id.clone(),
            );
            assert_eq!(self.run_items.get(&k), Some(pending), "agent_items {k:?}");
        }
    }

    /// What storage answers to a lookup (the `FETCH_*` statements).
    fn lookup(&self, l: &Lookup, now: u64) -> Found {
        match l {
            Lookup::Message { id } => Found::Message(self.messages.get(id).cloned()),
            Lookup::Reaction {
                message_id,
                user_id,
                emoji,
            } => Found::Reaction(self.reactions.contains(&(
                *message_id,
                user_id.clone(),
                emoji.clone(),
            ))),
            Lookup::Read { user_id } => Found::Read(self.reads.get(user_id).copied()),
            Lookup::Idempotency {
                user_id,
                client_message_id,
            } => Found::Idempotency(
                self.idem
                    .get(&(user_id.clone(), client_message_id.clone()))
                    .filter(|r| r.created_ms + IDEM_TTL_MS > now)
                    .cloned(),
            ),
            Lookup::Run { agent_id, run_id } => {
                Found::Run(self.run_rows.get(&(agent_id.clone(), run_id.clone())).map(
                    |(terminal, _)| RunRow {
                        agent_id: agent_id.clone(),
                        run_id: run_id.clone(),
                        terminal: *terminal,
                        ..RunRow::default()
                    },
                ))
            }
        }
    }

    fn body(&self, seq: u64) -> Option<&Arc<str>> {
        self.events.get(&seq).map(|e| &e.2)
    }

    /// What the shells read at wake-up with the `LOAD_*` statements: `LOAD_RECENT` from
    /// `current - max(resume window, 500)`, the streaming messages (`LOAD_OPEN_MESSAGES`) and
    /// the open runs (`LOAD_OPEN_RUNS`, `LOAD_OPEN_RUN_ITEMS`); nothing else (the engine
    /// fetches the rest on demand).
    fn load(&self, room_type: RoomType, window: u64, _now: u64) -> LoadedRoom {
        let current = self.events.len() as u64;
        let from = current.saturating_sub(window.max(MIN_RING));
        LoadedRoom {
            room_type,
            current_seq: current,
            recent: self
                .events
                .range(from + 1..)
                .map(|e| e.1 .2.to_string())
                .collect(),
            messages: self
                .messages
                .values()
                .filter(|m| m.streaming)
                .cloned()
                .collect(),
            runs: RunRow::assemble(
                self.run_rows
                    .iter()
                    .filter(|(_, (_, open))| *open)
                    .map(|((a, r), (terminal, _))| (a.clone(), r.clone(), *terminal)),
                self.run_items
                    .iter()
                    .map(|((a, r, k, i), p)| (a.clone(), r.clone(), k.clone(), i.clone(), *p)),
            ),
            ..LoadedRoom::default()
        }
    }
}

/// The model shell.
pub struct Harness {
    setup: Setup,
    cfg: RoomConfig,
    room: Room,
    now: u64,
    store: Store,
    conns: Vec<ConnState>,
    /// Outstanding `Persist` batches, oldest first.
    batches: Vec<(u64, Vec<Stmt>)>,
    /// Outstanding `Fetch`es, oldest first: (fetch id, lookup, step at which storage answers).
    fetches: Vec<(u64, Lookup, u64)>,
    /// Fetches answered (`Ok`) and failed.
    pub fetched: u32,
    pub fetch_failures: u32,
    frame_no: u64,
    /// Highest batch id of this room instance (ids must grow: a stale `Committed` is ignored).
    last_batch: u64,
    /// Frames sent by a connection that could moderate at the time (announcement rooms).
    frame_may_moderate: HashMap<u64, bool>,
    /// `resume` frames: whether a replay (true) or resync_required (false) is due.
    resume_expect: HashMap<u64, bool>,
    /// `auth` frames that must be refused (other tenant, bad signature, other user, expired).
    auth_must_fail: BTreeSet<u64>,
    /// Frames that waited behind a fetch: they run later, under the room role and window of
    /// that time, so the model predicts neither their resume answer nor their moderation.
    waited: BTreeSet<u64>,
    /// frame number -> connection index
    frame_conn: HashMap<u64, usize>,
    /// POST requests: id -> (user, answered)
    posts: BTreeMap<u64, (String, bool)>,
    next_post: u64,
    /// Highest seq broadcast so far (room-wide).
    last_broadcast: u64,
    /// `member_joined` (true) and `member_left` (false) broadcasts of the current step.
    member_events: Vec<(bool, String)>,
    pub resets: u32,
    /// Evictions done, connections restored by them, and probe requests compared between the
    /// old and the rebuilt engine.
    pub evictions: u32,
    pub restored: u32,
    pub probes: u32,
    pub steps: u64,
}

fn policy(s: &Setup) -> RoomPolicy {
    if s.tight_policy {
        RoomPolicy {
            max_invalid_streak: Some(3),
            max_rate_rejects: Some(3),
            rate_abuse_window_ms: 0,
        }
    } else {
        RoomPolicy::default()
    }
}

fn room_type(s: &Setup) -> RoomType {
    if s.announcement {
        RoomType::Announcement
    } else {
        RoomType::default()
    }
}

fn cmid(k: u8) -> String {
    format!("cmid-{:04}", k % 6)
}

fn content(k: u8) -> String {
    match k % 8 {
        0 => "   ".into(), // invalid after trimming
        1 => format!("  hello {k}  "),
        2 => "x".repeat(4001),
        _ => format!("m{k}"),
    }
}

impl Harness {
    /// A fresh empty room.
    pub fn new(setup: Setup) -> Harness {
        let cfg = RoomConfig {
            tenant: "t1".into(),
            room_id: "r1".into(),
            jwt_secret: SECRET.to_vec(),
            idle_timeout_ms: IDLE_MS,
            rate_burst: if setup.tight_rate { 3 } else { 1000 },
            rate_per_second: if setup.tight_rate { 2 } else { 1000 },
            resume_window: if setup.small_window {
                5
            } else if setup.large_window {
                1000
            } else {
                100
            },
            faults: setup.faults,
        };
        let mut room = Room::new(
            cfg.clone(),
            LoadedRoom {
                room_type: room_type(&setup),
                ..Default::default()
            },
        );
        room.set_policy(policy(&setup));
        Harness {
            setup,
            cfg,
            room,
            now: T0,
            store: Store::default(),
            conns: Vec::new(),
            batches: Vec::new(),
            fetches: Vec::new(),
            fetched: 0,
            fetch_failures: 0,
            frame_no: 1,
            last_batch: 0,
            auth_must_fail: BTreeSet::new(),
            waited: BTreeSet::new(),
            resume_expect: HashMap::new(),
            frame_may_moderate: HashMap::new(),
            frame_conn: HashMap::new(),
            posts: BTreeMap::new(),
            next_post: 1,
            last_broadcast: 0,
            member_events: Vec::new(),
            resets: 0,
            evictions: 0,
            restored: 0,
            probes: 0,
            steps: 0,
        }
    }

    /// A fresh engine from the storage model, as the shells build it after a reset or an
    /// eviction. It emits nothing.
    fn rebuild(&self) -> Room {
        let loaded = self.store.load(
            room_type(&self.setup),
            u64::from(self.cfg.resume_window),
            self.now,
        );
        let mut room = Room::new(self.cfg.clone(), loaded);
        room.set_policy(policy(&self.setup));
        assert!(room.poll_effect().is_none(), "a freshly loaded room emits");
        assert_eq!(room.committed_seq(), self.store.events.len() as u64);
        room
    }

    /// The idle clock a restore hands the engine for connection `c`.
    fn restore_rx(&self, c: usize, exact_rx: bool) -> u64 {
        if exact_rx {
            self.conns[c].heard_rx
        } else {
            self.conns[c].att_rx
        }
    }

    /// Re-register every open connection with `Input::Restore`, as the DO does from its
    /// hibernated sockets' attachments; nothing may be emitted.
    fn restore_all(&self, room: &mut Room, exact_rx: bool) {
        for (i, c) in self.conns.iter().enumerate() {
            if !c.open {
                continue;
            }
            let identity = c
                .att_identity
                .clone()
                .expect("an open connection has an identity");
            room.handle(
                self.now,
                Input::Restore {
                    conn: i as ConnId,
                    identity,
                    last_rx_ms: self.restore_rx(i, exact_rx),
                },
            );
            if let Some(e) = room.poll_effect() {
                panic!("Restore of conn {i} emitted {e:?}");
            }
        }
    }

    /// [`Op::Evict`].
    fn evict(&mut self, exact_rx: bool, probe: u8) {
        // The object is evicted only when idle: its fetches were answered and its commit loop
        // has written every batch.
        self.settle();
        let committed = self.store.events.len() as u64;
        let checked = self.setup.faults == Faults::NONE;
        if checked {
            // An idle engine owes nothing: every request of an open connection and every POST
            // was answered, and every connection was sent every committed event.
            assert_eq!(
                self.last_broadcast, committed,
                "idle with events not broadcast"
            );
            for (i, c) in self.conns.iter().enumerate() {
                if !c.open {
                    continue;
                }
                assert_eq!(c.live_next, committed + 1, "idle, conn {i} missed events");
                for (n, needs) in &c.sent {
                    assert!(
                        !*needs || c.answered.contains(n),
                        "idle, conn {i}: frame zq{n} not answered"
                    );
                }
                // The identity a shell kept from IdentityChanged is the model's.
                let id = c.att_identity.as_ref().expect("identity");
                assert_eq!(id.user_id, c.user, "conn {i}: kept identity user");
                assert_eq!(id.token_exp, c.token_exp, "conn {i}: kept token expiry");
                assert_eq!(id.roles, c.roles, "conn {i}: kept roles");
                assert_eq!(id.member_role, c.member_role, "conn {i}: kept room role");
            }
            for (r, (_, answered)) in &self.posts {
                assert!(*answered, "idle, POST request {r} not answered");
            }
        }
        let mut fresh = self.rebuild();
        self.restore_all(&mut fresh, exact_rx);
        // A second Restore of an open connection id is ignored, whatever it carries.
        if let Some(i) = self.conns.iter().position(|c| c.open) {
            fresh.handle(
                self.now,
                Input::Restore {
                    conn: i as ConnId,
                    identity: Identity {
                        user_id: "mallory".into(),
                        roles: vec!["admin".into()],
                        member_role: Some(MemberRole::Owner),
                        token_exp: 1,
                    },
                    last_rx_ms: 0,
                },
            );
            assert!(fresh.poll_effect().is_none(), "a repeated Restore emitted");
        }
        if checked && !self.setup.tight_rate {
            self.probe(fresh, probe);
            // The probed copy is spent: the real one is rebuilt the same way.
            fresh = self.rebuild();
            self.restore_all(&mut fresh, exact_rx);
        }
        self.room = fresh;
        self.last_batch = 0;
        self.evictions += 1;
        let burst = i64::from(self.cfg.rate_burst.max(1)) * 1000;
        for i in 0..self.conns.len() {
            if !self.conns[i].open {
                continue;
            }
            let rx = self.restore_rx(i, exact_rx);
            let c = &mut self.conns[i];
            // What a restore starts afresh: the idle clock from the attachment, a full token
            // bucket, no invalid-frame streak.
            c.last_rx = rx;
            c.bucket = burst;
            c.bucket_at = self.now;
            c.invalid_streak = 0;
            c.restores += 1;
            self.restored += 1;
        }
    }

    /// Differential probe: the engine before the eviction (`self.room`, idle) and the rebuilt
    /// one (`fresh`) get the same requests (structured frames on one restored connection, a
    /// `POST`, a commit of whatever they write) and must emit the same effects, byte for byte
    /// (batch ids aside: a new instance numbers from 1). Only without a tight rate limit,
    /// where a restore's full token bucket cannot change an answer.
    fn probe(&mut self, mut fresh: Room, seed: u8) {
        let open: Vec<usize> = (0..self.conns.len())
            .filter(|i| self.conns[*i].open)
            .collect();
        let mut rng = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut inputs = Vec::new();
        if let Some(&c) = open.get(seed as usize % open.len().max(1)) {
            for k in 0..6u64 {
                let r = next();
                let b = |s: u32| (r >> s) as u8;
                let f = match (r % 9, k) {
                    (_, 0) => FrameOp::Message {
                        content: 3,
                        cmid: Some(b(8)),
                        parent: None,
                        spoof: false,
                    },
                    (0, _) => FrameOp::Edit {
                        msg: b(8),
                        content: b(16),
                        expected: (b(24) & 1 == 0).then(|| b(32)),
                        cmid: (b(40) & 1 == 0).then(|| b(48)),
                    },
                    (1, _) => FrameOp::Delete {
                        msg: b(8),
                        cmid: (b(40) & 1 == 0).then(|| b(48)),
                    },
                    (2, _) => FrameOp::Reaction {
                        msg: b(8),
                        emoji: b(16),
                        add: b(24) & 1 == 0,
                    },
                    (3, _) => FrameOp::Read { msg: b(8) },
                    (4, _) => FrameOp::Stream {
                        op: b(8),
                        msg: Some(b(16)),
                        content: b(24),
                        cmid: None,
                    },
                    (5, _) => FrameOp::AgentRun {
                        run: b(8),
                        status: b(16),
                    },
                    (6, _) => FrameOp::ToolResult {
                        run: b(8),
                        call: b(16),
                        error: b(24) & 1 == 0,
                    },
                    (7, _) => FrameOp::ApprovalDecision {
                        run: b(8),
                        appr: b(16),
                        approve: b(24) & 1 == 0,
                    },
                    _ => FrameOp::Resume { last: 255 },
                };
                let (v, _) = self.frame_json(c, &f, 1_000_000 + k);
                let text = v.to_string();
                // Only frames that decode: an invalid one may count towards a 4010 that the
                // restore's fresh streak legitimately delays.
                if ClientFrame::decode(&text).is_ok() {
                    inputs.push(Input::Text {
                        conn: c as ConnId,
                        text,
                    });
                }
            }
        }
        let r = next();
        let identity = self.identity((r % USERS.len() as u64) as u8, false);
        if let Ok(ClientFrame::Message(frame)) = ClientFrame::decode(
            &json!({"type":"message","content":"probe","clientMessageId":cmid((r >> 8) as u8)})
                .to_string(),
        ) {
            inputs.push(Input::Post {
                request: u64::MAX,
                identity,
                frame,
            });
        }
        let store = &self.store;
        let run = |room: &mut Room, inputs: &[Input], now: u64| -> Vec<String> {
            let mut out = Vec::new();
            let mut persisted = Vec::new();
            for i in inputs {
                room.handle(now, i.clone());
                drain_normalised(room, store, now, &mut out, &mut persisted);
            }
            for _ in 0..100 {
                let Some(b) = persisted.pop() else { break };
                room.handle(now, Input::Committed { batch: b });
                drain_normalised(room, store, now, &mut out, &mut persisted);
            }
            out
        };
        let a = run(&mut self.room, &inputs, self.now);
        let b = run(&mut fresh, &inputs, self.now);
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "eviction changed effect {k} of the probe {inputs:?}");
        }
        assert_eq!(
            a.len(),
            b.len(),
            "eviction changed the probe's effects {inputs:?}"
        );
        self.probes += inputs.len() as u32;
    }

    /// Whether connection `c` (in opening order) is open.
    pub fn is_open(&self, c: usize) -> bool {
        self.conns.get(c).is_some_and(|st| st.open)
    }

    /// Number of committed events (including those before resets).
    pub fn committed(&self) -> u64 {
        self.store.events.len() as u64
    }

    /// Whether `resume {lastSeq}` must replay (`[FX-RES-*]`: not ahead of the committed seq and
    /// within the resume window) rather than answer resync_required.
    fn resumable(&self, last: u64) -> bool {
        let committed = self.store.events.len() as u64;
        last <= committed && committed - last <= u64::from(self.cfg.resume_window)
    }

    /// Committed events of each type.
    pub fn committed_types(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (t, _, _) in self.store.events.values() {
            *m.entry(t.clone()).or_insert(0) += 1;
        }
        m
    }

    fn conn_index(&self, k: u8) -> Option<usize> {
        // Mostly an open connection; sometimes any connection ever opened (closed ones too).
        let open: Vec<usize> = (0..self.conns.len())
            .filter(|i| self.conns[*i].open)
            .collect();
        if k < 224 && !open.is_empty() {
            Some(open[k as usize % open.len()])
        } else if self.conns.is_empty() {
            None
        } else {
            Some(k as usize % self.conns.len())
        }
    }

    fn msg_id(&self, k: u8) -> u64 {
        // Message ids are seqs: aim at the committed range, plus a little beyond.
        u64::from(k) % (self.store.events.len() as u64 + 3)
    }

    fn identity(&self, user: u8, short: bool) -> Identity {
        let (u, roles, mr) = USERS[user as usize % USERS.len()];
        Identity {
            user_id: u.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            member_role: mr,
            token_exp: self.now / 1000 + if short { 20 } else { 7200 },
        }
    }

    /// Run one step and check every invariant.
    pub fn step(&mut self, op: &Op) {
        let before = self.online_users();
        let resets = self.resets;
        self.member_events.clear();
        self.step_inner(op);
        // Storage answers the fetches that are due (`Setup::fetch_delay` steps after they
        // were emitted), oldest first.
        while let Some(i) = self.fetches.iter().position(|f| f.2 <= self.steps) {
            self.answer_fetch(i, true);
        }
        self.check_queries();
        // (A storage failure closes every connection at once, with nobody left to tell.)
        if self.setup.faults == Faults::NONE && self.resets == resets {
            // member_joined on a user's first connection, member_left on the last one (a
            // restored connection counts: it was online all along).
            let after = self.online_users();
            for u in after.difference(&before) {
                assert!(
                    self.member_events.contains(&(true, u.clone())),
                    "{u} came online without member_joined"
                );
            }
            for u in before.difference(&after) {
                assert!(
                    self.member_events.contains(&(false, u.clone())),
                    "{u} went offline without member_left"
                );
            }
        }
    }

    fn online_users(&self) -> BTreeSet<String> {
        self.conns
            .iter()
            .filter(|c| c.open)
            .map(|c| c.user.clone())
            .collect()
    }

    /// The engine's queries for the shells agree with the model.
    fn check_queries(&self) {
        let committed = self.store.events.len() as u64;
        assert_eq!(self.room.committed_seq(), committed, "committed_seq");
        assert!(
            !self.room.is_failed(),
            "the room stays failed after a rebuild"
        );
        assert_eq!(self.room.policy(), policy(&self.setup), "policy");
        assert_eq!(
            self.room.connection_count(),
            self.conns.iter().filter(|c| c.open).count(),
            "connection_count"
        );
        // The in-memory window holds at least the last max(resume window, 500) events.
        let window = u64::from(self.cfg.resume_window).max(500);
        for after in [
            0,
            committed.saturating_sub(window),
            committed.saturating_sub(2),
            committed,
        ] {
            let got = self.room.recent_after(after, 3);
            if committed - after <= window {
                let want: Vec<(u64, &str, &str)> = (after + 1..=committed.min(after + 3))
                    .map(|s| {
                        let (t, _, b) = &self.store.events[&s];
                        (s, t.as_str(), &**b)
                    })
                    .collect();
                let got = got.unwrap_or_else(|| panic!("recent_after({after}) not covered"));
                let got: Vec<(u64, &str, &str)> =
                    got.iter().map(|(s, t, b)| (*s, *t, &**b)).collect();
                assert_eq!(got, want, "recent_after({after})");
                let bodies = self.room.recent_bodies_after(after, 3).expect("covered");
                assert!(bodies.iter().map(|b| &**b).eq(want.iter().map(|w| w.2)));
            }
        }
        if self.setup.faults == Faults::NONE {
            let want = self
                .conns
                .iter()
                .filter(|c| c.open)
                .flat_map(|c| [c.last_rx + IDLE_MS, (c.token_exp + 5) * 1000])
                .min();
            assert_eq!(self.room.poll_timeout(), want, "poll_timeout");
        }
    }

    fn step_inner(&mut self, op: &Op) {
        self.steps += 1;
        if trace() {
            eprintln!("step {}: {op:?}", self.steps);
        }
        match op {
            Op::Open {
                user,
                opts,
                last_seq,
                short_token,
            } => {
                let identity = self.identity(*user, *short_token);
                let agent = identity.roles.iter().any(|r| r == "agent");
                let id = self.conns.len() as ConnId;
                let options = ConnectOptions {
                    replay: opts & 1 == 0,
                    replay_limit: [50, 1, 0, 600][(opts >> 1) as usize % 4],
                    last_seq: last_seq.map(|l| u64::from(l) % (self.store.events.len() as u64 + 2)),
                    compat: false,
                    // Unversioned (0): the model's handshakes never race a membership change;
                    // the race itself is covered by the engine tests (`handshake_*`).
                    membership_version: 0,
                };
                let open_resume = options.last_seq.map(|l| self.resumable(l));
                self.conns.push(ConnState {
                    user: identity.user_id.clone(),
                    open: true,
                    last_rx: self.now,
                    heard_rx: self.now,
                    att_rx: self.now,
                    att_identity: Some(identity.clone()),
                    token_exp: identity.token_exp,
                    bucket: i64::from(self.cfg.rate_burst.max(1)) * 1000,
                    bucket_at: self.now,
                    open_resume,
                    agent,
                    roles: identity.roles.clone(),
                    member_role: identity.member_role,
                    ..Default::default()
                });
                self.input(Input::Open {
                    conn: id,
                    identity,
                    options,
                });
                assert!(
                    self.conns[id as usize].welcomed || !self.conns[id as usize].open,
                    "no welcome on open"
                );
            }
            Op::Frame { conn, frame } => {
                let Some(c) = self.conn_index(*conn) else {
                    return;
                };
                let n = self.frame_no;
                self.frame_no += 1;
                let (v, needs_answer) = self.frame_json(c, frame, n);
                let st = &self.conns[c];
                self.frame_may_moderate
                    .insert(n, may_moderate(&st.roles, st.member_role));
                if let Some(l) = v.get("lastSeq").and_then(Value::as_u64) {
                    let ok = self.resumable(l);
                    self.resume_expect.insert(n, ok);
                }
                if let FrameOp::Auth {
                    user,
                    other_tenant,
                    defect,
                    exp_s,
                    ..
                } = frame
                {
                    let u = USERS[*user as usize % USERS.len()].0;
                    let exp = (self.now / 1000).saturating_add_signed(i64::from(*exp_s));
                    if *other_tenant
                        || matches!(defect % 8, 1..=3)
                        || u != self.conns[c].user
                        || self.now / 1000 >= exp + 5
                    {
                        self.auth_must_fail.insert(n);
                    }
                }
                if self.conns[c].open {
                    self.touch(c);
                    self.conns[c].sent.insert(n, needs_answer);
                    self.frame_conn.insert(n, c);
                }
                self.send_text(c, v.to_string());
                if self.room.is_waiting(c as ConnId) {
                    self.waited.insert(n);
                }
            }
            Op::Fetched { index, fail } => {
                if !self.fetches.is_empty() {
                    let i = usize::from(*index) % self.fetches.len();
                    self.answer_fetch(i, !*fail);
                }
            }
            Op::Raw { conn, text } => {
                let Some(c) = self.conn_index(*conn) else {
                    return;
                };
                if text.contains(REF_PREFIX) {
                    return;
                }
                if self.conns[c].open {
                    self.touch(c);
                }
                self.send_text(c, text.clone());
            }
            Op::Binary { conn } => {
                let Some(c) = self.conn_index(*conn) else {
                    return;
                };
                let was_open = self.conns[c].open;
                if was_open {
                    self.touch(c);
                }
                self.input(Input::Binary { conn: c as ConnId });
                if was_open {
                    self.conns[c].invalid_streak += 1;
                    self.check_invalid_streak(c);
                }
            }
            Op::Close { conn } => {
                let Some(c) = self.conn_index(*conn) else {
                    return;
                };
                self.conns[c].open = false;
                self.input(Input::Closed { conn: c as ConnId });
            }
            Op::Commit => self.commit_one(),
            Op::Fail => {
                if !self.batches.is_empty() {
                    let (b, _) = self.batches.remove(0);
                    self.input(Input::CommitFailed { batch: b });
                }
            }
            Op::BogusCommit { batch, fail } => {
                let live: BTreeSet<u64> = self.batches.iter().map(|b| b.0).collect();
                let b = u64::from(*batch);
                if !live.contains(&b) {
                    let i = if *fail {
                        Input::CommitFailed { batch: b }
                    } else {
                        Input::Committed { batch: b }
                    };
                    self.input(i);
                }
            }
            Op::Advance { ms } => {
                self.now += u64::from(*ms);
                if self.room.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.room.handle_timeout(self.now);
                    self.pump();
                }
                if self.setup.faults == Faults::NONE {
                    // Timeouts are not late: nothing idle or expired survives a due timer.
                    for (i, c) in self.conns.iter().enumerate() {
                        if c.open {
                            assert!(self.now < c.last_rx + IDLE_MS, "conn {i} idle but open");
                            assert!(
                                self.now < (c.token_exp + 5) * 1000,
                                "conn {i} token expired but open"
                            );
                        }
                    }
                }
            }
            Op::Post {
                user,
                content: ct,
                cmid: k,
                parent,
            } => {
                let identity = self.identity(*user, false);
                let mut v = json!({"type":"message","content":content(*ct)});
                if let Some(k) = k {
                    v["clientMessageId"] = cmid(*k).into();
                }
                if let Some(p) = parent {
                    v["parentId"] = self.msg_id(*p).into();
                }
                // The shell validates the body with the same decoder as the socket.
                let Ok(ClientFrame::Message(frame)) = ClientFrame::decode(&v.to_string()) else {
                    return;
                };
                let request = self.next_post;
                self.next_post += 1;
                self.posts
                    .insert(request, (identity.user_id.clone(), false));
                self.input(Input::Post {
                    request,
                    identity,
                    frame,
                });
            }
            Op::SetRole { user, role } => {
                let u = USERS[*user as usize % USERS.len()].0;
                let member_role = match role % 5 {
                    0 => None,
                    1 => Some(MemberRole::Member),
                    2 => Some(MemberRole::Moderator),
                    3 => Some(MemberRole::Admin),
                    _ => Some(MemberRole::Owner),
                };
                self.input(Input::SetRole {
                    user_id: u.into(),
                    member_role,
                    version: 0,
                });
                for c in &mut self.conns {
                    if c.user == u {
                        c.member_role = member_role;
                    }
                }
            }
            Op::Evict { exact_rx, probe } => self.evict(*exact_rx, *probe),
            Op::Kick { user } => {
                let u = USERS[*user as usize % USERS.len()].0;
                self.input(Input::Kick {
                    user_id: u.into(),
                    version: 0,
                });
                for c in &self.conns {
                    assert!(
                        !(c.open && c.user == u),
                        "I: kicked user {u} still connected"
                    );
                }
            }
        }
    }

    /// A frame arrives on open connection `c`: the engine's idle clock restarts, and the DO
    /// refreshes its attachment's copy when it is `RX_SAVE_MS` old (`Shell::touch`).
    fn touch(&mut self, c: usize) {
        let st = &mut self.conns[c];
        st.last_rx = self.now;
        st.heard_rx = self.now;
        if self.now.saturating_sub(st.att_rx) >= RX_SAVE_MS {
            st.att_rx = self.now;
        }
    }

    /// Commit every outstanding batch, then check that every request was answered.
    pub fn finish(&mut self) {
        self.settle();
        for (i, c) in self.conns.iter().enumerate() {
            if !c.open {
                continue;
            }
            for (n, needs) in &c.sent {
                if *needs {
                    assert!(
                        c.answered.contains(n),
                        "conn {i}: frame zq{n} never answered"
                    );
                }
            }
        }
        for (r, (_, answered)) in &self.posts {
            assert!(*answered, "POST request {r} never answered");
        }
    }

    /// A text frame, with the token bucket modelled (`[FX-LIM-4]`: every frame but `ping`
    /// takes a token; burst `rate_burst`, refill `rate_per_second`).
    fn send_text(&mut self, c: usize, text: String) {
        let decoded = ClientFrame::decode(&text);
        let decodes = decoded.is_ok();
        let exempt = matches!(decoded, Ok(ClientFrame::Ping(_)));
        // A frame on an already-closed connection is dropped by the engine: no streak to track.
        let was_open = self.conns[c].open;
        let model = (self.conns[c].open && !exempt).then(|| {
            let burst = i64::from(self.cfg.rate_burst.max(1)) * 1000;
            let rate = i64::from(self.cfg.rate_per_second.max(1));
            let st = &mut self.conns[c];
            let elapsed = i64::try_from(self.now - st.bucket_at).unwrap_or(i64::MAX / 2);
            st.bucket = st
                .bucket
                .saturating_add(elapsed.saturating_mul(rate))
                .min(burst);
            st.bucket_at = self.now;
            st.bucket
        });
        let before = self.conns[c].rate_limited;
        self.input(Input::Text {
            conn: c as ConnId,
            text,
        });
        if let Some(tokens) = model {
            let refused = self.conns[c].rate_limited > before;
            // Float rounding in the engine may decide either way within a milli-token of 1.
            if self.setup.faults == Faults::NONE && !(999..=1001).contains(&tokens) {
                assert_eq!(
                    refused,
                    tokens < 1000,
                    "token bucket: refused {refused} with {tokens}/1000 tokens"
                );
                if refused {
                    // [FX-LIM-3] a frame sent after retryAfterMs is accepted; and the engine
                    // asks for no more than the time until one token is back.
                    let rate = i64::from(self.cfg.rate_per_second.max(1));
                    let wait = (1000 - tokens + rate - 1) / rate;
                    let got = i64::try_from(self.conns[c].last_retry_ms).unwrap_or(i64::MAX);
                    assert!(
                        (wait - 1..=wait + 1).contains(&got),
                        "retryAfterMs {got}, the bucket refills in {wait} ms"
                    );
                }
            }
            if !refused {
                self.conns[c].bucket -= 1000;
            }
        }
        if was_open && (model.is_some() || exempt) {
            let refused = self.conns[c].rate_limited > before;
            let st = &mut self.conns[c];
            if decodes {
                st.invalid_streak = 0;
            } else if !refused {
                st.invalid_streak += 1;
            }
            self.check_invalid_streak(c);
            let p = policy(&self.setup);
            if self.conns[c].close_code == Some(CloseCode::RateLimited) {
                let max = p
                    .max_rate_rejects
                    .expect("4008 only under a rate-abuse policy");
                assert!(
                    self.conns[c].rate_limited >= u64::from(max.max(1)),
                    "4008 before {max} refusals"
                );
            }
        }
    }

    /// `[FX-FRM-11]`: close 4010 exactly when the streak of invalid frames reaches the limit.
    fn check_invalid_streak(&self, c: usize) {
        if self.setup.faults != Faults::NONE {
            return;
        }
        let st = &self.conns[c];
        let max = policy(&self.setup)
            .max_invalid_streak
            .map_or(u32::MAX, |m| m.max(1));
        let violation = st.close_code == Some(CloseCode::ProtocolViolation);
        if st.invalid_streak >= max {
            assert!(
                !st.open,
                "conn {c}: {} invalid frames in a row and still open",
                st.invalid_streak
            );
        }
        if violation {
            assert!(
                st.invalid_streak >= max,
                "conn {c}: 4010 after {} invalid frames",
                st.invalid_streak
            );
        }
    }

    /// Storage answers outstanding fetch `i` (from the storage model as it is now), or fails.
    fn answer_fetch(&mut self, i: usize, ok: bool) {
        let (fetch, lookup, _) = self.fetches.remove(i);
        let result = if ok {
            self.fetched += 1;
            Ok(self.store.lookup(&lookup, self.now))
        } else {
            self.fetch_failures += 1;
            Err(FetchFailed)
        };
        self.input(Input::Fetched { fetch, result });
    }

    /// Answer every fetch and commit every batch (what an idle shell has done).
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.fetches.is_empty() {
                self.answer_fetch(0, true);
            } else if !self.batches.is_empty() {
                self.commit_one();
            } else {
                return;
            }
        }
        panic!("fetches or batches keep coming");
    }

    fn commit_one(&mut self) {
        if self.batches.is_empty() {
            return;
        }
        let (b, stmts) = self.batches.remove(0);
        self.store.apply(&stmts, self.now);
        self.input(Input::Committed { batch: b });
    }

    fn input(&mut self, i: Input) {
        self.room.handle(self.now, i);
        self.pump();
    }

    fn pump(&mut self) {
        while let Some(e) = self.room.poll_effect() {
            self.effect(e);
        }
        // Connections the engine forgot must be closed in the model too.
        assert!(self.room.connection_count() <= self.conns.iter().filter(|c| c.open).count());
    }

    fn effect(&mut self, e: Effect) {
        match e {
            Effect::Send { conn, frame } => {
                let c = conn as usize;
                assert!(
                    c < self.conns.len() && self.conns[c].open,
                    "send to closed conn {c}"
                );
                let f = ServerFrame::decode(&frame)
                    .unwrap_or_else(|e| panic!("engine frame does not decode: {e}: {frame}"));
                self.on_send(c, f, &frame);
            }
            Effect::Broadcast {
                frame,
                except,
                seq,
                kind,
            } => {
                let f = ServerFrame::decode(&frame)
                    .unwrap_or_else(|e| panic!("broadcast does not decode: {e}: {frame}"));
                assert_eq!(f.type_name(), kind, "broadcast kind");
                if let Some(s) = seq {
                    // I3 and I4: only committed events, byte-identical to the stored body.
                    let stored = self
                        .store
                        .body(s)
                        .unwrap_or_else(|| panic!("I3: broadcast of uncommitted seq {s}"));
                    assert_eq!(
                        **stored, *frame,
                        "I4: broadcast body differs from stored body"
                    );
                    assert_eq!(s, self.last_broadcast + 1, "I1: room-wide broadcast order");
                    self.last_broadcast = s;
                    let ev = f.clone().into_timeline().expect("timeline broadcast");
                    assert_eq!(ev.seq(), s);
                } else {
                    assert!(
                        f.clone().into_timeline().is_none(),
                        "timeline event broadcast without seq"
                    );
                }
                if self.setup.faults == Faults::NONE {
                    match &f {
                        ServerFrame::MemberJoined(m) => {
                            assert!(
                                !self.conns.iter().enumerate().any(|(i, c)| c.open
                                    && c.user == m.user_id
                                    && Some(i as ConnId) != except),
                                "member_joined for {} who was online",
                                m.user_id
                            );
                            self.member_events.push((true, m.user_id.clone()));
                        }
                        ServerFrame::MemberLeft(m) => {
                            assert!(
                                !self.conns.iter().any(|c| c.open && c.user == m.user_id),
                                "member_left for {} who is online",
                                m.user_id
                            );
                            self.member_events.push((false, m.user_id.clone()));
                        }
                        _ => {}
                    }
                }
                if let ServerFrame::Presence(p) = &f {
                    let online: BTreeSet<&str> = self
                        .conns
                        .iter()
                        .filter(|c| c.open)
                        .map(|c| c.user.as_str())
                        .collect();
                    let listed: BTreeSet<&str> = p.users.iter().map(String::as_str).collect();
                    assert_eq!(
                        listed, online,
                        "presence lists other users than those online"
                    );
                    let n = self.conns.iter().filter(|c| c.open).count();
                    assert_eq!(p.online as usize, n, "presence online count");
                }
                for c in 0..self.conns.len() {
                    if let ServerFrame::AgentTyping(a) = &f {
                        assert!(
                            self.conns
                                .iter()
                                .any(|c| c.open && c.agent && c.user == a.agent_id),
                            "agentTyping from a connection without the agent role"
                        );
                    }
                    if self.conns[c].open && Some(c as ConnId) != except {
                        self.on_send(c, f.clone(), &frame);
                    }
                }
            }
            Effect::Close { conn, code } => {
                let c = &mut self.conns[conn as usize];
                assert!(c.open, "close of a closed conn");
                match code {
                    CloseCode::HeartbeatTimeout => {
                        assert!(self.now >= c.last_rx + IDLE_MS, "premature heartbeat close");
                        // After a restore from the attachment the close may come early, by
                        // less than the attachment's refresh period, never more.
                        assert!(
                            self.now + RX_SAVE_MS > c.heard_rx + IDLE_MS,
                            "heartbeat close {} ms after the last frame",
                            self.now - c.heard_rx
                        );
                    }
                    CloseCode::TokenExpired => assert!(
                        self.now >= (c.token_exp + 5) * 1000,
                        "premature token-expiry close"
                    ),
                    _ => {}
                }
                c.open = false;
                c.close_code = Some(code);
            }
            Effect::Persist { batch, statements } => {
                assert!(
                    batch > self.last_batch,
                    "batch id {batch} not above {}",
                    self.last_batch
                );
                self.last_batch = batch;
                assert!(self.batches.iter().all(|b| b.0 != batch), "batch id reused");
                assert!(self.batches.is_empty(), "two batches in flight");
                self.batches.push((batch, statements));
            }
            Effect::PostDone { request, result } => {
                let (user, answered) = self
                    .posts
                    .get_mut(&request)
                    .expect("answer to an unknown POST");
                assert!(!*answered, "POST {request} answered twice");
                *answered = true;
                let user = user.clone();
                if let Ok(o) = result {
                    let seq = o.ack.seq.expect("POST ack has a seq");
                    let stored = self
                        .store
                        .body(seq)
                        .unwrap_or_else(|| panic!("I3: POST answered before seq {seq} committed"));
                    if let Some(b) = &o.event {
                        assert_eq!(**b, **stored, "I4: POST body differs from the stored body");
                    }
                    let ev = TimelineEvent::decode(stored).expect("decodes");
                    if o.ack.duplicate {
                        let k = (
                            user.clone(),
                            o.ack
                                .client_message_id
                                .clone()
                                .expect("duplicate ack names its key"),
                        );
                        let row = self
                            .store
                            .idem
                            .get(&k)
                            .expect("I5: duplicate without a stored key");
                        assert_eq!(row.seq, seq, "I5: duplicate ack names another seq");
                    } else {
                        assert_eq!(ev.actor(), user, "I6: POST event actor");
                        if self.setup.announcement {
                            let (_, roles, mr) =
                                USERS.iter().find(|u| u.0 == user).expect("a user");
                            let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
                            assert!(
                                may_moderate(&roles, *mr),
                                "a non-moderator posted in an announcement room"
                            );
                        }
                    }
                }
            }
            Effect::IdentityChanged { conn, identity } => {
                // After an accepted in-band auth (its token_refreshed was just sent) or a role
                // change: the connection is open and keeps its user.
                let c = conn as usize;
                assert!(
                    c < self.conns.len() && self.conns[c].open,
                    "identity change of closed conn {c}"
                );
                assert_eq!(
                    identity.user_id, self.conns[c].user,
                    "identity change to another user"
                );
                assert_eq!(
                    identity.token_exp, self.conns[c].token_exp,
                    "identity change disagrees with token_refreshed"
                );
                // What the DO writes into the socket's attachment for a later restore.
                self.conns[c].att_identity = Some(identity);
            }
            Effect::Fetch {
                fetch,
                lookup,
                statement,
            } => {
                assert!(
                    self.fetches.iter().all(|f| f.0 != fetch && f.1 != lookup),
                    "fetch id or lookup {lookup:?} twice in flight"
                );
                assert_eq!(
                    statement.params[..2],
                    [SqlValue::from("t1"), SqlValue::from("r1")]
                );
                if let Lookup::Message { id } = lookup {
                    // Ids above the wake-up seq are created in memory: never fetched.
                    assert!(
                        id <= self.store.events.len() as u64,
                        "fetch of a new id {id}"
                    );
                }
                let due = self.steps + u64::from(self.setup.fetch_delay);
                self.fetches.push((fetch, lookup, due));
            }
            Effect::Reset => {
                assert!(self.room.is_failed());
                self.fetches.clear();
                for c in &self.conns {
                    assert!(!c.open, "Reset with connections still open");
                }
                for p in self.posts.values() {
                    // Every request of the failed room was answered before the reset.
                    let _ = p;
                }
                self.resets += 1;
                self.last_batch = 0;
                self.batches.clear();
                self.room = self.rebuild();
                self.last_broadcast = self.store.events.len() as u64;
            }
        }
    }

    fn check_events(&self, events: &[TimelineEvent], what: &str) {
        for w in events.windows(2) {
            assert_eq!(w[0].seq() + 1, w[1].seq(), "{what}: events not consecutive");
        }
        for e in events {
            let stored = self
                .store
                .body(e.seq())
                .unwrap_or_else(|| panic!("I3: {what} has uncommitted seq {}", e.seq()));
            assert_eq!(
                e.encode(),
                **stored,
                "I4: {what} body differs from the stored body"
            );
        }
    }

    fn answer(&mut self, c: usize, reference: Option<&str>) -> Option<u64> {
        if let Some(r) = reference {
            assert!(
                (1..=128).contains(&r.len()),
                "echoed ref of {} chars (FX-FRM-7)",
                r.len()
            );
        }
        let n: u64 = reference?.strip_prefix(REF_PREFIX)?.parse().ok()?;
        let owner = self.frame_conn.get(&n).copied();
        assert_eq!(owner, Some(c), "answer zq{n} sent to the wrong connection");
        let st = &mut self.conns[c];
        assert!(st.answered.insert(n), "frame zq{n} answered twice");
        Some(n)
    }

    fn on_send(&mut self, c: usize, f: ServerFrame, raw: &str) {
        let committed = self.store.events.len() as u64;
        match f {
            ServerFrame::Welcome(w) => {
                let st = &mut self.conns[c];
                assert!(!st.welcomed, "two welcomes");
                st.welcomed = true;
                assert_eq!(w.user_id, st.user, "welcome user");
                assert_eq!(w.idle_timeout_ms, IDLE_MS, "welcome.idleTimeoutMs");
                assert!(
                    w.heartbeat_interval_ms > 0 && w.heartbeat_interval_ms <= IDLE_MS / 2,
                    "welcome.heartbeatIntervalMs (FX-LIM-8)"
                );
                assert_eq!(w.limits.rate_burst, u64::from(self.cfg.rate_burst));
                assert_eq!(
                    w.limits.rate_per_second,
                    u64::from(self.cfg.rate_per_second)
                );
                assert_eq!(w.limits.resume_window, u64::from(self.cfg.resume_window));
                assert_eq!(
                    fluxy_protocol::common::parse_timestamp(&w.token_expires_at),
                    Some(st.token_exp * 1000),
                    "welcome.tokenExpiresAt"
                );
                assert_eq!(
                    w.current_seq, committed,
                    "welcome.currentSeq is not the committed seq"
                );
                st.live_next = w.current_seq + 1;
            }
            ServerFrame::History(h) => {
                assert!(self.conns[c].welcomed);
                assert_eq!(h.current_seq, committed, "history.currentSeq");
                self.check_events(&h.events, "history");
                if let Some(l) = h.events.last() {
                    assert_eq!(l.seq(), committed, "history does not end at currentSeq");
                }
                let more = h.events.first().map_or(committed > 0, |e| e.seq() > 1);
                assert_eq!(h.has_more, more, "history.hasMore");
            }
            ServerFrame::Replay(r) => {
                if r.reference.is_some() {
                    if let Some(n) = self
                        .answer(c, r.reference.as_deref())
                        .filter(|n| !self.waited.contains(n))
                    {
                        assert_eq!(
                            self.resume_expect.get(&n),
                            Some(&true),
                            "replay where resync_required is due"
                        );
                    }
                } else {
                    assert_eq!(
                        self.conns[c].open_resume.take(),
                        Some(true),
                        "replay at open where resync_required is due"
                    );
                }
                assert_eq!(r.current_seq, committed, "replay.currentSeq");
                self.check_events(&r.events, "replay");
                if let Some(f) = r.events.first() {
                    assert_eq!(
                        f.seq(),
                        r.from_seq + 1,
                        "replay does not start after fromSeq"
                    );
                }
                let last = r.events.last().map_or(r.from_seq, TimelineEvent::seq);
                assert_eq!(r.has_more, last < committed, "replay.hasMore");
                if !r.has_more {
                    assert_eq!(last, committed, "replay stops short");
                }
            }
            ServerFrame::Ack(a) => {
                let n = self.answer(c, a.reference.as_deref());
                let st = &self.conns[c];
                if let Some(n) = n {
                    assert!(n > st.last_ack_ref, "I2: acks out of frame order");
                }
                if let Some(seq) = a.seq {
                    let stored = self
                        .store
                        .body(seq)
                        .unwrap_or_else(|| panic!("I3: ack of uncommitted seq {seq}"));
                    let ev = TimelineEvent::decode(stored).expect("decodes");
                    if a.duplicate {
                        let k = (
                            st.user.clone(),
                            a.client_message_id
                                .clone()
                                .expect("duplicate ack names its key"),
                        );
                        let row = self.store.idem.get(&k).unwrap_or_else(|| {
                            panic!("I5: duplicate ack without a stored key {k:?}")
                        });
                        assert_eq!(row.seq, seq, "I5: duplicate ack names another seq");
                    } else {
                        assert!(
                            seq > st.last_ack_seq,
                            "I2: events of one connection out of frame order"
                        );
                        assert!(
                            st.live_next <= seq,
                            "I2: ack after the sender's copy of the broadcast"
                        );
                        assert_eq!(ev.actor(), st.user, "I6: event actor is not the sender");
                        if let (true, TimelineEvent::Message(_), Some(n)) =
                            (self.setup.announcement, &ev, n)
                        {
                            assert!(
                                self.frame_may_moderate[&n] || self.waited.contains(&n),
                                "a non-moderator posted in an announcement room"
                            );
                        }
                        // [FX-AGT] agent frames need the agent role; agents may not decide.
                        match ev.type_name() {
                            "agentRun" | "tool_call" | "tool_result" | "tool_error"
                            | "approval_request" => {
                                assert!(
                                    st.agent,
                                    "agent event from a connection without the agent role"
                                )
                            }
                            "approval_decision" => {
                                assert!(!st.agent, "an agent decided an approval")
                            }
                            _ => {}
                        }
                        if let TimelineEvent::Message(m) = &ev {
                            assert_eq!(m.sender_id, st.user, "I6: senderId");
                            assert_eq!(a.id, Some(seq), "message ack id is its seq");
                        }
                    }
                    let st = &mut self.conns[c];
                    if !a.duplicate {
                        st.last_ack_seq = seq;
                    }
                }
                if let Some(n) = n {
                    self.conns[c].last_ack_ref = n;
                }
            }
            ServerFrame::Error(e) => {
                if e.code == ErrorCode::ResyncRequired {
                    // `None`: a raw frame (mutated, or seeded from spec/examples) that the
                    // model did not predict, e.g. `{"type":"resume","lastSeq":41,"ref":"r7"}`.
                    let want = match e.reference.as_deref() {
                        Some(r) => r.strip_prefix(REF_PREFIX).and_then(|n| {
                            let n: Option<u64> = n.parse().ok();
                            if n.is_some_and(|n| self.waited.contains(&n)) {
                                return None;
                            }
                            Some(n.and_then(|n| self.resume_expect.get(&n).copied()))
                        }),
                        None => self.conns[c].open_resume.take().map(Some),
                    };
                    if let Some(want) = want {
                        assert_eq!(want, Some(false), "resync_required where a replay is due");
                    }
                }
                if e.code == ErrorCode::RateLimited {
                    self.conns[c].rate_limited += 1;
                    self.conns[c].last_retry_ms = e.retry_after_ms.unwrap_or(0);
                    assert!(
                        e.retry_after_ms.unwrap_or(0) > 0,
                        "rate_limited without retryAfterMs"
                    );
                }
                self.answer(c, e.reference.as_deref());
            }
            ServerFrame::TokenRefreshed(t) => {
                let n = self.answer(c, t.reference.as_deref());
                if let Some(n) = n {
                    assert!(
                        !self.auth_must_fail.contains(&n),
                        "I6/I7: auth zq{n} accepted a token it must refuse"
                    );
                }
                // The token that was accepted was ours; remember its expiry.
                if let Some(ms) = fluxy_protocol::common::parse_timestamp(&t.token_expires_at) {
                    self.conns[c].token_exp = ms / 1000;
                }
                self.conns[c].agent = t.roles.iter().any(|r| r == "agent");
                self.conns[c].roles.clone_from(&t.roles);
            }
            other => {
                if let Some(ev) = other.into_timeline() {
                    let st = &mut self.conns[c];
                    assert!(st.welcomed, "event before welcome");
                    assert_eq!(
                        ev.seq(),
                        st.live_next,
                        "I1: conn {c} got seq {} expecting {}",
                        ev.seq(),
                        st.live_next
                    );
                    st.live_next += 1;
                    let stored = self.store.body(ev.seq()).expect("I3");
                    assert_eq!(**stored, *raw, "I4");
                }
            }
        }
    }

    /// Build the JSON of a structured frame; the bool says whether it needs an answer.
    fn frame_json(&self, c: usize, f: &FrameOp, n: u64) -> (Value, bool) {
        let r = format!("{REF_PREFIX}{n}");
        let run = |k: u8| format!("run-{}", k % 3);
        let (mut v, needs) = match f {
            FrameOp::Message {
                content: ct,
                cmid: k,
                parent,
                spoof,
            } => {
                let mut v = json!({"type":"message","content":content(*ct)});
                if let Some(k) = k {
                    v["clientMessageId"] = cmid(*k).into();
                }
                if let Some(p) = parent {
                    v["parentId"] = self.msg_id(*p).into();
                }
                if ct % 5 == 4 {
                    v["attachments"] =
                        json!([{"url":"https://files.example.com/a.png","name":"a.png"}]);
                }
                if *spoof {
                    v["userId"] = "mallory".into();
                    v["senderId"] = "mallory".into();
                }
                (v, true)
            }
            FrameOp::Edit {
                msg,
                content: ct,
                expected,
                cmid: k,
            } => {
                let mut v =
                    json!({"type":"edit","messageId":self.msg_id(*msg),"content":content(*ct)});
                if let Some(e) = expected {
                    v["expectedVersion"] = (e % 4).into();
                }
                if let Some(k) = k {
                    v["clientMessageId"] = cmid(*k).into();
                }
                (v, true)
            }
            FrameOp::Delete { msg, cmid: k } => {
                let mut v = json!({"type":"delete","messageId":self.msg_id(*msg)});
                if let Some(k) = k {
                    v["clientMessageId"] = cmid(*k).into();
                }
                (v, true)
            }
            FrameOp::Reaction { msg, emoji, add } => {
                let e = ["👍", "🎉", "x"][*emoji as usize % 3];
                let op = if *add { "add" } else { "remove" };
                (
                    json!({"type":"reaction","messageId":self.msg_id(*msg),"emoji":e,"op":op}),
                    true,
                )
            }
            FrameOp::Read { msg } => (json!({"type":"read","messageId":self.msg_id(*msg)}), true),
            FrameOp::Typing { is_typing, intent } => {
                let mut v = json!({"type":"typing","isTyping":is_typing});
                if intent % 3 != 0 {
                    v["intent"] = ["idle", "composing", "thinking"][*intent as usize % 3].into();
                }
                (v, false)
            }
            FrameOp::Resume { last } => {
                // Mostly anywhere around the committed range; from 240 on, exactly where the
                // connection is (the usual resume, e.g. after the object was evicted).
                let l = if *last >= 240 {
                    self.conns[c].live_next.saturating_sub(1)
                } else {
                    u64::from(*last) % (self.store.events.len() as u64 + 3)
                };
                (json!({"type":"resume","lastSeq": l}), true)
            }
            FrameOp::Stream {
                op,
                msg,
                content: ct,
                cmid: k,
            } => {
                let op = ["start", "delta", "end", "abort"][*op as usize % 4];
                let c = if op == "start" || op == "abort" {
                    String::new()
                } else {
                    content(*ct)
                };
                let mut v = json!({"type":"stream","op":op,"content":c});
                if let Some(m) = msg {
                    v["messageId"] = self.msg_id(*m).into();
                }
                if let Some(k) = k {
                    v["clientMessageId"] = cmid(*k).into();
                }
                (v, true)
            }
            FrameOp::AgentRun { run: k, status } => {
                let s: &str = ["started", "completed", "failed", "cancelled"][*status as usize % 4];
                let mut v = json!({"type":"agentRun","runId":run(*k),"status":s});
                if s == "failed" {
                    v["error"] = "boom".into();
                }
                (v, true)
            }
            FrameOp::ToolCall { run: k, call } => (
                json!({"type":"tool_call","runId":run(*k),"toolCallId":format!("call-{}", call % 3),
                       "name":"search","arguments":"{}"}),
                true,
            ),
            FrameOp::ToolResult {
                run: k,
                call,
                error,
            } => {
                let v = if *error {
                    json!({"type":"tool_error","runId":run(*k),"toolCallId":format!("call-{}", call % 3),"error":"e"})
                } else {
                    json!({"type":"tool_result","runId":run(*k),"toolCallId":format!("call-{}", call % 3),"result":"{}"})
                };
                (v, true)
            }
            FrameOp::ApprovalRequest { run: k, appr } => (
                json!({"type":"approval_request","runId":run(*k),"approvalId":format!("ap-{}", appr % 3),
                       "prompt":"ok?"}),
                true,
            ),
            FrameOp::ApprovalDecision {
                run: k,
                appr,
                approve,
            } => (
                json!({"type":"approval_decision","runId":run(*k),"approvalId":format!("ap-{}", appr % 3),
                       "decision": if *approve {"approved"} else {"rejected"}}),
                true,
            ),
            FrameOp::AgentTyping { is_typing } => {
                (json!({"type":"agentTyping","isTyping":is_typing}), false)
            }
            FrameOp::Ping { ts } => (json!({"type":"ping","ts":ts % (1 << 53)}), false),
            FrameOp::Auth {
                user,
                other_tenant,
                defect,
                exp_s,
                agent,
            } => {
                let (u, roles, _) = USERS[*user as usize % USERS.len()];
                let mut roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
                if *agent {
                    roles.push("agent".into());
                }
                let claims = Claims {
                    sub: u.into(),
                    tid: if *other_tenant {
                        "t2".into()
                    } else {
                        "t1".into()
                    },
                    roles,
                    exp: (self.now / 1000).saturating_add_signed(i64::from(*exp_s)),
                    iat: None,
                    nbf: (defect % 8 == 3).then_some(self.now / 1000 + 60),
                };
                let token = match defect % 8 {
                    1 => sign(&claims, b"not-the-secret"),
                    2 => sign_raw(
                        &json!({"alg":"none","typ":"JWT"}),
                        &serde_json::to_value(&claims).unwrap_or_default(),
                        SECRET,
                    ),
                    _ => sign(&claims, SECRET),
                };
                (json!({"type":"auth","token":token}), true)
            }
        };
        if !matches!(
            f,
            FrameOp::Ping { .. } | FrameOp::Typing { .. } | FrameOp::AgentTyping { .. }
        ) {
            v["ref"] = r.into();
        }
        (v, needs)
    }
}

/// Move a room's effects into `out` in a form comparable across engine instances: batch ids
/// (which a new instance numbers from 1) are left out and collected in `persisted`; fetches
/// (which only the engine that does not hold the state emits) are answered at once from
/// `store` and left out.
fn drain_normalised(
    room: &mut Room,
    store: &Store,
    now: u64,
    out: &mut Vec<String>,
    persisted: &mut Vec<u64>,
) {
    loop {
        let Some(e) = room.poll_effect() else { return };
        out.push(match e {
            Effect::Persist { batch, statements } => {
                persisted.push(batch);
                format!("persist {statements:?}")
            }
            Effect::Fetch { fetch, lookup, .. } => {
                let found = store.lookup(&lookup, now);
                room.handle(
                    now,
                    Input::Fetched {
                        fetch,
                        result: Ok(found),
                    },
                );
                continue;
            }
            other => format!("{other:?}"),
        });
    }
}

/// Faults named in `FLUXY_FUZZ_FAULTS` (comma-separated), to check that the checker catches
/// them; none by default.
pub fn faults_from_env() -> Faults {
    use std::sync::OnceLock;
    static F: OnceLock<Faults> = OnceLock::new();
    *F.get_or_init(|| match std::env::var("FLUXY_FUZZ_FAULTS") {
        Ok(s) if !s.is_empty() => {
            let names: Vec<&str> = s.split(',').collect();
            Faults::from_names(&names).expect("known fault names")
        }
        _ => Faults::NONE,
    })
}

/// `FLUXY_FUZZ_TRACE=1` prints every step (to turn a crash into a regression test).
pub fn trace() -> bool {
    use std::sync::OnceLock;
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FLUXY_FUZZ_TRACE").is_some())
}
