//! The handshake race (issue 13): a kick or role change that lands between a WebSocket
//! handshake's membership read and the room's `Open` must win. A test hook pauses bob's
//! handshake exactly there while the change runs; no sleeps, every wait has a deadline.

mod common;

use std::sync::{Arc, Mutex};

use common::{Got, Srv, WAIT};
use fluxy_protocol::{ErrorCode, ServerFrame};
use fluxy_server::{HandshakeHook, ServerConfig};
use serde_json::json;
use tokio::sync::oneshot;

/// A hook that pauses the first handshake of `user` after its membership read: returns the
/// hook, a receiver told when the handshake is paused, and a sender that resumes it.
fn pause_first(user: &'static str) -> (HandshakeHook, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (paused_tx, paused_rx) = oneshot::channel();
    let (resume_tx, resume_rx) = oneshot::channel();
    let slot = Arc::new(Mutex::new(Some((paused_tx, resume_rx))));
    let hook = HandshakeHook(Arc::new(move |who: String| {
        let slot = slot.clone();
        Box::pin(async move {
            if who != user {
                return;
            }
            let pair = slot.lock().expect("hook slot").take();
            if let Some((paused, resume)) = pair {
                let _ = paused.send(());
                let _ = resume.await;
            }
        })
    }));
    (hook, paused_rx, resume_tx)
}

fn config(hook: HandshakeHook) -> ServerConfig {
    ServerConfig {
        handshake_hook: Some(hook),
        http_post_burst: 0,
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_during_the_handshake_closes_the_new_connection_4003() {
    let (hook, paused, resume) = pause_first("bob");
    let s = Srv::embedded(config(hook)).await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "race", &["bob"]).await;
    let mut a = s.join("race", &alice).await;

    // bob's handshake reads "member", then pauses before its Open.
    let mut b = s.ws("race", &bob, "").await;
    tokio::time::timeout(WAIT, paused)
        .await
        .expect("bob's handshake reached the hook")
        .expect("hook");
    // Meanwhile alice removes bob; the room applies the kick first.
    let r = s
        .http
        .delete(s.url("/rooms/race/members/bob"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("remove bob");
    assert_eq!(r.status(), 200);
    resume.send(()).expect("resume bob's handshake");

    let (code, seen) = b.close_code().await;
    assert_eq!(code, 4003, "closed 4003, seen {seen:?}");
    assert!(
        !seen.iter().any(|f| matches!(f, ServerFrame::Welcome(_))),
        "a removed member is never welcomed: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|f| matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::NotMember)),
        "not_member before the close: {seen:?}"
    );
    // alice never saw bob join: her next frame is her own message's ack.
    a.send(json!({"type":"message","content":"after","ref":"r1"}))
        .await;
    loop {
        match a.next().await {
            Got::Frame(ServerFrame::MemberJoined(j), _) => panic!("alice saw {} join", j.user_id),
            Got::Frame(ServerFrame::Ack(_), _) => break,
            Got::Frame(..) => {}
            Got::Close(c) => panic!("alice closed with {c}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_during_the_handshake_registers_the_new_role() {
    let (hook, paused, resume) = pause_first("bob");
    let s = Srv::embedded(config(hook)).await;
    let alice = s.token("alice", &[]).await;
    let bob = s.token("bob", &[]).await;
    s.room(&alice, "race", &[]).await;
    let (st, body) = s
        .post(
            &alice,
            "/rooms/race/members",
            json!({"userId":"bob","role":"moderator"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let mut a = s.join("race", &alice).await;
    a.send(json!({"type":"message","content":"alice's"})).await;
    let id = a.ack().await.id.expect("message id");

    // bob's handshake reads "moderator", then pauses before its Open.
    let mut b = s.ws("race", &bob, "").await;
    tokio::time::timeout(WAIT, paused)
        .await
        .expect("bob's handshake reached the hook")
        .expect("hook");
    let (st, body) = s
        .post(
            &alice,
            "/rooms/race/members",
            json!({"userId":"bob","role":"member"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    resume.send(()).expect("resume bob's handshake");

    b.until(|f| matches!(f, ServerFrame::SubscriptionSucceeded(_)))
        .await;
    b.send(json!({"type":"delete","messageId":id,"ref":"d"}))
        .await;
    let e = b.error().await;
    assert_eq!(
        e.code,
        ErrorCode::Forbidden,
        "bob acts with the role after the demotion, not the one his handshake read"
    );
}
