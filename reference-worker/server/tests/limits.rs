//! Slow consumers, abuse limits, HTTP rate limits, role changes and idempotency retention,
//! over real sockets (and the storage layer for retention). No sleeps as synchronisation: every
//! wait is for a condition, with a deadline.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Got, Srv, Ws, WAIT};
use fluxy_protocol::{ErrorCode, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// Connect with a tiny socket receive buffer, so that a client that stops reading backs the
/// server up quickly.
async fn connect_small_buffer(s: &Srv, room: &str, token: &str) -> Ws {
    let addr: std::net::SocketAddr = s
        .dev
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("endpoint address");
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = sock.connect(addr).await.expect("tcp connect");
    let url = s.ws_url(&format!("/ws/room/{room}?token={token}&replay=off"));
    let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .expect("ws handshake");
    Ws { stream }
}

/// The seqs of timeline events in `frames`, checked gap-free from 1.
fn assert_gap_free_from_1(who: &str, seqs: &[u64]) {
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(
            *s,
            i as u64 + 1,
            "{who}: timeline out of order or with a gap"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_1011_and_the_others_get_everything_in_order() {
    let s = Srv::start(&[
        "--out-queue-frames",
        "1000",
        "--out-queue-bytes",
        "2097152",
        "--rate-burst",
        "1000000",
        "--rate-per-second",
        "1000000",
    ])
    .await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    let carol = s.token("carol", &[]).await;
    s.room(&alice, "slow", &["bob", "carol"]).await;
    let a = s.join("slow", &alice).await;
    let mut b = s.join("slow", &bob).await;
    let mut c = connect_small_buffer(&s, "slow", &carol).await;
    c.until(|f| matches!(f, ServerFrame::SubscriptionSucceeded(_)))
        .await;
    // From here on carol reads nothing.

    let carol_gone = Arc::new(AtomicBool::new(false));
    // Bob reads everything, and notices when carol leaves presence.
    let gone = carol_gone.clone();
    let bob_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut saw_carol = false;
        loop {
            match b.next().await {
                Got::Frame(ServerFrame::Presence(p), _) => {
                    let has = p.users.iter().any(|u| u == "carol");
                    saw_carol |= has;
                    if saw_carol && !has {
                        gone.store(true, Ordering::SeqCst);
                    }
                }
                Got::Frame(f, _) => {
                    if let Some(e) = f.into_timeline() {
                        seqs.push(e.seq());
                        if matches!(&e, fluxy_protocol::events::TimelineEvent::Message(m) if m.content == "end")
                        {
                            return seqs;
                        }
                    }
                }
                Got::Close(code) => panic!("bob was closed with {code}"),
            }
        }
    });
    // Alice sends from one half of her socket and reads with the other.
    let (mut a_tx, mut a_rx) = a.stream.split();
    // Alice's acks so far: the sender waits for each batch to be acknowledged (the flow control
    // of a healthy client), so healthy queues never hold more than one batch.
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0usize);
    let alice_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut acks = 0usize;
        loop {
            let m = tokio::time::timeout(WAIT, a_rx.next())
                .await
                .expect("alice: a frame within the deadline");
            let Some(Ok(Message::Text(t))) = m else {
                panic!("alice's socket ended: {m:?}");
            };
            let f = ServerFrame::decode(&t).expect("server frame");
            if matches!(f, ServerFrame::Ack(_)) {
                acks += 1;
                let _ = acked_tx.send(acks);
            }
            if let Some(e) = f.into_timeline() {
                seqs.push(e.seq());
                if matches!(&e, fluxy_protocol::events::TimelineEvent::Message(m) if m.content == "end")
                {
                    return (seqs, acks);
                }
            }
        }
    });
    let body = "x".repeat(3900);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut sent = 0usize;
    while !carol_gone.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol was never dropped after {sent} messages"
        );
        assert!(sent < 50_000, "carol was never dropped");
        for _ in 0..50 {
            a_tx.feed(Message::Text(
                json!({"type":"message","content":body}).to_string().into(),
            ))
            .await
            .unwrap();
            sent += 1;
        }
        a_tx.flush().await.unwrap();
        tokio::time::timeout(WAIT, acked_rx.wait_for(|n| *n >= sent))
            .await
            .expect("the batch acknowledged in time")
            .expect("alice's reader alive");
    }
    // Carol now reads again: a gap-free prefix of the timeline, then close 1011 (reconnect).
    let carol_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            match c.next().await {
                Got::Frame(f, _) => {
                    if let Some(e) = f.into_timeline() {
                        seqs.push(e.seq());
                    }
                }
                Got::Close(code) => return (code, seqs),
            }
        }
    });
    a_tx.send(Message::Text(
        json!({"type":"message","content":"end"}).to_string().into(),
    ))
    .await
    .unwrap();
    sent += 1;
    let bob_seqs = bob_reader.await.expect("bob's reader");
    let (alice_seqs, alice_acks) = alice_reader.await.expect("alice's reader");
    assert_eq!(bob_seqs.len(), sent, "bob got every event");
    assert_gap_free_from_1("bob", &bob_seqs);
    assert_eq!(alice_seqs, bob_seqs, "alice got every event, in order");
    assert_eq!(alice_acks, sent, "alice got every ack");
    let (code, carol_seqs) = carol_reader.await.expect("carol's reader");
    assert_eq!(
        code, 1011,
        "slow consumer closed with internal_error (reconnect)"
    );
    assert_eq!(
        fluxy_protocol::CloseCode::from_code(code).map(|c| c.action()),
        Some(fluxy_protocol::CloseAction::Reconnect)
    );
    assert!(carol_seqs.len() < sent, "carol was cut off before the end");
    assert_gap_free_from_1("carol", &carol_seqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frame_flood_closes_4010() {
    let s = Srv::start(&["--max-invalid-frames", "5"]).await;
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "flood", &[]).await;
    let mut a = s.join("flood", &alice).await;
    for _ in 0..4 {
        a.send_raw(Message::Text("nope".into())).await;
    }
    a.send(json!({"type":"ping","ts":7})).await;
    a.until(|f| matches!(f, ServerFrame::Pong(p) if p.echo == Some(7)))
        .await;
    for _ in 0..5 {
        a.send_raw(Message::Text("nope".into())).await;
    }
    let (code, seen) = a.close_code().await;
    assert_eq!(code, 4010);
    let errors = seen
        .iter()
        .filter(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::MalformedFrame))
        .count();
    assert_eq!(
        errors, 5,
        "the 5 frames after the ping were answered, then closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_abuse_closes_4008() {
    let s = Srv::start(&[
        "--rate-burst",
        "2",
        "--rate-per-second",
        "1",
        "--max-rate-rejects",
        "10",
    ])
    .await;
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "abuse", &[]).await;
    let mut a = s.join("abuse", &alice).await;
    for i in 0..20 {
        a.send(json!({"type":"read","messageId":1,"ref":format!("r{i}")}))
            .await;
    }
    let (code, seen) = a.close_code().await;
    assert_eq!(code, 4008);
    let limited = seen
        .iter()
        .filter(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::RateLimited))
        .count();
    assert_eq!(limited, 10);
}

