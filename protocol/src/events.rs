//! Timeline events: everything that gets a per-room `seq` (spec areas ORD, MSG, EDT, AGT).
//!
//! The same JSON object is delivered live, in the connect snapshot, in `replay`, in history
//! pages, over SSE and over long-polling `[FX-ORD-5]`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Attachment, Decision, ReactionOp, RunStatus};

/// A chat message as created (or as started, for a streamed message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "MessageEvent")]
pub struct MessageEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Message id: equal to the `seq` of the event that created it, unique within the room.
    #[schemars(range(min = 1))]
    pub id: u64,
    /// Room id.
    pub room_id: String,
    /// Author, always the `sub` of the author's verified token.
    pub user_id: String,
    /// Same as `userId` (FluxyChat compatibility).
    pub sender_id: String,
    /// Content, trimmed.
    pub content: String,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
    /// Message this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<u64>,
    /// The sender's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// Attachments, at most 10.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub attachments: Vec<Attachment>,
    /// Content version; 1 at creation.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// True while the message is being streamed.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub streaming: bool,
}

/// A message's content changed (edit, or a stream delta or end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "EditEvent")]
pub struct EditEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// The edited message's id.
    pub id: u64,
    /// Room id.
    pub room_id: String,
    /// Who edited (the author).
    pub user_id: String,
    /// New content.
    pub content: String,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub edited_at: String,
    /// New version, previous plus one.
    #[schemars(range(min = 2))]
    pub version: u32,
    /// True for a stream delta, false otherwise.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub streaming: bool,
}

/// A message was deleted (soft delete: it leaves history, the event stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "DeleteEvent")]
pub struct DeleteEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// The deleted message's id.
    pub id: u64,
    /// Room id.
    pub room_id: String,
    /// Who deleted it.
    pub user_id: String,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub deleted_at: String,
    /// New version, previous plus one.
    pub version: u32,
}

/// A reaction was added or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ReactionEvent")]
pub struct ReactionEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// Who reacted.
    pub user_id: String,
    /// The message reacted to.
    pub message_id: u64,
    /// The emoji.
    pub emoji: String,
    /// Add or remove.
    pub op: ReactionOp,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// A user's read position advanced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ReadEvent")]
pub struct ReadEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// Reader.
    pub user_id: String,
    /// Newest message read.
    pub message_id: u64,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// An agent's run changed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "AgentRunEvent")]
pub struct AgentRunEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// The agent (its token's `sub`).
    pub agent_id: String,
    /// Run id chosen by the agent.
    pub run_id: String,
    /// New status.
    pub status: RunStatus,
    /// Failure description for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// An agent called a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ToolCallEvent")]
pub struct ToolCallEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// The agent.
    pub agent_id: String,
    /// The run this call belongs to.
    pub run_id: String,
    /// Unique within the run.
    pub tool_call_id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as a JSON text.
    pub arguments: String,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// A tool call returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ToolResultEvent")]
pub struct ToolResultEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// The agent.
    pub agent_id: String,
    /// The run.
    pub run_id: String,
    /// The call this result answers.
    pub tool_call_id: String,
    /// Result as text (often JSON).
    pub result: String,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// A tool call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ToolErrorEvent")]
pub struct ToolErrorEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// The agent.
    pub agent_id: String,
    /// The run.
    pub run_id: String,
    /// The failed call.
    pub tool_call_id: String,
    /// Error description.
    pub error: String,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// An agent asks a human to approve something before proceeding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ApprovalRequestEvent")]
pub struct ApprovalRequestEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// The agent.
    pub agent_id: String,
    /// The run.
    pub run_id: String,
    /// Unique within the run.
    pub approval_id: String,
    /// The tool call awaiting approval, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// What is being asked.
    pub prompt: String,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// A human answered an approval request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ApprovalDecisionEvent", transform = agent_id_required)]
pub struct ApprovalDecisionEvent {
    /// Per-room sequence number of this event.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// Room id.
    pub room_id: String,
    /// Who decided.
    pub user_id: String,
    /// The agent whose request this answers `[FX-AGT-12]`. Required on the wire; decoding
    /// tolerates its absence (empty), as in events stored before the clause existed.
    #[serde(default)]
    pub agent_id: String,
    /// The run.
    pub run_id: String,
    /// The request answered.
    pub approval_id: String,
    /// The decision.
    pub decision: Decision,
    /// Optional explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Server commit time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// `agentId` of an [`ApprovalDecisionEvent`] is required on the wire `[FX-AGT-12]`; the decoder's
/// `default` (for events stored before the clause) is not part of the schema.
fn agent_id_required(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::Object(props)) = schema.get_mut("properties") {
        if let Some(serde_json::Value::Object(p)) = props.get_mut("agentId") {
            p.remove("default");
        }
    }
    if let Some(serde_json::Value::Array(req)) = schema.get_mut("required") {
        if !req.iter().any(|v| v == "agentId") {
            let at = req
                .iter()
                .position(|v| v == "userId")
                .map_or(req.len(), |i| i + 1);
            req.insert(at, "agentId".into());
        }
    }
}

