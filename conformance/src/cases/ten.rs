//! Tenancy (TEN).

use fluxy_protocol::http::{MembersResponse, RoomListResponse, RoomResponse};
use fluxy_protocol::ErrorCode;
use serde_json::json;

use super::{expect_rejected, req, req_err, req_optional, send, stored_timeline};
use crate::case;
use crate::case::{ensure, ensure_eq, Case, CaseError};
use crate::ctx::{urlenc, Ctx};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("ten/token-tenant", ["FX-TEN-1"], "tokens carry the API key's tenant; two keys give two tenants", token_tenant),
        case!("ten/same-room-id-two-tenants", ["FX-TEN-2"], "the same room id in two tenants names two unrelated rooms", same_id),
        case!("ten/no-cross-tenant-access", ["FX-TEN-3"], "another tenant's room answers exactly like a missing room (404 / 4404) on every route", no_cross),
        case!("ten/create-room-bounds", ["FX-TEN-8"], "a room name of exactly 1 and 256 characters is accepted, an empty one or one of 257 gets 400 invalid_frame; so does an id of 129 characters, while 128 is fine", create_room_bounds),
        case!("ten/create-room", ["FX-TEN-4"], "POST /rooms creates a room owned by the caller with its members; a taken id gets 409", create_room),
        case!("ten/members-management", ["FX-TEN-5"], "only room or token owners/admins manage members; users may leave; listing needs membership", members),
        case!("ten/removed-member-closed", ["FX-AUTH-14"], "a user removed from a room has its connections closed with 4003", removed_closed),
        case!("ten/role-change-live", ["FX-AUTH-15", "FX-EDT-3"], "a room role change applies at once to that user's open connections and to no one else's", role_change_live),
        case!("ten/list-rooms", ["FX-TEN-6"], "GET /rooms lists the caller's rooms of its tenant; GET /rooms/{id} returns one", list_rooms),
        case!("ten/keys-scoped-to-tenant", ["FX-TEN-7"], "idempotency keys and tokens of one tenant have no effect in another", keys_scoped),
    ]
}

async fn token_tenant(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    ensure_eq(
        "FX-TEN-1",
        "tid of a token from --api-key",
        a.tenant.clone(),
        ctx.env.tenant.clone(),
    )?;
    ctx.need_tenant2()?;
    let b = ctx.user2("b").await?;
    ensure(
        b.tenant != a.tenant,
        "FX-TEN-1",
        "a different tid for the second key",
        &b.tenant,
    )
}

async fn same_id(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_tenant2()?;
    let a = ctx.user("a").await?;
    let b = ctx.user2("b").await?;
    let id = ctx.uid("shared");
    for u in [&a, &b] {
        let r = ctx
            .post(
                "/rooms",
                &u.token,
                &json!({"id": id, "name": "shared id", "type": "group"}),
            )
            .await?;
        r.expect_status(
            "FX-TEN-2",
            "POST /rooms with the same id in each tenant",
            201,
        )?;
    }
    let mut ca = ctx.connect(&a, &id).await?;
    let mut cb = ctx.connect(&b, &id).await?;
    send(ctx, &mut ca, "tenant one").await?;
    let bm = send(ctx, &mut cb, "tenant two").await?;
    ensure_eq(
        "FX-TEN-2",
        "seq of the first message in tenant 2's room",
        bm.seq,
        Some(1),
    )?;
    ca.sync("FX-TEN-2").await?;
    let seen: Vec<u64> = ca.timeline().iter().map(|(e, _)| e.seq()).collect();
    ensure_eq("FX-TEN-2", "events tenant 1 saw", seen, vec![1])
}

