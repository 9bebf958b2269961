//! Errors and close codes (ERR), and version/clause-index obligations (VER).

use fluxy_protocol::codes::{CloseCode, ALL_ERROR_CODES};
use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use super::{expect_rejected, has_history, pair, req_err, req_err_optional, send, stored_timeline};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{urlenc, Ctx, Incoming};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("err/error-frame-shape", ["FX-ERR-1", "FX-ERR-2", "FX-ERR-3"], "error frames carry a known code, a message and retryable exactly per the table", error_shape),
        case!("err/http-error-bodies", ["FX-ERR-4"], "HTTP errors carry an ErrorBody, application/json and the table's status", http_errors),
        case!("err/unknown-route-and-method", ["FX-ERR-9"], "unknown routes get 404 not_found, wrong methods 405 method_not_allowed", routes),
        case!("err/close-codes-and-reasons", ["FX-ERR-5", "FX-ERR-6", "FX-ERR-8"], "handshake closes use the table's code and reason, preceded by an error frame", close_codes),
        case!("err/failure-isolated", ["FX-ERR-7"], "one misbehaving connection does not affect others or lose data", isolated),
        case!("err/room-not-found", ["FX-ERR-5"], "connecting to a room that does not exist gets 4404 room_not_found", room_not_found),
        case!("ver/clause-index", ["FX-VER-6"], "clause ids are unique and removed clauses are REMOVED tombstones (checks the spec index)", clause_index),
        case!("ver/client-ignores-unknown-frames", ["FX-VER-5"], "runner self-check: the client side ignores server frame types it does not know", client_ignores),
    ]
}

async fn error_shape(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    // Each provocation's answer is another clause's business (the clause in `owner`): a
    // server that does not refuse one blocks this case only if no error frame came at all.
    let mut provoked: Option<CaseError> = None;
    let mut keep = |r: Result<(), CaseError>, owner: &str| {
        if let Err(e) = r {
            provoked.get_or_insert(crate::case::provocation(owner, e));
        }
    };
    ca.send_text("nope")?;
    let r = req_err(
        ctx,
        &mut ca,
        "FX-ERR-1",
        json!({"type":"message","content":"reply","parentId":1234}),
        ErrorCode::NotFound,
    )
    .await;
    keep(r, "FX-MSG-4");
    let r = req_err_optional(
        ctx,
        &mut ca,
        "FX-ERR-1",
        json!({"type":"edit","messageId":1234,"content":"x"}),
        ErrorCode::NotFound,
    )
    .await
    .map(|_| ());
    keep(r, "FX-EDT-7");
    let r = req_err(
        ctx,
        &mut ca,
        "FX-ERR-1",
        json!({"type":"message","content":" "}),
        ErrorCode::InvalidContent,
    )
    .await;
    keep(r, "FX-MSG-3");
    let r = req_err_optional(
        ctx,
        &mut ca,
        "FX-ERR-1",
        json!({"type":"agentRun","runId":"r","status":"started"}),
        ErrorCode::Forbidden,
    )
    .await
    .map(|_| ());
    keep(r, "FX-AGT-2");
    ca.send_json(&json!({"type":"mystery"}))?;
    match ca.sync("FX-ERR-1").await {
        Ok(()) => {}
        // A pong without the echo (FX-FRM-8): the barrier is unusable, but every provocation
        // above was already answered; judge what arrived.
        Err(CaseError::Fail(f)) if f.clause == "FX-FRM-8" => {}
        Err(e) => return Err(e),
    }
    let mut judged = 0usize;
    for it in &ca.log {
        if let Incoming::Text {
            value: Some(v),
            text,
            ..
        } = it
        {
            if v.get("type").and_then(|t| t.as_str()) != Some("error") {
                continue;
            }
            judged += 1;
            let code = v.get("code").and_then(|c| c.as_str());
            ensure(
                code.is_some()
                    && v.get("retryable").is_some_and(Value::is_boolean)
                    && v.get("message")
                        .and_then(|m| m.as_str())
                        .is_some_and(|m| !m.is_empty()),
                "FX-ERR-1",
                "an error frame with `code`, a non-empty `message` and `retryable`",
                text,
            )?;
            let code = code.unwrap_or("");
            let known = ALL_ERROR_CODES.iter().find(|c| c.as_str() == code);
            let Some(known) = known else {
                return Err(fail("FX-ERR-2", "a code from the table", text));
            };
            ensure_eq(
                "FX-ERR-3",
                &format!("retryable of {code}"),
                v.get("retryable").and_then(|r| r.as_bool()),
                Some(known.retryable()),
            )?;
        }
    }
    if let Some(p) = provoked {
        if judged == 0 {
            return Err(p);
        }
    }
    ensure(judged >= 5, "FX-ERR-1", "five error frames", judged)
}

