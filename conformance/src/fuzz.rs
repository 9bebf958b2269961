//! Network fuzz group: many malformed and mutated frames (from `fluxy_protocol::arbitrary`)
//! sent to a live room, checking each is answered with the right error code, that the server
//! stays up for everyone, and that no acknowledged message is lost.

use fluxy_protocol::arbitrary::{client_frame, mutated_frame_text};
use fluxy_protocol::{ClientFrame, ErrorCode, ServerFrame};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;

use crate::case;
use crate::case::{ensure, ensure_eq, fail, Case, CaseError};
use crate::cases::{msg_c, send};
use crate::ctx::{Conn, Ctx};

/// Cases of this group.
pub fn cases() -> Vec<Case> {
    vec![
        case!("fuzz/mutated-frames", ["FX-FRM-3", "FX-FRM-13", "FX-ERR-7", "FX-ERR-2", "FX-ACK-1", "FX-ORD-1"], "mutated frames get the decoder's error code; the server keeps serving and loses no acked message", mutated),
        case!("fuzz/random-valid-frames", ["FX-ERR-7", "FX-ORD-1", "FX-ACK-1"], "random well-formed frames from an agent keep the timeline gap-free and every ack in history", random_valid),
        case!("fuzz/http-bodies", ["FX-ERR-4", "FX-ERR-7"], "mutated HTTP bodies get 4xx ErrorBodies, never a 5xx or a hang", http_bodies),
    ]
}

/// A deterministic runner for `seed`.
pub fn seeded(seed: u64, salt: u8) -> TestRunner {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = salt;
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &s),
    )
}

/// Draw `n` values of `strat`.
pub fn draw<S: Strategy>(runner: &mut TestRunner, strat: &S, n: usize) -> Vec<S::Value> {
    (0..n)
        .filter_map(|_| strat.new_tree(runner).ok().map(|t| t.current()))
        .collect()
}

/// Send `text`, then a ping; return every frame received before the pong.
async fn exchange(c: &mut Conn, text: &str, ts: u64) -> Result<Vec<ServerFrame>, CaseError> {
    let before = c.log.len();
    c.send_text(text)?;
    c.send_json(&json!({"type":"ping","ts":ts}))?;
    match c
        .wait_frame(
            "FX-ERR-7",
            "the server to keep answering (pong after a fuzz frame)",
            |f| matches!(f, ServerFrame::Pong(p) if p.echo == Some(ts)),
        )
        .await
    {
        Ok(_) => {}
        Err(CaseError::Fail(f)) => {
            return Err(c.unechoed_pong(before, ts).unwrap_or(CaseError::Fail(f)))
        }
        Err(e) => return Err(e),
    }
    Ok(c.log[before..]
        .iter()
        .filter_map(|i| i.frame().cloned())
        .filter(|f| !matches!(f, ServerFrame::Pong(p) if p.echo == Some(ts)))
        .collect())
}

/// Whether `got` answers a frame whose first fault, by the reference decoder, is `want`: any
/// fault's code is correct (FX-FRM-13).
fn acceptable(text: &str, want: ErrorCode, got: ErrorCode) -> bool {
    use ErrorCode::*;
    if got == want {
        return true;
    }
    let ty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str().map(str::to_owned)));
    let unknown_type = ty.as_deref().is_some_and(|t| {
        ClientFrame::decode(&json!({ "type": t }).to_string())
            .is_err_and(|e| e.code() == UnknownType)
    });
    match (want, got) {
        // An unknown type with another fault (a bad `ref`, say).
        (UnknownType, InvalidFrame) | (InvalidFrame, UnknownType) => unknown_type,
        // Field faults of a known type: a missing/invalid content either way.
        (InvalidFrame, InvalidContent) | (InvalidContent, InvalidFrame) => !unknown_type,
        // A malformed agent frame from a non-agent.
        (InvalidFrame | InvalidContent, Forbidden) => matches!(
            ty.as_deref(),
            Some(
                "agentRun"
                    | "tool_call"
                    | "tool_result"
                    | "tool_error"
                    | "approval_request"
                    | "agentTyping"
            )
        ),
        _ => false,
    }
}

