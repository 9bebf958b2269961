//! Limits and rate limits (LIM).

use std::time::Duration;

use fluxy_protocol::ErrorCode;
use fluxy_protocol::ServerFrame;
use serde_json::json;

use super::{current_seq, errors, pair, send};
use crate::case;
use crate::case::{blocked, ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::Ctx;

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("lim/frame-too-large", ["FX-LIM-1"], "a frame over maxFrameBytes gets payload_too_large and the connection stays open; HTTP bodies over 1 MiB get 413", too_large),
        case!("lim/rate-limit", ["FX-LIM-3", "FX-ERR-3"], "frames over the rate limit get rate_limited with retryAfterMs, are not processed, and the connection recovers", rate_limit),
        case!("lim/retry-after-honoured", ["FX-LIM-3"], "after the smallest over-limit burst, a counted frame sent once retryAfterMs has passed is not rate_limited", retry_after_honoured),
        case!("lim/rate-floor", ["FX-LIM-9"], "a connection paced at the floor (a burst of 20 frames, then 10 per second) is never refused, also past one minute's worth of a per-minute limit", rate_floor),
        case!("lim/ping-not-limited", ["FX-LIM-4"], "pings do not count towards the rate limit", ping_not_limited),
        case!("lim/rate-abuse-close", ["FX-LIM-6", "FX-ERR-5"], "a connection that keeps sending far over its limit may be closed, and then only with 4008 rate_limited after rate_limited answers", rate_abuse_close),
        case!("lim/http-rate-limit", ["FX-LIM-7", "FX-LIM-12"], "where HTTP is rate-limited, 429 rate_limited carries retryAfterMs and Retry-After, and the request repeated after retryAfterMs is accepted", http_rate_limit),
        case!("lim/invalid-frame-flood", ["FX-FRM-11", "FX-ERR-5"], "a flood of invalid frames is answered frame by frame; a close, if any, is 4010 protocol_violation", invalid_flood),
        case!("lim/idle-timeout", ["FX-LIM-8", "FX-ERR-5"], "a silent connection is closed with 4000 after idleTimeoutMs; one that keeps its heartbeat in the same room is not", idle_timeout),
    ]
}

async fn too_large(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    if ca.welcome_synthesized {
        return Err(blocked(
            "FX-LIM-5",
            "a `welcome` advertising limits.maxFrameBytes (the limit this case tests)",
            "no welcome: the server's frame limit is unknown",
        ));
    }
    let max = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.max_frame_bytes)
        .unwrap_or(65536) as usize;
    // A `message` frame of exactly `bytes` bytes (its content is far over maxContentChars, so
    // a server processing it answers invalid_content; only its size is at stake here).
    let sized = |bytes: usize, r: &str| {
        let shell = json!({"type":"message","content":"","ref":r})
            .to_string()
            .len();
        json!({"type":"message","content":"x".repeat(bytes.saturating_sub(shell)),"ref":r})
            .to_string()
    };
    // Exactly at the advertised limit: not payload_too_large.
    ca.send_text(&sized(max, "at-limit"))?;
    let first = ca
        .wait_frame("FX-LIM-1", "an answer to the frame at the limit", |f| {
            matches!(f, ServerFrame::Error(_) | ServerFrame::Ack(_))
        })
        .await?;
    if let ServerFrame::Error(e) = &first {
        ensure(
            e.code != ErrorCode::PayloadTooLarge,
            "FX-LIM-1",
            format!("a frame of exactly maxFrameBytes ({max}) bytes is not payload_too_large"),
            first.encode(),
        )?;
    }
    // One byte past it: payload_too_large.
    ca.send_text(&sized(max + 1, "big"))?;
    ca.expect_error_any("FX-LIM-1", ErrorCode::PayloadTooLarge)
        .await
        .map_err(|e| e.context(format!("a frame of maxFrameBytes + 1 ({}) bytes", max + 1)))?;
    let ok = send(ctx, &mut ca, "after the big one").await?;
    ensure_eq(
        "FX-LIM-1",
        "the oversized frame stored nothing",
        ok.seq,
        Some(1),
    )?;
    // HTTP: a valid body padded with JSON whitespace to exactly 1 MiB is not too large (it is
    // stored), one byte more is 413 `payload_too_large`.
    const MIB: usize = 1 << 20;
    let padded = |n: usize, content: &str| {
        let mut b = json!({"roomId": room, "content": content}).to_string();
        let pad = n.saturating_sub(b.len());
        b.push_str(&" ".repeat(pad));
        b
    };
    let r = ctx
        .post_raw("/messages", &a.token, padded(MIB, "exactly 1 MiB"))
        .await?;
    ensure(
        r.status != 413 && (r.status < 400 || r.status == 429),
        "FX-LIM-1",
        "POST /messages with a body of exactly 1 MiB (1,048,576 bytes) is accepted",
        format!("HTTP {} {}", r.status, crate::ctx::short(&r.text, 200)),
    )?;
    let r = ctx
        .post_raw("/messages", &a.token, padded(MIB + 1, "one byte past"))
        .await?;
    r.expect_error(
        "FX-LIM-1",
        "POST /messages with a body of 1 MiB + 1 byte",
        ErrorCode::PayloadTooLarge,
    )?;
    let body = json!({"roomId": room, "content": "y".repeat(1_100_000)});
    let r = ctx.post("/messages", &a.token, &body).await?;
    r.expect_error(
        "FX-LIM-1",
        "POST /messages with a 1.1 MB body",
        ErrorCode::PayloadTooLarge,
    )
}

