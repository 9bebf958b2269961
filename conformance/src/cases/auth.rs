//! Authentication and authorisation (AUTH).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fluxy_protocol::common::{parse_timestamp, RoomType};
use fluxy_protocol::http::CreateRoomRequest;
use fluxy_protocol::jwt::sign_raw;
use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use super::{expect_rejected, msg, req_err, send};
use crate::case;
use crate::case::{as_precondition, blocked, ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{urlenc, Ctx, TokenOpts, User};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("auth/token-endpoint", ["FX-AUTH-1", "FX-AUTH-16", "FX-AUTH-18"], "POST /auth/token mints an HS256 JWT with sub, tid, roles, exp; bad keys get 401", token_endpoint),
        case!("auth/ttl-and-roles", ["FX-AUTH-2"], "ttlSeconds is clamped to 60..86400, roles default to member, unknown roles are rejected", ttl_and_roles),
        case!("auth/expired-token", ["FX-AUTH-4"], "an expired token is rejected as token_expired (WS 4005, HTTP 401)", expired_token),
        case!("auth/missing-exp", ["FX-AUTH-4"], "a token without exp, or with a string exp, is rejected as unauthorized", missing_exp),
        case!("auth/nbf-in-future", ["FX-AUTH-5", "FX-AUTH-19"], "a token whose nbf is in the future is rejected; one whose nbf has passed is accepted", nbf_future),
        case!("auth/bad-signature", ["FX-AUTH-6"], "a token with a tampered payload or signature (one byte, or two bytes changed by one mask) is rejected", bad_signature),
        case!("auth/alg-none", ["FX-AUTH-3"], "alg none is rejected, with or without a MAC", alg_none),
        case!("auth/wrong-algorithm", ["FX-AUTH-3"], "alg HS512 (or HS384) with a valid HS256 MAC is rejected", wrong_alg),
        case!("auth/wrong-tenant", ["FX-AUTH-6"], "a token naming another or unknown tenant, signed with this tenant's secret, is rejected", wrong_tenant),
        case!("auth/bad-claims", ["FX-AUTH-6", "FX-AUTH-19", "FX-AUTH-20"], "sub or tid outside the id pattern is rejected; a token of only sub, tid and exp, and one of exactly 8192 characters, are accepted", bad_claims),
        case!("auth/non-member", ["FX-AUTH-11", "FX-HIS-7", "FX-TEN-5"], "token role (member, moderator, agent) × room type (group, announcement) × route (WS, POST /messages, members, history): a non-member is refused everywhere, with the owner as positive control", non_member),
        case!("auth/admin-and-public", ["FX-AUTH-11"], "owner/admin tokens and public rooms bypass membership", admin_and_public),
        case!("auth/frame-user-id-ignored", ["FX-AUTH-7", "FX-EDT-9"], "a userId in a frame or body is never used as identity", frame_user_id),
        case!("auth/expiry-while-connected", ["FX-AUTH-10", "FX-ERR-5"], "a token that expires while connected gets error token_expired and close 4005", expiry_while_connected),
        case!("auth/refresh-in-band", ["FX-AUTH-9", "FX-FRM-7"], "auth with a fresh token answers token_refreshed; another user's or a bad token fails and keeps the connection", refresh_in_band),
        case!("auth/refresh-extends-expiry", ["FX-AUTH-9", "FX-AUTH-10"], "after an in-band refresh the connection outlives the old expiry", refresh_extends),
        case!("auth/http-requires-token", ["FX-AUTH-8"], "every HTTP route except /auth/token and /health answers 401 without a token", http_requires_token),
        case!("auth/api-keys-not-exposed", ["FX-AUTH-17"], "API keys never appear in responses (black-box evidence for hashed storage)", api_keys_not_exposed),
    ]
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hs256() -> Value {
    json!({"alg":"HS256","typ":"JWT"})
}

fn jwt_parts(tok: &str) -> Option<(Value, Value)> {
    let mut it = tok.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next()?).ok()?;
    let p = URL_SAFE_NO_PAD.decode(it.next()?).ok()?;
    Some((
        serde_json::from_slice(&h).ok()?,
        serde_json::from_slice(&p).ok()?,
    ))
}

