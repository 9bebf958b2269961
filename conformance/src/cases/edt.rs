//! Edits, deletes, reactions and read receipts (EDT).

use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use super::{pair, req, req_err, send};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::Ctx;

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("edt/ack-created-at-is-event-time", ["FX-ACK-9"], "the ack of an edit, reaction, read and delete carries that event's commit time (editedAt, createdAt, deletedAt), not the message's", created_at_is_event_time),
        case!("edt/edit-author-only", ["FX-EDT-1", "FX-EDT-9", "FX-EDT-2"], "only the author edits; the edit event carries the editor's verified id", edit_author),
        case!("edt/edit-versions", ["FX-EDT-2"], "each edit raises version by one; a stale expectedVersion gets conflict", edit_versions),
        case!("edt/delete-authorisation", ["FX-EDT-3", "FX-EDT-9"], "author, room owner/admin/moderator or a token with role owner, admin or moderator may delete; others get forbidden", delete_auth),
        case!("edt/deleted-is-final", ["FX-EDT-4"], "delete bumps the version, leaves /api/messages, and later edits, reactions, streams and deletes get conflict", deleted_final),
        case!("edt/reaction-on-deleted", ["FX-EDT-4"], "reacting to a deleted message gets conflict and broadcasts no reaction", reaction_on_deleted),
        case!("edt/reactions", ["FX-EDT-5", "FX-EDT-6"], "one reaction per (user, message, emoji); emoji 1-64 characters without outer whitespace", reactions),
        case!("edt/not-found", ["FX-EDT-7"], "edits, deletes, reactions and reads of unknown messages get not_found", not_found),
        case!("edt/error-precedence", ["FX-EDT-10"], "a request wrong in several ways gets the first error in the order invalid, not_found, forbidden, conflict", error_precedence),
        case!("edt/read-receipts", ["FX-EDT-8", "FX-EDT-9"], "read advances monotonically and produces an event only when it advances", reads),
    ]
}

async fn edit_author(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, _, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "mine").await?;
    req_err(
        ctx,
        &mut cb,
        "FX-EDT-1",
        json!({"type":"edit","messageId":m.id,"content":"hijacked"}),
        ErrorCode::Forbidden,
    )
    .await?;
    let adm = ctx.user_roles("adm", &["admin", "owner"]).await?;
    let room = ca
        .welcome
        .as_ref()
        .map(|w| w.room_id.clone())
        .unwrap_or_default();
    let mut cadm = ctx.connect(&adm, &room).await?;
    req_err(
        ctx,
        &mut cadm,
        "FX-EDT-1",
        json!({"type":"edit","messageId":m.id,"content":"admin edit"}),
        ErrorCode::Forbidden,
    )
    .await?;
    let e = req(
        ctx,
        &mut ca,
        "FX-EDT-1",
        json!({"type":"edit","messageId":m.id,"content":"mine, edited","userId":"someone"}),
    )
    .await?;
    let f = cb
        .wait_frame(
            "FX-EDT-9",
            "the edit event",
            |f| matches!(f, ServerFrame::Edit(x) if Some(x.seq) == e.seq),
        )
        .await?;
    if let ServerFrame::Edit(x) = f {
        ensure_eq("FX-EDT-9", "edit.userId", x.user_id, a.id.clone())?;
        ensure_eq(
            "FX-EDT-2",
            "edit.content",
            x.content,
            "mine, edited".to_string(),
        )?;
        ensure_eq("FX-EDT-2", "edit.id", Some(x.id), m.id)?;
    }
    Ok(())
}

async fn edit_versions(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "v1").await?;
    req(
        ctx,
        &mut ca,
        "FX-EDT-2",
        json!({"type":"edit","messageId":m.id,"content":"v2","expectedVersion":1}),
    )
    .await?;
    req(
        ctx,
        &mut ca,
        "FX-EDT-2",
        json!({"type":"edit","messageId":m.id,"content":"v3"}),
    )
    .await?;
    req_err(
        ctx,
        &mut ca,
        "FX-EDT-2",
        json!({"type":"edit","messageId":m.id,"content":"stale","expectedVersion":2}),
        ErrorCode::Conflict,
    )
    .await?;
    let last = req(
        ctx,
        &mut ca,
        "FX-EDT-2",
        json!({"type":"edit","messageId":m.id,"content":"v4","expectedVersion":3}),
    )
    .await?;
    cb.wait_seq("FX-EDT-2", last.seq.unwrap_or(0)).await?;
    let vs: Vec<u64> = cb
        .timeline()
        .iter()
        .filter_map(|(_, v)| v.get("version").and_then(Value::as_u64))
        .collect();
    ensure_eq(
        "FX-EDT-2",
        "versions of message, edit, edit, edit",
        vs,
        vec![1, 2, 3, 4],
    )
}

