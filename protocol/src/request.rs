//! Request parsing and validation shared by the server shells (native `fluxy-server` and the
//! Durable Object worker): query parameters of the HTTP routes and of the WebSocket handshake,
//! the `Authorization` header, request-body rules and the membership rules of the routes.
//!
//! Everything here is I/O-free: functions take the decoded query map (`name → value`, as both
//! shells build it), header values and decoded bodies, and return plain values or a
//! [`RequestError`] that each shell turns into its own error response (through [`ErrorBody`]).
//! These are helpers, not wire types: nothing here appears in the JSON Schemas.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::codes::{CloseCode, ErrorCode};
use crate::common::{
    format_timestamp, is_valid_id, MemberRole, RoomType, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT,
};
use crate::cursor::{Cursor, CursorError};
use crate::decode::DecodeError;
use crate::http::{
    CreateRoomRequest, Direction, ErrorBody, TokenClaimsSummary, TokenRequest, TokenResponse,
};
use crate::jwt::{self, Claims, KNOWN_ROLES};
use crate::server::ErrorFrame;

/// A decoded query string: parameter name → value.
pub type Query = HashMap<String, String>;

/// A rejected request: the error code, a human-readable message and the offending field or
/// parameter, if any. Converts into an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The error code (its HTTP status is [`ErrorCode::http_status`]).
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// The body field or query parameter at fault.
    pub field: Option<String>,
}

impl RequestError {
    /// An error with `code` and `message`, naming no field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An error naming the offending `field`.
    pub fn with_field(
        code: ErrorCode,
        message: impl Into<String>,
        field: impl Into<String>,
    ) -> RequestError {
        RequestError {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<RequestError> for ErrorBody {
    fn from(e: RequestError) -> ErrorBody {
        let mut b = ErrorBody::new(e.code, e.message);
        b.field = e.field;
        b
    }
}

impl From<DecodeError> for ErrorBody {
    /// A body that failed to decode or validate: its code, message and field.
    fn from(e: DecodeError) -> ErrorBody {
        let mut b = ErrorBody::new(e.code(), e.to_string());
        b.field = e.field().map(str::to_owned);
        b
    }
}

impl From<ErrorFrame> for ErrorBody {
    /// An engine error frame answered over HTTP: the same fields.
    fn from(e: ErrorFrame) -> ErrorBody {
        ErrorBody {
            error: e.code,
            message: e.message,
            retryable: e.retryable,
            retry_after_ms: e.retry_after_ms,
            field: e.field,
        }
    }
}

// ------------------------------------------------------------------------ query values

/// The page size `limit` `[FX-HIS-5]`: absent means [`DEFAULT_PAGE_LIMIT`] (50), values above
/// [`MAX_PAGE_LIMIT`] (500) are clamped, and a value below 1 or not an integer is rejected
/// with `invalid_frame` naming `limit`.
pub fn parse_limit(q: &Query) -> Result<u32, RequestError> {
    match q.get("limit") {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 1 => {
                Ok(u32::try_from(n.min(i64::from(MAX_PAGE_LIMIT))).unwrap_or(MAX_PAGE_LIMIT))
            }
            _ => Err(RequestError::with_field(
                ErrorCode::InvalidFrame,
                "limit must be an integer >= 1",
                "limit",
            )),
        },
    }
}

/// An optional non-negative integer parameter (`afterSeq`, `timeoutMs`): absent is `None`,
/// anything but a `u64` is rejected with `invalid_frame` naming the parameter.
pub fn parse_u64(q: &Query, name: &str) -> Result<Option<u64>, RequestError> {
    match q.get(name) {
        None => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            RequestError::with_field(
                ErrorCode::InvalidFrame,
                format!("{name} must be a non-negative integer"),
                name,
            )
        }),
    }
}

/// A non-empty `cursor` parameter (an empty one counts as absent).
fn cursor_param(q: &Query) -> Option<&str> {
    q.get("cursor")
        .map(String::as_str)
        .filter(|c| !c.is_empty())
}

/// The time in a legacy `before` parameter that is not a cursor `[FX-HIS-8]`: an ISO 8601
/// UTC timestamp, as the canonical `YYYY-MM-DDTHH:MM:SS.mmmZ` or the forms older clients
/// send (no fraction, or a fraction of another length, truncated to milliseconds). Epoch ms.
pub fn legacy_before_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(ms) = crate::common::parse_timestamp(s) {
        return Some(ms);
    }
    let body = s.strip_suffix('Z')?;
    let (main, frac) = body.split_once('.').unwrap_or((body, ""));
    // Any number of fraction digits: those past milliseconds are truncated [FX-HIS-11].
    if main.len() != 19 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ms = frac.to_owned();
    ms.truncate(3);
    while ms.len() < 3 {
        ms.push('0');
    }
    crate::common::parse_timestamp(&format!("{main}.{ms}Z"))
}

