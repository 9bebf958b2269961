//! Error codes and WebSocket close codes (spec area ERR).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Machine-readable error code, carried by `error` frames and HTTP error bodies.
///
/// The set is closed for protocol v1 `[FX-ERR-2]`: clients match on the code, never on the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body is not valid JSON, or not a JSON object.
    MalformedFrame,
    /// A field is missing, has the wrong JSON type or an invalid value.
    InvalidFrame,
    /// The frame `type` is not one this endpoint accepts.
    UnknownType,
    /// The frame or body exceeds the size limit.
    PayloadTooLarge,
    /// A binary WebSocket frame was received; protocol v1 is text-only.
    BinaryNotSupported,
    /// Message content is empty after trimming or longer than the content limit.
    InvalidContent,
    /// No credentials, or credentials that failed verification.
    Unauthorized,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The API key is unknown or revoked.
    InvalidApiKey,
    /// Authenticated, but not allowed to do this (role, authorship).
    Forbidden,
    /// Authenticated, but not a member of the room.
    NotMember,
    /// The room, message, run or route does not exist (for this tenant).
    NotFound,
    /// The request conflicts with current state (room id taken, message deleted).
    Conflict,
    /// The operation is not valid in the current state (no such tool call, no active stream).
    InvalidState,
    /// Too many requests; retry after `retryAfterMs`.
    RateLimited,
    /// The pagination cursor is malformed, forged, or belongs to another room or tenant.
    InvalidCursor,
    /// The server cannot replay from the requested position; fetch history and start over.
    ResyncRequired,
    /// The requested protocol version is not supported.
    UnsupportedVersion,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The `Accept` header excludes every representation of this route.
    NotAcceptable,
    /// The server failed; the request may or may not have been applied.
    InternalError,
    /// The server is temporarily unable to serve (shutting down, overloaded).
    Unavailable,
}

/// Every error code, in declaration order.
pub const ALL_ERROR_CODES: &[ErrorCode] = &[
    ErrorCode::MalformedFrame,
    ErrorCode::InvalidFrame,
    ErrorCode::UnknownType,
    ErrorCode::PayloadTooLarge,
    ErrorCode::BinaryNotSupported,
    ErrorCode::InvalidContent,
    ErrorCode::Unauthorized,
    ErrorCode::TokenExpired,
    ErrorCode::InvalidApiKey,
    ErrorCode::Forbidden,
    ErrorCode::NotMember,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::InvalidState,
    ErrorCode::RateLimited,
    ErrorCode::InvalidCursor,
    ErrorCode::ResyncRequired,
    ErrorCode::UnsupportedVersion,
    ErrorCode::MethodNotAllowed,
    ErrorCode::NotAcceptable,
    ErrorCode::InternalError,
    ErrorCode::Unavailable,
];

impl ErrorCode {
    /// The wire string of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::InvalidContent => "invalid_content",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::ResyncRequired => "resync_required",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NotAcceptable => "not_acceptable",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// HTTP status a server MUST use when this code is returned over HTTP `[FX-ERR-4]`.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::MalformedFrame
            | ErrorCode::InvalidFrame
            | ErrorCode::UnknownType
            | ErrorCode::BinaryNotSupported
            | ErrorCode::InvalidContent
            | ErrorCode::InvalidCursor => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::InvalidApiKey => 401,
            ErrorCode::Forbidden | ErrorCode::NotMember => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::NotAcceptable => 406,
            ErrorCode::Conflict | ErrorCode::InvalidState | ErrorCode::ResyncRequired => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedVersion => 426,
            ErrorCode::RateLimited => 429,
            ErrorCode::InternalError => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// Whether repeating the identical request can succeed later `[FX-ERR-3]`.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::InternalError | ErrorCode::Unavailable
        )
    }

    /// One-line meaning, as in the spec's error table.
    pub fn meaning(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "not valid JSON, or not a JSON object",
            ErrorCode::InvalidFrame => "a field is missing, mistyped or out of range",
            ErrorCode::UnknownType => "the frame type is not accepted here",
            ErrorCode::PayloadTooLarge => "the frame or body exceeds the size limit",
            ErrorCode::BinaryNotSupported => "binary frames are not part of protocol v1",
            ErrorCode::InvalidContent => "content empty after trimming or over the length limit",
            ErrorCode::Unauthorized => "missing or invalid credentials",
            ErrorCode::TokenExpired => "the token has expired",
            ErrorCode::InvalidApiKey => "unknown or revoked API key",
            ErrorCode::Forbidden => "not allowed for this identity or role",
            ErrorCode::NotMember => "not a member of the room",
            ErrorCode::NotFound => "no such room, message, run or route for this tenant",
            ErrorCode::Conflict => "conflicts with current state",
            ErrorCode::InvalidState => "not valid in the current state",
            ErrorCode::RateLimited => "too many requests; wait retryAfterMs",
            ErrorCode::InvalidCursor => "malformed, forged or foreign cursor",
            ErrorCode::ResyncRequired => "cannot replay from that position; refetch history",
            ErrorCode::UnsupportedVersion => "protocol version not supported",
            ErrorCode::MethodNotAllowed => "method not allowed on this route",
            ErrorCode::NotAcceptable => "no acceptable representation",
            ErrorCode::InternalError => {
                "server failure; outcome unknown, retry with the same idempotency key"
            }
            ErrorCode::Unavailable => "temporarily unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client should do after a close code `[FX-ERR-6]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloseAction {
    /// Reconnect (with backoff and jitter) and resume from the last seen `seq`.
    Reconnect,
    /// Obtain a new token first, then reconnect and resume.
    Reauthenticate,
    /// Do not reconnect automatically; surface the condition to the user.
    Stop,
}

