//! Framing (FRM).

use fluxy_protocol::common::parse_timestamp;
use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use super::{errors, pair, req, req_optional, send};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{Ctx, Incoming};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "frm/malformed-json",
            ["FX-FRM-3", "FX-FRM-1", "FX-ERR-1"],
            "non-JSON and non-object frames get malformed_frame; the connection stays usable",
            malformed
        ),
        case!(
            "frm/missing-or-mistyped-field",
            ["FX-FRM-3"],
            "missing or mistyped fields get invalid_frame naming the field",
            missing_field
        ),
        case!(
            "frm/unknown-type",
            ["FX-FRM-3", "FX-FRM-2"],
            "an unknown or missing type gets unknown_type / invalid_frame",
            unknown_type
        ),
        case!(
            "frm/unknown-fields-ignored",
            ["FX-FRM-4"],
            "unknown fields in a frame cause no error",
            unknown_fields
        ),
        case!(
            "frm/null-as-absent",
            ["FX-FRM-12"],
            "null optional fields are treated as absent",
            null_absent
        ),
        case!(
            "frm/timestamps",
            ["FX-FRM-5"],
            "every timestamp is RFC 3339 UTC with exactly three fractional digits",
            timestamps
        ),
        case!(
            "frm/invalid-ids",
            ["FX-FRM-6"],
            "ids outside ^[A-Za-z0-9_-]{1,128}$ are rejected",
            invalid_ids
        ),
        case!(
            "frm/ref-echo",
            ["FX-FRM-7"],
            "ack, error, replay and token_refreshed echo the request's ref",
            ref_echo
        ),
        case!(
            "frm/ref-bounds",
            ["FX-FRM-7", "FX-FRM-3"],
            "a failing frame whose ref is empty or over 128 characters gets an error without ref; the connection stays usable",
            ref_bounds
        ),
        case!(
            "frm/ping-pong",
            ["FX-FRM-8"],
            "ping is answered by pong echoing ts",
            ping_pong
        ),
        case!(
            "frm/binary-frame",
            ["FX-FRM-9"],
            "a binary frame gets binary_not_supported and the connection stays open",
            binary
        ),
        case!(
            "frm/error-only-to-sender",
            ["FX-FRM-10"],
            "an error goes only to the connection that caused it",
            error_only_to_sender
        ),
        case!(
            "frm/server-frames-well-formed",
            ["FX-FRM-1", "FX-FRM-2"],
            "every server frame is one JSON object with a known string type",
            server_frames
        ),
    ]
}

async fn malformed(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, _) = pair(ctx).await?;
    for bad in [
        "this is not json",
        "{\"type\":\"message\",",
        "[1,2,3]",
        "\"message\"",
        "42",
        "null",
    ] {
        c.send_text(bad)?;
        let e = c
            .expect_error_any("FX-FRM-3", ErrorCode::MalformedFrame)
            .await?;
        ensure(
            !e.message.is_empty(),
            "FX-ERR-1",
            "a human-readable message",
            "empty",
        )?;
    }
    send(ctx, &mut c, "still usable").await.map(|_| ())
}

async fn missing_field(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, _) = pair(ctx).await?;
    let cases = [
        (json!({"type":"message"}), "content"),
        (json!({"type":"message","content":42}), "content"),
        (
            json!({"type":"edit","messageId":"one","content":"x"}),
            "messageId",
        ),
        (json!({"type":"reaction","emoji":"x"}), "messageId"),
        (json!({"type":"resume","lastSeq":-1}), "lastSeq"),
        (json!({"type":"typing","isTyping":"yes"}), "isTyping"),
    ];
    for (f, field) in cases {
        c.send_json(&f)?;
        let ty = f["type"].as_str().unwrap_or("?");
        let e = match c
            .wait_frame("FX-FRM-3", "`error invalid_frame`", |x| {
                matches!(x, ServerFrame::Error(_))
            })
            .await?
        {
            ServerFrame::Error(e) => e,
            other => return Err(fail("FX-FRM-3", "`error invalid_frame`", other.encode())),
        };
        if e.code == ErrorCode::UnknownType && !matches!(ty, "message" | "resume") {
            // `edit`, `reaction` and `typing` belong to optional profiles (FX-PRF-2).
            ctx.note(&format!(
                "`{ty}` answered unknown_type (its profile is not implemented): field check left out"
            ));
            continue;
        }
        ensure_eq(
            "FX-FRM-3",
            &format!("error code for {f}"),
            e.code,
            ErrorCode::InvalidFrame,
        )?;
        ensure_eq(
            "FX-FRM-3",
            &format!("error.field for {f}"),
            e.field.as_deref(),
            Some(field),
        )?;
    }
    send(ctx, &mut c, "still usable").await.map(|_| ())
}