async fn rate_limit(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    ca.unpaced();
    let l = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.clone())
        .ok_or_else(|| CaseError::Error("no welcome".into()))?;
    let n = (l.rate_burst + l.rate_per_second + 50).min(3000) as usize;
    // `message` frames (core): the ones refused must not be stored (FX-LIM-3).
    for i in 0..n {
        ca.send_json(&json!({"type":"message","content":format!("rl{i}"),"ref":format!("rl{i}")}))?;
    }
    // Every frame gets an answer: an ack (after its commit, possibly after later refusals)
    // or rate_limited.
    loop {
        let answered: std::collections::BTreeSet<String> = ca
            .frames()
            .iter()
            .filter_map(|f| crate::ctx::frame_ref(f).map(str::to_owned))
            .filter(|r| r.starts_with("rl"))
            .collect();
        if answered.len() >= n {
            break;
        }
        ca.wait_frame(
            "FX-LIM-3",
            &format!(
                "an answer to each of the {n} frames ({} so far)",
                answered.len()
            ),
            |f| matches!(f, ServerFrame::Ack(_) | ServerFrame::Error(_)),
        )
        .await?;
    }
    let acked = ca
        .frames()
        .iter()
        .filter(|f| matches!(f, ServerFrame::Ack(a) if a.reference.as_deref().is_some_and(|r| r.starts_with("rl"))))
        .count() as u64;
    let errs = errors(&ca);
    let limited: Vec<_> = errs
        .iter()
        .filter(|e| e.code == ErrorCode::RateLimited)
        .collect();
    ensure(
        !limited.is_empty(),
        "FX-LIM-3",
        format!(
            "rate_limited for some of {n} frames sent at once (burst {})",
            l.rate_burst
        ),
        format!("{} errors, none rate_limited", errs.len()),
    )?;
    let bad = limited
        .iter()
        .find(|e| e.retry_after_ms.unwrap_or(0) == 0 || !e.retryable);
    if let Some(e) = bad {
        return Err(fail(
            "FX-LIM-3",
            "rate_limited with retryAfterMs > 0 and retryable true",
            format!("{e:?}"),
        ));
    }
    let wait = limited
        .iter()
        .filter_map(|e| e.retry_after_ms)
        .max()
        .unwrap_or(1000);
    ensure_eq(
        "FX-LIM-3",
        "events stored (only the acked messages; rate-limited ones are not processed)",
        current_seq(ctx, &a, &room).await?,
        acked,
    )?;
    // After retryAfterMs a frame is accepted (this wait is the server's own instruction).
    tokio::time::sleep(Duration::from_millis(wait.min(10_000) + 50)).await;
    let ok = send(ctx, &mut ca, "after the limit").await?;
    ensure(
        ok.seq.is_some(),
        "FX-LIM-3",
        "a frame after retryAfterMs is accepted",
        format!("{ok:?}"),
    )
}