async fn mutated(ctx: &Ctx) -> Result<(), CaseError> {
    let owner = ctx.user("owner").await?;
    let fz = ctx.user("fuzzer").await?;
    let room = ctx.room(&owner, &[&fz]).await?;
    let mut co = ctx.connect(&owner, &room).await?;
    let mut cf = ctx.connect(&fz, &room).await?;
    let mut runner = seeded(ctx.env.seed, 1);
    let texts = draw(&mut runner, &mutated_frame_text(), 150);
    let mut acked = Vec::new();
    let mut checked = 0;
    for (i, text) in texts.iter().enumerate() {
        if i % 15 == 0 {
            let cm = ctx.cmid();
            co.send_json(&msg_c(&format!("safe {i}"), &cm, &format!("safe{i}")))?;
            acked.push(
                co.ack("FX-ERR-7", &format!("safe{i}"))
                    .await?
                    .seq
                    .unwrap_or(0),
            );
        }
        let mut answers = exchange(&mut cf, text, 900_000 + i as u64).await?;
        // A rate-limited frame was not processed: retry it after the advised delay.
        for _ in 0..3 {
            let limited = answers.iter().find_map(|f| match f {
                ServerFrame::Error(e) if e.code == ErrorCode::RateLimited => e.retry_after_ms,
                _ => None,
            });
            let Some(ms) = limited else { break };
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(5000))).await;
            answers = exchange(&mut cf, text, 800_000 + i as u64).await?;
        }
        for f in &answers {
            if let Some(e) = f.clone().into_timeline() {
                if e.actor() == fz.id {
                    // The mutated frame was valid and created an event: it must have been acked.
                    ensure(
                        answers
                            .iter()
                            .any(|a| matches!(a, ServerFrame::Ack(k) if k.seq == Some(e.seq()))),
                        "FX-ACK-1",
                        format!("an ack for the event created by fuzz frame {text}"),
                        "none",
                    )?;
                    acked.push(e.seq());
                }
            }
        }
        if let Err(e) = ClientFrame::decode(text) {
            let want = e.code();
            let got: Vec<ErrorCode> = answers
                .iter()
                .filter_map(|f| match f {
                    ServerFrame::Error(x) => Some(x.code),
                    _ => None,
                })
                .collect();
            let ty = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                .unwrap_or_default();
            if got.contains(&ErrorCode::UnknownType) && OPTIONAL_CLIENT_TYPES.contains(&ty.as_str())
            {
                // A frame type of a profile this server does not implement: FX-PRF-2's
                // `unknown_type` is the answer, whatever else is wrong with the frame.
                checked += 1;
                continue;
            }
            if !got.iter().any(|g| acceptable(text, want, *g)) {
                return Err(fail(
                    "FX-FRM-3",
                    format!(
                        "error {want} for the frame {} ({e})",
                        crate::ctx::short(text, 300)
                    ),
                    format!(
                        "answers {:?}",
                        answers
                            .iter()
                            .map(|f| crate::ctx::short(&f.encode(), 200))
                            .collect::<Vec<_>>()
                    ),
                ));
            }
            checked += 1;
        }
    }
    ctx.note(&format!("{} mutated frames sent, {checked} rejected by the reference decoder and checked for their code", texts.len()));
    // Everyone is still served; nothing acknowledged is lost.
    let last = send(ctx, &mut co, "after the fuzz").await?;
    acked.push(last.seq.unwrap_or(0));
    let h: Vec<u64> = crate::cases::stored_timeline(ctx, &owner, &room, 200)
        .await?
        .iter()
        .map(|(e, _)| e.seq())
        .collect();
    ensure_eq(
        "FX-ORD-1",
        "history seqs are gap-free",
        h.clone(),
        (1..=h.len() as u64).collect(),
    )?;
    for s in &acked {
        ensure(
            h.contains(s),
            "FX-ERR-7",
            format!("acked seq {s} in history"),
            "missing",
        )?;
    }
    let fresh = ctx.connect(&fz, &room).await?;
    ensure(
        fresh.welcome.is_some(),
        "FX-ERR-7",
        "new connections still accepted",
        "none",
    )
}

