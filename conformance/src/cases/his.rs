//! History and cursors (HIS).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fluxy_protocol::http::HistoryPage;
use fluxy_protocol::ErrorCode;
use serde_json::{json, Value};

use super::{fill_many, msg, pair, req, send};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{urlenc, Ctx, User};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("his/page-shape", ["FX-HIS-1", "FX-HIS-2"], "backward returns the newest limit events, forward the oldest after afterSeq, ascending within a page", page_shape),
        case!("his/partition-backward", ["FX-HIS-3", "FX-HIS-6", "FX-HIS-13"], "following nextCursor backward visits every event exactly once; hasMore is exact when a page ends at the first or last event", partition_backward),
        case!("his/partition-while-writing", ["FX-HIS-3", "FX-HIS-6"], "a forward walk during concurrent commits visits every event exactly once and reaches the new ones", partition_writing),
        case!("his/limit-bounds", ["FX-HIS-5"], "limit defaults to 50, is clamped to 500, and <1 or non-integer gets invalid_frame", limit_bounds),
        case!("his/clamp-at-501", ["FX-HIS-5", "FX-HS-6"], "with 501 events, limit=501 and replayLimit=501 give exactly the newest 500 with hasMore", clamp_at_501),
        case!("his/cursor-tamper", ["FX-HIS-4", "FX-TEN-7"], "altered, truncated, forged and other-room cursors get 400 invalid_cursor", cursor_tamper),
        case!("his/legacy-route", ["FX-HIS-8", "FX-HIS-13"], "GET /api/messages: live messages newest first, current content, reactions, exact cursor paging", legacy),
        case!("his/legacy-before-timestamp", ["FX-HIS-11"], "GET /api/messages reads a non-cursor before as an ISO timestamp with or without fractional seconds; garbage gets invalid_cursor naming before", legacy_before_timestamp),
        case!("his/append-only", ["FX-HIS-10"], "history keeps the original event followed by its edit and delete events", append_only),
    ]
}

async fn page(ctx: &Ctx, u: &User, room: &str, q: &str) -> Result<(HistoryPage, Value), CaseError> {
    let r = ctx
        .get(&format!("/rooms/{room}/history?{q}"), &u.token)
        .await?;
    r.expect_status("FX-HIS-1", &format!("GET history?{q}"), 200)?;
    Ok((
        r.parse("FX-HIS-1", "HistoryPage")?,
        r.json().unwrap_or_default(),
    ))
}

fn seqs(p: &HistoryPage) -> Vec<u64> {
    p.events.iter().map(|e| e.seq()).collect()
}

async fn fill_ws(
    ctx: &Ctx,
    c: &mut crate::ctx::Conn,
    n: usize,
    tag: &str,
) -> Result<(), CaseError> {
    for i in 0..n {
        c.send_json(&msg(&format!("{tag}{i}"), &format!("{tag}{i}")))?;
    }
    c.ack("FX-HIS-1", &format!("{tag}{}", n - 1)).await?;
    let _ = ctx;
    Ok(())
}

async fn page_shape(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    fill_ws(ctx, &mut ca, 12, "h").await?;
    let (p, v) = page(ctx, &a, &room, "limit=5").await?;
    ensure_eq(
        "FX-HIS-2",
        "backward page seqs",
        seqs(&p),
        vec![8, 9, 10, 11, 12],
    )?;
    ensure(p.has_more, "FX-HIS-1", "hasMore true", "false")?;
    ensure_eq("FX-HIS-1", "currentSeq", p.current_seq, 12)?;
    ensure(
        v.get("hasMore").is_some() && v.get("currentSeq").is_some(),
        "FX-HIS-1",
        "hasMore and currentSeq fields",
        v.to_string(),
    )?;
    let (p, _) = page(ctx, &a, &room, "direction=backward&limit=5").await?;
    ensure_eq(
        "FX-HIS-2",
        "explicit backward",
        seqs(&p),
        vec![8, 9, 10, 11, 12],
    )?;
    let (p, _) = page(ctx, &a, &room, "direction=forward&limit=4").await?;
    ensure_eq("FX-HIS-2", "forward page", seqs(&p), vec![1, 2, 3, 4])?;
    let (p, _) = page(ctx, &a, &room, "direction=forward&limit=4&afterSeq=9").await?;
    ensure_eq("FX-HIS-2", "forward after 9", seqs(&p), vec![10, 11, 12])?;
    let (p, _) = page(ctx, &a, &room, "").await?;
    ensure_eq("FX-HIS-2", "default page", seqs(&p), (1..=12).collect())
}