async fn http_errors(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, _, _) = pair(ctx).await?;
    let x = ctx.user("x").await?;
    let mut checks: Vec<(String, Option<&str>, ErrorCode)> = vec![
        ("/rooms".into(), None, ErrorCode::Unauthorized),
        (
            "/rooms/no-such-room-xyz".into(),
            Some(a.token.as_str()),
            ErrorCode::NotFound,
        ),
    ];
    // The history route's errors when the server has that profile (FX-PRF-2: 404 otherwise).
    if has_history(ctx, &a, &room).await? {
        checks.extend([
            (
                format!("/rooms/{room}/history"),
                Some(x.token.as_str()),
                ErrorCode::NotMember,
            ),
            (
                format!("/rooms/{room}/history?limit=0"),
                Some(a.token.as_str()),
                ErrorCode::InvalidFrame,
            ),
            (
                format!("/rooms/{room}/history?cursor=zzzz"),
                Some(a.token.as_str()),
                ErrorCode::InvalidCursor,
            ),
        ]);
    }
    for (p, t, code) in checks {
        let r = ctx.http(reqwest::Method::GET, &p, t, None).await?;
        r.expect_error("FX-ERR-4", &format!("GET {p}"), code)?;
        let ct = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        ensure(
            ct.starts_with("application/json"),
            "FX-ERR-4",
            format!("Content-Type application/json on GET {p}"),
            ct,
        )?;
        let v = r.json().unwrap_or_default();
        ensure(
            v.get("message").is_some() && v.get("retryable").is_some(),
            "FX-ERR-4",
            "an ErrorBody with message and retryable",
            &r.text,
        )?;
    }
    let r = ctx.post("/rooms", &a.token, &json!({"name": 5})).await?;
    r.expect_error(
        "FX-ERR-4",
        "POST /rooms with a mistyped name",
        ErrorCode::InvalidFrame,
    )?;
    // A core 403: a non-member posting to the room (FX-AUTH-11).
    let r = ctx
        .post(
            "/messages",
            &x.token,
            &json!({"roomId": room, "content": "not a member"}),
        )
        .await?;
    r.expect_error(
        "FX-ERR-4",
        "POST /messages by a non-member",
        ErrorCode::NotMember,
    )?;
    let r = ctx
        .http_with(
            reqwest::Method::POST,
            "/rooms",
            Some(&a.token),
            None,
            &[("Content-Type", "application/json")],
            None,
        )
        .await?;
    ensure(
        r.status == 400
            && matches!(
                r.error_code().as_deref(),
                Some("malformed_frame") | Some("invalid_frame")
            ),
        "FX-ERR-4",
        "400 malformed_frame for an empty JSON body",
        format!("{} {}", r.status, r.text),
    )
}

async fn routes(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let r = ctx.get("/no/such/route", &a.token).await?;
    r.expect_error("FX-ERR-9", "GET /no/such/route", ErrorCode::NotFound)?;
    let r = ctx
        .http(reqwest::Method::DELETE, "/auth/token", None, None)
        .await?;
    r.expect_error(
        "FX-ERR-9",
        "DELETE /auth/token",
        ErrorCode::MethodNotAllowed,
    )?;
    let r = ctx
        .http(reqwest::Method::PUT, "/rooms", Some(&a.token), None)
        .await?;
    r.expect_error("FX-ERR-9", "PUT /rooms", ErrorCode::MethodNotAllowed)
}