/// Decode a pagination cursor for `tenant`/`room` `[FX-HIS-4]`; a bad one is rejected with
/// `invalid_cursor` naming `field`.
///
/// `skip_signature` serves the deliberate `cursor-unsigned` fault of the conformance
/// self-test only: a cursor whose signature does not verify is then read without it (and
/// without the room check). Servers pass `false`.
pub fn decode_cursor(
    s: &str,
    key: &[u8],
    tenant: &str,
    room: &str,
    field: &str,
    skip_signature: bool,
) -> Result<Cursor, RequestError> {
    let bad =
        |e: CursorError| RequestError::with_field(ErrorCode::InvalidCursor, e.to_string(), field);
    match Cursor::decode(s, key, tenant, room) {
        Ok(c) => Ok(c),
        Err(CursorError::BadSignature) if skip_signature => {
            unsigned_cursor(s).ok_or_else(|| bad(CursorError::Malformed))
        }
        Err(e) => Err(bad(e)),
    }
}

/// Read a cursor's payload without checking its signature (the `cursor-unsigned` fault).
fn unsigned_cursor(s: &str) -> Option<Cursor> {
    let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
    let p = raw.get(..raw.len().checked_sub(16)?)?;
    let direction = if *p.get(1)? == 1 {
        Direction::Forward
    } else {
        Direction::Backward
    };
    let seq = u64::from_be_bytes(p.get(2..10)?.try_into().ok()?);
    let tl = *p.get(10)? as usize;
    let tenant = String::from_utf8(p.get(11..11 + tl)?.to_vec()).ok()?;
    let rl = *p.get(11 + tl)? as usize;
    let room = String::from_utf8(p.get(12 + tl..12 + tl + rl)?.to_vec()).ok()?;
    Some(Cursor {
        tenant,
        room,
        seq,
        direction,
    })
}

// ----------------------------------------------------------------------------- routes

/// The query of `GET /rooms/{roomId}/history`, before the cursor is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery<'a> {
    /// Page size ([`parse_limit`]).
    pub limit: u32,
    /// Direction of the page without a cursor.
    pub direction: Direction,
    /// Without a cursor: the exclusive lower bound of a forward page (`afterSeq`, default 0);
    /// `None` for a backward page, which starts at the newest event.
    pub start: Option<u64>,
    /// The non-empty `cursor` parameter; when present it decides direction and position.
    pub cursor: Option<&'a str>,
}

impl<'a> HistoryQuery<'a> {
    /// Parse `limit`, `direction`, `afterSeq` and `cursor`, in that order `[FX-HIS-2]`
    /// `[FX-HIS-5]`. `direction` is `backward` (the default) or `forward`, anything else is
    /// `invalid_frame` naming `direction`; `afterSeq` without `direction` means a forward page
    /// after it, while an explicit `direction=backward` ignores `afterSeq`.
    pub fn parse(q: &'a Query) -> Result<HistoryQuery<'a>, RequestError> {
        let limit = parse_limit(q)?;
        let explicit = match q.get("direction").map(String::as_str) {
            None => None,
            Some("backward") => Some(Direction::Backward),
            Some("forward") => Some(Direction::Forward),
            Some(_) => {
                return Err(RequestError::with_field(
                    ErrorCode::InvalidFrame,
                    "direction must be backward or forward",
                    "direction",
                ))
            }
        };
        let after = parse_u64(q, "afterSeq")?;
        let direction = match (explicit, after) {
            (Some(d), _) => d,
            (None, Some(_)) => Direction::Forward,
            (None, None) => Direction::Backward,
        };
        let start = match direction {
            Direction::Backward => None,
            Direction::Forward => Some(after.unwrap_or(0)),
        };
        Ok(HistoryQuery {
            limit,
            direction,
            start,
            cursor: cursor_param(q),
        })
    }
}

/// The query of `GET /rooms/{roomId}/poll`, before the cursor is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollQuery<'a> {
    /// Page size ([`parse_limit`]).
    pub limit: u32,
    /// How long to wait for a commit: `timeoutMs`, default 25000, at most 30000.
    pub timeout_ms: u64,
    /// `afterSeq`, default 0.
    pub after: u64,
    /// The non-empty `cursor` parameter; when present its seq replaces `after`.
    pub cursor: Option<&'a str>,
}

