//! proptest strategies for every frame (feature `arbitrary`, always compiled for unit tests).
//!
//! [`client_frame`], [`server_frame`] and [`timeline_event`] generate **valid** values: each
//! satisfies [`ClientFrame::validate`], the JSON Schemas in `spec/schema/`, and round-trips
//! through `decode(encode(x)) == x`. [`mutated_frame_text`] derives malformed or altered frame
//! texts from valid ones, for decoder robustness tests and fuzz seeds.
//!
//! Strings are kept short (a few dozen characters) so property tests stay fast, but they mix in
//! characters that stress the JSON encoder: quotes, backslashes, control characters, non-BMP
//! characters and Unicode line separators.
//!
//! ```
//! use fluxy_protocol::arbitrary::client_frame;
//! use fluxy_protocol::ClientFrame;
//! use proptest::strategy::{Strategy, ValueTree};
//! use proptest::test_runner::TestRunner;
//!
//! let mut runner = TestRunner::deterministic();
//! let frame = client_frame().new_tree(&mut runner).unwrap().current();
//! assert_eq!(ClientFrame::decode(&frame.encode()), Ok(frame));
//! ```

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{Map, Value};

use crate::client::*;
use crate::codes::{ErrorCode, ALL_ERROR_CODES};
use crate::common::{
    format_timestamp, Attachment, Decision, Limits, ReactionOp, RunStatus, StreamOp, TypingIntent,
};
use crate::events::*;
use crate::server::*;
use crate::{ClientFrame, ServerFrame, TimelineEvent};

/// Largest epoch millisecond value whose timestamp still has a four-digit year
/// (`9999-12-31T23:59:59.999Z`).
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// Characters that exercise JSON escaping and Unicode handling.
const TRICKY_CHARS: &[char] = &[
    '"', '\\', '/', '\n', '\t', '\r', '\u{0}', '\u{1f}', '\u{7f}', 'é', 'ß', '漢', '😀', '👍',
    '\u{2028}', '\u{2029}', '\u{feff}', '\u{200b}', '<', '>', '&', '\'', '{', '}', '[', ']',
];

/// One character: mostly printable ASCII, sometimes a tricky or arbitrary Unicode character.
pub fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range(' ', '~'),
        2 => select(TRICKY_CHARS),
        1 => any::<char>(),
    ]
}

/// A string of `min..=max` characters from [`text_char`] (may contain or be only whitespace).
pub fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
    vec(text_char(), min..=max).prop_map(|cs| cs.into_iter().collect())
}

fn non_whitespace_char() -> impl Strategy<Value = char> {
    text_char().prop_filter("not whitespace", |c| !c.is_whitespace())
}

/// A string of `min..=max` characters (`1 <= min <= max`) that does not start or end with
/// whitespace, so trimming leaves it unchanged.
pub fn trimmed_text(min: usize, max: usize) -> BoxedStrategy<String> {
    let min = min.max(1);
    let max = max.max(min);
    let single = non_whitespace_char().prop_map(String::from);
    if max == 1 {
        return single.boxed();
    }
    let multi = (
        non_whitespace_char(),
        vec(text_char(), min.saturating_sub(2)..=max - 2),
        non_whitespace_char(),
    )
        .prop_map(|(first, middle, last)| {
            let mut s = String::with_capacity(middle.len() + 2);
            s.push(first);
            s.extend(middle);
            s.push(last);
            s
        });
    if min == 1 {
        prop_oneof![1 => single, 6 => multi].boxed()
    } else {
        multi.boxed()
    }
}

/// Message content: 1..=200 characters, not whitespace-padded `[FX-MSG-3]`.
pub fn content() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => trimmed_text(1, 40),
        1 => trimmed_text(1, 200),
    ]
}

/// A tenant, room or user id matching `^[A-Za-z0-9_-]{1,128}$` `[FX-FRM-6]`.
pub fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&["alice", "bob", "carol", "agent-7", "room_1", "t1", "general"][..])
            .prop_map(str::to_owned),
        2 => "[A-Za-z0-9_-]{1,16}",
        1 => "[A-Za-z0-9_-]{120,128}",
    ]
}

/// A `clientMessageId` matching `^[A-Za-z0-9_-]{8,128}$` `[FX-ACK-2]`.
pub fn client_message_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_-]{8,24}",
        1 => "[A-Za-z0-9_-]{128}",
    ]
}

