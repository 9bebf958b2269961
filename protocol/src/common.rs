//! Shared value types, identifier rules and limits (spec areas FRM, LIM).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Protocol version spoken by this crate `[FX-VER-1]`.
pub const PROTOCOL_VERSION: &str = "1.0";
/// Major version, as negotiated with `?v=` in the handshake `[FX-VER-2]`.
pub const PROTOCOL_MAJOR: u32 = 1;
/// WebSocket subprotocol name for v1 `[FX-VER-3]`.
pub const SUBPROTOCOL: &str = "fluxy.v1";

/// Regex (anchored) that room ids, user ids and tenant ids match `[FX-FRM-6]`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,128}$";
/// Regex (anchored) that `clientMessageId` values match `[FX-ACK-2]`.
pub const CLIENT_MESSAGE_ID_PATTERN: &str = "^[A-Za-z0-9_-]{8,128}$";
/// Maximum message content, in Unicode scalar values after trimming `[FX-LIM-2]`.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Maximum WebSocket text frame, in bytes of UTF-8 `[FX-LIM-1]`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Maximum HTTP request body, in bytes `[FX-LIM-1]`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Maximum page size for history and polling `[FX-HIS-5]`.
pub const MAX_PAGE_LIMIT: u32 = 500;
/// Default page size for history and polling `[FX-HIS-5]`.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
/// Maximum length of an emoji string `[FX-EDT-6]`.
pub const MAX_EMOJI_CHARS: usize = 64;
/// Maximum length of a tool name, run id, tool call id or approval id.
pub const MAX_AGENT_ID_CHARS: usize = 128;
/// Maximum length of tool arguments, results and errors, in characters.
pub const MAX_AGENT_PAYLOAD_CHARS: usize = 16_000;
/// Maximum number of attachments on one message.
pub const MAX_ATTACHMENTS: usize = 10;

/// Regex (anchored) of the only wire timestamp form `[FX-FRM-5]`, e.g. `2026-11-26T16:19:14.677Z`.
///
/// It accepts exactly what [`parse_timestamp`] accepts: month 01–12, day 01–31, hour 00–23,
/// minute and second 00–59, three fractional digits, `Z`.
pub const TIMESTAMP_PATTERN: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{3}Z$";

/// Schema-only name of the wire timestamp form `[FX-FRM-5]`: every timestamp field's schema is a
/// `$ref` to one named `Timestamp` definition, a string carrying [`TIMESTAMP_PATTERN`].
///
/// The Rust fields stay `String` (written by [`format_timestamp`]); fields opt in with
/// `#[schemars(with = "crate::common::Timestamp")]` (or `Option<…>`). The definition has no
/// `format: date-time` on purpose: code generators map that format to their language's native
/// date type, which re-encodes with six or no fractional digits and breaks FX-FRM-5; the
/// pattern is the whole rule (see `docs/sdk-authors.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp;

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "title": "Timestamp",
            "description": "RFC 3339 time in UTC with exactly three fractional digits and a `Z` suffix `[FX-FRM-5]`. Keep it a string: native date types re-encode with another number of digits.",
            "pattern": TIMESTAMP_PATTERN,
            "examples": ["2026-11-26T16:19:14.677Z"],
        })
    }
}

/// Deserialize a defaulted field, treating JSON `null` like an absent field `[FX-FRM-12]`.
///
/// Use with `#[serde(default, deserialize_with = "crate::common::null_as_default")]` on fields
/// that are not `Option` (lists, flags, enums with a default).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// True when `s` matches [`ID_PATTERN`].
pub fn is_valid_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True when `s` matches [`CLIENT_MESSAGE_ID_PATTERN`].
pub fn is_valid_client_message_id(s: &str) -> bool {
    (8..=128).contains(&s.len()) && is_valid_id(s)
}

/// True when `content`, trimmed, is 1..=[`MAX_CONTENT_CHARS`] characters `[FX-MSG-3]`.
pub fn is_valid_content(content: &str) -> bool {
    let t = content.trim();
    !t.is_empty() && t.chars().count() <= MAX_CONTENT_CHARS
}

/// Format milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-26T16:19:14.677Z`), the only timestamp form on the wire `[FX-FRM-5]`.
pub fn format_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mth = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mth <= 2 { y + 1 } else { y };
    format!("{y:04}-{mth:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

/// Parse the timestamp form produced by [`format_timestamp`] back to epoch milliseconds.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if mo > 2 { mo - 3 } else { mo + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = days * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(total * 1000 + ms).ok()
}

/// Room type, as in FluxyChat `[FX-TEN-4]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomType {
    /// Direct conversation between two users.
    Dm,
    /// Members-only group room (the default).
    #[default]
    Group,
    /// Any authenticated user of the tenant may join.
    Public,
    /// Only owners, admins and moderators may post.
    Announcement,
}

/// A member's role inside one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Created the room; full control.
    Owner,
    /// Manages members and moderates.
    Admin,
    /// Moderates content (edit is still author-only; delete is allowed).
    Moderator,
    /// Ordinary member (the default).
    #[default]
    Member,
}

/// Attachment reference on a message; the server stores and relays it, it does not fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "Attachment")]
pub struct Attachment {
    /// Absolute `http` or `https` URL.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub name: Option<String>,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub content_type: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

impl Attachment {
    /// True when the URL scheme and lengths satisfy the limits.
    pub fn is_valid(&self) -> bool {
        (self.url.starts_with("http://") || self.url.starts_with("https://"))
            && self.url.len() <= 2048
            && self.name.as_ref().is_none_or(|n| n.chars().count() <= 255)
            && self
                .content_type
                .as_ref()
                .is_none_or(|n| n.chars().count() <= 255)
    }
}

/// Typing intent, as in FluxyChat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TypingIntent {
    /// Writing a message.
    #[default]
    Composing,
    /// Looking at a thread.
    ViewingThread,
    /// Left the composer.
    Away,
    /// Not typing.
    Idle,
}

/// Reaction operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReactionOp {
    /// Add the reaction (the default).
    #[default]
    Add,
    /// Remove the reaction.
    Remove,
}

/// Streaming operation on an incrementally written message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamOp {
    /// Begin a streamed message; content may be empty.
    Start,
    /// Replace the content with the text so far.
    Delta,
    /// Final content; the message stops streaming.
    End,
    /// Abandon the stream; the message is deleted.
    Abort,
}

/// Lifecycle status of an agent run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The run began; must be the first status of a run.
    Started,
    /// The run finished successfully (terminal).
    Completed,
    /// The run failed (terminal).
    Failed,
    /// The run was cancelled (terminal).
    Cancelled,
}

impl RunStatus {
    /// Whether no further events may follow in this run.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Started)
    }
}

/// A human decision on an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The tool call may proceed.
    Approved,
    /// The tool call must not proceed.
    Denied,
}

/// Limits a server advertises in `welcome` `[FX-LIM-5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "Limits")]
pub struct Limits {
    /// Largest accepted text frame, in UTF-8 bytes.
    pub max_frame_bytes: u64,
    /// Largest accepted message content, in characters after trimming.
    pub max_content_chars: u64,
    /// Token-bucket capacity of client frames per connection.
    pub rate_burst: u64,
    /// Token-bucket refill, frames per second.
    pub rate_per_second: u64,
    /// How many most recent timeline events `resume` can replay.
    pub resume_window: u64,
    /// Most events in one `replay` or history page.
    pub max_page_limit: u64,
}
