//! Crash test: SIGKILL mid-burst, restart on the same database, nothing acknowledged is lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Srv;
use fluxy_protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_event() {
    let dir = std::env::temp_dir().join(format!(
        "fluxy-crash-{}-{}",
        std::process::id(),
        common::now_s()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("fluxy.db");
    let db_arg = db.to_str().unwrap().to_owned();
    let mut s = Srv::start(&[
        "--db",
        &db_arg,
        "--rate-burst",
        "10000",
        "--rate-per-second",
        "10000",
    ])
    .await;
    let owner = s.token("u0", &[]).await;
    s.room(&owner, "crash", &["u1", "u2", "u3"]).await;
    const USERS: usize = 4;
    const PER: usize = 3000;
    let mut tokens = Vec::new();
    let mut conns = Vec::new();
    for u in 0..USERS {
        let t = s.token(&format!("u{u}"), &[]).await;
        conns.push(s.join("crash", &t).await);
        tokens.push(t);
    }
    // Every connection sends its burst from its own task while the main task reads; the
    // server is killed as soon as enough acks arrived, while writes are still in flight.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Option<ServerFrame>)>();
    for (u, ws) in conns.drain(..).enumerate() {
        let (mut sink, mut stream) = ws.stream.split();
        tokio::spawn(async move {
            for i in 0..PER {
                let m = json!({"type":"message","content":format!("u{u}-{i}"),"clientMessageId":format!("cmid-u{u}-{i:04}")});
                if sink
                    .send(Message::Text(m.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    let _ = tx.send((u, ServerFrame::decode(&t).ok()));
                }
            }
            let _ = tx.send((u, None));
        });
    }
    drop(tx);
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_seen = [0u64; USERS];
    let mut killed = false;
    let mut open = USERS;
    while open > 0 {
        let (u, f) = tokio::time::timeout(common::WAIT, rx.recv())
            .await
            .expect("frames keep coming")
            .expect("readers alive");
        match f {
            Some(ServerFrame::Ack(a)) => {
                acked.insert(a.client_message_id.unwrap(), a.seq.unwrap());
            }
            Some(f) => {
                if let Some(e) = f.into_timeline() {
                    assert_eq!(e.seq(), last_seen[u] + 1, "in order before the crash");
                    last_seen[u] = e.seq();
                }
            }
            None => open -= 1,
        }
        if !killed && acked.len() >= 300 {
            s.child.as_mut().unwrap().start_kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    let _ = s.child.as_mut().unwrap().wait().await;
    assert!(killed, "the burst was interrupted");
    // Restart on the same file.
    let s2 = Srv::start(&["--db", &db_arg]).await;
    let history = s2.all_history(&owner, "crash").await;
    let seqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gaps");
    let stored: BTreeMap<String, u64> = history
        .iter()
        .map(|e| {
            (
                e["clientMessageId"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(stored.len(), history.len(), "no duplicate keys");
    for (cmid, seq) in &acked {
        assert_eq!(stored.get(cmid), Some(seq), "acknowledged {cmid} survived");
    }
    // Clients resume from what they saw: nothing missing, nothing repeated.
    let current = seqs.len() as u64;
    eprintln!(
        "crash test: {} acked, {} stored, {} sent",
        acked.len(),
        current,
        USERS * PER
    );
    for (u, t) in tokens.iter().enumerate() {
        let mut ws = s2
            .ws("crash", t, &format!("&lastSeq={}", last_seen[u]))
            .await;
        let lag = current - last_seen[u];
        let mut pos = last_seen[u];
        let mut frame = ws
            .until(|f| matches!(f, ServerFrame::Replay(_) | ServerFrame::Error(_)))
            .await;
        if lag > 1000 {
            // Too far behind for the resume window: the server says so, history has it all.
            assert!(
                matches!(&frame, ServerFrame::Error(e) if e.code == fluxy_protocol::ErrorCode::ResyncRequired)
            );
        } else {
            loop {
                let ServerFrame::Replay(r) = frame else {
                    panic!("expected a replay, got {frame:?}")
                };
                for e in &r.events {
                    assert_eq!(e.seq(), pos + 1, "replay is gap-free and does not repeat");
                    pos = e.seq();
                }
                if !r.has_more {
                    break;
                }
                ws.send(json!({"type":"resume","lastSeq":pos})).await;
                frame = ws
                    .until(|f| matches!(f, ServerFrame::Replay(_) | ServerFrame::Error(_)))
                    .await;
            }
            assert_eq!(pos, current);
        }
        // Resending everything is idempotent: stored keys get their original seq back.
        let mut dup_checked = 0;
        for (cmid, seq) in stored
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("cmid-u{u}-")))
            .take(5)
        {
            ws.send(json!({"type":"message","content":"resend","clientMessageId":cmid}))
                .await;
            let a = ws.ack().await;
            assert!(a.duplicate);
            assert_eq!(a.seq, Some(*seq));
            dup_checked += 1;
        }
        let _ = dup_checked;
    }
    // Unacknowledged keys that were never stored can be sent again exactly once.
    let missing: BTreeSet<String> = (0..PER)
        .map(|i| format!("cmid-u0-{i:04}"))
        .filter(|k| !stored.contains_key(k))
        .collect();
    if let Some(k) = missing.iter().next() {
        let mut ws = s2.join("crash", &tokens[0]).await;
        ws.send(json!({"type":"message","content":"retry","clientMessageId":k}))
            .await;
        let a = ws.ack().await;
        assert!(!a.duplicate);
        assert_eq!(a.seq, Some(current + 1));
    }
    let _: Value = json!(null);
    drop(s2);
    let _ = std::fs::remove_dir_all(&dir);
}
