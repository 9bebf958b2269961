//! Agent events (AGT).

use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};

use super::{current_seq, req, req_err};
use crate::case;
use crate::case::{ensure, ensure_eq, Case, CaseError};
use crate::ctx::{Conn, Ctx, User};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("agt/only-agent-role", ["FX-AGT-2", "FX-AUTH-13"], "agent frames from a non-agent get forbidden and produce no event", only_agent),
        case!("agt/agent-is-participant", ["FX-AGT-1"], "an agent connects and posts like a user, identified by its token's sub", participant),
        case!("agt/run-lifecycle", ["FX-AGT-3", "FX-AGT-10"], "a run starts, then ends exactly once; other transitions get invalid_state", lifecycle),
        case!("agt/tool-call-pairing", ["FX-AGT-4", "FX-AGT-5"], "tool calls need an open run and a new id; each gets exactly one result or error", tool_pairing),
        case!("agt/approval", ["FX-AGT-6", "FX-AGT-7"], "approval requests need an open run; one decision, from a non-agent member", approval),
        case!("agt/two-approvals-one-run", ["FX-AGT-6", "FX-AGT-7"], "two approval requests of one run each take their own decision, both acked with a seq", two_approvals),
        case!("agt/approval-shared-ids", ["FX-AGT-12"], "two agents with pending approvals of the same ids: an unnamed decision decides neither, a named one exactly that agent's, and the event names the agent", shared_ids),
        case!("agt/streaming", ["FX-AGT-8", "FX-AGT-11"], "stream start/delta/end/abort produce message/edit/delete in order with rising versions", streaming),
        case!("agt/persisted-in-history", ["FX-AGT-10"], "agent events are sequenced, acked, persisted and replayed in accepted order", persisted),
        case!("agt/agent-typing", ["FX-AGT-9"], "agentTyping goes to the others with the agent's verified id", agent_typing),
    ]
}

async fn setup(ctx: &Ctx) -> Result<(User, User, String, Conn, Conn), CaseError> {
    let h = ctx.user("human").await?;
    let ag = ctx.user_roles("agent", &["agent"]).await?;
    let room = ctx.room(&h, &[&ag]).await?;
    let ch = ctx.connect(&h, &room).await?;
    let cg = ctx.connect(&ag, &room).await?;
    Ok((h, ag, room, ch, cg))
}

async fn only_agent(ctx: &Ctx) -> Result<(), CaseError> {
    let (h, _, room, mut ch, _) = setup(ctx).await?;
    for f in [
        json!({"type":"agentRun","runId":"r1","status":"started"}),
        json!({"type":"tool_call","runId":"r1","toolCallId":"t1","name":"x","arguments":"{}"}),
        json!({"type":"tool_result","runId":"r1","toolCallId":"t1","result":"ok"}),
        json!({"type":"tool_error","runId":"r1","toolCallId":"t1","error":"bad"}),
        json!({"type":"approval_request","runId":"r1","approvalId":"a1","prompt":"ok?"}),
    ] {
        req_err(ctx, &mut ch, "FX-AGT-2", f, ErrorCode::Forbidden).await?;
    }
    ch.send_json(&json!({"type":"agentTyping","isTyping":true}))?;
    ch.expect_error_any("FX-AGT-2", ErrorCode::Forbidden)
        .await?;
    // A moderator (not an agent) is no agent either.
    let m = ctx.user_roles("mod", &["moderator", "admin"]).await?;
    let mut cm = ctx.connect(&m, &room).await?;
    req_err(
        ctx,
        &mut cm,
        "FX-AUTH-13",
        json!({"type":"agentRun","runId":"r2","status":"started"}),
        ErrorCode::Forbidden,
    )
    .await?;
    ensure_eq(
        "FX-AGT-2",
        "events stored",
        current_seq(ctx, &h, &room).await?,
        0,
    )
}

