//! The room state machine. Inputs in, effects out; no I/O, no clock, no threads.
//!
//! Split by concern, like quinn-proto's `Connection`: this module holds the public types, the
//! [`Room`] state and the input dispatch; [`seq`] sequencing, group commit and idempotency;
//! [`conn`] connections, presence, snapshots and resume; [`msg`] messages, edits, deletes,
//! reactions, reads and streams; [`agents`] agent runs, tool calls and approvals.

mod agents;
mod conn;
mod fetch;
mod membership;
mod msg;
mod seq;

pub use fetch::{FetchFailed, Found, Lookup, RunRow};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use fluxy_protocol::client::{
    AgentRunFrame, ApprovalDecisionFrame, ApprovalRequestFrame, AuthFrame, DeleteFrame, EditFrame,
    ReactionFrame, ReadFrame, SendMessageFrame, StreamFrame, ToolCallFrame, ToolErrorFrame,
    ToolResultFrame, TypingFrame,
};
use fluxy_protocol::common::{
    format_timestamp, Limits, MemberRole, ReactionOp, RoomType, RunStatus, StreamOp, TypingIntent,
    MAX_CONTENT_CHARS, MAX_FRAME_BYTES, MAX_PAGE_LIMIT, PROTOCOL_VERSION,
};
use fluxy_protocol::events::{
    AgentRunEvent, ApprovalDecisionEvent, ApprovalRequestEvent, DeleteEvent, EditEvent,
    MessageEvent, ReactionEvent, ReadEvent, TimelineEvent, ToolCallEvent, ToolErrorEvent,
    ToolResultEvent,
};
use fluxy_protocol::server::{
    AckFrame, AgentTypingEvent, ErrorFrame, HistoryFrame, MemberPresenceEvent, PongFrame,
    PresenceFrame, PresenceMember, ReplayFrame, SubscriptionSucceededFrame, TokenRefreshedFrame,
    TypingEvent, WelcomeFrame,
};
use fluxy_protocol::{ClientFrame, CloseCode, DecodeError, ErrorCode, ServerFrame};

use crate::auth::{verify_token, LEEWAY_SECONDS};
use crate::faults::Faults;
use crate::sql::{self, Stmt};

/// A connection id chosen by the shell, unique within the room.
pub type ConnId = u64;

/// Static configuration of one room.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Tenant id.
    pub tenant: Arc<str>,
    /// Room id.
    pub room_id: Arc<str>,
    /// The tenant's JWT secret (for in-band `auth`).
    pub jwt_secret: Vec<u8>,
    /// Idle timeout before close 4000, in ms.
    pub idle_timeout_ms: u64,
    /// Token-bucket capacity per connection.
    pub rate_burst: u32,
    /// Token-bucket refill per second.
    pub rate_per_second: u32,
    /// How many recent events `resume` can replay.
    pub resume_window: u32,
    /// Enabled test faults (none in a normal server).
    pub faults: Faults,
}

/// How long idempotency keys are honoured: exactly 24 hours (`[FX-ACK-5]` requires at least
/// 24 h). Older keys are forgotten by the engine and may be pruned from storage.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

/// At most this many expired idempotency keys are dropped from memory per input (bounded work).
const IDEM_PRUNE_BATCH: usize = 256;

/// Abuse policy of a room: when a misbehaving connection is closed.
///
/// Set with [`Room::set_policy`]; [`RoomPolicy::default`] applies otherwise, so every shell gets
/// the same behaviour without new [`RoomConfig`] fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomPolicy {
    /// Close with 4010 `protocol_violation` a connection that sent this many invalid frames
    /// in a row (undecodable text frames and binary frames; any valid frame resets the count)
    /// `[FX-FRM-11]`. `None` never closes. Default 100 (the spec's minimum).
    pub max_invalid_streak: Option<u32>,
    /// Close with 4008 `rate_limited` a connection that had this many frames refused by the
    /// rate limit within [`RoomPolicy::rate_abuse_window_ms`] `[FX-LIM-6]`. `None` never
    /// closes. Default 200.
    pub max_rate_rejects: Option<u32>,
    /// Window for counting refused frames, in ms; 0 means the bucket period
    /// (`rate_burst / rate_per_second` seconds, at least one second). Default 0.
    pub rate_abuse_window_ms: u64,
}

