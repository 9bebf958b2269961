//! The room state machine. Inputs in, effects out; no I/O, no clock, no threads.

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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            replay: true,
            replay_limit: 50,
            last_seq: None,
            compat: false,
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

/// Everything the engine needs from storage to start (see `sql::LOAD_*`).
#[derive(Debug, Clone, Default)]
pub struct LoadedRoom {
    /// Room type.
    pub room_type: RoomType,
    /// Highest committed seq.
    pub current_seq: u64,
    /// Bodies of the newest events, ascending, ending at `current_seq`.
    pub recent: Vec<String>,
    /// Every message.
    pub messages: Vec<MessageRow>,
    /// Every reaction: (message id, user, emoji).
    pub reactions: Vec<(u64, String, String)>,
    /// Every read position: (user, message id).
    pub reads: Vec<(String, u64)>,
    /// Idempotency keys of the last 24 h.
    pub idempotency: Vec<IdempotencyRow>,
    /// Bodies of every agent event, ascending.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    messages: HashMap<u64, Msg>,
    reactions: HashSet<(u64, String, String)>,
    reads: HashMap<String, u64>,
    idem: HashMap<(String, String), IdemEntry>,
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
            messages: HashMap::with_capacity(loaded.messages.len()),
            reactions: HashSet::new(),
            reads: HashMap::new(),
            idem: HashMap::new(),
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
        room.reactions.extend(loaded.reactions);
        room.reads.extend(loaded.reads);
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