/// A correlation id (`ref`): 1..=128 characters; generated short.
pub fn reference() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9-]{1,12}",
        1 => text(1, 16),
    ]
}

/// An agent identifier (run id, tool call id, approval id, tool name): 1..=128 characters.
pub fn agent_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9_.:-]{0,15}",
        1 => text(1, 16),
    ]
}

/// Epoch milliseconds whose timestamp has a four-digit year.
pub fn timestamp_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1_700_000_000_000u64..1_900_000_000_000u64,
        1 => 0..=MAX_TIMESTAMP_MS,
    ]
}

/// A wire timestamp, `YYYY-MM-DDTHH:MM:SS.mmmZ` `[FX-FRM-5]`.
pub fn timestamp() -> impl Strategy<Value = String> {
    timestamp_ms().prop_map(format_timestamp)
}

/// A `seq` or message id (at least 1).
pub fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1u64..10_000,
        1 => 1u64..=u64::MAX,
    ]
}

/// Any `u64`, biased towards small values.
fn small_or_any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..10_000, 1 => any::<u64>()]
}

/// An emoji (or short name): 1..=64 characters without leading or trailing whitespace.
pub fn emoji() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&["👍", "❤️", "🎉", "😀", "👨‍👩‍👧", ":+1:", "ok"][..]).prop_map(str::to_owned),
        1 => trimmed_text(1, 8),
    ]
}

/// A valid attachment: `http(s)` URL, short optional name and type.
pub fn attachment() -> impl Strategy<Value = Attachment> {
    (
        prop_oneof![Just("https://"), Just("http://")],
        "[a-z0-9.-]{1,20}(/[A-Za-z0-9._~%-]{0,12}){0,3}",
        option::of(text(0, 24)),
        option::of("[a-z]{1,12}/[a-z0-9.+-]{1,16}"),
        option::of(small_or_any_u64()),
    )
        .prop_map(
            |(scheme, rest, name, content_type, size_bytes)| Attachment {
                url: format!("{scheme}{rest}"),
                name,
                content_type,
                size_bytes,
            },
        )
}

fn attachments() -> impl Strategy<Value = Vec<Attachment>> {
    prop_oneof![3 => Just(Vec::new()), 1 => vec(attachment(), 1..=3)]
}

fn reaction_op() -> impl Strategy<Value = ReactionOp> {
    prop_oneof![Just(ReactionOp::Add), Just(ReactionOp::Remove)]
}

fn typing_intent() -> impl Strategy<Value = TypingIntent> {
    prop_oneof![
        Just(TypingIntent::Composing),
        Just(TypingIntent::ViewingThread),
        Just(TypingIntent::Away),
        Just(TypingIntent::Idle),
    ]
}

fn run_status() -> impl Strategy<Value = RunStatus> {
    prop_oneof![
        Just(RunStatus::Started),
        Just(RunStatus::Completed),
        Just(RunStatus::Failed),
        Just(RunStatus::Cancelled),
    ]
}

fn decision() -> impl Strategy<Value = Decision> {
    prop_oneof![Just(Decision::Approved), Just(Decision::Denied)]
}

/// Any error code.
pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ALL_ERROR_CODES)
}

// ---------------------------------------------------------------------------------------------
// Client frames

/// A valid `stream` frame: `start` (content may be empty, no `messageId` needed), `delta` and
/// `end` (content 1..=200 characters and a `messageId`), `abort` (a `messageId`).
fn stream_frame() -> impl Strategy<Value = StreamFrame> {
    let start = (
        prop_oneof![Just(String::new()), content()],
        option::of(seq()),
        option::of(seq()),
        option::of(client_message_id()),
        option::of(reference()),
    )
        .prop_map(
            |(content, message_id, parent_id, client_message_id, reference)| StreamFrame {
                op: StreamOp::Start,
                content,
                message_id,
                parent_id,
                client_message_id,
                reference,
            },
        );
    let delta_end = (
        prop_oneof![Just(StreamOp::Delta), Just(StreamOp::End)],
        content(),
        seq(),
        option::of(client_message_id()),
        option::of(reference()),
    )
        .prop_map(
            |(op, content, id, client_message_id, reference)| StreamFrame {
                op,
                content,
                message_id: Some(id),
                parent_id: None,
                client_message_id,
                reference,
            },
        );
    let abort = (
        prop_oneof![Just(String::new()), text(0, 16)],
        seq(),
        option::of(reference()),
    )
        .prop_map(|(content, id, reference)| StreamFrame {
            op: StreamOp::Abort,
            content,
            message_id: Some(id),
            parent_id: None,
            client_message_id: None,
            reference,
        });
    prop_oneof![start, delta_end, abort]
}