async fn ping_not_limited(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    ca.unpaced();
    let burst = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.rate_burst)
        .unwrap_or(200);
    let n = (burst + 20).min(2000);
    for i in 0..n {
        ca.send_json(&json!({"type":"ping","ts":i}))?;
    }
    ca.wait_frame(
        "FX-LIM-4",
        "the last pong",
        |f| matches!(f, ServerFrame::Pong(p) if p.echo == Some(n - 1)),
    )
    .await?;
    let limited = errors(&ca)
        .iter()
        .filter(|e| e.code == ErrorCode::RateLimited)
        .count();
    ensure_eq("FX-LIM-4", "rate_limited answers to pings", limited, 0)
}

async fn idle_timeout(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    // A second connection that keeps its heartbeat: closing the silent one must not touch it.
    let mut live = ctx.connect(&a, &room).await?;
    let mut c = ctx.connect(&a, &room).await?;
    c.stop_keepalive();
    let idle = c
        .welcome
        .as_ref()
        .map(|w| w.idle_timeout_ms)
        .unwrap_or(60_000);
    let hb = c
        .welcome
        .as_ref()
        .map(|w| w.heartbeat_interval_ms)
        .unwrap_or(0);
    if idle > 20_000 {
        return Err(CaseError::Skip(format!("idleTimeoutMs is {idle}; start the server with a shorter idle timeout to check FX-LIM-8 quickly")));
    }
    let code = c
        .wait_close("FX-LIM-8", Duration::from_millis(idle) + ctx.ms(3000))
        .await?;
    ensure_eq("FX-LIM-8", "close code", code, Some(4000))?;
    let reason = c
        .log
        .iter()
        .find_map(|i| match i {
            crate::ctx::Incoming::Closed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_default();
    ensure_eq(
        "FX-ERR-5",
        "close reason",
        reason.as_str(),
        "heartbeat_timeout",
    )?;
    live.sync("FX-LIM-8")
        .await
        .map_err(|e| e.context("a connection that kept its heartbeat stays open"))?;
    ensure(
        !live.log.iter().any(crate::ctx::Incoming::is_end),
        "FX-LIM-8",
        "the connection that kept its heartbeat is still open",
        "closed",
    )?;
    ensure(
        hb * 2 <= idle,
        "FX-LIM-8",
        "heartbeatIntervalMs at most half of idleTimeoutMs (SHOULD)",
        format!("{hb} / {idle}"),
    )
}

async fn rate_abuse_close(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    ca.unpaced();
    let burst = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.rate_burst)
        .unwrap_or(200);
    let n = (burst + 1000).min(5000);
    for i in 0..n {
        if ca
            .send_json(&json!({"type":"resume","lastSeq":0,"ref":format!("ab{i}")}))
            .is_err()
        {
            break; // already closed: the check below reads the close
        }
    }
    let last = format!("ab{}", n - 1);
    let it = ca
        .wait_item(
            "FX-LIM-6",
            "an answer to the last frame of the flood, or a close",
            |i| i.is_end() || i.frame().and_then(crate::ctx::frame_ref) == Some(last.as_str()),
        )
        .await?;
    let limited = errors(&ca)
        .iter()
        .filter(|e| e.code == ErrorCode::RateLimited)
        .count();
    match it {
        crate::ctx::Incoming::Closed { code, reason } => {
            ensure_eq(
                "FX-LIM-6",
                "close after a rate-limit flood",
                (code, reason.as_str()),
                (Some(4008), "rate_limited"),
            )?;
            ensure(
                limited > 0,
                "FX-LIM-6",
                "rate_limited answers before the 4008 close",
                "none",
            )
        }
        other if other.is_end() => Err(fail(
            "FX-LIM-6",
            "a 4008 close or an open connection",
            other.describe(),
        )),
        _ => {
            ctx.note(&format!(
                "not closed after {n} frames ({limited} rate_limited): closing is a MAY"
            ));
            Ok(())
        }
    }
}

async fn http_rate_limit(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut seen = None;
    // Which request was limited (reads or writes): the retry repeats it.
    let mut writes = false;
    let retry_of = |r: &crate::ctx::HttpResp| {
        r.json()
            .and_then(|v| v.get("retryAfterMs").and_then(|x| x.as_u64()))
            .unwrap_or(0)
    };
    // Reads first (300 GET /rooms), then writes: up to 800 POST /messages by one
    // user, 50 at a time, stopping at the first 429.
    for _ in 0..10 {
        let futs: Vec<_> = (0..30).map(|_| ctx.get("/rooms", &a.token)).collect();
        for r in futures_util::future::join_all(futs).await {
            let r = r?;
            if r.status == 429 {
                seen = Some(r);
            }
        }
        if seen.is_some() {
            break;
        }
    }
    for round in 0..16 {
        if seen.is_some() {
            break;
        }
        let bodies: Vec<serde_json::Value> = (0..50)
            .map(|i| json!({"roomId": room, "content": format!("burst {round}/{i}")}))
            .collect();
        let futs: Vec<_> = bodies
            .iter()
            .map(|b| ctx.post("/messages", &a.token, b))
            .collect();
        for r in futures_util::future::join_all(futs).await {
            let r = r?;
            if r.status == 429 {
                writes = true;
                seen = Some(r);
            } else if !(200..300).contains(&r.status) {
                return Err(CaseError::Error(format!(
                    "set-up: POST /messages answered {} {}",
                    r.status, r.text
                )));
            } else if r.json().and_then(|v| v.get("message").cloned()).is_none() {
                // A success without the stored message is no success (FX-MSG-6), e.g. a
                // refusal that lost its status and body.
                return Err(crate::case::as_precondition(fail(
                    "FX-MSG-6",
                    "POST /messages answers a PostMessageResponse with message",
                    format!("HTTP {} {}", r.status, crate::ctx::short(&r.text, 200)),
                )));
            }
        }
    }
    let Some(r) = seen else {
        return Err(CaseError::Skip(
            "no HTTP rate limiting observed in 300 GET /rooms and 800 POST /messages: FX-LIM-7 applies only where HTTP is rate-limited".into(),
        ));
    };
    r.expect_error("FX-LIM-7", "an HTTP 429", ErrorCode::RateLimited)?;
    let v = r.json().unwrap_or_default();
    ensure(
        v.get("retryAfterMs")
            .and_then(|x| x.as_u64())
            .is_some_and(|x| x > 0),
        "FX-LIM-7",
        "retryAfterMs > 0",
        &r.text,
    )?;
    ensure(
        r.headers
            .get("retry-after")
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h.trim().parse::<u64>().is_ok_and(|s| s >= 1)),
        "FX-LIM-7",
        "a Retry-After header of at least 1 (delay-seconds)",
        format!("{:?}", r.headers.get("retry-after")),
    )?;
    // FX-LIM-12: sequential requests (none in flight) until one is refused; then, after its
    // retryAfterMs and with nothing in between, the same request is not refused again.
    let once = || async {
        if writes {
            let body = json!({"roomId": room, "content": "after retryAfterMs"});
            ctx.post("/messages", &a.token, &body).await
        } else {
            ctx.get("/rooms", &a.token).await
        }
    };
    let mut refused = None;
    let deadline = std::time::Instant::now() + ctx.env.scaled(Duration::from_secs(10));
    for _ in 0..2000 {
        if std::time::Instant::now() > deadline {
            break;
        }
        let r = once().await?;
        if r.status == 429 {
            refused = Some(retry_of(&r));
            break;
        }
    }
    let Some(wait_ms) = refused else {
        ctx.note("no 429 in 2,000 sequential requests or 10 s; FX-LIM-12 not checked");
        return Ok(());
    };
    if wait_ms > 30_000 {
        ctx.note(&format!(
            "retryAfterMs {wait_ms} is too long to wait for; FX-LIM-12 not checked"
        ));
        return Ok(());
    }
    tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
    let again = once().await?;
    ensure(
        again.status != 429,
        "FX-LIM-12",
        format!("the same request, sent once after its retryAfterMs ({wait_ms} ms), is not refused again"),
        format!("HTTP {} {}", again.status, crate::ctx::short(&again.text, 200)),
    )
}

