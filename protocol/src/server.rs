//! Server → client WebSocket frames (spec areas HS, ACK, RES, PRE, ERR).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::common::{Limits, TypingIntent};
use crate::decode::DecodeError;
use crate::events::{
    AgentRunEvent, ApprovalDecisionEvent, ApprovalRequestEvent, DeleteEvent, EditEvent,
    MessageEvent, ReactionEvent, ReadEvent, TimelineEvent, ToolCallEvent, ToolErrorEvent,
    ToolResultEvent,
};
use crate::http::{MessageRecord, ReactionCounts};

/// `welcome`: first frame on every connection `[FX-HS-5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "WelcomeFrame")]
pub struct WelcomeFrame {
    /// Protocol version spoken on this connection, e.g. `1.0`.
    pub protocol_version: String,
    /// Room id.
    pub room_id: String,
    /// Verified identity (token `sub`).
    pub user_id: String,
    /// Verified roles (token `roles`).
    pub roles: Vec<String>,
    /// Server-assigned connection id.
    pub connection_id: String,
    /// Highest `seq` committed in the room at connect time.
    pub current_seq: u64,
    /// Send at least one frame (a `ping` will do) this often.
    pub heartbeat_interval_ms: u64,
    /// The server closes with 4000 after this long without any frame.
    pub idle_timeout_ms: u64,
    /// Token expiry; refresh in-band with `auth` before it.
    #[schemars(with = "crate::common::Timestamp")]
    pub token_expires_at: String,
    /// Limits in force.
    pub limits: Limits,
}

/// `history`: the connect snapshot, the newest events of the room `[FX-HS-6]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "HistoryFrame")]
pub struct HistoryFrame {
    /// Room id.
    pub room_id: String,
    /// Events ascending by `seq`, ending at `currentSeq`.
    pub events: Vec<TimelineEvent>,
    /// Highest committed `seq`.
    pub current_seq: u64,
    /// True when older events exist (fetch them over HTTP history).
    pub has_more: bool,
    /// FluxyChat compatibility `[FX-CMP-1]`: the newest live messages as FluxyChat's message
    /// rows, oldest first, folded from the same committed events as `events` `[FX-CMP-2]`.
    /// Present only when the client connected with `replay` = `connect`, `true` or `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessageRecord>>,
    /// FluxyChat compatibility `[FX-CMP-1]`: reaction counts of the rows in `messages`, per
    /// message id (as a string), then per emoji; messages without reactions are absent.
    /// Present exactly when `messages` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions: Option<ReactionCounts>,
}

/// `replay`: answer to `resume` (or to `?lastSeq=` at connect) `[FX-RES-2]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ReplayFrame")]
pub struct ReplayFrame {
    /// Room id.
    pub room_id: String,
    /// Every event with `seq` > `fromSeq`, ascending, gap-free, at most `limits.maxPageLimit`.
    pub events: Vec<TimelineEvent>,
    /// The `lastSeq` the client sent.
    pub from_seq: u64,
    /// Highest committed `seq` when the replay was built.
    pub current_seq: u64,
    /// True when more events follow; resume again from the last one.
    pub has_more: bool,
    /// Echo of the request's `ref`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `ack`: the sender's confirmation, sent only after the event is durable `[FX-ACK-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "AckFrame")]
pub struct AckFrame {
    /// Echo of the request's `ref`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Echo of the request's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// Id of the message created or affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// `seq` of the event the request produced; absent when it changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Commit time of that event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::common::Timestamp>")]
    pub created_at: Option<String>,
    /// True when this repeats the ack of an earlier identical request `[FX-ACK-4]`.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub duplicate: bool,
}

/// `error`: a request failed; the connection stays open unless a close follows `[FX-ERR-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ErrorFrame")]
pub struct ErrorFrame {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation; not for matching.
    pub message: String,
    /// Whether the identical request may succeed later.
    pub retryable: bool,
    /// Wait at least this long before retrying (for `rate_limited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Echo of the failed request's `ref`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Offending field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorFrame {
    /// An error frame for `code` with `message`, `retryable` taken from the code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorFrame {
        ErrorFrame {
            code,
            message: message.into(),
            retryable: code.retryable(),
            retry_after_ms: None,
            reference: None,
            field: None,
        }
    }