async fn partition_backward(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    fill_ws(ctx, &mut ca, 23, "b").await?;
    let mut all = Vec::new();
    let (mut p, _) = page(ctx, &a, &room, "limit=4").await?;
    for _ in 0..100 {
        let mut s = seqs(&p);
        s.reverse();
        all.extend(s);
        ensure_eq(
            "FX-HIS-6",
            "nextCursor present exactly when hasMore",
            p.next_cursor.is_some(),
            p.has_more,
        )?;
        let Some(c) = p.next_cursor.clone() else {
            break;
        };
        p = page(ctx, &a, &room, &format!("limit=4&cursor={}", urlenc(&c)))
            .await?
            .0;
    }
    all.reverse();
    ensure_eq("FX-HIS-3", "seqs visited backward", all, (1..=23).collect())?;
    // hasMore at the boundary: a page of exactly all 23 events has nothing beyond it, one of
    // 22 has one event beyond it, in both directions.
    for (q, want) in [
        ("limit=23", false),
        ("limit=22", true),
        ("direction=forward&limit=23", false),
        ("direction=forward&limit=22", true),
    ] {
        let (p, _) = page(ctx, &a, &room, q).await?;
        ensure_eq(
            "FX-HIS-13",
            &format!("hasMore of ?{q} in a room of 23 events"),
            p.has_more,
            want,
        )?;
    }
    Ok(())
}

async fn partition_writing(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, mut cb) = pair(ctx).await?;
    fill_ws(ctx, &mut ca, 20, "w").await?;
    let mut all = Vec::new();
    let (mut p, _) = page(ctx, &a, &room, "direction=forward&limit=3").await?;
    let mut written = 20u64;
    for i in 0..200 {
        all.extend(seqs(&p));
        ensure(
            p.next_cursor.is_some(),
            "FX-HIS-6",
            "a forward page always carries nextCursor",
            format!("page {:?} without nextCursor", seqs(&p)),
        )?;
        // Commit new events while walking.
        if i < 6 {
            cb.send_json(&msg(&format!("during {i}"), &format!("dw{i}")))?;
            cb.ack("FX-HIS-3", &format!("dw{i}")).await?;
            written += 1;
        }
        if !p.has_more && i >= 6 {
            break;
        }
        let c = p.next_cursor.clone().unwrap_or_default();
        p = page(
            ctx,
            &a,
            &room,
            &format!("direction=forward&limit=3&cursor={}", urlenc(&c)),
        )
        .await?
        .0;
    }
    ensure_eq(
        "FX-HIS-3",
        "seqs visited forward while writing",
        all,
        (1..=written).collect(),
    )
}

async fn limit_bounds(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    fill_ws(ctx, &mut ca, 55, "l").await?;
    let (p, _) = page(ctx, &a, &room, "").await?;
    ensure_eq("FX-HIS-5", "default page size", p.events.len(), 50)?;
    let (p, _) = page(ctx, &a, &room, "limit=100000").await?;
    ensure(
        p.events.len() == 55,
        "FX-HIS-5",
        "a huge limit is clamped, not rejected (55 events here)",
        p.events.len(),
    )?;
    for bad in ["0", "-1", "abc", "1.5"] {
        let r = ctx
            .get(&format!("/rooms/{room}/history?limit={bad}"), &a.token)
            .await?;
        r.expect_error("FX-HIS-5", &format!("limit={bad}"), ErrorCode::InvalidFrame)?;
    }
    Ok(())
}

