//! HTTP routes: auth, rooms, members, messages, history, legacy, SSE, long-polling, health.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fluxy_protocol::common::{
    format_timestamp, is_valid_id, MemberRole, MAX_BODY_BYTES, MAX_PAGE_LIMIT, PROTOCOL_VERSION,
};
use fluxy_protocol::cursor::Cursor;
use fluxy_protocol::decode::decode_body;
use fluxy_protocol::events::TimelineEvent;
use fluxy_protocol::http::{
    CreateRoomRequest, Direction, ErrorBody, HealthResponse, HistoryPage, LegacyMessagesResponse,
    Member, MemberResponse, MemberSpec, MembersResponse, MessageRecord, PostMessageRequest,
    PostMessageResponse, Room, RoomListResponse, RoomResponse, TokenRequest,
};
use fluxy_protocol::jwt::{self, Claims, JwtError};
use fluxy_protocol::request::{self, HistoryQuery, PollQuery, RequestError};
use fluxy_protocol::server::ErrorFrame;
use fluxy_protocol::{ClientFrame, DecodeError, ErrorCode};
use fluxy_room::sql;
use fluxy_room::Identity;
use rusqlite::{params, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::db::{self, room_row, RoomRow};
use crate::rooms::{room_handle, running_room, RoomHandle, RoomMsg, SseItem};
use crate::{hash_api_key, now_ms, random_hex, App, ServerError};

/// An HTTP error response with an [`ErrorBody`].
#[derive(Debug)]
pub(crate) struct ApiError(pub ErrorBody);

impl ApiError {
    pub(crate) fn new(code: ErrorCode, msg: impl Into<String>) -> ApiError {
        ApiError(ErrorBody::new(code, msg))
    }
    fn field(mut self, f: &str) -> ApiError {
        self.0.field = Some(f.to_owned());
        self
    }
    pub(crate) fn code(&self) -> ErrorCode {
        self.0.error
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> ApiError {
        eprintln!("fluxy-server: {e}");
        ApiError::new(ErrorCode::InternalError, "storage failure")
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> ApiError {
        ApiError(e.into())
    }
}

impl From<ErrorFrame> for ApiError {
    fn from(e: ErrorFrame) -> ApiError {
        ApiError(e.into())
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.0)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// 429 `rate_limited` with `retryAfterMs` and a `Retry-After` header in whole seconds
/// (rounded up) `[FX-LIM-7]`.
fn rate_limited(retry_after_ms: u64) -> Response {
    let mut body = ErrorBody::new(ErrorCode::RateLimited, "too many requests; retry later");
    body.retry_after_ms = Some(retry_after_ms.max(1));
    let secs = retry_after_ms.max(1).div_ceil(1000);
    let mut r = ApiError(body).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/auth/token", post(auth_token))
        .route("/rooms", post(create_room).get(list_rooms))
        .route("/rooms/{room_id}", get(get_room))
        .route(
            "/rooms/{room_id}/members",
            get(list_members).post(add_member),
        )
        .route("/rooms/{room_id}/members/{user_id}", delete(remove_member))
        .route("/rooms/{room_id}/history", get(history))
        .route("/rooms/{room_id}/stream", get(sse))
        .route("/rooms/{room_id}/poll", get(poll))
        .route("/messages", post(post_message))
        .route("/api/messages", get(legacy_messages))
        .route("/ws/room/{room_id}", get(crate::ws::ws_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES * 2))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let ok = app
        .db
        .read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
        .await
        .is_ok();
    let body = HealthResponse {
        ok,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION.to_owned(),
        ts: now_ms(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

// ------------------------------------------------------------------------------ auth

/// The JWT secret of a tenant (cached).
pub(crate) async fn tenant_secret(app: &Arc<App>, tenant: &str) -> ApiResult<Option<Vec<u8>>> {
    if let Ok(g) = app.secrets.read() {
        if let Some(s) = g.get(tenant) {
            return Ok(Some(s.clone()));
        }
    }
    let t = tenant.to_owned();
    let s = app
        .db
        .read(move |c| {
            c.query_row(sql::TENANT_SECRET, params![t], |r| r.get::<_, String>(0))
                .optional()
        })
        .await?;
    if let Some(s) = &s {
        if let Ok(mut g) = app.secrets.write() {
            g.insert(tenant.to_owned(), s.clone().into_bytes());
        }
    }
    Ok(s.map(String::into_bytes))
}

/// Verify a token (honouring the token faults).
pub(crate) async fn verify(app: &Arc<App>, token: &str) -> Result<Claims, JwtError> {
    let tenant = jwt::peek_tenant(token)?;
    let secret = tenant_secret(app, &tenant)
        .await
        .map_err(|_| JwtError::UnknownTenant)?;
    fluxy_room::auth::verify_token(token, now_ms() / 1000, &app.faults, |t| {
        (t == tenant).then(|| secret.clone()).flatten()
    })
}

/// The token of a request: `Authorization: Bearer` or `?token=` `[FX-AUTH-8]`.
pub(crate) fn request_token(headers: &HeaderMap, q: &HashMap<String, String>) -> Option<String> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    request::request_token(authorization, q)
}

async fn authenticate(
    app: &Arc<App>,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> ApiResult<Claims> {
    let token = request_token(headers, q)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
    verify(app, &token)
        .await
        .map_err(|e| ApiError::new(e.code(), e.to_string()))
}

async fn auth_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let key = headers
        .get("x-fluxy-api-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing X-Fluxy-Api-Key"))?;
    let hash = hash_api_key(key);
    let tenant = app
        .db
        .read(move |c| {
            c.query_row(sql::API_KEY_TENANT, params![hash], |r| {
                r.get::<_, String>(0)
            })
            .optional()
        })
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidApiKey, "unknown or revoked API key"))?;
    if let Err(wait) = app.token_limiter.check(&hash_api_key(key), now_ms()) {
        return Ok(rate_limited(wait));
    }
    let req: TokenRequest = decode_body(&body_text(&body)?, MAX_BODY_BYTES)?;
    let grant = request::token_grant(&req)?;
    let secret = tenant_secret(&app, &tenant)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InternalError, "tenant has no secret"))?;
    Ok(Json(grant.issue(req.user_id, tenant, now_ms() / 1000, &secret)).into_response())
}

fn body_text(b: &Result<Bytes, BytesRejection>) -> ApiResult<String> {
    let b = b
        .as_ref()
        .map_err(|_| ApiError::new(ErrorCode::PayloadTooLarge, "body too large"))?;
    if b.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, "body too large"));
    }
    String::from_utf8(b.to_vec())
        .map_err(|_| ApiError::new(ErrorCode::MalformedFrame, "body is not UTF-8"))
}

