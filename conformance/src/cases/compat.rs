//! FluxyChat compatibility (CMP): the cases act as FluxyChat's TypeScript SDK
//! (`@fluxy-chat/sdk` 0.6.2, per the wire inventory) does, and check that every answer carries
//! what that SDK reads: field names, JSON types and ordering.
//!
//! The SDK connects with `replay=connect&replayLimit=N` plus `apiKey` and `userId` query
//! parameters, reads the snapshot's `messages` (oldest first) and `reactions`, merges rows by
//! `id`, sends over REST first (`POST /messages` with a `cmsg_…` `clientMessageId`) and matches
//! its own echo by `clientMessageId`, pages with `GET /api/messages?before=<oldest createdAt>`,
//! puts its own `userId` into `message`, `edit`, `reaction`, `read` and `typing` frames, sends
//! no `ref`, and sorts messages by `createdAt`.

use std::collections::{BTreeMap, BTreeSet};

use fluxy_protocol::common::parse_timestamp;
use fluxy_protocol::ServerFrame;
use serde_json::{json, Value};

use super::{pair, send};
use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::ctx::{urlenc, Conn, Ctx, Incoming, User};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "compat/connect-snapshot",
            ["FX-CMP-1", "FX-CMP-2", "FX-CMP-3", "FX-CMP-4", "FX-HS-6"],
            "replay=connect|true|1 adds FluxyChat's messages (live rows, current content, oldest first) and reactions to history; other values do not",
            connect_snapshot
        ),
        case!(
            "compat/snapshot-matches-api-messages",
            ["FX-CMP-5", "FX-CMP-1", "FX-HIS-8"],
            "every snapshot row and reaction count is identical to GET /api/messages for the same state",
            snapshot_matches_api
        ),
        case!(
            "compat/reconnect-catch-up",
            ["FX-CMP-1", "FX-CMP-2", "FX-ACK-5", "FX-CMP-6"],
            "after a drop, the SDK's reconnect snapshot carries every message, edit and reaction made meanwhile; its queued resend is not a second row",
            reconnect_catch_up
        ),
        case!(
            "compat/rest-send-ws-echo",
            ["FX-MSG-6", "FX-CMP-6"],
            "POST /messages with a cmsg_ key answers the message; every socket gets the echo with the same id and clientMessageId",
            rest_send_echo
        ),
        case!(
            "compat/load-more-before",
            ["FX-ORD-9", "FX-HIS-11", "FX-HIS-8"],
            "loadMore with before=<oldest createdAt> visits a burst of messages exactly once",
            load_more_before
        ),
        case!(
            "compat/created-at-increases",
            ["FX-ORD-9"],
            "createdAt strictly increases with seq, for WebSocket and REST writes alike",
            created_at_increases
        ),
        case!(
            "compat/edit-react-read",
            ["FX-CMP-6", "FX-CMP-1", "FX-CMP-2", "FX-EDT-2", "FX-EDT-5", "FX-EDT-8", "FX-AUTH-7"],
            "the SDK's edit, reaction and read frames (own userId, no ref) work; the events carry numeric ids",
            edit_react_read
        ),
        case!(
            "compat/typing",
            ["FX-CMP-6", "FX-PRE-5", "FX-PRE-7"],
            "the SDK's typing frame reaches the others with userId, isTyping and intent",
            typing
        ),
        case!(
            "compat/presence",
            ["FX-CMP-6", "FX-PRE-1", "FX-PRE-4"],
            "member_joined, member_left and presence carry what the SDK reads",
            presence
        ),
    ]
}

/// The query FluxyChat's SDK puts on the room WebSocket URL (besides `token`).
fn sdk_query(u: &User, limit: u32) -> String {
    format!(
        "replay=connect&replayLimit={limit}&apiKey=fc_00000000000000000000000000000000&userId={}",
        urlenc(&u.id)
    )
}

/// Connect as FluxyChat's SDK does.
async fn sdk_connect(ctx: &Ctx, u: &User, room: &str, limit: u32) -> Result<Conn, CaseError> {
    ctx.connect_q(u, room, &sdk_query(u, limit)).await
}

/// The raw JSON of the connect `history` frame.
fn history_json(c: &Conn) -> Option<Value> {
    c.log.iter().find_map(|i| match i {
        Incoming::Text {
            frame: Some(ServerFrame::History(_)),
            value: Some(v),
            ..
        } => Some(v.clone()),
        _ => None,
    })
}

