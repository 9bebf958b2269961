//! Ordering and sequence (ORD).

use std::collections::HashMap;

use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use super::{
    current_seq, errors, has_history, msg, pair, req_optional, send, stored_timeline, ws_timeline,
};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{Ctx, Incoming};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "ord/one-sender-fifo",
            ["FX-ORD-3", "FX-ORD-2"],
            "frames of one connection are sequenced in the order sent",
            fifo
        ),
        case!(
            "ord/multi-sender-total-order",
            ["FX-ORD-4", "FX-ORD-2", "FX-ORD-3"],
            "many concurrent senders: every receiver sees one identical order",
            total_order
        ),
        case!(
            "ord/gap-free-burst",
            ["FX-ORD-1", "FX-ORD-2"],
            "a burst gets seq 1..N with no gaps or repeats",
            gap_free
        ),
        case!(
            "ord/identical-representation",
            ["FX-ORD-5", "FX-RES-2", "FX-TRN-2"],
            "one event has the same JSON live, in snapshot, replay, history, SSE and poll",
            identical
        ),
        case!(
            "ord/ephemeral-no-seq",
            ["FX-ORD-6", "FX-PRE-6"],
            "ephemeral frames carry no top-level seq",
            ephemeral
        ),
        case!(
            "ord/durable-before-delivery",
            ["FX-ORD-7", "FX-ACK-1"],
            "an event delivered or acked is already readable through history",
            durable
        ),
    ]
}

fn content_of(v: &Value) -> String {
    v.get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

async fn fifo(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, mut cb) = pair(ctx).await?;
    let n = 40;
    for i in 0..n {
        ca.send_json(&msg(&format!("fifo-{i:03}"), &format!("f{i}")))?;
    }
    let mut last = 0;
    for i in 0..n {
        let a = ca.ack("FX-ORD-3", &format!("f{i}")).await?;
        let s = a.seq.unwrap_or(0);
        ensure(
            s > last,
            "FX-ORD-3",
            format!("frame {i} sequenced after frame {}", i.max(1) - 1),
            format!("seq {s} after {last}"),
        )?;
        last = s;
    }
    cb.wait_count("FX-ORD-2", n).await?;
    let got: Vec<String> = cb.timeline().iter().map(|(_, v)| content_of(v)).collect();
    let want: Vec<String> = (0..n).map(|i| format!("fifo-{i:03}")).collect();
    ensure_eq("FX-ORD-3", "receiver's content order", got, want)
}

async fn total_order(ctx: &Ctx) -> Result<(), CaseError> {
    let owner = ctx.user("own").await?;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(ctx.user(&format!("s{i}")).await?);
    }
    let refs: Vec<&crate::ctx::User> = users.iter().collect();
    let room = ctx.room(&owner, &refs).await?;
    let mut receivers = Vec::new();
    for _ in 0..3 {
        receivers.push(ctx.connect(&owner, &room).await?);
    }
    let mut senders = Vec::new();
    for u in &users {
        senders.push(ctx.connect(u, &room).await?);
    }
    let per = 15;
    let total = per * senders.len();
    // Interleave sends across connections so they race at the server.
    for i in 0..per {
        for (k, s) in senders.iter().enumerate() {
            s.send_json(&msg(&format!("s{k}-{i}"), &format!("t{k}-{i}")))?;
        }
    }
    let mut orders: Vec<Vec<(u64, String)>> = Vec::new();
    for r in receivers.iter_mut().chain(senders.iter_mut()) {
        r.wait_count("FX-ORD-2", total).await?;
        orders.push(
            r.timeline()
                .iter()
                .map(|(e, v)| (e.seq(), content_of(v)))
                .collect(),
        );
    }
    let first = orders[0].clone();
    let seqs: Vec<u64> = first.iter().map(|x| x.0).collect();
    ensure_eq(
        "FX-ORD-2",
        "seqs seen by the first receiver",
        seqs,
        (1..=total as u64).collect(),
    )?;
    for (i, o) in orders.iter().enumerate().skip(1) {
        if *o != first {
            let pos = o
                .iter()
                .zip(first.iter())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Err(fail(
                "FX-ORD-4",
                format!("connection {i} sees the same order as connection 0"),
                format!(
                    "differs at index {pos}: {:?} vs {:?}",
                    o.get(pos),
                    first.get(pos)
                ),
            ));
        }
    }
    // Per-sender FIFO inside the total order.
    let mut next: HashMap<String, usize> = HashMap::new();
    for (_, c) in &first {
        let (k, i) = c.split_once('-').unwrap_or(("?", "0"));
        let i: usize = i.parse().unwrap_or(0);
        let e = next.entry(k.to_string()).or_insert(0);
        ensure(
            i == *e,
            "FX-ORD-3",
            format!("{k}'s messages in send order"),
            format!("{c} after {}", e),
        )?;
        *e += 1;
    }
    Ok(())
}