/// Check a token is refused on the WebSocket (code/close) and on HTTP (401 code).
async fn refused(
    ctx: &Ctx,
    clause: &str,
    token: &str,
    code: ErrorCode,
    close: u16,
) -> Result<(), CaseError> {
    let owner = ctx.user("owner").await?;
    let room = ctx.room(&owner, &[]).await?;
    // Positive controls on the same route and transport: a valid token works there, so a
    // refusal of the crafted one is evidence about the token, not about the route.
    let ok = ctx.get("/rooms", &owner.token).await?;
    if ok.status != 200 {
        return Err(blocked(
            "FX-TEN-6",
            "positive control: GET /rooms with a valid token answers 200",
            format!("HTTP {} {}", ok.status, crate::ctx::short(&ok.text, 200)),
        ));
    }
    let r = ctx.get("/rooms", token).await?;
    r.expect_error(clause, "GET /rooms with the token", code)?;
    drop(
        ctx.connect_q(&owner, &room, "replay=off")
            .await
            .map_err(|e| as_precondition(e.context("positive control: a valid token connects")))?,
    );
    let mut c = ctx
        .connect_raw(
            "crafted",
            &format!("/ws/room/{room}?token={}", urlenc(token)),
            &[],
        )
        .await?;
    expect_rejected(&mut c, clause, code, close).await
}

/// A crafted `token` that the spec says is valid is accepted: `GET /rooms` answers 200 (the
/// route `refused` uses for its refusals).
async fn accepted(ctx: &Ctx, clause: &str, token: &str, what: &str) -> Result<(), CaseError> {
    let r = ctx.get("/rooms", token).await?;
    ensure(
        r.status == 200,
        clause,
        format!("GET /rooms with {what} answers 200"),
        format!("HTTP {} {}", r.status, crate::ctx::short(&r.text, 200)),
    )
}

fn claims(ctx: &Ctx, sub: &str, exp: i64) -> Value {
    json!({"sub": sub, "tid": ctx.env.tenant, "roles": ["owner"], "exp": exp, "iat": now()})
}

async fn token_endpoint(ctx: &Ctx) -> Result<(), CaseError> {
    let id = ctx.uid("tok");
    let body = json!({"userId": id});
    let key = ctx.env.target.api_key.clone();
    let r = ctx
        .http_with(
            reqwest::Method::POST,
            "/auth/token",
            None,
            Some(&body),
            &[("X-Fluxy-Api-Key", &key)],
            None,
        )
        .await?;
    ensure(
        r.status == 200 || r.status == 201,
        "FX-AUTH-16",
        "POST /auth/token answers 200 or 201",
        format!("HTTP {} {}", r.status, crate::ctx::short(&r.text, 300)),
    )?;
    // Name every wrong or missing field at once.
    let (_, dev) = crate::env::read_token_response(r.status, &r.text)
        .map_err(|e| fail("FX-AUTH-1", "a TokenResponse", e))?;
    ensure(
        dev.is_empty(),
        "FX-AUTH-1",
        "a TokenResponse (token, expiresIn, expiresAt, claims {sub, tid, roles})",
        dev.join("; "),
    )?;
    let t: fluxy_protocol::http::TokenResponse = r.parse("FX-AUTH-1", "TokenResponse")?;
    let (h, p) = jwt_parts(&t.token).ok_or_else(|| fail("FX-AUTH-1", "a JWT", &t.token))?;
    ensure_eq(
        "FX-AUTH-1",
        "JWT header alg",
        h.get("alg").cloned(),
        Some(json!("HS256")),
    )?;
    ensure_eq(
        "FX-AUTH-1",
        "JWT sub",
        p.get("sub").cloned(),
        Some(json!(id)),
    )?;
    ensure_eq(
        "FX-AUTH-1",
        "JWT tid",
        p.get("tid").cloned(),
        Some(json!(ctx.env.tenant)),
    )?;
    ensure(
        p.get("exp").is_some_and(Value::is_u64),
        "FX-AUTH-1",
        "an integer exp",
        format!("{:?}", p.get("exp")),
    )?;
    ensure(
        p.get("roles").is_some_and(Value::is_array),
        "FX-AUTH-1",
        "a roles array",
        format!("{:?}", p.get("roles")),
    )?;
    // The response states the token's own expiry (FX-AUTH-18).
    let exp = p.get("exp").and_then(Value::as_u64).unwrap_or(0);
    ensure_eq(
        "FX-AUTH-18",
        "expiresAt is the JWT's exp, in seconds",
        parse_timestamp(&t.expires_at).map(|ms| ms / 1000),
        Some(exp),
    )?;
    let issued = p.get("iat").and_then(Value::as_u64);
    let lifetime = exp.saturating_sub(issued.unwrap_or_else(now));
    ensure(
        match issued {
            Some(_) => t.expires_in == lifetime,
            // Without iat, issue time is "now", within the round trip and the allowed skew.
            None => t.expires_in.abs_diff(lifetime) <= 10,
        },
        "FX-AUTH-18",
        "expiresIn is exp minus the time of issue (iat)",
        format!(
            "expiresIn {} with exp {exp} and iat {issued:?}",
            t.expires_in
        ),
    )?;
    let r = ctx
        .http(reqwest::Method::POST, "/auth/token", None, Some(&body))
        .await?;
    r.expect_error("FX-AUTH-1", "no X-Fluxy-Api-Key", ErrorCode::Unauthorized)?;
    let r = ctx
        .http_with(
            reqwest::Method::POST,
            "/auth/token",
            None,
            Some(&body),
            &[("X-Fluxy-Api-Key", "fx_definitely_not_a_key")],
            None,
        )
        .await?;
    r.expect_error("FX-AUTH-1", "unknown API key", ErrorCode::InvalidApiKey)
}

