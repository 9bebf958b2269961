//! The Worker: the spec's HTTP surface. Pure reads (auth, rooms, members, history, legacy
//! messages) run here against D1; everything that needs the room's single writer or live state
//! (WebSocket, `POST /messages`, SSE, long-poll, member removal) is forwarded to the room's
//! Durable Object, named from (tenant, room) so tenants never share an object `[FX-TEN-2]`.

use std::collections::{BTreeMap, HashMap};

use fluxy_protocol::common::{
    format_timestamp, is_valid_id, MemberRole, RoomType, MAX_BODY_BYTES, PROTOCOL_VERSION,
    SUBPROTOCOL,
};
use fluxy_protocol::cursor::Cursor;
use fluxy_protocol::decode::decode_body;
use fluxy_protocol::http::{
    CreateRoomRequest, Direction, HealthResponse, LegacyMessagesResponse, Member, MemberResponse,
    MemberSpec, MembersResponse, MessageRecord, PostMessageRequest, Room, RoomListResponse,
    RoomResponse, TokenRequest,
};
use fluxy_protocol::jwt::{self, Claims, JwtError};
use fluxy_protocol::request::{self, HandshakeQuery, HistoryQuery, PollQuery};
use fluxy_protocol::server::ErrorFrame;
use fluxy_protocol::{ClientFrame, CloseCode, ErrorCode, ServerFrame};
use fluxy_room::sql::{self, SqlValue};
use fluxy_room::Faults;
use serde::Serialize;
use serde_json::value::RawValue;
use worker::{D1Database, Env, Headers, Method, Request, Response, WebSocketPair};

use crate::config::config;
use crate::db::{self, first, int, now_ms, only, prepare, rows, text, Row};
use crate::error::{json_response, ApiError, ApiResult};
use crate::forward::{Forward, IdentityWire, Op};

/// Per-request context.
struct Ctx {
    env: Env,
    db: D1Database,
    cursor_key: Vec<u8>,
    faults: Faults,
    query: HashMap<String, String>,
}

/// Entry point of the Worker's `fetch`.
pub async fn handle(req: Request, env: Env) -> worker::Result<Response> {
    match route(req, env).await {
        Ok(r) => Ok(r),
        Err(e) => e.into_response(),
    }
}

async fn route(mut req: Request, env: Env) -> ApiResult<Response> {
    let url = req.url()?;
    let path = url.path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method();
    let db = db::database(&env)?;
    if segs == ["health"] {
        return if method == Method::Get {
            health(&db).await
        } else {
            Err(not_allowed())
        };
    }
    let cursor_key = db::bootstrap(&env, &db).await?;
    let faults = config(&env).faults;
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let cx = Ctx {
        env,
        db,
        cursor_key,
        faults,
        query,
    };
    use Method::{Delete, Get, Post};
    match (segs.as_slice(), method) {
        (["auth", "token"], Post) => auth_token(&cx, &mut req).await,
        (["auth", "token"], _) => Err(not_allowed()),
        (["rooms"], Post) => create_room(&cx, &mut req).await,
        (["rooms"], Get) => list_rooms(&cx, &req).await,
        (["rooms"], _) => Err(not_allowed()),
        (["rooms", id], Get) => get_room(&cx, &req, id).await,
        (["rooms", _], _) => Err(not_allowed()),
        (["rooms", id, "members"], Get) => list_members(&cx, &req, id).await,
        (["rooms", id, "members"], Post) => add_member(&cx, &mut req, id).await,
        (["rooms", _, "members"], _) => Err(not_allowed()),
        (["rooms", id, "members", user], Delete) => remove_member(&cx, &req, id, user).await,
        (["rooms", _, "members", _], _) => Err(not_allowed()),
        (["rooms", id, "history"], Get) => history(&cx, &req, id).await,
        (["rooms", _, "history"], _) => Err(not_allowed()),
        (["rooms", id, "stream"], Get) => sse(&cx, &req, id).await,
        (["rooms", _, "stream"], _) => Err(not_allowed()),
        (["rooms", id, "poll"], Get) => poll(&cx, &req, id).await,
        (["rooms", _, "poll"], _) => Err(not_allowed()),
        (["messages"], Post) => post_message(&cx, &mut req).await,
        (["messages"], _) => Err(not_allowed()),
        (["api", "messages"], Get) => legacy_messages(&cx, &req).await,
        (["api", "messages"], _) => Err(not_allowed()),
        (["rooms", id, "debug", "stats"], Get) if config(&cx.env).debug => {
            debug_stats(&cx, &req, id).await
        }
        (["ws", "room", id], Get) => websocket(&cx, &req, id).await,
        (["ws", "room", _], _) => Err(not_allowed()),
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
    }
}

