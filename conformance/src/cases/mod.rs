//! Every conformance case, by group, and helpers shared by case bodies.

use fluxy_protocol::server::AckFrame;
use fluxy_protocol::{ErrorCode, ServerFrame, TimelineEvent};
use serde_json::{json, Value};

use crate::case::{fail, Case, CaseError};
use crate::ctx::{Conn, Ctx, Incoming, User};

pub mod ackg;
pub mod agt;
pub mod auth;
pub mod compat;
pub mod dur;
pub mod edt;
pub mod err;
pub mod frm;
pub mod his;
pub mod hs;
pub mod lim;
pub mod msg;
pub mod ord;
pub mod pre;
pub mod res;
pub mod ten;
pub mod trn;

/// Every case, in report order.
pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(hs::cases());
    v.extend(auth::cases());
    v.extend(frm::cases());
    v.extend(msg::cases());
    v.extend(ord::cases());
    v.extend(ackg::cases());
    v.extend(res::cases());
    v.extend(his::cases());
    v.extend(pre::cases());
    v.extend(agt::cases());
    v.extend(edt::cases());
    v.extend(trn::cases());
    v.extend(lim::cases());
    v.extend(err::cases());
    v.extend(ten::cases());
    v.extend(compat::cases());
    v.extend(crate::fuzz::cases());
    v.extend(crate::property::cases());
    v.extend(dur::cases());
    v
}

/// A `message` frame.
pub fn msg(content: &str, r: &str) -> Value {
    json!({"type":"message","content":content,"ref":r})
}

/// A `message` frame with a clientMessageId.
pub fn msg_c(content: &str, cmid: &str, r: &str) -> Value {
    json!({"type":"message","content":content,"clientMessageId":cmid,"ref":r})
}

/// Send a message and wait for its ack (failing `FX-ACK-1` without one, or without `id` and
/// `seq`).
pub async fn send(ctx: &Ctx, c: &mut Conn, content: &str) -> Result<AckFrame, CaseError> {
    let r = ctx.r();
    c.send_json(&msg(content, &r))?;
    // Without any ack, `ack` infers one from the sender's own broadcast copy (FX-ACK-1 is
    // then an observation, failing only the cases that cite it).
    let a = c.ack("FX-ACK-1", &r).await?;
    if a.seq.is_none() || a.id.is_none() {
        return Err(fail(
            "FX-ACK-1",
            "the ack of a new message carries id and seq",
            format!("{a:?}"),
        ));
    }
    Ok(a)
}

/// Send any frame (as JSON with a fresh ref) and wait for the ack.
pub async fn req(
    ctx: &Ctx,
    c: &mut Conn,
    clause: &str,
    mut frame: Value,
) -> Result<AckFrame, CaseError> {
    let r = ctx.r();
    frame["ref"] = json!(r);
    c.send_json(&frame)?;
    c.ack(clause, &r).await
}

/// Send any frame (with a fresh ref) and expect `error code`.
pub async fn req_err(
    ctx: &Ctx,
    c: &mut Conn,
    clause: &str,
    mut frame: Value,
    code: ErrorCode,
) -> Result<(), CaseError> {
    let r = ctx.r();
    frame["ref"] = json!(r);
    c.send_json(&frame)?;
    c.expect_error(clause, &r, code).await?;
    Ok(())
}

/// `POST /messages` as `u` for set-up: carries a `clientMessageId`, so a retry is idempotent
/// (FX-ACK-5), and retries after 429 (honouring `retryAfterMs` / `Retry-After`) and after a
/// 502/503/504 or a transport error (a proxy such as wrangler's may drop a request under load).
pub async fn post_message_retrying(
    ctx: &Ctx,
    u: &User,
    room: &str,
    content: &str,
) -> Result<(), CaseError> {
    use std::time::Duration;
    let body = json!({"roomId": room, "content": content, "clientMessageId": ctx.cmid()});
    let mut last = String::new();
    for attempt in 1..=6u64 {
        let wait = match ctx.post("/messages", &u.token, &body).await {
            Ok(r) if r.status == 201 || r.status == 200 => return Ok(()),
            Ok(r) if r.status == 429 => {
                let ms = r
                    .json()
                    .and_then(|v| v.get("retryAfterMs").and_then(Value::as_u64))
                    .or_else(|| {
                        r.headers
                            .get("retry-after")
                            .and_then(|h| h.to_str().ok())
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .map(|s| s * 1000)
                    })
                    .unwrap_or(200);
                last = format!("429 {}", r.text);
                Duration::from_millis(ms.clamp(1, 5_000))
            }
            Ok(r) if matches!(r.status, 502..=504) => {
                last = format!("{} {}", r.status, crate::ctx::short(&r.text, 200));
                Duration::from_millis(100 * attempt)
            }
            Ok(r) => {
                return Err(fail(
                    "FX-MSG-6",
                    "POST /messages by a member answers 201",
                    format!("{} {}", r.status, crate::ctx::short(&r.text, 300)),
                ))
            }
            Err(CaseError::Error(e)) => {
                last = e;
                Duration::from_millis(100 * attempt)
            }
            Err(e) => return Err(e),
        };
        ctx.note(&format!("set-up POST /messages retried after {last}"));
        // Back-off before an idempotent retry, as the server asked.
        tokio::time::sleep(wait).await;
    }
    Err(CaseError::Error(format!(
        "set-up: POST /messages kept failing: {last}"
    )))
}