async fn no_cross(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_tenant2()?;
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut ca = ctx.connect(&a, &room).await?;
    send(ctx, &mut ca, "secret").await?;
    let adm = ctx
        .mint(
            "adm2",
            crate::ctx::TokenOpts {
                roles: vec!["admin".into(), "owner".into()],
                second_tenant: true,
                ..Default::default()
            },
        )
        .await?;
    let missing = ctx.uid("missing");
    for (p, pm) in [
        (format!("/rooms/{room}"), format!("/rooms/{missing}")),
        (
            format!("/rooms/{room}/history"),
            format!("/rooms/{missing}/history"),
        ),
        (
            format!("/rooms/{room}/members"),
            format!("/rooms/{missing}/members"),
        ),
        (
            format!("/api/messages?roomId={room}"),
            format!("/api/messages?roomId={missing}"),
        ),
        (
            format!("/rooms/{room}/poll?timeoutMs=0"),
            format!("/rooms/{missing}/poll?timeoutMs=0"),
        ),
    ] {
        let r = ctx.get(&p, &adm.token).await?;
        r.expect_error(
            "FX-TEN-3",
            &format!("GET {p} from another tenant"),
            ErrorCode::NotFound,
        )?;
        let rm = ctx.get(&pm, &adm.token).await?;
        ensure_eq(
            "FX-TEN-3",
            &format!("{p} answered exactly like a missing room"),
            (r.status, r.error_code()),
            (rm.status, rm.error_code()),
        )?;
    }
    let r = ctx
        .post(
            "/messages",
            &adm.token,
            &json!({"roomId": room, "content": "intrusion"}),
        )
        .await?;
    r.expect_error(
        "FX-TEN-3",
        "POST /messages into another tenant's room",
        ErrorCode::NotFound,
    )?;
    let r = ctx
        .post(
            &format!("/rooms/{room}/members"),
            &adm.token,
            &json!({"userId": adm.id}),
        )
        .await?;
    r.expect_error(
        "FX-TEN-3",
        "adding oneself to another tenant's room",
        ErrorCode::NotFound,
    )?;
    let s = ctx.sse(&adm, &room, "", &[]).await?;
    ensure_eq(
        "FX-TEN-3",
        "SSE status for another tenant's room",
        s.status,
        404,
    )?;
    let mut c = ctx
        .connect_raw(
            &adm.id,
            &format!("/ws/room/{room}?token={}", urlenc(&adm.token)),
            &[],
        )
        .await?;
    expect_rejected(&mut c, "FX-TEN-3", ErrorCode::NotFound, 4404).await?;
    let r = ctx.get("/rooms", &adm.token).await?;
    ensure(
        !r.text.contains(&room),
        "FX-TEN-3",
        "another tenant's rooms are not listed",
        &r.text,
    )?;
    ca.sync("FX-TEN-3").await?;
    ensure_eq(
        "FX-TEN-3",
        "events in the room",
        super::current_seq(ctx, &a, &room).await?,
        1,
    )
}

/// A `POST /rooms` the spec says must succeed did (any 2xx).
fn accepted(r: &crate::ctx::HttpResp, what: &str) -> Result<(), CaseError> {
    ensure(
        (200..300).contains(&r.status),
        "FX-TEN-8",
        format!("{what} is accepted"),
        format!("HTTP {} {}", r.status, crate::ctx::short(&r.text, 200)),
    )
}

async fn create_room_bounds(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    // Multi-byte characters: the bound counts characters, not bytes.
    for (name, ok) in [
        ("x".to_string(), true),
        ("é".repeat(256), true),
        (String::new(), false),
        ("é".repeat(257), false),
    ] {
        let what = format!(
            "POST /rooms with a name of {} characters",
            name.chars().count()
        );
        let r = ctx
            .post("/rooms", &a.token, &json!({"name": name, "type": "group"}))
            .await?;
        if ok {
            // Accepted: the room exists (201 itself is FX-TEN-4's business).
            accepted(&r, &what)?;
        } else {
            r.expect_error("FX-TEN-8", &what, ErrorCode::InvalidFrame)?;
        }
    }
    // The id pattern's length bound, 128 characters (a unique prefix, then padding).
    let prefix = ctx.uid("b");
    let id = |n: usize| format!("{prefix}{}", "x".repeat(n.saturating_sub(prefix.len())));
    let r = ctx
        .post(
            "/rooms",
            &a.token,
            &json!({"id": id(128), "name": "id of 128", "type": "group"}),
        )
        .await?;
    accepted(&r, "POST /rooms with an id of 128 characters")?;
    let r = ctx
        .post(
            "/rooms",
            &a.token,
            &json!({"id": id(129), "name": "id of 129", "type": "group"}),
        )
        .await?;
    r.expect_error(
        "FX-TEN-8",
        "POST /rooms with an id of 129 characters",
        ErrorCode::InvalidFrame,
    )
}