async fn invalid_flood(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    for _ in 0..120 {
        ca.send_text("not json")?;
    }
    ca.send_json(&json!({"type":"ping","ts":424242}))?;
    let it = ca
        .wait_item("FX-FRM-11", "a pong after the flood, or close 4010", |i| {
            matches!(i.frame(), Some(ServerFrame::Pong(p)) if p.echo == Some(424242)) || i.is_end()
        })
        .await?;
    if let crate::ctx::Incoming::Closed { code, reason } = it {
        let limited = errors(&ca).iter().any(|e| e.code == ErrorCode::RateLimited);
        if limited && code == Some(4008) && reason == "rate_limited" {
            // The flood went over the frame rate limit: rate_limited answers, then the close
            // FX-LIM-6 allows for a connection that keeps sending over its limit.
            ctx.note("closed 4008 rate_limited after rate_limited answers (FX-LIM-6 allows it)");
            return Ok(());
        }
        ensure_eq(
            "FX-ERR-5",
            "close after an invalid-frame flood",
            (code, reason.as_str()),
            (Some(4010), "protocol_violation"),
        )?;
        let n = errors(&ca).len();
        ensure(
            n >= 100,
            "FX-FRM-11",
            "at least 100 invalid frames before closing with 4010",
            n,
        )?;
    } else if !matches!(it, crate::ctx::Incoming::Text { .. }) {
        return Err(fail("FX-FRM-11", "a pong or close 4010", format!("{it:?}")));
    }
    Ok(())
}