    /// The error frame for a decode failure.
    pub fn from_decode(e: &DecodeError) -> ErrorFrame {
        let mut f = ErrorFrame::new(e.code(), e.to_string());
        f.field = e.field().map(str::to_owned);
        f
    }
}

/// `pong`: answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "PongFrame")]
pub struct PongFrame {
    /// Server clock, epoch milliseconds.
    pub ts: u64,
    /// Echo of the ping's `ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<u64>,
}

/// `typing`: a user's typing indicator (ephemeral, no `seq`) `[FX-PRE-5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "TypingEvent")]
pub struct TypingEvent {
    /// Room id.
    pub room_id: String,
    /// Who is typing (verified identity).
    pub user_id: String,
    /// Whether they are typing.
    pub is_typing: bool,
    /// Intent (`idle` when not typing).
    pub intent: TypingIntent,
}

/// `agentTyping`: an agent's typing indicator (ephemeral) `[FX-AGT-9]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "AgentTypingEvent")]
pub struct AgentTypingEvent {
    /// Room id.
    pub room_id: String,
    /// The agent (verified identity).
    pub agent_id: String,
    /// Whether it is producing output.
    pub is_typing: bool,
}

/// One present user in a `presence` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "PresenceMember")]
pub struct PresenceMember {
    /// User id.
    pub user_id: String,
    /// Number of live connections of this user in the room.
    pub connections: u32,
}

/// `presence`: who is connected right now (live connections only) `[FX-PRE-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "PresenceFrame")]
pub struct PresenceFrame {
    /// Room id.
    pub room_id: String,
    /// Total live connections.
    pub online: u32,
    /// Distinct connected user ids, sorted.
    pub users: Vec<String>,
    /// Per-user connection counts, sorted by user id.
    pub members: Vec<PresenceMember>,
}

/// `member_joined` / `member_left`: a user's first connection opened or last one closed.
///
/// The JSON Schema export names the two frames `MemberJoinedEvent` and `MemberLeftEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "MemberPresenceEvent")]
pub struct MemberPresenceEvent {
    /// Room id.
    pub room_id: String,
    /// The user.
    pub user_id: String,
}

/// `subscription_succeeded`: the connect sequence is complete (FluxyChat compatibility) `[FX-HS-8]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "SubscriptionSucceededFrame")]
pub struct SubscriptionSucceededFrame {
    /// Room id.
    pub room_id: String,
    /// Same as `welcome.connectionId`.
    pub socket_id: String,
    /// Live connections in the room, this one included.
    pub subscription_count: u32,
}

