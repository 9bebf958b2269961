//! Resume (RES), including real network faults through the proxy.

use fluxy_protocol::{ErrorCode, ServerFrame, TimelineEvent};
use serde_json::{json, Value};

use super::{msg, pair, send};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{Conn, Ctx, Incoming, User};
use crate::proxy::{of_type, Action, Proxy, Rule, Side};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("res/resume-exact-after-drop", ["FX-RES-1", "FX-RES-2", "FX-RES-3"], "drop mid-stream while others send; resume yields exactly the missed events, then live", resume_exact),
        case!("res/proxy-cut-mid-stream", ["FX-RES-3", "FX-HS-7", "FX-ORD-2"], "a real network cut (proxy) mid-burst; reconnect with ?lastSeq= covers every seq exactly once", proxy_cut),
        case!("res/proxy-slow-link", ["FX-ORD-2", "FX-RES-3"], "a delayed link (proxy) still gets every event in order", proxy_slow),
        case!("res/resync-too-far-back", ["FX-RES-4", "FX-RES-1"], "lastSeq older than the resume window gets resync_required, no partial replay", too_far_back),
        case!("res/resync-future", ["FX-RES-4"], "lastSeq beyond currentSeq gets resync_required and the connection stays open", future),
        case!("res/resume-edges", ["FX-RES-1", "FX-RES-4"], "resume at exactly currentSeq, in an empty room, and exactly resumeWindow events back all get a replay, not resync_required", resume_edges),
        case!("res/replay-bounded", ["FX-RES-1", "FX-RES-5"], "a replay holds at most maxPageLimit events with hasMore, and continues from the last one", bounded),
        case!("res/many-resume-at-once", ["FX-RES-7"], "many connections resuming at once each get their own complete replay", many),
    ]
}

fn seqs(v: &[TimelineEvent]) -> Vec<u64> {
    v.iter().map(|e| e.seq()).collect()
}

async fn resume(
    c: &mut Conn,
    ctx: &Ctx,
    last: u64,
    clause: &str,
) -> Result<(fluxy_protocol::server::ReplayFrame, Vec<Value>), CaseError> {
    let r = ctx.r();
    c.send_json(&json!({"type":"resume","lastSeq":last,"ref":r}))?;
    let it = c
        .wait_item(clause, "a replay answering resume", |i| match i.frame() {
            Some(ServerFrame::Replay(x)) => x.reference.as_deref() == Some(r.as_str()),
            Some(ServerFrame::Error(e)) => e.reference.as_deref() == Some(r.as_str()),
            _ => false,
        })
        .await?;
    match it {
        Incoming::Text {
            frame: Some(ServerFrame::Replay(x)),
            value,
            ..
        } => {
            let raw = value
                .and_then(|v| v.get("events").and_then(Value::as_array).cloned())
                .unwrap_or_default();
            Ok((x, raw))
        }
        Incoming::Text { text, .. } => Err(fail(clause, "a replay", text)),
        other => Err(fail(clause, "a replay", format!("{other:?}"))),
    }
}

async fn resume_exact(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, cb) = pair(ctx).await?;
    let mut cw = ctx.connect(&a, &room).await?; // witness of the original delivery
    for i in 0..10 {
        send(ctx, &mut ca, &format!("before {i}")).await?;
    }
    let mut cb = cb;
    cb.wait_seq("FX-RES-3", 10).await?;
    let last = cb.timeline().last().map(|(e, _)| e.seq()).unwrap_or(0);
    cb.kill();
    for i in 0..25 {
        ca.send_json(&msg(&format!("during {i}"), &format!("d{i}")))?;
    }
    ca.ack("FX-RES-1", "d24").await?;
    let mut nb = ctx.connect_q(&b, &room, "replay=off").await?;
    let (rep, raw) = resume(&mut nb, ctx, last, "FX-RES-1").await?;
    ensure_eq(
        "FX-RES-1",
        "replay seqs",
        seqs(&rep.events),
        (last + 1..=35).collect(),
    )?;
    ensure_eq("FX-RES-1", "replay.fromSeq", rep.from_seq, last)?;
    ensure(
        rep.current_seq >= 35,
        "FX-RES-1",
        "replay.currentSeq >= 35",
        rep.current_seq,
    )?;
    ensure_eq("FX-RES-1", "replay.hasMore", rep.has_more, false)?;
    cw.wait_seq("FX-RES-2", 35).await?;
    let orig: Vec<Value> = cw
        .timeline()
        .into_iter()
        .filter(|(e, _)| e.seq() > last)
        .map(|(_, v)| v)
        .collect();
    ensure_eq(
        "FX-RES-2",
        "replayed events (JSON) vs original delivery",
        raw,
        orig,
    )?;
    // Live continues after the replay.
    let more = send(ctx, &mut ca, "after resume").await?;
    nb.wait_seq("FX-RES-3", more.seq.unwrap_or(0)).await?;
    let live: Vec<u64> = nb.timeline().iter().map(|(e, _)| e.seq()).collect();
    ensure_eq("FX-RES-3", "live after replay", live, vec![36])
}

