//! Fallback transports: SSE and long-polling (TRN).

use std::time::{Duration, Instant};

use fluxy_protocol::http::HistoryPage;
use fluxy_protocol::ErrorCode;
use serde_json::Value;

use super::{fill_many, msg, pair, send};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{urlenc, Conn, Ctx, Incoming};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("trn/sse-ready-and-headers", ["FX-TRN-1", "FX-TRN-4"], "SSE answers text/event-stream, no-cache, then ready {currentSeq} without id, then live events", sse_ready),
        case!("trn/sse-same-events", ["FX-TRN-2", "FX-TRN-8", "FX-TRN-4"], "each SSE event has id: seq, event: type and the WebSocket JSON", sse_same),
        case!("trn/sse-last-event-id", ["FX-TRN-3"], "Last-Event-ID (header or lastEventId) replays every later event, then live, no gap or repeat", sse_resume),
        case!("trn/far-behind", ["FX-TRN-3", "FX-TRN-7", "FX-TRN-13", "FX-TRN-14"], "SSE Last-Event-ID and long-poll afterSeq from before a long history (more events than a server keeps in memory) get every event, gap-free", far_behind),
        case!("trn/sse-resync", ["FX-TRN-3"], "an impossible Last-Event-ID gets event: error resync_required and the stream ends", sse_resync),
        case!("trn/sse-not-acceptable", ["FX-TRN-1"], "Accept excluding text/event-stream gets 406; membership is required", sse_406),
        case!("trn/sse-ephemeral-no-id", ["FX-TRN-5", "FX-TRN-4"], "ephemeral events on the stream carry no id", sse_ephemeral),
        case!("trn/poll", ["FX-TRN-7", "FX-TRN-8"], "long-poll returns at once when events exist, waits for the next commit, or times out empty with a forward cursor", poll),
        case!("trn/batch-opt-in", ["FX-TRN-9", "FX-TRN-10", "FX-TRN-11", "FX-TRN-12"], "with ?batch=1 a burst arrives (standalone or batched) gap-free, ascending, identical to history, each ack before its own copy; without it no batch frame", batch_opt_in),
        case!("trn/sse-keepalive", ["FX-TRN-6"], "the stream carries a comment at least every 30 s (checked only with --strict-length runs)", sse_keepalive),
    ]
}

async fn sse_ready(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    send(ctx, &mut ca, "before").await?;
    let mut s = ctx.sse(&a, &room, "", &[]).await?;
    ensure_eq("FX-TRN-1", "status", s.status, 200)?;
    let ct = s
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    ensure(
        ct.starts_with("text/event-stream"),
        "FX-TRN-1",
        "Content-Type text/event-stream",
        &ct,
    )?;
    let cc = s
        .headers
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    ensure(
        cc.contains("no-cache"),
        "FX-TRN-1",
        "Cache-Control no-cache",
        &cc,
    )?;
    let r = s
        .wait_event("FX-TRN-4", "event: ready", |e| e.event == "ready")
        .await?;
    ensure(
        r.id.is_none(),
        "FX-TRN-4",
        "ready without id",
        format!("{:?}", r.id),
    )?;
    let v: Value = serde_json::from_str(&r.data).unwrap_or_default();
    ensure_eq(
        "FX-TRN-4",
        "ready.currentSeq",
        v.get("currentSeq").and_then(Value::as_u64),
        Some(1),
    )?;
    let first = s.log.iter().position(|e| e.event == "ready");
    ensure_eq("FX-TRN-4", "ready is the first event", first, Some(0))?;
    send(ctx, &mut ca, "after").await?;
    s.wait_seq("FX-TRN-4", 2).await?;
    let seqs: Vec<u64> = s.timeline().iter().map(|(_, e, _)| e.seq()).collect();
    ensure_eq("FX-TRN-4", "events after ready", seqs, vec![2])?;
    // `text/*` admits text/event-stream as much as `*/*` does (HTTP media ranges).
    for accept in ["*/*", "text/*", "text/event-stream, application/json;q=0.5"] {
        let s2 = ctx.sse(&a, &room, "", &[("Accept", accept)]).await?;
        ensure_eq(
            "FX-TRN-1",
            &format!("status with Accept {accept}"),
            s2.status,
            200,
        )?;
    }
    Ok(())
}