impl<'a> PollQuery<'a> {
    /// Parse `limit`, `timeoutMs`, `afterSeq` and `cursor`, in that order `[FX-TRN-7]`
    /// `[FX-HIS-5]`.
    pub fn parse(q: &'a Query) -> Result<PollQuery<'a>, RequestError> {
        Ok(PollQuery {
            limit: parse_limit(q)?,
            timeout_ms: parse_u64(q, "timeoutMs")?.unwrap_or(25_000).min(30_000),
            after: parse_u64(q, "afterSeq")?.unwrap_or(0),
            cursor: cursor_param(q),
        })
    }
}

/// The required `roomId` of the legacy route `GET /api/messages` `[FX-HIS-8]`; a missing one
/// is `invalid_frame` naming `roomId`.
pub fn legacy_room_id(q: &Query) -> Result<&str, RequestError> {
    q.get("roomId").map(String::as_str).ok_or_else(|| {
        RequestError::with_field(ErrorCode::InvalidFrame, "roomId is required", "roomId")
    })
}

/// The SSE resume position `[FX-TRN-3]`: the `Last-Event-ID` header (`header`), else the
/// query parameter `lastEventId`; blank is `None`, anything but a seq is `invalid_cursor`
/// naming `lastEventId`.
pub fn last_event_id(header: Option<&str>, q: &Query) -> Result<Option<u64>, RequestError> {
    let Some(s) = header.or_else(|| q.get("lastEventId").map(String::as_str)) else {
        return Ok(None);
    };
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<u64>().map(Some).map_err(|_| {
        RequestError::with_field(
            ErrorCode::InvalidCursor,
            "Last-Event-ID must be a seq",
            "lastEventId",
        )
    })
}

/// Whether an `Accept` header admits `text/event-stream`: absent, empty, `*/*`, `text/*` or
/// `text/event-stream` (parameters ignored, case-insensitive).
pub fn accepts_event_stream(accept: Option<&str>) -> bool {
    let Some(a) = accept else {
        return true;
    };
    a.split(',').any(|p| {
        let m = p
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        m == "text/event-stream" || m == "*/*" || m == "text/*" || m.is_empty()
    })
}

// ------------------------------------------------------------------------------- auth

/// The token of a `Bearer` `Authorization` header value (scheme case-insensitive, token
/// trimmed).
pub fn bearer_token(authorization: Option<&str>) -> Option<String> {
    let (scheme, tok) = authorization?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| tok.trim().to_owned())
}

/// The token of a request `[FX-AUTH-8]` `[FX-HS-1]`: the `Authorization: Bearer` header
/// first, else the query parameter `token`.
pub fn request_token(authorization: Option<&str>, q: &Query) -> Option<String> {
    bearer_token(authorization).or_else(|| q.get("token").cloned())
}

/// Reject an invalid user id (`invalid_frame` naming `userId`).
pub fn check_user_id(user_id: &str) -> Result<(), RequestError> {
    if is_valid_id(user_id) {
        Ok(())
    } else {
        Err(RequestError::with_field(
            ErrorCode::InvalidFrame,
            "invalid userId",
            "userId",
        ))
    }
}

/// What `POST /auth/token` grants for a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The granted roles.
    pub roles: Vec<String>,
    /// The token lifetime in seconds.
    pub ttl_seconds: u64,
}

/// Validate a `TokenRequest` `[FX-AUTH-2]`: `userId` must be a valid id, empty `roles` become
/// `["member"]`, an unknown role is `invalid_frame` naming `roles` (adjacent repeats are
/// dropped), and `ttlSeconds` is clamped to 60–86400 (default 3600).
pub fn token_grant(req: &TokenRequest) -> Result<TokenGrant, RequestError> {
    check_user_id(&req.user_id)?;
    let mut roles = if req.roles.is_empty() {
        vec!["member".to_owned()]
    } else {
        req.roles.clone()
    };
    if let Some(bad) = roles.iter().find(|r| !KNOWN_ROLES.contains(&r.as_str())) {
        return Err(RequestError::with_field(
            ErrorCode::InvalidFrame,
            format!("unknown role `{bad}`"),
            "roles",
        ));
    }
    roles.dedup();
    Ok(TokenGrant {
        roles,
        ttl_seconds: req.ttl_seconds.unwrap_or(3600).clamp(60, 86_400),
    })
}