async fn delete_auth(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, mut cb) = pair(ctx).await?;
    let m1 = send(ctx, &mut ca, "one").await?;
    let m2 = send(ctx, &mut cb, "two").await?;
    let m3 = send(ctx, &mut cb, "three").await?;
    let m4 = send(ctx, &mut ca, "four").await?;
    // b (member) cannot delete a's message.
    req_err(
        ctx,
        &mut cb,
        "FX-EDT-3",
        json!({"type":"delete","messageId":m1.id}),
        ErrorCode::Forbidden,
    )
    .await?;
    // a is the room owner: may delete b's message.
    let d = req(
        ctx,
        &mut ca,
        "FX-EDT-3",
        json!({"type":"delete","messageId":m2.id}),
    )
    .await?;
    let f = cb
        .wait_frame(
            "FX-EDT-9",
            "the delete event",
            |f| matches!(f, ServerFrame::Delete(x) if Some(x.seq) == d.seq),
        )
        .await?;
    if let ServerFrame::Delete(x) = f {
        ensure_eq(
            "FX-EDT-9",
            "delete.userId (the owner, not the author)",
            x.user_id,
            a.id.clone(),
        )?;
    }
    // Author deletes own.
    req(
        ctx,
        &mut ca,
        "FX-EDT-3",
        json!({"type":"delete","messageId":m4.id}),
    )
    .await?;
    // Each token role alone (owner, admin, moderator; plain room members otherwise) may
    // delete someone else's message.
    let m5 = send(ctx, &mut cb, "five").await?;
    let m6 = send(ctx, &mut cb, "six").await?;
    for (role, msg) in [("moderator", &m3), ("admin", &m5), ("owner", &m6)] {
        let u = ctx.user_roles(&format!("tok-{role}"), &[role]).await?;
        ctx.set_member(&a, &room, &u.id, None).await?;
        let mut cu = ctx.connect(&u, &room).await?;
        let d = req(
            ctx,
            &mut cu,
            "FX-EDT-3",
            json!({"type":"delete","messageId":msg.id}),
        )
        .await
        .map_err(|e| {
            e.context(format!(
                "a token with role {role} deletes another user's message"
            ))
        })?;
        ensure(
            d.seq.is_some(),
            "FX-EDT-3",
            format!("the token-{role} delete is sequenced"),
            format!("{d:?}"),
        )?;
    }
    let _ = b;
    Ok(())
}

async fn deleted_final(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "doomed").await?;
    req(
        ctx,
        &mut ca,
        "FX-EDT-4",
        json!({"type":"edit","messageId":m.id,"content":"doomed v2"}),
    )
    .await?;
    let d = req(
        ctx,
        &mut ca,
        "FX-EDT-4",
        json!({"type":"delete","messageId":m.id}),
    )
    .await?;
    let f = cb
        .wait_frame(
            "FX-EDT-4",
            "the delete event",
            |f| matches!(f, ServerFrame::Delete(x) if Some(x.seq) == d.seq),
        )
        .await?;
    if let ServerFrame::Delete(x) = f {
        ensure_eq("FX-EDT-4", "delete.version", x.version, 3)?;
    }
    for f in [
        json!({"type":"edit","messageId":m.id,"content":"zombie"}),
        json!({"type":"delete","messageId":m.id}),
        json!({"type":"reaction","messageId":m.id,"emoji":"👻"}),
        json!({"type":"stream","op":"delta","messageId":m.id,"content":"zombie"}),
    ] {
        req_err(ctx, &mut ca, "FX-EDT-4", f, ErrorCode::Conflict).await?;
    }
    let r = ctx
        .get(&format!("/api/messages?roomId={room}"), &a.token)
        .await?;
    let ids: Vec<u64> = r
        .json()
        .and_then(|v| v.get("messages").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|x| x.get("id").and_then(Value::as_u64))
        .collect();
    ensure(
        !ids.contains(&m.id.unwrap_or(0)),
        "FX-EDT-4",
        "the deleted message is gone from /api/messages",
        format!("ids {ids:?}"),
    )
}