async fn ttl_and_roles(ctx: &Ctx) -> Result<(), CaseError> {
    let key = ctx.env.target.api_key.clone();
    let mint = |ttl: Option<u64>, roles: Vec<&str>| {
        let mut b = json!({"userId": ctx.uid("ttl")});
        if let Some(t) = ttl {
            b["ttlSeconds"] = json!(t);
        }
        if !roles.is_empty() {
            b["roles"] = json!(roles);
        }
        let key = key.clone();
        async move {
            ctx.http_with(
                reqwest::Method::POST,
                "/auth/token",
                None,
                Some(&b),
                &[("X-Fluxy-Api-Key", &key)],
                None,
            )
            .await
        }
    };
    for (ttl, want) in [
        (Some(5u64), 60u64),
        (None, 3600),
        (Some(10_000_000), 86_400),
        (Some(120), 120),
    ] {
        let r = mint(ttl, vec![]).await?;
        ensure(
            r.status == 200 || r.status == 201,
            "FX-AUTH-16",
            "POST /auth/token answers 200 or 201",
            format!("HTTP {} {}", r.status, crate::ctx::short(&r.text, 200)),
        )?;
        let t: fluxy_protocol::http::TokenResponse = r.parse("FX-AUTH-2", "TokenResponse")?;
        ensure_eq(
            "FX-AUTH-2",
            &format!("expiresIn for ttlSeconds {ttl:?}"),
            t.expires_in,
            want,
        )?;
        if ttl.is_none() {
            ensure_eq(
                "FX-AUTH-2",
                "default roles",
                t.claims.roles.clone(),
                vec!["member".to_string()],
            )?;
        }
    }
    let r = mint(None, vec!["agent", "moderator"]).await?;
    let t: fluxy_protocol::http::TokenResponse = r.parse("FX-AUTH-2", "TokenResponse")?;
    ensure(
        t.claims.roles.contains(&"agent".into()) && t.claims.roles.contains(&"moderator".into()),
        "FX-AUTH-2",
        "the requested roles",
        format!("{:?}", t.claims.roles),
    )?;
    let r = mint(None, vec!["superuser"]).await?;
    r.expect_error("FX-AUTH-2", "an unknown role", ErrorCode::InvalidFrame)
}

async fn expired_token(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    let tok = sign_raw(
        &hs256(),
        &claims(ctx, &ctx.uid("exp"), now() as i64 - 120),
        &s,
    );
    refused(ctx, "FX-AUTH-4", &tok, ErrorCode::TokenExpired, 4005).await
}

async fn missing_exp(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    let mut c = claims(ctx, &ctx.uid("noexp"), 0);
    c.as_object_mut().map(|o| o.remove("exp"));
    refused(
        ctx,
        "FX-AUTH-4",
        &sign_raw(&hs256(), &c, &s),
        ErrorCode::Unauthorized,
        4004,
    )
    .await?;
    c["exp"] = json!((now() + 3600).to_string());
    refused(
        ctx,
        "FX-AUTH-4",
        &sign_raw(&hs256(), &c, &s),
        ErrorCode::Unauthorized,
        4004,
    )
    .await
}