fn not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

fn ok_json<T: Serialize>(status: u16, body: &T) -> ApiResult<Response> {
    Ok(json_response(status, body)?)
}

async fn health(db: &D1Database) -> ApiResult<Response> {
    let ok = db.prepare("SELECT 1 AS one").all().await.is_ok();
    let body = HealthResponse {
        ok,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION.to_owned(),
        ts: now_ms(),
    };
    ok_json(if ok { 200 } else { 503 }, &body)
}

// ------------------------------------------------------------------------------ auth

async fn body_text(req: &mut Request) -> ApiResult<String> {
    if let Ok(Some(len)) = req.headers().get("content-length") {
        if len.parse::<usize>().is_ok_and(|n| n > MAX_BODY_BYTES) {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, "body too large"));
        }
    }
    let bytes = req
        .bytes()
        .await
        .map_err(|_| ApiError::new(ErrorCode::MalformedFrame, "unreadable body"))?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, "body too large"));
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::new(ErrorCode::MalformedFrame, "body is not UTF-8"))
}

/// The token of a request: `Authorization: Bearer` or `?token=` `[FX-AUTH-8]`.
fn request_token(req: &Request, q: &HashMap<String, String>) -> Option<String> {
    let authorization = req.headers().get("authorization").ok().flatten();
    request::request_token(authorization.as_deref(), q)
}

async fn verify(cx: &Ctx, token: &str) -> Result<Claims, JwtError> {
    let tenant = jwt::peek_tenant(token)?;
    let secret = db::tenant_secret(&cx.db, &tenant)
        .await
        .map_err(|_| JwtError::UnknownTenant)?;
    fluxy_room::auth::verify_token(token, now_ms() / 1000, &cx.faults, |t| {
        (t == tenant).then(|| secret.clone()).flatten()
    })
}

async fn authenticate(cx: &Ctx, req: &Request) -> ApiResult<Claims> {
    let token = request_token(req, &cx.query)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
    verify(cx, &token)
        .await
        .map_err(|e| ApiError::new(e.code(), e.to_string()))
}

async fn auth_token(cx: &Ctx, req: &mut Request) -> ApiResult<Response> {
    let key = req
        .headers()
        .get("x-fluxy-api-key")?
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing X-Fluxy-Api-Key"))?;
    let r = prepare(
        &cx.db,
        sql::API_KEY_TENANT,
        &[db::hash_api_key(&key).as_str().into()],
    )?
    .all()
    .await?;
    let tenant = first(&r)?
        .and_then(|row| text(&row, "tenant_id"))
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidApiKey, "unknown or revoked API key"))?;
    let body: TokenRequest = decode_body(&body_text(req).await?, MAX_BODY_BYTES)?;
    let grant = request::token_grant(&body)?;
    let secret = db::tenant_secret(&cx.db, &tenant)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::InternalError, "tenant has no secret"))?;
    ok_json(
        200,
        &grant.issue(body.user_id, tenant, now_ms() / 1000, &secret),
    )
}

// ------------------------------------------------------------------------------ rooms

/// Stored room type and member role strings.
fn parse_type(s: &str) -> RoomType {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or_default()
}
fn type_str(t: RoomType) -> &'static str {
    match t {
        RoomType::Dm => "dm",
        RoomType::Group => "group",
        RoomType::Public => "public",
        RoomType::Announcement => "announcement",
    }
}
fn parse_role(s: &str) -> Option<MemberRole> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}
fn role_str(r: MemberRole) -> &'static str {
    match r {
        MemberRole::Owner => "owner",
        MemberRole::Admin => "admin",
        MemberRole::Moderator => "moderator",
        MemberRole::Member => "member",
    }
}

