//! Profiles: the parts of the spec a server may implement separately (spec section 17), the
//! probes that tell whether a server implements one, and the verdict per profile.

use std::collections::BTreeMap;

use fluxy_protocol::{ErrorCode, ServerFrame};
use serde::Serialize;
use serde_json::json;

use crate::case::{Case, CaseError, Verdict};
use crate::ctx::{Ctx, Incoming};

/// Every profile, in report order. `core` is required of every server (FX-PRF-1).
pub const PROFILES: [&str; 8] = [
    "core", "history", "presence", "edits", "agents", "fallback", "batching", "compat",
];

/// The profile a case belongs to.
pub fn of_case(id: &str) -> &'static str {
    if id == "trn/batch-opt-in" {
        return "batching";
    }
    if id == "dur/agent-state-across-restart" {
        return "agents";
    }
    match id.split('/').next().unwrap_or(id) {
        "his" => "history",
        "pre" => "presence",
        "edt" => "edits",
        "agt" => "agents",
        "trn" => "fallback",
        "compat" => "compat",
        _ => "core",
    }
}

/// What a profile probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "evidence", rename_all = "kebab-case")]
pub enum Probe {
    /// The server answers the profile's routes or frames.
    Implemented,
    /// The server answers the way FX-PRF-2 prescribes for a profile it does not implement.
    NotImplemented(String),
    /// The probe could not tell (its own positive control failed); the cases run.
    Unknown(String),
}

/// Summary of one profile in a run.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSummary {
    /// `conformant`, `not-conformant`, `not-implemented`, `inconclusive` or `not-run`.
    pub status: String,
    /// A sentence for people: the status and why.
    pub summary: String,
    /// Count per verdict.
    pub totals: BTreeMap<String, usize>,
    /// The probe's finding, when the profile was probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// Probe `profile` (only the optional profiles are probed; `core` never is).
pub async fn probe(ctx: &Ctx, profile: &str) -> Probe {
    let r = match profile {
        "history" => probe_history(ctx).await,
        "presence" => probe_frame(ctx, json!({"type":"typing","isTyping":true}), false).await,
        "edits" => {
            probe_frame(
                ctx,
                json!({"type":"reaction","messageId":1,"emoji":"👍","op":"add"}),
                false,
            )
            .await
        }
        "agents" => probe_frame(ctx, json!({"type":"agentTyping","isTyping":true}), true).await,
        "fallback" => probe_fallback(ctx).await,
        _ => Ok(Probe::Implemented),
    };
    r.unwrap_or_else(|e| Probe::Unknown(e.to_string()))
}

/// A new owner and room, with the positive control every route probe needs: the room exists
/// and its owner may use it (a WebSocket connect succeeds), so a 404 is about the route.
async fn controlled_room(ctx: &Ctx) -> Result<(crate::ctx::User, String), CaseError> {
    let a = ctx.user("probe").await?;
    let room = ctx.room(&a, &[]).await?;
    drop(ctx.connect_q(&a, &room, "replay=off").await?);
    Ok((a, room))
}

async fn probe_history(ctx: &Ctx) -> Result<Probe, CaseError> {
    let (a, room) = controlled_room(ctx).await?;
    let r = ctx
        .get(&format!("/rooms/{room}/history?limit=1"), &a.token)
        .await?;
    Ok(if r.status == 404 {
        Probe::NotImplemented(format!(
            "GET /rooms/{{roomId}}/history answered 404 for a room its owner connects to ({})",
            crate::ctx::short(&r.text, 120)
        ))
    } else {
        Probe::Implemented
    })
}

async fn probe_fallback(ctx: &Ctx) -> Result<Probe, CaseError> {
    let (a, room) = controlled_room(ctx).await?;
    let poll = ctx
        .get(
            &format!("/rooms/{room}/poll?afterSeq=0&timeoutMs=0"),
            &a.token,
        )
        .await?;
    let sse = ctx
        .http_with(
            reqwest::Method::GET,
            &format!("/rooms/{room}/stream"),
            Some(&a.token),
            None,
            &[("Accept", "application/json")],
            Some(ctx.wait()),
        )
        .await?;
    Ok(if poll.status == 404 && sse.status == 404 {
        Probe::NotImplemented(
            "GET /rooms/{roomId}/poll and /stream answered 404 for a room its owner connects to"
                .into(),
        )
    } else {
        Probe::Implemented
    })
}