async fn gap_free(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    let b2 = ctx.connect(&a, &room).await?;
    let n = 80;
    for i in 0..n {
        let c = if i % 2 == 0 { &ca } else { &b2 };
        c.send_json(&msg(&format!("burst {i}"), &format!("g{i}")))?;
    }
    let mut acked = Vec::new();
    for i in (0..n).step_by(2) {
        acked.push(ca.ack("FX-ORD-1", &format!("g{i}")).await?.seq.unwrap_or(0));
    }
    let mut b2 = b2;
    for c in [&mut cb, &mut ca, &mut b2] {
        c.wait_count("FX-ORD-1", n).await?;
        let seqs: Vec<u64> = c.timeline().iter().map(|(e, _)| e.seq()).collect();
        ensure_eq(
            "FX-ORD-1",
            &format!("seqs delivered to {}", c.label),
            seqs,
            (1..=n as u64).collect(),
        )?;
    }
    let h = stored_timeline(ctx, &a, &room, 37).await?;
    let hs: Vec<u64> = h.iter().map(|(e, _)| e.seq()).collect();
    ensure_eq("FX-ORD-1", "seqs stored", hs, (1..=n as u64).collect())?;
    let _ = acked;
    Ok(())
}

async fn identical(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "same everywhere").await?;
    let seq = m.seq.unwrap_or(0);
    // A reaction and an edit when the edits profile is there; otherwise a second message, so
    // the comparison still covers more than one event (FX-ORD-5 is core).
    let mut last = seq;
    for f in [
        json!({"type":"reaction","messageId":m.id,"emoji":"✅"}),
        json!({"type":"edit","messageId":m.id,"content":"edited"}),
    ] {
        last = match req_optional(ctx, &mut ca, "FX-ORD-5", f).await? {
            Some(a) => a.seq.unwrap_or(last + 1),
            None => send(ctx, &mut ca, "same everywhere, too")
                .await?
                .seq
                .unwrap_or(last + 1),
        };
    }
    cb.wait_seq("FX-ORD-5", last).await?;
    let live: Vec<Value> = cb.timeline().into_iter().map(|(_, v)| v).collect();
    let check = |path: &str, got: &[Value]| -> Result<(), CaseError> {
        ensure_eq(
            "FX-ORD-5",
            &format!("events via {path}"),
            got.to_vec(),
            live.clone(),
        )
    };
    let c2 = ctx.connect(&a, &room).await?;
    check("connect snapshot", &c2.snapshot_raw)?;
    let r = ctx.r();
    cb.send_json(&json!({"type":"resume","lastSeq":0,"ref":r}))?;
    let rep = cb
        .wait_item("FX-RES-2", "replay", |i| {
            matches!(i.frame(), Some(ServerFrame::Replay(_)))
        })
        .await?;
    if let Incoming::Text { value: Some(v), .. } = rep {
        let ev = v
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        ensure_eq("FX-RES-2", "events via replay", ev, live.clone())?;
    }
    if has_history(ctx, &a, &room).await? {
        let h = ctx.walk_forward(&a, &room, 50).await?;
        check(
            "history",
            &h.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        )?;
    }
    let p = ctx
        .get(
            &format!("/rooms/{room}/poll?afterSeq=0&timeoutMs=0"),
            &a.token,
        )
        .await?;
    if p.status == 404 {
        ctx.note("long-poll and SSE answer 404 (fallback profile absent): not compared");
        return Ok(());
    }
    let pv = p.json().unwrap_or(Value::Null);
    check(
        "long-poll",
        &pv.get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    )?;
    let mut s = ctx.sse(&a, &room, "", &[("Last-Event-ID", "0")]).await?;
    s.wait_seq("FX-TRN-2", last).await?;
    let sv: Vec<Value> = s.timeline().into_iter().map(|(_, _, v)| v).collect();
    ensure_eq("FX-TRN-2", "events via SSE", sv, live.clone())
}