impl TokenGrant {
    /// Sign the token for `user_id` in `tenant`, issued at `now` (Unix seconds) and valid for
    /// the granted lifetime `[FX-AUTH-1]`, and build the `TokenResponse`.
    pub fn issue(self, user_id: String, tenant: String, now: u64, secret: &[u8]) -> TokenResponse {
        let exp = now + self.ttl_seconds;
        let claims = Claims {
            sub: user_id,
            tid: tenant,
            roles: self.roles,
            exp,
            iat: Some(now),
            nbf: None,
        };
        TokenResponse {
            token: jwt::sign(&claims, secret),
            expires_in: self.ttl_seconds,
            expires_at: format_timestamp(exp * 1000),
            claims: TokenClaimsSummary {
                sub: claims.sub,
                tid: claims.tid,
                roles: claims.roles,
            },
        }
    }
}

/// Validate a `CreateRoomRequest`, in this order: a given `id` must be a valid id (`id`), the
/// `name` must have 1–256 characters (`name`), every member must have a valid user id
/// (`members`). All are `invalid_frame`. An absent `id` is left for the server to generate.
pub fn check_create_room(req: &CreateRoomRequest) -> Result<(), RequestError> {
    if req.id.as_deref().is_some_and(|id| !is_valid_id(id)) {
        return Err(RequestError::with_field(
            ErrorCode::InvalidFrame,
            "invalid room id",
            "id",
        ));
    }
    let n = req.name.chars().count();
    if n == 0 || n > 256 {
        return Err(RequestError::with_field(
            ErrorCode::InvalidFrame,
            "name must be 1-256 characters",
            "name",
        ));
    }
    if let Some(m) = req.members.iter().find(|m| !is_valid_id(&m.user_id)) {
        return Err(RequestError::with_field(
            ErrorCode::InvalidFrame,
            format!("invalid member `{}`", m.user_id),
            "members",
        ));
    }
    Ok(())
}

/// Whether the token has role `owner` or `admin` (tenant-wide privileges).
pub fn privileged(claims: &Claims) -> bool {
    claims.has_role("owner") || claims.has_role("admin")
}

/// Membership rule of connecting, reading and sending `[FX-AUTH-11]` `[FX-HIS-7]`: a member
/// (`role` is the caller's room role), a public room, or a token with role `owner`/`admin`;
/// otherwise `not_member`.
pub fn check_room_access(
    claims: &Claims,
    room_type: RoomType,
    role: Option<MemberRole>,
) -> Result<(), RequestError> {
    if role.is_none() && room_type != RoomType::Public && !privileged(claims) {
        return Err(RequestError::new(
            ErrorCode::NotMember,
            "not a member of this room",
        ));
    }
    Ok(())
}

/// Who may add or remove members: a privileged token or a room owner or admin; anyone may
/// remove themselves (`removing` is the user being removed, `None` when adding). Otherwise
/// `forbidden`.
pub fn check_member_management(
    claims: &Claims,
    role: Option<MemberRole>,
    removing: Option<&str>,
) -> Result<(), RequestError> {
    let manager = privileged(claims) || matches!(role, Some(MemberRole::Owner | MemberRole::Admin));
    if manager || removing.is_some_and(|u| u == claims.sub) {
        Ok(())
    } else {
        Err(RequestError::new(
            ErrorCode::Forbidden,
            "only room owners and admins manage members",
        ))
    }
}

// -------------------------------------------------------------------------- WebSocket

/// The close code of a WebSocket handshake that failed with `code` `[FX-HS-3]`: 4005 for
/// `token_expired`, 4004 for `unauthorized`, 4404 for `not_found`, 4003 for `not_member` and
/// `forbidden`, 4009 for `unsupported_version`, otherwise 1011 (internal error).
pub fn handshake_close_code(code: ErrorCode) -> CloseCode {
    match code {
        ErrorCode::TokenExpired => CloseCode::TokenExpired,
        ErrorCode::Unauthorized => CloseCode::Unauthorized,
        ErrorCode::NotFound => CloseCode::RoomNotFound,
        ErrorCode::NotMember | ErrorCode::Forbidden => CloseCode::Forbidden,
        ErrorCode::UnsupportedVersion => CloseCode::UnsupportedVersion,
        _ => CloseCode::InternalError,
    }
}