/// Owner `a`, member `b`, a room, and both connected.
pub async fn pair(ctx: &Ctx) -> Result<(User, User, String, Conn, Conn), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    let ca = ctx.connect(&a, &room).await?;
    let cb = ctx.connect(&b, &room).await?;
    Ok((a, b, room, ca, cb))
}

/// Expect a handshake failure: either (SHOULD) an `error code` frame then close `close`,
/// or (MAY) an HTTP refusal with the code's status. In both cases nothing else (FX-HS-2).
pub async fn expect_rejected(
    c: &mut Conn,
    clause: &str,
    code: ErrorCode,
    close: u16,
) -> Result<(), CaseError> {
    let d = c.wait_dur() * 2;
    let end = c.wait_close(clause, d).await;
    let log = c.log.clone();
    // Did the server reject at all (the code's error frame or close)? If not, frames of an
    // accepted connection are the evidence that `clause` was not applied, not an FX-HS-2 leak.
    let rejected = matches!(end, Ok(Some(x)) if x == close)
        || log.iter().any(|i| {
            matches!(i.frame(), Some(ServerFrame::Error(e)) if e.code == code)
                || matches!(i, Incoming::Refused { .. })
        });
    for it in &log {
        if let Some(f) = it.frame() {
            if matches!(
                f,
                ServerFrame::Welcome(_)
                    | ServerFrame::History(_)
                    | ServerFrame::Replay(_)
                    | ServerFrame::SubscriptionSucceeded(_)
                    | ServerFrame::Presence(_)
            ) || f.clone().into_timeline().is_some()
            {
                if !rejected {
                    return Err(fail(
                        clause,
                        format!(
                            "rejection with {code} (HTTP {} or close {close})",
                            code.http_status()
                        ),
                        format!("the connection was accepted and served: {}", f.encode()),
                    ));
                }
                return Err(fail(
                    "FX-HS-2",
                    "no welcome, snapshot or events on a rejected connection",
                    f.encode(),
                ));
            }
        }
    }
    if let Some(Incoming::Refused { status, body }) = log.first() {
        let got = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        if *status == code.http_status() && got.as_deref() == Some(code.as_str()) {
            return Ok(());
        }
        if *status == code.http_status() && got.is_none() {
            // Refused with the right status (FX-HS-3's MAY) but no ErrorBody: FX-ERR-4's
            // business, judged where it is cited.
            c.tr.observe(
                "FX-ERR-4",
                &format!("an upgrade refused with {code} carries an ErrorBody"),
                &format!("HTTP {status} {body}"),
            );
            return Ok(());
        }
        return Err(fail(
            clause,
            format!(
                "rejection with {code} (HTTP {} or close {close})",
                code.http_status()
            ),
            format!("HTTP {status} {body}"),
        ));
    }
    let errs: Vec<_> = log
        .iter()
        .filter_map(|i| match i.frame() {
            Some(ServerFrame::Error(e)) => Some(e.code),
            _ => None,
        })
        .collect();
    let closed = end?;
    if !errs.contains(&code) {
        if closed == Some(close) {
            return Err(fail(
                "FX-HS-3",
                format!("an `error {code}` frame before close {close}"),
                format!("errors {errs:?}, close {closed:?}"),
            ));
        }
        return Err(fail(
            clause,
            format!("`error {code}` and close {close}"),
            format!("errors {errs:?}, close {closed:?}"),
        ));
    }
    if closed != Some(close) {
        return Err(fail(
            "FX-ERR-5",
            format!("close code {close}"),
            format!("close {closed:?}"),
        ));
    }
    Ok(())
}