// ------------------------------------------------------------------------------ rooms

fn room_json(r: &RoomRow) -> Room {
    Room {
        id: r.id.clone(),
        name: r.name.clone(),
        room_type: r.room_type,
        created_by: r.created_by.clone(),
        created_at: format_timestamp(r.created_at),
    }
}

/// A room the caller may access, with the caller's room role.
pub(crate) struct Access {
    pub(crate) room: RoomRow,
    pub(crate) role: Option<MemberRole>,
    /// The membership version read together with `role` (0: never written).
    pub(crate) version: u64,
}

/// A user's room role and membership version, read together (one statement).
fn read_membership(
    c: &rusqlite::Connection,
    tenant: &str,
    room: &str,
    user: &str,
) -> rusqlite::Result<(Option<MemberRole>, u64)> {
    c.query_row(sql::MEMBER_ROLE_VERSION, params![tenant, room, user], |r| {
        let role: Option<String> = r.get(0)?;
        let version: Option<i64> = r.get(1)?;
        Ok((
            role.as_deref().and_then(db::parse_role),
            version.map_or(0, db::from_sql_int),
        ))
    })
}

/// The caller's room role and membership version, read now. The WebSocket handshake reads
/// them again while it holds the room's handle: the room cannot unload before the `Open`, so
/// every membership change written after this read reaches that same room, with a newer
/// version.
pub(crate) async fn membership(
    app: &Arc<App>,
    room: &RoomRow,
    user: &str,
) -> ApiResult<(Option<MemberRole>, u64)> {
    let (t, r, u) = (room.tenant.clone(), room.id.clone(), user.to_owned());
    Ok(app.db.read(move |c| read_membership(c, &t, &r, &u)).await?)
}

/// Increment a user's membership version (in the transaction of the membership write).
fn bump_membership(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    room: &str,
    user: &str,
) -> rusqlite::Result<u64> {
    tx.query_row(sql::BUMP_MEMBER_VERSION, params![tenant, room, user], |r| {
        r.get::<_, i64>(0)
    })
    .map(db::from_sql_int)
}