/// Any valid client → server frame, every type equally likely.
pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let r = || option::of(reference());
    prop_oneof![
        option::of(any::<u64>()).prop_map(|ts| ClientFrame::Ping(PingFrame { ts })),
        (
            content(),
            option::of(client_message_id()),
            option::of(seq()),
            attachments(),
            r()
        )
            .prop_map(
                |(content, client_message_id, parent_id, attachments, reference)| {
                    ClientFrame::Message(SendMessageFrame {
                        content,
                        client_message_id,
                        parent_id,
                        attachments,
                        reference,
                    })
                }
            ),
        (
            seq(),
            content(),
            option::of(1u32..=u32::MAX),
            option::of(client_message_id()),
            r()
        )
            .prop_map(
                |(message_id, content, expected_version, client_message_id, reference)| {
                    ClientFrame::Edit(EditFrame {
                        message_id,
                        content,
                        expected_version,
                        client_message_id,
                        reference,
                    })
                }
            ),
        (seq(), option::of(client_message_id()), r()).prop_map(
            |(message_id, client_message_id, reference)| ClientFrame::Delete(DeleteFrame {
                message_id,
                client_message_id,
                reference,
            })
        ),
        (seq(), emoji(), reaction_op(), r()).prop_map(|(message_id, emoji, op, reference)| {
            ClientFrame::Reaction(ReactionFrame {
                message_id,
                emoji,
                op,
                reference,
            })
        }),
        (seq(), r()).prop_map(|(message_id, reference)| ClientFrame::Read(ReadFrame {
            message_id,
            reference
        })),
        (any::<bool>(), option::of(typing_intent())).prop_map(|(is_typing, intent)| {
            ClientFrame::Typing(TypingFrame { is_typing, intent })
        }),
        (small_or_any_u64(), r()).prop_map(|(last_seq, reference)| ClientFrame::Resume(
            ResumeFrame {
                last_seq,
                reference
            }
        )),
        stream_frame().prop_map(ClientFrame::Stream),
        (agent_id(), run_status(), option::of(text(0, 32)), r()).prop_map(
            |(run_id, status, error, reference)| ClientFrame::AgentRun(AgentRunFrame {
                run_id,
                status,
                error,
                reference,
            })
        ),
        (agent_id(), agent_id(), agent_id(), text(0, 40), r()).prop_map(
            |(run_id, tool_call_id, name, arguments, reference)| {
                ClientFrame::ToolCall(ToolCallFrame {
                    run_id,
                    tool_call_id,
                    name,
                    arguments,
                    reference,
                })
            }
        ),
        (agent_id(), agent_id(), text(0, 40), r()).prop_map(
            |(run_id, tool_call_id, result, reference)| {
                ClientFrame::ToolResult(ToolResultFrame {
                    run_id,
                    tool_call_id,
                    result,
                    reference,
                })
            }
        ),
        (agent_id(), agent_id(), text(1, 40), r()).prop_map(
            |(run_id, tool_call_id, error, reference)| ClientFrame::ToolError(ToolErrorFrame {
                run_id,
                tool_call_id,
                error,
                reference,
            })
        ),
        (
            agent_id(),
            agent_id(),
            option::of(agent_id()),
            text(1, 60),
            r()
        )
            .prop_map(|(run_id, approval_id, tool_call_id, prompt, reference)| {
                ClientFrame::ApprovalRequest(ApprovalRequestFrame {
                    run_id,
                    approval_id,
                    tool_call_id,
                    prompt,
                    reference,
                })
            }),
        (
            (agent_id(), agent_id(), option::of(id())),
            decision(),
            option::of(text(0, 40)),
            r()
        )
            .prop_map(
                |((run_id, approval_id, agent_id), decision, reason, reference)| {
                    ClientFrame::ApprovalDecision(ApprovalDecisionFrame {
                        run_id,
                        approval_id,
                        agent_id,
                        decision,
                        reason,
                        reference,
                    })
                }
            ),
        any::<bool>()
            .prop_map(|is_typing| ClientFrame::AgentTyping(AgentTypingFrame { is_typing })),
        (
            "[A-Za-z0-9_-]{8,40}\\.[A-Za-z0-9_-]{8,60}\\.[A-Za-z0-9_-]{8,43}",
            r()
        )
            .prop_map(|(token, reference)| ClientFrame::Auth(AuthFrame { token, reference })),
    ]
}

