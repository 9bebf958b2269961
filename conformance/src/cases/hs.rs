//! Handshake (HS) and versioning (VER).

use fluxy_protocol::common::parse_timestamp;
use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::Value;

use super::{expect_rejected, msg, send};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{urlenc, Ctx, Incoming};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("hs/welcome-first", ["FX-HS-5", "FX-VER-1", "FX-LIM-5", "FX-RES-5", "FX-LIM-1", "FX-LIM-2", "FX-LIM-9", "FX-LIM-10", "FX-FRM-5"], "welcome is the first frame and carries version, identity, seq, timers and limits", welcome_first),
        case!("hs/welcome-first-under-churn", ["FX-HS-5", "FX-HS-8"], "with connections opening and closing concurrently, every connection still gets welcome first", welcome_under_churn),
        case!("hs/connect-sequence", ["FX-HS-6", "FX-HS-8", "FX-PRE-1"], "welcome, history (newest events ascending, ending at currentSeq), subscription_succeeded, presence", connect_sequence),
        case!("hs/token-in-header", ["FX-HS-1"], "the token is accepted in an Authorization: Bearer header", token_in_header),
        case!("hs/replay-off", ["FX-HS-6"], "replay=off|false|0 skips the history snapshot", replay_off),
        case!("hs/replay-limit", ["FX-HS-6"], "replayLimit (and historyLimit) bound the snapshot, hasMore says older events exist", replay_limit),
        case!("hs/last-seq-replay", ["FX-HS-7"], "?lastSeq=N sends a replay of the events after N instead of history", last_seq_replay),
        case!("hs/no-loss-during-handshake", ["FX-HS-9"], "events committed while connecting are delivered exactly once after the snapshot", no_loss_during_handshake),
        case!("hs/early-frames-processed", ["FX-HS-10"], "frames sent before the connect sequence completes are processed after it, in order", early_frames),
        case!("hs/identity-hints-ignored", ["FX-HS-11"], "userId in the URL or headers does not change identity", identity_hints),
        case!("hs/version-param", ["FX-VER-2"], "v=1 and absent v are accepted, v=2 gets unsupported_version / 4009", version_param),
        case!("hs/subprotocol", ["FX-VER-3"], "the fluxy.v1 subprotocol is selected when offered", subprotocol),
        case!("hs/plain-http-400", ["FX-HS-4"], "a non-upgrade request to the WebSocket route gets 400 invalid_frame", plain_http),
        case!("hs/failure-in-band", ["FX-HS-3", "FX-HS-2"], "a bad token gets an error frame then close 4004, and no room data", failure_in_band),
        case!("hs/health", ["FX-VER-1", "FX-VER-4", "FX-AUTH-8"], "GET /health reports protocolVersion 1.0 without a token", health),
    ]
}