async fn create_room(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let id = ctx.uid("room");
    let r = ctx.post("/rooms", &a.token, &json!({"id": id, "name": "created", "type": "group", "members": [{"userId": b.id, "role": "admin"}]})).await?;
    r.expect_status("FX-TEN-4", "POST /rooms", 201)?;
    let rr: RoomResponse = r.parse("FX-TEN-4", "RoomResponse")?;
    ensure_eq(
        "FX-TEN-4",
        "room.createdBy",
        rr.room.created_by.clone(),
        a.id.clone(),
    )?;
    ensure_eq("FX-TEN-4", "room.id", rr.room.id.clone(), id.clone())?;
    let m = ctx.get(&format!("/rooms/{id}/members"), &a.token).await?;
    let mr: MembersResponse = m.parse("FX-TEN-4", "MembersResponse")?;
    let roles: Vec<(String, String)> = {
        let mut v: Vec<(String, String)> = mr
            .members
            .iter()
            .map(|m| (m.user_id.clone(), format!("{:?}", m.role)))
            .collect();
        v.sort();
        v
    };
    let mut want = vec![
        (a.id.clone(), "Owner".to_string()),
        (b.id.clone(), "Admin".to_string()),
    ];
    want.sort();
    ensure_eq("FX-TEN-4", "members and roles", roles, want)?;
    let r = ctx
        .post(
            "/rooms",
            &b.token,
            &json!({"id": id, "name": "again", "type": "group"}),
        )
        .await?;
    r.expect_error(
        "FX-TEN-4",
        "POST /rooms with a taken id",
        ErrorCode::Conflict,
    )?;
    let r = ctx
        .post(
            "/rooms",
            &a.token,
            &json!({"name": "no id", "type": "group"}),
        )
        .await?;
    r.expect_status("FX-TEN-4", "POST /rooms without id (server picks one)", 201)
}

async fn members(ctx: &Ctx) -> Result<(), CaseError> {
    let o = ctx.user("owner").await?;
    let m = ctx.user("member").await?;
    let x = ctx.user("x").await?;
    let room = ctx.room(&o, &[&m]).await?;
    let r = ctx
        .post(
            &format!("/rooms/{room}/members"),
            &m.token,
            &json!({"userId": x.id}),
        )
        .await?;
    r.expect_error(
        "FX-TEN-5",
        "a plain member adding a member",
        ErrorCode::Forbidden,
    )?;
    let r = ctx
        .http(
            reqwest::Method::DELETE,
            &format!("/rooms/{room}/members/{}", o.id),
            Some(&m.token),
            None,
        )
        .await?;
    r.expect_error(
        "FX-TEN-5",
        "a plain member removing the owner",
        ErrorCode::Forbidden,
    )?;
    let r = ctx.get(&format!("/rooms/{room}/members"), &x.token).await?;
    non_member_refused(ctx, &r, "a non-member listing members")?;
    let r = ctx
        .post(
            &format!("/rooms/{room}/members"),
            &o.token,
            &json!({"userId": x.id}),
        )
        .await?;
    ensure(
        r.status == 200 || r.status == 201,
        "FX-TEN-5",
        "the owner adds a member",
        format!("{} {}", r.status, r.text),
    )?;
    let r = ctx.get(&format!("/rooms/{room}/members"), &x.token).await?;
    r.expect_status("FX-TEN-5", "a member lists members", 200)?;
    let adm = ctx.user_roles("adm", &["admin"]).await?;
    let y = ctx.user("y").await?;
    let r = ctx
        .post(
            &format!("/rooms/{room}/members"),
            &adm.token,
            &json!({"userId": y.id}),
        )
        .await?;
    ensure(
        r.status == 200 || r.status == 201,
        "FX-TEN-5",
        "a token admin adds a member",
        format!("{} {}", r.status, r.text),
    )?;
    let r = ctx
        .http(
            reqwest::Method::DELETE,
            &format!("/rooms/{room}/members/{}", x.id),
            Some(&x.token),
            None,
        )
        .await?;
    ensure(
        r.status == 200 || r.status == 204,
        "FX-TEN-5",
        "a user removes themselves",
        format!("{} {}", r.status, r.text),
    )?;
    let r = ctx.get(&format!("/rooms/{room}/members"), &x.token).await?;
    non_member_refused(ctx, &r, "listing members after leaving")
}