/// A stored room.
#[derive(Debug, Clone)]
struct RoomRow {
    tenant: String,
    id: String,
    name: String,
    room_type: RoomType,
    created_by: String,
    created_at: u64,
}

fn room_row(r: &Row) -> Option<RoomRow> {
    Some(RoomRow {
        tenant: text(r, "tenant_id")?,
        id: text(r, "id")?,
        name: text(r, "name")?,
        room_type: parse_type(&text(r, "type")?),
        created_by: text(r, "created_by")?,
        created_at: int(r, "created_at")?,
    })
}

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
struct Access {
    room: RoomRow,
    role: Option<MemberRole>,
    /// The membership version read with `role` (0: never written).
    version: u64,
}

/// Look a room up in the caller's tenant and check membership `[FX-AUTH-11]` `[FX-TEN-3]`.
/// One D1 round trip.
async fn access(cx: &Ctx, claims: &Claims, room_id: &str) -> ApiResult<Access> {
    if !is_valid_id(room_id) {
        return Err(ApiError::new(ErrorCode::NotFound, "no such room"));
    }
    let room_stmt = if cx.faults.cross_tenant_leak {
        prepare(&cx.db, sql::GET_ROOM_ANY_TENANT, &[room_id.into()])?
    } else {
        prepare(
            &cx.db,
            sql::GET_ROOM,
            &[claims.tid.as_str().into(), room_id.into()],
        )?
    };
    let role_stmt = prepare(
        &cx.db,
        sql::MEMBER_ROLE_VERSION,
        &[
            claims.tid.as_str().into(),
            room_id.into(),
            claims.sub.as_str().into(),
        ],
    )?;
    let res = db::batch(&cx.db, vec![room_stmt, role_stmt]).await?;
    let room = res
        .first()
        .map(first)
        .transpose()?
        .flatten()
        .and_then(|r| room_row(&r))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such room"))?;
    let member = res.get(1).map(first).transpose()?.flatten();
    let mut role = member
        .as_ref()
        .and_then(|r| text(r, "role"))
        .and_then(|s| parse_role(&s));
    let mut version = member.as_ref().and_then(|r| int(r, "version")).unwrap_or(0);
    if room.tenant != claims.tid {
        // Only with the cross-tenant-leak fault: membership was read in the caller's tenant.
        role = None;
        version = 0;
    }
    request::check_room_access(claims, room.room_type, role)?;
    Ok(Access {
        room,
        role,
        version,
    })
}

/// The version `BUMP_MEMBER_VERSION` returned (the second statement of a membership batch).
fn bumped_version(res: &[worker::D1Result]) -> ApiResult<u64> {
    res.get(1)
        .map(first)
        .transpose()?
        .flatten()
        .and_then(|r| int(&r, "version"))
        .ok_or_else(|| ApiError::internal("membership version", "no version returned"))
}

fn identity(claims: &Claims, role: Option<MemberRole>) -> IdentityWire {
    IdentityWire {
        user_id: claims.sub.clone(),
        roles: claims.roles.clone(),
        member_role: role,
        token_exp: claims.exp,
    }
}