async fn welcome_first(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let c = ctx.connect(&a, &room).await?;
    let w = c
        .welcome
        .clone()
        .ok_or_else(|| CaseError::Error("no welcome".into()))?;
    ensure(
        c.pre_welcome.is_empty(),
        "FX-HS-5",
        "welcome as the first frame",
        format!("{:?} before welcome", c.pre_welcome),
    )?;
    ensure_eq(
        "FX-VER-1",
        "welcome.protocolVersion",
        w.protocol_version.as_str(),
        "1.0",
    )?;
    ensure_eq(
        "FX-HS-5",
        "welcome.userId",
        w.user_id.as_str(),
        a.id.as_str(),
    )?;
    ensure_eq(
        "FX-HS-5",
        "welcome.roomId",
        w.room_id.as_str(),
        room.as_str(),
    )?;
    ensure(
        !w.connection_id.is_empty(),
        "FX-HS-5",
        "a connectionId",
        "empty",
    )?;
    ensure(
        w.roles.iter().any(|r| r == "member"),
        "FX-HS-5",
        "roles from the token ([member])",
        format!("{:?}", w.roles),
    )?;
    ensure_eq(
        "FX-HS-5",
        "welcome.currentSeq of a new room",
        w.current_seq,
        0,
    )?;
    ensure(
        parse_timestamp(&w.token_expires_at).is_some(),
        "FX-FRM-5",
        "tokenExpiresAt in RFC 3339 with milliseconds",
        &w.token_expires_at,
    )?;
    ensure(
        w.heartbeat_interval_ms > 0 && w.idle_timeout_ms > 0,
        "FX-HS-5",
        "positive heartbeatIntervalMs and idleTimeoutMs",
        format!("{} / {}", w.heartbeat_interval_ms, w.idle_timeout_ms),
    )?;
    let l = &w.limits;
    ensure(
        l.max_frame_bytes >= 65536,
        "FX-LIM-1",
        "limits.maxFrameBytes >= 65536",
        l.max_frame_bytes,
    )?;
    ensure_eq(
        "FX-LIM-2",
        "limits.maxContentChars",
        l.max_content_chars,
        4000,
    )?;
    ensure(
        l.rate_burst > 0 && l.rate_per_second > 0 && l.max_page_limit > 0,
        "FX-LIM-5",
        "positive rateBurst, ratePerSecond, maxPageLimit",
        format!("{l:?}"),
    )?;
    ensure(
        l.rate_burst >= 20 && l.rate_per_second >= 10,
        "FX-LIM-9",
        "limits.rateBurst >= 20 and limits.ratePerSecond >= 10",
        format!(
            "rateBurst {}, ratePerSecond {}",
            l.rate_burst, l.rate_per_second
        ),
    )?;
    ensure(
        w.heartbeat_interval_ms >= 1000 && w.idle_timeout_ms >= 2000,
        "FX-LIM-10",
        "heartbeatIntervalMs >= 1000 and idleTimeoutMs >= 2000",
        format!(
            "heartbeatIntervalMs {}, idleTimeoutMs {}",
            w.heartbeat_interval_ms, w.idle_timeout_ms
        ),
    )?;
    ensure(
        l.resume_window >= 100,
        "FX-RES-5",
        "limits.resumeWindow >= 100",
        l.resume_window,
    )?;
    // The raw welcome has every field.
    let raw = c
        .log
        .first()
        .and_then(|i| match i {
            crate::ctx::Incoming::Text { value, .. } => value.clone(),
            _ => None,
        })
        .unwrap_or(Value::Null);
    for f in [
        "maxFrameBytes",
        "maxContentChars",
        "rateBurst",
        "ratePerSecond",
        "resumeWindow",
        "maxPageLimit",
    ] {
        ensure(
            raw.pointer(&format!("/limits/{f}")).is_some(),
            "FX-LIM-5",
            format!("welcome.limits.{f}"),
            "missing",
        )?;
    }
    Ok(())
}

async fn connect_sequence(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c0 = ctx.connect(&a, &room).await?;
    for i in 0..3 {
        send(ctx, &mut c0, &format!("m{i}")).await?;
    }
    c0.close();
    let mut c = ctx.connect(&a, &room).await?;
    // Without `welcome` or a decodable `history`, the sequence cannot be judged: those are
    // FX-HS-5's and FX-HS-6's findings.
    if c.welcome_synthesized {
        return Err(fail(
            "FX-HS-5",
            "`welcome` as the first frame",
            "no welcome frame",
        ));
    }
    if c.snapshot.is_none() {
        return Err(fail("FX-HS-6", "a history frame", "none"));
    }
    let kinds: Vec<&str> = c
        .frames()
        .iter()
        .map(|f| f.type_name())
        .collect::<Vec<_>>()
        .into_iter()
        .take(3)
        .collect();
    ensure_eq(
        "FX-HS-8",
        "first three frames",
        kinds,
        vec!["welcome", "history", "subscription_succeeded"],
    )?;
    let h = c
        .snapshot
        .clone()
        .ok_or_else(|| fail("FX-HS-6", "a history frame", "none"))?;
    let seqs: Vec<u64> = h.events.iter().map(|e| e.seq()).collect();
    ensure_eq("FX-HS-6", "history seqs", seqs, vec![1, 2, 3])?;
    ensure_eq("FX-HS-6", "history.currentSeq", h.current_seq, 3)?;
    ensure_eq("FX-HS-6", "history.hasMore", h.has_more, false)?;
    // FX-PRF-2: only a server with the presence profile sends `presence` in the sequence.
    if !c
        .frames()
        .iter()
        .any(|f| matches!(f, ServerFrame::Presence(_)))
    {
        let r = ctx.r();
        c.send_json(&serde_json::json!({"type":"typing","isTyping":false,"ref":r}))?;
        c.sync("FX-HS-8").await?;
        let absent = super::errors(&c).iter().any(|e| {
            e.code == ErrorCode::UnknownType && e.reference.as_deref() == Some(r.as_str())
        });
        if absent {
            ctx.note("`typing` answered unknown_type (presence profile not implemented): no `presence` expected in the connect sequence");
            return Ok(());
        }
    }
    let seen = c
        .frames()
        .into_iter()
        .find(|f| matches!(f, ServerFrame::Presence(_)));
    let p = match seen {
        Some(p) => p,
        None => {
            c.wait_frame("FX-HS-8", "a presence frame to the new connection", |f| {
                matches!(f, ServerFrame::Presence(_))
            })
            .await?
        }
    };
    if let ServerFrame::Presence(p) = p {
        ensure(
            p.users.contains(&a.id),
            "FX-PRE-1",
            "presence lists the connected user",
            format!("{:?}", p.users),
        )?;
    }
    Ok(())
}

