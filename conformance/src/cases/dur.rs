//! Durability (group `dur`): what must survive a restart of the server. These cases restart the
//! server under test (`--restart-cmd`, or the embedded server on its SQLite file), so the runner
//! runs them one at a time after every other case.

use fluxy_protocol::{ErrorCode, ServerFrame, TimelineEvent};
use serde_json::json;

use super::{msg_c, req, req_err, send};
use crate::case;
use crate::case::{ensure_eq, fail, Case, CaseError};
use crate::ctx::{Conn, Ctx, User};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("dur/acked-survive-restart", ["FX-ORD-7", "FX-ORD-1"], "every acked event (WebSocket and REST) is in the room after a restart, with its seq, id and content; the next event continues the seq without a gap or a reuse", acked_survive),
        case!("dur/idempotency-across-restart", ["FX-ACK-5", "FX-ORD-7"], "a clientMessageId used before a restart is still honoured after it, over the WebSocket and over POST /messages, and stores nothing new", idempotency_across),
        case!("dur/agent-state-across-restart", ["FX-AGT-3", "FX-AGT-5", "FX-AGT-7", "FX-AGT-8", "FX-ORD-7"], "an agent run, its pending tool call and approval request, and an open stream stay open across a restart: each is answered or continued exactly once after it", agent_state_across),
        case!("dur/resume-across-restart", ["FX-RES-1", "FX-HS-7", "FX-HIS-12", "FX-ORD-7"], "a client that saw up to seq k before a restart resumes exactly after k (lastSeq at connect, and resume); a history cursor issued before the restart still pages", resume_across),
    ]
}

/// True for the cases that restart the server (run alone, after the others).
pub fn restarts(id: &str) -> bool {
    id.starts_with("dur/")
}

/// The restarter, or skip (checked before any set-up, so a skipped case costs nothing).
fn restarter(ctx: &Ctx) -> Result<crate::env::Restarter, CaseError> {
    ctx.env.restart.clone().ok_or_else(|| {
        CaseError::Skip(
            "needs --restart-cmd (a command that restarts the server on the same storage)".into(),
        )
    })
}

async fn restart(ctx: &Ctx) -> Result<(), CaseError> {
    let r = restarter(ctx)?;
    ctx.note(&format!("restarting the server ({})", r.describe));
    r.restart()
        .await
        .map_err(|e| CaseError::Error(format!("restart: {e}")))?;
    ctx.note("the server answers again");
    Ok(())
}

/// Connect to `room` after the restart. A room that is gone (refused as not found) lost its
/// acked events with it: that is the durability failure itself (FX-ORD-7), not a precondition.
async fn reconnect(ctx: &Ctx, u: &User, room: &str, query: &str) -> Result<Conn, CaseError> {
    match ctx.connect_q(u, room, query).await {
        Ok(c) => Ok(c),
        Err(CaseError::Fail(f) | CaseError::Blocked(f))
            if f.observed.contains("4404")
                || f.observed.contains("not_found")
                || f.observed.contains("HTTP 404") =>
        {
            Err(fail(
                "FX-ORD-7",
                "the room, with its acked events, still exists after the restart",
                f.observed,
            ))
        }
        Err(e) => Err(e),
    }
}

/// Every timeline event of `room` after `last`, by `lastSeq` at connect then `resume` pages.
async fn events_after(
    ctx: &Ctx,
    u: &User,
    room: &str,
    last: u64,
    clause: &str,
) -> Result<(Vec<TimelineEvent>, Conn), CaseError> {
    let mut c = reconnect(ctx, u, room, &format!("lastSeq={last}")).await?;
    let first = c.replay.clone().ok_or_else(|| {
        fail(
            "FX-HS-7",
            format!("a `replay` after connecting with lastSeq={last}"),
            "none",
        )
    })?;
    let mut events = first.events.clone();
    let mut more = first.has_more;
    for _ in 0..1000 {
        if !more {
            break;
        }
        let from = events.last().map(TimelineEvent::seq).unwrap_or(last);
        let r = ctx.r();
        c.send_json(&json!({"type":"resume","lastSeq":from,"ref":r}))?;
        match c.answer(clause, &r).await? {
            ServerFrame::Replay(p) => {
                more = p.has_more;
                if p.events.is_empty() {
                    break;
                }
                events.extend(p.events);
            }
            other => {
                return Err(fail(
                    clause,
                    format!("a `replay` answering resume {{lastSeq: {from}}}"),
                    other.encode(),
                ))
            }
        }
    }
    Ok((events, c))
}