// ---------------------------------------------------------------------------------------------
// Timeline events

/// A valid `message` event (`version` 1 unless edited since; empty content only while
/// streaming).
pub fn message_event() -> impl Strategy<Value = MessageEvent> {
    (
        (seq(), id(), id(), any::<bool>()),
        (content(), timestamp(), option::of(seq())),
        (option::of(client_message_id()), attachments(), 1u32..=3),
    )
        .prop_map(
            |(
                (seq, room_id, user_id, streaming),
                (content, created_at, parent_id),
                (client_message_id, attachments, version),
            )| MessageEvent {
                seq,
                id: seq,
                room_id,
                sender_id: user_id.clone(),
                user_id,
                content: if streaming && version == 1 {
                    String::new()
                } else {
                    content
                },
                created_at,
                parent_id,
                client_message_id,
                attachments,
                version,
                streaming,
            },
        )
}

/// Any valid timeline event, every type equally likely.
pub fn timeline_event() -> impl Strategy<Value = TimelineEvent> {
    prop_oneof![
        message_event().prop_map(TimelineEvent::Message),
        (
            (seq(), seq(), id(), id()),
            (content(), timestamp(), 2u32..=u32::MAX, any::<bool>())
        )
            .prop_map(
                |((seq, id, room_id, user_id), (content, edited_at, version, streaming))| {
                    TimelineEvent::Edit(EditEvent {
                        seq,
                        id,
                        room_id,
                        user_id,
                        content,
                        edited_at,
                        version,
                        streaming,
                    })
                }
            ),
        (seq(), seq(), id(), id(), timestamp(), 2u32..=u32::MAX).prop_map(
            |(seq, id, room_id, user_id, deleted_at, version)| TimelineEvent::Delete(DeleteEvent {
                seq,
                id,
                room_id,
                user_id,
                deleted_at,
                version,
            })
        ),
        (
            seq(),
            id(),
            id(),
            seq(),
            emoji(),
            reaction_op(),
            timestamp()
        )
            .prop_map(
                |(seq, room_id, user_id, message_id, emoji, op, created_at)| {
                    TimelineEvent::Reaction(ReactionEvent {
                        seq,
                        room_id,
                        user_id,
                        message_id,
                        emoji,
                        op,
                        created_at,
                    })
                }
            ),
        (seq(), id(), id(), seq(), timestamp()).prop_map(
            |(seq, room_id, user_id, message_id, created_at)| TimelineEvent::Read(ReadEvent {
                seq,
                room_id,
                user_id,
                message_id,
                created_at,
            })
        ),
        (
            seq(),
            id(),
            id(),
            agent_id(),
            run_status(),
            option::of(text(0, 32)),
            timestamp()
        )
            .prop_map(
                |(seq, room_id, agent_id, run_id, status, error, created_at)| {
                    TimelineEvent::AgentRun(AgentRunEvent {
                        seq,
                        room_id,
                        agent_id,
                        run_id,
                        status,
                        error,
                        created_at,
                    })
                }
            ),
        (
            (seq(), id(), id(), agent_id()),
            (agent_id(), agent_id(), text(0, 40), timestamp())
        )
            .prop_map(
                |(
                    (seq, room_id, agent_id, run_id),
                    (tool_call_id, name, arguments, created_at),
                )| {
                    TimelineEvent::ToolCall(ToolCallEvent {
                        seq,
                        room_id,
                        agent_id,
                        run_id,
                        tool_call_id,
                        name,
                        arguments,
                        created_at,
                    })
                }
            ),
        (
            (seq(), id(), id()),
            (agent_id(), agent_id(), text(0, 40), timestamp())
        )
            .prop_map(
                |((seq, room_id, agent_id), (run_id, tool_call_id, result, created_at))| {
                    TimelineEvent::ToolResult(ToolResultEvent {
                        seq,
                        room_id,
                        agent_id,
                        run_id,
                        tool_call_id,
                        result,
                        created_at,
                    })
                }
            ),
        (
            (seq(), id(), id()),
            (agent_id(), agent_id(), text(1, 40), timestamp())
        )
            .prop_map(
                |((seq, room_id, agent_id), (run_id, tool_call_id, error, created_at))| {
                    TimelineEvent::ToolError(ToolErrorEvent {
                        seq,
                        room_id,
                        agent_id,
                        run_id,
                        tool_call_id,
                        error,
                        created_at,
                    })
                }
            ),
        (
            (seq(), id(), id(), agent_id()),
            (agent_id(), option::of(agent_id()), text(1, 60), timestamp())
        )
            .prop_map(
                |(
                    (seq, room_id, agent_id, run_id),
                    (approval_id, tool_call_id, prompt, created_at),
                )| {
                    TimelineEvent::ApprovalRequest(ApprovalRequestEvent {
                        seq,
                        room_id,
                        agent_id,
                        run_id,
                        approval_id,
                        tool_call_id,
                        prompt,
                        created_at,
                    })
                }
            ),
        (
            (seq(), id(), id(), id(), agent_id()),
            (agent_id(), decision(), option::of(text(0, 40)), timestamp())
        )
            .prop_map(
                |(
                    (seq, room_id, user_id, agent_id, run_id),
                    (approval_id, decision, reason, created_at),
                )| {
                    TimelineEvent::ApprovalDecision(ApprovalDecisionEvent {
                        seq,
                        room_id,
                        user_id,
                        agent_id,
                        run_id,
                        approval_id,
                        decision,
                        reason,
                        created_at,
                    })
                }
            ),
    ]
}