/// Reject a WebSocket handshake that asks for another major version than 1 `[FX-VER-2]`
/// (`unsupported_version`, close code 4009); `v=1` and an absent `v` pass.
pub fn check_version(q: &Query) -> Result<(), RequestError> {
    match q.get("v") {
        Some(v) if v != "1" => Err(RequestError::new(
            ErrorCode::UnsupportedVersion,
            "only protocol version 1 is supported",
        )),
        _ => Ok(()),
    }
}

/// The connect options of the WebSocket handshake query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeQuery {
    /// Send the `history` snapshot: false for `replay` = `off`, `false` or `0`.
    pub replay: bool,
    /// Snapshot size: `replayLimit` (alias `historyLimit`), default 50, at most 500; a value
    /// that is not a `u32` counts as absent.
    pub replay_limit: u32,
    /// `lastSeq`, to replay from at connect; a value that is not a `u64` counts as absent.
    pub last_seq: Option<u64>,
    /// `batch=1`: the connection opts in to `batch` frames.
    pub batch: bool,
    /// `replay` is `connect`, `true` or `1` (FluxyChat's SDK): the `history` frame also
    /// carries FluxyChat's `messages` and `reactions` `[FX-CMP-1]`.
    pub compat: bool,
}

impl HandshakeQuery {
    /// Read the connect options `[FX-HS-6]` `[FX-HS-7]` `[FX-TRN-9]`. Never fails: invalid
    /// values fall back to the defaults.
    pub fn parse(q: &Query) -> HandshakeQuery {
        HandshakeQuery {
            replay: !matches!(
                q.get("replay").map(String::as_str),
                Some("off" | "false" | "0")
            ),
            replay_limit: q
                .get("replayLimit")
                .or_else(|| q.get("historyLimit"))
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(DEFAULT_PAGE_LIMIT)
                .min(MAX_PAGE_LIMIT),
            last_seq: q.get("lastSeq").and_then(|s| s.parse::<u64>().ok()),
            batch: q.get("batch").map(String::as_str) == Some("1"),
            compat: matches!(
                q.get("replay").map(String::as_str),
                Some("connect" | "true" | "1")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MemberSpec;

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn limit(v: &str) -> Result<u32, RequestError> {
        parse_limit(&query(&[("limit", v)]))
    }

    fn claims(roles: &[&str]) -> Claims {
        Claims {
            sub: "u1".into(),
            tid: "t1".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: 0,
            iat: None,
            nbf: None,
        }
    }

    #[test]
    fn limit_defaults_clamps_and_rejects() {
        assert_eq!(parse_limit(&query(&[])), Ok(50));
        assert_eq!(limit("1"), Ok(1));
        assert_eq!(limit("500"), Ok(500));
        assert_eq!(limit("501"), Ok(500));
        assert_eq!(limit("9223372036854775807"), Ok(500));
        for bad in ["0", "-1", "abc", "1.5", "", " 5", "99999999999999999999"] {
            let e = limit(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidFrame, "{bad:?}");
            assert_eq!(e.field.as_deref(), Some("limit"), "{bad:?}");
            assert_eq!(e.message, "limit must be an integer >= 1");
        }
    }

    #[test]
    fn u64_parameters() {
        let q = query(&[("afterSeq", "7"), ("timeoutMs", "-1")]);
        assert_eq!(parse_u64(&q, "afterSeq"), Ok(Some(7)));
        assert_eq!(parse_u64(&q, "missing"), Ok(None));
        let e = parse_u64(&q, "timeoutMs").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidFrame);
        assert_eq!(e.field.as_deref(), Some("timeoutMs"));
        assert_eq!(e.message, "timeoutMs must be a non-negative integer");
        assert!(parse_u64(&query(&[("afterSeq", "1.0")]), "afterSeq").is_err());
    }

    #[test]
    fn history_direction_and_start() {
        let h = |pairs: &[(&str, &str)]| {
            let q = query(pairs);
            HistoryQuery::parse(&q).map(|h| (h.limit, h.direction, h.start, h.cursor.is_some()))
        };
        assert_eq!(h(&[]), Ok((50, Direction::Backward, None, false)));
        assert_eq!(
            h(&[("direction", "forward")]),
            Ok((50, Direction::Forward, Some(0), false))
        );
        assert_eq!(
            h(&[("afterSeq", "9")]),
            Ok((50, Direction::Forward, Some(9), false))
        );
        assert_eq!(
            h(&[("direction", "forward"), ("afterSeq", "9")]),
            Ok((50, Direction::Forward, Some(9), false))
        );
        // An explicit backward direction ignores afterSeq.
        assert_eq!(
            h(&[("direction", "backward"), ("afterSeq", "9")]),
            Ok((50, Direction::Backward, None, false))
        );
        assert_eq!(
            h(&[("cursor", ""), ("limit", "3")]),
            Ok((3, Direction::Backward, None, false))
        );
        assert_eq!(
            h(&[("cursor", "abc")]),
            Ok((50, Direction::Backward, None, true))
        );
        let e = h(&[("direction", "up")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("direction"));
        // limit is checked before direction, direction before afterSeq.
        let e = h(&[("direction", "up"), ("limit", "0")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limit"));
        let e = h(&[("direction", "up"), ("afterSeq", "x")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("direction"));
        let e = h(&[("afterSeq", "-1")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("afterSeq"));
    }

    #[test]
    fn poll_defaults_and_clamp() {
        let q = query(&[]);
        let p = PollQuery::parse(&q).unwrap();
        assert_eq!(
            (p.limit, p.timeout_ms, p.after, p.cursor),
            (50, 25_000, 0, None)
        );
        let q = query(&[("timeoutMs", "99999"), ("afterSeq", "4"), ("cursor", "c")]);
        let p = PollQuery::parse(&q).unwrap();
        assert_eq!(
            (p.limit, p.timeout_ms, p.after, p.cursor),
            (50, 30_000, 4, Some("c"))
        );
        let q = query(&[("timeoutMs", "0")]);
        assert_eq!(PollQuery::parse(&q).unwrap().timeout_ms, 0);
        let q = query(&[("timeoutMs", "soon"), ("limit", "abc")]);
        assert_eq!(
            PollQuery::parse(&q).unwrap_err().field.as_deref(),
            Some("limit")
        );
    }

    #[test]
    fn cursors() {
        let key = b"k".as_slice();
        let c = Cursor {
            tenant: "t".into(),
            room: "r".into(),
            seq: 42,
            direction: Direction::Forward,
        };
        let s = c.encode(key);
        assert_eq!(
            decode_cursor(&s, key, "t", "r", "cursor", false),
            Ok(c.clone())
        );
        let e = decode_cursor(&s, key, "t", "other", "before", false).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCursor);
        assert_eq!(e.field.as_deref(), Some("before"));
        // Signed with another key: rejected, unless the signature is skipped.
        let e = decode_cursor(&s, b"other", "t", "r", "cursor", false).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCursor);
        assert_eq!(decode_cursor(&s, b"other", "t", "r", "cursor", true), Ok(c));
        for bad in ["", "!!", "abc"] {
            let e = decode_cursor(bad, key, "t", "r", "cursor", true).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidCursor);
            assert_eq!(e.field.as_deref(), Some("cursor"));
        }
    }

    #[test]
    fn legacy_room() {
        assert_eq!(legacy_room_id(&query(&[("roomId", "r1")])), Ok("r1"));
        let e = legacy_room_id(&query(&[])).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidFrame, Some("roomId"))
        );
    }

    #[test]
    fn sse_resume_position_and_accept() {
        let none = query(&[]);
        assert_eq!(last_event_id(None, &none), Ok(None));
        assert_eq!(last_event_id(Some(" 12 "), &none), Ok(Some(12)));
        assert_eq!(last_event_id(Some("  "), &none), Ok(None));
        let q = query(&[("lastEventId", "5")]);
        assert_eq!(last_event_id(None, &q), Ok(Some(5)));
        // The header wins, even when blank.
        assert_eq!(last_event_id(Some("7"), &q), Ok(Some(7)));
        assert_eq!(last_event_id(Some(""), &q), Ok(None));
        let e = last_event_id(Some("-3"), &none).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidCursor, Some("lastEventId"))
        );

        assert!(accepts_event_stream(None));
        assert!(accepts_event_stream(Some("")));
        assert!(accepts_event_stream(Some("Text/Event-Stream; q=1")));
        assert!(accepts_event_stream(Some("application/json, */*;q=0.1")));
        assert!(accepts_event_stream(Some("text/*")));
        assert!(!accepts_event_stream(Some("application/json")));
    }