async fn participant(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, ag, _, mut ch, mut cg) = setup(ctx).await?;
    ensure_eq(
        "FX-AGT-1",
        "agent welcome.userId",
        cg.welcome.as_ref().map(|w| w.user_id.clone()),
        Some(ag.id.clone()),
    )?;
    let a = super::send(ctx, &mut cg, "I am an agent").await?;
    let f = ch
        .wait_frame(
            "FX-AGT-1",
            "the agent's message",
            |f| matches!(f, ServerFrame::Message(m) if Some(m.seq) == a.seq),
        )
        .await?;
    if let ServerFrame::Message(m) = f {
        ensure_eq("FX-AGT-1", "message.userId", m.user_id, ag.id.clone())?;
    }
    Ok(())
}

async fn lifecycle(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, _, mut cg) = setup(ctx).await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"late","status":"completed"}),
        ErrorCode::InvalidState,
    )
    .await?;
    let s = req(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"run1","status":"started"}),
    )
    .await?;
    ensure(
        s.seq.is_some(),
        "FX-AGT-10",
        "an agentRun event (ack with seq)",
        format!("{s:?}"),
    )?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"run1","status":"started"}),
        ErrorCode::InvalidState,
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"run1","status":"failed","error":"boom"}),
    )
    .await?;
    for st in ["completed", "cancelled", "started"] {
        req_err(
            ctx,
            &mut cg,
            "FX-AGT-3",
            json!({"type":"agentRun","runId":"run1","status":st}),
            ErrorCode::InvalidState,
        )
        .await?;
    }
    req(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"run2","status":"started"}),
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-3",
        json!({"type":"agentRun","runId":"run2","status":"cancelled"}),
    )
    .await?;
    Ok(())
}

async fn tool_pairing(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, _, mut cg) = setup(ctx).await?;
    let call = |run: &str, id: &str| json!({"type":"tool_call","runId":run,"toolCallId":id,"name":"search","arguments":"{\"q\":1}"});
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-4",
        call("nope", "t0"),
        ErrorCode::InvalidState,
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-4",
        json!({"type":"agentRun","runId":"r","status":"started"}),
    )
    .await?;
    req(ctx, &mut cg, "FX-AGT-4", call("r", "t1")).await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-4",
        call("r", "t1"),
        ErrorCode::InvalidState,
    )
    .await?;
    req(ctx, &mut cg, "FX-AGT-4", call("r", "t2")).await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-5",
        json!({"type":"tool_result","runId":"r","toolCallId":"t9","result":"?"}),
        ErrorCode::InvalidState,
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-5",
        json!({"type":"tool_result","runId":"r","toolCallId":"t1","result":"found"}),
    )
    .await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-5",
        json!({"type":"tool_result","runId":"r","toolCallId":"t1","result":"again"}),
        ErrorCode::InvalidState,
    )
    .await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-5",
        json!({"type":"tool_error","runId":"r","toolCallId":"t1","error":"late"}),
        ErrorCode::InvalidState,
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-5",
        json!({"type":"tool_error","runId":"r","toolCallId":"t2","error":"timeout"}),
    )
    .await?;
    // The error was the call's one answer: a later result is refused too.
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-5",
        json!({"type":"tool_result","runId":"r","toolCallId":"t2","result":"late"}),
        ErrorCode::InvalidState,
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-4",
        json!({"type":"agentRun","runId":"r","status":"completed"}),
    )
    .await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-4",
        call("r", "t3"),
        ErrorCode::InvalidState,
    )
    .await?;
    Ok(())
}

async fn approval(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ch, mut cg) = setup(ctx).await?;
    let ar = |run: &str, id: &str| json!({"type":"approval_request","runId":run,"approvalId":id,"prompt":"May I?"});
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-6",
        ar("none", "a0"),
        ErrorCode::InvalidState,
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-6",
        json!({"type":"agentRun","runId":"r","status":"started"}),
    )
    .await?;
    req(ctx, &mut cg, "FX-AGT-6", ar("r", "a1")).await?;
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-6",
        ar("r", "a1"),
        ErrorCode::InvalidState,
    )
    .await?;
    let dec = |id: &str| json!({"type":"approval_decision","runId":"r","approvalId":id,"decision":"approved"});
    req_err(ctx, &mut cg, "FX-AGT-7", dec("a1"), ErrorCode::Forbidden).await?;
    req_err(ctx, &mut ch, "FX-AGT-7", dec("zz"), ErrorCode::InvalidState).await?;
    req(ctx, &mut ch, "FX-AGT-7", dec("a1")).await?;
    req_err(
        ctx,
        &mut ch,
        "FX-AGT-7",
        json!({"type":"approval_decision","runId":"r","approvalId":"a1","decision":"denied"}),
        ErrorCode::InvalidState,
    )
    .await?;
    Ok(())
}

