//! Messages (MSG).

use fluxy_protocol::common::RoomType;
use fluxy_protocol::http::{CreateRoomRequest, MemberSpec};
use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use super::{current_seq, pair, req, req_err, req_optional, send, stored_timeline};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::Ctx;

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("msg/create-and-broadcast", ["FX-MSG-1", "FX-MSG-7"], "a message gets the next seq, id = seq, verified userId, version 1, and reaches every connection", create),
        case!("msg/trim", ["FX-MSG-2"], "content is trimmed before storing and delivering", trim),
        case!("msg/invalid-content", ["FX-MSG-3", "FX-LIM-2"], "empty-after-trim or >4000-character content gets invalid_content and stores nothing", invalid_content),
        case!("msg/parent-id", ["FX-MSG-4"], "parentId must name a message of the same room (not_found otherwise)", parent_id),
        case!("msg/attachments", ["FX-MSG-5"], "at most 10 http(s) attachments of at most 2048 characters", attachments),
        case!("msg/http-post", ["FX-MSG-6", "FX-ACK-4"], "POST /messages sequences, broadcasts and answers 201 with the event; a repeat gets 200 duplicate", http_post),
        case!("msg/announcement-streams", ["FX-MSG-8", "FX-AGT-8"], "in an announcement room a moderator's stream start is acked with a seq; a member's gets forbidden", announcement_streams),
        case!("msg/announcement-room", ["FX-MSG-8"], "only owners, admins and moderators post in an announcement room", announcement),
    ]
}

async fn create(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    for i in 1..=3u64 {
        let r = ctx.r();
        ca.send_json(
            &json!({"type":"message","content":format!("hello {i}"),"ref":r,"id":999,"seq":999}),
        )?;
        let ack = ca.ack("FX-MSG-1", &r).await?;
        ensure_eq("FX-MSG-1", "ack.seq", ack.seq, Some(i))?;
        ensure_eq("FX-MSG-7", "ack.id (= seq)", ack.id, Some(i))?;
        for c in [&mut ca, &mut cb] {
            let f = c
                .wait_frame(
                    "FX-MSG-1",
                    &format!("the message event seq {i}"),
                    |f| matches!(f, ServerFrame::Message(m) if m.seq == i),
                )
                .await?;
            if let ServerFrame::Message(m) = f {
                ensure_eq("FX-MSG-7", "message.id", m.id, i)?;
                ensure_eq(
                    "FX-MSG-1",
                    "message.userId",
                    m.user_id.as_str(),
                    a.id.as_str(),
                )?;
                ensure_eq(
                    "FX-MSG-1",
                    "message.senderId",
                    m.sender_id.as_str(),
                    a.id.as_str(),
                )?;
                ensure_eq("FX-MSG-1", "message.version", m.version, 1)?;
                ensure_eq(
                    "FX-MSG-1",
                    "message.roomId",
                    m.room_id.as_str(),
                    room.as_str(),
                )?;
                ensure_eq(
                    "FX-MSG-1",
                    "message.createdAt = ack.createdAt",
                    Some(m.created_at.clone()),
                    ack.created_at.clone(),
                )?;
            }
        }
    }
    Ok(())
}

async fn trim(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    let ack = send(ctx, &mut ca, "  \n\t padded text \t\n ").await?;
    let f = cb
        .wait_frame("FX-MSG-2", "the broadcast", |f| {
            matches!(f, ServerFrame::Message(_))
        })
        .await?;
    if let ServerFrame::Message(m) = f {
        ensure_eq(
            "FX-MSG-2",
            "delivered content",
            m.content.as_str(),
            "padded text",
        )?;
    }
    let h = stored_timeline(ctx, &a, &room, 50).await?;
    let stored = h
        .iter()
        .find(|(e, _)| Some(e.seq()) == ack.seq)
        .map(|(_, v)| v.clone());
    ensure_eq(
        "FX-MSG-2",
        "stored content",
        stored.and_then(|v| v.get("content").cloned()),
        Some(json!("padded text")),
    )
}

async fn invalid_content(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    for bad in [
        String::new(),
        "   \n\t ".into(),
        "é".repeat(4001),
        format!(" {} ", "x".repeat(4001)),
    ] {
        req_err(
            ctx,
            &mut ca,
            "FX-MSG-3",
            json!({"type":"message","content":bad}),
            ErrorCode::InvalidContent,
        )
        .await?;
    }
    let r = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId":room,"content":"   "}),
        )
        .await?;
    r.expect_error(
        "FX-MSG-3",
        "POST /messages with blank content",
        ErrorCode::InvalidContent,
    )?;
    ensure_eq(
        "FX-MSG-3",
        "events stored after rejected content",
        current_seq(ctx, &a, &room).await?,
        0,
    )?;
    // Exactly 4000 characters (multi-byte) after trimming is fine.
    let ok = format!("  {}  ", "é".repeat(4000));
    req(
        ctx,
        &mut ca,
        "FX-LIM-2",
        json!({"type":"message","content":ok}),
    )
    .await?;
    Ok(())
}