async fn clamp_at_501(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, _, _) = pair(ctx).await?;
    fill_many(ctx, &a, &room, 501, "c").await?;
    let (p, _) = page(ctx, &a, &room, "limit=501").await?;
    ensure_eq(
        "FX-HIS-5",
        "events in a limit=501 page",
        p.events.len(),
        500,
    )?;
    ensure_eq(
        "FX-HIS-5",
        "first and last seq of a limit=501 page",
        (seqs(&p).first().copied(), seqs(&p).last().copied()),
        (Some(2), Some(501)),
    )?;
    ensure_eq("FX-HIS-5", "hasMore of a limit=501 page", p.has_more, true)?;
    let (p, _) = page(ctx, &a, &room, "limit=500").await?;
    ensure_eq(
        "FX-HIS-5",
        "events in a limit=500 page",
        p.events.len(),
        500,
    )?;
    for q in ["replayLimit=501", "historyLimit=501", "replayLimit=500"] {
        let c = ctx.connect_q(&a, &room, q).await?;
        let h = c
            .snapshot
            .clone()
            .ok_or_else(|| fail("FX-HS-6", "a history frame", "none"))?;
        let s: Vec<u64> = h.events.iter().map(|e| e.seq()).collect();
        ensure_eq(
            "FX-HS-6",
            &format!("snapshot (first, last, count) with {q}"),
            (s.first().copied(), s.last().copied(), s.len()),
            (Some(2), Some(501), 500),
        )?;
        ensure_eq("FX-HS-6", &format!("hasMore with {q}"), h.has_more, true)?;
    }
    Ok(())
}