/// Look a room up for the caller's tenant and check membership.
pub(crate) async fn access(app: &Arc<App>, claims: &Claims, room_id: &str) -> ApiResult<Access> {
    if !is_valid_id(room_id) {
        return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
    }
    let (tid, rid, leak) = (
        claims.tid.clone(),
        room_id.to_owned(),
        app.faults.cross_tenant_leak,
    );
    let user = claims.sub.clone();
    let found = app
        .db
        .read(move |c| {
            let room = if leak {
                c.query_row(sql::GET_ROOM_ANY_TENANT, params![rid], room_row)
                    .optional()?
            } else {
                c.query_row(sql::GET_ROOM, params![tid, rid], room_row)
                    .optional()?
            };
            let Some(room) = room else { return Ok(None) };
            let (role, version) = read_membership(c, &room.tenant, &room.id, &user)?;
            Ok(Some((room, role, version)))
        })
        .await?;
    let Some((room, role, version)) = found else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
    };
    request::check_room_access(claims, room.room_type, role)?;
    Ok(Access {
        room,
        role,
        version,
    })
}

/// The task of the room behind an access check.
pub(crate) async fn handle_for(app: &Arc<App>, a: &Access) -> ApiResult<RoomHandle> {
    let secret = tenant_secret(app, &a.room.tenant)
        .await?
        .unwrap_or_default();
    Ok(room_handle(app, &a.room.tenant, &a.room.id, secret))
}

/// Identity for the engine.
pub(crate) fn identity(claims: &Claims, role: Option<MemberRole>) -> Identity {
    Identity {
        user_id: claims.sub.clone(),
        roles: claims.roles.clone(),
        member_role: role,
        token_exp: claims.exp,
    }
}

async fn create_room(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let claims = authenticate(&app, &headers, &q).await?;
    let req: CreateRoomRequest = decode_body(&body_text(&body)?, MAX_BODY_BYTES)?;
    request::check_create_room(&req)?;
    let id = match req.id {
        Some(id) => id,
        None => format!("r_{}", random_hex(8)?),
    };
    let now = now_ms();
    let room = RoomRow {
        id,
        name: req.name,
        room_type: req.room_type.unwrap_or_default(),
        created_by: claims.sub.clone(),
        created_at: now,
        tenant: claims.tid.clone(),
    };
    let r = room.clone();
    let members = req.members;
    let created = app
        .db
        .write(move |tx| {
            let exists = tx
                .query_row(sql::GET_ROOM, params![r.tenant, r.id], room_row)
                .optional()?;
            if exists.is_some() {
                return Ok(false);
            }
            let t = db::sql_int(r.created_at);
            tx.execute(
                sql::INSERT_ROOM,
                params![
                    r.tenant,
                    r.id,
                    r.name,
                    db::type_str(r.room_type),
                    r.created_by,
                    t
                ],
            )?;
            for m in &members {
                if m.user_id != r.created_by {
                    let role = db::role_str(m.role.unwrap_or_default());
                    tx.execute(
                        sql::UPSERT_MEMBER,
                        params![r.tenant, r.id, m.user_id, role, t],
                    )?;
                    bump_membership(tx, &r.tenant, &r.id, &m.user_id)?;
                }
            }
            tx.execute(
                sql::UPSERT_MEMBER,
                params![r.tenant, r.id, r.created_by, "owner", t],
            )?;
            bump_membership(tx, &r.tenant, &r.id, &r.created_by)?;
            Ok(true)
        })
        .await?;
    if !created {
        return Err(ApiError::new(ErrorCode::Conflict, "room id already taken").field("id"));
    }
    Ok((
        StatusCode::CREATED,
        Json(RoomResponse {
            room: room_json(&room),
        }),
    )
        .into_response())
}