/// Any timeline event, tagged by `type` `[FX-ORD-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
#[schemars(title = "TimelineEvent")]
#[schemars(extend("type" = "object", "discriminator" = {"propertyName": "type"}))]
pub enum TimelineEvent {
    /// `message`
    #[serde(rename = "message")]
    Message(MessageEvent),
    /// `edit`
    #[serde(rename = "edit")]
    Edit(EditEvent),
    /// `delete`
    #[serde(rename = "delete")]
    Delete(DeleteEvent),
    /// `reaction`
    #[serde(rename = "reaction")]
    Reaction(ReactionEvent),
    /// `read`
    #[serde(rename = "read")]
    Read(ReadEvent),
    /// `agentRun`
    #[serde(rename = "agentRun")]
    AgentRun(AgentRunEvent),
    /// `tool_call`
    #[serde(rename = "tool_call")]
    ToolCall(ToolCallEvent),
    /// `tool_result`
    #[serde(rename = "tool_result")]
    ToolResult(ToolResultEvent),
    /// `tool_error`
    #[serde(rename = "tool_error")]
    ToolError(ToolErrorEvent),
    /// `approval_request`
    #[serde(rename = "approval_request")]
    ApprovalRequest(ApprovalRequestEvent),
    /// `approval_decision`
    #[serde(rename = "approval_decision")]
    ApprovalDecision(ApprovalDecisionEvent),
}

/// The `type` strings of every timeline event.
pub const TIMELINE_TYPES: &[&str] = &[
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
];

impl TimelineEvent {
    /// The event's `seq`.
    pub fn seq(&self) -> u64 {
        match self {
            TimelineEvent::Message(e) => e.seq,
            TimelineEvent::Edit(e) => e.seq,
            TimelineEvent::Delete(e) => e.seq,
            TimelineEvent::Reaction(e) => e.seq,
            TimelineEvent::Read(e) => e.seq,
            TimelineEvent::AgentRun(e) => e.seq,
            TimelineEvent::ToolCall(e) => e.seq,
            TimelineEvent::ToolResult(e) => e.seq,
            TimelineEvent::ToolError(e) => e.seq,
            TimelineEvent::ApprovalRequest(e) => e.seq,
            TimelineEvent::ApprovalDecision(e) => e.seq,
        }
    }

    /// The event's room id.
    pub fn room_id(&self) -> &str {
        match self {
            TimelineEvent::Message(e) => &e.room_id,
            TimelineEvent::Edit(e) => &e.room_id,
            TimelineEvent::Delete(e) => &e.room_id,
            TimelineEvent::Reaction(e) => &e.room_id,
            TimelineEvent::Read(e) => &e.room_id,
            TimelineEvent::AgentRun(e) => &e.room_id,
            TimelineEvent::ToolCall(e) => &e.room_id,
            TimelineEvent::ToolResult(e) => &e.room_id,
            TimelineEvent::ToolError(e) => &e.room_id,
            TimelineEvent::ApprovalRequest(e) => &e.room_id,
            TimelineEvent::ApprovalDecision(e) => &e.room_id,
        }
    }

    /// The identity that caused the event (`userId` or `agentId`).
    pub fn actor(&self) -> &str {
        match self {
            TimelineEvent::Message(e) => &e.user_id,
            TimelineEvent::Edit(e) => &e.user_id,
            TimelineEvent::Delete(e) => &e.user_id,
            TimelineEvent::Reaction(e) => &e.user_id,
            TimelineEvent::Read(e) => &e.user_id,
            TimelineEvent::AgentRun(e) => &e.agent_id,
            TimelineEvent::ToolCall(e) => &e.agent_id,
            TimelineEvent::ToolResult(e) => &e.agent_id,
            TimelineEvent::ToolError(e) => &e.agent_id,
            TimelineEvent::ApprovalRequest(e) => &e.agent_id,
            TimelineEvent::ApprovalDecision(e) => &e.user_id,
        }
    }

    /// The wire `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            TimelineEvent::Message(_) => "message",
            TimelineEvent::Edit(_) => "edit",
            TimelineEvent::Delete(_) => "delete",
            TimelineEvent::Reaction(_) => "reaction",
            TimelineEvent::Read(_) => "read",
            TimelineEvent::AgentRun(_) => "agentRun",
            TimelineEvent::ToolCall(_) => "tool_call",
            TimelineEvent::ToolResult(_) => "tool_result",
            TimelineEvent::ToolError(_) => "tool_error",
            TimelineEvent::ApprovalRequest(_) => "approval_request",
            TimelineEvent::ApprovalDecision(_) => "approval_decision",
        }
    }

    /// Decode one timeline event (as found in `history`, `replay`, history pages, SSE `data:`).
    /// Never panics; no size limit is applied.
    pub fn decode(text: &str) -> Result<TimelineEvent, crate::decode::DecodeError> {
        crate::decode::decode_tagged::<TimelineEvent>(text, TIMELINE_TYPES, false)
    }

    /// Canonical JSON encoding.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