async fn token_in_header(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let auth = format!("Bearer {}", a.token);
    let mut c = ctx
        .connect_raw(
            &a.id,
            &format!("/ws/room/{room}"),
            &[("Authorization", &auth)],
        )
        .await?;
    c.handshake_as(Some(&a)).await.map_err(|e| match e {
        CaseError::Fail(f) => fail(
            "FX-HS-1",
            "a connection authenticated by the Authorization header",
            f.observed,
        ),
        o => o,
    })?;
    ensure_eq(
        "FX-HS-1",
        "welcome.userId",
        c.welcome.as_ref().map(|w| w.user_id.clone()),
        Some(a.id.clone()),
    )
}

async fn replay_off(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c0 = ctx.connect(&a, &room).await?;
    send(ctx, &mut c0, "x").await?;
    for v in ["off", "false", "0"] {
        let c = ctx.connect_q(&a, &room, &format!("replay={v}")).await?;
        ensure(
            c.snapshot.is_none() && c.replay.is_none(),
            "FX-HS-6",
            format!("no history frame with replay={v}"),
            "a history frame",
        )?;
    }
    Ok(())
}

async fn replay_limit(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c0 = ctx.connect(&a, &room).await?;
    // An empty room: an empty snapshot without hasMore.
    let h0 = c0
        .snapshot
        .clone()
        .ok_or_else(|| fail("FX-HS-6", "a history frame", "none"))?;
    ensure_eq(
        "FX-HS-6",
        "snapshot (events, hasMore) of an empty room",
        (h0.events.len(), h0.has_more),
        (0, false),
    )?;
    for i in 0..5 {
        send(ctx, &mut c0, &format!("m{i}")).await?;
    }
    for q in ["replayLimit=2", "historyLimit=2"] {
        let c = ctx.connect_q(&a, &room, q).await?;
        let h = c
            .snapshot
            .clone()
            .ok_or_else(|| fail("FX-HS-6", "a history frame", "none"))?;
        let seqs: Vec<u64> = h.events.iter().map(|e| e.seq()).collect();
        ensure_eq(
            "FX-HS-6",
            &format!("snapshot seqs with {q}"),
            seqs,
            vec![4, 5],
        )?;
        ensure_eq("FX-HS-6", &format!("hasMore with {q}"), h.has_more, true)?;
    }
    // replayLimit=0: no events, but hasMore says older ones exist.
    let c = ctx.connect_q(&a, &room, "replayLimit=0").await?;
    let h = c
        .snapshot
        .clone()
        .ok_or_else(|| fail("FX-HS-6", "a history frame with replayLimit=0", "none"))?;
    ensure_eq(
        "FX-HS-6",
        "snapshot (events, hasMore, currentSeq) with replayLimit=0",
        (h.events.len(), h.has_more, h.current_seq),
        (0, true, 5),
    )?;
    let c = ctx.connect_q(&a, &room, "replayLimit=100000").await?;
    let n = c.snapshot.as_ref().map(|h| h.events.len()).unwrap_or(0);
    ensure_eq(
        "FX-HS-6",
        "snapshot size with a huge replayLimit (clamped, all 5)",
        n,
        5,
    )
}