/// A `cmsg_<uuid>`-shaped key, as the SDK generates.
fn sdk_cmid(ctx: &Ctx) -> String {
    format!("cmsg_{}", ctx.cmid())
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn u64_field(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

/// Check one FluxyChat message row as the SDK reads it: numeric `id`, strings `roomId`,
/// `userId`, `senderId` (= `userId`), `content`, an RFC 3339 `createdAt`, a numeric `version`,
/// `parentId` a number or null, `editedAt` a time stamp or null, `clientMessageId` a string,
/// `attachments` an array.
fn check_row(clause: &str, room: &str, row: &Value) -> Result<(u64, u64), CaseError> {
    let bad = |what: &str| fail(clause, format!("a FluxyChat message row with {what}"), row);
    let id = u64_field(row, "id").ok_or_else(|| bad("a numeric id"))?;
    if str_field(row, "roomId") != Some(room) {
        return Err(bad("roomId equal to the room"));
    }
    let user = str_field(row, "userId").ok_or_else(|| bad("a string userId"))?;
    if str_field(row, "senderId") != Some(user) {
        return Err(bad("senderId equal to userId"));
    }
    str_field(row, "content").ok_or_else(|| bad("a string content"))?;
    let created = str_field(row, "createdAt")
        .and_then(parse_timestamp)
        .ok_or_else(|| bad("an RFC 3339 createdAt"))?;
    u64_field(row, "version").ok_or_else(|| bad("a numeric version"))?;
    match row.get("parentId") {
        None | Some(Value::Null) => {}
        Some(p) if p.is_u64() => {}
        Some(_) => return Err(bad("parentId a number or null")),
    }
    match row.get("editedAt") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if parse_timestamp(s).is_some() => {}
        Some(_) => return Err(bad("editedAt a time stamp or null")),
    }
    match row.get("clientMessageId") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(bad("clientMessageId a string")),
    }
    match row.get("attachments") {
        None | Some(Value::Null) | Some(Value::Array(_)) => {}
        Some(_) => return Err(bad("attachments an array")),
    }
    Ok((id, created))
}

/// The snapshot's `messages`, checked row by row and for order (oldest first: ascending `id`
/// and non-decreasing `createdAt`, which is how the SDK sorts; strictly increasing `createdAt`
/// is FX-ORD-9's, checked by its own cases).
fn snapshot_rows(clause: &str, room: &str, h: &Value) -> Result<Vec<Value>, CaseError> {
    let rows = h
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| {
            fail(
                clause,
                "a `messages` array in the history frame",
                crate::ctx::short(&h.to_string(), 300),
            )
        })?;
    let mut last: Option<(u64, u64)> = None;
    for row in &rows {
        let (id, created) = check_row(clause, room, row)?;
        if let Some((pid, pcreated)) = last {
            ensure(
                id > pid,
                clause,
                "messages oldest first (ascending id)",
                format!("id {id} after {pid}"),
            )?;
            ensure(
                created >= pcreated,
                clause,
                "messages oldest first (createdAt never decreasing)",
                format!("createdAt {created} ms after {pcreated} ms (ids {pid}, {id})"),
            )?;
        }
        last = Some((id, created));
    }
    Ok(rows)
}

/// `reactions` as `{id: {emoji: count}}` with numeric counts.
fn reaction_map(
    clause: &str,
    h: &Value,
) -> Result<BTreeMap<String, BTreeMap<String, u64>>, CaseError> {
    let obj = h
        .get("reactions")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            fail(
                clause,
                "a `reactions` object in the history frame",
                crate::ctx::short(&h.to_string(), 300),
            )
        })?;
    let mut out = BTreeMap::new();
    for (id, per) in obj {
        let per = per
            .as_object()
            .ok_or_else(|| fail(clause, "reactions[id] an object of emoji counts", per))?;
        let mut m = BTreeMap::new();
        for (emoji, n) in per {
            let n = n
                .as_u64()
                .ok_or_else(|| fail(clause, "reaction counts as numbers", n))?;
            m.insert(emoji.clone(), n);
        }
        out.insert(id.clone(), m);
    }
    Ok(out)
}

fn ids_of(rows: &[Value]) -> Vec<u64> {
    rows.iter().filter_map(|r| u64_field(r, "id")).collect()
}

fn row_by_id(rows: &[Value], id: u64) -> Option<&Value> {
    rows.iter().find(|r| u64_field(r, "id") == Some(id))
}