fn mutate(c: &str, f: impl Fn(&mut Vec<u8>)) -> String {
    let mut b = URL_SAFE_NO_PAD
        .decode(c)
        .unwrap_or_else(|_| c.as_bytes().to_vec());
    f(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

async fn cursor_tamper(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    fill_ws(ctx, &mut ca, 6, "c").await?;
    let (p, _) = page(ctx, &a, &room, "limit=2").await?;
    let cur = p
        .next_cursor
        .clone()
        .ok_or_else(|| fail("FX-HIS-6", "nextCursor when hasMore", "none"))?;
    let other = ctx.room(&a, &[]).await?;
    let mut co = ctx.connect(&a, &other).await?;
    fill_ws(ctx, &mut co, 4, "o").await?;
    let (po, _) = page(ctx, &a, &other, "limit=1").await?;
    let foreign = po
        .next_cursor
        .clone()
        .ok_or_else(|| fail("FX-HIS-6", "nextCursor when hasMore", "none"))?;
    let mid = cur.len() / 2;
    let flipped = {
        let mut s: Vec<char> = cur.chars().collect();
        s[mid] = if s[mid] == 'A' { 'B' } else { 'A' };
        s.into_iter().collect::<String>()
    };
    let bads = vec![
        ("altered", flipped),
        (
            "seq bumped",
            mutate(&cur, |b| {
                if b.len() > 9 {
                    b[9] ^= 1
                }
            }),
        ),
        // Two bytes changed by the same mask: a tag check that folds byte differences with
        // XOR instead of OR lets exactly this through (a mutant of the reference's cursor.rs).
        (
            "last two bytes flipped by one mask",
            mutate(&cur, |b| {
                let n = b.len();
                if n >= 2 {
                    b[n - 1] ^= 0x20;
                    b[n - 2] ^= 0x20;
                }
            }),
        ),
        ("truncated", cur[..cur.len() - 4].to_string()),
        (
            "forged",
            URL_SAFE_NO_PAD.encode(
                b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x05forged-cursor-payload-with-no-valid-tag",
            ),
        ),
        ("garbage", "%%%not-base64%%%".to_string()),
        ("other room", foreign),
    ];
    for (what, c) in bads {
        let r = ctx
            .get(
                &format!("/rooms/{room}/history?limit=2&cursor={}", urlenc(&c)),
                &a.token,
            )
            .await?;
        r.expect_error(
            "FX-HIS-4",
            &format!("{what} cursor"),
            ErrorCode::InvalidCursor,
        )?;
    }
    let r = ctx
        .get(
            &format!(
                "/rooms/{room}/poll?cursor={}&timeoutMs=0",
                urlenc(&cur[..cur.len() - 4])
            ),
            &a.token,
        )
        .await?;
    r.expect_error(
        "FX-HIS-4",
        "truncated cursor on /poll",
        ErrorCode::InvalidCursor,
    )?;
    // Another tenant's cursor for a room with the same id.
    if ctx.env.target.api_key2.is_some() {
        let a2 = ctx.user2("t2").await?;
        let body = json!({"id": room, "name": "same id other tenant", "type": "group"});
        let r = ctx.post("/rooms", &a2.token, &body).await?;
        r.expect_status(
            "FX-TEN-2",
            "POST /rooms with an id used in another tenant",
            201,
        )?;
        let mut c2 = ctx.connect(&a2, &room).await?;
        fill_ws(ctx, &mut c2, 4, "t").await?;
        let (p2, _) = page(ctx, &a2, &room, "limit=1").await?;
        let c2cur = p2
            .next_cursor
            .ok_or_else(|| fail("FX-HIS-6", "nextCursor", "none"))?;
        let r = ctx
            .get(
                &format!("/rooms/{room}/history?limit=2&cursor={}", urlenc(&c2cur)),
                &a.token,
            )
            .await?;
        r.expect_error(
            "FX-TEN-7",
            "a cursor of the same room id issued in another tenant",
            ErrorCode::InvalidCursor,
        )?;
    }
    Ok(())
}

async fn legacy(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(
            send(ctx, &mut ca, &format!("legacy {i}"))
                .await?
                .id
                .unwrap_or(0),
        );
    }
    req(
        ctx,
        &mut ca,
        "FX-HIS-8",
        json!({"type":"edit","messageId":ids[8],"content":"legacy 8 edited"}),
    )
    .await?;
    req(
        ctx,
        &mut ca,
        "FX-HIS-8",
        json!({"type":"delete","messageId":ids[7]}),
    )
    .await?;
    req(
        ctx,
        &mut ca,
        "FX-HIS-8",
        json!({"type":"reaction","messageId":ids[6],"emoji":"🔥"}),
    )
    .await?;
    let mut got: Vec<Value> = Vec::new();
    let mut q = format!("/api/messages?roomId={room}&limit=3");
    for _ in 0..20 {
        let r = ctx.get(&q, &a.token).await?;
        r.expect_status("FX-HIS-8", "GET /api/messages", 200)?;
        let v = r.json().unwrap_or_default();
        let msgs = v
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| fail("FX-HIS-8", "a messages array", &r.text))?;
        if got.is_empty() {
            let rx = v.pointer(&format!("/reactions/{}", ids[6])).cloned();
            ensure(
                rx.is_some_and(|x| x.get("🔥").is_some()),
                "FX-HIS-8",
                "reaction counts for the reacted message",
                v.get("reactions").cloned().unwrap_or_default(),
            )?;
        }
        got.extend(msgs);
        let more = v.get("hasMore").and_then(Value::as_bool).unwrap_or(false);
        if !more {
            break;
        }
        let c = v
            .get("nextCursor")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("FX-HIS-8", "nextCursor with hasMore", v.to_string()))?;
        q = format!("/api/messages?roomId={room}&limit=3&before={}", urlenc(c));
    }
    let gids: Vec<u64> = got
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_u64))
        .collect();
    let mut want: Vec<u64> = ids.iter().copied().filter(|i| *i != ids[7]).collect();
    want.reverse();
    ensure_eq(
        "FX-HIS-8",
        "legacy ids, newest first, deleted excluded",
        gids,
        want,
    )?;
    let first = got.first().and_then(|m| m.get("content")).cloned();
    ensure_eq(
        "FX-HIS-8",
        "current content of an edited message",
        first,
        Some(json!("legacy 8 edited")),
    )?;
    // hasMore and nextCursor at the boundary: 8 live messages in one page of 8 and of 7.
    for (limit, want) in [(8, false), (7, true)] {
        let r = ctx
            .get(
                &format!("/api/messages?roomId={room}&limit={limit}"),
                &a.token,
            )
            .await?;
        let v = r.json().unwrap_or_default();
        let more = v.get("hasMore").and_then(Value::as_bool);
        let cursor = v.get("nextCursor").and_then(Value::as_str).is_some();
        ensure_eq(
            "FX-HIS-13",
            &format!("hasMore and a nextCursor for limit={limit} over 8 live messages"),
            (more, cursor),
            (Some(want), want),
        )?;
    }
    Ok(())
}