async fn ephemeral(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "x").await?;
    let tr = ctx.r();
    ca.send_json(&json!({"type":"typing","isTyping":true,"ref":tr}))?;
    ca.sync("FX-ORD-6").await?;
    let presence = !errors(&ca)
        .iter()
        .any(|e| e.code == ErrorCode::UnknownType && e.reference.as_deref() == Some(tr.as_str()));
    if presence {
        cb.wait_frame("FX-PRE-5", "typing", |f| {
            matches!(f, ServerFrame::Typing(_))
        })
        .await?;
    } else {
        ctx.note("`typing` answered unknown_type (presence profile not implemented): typing and presence left out");
    }
    ca.send_text("bad json")?;
    ca.sync("FX-ORD-6").await?;
    let r = ctx.r();
    ca.send_json(&json!({"type":"resume","lastSeq":0,"ref":r}))?;
    ca.answer("FX-ORD-6", &r).await?;
    let c3 = ctx.connect(&a, &room).await?;
    drop(c3);
    if presence {
        cb.wait_frame("FX-ORD-6", "presence after a disconnect", |f| {
            matches!(f, ServerFrame::Presence(_))
        })
        .await?;
    } else {
        cb.sync("FX-ORD-6").await?;
    }
    // `ack` carries the acknowledged `seq` (FX-ACK-1); FX-ORD-6 does not list it.
    let eph = [
        "welcome",
        "history",
        "replay",
        "subscription_succeeded",
        "error",
        "pong",
        "token_refreshed",
        "typing",
        "agentTyping",
        "presence",
        "member_joined",
        "member_left",
    ];
    for c in [&ca, &cb] {
        for it in &c.log {
            if let Incoming::Text {
                value: Some(v),
                text,
                ..
            } = it
            {
                let t = v.get("type").and_then(Value::as_str).unwrap_or("");
                if eph.contains(&t) && v.get("seq").is_some() {
                    return Err(fail("FX-ORD-6", format!("no top-level seq on `{t}`"), text));
                }
            }
        }
    }
    let h = stored_timeline(ctx, &a, &room, 50).await?;
    ensure_eq(
        "FX-PRE-6",
        "stored timeline after a message and typing",
        h.iter().map(|(e, _)| e.type_name()).collect::<Vec<_>>(),
        vec!["message"],
    )?;
    ensure_eq(
        "FX-PRE-6",
        "currentSeq (typing is not sequenced)",
        current_seq(ctx, &a, &room).await?,
        m.seq.unwrap_or(0),
    )
}

async fn durable(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, mut cb) = pair(ctx).await?;
    // The history route when the server has it; otherwise a fresh connection's snapshot and
    // `welcome.currentSeq` (core) read the stored state.
    let hist = has_history(ctx, &a, &room).await?;
    for i in 0..5 {
        let ack = send(ctx, &mut ca, &format!("durable {i}")).await?;
        let seq = ack.seq.unwrap_or(0);
        let stored: Vec<u64> = if hist {
            let h = ctx.history(&a, &room, "limit=5").await?;
            h.events.iter().map(|e| e.seq()).collect()
        } else {
            ws_timeline(ctx, &a, &room)
                .await?
                .iter()
                .map(|(e, _)| e.seq())
                .collect()
        };
        ensure(
            stored.contains(&seq),
            "FX-ACK-1",
            format!("seq {seq} stored once acked"),
            format!("stored seqs {stored:?}"),
        )?;
        cb.wait_seq("FX-ORD-7", seq).await?;
        let cur = if hist {
            ctx.history(&b, &room, "limit=5").await?.current_seq
        } else {
            current_seq(ctx, &b, &room).await?
        };
        ensure(
            cur >= seq,
            "FX-ORD-7",
            format!("seq {seq} readable once delivered"),
            format!("currentSeq {cur}"),
        )?;
    }
    Ok(())
}