async fn sse_same(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    let mut s = ctx.sse(&a, &room, "", &[]).await?;
    if let Err(CaseError::Fail(f)) = s
        .wait_event("FX-TRN-4", "ready", |e| e.event == "ready")
        .await
    {
        // No `ready` (FX-TRN-4's business); a stream that already sent something is open and
        // live all the same.
        if s.log.is_empty() {
            return Err(CaseError::Fail(f));
        }
        ctx.tr
            .observe("FX-TRN-4", "`event: ready` first", &f.observed);
    }
    let m = send(ctx, &mut ca, "over sse").await?;
    // The message's own SSE event, found by its content (whatever its id and event lines).
    let own = s
        .wait_event("FX-TRN-2", "the SSE event of the message sent", |e| {
            serde_json::from_str::<Value>(&e.data)
                .ok()
                .is_some_and(|v| v.get("content").and_then(Value::as_str) == Some("over sse"))
        })
        .await?;
    ensure(
        own.id.is_some() && own.id.as_deref() == m.seq.map(|q| q.to_string()).as_deref(),
        "FX-TRN-2",
        format!(
            "`id: {:?}` and `event: message` on the message's SSE event",
            m.seq
        ),
        format!("id {:?}, event {:?}", own.id, own.event),
    )?;
    crate::cases::req(
        ctx,
        &mut ca,
        "FX-TRN-2",
        serde_json::json!({"type":"reaction","messageId":m.id,"emoji":"📡"}),
    )
    .await?;
    cb.wait_seq("FX-TRN-8", 2).await?;
    s.wait_seq("FX-TRN-2", 2).await?;
    let ws: Vec<Value> = cb.timeline().into_iter().map(|(_, v)| v).collect();
    let tl = s.timeline();
    for (id, e, _) in &tl {
        ensure_eq(
            "FX-TRN-2",
            "id: line",
            id.clone(),
            Some(e.seq().to_string()),
        )?;
    }
    let events: Vec<String> = s
        .log
        .iter()
        .filter(|e| e.id.is_some())
        .map(|e| e.event.clone())
        .collect();
    ensure_eq(
        "FX-TRN-2",
        "event: lines",
        events,
        vec!["message".to_string(), "reaction".to_string()],
    )?;
    let sv: Vec<Value> = tl.into_iter().map(|(_, _, v)| v).collect();
    ensure_eq("FX-TRN-8", "SSE data vs WebSocket JSON", sv, ws)
}

async fn sse_resume(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    for i in 0..6 {
        send(ctx, &mut ca, &format!("m{i}")).await?;
    }
    let mut s = ctx.sse(&a, &room, "", &[("Last-Event-ID", "3")]).await?;
    // Commit more while the stream is catching up.
    for i in 0..4 {
        ca.send_json(&msg(&format!("live{i}"), &format!("l{i}")))?;
    }
    s.wait_seq("FX-TRN-3", 10).await?;
    let seqs: Vec<u64> = s.timeline().iter().map(|(_, e, _)| e.seq()).collect();
    ensure_eq(
        "FX-TRN-3",
        "seqs after Last-Event-ID 3",
        seqs,
        (4..=10).collect(),
    )?;
    let mut s2 = ctx.sse(&a, &room, "lastEventId=8", &[]).await?;
    send(ctx, &mut ca, "eleven").await?;
    s2.wait_seq("FX-TRN-3", 11).await?;
    let seqs: Vec<u64> = s2.timeline().iter().map(|(_, e, _)| e.seq()).collect();
    ensure_eq(
        "FX-TRN-3",
        "seqs after ?lastEventId=8",
        seqs,
        vec![9, 10, 11],
    )
}