/// FX-TEN-5's "listing requires membership": a 403. The code `not_member` is FX-AUTH-11's
/// (and the ErrorBody FX-ERR-4's), recorded as an observation when it differs.
fn non_member_refused(ctx: &Ctx, r: &crate::ctx::HttpResp, what: &str) -> Result<(), CaseError> {
    ensure(
        r.status == 403,
        "FX-TEN-5",
        format!("{what}: refused with 403"),
        format!("{} {}", r.status, crate::ctx::short(&r.text, 200)),
    )?;
    if r.error_code().as_deref() != Some(ErrorCode::NotMember.as_str()) {
        ctx.tr.observe(
            "FX-AUTH-11",
            &format!("{what}: 403 `not_member`"),
            &format!("{} {}", r.status, crate::ctx::short(&r.text, 200)),
        );
    }
    Ok(())
}

async fn list_rooms(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let r1 = ctx.room(&a, &[]).await?;
    let r2 = ctx.room(&b, &[&a]).await?;
    let r3 = ctx.room(&b, &[]).await?;
    let r = ctx.get("/rooms", &a.token).await?;
    r.expect_status("FX-TEN-6", "GET /rooms", 200)?;
    let l: RoomListResponse = r.parse("FX-TEN-6", "RoomListResponse")?;
    let mut ids: Vec<String> = l.rooms.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let mut want = vec![r1.clone(), r2.clone()];
    want.sort();
    ensure_eq("FX-TEN-6", "rooms listed for a", ids, want)?;
    let g = ctx.get(&format!("/rooms/{r2}"), &a.token).await?;
    let one: RoomResponse = g.parse("FX-TEN-6", "RoomResponse")?;
    ensure_eq("FX-TEN-6", "GET /rooms/{id}", one.room.id, r2)?;
    let g = ctx.get(&format!("/rooms/{r3}"), &a.token).await?;
    ensure(
        g.status == 403 || g.status == 404,
        "FX-TEN-6",
        "403 or 404 for a room the caller is not in",
        format!("{} {}", g.status, g.text),
    )
}

async fn keys_scoped(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_tenant2()?;
    let id = ctx.uid("same-user");
    let a = ctx.mint_for(&id, Default::default()).await?;
    let b = ctx
        .mint_for(
            &id,
            crate::ctx::TokenOpts {
                second_tenant: true,
                ..Default::default()
            },
        )
        .await?;
    let room = ctx.uid("same-room");
    for u in [&a, &b] {
        let r = ctx
            .post(
                "/rooms",
                &u.token,
                &json!({"id": room, "name": "x", "type": "group"}),
            )
            .await?;
        r.expect_status("FX-TEN-2", "POST /rooms", 201)?;
    }
    let cmid = ctx.cmid();
    let ra = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId": room, "content": "a", "clientMessageId": cmid}),
        )
        .await?;
    ra.expect_status("FX-TEN-7", "first use of a key in tenant 1", 201)?;
    let rb = ctx
        .post(
            "/messages",
            &b.token,
            &json!({"roomId": room, "content": "b", "clientMessageId": cmid}),
        )
        .await?;
    rb.expect_status(
        "FX-TEN-7",
        "the same user id, room id and key in tenant 2 (a new request)",
        201,
    )?;
    // A tenant-1 token does not work as a tenant-2 credential: it only ever sees tenant 1.
    let h = stored_timeline(ctx, &a, &room, 50).await?;
    ensure_eq("FX-TEN-7", "tenant 1's room content", h.len(), 1)
}

async fn removed_closed(ctx: &Ctx) -> Result<(), CaseError> {
    let o = ctx.user("owner").await?;
    let m = ctx.user("member").await?;
    let k = ctx.user("keeps").await?;
    let room = ctx.room(&o, &[&m, &k]).await?;
    let mut cm = ctx.connect(&m, &room).await?;
    let mut ck = ctx.connect(&k, &room).await?;
    let r = ctx
        .http(
            reqwest::Method::DELETE,
            &format!("/rooms/{room}/members/{}", m.id),
            Some(&o.token),
            None,
        )
        .await?;
    ensure(
        r.status == 200 || r.status == 204,
        "FX-TEN-5",
        "the owner removes a member",
        format!("{} {}", r.status, r.text),
    )?;
    let code = cm.wait_close("FX-AUTH-14", ctx.wait()).await?;
    ensure_eq("FX-AUTH-14", "close code after removal", code, Some(4003))?;
    // Another member's connection is untouched.
    ck.sync("FX-AUTH-14")
        .await
        .map_err(|e| e.context("another member stays connected"))
}