async fn retry_after_honoured(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    ca.unpaced();
    let l = ca
        .welcome
        .as_ref()
        .map(|w| w.limits.clone())
        .ok_or_else(|| CaseError::Error("no welcome".into()))?;
    if l.rate_burst > 1000 {
        return Err(CaseError::Skip(format!(
            "rateBurst is {}; a burst over it is too large to send here",
            l.rate_burst
        )));
    }
    // A counted frame without side effects: `typing` where the presence profile is there,
    // otherwise (`unknown_type`, FX-PRF-2) the core `resume` from 0 in an empty room.
    let probe = ctx.r();
    ca.send_json(&json!({"type":"typing","isTyping":true,"ref":probe}))?;
    ca.sync("FX-LIM-3").await?;
    let typing = !errors(&ca).iter().any(|e| {
        e.code == ErrorCode::UnknownType && e.reference.as_deref() == Some(probe.as_str())
    });
    if !typing {
        ctx.note("`typing` answered unknown_type: the counted frame is `resume`");
    }
    let counted = move |r: String| {
        if typing {
            json!({"type":"typing","isTyping":true,"ref":r})
        } else {
            json!({"type":"resume","lastSeq":0,"ref":r})
        }
    };
    // The smallest burst first (rateBurst + 1), then, if tokens refilled meanwhile, one more
    // second's worth. The answer honoured is the one to the LAST frame of a burst, and only if
    // that frame was refused: a promise made earlier in the burst is void, because frames sent
    // after it may have taken the tokens that refilled meanwhile.
    let mut limited = None;
    for extra in [
        l.rate_burst + 1,
        l.rate_per_second + 50,
        l.rate_per_second + 50,
    ] {
        let mut last = String::new();
        for _ in 0..extra {
            last = ctx.r();
            ca.send_json(&counted(last.clone()))?;
        }
        ca.sync("FX-LIM-3").await?;
        limited = errors(&ca).into_iter().find(|e| {
            e.code == ErrorCode::RateLimited && e.reference.as_deref() == Some(last.as_str())
        });
        if limited.is_some() {
            break;
        }
    }
    let Some(e) = limited else {
        return Err(fail(
            "FX-LIM-3",
            format!(
                "the last of a burst of counted frames sent at once refused with rate_limited (bursts of {}, {} and {}; burst {})",
                l.rate_burst + 1,
                l.rate_per_second + 50,
                l.rate_per_second + 50,
                l.rate_burst
            ),
            "the last frame of every burst accepted",
        ));
    };
    let wait = e.retry_after_ms.unwrap_or(0);
    ensure(
        wait > 0,
        "FX-LIM-3",
        "rate_limited with retryAfterMs > 0",
        format!("{e:?}"),
    )?;
    // The one allowed fixed wait: the server's own retryAfterMs (scaled), and no margin. The
    // server computed it when it refused the frame, before this client even read the answer,
    // so a frame sent retryAfterMs after that read reaches it later than promised; a margin
    // would hide a retryAfterMs that is too short.
    tokio::time::sleep(ctx.ms(wait)).await;
    let mark = ca.log.len();
    let r = ctx.r();
    ca.send_json(&counted(r.clone()))?;
    // Barrier: the pong answering a later ping comes after any answer to the resume frame.
    ca.sync("FX-LIM-3").await?;
    let late: Vec<String> = ca.log[mark..]
        .iter()
        .filter_map(|i| match i.frame() {
            Some(ServerFrame::Error(e)) => Some(e.clone()),
            _ => None,
        })
        .filter(|e| e.code == ErrorCode::RateLimited || e.reference.as_deref() == Some(r.as_str()))
        .map(|e| format!("{e:?}"))
        .collect();
    ensure(
        late.is_empty(),
        "FX-LIM-3",
        format!(
            "a counted frame sent {wait} ms (retryAfterMs) after the refusal was read is accepted"
        ),
        late.join(" | "),
    )
}