fn contents(events: &[TimelineEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            TimelineEvent::Message(m) => Some((m.seq, m.content.clone())),
            _ => None,
        })
        .collect()
}

async fn acked_survive(ctx: &Ctx) -> Result<(), CaseError> {
    restarter(ctx)?;
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c = ctx.connect_q(&a, &room, "replay=off").await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        let k = send(ctx, &mut c, &format!("durable {i}")).await?;
        acked.push((k.seq.unwrap_or(0), format!("durable {i}")));
    }
    let r = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId": room, "content": "durable rest", "clientMessageId": ctx.cmid()}),
        )
        .await?;
    let rest: fluxy_protocol::http::PostMessageResponse = r
        .parse("FX-MSG-6", "PostMessageResponse")
        .map_err(crate::case::as_precondition)?;
    acked.push((rest.message.seq, "durable rest".into()));
    drop(c);
    restart(ctx).await?;
    let (events, mut c) = events_after(ctx, &a, &room, 0, "FX-ORD-7").await?;
    ensure_eq(
        "FX-ORD-7",
        "(seq, content) of the acked messages after the restart",
        contents(&events),
        acked.clone(),
    )?;
    let next = send(ctx, &mut c, "after restart").await?;
    ensure_eq(
        "FX-ORD-1",
        "seq of the first event after the restart",
        next.seq,
        Some(acked.len() as u64 + 1),
    )
}

async fn idempotency_across(ctx: &Ctx) -> Result<(), CaseError> {
    restarter(ctx)?;
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c = ctx.connect_q(&a, &room, "replay=off").await?;
    let (k1, k2) = (ctx.cmid(), ctx.cmid());
    let r = ctx.r();
    c.send_json(&msg_c("ws keyed", &k1, &r))?;
    let first = c
        .ack("FX-ACK-1", &r)
        .await
        .map_err(crate::case::as_precondition)?;
    let p = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId": room, "content": "rest keyed", "clientMessageId": k2}),
        )
        .await?;
    let rest: fluxy_protocol::http::PostMessageResponse = p
        .parse("FX-MSG-6", "PostMessageResponse")
        .map_err(crate::case::as_precondition)?;
    drop(c);
    restart(ctx).await?;
    let mut c = reconnect(ctx, &a, &room, "replay=off").await?;
    let before = c.current_seq();
    // The WebSocket key, repeated over the WebSocket and over HTTP.
    let r = ctx.r();
    c.send_json(&msg_c("ws keyed, again", &k1, &r))?;
    let again = c.ack("FX-ACK-5", &r).await?;
    ensure_eq(
        "FX-ACK-5",
        "seq of the repeated WebSocket key after the restart",
        again.seq,
        first.seq,
    )?;
    let p = ctx
        .post(
            "/messages",
            &a.token,
            &json!({"roomId": room, "content": "ws keyed, over http", "clientMessageId": k1}),
        )
        .await?;
    ensure_eq(
        "FX-ACK-5",
        "status of POST /messages repeating a pre-restart key",
        p.status,
        200,
    )?;
    // The HTTP key, repeated over the WebSocket.
    let r = ctx.r();
    c.send_json(&msg_c("rest keyed, over ws", &k2, &r))?;
    let again = c.ack("FX-ACK-5", &r).await?;
    ensure_eq(
        "FX-ACK-5",
        "seq of the repeated HTTP key after the restart",
        again.seq,
        Some(rest.message.seq),
    )?;
    c.sync("FX-ACK-5").await?;
    let after = ctx.connect_q(&a, &room, "replay=off").await?.current_seq();
    ensure_eq(
        "FX-ACK-5",
        "currentSeq (repeats store nothing)",
        after,
        before,
    )
}