async fn far_behind(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, ca, _) = pair(ctx).await?;
    let window = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.resume_window)
        .unwrap_or(200);
    // Past the reference's in-memory window (max(resumeWindow, 500) events), so that a server
    // like it must read the start from storage and then join the live stream.
    let n = window.max(500) + 100;
    if n > 2_000 {
        return Err(CaseError::Skip(format!(
            "resumeWindow {window}: filling past it would take too long"
        )));
    }
    drop(ca);
    fill_many(ctx, &a, &room, n as usize, "fb").await?;
    // From seq 1: older than the window, so the whole catch-up or resync_required (FX-TRN-13).
    let mut s = ctx.sse(&a, &room, "", &[("Last-Event-ID", "1")]).await?;
    let first = s
        .wait_event(
            "FX-TRN-3",
            "the catch-up up to the last seq, or event: error",
            |e| e.event == "error" || e.id.as_deref() == Some(n.to_string().as_str()),
        )
        .await?;
    if first.event == "error" {
        let code = serde_json::from_str::<serde_json::Value>(&first.data)
            .ok()
            .and_then(|v| v.get("code").cloned());
        ensure_eq(
            "FX-TRN-13",
            "the error of a catch-up older than resumeWindow",
            code,
            Some(serde_json::json!("resync_required")),
        )?;
        ctx.note("catch-up from seq 1 answered resync_required (older than resumeWindow: allowed)");
    } else {
        let seqs: Vec<u64> = s.timeline().iter().map(|(_, e, _)| e.seq()).collect();
        ensure_eq(
            "FX-TRN-3",
            "seqs after Last-Event-ID 1",
            seqs,
            (2..=n).collect(),
        )?;
    }
    drop(s);
    // Exactly at the window's edge: `resumeWindow` events after it, so no resync is allowed.
    let edge = n - window;
    let mut s = ctx
        .sse(
            &a,
            &room,
            "",
            &[("Last-Event-ID", edge.to_string().as_str())],
        )
        .await?;
    s.wait_seq("FX-TRN-13", n).await?;
    let seqs: Vec<u64> = s.timeline().iter().map(|(_, e, _)| e.seq()).collect();
    ensure_eq(
        "FX-TRN-13",
        &format!("seqs after Last-Event-ID {edge} (exactly resumeWindow back)"),
        seqs,
        (edge + 1..=n).collect(),
    )?;
    // No position at all starts after seq 0 (FX-TRN-14).
    let r = ctx
        .get(
            &format!("/rooms/{room}/poll?limit=3&timeoutMs=1000"),
            &a.token,
        )
        .await?;
    r.expect_status("FX-TRN-14", "poll without cursor or afterSeq", 200)?;
    let p: HistoryPage = r.parse("FX-TRN-14", "HistoryPage")?;
    ensure_eq(
        "FX-TRN-14",
        "seqs of a poll without cursor or afterSeq",
        p.events.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![1, 2, 3],
    )?;
    for after in [0u64, 1] {
        let r = ctx
            .get(
                &format!("/rooms/{room}/poll?afterSeq={after}&limit=500&timeoutMs=1000"),
                &a.token,
            )
            .await?;
        r.expect_status("FX-TRN-7", &format!("poll afterSeq={after}"), 200)?;
        let p: HistoryPage = r.parse("FX-TRN-7", "HistoryPage")?;
        ensure_eq(
            "FX-TRN-7",
            &format!("poll afterSeq={after} limit=500"),
            p.events.iter().map(|e| e.seq()).collect::<Vec<_>>(),
            (after + 1..=after + 500).collect(),
        )?;
    }
    Ok(())
}