    /// The committed events with seq > `after`, ascending, as (seq, type, body), if the
    /// in-memory window still covers that position (used by shells for SSE and polling
    /// without a storage read, and without parsing the bodies again).
    pub fn recent_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Option<Vec<(u64, &'static str, Arc<str>)>> {
        let first = self.ring.front().map_or(self.committed_seq + 1, |r| r.seq);
        if after + 1 < first {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|r| r.seq > after)
                .take(limit)
                .map(|r| (r.seq, r.event.type_name(), r.body.clone()))
                .collect(),
        )
    }

    /// [`Room::recent_after`] without seq and type: the bodies only.
    pub fn recent_bodies_after(&self, after: u64, limit: usize) -> Option<Vec<Arc<str>>> {
        self.recent_after(after, limit)
            .map(|v| v.into_iter().map(|(_, _, body)| body).collect())
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
            } => self.open(now_ms, conn, identity, options),
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
            Input::Post {
                request,
                identity,
                frame,
            } => {
                let who = Requester::Post(request);
                if self.duplicate(
                    now_ms,
                    who,
                    &identity.user_id,
                    frame.client_message_id.as_deref(),
                    None,
                ) {
                    self.flush();
                    return;
                }
                let t = self.event_ms(now_ms);
                let r = self.on_message(t, &identity, None, frame);
                self.finish(who, r);
            }
            Input::Kick { user_id } => {
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
            } => {
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

    /// Forget idempotency keys older than [`IDEMPOTENCY_TTL_MS`] (at most a bounded number per
    /// call; [`Room::duplicate`] ignores expired keys anyway, so pruning late is harmless).
    fn prune_idempotency(&mut self, now_ms: u64) {
        for _ in 0..IDEM_PRUNE_BATCH {
            let expired = self
                .idem_order
                .front()
                .is_some_and(|(created, ..)| created.saturating_add(IDEMPOTENCY_TTL_MS) <= now_ms);
            if !expired {
                return;
            }
            let Some((_, user, cmid, seq)) = self.idem_order.pop_front() else {
                return;
            };
            let key = (user, cmid);
            if self.idem.get(&key).is_some_and(|e| e.seq == seq) {
                self.idem.remove(&key);
            }
        }
    }

    /// Count an invalid frame; close with 4010 when the streak reaches the policy's limit.
    fn count_invalid(&mut self, conn: ConnId) {
        let Some(max) = self.policy.max_invalid_streak else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.invalid_streak = c.invalid_streak.saturating_add(1);
        if c.invalid_streak >= max.max(1) {
            self.close(conn, CloseCode::ProtocolViolation);
        }
    }

    /// Count a frame refused by the rate limit; true when the connection was closed with 4008.
    fn count_rate_reject(&mut self, conn: ConnId, now_ms: u64) -> bool {
        let Some(max) = self.policy.max_rate_rejects else {
            return false;
        };
        let window = match self.policy.rate_abuse_window_ms {
            0 => (u64::from(self.cfg.rate_burst) * 1000
                / u64::from(self.cfg.rate_per_second.max(1)))
            .max(1000),
            w => w,
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if now_ms.saturating_sub(c.reject_window_start_ms) >= window {
            c.reject_window_start_ms = now_ms;
            c.rate_rejects = 0;
        }
        c.rate_rejects = c.rate_rejects.saturating_add(1);
        if c.rate_rejects >= max.max(1) {
            self.close(conn, CloseCode::RateLimited);
            return true;
        }
        false
    }

    // ------------------------------------------------------------------ connections

    fn open(&mut self, now_ms: u64, conn: ConnId, identity: Identity, options: ConnectOptions) {
        let user = identity.user_id.clone();
        let welcome = ServerFrame::Welcome(WelcomeFrame {
            protocol_version: PROTOCOL_VERSION.to_owned(),
            room_id: self.cfg.room_id.to_string(),
            user_id: user.clone(),
            roles: identity.roles.clone(),
            connection_id: format!("c{conn}"),
            current_seq: self.committed_seq,
            heartbeat_interval_ms: (self.cfg.idle_timeout_ms / 2).max(1),
            idle_timeout_ms: self.cfg.idle_timeout_ms,
            token_expires_at: format_timestamp(identity.token_exp.saturating_mul(1000)),
            limits: self.limits(),
        });
        self.conns.insert(
            conn,
            Conn {
                identity,
                last_rx_ms: now_ms,
                tokens: f64::from(self.cfg.rate_burst),
                last_refill_ms: now_ms,
                invalid_streak: 0,
                rate_rejects: 0,
                reject_window_start_ms: now_ms,
            },
        );
        self.send(conn, text_of(&welcome));
        if let Some(last) = options.last_seq {
            match self.replay(last, None) {
                Ok(r) => self.send(conn, text_of(&ServerFrame::Replay(r))),
                Err(e) => {
                    self.send_error(conn, e);
                    self.snapshot(conn, options.replay_limit, options.compat);
                }
            }
        } else if options.replay {
            self.snapshot(conn, options.replay_limit, options.compat);
        }
        let first = {
            let n = self.users.entry(user.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        self.ghosts.remove(&user);
        let sub = ServerFrame::SubscriptionSucceeded(SubscriptionSucceededFrame {
            room_id: self.cfg.room_id.to_string(),
            socket_id: format!("c{conn}"),
            subscription_count: u32::try_from(self.conns.len()).unwrap_or(u32::MAX),
        });
        self.send(conn, text_of(&sub));
        if first {
            let j = ServerFrame::MemberJoined(MemberPresenceEvent {
                room_id: self.cfg.room_id.to_string(),
                user_id: user,
            });
            self.broadcast(text_of(&j), Some(conn), None, "member_joined");
        }
        self.broadcast_presence();
    }

    fn restore(&mut self, now_ms: u64, conn: ConnId, identity: Identity, last_rx_ms: u64) {
        if self.conns.contains_key(&conn) {
            return;
        }
        let user = identity.user_id.clone();
        self.conns.insert(
            conn,
            Conn {
                identity,
                last_rx_ms,
                tokens: f64::from(self.cfg.rate_burst),
                last_refill_ms: now_ms,
                invalid_streak: 0,
                rate_rejects: 0,
                reject_window_start_ms: now_ms,
            },
        );
        *self.users.entry(user.clone()).or_insert(0) += 1;
        self.ghosts.remove(&user);
    }

    fn snapshot(&mut self, conn: ConnId, limit: u32, compat: bool) {
        let limit = limit.min(MAX_PAGE_LIMIT) as usize;
        let skip = self.ring.len().saturating_sub(limit);
        let events: Vec<TimelineEvent> = self
            .ring
            .iter()
            .skip(skip)
            .map(|r| r.event.clone())
            .collect();
        let has_more = match events.first() {
            Some(e) => e.seq() > 1,
            None => self.committed_seq > 0,
        };
        let (messages, reactions) = if compat {
            let (m, r) = crate::compat::snapshot_rows(self.ring.iter().map(|r| &r.event), limit);
            (Some(m), Some(r))
        } else {
            (None, None)
        };
        let h = ServerFrame::History(HistoryFrame {
            room_id: self.cfg.room_id.to_string(),
            events,
            current_seq: self.committed_seq,
            has_more,
            messages,
            reactions,
        });
        self.send(conn, text_of(&h));
    }

    fn remove_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let user = c.identity.user_id;
        let last = match self.users.get_mut(&user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.users.remove(&user);
                true
            }
        };
        if last {
            if self.cfg.faults.ghost_presence {
                self.ghosts.insert(user);
            } else {
                let l = ServerFrame::MemberLeft(MemberPresenceEvent {
                    room_id: self.cfg.room_id.to_string(),
                    user_id: user,
                });
                self.broadcast(text_of(&l), None, None, "member_left");
            }
        }
        self.broadcast_presence();
    }

    fn close(&mut self, conn: ConnId, code: CloseCode) {
        if self.conns.contains_key(&conn) {
            self.effects.push_back(Effect::Close { conn, code });
            self.remove_conn(conn);
        }
    }

    fn broadcast_presence(&mut self) {
        let mut users: BTreeMap<String, u32> = self.users.clone();
        for g in &self.ghosts {
            users.entry(g.clone()).or_insert(1);
        }
        let p = ServerFrame::Presence(PresenceFrame {
            room_id: self.cfg.room_id.to_string(),
            online: users.values().sum(),
            users: users.keys().cloned().collect(),
            members: users
                .into_iter()
                .map(|(user_id, connections)| PresenceMember {
                    user_id,
                    connections,
                })
                .collect(),
        });
        self.broadcast(text_of(&p), None, None, "presence");
    }

    fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: MAX_FRAME_BYTES as u64,
            max_content_chars: MAX_CONTENT_CHARS as u64,
            rate_burst: u64::from(self.cfg.rate_burst),
            rate_per_second: u64::from(self.cfg.rate_per_second),
            resume_window: u64::from(self.cfg.resume_window),
            max_page_limit: u64::from(MAX_PAGE_LIMIT),
        }
    }

    // ---------------------------------------------------------------------- frames

    fn send(&mut self, conn: ConnId, frame: Arc<str>) {
        self.effects.push_back(Effect::Send { conn, frame });
    }

    fn send_error(&mut self, conn: ConnId, e: ErrorFrame) {
        self.send(conn, text_of(&ServerFrame::Error(e)));
    }

    fn broadcast(
        &mut self,
        frame: Arc<str>,
        except: Option<ConnId>,
        seq: Option<u64>,
        kind: &'static str,
    ) {
        self.effects.push_back(Effect::Broadcast {
            frame,
            except,
            seq,
            kind,
        });
    }

    /// Take one token from the connection's bucket; `Err(retry_after_ms)` when empty.
    fn take_token(&mut self, conn: ConnId, now_ms: u64) -> Result<(), u64> {
        if self.cfg.faults.no_rate_limit {
            return Ok(());
        }
        let burst = f64::from(self.cfg.rate_burst.max(1));
        let rate = f64::from(self.cfg.rate_per_second.max(1));
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let elapsed = now_ms.saturating_sub(c.last_refill_ms) as f64;
        c.tokens = (c.tokens + elapsed * rate / 1000.0).min(burst);
        c.last_refill_ms = now_ms;
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - c.tokens) * 1000.0 / rate).ceil() as u64;
            Err(wait.max(1))
        }
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
            ClientFrame::Message(f) => {
                let spoofed = if self.cfg.faults.trust_frame_user_id {
                    raw_field(text, "userId")
                } else {
                    None
                };
                self.on_message(t, &identity, spoofed, f)
            }
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

    /// Route the outcome of a request: sequence an accepted event, release a no-op ack, or
    /// send the error.
    fn finish(&mut self, who: Requester, r: Result<Option<Accepted>, ErrorFrame>) {
        match r {
            Ok(Some(a)) => self.sequence(who, a),
            Ok(None) => {}
            Err(e) => match who {
                Requester::Conn(c) => self.send_error(c, e),
                Requester::Post(request) => self.effects.push_back(Effect::PostDone {
                    request,
                    result: Err(e),
                }),
            },
        }
    }

    /// Release an ack that needs no new event, after every uncommitted event.
    fn reply_now_or_later(&mut self, who: Requester, a: AckFrame) {
        if let Some(last) = self.queue.last_mut() {
            last.after.push((who, a));
        } else if let Some((_, b)) = self.in_flight.as_mut().filter(|(_, b)| !b.is_empty()) {
            if let Some(last) = b.last_mut() {
                last.after.push((who, a));
            }
        } else {
            self.deliver_ack(who, a);
        }
    }

    fn deliver_ack(&mut self, who: Requester, a: AckFrame) {
        match who {
            Requester::Conn(c) => {
                if !self.cfg.faults.no_ack && self.conns.contains_key(&c) {
                    self.send(c, text_of(&ServerFrame::Ack(a)));
                }
            }
            Requester::Post(request) => {
                let event = a.seq.and_then(|s| self.ring_body(s));
                self.effects.push_back(Effect::PostDone {
                    request,
                    result: Ok(PostOutcome { ack: a, event }),
                });
            }
        }
    }

    fn ring_body(&self, seq: u64) -> Option<Arc<str>> {
        let first = self.ring.front()?.seq;
        let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.ring.get(idx).map(|r| r.body.clone())
    }

    /// Duplicate check for an idempotency key. Returns true when handled.
    ///
    /// A key older than [`IDEMPOTENCY_TTL_MS`] is forgotten (it was honoured for 24 hours).
    fn duplicate(
        &mut self,
        now_ms: u64,
        who: Requester,
        user: &str,
        cmid: Option<&str>,
        reference: Option<&str>,
    ) -> bool {
        let Some(cmid) = cmid else { return false };
        if self.cfg.faults.no_dedup {
            return false;
        }
        let key = (user.to_owned(), cmid.to_owned());
        let Some(e) = self.idem.get(&key) else {
            return false;
        };
        if e.created_ms.saturating_add(IDEMPOTENCY_TTL_MS) <= now_ms {
            self.idem.remove(&key);
            return false;
        }
        let a = AckFrame {
            reference: reference.map(str::to_owned),
            client_message_id: Some(cmid.to_owned()),
            id: e.id,
            seq: Some(e.seq),
            created_at: Some(format_timestamp(e.created_ms)),
            duplicate: true,
        };
        self.reply_now_or_later(who, a);
        true
    }

    /// The time stamp for the next timeline event: the clock, or the previous event's time
    /// stamp plus 1 ms when the clock has not advanced past it, so `createdAt` strictly
    /// increases with `seq` within the room, also across restarts `[FX-ORD-9]`.
    fn event_ms(&self, now_ms: u64) -> u64 {
        now_ms.max(self.last_created_ms.saturating_add(1))
    }

    fn alloc_seq(&mut self) -> u64 {
        if self.cfg.faults.skip_seq && !self.fault_state.skip_seq_fired && self.next_seq >= 3 {
            self.fault_state.skip_seq_fired = true;
            self.next_seq += 1;
        }
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Assign the seq, build statements, queue for the next commit.
    fn sequence(&mut self, who: Requester, a: Accepted) {
        let Accepted {
            event,
            mut ack,
            extra,
            idem,
        } = a;
        let Some(mut event) = event else {
            self.reply_now_or_later(who, ack);
            return;
        };
        let seq = self.alloc_seq();
        set_seq(&mut event, seq);
        let created_ms = created_ms_of(&event);
        self.last_created_ms = self.last_created_ms.max(created_ms);
        ack.seq = Some(seq);
        ack.created_at = Some(format_timestamp(created_ms));
        if ack.id.is_none() {
            if let TimelineEvent::Message(_) = event {
                ack.id = Some(seq);
            }
        }
        if let TimelineEvent::Message(m) = &mut event {
            m.id = seq;
        }
        self.apply_event(&event);
        let kind = event.type_name();
        let body: Arc<str> = Arc::from(event.encode());
        if self.cfg.faults.ack_before_store
            && !self.fault_state.ack_before_store_fired
            && kind == "message"
        {
            // Fault: ack at once, then "lose" the write: the seq is reused by the next event.
            self.fault_state.ack_before_store_fired = true;
            self.next_seq -= 1;
            self.deliver_ack(who, ack);
            return;
        }
        let mut statements = Vec::with_capacity(2 + extra.len());
        statements.push(sql::insert_event(
            &self.cfg.tenant,
            &self.cfg.room_id,
            seq,
            kind,
            event.actor(),
            created_ms,
            &body,
        ));
        let mut statements_extra = extra;
        // Message rows need the final id.
        for s in &mut statements_extra {
            if s.sql == sql::INSERT_MESSAGE {
                s.params[2] = seq.into();
            }
        }
        statements.extend(statements_extra);
        if let Some((user, cmid)) = idem {
            statements.push(sql::insert_idempotency(
                &self.cfg.tenant,
                &self.cfg.room_id,
                &user,
                &cmid,
                seq,
                ack.id,
                created_ms,
            ));
            self.idem_order
                .push_back((created_ms, user.clone(), cmid.clone(), seq));
            self.idem.insert(
                (user, cmid),
                IdemEntry {
                    seq,
                    id: ack.id,
                    created_ms,
                },
            );
        }
        self.queue.push(Pending {
            seq,
            kind,
            event,
            body,
            requester: Some(who),
            ack: Some(ack),
            after: Vec::new(),
            statements,
        });
    }

    /// Start a write if none is in flight (group commit: everything queued goes together).
    fn flush(&mut self) {
        if self.in_flight.is_some() || self.queue.is_empty() || self.failed {
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let items = std::mem::take(&mut self.queue);
        let statements: Vec<Stmt> = items
            .iter()
            .flat_map(|p| p.statements.iter().cloned())
            .collect();
        self.in_flight = Some((batch, items));
        self.effects
            .push_back(Effect::Persist { batch, statements });
    }

    fn committed(&mut self, batch: u64) {
        let Some((b, items)) = self.in_flight.take() else {
            return;
        };
        if b != batch {
            self.in_flight = Some((b, items));
            return;
        }
        for p in items {
            self.committed_seq = p.seq;
            if let (Some(who), Some(a)) = (p.requester, p.ack) {
                match who {
                    Requester::Post(request) => self.effects.push_back(Effect::PostDone {
                        request,
                        result: Ok(PostOutcome {
                            ack: a,
                            event: Some(p.body.clone()),
                        }),
                    }),
                    Requester::Conn(_) => self.deliver_ack(who, a),
                }
            }
            let sender = match p.requester {
                Some(Requester::Conn(c)) => Some(c),
                _ => None,
            };
            self.release_broadcast(p.body.clone(), p.seq, p.kind, sender);
            self.push_ring(p.seq, p.event, p.body);
            for (who, a) in p.after {
                self.deliver_ack(who, a);
            }
        }
    }

    fn release_broadcast(
        &mut self,
        body: Arc<str>,
        seq: u64,
        kind: &'static str,
        sender: Option<ConnId>,
    ) {
        let f = self.cfg.faults;
        let mut except = None;
        if f.drop_broadcast && !self.fault_state.drop_fired {
            if let Some(victim) = self.conns.keys().copied().find(|c| Some(*c) != sender) {
                self.fault_state.drop_fired = true;
                except = Some(victim);
            }
        }
        let e = Effect::Broadcast {
            frame: body,
            except,
            seq: Some(seq),
            kind,
        };
        if f.reorder_broadcast {
            if !self.fault_state.reorder_fired {
                self.fault_state.reorder_fired = true;
                self.fault_state.held = Some(e);
                return;
            }
            self.effects.push_back(e);
            if let Some(h) = self.fault_state.held.take() {
                self.effects.push_back(h);
            }
            return;
        }
        self.effects.push_back(e);
    }

    fn push_ring(&mut self, seq: u64, event: TimelineEvent, body: Arc<str>) {
        self.ring.push_back(Recent { seq, event, body });
        while self.ring.len() > self.ring_cap {
            self.ring.pop_front();
        }
    }

    fn commit_failed(&mut self, batch: u64) {
        if !matches!(&self.in_flight, Some((b, _)) if *b == batch) {
            return;
        }
        self.failed = true;
        // Every POST waiting on these events gets an answer: the requesters of the events and
        // the duplicate or no-op requests released after them (`after`).
        let post_requests = |p: &Pending| -> Vec<u64> {
            p.requester
                .iter()
                .chain(p.after.iter().map(|(who, _)| who))
                .filter_map(|who| match who {
                    Requester::Post(r) => Some(*r),
                    Requester::Conn(_) => None,
                })
                .collect()
        };
        let mut posts = Vec::new();
        if let Some((_, items)) = self.in_flight.take() {
            posts.extend(items.iter().flat_map(post_requests));
        }
        posts.extend(self.queue.drain(..).flat_map(|p| post_requests(&p)));
        for request in posts {
            self.effects.push_back(Effect::PostDone {
                request,
                result: Err(err(ErrorCode::InternalError, "storage failed", None)),
            });
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.effects.push_back(Effect::Close {
                conn: id,
                code: CloseCode::InternalError,
            });
        }
        self.conns.clear();
        self.users.clear();
        self.effects.push_back(Effect::Reset);
    }

    // ------------------------------------------------------------------- replay

    fn replay(&self, last_seq: u64, reference: Option<&str>) -> Result<ReplayFrame, ErrorFrame> {
        let current = self.committed_seq;
        let f = self.cfg.faults;
        let resync = || {
            err(
                ErrorCode::ResyncRequired,
                "cannot replay from that position; fetch history",
                reference,
            )
        };
        if last_seq > current {
            return Err(resync());
        }
        let first = self.ring.front().map_or(current + 1, |r| r.seq);
        let too_old =
            current - last_seq > u64::from(self.cfg.resume_window) || last_seq + 1 < first;
        if too_old && !f.no_resync {
            return Err(resync());
        }
        let mut events: Vec<TimelineEvent> = self
            .ring
            .iter()
            .filter(|r| r.seq > last_seq)
            .take(MAX_PAGE_LIMIT as usize)
            .map(|r| r.event.clone())
            .collect();
        if f.resume_off_by_one && !events.is_empty() {
            events.remove(0);
        }
        let last = events.last().map_or(last_seq, TimelineEvent::seq);
        Ok(ReplayFrame {
            room_id: self.cfg.room_id.to_string(),
            has_more: last < current,
            events,
            from_seq: last_seq,
            current_seq: current,
            reference: reference.map(str::to_owned),
        })
    }

    // ------------------------------------------------------------------ handlers

    fn room(&self) -> String {
        self.cfg.room_id.to_string()
    }

    fn on_message(
        &mut self,
        now_ms: u64,
        id: &Identity,
        spoofed_user: Option<String>,
        f: SendMessageFrame,
    ) -> Outcome {
        if self.room_type == RoomType::Announcement && !id.may_moderate() {
            return Err(err(
                ErrorCode::Forbidden,
                "only owners, admins and moderators may post here",
                None,
            ));
        }
        let user = spoofed_user.unwrap_or_else(|| id.user_id.clone());
        if let Some(p) = f.parent_id {
            if !self.messages.contains_key(&p) {
                return Err(field_err(
                    ErrorCode::NotFound,
                    "no such parent message",
                    "parentId",
                ));
            }
        }
        Ok(Some(Accepted {
            idem: f.client_message_id.clone().map(|c| (user.clone(), c)),
            ack: ack(f.reference.as_deref(), f.client_message_id.as_deref()),
            extra: vec![sql::insert_message(
                &self.cfg.tenant,
                &self.cfg.room_id,
                0,
                &user,
                f.content.trim(),
                now_ms,
                f.parent_id,
                false,
                f.client_message_id.as_deref(),
                attachments_json(&f.attachments).as_deref(),
            )],
            event: Some(TimelineEvent::Message(MessageEvent {
                seq: 0,
                id: 0,
                room_id: self.room(),
                user_id: user.clone(),
                sender_id: user,
                content: f.content.trim().to_owned(),
                created_at: format_timestamp(now_ms),
                parent_id: f.parent_id,
                client_message_id: f.client_message_id,
                attachments: f.attachments,
                version: 1,
                streaming: false,
            })),
        }))
    }

    fn on_edit(&mut self, now_ms: u64, id: &Identity, f: EditFrame) -> Outcome {
        let m = self
            .messages
            .get(&f.message_id)
            .ok_or_else(|| field_err(ErrorCode::NotFound, "no such message", "messageId"))?;
        if m.author != id.user_id && !self.cfg.faults.edit_any_author {
            return Err(err(ErrorCode::Forbidden, "only the author may edit", None));
        }
        if m.deleted {
            return Err(err(ErrorCode::Conflict, "the message is deleted", None));
        }
        if m.streaming {
            return Err(err(
                ErrorCode::InvalidState,
                "the message is streaming",
                None,
            ));
        }
        if let Some(v) = f.expected_version {
            if v != m.version {
                return Err(field_err(
                    ErrorCode::Conflict,
                    "version mismatch",
                    "expectedVersion",
                ));
            }
        }
        let version = m.version + 1;
        let mut a = ack(f.reference.as_deref(), f.client_message_id.as_deref());
        a.id = Some(f.message_id);
        Ok(Some(Accepted {
            idem: f.client_message_id.map(|c| (id.user_id.clone(), c)),
            ack: a,
            extra: vec![sql::update_message_content(
                &self.cfg.tenant,
                &self.cfg.room_id,
                f.message_id,
                f.content.trim(),
                version,
                now_ms,
                false,
            )],
            event: Some(TimelineEvent::Edit(EditEvent {
                seq: 0,
                id: f.message_id,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                content: f.content.trim().to_owned(),
                edited_at: format_timestamp(now_ms),
                version,
                streaming: false,
            })),
        }))
    }

    fn on_delete(&mut self, now_ms: u64, id: &Identity, f: DeleteFrame) -> Outcome {
        let m = self
            .messages
            .get(&f.message_id)
            .ok_or_else(|| field_err(ErrorCode::NotFound, "no such message", "messageId"))?;
        if m.author != id.user_id && !id.may_moderate() && !self.cfg.faults.delete_any_user {
            return Err(err(
                ErrorCode::Forbidden,
                "only the author or a moderator may delete",
                None,
            ));
        }
        if m.deleted {
            return Err(err(ErrorCode::Conflict, "already deleted", None));
        }
        let version = m.version + 1;
        let mut a = ack(f.reference.as_deref(), f.client_message_id.as_deref());
        a.id = Some(f.message_id);
        Ok(Some(self.delete_event(
            now_ms,
            id,
            f.message_id,
            version,
            a,
            f.client_message_id,
        )))
    }

    fn delete_event(
        &self,
        now_ms: u64,
        id: &Identity,
        message_id: u64,
        version: u32,
        a: AckFrame,
        cmid: Option<String>,
    ) -> Accepted {
        Accepted {
            idem: cmid.map(|c| (id.user_id.clone(), c)),
            ack: a,
            extra: vec![sql::delete_message(
                &self.cfg.tenant,
                &self.cfg.room_id,
                message_id,
                version,
            )],
            event: Some(TimelineEvent::Delete(DeleteEvent {
                seq: 0,
                id: message_id,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                deleted_at: format_timestamp(now_ms),
                version,
            })),
        }
    }

    fn on_reaction(&mut self, now_ms: u64, id: &Identity, f: ReactionFrame) -> Outcome {
        match self.messages.get(&f.message_id) {
            Some(m) if !m.deleted => {}
            Some(_) => return Err(err(ErrorCode::Conflict, "the message is deleted", None)),
            None => {
                return Err(field_err(
                    ErrorCode::NotFound,
                    "no such message",
                    "messageId",
                ))
            }
        }
        let key = (f.message_id, id.user_id.clone(), f.emoji.clone());
        let present = self.reactions.contains(&key);
        let add = f.op == ReactionOp::Add;
        let mut a = ack(f.reference.as_deref(), None);
        a.id = Some(f.message_id);
        if present == add {
            return Ok(Some(Accepted::noop(a)));
        }
        Ok(Some(Accepted {
            idem: None,
            ack: a,
            extra: vec![sql::reaction(
                &self.cfg.tenant,
                &self.cfg.room_id,
                add,
                f.message_id,
                &id.user_id,
                &f.emoji,
                now_ms,
            )],
            event: Some(TimelineEvent::Reaction(ReactionEvent {
                seq: 0,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                message_id: f.message_id,
                emoji: f.emoji,
                op: f.op,
                created_at: format_timestamp(now_ms),
            })),
        }))
    }

    fn on_read(&mut self, now_ms: u64, id: &Identity, f: ReadFrame) -> Outcome {
        if !self.messages.contains_key(&f.message_id) {
            return Err(field_err(
                ErrorCode::NotFound,
                "no such message",
                "messageId",
            ));
        }
        let mut a = ack(f.reference.as_deref(), None);
        a.id = Some(f.message_id);
        if self
            .reads
            .get(&id.user_id)
            .is_some_and(|r| *r >= f.message_id)
        {
            return Ok(Some(Accepted::noop(a)));
        }
        Ok(Some(Accepted {
            idem: None,
            ack: a,
            extra: vec![sql::upsert_read(
                &self.cfg.tenant,
                &self.cfg.room_id,
                &id.user_id,
                f.message_id,
            )],
            event: Some(TimelineEvent::Read(ReadEvent {
                seq: 0,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                message_id: f.message_id,
                created_at: format_timestamp(now_ms),
            })),
        }))
    }

    fn on_typing(&mut self, conn: ConnId, id: &Identity, f: TypingFrame) {
        let intent = if f.is_typing {
            match f.intent {
                Some(TypingIntent::Idle) | None => TypingIntent::Composing,
                Some(i) => i,
            }
        } else {
            TypingIntent::Idle
        };
        let t = text_of(&ServerFrame::Typing(TypingEvent {
            room_id: self.room(),
            user_id: id.user_id.clone(),
            is_typing: f.is_typing,
            intent,
        }));
        if self.cfg.faults.typing_to_sender_only {
            self.send(conn, t);
        } else {
            self.broadcast(t, Some(conn), None, "typing");
        }
    }

    fn on_stream(&mut self, now_ms: u64, id: &Identity, f: StreamFrame) -> Outcome {
        if f.op == StreamOp::Start {
            if self.room_type == RoomType::Announcement && !id.may_moderate() {
                return Err(err(
                    ErrorCode::Forbidden,
                    "only owners, admins and moderators may post here",
                    None,
                ));
            }
            let mut m = self.on_message(
                now_ms,
                id,
                None,
                SendMessageFrame {
                    content: "x".into(),
                    client_message_id: f.client_message_id.clone(),
                    parent_id: f.parent_id,
                    attachments: Vec::new(),
                    reference: f.reference.clone(),
                },
            )?;
            if let Some(a) = m.as_mut() {
                let content = f.content.trim().to_owned();
                if let Some(TimelineEvent::Message(ev)) = &mut a.event {
                    ev.content.clone_from(&content);
                    ev.streaming = true;
                }
                if let Some(s) = a.extra.first_mut() {
                    s.params[4] = content.as_str().into();
                    s.params[8] = true.into();
                }
            }
            return Ok(m);
        }
        let mid = f.message_id.ok_or_else(|| {
            field_err(
                ErrorCode::InvalidFrame,
                "messageId is required",
                "messageId",
            )
        })?;
        let m = self
            .messages
            .get(&mid)
            .ok_or_else(|| field_err(ErrorCode::NotFound, "no such message", "messageId"))?;
        if m.author != id.user_id {
            return Err(err(
                ErrorCode::Forbidden,
                "only the author may continue a stream",
                None,
            ));
        }
        if m.deleted {
            return Err(err(ErrorCode::Conflict, "the message is deleted", None));
        }
        if !m.streaming {
            return Err(err(
                ErrorCode::InvalidState,
                "the message is not streaming",
                None,
            ));
        }
        let version = m.version + 1;
        let mut a = ack(f.reference.as_deref(), f.client_message_id.as_deref());
        a.id = Some(mid);
        if f.op == StreamOp::Abort {
            return Ok(Some(self.delete_event(
                now_ms,
                id,
                mid,
                version,
                a,
                f.client_message_id,
            )));
        }
        let streaming = f.op == StreamOp::Delta;
        Ok(Some(Accepted {
            idem: f.client_message_id.map(|c| (id.user_id.clone(), c)),
            ack: a,
            extra: vec![sql::update_message_content(
                &self.cfg.tenant,
                &self.cfg.room_id,
                mid,
                f.content.trim(),
                version,
                now_ms,
                streaming,
            )],
            event: Some(TimelineEvent::Edit(EditEvent {
                seq: 0,
                id: mid,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                content: f.content.trim().to_owned(),
                edited_at: format_timestamp(now_ms),
                version,
                streaming,
            })),
        }))
    }

    fn require_agent(&self, id: &Identity) -> Result<(), ErrorFrame> {
        if id.is_agent() || self.cfg.faults.non_agent_tool_call {
            Ok(())
        } else {
            Err(err(
                ErrorCode::Forbidden,
                "agent frames need the agent role",
                None,
            ))
        }
    }

    fn active_run(&self, id: &Identity, run_id: &str) -> Result<(), ErrorFrame> {
        match self.runs.get(&(id.user_id.clone(), run_id.to_owned())) {
            Some(r) if !r.terminal => Ok(()),
            _ => Err(field_err(
                ErrorCode::InvalidState,
                "no active run with that id",
                "runId",
            )),
        }
    }

    fn on_agent_run(&mut self, now_ms: u64, id: &Identity, f: AgentRunFrame) -> Outcome {
        self.require_agent(id)?;
        match (
            self.runs.get(&(id.user_id.clone(), f.run_id.clone())),
            f.status,
        ) {
            (None, RunStatus::Started) => {}
            (None, _) => {
                return Err(field_err(
                    ErrorCode::InvalidState,
                    "the run was not started",
                    "runId",
                ))
            }
            (Some(_), RunStatus::Started) => {
                return Err(field_err(
                    ErrorCode::InvalidState,
                    "the run already exists",
                    "runId",
                ))
            }
            (Some(_), _) => self.active_run(id, &f.run_id)?,
        }
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::AgentRun(AgentRunEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                status: f.status,
                error: f.error,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    fn on_tool_call(&mut self, now_ms: u64, id: &Identity, f: ToolCallFrame) -> Outcome {
        self.require_agent(id)?;
        self.active_run(id, &f.run_id)?;
        if self.tool_calls.contains_key(&(
            id.user_id.clone(),
            f.run_id.clone(),
            f.tool_call_id.clone(),
        )) {
            return Err(field_err(
                ErrorCode::InvalidState,
                "toolCallId already used",
                "toolCallId",
            ));
        }
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ToolCall(ToolCallEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                tool_call_id: f.tool_call_id,
                name: f.name,
                arguments: f.arguments,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    fn pending_call(&self, id: &Identity, run: &str, call: &str) -> Result<(), ErrorFrame> {
        match self
            .tool_calls
            .get(&(id.user_id.clone(), run.to_owned(), call.to_owned()))
        {
            Some(true) => Ok(()),
            _ => Err(field_err(
                ErrorCode::InvalidState,
                "no pending tool call with that id",
                "toolCallId",
            )),
        }
    }

    fn on_tool_result(&mut self, now_ms: u64, id: &Identity, f: ToolResultFrame) -> Outcome {
        self.require_agent(id)?;
        self.pending_call(id, &f.run_id, &f.tool_call_id)?;
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ToolResult(ToolResultEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                tool_call_id: f.tool_call_id,
                result: f.result,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    fn on_tool_error(&mut self, now_ms: u64, id: &Identity, f: ToolErrorFrame) -> Outcome {
        self.require_agent(id)?;
        self.pending_call(id, &f.run_id, &f.tool_call_id)?;
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ToolError(ToolErrorEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                tool_call_id: f.tool_call_id,
                error: f.error,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    fn on_approval_request(
        &mut self,
        now_ms: u64,
        id: &Identity,
        f: ApprovalRequestFrame,
    ) -> Outcome {
        self.require_agent(id)?;
        self.active_run(id, &f.run_id)?;
        if self.approvals.contains_key(&(
            id.user_id.clone(),
            f.run_id.clone(),
            f.approval_id.clone(),
        )) {
            return Err(field_err(
                ErrorCode::InvalidState,
                "approvalId already used",
                "approvalId",
            ));
        }
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ApprovalRequest(ApprovalRequestEvent {
                seq: 0,
                room_id: self.room(),
                agent_id: id.user_id.clone(),
                run_id: f.run_id,
                approval_id: f.approval_id,
                tool_call_id: f.tool_call_id,
                prompt: f.prompt,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    fn on_approval_decision(
        &mut self,
        now_ms: u64,
        id: &Identity,
        f: ApprovalDecisionFrame,
    ) -> Outcome {
        if id.is_agent() {
            return Err(err(
                ErrorCode::Forbidden,
                "agents may not decide approvals",
                None,
            ));
        }
        if self
            .approvals
            .iter()
            .all(|((_, r, a), p)| !*p || *r != f.run_id || *a != f.approval_id)
        {
            return Err(field_err(
                ErrorCode::InvalidState,
                "no pending approval with that id",
                "approvalId",
            ));
        }
        Ok(Some(Accepted::event(
            ack(f.reference.as_deref(), None),
            TimelineEvent::ApprovalDecision(ApprovalDecisionEvent {
                seq: 0,
                room_id: self.room(),
                user_id: id.user_id.clone(),
                run_id: f.run_id,
                approval_id: f.approval_id,
                decision: f.decision,
                reason: f.reason,
                created_at: format_timestamp(now_ms),
            }),
        )))
    }

    fn on_auth(&mut self, now_ms: u64, conn: ConnId, id: &Identity, f: AuthFrame) {
        let secret = self.cfg.jwt_secret.clone();
        let tenant = self.cfg.tenant.clone();
        let r = verify_token(&f.token, now_ms / 1000, &self.cfg.faults, |t| {
            (t == &*tenant).then(|| secret.clone())
        });
        let claims = match r {
            Ok(c) => c,
            Err(e) => {
                let code = e.code();
                self.send_error(conn, err(code, e.to_string(), f.reference.as_deref()));
                return;
            }
        };
        if claims.sub != id.user_id || claims.tid != *self.cfg.tenant {
            self.send_error(
                conn,
                err(
                    ErrorCode::Forbidden,
                    "the new token must have the same sub and tid",
                    f.reference.as_deref(),
                ),
            );
            return;
        }
        let changed = self.conns.get_mut(&conn).map(|c| {
            c.identity.token_exp = claims.exp;
            c.identity.roles.clone_from(&claims.roles);
            c.identity.clone()
        });
        let t = ServerFrame::TokenRefreshed(TokenRefreshedFrame {
            token_expires_at: format_timestamp(claims.exp.saturating_mul(1000)),
            roles: claims.roles,
            reference: f.reference,
        });
        self.send(conn, text_of(&t));
        if let Some(identity) = changed {
            self.effects
                .push_back(Effect::IdentityChanged { conn, identity });
        }
    }

    // ----------------------------------------------------------- state transitions

    /// Apply an accepted event to the in-memory state (before it is durable; a failed commit
    /// rebuilds the room from storage).
    fn apply_event(&mut self, e: &TimelineEvent) {
        match e {
            TimelineEvent::Message(m) => {
                self.messages.insert(
                    m.id,
                    Msg {
                        author: m.user_id.clone(),
                        version: m.version,
                        deleted: false,
                        streaming: m.streaming,
                    },
                );
            }
            TimelineEvent::Edit(x) => {
                if let Some(m) = self.messages.get_mut(&x.id) {
                    m.version = x.version;
                    m.streaming = x.streaming;
                }
            }
            TimelineEvent::Delete(x) => {
                if let Some(m) = self.messages.get_mut(&x.id) {
                    m.version = x.version;
                    m.deleted = true;
                    m.streaming = false;
                }
            }
            TimelineEvent::Reaction(r) => {
                let key = (r.message_id, r.user_id.clone(), r.emoji.clone());
                if r.op == ReactionOp::Add {
                    self.reactions.insert(key);
                } else {
                    self.reactions.remove(&key);
                }
            }
            TimelineEvent::Read(r) => {
                self.reads.insert(r.user_id.clone(), r.message_id);
            }
            other => self.apply_agent_event(other),
        }
    }

    fn apply_agent_event(&mut self, e: &TimelineEvent) {
        match e {
            TimelineEvent::AgentRun(r) => {
                self.runs.insert(
                    (r.agent_id.clone(), r.run_id.clone()),
                    Run {
                        terminal: r.status.is_terminal(),
                    },
                );
            }
            TimelineEvent::ToolCall(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                self.tool_calls.insert(k, true);
            }
            TimelineEvent::ToolResult(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                self.tool_calls.insert(k, false);
            }
            TimelineEvent::ToolError(c) => {
                let k = (c.agent_id.clone(), c.run_id.clone(), c.tool_call_id.clone());
                self.tool_calls.insert(k, false);
            }
            TimelineEvent::ApprovalRequest(a) => {
                let k = (a.agent_id.clone(), a.run_id.clone(), a.approval_id.clone());
                self.approvals.insert(k, true);
            }
            TimelineEvent::ApprovalDecision(a) => {
                for ((_, r, id), pending) in self.approvals.iter_mut() {
                    if *r == a.run_id && *id == a.approval_id {
                        *pending = false;
                    }
                }
            }
            _ => {}
        }
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