async fn create_room(cx: &Ctx, req: &mut Request) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let body: CreateRoomRequest = decode_body(&body_text(req).await?, MAX_BODY_BYTES)?;
    request::check_create_room(&body)?;
    let id = match body.id {
        Some(id) => id,
        None => format!("r_{}", hex::encode(db::random_bytes(8)?)),
    };
    let room = RoomRow {
        tenant: claims.tid.clone(),
        id,
        name: body.name,
        room_type: body.room_type.unwrap_or_default(),
        created_by: claims.sub.clone(),
        created_at: now_ms(),
    };
    let exists = prepare(
        &cx.db,
        sql::GET_ROOM,
        &[room.tenant.as_str().into(), room.id.as_str().into()],
    )?
    .all()
    .await?;
    let conflict = || ApiError::new(ErrorCode::Conflict, "room id already taken").field("id");
    if first(&exists)?.is_some() {
        return Err(conflict());
    }
    let t = SqlValue::from(room.created_at);
    let (tv, rv): (SqlValue, SqlValue) = (room.tenant.as_str().into(), room.id.as_str().into());
    let mut stmts = vec![prepare(
        &cx.db,
        sql::INSERT_ROOM,
        &[
            tv.clone(),
            rv.clone(),
            room.name.as_str().into(),
            type_str(room.room_type).into(),
            room.created_by.as_str().into(),
            t.clone(),
        ],
    )?];
    for m in body.members.iter().filter(|m| m.user_id != room.created_by) {
        stmts.push(prepare(
            &cx.db,
            sql::UPSERT_MEMBER,
            &[
                tv.clone(),
                rv.clone(),
                m.user_id.as_str().into(),
                role_str(m.role.unwrap_or_default()).into(),
                t.clone(),
            ],
        )?);
        stmts.push(prepare(
            &cx.db,
            sql::BUMP_MEMBER_VERSION,
            &[tv.clone(), rv.clone(), m.user_id.as_str().into()],
        )?);
    }
    stmts.push(prepare(
        &cx.db,
        sql::UPSERT_MEMBER,
        &[
            tv.clone(),
            rv.clone(),
            room.created_by.as_str().into(),
            "owner".into(),
            t,
        ],
    )?);
    stmts.push(prepare(
        &cx.db,
        sql::BUMP_MEMBER_VERSION,
        &[tv, rv, room.created_by.as_str().into()],
    )?);
    // INSERT_ROOM fails on the primary key if a concurrent create won: the batch rolls back.
    if cx.db.batch(stmts).await.is_err() {
        return Err(conflict());
    }
    ok_json(
        201,
        &RoomResponse {
            room: room_json(&room),
        },
    )
}

async fn list_rooms(cx: &Ctx, req: &Request) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    // Members only, whatever the token's roles (FX-TEN-6).
    let r = prepare(
        &cx.db,
        sql::LIST_MY_ROOMS,
        &[claims.tid.as_str().into(), claims.sub.as_str().into()],
    )?
    .all()
    .await?;
    let rooms = rows(&r)?
        .iter()
        .filter_map(room_row)
        .map(|r| room_json(&r))
        .collect();
    ok_json(200, &RoomListResponse { rooms })
}

async fn get_room(cx: &Ctx, req: &Request, id: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    ok_json(
        200,
        &RoomResponse {
            room: room_json(&a.room),
        },
    )
}

async fn list_members(cx: &Ctx, req: &Request, id: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    let r = prepare(
        &cx.db,
        sql::LIST_MEMBERS,
        &[a.room.tenant.as_str().into(), a.room.id.as_str().into()],
    )?
    .all()
    .await?;
    let members = rows(&r)?
        .iter()
        .filter_map(|row| {
            Some(Member {
                user_id: text(row, "user_id")?,
                role: parse_role(&text(row, "role")?).unwrap_or_default(),
                joined_at: format_timestamp(int(row, "joined_at")?),
            })
        })
        .collect();
    ok_json(200, &MembersResponse { members })
}

