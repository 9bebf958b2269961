//! FluxyChat compatibility across a restart: `createdAt` keeps increasing after the room is
//! reloaded from storage `[FX-ORD-9]`, and the compat snapshot `[FX-CMP-1]` is rebuilt from the
//! reloaded events.

mod common;

use common::Srv;
use fluxy_protocol::ServerFrame;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_at_keeps_increasing_across_a_restart_and_the_compat_snapshot_is_rebuilt() {
    let dir = std::env::temp_dir().join(format!(
        "fluxy-compat-{}-{}",
        std::process::id(),
        common::now_s()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("fluxy.db");
    let db_arg = db.to_str().unwrap().to_owned();

    let mut s = Srv::start(&["--db", &db_arg]).await;
    let owner = s.token("alice", &[]).await;
    s.room(&owner, "ord9", &[]).await;
    let mut ws = s.join("ord9", &owner).await;
    for i in 0..3 {
        ws.send(json!({"type":"message","content":format!("m{i}")}))
            .await;
        ws.ack().await;
    }
    ws.send(json!({"type":"reaction","messageId":2,"emoji":"👍"}))
        .await;
    ws.ack().await;
    drop(ws);
    let child = s.child.as_mut().unwrap();
    child.kill().await.unwrap();
    let _ = child.wait().await;

    // Move the newest event's time stamp far ahead of the clock, as a burst that ran ahead of
    // it (one event per millisecond) or a clock stepped back during the restart would leave it.
    const AHEAD: &str = "2099-01-01T00:00:00.000Z";
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let n = c
            .execute(
                "UPDATE events SET body = json_set(body, '$.createdAt', ?1) \
                 WHERE room_id = 'ord9' AND seq = (SELECT MAX(seq) FROM events WHERE room_id = 'ord9')",
                [AHEAD],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    let s2 = Srv::start(&["--db", &db_arg]).await;
    let mut ws = s2.join("ord9", &owner).await;
    ws.send(json!({"type":"message","content":"after the restart"}))
        .await;
    let a = ws.ack().await;
    assert_eq!(a.seq, Some(5));
    assert_eq!(
        a.created_at.as_deref(),
        Some("2099-01-01T00:00:00.001Z"),
        "the reloaded engine continues after the newest stored createdAt"
    );
    let (status, page) = s2.get(&owner, "/api/messages?roomId=ord9&limit=10").await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"][0]["createdAt"], "2099-01-01T00:00:00.001Z");

    // FluxyChat's SDK reconnecting after the restart gets its rows and reaction counts.
    let mut sdk = s2
        .ws("ord9", &owner, "&replay=connect&replayLimit=50")
        .await;
    let ServerFrame::History(h) = sdk.until(|f| matches!(f, ServerFrame::History(_))).await else {
        unreachable!()
    };
    let rows = h.messages.expect("compat rows after a restart");
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 5]);
    let reactions = h.reactions.expect("compat reactions");
    assert_eq!(reactions["2"]["👍"], 1);
    // The rows equal the legacy route's rows for the same state.
    let mut api: Vec<Value> = page["messages"].as_array().unwrap().clone();
    api.reverse();
    let rows_json: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(rows_json, api);
    let _ = std::fs::remove_dir_all(&dir);
}