/// WebSocket close codes used by protocol v1 `[FX-ERR-5]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure requested by either side.
    Normal,
    /// 1001: the server is shutting down or the room is moving.
    GoingAway,
    /// 1009: a frame exceeded the hard transport limit.
    MessageTooBig,
    /// 1011: unexpected server error.
    InternalError,
    /// 1012: the server is restarting.
    ServiceRestart,
    /// 4000: nothing was received within the idle timeout.
    HeartbeatTimeout,
    /// 4001: a moderator or administrator terminated the connection.
    Terminated,
    /// 4003: the user is not (or no longer) a member of the room.
    Forbidden,
    /// 4004: authentication failed (bad signature, algorithm, claims, unknown tenant).
    Unauthorized,
    /// 4005: the token expired while connected and was not refreshed.
    TokenExpired,
    /// 4008: the connection kept exceeding its rate limit.
    RateLimited,
    /// 4009: the requested protocol version is not supported.
    UnsupportedVersion,
    /// 4010: too many invalid frames on this connection.
    ProtocolViolation,
    /// 4004 is for auth; 4404: the room does not exist for this tenant.
    RoomNotFound,
}

/// Every close code, in declaration order.
pub const ALL_CLOSE_CODES: &[CloseCode] = &[
    CloseCode::Normal,
    CloseCode::GoingAway,
    CloseCode::MessageTooBig,
    CloseCode::InternalError,
    CloseCode::ServiceRestart,
    CloseCode::HeartbeatTimeout,
    CloseCode::Terminated,
    CloseCode::Forbidden,
    CloseCode::Unauthorized,
    CloseCode::TokenExpired,
    CloseCode::RateLimited,
    CloseCode::UnsupportedVersion,
    CloseCode::ProtocolViolation,
    CloseCode::RoomNotFound,
];

impl CloseCode {
    /// Numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::HeartbeatTimeout => 4000,
            CloseCode::Terminated => 4001,
            CloseCode::Forbidden => 4003,
            CloseCode::Unauthorized => 4004,
            CloseCode::TokenExpired => 4005,
            CloseCode::RateLimited => 4008,
            CloseCode::UnsupportedVersion => 4009,
            CloseCode::ProtocolViolation => 4010,
            CloseCode::RoomNotFound => 4404,
        }
    }

    /// The close reason string servers send with this code.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::ServiceRestart => "service_restart",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::Terminated => "terminated",
            CloseCode::Forbidden => "forbidden",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::UnsupportedVersion => "unsupported_version",
            CloseCode::ProtocolViolation => "protocol_violation",
            CloseCode::RoomNotFound => "room_not_found",
        }
    }

    /// What the client should do next.
    pub fn action(self) -> CloseAction {
        match self {
            CloseCode::Normal => CloseAction::Stop,
            CloseCode::GoingAway
            | CloseCode::MessageTooBig
            | CloseCode::InternalError
            | CloseCode::ServiceRestart
            | CloseCode::HeartbeatTimeout
            | CloseCode::RateLimited => CloseAction::Reconnect,
            CloseCode::Unauthorized | CloseCode::TokenExpired => CloseAction::Reauthenticate,
            CloseCode::Terminated
            | CloseCode::Forbidden
            | CloseCode::UnsupportedVersion
            | CloseCode::ProtocolViolation
            | CloseCode::RoomNotFound => CloseAction::Stop,
        }
    }

    /// Look a numeric code up.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        ALL_CLOSE_CODES.iter().copied().find(|c| c.code() == code)
    }
}