/// Send a frame as the SDK does (no `ref`).
fn sdk_send(c: &Conn, v: &Value) -> Result<(), CaseError> {
    c.send_json(v)
}

/// Wait for the live timeline event of `type` matching `pred`, returning its raw JSON.
async fn wait_event(
    c: &mut Conn,
    clause: &str,
    what: &str,
    kind: &'static str,
    pred: impl Fn(&Value) -> bool + Send + Sync,
) -> Result<Value, CaseError> {
    let it = c
        .wait_item(clause, what, |i| match i {
            Incoming::Text {
                value: Some(v),
                frame: Some(f),
                ..
            } => {
                f.clone().into_timeline().is_some() && str_field(v, "type") == Some(kind) && pred(v)
            }
            _ => false,
        })
        .await?;
    match it {
        Incoming::Text { value: Some(v), .. } => Ok(v),
        other => Err(CaseError::Error(format!("unexpected {}", other.describe()))),
    }
}

async fn connect_snapshot(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_profile("edits")?;
    let (a, b, room, mut ca, mut cb) = pair(ctx).await?;
    let m1 = send(ctx, &mut ca, "one").await?.id.unwrap_or(0);
    let m2 = send(ctx, &mut ca, "two").await?.id.unwrap_or(0);
    let m3 = send(ctx, &mut ca, "three").await?.id.unwrap_or(0);
    let m4 = send(ctx, &mut ca, "four").await?.id.unwrap_or(0);
    for frame in [
        json!({"type":"edit","messageId":m1,"content":"one, edited"}),
        json!({"type":"reaction","messageId":m2,"emoji":"👍"}),
        json!({"type":"reaction","messageId":m2,"emoji":"🎉"}),
        json!({"type":"delete","messageId":m3}),
    ] {
        super::req(ctx, &mut ca, "FX-EDT-1", frame).await?;
    }
    super::req(
        ctx,
        &mut cb,
        "FX-EDT-5",
        json!({"type":"reaction","messageId":m2,"emoji":"👍"}),
    )
    .await?;
    // The SDK's connect: replay=connect.
    let c = sdk_connect(ctx, &b, &room, 50).await?;
    let h = history_json(&c)
        .ok_or_else(|| fail("FX-HS-6", "a `history` frame for replay=connect", "none"))?;
    ensure(
        h.get("events").is_some_and(Value::is_array),
        "FX-HS-6",
        "the compat snapshot is still a Fluxy `history` frame with `events`",
        crate::ctx::short(&h.to_string(), 300),
    )?;
    let rows = snapshot_rows("FX-CMP-1", &room, &h)?;
    ensure_eq(
        "FX-CMP-2",
        "snapshot message ids (live messages, oldest first; the deleted one absent)",
        ids_of(&rows),
        vec![m1, m2, m4],
    )?;
    let r1 = row_by_id(&rows, m1).cloned().unwrap_or_default();
    ensure_eq(
        "FX-CMP-2",
        "content of the edited message",
        str_field(&r1, "content"),
        Some("one, edited"),
    )?;
    ensure_eq(
        "FX-CMP-2",
        "version of the edited message",
        u64_field(&r1, "version"),
        Some(2),
    )?;
    ensure(
        str_field(&r1, "editedAt").is_some(),
        "FX-CMP-2",
        "editedAt on the edited message",
        &r1,
    )?;
    ensure_eq(
        "FX-CMP-2",
        "author of the rows",
        rows.iter()
            .map(|r| str_field(r, "userId"))
            .collect::<Vec<_>>(),
        vec![Some(a.id.as_str()); 3],
    )?;
    let reactions = reaction_map("FX-CMP-1", &h)?;
    let mut want = BTreeMap::new();
    want.insert(
        m2.to_string(),
        BTreeMap::from([("👍".to_string(), 2u64), ("🎉".to_string(), 1u64)]),
    );
    ensure_eq("FX-CMP-2", "reaction counts", reactions, want)?;
    // replayLimit bounds the rows: the newest live messages.
    let c2 = sdk_connect(ctx, &b, &room, 2).await?;
    let h2 = history_json(&c2).unwrap_or_default();
    let rows2 = snapshot_rows("FX-CMP-1", &room, &h2)?;
    ensure_eq(
        "FX-CMP-1",
        "rows with replayLimit=2 (the newest two live messages)",
        ids_of(&rows2),
        vec![m2, m4],
    )?;
    // `true` and `1` mean the same as `connect` to FluxyChat.
    for v in ["true", "1"] {
        let c = ctx.connect_q(&b, &room, &format!("replay={v}")).await?;
        let h = history_json(&c).unwrap_or_default();
        let rows = snapshot_rows("FX-CMP-1", &room, &h)?;
        ensure_eq(
            "FX-CMP-1",
            &format!("rows with replay={v}"),
            ids_of(&rows),
            vec![m1, m2, m4],
        )?;
    }
    // Fluxy's own parameters: no change.
    for q in ["", "replay=on", "replayLimit=50"] {
        let c = ctx.connect_q(&b, &room, q).await?;
        let h = history_json(&c).unwrap_or_default();
        ensure(
            h.get("messages").is_none() && h.get("reactions").is_none(),
            "FX-CMP-3",
            format!("no `messages` or `reactions` in the history frame for query {q:?}"),
            crate::ctx::short(&h.to_string(), 300),
        )?;
    }
    for q in ["replay=0", "replay=false", "replay=off"] {
        let c = ctx.connect_q(&b, &room, q).await?;
        ensure(
            c.snapshot.is_none(),
            "FX-HS-6",
            format!("no snapshot for {q}"),
            "a history frame",
        )?;
    }
    Ok(())
}