async fn sse_resync(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    let one = send(ctx, &mut ca, "one").await?.seq.unwrap_or(1);
    // The boundaries first: Last-Event-ID exactly at currentSeq is not ahead of the room (no
    // error; the next event arrives live), one past it is.
    let at = one.to_string();
    let mut s = ctx
        .sse(&a, &room, "", &[("Last-Event-ID", at.as_str())])
        .await?;
    let two = send(ctx, &mut ca, "two").await?.seq.unwrap_or(2);
    let e = s
        .wait_event("FX-TRN-3", "the next event live, or event: error", |e| {
            e.event == "error" || e.id.as_deref() == Some(two.to_string().as_str())
        })
        .await?;
    ensure(
        e.event != "error",
        "FX-TRN-3",
        format!("Last-Event-ID {at} (= currentSeq) continues live"),
        format!("event: {} {}", e.event, e.data),
    )?;
    drop(s);
    let past = (two + 1).to_string();
    let mut s = ctx
        .sse(&a, &room, "", &[("Last-Event-ID", past.as_str())])
        .await?;
    let e = s
        .wait_event("FX-TRN-3", "event: error", |e| e.event == "error")
        .await?;
    let v: Value = serde_json::from_str(&e.data).unwrap_or_default();
    ensure_eq(
        "FX-TRN-3",
        &format!("error code for Last-Event-ID {past} (currentSeq + 1)"),
        v.get("code").cloned(),
        Some(serde_json::json!("resync_required")),
    )?;
    s.wait_end("FX-TRN-3").await?;
    let mut s = ctx.sse(&a, &room, "", &[("Last-Event-ID", "999")]).await?;
    let e = s
        .wait_event("FX-TRN-3", "event: error", |e| e.event == "error")
        .await?;
    let v: Value = serde_json::from_str(&e.data).unwrap_or_default();
    ensure_eq(
        "FX-TRN-3",
        "error code",
        v.get("code").cloned(),
        Some(serde_json::json!("resync_required")),
    )?;
    s.wait_end("FX-TRN-3").await
}

async fn sse_406(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, _, _) = pair(ctx).await?;
    let s = ctx
        .sse(&a, &room, "", &[("Accept", "application/json")])
        .await?;
    ensure_eq(
        "FX-TRN-1",
        "status with Accept: application/json",
        s.status,
        406,
    )?;
    let code = serde_json::from_str::<Value>(&s.body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    ensure_eq(
        "FX-TRN-1",
        "ErrorBody error",
        code,
        Some(serde_json::json!("not_acceptable")),
    )?;
    let x = ctx.user("outsider").await?;
    let s = ctx.sse(&x, &room, "", &[]).await?;
    ensure_eq(
        "FX-TRN-1",
        "status for a non-member",
        s.status,
        ErrorCode::NotMember.http_status(),
    )
}

async fn sse_ephemeral(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    let mut s = ctx.sse(&a, &room, "", &[]).await?;
    s.wait_event("FX-TRN-4", "ready", |e| e.event == "ready")
        .await?;
    ca.send_json(&serde_json::json!({"type":"typing","isTyping":true}))?;
    let c = ctx.user("c").await?;
    let _ = c;
    let m = send(ctx, &mut ca, "barrier").await?;
    s.wait_seq("FX-TRN-5", m.seq.unwrap_or(0)).await?;
    for e in &s.log {
        let timeline = fluxy_protocol::events::TIMELINE_TYPES.contains(&e.event.as_str());
        if !timeline && e.id.is_some() {
            return Err(fail(
                "FX-TRN-5",
                format!("no id: on ephemeral `{}`", e.event),
                format!("id: {:?}", e.id),
            ));
        }
    }
    Ok(())
}