async fn shared_ids(ctx: &Ctx) -> Result<(), CaseError> {
    let h = ctx.user("human").await?;
    let a = ctx.user_roles("agent-a", &["agent"]).await?;
    let b = ctx.user_roles("agent-b", &["agent"]).await?;
    let room = ctx.room(&h, &[&a, &b]).await?;
    let mut ch = ctx.connect(&h, &room).await?;
    let dec = |agent: Option<&str>, decision: &str| {
        let mut d =
            json!({"type":"approval_decision","runId":"r","approvalId":"x","decision":decision});
        if let Some(agent) = agent {
            d["agentId"] = json!(agent);
        }
        d
    };
    let mut ca = ctx.connect(&a, &room).await?;
    for f in [
        json!({"type":"agentRun","runId":"r","status":"started"}),
        json!({"type":"approval_request","runId":"r","approvalId":"x","prompt":"May I?"}),
        json!({"type":"approval_request","runId":"r","approvalId":"y","prompt":"And this?"}),
    ] {
        req(ctx, &mut ca, "FX-AGT-6", f).await?;
    }
    // Positive control: with one agent's request of these ids pending, an unnamed decision
    // answers it, and the event names that agent.
    let mut only = dec(None, "approved");
    only["approvalId"] = json!("y");
    let ack = req(ctx, &mut ch, "FX-AGT-7", only).await?;
    check_named(&mut ch, ack.seq.unwrap_or(0), &a.id).await?;
    let mut cb = ctx.connect(&b, &room).await?;
    for f in [
        json!({"type":"agentRun","runId":"r","status":"started"}),
        json!({"type":"approval_request","runId":"r","approvalId":"x","prompt":"May I?"}),
    ] {
        req(ctx, &mut cb, "FX-AGT-6", f).await?;
    }
    // Both requests are pending: an unnamed decision is ambiguous.
    req_err(
        ctx,
        &mut ch,
        "FX-AGT-12",
        dec(None, "approved"),
        ErrorCode::InvalidState,
    )
    .await?;
    // Named decisions: each answers exactly the named agent's request (so the refused one
    // decided neither), once.
    for (agent, decision) in [(&b.id, "denied"), (&a.id, "approved")] {
        let ack = req(ctx, &mut ch, "FX-AGT-12", dec(Some(agent), decision)).await?;
        check_named(&mut ch, ack.seq.unwrap_or(0), agent).await?;
        req_err(
            ctx,
            &mut ch,
            "FX-AGT-12",
            dec(Some(agent), decision),
            ErrorCode::InvalidState,
        )
        .await?;
    }
    // A named agent without a pending request.
    req_err(
        ctx,
        &mut ch,
        "FX-AGT-12",
        dec(Some(&h.id), "approved"),
        ErrorCode::InvalidState,
    )
    .await
}

/// The `approval_decision` event at `seq` names `agent` [FX-AGT-12].
async fn check_named(ch: &mut Conn, seq: u64, agent: &str) -> Result<(), CaseError> {
    let event = ch.event_at("FX-AGT-12", seq).await?;
    ensure_eq(
        "FX-AGT-12",
        &format!("agentId of the approval_decision event at seq {seq}"),
        event["agentId"].clone(),
        json!(agent),
    )
}