/// 0..=3 timeline events with ascending, gap-free `seq` values ending at the returned
/// `currentSeq` (the shape of a snapshot or replay).
fn event_page() -> impl Strategy<Value = (Vec<TimelineEvent>, u64)> {
    (vec(timeline_event(), 0..=3), 0u64..1_000_000).prop_map(|(mut events, base)| {
        for (i, e) in events.iter_mut().enumerate() {
            let s = base + i as u64 + 1;
            set_seq(e, s);
        }
        let current = base + events.len() as u64;
        (events, current)
    })
}

fn set_seq(e: &mut TimelineEvent, s: u64) {
    match e {
        TimelineEvent::Message(x) => {
            x.seq = s;
            x.id = s;
        }
        TimelineEvent::Edit(x) => x.seq = s,
        TimelineEvent::Delete(x) => x.seq = s,
        TimelineEvent::Reaction(x) => x.seq = s,
        TimelineEvent::Read(x) => x.seq = s,
        TimelineEvent::AgentRun(x) => x.seq = s,
        TimelineEvent::ToolCall(x) => x.seq = s,
        TimelineEvent::ToolResult(x) => x.seq = s,
        TimelineEvent::ToolError(x) => x.seq = s,
        TimelineEvent::ApprovalRequest(x) => x.seq = s,
        TimelineEvent::ApprovalDecision(x) => x.seq = s,
    }
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        65_536u64..=1_048_576,
        Just(4000u64),
        1u64..=100,
        1u64..=50,
        100u64..=10_000,
        1u64..=500,
    )
        .prop_map(
            |(
                max_frame_bytes,
                max_content_chars,
                rate_burst,
                rate_per_second,
                resume_window,
                max_page_limit,
            )| Limits {
                max_frame_bytes,
                max_content_chars,
                rate_burst,
                rate_per_second,
                resume_window,
                max_page_limit,
            },
        )
}

fn roles() -> impl Strategy<Value = Vec<String>> {
    vec(
        select(&["owner", "admin", "moderator", "member", "agent"][..]).prop_map(str::to_owned),
        0..=3,
    )
}

/// A presence frame whose `users`, `members` and `online` agree `[FX-PRE-1]`.
fn presence_frame() -> impl Strategy<Value = PresenceFrame> {
    (id(), proptest::collection::btree_map(id(), 1u32..=5, 0..=4)).prop_map(|(room_id, m)| {
        PresenceFrame {
            room_id,
            online: m.values().sum(),
            users: m.keys().cloned().collect(),
            members: m
                .into_iter()
                .map(|(user_id, connections)| PresenceMember {
                    user_id,
                    connections,
                })
                .collect(),
        }
    })
}