async fn snapshot_matches_api(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_profile("edits")?;
    let (a, _b, room, mut ca, mut cb) = pair(ctx).await?;
    let m1 = send(ctx, &mut ca, "root").await?.id.unwrap_or(0);
    let cmid = sdk_cmid(ctx);
    super::req(
        ctx,
        &mut cb,
        "FX-CMP-5",
        json!({"type":"message","content":"  a reply  ","parentId":m1,"clientMessageId":cmid,
               "attachments":[{"url":"https://example.com/a.png","name":"a.png","contentType":"image/png"}]}),
    )
    .await?;
    let m3 = send(ctx, &mut ca, "to delete").await?.id.unwrap_or(0);
    send(ctx, &mut ca, "last").await?;
    for frame in [
        json!({"type":"edit","messageId":m1,"content":"root, edited"}),
        json!({"type":"delete","messageId":m3}),
    ] {
        super::req(ctx, &mut ca, "FX-EDT-1", frame).await?;
    }
    super::req(
        ctx,
        &mut cb,
        "FX-EDT-5",
        json!({"type":"reaction","messageId":m1,"emoji":"❤️"}),
    )
    .await?;
    let c = sdk_connect(ctx, &a, &room, 50).await?;
    let h = history_json(&c).unwrap_or_default();
    let rows = snapshot_rows("FX-CMP-1", &room, &h)?;
    let r = ctx
        .get(&format!("/api/messages?roomId={room}&limit=50"), &a.token)
        .await?;
    r.expect_status("FX-HIS-8", "GET /api/messages", 200)?;
    let v = r.json().unwrap_or_default();
    let mut api: Vec<Value> = v
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| fail("FX-HIS-8", "a messages array", &r.text))?;
    api.reverse();
    ensure_eq(
        "FX-CMP-5",
        "snapshot rows vs /api/messages rows (oldest first)",
        rows,
        api,
    )?;
    ensure_eq(
        "FX-CMP-5",
        "snapshot reactions vs /api/messages reactions",
        h.get("reactions").cloned(),
        v.get("reactions").cloned(),
    )
}