/// `token_refreshed`: an in-band `auth` succeeded `[FX-AUTH-9]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "TokenRefreshedFrame")]
pub struct TokenRefreshedFrame {
    /// New expiry.
    #[schemars(with = "crate::common::Timestamp")]
    pub token_expires_at: String,
    /// Roles of the new token.
    pub roles: Vec<String>,
    /// Echo of the request's `ref`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `batch`: consecutive timeline events coalesced into one frame, sent only to connections
/// that opted in with the WebSocket query parameter `batch=1` `[FX-TRN-9]`.
///
/// Each event is exactly its standalone form `[FX-TRN-12]`; the events are ascending by `seq`
/// and gap-free `[FX-TRN-10]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "BatchFrame")]
pub struct BatchFrame {
    /// Timeline events, ascending by `seq`, gap-free, at least one.
    pub events: Vec<TimelineEvent>,
}

impl BatchFrame {
    /// The `batch` frame holding these already encoded timeline events, verbatim and in order
    /// (no re-serialisation, so each event stays byte-identical to its standalone form
    /// `[FX-TRN-12]`). The caller passes consecutive events, ascending by `seq`.
    pub fn join<S: AsRef<str>>(events: &[S]) -> String {
        let len = events.iter().map(|e| e.as_ref().len() + 1).sum::<usize>();
        let mut text = String::with_capacity(len + 30);
        text.push_str(r#"{"type":"batch","events":["#);
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(e.as_ref());
        }
        text.push_str("]}");
        text
    }
}

/// Every server → client frame, tagged by `type` `[FX-FRM-2]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
#[schemars(title = "ServerFrame")]
#[schemars(extend("type" = "object", "discriminator" = {"propertyName": "type"}))]
pub enum ServerFrame {
    /// `welcome`
    #[serde(rename = "welcome")]
    Welcome(WelcomeFrame),
    /// `history`
    #[serde(rename = "history")]
    History(HistoryFrame),
    /// `replay`
    #[serde(rename = "replay")]
    Replay(ReplayFrame),
    /// `subscription_succeeded`
    #[serde(rename = "subscription_succeeded")]
    SubscriptionSucceeded(SubscriptionSucceededFrame),
    /// `ack`
    #[serde(rename = "ack")]
    Ack(AckFrame),
    /// `error`
    #[serde(rename = "error")]
    Error(ErrorFrame),
    /// `pong`
    #[serde(rename = "pong")]
    Pong(PongFrame),
    /// `token_refreshed`
    #[serde(rename = "token_refreshed")]
    TokenRefreshed(TokenRefreshedFrame),
    /// `typing`
    #[serde(rename = "typing")]
    Typing(TypingEvent),
    /// `agentTyping`
    #[serde(rename = "agentTyping")]
    AgentTyping(AgentTypingEvent),
    /// `presence`
    #[serde(rename = "presence")]
    Presence(PresenceFrame),
    /// `member_joined`: a user's first connection to the room opened; sent to the other
    /// connections `[FX-PRE-4]`.
    #[serde(rename = "member_joined")]
    MemberJoined(MemberPresenceEvent),
    /// `member_left`: a user's last connection to the room closed; sent to the remaining
    /// connections `[FX-PRE-4]`.
    #[serde(rename = "member_left")]
    MemberLeft(MemberPresenceEvent),
    /// `message` (timeline)
    #[serde(rename = "message")]
    Message(MessageEvent),
    /// `edit` (timeline)
    #[serde(rename = "edit")]
    Edit(EditEvent),
    /// `delete` (timeline)
    #[serde(rename = "delete")]
    Delete(DeleteEvent),
    /// `reaction` (timeline)
    #[serde(rename = "reaction")]
    Reaction(ReactionEvent),
    /// `read` (timeline)
    #[serde(rename = "read")]
    Read(ReadEvent),
    /// `agentRun` (timeline)
    #[serde(rename = "agentRun")]
    AgentRun(AgentRunEvent),
    /// `tool_call` (timeline)
    #[serde(rename = "tool_call")]
    ToolCall(ToolCallEvent),
    /// `tool_result` (timeline)
    #[serde(rename = "tool_result")]
    ToolResult(ToolResultEvent),
    /// `tool_error` (timeline)
    #[serde(rename = "tool_error")]
    ToolError(ToolErrorEvent),
    /// `approval_request` (timeline)
    #[serde(rename = "approval_request")]
    ApprovalRequest(ApprovalRequestEvent),
    /// `approval_decision` (timeline)
    #[serde(rename = "approval_decision")]
    ApprovalDecision(ApprovalDecisionEvent),
    /// `batch`: several consecutive timeline events in one frame, only for connections that
    /// opted in with `batch=1` `[FX-TRN-9]`.
    #[serde(rename = "batch")]
    Batch(BatchFrame),
}

/// The `type` strings of every server frame.
pub const SERVER_TYPES: &[&str] = &[
    "welcome",
    "history",
    "replay",
    "subscription_succeeded",
    "ack",
    "error",
    "pong",
    "token_refreshed",
    "typing",
    "agentTyping",
    "presence",
    "member_joined",
    "member_left",
    "message",
    "edit",
    "delete",
    "reaction",
    "read",
    "agentRun",
    "tool_call",
    "tool_result",
    "tool_error",
    "approval_request",
    "approval_decision",
    "batch",
];

impl From<TimelineEvent> for ServerFrame {
    fn from(e: TimelineEvent) -> ServerFrame {
        match e {
            TimelineEvent::Message(x) => ServerFrame::Message(x),
            TimelineEvent::Edit(x) => ServerFrame::Edit(x),
            TimelineEvent::Delete(x) => ServerFrame::Delete(x),
            TimelineEvent::Reaction(x) => ServerFrame::Reaction(x),
            TimelineEvent::Read(x) => ServerFrame::Read(x),
            TimelineEvent::AgentRun(x) => ServerFrame::AgentRun(x),
            TimelineEvent::ToolCall(x) => ServerFrame::ToolCall(x),
            TimelineEvent::ToolResult(x) => ServerFrame::ToolResult(x),
            TimelineEvent::ToolError(x) => ServerFrame::ToolError(x),
            TimelineEvent::ApprovalRequest(x) => ServerFrame::ApprovalRequest(x),
            TimelineEvent::ApprovalDecision(x) => ServerFrame::ApprovalDecision(x),
        }
    }
}

impl ServerFrame {
    /// Decode a server frame (used by clients and the conformance runner). Never panics.
    /// No size limit is applied: snapshots and replays may be large.
    pub fn decode(text: &str) -> Result<ServerFrame, DecodeError> {
        crate::decode::decode_tagged::<ServerFrame>(text, SERVER_TYPES, false)
    }