async fn nbf_future(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    let mut c = claims(ctx, &ctx.uid("nbf"), now() as i64 + 7200);
    // Positive control on the same route: an nbf that has passed is accepted (FX-AUTH-19).
    c["nbf"] = json!(now() - 600);
    accepted(
        ctx,
        "FX-AUTH-19",
        &sign_raw(&hs256(), &c, &s),
        "a token whose nbf passed 10 minutes ago",
    )
    .await?;
    c["nbf"] = json!(now() + 3600);
    refused(
        ctx,
        "FX-AUTH-5",
        &sign_raw(&hs256(), &c, &s),
        ErrorCode::Unauthorized,
        4004,
    )
    .await
}

async fn bad_signature(ctx: &Ctx) -> Result<(), CaseError> {
    let u = ctx.user_roles("sig", &["owner"]).await?;
    let parts: Vec<&str> = u.token.split('.').collect();
    if parts.len() != 3 {
        return Err(fail("FX-AUTH-1", "a three-part JWT", &u.token));
    }
    // The same header and payload with the signature bytes changed by `f`.
    let resigned = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
        f(&mut sig);
        format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig))
    };
    let forgeries = [
        // One byte flipped.
        resigned(&|sig| {
            if let Some(b) = sig.first_mut() {
                *b ^= 0x55;
            }
        }),
        // Two bytes changed by the same mask: a comparison that folds byte differences with
        // XOR instead of OR cancels them out.
        resigned(&|sig| {
            let n = sig.len();
            if n >= 2 {
                sig[n - 1] ^= 0x04;
                sig[n - 2] ^= 0x04;
            }
        }),
        // One byte longer, with the length difference (32 ^ 33 = 1) mirrored in a flipped bit:
        // a comparison that XORs the length check into the byte differences cancels them out.
        resigned(&|sig| {
            let len_mask = (sig.len() ^ (sig.len() + 1)) as u8;
            if let Some(b) = sig.first_mut() {
                *b ^= len_mask;
            }
            sig.push(0);
        }),
    ];
    for t in &forgeries {
        refused(ctx, "FX-AUTH-6", t, ErrorCode::Unauthorized, 4004).await?;
    }
    // Change the payload (claim another user), keep the signature.
    let (_, mut p) =
        jwt_parts(&u.token).ok_or_else(|| CaseError::Error("token not decodable".into()))?;
    p["sub"] = json!("mallory");
    let t2 = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(p.to_string()),
        parts[2]
    );
    refused(ctx, "FX-AUTH-6", &t2, ErrorCode::Unauthorized, 4004).await
}

async fn alg_none(ctx: &Ctx) -> Result<(), CaseError> {
    let u = ctx.user_roles("none", &["owner"]).await?;
    let parts: Vec<&str> = u.token.split('.').collect();
    if parts.len() != 3 {
        return Err(fail("FX-AUTH-1", "a three-part JWT", &u.token));
    }
    let h = URL_SAFE_NO_PAD.encode(json!({"alg":"none","typ":"JWT"}).to_string());
    refused(
        ctx,
        "FX-AUTH-3",
        &format!("{h}.{}.", parts[1]),
        ErrorCode::Unauthorized,
        4004,
    )
    .await?;
    if let Ok(s) = ctx.secret() {
        let c = claims(ctx, &ctx.uid("none"), now() as i64 + 3600);
        refused(
            ctx,
            "FX-AUTH-3",
            &sign_raw(&json!({"alg":"none"}), &c, &s),
            ErrorCode::Unauthorized,
            4004,
        )
        .await?;
    }
    Ok(())
}

async fn wrong_alg(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    let c = claims(ctx, &ctx.uid("alg"), now() as i64 + 3600);
    for alg in ["HS512", "HS384", "hs256"] {
        refused(
            ctx,
            "FX-AUTH-3",
            &sign_raw(&json!({"alg":alg,"typ":"JWT"}), &c, &s),
            ErrorCode::Unauthorized,
            4004,
        )
        .await?;
    }
    Ok(())
}