/// Send one frame of the profile on a fresh connection; `unknown_type` means not implemented.
async fn probe_frame(
    ctx: &Ctx,
    mut frame: serde_json::Value,
    agent: bool,
) -> Result<Probe, CaseError> {
    let a = if agent {
        ctx.user_roles("probe", &["agent"]).await?
    } else {
        ctx.user("probe").await?
    };
    let room = ctx.room(&a, &[]).await?;
    let mut c = ctx.connect_q(&a, &room, "replay=off").await?;
    let r = ctx.r();
    frame["ref"] = json!(r);
    let ty = frame["type"].as_str().unwrap_or("?").to_string();
    c.send_json(&frame)?;
    // Positive control on the same connection: a ping is answered.
    c.send_json(&json!({"type":"ping","ts":1}))?;
    let deadline = c.wait_dur();
    let got = c
        .wait_item_for(
            "FX-PRF-2",
            "an answer to the probe or the ping",
            deadline,
            &mut |it: &Incoming| match it.frame() {
                Some(ServerFrame::Error(e)) => e.reference.as_deref() == Some(r.as_str()),
                Some(ServerFrame::Pong(_)) => true,
                _ => false,
            },
        )
        .await;
    Ok(match got {
        Ok(it) => match it.frame() {
            Some(ServerFrame::Error(e)) if e.code == ErrorCode::UnknownType => {
                Probe::NotImplemented(format!("`{ty}` frames are answered `error unknown_type`"))
            }
            _ => Probe::Implemented,
        },
        Err(_) => Probe::Unknown(format!("no answer to `{ty}` or `ping`")),
    })
}

/// The verdict of each selected profile from its cases' verdicts and probe.
pub fn summarise(
    cases: &[(Case, Verdict)],
    probes: &BTreeMap<String, Probe>,
) -> BTreeMap<String, ProfileSummary> {
    let mut out = BTreeMap::new();
    for p in PROFILES {
        let vs: Vec<Verdict> = cases
            .iter()
            .filter(|(c, _)| of_case(c.id) == p)
            .map(|(_, v)| *v)
            .collect();
        if vs.is_empty() {
            continue;
        }
        let mut totals = BTreeMap::new();
        for v in &vs {
            *totals.entry(v.as_str().to_string()).or_insert(0) += 1;
        }
        let n = |v: Verdict| vs.iter().filter(|x| **x == v).count();
        let probe = probes.get(p).cloned();
        let (status, summary) = match &probe {
            Some(Probe::NotImplemented(ev)) => (
                "not-implemented",
                format!("{p} not implemented ({ev}; its {} cases blocked)", vs.len()),
            ),
            _ if n(Verdict::Fail) > 0 => (
                "not-conformant",
                format!(
                    "{p} NOT CONFORMANT ({} of {} cases fail)",
                    n(Verdict::Fail),
                    vs.len()
                ),
            ),
            _ if n(Verdict::Blocked) + n(Verdict::Error) > 0 => (
                "inconclusive",
                format!(
                    "{p} inconclusive ({} blocked, {} errors, no failure)",
                    n(Verdict::Blocked),
                    n(Verdict::Error)
                ),
            ),
            _ => (
                "conformant",
                format!(
                    "{p} CONFORMANT ({} pass, {} skipped, {} non-strict)",
                    n(Verdict::Pass),
                    n(Verdict::Skipped),
                    n(Verdict::NonStrict)
                ),
            ),
        };
        out.insert(
            p.to_string(),
            ProfileSummary {
                status: status.into(),
                summary,
                totals,
                probe,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_a_known_profile() {
        for c in crate::cases::all() {
            assert!(PROFILES.contains(&of_case(c.id)), "{}", c.id);
        }
        assert_eq!(of_case("trn/batch-opt-in"), "batching");
        assert_eq!(of_case("trn/poll"), "fallback");
        assert_eq!(of_case("ord/one-sender-fifo"), "core");
    }
}