async fn close_codes(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let x = ctx.user("x").await?;
    // Each row names the clause that requires the rejection: a connection accepted anyway is
    // that clause's evidence (this case is then blocked), not a close-code one.
    let cases = [
        (
            format!("/ws/room/{room}?token=bad.token.x"),
            ErrorCode::Unauthorized,
            CloseCode::Unauthorized,
            "FX-AUTH-6",
        ),
        (
            format!("/ws/room/{room}?token={}", urlenc(&x.token)),
            ErrorCode::NotMember,
            CloseCode::Forbidden,
            "FX-AUTH-11",
        ),
        (
            format!("/ws/room/{room}?token={}&v=9", urlenc(&a.token)),
            ErrorCode::UnsupportedVersion,
            CloseCode::UnsupportedVersion,
            "FX-VER-2",
        ),
    ];
    for (path, code, close, why) in cases {
        let mut c = ctx.connect_raw("probe", &path, &[]).await?;
        if let Some(Incoming::Refused { status, body }) = c.log.first() {
            // FX-HS-3's MAY: no connection was opened, so no close code or closing error
            // frame is due (FX-ERR-5, FX-ERR-8); the refusal's status and body are FX-ERR-4's.
            refused_as(ctx, code, *status, body);
            continue;
        }
        expect_rejected(&mut c, "FX-ERR-5", code, close.code())
            .await
            .map_err(|e| match e {
                CaseError::Fail(f) if f.observed.starts_with("the connection was accepted") => {
                    fail(why, f.expected, f.observed)
                }
                other => other,
            })?;
        let reason = c
            .log
            .iter()
            .find_map(|i| match i {
                Incoming::Closed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .unwrap_or_default();
        ensure_eq(
            "FX-ERR-5",
            &format!("close reason for {}", close.code()),
            reason.as_str(),
            close.reason(),
        )?;
        // FX-ERR-6 (client obligation): the runner classifies every code it sees.
        ensure(
            CloseCode::from_code(close.code()).is_some(),
            "FX-ERR-6",
            "a close code from the table",
            close.code(),
        )?;
    }
    Ok(())
}

async fn isolated(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, mut cb) = pair(ctx).await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(
            send(ctx, &mut ca, &format!("safe {i}"))
                .await?
                .seq
                .unwrap_or(0),
        );
    }
    // b misbehaves in every way it can, then dies without a close frame.
    cb.send_text("{{{{")?;
    cb.send_binary(vec![0; 1000])?;
    cb.send_text(&"z".repeat(70_000))?;
    cb.send_json(&json!({"type":"resume","lastSeq":"x"}))?;
    cb.send_json(&json!({"type":"message","content":"valid in between","ref":"vb"}))?;
    let vb = cb.ack("FX-ERR-7", "vb").await?;
    acked.push(vb.seq.unwrap_or(0));
    cb.kill();
    for i in 0..5 {
        acked.push(
            send(ctx, &mut ca, &format!("still fine {i}"))
                .await?
                .seq
                .unwrap_or(0),
        );
    }
    let c3 = ctx.connect(&b, &room).await?;
    let hist: Vec<u64> = stored_timeline(ctx, &a, &room, 100)
        .await?
        .iter()
        .map(|(e, _)| e.seq())
        .collect();
    ensure_eq("FX-ERR-7", "every acked event in history", hist, acked)?;
    drop(c3);
    Ok(())
}

async fn room_not_found(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user_roles("a", &["admin"]).await?;
    let mut c = ctx
        .connect_raw(
            "probe",
            &format!("/ws/room/{}?token={}", ctx.uid("nowhere"), urlenc(&a.token)),
            &[],
        )
        .await?;
    if let Some(Incoming::Refused { status, body }) = c.log.first() {
        // No connection, no close code (FX-ERR-5 does not apply); the HTTP answer must be
        // the table's 404 `not_found` (FX-ERR-4).
        let (status, body) = (*status, body.clone());
        refused_as(ctx, ErrorCode::NotFound, status, &body);
        let got = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|x| x.as_str()).map(str::to_owned));
        return ensure(
            status == 404 && got.as_deref() == Some("not_found"),
            "FX-ERR-4",
            "an upgrade to a room that does not exist refused with 404 `not_found`",
            format!("HTTP {status} {}", crate::ctx::short(&body, 200)),
        );
    }
    expect_rejected(&mut c, "FX-ERR-5", ErrorCode::NotFound, 4404).await
}

/// Record an upgrade refused over HTTP: a note, and an FX-ERR-4 observation when the status
/// or the `ErrorBody` code is not the table's for `code`.
fn refused_as(ctx: &Ctx, code: ErrorCode, status: u16, body: &str) {
    ctx.note(&format!(
        "upgrade refused with HTTP {status} (FX-HS-3 allows it): no close code applies"
    ));
    let got = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|x| x.as_str()).map(str::to_owned));
    if status != code.http_status() || got.as_deref() != Some(code.as_str()) {
        ctx.tr.observe(
            "FX-ERR-4",
            &format!("a refused upgrade answers {} `{code}`", code.http_status()),
            &format!("HTTP {status} {}", crate::ctx::short(body, 200)),
        );
    }
}

async fn clause_index(_ctx: &Ctx) -> Result<(), CaseError> {
    let cs = fluxy_protocol::spec::parse_clauses(fluxy_protocol::spec::SPEC_MARKDOWN)
        .map_err(|e| fail("FX-VER-6", "a clause index with unique ids", e.to_string()))?;
    for c in &cs {
        if c.level == fluxy_protocol::spec::Level::Removed {
            ensure(
                c.text.starts_with("REMOVED"),
                "FX-VER-6",
                "tombstones start with REMOVED",
                &c.text,
            )?;
        }
    }
    ensure(
        cs.len() >= 142,
        "FX-VER-6",
        "no clause removed without a tombstone (>= 142 clauses)",
        cs.len(),
    )
}

async fn client_ignores(ctx: &Ctx) -> Result<(), CaseError> {
    // The runner's decoder rejects unknown types; its connection keeps reading past them.
    let unknown = r#"{"type":"future_frame","x":1}"#;
    ensure(
        ServerFrame::decode(unknown).is_err(),
        "FX-VER-5",
        "an unknown type is recognised as unknown",
        "decoded",
    )?;
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    send(ctx, &mut ca, "the runner keeps reading")
        .await
        .map(|_| ())
}