async fn post_raw(s: &Srv, token: &str, body: Value) -> reqwest::Response {
    s.http
        .post(s.url("/messages"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn expect_429(r: reqwest::Response) {
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(v["retryable"], true);
    assert!(v["retryAfterMs"].as_u64().unwrap() > 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rate_limits_answer_429_with_retry_after() {
    let s = Srv::start(&[
        "--http-post-burst",
        "3",
        "--http-post-per-second",
        "1",
        "--http-token-burst",
        "4",
        "--http-token-per-second",
        "1",
    ])
    .await;
    let alice = s.token("alice", &[]).await; // token 1 of 4
    let bob = s.token("bob", &[]).await; // token 2 of 4
    s.room(&alice, "http", &["bob"]).await;
    for i in 0..3 {
        let r = post_raw(
            &s,
            &alice,
            json!({"roomId":"http","content":format!("m{i}")}),
        )
        .await;
        assert_eq!(r.status(), 201);
    }
    expect_429(post_raw(&s, &alice, json!({"roomId":"http","content":"over"})).await).await;
    // The bucket is per user: bob is unaffected.
    let r = post_raw(&s, &bob, json!({"roomId":"http","content":"bob"})).await;
    assert_eq!(r.status(), 201);
    // Nothing was stored for the refused request.
    let (_, page) = s.get(&alice, "/rooms/http/history?direction=forward").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 4);
    // POST /auth/token, per API key.
    s.token("carol", &[]).await; // 3 of 4
    s.token("dave", &[]).await; // 4 of 4
    let r = s
        .http
        .post(s.url("/auth/token"))
        .header("X-Fluxy-Api-Key", &s.dev.api_key)
        .json(&json!({"userId":"eve"}))
        .send()
        .await
        .unwrap();
    expect_429(r).await;
    // The other tenant's key has its own bucket.
    s.token_in(true, "eve", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_change_applies_to_open_connections() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "roles", &["bob"]).await;
    let mut a = s.join("roles", &alice).await;
    let mut b = s.join("roles", &bob).await;
    a.send(json!({"type":"message","content":"one"})).await;
    let id1 = a.ack().await.id.expect("id");
    a.send(json!({"type":"message","content":"two"})).await;
    let id2 = a.ack().await.id.expect("id");
    b.send(json!({"type":"delete","messageId":id1,"ref":"d1"}))
        .await;
    let e = b.error().await;
    assert_eq!(e.code, ErrorCode::Forbidden);
    let (st, _) = s
        .post(
            &alice,
            "/rooms/roles/members",
            json!({"userId":"bob","role":"moderator"}),
        )
        .await;
    assert_eq!(st, 200);
    // Same connection, no reconnect: bob may now moderate.
    b.send(json!({"type":"delete","messageId":id1,"ref":"d2"}))
        .await;
    let ack = b.ack().await;
    assert_eq!(ack.reference.as_deref(), Some("d2"));
    assert!(ack.seq.is_some());
    // Demoted again: the privilege goes away at once.
    let (st, _) = s
        .post(
            &alice,
            "/rooms/roles/members",
            json!({"userId":"bob","role":"member"}),
        )
        .await;
    assert_eq!(st, 200);
    b.send(json!({"type":"delete","messageId":id2,"ref":"d3"}))
        .await;
    assert_eq!(b.error().await.code, ErrorCode::Forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_idempotency_keys_are_pruned_from_storage_on_load() {
    use fluxy_room::sql;
    use std::sync::Arc as A;
    let dir = std::env::temp_dir().join(format!("fluxy-idem-prune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = fluxy_server::db::Db::open(Some(&dir.join("t.db")), false).unwrap();
    let now: u64 = 1_900_000_000_000;
    let day = fluxy_room::IDEMPOTENCY_TTL_MS;
    let (t, r): (A<str>, A<str>) = (A::from("t1"), A::from("r1"));
    let mut stmts = Vec::new();
    for (i, created) in [(1u64, now - day - 5), (2, now - day), (3, now - day + 1)] {
        stmts.push(sql::insert_event(
            &t,
            &r,
            i,
            "read",
            "u",
            created,
            &A::from("{}"),
        ));
        stmts.push(sql::insert_idempotency(
            &t,
            &r,
            "u",
            &format!("key-{i:08}"),
            i,
            None,
            created,
        ));
    }
    // Another room's old key is not this room's business.
    let other: A<str> = A::from("r2");
    stmts.push(sql::insert_idempotency(
        &t,
        &other,
        "u",
        "key-other1",
        1,
        None,
        now - 2 * day,
    ));
    db.persist(stmts).await.unwrap();
    let count = |db: &fluxy_server::db::Db| {
        let db = db.clone();
        async move {
            db.read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM idempotency WHERE room_id = 'r1'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(count(&db).await, 3);
    let loaded = db
        .load_room("t1".into(), "r1".into(), 100, now)
        .await
        .unwrap();
    assert!(
        loaded.idempotency.is_empty(),
        "wake-up reads no idempotency key (they are looked up on demand)"
    );
    // The lookup honours the 24 h: only the key younger than that is found.
    for (i, want) in [(1u64, false), (2, false), (3, true)] {
        let lookup = fluxy_room::Lookup::Idempotency {
            user_id: "u".into(),
            client_message_id: format!("key-{i:08}"),
        };
        let stmt = lookup.statement(&t, &r, now);
        let found = db.fetch(lookup, stmt).await.unwrap();
        assert_eq!(
            matches!(found, fluxy_room::Found::Idempotency(Some(ref k)) if k.seq == i),
            want,
            "key {i}: {found:?}"
        );
    }
    assert_eq!(count(&db).await, 1, "keys 24 h old or older were deleted");
    // The commit-time statement prunes the same way (bounded by its limit).
    db.persist(vec![sql::prune_idempotency(&t, &other, now, 10)])
        .await
        .unwrap();
    let left: i64 = db
        .read(|c| c.query_row("SELECT COUNT(*) FROM idempotency", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(left, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_is_the_first_frame_even_when_connections_open_together() {
    let s = Srv::start(&[]).await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "churn", &["bob"]).await;
    let _first = s.join("churn", &alice).await;
    for round in 0..5 {
        let url_a = s.ws_url(&format!("/ws/room/churn?token={alice}"));
        let url_b = s.ws_url(&format!("/ws/room/churn?token={bob}"));
        let conns = futures_util::future::join_all((0..6).map(|i| {
            tokio_tungstenite::connect_async(if i % 2 == 0 {
                url_a.clone()
            } else {
                url_b.clone()
            })
        }))
        .await;
        for c in conns {
            let (stream, _) = c.expect("connect");
            let mut ws = Ws { stream };
            match ws.next().await {
                Got::Frame(ServerFrame::Welcome(_), _) => {}
                Got::Frame(_, raw) => panic!("round {round}: first frame {raw}"),
                Got::Close(code) => panic!("round {round}: closed {code}"),
            }
        }
    }
}

/// Migration 0002 backfills `agent_runs` / `agent_items` from the events of rooms written
/// before it (once), so their open runs load at wake-up and their closed runs are found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_backfills_agent_runs_of_older_rooms() {
    use fluxy_room::sql;
    use std::sync::Arc as A;
    let dir = std::env::temp_dir().join(format!("fluxy-backfill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.db");
    let db = fluxy_server::db::Db::open(Some(&path), false).unwrap();
    let (t, r): (A<str>, A<str>) = (A::from("t1"), A::from("r1"));
    // Rooms written before the migration: events only, and no marker.
    let bodies = [
        (
            "agentRun",
            r#"{"type":"agentRun","seq":1,"roomId":"r1","agentId":"bot","runId":"open","status":"started","createdAt":"2026-01-01T00:00:00.001Z"}"#,
        ),
        (
            "tool_call",
            r#"{"type":"tool_call","seq":2,"roomId":"r1","agentId":"bot","runId":"open","toolCallId":"c1","name":"n","arguments":"{}","createdAt":"2026-01-01T00:00:00.002Z"}"#,
        ),
        (
            "agentRun",
            r#"{"type":"agentRun","seq":3,"roomId":"r1","agentId":"bot","runId":"done","status":"started","createdAt":"2026-01-01T00:00:00.003Z"}"#,
        ),
        (
            "agentRun",
            r#"{"type":"agentRun","seq":4,"roomId":"r1","agentId":"bot","runId":"done","status":"completed","createdAt":"2026-01-01T00:00:00.004Z"}"#,
        ),
        (
            "approval_request",
            r#"{"type":"approval_request","seq":5,"roomId":"r1","agentId":"bot","runId":"open","approvalId":"a1","prompt":"ok?","createdAt":"2026-01-01T00:00:00.005Z"}"#,
        ),
        (
            "approval_decision",
            r#"{"type":"approval_decision","seq":6,"roomId":"r1","userId":"alice","runId":"open","approvalId":"a1","decision":"approved","createdAt":"2026-01-01T00:00:00.006Z"}"#,
        ),
    ];
    let mut stmts: Vec<sql::Stmt> = bodies
        .iter()
        .enumerate()
        .map(|(i, (kind, body))| {
            sql::insert_event(&t, &r, i as u64 + 1, kind, "bot", 1, &A::from(*body))
        })
        .collect();
    stmts.push(sql::Stmt {
        sql: "DELETE FROM server_meta WHERE key = 'backfill:0002_wake'",
        params: Vec::new(),
    });
    db.persist(stmts).await.unwrap();
    drop(db);
    // The next start applies the migrations again: the backfill runs once.
    let db = fluxy_server::db::Db::open(Some(&path), false).unwrap();
    let loaded = db
        .load_room("t1".into(), "r1".into(), 100, 1_900_000_000_000)
        .await
        .unwrap();
    assert_eq!(
        loaded.runs,
        vec![fluxy_room::RunRow {
            agent_id: "bot".into(),
            run_id: "open".into(),
            terminal: false,
            tool_calls: vec![("c1".into(), true)],
            approvals: vec![("a1".into(), false)],
        }],
        "only the open run loads, with its items"
    );
    let lookup = fluxy_room::Lookup::Run {
        agent_id: "bot".into(),
        run_id: "done".into(),
    };
    let stmt = lookup.statement(&t, &r, 0);
    let found = db.fetch(lookup, stmt).await.unwrap();
    assert!(
        matches!(found, fluxy_room::Found::Run(Some(ref x)) if x.terminal),
        "{found:?}"
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
