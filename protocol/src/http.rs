//! HTTP request, response and error bodies (spec areas AUTH, TEN, HIS, TRN, MSG).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::common::{Attachment, MemberRole, RoomType};
use crate::events::{MessageEvent, TimelineEvent};

/// Body of every HTTP error response `[FX-ERR-4]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "ErrorBody")]
pub struct ErrorBody {
    /// Machine-readable code (FluxyChat kept its error string here too).
    pub error: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Whether the identical request may succeed later.
    pub retryable: bool,
    /// Wait at least this long before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Offending field or parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error body with `retryable` taken from the code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: code,
            message: message.into(),
            retryable: code.retryable(),
            retry_after_ms: None,
            field: None,
        }
    }
}

/// `POST /auth/token` request (authenticated by `X-Fluxy-Api-Key`) `[FX-AUTH-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "TokenRequest")]
pub struct TokenRequest {
    /// The user to mint a token for (becomes `sub`).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,128}$"))]
    pub user_id: String,
    /// Roles: any of `owner`, `admin`, `moderator`, `member`, `agent`; default `["member"]`.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub roles: Vec<String>,
    /// Lifetime in seconds, clamped to 60–86400; default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// Claims echoed in a token response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "TokenClaimsSummary")]
pub struct TokenClaimsSummary {
    /// User id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Roles.
    pub roles: Vec<String>,
}

/// `POST /auth/token` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "TokenResponse")]
pub struct TokenResponse {
    /// HS256 JWT.
    pub token: String,
    /// Seconds until expiry (after clamping).
    pub expires_in: u64,
    /// Expiry time.
    #[schemars(with = "crate::common::Timestamp")]
    pub expires_at: String,
    /// The claims minted.
    pub claims: TokenClaimsSummary,
}

/// A member to add when creating a room, or `POST /rooms/{roomId}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "MemberSpec")]
pub struct MemberSpec {
    /// User id.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,128}$"))]
    pub user_id: String,
    /// Role in the room; default `member`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<MemberRole>,
}

/// `POST /rooms` request `[FX-TEN-4]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "CreateRoomRequest")]
pub struct CreateRoomRequest {
    /// Room id; generated when absent. Scoped by tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,128}$"))]
    pub id: Option<String>,
    /// Display name, 1–256 characters.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Room type; default `group`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub room_type: Option<RoomType>,
    /// Initial members besides the creator (who becomes `owner`).
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub members: Vec<MemberSpec>,
}

/// A room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "Room")]
pub struct Room {
    /// Room id (unique within the tenant).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Room type.
    #[serde(rename = "type")]
    pub room_type: RoomType,
    /// Creator.
    pub created_by: String,
    /// Creation time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
}

/// `POST /rooms` and `GET /rooms/{roomId}` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "RoomResponse")]
pub struct RoomResponse {
    /// The room.
    pub room: Room,
}

/// `GET /rooms` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "RoomListResponse")]
pub struct RoomListResponse {
    /// Rooms the caller is a member of, by id.
    pub rooms: Vec<Room>,
}

/// A room member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "Member")]
pub struct Member {
    /// User id.
    pub user_id: String,
    /// Role in the room.
    pub role: MemberRole,
    /// When the user joined.
    #[schemars(with = "crate::common::Timestamp")]
    pub joined_at: String,
}

/// `GET /rooms/{roomId}/members` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "MembersResponse")]
pub struct MembersResponse {
    /// Members sorted by user id.
    pub members: Vec<Member>,
}

/// `POST /rooms/{roomId}/members` and `DELETE …/members/{userId}` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "MemberResponse")]
pub struct MemberResponse {
    /// Always true.
    pub ok: bool,
    /// Room id.
    pub room_id: String,
    /// User id.
    pub user_id: String,
    /// Role (absent after removal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<MemberRole>,
}

/// `POST /messages` request: REST send with the socket's sequencing and idempotency `[FX-MSG-6]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "PostMessageRequest")]
pub struct PostMessageRequest {
    /// Room id.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,128}$"))]
    pub room_id: String,
    /// Content, 1–4000 characters after trimming.
    #[schemars(length(min = 1, max = 4000))]
    pub content: String,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{8,128}$"))]
    pub client_message_id: Option<String>,
    /// Reply target (FluxyChat's `replyTo` is accepted as an alias).
    #[serde(default, alias = "replyTo", skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<u64>,
    /// Attachments, at most 10.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 10))]
    pub attachments: Vec<Attachment>,
}

/// `POST /messages` response (201 created, 200 for an idempotent repeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "PostMessageResponse")]
pub struct PostMessageResponse {
    /// The stored message event, identical to the one broadcast (including `"type": "message"`).
    #[serde(with = "tagged_message")]
    #[schemars(with = "MessageEvent")]
    pub message: MessageEvent,
    /// True when the key was seen before and nothing new was stored.
    #[serde(
        default,
        deserialize_with = "crate::common::null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub duplicate: bool,
}

/// (De)serializes a [`MessageEvent`] exactly as broadcast, with its `"type": "message"` tag
/// first `[FX-MSG-6]`, `[FX-ORD-5]`. On input the tag may be absent; any other tag is an error.
mod tagged_message {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    use crate::events::MessageEvent;