/// Any valid server → client frame: each ephemeral frame type, and each timeline event type.
pub fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let r = || option::of(reference());
    let welcome = (
        (id(), id(), roles(), "[a-f0-9]{8,32}"),
        (small_or_any_u64(), 1_000u64..=60_000, 2_000u64..=120_000),
        (timestamp(), limits()),
    )
        .prop_map(
            |(
                (room_id, user_id, roles, connection_id),
                (current_seq, heartbeat_interval_ms, idle_timeout_ms),
                (token_expires_at, limits),
            )| {
                ServerFrame::Welcome(WelcomeFrame {
                    protocol_version: crate::PROTOCOL_VERSION.to_owned(),
                    room_id,
                    user_id,
                    roles,
                    connection_id,
                    current_seq,
                    heartbeat_interval_ms,
                    idle_timeout_ms,
                    token_expires_at,
                    limits,
                })
            },
        );
    let history = (id(), event_page(), any::<bool>()).prop_map(
        |(room_id, (events, current_seq), has_more)| {
            ServerFrame::History(HistoryFrame {
                room_id,
                events,
                current_seq,
                has_more,
                messages: None,
                reactions: None,
            })
        },
    );
    let replay = (id(), event_page(), any::<bool>(), r()).prop_map(
        |(room_id, (events, current_seq), has_more, reference)| {
            let from_seq = events.first().map_or(current_seq, |e| e.seq() - 1);
            ServerFrame::Replay(ReplayFrame {
                room_id,
                events,
                from_seq,
                current_seq,
                has_more,
                reference,
            })
        },
    );
    let subscribed = (id(), "[a-f0-9]{8,32}", 1u32..=1000).prop_map(
        |(room_id, socket_id, subscription_count)| {
            ServerFrame::SubscriptionSucceeded(SubscriptionSucceededFrame {
                room_id,
                socket_id,
                subscription_count,
            })
        },
    );
    let ack = (
        r(),
        option::of(client_message_id()),
        option::of(seq()),
        option::of((seq(), timestamp())),
        any::<bool>(),
    )
        .prop_map(|(reference, client_message_id, id, seq_at, duplicate)| {
            ServerFrame::Ack(AckFrame {
                reference,
                client_message_id,
                id,
                seq: seq_at.as_ref().map(|(s, _)| *s),
                created_at: seq_at.map(|(_, t)| t),
                duplicate,
            })
        });
    let error = (
        error_code(),
        text(1, 40),
        option::of(1u64..=60_000),
        r(),
        option::of("[a-z][A-Za-z]{0,15}"),
    )
        .prop_map(|(code, message, retry_after_ms, reference, field)| {
            ServerFrame::Error(ErrorFrame {
                code,
                message,
                retryable: code.retryable(),
                retry_after_ms: retry_after_ms.filter(|_| code == ErrorCode::RateLimited),
                reference,
                field,
            })
        });
    let pong = (timestamp_ms(), option::of(any::<u64>()))
        .prop_map(|(ts, echo)| ServerFrame::Pong(PongFrame { ts, echo }));
    let refreshed = (timestamp(), roles(), r()).prop_map(|(token_expires_at, roles, reference)| {
        ServerFrame::TokenRefreshed(TokenRefreshedFrame {
            token_expires_at,
            roles,
            reference,
        })
    });
    let typing = (id(), id(), any::<bool>(), typing_intent()).prop_map(
        |(room_id, user_id, is_typing, intent)| {
            ServerFrame::Typing(TypingEvent {
                room_id,
                user_id,
                is_typing,
                intent: if is_typing {
                    intent
                } else {
                    TypingIntent::Idle
                },
            })
        },
    );
    let agent_typing = (id(), id(), any::<bool>()).prop_map(|(room_id, agent_id, is_typing)| {
        ServerFrame::AgentTyping(AgentTypingEvent {
            room_id,
            agent_id,
            is_typing,
        })
    });
    let joined = (id(), id()).prop_map(|(room_id, user_id)| {
        ServerFrame::MemberJoined(MemberPresenceEvent { room_id, user_id })
    });
    let left = (id(), id()).prop_map(|(room_id, user_id)| {
        ServerFrame::MemberLeft(MemberPresenceEvent { room_id, user_id })
    });
    let batch = event_page().prop_map(|(events, _)| ServerFrame::Batch(BatchFrame { events }));
    let ephemeral = prop_oneof![
        welcome,
        history,
        replay,
        subscribed,
        ack,
        error,
        pong,
        refreshed,
        typing,
        agent_typing,
        presence_frame().prop_map(ServerFrame::Presence),
        joined,
        left,
        batch,
    ];
    prop_oneof![
        13 => ephemeral,
        11 => timeline_event().prop_map(ServerFrame::from),
    ]
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// A small arbitrary JSON value (null, booleans, numbers, strings, short arrays and objects).
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text(0, 12).prop_map(Value::String),
        select(&["", "message", "ping", "type", "0", "-1", "null"][..])
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// One way of damaging a frame.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the text at a character boundary.
    Truncate(Index),
    /// Insert a character.
    Insert(Index, char),
    /// Delete a character.
    Delete(Index),
    /// Repeat a slice of the text.
    Duplicate(Index, Index),
    /// Remove one top-level key.
    RemoveKey(Index),
    /// Replace one top-level value (possibly `type`) with an arbitrary JSON value.
    SetValue(Index, Value),
    /// Add an unknown key.
    AddKey(String, Value),
    /// Replace the `type` with another string.
    RetypeTo(String),
    /// Replace the whole frame with a non-object JSON value.
    Replace(Value),
    /// Wrap the frame in an array.
    WrapInArray,
    /// Two mutations in a row.
    Both(Box<Mutation>, Box<Mutation>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let one = prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), text_char()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        any::<Index>().prop_map(Mutation::RemoveKey),
        (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::SetValue(i, v)),
        ("[a-zA-Z]{1,10}", json_value()).prop_map(|(k, v)| Mutation::AddKey(k, v)),
        prop_oneof![
            select(crate::client::CLIENT_TYPES).prop_map(str::to_owned),
            select(crate::server::SERVER_TYPES).prop_map(str::to_owned),
            "[a-zA-Z_]{0,12}",
        ]
        .prop_map(Mutation::RetypeTo),
        json_value()
            .prop_filter("not an object", |v| !v.is_object())
            .prop_map(Mutation::Replace),
        Just(Mutation::WrapInArray),
    ];
    one.prop_recursive(1, 2, 2, |inner| {
        (inner.clone(), inner).prop_map(|(a, b)| Mutation::Both(Box::new(a), Box::new(b)))
    })
}

