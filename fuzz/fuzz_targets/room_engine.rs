//! The room engine driven by arbitrary sequences of connection events, frames, commits,
//! storage failures, clock advances, POSTs, kicks and evictions (hibernated connections
//! restored); invariants I1–I7 are checked after every step by the model shell in
//! `fuzz/src/room_harness.rs` (see docs/fuzzing.md).
#![no_main]
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../src/room_harness.rs"]
mod harness;
use harness::{FrameOp, Harness, Op, Setup};

const MAX_OPS: usize = 256;

/// The golden client frames of spec/examples/client (seeds for the raw-frame op).
const EXAMPLES: &[&str] = &[
    include_str!("../../spec/examples/client/agentRun.failed.json"),
    include_str!("../../spec/examples/client/agentRun.json"),
    include_str!("../../spec/examples/client/agentTyping.json"),
    include_str!("../../spec/examples/client/approval_decision.json"),
    include_str!("../../spec/examples/client/approval_request.json"),
    include_str!("../../spec/examples/client/auth.json"),
    include_str!("../../spec/examples/client/delete.json"),
    include_str!("../../spec/examples/client/edit.json"),
    include_str!("../../spec/examples/client/message.json"),
    include_str!("../../spec/examples/client/message.minimal.json"),
    include_str!("../../spec/examples/client/message.reply-with-attachments.json"),
    include_str!("../../spec/examples/client/ping.json"),
    include_str!("../../spec/examples/client/reaction.json"),
    include_str!("../../spec/examples/client/reaction.remove.json"),
    include_str!("../../spec/examples/client/read.json"),
    include_str!("../../spec/examples/client/resume.json"),
    include_str!("../../spec/examples/client/stream.abort.json"),
    include_str!("../../spec/examples/client/stream.delta.json"),
    include_str!("../../spec/examples/client/stream.end.json"),
    include_str!("../../spec/examples/client/stream.json"),
    include_str!("../../spec/examples/client/tool_call.json"),
    include_str!("../../spec/examples/client/tool_error.json"),
    include_str!("../../spec/examples/client/tool_result.json"),
    include_str!("../../spec/examples/client/typing.json"),
    include_str!("../../spec/examples/client/typing.stopped.json"),
];

fn opt(u: &mut Unstructured) -> Result<Option<u8>> {
    Ok(if u.arbitrary::<bool>()? {
        Some(u.arbitrary()?)
    } else {
        None
    })
}

fn frame(u: &mut Unstructured) -> Result<FrameOp> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => FrameOp::Message {
            content: u.arbitrary()?,
            cmid: opt(u)?,
            parent: opt(u)?,
            spoof: u.arbitrary()?,
        },
        1 => FrameOp::Edit {
            msg: u.arbitrary()?,
            content: u.arbitrary()?,
            expected: opt(u)?,
            cmid: opt(u)?,
        },
        2 => FrameOp::Delete {
            msg: u.arbitrary()?,
            cmid: opt(u)?,
        },
        3 => FrameOp::Reaction {
            msg: u.arbitrary()?,
            emoji: u.arbitrary()?,
            add: u.arbitrary()?,
        },
        4 => FrameOp::Read {
            msg: u.arbitrary()?,
        },
        5 => FrameOp::Typing {
            is_typing: u.arbitrary()?,
            intent: u.arbitrary()?,
        },
        6 => FrameOp::Resume {
            last: u.arbitrary()?,
        },
        7 => FrameOp::Stream {
            op: u.arbitrary()?,
            msg: opt(u)?,
            content: u.arbitrary()?,
            cmid: opt(u)?,
        },
        8 => FrameOp::AgentRun {
            run: u.arbitrary()?,
            status: u.arbitrary()?,
        },
        9 => FrameOp::ToolCall {
            run: u.arbitrary()?,
            call: u.arbitrary()?,
        },
        10 => FrameOp::ToolResult {
            run: u.arbitrary()?,
            call: u.arbitrary()?,
            error: u.arbitrary()?,
        },
        11 => FrameOp::ApprovalRequest {
            run: u.arbitrary()?,
            appr: u.arbitrary()?,
        },
        12 => FrameOp::ApprovalDecision {
            run: u.arbitrary()?,
            appr: u.arbitrary()?,
            approve: u.arbitrary()?,
        },
        13 => FrameOp::AgentTyping {
            is_typing: u.arbitrary()?,
        },
        14 => FrameOp::Ping { ts: u.arbitrary()? },
        _ => FrameOp::Auth {
            user: u.arbitrary()?,
            other_tenant: u.arbitrary()?,
            defect: u.arbitrary()?,
            exp_s: u.arbitrary()?,
            agent: u.arbitrary()?,
        },
    })
}

fn op(u: &mut Unstructured) -> Result<Op> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 | 1 => Op::Open {
            user: u.arbitrary()?,
            opts: u.arbitrary()?,
            last_seq: opt(u)?,
            short_token: u.int_in_range(0..=7u8)? == 0,
        },
        2..=6 => Op::Frame {
            conn: u.arbitrary()?,
            frame: frame(u)?,
        },
        7 => {
            let conn = u.arbitrary()?;
            let text = if u.arbitrary()? {
                EXAMPLES[u.choose_index(EXAMPLES.len())?].to_owned()
            } else {
                u.arbitrary()?
            };
            Op::Raw { conn, text }
        }
        8 => match u.int_in_range(0..=4u8)? {
            0 => Op::Binary {
                conn: u.arbitrary()?,
            },
            4 => Op::SetRole {
                user: u.arbitrary()?,
                role: u.arbitrary()?,
            },
            1 => Op::Kick {
                user: u.arbitrary()?,
            },
            2 => Op::BogusCommit {
                batch: u.arbitrary()?,
                fail: u.arbitrary()?,
            },
            _ => Op::Fail,
        },
        9 => Op::Close {
            conn: u.arbitrary()?,
        },
        10 | 11 => Op::Commit,
        12 => Op::Advance {
            // Mostly within the idle timeout; sometimes far (idle closes, token expiry, 24 h).
            ms: if u.ratio(1, 6)? {
                u32::from(u.arbitrary::<u16>()?) * u32::from(u.int_in_range(1..=40u8)?)
            } else {
                u32::from(u.arbitrary::<u16>()? % 8000)
            },
        },
        13 => Op::Post {
            user: u.arbitrary()?,
            content: u.arbitrary()?,
            cmid: opt(u)?,
            parent: opt(u)?,
        },
        14 => Op::Evict {
            exact_rx: u.arbitrary()?,
            probe: u.arbitrary()?,
        },
        _ => match u.int_in_range(0..=1u8)? {
            0 => Op::Fetched {
                index: u.arbitrary()?,
                fail: u.ratio(1, 6)?,
            },
            _ => Op::Commit,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(flags) = u.arbitrary::<u8>() else {
        return;
    };
    let setup = Setup {
        announcement: flags & 0b111 == 0,
        tight_rate: flags & 0b11000 == 0,
        small_window: flags & 0b100000 != 0,
        large_window: flags & 0b10_0000 == 0 && flags & 0b100 != 0,
        tight_policy: flags & 0b1100_0000 == 0,
        faults: harness::faults_from_env(),
        fetch_delay: u.int_in_range(0..=3u8).unwrap_or(0),
    };
    let mut h = Harness::new(setup);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(o) = op(&mut u) else { break };
        h.step(&o);
    }
    h.finish();
});