/// FX-AUTH-15 without the edits profile: a member of an announcement room may not post
/// (FX-MSG-8); promoted to moderator while connected, it may; demoted, it may not again.
async fn role_change_live_core(ctx: &Ctx) -> Result<(), CaseError> {
    use fluxy_protocol::common::RoomType;
    use fluxy_protocol::http::{CreateRoomRequest, MemberSpec};
    let o = ctx.user("owner").await?;
    let b = ctx.user("b").await?;
    let room = ctx
        .room_req(
            &o,
            CreateRoomRequest {
                id: Some(ctx.uid("ann")),
                name: "role change".into(),
                room_type: Some(RoomType::Announcement),
                members: vec![MemberSpec {
                    user_id: b.id.clone(),
                    role: None,
                }],
            },
        )
        .await?;
    let mut cb = ctx.connect(&b, &room).await?;
    req_err(
        ctx,
        &mut cb,
        "FX-MSG-8",
        json!({"type":"message","content":"member post"}),
        ErrorCode::Forbidden,
    )
    .await?;
    ctx.set_member(&o, &room, &b.id, Some("moderator")).await?;
    cb.sync("FX-AUTH-15").await?;
    req(
        ctx,
        &mut cb,
        "FX-AUTH-15",
        json!({"type":"message","content":"moderator post"}),
    )
    .await
    .map_err(|e| {
        e.context("b, promoted to moderator while connected, posts in an announcement room")
    })?;
    ctx.set_member(&o, &room, &b.id, Some("member")).await?;
    cb.sync("FX-AUTH-15").await?;
    req_err(
        ctx,
        &mut cb,
        "FX-AUTH-15",
        json!({"type":"message","content":"member post again"}),
        ErrorCode::Forbidden,
    )
    .await
    .map_err(|e| e.context("b, demoted to member while connected, can no longer post"))
}

async fn role_change_live(ctx: &Ctx) -> Result<(), CaseError> {
    let o = ctx.user("owner").await?;
    let b = ctx.user("b").await?;
    let c = ctx.user("c").await?;
    let room = ctx.room(&o, &[&b, &c]).await?;
    let mut cb = ctx.connect(&b, &room).await?;
    let mut cc = ctx.connect(&c, &room).await?;
    let c1 = send(ctx, &mut cc, "c one").await?;
    let c2 = send(ctx, &mut cc, "c two").await?;
    let b1 = send(ctx, &mut cb, "b one").await?;
    ctx.set_member(&o, &room, &b.id, Some("moderator")).await?;
    // The role change is an HTTP call: the connection may learn it just after the answer, so
    // the first attempt is checked through a ping/pong round trip first.
    cb.sync("FX-AUTH-15").await?;
    if req_optional(
        ctx,
        &mut cb,
        "FX-AUTH-15",
        json!({"type":"delete","messageId":c1.id}),
    )
    .await
    .map_err(|e| e.context("b, promoted to moderator while connected, deletes c's message"))?
    .is_none()
    {
        return role_change_live_core(ctx).await;
    }
    req_err(
        ctx,
        &mut cc,
        "FX-AUTH-15",
        json!({"type":"delete","messageId":b1.id}),
        ErrorCode::Forbidden,
    )
    .await
    .map_err(|e| e.context("c, whose role did not change, still cannot delete b's message"))?;
    ctx.set_member(&o, &room, &b.id, Some("member")).await?;
    cb.sync("FX-AUTH-15").await?;
    req_err(
        ctx,
        &mut cb,
        "FX-AUTH-15",
        json!({"type":"delete","messageId":c2.id}),
        ErrorCode::Forbidden,
    )
    .await
    .map_err(|e| {
        e.context("b, demoted to member while connected, can no longer delete c's message")
    })
}