async fn reconnect_catch_up(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, mut ca, _cb) = pair(ctx).await?;
    let first = send(ctx, &mut ca, "before the drop").await?.id.unwrap_or(0);
    let sdk = sdk_connect(ctx, &b, &room, 50).await?;
    // The SDK's store: rows merged by id.
    let mut store: BTreeMap<u64, Value> = BTreeMap::new();
    let h = history_json(&sdk).unwrap_or_default();
    for row in snapshot_rows("FX-CMP-1", &room, &h)? {
        store.insert(u64_field(&row, "id").unwrap_or(0), row);
    }
    ensure(
        store.contains_key(&first),
        "FX-CMP-1",
        "the first snapshot holds the message sent before connecting",
        format!("{:?}", store.keys().collect::<Vec<_>>()),
    )?;
    // The connection drops; the room moves on meanwhile.
    sdk.kill();
    let mut sent = vec![first];
    for i in 0..3 {
        sent.push(
            send(ctx, &mut ca, &format!("while away {i}"))
                .await?
                .id
                .unwrap_or(0),
        );
    }
    let r = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId":room,"content":"while away over REST","clientMessageId":sdk_cmid(ctx)}),
        )
        .await?;
    ensure(
        r.status == 200 || r.status == 201,
        "FX-MSG-6",
        "POST /messages answers 2xx",
        format!("{} {}", r.status, r.text),
    )?;
    let rest_id = r
        .json()
        .and_then(|v| v.pointer("/message/id").and_then(Value::as_u64))
        .ok_or_else(|| fail("FX-MSG-6", "message.id in the answer", &r.text))?;
    sent.push(rest_id);
    super::req(
        ctx,
        &mut ca,
        "FX-CMP-2",
        json!({"type":"edit","messageId":first,"content":"edited while away"}),
    )
    .await?;
    super::req(
        ctx,
        &mut ca,
        "FX-CMP-2",
        json!({"type":"reaction","messageId":sent[1],"emoji":"👀"}),
    )
    .await?;
    // The SDK sent over REST while disconnected (its first choice), with its own key.
    let queued = sdk_cmid(ctx);
    let r = ctx
        .post(
            "/messages",
            &b.token,
            &json!({"roomId":room,"content":"queued by the SDK","clientMessageId":queued}),
        )
        .await?;
    let queued_id = r
        .json()
        .and_then(|v| v.pointer("/message/id").and_then(Value::as_u64))
        .ok_or_else(|| fail("FX-MSG-6", "message.id in the answer", &r.text))?;
    sent.push(queued_id);
    // Reconnect as the SDK does.
    let mut sdk = sdk_connect(ctx, &b, &room, 50).await?;
    let h = history_json(&sdk).unwrap_or_default();
    let rows = snapshot_rows("FX-CMP-1", &room, &h)?;
    for row in &rows {
        store.insert(u64_field(row, "id").unwrap_or(0), row.clone());
    }
    let missing: Vec<u64> = sent
        .iter()
        .copied()
        .filter(|id| !store.contains_key(id))
        .collect();
    ensure(
        missing.is_empty(),
        "FX-CMP-1",
        "every message sent while the SDK was away is in its store after the reconnect snapshot",
        format!("missing ids {missing:?}"),
    )?;
    ensure_eq(
        "FX-CMP-2",
        "content of the message edited while away",
        store.get(&first).and_then(|r| str_field(r, "content")),
        Some("edited while away"),
    )?;
    let rx = reaction_map("FX-CMP-1", &h)?;
    ensure_eq(
        "FX-CMP-2",
        "reaction made while away",
        rx.get(&sent[1].to_string())
            .and_then(|m| m.get("👀"))
            .copied(),
        Some(1),
    )?;
    let with_key: Vec<u64> = rows
        .iter()
        .filter(|r| str_field(r, "clientMessageId") == Some(queued.as_str()))
        .filter_map(|r| u64_field(r, "id"))
        .collect();
    ensure_eq(
        "FX-CMP-1",
        "rows carrying the SDK's clientMessageId (it matches its pending entry by it)",
        with_key,
        vec![queued_id],
    )?;
    // On open the SDK flushes its queue over the socket: the same key again. It must not
    // become a second message.
    let r = ctx.r();
    sdk.send_json(&json!({"type":"message","content":"queued by the SDK","clientMessageId":queued,"userId":b.id,"ref":r}))?;
    let ack = sdk.ack("FX-ACK-5", &r).await?;
    ensure(
        ack.duplicate && ack.id == Some(queued_id),
        "FX-ACK-5",
        "the socket resend of a REST key is a duplicate of the same message",
        format!("{ack:?}"),
    )?;
    sdk.sync("FX-ACK-5").await?;
    let echoes = sdk
        .timeline()
        .into_iter()
        .filter(|(_, v)| str_field(v, "clientMessageId") == Some(queued.as_str()))
        .count();
    ensure_eq("FX-ACK-5", "broadcasts of the duplicate resend", echoes, 0)
}

