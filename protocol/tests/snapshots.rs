//! Pinned canonical encodings of representative frames. A change here is a wire change: review
//! the `.snap` diff (`cargo insta review`, or `INSTA_UPDATE=always cargo test` then `git diff`).

use fluxy_protocol::client::SendMessageFrame;
use fluxy_protocol::codes::ErrorCode;
use fluxy_protocol::common::{Attachment, Limits, RunStatus};
use fluxy_protocol::events::*;
use fluxy_protocol::http::HistoryPage;
use fluxy_protocol::server::*;
use fluxy_protocol::ClientFrame;

const T: &str = "2026-11-26T16:19:14.677Z";

fn message_event() -> MessageEvent {
    MessageEvent {
        seq: 42,
        id: 42,
        room_id: "general".into(),
        user_id: "alice".into(),
        sender_id: "alice".into(),
        content: "Hello, \"world\" 👋\nsecond line".into(),
        created_at: T.into(),
        parent_id: Some(40),
        client_message_id: Some("c-7f3a9e21".into()),
        attachments: vec![Attachment {
            url: "https://files.example.com/a.png".into(),
            name: Some("a.png".into()),
            content_type: Some("image/png".into()),
            size_bytes: Some(1024),
        }],
        version: 1,
        streaming: false,
    }
}

fn edit_event() -> EditEvent {
    EditEvent {
        seq: 43,
        id: 42,
        room_id: "general".into(),
        user_id: "alice".into(),
        content: "Hello again".into(),
        edited_at: "2026-11-26T16:19:16.677Z".into(),
        version: 2,
        streaming: false,
    }
}

#[test]
fn message_event_frame() {
    let e = TimelineEvent::Message(message_event());
    insta::assert_snapshot!("message_event", e.encode());
}

#[test]
fn send_message_frame() {
    let f = ClientFrame::Message(SendMessageFrame {
        content: "Hello".into(),
        client_message_id: Some("c-7f3a9e21".into()),
        parent_id: None,
        attachments: vec![],
        reference: Some("r1".into()),
    });
    insta::assert_snapshot!("send_message_frame", f.encode());
}

#[test]
fn ack() {
    let f = ServerFrame::Ack(AckFrame {
        reference: Some("r1".into()),
        client_message_id: Some("c-7f3a9e21".into()),
        id: Some(42),
        seq: Some(42),
        created_at: Some(T.into()),
        duplicate: false,
    });
    insta::assert_snapshot!("ack", f.encode());
    let dup = ServerFrame::Ack(AckFrame {
        reference: None,
        client_message_id: Some("c-7f3a9e21".into()),
        id: Some(42),
        seq: Some(42),
        created_at: Some(T.into()),
        duplicate: true,
    });
    insta::assert_snapshot!("ack_duplicate", dup.encode());
}

#[test]
fn error() {
    let mut e = ErrorFrame::new(ErrorCode::RateLimited, "too many frames");
    e.retry_after_ms = Some(1200);
    e.reference = Some("r9".into());
    insta::assert_snapshot!("error_rate_limited", ServerFrame::Error(e).encode());
    let d =
        fluxy_protocol::ClientFrame::decode(r#"{"type":"edit","messageId":"42","content":"x"}"#)
            .unwrap_err();
    insta::assert_snapshot!(
        "error_from_decode",
        ServerFrame::Error(ErrorFrame::from_decode(&d)).encode()
    );
}

#[test]
fn welcome() {
    let f = ServerFrame::Welcome(WelcomeFrame {
        protocol_version: "1.0".into(),
        room_id: "general".into(),
        user_id: "alice".into(),
        roles: vec!["member".into()],
        connection_id: "c0a8012e5f1b4d2a".into(),
        current_seq: 41,
        heartbeat_interval_ms: 25_000,
        idle_timeout_ms: 60_000,
        token_expires_at: "2026-11-26T17:19:14.000Z".into(),
        limits: Limits {
            max_frame_bytes: 65_536,
            max_content_chars: 4000,
            rate_burst: 20,
            rate_per_second: 10,
            resume_window: 1000,
            max_page_limit: 500,
        },
    });
    insta::assert_snapshot!("welcome", f.encode());
}

#[test]
fn replay() {
    let f = ServerFrame::Replay(ReplayFrame {
        room_id: "general".into(),
        events: vec![
            TimelineEvent::Message(message_event()),
            TimelineEvent::Edit(edit_event()),
        ],
        from_seq: 41,
        current_seq: 43,
        has_more: false,
        reference: Some("r7".into()),
    });
    insta::assert_snapshot!("replay", f.encode());
}

#[test]
fn tool_call() {
    let e = TimelineEvent::ToolCall(ToolCallEvent {
        seq: 51,
        room_id: "general".into(),
        agent_id: "helper-bot".into(),
        run_id: "run-1".into(),
        tool_call_id: "call-1".into(),
        name: "search_docs".into(),
        arguments: r#"{"query":"launch date"}"#.into(),
        created_at: T.into(),
    });
    insta::assert_snapshot!("tool_call_event", e.encode());
    let run = TimelineEvent::AgentRun(AgentRunEvent {
        seq: 50,
        room_id: "general".into(),
        agent_id: "helper-bot".into(),
        run_id: "run-1".into(),
        status: RunStatus::Failed,
        error: Some("quota".into()),
        created_at: T.into(),
    });
    insta::assert_snapshot!("agent_run_event", run.encode());
}

#[test]
fn history_page() {
    let p = HistoryPage {
        room_id: "general".into(),
        events: vec![
            TimelineEvent::Message(message_event()),
            TimelineEvent::Edit(edit_event()),
        ],
        has_more: true,
        next_cursor: Some("AQAAAAAAAAAAKgRhY21lB2dlbmVyYWw".into()),
        current_seq: 58,
    };
    insta::assert_snapshot!("history_page", serde_json::to_string(&p).unwrap());
}