    #[test]
    fn tokens() {
        assert_eq!(bearer_token(Some("Bearer  abc ")), Some("abc".into()));
        assert_eq!(bearer_token(Some("bearer x")), Some("x".into()));
        assert_eq!(bearer_token(Some("Basic x")), None);
        assert_eq!(bearer_token(Some("Bearer")), None);
        assert_eq!(bearer_token(None), None);
        let q = query(&[("token", "q")]);
        assert_eq!(request_token(Some("Bearer h"), &q), Some("h".into()));
        assert_eq!(request_token(Some("Basic h"), &q), Some("q".into()));
        assert_eq!(request_token(None, &query(&[])), None);
    }

    #[test]
    fn token_requests() {
        let req = |user: &str, roles: &[&str], ttl: Option<u64>| TokenRequest {
            user_id: user.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ttl_seconds: ttl,
        };
        let g = token_grant(&req("u1", &[], None)).unwrap();
        assert_eq!(g.roles, ["member"]);
        assert_eq!(g.ttl_seconds, 3600);
        assert_eq!(
            token_grant(&req("u1", &[], Some(1))).unwrap().ttl_seconds,
            60
        );
        assert_eq!(
            token_grant(&req("u1", &[], Some(999_999)))
                .unwrap()
                .ttl_seconds,
            86_400
        );
        let g = token_grant(&req("u1", &["admin", "admin", "agent"], None)).unwrap();
        assert_eq!(g.roles, ["admin", "agent"]);
        let e = token_grant(&req("u1", &["root"], None)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("roles"));
        assert_eq!(e.message, "unknown role `root`");
        let e = token_grant(&req("bad id", &["root"], None)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("userId"));

        let grant = token_grant(&req("u1", &["admin"], Some(120))).unwrap();
        let r = grant.issue("u1".into(), "t1".into(), 1_000, b"s");
        assert_eq!(
            (r.expires_in, r.expires_at.as_str()),
            (120, "1970-01-01T00:18:40.000Z")
        );
        assert_eq!(
            (r.claims.sub.as_str(), r.claims.tid.as_str(), r.claims.roles),
            ("u1", "t1", vec!["admin".to_owned()])
        );
        let c = jwt::verify(&r.token, 1_000, |t| (t == "t1").then(|| b"s".to_vec())).unwrap();
        assert_eq!((c.exp, c.iat, c.nbf), (1_120, Some(1_000), None));
    }