async fn rest_send_echo(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, b, room, _ca, _cb) = pair(ctx).await?;
    let mut sa = sdk_connect(ctx, &a, &room, 50).await?;
    let mut sb = sdk_connect(ctx, &b, &room, 50).await?;
    let key = sdk_cmid(ctx);
    let r = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId":room,"content":"hello over REST","clientMessageId":key}),
        )
        .await?;
    ensure(
        r.status == 200 || r.status == 201,
        "FX-MSG-6",
        "POST /messages answers 2xx",
        format!("{} {}", r.status, r.text),
    )?;
    let body = r.json().unwrap_or_default();
    let m = body
        .get("message")
        .cloned()
        .ok_or_else(|| fail("FX-MSG-6", "a `message` object", &r.text))?;
    let (id, _) = check_row("FX-MSG-6", &room, &m)?;
    ensure_eq(
        "FX-MSG-6",
        "message.clientMessageId",
        str_field(&m, "clientMessageId"),
        Some(key.as_str()),
    )?;
    ensure_eq(
        "FX-MSG-6",
        "message.userId",
        str_field(&m, "userId"),
        Some(a.id.as_str()),
    )?;
    for c in [&mut sa, &mut sb] {
        let echo = wait_event(
            c,
            "FX-MSG-6",
            "the echo of the REST message",
            "message",
            |v| str_field(v, "clientMessageId") == Some(key.as_str()),
        )
        .await?;
        ensure_eq("FX-MSG-6", "echo id", u64_field(&echo, "id"), Some(id))?;
        ensure_eq(
            "FX-MSG-6",
            "echo createdAt",
            str_field(&echo, "createdAt"),
            str_field(&m, "createdAt"),
        )?;
        ensure_eq(
            "FX-MSG-6",
            "echo content",
            str_field(&echo, "content"),
            Some("hello over REST"),
        )?;
    }
    Ok(())
}

/// Send `n` messages back to back (one write each, no waiting), then collect the acks.
async fn burst(ctx: &Ctx, c: &mut Conn, n: usize, tag: &str) -> Result<Vec<u64>, CaseError> {
    let refs: Vec<String> = (0..n).map(|_| ctx.r()).collect();
    for (i, r) in refs.iter().enumerate() {
        c.send_json(&super::msg(&format!("{tag} {i}"), r))?;
    }
    let mut ids = Vec::new();
    for r in &refs {
        let a = c.ack("FX-MSG-1", r).await?;
        ids.push(a.id.unwrap_or(0));
    }
    Ok(ids)
}

async fn load_more_before(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_profile("history")?;
    let (a, _b, room, mut ca, _cb) = pair(ctx).await?;
    let mut all = burst(ctx, &mut ca, 12, "burst").await?;
    all.sort_unstable();
    // The SDK's first load, then loadMore with the oldest loaded createdAt.
    let limit = 5usize;
    let mut seen: Vec<u64> = Vec::new();
    let mut q = format!("/api/messages?roomId={room}&limit={limit}");
    for _ in 0..10 {
        let r = ctx.get(&q, &a.token).await?;
        r.expect_status("FX-HIS-8", "GET /api/messages", 200)?;
        let v = r.json().unwrap_or_default();
        let page = v
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| fail("FX-HIS-8", "a messages array", &r.text))?;
        let mut oldest: Option<(u64, String)> = None;
        let mut prev: Option<u64> = None;
        for row in &page {
            let (id, created) = check_row("FX-HIS-8", &room, row)?;
            if let Some(p) = prev {
                ensure(
                    id < p,
                    "FX-HIS-8",
                    "newest first",
                    format!("{id} after {p}"),
                )?;
            }
            prev = Some(id);
            seen.push(id);
            if oldest.as_ref().is_none_or(|(t, _)| created < *t) {
                oldest = Some((
                    created,
                    str_field(row, "createdAt").unwrap_or("").to_owned(),
                ));
            }
        }
        // The SDK: hasMore = returned.length >= limit.
        if page.len() < limit {
            break;
        }
        let Some((_, before)) = oldest else { break };
        q = format!(
            "/api/messages?roomId={room}&limit={limit}&before={}",
            urlenc(&before)
        );
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    ensure_eq(
        "FX-HIS-11",
        "no message repeated by loadMore",
        sorted.len(),
        seen.len(),
    )?;
    ensure_eq(
        "FX-ORD-9",
        "every message of the burst visited by loadMore (distinct createdAt: none skipped)",
        sorted,
        all,
    )
}