async fn last_seq_replay(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c0 = ctx.connect(&a, &room).await?;
    for i in 0..4 {
        send(ctx, &mut c0, &format!("m{i}")).await?;
    }
    let c = ctx.connect_q(&a, &room, "lastSeq=2").await?;
    ensure(
        c.snapshot.is_none(),
        "FX-HS-7",
        "no history frame when lastSeq is given",
        "a history frame",
    )?;
    let r = c
        .replay
        .clone()
        .ok_or_else(|| fail("FX-HS-7", "a replay frame", "none"))?;
    let seqs: Vec<u64> = r.events.iter().map(|e| e.seq()).collect();
    ensure_eq("FX-HS-7", "replay seqs", seqs, vec![3, 4])?;
    ensure_eq("FX-HS-7", "replay.fromSeq", r.from_seq, 2)?;
    ensure_eq("FX-HS-7", "replay.currentSeq", r.current_seq, 4)
}

async fn no_loss_during_handshake(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    let mut ca = ctx.connect(&a, &room).await?;
    let total = 60u64;
    for i in 0..total {
        ca.send_json(&msg(&format!("m{i}"), &format!("w{i}")))?;
    }
    // Connect several receivers while the burst is being committed.
    let mut receivers = Vec::new();
    for _ in 0..3 {
        receivers.push(ctx.connect(&b, &room).await?);
    }
    ca.wait_seq("FX-HS-9", total).await?;
    for c in receivers.iter_mut() {
        let start = c.current_seq();
        if start < total {
            c.wait_seq("FX-HS-9", total).await?;
        }
        let snap: Vec<u64> = c
            .snapshot
            .as_ref()
            .map(|h| h.events.iter().map(|e| e.seq()).collect())
            .unwrap_or_default();
        ensure(
            snap.last().copied().unwrap_or(0) == start,
            "FX-HS-6",
            "the snapshot ends at welcome.currentSeq",
            format!("snapshot {snap:?}, currentSeq {start}"),
        )?;
        let live: Vec<u64> = c.timeline().iter().map(|(e, _)| e.seq()).collect();
        let want: Vec<u64> = (start + 1..=total).collect();
        ensure_eq(
            "FX-HS-9",
            &format!("live seqs after currentSeq {start} on {}", c.label),
            live,
            want,
        )?;
    }
    Ok(())
}

async fn early_frames(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c = ctx
        .connect_raw(
            &a.id,
            &format!("/ws/room/{room}?token={}", urlenc(&a.token)),
            &[],
        )
        .await?;
    for i in 0..5 {
        c.send_json(&msg(&format!("early{i}"), &format!("e{i}")))?;
    }
    c.handshake_as(Some(&a)).await?;
    let mut seqs = Vec::new();
    for i in 0..5 {
        let a = c.ack("FX-HS-10", &format!("e{i}")).await?;
        seqs.push(a.seq.unwrap_or(0));
    }
    ensure_eq(
        "FX-HS-10",
        "seqs of the early frames, in send order",
        seqs,
        vec![1, 2, 3, 4, 5],
    )
}

async fn identity_hints(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let v = ctx.user("victim").await?;
    let room = ctx.room(&a, &[&v]).await?;
    let mut c = ctx
        .connect_raw(
            &a.id,
            &format!(
                "/ws/room/{room}?token={}&userId={}&user_id={}",
                urlenc(&a.token),
                v.id,
                v.id
            ),
            &[("X-User-Id", &v.id), ("X-Fluxy-User-Id", &v.id)],
        )
        .await?;
    c.handshake_as(Some(&a)).await?;
    ensure_eq(
        "FX-HS-11",
        "welcome.userId",
        c.welcome.as_ref().map(|w| w.user_id.clone()),
        Some(a.id.clone()),
    )?;
    let ack = send(ctx, &mut c, "who am i").await?;
    // Matched on the raw JSON: the identity is at stake here, not the event's exact shape.
    let seq = ack.seq;
    let is_it = move |i: &Incoming| match i {
        Incoming::Text { value: Some(v), .. } => {
            v.get("type").and_then(Value::as_str) == Some("message")
                && v.get("seq").and_then(Value::as_u64) == seq
        }
        _ => false,
    };
    // It may have arrived already (while the helper waited for the ack).
    let ev = match c.log.iter().find(|i| is_it(i)).cloned() {
        Some(ev) => ev,
        None => {
            c.wait_item("FX-HS-11", "the broadcast of the message", is_it)
                .await?
        }
    };
    if let Incoming::Text { value: Some(v), .. } = ev {
        ensure_eq(
            "FX-HS-11",
            "message.userId",
            v.get("userId").and_then(Value::as_str),
            Some(a.id.as_str()),
        )?;
    }
    Ok(())
}