async fn reaction_on_deleted(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "soon gone").await?;
    req(
        ctx,
        &mut ca,
        "FX-EDT-4",
        json!({"type":"delete","messageId":m.id}),
    )
    .await?;
    req_err(
        ctx,
        &mut ca,
        "FX-EDT-4",
        json!({"type":"reaction","messageId":m.id,"emoji":"👻","op":"add"}),
        ErrorCode::Conflict,
    )
    .await?;
    // Barrier: a later message reaches the other connection; nothing may precede it but the
    // message and its delete.
    let after = send(ctx, &mut ca, "after the reaction").await?;
    cb.wait_seq("FX-EDT-4", after.seq.unwrap_or(0)).await?;
    let reactions: Vec<String> = cb
        .frames()
        .iter()
        .filter(|f| matches!(f, ServerFrame::Reaction(_)))
        .map(ServerFrame::encode)
        .collect();
    ensure(
        reactions.is_empty(),
        "FX-EDT-4",
        "no reaction event for a deleted message",
        reactions.join(" | "),
    )
}

async fn reactions(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "react").await?;
    let r =
        |emoji: &str, op: &str| json!({"type":"reaction","messageId":m.id,"emoji":emoji,"op":op});
    // Emoji validation first: judged on the answers alone.
    let long = "x".repeat(65);
    for bad in ["", " 👍", "👍 ", long.as_str()] {
        req_err(
            ctx,
            &mut ca,
            "FX-EDT-6",
            r(bad, "add"),
            ErrorCode::InvalidFrame,
        )
        .await?;
    }
    let ok64 = "y".repeat(64);
    req(ctx, &mut ca, "FX-EDT-6", r(&ok64, "add")).await?;
    // Without any ack on the connection, the acks are inferred from the reaction broadcasts
    // (FX-ACK-1 observed): a broadcast is an event, whatever its `seq` (FX-ORD-1's).
    let inferred =
        |c: &crate::ctx::Conn| !c.frames().iter().any(|f| matches!(f, ServerFrame::Ack(_)));
    let a1 = req(ctx, &mut ca, "FX-EDT-5", r("👍", "add")).await?;
    let b1 = req(ctx, &mut cb, "FX-EDT-5", r("👍", "add")).await?;
    ensure(
        (a1.seq.is_some() && b1.seq.is_some()) || (inferred(&ca) && inferred(&cb)),
        "FX-EDT-5",
        "two users' same emoji are two reactions",
        format!("{a1:?} {b1:?}"),
    )?;
    let a2 = req(ctx, &mut ca, "FX-EDT-5", r("👍", "add")).await?;
    ensure(
        a2.seq.is_none() && !inferred(&ca),
        "FX-EDT-5",
        "a repeated add changes nothing (no seq, no event)",
        if inferred(&ca) {
            format!("a reaction event was broadcast for the repeated add: {a2:?}")
        } else {
            format!("{a2:?}")
        },
    )?;
    let rm = req(ctx, &mut ca, "FX-EDT-5", r("👍", "remove")).await?;
    ensure(
        rm.seq.is_some(),
        "FX-EDT-5",
        "remove produces an event",
        format!("{rm:?}"),
    )?;
    let f = cb
        .wait_frame(
            "FX-EDT-5",
            "the remove event",
            |f| matches!(f, ServerFrame::Reaction(x) if Some(x.seq) == rm.seq),
        )
        .await?;
    if let ServerFrame::Reaction(x) = f {
        ensure_eq(
            "FX-EDT-5",
            "reaction.op",
            format!("{:?}", x.op),
            "Remove".to_string(),
        )?;
    }
    Ok(())
}

async fn not_found(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, _, mut ca, _) = pair(ctx).await?;
    send(ctx, &mut ca, "exists").await?;
    for f in [
        json!({"type":"edit","messageId":4242,"content":"x"}),
        json!({"type":"delete","messageId":4242}),
        json!({"type":"reaction","messageId":4242,"emoji":"x"}),
        json!({"type":"read","messageId":4242}),
    ] {
        req_err(ctx, &mut ca, "FX-EDT-7", f, ErrorCode::NotFound).await?;
    }
    // A message of another room is unknown here.
    let other = ctx.room(&a, &[]).await?;
    let mut co = ctx.connect(&a, &other).await?;
    for i in 0..3 {
        send(ctx, &mut co, &format!("o{i}")).await?;
    }
    req_err(
        ctx,
        &mut ca,
        "FX-EDT-7",
        json!({"type":"edit","messageId":3,"content":"x"}),
        ErrorCode::NotFound,
    )
    .await
}