async fn proxy_cut(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    let mut ca = ctx.connect(&a, &room).await?;
    let proxy = Proxy::start(ctx).await?;
    // Cut B's link before it would receive its 13th message event.
    proxy.rule(Rule::new(Side::ToClient, Action::Cut, of_type("message")).after(12));
    let mut cb = proxy.connect(ctx, &b, &room, "").await?;
    let total = 40u64;
    for i in 0..total {
        ca.send_json(&msg(&format!("m{i}"), &format!("p{i}")))?;
    }
    cb.wait_close("FX-RES-3", ctx.wait()).await.ok();
    ca.ack("FX-RES-3", &format!("p{}", total - 1)).await?;
    let got: Vec<u64> = cb.timeline().iter().map(|(e, _)| e.seq()).collect();
    ensure_eq(
        "FX-ORD-2",
        "events before the cut (in order, gap-free)",
        got.clone(),
        (1..=got.len() as u64).collect(),
    )?;
    let last = got.last().copied().unwrap_or(0);
    // Reconnect (through the proxy again) with ?lastSeq=.
    let mut nb = proxy
        .connect(ctx, &b, &room, &format!("lastSeq={last}"))
        .await?;
    let rep = nb
        .replay
        .clone()
        .ok_or_else(|| fail("FX-HS-7", "a replay on connect with lastSeq", "none"))?;
    let mut all: Vec<u64> = got;
    all.extend(seqs(&rep.events));
    let start = nb.current_seq();
    if start < total {
        nb.wait_seq("FX-RES-3", total).await?;
    }
    for (e, _) in nb.timeline() {
        if !all.contains(&e.seq()) {
            all.push(e.seq());
        }
    }
    ensure_eq(
        "FX-RES-3",
        "every seq exactly once across the cut",
        all,
        (1..=total).collect(),
    )
}

async fn proxy_slow(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    let mut ca = ctx.connect(&a, &room).await?;
    let proxy = Proxy::start(ctx).await?;
    proxy.rule(
        Rule::new(
            Side::ToClient,
            Action::Delay(ctx.ms(30)),
            of_type("message"),
        )
        .times(10),
    );
    proxy.rule(
        Rule::new(
            Side::ToServer,
            Action::Delay(ctx.ms(50)),
            of_type("message"),
        )
        .times(3),
    );
    let mut cb = proxy.connect(ctx, &b, &room, "").await?;
    for i in 0..15 {
        ca.send_json(&msg(&format!("a{i}"), &format!("s{i}")))?;
        cb.send_json(&msg(&format!("b{i}"), &format!("t{i}")))?;
    }
    cb.wait_count("FX-ORD-2", 30).await?;
    ca.wait_count("FX-ORD-2", 30).await?;
    let sb: Vec<u64> = cb.timeline().iter().map(|(e, _)| e.seq()).collect();
    let sa: Vec<u64> = ca.timeline().iter().map(|(e, _)| e.seq()).collect();
    ensure_eq("FX-ORD-2", "seqs on the slow link", sb, (1..=30).collect())?;
    ensure_eq(
        "FX-ORD-2",
        "seqs on the direct link",
        sa,
        (1..=30).collect(),
    )
}

async fn fill(ctx: &Ctx, users: &[User], room: &str, n: usize) -> Result<(), CaseError> {
    // HTTP posts (not subject to the per-connection rate limit), at most 16 in flight, each
    // retried idempotently on 429 or a 5xx from a proxy in front of the server.
    let mut left = n;
    while left > 0 {
        let k = left.min(16);
        let mut futs = Vec::new();
        for i in 0..k {
            let u = &users[i % users.len()];
            let content = format!("fill {left}-{i}");
            futs.push(async move { super::post_message_retrying(ctx, u, room, &content).await });
        }
        for r in futures_util::future::join_all(futs).await {
            r?;
        }
        left -= k;
    }
    Ok(())
}

async fn too_far_back(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, _) = pair(ctx).await?;
    let window = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.resume_window)
        .unwrap_or(1000);
    if window > 3000 {
        return Err(CaseError::Skip(format!(
            "resumeWindow {window} is too large to fill quickly"
        )));
    }
    let n = window as usize + 5;
    fill(ctx, &[a.clone(), b.clone()], &room, n).await?;
    let r = ctx.r();
    ca.send_json(&json!({"type":"resume","lastSeq":1,"ref":r}))?;
    match ca.answer("FX-RES-4", &r).await? {
        ServerFrame::Error(e) if e.code == ErrorCode::ResyncRequired => {}
        other => {
            return Err(fail(
                "FX-RES-4",
                "error resync_required (no partial replay)",
                crate::ctx::short(&other.encode(), 300),
            ))
        }
    }
    // Within the window still works.
    let cur = n as u64;
    let (rep, _) = resume(&mut ca, ctx, cur - 3, "FX-RES-1").await?;
    ensure_eq(
        "FX-RES-1",
        "replay within the window",
        seqs(&rep.events),
        vec![cur - 2, cur - 1, cur],
    )
}