async fn wrong_tenant(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    let mut c = claims(ctx, &ctx.uid("ten"), now() as i64 + 3600);
    c["tid"] = json!("no-such-tenant-x");
    refused(
        ctx,
        "FX-AUTH-6",
        &sign_raw(&hs256(), &c, &s),
        ErrorCode::Unauthorized,
        4004,
    )
    .await?;
    if let Some(t2) = ctx.env.tenant2.clone() {
        c["tid"] = json!(t2);
        // Signed with tenant 1's secret: must not verify for tenant 2.
        let tok = sign_raw(&hs256(), &c, &s);
        let r = ctx.get("/rooms", &tok).await?;
        r.expect_error(
            "FX-AUTH-6",
            "GET /rooms with a tenant-2 token signed by tenant 1's secret",
            ErrorCode::Unauthorized,
        )?;
    }
    Ok(())
}

async fn bad_claims(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    // Positive control on the same route: the smallest valid token, sub, tid and exp only
    // (no roles, iat or nbf), is accepted (FX-AUTH-19).
    let minimal = json!({"sub": ctx.uid("min"), "tid": ctx.env.tenant, "exp": now() + 3600});
    accepted(
        ctx,
        "FX-AUTH-19",
        &sign_raw(&hs256(), &minimal, &s),
        "a token of only sub, tid and exp",
    )
    .await?;
    // Exactly 8192 characters (FX-AUTH-20): an extra claim pads the payload. Base64url
    // lengths grow by 1 or 2 per byte, so try a second claim name one byte longer as well.
    let token = ["pad", "padx"].iter().find_map(|name| {
        (5500..6500).find_map(|n| {
            let mut big = minimal.clone();
            big[*name] = json!("p".repeat(n));
            let t = sign_raw(&hs256(), &big, &s);
            (t.len() == 8192).then_some(t)
        })
    });
    if let Some(t) = token {
        accepted(
            ctx,
            "FX-AUTH-20",
            &t,
            "a valid token of exactly 8192 characters",
        )
        .await?;
    }
    let mut c = claims(ctx, "bad sub!", now() as i64 + 3600);
    refused(
        ctx,
        "FX-AUTH-6",
        &sign_raw(&hs256(), &c, &s),
        ErrorCode::Unauthorized,
        4004,
    )
    .await?;
    c["sub"] = json!(ctx.uid("x"));
    c.as_object_mut().map(|o| o.remove("tid"));
    refused(
        ctx,
        "FX-AUTH-6",
        &sign_raw(&hs256(), &c, &s),
        ErrorCode::Unauthorized,
        4004,
    )
    .await
}

/// The non-member half of the authorization matrix: token role (member, moderator, agent:
/// none bypasses membership) × room type (group, announcement) × route (WebSocket upgrade,
/// `POST /messages`, `GET /rooms/{id}/members`, history when the server has it). Every refusal
/// is paired with the owner doing the same on the same route (positive control).
async fn non_member(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    for room_type in [RoomType::Group, RoomType::Announcement] {
        let room = ctx
            .room_req(
                &a,
                CreateRoomRequest {
                    id: Some(ctx.uid("room")),
                    name: "matrix".into(),
                    room_type: Some(room_type),
                    members: vec![],
                },
            )
            .await?;
        // Positive controls: the owner uses every route of the matrix.
        let ctl = |e: CaseError| as_precondition(e.context("positive control by the owner"));
        let owner_conn = ctx.connect_q(&a, &room, "replay=off").await.map_err(ctl)?;
        let before = owner_conn.current_seq();
        drop(owner_conn);
        let m = ctx.get(&format!("/rooms/{room}/members"), &a.token).await?;
        m.expect_status("FX-TEN-5", "positive control: the owner lists members", 200)
            .map_err(as_precondition)?;
        let h = ctx
            .get(&format!("/rooms/{room}/history?limit=1"), &a.token)
            .await?;
        let history = h.status == 200;
        if !history {
            ctx.note("the owner's GET history is not 200: the history route is left out");
        }
        for role in ["member", "moderator", "agent"] {
            let x = ctx.user_roles(&format!("out{role}"), &[role]).await?;
            let cell = format!("token role {role}, room type {room_type:?}");
            let r = ctx
                .post(
                    "/messages",
                    &x.token,
                    &json!({"roomId": room, "content": "hi"}),
                )
                .await?;
            r.expect_error(
                "FX-AUTH-11",
                &format!("POST /messages by a non-member ({cell})"),
                ErrorCode::NotMember,
            )?;
            let r = ctx.get(&format!("/rooms/{room}/members"), &x.token).await?;
            ensure(
                r.status == 403,
                "FX-TEN-5",
                format!("GET /rooms/{{id}}/members by a non-member ({cell}): 403"),
                format!("HTTP {} {}", r.status, crate::ctx::short(&r.text, 200)),
            )?;
            if history {
                let r = ctx.get(&format!("/rooms/{room}/history"), &x.token).await?;
                r.expect_error(
                    "FX-HIS-7",
                    &format!("history for a non-member ({cell})"),
                    ErrorCode::NotMember,
                )?;
            }
            let mut c = ctx
                .connect_raw(
                    &x.id,
                    &format!("/ws/room/{room}?token={}", urlenc(&x.token)),
                    &[],
                )
                .await?;
            expect_rejected(&mut c, "FX-AUTH-11", ErrorCode::NotMember, 4003)
                .await
                .map_err(|e| e.context(&cell))?;
        }
        let after = ctx
            .connect_q(&a, &room, "replay=off")
            .await
            .map_err(ctl)?
            .current_seq();
        ensure_eq(
            "FX-AUTH-11",
            "events stored by the non-members (currentSeq before and after)",
            after,
            before,
        )?;
    }
    Ok(())
}