    #[test]
    fn create_room_requests() {
        let req = |id: Option<&str>, name: &str, member: &str| CreateRoomRequest {
            id: id.map(str::to_owned),
            name: name.into(),
            room_type: None,
            members: vec![MemberSpec {
                user_id: member.into(),
                role: None,
            }],
        };
        assert_eq!(check_create_room(&req(None, "n", "u2")), Ok(()));
        assert_eq!(
            check_create_room(&req(Some("r1"), &"é".repeat(256), "u2")),
            Ok(())
        );
        let field = |r: CreateRoomRequest| check_create_room(&r).unwrap_err().field;
        assert_eq!(field(req(Some("a/b"), "", "x y")), Some("id".into()));
        assert_eq!(field(req(None, "", "x y")), Some("name".into()));
        assert_eq!(
            field(req(None, &"a".repeat(257), "u2")),
            Some("name".into())
        );
        assert_eq!(field(req(None, "n", "x y")), Some("members".into()));
    }

    #[test]
    fn membership_rules() {
        let member = claims(&["member"]);
        let admin = claims(&["admin"]);
        assert!(check_room_access(&member, RoomType::Group, Some(MemberRole::Member)).is_ok());
        assert!(check_room_access(&member, RoomType::Public, None).is_ok());
        assert!(check_room_access(&admin, RoomType::Dm, None).is_ok());
        let e = check_room_access(&member, RoomType::Group, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotMember);

        assert!(check_member_management(&admin, None, None).is_ok());
        assert!(check_member_management(&member, Some(MemberRole::Owner), None).is_ok());
        assert!(check_member_management(&member, Some(MemberRole::Admin), Some("u9")).is_ok());
        assert!(check_member_management(&member, Some(MemberRole::Member), Some("u1")).is_ok());
        let e =
            check_member_management(&member, Some(MemberRole::Moderator), Some("u9")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(check_member_management(&member, Some(MemberRole::Member), None).is_err());
    }

    #[test]
    fn handshake_close_codes() {
        let close = |c| handshake_close_code(c).code();
        assert_eq!(close(ErrorCode::TokenExpired), 4005);
        assert_eq!(close(ErrorCode::Unauthorized), 4004);
        assert_eq!(close(ErrorCode::NotFound), 4404);
        assert_eq!(close(ErrorCode::NotMember), 4003);
        assert_eq!(close(ErrorCode::Forbidden), 4003);
        assert_eq!(close(ErrorCode::UnsupportedVersion), 4009);
        assert_eq!(close(ErrorCode::InternalError), 1011);
    }

    #[test]
    fn handshake_query() {
        assert_eq!(check_version(&query(&[])), Ok(()));
        assert_eq!(check_version(&query(&[("v", "1")])), Ok(()));
        let e = check_version(&query(&[("v", "2")])).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);

        let d = HandshakeQuery::parse(&query(&[]));
        assert_eq!(
            d,
            HandshakeQuery {
                replay: true,
                replay_limit: 50,
                last_seq: None,
                batch: false,
                compat: false,
            }
        );
        for compat in ["connect", "true", "1"] {
            let h = HandshakeQuery::parse(&query(&[("replay", compat)]));
            assert!(h.replay && h.compat, "{compat}");
        }
        for plain in ["on", "", "CONNECT", "yes", "off", "0", "false"] {
            assert!(
                !HandshakeQuery::parse(&query(&[("replay", plain)])).compat,
                "{plain}"
            );
        }
        for off in ["off", "false", "0"] {
            assert!(!HandshakeQuery::parse(&query(&[("replay", off)])).replay);
        }
        for on in ["on", "true", "1", "", "OFF"] {
            assert!(HandshakeQuery::parse(&query(&[("replay", on)])).replay);
        }
        let h = |pairs: &[(&str, &str)]| HandshakeQuery::parse(&query(pairs));
        assert_eq!(h(&[("replayLimit", "7")]).replay_limit, 7);
        assert_eq!(h(&[("historyLimit", "8")]).replay_limit, 8);
        assert_eq!(
            h(&[("replayLimit", "7"), ("historyLimit", "8")]).replay_limit,
            7
        );
        assert_eq!(h(&[("replayLimit", "9999")]).replay_limit, 500);
        assert_eq!(h(&[("replayLimit", "0")]).replay_limit, 0);
        assert_eq!(h(&[("replayLimit", "-1")]).replay_limit, 50);
        // An unparsable replayLimit does not fall through to historyLimit.
        assert_eq!(
            h(&[("replayLimit", "x"), ("historyLimit", "8")]).replay_limit,
            50
        );
        assert_eq!(h(&[("lastSeq", "12")]).last_seq, Some(12));
        assert_eq!(h(&[("lastSeq", "-1")]).last_seq, None);
        assert!(h(&[("batch", "1")]).batch);
        assert!(!h(&[("batch", "true")]).batch);
    }