async fn legacy_before_timestamp(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    let mut acks = Vec::new();
    for i in 0..3 {
        acks.push(send(ctx, &mut ca, &format!("dated {i}")).await?);
    }
    let ids = |v: &Value| -> Vec<u64> {
        v.get("messages")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|x| x.get("id").and_then(Value::as_u64))
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<u64> = acks.iter().rev().filter_map(|x| x.id).collect();
    // A 1 February in the year before the messages: exactly one year later is after them, so a
    // parser that gets the year of a January or February date wrong returns them all.
    let newest = acks
        .last()
        .and_then(|x| x.created_at.clone())
        .unwrap_or_default();
    let (year, month_day) = (
        newest
            .get(0..4)
            .and_then(|y| y.parse::<i32>().ok())
            .unwrap_or(2026),
        newest.get(5..10).unwrap_or("12-31").to_string(),
    );
    let feb = format!(
        "{}-02-01T00:00:00Z",
        if month_day.as_str() > "02-02" {
            year
        } else {
            year - 1
        }
    );
    for (before, want) in [
        (feb.as_str(), vec![]),
        // The last hour, minute and second of a day are valid; the next ones are not.
        ("2999-12-31T23:59:59Z", all.clone()),
        ("2999-12-31T23:59:59.999Z", all.clone()),
        ("2999-01-01T00:00:00Z", all.clone()),
        ("2999-01-01T00:00:00.5Z", all.clone()),
        ("2999-01-01T00:00:00.000Z", all.clone()),
        ("2999-01-01T00:00:00.123456Z", all.clone()),
        // Nanoseconds, and more digits still: truncated to milliseconds all the same.
        ("2999-01-01T00:00:00.123456789Z", all.clone()),
        ("2999-01-01T00:00:00.123456789012Z", all.clone()),
        ("2000-01-01T00:00:00Z", vec![]),
    ] {
        let r = ctx
            .get(
                &format!("/api/messages?roomId={room}&before={}", urlenc(before)),
                &a.token,
            )
            .await?;
        r.expect_status("FX-HIS-11", &format!("before={before}"), 200)?;
        let v = r.json().unwrap_or_default();
        ensure_eq(
            "FX-HIS-11",
            &format!("ids with before={before}"),
            ids(&v),
            want,
        )?;
    }
    // Strictly before the newest message's own createdAt: it is not included.
    if let Some(t) = acks.last().and_then(|x| x.created_at.clone()) {
        let r = ctx
            .get(
                &format!("/api/messages?roomId={room}&before={}", urlenc(&t)),
                &a.token,
            )
            .await?;
        r.expect_status("FX-HIS-11", &format!("before={t}"), 200)?;
        let v = r.json().unwrap_or_default();
        let newest = acks.last().and_then(|x| x.id).unwrap_or(0);
        ensure(
            !ids(&v).contains(&newest),
            "FX-HIS-11",
            format!("before={t} (the newest message's createdAt) excludes that message"),
            v.to_string(),
        )?;
    }
    for bad in [
        "2999x01-01T00:00:00.000Z",
        "2999-01-01x00:00:00.000Z",
        "2999-01-01T00:00:00.000+",
        "2999-01x01T00:00:00.000Z",
        "2999-13-01T00:00:00Z",
        "2999-01-32T00:00:00Z",
        "2999-01-01T24:00:01Z",
        "2999-01-01T25:00:00Z",
        "2999-01-01T00:60:00Z",
        "2999-01-01T00:00:60.000Z",
    ] {
        let r = ctx
            .get(
                &format!("/api/messages?roomId={room}&before={}", urlenc(bad)),
                &a.token,
            )
            .await?;
        r.expect_error(
            "FX-HIS-11",
            &format!("before={bad}"),
            ErrorCode::InvalidCursor,
        )?;
    }
    let r = ctx
        .get(
            &format!("/api/messages?roomId={room}&before=last-tuesday"),
            &a.token,
        )
        .await?;
    r.expect_error("FX-HIS-11", "before=last-tuesday", ErrorCode::InvalidCursor)?;
    let field = r.json().and_then(|v| v.get("field").cloned());
    ensure_eq("FX-HIS-11", "error field", field, Some(json!("before")))
}

async fn append_only(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _, room, mut ca, _) = pair(ctx).await?;
    let m = send(ctx, &mut ca, "original text").await?;
    req(
        ctx,
        &mut ca,
        "FX-HIS-10",
        json!({"type":"edit","messageId":m.id,"content":"changed"}),
    )
    .await?;
    req(
        ctx,
        &mut ca,
        "FX-HIS-10",
        json!({"type":"delete","messageId":m.id}),
    )
    .await?;
    let (p, v) = page(ctx, &a, &room, "direction=forward").await?;
    let kinds: Vec<&str> = p.events.iter().map(|e| e.type_name()).collect();
    ensure_eq(
        "FX-HIS-10",
        "event types in history",
        kinds,
        vec!["message", "edit", "delete"],
    )?;
    ensure_eq(
        "FX-HIS-10",
        "the original message content",
        v.pointer("/events/0/content").cloned(),
        Some(json!("original text")),
    )
}