async fn admin_and_public(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    for role in ["admin", "owner"] {
        let adm = ctx.user_roles(role, &[role]).await?;
        let mut c = ctx.connect(&adm, &room).await.map_err(|e| match e {
            CaseError::Fail(f) => fail(
                "FX-AUTH-11",
                format!("a token with role {role} connects to any room"),
                f.observed,
            ),
            o => o,
        })?;
        send(ctx, &mut c, &format!("{role} was here")).await?;
    }
    let req = fluxy_protocol::http::CreateRoomRequest {
        id: Some(ctx.uid("pub")),
        name: "public".into(),
        room_type: Some(fluxy_protocol::common::RoomType::Public),
        members: vec![],
    };
    let pubroom = ctx.room_req(&a, req).await?;
    let x = ctx.user("anyone").await?;
    let mut c = ctx.connect(&x, &pubroom).await.map_err(|e| match e {
        CaseError::Fail(f) => fail(
            "FX-AUTH-11",
            "any user connects to a public room",
            f.observed,
        ),
        o => o,
    })?;
    send(ctx, &mut c, "hello public").await?;
    Ok(())
}

async fn frame_user_id(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, mut cb) = super::pair(ctx).await?;
    let r = ctx.r();
    ca.send_json(
        &json!({"type":"message","content":"spoof","userId": b.id, "senderId": b.id, "ref": r}),
    )?;
    let ack = ca.ack("FX-AUTH-7", &r).await?;
    let f = cb
        .wait_frame(
            "FX-AUTH-7",
            "the broadcast",
            |f| matches!(f, ServerFrame::Message(m) if Some(m.seq) == ack.seq),
        )
        .await?;
    if let ServerFrame::Message(m) = f {
        ensure_eq(
            "FX-AUTH-7",
            "message.userId",
            m.user_id.as_str(),
            a.id.as_str(),
        )?;
        ensure_eq(
            "FX-AUTH-7",
            "message.senderId",
            m.sender_id.as_str(),
            a.id.as_str(),
        )?;
    }
    // Reaction and read with a spoofed userId.
    let mid = ack.id.unwrap_or(0);
    let reacted = super::req_optional(
        ctx,
        &mut ca,
        "FX-EDT-9",
        json!({"type":"reaction","messageId":mid,"emoji":"👍","userId":b.id}),
    )
    .await?;
    if reacted.is_some() {
        let f = cb
            .wait_frame("FX-EDT-9", "the reaction broadcast", |f| {
                matches!(f, ServerFrame::Reaction(_))
            })
            .await?;
        if let ServerFrame::Reaction(x) = f {
            ensure_eq(
                "FX-EDT-9",
                "reaction.userId",
                x.user_id.as_str(),
                a.id.as_str(),
            )?;
        }
    }
    // HTTP body with userId.
    let res = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId": room, "content":"http spoof", "userId": b.id}),
        )
        .await?;
    res.expect_status("FX-MSG-6", "POST /messages", 201)?;
    let v = res.json().unwrap_or(Value::Null);
    ensure_eq(
        "FX-AUTH-7",
        "POST /messages message.userId",
        v.pointer("/message/userId").cloned(),
        Some(json!(a.id)),
    )?;
    let _ = msg;
    Ok(())
}