/// The `error` frames received so far.
pub fn errors(c: &Conn) -> Vec<fluxy_protocol::server::ErrorFrame> {
    c.frames()
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Error(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Current seq of a room through the WebSocket alone (core): a fresh connection's
/// `welcome.currentSeq` (FX-HS-5), or the snapshot's when the server sent no `welcome`.
pub async fn current_seq(ctx: &Ctx, u: &User, room: &str) -> Result<u64, CaseError> {
    let mut c = ctx.connect(u, room).await?;
    let seq = c.current_seq();
    c.close();
    Ok(seq)
}

/// The whole stored timeline of `room` through the WebSocket alone (core, no history route):
/// a fresh connection's snapshot with `replayLimit=500` (FX-HS-6) when it holds everything,
/// otherwise `resume` paging from 0 (FX-RES-1) on that connection.
pub async fn ws_timeline(
    ctx: &Ctx,
    u: &User,
    room: &str,
) -> Result<Vec<(TimelineEvent, Value)>, CaseError> {
    let mut c = ctx.connect_q(u, room, "replayLimit=500").await?;
    if let Some(h) = &c.snapshot {
        if !h.has_more {
            let out = h
                .events
                .iter()
                .cloned()
                .zip(c.snapshot_raw.clone())
                .collect();
            c.close();
            return Ok(out);
        }
    }
    let mut out: Vec<(TimelineEvent, Value)> = Vec::new();
    let mut from = 0u64;
    for _ in 0..10_000 {
        let r = ctx.r();
        c.send_json(&json!({"type":"resume","lastSeq":from,"ref":r}))?;
        let (page, raw) = match c.answer("FX-RES-1", &r).await? {
            ServerFrame::Replay(p) => {
                let raw = c
                    .log
                    .iter()
                    .rev()
                    .find_map(|i| match i {
                        Incoming::Text {
                            frame: Some(ServerFrame::Replay(x)),
                            value: Some(v),
                            ..
                        } if x.reference.as_deref() == Some(r.as_str()) => Some(
                            v.get("events")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default(),
                        ),
                        _ => None,
                    })
                    .unwrap_or_default();
                (p, raw)
            }
            other => {
                return Err(fail(
                    "FX-RES-1",
                    format!("a `replay` answering `resume {{lastSeq: {from}}}`"),
                    other.encode(),
                ))
            }
        };
        let last = page.events.last().map(|e| e.seq());
        out.extend(page.events.into_iter().zip(raw));
        match last {
            Some(s) if page.has_more && s > from => from = s,
            _ => break,
        }
    }
    c.close();
    Ok(out)
}

/// Whether `room` answers the history route (FX-PRF-2: a server without the history profile
/// answers 404). Core cases use history only as an extra oracle when it is there.
pub async fn has_history(ctx: &Ctx, u: &User, room: &str) -> Result<bool, CaseError> {
    let r = ctx
        .get(&format!("/rooms/{room}/history?limit=1"), &u.token)
        .await?;
    if r.status == 404 {
        ctx.note(
            "the history route answers 404 (history profile absent): not used as an oracle here",
        );
        return Ok(false);
    }
    Ok(true)
}

/// The whole stored timeline: by the history route walked forward with `limit` when the
/// server has it (FX-HIS-1), otherwise through the WebSocket ([`ws_timeline`]).
pub async fn stored_timeline(
    ctx: &Ctx,
    u: &User,
    room: &str,
    limit: u32,
) -> Result<Vec<(TimelineEvent, Value)>, CaseError> {
    if has_history(ctx, u, room).await? {
        ctx.walk_forward(u, room, limit).await
    } else {
        ws_timeline(ctx, u, room).await
    }
}

/// Send a frame of an optional profile (`edit`, `reaction`, `typing`, …) and wait for its
/// ack; `None` (noted in the transcript) when the server answers `unknown_type`, i.e. it does
/// not implement that profile (FX-PRF-2), so a core case leaves that part out.
pub async fn req_optional(
    ctx: &Ctx,
    c: &mut Conn,
    clause: &str,
    mut frame: Value,
) -> Result<Option<AckFrame>, CaseError> {
    let r = ctx.r();
    frame["ref"] = json!(r);
    let ty = frame["type"].as_str().unwrap_or("?").to_string();
    c.send_json(&frame)?;
    match c.answer(clause, &r).await? {
        ServerFrame::Ack(a) => Ok(Some(a)),
        ServerFrame::Error(e) if e.code == ErrorCode::UnknownType => {
            ctx.note(&format!(
                "`{ty}` answered unknown_type (its profile is not implemented): that part of the case is left out"
            ));
            Ok(None)
        }
        other => Err(fail(
            clause,
            format!("an `ack` with ref {r}"),
            other.encode(),
        )),
    }
}

/// Write `n` messages into `room` as `u` quickly on any rate-limit policy: buckets are per
/// connection (FX-LIM-3), so the work is spread over enough connections (at most 8) that
/// each stays within 80 % of the announced `rateBurst`, and each paces itself.
pub(crate) async fn fill_many(
    ctx: &Ctx,
    u: &User,
    room: &str,
    n: usize,
    tag: &str,
) -> Result<(), CaseError> {
    let first = ctx.connect_q(u, room, "replay=off").await?;
    let burst = first
        .welcome
        .as_ref()
        .map(|w| w.limits.rate_burst.max(1))
        .unwrap_or(10) as usize;
    let per = (burst * 4 / 5).max(1);
    let m = n.div_ceil(per).clamp(1, 8);
    let mut conns = vec![first];
    while conns.len() < m {
        conns.push(ctx.connect_q(u, room, "replay=off").await?);
    }
    let share = n.div_ceil(m);
    let jobs = conns.iter_mut().enumerate().map(|(k, c)| {
        let lo = (k * share).min(n);
        let hi = ((k + 1) * share).min(n);
        let tag = format!("{tag}{k}-");
        async move { fill_paced(c, lo..hi, &tag).await }
    });
    for r in futures_util::future::join_all(jobs).await {
        r?;
    }
    Ok(())
}

/// Write the messages `range` at the rate the server announced in `welcome.limits` (a
/// client-side token bucket, so the abuse policy never trips), resending any `rate_limited`
/// after its `retryAfterMs`.
pub(crate) async fn fill_paced(
    c: &mut Conn,
    range: std::ops::Range<usize>,
    tag: &str,
) -> Result<(), CaseError> {
    let n = range.len();
    use std::time::{Duration, Instant};
    let (burst, rate) = c
        .welcome
        .as_ref()
        .map(|w| (w.limits.rate_burst.max(1), w.limits.rate_per_second.max(1)))
        .unwrap_or((10, 10));
    // Stay within 80 % of the announced budget: the server's clock and ours differ.
    let (burst, rate) = ((burst as f64 * 0.8).max(1.0), (rate as f64 * 0.8).max(0.5));
    let mut tokens = burst;
    let mut last = Instant::now();
    let mut pending: std::collections::VecDeque<usize> = range.collect();
    let mut attempt = 0u32;
    while !pending.is_empty() {
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst);
        last = now;
        if tokens < 1.0 {
            // Rate shaping as announced by the server, not synchronisation.
            tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / rate)).await;
            continue;
        }
        let k = (tokens as usize).min(pending.len()).min(50);
        tokens -= k as f64;
        attempt += 1;
        let chunk: Vec<usize> = pending.drain(..k).collect();
        for &i in &chunk {
            c.send_json(&msg(&format!("{tag}{i}"), &format!("{tag}{i}-{attempt}")))?;
        }
        for &i in &chunk {
            match c.answer("FX-HIS-1", &format!("{tag}{i}-{attempt}")).await? {
                fluxy_protocol::ServerFrame::Ack(_) => {}
                fluxy_protocol::ServerFrame::Error(e) if e.code == ErrorCode::RateLimited => {
                    let wait = e.retry_after_ms.unwrap_or(100).min(5_000);
                    tokens = 0.0;
                    last = Instant::now() + Duration::from_millis(wait);
                    pending.push_back(i);
                }
                other => {
                    return Err(fail(
                        "FX-MSG-1",
                        "an ack (or rate_limited) for each message",
                        other.encode(),
                    ))
                }
            }
        }
        if attempt > 10 * n as u32 {
            return Err(CaseError::Error(format!(
                "set-up: could not write {n} messages ({} left)",
                pending.len()
            )));
        }
    }
    Ok(())
}

/// [`req_err`] for a frame of an optional profile: `Ok(false)` (noted) when the server answers
/// `unknown_type` because it does not implement that profile (FX-PRF-2).
pub async fn req_err_optional(
    ctx: &Ctx,
    c: &mut Conn,
    clause: &str,
    mut frame: Value,
    code: ErrorCode,
) -> Result<bool, CaseError> {
    let r = ctx.r();
    frame["ref"] = json!(r);
    let ty = frame["type"].as_str().unwrap_or("?").to_string();
    c.send_json(&frame)?;
    match c.answer(clause, &r).await? {
        ServerFrame::Error(e) if e.code == code => Ok(true),
        ServerFrame::Error(e) if e.code == ErrorCode::UnknownType => {
            ctx.note(&format!(
                "`{ty}` answered unknown_type (its profile is not implemented): that part of the case is left out"
            ));
            Ok(false)
        }
        other => Err(fail(
            clause,
            format!("`error {code}` with ref {r}"),
            other.encode(),
        )),
    }
}