    /// Canonical JSON encoding.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The timeline event this frame carries, if it is one.
    pub fn into_timeline(self) -> Option<TimelineEvent> {
        Some(match self {
            ServerFrame::Message(x) => TimelineEvent::Message(x),
            ServerFrame::Edit(x) => TimelineEvent::Edit(x),
            ServerFrame::Delete(x) => TimelineEvent::Delete(x),
            ServerFrame::Reaction(x) => TimelineEvent::Reaction(x),
            ServerFrame::Read(x) => TimelineEvent::Read(x),
            ServerFrame::AgentRun(x) => TimelineEvent::AgentRun(x),
            ServerFrame::ToolCall(x) => TimelineEvent::ToolCall(x),
            ServerFrame::ToolResult(x) => TimelineEvent::ToolResult(x),
            ServerFrame::ToolError(x) => TimelineEvent::ToolError(x),
            ServerFrame::ApprovalRequest(x) => TimelineEvent::ApprovalRequest(x),
            ServerFrame::ApprovalDecision(x) => TimelineEvent::ApprovalDecision(x),
            _ => return None,
        })
    }

    /// The wire `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Welcome(_) => "welcome",
            ServerFrame::History(_) => "history",
            ServerFrame::Replay(_) => "replay",
            ServerFrame::SubscriptionSucceeded(_) => "subscription_succeeded",
            ServerFrame::Ack(_) => "ack",
            ServerFrame::Error(_) => "error",
            ServerFrame::Pong(_) => "pong",
            ServerFrame::TokenRefreshed(_) => "token_refreshed",
            ServerFrame::Typing(_) => "typing",
            ServerFrame::AgentTyping(_) => "agentTyping",
            ServerFrame::Presence(_) => "presence",
            ServerFrame::MemberJoined(_) => "member_joined",
            ServerFrame::MemberLeft(_) => "member_left",
            ServerFrame::Batch(_) => "batch",
            other => match other.clone().into_timeline() {
                Some(t) => t.type_name(),
                None => "unknown",
            },
        }
    }
}