    #[derive(Serialize)]
    #[serde(tag = "type")]
    enum Tagged<'a> {
        #[serde(rename = "message")]
        Message(&'a MessageEvent),
    }

    pub(super) fn serialize<S: Serializer>(m: &MessageEvent, s: S) -> Result<S::Ok, S::Error> {
        Tagged::Message(m).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MessageEvent, D::Error> {
        let v = Value::deserialize(d)?;
        match v.get("type") {
            None => {}
            Some(Value::String(t)) if t == "message" => {}
            Some(other) => {
                return Err(serde::de::Error::custom(format!(
                    "expected a `message` event, got type {other}"
                )))
            }
        }
        MessageEvent::deserialize(v).map_err(serde::de::Error::custom)
    }
}

/// Direction of a history page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Older events first (from the newest backwards); the default.
    #[default]
    Backward,
    /// Newer events (from the oldest, or after a cursor, forwards).
    Forward,
}

/// `GET /rooms/{roomId}/history` and `GET /rooms/{roomId}/poll` response `[FX-HIS-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "HistoryPage")]
pub struct HistoryPage {
    /// Room id.
    pub room_id: String,
    /// Events of this page, always ascending by `seq`.
    pub events: Vec<TimelineEvent>,
    /// True when another page exists in the page's direction.
    pub has_more: bool,
    /// Cursor for the next page in the same direction; absent when there is none
    /// (forward pages and polls always carry one, to wait for newer events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Highest committed `seq` when the page was read.
    pub current_seq: u64,
}

/// A message's current state, as in FluxyChat's history rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "MessageRecord", transform = always_sent_nullable)]
pub struct MessageRecord {
    /// Message id.
    pub id: u64,
    /// Room id.
    pub room_id: String,
    /// Author.
    pub user_id: String,
    /// Same as `userId`.
    pub sender_id: String,
    /// Current content.
    pub content: String,
    /// Creation time.
    #[schemars(with = "crate::common::Timestamp")]
    pub created_at: String,
    /// Reply target.
    pub parent_id: Option<u64>,
    /// Last edit time.
    #[schemars(with = "Option<crate::common::Timestamp>")]
    pub edited_at: Option<String>,
    /// `seq` of the creating event (equal to `id`).
    pub seq: u64,
    /// Current version.
    pub version: u32,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// Attachments.
    #[serde(default, deserialize_with = "crate::common::null_as_default")]
    pub attachments: Vec<Attachment>,
}

/// FluxyChat's reaction counts: message id (as a string) → emoji → number of users.
pub type ReactionCounts =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;

/// `parentId` and `editedAt` of a [`MessageRecord`] are always sent, as `null` when unset
/// (FluxyChat's row shape): the schema lists them as required and nullable, so generated
/// encoders keep the explicit `null`.
fn always_sent_nullable(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::Array(req)) = schema.get_mut("required") {
        for name in ["parentId", "editedAt"] {
            if !req.iter().any(|v| v == name) {
                req.push(name.into());
            }
        }
    }
}

/// `GET /api/messages?roomId=&limit=&before=` response (FluxyChat compatible) `[FX-HIS-8]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "LegacyMessagesResponse")]
pub struct LegacyMessagesResponse {
    /// Live (not deleted) messages, newest first.
    pub messages: Vec<MessageRecord>,
    /// Reaction counts per message id, then per emoji.
    pub reactions: ReactionCounts,
    /// True when older messages exist.
    pub has_more: bool,
    /// Pass as `before` to get the next older page without skipping or repeating rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /health` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "HealthResponse")]
pub struct HealthResponse {
    /// True when storage is reachable.
    pub ok: bool,
    /// Server software version.
    pub version: String,
    /// Protocol version served.
    pub protocol_version: String,
    /// Server clock, epoch milliseconds.
    pub ts: u64,
}