async fn poll(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    for i in 0..3 {
        send(ctx, &mut ca, &format!("p{i}")).await?;
    }
    let t0 = Instant::now();
    let r = ctx
        .get(
            &format!("/rooms/{room}/poll?afterSeq=1&timeoutMs=20000"),
            &a.token,
        )
        .await?;
    r.expect_status("FX-TRN-7", "poll with events available", 200)?;
    ensure(
        t0.elapsed() < ctx.ms(3000),
        "FX-TRN-7",
        "an immediate answer when events exist",
        format!("{:?}", t0.elapsed()),
    )?;
    let p: HistoryPage = r.parse("FX-TRN-7", "HistoryPage")?;
    ensure_eq(
        "FX-TRN-7",
        "events after 1",
        p.events.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![2, 3],
    )?;
    let cur = p
        .next_cursor
        .clone()
        .ok_or_else(|| fail("FX-TRN-7", "a forward nextCursor", "none"))?;
    // Waits for the next commit.
    let path = format!("/rooms/{room}/poll?cursor={}&timeoutMs=20000", urlenc(&cur));
    let waiter = ctx.http_with(
        reqwest::Method::GET,
        &path,
        Some(&a.token),
        None,
        &[],
        Some(Duration::from_secs(40)),
    );
    let sender = async {
        // The poll must be waiting when the commit happens, and nothing a client can see says
        // it is: give it half a second (a provocation, not a synchronisation: a poll that
        // arrives later still gets the event at once, so the verdict holds either way).
        tokio::time::sleep(ctx.ms(500)).await;
        let ack = match cb.send_json(&msg("wake up", "wk")) {
            Ok(()) => cb.ack("FX-TRN-7", "wk").await,
            Err(e) => Err(e),
        };
        (ack, Instant::now())
    };
    let (r, (ack, committed)) = tokio::join!(waiter, sender);
    let woke_after = committed.elapsed();
    let ack = ack?;
    let r = r?;
    ensure(
        woke_after < ctx.ms(5000),
        "FX-TRN-7",
        "the waiting poll returns soon after the commit, not at its timeout",
        format!("{woke_after:?} after the commit's ack (timeoutMs 20000)"),
    )?;
    r.expect_status("FX-TRN-7", "poll waiting for a commit", 200)?;
    let p2: HistoryPage = r.parse("FX-TRN-7", "HistoryPage")?;
    let s2: Vec<u64> = p2.events.iter().map(|e| e.seq()).collect();
    ensure_eq(
        "FX-TRN-7",
        "events returned by the waiting poll",
        s2,
        vec![ack.seq.unwrap_or(0)],
    )?;
    // Same content as the WebSocket.
    cb.wait_seq("FX-TRN-8", 4).await?;
    let ws = cb
        .timeline()
        .into_iter()
        .find(|(e, _)| e.seq() == 4)
        .map(|(_, v)| v);
    let pv = r.json().and_then(|v| v.pointer("/events/0").cloned());
    ensure_eq("FX-TRN-8", "poll event vs WebSocket JSON", pv, ws)?;
    // Timeout: empty page, same position, a forward cursor.
    let cur2 = p2
        .next_cursor
        .clone()
        .ok_or_else(|| fail("FX-TRN-7", "a forward nextCursor", "none"))?;
    let t1 = Instant::now();
    let r = ctx
        .get(
            &format!("/rooms/{room}/poll?cursor={}&timeoutMs=300", urlenc(&cur2)),
            &a.token,
        )
        .await?;
    let el = t1.elapsed();
    r.expect_status("FX-TRN-7", "poll timing out", 200)?;
    let p3: HistoryPage = r.parse("FX-TRN-7", "HistoryPage")?;
    ensure(
        p3.events.is_empty() && p3.next_cursor.is_some(),
        "FX-TRN-7",
        "an empty page with nextCursor at the timeout",
        r.text.clone(),
    )?;
    ensure(
        el >= Duration::from_millis(250),
        "FX-TRN-7",
        "waiting about timeoutMs before answering empty",
        format!("{el:?}"),
    )?;
    Ok(())
}