async fn two_approvals(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, _, _, mut ch, mut cg) = setup(ctx).await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-6",
        json!({"type":"agentRun","runId":"r","status":"started"}),
    )
    .await?;
    for id in ["a1", "a2"] {
        let a = req(
            ctx,
            &mut cg,
            "FX-AGT-6",
            json!({"type":"approval_request","runId":"r","approvalId":id,"prompt":"May I?"}),
        )
        .await?;
        ensure(
            a.seq.is_some(),
            "FX-AGT-6",
            format!("approval_request {id} acked with a seq"),
            format!("{a:?}"),
        )?;
    }
    let mut seqs = Vec::new();
    for id in ["a1", "a2"] {
        let d = req(
            ctx,
            &mut ch,
            "FX-AGT-7",
            json!({"type":"approval_decision","runId":"r","approvalId":id,"decision":"approved"}),
        )
        .await?;
        ensure(
            d.seq.is_some(),
            "FX-AGT-7",
            format!("the decision on {id} acked with a seq"),
            format!("{d:?}"),
        )?;
        seqs.push(d.seq.unwrap_or(0));
    }
    ensure(
        seqs[0] < seqs[1],
        "FX-AGT-7",
        "the two decisions are two events in order",
        format!("seqs {seqs:?}"),
    )
}

