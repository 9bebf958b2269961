//! Room lifecycle and bounded queues of the native shell, over real sockets and real SQLite
//! (in memory, in this process, so that the room table can be observed): idle rooms unload and
//! reload with nothing lost, the unload/reload race loses no request, a stalled SSE listener
//! is dropped and resumes with `Last-Event-ID`, and a WebSocket burst larger than the room
//! inbox is fully acknowledged. No sleeps as synchronisation: every wait is for a condition,
//! with a deadline.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Got, Srv, Ws, WAIT};
use fluxy_protocol::ServerFrame;
use fluxy_server::ServerConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A configuration with the rate limits out of the way.
fn config() -> ServerConfig {
    ServerConfig {
        rate_burst: 1_000_000,
        rate_per_second: 1_000_000,
        http_post_burst: 0,
        ..ServerConfig::default()
    }
}

/// Wait (with a deadline) until `cond` holds, re-checking every few ms.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Close a socket and wait for the server's close reply.
async fn leave(mut ws: Ws) {
    ws.stream.close(None).await.expect("send close");
    loop {
        match tokio::time::timeout(WAIT, ws.stream.next())
            .await
            .expect("close reply in time")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    }
}

async fn post(s: &Srv, token: &str, room: &str, content: &str, cmid: Option<&str>) -> (u16, Value) {
    let mut body = json!({"roomId": room, "content": content});
    if let Some(c) = cmid {
        body["clientMessageId"] = json!(c);
    }
    s.post(token, "/messages", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_room_unloads_and_reloads_with_seq_history_idempotency_and_runs_intact() {
    let s = Srv::embedded(ServerConfig {
        room_idle_unload_ms: 50,
        ..config()
    })
    .await;
    let server = s.embedded_server();
    let alice = s.token("alice", &[]).await;
    let bot = s.token("bot", &["agent"]).await;
    s.room(&alice, "idle", &["bot"]).await;

    let mut a = s.join("idle", &alice).await;
    let mut g = s.join("idle", &bot).await;
    let mut seqs = Vec::new();
    for i in 1..=3 {
        a.send(json!({"type":"message","content":format!("m{i}"),"clientMessageId":format!("cmid-{i:05}")}))
            .await;
        seqs.push(a.ack().await.seq.expect("seq"));
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    a.send(json!({"type":"reaction","messageId":1,"emoji":"👍"}))
        .await;
    assert_eq!(a.ack().await.seq, Some(4));
    g.send(json!({"type":"agentRun","runId":"run1","status":"started"}))
        .await;
    assert_eq!(g.ack().await.seq, Some(5));
    assert!(server.loaded_rooms() >= 1);
    leave(a).await;
    leave(g).await;

    // Unloaded: out of the table, task gone.
    eventually("the idle room unloaded", || {
        server.loaded_rooms() == 0 && server.room_tasks() == 0
    })
    .await;

    // A new connection reloads it from storage: seq continues.
    let mut a = s.ws("idle", &alice, "&replay=off").await;
    let ServerFrame::Welcome(w) = a.until(|f| matches!(f, ServerFrame::Welcome(_))).await else {
        unreachable!()
    };
    assert_eq!(
        w.current_seq, 5,
        "welcome.currentSeq continues after a reload"
    );
    a.until(|f| matches!(f, ServerFrame::SubscriptionSucceeded(_)))
        .await;
    assert_eq!(server.loaded_rooms(), 1);
    // A resend of an earlier clientMessageId is a duplicate with the original seq.
    a.send(json!({"type":"message","content":"m2","clientMessageId":"cmid-00002"}))
        .await;
    let ack = a.ack().await;
    assert!(ack.duplicate, "resend after reload is a duplicate");
    assert_eq!(ack.seq, Some(2));
    // The reaction is remembered: adding it again changes nothing (no new seq).
    a.send(json!({"type":"reaction","messageId":1,"emoji":"👍"}))
        .await;
    assert_eq!(a.ack().await.seq, None, "the reaction survived the reload");
    // The agent run is remembered: a tool call in it is accepted.
    let mut g = s.join("idle", &bot).await;
    g.send(json!({"type":"tool_call","runId":"run1","toolCallId":"c1","name":"lookup","arguments":"{}"}))
        .await;
    assert_eq!(
        g.ack().await.seq,
        Some(6),
        "the agent run survived the reload"
    );
    a.send(json!({"type":"message","content":"m4","clientMessageId":"cmid-00004"}))
        .await;
    assert_eq!(a.ack().await.seq, Some(7));
    leave(a).await;
    leave(g).await;
    eventually("the room unloaded again", || {
        server.loaded_rooms() == 0 && server.room_tasks() == 0
    })
    .await;

    // Over HTTP as well (the POST reloads the room): duplicate with the original seq.
    let (st, body) = post(&s, &alice, "idle", "m1", Some("cmid-00001")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["duplicate"], json!(true));
    assert_eq!(body["message"]["seq"], json!(1));

    let history = s.all_history(&alice, "idle").await;
    let got: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(got, (1..=7).collect::<Vec<u64>>(), "history intact");
    assert_eq!(history[0]["content"], json!("m1"));
    assert_eq!(history[6]["content"], json!("m4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_reload_race_loses_no_post() {
    let s = Srv::embedded(ServerConfig {
        room_idle_unload_ms: 1,
        ..config()
    })
    .await;
    let server = s.embedded_server();
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "race", &[]).await;

    // Sequential: the room is idle between most of these, so it unloads and reloads.
    let sequential = 150u64;
    let mut acked = BTreeSet::new();
    for i in 0..sequential {
        let (st, body) = post(
            &s,
            &alice,
            "race",
            &format!("s{i}"),
            Some(&format!("seq-{i:05}")),
        )
        .await;
        assert_eq!(st, 201, "{body}");
        assert!(acked.insert(body["message"]["seq"].as_u64().expect("seq")));
        if i % 10 == 9 {
            // Now and then, let it unload for sure; the others race with the unload timer.
            eventually("the room unloaded between posts", || {
                server.loaded_rooms() == 0
            })
            .await;
        }
    }
    let loads_after_sequential = server.room_loads();
    // Concurrent: several clients at once, each also resending one earlier key.
    let clients = 6u64;
    let each = 60u64;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = s.http.clone();
        let url = s.url("/messages");
        let token = alice.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..each {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"roomId":"race","content":format!("c{c}-{i}"),"clientMessageId":format!("c{c}-{i:05}")}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.expect("json");
                seqs.push(v["message"]["seq"].as_u64().expect("seq"));
            }
            // A resend of this client's first key: a duplicate with the original seq.
            let r = http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"roomId":"race","content":format!("c{c}-0"),"clientMessageId":format!("c{c}-{:05}", 0)}))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.expect("json");
            assert_eq!(v["duplicate"], json!(true));
            assert_eq!(v["message"]["seq"].as_u64(), Some(seqs[0]));
            seqs
        }));
    }
    for t in tasks {
        for seq in t.await.expect("client task") {
            assert!(acked.insert(seq), "seq {seq} acked twice");
        }
    }
    let n = sequential + clients * each;
    assert_eq!(
        acked.iter().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "acked seqs are 1..N without a gap"
    );
    let history = s.all_history(&alice, "race").await;
    let seqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "every message in history"
    );
    let contents: BTreeSet<String> = history
        .iter()
        .map(|e| e["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents.len() as u64, n, "every content stored once");
    assert!(
        loads_after_sequential > sequential / 10,
        "the room unloaded and reloaded during the sequential posts ({loads_after_sequential} loads)"
    );
    eprintln!("race: {n} posts, {} room loads", server.room_loads());
    eventually("the room unloaded at the end", || {
        server.loaded_rooms() == 0 && server.room_tasks() == 0
    })
    .await;
}

/// An HTTP/1.1 response read by hand from a socket with a small receive buffer.
struct RawSse {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawSse {
    /// Open `GET path` with a tiny socket receive buffer and read the response head.
    async fn open(s: &Srv, path: &str, token: &str) -> RawSse {
        let addr: std::net::SocketAddr = s
            .dev
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("endpoint address");
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut tcp = sock.connect(addr).await.expect("tcp connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("request");
        let mut raw = RawSse {
            tcp,
            buf: Vec::new(),
        };
        let head = raw.until(b"\r\n\r\n").await.expect("response head");
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        raw
    }

    /// Bytes up to and including `pat`; `None` at end of stream.
    async fn until(&mut self, pat: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(pat.len()).position(|w| w == pat) {
                return Some(self.buf.drain(..i + pat.len()).collect());
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("data within the deadline")
                .expect("read");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The decoded body until the final chunk (the end of the stream).
    async fn body_to_end(&mut self) -> String {
        let mut body = Vec::new();
        loop {
            let line = self.until(b"\r\n").await.expect("chunk size");
            let size = usize::from_str_radix(
                std::str::from_utf8(&line[..line.len() - 2])
                    .expect("utf-8")
                    .trim(),
                16,
            )
            .expect("hex chunk size");
            while self.buf.len() < size + 2 {
                let mut chunk = [0u8; 8192];
                let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                    .await
                    .expect("data within the deadline")
                    .expect("read");
                assert!(n > 0, "connection closed inside a chunk");
                self.buf.extend_from_slice(&chunk[..n]);
            }
            let data: Vec<u8> = self.buf.drain(..size + 2).collect();
            if size == 0 {
                return String::from_utf8(body).expect("utf-8 body");
            }
            body.extend_from_slice(&data[..size]);
        }
    }
}

/// The `id:` of every event in an SSE text, in order.
fn sse_ids(text: &str) -> Vec<u64> {
    text.split("\n\n")
        .filter_map(|block| {
            block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(|v| v.parse::<u64>().expect("numeric id"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sse_listener_is_dropped_and_resumes_with_last_event_id() {
    let s = Srv::embedded(ServerConfig {
        sse_queue: 8,
        out_queue_frames: 1 << 20,
        out_queue_bytes: 1 << 30,
        ..config()
    })
    .await;
    let server = s.embedded_server();
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "sse", &["bob"]).await;

    // The stalled listener: reads the head and the `ready` event, then nothing.
    let mut stalled = RawSse::open(&s, "/rooms/sse/stream", &bob).await;
    // A healthy listener that reads everything.
    let healthy = s
        .http
        .get(s.url("/rooms/sse/stream"))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("healthy SSE");
    assert_eq!(healthy.status(), 200);
    // It reads all along (told the final count when known).
    let (target_tx, mut target_rx) = tokio::sync::watch::channel(u64::MAX);
    let healthy_reader = tokio::spawn(async move {
        let mut healthy = healthy;
        let mut text = String::new();
        loop {
            let want = *target_rx.borrow_and_update();
            if sse_ids(&text).len() as u64 >= want {
                return sse_ids(&text);
            }
            tokio::select! {
                chunk = healthy.chunk() => {
                    let chunk = chunk.expect("chunk").expect("healthy stream open");
                    text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
                }
                changed = target_rx.changed() => changed.expect("target"),
            }
        }
    });
    let mut reader = s.join("sse", &bob).await;
    let sender = s.join("sse", &alice).await;
    let (mut tx, mut rx) = sender.stream.split();

    // Send big messages until the stalled listener has been dropped, then a few more.
    let content = "x".repeat(3900);
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut extra = None;
    // A sliding window smaller than the listener queue: no commit releases more events at
    // once than a listener that reads can take.
    let window = 4;
    while extra.is_none_or(|e| acked < e) {
        if extra.is_none_or(|e| sent < e) && sent < acked + window {
            while sent < acked + window {
                sent += 1;
                tx.feed(Message::Text(
                    json!({"type":"message","content":format!("{sent} {content}")})
                        .to_string()
                        .into(),
                ))
                .await
                .expect("feed");
            }
            tx.flush().await.expect("flush");
        }
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("ack within the deadline")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            if let Ok(ServerFrame::Ack(a)) = ServerFrame::decode(&t) {
                acked += 1;
                assert_eq!(a.seq, Some(acked), "acks in order");
            }
        }
        if extra.is_none() && server.sse_listeners_dropped() >= 1 {
            extra = Some(sent + 40);
        }
        assert!(sent < 20_000, "the stalled SSE listener was never dropped");
    }
    let n = sent;
    assert_eq!(
        server.sse_listeners_dropped(),
        1,
        "only the stalled listener was dropped"
    );

    // The room and the other clients carried on: the WebSocket reader got 1..N in order.
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < n {
        match reader.next().await {
            Got::Frame(f, _) => {
                if let Some(e) = f.into_timeline() {
                    seqs.push(e.seq());
                }
            }
            Got::Close(c) => panic!("reader closed with {c}"),
        }
    }
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    // The healthy SSE listener, reading all along, got 1..N too (and was not dropped).
    target_tx.send(n).expect("healthy reader alive");
    let ids = tokio::time::timeout(WAIT, healthy_reader)
        .await
        .expect("healthy SSE complete in time")
        .expect("healthy reader");
    assert_eq!(ids, (1..=n).collect::<Vec<_>>());

    // The stalled stream, read now: a gap-free prefix 1..k, then its end.
    let body = stalled.body_to_end().await;
    assert!(body.starts_with("event: ready\n"), "ready first");
    let got = sse_ids(&body);
    let k = got.len() as u64;
    assert!(k < n, "the stalled listener was cut off before the end");
    assert_eq!(got, (1..=k).collect::<Vec<_>>(), "gap-free up to the cut");

    // Reconnecting with Last-Event-ID: k yields every event after it.
    let mut resumed = s
        .http
        .get(s.url("/rooms/sse/stream"))
        .bearer_auth(&bob)
        .header("Last-Event-ID", k.to_string())
        .send()
        .await
        .expect("resume SSE");
    assert_eq!(resumed.status(), 200);
    let mut text = String::new();
    while sse_ids(&text).len() < (n - k) as usize {
        let chunk = tokio::time::timeout(WAIT, resumed.chunk())
            .await
            .expect("resumed SSE data in time")
            .expect("chunk")
            .expect("stream open");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    assert_eq!(sse_ids(&text), (k + 1..=n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_burst_larger_than_the_room_inbox_is_fully_acked() {
    let s = Srv::embedded(ServerConfig {
        room_inbox: 8,
        out_queue_frames: 1 << 20,
        out_queue_bytes: 1 << 30,
        ..config()
    })
    .await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "burst", &["bob"]).await;
    let mut reader = s.join("burst", &bob).await;
    let ws = s.join("burst", &alice).await;
    let (mut tx, mut rx) = ws.stream.split();
    let n = 3000u64;
    // Pipelined: every frame is written before any ack is read.
    let writer = tokio::spawn(async move {
        for i in 1..=n {
            tx.feed(Message::Text(
                json!({"type":"message","content":format!("b{i}"),"ref":i.to_string()})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("feed");
        }
        tx.flush().await.expect("flush");
        tx
    });
    let mut acks = Vec::new();
    while (acks.len() as u64) < n {
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("ack within the deadline")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            match ServerFrame::decode(&t).expect("server frame") {
                ServerFrame::Ack(a) => acks.push((a.reference, a.seq)),
                ServerFrame::Error(e) => panic!("error frame: {e:?}"),
                _ => {}
            }
        }
    }
    let _tx = writer.await.expect("writer");
    let expected: Vec<(Option<String>, Option<u64>)> =
        (1..=n).map(|i| (Some(i.to_string()), Some(i))).collect();
    assert_eq!(acks, expected, "every frame acked, in order, none lost");
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < n {
        match reader.next().await {
            Got::Frame(f, _) => {
                if let Some(e) = f.into_timeline() {
                    seqs.push(e.seq());
                }
            }
            Got::Close(c) => panic!("reader closed with {c}"),
        }
    }
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(s.all_history(&alice, "burst").await.len() as u64, n);
}

/// Wait (with a deadline) until `cond` holds and return how long that took.
async fn timed(what: &str, cond: impl FnMut() -> bool) -> Duration {
    let t0 = tokio::time::Instant::now();
    eventually(what, cond).await;
    t0.elapsed()
}

/// How soon a closed SSE connection must be released: well under the 15 s keep-alive ping,
/// whose failed write was until now the only way the server noticed.
const SSE_RELEASE_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_listener_whose_client_closed_is_released_promptly() {
    let s = Srv::embedded(config()).await;
    let server = s.embedded_server();
    let alice = s.token("alice", &[]).await;
    s.room(&alice, "gone", &[]).await;

    // Two listeners over real sockets, each past its `ready` event (registered in the room).
    let mut first = RawSse::open(&s, "/rooms/gone/stream", &alice).await;
    first.until(b"event: ready").await.expect("ready (first)");
    let mut second = RawSse::open(&s, "/rooms/gone/stream", &alice).await;
    second.until(b"event: ready").await.expect("ready (second)");
    eventually("both listeners are registered", || {
        server.sse_listeners() == 2
    })
    .await;

    // The first client goes away. Nothing is broadcast meanwhile and the next ping is 15 s
    // off: only noticing the closed socket can release it.
    drop(first);
    let took = timed("the closed listener is released", || {
        server.sse_listeners() == 1
    })
    .await;
    eprintln!("SSE listener released {took:?} after its socket closed");
    assert!(
        took < SSE_RELEASE_BOUND,
        "released after {took:?}, want under {SSE_RELEASE_BOUND:?}"
    );

    // The other listener is untouched and still live.
    let (st, body) = post(&s, &alice, "gone", "still here", None).await;
    assert_eq!(st, 201, "{body}");
    second
        .until(b"still here")
        .await
        .expect("the remaining listener gets live events");
    assert_eq!(server.sse_listeners(), 1);

    drop(second);
    let took = timed("the last listener is released", || {
        server.sse_listeners() == 0
    })
    .await;
    eprintln!("last SSE listener released {took:?} after its socket closed");
    assert!(took < SSE_RELEASE_BOUND, "released after {took:?}");
}

/// The next ack or error (whichever comes first), as (ref, Ok(seq) | Err(code)).
async fn answer(
    ws: &mut Ws,
) -> (
    Option<String>,
    Result<Option<u64>, fluxy_protocol::ErrorCode>,
) {
    match ws
        .until(|f| matches!(f, ServerFrame::Ack(_) | ServerFrame::Error(_)))
        .await
    {
        ServerFrame::Ack(a) => (a.reference, Ok(a.seq)),
        ServerFrame::Error(e) => (e.reference, Err(e.code)),
        _ => unreachable!(),
    }
}

/// Bounded wake-up (issue 13): a reloaded room reads only its newest events, MAX(seq), its
/// type, its open runs and its streaming messages; edits, deletes, reactions, reads and
/// resent idempotency keys on older state are answered by looking the state up on demand,
/// exactly as before the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_room_looks_old_state_up_on_demand() {
    let s = Srv::embedded(ServerConfig {
        room_idle_unload_ms: 50,
        ..config()
    })
    .await;
    let server = s.embedded_server();
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    let bot = s.token("bot", &["agent"]).await;
    s.room(&alice, "wake", &["bob", "bot"]).await;

    let mut a = s.join("wake", &alice).await;
    let mut b = s.join("wake", &bob).await;
    let mut g = s.join("wake", &bot).await;
    for i in 1..=4 {
        a.send(json!({"type":"message","content":format!("m{i}"),"clientMessageId":format!("old-{i:05}")}))
            .await;
        assert_eq!(a.ack().await.seq, Some(i));
    }
    b.send(json!({"type":"reaction","messageId":1,"emoji":"👍"}))
        .await;
    assert_eq!(b.ack().await.seq, Some(5));
    a.send(json!({"type":"read","messageId":2})).await;
    assert_eq!(a.ack().await.seq, Some(6));
    g.send(json!({"type":"agentRun","runId":"done","status":"started"}))
        .await;
    assert_eq!(g.ack().await.seq, Some(7));
    g.send(json!({"type":"agentRun","runId":"done","status":"completed"}))
        .await;
    assert_eq!(g.ack().await.seq, Some(8));
    g.send(json!({"type":"agentRun","runId":"open","status":"started"}))
        .await;
    assert_eq!(g.ack().await.seq, Some(9));
    for ws in [a, b, g] {
        leave(ws).await;
    }
    eventually("the room unloaded", || {
        server.loaded_rooms() == 0 && server.room_tasks() == 0
    })
    .await;

    let before = server.room_lookups();
    let mut a = s.ws("wake", &alice, "&replay=off").await;
    a.until(|f| matches!(f, ServerFrame::SubscriptionSucceeded(_)))
        .await;
    assert_eq!(
        server.room_lookups(),
        before,
        "wake-up itself looks nothing up"
    );

    // Pipelined, without waiting: an edit of an old message (a lookup), a new message, a
    // stale edit, a delete of an old message, a second delete, an edit of an id that is not a
    // message, a resent old key. Answered in frame order, with the right outcome.
    let frames = [
        json!({"type":"edit","messageId":1,"content":"m1'","expectedVersion":1,"ref":"f1"}),
        json!({"type":"message","content":"new","ref":"f2"}),
        json!({"type":"edit","messageId":1,"content":"m1''","expectedVersion":1,"ref":"f3"}),
        json!({"type":"delete","messageId":2,"ref":"f4"}),
        json!({"type":"delete","messageId":2,"ref":"f5"}),
        json!({"type":"edit","messageId":5,"content":"x","ref":"f6"}),
        json!({"type":"message","content":"m3","clientMessageId":"old-00003","ref":"f7"}),
        json!({"type":"read","messageId":1,"ref":"f8"}),
        json!({"type":"read","messageId":3,"ref":"f9"}),
    ];
    for f in &frames {
        a.send(f.clone()).await;
    }
    use fluxy_protocol::ErrorCode as E;
    let want: [(&str, Result<Option<u64>, E>); 9] = [
        ("f1", Ok(Some(10))),
        ("f2", Ok(Some(11))),
        ("f3", Err(E::Conflict)),
        ("f4", Ok(Some(12))),
        ("f5", Err(E::Conflict)),
        ("f6", Err(E::NotFound)),
        ("f7", Ok(Some(3))),
        ("f8", Ok(None)),
        ("f9", Ok(Some(13))),
    ];
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(answer(&mut a).await);
    }
    // Errors are sent at once, acks when their event is durable: compare per frame, and
    // check that the acks came in frame order.
    for (r, w) in &want {
        let g = got
            .iter()
            .find(|(x, _)| x.as_deref() == Some(*r))
            .unwrap_or_else(|| panic!("no answer to {r}: {got:?}"));
        assert_eq!(&g.1, w, "answer to {r}");
    }
    let ack_order: Vec<&str> = got
        .iter()
        .filter(|(_, x)| x.is_ok())
        .filter_map(|(r, _)| r.as_deref())
        .collect();
    assert_eq!(ack_order, vec!["f1", "f2", "f4", "f7", "f8", "f9"]);

    // Reactions: bob's 👍 on message 1 is found (adding it again is a no-op); removing it is
    // an event; alice's 👎 did not exist.
    let mut b = s.join("wake", &bob).await;
    b.send(json!({"type":"reaction","messageId":1,"emoji":"👍"}))
        .await;
    assert_eq!(b.ack().await.seq, None, "the stored reaction was found");
    b.send(json!({"type":"reaction","messageId":1,"emoji":"👍","op":"remove"}))
        .await;
    assert_eq!(b.ack().await.seq, Some(14));
    a.send(json!({"type":"reaction","messageId":1,"emoji":"👎","op":"remove"}))
        .await;
    assert_eq!(
        a.ack().await.seq,
        None,
        "no such reaction: nothing to remove"
    );
    // Agent runs: the finished run is closed (looked up), the open one was loaded.
    let mut g = s.join("wake", &bot).await;
    g.send(json!({"type":"agentRun","runId":"done","status":"started","ref":"g1"}))
        .await;
    assert_eq!(
        g.error().await.code,
        E::InvalidState,
        "run ids are not reused"
    );
    g.send(
        json!({"type":"tool_call","runId":"open","toolCallId":"c1","name":"n","arguments":"{}"}),
    )
    .await;
    assert_eq!(g.ack().await.seq, Some(15), "the open run was loaded");
    assert!(
        server.room_lookups() > before,
        "the old state was looked up on demand"
    );

    // Over HTTP after another unload: a resent key and a reply to an old message.
    for ws in [a, b, g] {
        leave(ws).await;
    }
    eventually("the room unloaded again", || {
        server.loaded_rooms() == 0 && server.room_tasks() == 0
    })
    .await;
    let (st, body) = post(&s, &alice, "wake", "m4", Some("old-00004")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["duplicate"], json!(true));
    assert_eq!(body["message"]["seq"], json!(4));
    let (st, body) = s
        .post(
            &alice,
            "/messages",
            json!({"roomId":"wake","content":"reply","parentId":4}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["message"]["seq"], json!(16));
    let (st, body) = s
        .post(
            &alice,
            "/messages",
            json!({"roomId":"wake","content":"reply","parentId":5}),
        )
        .await;
    assert_eq!(st, 404, "a reaction event is no parent: {body}");
}
