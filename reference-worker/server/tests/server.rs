//! Integration tests over real sockets against the `fluxy-server` binary.

mod common;

use std::collections::BTreeMap;

use common::{now_s, Got, Srv};
use fluxy_protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_i2_burst_from_several_connections_arrives_in_seq_order_everywhere() {
    let s = Srv::start(&[]).await;
    let owner = s.token("u0", &[]).await;
    s.room(&owner, "burst", &["u1", "u2", "u3", "u4"]).await;
    let mut conns = Vec::new();
    for u in 0..5 {
        let t = s.token(&format!("u{u}"), &[]).await;
        conns.push(s.join("burst", &t).await);
    }
    const PER: usize = 30;
    for i in 0..PER {
        for (u, ws) in conns.iter_mut().enumerate() {
            ws.send(json!({"type":"message","content":format!("u{u}-{i}")}))
                .await;
        }
    }
    let total = PER * conns.len();
    for ws in conns.iter_mut() {
        let events = ws.timeline(total).await;
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "I1");
        // I2: each user's messages are sequenced in the order that user sent them.
        let mut next: BTreeMap<String, usize> = BTreeMap::new();
        for e in &events {
            let content = e["content"].as_str().unwrap();
            let (user, i) = content.split_once('-').unwrap();
            let want = next.entry(user.to_owned()).or_insert(0);
            assert_eq!(i.parse::<usize>().unwrap(), *want, "I2 for {user}");
            *want += 1;
            assert_eq!(e["userId"].as_str().unwrap(), user);
        }
    }
    let hist = s.all_history(&owner, "burst").await;
    assert_eq!(hist.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_i4_every_path_yields_the_same_events() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "paths", &[]).await;
    let mut ws = s.join("paths", &alice).await;
    let mut live = Vec::new();
    for i in 0..5 {
        ws.send(json!({"type":"message","content":format!("m{i}"),"ref":format!("r{i}")}))
            .await;
        let a = ws.ack().await;
        assert_eq!(a.seq, Some(i + 1), "ack carries the seq");
        // The ack arrives before the sender's copy (FX-ACK-3).
        live.extend(ws.timeline(1).await);
    }
    ws.send(json!({"type":"edit","messageId":1,"content":"m0 edited"}))
        .await;
    ws.ack().await;
    live.extend(ws.timeline(1).await);
    // HTTP history.
    assert_eq!(s.all_history(&alice, "paths").await, live);
    // Connect snapshot.
    let mut ws2 = s.ws("paths", &alice, "").await;
    let snap = ws2.until(|f| matches!(f, ServerFrame::History(_))).await;
    let ServerFrame::History(h) = snap else {
        unreachable!()
    };
    let snap: Vec<Value> = h
        .events
        .iter()
        .map(|e| serde_json::from_str(&e.encode()).unwrap())
        .collect();
    assert_eq!(snap, live);
    // Resume.
    ws2.send(json!({"type":"resume","lastSeq":0})).await;
    let ServerFrame::Replay(r) = ws2.until(|f| matches!(f, ServerFrame::Replay(_))).await else {
        unreachable!()
    };
    let replay: Vec<Value> = r
        .events
        .iter()
        .map(|e| serde_json::from_str(&e.encode()).unwrap())
        .collect();
    assert_eq!(replay, live);
    // Long-poll.
    let (st, page) = s
        .get(&alice, "/rooms/paths/poll?afterSeq=0&timeoutMs=0")
        .await;
    assert_eq!(st, 200);
    assert_eq!(page["events"].as_array().unwrap(), &live);
    // SSE with Last-Event-ID 0.
    let resp = s
        .http
        .get(s.url("/rooms/paths/stream"))
        .bearer_auth(&alice)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp;
    let mut text = String::new();
    let mut sse = Vec::new();
    while sse.len() < live.len() {
        let chunk = tokio::time::timeout(common::WAIT, body.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(i) = text.find("\n\n") {
            let block: String = text.drain(..i + 2).collect();
            let mut id = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse::<u64>().unwrap());
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(d).unwrap();
                    assert_eq!(id, v["seq"].as_u64(), "id: equals seq");
                    sse.push(v);
                }
            }
        }
    }
    assert_eq!(sse, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i5_idempotent_resend_over_ws_and_rest() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "idem", &["bob"]).await;
    let mut a = s.join("idem", &alice).await;
    let mut b = s.join("idem", &bob).await;
    a.send(json!({"type":"message","content":"once","clientMessageId":"cmid-00001"}))
        .await;
    let first = a.ack().await;
    a.send(json!({"type":"message","content":"changed","clientMessageId":"cmid-00001"}))
        .await;
    let dup = a.ack().await;
    assert!(dup.duplicate && dup.seq == first.seq && dup.created_at == first.created_at);
    let (st, body) = s
        .post(
            &alice,
            "/messages",
            json!({"roomId":"idem","content":"rest","clientMessageId":"cmid-00001"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(body["duplicate"], true);
    assert_eq!(body["message"]["content"], "once");
    let (st, body) = s
        .post(
            &bob,
            "/messages",
            json!({"roomId":"idem","content":"fresh"}),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(body["message"]["seq"], 2);
    // Bob saw exactly two events: no re-broadcast of the duplicate.
    let t = b.timeline(2).await;
    assert_eq!(t[0]["content"], "once");
    assert_eq!(t[1]["content"], "fresh");
    assert_eq!(s.all_history(&alice, "idem").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i6_identity_only_from_verified_tokens() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "auth", &[]).await;
    let mut ws = s.join("auth", &alice).await;
    ws.send(json!({"type":"message","content":"hi","userId":"mallory"}))
        .await;
    let e = ws.timeline(1).await;
    assert_eq!(e[0]["userId"], "alice");
    let cases = [
        (
            s.craft("alice", now_s() - 100, None),
            4005u16,
            ErrorCode::TokenExpired,
        ),
        (
            s.craft("alice", now_s() + 600, Some(now_s() + 300)),
            4004,
            ErrorCode::Unauthorized,
        ),
        (
            fluxy_protocol::jwt::sign_raw(
                &json!({"alg":"none"}),
                &json!({"sub":"alice","tid":s.dev.tenant,"exp":now_s()+600}),
                b"",
            ),
            4004,
            ErrorCode::Unauthorized,
        ),
        (
            fluxy_protocol::jwt::sign_raw(
                &json!({"alg":"HS256"}),
                &json!({"sub":"alice","tid":s.dev.tenant,"exp":"9999999999"}),
                s.dev.jwt_secret.as_bytes(),
            ),
            4004,
            ErrorCode::Unauthorized,
        ),
        ("x.y.z".to_owned(), 4004, ErrorCode::Unauthorized),
    ];
    for (tok, close, code) in cases {
        let mut w = s.ws("auth", &tok, "").await;
        let (c, seen) = w.close_code().await;
        assert_eq!(c, close);
        assert_eq!(seen.len(), 1, "only an error before the close: {seen:?}");
        assert!(matches!(&seen[0], ServerFrame::Error(e) if e.code == code));
        let (st, body) = s.get(&tok, "/rooms/auth/history").await;
        assert_eq!(st, 401);
        assert_eq!(body["error"], code.as_str());
    }
    let (st, _) = s.get("", "/rooms").await;
    assert_eq!(st, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i7_tenants_are_isolated() {
    let s = Srv::start(&[]).await;
    let a = s.token("alice", &["admin"]).await;
    let b = s.token_in(true, "alice", &["admin"]).await;
    s.room(&a, "shared-id", &[]).await;
    let mut wa = s.join("shared-id", &a).await;
    wa.send(json!({"type":"message","content":"tenant A secret"}))
        .await;
    wa.ack().await;
    for path in [
        "/rooms/shared-id",
        "/rooms/shared-id/history",
        "/rooms/shared-id/members",
        "/rooms/shared-id/poll?timeoutMs=0",
        "/api/messages?roomId=shared-id",
    ] {
        let (st, body) = s.get(&b, path).await;
        assert_eq!(
            (st, body["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    let (st, _) = s
        .post(&b, "/messages", json!({"roomId":"shared-id","content":"x"}))
        .await;
    assert_eq!(st, 404);
    let mut wb = s.ws("shared-id", &b, "").await;
    assert_eq!(wb.close_code().await.0, 4404);
    // The same id in tenant B is an unrelated room.
    s.room(&b, "shared-id", &[]).await;
    let (_, page) = s.get(&b, "/rooms/shared-id/history").await;
    assert_eq!(page["currentSeq"], 0);
    // A cursor of tenant A is foreign in tenant B.
    let (_, pa) = s
        .get(&a, "/rooms/shared-id/history?direction=forward")
        .await;
    let cur = pa["nextCursor"].as_str().unwrap();
    let (st, body) = s
        .get(&b, &format!("/rooms/shared-id/history?cursor={cur}"))
        .await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_cursor")));
    let (_, rooms) = s.get(&b, "/rooms").await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_type_over_the_socket() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    let bot = s.token("bot", &["agent"]).await;
    s.room(&alice, "frames", &["bot"]).await;
    let mut a = s.join("frames", &alice).await;
    let mut g = s.join("frames", &bot).await;
    let ServerFrame::Presence(p) = a
        .until(|f| matches!(f, ServerFrame::Presence(p) if p.online == 2))
        .await
    else {
        unreachable!()
    };
    assert_eq!(p.users, vec!["alice", "bot"]);
    a.send(json!({"type":"ping","ts":42})).await;
    assert!(
        matches!(a.until(|f| matches!(f, ServerFrame::Pong(_))).await, ServerFrame::Pong(p) if p.echo == Some(42))
    );
    let steps = [
        json!({"type":"message","content":"hello","ref":"1"}),
        json!({"type":"edit","messageId":1,"content":"hello!","ref":"2"}),
        json!({"type":"reaction","messageId":1,"emoji":"👍","ref":"3"}),
        json!({"type":"read","messageId":1,"ref":"4"}),
        json!({"type":"stream","op":"start","content":"","ref":"5"}),
        json!({"type":"stream","op":"delta","messageId":5,"content":"Hi","ref":"6"}),
        json!({"type":"stream","op":"end","messageId":5,"content":"Hi there","ref":"7"}),
        json!({"type":"delete","messageId":5,"ref":"8"}),
    ];
    for (i, f) in steps.iter().enumerate() {
        a.send(f.clone()).await;
        let ack = a.ack().await;
        assert_eq!(ack.reference.as_deref(), Some((i + 1).to_string().as_str()));
        assert_eq!(ack.seq, Some(i as u64 + 1), "{f}");
    }
    let agent_steps = [
        json!({"type":"agentRun","runId":"run1","status":"started"}),
        json!({"type":"tool_call","runId":"run1","toolCallId":"c1","name":"lookup","arguments":"{}"}),
        json!({"type":"tool_result","runId":"run1","toolCallId":"c1","result":"42"}),
        json!({"type":"tool_call","runId":"run1","toolCallId":"c2","name":"lookup"}),
        json!({"type":"tool_error","runId":"run1","toolCallId":"c2","error":"boom"}),
        json!({"type":"approval_request","runId":"run1","approvalId":"ap1","prompt":"Proceed?"}),
    ];
    for f in agent_steps {
        g.send(f.clone()).await;
        assert!(g.ack().await.seq.is_some(), "{f}");
    }
    a.send(
        json!({"type":"approval_decision","runId":"run1","approvalId":"ap1","decision":"approved"}),
    )
    .await;
    assert!(a.ack().await.seq.is_some());
    g.send(json!({"type":"agentRun","runId":"run1","status":"completed"}))
        .await;
    assert_eq!(g.ack().await.seq, Some(16));
    a.send(json!({"type":"agentRun","runId":"x","status":"started"}))
        .await;
    assert_eq!(a.error().await.code, ErrorCode::Forbidden);
    g.send(json!({"type":"agentTyping","isTyping":true})).await;
    assert!(
        matches!(a.until(|f| matches!(f, ServerFrame::AgentTyping(_))).await, ServerFrame::AgentTyping(t) if t.agent_id == "bot")
    );
    a.send(json!({"type":"typing","isTyping":true})).await;
    assert!(
        matches!(g.until(|f| matches!(f, ServerFrame::Typing(_))).await, ServerFrame::Typing(t) if t.user_id == "alice")
    );
    // In-band refresh.
    let fresh = s.token("alice", &["member"]).await;
    a.send(json!({"type":"auth","token":fresh,"ref":"rf"}))
        .await;
    let ServerFrame::TokenRefreshed(t) = a
        .until(|f| matches!(f, ServerFrame::TokenRefreshed(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(t.reference.as_deref(), Some("rf"));
    a.send(json!({"type":"auth","token":bot})).await;
    assert_eq!(a.error().await.code, ErrorCode::Forbidden);
    let kinds: Vec<String> = s
        .all_history(&alice, "frames")
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 16);
    assert_eq!(kinds[15], "agentRun");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_frames_and_nothing_breaks() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "bad", &["bob"]).await;
    let mut a = s.join("bad", &alice).await;
    let mut b = s.join("bad", &bob).await;
    let cases: Vec<(Message, ErrorCode)> = vec![
        (Message::Text("{nope".into()), ErrorCode::MalformedFrame),
        (Message::Text("42".into()), ErrorCode::MalformedFrame),
        (
            Message::Text(r#"{"type":"nope"}"#.into()),
            ErrorCode::UnknownType,
        ),
        (
            Message::Text(r#"{"content":"x"}"#.into()),
            ErrorCode::InvalidFrame,
        ),
        (
            Message::Text(r#"{"type":"message","content":[1]}"#.into()),
            ErrorCode::InvalidFrame,
        ),
        (
            Message::Text(r#"{"type":"message","content":" "}"#.into()),
            ErrorCode::InvalidContent,
        ),
        (
            Message::Text(
                json!({"type":"message","content":"x".repeat(70_000)})
                    .to_string()
                    .into(),
            ),
            ErrorCode::PayloadTooLarge,
        ),
        (
            Message::Binary(vec![1u8, 2, 3].into()),
            ErrorCode::BinaryNotSupported,
        ),
        (
            Message::Text(r#"{"type":"edit","messageId":99,"content":"x"}"#.into()),
            ErrorCode::NotFound,
        ),
        (
            Message::Text(r#"{"type":"resume","lastSeq":5}"#.into()),
            ErrorCode::ResyncRequired,
        ),
    ];
    for (m, code) in cases {
        a.send_raw(m).await;
        assert_eq!(a.error().await.code, code);
    }
    a.send(json!({"type":"message","content":"still alive"}))
        .await;
    assert_eq!(a.ack().await.seq, Some(1));
    let t = b.timeline(1).await;
    assert_eq!(t[0]["content"], "still alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_token_expiry_and_rate_limits() {
    let s = Srv::start(&[
        "--idle-timeout-ms",
        "400",
        "--rate-burst",
        "3",
        "--rate-per-second",
        "5",
    ])
    .await;
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "limits", &[]).await;
    let mut idle = s.ws("limits", &alice, "").await;
    let ServerFrame::Welcome(w) = idle.until(|f| matches!(f, ServerFrame::Welcome(_))).await else {
        unreachable!()
    };
    assert_eq!(w.idle_timeout_ms, 400);
    assert!(w.heartbeat_interval_ms <= 200);
    assert_eq!(w.limits.rate_burst, 3);
    assert_eq!(idle.close_code().await.0, 4000);
    // A token a moment from expiry (inside the 5 s leeway) is closed with 4005.
    let short = s.craft("alice", now_s() - 4, None);
    let mut exp = s.ws("limits", &short, "").await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let mut seen = Vec::new();
    let code = loop {
        assert!(tokio::time::Instant::now() < deadline, "no 4005 in time");
        exp.send(json!({"type":"ping"})).await; // keep the heartbeat happy
        match tokio::time::timeout(std::time::Duration::from_millis(100), exp.next()).await {
            Ok(Got::Close(c)) => break c,
            Ok(Got::Frame(f, _)) => seen.push(f),
            Err(_) => {}
        }
    };
    assert_eq!(code, 4005);
    assert!(seen
        .iter()
        .any(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::TokenExpired)));
    // Rate limit: the 4th frame in a burst is refused, then accepted after retryAfterMs.
    let mut r = s.join("limits", &alice).await;
    for i in 0..3 {
        r.send(json!({"type":"message","content":format!("m{i}")}))
            .await;
    }
    r.send(json!({"type":"message","content":"over"})).await;
    let mut acked = 0;
    let e = loop {
        match r
            .until(|f| matches!(f, ServerFrame::Error(_) | ServerFrame::Ack(_)))
            .await
        {
            ServerFrame::Error(e) => break e,
            _ => acked += 1,
        }
    };
    assert_eq!(e.code, ErrorCode::RateLimited);
    let wait = e.retry_after_ms.expect("retryAfterMs");
    assert!(wait > 0);
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    r.send(json!({"type":"message","content":"after"})).await;
    for _ in acked..3 {
        r.ack().await;
    }
    assert_eq!(
        r.ack().await.seq,
        Some(4),
        "the frame sent after retryAfterMs was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_has_no_ghosts_and_removal_closes_4003() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "pres", &["bob"]).await;
    let mut a = s.join("pres", &alice).await;
    let mut b = s.join("pres", &bob).await;
    assert!(
        matches!(a.until(|f| matches!(f, ServerFrame::MemberJoined(_))).await, ServerFrame::MemberJoined(m) if m.user_id == "bob")
    );
    b.stream.close(None).await.unwrap();
    assert!(
        matches!(a.until(|f| matches!(f, ServerFrame::MemberLeft(_))).await, ServerFrame::MemberLeft(m) if m.user_id == "bob")
    );
    let ServerFrame::Presence(p) = a.until(|f| matches!(f, ServerFrame::Presence(_))).await else {
        unreachable!()
    };
    assert_eq!(p.users, vec!["alice"]);
    let mut b = s.join("pres", &bob).await;
    let r = s
        .http
        .delete(s.url("/rooms/pres/members/bob"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.close_code().await.0, 4003);
    let mut b2 = s.ws("pres", &bob, "").await;
    assert_eq!(b2.close_code().await.0, 4003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_and_their_errors() {
    let s = Srv::start(&[]).await;
    let h = &s.http;
    // /auth/token
    let r = h
        .post(s.url("/auth/token"))
        .json(&json!({"userId":"a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .post(s.url("/auth/token"))
        .header("X-Fluxy-Api-Key", "nope")
        .json(&json!({"userId":"a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_api_key");
    let r = h
        .post(s.url("/auth/token"))
        .header("X-Fluxy-Api-Key", &s.dev.api_key)
        .json(&json!({"userId":"a","roles":["god"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .post(s.url("/auth/token"))
        .header("X-Fluxy-Api-Key", &s.dev.api_key)
        .json(&json!({"userId":"a","ttlSeconds":5}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["expiresIn"], 60);
    assert_eq!(body["claims"]["roles"], json!(["member"]));
    let alice = s.token("alice", &[]).await;
    let carol = s.token("carol", &[]).await;
    // Rooms.
    s.room(&alice, "r1", &["bob"]).await;
    let (st, body) = s
        .post(&alice, "/rooms", json!({"id":"r1","name":"again"}))
        .await;
    assert_eq!((st, body["error"].as_str()), (409, Some("conflict")));
    let (st, body) = s.post(&alice, "/rooms", json!({"name":"generated"})).await;
    assert_eq!(st, 201);
    assert!(body["room"]["id"].as_str().unwrap().starts_with("r_"));
    let (st, body) = s.get(&alice, "/rooms").await;
    assert_eq!((st, body["rooms"].as_array().unwrap().len()), (200, 2));
    let (st, body) = s.get(&alice, "/rooms/r1").await;
    assert_eq!(
        (st, body["room"]["createdBy"].as_str()),
        (200, Some("alice"))
    );
    let (st, body) = s.get(&carol, "/rooms/r1").await;
    assert_eq!((st, body["error"].as_str()), (403, Some("not_member")));
    let (st, body) = s.get(&alice, "/rooms/r1/members").await;
    assert_eq!(st, 200);
    assert_eq!(body["members"][0]["userId"], "alice");
    assert_eq!(body["members"][0]["role"], "owner");
    let bob = s.token("bob", &[]).await;
    let (st, _) = s
        .post(&bob, "/rooms/r1/members", json!({"userId":"carol"}))
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .post(
            &alice,
            "/rooms/r1/members",
            json!({"userId":"carol","role":"moderator"}),
        )
        .await;
    assert_eq!(st, 200);
    // POST /messages.
    let (st, body) = s
        .post(
            &carol,
            "/messages",
            json!({"roomId":"r1","content":"  hi  "}),
        )
        .await;
    assert_eq!((st, body["message"]["content"].as_str()), (201, Some("hi")));
    let (st, body) = s
        .post(&carol, "/messages", json!({"roomId":"r1","content":""}))
        .await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_content")));
    let (st, body) = s.post(&carol, "/messages", json!({"roomId":"r1"})).await;
    assert_eq!((st, body["field"].as_str()), (400, Some("content")));
    let r = h
        .post(s.url("/messages"))
        .bearer_auth(&carol)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .post(s.url("/messages"))
        .bearer_auth(&carol)
        .body(vec![b' '; 1_100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    for i in 0..9 {
        s.post(
            &carol,
            "/messages",
            json!({"roomId":"r1","content":format!("m{i}")}),
        )
        .await;
    }
    // History paging, both directions, never skipping or repeating.
    let (st, page) = s.get(&alice, "/rooms/r1/history?limit=4").await;
    assert_eq!(st, 200);
    let seqs = |p: &Value| {
        p["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&page), vec![7, 8, 9, 10]);
    let mut all = seqs(&page);
    let mut page = page;
    while page["hasMore"].as_bool().unwrap() {
        let c = page["nextCursor"].as_str().unwrap().to_owned();
        page = s
            .get(&alice, &format!("/rooms/r1/history?cursor={c}&limit=4"))
            .await
            .1;
        let mut s2 = seqs(&page);
        s2.extend(all);
        all = s2;
    }
    assert!(page.get("nextCursor").is_none());
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
    let (_, fwd) = s
        .get(&alice, "/rooms/r1/history?direction=forward&afterSeq=8")
        .await;
    assert_eq!(seqs(&fwd), vec![9, 10]);
    assert!(fwd["nextCursor"].is_string());
    for bad in ["limit=0", "limit=abc", "limit=1.5"] {
        let (st, body) = s.get(&alice, &format!("/rooms/r1/history?{bad}")).await;
        assert_eq!(
            (st, body["error"].as_str()),
            (400, Some("invalid_frame")),
            "{bad}"
        );
    }
    let (_, big) = s.get(&alice, "/rooms/r1/history?limit=100000").await;
    assert_eq!(seqs(&big).len(), 10);
    let c = fwd["nextCursor"].as_str().unwrap();
    // Change one character in the middle to a different one (replacing the last character
    // with a fixed one was a no-op whenever the cursor already ended with it: 1 run in 64).
    let mid = c.len() / 2;
    let swap = if &c[mid..=mid] == "A" { "B" } else { "A" };
    let forged = format!("{}{swap}{}", &c[..mid], &c[mid + 1..]);
    assert_ne!(forged, c);
    for bad in [forged.as_str(), "garbage", &c[..10]] {
        let (st, body) = s
            .get(&alice, &format!("/rooms/r1/history?cursor={bad}"))
            .await;
        assert_eq!(
            (st, body["error"].as_str()),
            (400, Some("invalid_cursor")),
            "{bad}"
        );
    }
    // Legacy route.
    s.post(
        &alice,
        "/rooms/r1/members",
        json!({"userId":"alice","role":"owner"}),
    )
    .await;
    let (st, leg) = s.get(&alice, "/api/messages?roomId=r1&limit=6").await;
    assert_eq!(st, 200);
    let ids: Vec<u64> = leg["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![10, 9, 8, 7, 6, 5]);
    let next = leg["nextCursor"].as_str().unwrap();
    let (_, leg2) = s
        .get(&alice, &format!("/api/messages?roomId=r1&before={next}"))
        .await;
    let ids2: Vec<u64> = leg2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids2, vec![4, 3, 2, 1]);
    assert_eq!(leg2["hasMore"], false);
    let (st, _) = s.get(&alice, "/api/messages").await;
    assert_eq!(st, 400);
    // Poll: waits, then returns the next commit; times out with the same position.
    let (st, p) = s
        .get(&alice, "/rooms/r1/poll?afterSeq=10&timeoutMs=50")
        .await;
    assert_eq!((st, p["events"].as_array().unwrap().len()), (200, 0));
    let cursor = p["nextCursor"].as_str().unwrap().to_owned();
    let waiter = {
        let (http, url, tok) = (
            s.http.clone(),
            s.url(&format!("/rooms/r1/poll?cursor={cursor}&timeoutMs=10000")),
            alice.clone(),
        );
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    s.post(&alice, "/messages", json!({"roomId":"r1","content":"wake"}))
        .await;
    let woke = waiter.await.unwrap();
    assert_eq!(woke["events"][0]["content"], "wake");
    // SSE content negotiation and the ready event.
    let r = h
        .get(s.url("/rooms/r1/stream"))
        .bearer_auth(&alice)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    let r = h
        .get(s.url("/rooms/r1/stream"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r;
    let first = tokio::time::timeout(common::WAIT, body.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(
        first.starts_with("event: ready\ndata: {\"currentSeq\":11}"),
        "{first}"
    );
    // Misc.
    let (st, hb) = s.get("", "/health").await;
    assert_eq!((st, hb["protocolVersion"].as_str()), (200, Some("1.0")));
    let (st, body) = s.get(&alice, "/nowhere").await;
    assert_eq!((st, body["error"].as_str()), (404, Some("not_found")));
    let r = h
        .put(s.url("/rooms"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let (st, body) = s.get(&alice, "/ws/room/r1").await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_frame")));
    let mut v2 = s.ws("r1", &alice, "&v=2").await;
    assert_eq!(v2.close_code().await.0, 4009);
    let mut nf = s.ws("missing", &alice, "").await;
    assert_eq!(nf.close_code().await.0, 4404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_with_1001() {
    let mut s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "bye", &[]).await;
    let mut ws = s.join("bye", &alice).await;
    let pid = s.child.as_ref().unwrap().id().expect("pid");
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (code, _) = ws.close_code().await;
    assert_eq!(code, 1001);
    let exit = tokio::time::timeout(common::WAIT, s.child.as_mut().unwrap().wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}