async fn add_member(cx: &Ctx, req: &mut Request, id: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    request::check_member_management(&claims, a.role, None)?;
    let spec: MemberSpec = decode_body(&body_text(req).await?, MAX_BODY_BYTES)?;
    request::check_user_id(&spec.user_id)?;
    let role = spec.role.unwrap_or_default();
    let (tv, rv, uv): (SqlValue, SqlValue, SqlValue) = (
        a.room.tenant.as_str().into(),
        a.room.id.as_str().into(),
        spec.user_id.as_str().into(),
    );
    // The write and its membership version in one batch (one transaction).
    let res = db::batch(
        &cx.db,
        vec![
            prepare(
                &cx.db,
                sql::UPSERT_MEMBER,
                &[
                    tv.clone(),
                    rv.clone(),
                    uv.clone(),
                    role_str(role).into(),
                    now_ms().into(),
                ],
            )?,
            prepare(&cx.db, sql::BUMP_MEMBER_VERSION, &[tv, rv, uv])?,
        ],
    )
    .await?;
    let version = bumped_version(&res)?;
    // Live connections of that user take the new role (moderation, announcement posting).
    let fwd = Forward {
        tenant: a.room.tenant.clone(),
        room: a.room.id.clone(),
        op: Op::SetRole {
            user_id: spec.user_id.clone(),
            member_role: Some(role),
            version,
        },
    };
    let _ = fwd.send(&cx.env, None, None).await?;
    ok_json(
        200,
        &MemberResponse {
            ok: true,
            room_id: a.room.id,
            user_id: spec.user_id,
            role: Some(role),
        },
    )
}

async fn remove_member(cx: &Ctx, req: &Request, id: &str, user: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    request::check_member_management(&claims, a.role, Some(user))?;
    let (tv, rv, uv): (SqlValue, SqlValue, SqlValue) = (
        a.room.tenant.as_str().into(),
        a.room.id.as_str().into(),
        user.into(),
    );
    // The removal and its membership version in one batch (a version bumped for a user who
    // was no member changes nothing: no kick is sent then).
    let res = db::batch(
        &cx.db,
        vec![
            prepare(
                &cx.db,
                sql::DELETE_MEMBER,
                &[tv.clone(), rv.clone(), uv.clone()],
            )?,
            prepare(&cx.db, sql::BUMP_MEMBER_VERSION, &[tv, rv, uv])?,
        ],
    )
    .await?;
    let changed = res
        .first()
        .and_then(|r| r.meta().ok().flatten())
        .and_then(|m| m.changes)
        .unwrap_or(0);
    let version = bumped_version(&res)?;
    if changed == 0 {
        return Err(ApiError::new(ErrorCode::NotFound, "no such member"));
    }
    // Close the user's live connections with 4003 [FX-AUTH-14].
    let fwd = Forward {
        tenant: a.room.tenant.clone(),
        room: a.room.id.clone(),
        op: Op::Kick {
            user_id: user.to_owned(),
            version,
        },
    };
    let _ = fwd.send(&cx.env, None, None).await?;
    ok_json(
        200,
        &MemberResponse {
            ok: true,
            room_id: a.room.id,
            user_id: user.to_owned(),
            role: None,
        },
    )
}

// ---------------------------------------------------------------------------- messages

async fn post_message(cx: &Ctx, req: &mut Request) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let body: PostMessageRequest = decode_body(&body_text(req).await?, MAX_BODY_BYTES)?;
    let frame = fluxy_protocol::client::SendMessageFrame {
        content: body.content,
        client_message_id: body.client_message_id,
        parent_id: body.parent_id,
        attachments: body.attachments,
        reference: None,
    };
    ClientFrame::Message(frame.clone()).validate()?;
    let a = access(cx, &claims, &body.room_id).await?;
    let fwd = Forward {
        tenant: a.room.tenant.clone(),
        room: a.room.id.clone(),
        op: Op::Post {
            identity: identity(&claims, a.role),
        },
    };
    let frame_json = serde_json::to_string(&frame).map_err(|e| ApiError::internal("encode", e))?;
    Ok(fwd.send(&cx.env, None, Some(frame_json)).await?)
}

// ----------------------------------------------------------------------------- history

/// Decode a cursor for this room (the `cursor-unsigned` fault skips the signature).
fn decode_cursor(cx: &Ctx, s: &str, room: &RoomRow, field: &str) -> ApiResult<Cursor> {
    Ok(request::decode_cursor(
        s,
        &cx.cursor_key,
        &room.tenant,
        &room.id,
        field,
        cx.faults.cursor_unsigned,
    )?)
}

fn cursor_for(cx: &Ctx, room: &RoomRow, seq: u64, direction: Direction) -> String {
    Cursor {
        tenant: room.tenant.clone(),
        room: room.id.clone(),
        seq,
        direction,
    }
    .encode(&cx.cursor_key)
}