async fn unknown_type(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, _) = pair(ctx).await?;
    c.send_json(&json!({"type":"launch_missiles","ref":"u1"}))?;
    c.expect_error_any("FX-FRM-3", ErrorCode::UnknownType)
        .await?;
    c.send_json(&json!({"type":"welcome"}))?;
    c.expect_error_any("FX-FRM-2", ErrorCode::UnknownType)
        .await?;
    c.send_json(&json!({"content":"no type"}))?;
    let e = c
        .expect_error_any("FX-FRM-2", ErrorCode::InvalidFrame)
        .await?;
    ensure_eq("FX-FRM-2", "error.field", e.field.as_deref(), Some("type"))?;
    c.send_json(&json!({"type":7}))?;
    c.expect_error_any("FX-FRM-2", ErrorCode::InvalidFrame)
        .await?;
    send(ctx, &mut c, "still usable").await.map(|_| ())
}

async fn unknown_fields(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, _) = pair(ctx).await?;
    let a = req(
        ctx,
        &mut c,
        "FX-FRM-4",
        json!({"type":"message","content":"x","futureField":{"a":1},"priority":"high"}),
    )
    .await?;
    req_optional(
        ctx,
        &mut c,
        "FX-FRM-4",
        json!({"type":"reaction","messageId":a.id,"emoji":"🎉","extra":[1]}),
    )
    .await?;
    c.send_json(&json!({"type":"ping","ts":5,"whatever":true}))?;
    c.wait_frame(
        "FX-FRM-4",
        "pong",
        |f| matches!(f, ServerFrame::Pong(p) if p.echo == Some(5)),
    )
    .await?;
    // `unknown_type` for the reaction of a server without the edits profile is FX-PRF-2's
    // answer, not an error caused by the unknown fields.
    let errs: Vec<_> = errors(&c)
        .into_iter()
        .filter(|e| e.code != ErrorCode::UnknownType)
        .collect();
    ensure(errs.is_empty(), "FX-FRM-4", "no error", format!("{errs:?}"))
}

async fn null_absent(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, _) = pair(ctx).await?;
    req(ctx, &mut c, "FX-FRM-12", json!({"type":"message","content":"x","clientMessageId":null,"parentId":null,"attachments":null})).await?;
    req(
        ctx,
        &mut c,
        "FX-FRM-12",
        json!({"type":"message","content":"y","parentId":null}),
    )
    .await?;
    Ok(())
}

fn check_ts(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                if k.ends_with("At") {
                    match x.as_str() {
                        Some(s) if parse_timestamp(s).is_some() => {}
                        _ => out.push(format!("{p}={x}")),
                    }
                } else {
                    check_ts(x, &p, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_ts(x, path, out)),
        _ => {}
    }
}

async fn timestamps(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut c, _) = pair(ctx).await?;
    let ack = send(ctx, &mut c, "time").await?;
    req_optional(
        ctx,
        &mut c,
        "FX-FRM-5",
        json!({"type":"edit","messageId":ack.id,"content":"time2"}),
    )
    .await?;
    req_optional(
        ctx,
        &mut c,
        "FX-FRM-5",
        json!({"type":"reaction","messageId":ack.id,"emoji":"⏰"}),
    )
    .await?;
    let e = req(
        ctx,
        &mut c,
        "FX-FRM-5",
        json!({"type":"message","content":"del"}),
    )
    .await?;
    let deleted = req_optional(
        ctx,
        &mut c,
        "FX-FRM-5",
        json!({"type":"delete","messageId":e.id}),
    )
    .await?;
    let last = e.seq.unwrap_or(0) + u64::from(deleted.is_some());
    c.wait_seq("FX-FRM-5", last).await?;
    let mut bad = Vec::new();
    for it in &c.log {
        if let Incoming::Text { value: Some(v), .. } = it {
            check_ts(v, "", &mut bad);
        }
    }
    let h = ctx.get(&format!("/rooms/{room}/history"), &a.token).await?;
    check_ts(&h.json().unwrap_or(Value::Null), "history", &mut bad);
    let tr = ctx.get("/rooms", &a.token).await?;
    check_ts(&tr.json().unwrap_or(Value::Null), "rooms", &mut bad);
    ensure(
        bad.is_empty(),
        "FX-FRM-5",
        "timestamps like 2026-11-26T16:19:14.677Z",
        bad.join(", "),
    )?;
    if let Some(ack_at) = &ack.created_at {
        ensure(
            ack_at.len() == 24 && ack_at.ends_with('Z'),
            "FX-FRM-5",
            "ack.createdAt with milliseconds and Z",
            ack_at,
        )?;
    }
    Ok(())
}