async fn random_valid(ctx: &Ctx) -> Result<(), CaseError> {
    let owner = ctx.user("owner").await?;
    let ag = ctx.user_roles("agent", &["agent", "member"]).await?;
    let room = ctx.room(&owner, &[&ag]).await?;
    let mut co = ctx.connect(&owner, &room).await?;
    let mut cg = ctx.connect(&ag, &room).await?;
    let mut runner = seeded(ctx.env.seed, 2);
    let frames = draw(&mut runner, &client_frame(), 120);
    let mut acked = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        // Keep the connection's own token: replace auth frames by pings.
        let text = match f {
            ClientFrame::Auth(_) => r#"{"type":"ping"}"#.to_string(),
            other => other.encode(),
        };
        let answers = exchange(&mut cg, &text, 700_000 + i as u64).await?;
        for a in &answers {
            if let ServerFrame::Ack(k) = a {
                if let Some(s) = k.seq {
                    acked.push(s);
                }
            }
            if let ServerFrame::Error(e) = a {
                ensure(
                    e.code != ErrorCode::InternalError,
                    "FX-ERR-7",
                    format!("no internal_error for a valid frame {text}"),
                    e.message.clone(),
                )?;
            }
        }
    }
    let last = send(ctx, &mut co, "after").await?;
    co.wait_seq("FX-ORD-1", last.seq.unwrap_or(0)).await?;
    let live: Vec<u64> = co.timeline().iter().map(|(e, _)| e.seq()).collect();
    ensure_eq(
        "FX-ORD-1",
        "live seqs on an observer",
        live.clone(),
        (1..=live.len() as u64).collect(),
    )?;
    for s in &acked {
        ensure(
            live.contains(s),
            "FX-ACK-1",
            format!("acked seq {s} delivered"),
            "missing",
        )?;
    }
    Ok(())
}

async fn http_bodies(ctx: &Ctx) -> Result<(), CaseError> {
    let a = ctx.user("a").await?;
    let room = ctx.room(&a, &[]).await?;
    let mut runner = seeded(ctx.env.seed, 3);
    let texts = draw(&mut runner, &mutated_frame_text(), 60);
    for (i, t) in texts.iter().enumerate() {
        let path = if i % 2 == 0 { "/messages" } else { "/rooms" };
        let url = format!("{}{}", ctx.env.target.endpoint, path);
        ctx.tr.push(
            "http",
            crate::transcript::Dir::Sent,
            &format!("POST {path} {t}"),
        );
        let res = ctx
            .env
            .http
            .post(&url)
            .bearer_auth(&a.token)
            .header("Content-Type", "application/json")
            .body(t.clone())
            .send()
            .await
            .map_err(|e| {
                fail(
                    "FX-ERR-7",
                    "an HTTP answer to a mutated body",
                    crate::env::error_chain(&e),
                )
            })?;
        let st = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        ctx.tr.push(
            "http",
            crate::transcript::Dir::Received,
            &format!("{st} {body}"),
        );
        ensure(
            st < 500,
            "FX-ERR-7",
            format!("no 5xx for a mutated body on POST {path}"),
            format!("{st} {body}"),
        )?;
        if st >= 400 {
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|x| x.as_str()).map(str::to_owned));
            let ok = code
                .as_deref()
                .and_then(|c| {
                    fluxy_protocol::codes::ALL_ERROR_CODES
                        .iter()
                        .find(|k| k.as_str() == c)
                })
                .is_some_and(|k| k.http_status() == st);
            ensure(
                ok,
                "FX-ERR-4",
                "an ErrorBody whose code matches the status",
                format!("{st} {body}"),
            )?;
        }
    }
    let r = ctx.get(&format!("/rooms/{room}"), &a.token).await?;
    r.expect_status("FX-ERR-7", "the server still answers", 200)
}

/// Client frame types of the optional profiles (edits, presence, agents): a server without
/// the profile answers them `unknown_type` (FX-PRF-2).
const OPTIONAL_CLIENT_TYPES: &[&str] = &[
    "edit",
    "delete",
    "reaction",
    "read",
    "typing",
    "stream",
    "agentRun",
    "tool_call",
    "tool_result",
    "tool_error",
    "approval_request",
    "approval_decision",
    "agentTyping",
];