/// Frames sent by `lim/rate-floor`: more than 60, so a per-minute limit of 60 (1 per second,
/// under the floor) is exceeded within seconds.
const FLOOR_FRAMES: usize = 64;

async fn rate_floor(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ca, _) = pair(ctx).await?;
    // The floor itself, whatever the server advertises: FX-LIM-9 guarantees it to every client.
    ca.pace_at(20, 10);
    let refs: Vec<String> = (0..FLOOR_FRAMES).map(|_| ctx.r()).collect();
    for (i, r) in refs.iter().enumerate() {
        ca.send_json(&json!({"type":"message","content":format!("floor {i}"),"ref":r}))?;
    }
    for (i, r) in refs.iter().enumerate() {
        let got = ca.ack("FX-LIM-9", r).await;
        match got {
            Ok(_) => {}
            // The first frames, well within any burst, are the positive control: a refusal
            // there is not about the rate.
            Err(CaseError::Fail(f)) if i < 10 => {
                return Err(crate::case::provocation("FX-MSG-1", CaseError::Fail(f)))
            }
            Err(CaseError::Fail(f)) => {
                return Err(fail(
                    "FX-LIM-9",
                    format!("every frame of a connection paced at 20 + 10/s accepted (frame {} of {FLOOR_FRAMES})", i + 1),
                    f.observed,
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