impl Default for RoomPolicy {
    fn default() -> Self {
        RoomPolicy {
            max_invalid_streak: Some(100),
            max_rate_rejects: Some(200),
            rate_abuse_window_ms: 0,
        }
    }
}

/// Verified identity of a connection or HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Token `sub`.
    pub user_id: String,
    /// Token roles.
    pub roles: Vec<String>,
    /// Role in this room, when a member.
    pub member_role: Option<MemberRole>,
    /// Token `exp`, seconds since the epoch.
    pub token_exp: u64,
}

impl Identity {
    fn has_role(&self, r: &str) -> bool {
        self.roles.iter().any(|x| x == r)
    }
    fn is_agent(&self) -> bool {
        self.has_role("agent")
    }
    fn may_moderate(&self) -> bool {
        self.has_role("owner")
            || self.has_role("admin")
            || self.has_role("moderator")
            || matches!(
                self.member_role,
                Some(MemberRole::Owner | MemberRole::Admin | MemberRole::Moderator)
            )
    }
}

/// Connect-time options from the handshake query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Send the `history` snapshot (`replay=off` disables it).
    pub replay: bool,
    /// Snapshot size (clamped to 500).
    pub replay_limit: u32,
    /// `?lastSeq=`: send a `replay` from there instead of the snapshot.
    pub last_seq: Option<u64>,
    /// `replay` = `connect`, `true` or `1` (FluxyChat's SDK): the `history` frame also carries
    /// FluxyChat's `messages` and `reactions` `[FX-CMP-1]` `[FX-CMP-2]`.
    pub compat: bool,
    /// The membership version read together with `Identity::member_role` at the handshake
    /// (`room_member_versions`; 0 when the user's membership was never written). A kick or
    /// role change the room already applied with a newer version wins over the role read
    /// here: the handshake raced with it.
    pub membership_version: u64,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            replay: true,
            replay_limit: 50,
            last_seq: None,
            compat: false,
            membership_version: 0,
        }
    }
}

/// Compact stored state of one message, for loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// Message id.
    pub id: u64,
    /// Author.
    pub user_id: String,
    /// Current version.
    pub version: u32,
    /// Soft-deleted.
    pub deleted: bool,
    /// Still streaming.
    pub streaming: bool,
}

/// A stored idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    /// User.
    pub user_id: String,
    /// The key.
    pub client_message_id: String,
    /// Seq of the original event.
    pub seq: u64,
    /// Message id of the original ack.
    pub message_id: Option<u64>,
    /// Commit time, epoch ms.
    pub created_ms: u64,
}

/// What the engine needs from storage to start (see `sql::LOAD_*`): a bounded read.
///
/// Required: the room type, `current_seq`, the newest events (`recent`) and every *open* agent
/// run (`runs`, [`crate::sql::LOAD_OPEN_RUNS`]: see [`RunRow`]). Everything else is optional
/// preloaded cache: rows given in `messages`, `reactions`, `reads` and `idempotency` must be
/// current, but any subset will do (the shells load the streaming messages,
/// [`crate::sql::LOAD_OPEN_MESSAGES`]); whatever a request needs and the engine does not hold
/// is looked up on demand with [`Effect::Fetch`].
#[derive(Debug, Clone, Default)]
pub struct LoadedRoom {
    /// Room type.
    pub room_type: RoomType,
    /// Highest committed seq.
    pub current_seq: u64,
    /// Bodies of the newest events, ascending, ending at `current_seq`.
    pub recent: Vec<String>,
    /// Known message rows (any subset; the shells load the streaming ones).
    pub messages: Vec<MessageRow>,
    /// Known reactions that exist: (message id, user, emoji) (any subset; shells load none).
    pub reactions: Vec<(u64, String, String)>,
    /// Known read positions: (user, message id) (any subset; shells load none).
    pub reads: Vec<(String, u64)>,
    /// Known idempotency keys of the last 24 h (any subset; shells load none).
    pub idempotency: Vec<IdempotencyRow>,
    /// Every open agent run with its tool calls and approvals (required: the engine answers
    /// requests on runs it does not hold as if they were closed or absent).
    pub runs: Vec<RunRow>,
    /// Bodies of agent events to replay into run state, ascending (optional; a shell that
    /// passes every agent event of the room gets the behaviour of the full load).
    pub agent_events: Vec<String>,
}

