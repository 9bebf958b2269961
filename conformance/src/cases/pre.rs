//! Presence and typing (PRE).

use fluxy_protocol::server::PresenceFrame;
use fluxy_protocol::ServerFrame;
use serde_json::json;

use super::{pair, req};
use crate::case;
use crate::case::{ensure_eq, fail, Case, CaseError};
use crate::ctx::{Conn, Ctx, Incoming};
use crate::proxy::Proxy;

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "pre/presence-lists-live",
            ["FX-PRE-1", "FX-PRE-2"],
            "presence lists the distinct connected users, sorted, with connection counts",
            lists_live
        ),
        case!(
            "pre/no-ghost-after-close",
            ["FX-PRE-3", "FX-PRE-2"],
            "closed, killed and read-receipt users do not linger in presence",
            no_ghost
        ),
        case!(
            "pre/proxy-cut-no-ghost",
            ["FX-PRE-3", "FX-PRE-2"],
            "a connection cut by the network (proxy) leaves presence at once",
            proxy_no_ghost
        ),
        case!(
            "pre/member-joined-left",
            ["FX-PRE-4", "FX-PRE-2"],
            "member_joined on a user's first connection, member_left on the last",
            joined_left
        ),
        case!(
            "pre/typing",
            ["FX-PRE-5", "FX-PRE-6", "FX-PRE-7"],
            "typing goes to the others with the verified userId and the right intent, never stored",
            typing
        ),
    ]
}

async fn presence(
    c: &mut Conn,
    clause: &str,
    what: &str,
    pred: impl Fn(&PresenceFrame) -> bool + Send + Sync,
) -> Result<PresenceFrame, CaseError> {
    let got = c
        .wait_frame(
            clause,
            what,
            |f| matches!(f, ServerFrame::Presence(p) if pred(p)),
        )
        .await;
    if let Err(CaseError::Fail(_)) = &got {
        // `presence` frames that arrived but do not have the shape FX-PRE-1 prescribes
        // (users, per-user `members` counts, `online`): the evidence is about FX-PRE-1.
        let malformed = c.log.iter().find_map(|i| match i {
            Incoming::Text {
                value: Some(v),
                frame: None,
                text,
            } if v.get("type").and_then(serde_json::Value::as_str) == Some("presence") => {
                Some(text.clone())
            }
            _ => None,
        });
        if let Some(t) = malformed {
            return Err(fail(
                "FX-PRE-1",
                "`presence` frames with `users`, per-user `members` counts and `online`",
                crate::ctx::short(&t, 300),
            ));
        }
    }
    match got? {
        ServerFrame::Presence(p) => Ok(p),
        _ => Err(CaseError::Error("not presence".into())),
    }
}

async fn lists_live(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, _cb) = pair(ctx).await?;
    let _cb2 = ctx.connect(&b, &room).await?;
    let p = presence(&mut ca, "FX-PRE-2", "presence with 3 connections", |p| {
        p.online == 3
    })
    .await?;
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    ensure_eq("FX-PRE-1", "presence.users", p.users.clone(), want)?;
    let counts: Vec<(String, u32)> = p
        .members
        .iter()
        .map(|m| (m.user_id.clone(), m.connections))
        .collect();
    let mut wc = vec![(a.id.clone(), 1), (b.id.clone(), 2)];
    wc.sort();
    ensure_eq("FX-PRE-1", "presence.members", counts, wc)
}

async fn no_ghost(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, mut cb) = pair(ctx).await?;
    let c = ctx.user("c").await?;
    ctx.set_member(&a, &room, &c.id, None).await?;
    let m = super::send(ctx, &mut ca, "read me").await?;
    req(
        ctx,
        &mut cb,
        "FX-EDT-8",
        json!({"type":"read","messageId":m.id}),
    )
    .await?;
    cb.close();
    let p = presence(
        &mut ca,
        "FX-PRE-2",
        "presence without b after its close",
        |p| p.online == 1,
    )
    .await?;
    ensure_eq(
        "FX-PRE-3",
        "users after b closed (b read a message before)",
        p.users,
        vec![a.id.clone()],
    )?;
    let cc = ctx.connect(&c, &room).await?;
    presence(&mut ca, "FX-PRE-2", "presence with c", |p| p.online == 2).await?;
    cc.kill();
    let p = presence(
        &mut ca,
        "FX-PRE-3",
        "presence without c after its TCP connection died",
        |p| p.online == 1,
    )
    .await?;
    ensure_eq(
        "FX-PRE-3",
        "users after c's connection died",
        p.users,
        vec![a.id.clone()],
    )?;
    let _ = b;
    Ok(())
}

