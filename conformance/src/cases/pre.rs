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
    // A `presence` frame without FX-PRE-1's full shape (room id, per-user `members` counts)
    // still carries `online` and `users`, which is what the callers judge: read those, and
    // leave the shape to FX-PRE-1 (recorded as an observation).
    let loose = |i: &Incoming| -> Option<(PresenceFrame, String)> {
        match i {
            Incoming::Text {
                value: Some(v),
                frame: None,
                text,
            } if v.get("type").and_then(serde_json::Value::as_str) == Some("presence") => {
                let online = v.get("online").and_then(serde_json::Value::as_u64)?;
                let users = v
                    .get("users")?
                    .as_array()?
                    .iter()
                    .map(|u| u.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()?;
                Some((
                    PresenceFrame {
                        room_id: String::new(),
                        online: u32::try_from(online).ok()?,
                        users,
                        members: Vec::new(),
                    },
                    text.clone(),
                ))
            }
            _ => None,
        }
    };
    let got = c
        .wait_item(clause, what, |i| match i.frame() {
            Some(ServerFrame::Presence(p)) => pred(p),
            Some(_) => false,
            None => loose(i).is_some_and(|(p, _)| pred(&p)),
        })
        .await;
    match got {
        Ok(it) => match it.frame() {
            Some(ServerFrame::Presence(p)) => Ok(p.clone()),
            _ => {
                let (p, text) = loose(&it)
                    .ok_or_else(|| CaseError::Error("matched item is no presence frame".into()))?;
                c.tr.observe(
                    "FX-PRE-1",
                    "`presence` frames with `users`, per-user `members` counts and `online`",
                    &crate::ctx::short(&text, 300),
                );
                Ok(p)
            }
        },
        Err(CaseError::Fail(f)) => {
            // Presence frames that arrived without even `online` and `users`: FX-PRE-1's.
            let malformed = c.log.iter().find_map(|i| match i {
                Incoming::Text {
                    value: Some(v),
                    frame: None,
                    text,
                } if v.get("type").and_then(serde_json::Value::as_str) == Some("presence")
                    && loose(i).is_none() =>
                {
                    Some(text.clone())
                }
                _ => None,
            });
            Err(match malformed {
                Some(t) => fail(
                    "FX-PRE-1",
                    "`presence` frames with `users`, per-user `members` counts and `online`",
                    crate::ctx::short(&t, 300),
                ),
                None => CaseError::Fail(f),
            })
        }
        Err(e) => Err(e),
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
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let c = ctx.user("c").await?;
    // Every member from the start: adding one later is FX-TEN-5's business, not this case's.
    let room = ctx.room(&a, &[&b, &c]).await?;
    let mut ca = ctx.connect(&a, &room).await?;
    let mut cb = ctx.connect(&b, &room).await?;
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