async fn sse_keepalive(_ctx: &Ctx) -> Result<(), CaseError> {
    Err(CaseError::Skip(
        "observing a 30 s keepalive comment would add 30 s to the run; not checked".into(),
    ))
}

/// (log position, seq) pairs.
type Positions = Vec<(usize, u64)>;

/// Every live timeline event of a connection as (seq, raw text), the log position of each
/// event, and the log position of each `ack`, by seq.
fn events_and_acks(c: &Conn) -> (Vec<(u64, String)>, Positions, Positions) {
    let (mut events, mut at, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for (i, item) in c.log.iter().enumerate() {
        let Incoming::Text {
            text,
            frame: Some(f),
            ..
        } = item
        else {
            continue;
        };
        if let fluxy_protocol::ServerFrame::Ack(a) = f {
            if let Some(s) = a.seq {
                acks.push((i, s));
            }
        } else if let Some(e) = f.clone().into_timeline() {
            events.push((e.seq(), text.clone()));
            at.push((i, e.seq()));
        }
    }
    (events, at, acks)
}

async fn batch_opt_in(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    // The sender opted in (ack before own copy), a reader opted in, a reader did not.
    let mut sender = ctx.connect_q(&a, &room, "batch=1").await?;
    let mut reader = ctx.connect_q(&b, &room, "batch=1").await?;
    let mut plain = ctx.connect(&b, &room).await?;
    let n = 60usize;
    for i in 0..n {
        sender.send_json(&msg(&format!("batch {i}"), &format!("k{i}")))?;
    }
    for i in 0..n {
        sender.ack("FX-TRN-11", &format!("k{i}")).await?;
    }
    for c in [&mut sender, &mut reader, &mut plain] {
        c.wait_count("FX-TRN-10", n).await?;
    }
    let history = super::stored_timeline(ctx, &a, &room, 100).await?;
    let hist: Vec<Value> = history.into_iter().map(|(_, v)| v).collect();
    ensure_eq("FX-TRN-10", "events in history", hist.len(), n)?;
    let (plain_events, _, _) = events_and_acks(&plain);
    for c in [&sender, &reader, &plain] {
        let (events, at, acks) = events_and_acks(c);
        let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
        ensure_eq(
            "FX-TRN-10",
            &format!("seqs delivered to {} (standalone and batched)", c.label),
            seqs,
            (1..=n as u64).collect(),
        )?;
        for ((seq, text), h) in events.iter().zip(&hist) {
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            ensure_eq(
                "FX-TRN-12",
                &format!("event {seq} on {} vs history", c.label),
                &v,
                h,
            )?;
        }
        ensure_eq(
            "FX-TRN-12",
            &format!(
                "raw event text on {} vs the connection without batch",
                c.label
            ),
            &events,
            &plain_events,
        )?;
        if c.label == sender.label {
            for (ack_at, s) in &acks {
                let own = at.iter().find(|(_, e)| e == s).map(|(i, _)| *i);
                ensure(
                    own.is_some_and(|own| *ack_at < own),
                    "FX-TRN-11",
                    format!("the ack of seq {s} before its own copy"),
                    format!("ack at frame {ack_at}, event at frame {own:?}"),
                )?;
            }
        }
    }
    let batched = |c: &Conn| c.batches.lock().map(|b| b.clone()).unwrap_or_default();
    ensure_eq(
        "FX-TRN-9",
        "batch frames on the connection without batch=1",
        batched(&plain),
        Vec::<usize>::new(),
    )?;
    for c in [&sender, &reader] {
        let b = batched(c);
        ensure(
            b.iter().all(|&k| k > 0),
            "FX-TRN-10",
            "no empty batch",
            format!("{b:?}"),
        )?;
        ctx.note(&format!(
            "{}: {} batch frame(s) holding {} of {n} events",
            c.label,
            b.len(),
            b.iter().sum::<usize>()
        ));
    }
    Ok(())
}