async fn invalid_ids(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let r = ctx
        .post(
            "/rooms",
            &a.token,
            &json!({"id":"bad id!","name":"x","type":"group"}),
        )
        .await?;
    r.expect_error(
        "FX-FRM-6",
        "POST /rooms with id 'bad id!'",
        ErrorCode::InvalidFrame,
    )?;
    let long = "x".repeat(129);
    let r = ctx
        .post(
            "/rooms",
            &a.token,
            &json!({"id":long,"name":"x","type":"group"}),
        )
        .await?;
    r.expect_error(
        "FX-FRM-6",
        "POST /rooms with a 129-character id",
        ErrorCode::InvalidFrame,
    )?;
    let key = ctx.env.target.api_key.clone();
    let r = ctx
        .http_with(
            reqwest::Method::POST,
            "/auth/token",
            None,
            Some(&json!({"userId":"no spaces"})),
            &[("X-Fluxy-Api-Key", &key)],
            None,
        )
        .await?;
    r.expect_error(
        "FX-FRM-6",
        "POST /auth/token with userId 'no spaces'",
        ErrorCode::InvalidFrame,
    )?;
    let r = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId":"bad room!","content":"x"}),
        )
        .await?;
    ensure(
        r.status == 400 || r.status == 404,
        "FX-FRM-6",
        "400 invalid_frame (or 404) for roomId 'bad room!'",
        format!("{} {}", r.status, r.text),
    )?;
    let r = ctx.get("/rooms/bad%20room/history", &a.token).await?;
    ensure(
        r.status == 404 || (r.status == 400 && r.error_code().as_deref() == Some("invalid_frame")),
        "FX-FRM-6",
        "404 (or 400 invalid_frame) for an invalid path id",
        format!("{} {}", r.status, r.text),
    )
}

async fn ref_echo(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, _, mut c, _) = pair(ctx).await?;
    c.send_json(&json!({"type":"message","content":"x","ref":"ref-ack-1"}))?;
    ensure(
        matches!(
            c.answer("FX-FRM-7", "ref-ack-1").await?,
            ServerFrame::Ack(_)
        ),
        "FX-FRM-7",
        "ack with ref",
        "other",
    )?;
    c.send_json(&json!({"type":"edit","messageId":99999,"content":"x","ref":"ref-err-1"}))?;
    ensure(
        matches!(
            c.answer("FX-FRM-7", "ref-err-1").await?,
            ServerFrame::Error(_)
        ),
        "FX-FRM-7",
        "error with ref",
        "other",
    )?;
    c.send_json(&json!({"type":"resume","lastSeq":0,"ref":"ref-rep-1"}))?;
    ensure(
        matches!(
            c.answer("FX-FRM-7", "ref-rep-1").await?,
            ServerFrame::Replay(_)
        ),
        "FX-FRM-7",
        "replay with ref",
        "other",
    )?;
    let fresh = ctx
        .mint_for(&a.id, crate::ctx::TokenOpts::default())
        .await?;
    c.send_json(&json!({"type":"auth","token":fresh.token,"ref":"ref-tok-1"}))?;
    ensure(
        matches!(
            c.answer("FX-FRM-7", "ref-tok-1").await?,
            ServerFrame::TokenRefreshed(_)
        ),
        "FX-FRM-7",
        "token_refreshed with ref",
        "other",
    )
}

async fn ping_pong(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, _) = pair(ctx).await?;
    c.send_json(&json!({"type":"ping","ts":123456789}))?;
    c.wait_frame(
        "FX-FRM-8",
        "pong with echo 123456789",
        |f| matches!(f, ServerFrame::Pong(p) if p.echo == Some(123456789)),
    )
    .await?;
    c.send_json(&json!({"type":"ping"}))?;
    c.wait_frame(
        "FX-FRM-8",
        "pong for a ping without ts",
        |f| matches!(f, ServerFrame::Pong(p) if p.ts > 0),
    )
    .await?;
    Ok(())
}