async fn proxy_no_ghost(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, _cb) = pair(ctx).await?;
    let proxy = Proxy::start(ctx).await?;
    let c = ctx.user_roles("c", &["admin"]).await?;
    let _cc = proxy.connect(ctx, &c, &room, "").await?;
    presence(&mut ca, "FX-PRE-2", "presence with 3 connections", |p| {
        p.online == 3
    })
    .await?;
    proxy.cut_all();
    let p = presence(
        &mut ca,
        "FX-PRE-3",
        "presence without the cut connection",
        |p| p.online == 2,
    )
    .await?;
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    ensure_eq("FX-PRE-3", "users after the network cut", p.users, want)
}

async fn joined_left(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, b, room, mut ca, cb) = pair(ctx).await?;
    ca.wait_frame(
        "FX-PRE-4",
        "member_joined for b",
        |f| matches!(f, ServerFrame::MemberJoined(m) if m.user_id == b.id),
    )
    .await?;
    let mut cb2 = ctx.connect(&b, &room).await?;
    presence(&mut ca, "FX-PRE-2", "presence with b twice", |p| {
        p.online == 3
    })
    .await?;
    drop(cb);
    presence(
        &mut ca,
        "FX-PRE-2",
        "presence after b's first connection closed",
        |p| p.online == 2,
    )
    .await?;
    cb2.close();
    ca.wait_frame(
        "FX-PRE-4",
        "member_left for b",
        |f| matches!(f, ServerFrame::MemberLeft(m) if m.user_id == b.id),
    )
    .await?;
    let joins = ca
        .frames()
        .iter()
        .filter(|f| matches!(f, ServerFrame::MemberJoined(m) if m.user_id == b.id))
        .count();
    let lefts = ca
        .frames()
        .iter()
        .filter(|f| matches!(f, ServerFrame::MemberLeft(m) if m.user_id == b.id))
        .count();
    ensure_eq(
        "FX-PRE-4",
        "(member_joined, member_left) for b with two connections",
        (joins, lefts),
        (1, 1),
    )
}

async fn typing(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, mut cb) = pair(ctx).await?;
    ca.send_json(&json!({"type":"typing","isTyping":true,"userId": b.id}))?;
    let t = cb
        .wait_frame("FX-PRE-5", "typing from a", |f| {
            matches!(f, ServerFrame::Typing(_))
        })
        .await?;
    if let ServerFrame::Typing(t) = t {
        ensure_eq("FX-PRE-5", "typing.userId", t.user_id, a.id.clone())?;
        ensure_eq(
            "FX-PRE-7",
            "intent when typing without intent",
            format!("{:?}", t.intent),
            "Composing".to_string(),
        )?;
    }
    ca.send_json(&json!({"type":"typing","isTyping":false,"intent":"composing"}))?;
    let t = cb
        .wait_frame(
            "FX-PRE-7",
            "typing stop",
            |f| matches!(f, ServerFrame::Typing(t) if !t.is_typing),
        )
        .await?;
    if let ServerFrame::Typing(t) = t {
        ensure_eq(
            "FX-PRE-7",
            "intent when not typing",
            format!("{:?}", t.intent),
            "Idle".to_string(),
        )?;
    }
    ca.send_json(&json!({"type":"typing","isTyping":true,"intent":"viewing_thread"}))?;
    cb.wait_frame(
        "FX-PRE-7",
        "typing with intent viewing_thread",
        |f| matches!(f, ServerFrame::Typing(t) if format!("{:?}", t.intent) == "ViewingThread"),
    )
    .await?;
    ca.sync("FX-PRE-5").await?;
    let own = ca
        .frames()
        .iter()
        .filter(|f| matches!(f, ServerFrame::Typing(_)))
        .count();
    ensure_eq("FX-PRE-5", "typing frames echoed to the sender", own, 0)?;
    let h = ctx.history(&a, &room, "").await?;
    ensure_eq(
        "FX-PRE-6",
        "history after typing only",
        (h.events.len(), h.current_seq),
        (0, 0),
    )
}