async fn resume_edges(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    // An empty room: resume from 0.
    let (x, _) = resume(&mut ca, ctx, 0, "FX-RES-1").await?;
    ensure_eq(
        "FX-RES-1",
        "replay (events, fromSeq, currentSeq) resuming from 0 in an empty room",
        (x.events.len(), x.from_seq, x.current_seq),
        (0, 0, 0),
    )?;
    let window = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.resume_window)
        .unwrap_or(100);
    if window > 1_000 {
        return Err(CaseError::Skip(format!(
            "resumeWindow {window}: filling it would take too long"
        )));
    }
    super::fill_many(ctx, &a, &room, window as usize + 1, "re").await?;
    let current = window + 1;
    // Exactly at currentSeq: an empty replay.
    let (x, _) = resume(&mut ca, ctx, current, "FX-RES-1").await?;
    ensure_eq(
        "FX-RES-1",
        "replay (events, fromSeq, currentSeq) resuming at currentSeq",
        (x.events.len(), x.from_seq, x.current_seq),
        (0, current, current),
    )?;
    // Exactly resumeWindow events back: still replayable.
    let (x, _) = resume(&mut ca, ctx, current - window, "FX-RES-4").await?;
    let seqs: Vec<u64> = x.events.iter().map(|e| e.seq()).collect();
    let want: Vec<u64> = (current - window + 1..=current).take(500).collect();
    ensure_eq(
        "FX-RES-4",
        "replay resuming exactly resumeWindow events back",
        seqs,
        want,
    )
}

async fn future(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    send(ctx, &mut ca, "one").await?;
    let r = ctx.r();
    ca.send_json(&json!({"type":"resume","lastSeq":1000,"ref":r}))?;
    ca.expect_error("FX-RES-4", &r, ErrorCode::ResyncRequired)
        .await?;
    send(ctx, &mut ca, "still open").await.map(|_| ())
}

async fn bounded(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, _) = pair(ctx).await?;
    let l = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.clone())
        .ok_or_else(|| CaseError::Error("no welcome".into()))?;
    ensure(
        l.resume_window >= 100,
        "FX-RES-5",
        "resumeWindow >= 100",
        l.resume_window,
    )?;
    if l.max_page_limit >= l.resume_window || l.max_page_limit > 1000 {
        // Replay of the whole window fits one frame: check a complete replay says hasMore false.
        fill(ctx, &[a, b], &room, 30).await?;
        let (rep, _) = resume(&mut ca, ctx, 0, "FX-RES-1").await?;
        ensure_eq(
            "FX-RES-1",
            "replay of 30 events",
            seqs(&rep.events),
            (1..=30).collect(),
        )?;
        return ensure_eq(
            "FX-RES-1",
            "hasMore on a complete replay",
            rep.has_more,
            false,
        );
    }
    let n = l.max_page_limit as usize + 10;
    fill(ctx, &[a, b], &room, n).await?;
    let (rep, _) = resume(&mut ca, ctx, 0, "FX-RES-1").await?;
    ensure_eq(
        "FX-RES-1",
        "events in a bounded replay",
        rep.events.len() as u64,
        l.max_page_limit,
    )?;
    ensure(rep.has_more, "FX-RES-1", "hasMore true", "false")?;
    let last = rep.events.last().map(|e| e.seq()).unwrap_or(0);
    let (rep2, _) = resume(&mut ca, ctx, last, "FX-RES-1").await?;
    ensure_eq(
        "FX-RES-1",
        "continuation",
        seqs(&rep2.events),
        (last + 1..=n as u64).collect(),
    )
}

async fn many(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, _) = pair(ctx).await?;
    for i in 0..30 {
        ca.send_json(&msg(&format!("m{i}"), &format!("m{i}")))?;
    }
    ca.ack("FX-RES-7", "m29").await?;
    let mut conns = Vec::new();
    for i in 0..10 {
        let u = if i % 2 == 0 { &a } else { &b };
        conns.push(ctx.connect_q(u, &room, "replay=off").await?);
    }
    // Fire every resume before reading any answer.
    for (i, c) in conns.iter().enumerate() {
        c.send_json(&json!({"type":"resume","lastSeq": (i * 3) as u64, "ref": format!("mr{i}")}))?;
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let r = format!("mr{i}");
        match c.answer("FX-RES-7", &r).await? {
            ServerFrame::Replay(rep) => {
                ensure_eq(
                    "FX-RES-7",
                    &format!("replay for lastSeq {}", i * 3),
                    seqs(&rep.events),
                    ((i * 3) as u64 + 1..=30).collect(),
                )?;
            }
            other => return Err(fail("FX-RES-7", "a replay", other.encode())),
        }
    }
    Ok(())
}