async fn created_at_increases(ctx: &Ctx) -> Result<(), CaseError> {
    let (a, _b, room, mut ca, mut cb) = pair(ctx).await?;
    let bodies: Vec<Value> = (0..4)
        .map(|i| json!({"roomId":room,"content":format!("rest {i}")}))
        .collect();
    let posts = bodies.iter().map(|b| ctx.post("/messages", &a.token, b));
    let (ws, rest) = tokio::join!(
        burst(ctx, &mut ca, 16, "ws"),
        futures_util::future::join_all(posts)
    );
    ws?;
    for r in rest {
        let r = r?;
        ensure(
            r.status == 200 || r.status == 201,
            "FX-MSG-6",
            "POST /messages answers 2xx",
            format!("{} {}", r.status, r.text),
        )?;
    }
    cb.wait_count("FX-ORD-9", 20).await?;
    let mut last: Option<(u64, u64)> = None;
    for (e, v) in cb.timeline() {
        let t = str_field(&v, "createdAt")
            .and_then(parse_timestamp)
            .ok_or_else(|| fail("FX-FRM-5", "createdAt on every message", &v))?;
        if let Some((s, pt)) = last {
            ensure(
                t > pt,
                "FX-ORD-9",
                "createdAt strictly greater than the previous event's",
                format!("seq {} at {t} ms after seq {s} at {pt} ms", e.seq()),
            )?;
        }
        last = Some((e.seq(), t));
    }
    Ok(())
}

async fn edit_react_read(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_profile("edits")?;
    let (a, b, room, _ca, _cb) = pair(ctx).await?;
    let mut sa = sdk_connect(ctx, &a, &room, 50).await?;
    let mut sb = sdk_connect(ctx, &b, &room, 50).await?;
    let key = sdk_cmid(ctx);
    sdk_send(
        &sa,
        &json!({"type":"message","content":"edit me","clientMessageId":key,"userId":a.id}),
    )?;
    let m = wait_event(
        &mut sb,
        "FX-CMP-6",
        "the SDK's message (frame with userId)",
        "message",
        |v| str_field(v, "clientMessageId") == Some(key.as_str()),
    )
    .await?;
    let id = u64_field(&m, "id").ok_or_else(|| fail("FX-MSG-1", "a numeric message id", &m))?;
    ensure_eq(
        "FX-AUTH-7",
        "message.userId",
        str_field(&m, "userId"),
        Some(a.id.as_str()),
    )?;
    sdk_send(
        &sa,
        &json!({"type":"edit","messageId":id,"content":"edited","userId":a.id}),
    )?;
    let e = wait_event(&mut sb, "FX-EDT-2", "the edit event", "edit", |v| {
        u64_field(v, "id") == Some(id)
    })
    .await?;
    ensure_eq(
        "FX-EDT-2",
        "edit.content",
        str_field(&e, "content"),
        Some("edited"),
    )?;
    ensure_eq(
        "FX-EDT-2",
        "edit.version",
        u64_field(&e, "version"),
        Some(2),
    )?;
    ensure(
        str_field(&e, "editedAt")
            .and_then(parse_timestamp)
            .is_some(),
        "FX-EDT-2",
        "edit.editedAt an RFC 3339 time stamp",
        &e,
    )?;
    ensure_eq(
        "FX-AUTH-7",
        "edit.userId",
        str_field(&e, "userId"),
        Some(a.id.as_str()),
    )?;
    sdk_send(
        &sb,
        &json!({"type":"reaction","messageId":id,"emoji":"👍","op":"add","userId":b.id}),
    )?;
    let r = wait_event(&mut sa, "FX-EDT-5", "the reaction event", "reaction", |v| {
        u64_field(v, "messageId") == Some(id)
    })
    .await?;
    ensure_eq(
        "FX-EDT-5",
        "reaction.emoji",
        str_field(&r, "emoji"),
        Some("👍"),
    )?;
    ensure_eq("FX-EDT-5", "reaction.op", str_field(&r, "op"), Some("add"))?;
    ensure_eq(
        "FX-AUTH-7",
        "reaction.userId",
        str_field(&r, "userId"),
        Some(b.id.as_str()),
    )?;
    sdk_send(&sb, &json!({"type":"read","messageId":id,"userId":b.id}))?;
    let rd = wait_event(&mut sa, "FX-EDT-8", "the read event", "read", |v| {
        u64_field(v, "messageId") == Some(id)
    })
    .await?;
    ensure_eq(
        "FX-AUTH-7",
        "read.userId",
        str_field(&rd, "userId"),
        Some(b.id.as_str()),
    )?;
    // What the SDK sees after its next reconnect.
    let c = sdk_connect(ctx, &b, &room, 50).await?;
    let h = history_json(&c).unwrap_or_default();
    let rows = snapshot_rows("FX-CMP-1", &room, &h)?;
    ensure_eq(
        "FX-CMP-2",
        "content in the reconnect snapshot",
        row_by_id(&rows, id).and_then(|r| str_field(r, "content")),
        Some("edited"),
    )?;
    ensure_eq(
        "FX-CMP-2",
        "reaction count in the reconnect snapshot",
        reaction_map("FX-CMP-1", &h)?
            .get(&id.to_string())
            .and_then(|m| m.get("👍"))
            .copied(),
        Some(1),
    )?;
    ensure(
        errors_of(&sa).is_empty() && errors_of(&sb).is_empty(),
        "FX-CMP-6",
        "no error for the SDK's frames (userId fields are ignored)",
        format!("{:?} {:?}", errors_of(&sa), errors_of(&sb)),
    )
}