async fn version_param(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    ctx.connect_q(&a, &room, "v=1").await.map_err(|e| match e {
        CaseError::Fail(f) => fail("FX-VER-2", "v=1 accepted", f.observed),
        o => o,
    })?;
    let mut c = ctx
        .connect_raw(
            &a.id,
            &format!("/ws/room/{room}?token={}&v=2", urlenc(&a.token)),
            &[],
        )
        .await?;
    expect_rejected(&mut c, "FX-VER-2", ErrorCode::UnsupportedVersion, 4009).await
}

async fn subprotocol(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c = match ctx
        .connect_raw(
            &a.id,
            &format!("/ws/room/{room}?token={}", urlenc(&a.token)),
            &[("Sec-WebSocket-Protocol", "fluxy.v1")],
        )
        .await
    {
        Ok(c) => c,
        // The client library refuses an upgrade that does not select the offered protocol:
        // that refusal is the evidence, not a runner error.
        Err(CaseError::Error(m)) if m.to_ascii_lowercase().contains("subprotocol") => {
            return Err(fail(
                "FX-VER-3",
                "the upgrade selects the offered subprotocol fluxy.v1",
                m,
            ))
        }
        Err(e) => return Err(e),
    };
    ensure_eq(
        "FX-VER-3",
        "selected subprotocol",
        c.subprotocol.clone(),
        Some("fluxy.v1".to_string()),
    )?;
    c.handshake_as(Some(&a)).await
}

async fn plain_http(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let r = ctx.get(&format!("/ws/room/{room}"), &a.token).await?;
    r.expect_error("FX-HS-4", "GET without Upgrade", ErrorCode::InvalidFrame)
}

async fn failure_in_band(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c = ctx
        .connect_raw(&a.id, &format!("/ws/room/{room}?token=not.a.token"), &[])
        .await?;
    if let Some(crate::ctx::Incoming::Refused { status, body }) = c.log.first() {
        return Err(fail(
            "FX-HS-3",
            "the upgrade is accepted, then error unauthorized and close 4004",
            format!("upgrade refused with HTTP {status} {body}"),
        ));
    }
    expect_rejected(&mut c, "FX-HS-2", ErrorCode::Unauthorized, 4004).await
}

async fn health(ctx: &Ctx) -> Result<(), CaseError> {
    let r = ctx
        .http(reqwest::Method::GET, "/health", None, None)
        .await?;
    r.expect_status("FX-AUTH-8", "GET /health without a token", 200)?;
    let h: fluxy_protocol::http::HealthResponse = r.parse("FX-VER-1", "HealthResponse")?;
    ensure_eq(
        "FX-VER-1",
        "health.protocolVersion",
        h.protocol_version.as_str(),
        "1.0",
    )?;
    ensure(
        h.protocol_version.starts_with("1."),
        "FX-VER-4",
        "a 1.x protocol version",
        &h.protocol_version,
    )
}

async fn welcome_under_churn(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    let _anchor = ctx.connect(&a, &room).await?;
    let mut old: Vec<crate::ctx::Conn> = Vec::new();
    for round in 0..12usize {
        // Close the previous generation while the next one connects.
        let closing = std::mem::take(&mut old);
        let opening = (0..4usize).map(|i| {
            let u = if (round + i) % 2 == 0 { &a } else { &b };
            ctx.connect(u, &room)
        });
        let closer = async move {
            for (i, mut c) in closing.into_iter().enumerate() {
                if i % 2 == 0 {
                    c.close()
                } else {
                    c.kill()
                }
            }
        };
        let (opened, ()) = tokio::join!(futures_util::future::join_all(opening), closer);
        for c in opened {
            let c = c?;
            if !c.pre_welcome.is_empty() {
                return Err(fail(
                    "FX-HS-5",
                    "`welcome` as the first frame of every connection",
                    format!(
                        "{} received {} before welcome (round {round})",
                        c.label,
                        c.pre_welcome.join(" | ")
                    ),
                ));
            }
            old.push(c);
        }
    }
    Ok(())
}