/// An input to the engine.
#[derive(Debug, Clone)]
pub enum Input {
    /// A connection passed authentication and membership checks.
    Open {
        /// Connection id.
        conn: ConnId,
        /// Verified identity.
        identity: Identity,
        /// Handshake options.
        options: ConnectOptions,
    },
    /// Re-register a connection that was opened before the engine was (re)built, e.g. a
    /// hibernated WebSocket after the shell's eviction: the connection counts for presence and
    /// gets timeouts and broadcasts again, but nothing is emitted (its welcome, snapshot and
    /// presence were sent before; the others already know it is online, so no
    /// `member_joined`). Produces no effect at all. Ignored for a connection id already open.
    Restore {
        /// Connection id (the one the connection was opened with).
        conn: ConnId,
        /// Its identity as last known (after in-band `auth` and role changes; see
        /// [`Effect::IdentityChanged`]).
        identity: Identity,
        /// Last time a frame was received from it (epoch ms): the idle clock resumes from here.
        last_rx_ms: u64,
    },
    /// A text frame.
    Text {
        /// Connection id.
        conn: ConnId,
        /// Raw text.
        text: String,
    },
    /// A binary frame (always rejected).
    Binary {
        /// Connection id.
        conn: ConnId,
    },
    /// The transport closed.
    Closed {
        /// Connection id.
        conn: ConnId,
    },
    /// A `Persist` batch is durable.
    Committed {
        /// Batch id.
        batch: u64,
    },
    /// A `Persist` batch failed.
    CommitFailed {
        /// Batch id.
        batch: u64,
    },
    /// The answer to an [`Effect::Fetch`]: the row found (or not), or [`FetchFailed`] when
    /// storage failed (the requests waiting for it get an `internal_error`). Results may come in any
    /// order; each must reflect storage as of some time after the `Fetch` was emitted.
    Fetched {
        /// The fetch id of the [`Effect::Fetch`].
        fetch: u64,
        /// What storage holds.
        result: Result<Found, FetchFailed>,
    },
    /// `POST /messages`.
    Post {
        /// Shell's request id, echoed in [`Effect::PostDone`].
        request: u64,
        /// Verified identity.
        identity: Identity,
        /// The message.
        frame: SendMessageFrame,
    },
    /// The user lost membership: close their connections with 4003.
    Kick {
        /// User id.
        user_id: String,
        /// The user's membership version after the removal.
        version: u64,
    },
    /// The user's room role changed (`POST /rooms/{id}/members` on an existing member): their
    /// open connections get the new privileges at once. Produces one
    /// [`Effect::IdentityChanged`] per open connection of the user, nothing else.
    SetRole {
        /// User id.
        user_id: String,
        /// The new room role (`None`: no longer a member, without closing; use
        /// [`Input::Kick`] to close).
        member_role: Option<MemberRole>,
        /// The user's membership version after the change.
        version: u64,
    },
}

/// Result of a `POST /messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostOutcome {
    /// The ack (original one for duplicates).
    pub ack: AckFrame,
    /// The event JSON, when still in memory (the shell reads it by seq otherwise).
    pub event: Option<Arc<str>>,
}