fn errors_of(c: &Conn) -> Vec<String> {
    super::errors(c)
        .into_iter()
        .map(|e| e.code.to_string())
        .collect()
}

async fn typing(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_profile("presence")?;
    let (a, b, room, _ca, _cb) = pair(ctx).await?;
    let sa = sdk_connect(ctx, &a, &room, 50).await?;
    let mut sb = sdk_connect(ctx, &b, &room, 50).await?;
    for (frame, typing, intent) in [
        (
            json!({"type":"typing","isTyping":true,"userId":a.id}),
            true,
            "composing",
        ),
        (
            json!({"type":"typing","isTyping":false,"intent":"composing","userId":a.id}),
            false,
            "idle",
        ),
    ] {
        sdk_send(&sa, &frame)?;
        let f = sb
            .wait_item("FX-PRE-5", "a typing frame from a", |i| match i {
                Incoming::Text { value: Some(v), .. } => {
                    str_field(v, "type") == Some("typing")
                        && v.get("isTyping").and_then(Value::as_bool) == Some(typing)
                }
                _ => false,
            })
            .await?;
        let Incoming::Text { value: Some(v), .. } = f else {
            return Err(CaseError::Error("no JSON".into()));
        };
        ensure_eq(
            "FX-PRE-5",
            "typing.userId",
            str_field(&v, "userId"),
            Some(a.id.as_str()),
        )?;
        ensure_eq(
            "FX-PRE-7",
            "typing.intent",
            str_field(&v, "intent"),
            Some(intent),
        )?;
    }
    ensure(
        errors_of(&sa).is_empty(),
        "FX-CMP-6",
        "no error for the SDK's typing frames",
        format!("{:?}", errors_of(&sa)),
    )
}

async fn presence(ctx: &Ctx) -> Result<(), CaseError> {
    ctx.need_profile("presence")?;
    let a = ctx.user("a").await?;
    let b = ctx.user("b").await?;
    let room = ctx.room(&a, &[&b]).await?;
    let mut sa = sdk_connect(ctx, &a, &room, 50).await?;
    let mut sb = sdk_connect(ctx, &b, &room, 50).await?;
    let j = sa
        .wait_item("FX-PRE-4", "member_joined for b", |i| match i {
            Incoming::Text { value: Some(v), .. } => {
                str_field(v, "type") == Some("member_joined")
                    && str_field(v, "userId") == Some(b.id.as_str())
            }
            _ => false,
        })
        .await?;
    if let Incoming::Text { value: Some(v), .. } = &j {
        ensure_eq(
            "FX-PRE-4",
            "member_joined.roomId",
            str_field(v, "roomId"),
            Some(room.as_str()),
        )?;
    }
    let p = sa
        .wait_item("FX-PRE-1", "presence with a and b", |i| match i {
            Incoming::Text { value: Some(v), .. } => {
                str_field(v, "type") == Some("presence") && u64_field(v, "online") == Some(2)
            }
            _ => false,
        })
        .await?;
    let Incoming::Text { value: Some(v), .. } = p else {
        return Err(CaseError::Error("no JSON".into()));
    };
    let users: BTreeSet<String> = v
        .get("users")
        .and_then(Value::as_array)
        .map(|u| {
            u.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ensure_eq(
        "FX-PRE-1",
        "presence.users (strings)",
        users,
        BTreeSet::from([a.id.clone(), b.id.clone()]),
    )?;
    let members: BTreeSet<String> = v
        .get("members")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|x| str_field(x, "userId").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ensure_eq(
        "FX-PRE-1",
        "presence.members[].userId",
        members,
        BTreeSet::from([a.id.clone(), b.id.clone()]),
    )?;
    sb.close();
    sa.wait_item("FX-PRE-4", "member_left for b", |i| match i {
        Incoming::Text { value: Some(v), .. } => {
            str_field(v, "type") == Some("member_left")
                && str_field(v, "userId") == Some(b.id.as_str())
        }
        _ => false,
    })
    .await?;
    Ok(())
}