fn char_boundaries(s: &str) -> Vec<usize> {
    s.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect()
}

fn with_object(text: &str, f: impl FnOnce(&mut Map<String, Value>)) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut o)) => {
            f(&mut o);
            Value::Object(o).to_string()
        }
        _ => text.to_owned(),
    }
}

fn apply(text: String, m: &Mutation) -> String {
    let bounds = char_boundaries(&text);
    match m {
        Mutation::Truncate(i) => text[..*i.get(&bounds)].to_owned(),
        Mutation::Insert(i, c) => {
            let at = *i.get(&bounds);
            let mut s = text;
            s.insert(at, *c);
            s
        }
        Mutation::Delete(i) => {
            let at = *i.get(&bounds);
            let mut s = text;
            if at < s.len() {
                s.remove(at);
            }
            s
        }
        Mutation::Duplicate(a, b) => {
            let (x, y) = (*a.get(&bounds), *b.get(&bounds));
            let (x, y) = (x.min(y), x.max(y));
            format!("{}{}", &text[..y], &text[x..])
        }
        Mutation::RemoveKey(i) => with_object(&text, |o| {
            let keys: Vec<String> = o.keys().cloned().collect();
            if !keys.is_empty() {
                o.remove(i.get(&keys));
            }
        }),
        Mutation::SetValue(i, v) => with_object(&text, |o| {
            let keys: Vec<String> = o.keys().cloned().collect();
            if !keys.is_empty() {
                o.insert(i.get(&keys).clone(), v.clone());
            }
        }),
        Mutation::AddKey(k, v) => with_object(&text, |o| {
            o.insert(k.clone(), v.clone());
        }),
        Mutation::RetypeTo(t) => with_object(&text, |o| {
            o.insert("type".into(), Value::String(t.clone()));
        }),
        Mutation::Replace(v) => v.to_string(),
        Mutation::WrapInArray => format!("[{text}]"),
        Mutation::Both(a, b) => apply(apply(text, a), b),
    }
}

/// Malformed or altered frame texts derived from valid client and server frames: truncated,
/// with characters inserted, deleted or repeated, with keys removed, retyped, added or given
/// arbitrary JSON values, with a different `type`, wrapped in an array, or replaced by a
/// non-object. Some results are still valid frames; decoders must never panic on any of them.
pub fn mutated_frame_text() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        client_frame().prop_map(|f| f.encode()),
        server_frame().prop_map(|f| f.encode()),
    ];
    (base, mutation()).prop_map(|(text, m)| apply(text, &m))
}