async fn resume_across(ctx: &Ctx) -> Result<(), CaseError> {
    restarter(ctx)?;
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut c = ctx.connect_q(&a, &room, "replay=off").await?;
    let mut sent = Vec::new();
    for i in 0..5 {
        let k = send(ctx, &mut c, &format!("r{i}")).await?;
        sent.push((k.seq.unwrap_or(0), format!("r{i}")));
    }
    drop(c);
    // A history cursor issued before the restart, when the server has history.
    let page = ctx
        .get(
            &format!("/rooms/{room}/history?direction=forward&limit=2"),
            &a.token,
        )
        .await?;
    let cursor = if page.status == 200 {
        page.json().and_then(|v| {
            v.get("nextCursor")
                .and_then(|c| c.as_str().map(str::to_owned))
        })
    } else {
        ctx.note("no history route: the cursor part is left out");
        None
    };
    restart(ctx).await?;
    let (events, mut c) = events_after(ctx, &a, &room, 2, "FX-HS-7").await?;
    ensure_eq(
        "FX-HS-7",
        "events replayed after lastSeq=2 across the restart",
        contents(&events),
        sent[2..].to_vec(),
    )?;
    let r = ctx.r();
    c.send_json(&json!({"type":"resume","lastSeq":3,"ref":r}))?;
    match c.answer("FX-RES-1", &r).await? {
        ServerFrame::Replay(p) => ensure_eq(
            "FX-RES-1",
            "events of resume {lastSeq: 3} across the restart",
            contents(&p.events),
            sent[3..].to_vec(),
        )?,
        other => {
            return Err(fail(
                "FX-RES-1",
                "a replay answering resume {lastSeq: 3}",
                other.encode(),
            ))
        }
    }
    if let Some(cursor) = cursor {
        let p = ctx
            .get(
                &format!(
                    "/rooms/{room}/history?direction=forward&limit=10&cursor={}",
                    crate::ctx::urlenc(&cursor)
                ),
                &a.token,
            )
            .await?;
        p.expect_status(
            "FX-HIS-12",
            "a cursor issued before the restart pages after it",
            200,
        )?;
        let page: fluxy_protocol::http::HistoryPage = p.parse("FX-HIS-12", "HistoryPage")?;
        ensure_eq(
            "FX-HIS-12",
            "events of the pre-restart cursor's next page",
            contents(&page.events),
            sent[2..].to_vec(),
        )?;
    }
    Ok(())
}

/// Open agent state (a started run with a pending tool call and approval request, and a
/// streaming message) is durable: after a restart each can still be answered or continued,
/// exactly once, and nothing closed can be reopened.
async fn agent_state_across(ctx: &Ctx) -> Result<(), CaseError> {
    restarter(ctx)?;
    let h = ctx.user("human").await?;
    let ag = ctx.user_roles("agent", &["agent"]).await?;
    let room = ctx.room(&h, &[&ag]).await?;
    let mut cg = ctx.connect(&ag, &room).await?;
    for f in [
        json!({"type":"agentRun","runId":"r","status":"started"}),
        json!({"type":"tool_call","runId":"r","toolCallId":"t1","name":"search","arguments":"{}"}),
        json!({"type":"approval_request","runId":"r","approvalId":"a1","prompt":"May I?"}),
    ] {
        req(ctx, &mut cg, "FX-AGT-3", f).await?;
    }
    let st = req(
        ctx,
        &mut cg,
        "FX-AGT-8",
        json!({"type":"stream","op":"start","content":""}),
    )
    .await?;
    let id = st.id.ok_or_else(|| {
        fail(
            "FX-AGT-8",
            "the start ack carries the message id",
            format!("{st:?}"),
        )
    })?;
    let delta = |text: &str| json!({"type":"stream","op":"delta","messageId":id,"content":text});
    req(ctx, &mut cg, "FX-AGT-8", delta("before")).await?;
    drop(cg);
    restart(ctx).await?;
    let mut cg = reconnect(ctx, &ag, &room, "replay=off").await?;
    let mut ch = reconnect(ctx, &h, &room, "replay=off").await?;
    let result = json!({"type":"tool_result","runId":"r","toolCallId":"t1","result":"after"});
    req(ctx, &mut cg, "FX-AGT-5", result.clone()).await?;
    req_err(ctx, &mut cg, "FX-AGT-5", result, ErrorCode::InvalidState).await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"r","status":"started"}),
        ErrorCode::InvalidState,
    )
    .await?;
    let decision =
        json!({"type":"approval_decision","runId":"r","approvalId":"a1","decision":"approved"});
    req(ctx, &mut ch, "FX-AGT-7", decision.clone()).await?;
    req_err(ctx, &mut ch, "FX-AGT-7", decision, ErrorCode::InvalidState).await?;
    req(ctx, &mut cg, "FX-AGT-8", delta("before after")).await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-8",
        json!({"type":"stream","op":"end","messageId":id,"content":"done"}),
    )
    .await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-8",
        delta("reopened"),
        ErrorCode::InvalidState,
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"r","status":"completed"}),
    )
    .await?;
    Ok(())
}
