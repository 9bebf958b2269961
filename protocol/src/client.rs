//! Client → server WebSocket frames (spec areas FRM, MSG, EDT, PRE, RES, AGT, AUTH).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    is_valid_client_message_id, is_valid_content, Attachment, Decision, ReactionOp, RunStatus,
    StreamOp, TypingIntent, MAX_AGENT_ID_CHARS, MAX_AGENT_PAYLOAD_CHARS, MAX_ATTACHMENTS,
    MAX_CONTENT_CHARS, MAX_EMOJI_CHARS,
};
use crate::decode::{DecodeError, FieldProblem};

/// `ping`: liveness probe; the server answers `pong` `[FX-FRM-8]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "PingFrame")]
pub struct PingFrame {
    /// Client clock, echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

/// `message`: post a chat message `[FX-MSG-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "SendMessageFrame")]
pub struct SendMessageFrame {
    /// Text, 1–4000 characters after trimming.
    #[schemars(length(min = 1, max = 4000))]
    pub content: String,
    /// Idempotency key `[FX-ACK-2]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{8,128}$"))]
    pub client_message_id: Option<String>,
    /// Message replied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<u64>,
    /// Attachments.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 10))]
    pub attachments: Vec<Attachment>,
    /// Correlation id echoed in `ack` and `error` `[FX-FRM-7]`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `edit`: replace a message's content (author only) `[FX-EDT-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "EditFrame")]
pub struct EditFrame {
    /// Message to edit.
    pub message_id: u64,
    /// New content.
    #[schemars(length(min = 1, max = 4000))]
    pub content: String,
    /// Optimistic concurrency: fail with `conflict` unless the current version matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u32>,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{8,128}$"))]
    pub client_message_id: Option<String>,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `delete`: soft-delete a message (author or owner/admin/moderator) `[FX-EDT-3]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "DeleteFrame")]
pub struct DeleteFrame {
    /// Message to delete.
    pub message_id: u64,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{8,128}$"))]
    pub client_message_id: Option<String>,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `reaction`: add or remove an emoji reaction `[FX-EDT-5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ReactionFrame")]
pub struct ReactionFrame {
    /// Message reacted to.
    pub message_id: u64,
    /// Emoji, 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    pub emoji: String,
    /// Add (default) or remove.
    #[serde(default, deserialize_with = "crate::common::null_as_default")]
    pub op: ReactionOp,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `read`: advance the caller's read position `[FX-EDT-8]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ReadFrame")]
pub struct ReadFrame {
    /// Newest message read.
    pub message_id: u64,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `typing`: ephemeral typing indicator `[FX-PRE-5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "TypingFrame")]
pub struct TypingFrame {
    /// Whether the user is typing.
    pub is_typing: bool,
    /// Optional intent; forced to `idle` when not typing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<TypingIntent>,
}

/// `resume`: replay every timeline event after `lastSeq` `[FX-RES-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ResumeFrame")]
pub struct ResumeFrame {
    /// Highest `seq` the client has applied (0 for none).
    pub last_seq: u64,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `stream`: write a message incrementally `[FX-AGT-8]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "StreamFrame")]
#[schemars(extend(
    "if" = { "properties": { "op": { "enum": ["delta", "end", "abort"] } }, "required": ["op"] },
    "then" = {
        "required": ["messageId"],
        "properties": { "messageId": { "type": "integer" } },
        "if": { "properties": { "op": { "enum": ["delta", "end"] } } },
        "then": {
            "required": ["content"],
            "properties": { "content": { "type": "string", "minLength": 1 } }
        }
    }
))]
pub struct StreamFrame {
    /// Operation.
    pub op: StreamOp,
    /// Full content so far (start: may be empty; delta and end: 1–4000 characters).
    #[serde(default, deserialize_with = "crate::common::null_as_default")]
    #[schemars(length(max = 4000))]
    pub content: String,
    /// The streamed message (required for delta, end and abort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<u64>,
    /// Reply target, for start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<u64>,
    /// Idempotency key, for start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{8,128}$"))]
    pub client_message_id: Option<String>,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `agentRun`: an agent run changes status (agent role only) `[FX-AGT-3]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "AgentRunFrame")]
pub struct AgentRunFrame {
    /// Run id.
    #[schemars(length(min = 1, max = 128))]
    pub run_id: String,
    /// New status.
    pub status: RunStatus,
    /// Failure description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16000))]
    pub error: Option<String>,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `tool_call`: an agent calls a tool (agent role only) `[FX-AGT-4]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ToolCallFrame")]
pub struct ToolCallFrame {
    /// Run id (the run must be started and not finished).
    #[schemars(length(min = 1, max = 128))]
    pub run_id: String,
    /// Unique within the run.
    #[schemars(length(min = 1, max = 128))]
    pub tool_call_id: String,
    /// Tool name.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Arguments as JSON text.
    #[serde(default, deserialize_with = "crate::common::null_as_default")]
    #[schemars(length(max = 16000))]
    pub arguments: String,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `tool_result`: a pending tool call returned (agent role only) `[FX-AGT-5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ToolResultFrame")]
pub struct ToolResultFrame {
    /// Run id.
    #[schemars(length(min = 1, max = 128))]
    pub run_id: String,
    /// The pending call.
    #[schemars(length(min = 1, max = 128))]
    pub tool_call_id: String,
    /// Result text.
    #[schemars(length(max = 16000))]
    pub result: String,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `tool_error`: a pending tool call failed (agent role only) `[FX-AGT-5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ToolErrorFrame")]
pub struct ToolErrorFrame {
    /// Run id.
    #[schemars(length(min = 1, max = 128))]
    pub run_id: String,
    /// The pending call.
    #[schemars(length(min = 1, max = 128))]
    pub tool_call_id: String,
    /// Error text.
    #[schemars(length(min = 1, max = 16000))]
    pub error: String,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `approval_request`: an agent asks for human approval (agent role only) `[FX-AGT-6]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ApprovalRequestFrame")]
pub struct ApprovalRequestFrame {
    /// Run id.
    #[schemars(length(min = 1, max = 128))]
    pub run_id: String,
    /// Unique within the run.
    #[schemars(length(min = 1, max = 128))]
    pub approval_id: String,
    /// Tool call waiting on the approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub tool_call_id: Option<String>,
    /// Question shown to humans.
    #[schemars(length(min = 1, max = 4000))]
    pub prompt: String,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `approval_decision`: a human answers a pending approval (non-agent members) `[FX-AGT-7]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ApprovalDecisionFrame")]
pub struct ApprovalDecisionFrame {
    /// Run id.
    #[schemars(length(min = 1, max = 128))]
    pub run_id: String,
    /// The pending request.
    #[schemars(length(min = 1, max = 128))]
    pub approval_id: String,
    /// The agent whose request this answers; required only when several agents have a
    /// pending request with these ids `[FX-AGT-12]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub agent_id: Option<String>,
    /// Decision.
    pub decision: Decision,
    /// Optional explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4000))]
    pub reason: Option<String>,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// `agentTyping`: ephemeral agent typing indicator (agent role only) `[FX-AGT-9]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "AgentTypingFrame")]
pub struct AgentTypingFrame {
    /// Whether the agent is producing output.
    pub is_typing: bool,
}

/// `auth`: replace the connection's token without reconnecting `[FX-AUTH-9]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "AuthFrame")]
pub struct AuthFrame {
    /// A fresh token for the same `sub` and `tid`.
    #[schemars(length(min = 1, max = 8192))]
    pub token: String,
    /// Correlation id.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
}

/// Every client → server frame, tagged by `type` `[FX-FRM-2]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
#[schemars(title = "ClientFrame")]
#[schemars(extend("type" = "object", "discriminator" = {"propertyName": "type"}))]
pub enum ClientFrame {
    /// `ping`
    #[serde(rename = "ping")]
    Ping(PingFrame),
    /// `message`
    #[serde(rename = "message")]
    Message(SendMessageFrame),
    /// `edit`
    #[serde(rename = "edit")]
    Edit(EditFrame),
    /// `delete`
    #[serde(rename = "delete")]
    Delete(DeleteFrame),
    /// `reaction`
    #[serde(rename = "reaction")]
    Reaction(ReactionFrame),
    /// `read`
    #[serde(rename = "read")]
    Read(ReadFrame),
    /// `typing`
    #[serde(rename = "typing")]
    Typing(TypingFrame),
    /// `resume`
    #[serde(rename = "resume")]
    Resume(ResumeFrame),
    /// `stream`
    #[serde(rename = "stream")]
    Stream(StreamFrame),
    /// `agentRun`
    #[serde(rename = "agentRun")]
    AgentRun(AgentRunFrame),
    /// `tool_call`
    #[serde(rename = "tool_call")]
    ToolCall(ToolCallFrame),
    /// `tool_result`
    #[serde(rename = "tool_result")]
    ToolResult(ToolResultFrame),
    /// `tool_error`
    #[serde(rename = "tool_error")]
    ToolError(ToolErrorFrame),
    /// `approval_request`
    #[serde(rename = "approval_request")]
    ApprovalRequest(ApprovalRequestFrame),
    /// `approval_decision`
    #[serde(rename = "approval_decision")]
    ApprovalDecision(ApprovalDecisionFrame),
    /// `agentTyping`
    #[serde(rename = "agentTyping")]
    AgentTyping(AgentTypingFrame),
    /// `auth`
    #[serde(rename = "auth")]
    Auth(AuthFrame),
}

/// The `type` strings of every client frame.
pub const CLIENT_TYPES: &[&str] = &[
    "ping",
    "message",
    "edit",
    "delete",
    "reaction",
    "read",
    "typing",
    "resume",
    "stream",
    "agentRun",
    "tool_call",
    "tool_result",
    "tool_error",
    "approval_request",
    "approval_decision",
    "agentTyping",
    "auth",
];

fn check_cmid(field: &'static str, v: &Option<String>) -> Result<(), DecodeError> {
    match v {
        Some(s) if !is_valid_client_message_id(s) => Err(DecodeError::invalid(
            field,
            FieldProblem::Pattern("^[A-Za-z0-9_-]{8,128}$"),
        )),
        _ => Ok(()),
    }
}

fn check_ref(v: &Option<String>) -> Result<(), DecodeError> {
    match v {
        Some(s) if s.is_empty() || s.len() > 128 => {
            Err(DecodeError::invalid("ref", FieldProblem::Length(1, 128)))
        }
        _ => Ok(()),
    }
}

fn check_len(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), DecodeError> {
    let n = s.chars().count();
    if n < min || n > max {
        Err(DecodeError::invalid(field, FieldProblem::Length(min, max)))
    } else {
        Ok(())
    }
}

fn check_content(s: &str) -> Result<(), DecodeError> {
    if is_valid_content(s) {
        Ok(())
    } else {
        Err(DecodeError::invalid(
            "content",
            FieldProblem::Content(MAX_CONTENT_CHARS),
        ))
    }
}

impl ClientFrame {
    /// The wire `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Ping(_) => "ping",
            ClientFrame::Message(_) => "message",
            ClientFrame::Edit(_) => "edit",
            ClientFrame::Delete(_) => "delete",
            ClientFrame::Reaction(_) => "reaction",
            ClientFrame::Read(_) => "read",
            ClientFrame::Typing(_) => "typing",
            ClientFrame::Resume(_) => "resume",
            ClientFrame::Stream(_) => "stream",
            ClientFrame::AgentRun(_) => "agentRun",
            ClientFrame::ToolCall(_) => "tool_call",
            ClientFrame::ToolResult(_) => "tool_result",
            ClientFrame::ToolError(_) => "tool_error",
            ClientFrame::ApprovalRequest(_) => "approval_request",
            ClientFrame::ApprovalDecision(_) => "approval_decision",
            ClientFrame::AgentTyping(_) => "agentTyping",
            ClientFrame::Auth(_) => "auth",
        }
    }

    /// The correlation id (`ref`) if the frame carries one.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Message(f) => f.reference.as_deref(),
            ClientFrame::Edit(f) => f.reference.as_deref(),
            ClientFrame::Delete(f) => f.reference.as_deref(),
            ClientFrame::Reaction(f) => f.reference.as_deref(),
            ClientFrame::Read(f) => f.reference.as_deref(),
            ClientFrame::Resume(f) => f.reference.as_deref(),
            ClientFrame::Stream(f) => f.reference.as_deref(),
            ClientFrame::AgentRun(f) => f.reference.as_deref(),
            ClientFrame::ToolCall(f) => f.reference.as_deref(),
            ClientFrame::ToolResult(f) => f.reference.as_deref(),
            ClientFrame::ToolError(f) => f.reference.as_deref(),
            ClientFrame::ApprovalRequest(f) => f.reference.as_deref(),
            ClientFrame::ApprovalDecision(f) => f.reference.as_deref(),
            ClientFrame::Auth(f) => f.reference.as_deref(),
            ClientFrame::Ping(_) | ClientFrame::Typing(_) | ClientFrame::AgentTyping(_) => None,
        }
    }

    /// Decode one text frame: size check, JSON, `type`, fields, then value rules.
    /// Never panics; see [`DecodeError`] for the error classes `[FX-FRM-3]`.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        crate::decode::decode_tagged::<ClientFrame>(text, CLIENT_TYPES, true)
            .and_then(|f| f.validate().map(|_| f))
    }

    /// Canonical JSON encoding (field order as declared, absent optionals omitted).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Check value rules that the JSON shape alone cannot express.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_ref(&self.reference().map(str::to_owned))?;
        match self {
            ClientFrame::Ping(_) | ClientFrame::Typing(_) | ClientFrame::AgentTyping(_) => Ok(()),
            ClientFrame::Resume(_) | ClientFrame::Read(_) => Ok(()),
            ClientFrame::Message(f) => {
                check_content(&f.content)?;
                check_cmid("clientMessageId", &f.client_message_id)?;
                if f.attachments.len() > MAX_ATTACHMENTS {
                    return Err(DecodeError::invalid(
                        "attachments",
                        FieldProblem::Length(0, MAX_ATTACHMENTS),
                    ));
                }
                if !f.attachments.iter().all(Attachment::is_valid) {
                    return Err(DecodeError::invalid(
                        "attachments",
                        FieldProblem::Pattern("^https?://"),
                    ));
                }
                Ok(())
            }
            ClientFrame::Edit(f) => {
                check_content(&f.content)?;
                check_cmid("clientMessageId", &f.client_message_id)
            }
            ClientFrame::Delete(f) => check_cmid("clientMessageId", &f.client_message_id),
            ClientFrame::Reaction(f) => {
                let t = f.emoji.trim();
                if t.is_empty() || t != f.emoji {
                    return Err(DecodeError::invalid(
                        "emoji",
                        FieldProblem::Length(1, MAX_EMOJI_CHARS),
                    ));
                }
                check_len("emoji", &f.emoji, 1, MAX_EMOJI_CHARS)
            }
            ClientFrame::Stream(f) => {
                check_cmid("clientMessageId", &f.client_message_id)?;
                match f.op {
                    StreamOp::Start => check_len("content", &f.content, 0, MAX_CONTENT_CHARS),
                    StreamOp::Delta | StreamOp::End => {
                        if f.message_id.is_none() {
                            return Err(DecodeError::MissingField("messageId".into()));
                        }
                        check_content(&f.content)
                    }
                    StreamOp::Abort => {
                        if f.message_id.is_none() {
                            return Err(DecodeError::MissingField("messageId".into()));
                        }
                        Ok(())
                    }
                }
            }
            ClientFrame::AgentRun(f) => {
                check_len("runId", &f.run_id, 1, MAX_AGENT_ID_CHARS)?;
                if let Some(e) = &f.error {
                    check_len("error", e, 0, MAX_AGENT_PAYLOAD_CHARS)?;
                }
                Ok(())
            }
            ClientFrame::ToolCall(f) => {
                check_len("runId", &f.run_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("toolCallId", &f.tool_call_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("name", &f.name, 1, MAX_AGENT_ID_CHARS)?;
                check_len("arguments", &f.arguments, 0, MAX_AGENT_PAYLOAD_CHARS)
            }
            ClientFrame::ToolResult(f) => {
                check_len("runId", &f.run_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("toolCallId", &f.tool_call_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("result", &f.result, 0, MAX_AGENT_PAYLOAD_CHARS)
            }
            ClientFrame::ToolError(f) => {
                check_len("runId", &f.run_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("toolCallId", &f.tool_call_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("error", &f.error, 1, MAX_AGENT_PAYLOAD_CHARS)
            }
            ClientFrame::ApprovalRequest(f) => {
                check_len("runId", &f.run_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("approvalId", &f.approval_id, 1, MAX_AGENT_ID_CHARS)?;
                if let Some(t) = &f.tool_call_id {
                    check_len("toolCallId", t, 1, MAX_AGENT_ID_CHARS)?;
                }
                check_len("prompt", &f.prompt, 1, MAX_CONTENT_CHARS)
            }
            ClientFrame::ApprovalDecision(f) => {
                check_len("runId", &f.run_id, 1, MAX_AGENT_ID_CHARS)?;
                check_len("approvalId", &f.approval_id, 1, MAX_AGENT_ID_CHARS)?;
                if let Some(r) = &f.reason {
                    check_len("reason", r, 0, MAX_CONTENT_CHARS)?;
                }
                Ok(())
            }
            ClientFrame::Auth(f) => check_len("token", &f.token, 1, 8192),
        }
    }
}