async fn streaming(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, ag, _, mut ch, mut cg) = setup(ctx).await?;
    let st = req(
        ctx,
        &mut cg,
        "FX-AGT-8",
        json!({"type":"stream","op":"start","content":""}),
    )
    .await?;
    let id = st.id.ok_or_else(|| {
        crate::case::fail(
            "FX-AGT-8",
            "the start ack carries the message id",
            format!("{st:?}"),
        )
    })?;
    let mut text = String::new();
    for w in ["Hello", " streaming", " world"] {
        text.push_str(w);
        cg.send_json(&json!({"type":"stream","op":"delta","messageId":id,"content":text}))?;
    }
    req(
        ctx,
        &mut cg,
        "FX-AGT-8",
        json!({"type":"stream","op":"end","messageId":id,"content":format!("{text}!")}),
    )
    .await?;
    // Only the author may continue; a finished stream is no longer streaming.
    req_err(
        ctx,
        &mut cg,
        "FX-AGT-8",
        json!({"type":"stream","op":"delta","messageId":id,"content":"more"}),
        ErrorCode::InvalidState,
    )
    .await?;
    // The fields judged here are the stream's (type, streaming, content, version); a missing
    // `seq` is FX-ORD-1's business, so the frames are counted raw.
    ch.wait_raw_count("FX-AGT-11", 5).await?;
    let evs: Vec<Value> = ch.raw_timeline();
    ensure_eq(
        "FX-AGT-8",
        "event types",
        evs.iter()
            .map(|v| v["type"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>(),
        vec!["message", "edit", "edit", "edit", "edit"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    )?;
    ensure_eq(
        "FX-AGT-8",
        "start is streaming",
        evs[0].get("streaming").cloned(),
        Some(json!(true)),
    )?;
    let contents: Vec<String> = evs[1..]
        .iter()
        .map(|v| v["content"].as_str().unwrap_or("").to_string())
        .collect();
    ensure_eq(
        "FX-AGT-11",
        "delta contents in order",
        contents,
        vec![
            "Hello".into(),
            "Hello streaming".into(),
            "Hello streaming world".into(),
            "Hello streaming world!".into(),
        ],
    )?;
    let versions: Vec<u64> = evs
        .iter()
        .map(|v| v["version"].as_u64().unwrap_or(0))
        .collect();
    ensure_eq("FX-AGT-11", "versions", versions, vec![1, 2, 3, 4, 5])?;
    ensure(
        evs[4].get("streaming").is_none_or(|s| s == &json!(false)),
        "FX-AGT-8",
        "end without streaming",
        evs[4].to_string(),
    )?;
    ensure(
        evs[1..4]
            .iter()
            .all(|v| v.get("streaming") == Some(&json!(true))),
        "FX-AGT-8",
        "deltas with streaming: true",
        "missing",
    )?;
    // Another user cannot continue someone's stream; abort deletes.
    let st2 = req(
        ctx,
        &mut cg,
        "FX-AGT-8",
        json!({"type":"stream","op":"start","content":"x"}),
    )
    .await?;
    let r = ctx.r();
    ch.send_json(
        &json!({"type":"stream","op":"delta","messageId":st2.id,"content":"hijack","ref":r}),
    )?;
    match ch.answer("FX-AGT-8", &r).await? {
        ServerFrame::Error(e)
            if matches!(e.code, ErrorCode::Forbidden | ErrorCode::InvalidState) => {}
        other => {
            return Err(crate::case::fail(
                "FX-AGT-8",
                "only the stream's author may continue it (error forbidden)",
                other.encode(),
            ))
        }
    }
    req(
        ctx,
        &mut cg,
        "FX-AGT-8",
        json!({"type":"stream","op":"abort","messageId":st2.id}),
    )
    .await?;
    ch.wait_frame(
        "FX-AGT-8",
        "a delete for the aborted stream",
        |f| matches!(f, ServerFrame::Delete(d) if Some(d.id) == st2.id),
    )
    .await?;
    let _ = ag;
    Ok(())
}

async fn persisted(ctx: &Ctx) -> Result<(), CaseError> {
    let (h, _, room, mut ch, mut cg) = setup(ctx).await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-10",
        json!({"type":"agentRun","runId":"p","status":"started"}),
    )
    .await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-10",
        json!({"type":"tool_call","runId":"p","toolCallId":"c","name":"n","arguments":"{}"}),
    )
    .await?;
    req(ctx, &mut cg, "FX-AGT-10", json!({"type":"approval_request","runId":"p","approvalId":"ap","toolCallId":"c","prompt":"ok?"})).await?;
    req(ctx, &mut ch, "FX-AGT-10", json!({"type":"approval_decision","runId":"p","approvalId":"ap","decision":"approved","reason":"fine"})).await?;
    req(
        ctx,
        &mut cg,
        "FX-AGT-10",
        json!({"type":"tool_result","runId":"p","toolCallId":"c","result":"42"}),
    )
    .await?;
    let last = req(
        ctx,
        &mut cg,
        "FX-AGT-10",
        json!({"type":"agentRun","runId":"p","status":"completed"}),
    )
    .await?;
    ch.wait_seq("FX-AGT-10", last.seq.unwrap_or(0)).await?;
    let live: Vec<Value> = ch.timeline().into_iter().map(|(_, v)| v).collect();
    let kinds: Vec<String> = live
        .iter()
        .map(|v| v["type"].as_str().unwrap_or("").to_string())
        .collect();
    ensure_eq(
        "FX-AGT-10",
        "accepted order",
        kinds,
        [
            "agentRun",
            "tool_call",
            "approval_request",
            "approval_decision",
            "tool_result",
            "agentRun",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )?;
    let hist: Vec<Value> = ctx
        .walk_forward(&h, &room, 50)
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    ensure_eq(
        "FX-AGT-10",
        "history (same events, same order)",
        hist,
        live.clone(),
    )?;
    let c2 = ctx.connect_q(&h, &room, "lastSeq=0").await?;
    let rep: Vec<Value> = c2.snapshot_raw.clone();
    ensure_eq("FX-AGT-10", "replay", rep, live)
}

async fn agent_typing(ctx: &Ctx) -> Result<(), CaseError> {
    let (_, ag, _, mut ch, mut cg) = setup(ctx).await?;
    cg.send_json(&json!({"type":"agentTyping","isTyping":true,"agentId":"someone-else"}))?;
    let f = ch
        .wait_frame("FX-AGT-9", "agentTyping", |f| {
            matches!(f, ServerFrame::AgentTyping(_))
        })
        .await?;
    if let ServerFrame::AgentTyping(t) = f {
        ensure_eq("FX-AGT-9", "agentTyping.agentId", t.agent_id, ag.id.clone())?;
    }
    cg.sync("FX-AGT-9").await?;
    let own = cg
        .frames()
        .iter()
        .filter(|f| matches!(f, ServerFrame::AgentTyping(_)))
        .count();
    ensure_eq("FX-AGT-9", "agentTyping echoed to the agent", own, 0)
}