async fn expiry_while_connected(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let exp = now() + 3;
    let tok = sign_raw(
        &hs256(),
        &json!({"sub": a.id, "tid": ctx.env.tenant, "roles":["member"], "exp": exp}),
        &s,
    );
    let u = User {
        token: tok,
        ..a.clone()
    };
    let mut c = ctx.connect(&u, &room).await?;
    // Deadline: expiry + 5 s skew + 5 s allowance + slack.
    let dur = Duration::from_secs(3 + 5 + 5) + ctx.ms(2000);
    let code = c.wait_close("FX-AUTH-10", dur).await?;
    let errs = super::errors(&c);
    ensure(
        errs.iter().any(|e| e.code == ErrorCode::TokenExpired),
        "FX-AUTH-10",
        "error token_expired before the close",
        format!(
            "errors {:?}",
            errs.iter().map(|e| e.code).collect::<Vec<_>>()
        ),
    )?;
    ensure_eq("FX-AUTH-10", "close code", code, Some(4005))?;
    let closed_at = now();
    ensure(
        closed_at <= exp + 5 + 5 + 1,
        "FX-AUTH-10",
        "close within 5 s of expiry (+5 s skew)",
        format!("closed {}s after exp", closed_at.saturating_sub(exp)),
    )
}

async fn refresh_in_band(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c = ctx.connect(&a, &room).await?;
    let fresh = ctx
        .mint_for(
            &a.id,
            TokenOpts {
                ttl: Some(7200),
                roles: vec!["member".into(), "moderator".into()],
                ..TokenOpts::default()
            },
        )
        .await?;
    let r = ctx.r();
    c.send_json(&json!({"type":"auth","token":fresh.token,"ref":r}))?;
    match c.answer("FX-AUTH-9", &r).await? {
        ServerFrame::TokenRefreshed(t) => {
            ensure(
                t.roles.contains(&"moderator".to_string()),
                "FX-AUTH-9",
                "token_refreshed carries the new roles",
                format!("{:?}", t.roles),
            )?;
            let old = c
                .welcome
                .as_ref()
                .map(|w| w.token_expires_at.clone())
                .unwrap_or_default();
            ensure(
                t.token_expires_at > old,
                "FX-AUTH-9",
                "a later tokenExpiresAt",
                format!("{} (was {old})", t.token_expires_at),
            )?;
        }
        other => {
            return Err(fail(
                "FX-AUTH-9",
                "token_refreshed with the ref",
                other.encode(),
            ))
        }
    }
    let other = ctx.user("other").await?;
    req_err(
        ctx,
        &mut c,
        "FX-AUTH-9",
        json!({"type":"auth","token":other.token}),
        ErrorCode::Forbidden,
    )
    .await?;
    let r = ctx.r();
    c.send_json(&json!({"type":"auth","token":"garbage.token.here","ref":r}))?;
    match c.answer("FX-AUTH-9", &r).await? {
        ServerFrame::Error(e)
            if e.code == ErrorCode::Unauthorized || e.code == ErrorCode::TokenExpired => {}
        other => {
            return Err(fail(
                "FX-AUTH-9",
                "error unauthorized for a bad token",
                other.encode(),
            ))
        }
    }
    // An expired token of the same user is verified like a handshake token: refused.
    if let Ok(secret) = ctx.secret() {
        let a_id = c
            .welcome
            .as_ref()
            .map(|w| w.user_id.clone())
            .unwrap_or_default();
        let expired = sign_raw(
            &hs256(),
            &json!({"sub": a_id, "tid": ctx.env.tenant, "roles":["member"], "exp": now() - 120}),
            &secret,
        );
        req_err(
            ctx,
            &mut c,
            "FX-AUTH-9",
            json!({"type":"auth","token":expired}),
            ErrorCode::TokenExpired,
        )
        .await
        .map_err(|e| e.context("an in-band auth with an expired token of the same user"))?;
    }
    // Still open and usable with the previous token.
    send(ctx, &mut c, "still here").await.map(|_| ())
}

