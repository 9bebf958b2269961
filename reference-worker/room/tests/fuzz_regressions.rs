//! Regression tests for what the fuzzers found (docs/fuzzing.md, "Findings"). Each test replays
//! the minimised input through the same model shell the `room_engine` fuzz target uses
//! (`fuzz/src/room_harness.rs`, which checks I1–I7 after every step), and most also state the
//! expectation directly against the engine API.

#[path = "../../../fuzz/src/room_harness.rs"]
mod harness;

use fluxy_protocol::client::SendMessageFrame;
use fluxy_protocol::common::MemberRole;
use fluxy_protocol::ErrorCode;
use fluxy_room::{Effect, Faults, Identity, Input, LoadedRoom, Room, RoomConfig};
use harness::{FrameOp, Harness, Op, Setup};

fn post(content: &str, cmid: &str) -> SendMessageFrame {
    SendMessageFrame {
        content: content.into(),
        client_message_id: Some(cmid.into()),
        parent_id: None,
        attachments: Vec::new(),
        reference: None,
    }
}

/// Finding 1: a duplicate `POST /messages` (same clientMessageId as a request still being
/// committed) was parked behind the uncommitted event; when that commit failed the engine
/// answered the original request but never the duplicate, so the HTTP request hung (both shells
/// keep the reply channel across a reset).
#[test]
fn duplicate_post_is_answered_when_the_commit_fails() {
    let cfg = RoomConfig {
        tenant: "t1".into(),
        room_id: "r1".into(),
        jwt_secret: b"s".to_vec(),
        idle_timeout_ms: 30_000,
        rate_burst: 100,
        rate_per_second: 100,
        resume_window: 100,
        faults: Faults::NONE,
    };
    let mut room = Room::new(cfg, LoadedRoom::default());
    let alice = Identity {
        user_id: "alice".into(),
        roles: vec!["member".into()],
        member_role: Some(MemberRole::Member),
        token_exp: 4_000_000_000,
    };
    let now = 1_800_000_000_000;
    for request in [1, 2] {
        room.handle(
            now,
            Input::Post {
                request,
                identity: alice.clone(),
                frame: post("hello", "cmid-0001"),
            },
        );
    }
    let mut batch = None;
    while let Some(e) = room.poll_effect() {
        if let Effect::Persist { batch: b, .. } = e {
            batch = Some(b);
        }
    }
    room.handle(
        now,
        Input::CommitFailed {
            batch: batch.expect("a batch"),
        },
    );
    let mut answered = Vec::new();
    while let Some(e) = room.poll_effect() {
        if let Effect::PostDone { request, result } = e {
            assert_eq!(
                result.expect_err("storage failed").code,
                ErrorCode::InternalError
            );
            answered.push(request);
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![1, 2], "every POST gets an answer");
}

/// The fuzzer's minimised input for finding 1, replayed through the model shell.
#[test]
fn duplicate_post_commit_failure_model() {
    let mut h = Harness::new(Setup::default());
    for op in [
        Op::Open {
            user: 0,
            opts: 0,
            last_seq: None,
            short_token: true,
        },
        Op::Post {
            user: 97,
            content: 103,
            cmid: Some(110),
            parent: None,
        },
        Op::Frame {
            conn: 101,
            frame: FrameOp::AgentTyping { is_typing: true },
        },
        Op::Post {
            user: 97,
            content: 103,
            cmid: Some(110),
            parent: None,
        },
        Op::Fail,
    ] {
        h.step(&op);
    }
    h.finish();
}