async fn parent_id(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    let other = ctx.room(&a, &[]).await?;
    let mut co = ctx.connect(&a, &other).await?;
    let foreign = send(ctx, &mut co, "other room").await?;
    let p = send(ctx, &mut ca, "parent").await?;
    let r = req(
        ctx,
        &mut ca,
        "FX-MSG-4",
        json!({"type":"message","content":"reply","parentId":p.id}),
    )
    .await?;
    ensure(
        r.seq.is_some(),
        "FX-MSG-4",
        "a reply to an existing message",
        "no seq",
    )?;
    req_err(
        ctx,
        &mut ca,
        "FX-MSG-4",
        json!({"type":"message","content":"reply","parentId":777777}),
        ErrorCode::NotFound,
    )
    .await?;
    // Same numeric id exists only in the other room as id 1 there; make it unambiguous.
    let fid = foreign.id.unwrap_or(1) + 100;
    req_err(
        ctx,
        &mut ca,
        "FX-MSG-4",
        json!({"type":"message","content":"reply","parentId":fid}),
        ErrorCode::NotFound,
    )
    .await?;
    let res = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId":room,"content":"x","parentId":555555}),
        )
        .await?;
    res.expect_error(
        "FX-MSG-4",
        "POST /messages with an unknown parentId",
        ErrorCode::NotFound,
    )
}

async fn attachments(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    let att = |u: &str| json!({"url": u, "name": "f.png"});
    let ok: Vec<Value> = (0..10)
        .map(|i| att(&format!("https://example.com/{i}.png")))
        .collect();
    req(
        ctx,
        &mut ca,
        "FX-MSG-5",
        json!({"type":"message","content":"ten","attachments":ok}),
    )
    .await?;
    // The limits first: judged on the answers alone, before the read-back (which needs a
    // stored-timeline route owned by other clauses).
    let eleven: Vec<Value> = (0..11)
        .map(|i| att(&format!("https://example.com/{i}.png")))
        .collect();
    req_err(
        ctx,
        &mut ca,
        "FX-MSG-5",
        json!({"type":"message","content":"eleven","attachments":eleven}),
        ErrorCode::InvalidFrame,
    )
    .await?;
    for bad in [
        "ftp://example.com/x",
        "javascript:alert(1)",
        &format!("https://example.com/{}", "a".repeat(2100)),
    ] {
        req_err(
            ctx,
            &mut ca,
            "FX-MSG-5",
            json!({"type":"message","content":"bad","attachments":[att(bad)]}),
            ErrorCode::InvalidFrame,
        )
        .await?;
    }
    // Read back on both history routes: the event and the legacy message record.
    let urls = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|xs| {
                xs.iter()
                    .filter_map(|x| x.get("url").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let want: Vec<String> = (0..10)
        .map(|i| format!("https://example.com/{i}.png"))
        .collect();
    let stored = stored_timeline(ctx, &a, &room, 50).await?;
    let last = stored.last().map(|(_, v)| v.clone()).unwrap_or_default();
    ensure_eq(
        "FX-MSG-5",
        "attachment urls of the stored message",
        urls(last.get("attachments")),
        want.clone(),
    )?;
    let r = ctx
        .get(&format!("/api/messages?roomId={room}&limit=1"), &a.token)
        .await?;
    if r.status == 404 {
        ctx.note(
            "GET /api/messages answers 404 (history profile absent): legacy record not checked",
        );
    } else {
        let v = r.json().unwrap_or_default();
        ensure_eq(
            "FX-HIS-8",
            "attachment urls of the message on GET /api/messages",
            urls(v.pointer("/messages/0/attachments")),
            want,
        )?;
    }
    Ok(())
}

async fn http_post(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, _, mut cb) = pair(ctx).await?;
    let cmid = ctx.cmid();
    let r = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId":room,"content":"  via http ","clientMessageId":cmid}),
        )
        .await?;
    r.expect_status("FX-MSG-6", "POST /messages", 201)?;
    let v = r.json().unwrap_or(Value::Null);
    let ev = v
        .get("message")
        .cloned()
        .ok_or_else(|| fail("FX-MSG-6", "a PostMessageResponse with message", &r.text))?;
    ensure_eq(
        "FX-MSG-6",
        "message.seq",
        ev.get("seq").cloned(),
        Some(json!(1)),
    )?;
    ensure_eq(
        "FX-MSG-6",
        "message.content (trimmed)",
        ev.get("content").cloned(),
        Some(json!("via http")),
    )?;
    let live = cb
        .wait_item("FX-MSG-6", "the broadcast of the HTTP message", |i| {
            i.frame()
                .is_some_and(|f| matches!(f, ServerFrame::Message(_)))
        })
        .await?;
    if let crate::ctx::Incoming::Text {
        value: Some(lv), ..
    } = live
    {
        let mut expect = ev.clone();
        expect["type"] = json!("message");
        ensure_eq(
            "FX-MSG-6",
            "broadcast event (same JSON as the response)",
            lv,
            expect,
        )?;
    }
    let r2 = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId":room,"content":"different","clientMessageId":cmid}),
        )
        .await?;
    r2.expect_status(
        "FX-MSG-6",
        "repeat POST /messages with the same clientMessageId",
        200,
    )?;
    let v2 = r2.json().unwrap_or(Value::Null);
    ensure_eq(
        "FX-MSG-6",
        "duplicate flag",
        v2.get("duplicate").cloned(),
        Some(json!(true)),
    )?;
    ensure_eq(
        "FX-ACK-4",
        "duplicate message",
        v2.get("message").cloned(),
        Some(ev),
    )?;
    ensure_eq(
        "FX-ACK-4",
        "events stored",
        current_seq(ctx, &a, &room).await?,
        1,
    )
}