async fn list_rooms(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<RoomListResponse>> {
    let claims = authenticate(&app, &headers, &q).await?;
    // Members only, whatever the token's roles (FX-TEN-6).
    let (tid, sub) = (claims.tid.clone(), claims.sub.clone());
    let rooms = app
        .db
        .read(move |c| {
            c.prepare_cached(sql::LIST_MY_ROOMS)?
                .query_map(params![tid, sub], room_row)?
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(RoomListResponse {
        rooms: rooms.iter().map(room_json).collect(),
    }))
}

async fn get_room(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<RoomResponse>> {
    let claims = authenticate(&app, &headers, &q).await?;
    let a = access(&app, &claims, &room_id).await?;
    Ok(Json(RoomResponse {
        room: room_json(&a.room),
    }))
}

async fn list_members(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<MembersResponse>> {
    let claims = authenticate(&app, &headers, &q).await?;
    let a = access(&app, &claims, &room_id).await?;
    let (t, r) = (a.room.tenant.clone(), a.room.id.clone());
    let members = app
        .db
        .read(move |c| {
            c.prepare_cached(sql::LIST_MEMBERS)?
                .query_map(params![t, r], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(MembersResponse {
        members: members
            .into_iter()
            .map(|(user_id, role, joined)| Member {
                user_id,
                role: db::parse_role(&role).unwrap_or_default(),
                joined_at: format_timestamp(db::from_sql_int(joined)),
            })
            .collect(),
    }))
}

async fn add_member(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let claims = authenticate(&app, &headers, &q).await?;
    let a = access(&app, &claims, &room_id).await?;
    request::check_member_management(&claims, a.role, None)?;
    let spec: MemberSpec = decode_body(&body_text(&body)?, MAX_BODY_BYTES)?;
    request::check_user_id(&spec.user_id)?;
    let role = spec.role.unwrap_or_default();
    let (t, r, u) = (
        a.room.tenant.clone(),
        a.room.id.clone(),
        spec.user_id.clone(),
    );
    let version = app
        .db
        .write(move |tx| {
            tx.execute(
                sql::UPSERT_MEMBER,
                params![t, r, u, db::role_str(role), db::sql_int(now_ms())],
            )?;
            Ok(bump_membership(tx, &t, &r, &u)?)
        })
        .await?;
    // Open connections of that user get the new privileges at once (a new member has none;
    // an existing one may have changed role). Only a running room needs telling: a room that
    // starts later reads roles at connect.
    if let Some(h) = running_room(&app, &a.room.tenant, &a.room.id) {
        let _ = h
            .send(RoomMsg::SetRole(spec.user_id.clone(), Some(role), version))
            .await;
    }
    Ok((
        StatusCode::OK,
        Json(MemberResponse {
            ok: true,
            room_id: a.room.id,
            user_id: spec.user_id,
            role: Some(role),
        }),
    )
        .into_response())
}

async fn remove_member(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((room_id, user_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<MemberResponse>> {
    let claims = authenticate(&app, &headers, &q).await?;
    let a = access(&app, &claims, &room_id).await?;
    request::check_member_management(&claims, a.role, Some(&user_id))?;
    let (t, r, u) = (a.room.tenant.clone(), a.room.id.clone(), user_id.clone());
    let version = app
        .db
        .write(move |tx| {
            if tx.execute(sql::DELETE_MEMBER, params![t, r, u])? == 0 {
                return Ok(None);
            }
            Ok(Some(bump_membership(tx, &t, &r, &u)?))
        })
        .await?;
    let Some(version) = version else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such member"));
    };
    let h = handle_for(&app, &a).await?;
    let _ = h.send(RoomMsg::Kick(user_id.clone(), version)).await;
    drop(h);
    Ok(Json(MemberResponse {
        ok: true,
        room_id: a.room.id,
        user_id,
        role: None,
    }))
}

// ---------------------------------------------------------------------------- messages

async fn post_message(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let claims = authenticate(&app, &headers, &q).await?;
    let bucket = format!("{}\u{0}{}", claims.tid, claims.sub);
    if let Err(wait) = app.post_limiter.check(&bucket, now_ms()) {
        return Ok(rate_limited(wait));
    }
    let req: PostMessageRequest = decode_body(&body_text(&body)?, MAX_BODY_BYTES)?;
    let frame = fluxy_protocol::client::SendMessageFrame {
        content: req.content,
        client_message_id: req.client_message_id,
        parent_id: req.parent_id,
        attachments: req.attachments,
        reference: None,
    };
    ClientFrame::Message(frame.clone()).validate()?;
    let a = access(&app, &claims, &req.room_id).await?;
    let h = handle_for(&app, &a).await?;
    let (reply, rx) = oneshot::channel();
    // A stopped room (shutdown) drops `reply`: answered as unavailable below.
    let _ = h
        .send(RoomMsg::Post {
            identity: identity(&claims, a.role),
            frame,
            reply,
        })
        .await;
    drop(h);
    let outcome = rx
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "room unavailable"))??;
    let seq = outcome
        .ack
        .seq
        .ok_or_else(|| ApiError::new(ErrorCode::InternalError, "ack without seq"))?;
    let body = match outcome.event {
        Some(b) => b.to_string(),
        None => {
            let (t, r) = (a.room.tenant.clone(), a.room.id.clone());
            app.db
                .read(move |c| {
                    c.query_row(sql::EVENT_BY_SEQ, params![t, r, db::sql_int(seq)], |r| {
                        r.get::<_, String>(0)
                    })
                })
                .await?
        }
    };
    let message = match serde_json::from_str::<TimelineEvent>(&body) {
        Ok(TimelineEvent::Message(m)) => m,
        _ => {
            return Err(ApiError::new(
                ErrorCode::InternalError,
                "stored event is not a message",
            ))
        }
    };
    let status = if outcome.ack.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(PostMessageResponse {
            message,
            duplicate: outcome.ack.duplicate,
        }),
    )
        .into_response())
}

// ----------------------------------------------------------------------------- history

/// Decode a cursor for this room (the `cursor-unsigned` fault skips the signature).
pub(crate) fn decode_cursor(app: &App, s: &str, room: &RoomRow) -> ApiResult<Cursor> {
    decode_cursor_field(app, s, room, "cursor")
}

/// [`decode_cursor`] for a parameter named `field` (the legacy route's `before`).
fn decode_cursor_field(app: &App, s: &str, room: &RoomRow, field: &str) -> ApiResult<Cursor> {
    Ok(request::decode_cursor(
        s,
        &app.cursor_key,
        &room.tenant,
        &room.id,
        field,
        app.faults.cursor_unsigned,
    )?)
}

fn cursor_for(app: &App, room: &RoomRow, seq: u64, direction: Direction) -> String {
    Cursor {
        tenant: room.tenant.clone(),
        room: room.id.clone(),
        seq,
        direction,
    }
    .encode(&app.cursor_key)
}

fn parse_events(bodies: Vec<String>) -> ApiResult<Vec<TimelineEvent>> {
    bodies
        .iter()
        .map(|b| serde_json::from_str::<TimelineEvent>(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::new(ErrorCode::InternalError, "corrupt stored event"))
}

/// Read a page: `(bodies ascending, has_more, current_seq)`.
pub(crate) async fn read_page(
    app: &Arc<App>,
    room: &RoomRow,
    direction: Direction,
    bound: u64,
    limit: u32,
) -> ApiResult<(Vec<String>, bool, u64)> {
    let (t, r) = (room.tenant.clone(), room.id.clone());
    let out = app
        .db
        .read(move |c| {
            let current: i64 = c.query_row(sql::LOAD_MAX_SEQ, params![t, r], |row| row.get(0))?;
            let q = if direction == Direction::Backward {
                sql::HISTORY_BEFORE
            } else {
                sql::HISTORY_AFTER
            };
            let mut rows = c
                .prepare_cached(q)?
                .query_map(
                    params![t, r, db::sql_int(bound), i64::from(limit) + 1],
                    |row| row.get::<_, String>(0),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            if direction == Direction::Backward {
                rows.reverse();
            }
            Ok((rows, more, db::from_sql_int(current)))
        })
        .await?;
    Ok(out)
}

async fn history(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<HistoryPage>> {
    let claims = authenticate(&app, &headers, &q).await?;
    let a = access(&app, &claims, &room_id).await?;
    let hq = HistoryQuery::parse(&q)?;
    let limit = hq.limit;
    // Without a start, a backward page begins above every seq.
    let (direction, bound) = match hq.cursor {
        Some(c) => {
            let c = decode_cursor(&app, c, &a.room)?;
            (c.direction, c.seq)
        }
        None => (hq.direction, hq.start.unwrap_or(u64::MAX >> 1)),
    };
    let (bodies, more, current) = read_page(&app, &a.room, direction, bound, limit).await?;
    let events = parse_events(bodies)?;
    let f = app.faults;
    let shift = |s: u64| -> u64 {
        if f.repeat_row_across_pages {
            if direction == Direction::Backward {
                s + 1
            } else {
                s.saturating_sub(1)
            }
        } else if f.skip_row_across_pages {
            if direction == Direction::Backward {
                s.saturating_sub(1)
            } else {
                s + 1
            }
        } else {
            s
        }
    };
    let next_cursor = match direction {
        Direction::Backward => match events.first() {
            Some(e) if more => Some(cursor_for(
                &app,
                &a.room,
                shift(e.seq()),
                Direction::Backward,
            )),
            _ => None,
        },
        Direction::Forward => {
            let last = events.last().map_or(bound, TimelineEvent::seq);
            let last = if events.is_empty() { last } else { shift(last) };
            Some(cursor_for(&app, &a.room, last, Direction::Forward))
        }
    };
    Ok(Json(HistoryPage {
        room_id: a.room.id.clone(),
        events,
        has_more: more,
        next_cursor,
        current_seq: current,
    }))
}

async fn legacy_messages(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<LegacyMessagesResponse>> {
    let claims = authenticate(&app, &headers, &q).await?;
    let room_id = request::legacy_room_id(&q)?;
    let a = access(&app, &claims, room_id).await?;
    let limit = request::parse_limit(&q)?;
    enum Before {
        Id(u64),
        Time(u64),
    }
    let before = match q.get("before").filter(|s| !s.is_empty()) {
        None => Before::Id(u64::MAX >> 1),
        Some(s) => match decode_cursor_field(&app, s, &a.room, "before") {
            Ok(c) => Before::Id(c.seq),
            Err(e) => match request::legacy_before_time(s) {
                Some(ms) => Before::Time(ms),
                None => return Err(e),
            },
        },
    };
    let (t, r) = (a.room.tenant.clone(), a.room.id.clone());
    let rows = app
        .db
        .read(move |c| {
            let (q, b) = match before {
                Before::Id(id) => (sql::LEGACY_BEFORE_ID, id),
                Before::Time(ms) => (sql::LEGACY_BEFORE_TIME, ms),
            };
            let mut rows = c
                .prepare_cached(q)?
                .query_map(params![t, r, db::sql_int(b), i64::from(limit) + 1], |row| {
                    Ok((
                        db::from_sql_int(row.get(0)?),
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        db::from_sql_int(row.get(3)?),
                        row.get::<_, Option<i64>>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, Option<String>>(7)?,
                        row.get::<_, Option<String>>(8)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let mut counts = Vec::new();
            for row in &rows {
                let per: Vec<(String, i64)> = c
                    .prepare_cached(sql::REACTION_COUNTS)?
                    .query_map(params![t, r, db::sql_int(row.0)], |x| {
                        Ok((x.get(0)?, x.get(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                counts.push((row.0, per));
            }
            Ok((rows, more, counts))
        })
        .await?;
    let (rows, more, counts) = rows;
    let mut reactions = BTreeMap::new();
    for (id, per) in counts {
        if !per.is_empty() {
            reactions.insert(
                id.to_string(),
                per.into_iter()
                    .map(|(e, n)| (e, db::from_sql_int(n)))
                    .collect(),
            );
        }
    }
    let next_cursor = match rows.last() {
        Some(last) if more => Some(cursor_for(&app, &a.room, last.0, Direction::Backward)),
        _ => None,
    };
    let messages = rows
        .into_iter()
        .map(
            |(id, user, content, created, edited, parent, version, cmid, att)| MessageRecord {
                id,
                room_id: a.room.id.clone(),
                user_id: user.clone(),
                sender_id: user,
                content,
                created_at: format_timestamp(created),
                parent_id: parent.map(db::from_sql_int),
                edited_at: edited.map(|e| format_timestamp(db::from_sql_int(e))),
                seq: id,
                version: u32::try_from(version).unwrap_or(1),
                client_message_id: cmid,
                attachments: att
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_default(),
            },
        )
        .collect();
    Ok(Json(LegacyMessagesResponse {
        messages,
        reactions,
        has_more: more,
        next_cursor,
    }))
}

/// Resolves when the server is stopping.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

// -------------------------------------------------------------------------------- SSE

fn sse_event(seq: Option<u64>, kind: &str, data: &str, with_id: bool) -> Bytes {
    let mut s = String::with_capacity(data.len() + 48);
    if let (Some(seq), true) = (seq, with_id) {
        s.push_str(&format!("id: {seq}\n"));
    }
    s.push_str("event: ");
    s.push_str(kind);
    s.push_str("\ndata: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

async fn sse(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let claims = authenticate(&app, &headers, &q).await?;
    let a = access(&app, &claims, &room_id).await?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if !request::accepts_event_stream(accept) {
        return Err(ApiError::new(
            ErrorCode::NotAcceptable,
            "this route serves text/event-stream",
        ));
    }
    let header = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let last = request::last_event_id(header, &q)?;
    let h = handle_for(&app, &a).await?;
    // Bounded: when the room finds it full it drops the listener, which ends this stream
    // after what is queued (the client resumes with Last-Event-ID).
    let (tx, mut rx) = mpsc::channel::<SseItem>(app.config.sse_queue.max(1));
    let (reply, current) = oneshot::channel();
    let _ = h.send(RoomMsg::Sse { tx, reply }).await;
    drop(h);
    let (current, gone) = current
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "room unavailable"))?;
    // A short relay to the body: the listener's real bound is its room queue above.
    let (btx, brx) = mpsc::channel::<Bytes>(32);
    let with_id = !app.faults.sse_no_id;
    let room = a.room.clone();
    let app2 = app.clone();
    let mut stop = app.stop.clone();
    tokio::spawn(async move {
        // Tells the room, when this relay ends however it ends, to forget the listener.
        let _gone = gone;
        match last {
            Some(pos) if pos > current => {
                let mut e = ErrorFrame::new(
                    ErrorCode::ResyncRequired,
                    "Last-Event-ID is ahead of the room; reload history",
                );
                e.field = Some("lastEventId".into());
                let data = serde_json::to_string(&e).unwrap_or_default();
                let _ = btx.send(sse_event(None, "error", &data, false)).await;
                return;
            }
            Some(mut pos) => {
                while pos < current {
                    let Ok((bodies, _, _)) =
                        read_page(&app2, &room, Direction::Forward, pos, MAX_PAGE_LIMIT).await
                    else {
                        return;
                    };
                    if bodies.is_empty() {
                        break;
                    }
                    for b in bodies {
                        let Ok(e) = serde_json::from_str::<TimelineEvent>(&b) else {
                            return;
                        };
                        if e.seq() > current {
                            break;
                        }
                        pos = e.seq();
                        if btx
                            .send(sse_event(Some(pos), e.type_name(), &b, with_id))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            None => {
                let ready = serde_json::json!({ "currentSeq": current }).to_string();
                if btx
                    .send(sse_event(None, "ready", &ready, false))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut ping = tokio::time::interval(Duration::from_secs(15));
        ping.tick().await;
        loop {
            tokio::select! {
                item = rx.recv() => {
                    let Some(item) = item else { return };
                    if item.seq.is_some_and(|s| s <= current) {
                        continue;
                    }
                    if btx.send(sse_event(item.seq, item.kind, &item.frame, with_id)).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    if btx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                        return;
                    }
                }
                // The client went away: hyper noticed the socket close (end of stream while
                // the response is in flight) and dropped the body. End now, not at the next
                // event or ping that would fail to send.
                _ = btx.closed() => return,
                _ = stopped(&mut stop) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(brx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .map_err(|_| ApiError::new(ErrorCode::InternalError, "response build failed"))
}

// ---------------------------------------------------------------------------- polling

async fn poll(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<HistoryPage>> {
    let claims = authenticate(&app, &headers, &q).await?;
    let a = access(&app, &claims, &room_id).await?;
    let PollQuery {
        limit,
        timeout_ms: timeout,
        after: mut pos,
        cursor,
    } = PollQuery::parse(&q)?;
    if let Some(c) = cursor {
        pos = decode_cursor(&app, c, &a.room)?.seq;
    }
    if app.faults.poll_ignores_cursor {
        pos = 0;
    }
    let (mut bodies, mut more, mut current) =
        read_page(&app, &a.room, Direction::Forward, pos, limit).await?;
    if bodies.is_empty() && timeout > 0 {
        let h = handle_for(&app, &a).await?;
        let (reply, woke) = oneshot::channel();
        let _ = h.send(RoomMsg::Poll { after: pos, reply }).await;
        drop(h);
        let mut stop = app.stop.clone();
        tokio::select! {
            _ = woke => {}
            _ = tokio::time::sleep(Duration::from_millis(timeout)) => {}
            _ = stopped(&mut stop) => {}
        }
        (bodies, more, current) = read_page(&app, &a.room, Direction::Forward, pos, limit).await?;
    }
    let events = parse_events(bodies)?;
    let last = events.last().map_or(pos, TimelineEvent::seq);
    Ok(Json(HistoryPage {
        room_id: a.room.id.clone(),
        events,
        has_more: more,
        next_cursor: Some(cursor_for(&app, &a.room, last, Direction::Forward)),
        current_seq: current,
    }))
}