async fn refresh_extends(ctx: &Ctx) -> Result<(), CaseError> {
    let s = ctx.secret()?;
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let exp = now() + 3;
    let tok = sign_raw(
        &hs256(),
        &json!({"sub": a.id, "tid": ctx.env.tenant, "roles":["member"], "exp": exp}),
        &s,
    );
    let mut c = ctx
        .connect(
            &User {
                token: tok,
                ..a.clone()
            },
            &room,
        )
        .await?;
    let fresh = ctx
        .mint_for(
            &a.id,
            TokenOpts {
                ttl: Some(3600),
                ..TokenOpts::default()
            },
        )
        .await?;
    let r = ctx.r();
    c.send_json(&json!({"type":"auth","token":fresh.token,"ref":r}))?;
    match c.answer("FX-AUTH-9", &r).await? {
        ServerFrame::TokenRefreshed(_) => {}
        other => return Err(fail("FX-AUTH-9", "token_refreshed", other.encode())),
    }
    // Poll until the old expiry plus the allowed skew and allowance has passed; the
    // connection must keep answering.
    let until = exp + 5 + 5 + 1;
    while now() <= until {
        c.sync("FX-AUTH-9").await.map_err(|e| match e {
            CaseError::Fail(f) => fail(
                "FX-AUTH-9",
                "the refreshed connection stays open past the old expiry",
                f.observed,
            ),
            o => o,
        })?;
        tokio::time::sleep(Duration::from_millis(500)).await; // poll interval of the condition loop
    }
    send(ctx, &mut c, "alive").await.map(|_| ())
}

async fn http_requires_token(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let routes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (reqwest::Method::GET, "/rooms".into(), None),
        (
            reqwest::Method::POST,
            "/rooms".into(),
            Some(json!({"name":"x"})),
        ),
        (reqwest::Method::GET, format!("/rooms/{room}"), None),
        (reqwest::Method::GET, format!("/rooms/{room}/members"), None),
        (
            reqwest::Method::POST,
            format!("/rooms/{room}/members"),
            Some(json!({"userId":"x"})),
        ),
        (reqwest::Method::GET, format!("/rooms/{room}/history"), None),
        (
            reqwest::Method::POST,
            "/messages".into(),
            Some(json!({"roomId":room,"content":"x"})),
        ),
        (
            reqwest::Method::GET,
            format!("/api/messages?roomId={room}"),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/rooms/{room}/poll?timeoutMs=0"),
            None,
        ),
    ];
    for (m, p, b) in routes {
        let r = ctx.http(m.clone(), &p, None, b.as_ref()).await?;
        let optional = p.contains("/history") || p.contains("/api/") || p.contains("/poll");
        if r.status == 404 && optional {
            // A route of a profile the server does not implement (FX-PRF-2): no route, no
            // token to require.
            ctx.note(&format!("{m} {p} answers 404: route of an absent profile"));
            continue;
        }
        ensure(
            r.status == 401,
            "FX-AUTH-8",
            format!("{m} {p} without a token: HTTP 401"),
            format!("{} {}", r.status, crate::ctx::short(&r.text, 200)),
        )?;
        if r.error_code().as_deref() != Some(ErrorCode::Unauthorized.as_str()) {
            ctx.tr.observe(
                "FX-ERR-4",
                &format!("{m} {p} without a token: an ErrorBody `unauthorized`"),
                &format!("{} {}", r.status, crate::ctx::short(&r.text, 200)),
            );
        }
    }
    // The query-parameter token on HTTP: a core route (and history, when it exists).
    for p in [format!("/rooms/{room}"), format!("/rooms/{room}/history")] {
        let r = ctx
            .http(
                reqwest::Method::GET,
                &format!("{p}?token={}", urlenc(&a.token)),
                None,
                None,
            )
            .await?;
        if r.status == 404 && p.ends_with("/history") {
            continue;
        }
        r.expect_status("FX-AUTH-8", &format!("GET {p} with ?token="), 200)?;
    }
    Ok(())
}

async fn api_keys_not_exposed(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let key = ctx.env.target.api_key.clone();
    for p in [
        "/rooms".to_string(),
        format!("/rooms/{room}"),
        format!("/rooms/{room}/members"),
        "/health".into(),
    ] {
        let r = ctx.get(&p, &a.token).await?;
        ensure(
            !r.text.contains(&key),
            "FX-AUTH-17",
            format!("GET {p} does not reveal the API key"),
            "the API key appears in the body",
        )?;
    }
    ensure(
        !a.token.contains(&key),
        "FX-AUTH-17",
        "tokens do not embed the API key",
        "they do",
    )
}