async fn announcement(ctx: &Ctx) -> Result<(), CaseError> {
    let o = ctx.user("owner").await?;
    let m = ctx.user("member").await?;
    let md = ctx.user("mod").await?;
    let req_ = CreateRoomRequest {
        id: Some(ctx.uid("ann")),
        name: "announcements".into(),
        room_type: Some(RoomType::Announcement),
        members: vec![
            MemberSpec {
                user_id: m.id.clone(),
                role: None,
            },
            MemberSpec {
                user_id: md.id.clone(),
                role: Some(fluxy_protocol::common::MemberRole::Moderator),
            },
        ],
    };
    let room = ctx.room_req(&o, req_).await?;
    let mut cm = ctx.connect(&m, &room).await?;
    req_err(
        ctx,
        &mut cm,
        "FX-MSG-8",
        json!({"type":"message","content":"can I post?"}),
        ErrorCode::Forbidden,
    )
    .await?;
    let r = ctx
        .post(
            "/messages",
            &m.token,
            &json!({"roomId":room,"content":"via http"}),
        )
        .await?;
    r.expect_error(
        "FX-MSG-8",
        "POST /messages by a member of an announcement room",
        ErrorCode::Forbidden,
    )?;
    let mut co = ctx.connect(&o, &room).await?;
    send(ctx, &mut co, "announcement").await?;
    let mut cd = ctx.connect(&md, &room).await?;
    send(ctx, &mut cd, "moderator note").await?;
    Ok(())
}

async fn announcement_streams(ctx: &Ctx) -> Result<(), CaseError> {
    let o = ctx.user("owner").await?;
    let m = ctx.user("member").await?;
    let md = ctx.user("mod").await?;
    let req_ = CreateRoomRequest {
        id: Some(ctx.uid("ann")),
        name: "announcement streams".into(),
        room_type: Some(RoomType::Announcement),
        members: vec![
            MemberSpec {
                user_id: m.id.clone(),
                role: None,
            },
            MemberSpec {
                user_id: md.id.clone(),
                role: Some(fluxy_protocol::common::MemberRole::Moderator),
            },
        ],
    };
    let room = ctx.room_req(&o, req_).await?;
    let mut cd = ctx.connect(&md, &room).await?;
    let Some(a) = req_optional(
        ctx,
        &mut cd,
        "FX-MSG-8",
        json!({"type":"stream","op":"start","content":"moderator stream"}),
    )
    .await?
    else {
        return Err(CaseError::Skip(
            "`stream` frames are answered unknown_type (agents profile not implemented); msg/announcement-room covers messages".into(),
        ));
    };
    ensure(
        a.seq.is_some() && a.id.is_some(),
        "FX-AGT-8",
        "the moderator's stream start acked with a seq and the message id",
        format!("{a:?}"),
    )?;
    let mut cm = ctx.connect(&m, &room).await?;
    req_err(
        ctx,
        &mut cm,
        "FX-MSG-8",
        json!({"type":"stream","op":"start","content":"member stream"}),
        ErrorCode::Forbidden,
    )
    .await?;
    ensure_eq(
        "FX-MSG-8",
        "events stored (the moderator's start only)",
        current_seq(ctx, &o, &room).await?,
        a.seq.unwrap_or(0),
    )
}