/// Sequence number and type of a stored event body.
#[derive(serde::Deserialize)]
pub(crate) struct EventHead {
    /// Frame type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Timeline seq.
    pub seq: u64,
}

/// A history page whose events are the stored JSON, byte for byte `[FX-ORD-5]`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawHistoryPage<'a> {
    pub room_id: &'a str,
    pub events: Vec<&'a RawValue>,
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub current_seq: u64,
}

/// Parse stored bodies as raw JSON (validated, not re-encoded).
pub(crate) fn raw_events(bodies: &[String]) -> ApiResult<Vec<&RawValue>> {
    bodies
        .iter()
        .map(|b| serde_json::from_str::<&RawValue>(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal("stored event", e))
}

/// Read a page in one round trip: `(bodies ascending, has_more, current_seq)`.
async fn read_page(
    cx: &Ctx,
    room: &RoomRow,
    direction: Direction,
    bound: u64,
    limit: u32,
) -> ApiResult<(Vec<String>, bool, u64)> {
    let (t, r): (SqlValue, SqlValue) = (room.tenant.as_str().into(), room.id.as_str().into());
    let q = if direction == Direction::Backward {
        sql::HISTORY_BEFORE
    } else {
        sql::HISTORY_AFTER
    };
    let res = db::batch(
        &cx.db,
        vec![
            prepare(&cx.db, sql::LOAD_MAX_SEQ, &[t.clone(), r.clone()])?,
            prepare(
                &cx.db,
                q,
                &[t, r, bound.into(), (u64::from(limit) + 1).into()],
            )?,
        ],
    )
    .await?;
    let current = res
        .first()
        .map(first)
        .transpose()?
        .flatten()
        .and_then(|row| only(&row).and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    let mut bodies: Vec<String> = match res.get(1) {
        Some(r) => rows(r)?
            .iter()
            .filter_map(|row| text(row, "body"))
            .collect(),
        None => Vec::new(),
    };
    let more = bodies.len() > limit as usize;
    bodies.truncate(limit as usize);
    if direction == Direction::Backward {
        bodies.reverse();
    }
    Ok((bodies, more, current))
}

async fn history(cx: &Ctx, req: &Request, id: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    let hq = HistoryQuery::parse(&cx.query)?;
    let limit = hq.limit;
    // Without a start, a backward page begins above every seq.
    let (direction, bound) = match hq.cursor {
        Some(c) => {
            let c = decode_cursor(cx, c, &a.room, "cursor")?;
            (c.direction, c.seq)
        }
        None => (hq.direction, hq.start.unwrap_or(u64::MAX >> 12)),
    };
    let (bodies, more, current) = read_page(cx, &a.room, direction, bound, limit).await?;
    let events = raw_events(&bodies)?;
    let seqs: Vec<u64> = bodies
        .iter()
        .map(|b| serde_json::from_str::<EventHead>(b).map(|h| h.seq))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::internal("stored event", e))?;
    let f = cx.faults;
    let shift = |s: u64| -> u64 {
        match (
            f.repeat_row_across_pages,
            f.skip_row_across_pages,
            direction,
        ) {
            (true, _, Direction::Backward) => s + 1,
            (true, _, Direction::Forward) => s.saturating_sub(1),
            (false, true, Direction::Backward) => s.saturating_sub(1),
            (false, true, Direction::Forward) => s + 1,
            _ => s,
        }
    };
    let next_cursor = match direction {
        Direction::Backward => match seqs.first() {
            Some(s) if more => Some(cursor_for(cx, &a.room, shift(*s), Direction::Backward)),
            _ => None,
        },
        Direction::Forward => {
            let last = seqs.last().map_or(bound, |s| shift(*s));
            Some(cursor_for(cx, &a.room, last, Direction::Forward))
        }
    };
    ok_json(
        200,
        &RawHistoryPage {
            room_id: &a.room.id,
            events,
            has_more: more,
            next_cursor,
            current_seq: current,
        },
    )
}

async fn legacy_messages(cx: &Ctx, req: &Request) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let room_id = request::legacy_room_id(&cx.query)?;
    let a = access(cx, &claims, room_id).await?;
    let limit = request::parse_limit(&cx.query)?;
    let (stmt, bound) = match cx.query.get("before").filter(|s| !s.is_empty()) {
        None => (sql::LEGACY_BEFORE_ID, u64::MAX >> 12),
        Some(s) => match decode_cursor(cx, s, &a.room, "before") {
            Ok(c) => (sql::LEGACY_BEFORE_ID, c.seq),
            Err(e) => match request::legacy_before_time(s) {
                Some(ms) => (sql::LEGACY_BEFORE_TIME, ms),
                None => return Err(e),
            },
        },
    };
    let (t, r): (SqlValue, SqlValue) = (a.room.tenant.as_str().into(), a.room.id.as_str().into());
    let res = prepare(
        &cx.db,
        stmt,
        &[
            t.clone(),
            r.clone(),
            bound.into(),
            (u64::from(limit) + 1).into(),
        ],
    )?
    .all()
    .await?;
    let mut rows_ = rows(&res)?;
    let more = rows_.len() > limit as usize;
    rows_.truncate(limit as usize);
    let ids: Vec<u64> = rows_.iter().filter_map(|row| int(row, "id")).collect();
    let mut reactions = BTreeMap::new();
    if !ids.is_empty() {
        let stmts = ids
            .iter()
            .map(|id| {
                prepare(
                    &cx.db,
                    sql::REACTION_COUNTS,
                    &[t.clone(), r.clone(), (*id).into()],
                )
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let counts = db::batch(&cx.db, stmts).await?;
        for (id, res) in ids.iter().zip(counts.iter()) {
            let per: BTreeMap<String, u64> = rows(res)?
                .iter()
                .filter_map(|row| Some((text(row, "emoji")?, int(row, "COUNT(*)")?)))
                .collect();
            if !per.is_empty() {
                reactions.insert(id.to_string(), per);
            }
        }
    }
    let next_cursor = match ids.last() {
        Some(last) if more => Some(cursor_for(cx, &a.room, *last, Direction::Backward)),
        _ => None,
    };
    let messages = rows_
        .iter()
        .filter_map(|row| {
            let id = int(row, "id")?;
            let user = text(row, "user_id")?;
            Some(MessageRecord {
                id,
                room_id: a.room.id.clone(),
                user_id: user.clone(),
                sender_id: user,
                content: text(row, "content")?,
                created_at: format_timestamp(int(row, "created_at")?),
                parent_id: int(row, "parent_id"),
                edited_at: int(row, "edited_at").map(format_timestamp),
                seq: id,
                version: int(row, "version")
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(1),
                client_message_id: text(row, "client_message_id"),
                attachments: text(row, "attachments")
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_default(),
            })
        })
        .collect();
    ok_json(
        200,
        &LegacyMessagesResponse {
            messages,
            reactions,
            has_more: more,
            next_cursor,
        },
    )
}

// -------------------------------------------------------------------------- SSE, poll

async fn sse(cx: &Ctx, req: &Request, id: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    let accept = req.headers().get("accept").ok().flatten();
    if !request::accepts_event_stream(accept.as_deref()) {
        return Err(ApiError::new(
            ErrorCode::NotAcceptable,
            "this route serves text/event-stream",
        ));
    }
    let header = req.headers().get("last-event-id")?;
    let last = request::last_event_id(header.as_deref(), &cx.query)?;
    let fwd = Forward {
        tenant: a.room.tenant.clone(),
        room: a.room.id.clone(),
        op: Op::Stream {
            last_event_id: last,
        },
    };
    Ok(fwd.send(&cx.env, None, None).await?)
}

/// `GET /rooms/{id}/debug/stats` (`FLUXY_DEBUG=1` only): the room object's live counts
/// (SSE listeners, sockets, long-poll waiters), for tests of the object's bookkeeping.
async fn debug_stats(cx: &Ctx, req: &Request, id: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    let fwd = Forward {
        tenant: a.room.tenant.clone(),
        room: a.room.id.clone(),
        op: Op::Stats,
    };
    Ok(fwd.send(&cx.env, None, None).await?)
}

async fn poll(cx: &Ctx, req: &Request, id: &str) -> ApiResult<Response> {
    let claims = authenticate(cx, req).await?;
    let a = access(cx, &claims, id).await?;
    let PollQuery {
        limit,
        timeout_ms: timeout,
        after: mut pos,
        cursor,
    } = PollQuery::parse(&cx.query)?;
    if let Some(c) = cursor {
        pos = decode_cursor(cx, c, &a.room, "cursor")?.seq;
    }
    if cx.faults.poll_ignores_cursor {
        pos = 0;
    }
    let fwd = Forward {
        tenant: a.room.tenant.clone(),
        room: a.room.id.clone(),
        op: Op::Poll {
            after: pos,
            limit,
            timeout_ms: timeout,
        },
    };
    Ok(fwd.send(&cx.env, None, None).await?)
}

// --------------------------------------------------------------------------- WebSocket

/// Accept the upgrade, send one `error` frame and close with `close` `[FX-HS-3]`.
fn reject(code: ErrorCode, msg: &str, close: CloseCode, subprotocol: bool) -> ApiResult<Response> {
    let pair = WebSocketPair::new()?;
    pair.server.accept()?;
    let frame = ServerFrame::Error(ErrorFrame::new(code, msg)).encode();
    pair.server.send_with_str(&frame)?;
    pair.server
        .close(Some(close.code()), Some(close.reason()))?;
    let resp = Response::from_websocket(pair.client)?;
    Ok(with_subprotocol(resp, subprotocol)?)
}

fn with_subprotocol(resp: Response, subprotocol: bool) -> worker::Result<Response> {
    if !subprotocol {
        return Ok(resp);
    }
    let headers = Headers::new();
    headers.set("sec-websocket-protocol", SUBPROTOCOL)?;
    Ok(resp.with_headers(headers))
}

async fn websocket(cx: &Ctx, req: &Request, room_id: &str) -> ApiResult<Response> {
    let upgrade = req.headers().get("upgrade")?.unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::new(
            ErrorCode::InvalidFrame,
            "a WebSocket upgrade is required",
        ));
    }
    // FX-VER-3: select fluxy.v1 when offered.
    let subprotocol = req
        .headers()
        .get("sec-websocket-protocol")?
        .is_some_and(|p| p.split(',').any(|x| x.trim() == SUBPROTOCOL));
    let q = &cx.query;
    if let Err(e) = request::check_version(q) {
        return reject(
            e.code,
            &e.message,
            CloseCode::UnsupportedVersion,
            subprotocol,
        );
    }
    let Some(token) = request_token(req, q) else {
        return reject(
            ErrorCode::Unauthorized,
            "missing token",
            CloseCode::Unauthorized,
            subprotocol,
        );
    };
    let claims = match verify(cx, &token).await {
        Ok(c) => c,
        Err(e) => {
            let close = request::handshake_close_code(e.code());
            return reject(e.code(), &e.to_string(), close, subprotocol);
        }
    };
    let a = match access(cx, &claims, room_id).await {
        Ok(a) => a,
        Err(e) => {
            let close = request::handshake_close_code(e.code());
            return reject(e.code(), &e.0.message, close, subprotocol);
        }
    };
    let hq = HandshakeQuery::parse(q);
    let fwd = Forward {
        tenant: a.room.tenant.clone(),
        room: a.room.id.clone(),
        op: Op::Connect {
            identity: identity(&claims, a.role),
            membership_version: a.version,
            replay: hq.replay,
            replay_limit: hq.replay_limit,
            last_seq: hq.last_seq,
            subprotocol,
            batch: hq.batch,
            compat: hq.compat,
        },
    };
    let init_headers = Headers::new();
    init_headers.set("upgrade", "websocket")?;
    Ok(fwd.send(&cx.env, Some(init_headers), None).await?)
}