async fn binary(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, mut o) = pair(ctx).await?;
    c.send_binary(vec![0, 1, 2, 3, 255])?;
    c.expect_error_any("FX-FRM-9", ErrorCode::BinaryNotSupported)
        .await?;
    c.send_binary(br#"{"type":"message","content":"binary json"}"#.to_vec())?;
    c.expect_error_any("FX-FRM-9", ErrorCode::BinaryNotSupported)
        .await?;
    let a = send(ctx, &mut c, "text still works").await?;
    o.wait_seq("FX-FRM-9", a.seq.unwrap_or(0)).await?;
    ensure_eq(
        "FX-FRM-9",
        "events stored (binary frames must not create any)",
        a.seq,
        Some(1),
    )?;
    let bins = c
        .log
        .iter()
        .chain(o.log.iter())
        .filter(|i| matches!(i, Incoming::Binary(_)))
        .count();
    ensure_eq("FX-FRM-9", "binary frames sent by the server", bins, 0)
}

async fn error_only_to_sender(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, mut o) = pair(ctx).await?;
    c.send_text("garbage")?;
    c.send_json(&json!({"type":"message","content":"x","parentId":424242,"ref":"e1"}))?;
    // Refusing an unknown parent is FX-MSG-4's business; this case needs the error.
    c.expect_error("FX-FRM-10", "e1", ErrorCode::NotFound)
        .await
        .map_err(|e| crate::case::provocation("FX-MSG-4", e))?;
    let a = send(ctx, &mut c, "barrier").await?;
    o.wait_seq("FX-FRM-10", a.seq.unwrap_or(0)).await?;
    o.sync("FX-FRM-10").await?;
    let errs = errors(&o);
    ensure(
        errs.is_empty(),
        "FX-FRM-10",
        "no error frames on the other connection",
        format!("{errs:?}"),
    )
}

async fn server_frames(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, mut o) = pair(ctx).await?;
    let a = send(ctx, &mut c, "hello").await?;
    c.send_json(&json!({"type":"typing","isTyping":true}))?;
    if req_optional(
        ctx,
        &mut c,
        "FX-FRM-2",
        json!({"type":"reaction","messageId":a.id,"emoji":"👍"}),
    )
    .await?
    .is_none()
    {
        send(ctx, &mut c, "second event").await?;
    }
    c.send_text("bad")?;
    c.sync("FX-FRM-2").await?;
    o.wait_seq("FX-FRM-2", 2).await?;
    for conn in [&c, &o] {
        for it in &conn.log {
            match it {
                Incoming::Text { text, value, frame } => {
                    ensure(
                        value.as_ref().is_some_and(Value::is_object),
                        "FX-FRM-1",
                        "a JSON object",
                        text,
                    )?;
                    let t = value
                        .as_ref()
                        .and_then(|v| v.get("type"))
                        .and_then(Value::as_str);
                    ensure(
                        t.is_some_and(|t| fluxy_protocol::server::SERVER_TYPES.contains(&t)),
                        "FX-FRM-2",
                        "a known string type",
                        text,
                    )?;
                    if frame.is_none() {
                        let err = ServerFrame::decode(text)
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        return Err(fail(
                            "FX-FRM-2",
                            "a frame matching the ServerFrame schema",
                            format!("{text} ({err})"),
                        ));
                    }
                }
                Incoming::Binary(n) => {
                    return Err(fail(
                        "FX-FRM-1",
                        "text frames only",
                        format!("binary frame of {n} bytes"),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

async fn ref_bounds(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut c, _) = pair(ctx).await?;
    for bad in ["x".repeat(129), String::new()] {
        // A message without content fails validation whatever its ref.
        c.send_json(&json!({"type":"message","ref":bad}))?;
        let what = format!(
            "an `error` answering a frame with a {}-character ref",
            bad.len()
        );
        let it = c
            .wait_item("FX-FRM-7", &what, |i| {
                matches!(i.frame(), Some(ServerFrame::Error(_)))
            })
            .await?;
        let Incoming::Text { text, value, .. } = &it else {
            return Err(fail("FX-FRM-7", what, format!("{it:?}")));
        };
        let echoed = value
            .as_ref()
            .and_then(|v| v.get("ref"))
            .is_some_and(|r| !r.is_null());
        ensure(
            !echoed,
            "FX-FRM-7",
            format!(
                "no `ref` in the error (a {}-character ref is outside 1-128 and is not echoed)",
                bad.len()
            ),
            text,
        )?;
        let ok = send(ctx, &mut c, "still usable").await?;
        ensure(
            ok.seq.is_some(),
            "FX-FRM-3",
            "the connection stays usable after the error",
            format!("{ok:?}"),
        )?;
    }
    Ok(())
}