/// An effect for the shell to carry out, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send a frame to one connection.
    Send {
        /// Connection id.
        conn: ConnId,
        /// Serialised frame.
        frame: Arc<str>,
    },
    /// Send a frame to every connection of the room (and SSE listeners), serialised once.
    Broadcast {
        /// Serialised frame.
        frame: Arc<str>,
        /// A connection that must not receive it.
        except: Option<ConnId>,
        /// The timeline seq, for timeline events.
        seq: Option<u64>,
        /// The frame's `type`.
        kind: &'static str,
    },
    /// Close a connection with a code (the engine already forgot it).
    Close {
        /// Connection id.
        conn: ConnId,
        /// Close code.
        code: CloseCode,
    },
    /// Write these statements in one transaction, then send `Committed` or `CommitFailed`.
    Persist {
        /// Batch id.
        batch: u64,
        /// Statements.
        statements: Vec<Stmt>,
    },
    /// Read one row from storage and answer with [`Input::Fetched`] (same `fetch` id). The
    /// requests that need it wait (see the crate docs for the ordering guarantees). Reads may
    /// run concurrently with writes and with each other.
    Fetch {
        /// Fetch id, echoed in [`Input::Fetched`].
        fetch: u64,
        /// What is looked up; [`Lookup::found`] turns the first result row into a [`Found`].
        lookup: Lookup,
        /// The query to run (at most one row).
        statement: Stmt,
    },
    /// Answer to an [`Input::Post`].
    PostDone {
        /// Request id.
        request: u64,
        /// Outcome.
        result: Result<PostOutcome, ErrorFrame>,
    },
    /// Storage failed: the room must be rebuilt from storage (all connections were closed).
    Reset,
    /// A connection's identity changed: after a successful in-band `auth` (new token expiry
    /// and roles; emitted right after its `token_refreshed` frame) and for [`Input::SetRole`]
    /// (new room role). Shells that keep identities outside the engine (e.g. to re-register
    /// connections with [`Input::Restore`]) update their copy; others may ignore it.
    IdentityChanged {
        /// Connection id.
        conn: ConnId,
        /// The connection's identity from now on.
        identity: Identity,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Requester {
    Conn(ConnId),
    Post(u64),
}

struct Pending {
    seq: u64,
    kind: &'static str,
    event: TimelineEvent,
    body: Arc<str>,
    requester: Option<Requester>,
    ack: Option<AckFrame>,
    /// Acks released after this event commits (no-op requests, duplicates).
    after: Vec<(Requester, AckFrame)>,
    statements: Vec<Stmt>,
}

struct Msg {
    author: String,
    version: u32,
    deleted: bool,
    streaming: bool,
}

struct IdemEntry {
    seq: u64,
    id: Option<u64>,
    created_ms: u64,
}

struct Conn {
    identity: Identity,
    last_rx_ms: u64,
    tokens: f64,
    last_refill_ms: u64,
    /// Invalid frames in a row (FX-FRM-11).
    invalid_streak: u32,
    /// Frames refused by the rate limit since `reject_window_start_ms` (FX-LIM-6).
    rate_rejects: u32,
    reject_window_start_ms: u64,
}

struct Run {
    terminal: bool,
}

struct Recent {
    seq: u64,
    event: TimelineEvent,
    body: Arc<str>,
}

#[derive(Default)]
struct FaultState {
    skip_seq_fired: bool,
    ack_before_store_fired: bool,
    drop_fired: bool,
    reorder_fired: bool,
    held: Option<Effect>,
}

/// Number of events kept in memory for the connect snapshot, whatever the resume window.
const MIN_RING: usize = MAX_PAGE_LIMIT as usize;

/// The room engine: one per (tenant, room).
pub struct Room {
    cfg: RoomConfig,
    room_type: RoomType,
    next_seq: u64,
    committed_seq: u64,
    ring: VecDeque<Recent>,
    ring_cap: usize,
    queue: Vec<Pending>,
    in_flight: Option<(u64, Vec<Pending>)>,
    next_batch: u64,
    /// Highest seq in storage when the room was built: ids and keys created later are always
    /// in memory, older ones may need a [`Effect::Fetch`].
    wake_seq: u64,
    /// Known messages (loaded, fetched or created since wake-up).
    messages: HashMap<u64, Msg>,
    /// Message ids at or below `wake_seq` known not to be messages.
    msg_absent: HashSet<u64>,
    /// Known reactions: present (true) or absent (false).
    reactions: HashMap<(u64, String, String), bool>,
    /// Known read positions (`None`: the user has none).
    reads: HashMap<String, Option<u64>>,
    idem: HashMap<(String, String), IdemEntry>,
    /// Idempotency keys known to be unused (or expired).
    idem_absent: HashSet<(String, String)>,
    /// Runs at or below `wake_seq` known not to exist.
    runs_absent: HashSet<(String, String)>,
    /// Fetches in flight: id -> lookup, and lookup -> id.
    fetches: BTreeMap<u64, Lookup>,
    fetching: HashMap<Lookup, u64>,
    next_fetch: u64,
    /// Requests waiting for a fetch, per requester, in arrival order (later frames of a
    /// connection queue behind a waiting one).
    parked: BTreeMap<Requester, VecDeque<fetch::Parked>>,
    /// Idempotency keys in commit-time order, for pruning: (created ms, user, key, seq).
    idem_order: VecDeque<(u64, String, String, u64)>,
    policy: RoomPolicy,
    runs: HashMap<(String, String), Run>,
    tool_calls: HashMap<(String, String, String), bool>,
    approvals: HashMap<(String, String, String), bool>,
    conns: BTreeMap<ConnId, Conn>,
    users: BTreeMap<String, u32>,
    ghosts: BTreeSet<String>,
    effects: VecDeque<Effect>,
    fault_state: FaultState,
    failed: bool,
    /// `createdAt` (epoch ms) of the newest sequenced event: the next one gets at least this
    /// plus one `[FX-ORD-9]`. Learned from the stored events on load.
    last_created_ms: u64,
    /// Latest membership change applied per user, with its version (see `membership`).
    memberships: HashMap<String, (u64, membership::Membership)>,
}

fn text_of(frame: &ServerFrame) -> Arc<str> {
    Arc::from(serde_json::to_string(frame).unwrap_or_default())
}

fn err(code: ErrorCode, message: impl Into<String>, reference: Option<&str>) -> ErrorFrame {
    let mut e = ErrorFrame::new(code, message);
    e.reference = reference.map(str::to_owned);
    e
}

fn ack(reference: Option<&str>, cmid: Option<&str>) -> AckFrame {
    AckFrame {
        reference: reference.map(str::to_owned),
        client_message_id: cmid.map(str::to_owned),
        id: None,
        seq: None,
        created_at: None,
        duplicate: false,
    }
}

type Outcome = Result<Option<Accepted>, ErrorFrame>;

/// An event accepted for sequencing by a handler.
struct Accepted {
    /// `None` for a request that changes nothing (ack without seq).
    event: Option<TimelineEvent>,
    ack: AckFrame,
    extra: Vec<Stmt>,
    idem: Option<(String, String)>,
}

impl Room {
    /// Build a room from its configuration and stored state.
    pub fn new(cfg: RoomConfig, loaded: LoadedRoom) -> Room {
        let ring_cap = (cfg.resume_window as usize).max(MIN_RING);
        let mut room = Room {
            room_type: loaded.room_type,
            next_seq: loaded.current_seq + 1,
            committed_seq: loaded.current_seq,
            ring: VecDeque::with_capacity(ring_cap + 1),
            ring_cap,
            queue: Vec::new(),
            in_flight: None,
            next_batch: 1,
            wake_seq: loaded.current_seq,
            messages: HashMap::with_capacity(loaded.messages.len()),
            msg_absent: HashSet::new(),
            reactions: HashMap::new(),
            reads: HashMap::new(),
            idem: HashMap::new(),
            idem_absent: HashSet::new(),
            runs_absent: HashSet::new(),
            fetches: BTreeMap::new(),
            fetching: HashMap::new(),
            next_fetch: 1,
            parked: BTreeMap::new(),
            idem_order: VecDeque::new(),
            policy: RoomPolicy::default(),
            runs: HashMap::new(),
            tool_calls: HashMap::new(),
            approvals: HashMap::new(),
            conns: BTreeMap::new(),
            users: BTreeMap::new(),
            ghosts: BTreeSet::new(),
            effects: VecDeque::new(),
            fault_state: FaultState::default(),
            failed: false,
            last_created_ms: 0,
            memberships: HashMap::new(),
            cfg,
        };
        for body in loaded.recent {
            if let Ok(event) = serde_json::from_str::<TimelineEvent>(&body) {
                room.push_ring(event.seq(), event, Arc::from(body));
            }
        }
        for m in loaded.messages {
            room.messages.insert(
                m.id,
                Msg {
                    author: m.user_id,
                    version: m.version,
                    deleted: m.deleted,
                    streaming: m.streaming,
                },
            );
        }
        room.last_created_ms = room
            .ring
            .iter()
            .map(|r| created_ms_of(&r.event))
            .max()
            .unwrap_or(0);
        room.reactions
            .extend(loaded.reactions.into_iter().map(|k| (k, true)));
        room.reads
            .extend(loaded.reads.into_iter().map(|(u, m)| (u, Some(m))));
        let mut idem_rows = loaded.idempotency;
        idem_rows.sort_by_key(|r| r.created_ms);
        for r in idem_rows {
            room.idem_order.push_back((
                r.created_ms,
                r.user_id.clone(),
                r.client_message_id.clone(),
                r.seq,
            ));
            room.idem.insert(
                (r.user_id, r.client_message_id),
                IdemEntry {
                    seq: r.seq,
                    id: r.message_id,
                    created_ms: r.created_ms,
                },
            );
        }
        for r in loaded.runs {
            room.load_run(r);
        }
        for body in loaded.agent_events {
            if let Ok(e) = serde_json::from_str::<TimelineEvent>(&body) {
                room.apply_agent_event(&e);
            }
        }
        room
    }

    /// Replace the abuse policy (the default is [`RoomPolicy::default`]).
    pub fn set_policy(&mut self, policy: RoomPolicy) {
        self.policy = policy;
    }

    /// The abuse policy in force.
    pub fn policy(&self) -> RoomPolicy {
        self.policy
    }

    /// Number of idempotency keys held in memory (after pruning).
    pub fn idempotency_key_count(&self) -> usize {
        self.idem.len()
    }

    /// The tenant and room this engine serves.
    pub fn config(&self) -> &RoomConfig {
        &self.cfg
    }

    /// Highest committed seq.
    pub fn committed_seq(&self) -> u64 {
        self.committed_seq
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether storage failed and the room awaits a rebuild.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Next effect to carry out, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Earliest time (epoch ms) at which [`Room::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let f = &self.cfg.faults;
        self.conns
            .values()
            .flat_map(|c| {
                let idle = (!f.heartbeat_ignored).then(|| c.last_rx_ms + self.cfg.idle_timeout_ms);
                let exp = (!f.token_expiry_ignored)
                    .then(|| (c.identity.token_exp + LEEWAY_SECONDS).saturating_mul(1000));
                [idle, exp]
            })
            .flatten()
            .min()
    }

    /// Close idle connections (4000) and connections whose token expired (4005).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let f = self.cfg.faults;
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        for (id, c) in &self.conns {
            if !f.token_expiry_ignored
                && now_ms >= (c.identity.token_exp + LEEWAY_SECONDS).saturating_mul(1000)
            {
                expired.push(*id);
            } else if !f.heartbeat_ignored && now_ms >= c.last_rx_ms + self.cfg.idle_timeout_ms {
                idle.push(*id);
            }
        }
        for id in expired {
            self.send_error(
                id,
                err(
                    ErrorCode::TokenExpired,
                    "the token expired; reconnect with a new one",
                    None,
                ),
            );
            self.close(id, CloseCode::TokenExpired);
        }
        for id in idle {
            self.close(id, CloseCode::HeartbeatTimeout);
        }
        self.flush();
    }

    /// Feed one input.
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        if self.failed {
            if let Input::Post { request, .. } = input {
                self.effects.push_back(Effect::PostDone {
                    request,
                    result: Err(err(ErrorCode::Unavailable, "room is reloading", None)),
                });
            }
            return;
        }
        self.prune_idempotency(now_ms);
        match input {
            Input::Open {
                conn,
                identity,
                options,
            } => self.open_versioned(now_ms, conn, identity, options),
            Input::Restore {
                conn,
                identity,
                last_rx_ms,
            } => {
                // Silent by design: no frame, no presence, no commit started.
                self.restore(now_ms, conn, identity, last_rx_ms);
                return;
            }
            Input::Text { conn, text } => self.text(now_ms, conn, &text),
            Input::Binary { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.last_rx_ms = now_ms;
                    if self.cfg.faults.binary_closes {
                        self.close(conn, CloseCode::ProtocolViolation);
                    } else {
                        self.send_error(
                            conn,
                            err(
                                ErrorCode::BinaryNotSupported,
                                "binary frames are not part of protocol v1",
                                None,
                            ),
                        );
                        self.count_invalid(conn);
                    }
                }
            }
            Input::Closed { conn } => self.remove_conn(conn),
            Input::Committed { batch } => self.committed(batch),
            Input::CommitFailed { batch } => self.commit_failed(batch),
            Input::Fetched { fetch, result } => self.fetched(now_ms, fetch, result),
            Input::Post {
                request,
                identity,
                frame,
            } => self.submit(
                now_ms,
                Requester::Post(request),
                fetch::Parked::Post { identity, frame },
            ),
            Input::Kick { user_id, version } => {
                if !self.note_membership(&user_id, version, membership::Membership::Removed) {
                    self.flush();
                    return;
                }
                let ids: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.identity.user_id == user_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.send_error(id, err(ErrorCode::NotMember, "membership removed", None));
                    self.close(id, CloseCode::Forbidden);
                }
            }
            Input::SetRole {
                user_id,
                member_role,
                version,
            } => {
                let m = membership::Membership::Role(member_role);
                if !self.note_membership(&user_id, version, m) {
                    self.flush();
                    return;
                }
                for (id, c) in self.conns.iter_mut() {
                    if c.identity.user_id == user_id {
                        c.identity.member_role = member_role;
                        self.effects.push_back(Effect::IdentityChanged {
                            conn: *id,
                            identity: c.identity.clone(),
                        });
                    }
                }
            }
        }
        self.flush();
    }

    fn text(&mut self, now_ms: u64, conn: ConnId, text: &str) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_rx_ms = now_ms;
        let decoded = ClientFrame::decode(text);
        if decoded.is_ok() {
            c.invalid_streak = 0;
        }
        if let Ok(ClientFrame::Ping(p)) = &decoded {
            let pong = ServerFrame::Pong(PongFrame {
                ts: now_ms,
                echo: p.ts,
            });
            self.send(conn, text_of(&pong));
            return;
        }
        if let Err(wait) = self.take_token(conn, now_ms) {
            let mut e = err(
                ErrorCode::RateLimited,
                "rate limit exceeded; retry later",
                raw_ref(text).as_deref(),
            );
            e.retry_after_ms = Some(wait);
            self.send_error(conn, e);
            self.count_rate_reject(conn, now_ms);
            return;
        }
        let frame = match decoded {
            Ok(f) => f,
            Err(e) => {
                if matches!(e, DecodeError::UnknownType(_)) && self.cfg.faults.unknown_type_closes {
                    self.close(conn, CloseCode::ProtocolViolation);
                    return;
                }
                let mut ef = ErrorFrame::from_decode(&e);
                if !matches!(e, DecodeError::TooLarge { .. }) {
                    ef.reference = raw_ref(text);
                }
                self.send_error(conn, ef);
                self.count_invalid(conn);
                return;
            }
        };
        let spoofed = match &frame {
            ClientFrame::Message(_) if self.cfg.faults.trust_frame_user_id => {
                raw_field(text, "userId")
            }
            _ => None,
        };
        self.submit(
            now_ms,
            Requester::Conn(conn),
            fetch::Parked::Frame { frame, spoofed },
        );
    }

    /// Handle a decoded, rate-limited frame whose lookups are all in memory (see
    /// [`Room::submit`]).
    fn run_frame(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        frame: ClientFrame,
        spoofed: Option<String>,
    ) {
        let Some(identity) = self.conns.get(&conn).map(|c| c.identity.clone()) else {
            return;
        };
        let who = Requester::Conn(conn);
        let reference = frame.reference().map(str::to_owned);
        if self.duplicate(
            now_ms,
            who,
            &identity.user_id,
            frame_cmid(&frame),
            reference.as_deref(),
        ) {
            return;
        }
        // Time stamp of an event this frame may create: never at or before the previous one
        // `[FX-ORD-9]`.
        let t = self.event_ms(now_ms);
        let r = match frame {
            ClientFrame::Ping(_) => Ok(None),
            ClientFrame::Message(f) => self.on_message(t, &identity, spoofed, f),
            ClientFrame::Edit(f) => self.on_edit(t, &identity, f),
            ClientFrame::Delete(f) => self.on_delete(t, &identity, f),
            ClientFrame::Reaction(f) => self.on_reaction(t, &identity, f),
            ClientFrame::Read(f) => self.on_read(t, &identity, f),
            ClientFrame::Typing(f) => {
                self.on_typing(conn, &identity, f);
                Ok(None)
            }
            ClientFrame::Resume(f) => {
                match self.replay(f.last_seq, f.reference.as_deref()) {
                    Ok(r) => self.send(conn, text_of(&ServerFrame::Replay(r))),
                    Err(e) => self.send_error(conn, e),
                }
                Ok(None)
            }
            ClientFrame::Stream(f) => self.on_stream(t, &identity, f),
            ClientFrame::AgentRun(f) => self.on_agent_run(t, &identity, f),
            ClientFrame::ToolCall(f) => self.on_tool_call(t, &identity, f),
            ClientFrame::ToolResult(f) => self.on_tool_result(t, &identity, f),
            ClientFrame::ToolError(f) => self.on_tool_error(t, &identity, f),
            ClientFrame::ApprovalRequest(f) => self.on_approval_request(t, &identity, f),
            ClientFrame::ApprovalDecision(f) => self.on_approval_decision(t, &identity, f),
            ClientFrame::AgentTyping(f) => {
                if !identity.is_agent() && !self.cfg.faults.non_agent_tool_call {
                    Err(err(
                        ErrorCode::Forbidden,
                        "agentTyping needs the agent role",
                        None,
                    ))
                } else {
                    let t = ServerFrame::AgentTyping(AgentTypingEvent {
                        room_id: self.cfg.room_id.to_string(),
                        agent_id: identity.user_id.clone(),
                        is_typing: f.is_typing,
                    });
                    self.broadcast(text_of(&t), Some(conn), None, "agentTyping");
                    Ok(None)
                }
            }
            ClientFrame::Auth(f) => {
                self.on_auth(now_ms, conn, &identity, f);
                Ok(None)
            }
        };
        let r = r.map_err(|mut e| {
            if e.reference.is_none() {
                e.reference = reference;
            }
            e
        });
        self.finish(who, r);
    }
}

impl Accepted {
    fn event(ack: AckFrame, event: TimelineEvent) -> Accepted {
        Accepted {
            event: Some(event),
            ack,
            extra: Vec::new(),
            idem: None,
        }
    }

    /// A request that changes nothing.
    fn noop(ack: AckFrame) -> Accepted {
        Accepted {
            event: None,
            ack,
            extra: Vec::new(),
            idem: None,
        }
    }
}

fn field_err(code: ErrorCode, message: &str, field: &str) -> ErrorFrame {
    let mut e = ErrorFrame::new(code, message);
    e.field = Some(field.to_owned());
    e
}

fn attachments_json(a: &[fluxy_protocol::common::Attachment]) -> Option<String> {
    if a.is_empty() {
        None
    } else {
        serde_json::to_string(a).ok()
    }
}

fn raw_ref(text: &str) -> Option<String> {
    raw_field(text, "ref").filter(|r| !r.is_empty() && r.len() <= 128)
}

fn raw_field(text: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get(name)?.as_str().map(str::to_owned)
}

fn frame_cmid(f: &ClientFrame) -> Option<&str> {
    match f {
        ClientFrame::Message(x) => x.client_message_id.as_deref(),
        ClientFrame::Edit(x) => x.client_message_id.as_deref(),
        ClientFrame::Delete(x) => x.client_message_id.as_deref(),
        ClientFrame::Stream(x) => x.client_message_id.as_deref(),
        _ => None,
    }
}

fn set_seq(e: &mut TimelineEvent, seq: u64) {
    match e {
        TimelineEvent::Message(x) => x.seq = seq,
        TimelineEvent::Edit(x) => x.seq = seq,
        TimelineEvent::Delete(x) => x.seq = seq,
        TimelineEvent::Reaction(x) => x.seq = seq,
        TimelineEvent::Read(x) => x.seq = seq,
        TimelineEvent::AgentRun(x) => x.seq = seq,
        TimelineEvent::ToolCall(x) => x.seq = seq,
        TimelineEvent::ToolResult(x) => x.seq = seq,
        TimelineEvent::ToolError(x) => x.seq = seq,
        TimelineEvent::ApprovalRequest(x) => x.seq = seq,
        TimelineEvent::ApprovalDecision(x) => x.seq = seq,
    }
}

fn created_ms_of(e: &TimelineEvent) -> u64 {
    let s = match e {
        TimelineEvent::Message(x) => &x.created_at,
        TimelineEvent::Edit(x) => &x.edited_at,
        TimelineEvent::Delete(x) => &x.deleted_at,
        TimelineEvent::Reaction(x) => &x.created_at,
        TimelineEvent::Read(x) => &x.created_at,
        TimelineEvent::AgentRun(x) => &x.created_at,
        TimelineEvent::ToolCall(x) => &x.created_at,
        TimelineEvent::ToolResult(x) => &x.created_at,
        TimelineEvent::ToolError(x) => &x.created_at,
        TimelineEvent::ApprovalRequest(x) => &x.created_at,
        TimelineEvent::ApprovalDecision(x) => &x.created_at,
    };
    fluxy_protocol::common::parse_timestamp(s).unwrap_or(0)
}