    #[test]
    fn error_bodies() {
        let b = ErrorBody::from(RequestError::with_field(
            ErrorCode::InvalidFrame,
            "m",
            "limit",
        ));
        assert_eq!(
            (b.error, b.message.as_str(), b.field.as_deref(), b.retryable),
            (ErrorCode::InvalidFrame, "m", Some("limit"), false)
        );
        let mut f = ErrorFrame::new(ErrorCode::RateLimited, "slow");
        f.retry_after_ms = Some(5);
        let b = ErrorBody::from(f);
        assert_eq!(b.retry_after_ms, Some(5));
        assert_eq!(b.retryable, ErrorCode::RateLimited.retryable());
    }

    #[test]
    fn legacy_before_accepts_iso_forms_old_clients_send() {
        let exact = legacy_before_time("2024-01-02T03:04:05.678Z");
        assert_eq!(exact, Some(1_704_164_645_678));
        assert_eq!(
            legacy_before_time("2024-01-02T03:04:05Z"),
            Some(1_704_164_645_000)
        );
        assert_eq!(
            legacy_before_time("2024-01-02T03:04:05.6Z"),
            Some(1_704_164_645_600)
        );
        assert_eq!(
            legacy_before_time("2024-01-02T03:04:05.678901Z"),
            Some(1_704_164_645_678)
        );
        assert_eq!(
            legacy_before_time("2024-01-02T03:04:05.678901234567Z"),
            Some(1_704_164_645_678)
        );
        for bad in [
            "",
            "yesterday",
            "2024-01-02",
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05.x Z",
            "2024-01-02T03:04:05.12345678x0Z",
        ] {
            assert_eq!(legacy_before_time(bad), None, "{bad}");
        }
    }
}