async fn error_precedence(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "soon deleted").await?;
    req(
        ctx,
        &mut ca,
        "FX-EDT-4",
        json!({"type":"delete","messageId":m.id}),
    )
    .await?;
    // Invalid before not_found: empty content on an unknown message.
    let r = ctx.r();
    cb.send_json(&json!({"type":"edit","messageId":4242,"content":"   ","ref":r}))?;
    match cb.answer("FX-EDT-10", &r).await? {
        ServerFrame::Error(e)
            if e.code == ErrorCode::InvalidContent || e.code == ErrorCode::InvalidFrame => {}
        other => {
            return Err(crate::case::fail(
                "FX-EDT-10",
                "invalid_content (or invalid_frame) for blank content on an unknown message",
                other.encode(),
            ))
        }
    }
    // not_found before forbidden: a non-author edits and deletes an unknown message.
    for f in [
        json!({"type":"edit","messageId":4242,"content":"x"}),
        json!({"type":"delete","messageId":4242}),
    ] {
        req_err(ctx, &mut cb, "FX-EDT-10", f, ErrorCode::NotFound).await?;
    }
    // forbidden before conflict: a non-author edits or deletes a deleted message.
    for f in [
        json!({"type":"edit","messageId":m.id,"content":"x"}),
        json!({"type":"edit","messageId":m.id,"content":"x","expectedVersion":1}),
        json!({"type":"delete","messageId":m.id}),
    ] {
        req_err(ctx, &mut cb, "FX-EDT-10", f, ErrorCode::Forbidden).await?;
    }
    // The author gets conflict.
    req_err(
        ctx,
        &mut ca,
        "FX-EDT-10",
        json!({"type":"edit","messageId":m.id,"content":"x"}),
        ErrorCode::Conflict,
    )
    .await
}

async fn reads(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, b, _, mut ca, mut cb) = pair(ctx).await?;
    let m1 = send(ctx, &mut ca, "1").await?;
    let m2 = send(ctx, &mut ca, "2").await?;
    let r2 = req(
        ctx,
        &mut cb,
        "FX-EDT-8",
        json!({"type":"read","messageId":m2.id,"userId":"spoof"}),
    )
    .await?;
    ensure(
        r2.seq.is_some(),
        "FX-EDT-8",
        "a read event when advancing",
        format!("{r2:?}"),
    )?;
    let f = ca
        .wait_frame(
            "FX-EDT-9",
            "the read event",
            |f| matches!(f, ServerFrame::Read(x) if Some(x.seq) == r2.seq),
        )
        .await?;
    if let ServerFrame::Read(x) = f {
        ensure_eq("FX-EDT-9", "read.userId", x.user_id, b.id.clone())?;
        ensure_eq("FX-EDT-8", "read.messageId", Some(x.message_id), m2.id)?;
    }
    let back = req(
        ctx,
        &mut cb,
        "FX-EDT-8",
        json!({"type":"read","messageId":m1.id}),
    )
    .await?;
    ensure(
        back.seq.is_none(),
        "FX-EDT-8",
        "no event when reading backwards",
        format!("{back:?}"),
    )?;
    let m3 = send(ctx, &mut ca, "3").await?;
    let r3 = req(
        ctx,
        &mut cb,
        "FX-EDT-8",
        json!({"type":"read","messageId":m3.id}),
    )
    .await?;
    ensure(
        r3.seq.is_some(),
        "FX-EDT-8",
        "a read event when advancing again",
        format!("{r3:?}"),
    )
}

async fn created_at_is_event_time(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "time me").await?;
    let id = m.id.unwrap_or(0);
    for (frame, field) in [
        (
            json!({"type":"edit","messageId":id,"content":"time me again"}),
            "editedAt",
        ),
        (
            json!({"type":"reaction","messageId":id,"emoji":"⏱"}),
            "createdAt",
        ),
        (json!({"type":"read","messageId":id}), "createdAt"),
        (json!({"type":"delete","messageId":id}), "deletedAt"),
    ] {
        let kind = frame["type"].as_str().unwrap_or("?").to_string();
        let a = req(ctx, &mut ca, "FX-EDT-1", frame).await?;
        let Some(seq) = a.seq else {
            return Err(fail(
                "FX-ACK-1",
                format!("a seq in the ack of the {kind}"),
                format!("{a:?}"),
            ));
        };
        let event = cb.event_at("FX-ORD-1", seq).await?;
        ensure_eq(
            "FX-ACK-9",
            &format!("createdAt of the {kind} ack = the event's {field}"),
            json!(a.created_at),
            event[field].clone(),
        )?;
    }
    Ok(())
}
