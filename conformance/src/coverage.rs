//! Clause coverage: which cases check which clauses.

use std::fmt::Write as _;

use fluxy_protocol::spec::{self, Level};
use serde::Serialize;

use crate::case::Case;

/// One clause and the cases covering it.
#[derive(Debug, Clone, Serialize)]
pub struct ClauseCoverage {
    /// Clause id.
    pub id: String,
    /// Level.
    pub level: String,
    /// Case ids.
    pub cases: Vec<String>,
}

/// Clauses no server-facing case can check, with the reason (shown instead of "uncovered").
pub const NOT_CHECKABLE: &[(&str, &str)] = &[
    (
        "FX-AUTH-12",
        "how keys are stored cannot be observed from outside; auth/api-keys-not-exposed checks the observable counterpart, FX-AUTH-17",
    ),
    (
        "FX-PRF-1",
        "a rule on conformance claims; the runner applies it by reporting a verdict per profile",
    ),
    (
        "FX-PRF-2",
        "applied by the runner's profile probes (an unknown_type or 404 answer marks a profile not implemented and blocks its cases)",
    ),
    (
        "FX-RES-6",
        "a rule for clients; a server cannot be observed keeping it",
    ),
    (
        "FX-LIM-11",
        "a permission for servers (every refused frame MAY count) and a rule for clients; the runner keeps it by pacing every frame it sends",
    ),
    (
        "FX-HIS-9",
        "a cost rule; measured by fluxy-bench (docs/benchmarks.md: flat page cost at 1k and 1M events), not timed in a short black-box run",
    ),
];

/// Coverage of every clause of the spec by `cases`.
pub fn coverage(cases: &[Case]) -> Vec<ClauseCoverage> {
    spec::clauses()
        .into_iter()
        .map(|c| ClauseCoverage {
            cases: cases
                .iter()
                .filter(|k| k.clauses.contains(&c.id.as_str()))
                .map(|k| k.id.to_string())
                .collect(),
            level: c.level.as_str().to_string(),
            id: c.id,
        })
        .collect()
}

/// MUST clauses (tombstones excluded) with no case.
pub fn uncovered_must(cov: &[ClauseCoverage]) -> Vec<String> {
    cov.iter()
        .filter(|c| c.level == Level::Must.as_str() && c.cases.is_empty())
        .filter(|c| !NOT_CHECKABLE.iter().any(|(id, _)| *id == c.id))
        .map(|c| c.id.clone())
        .collect()
}

/// Clause ids named by cases that are not in the spec.
pub fn unknown_clauses(cases: &[Case]) -> Vec<String> {
    let all: Vec<String> = spec::clauses().into_iter().map(|c| c.id).collect();
    let mut out: Vec<String> = cases
        .iter()
        .flat_map(|k| k.clauses.iter())
        .filter(|c| !all.iter().any(|a| a == *c))
        .map(|c| c.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Text table of the coverage.
pub fn render(cov: &[ClauseCoverage]) -> String {
    let mut s = String::new();
    for c in cov {
        let not_checkable = NOT_CHECKABLE.iter().find(|(id, _)| *id == c.id);
        let cases = if let (true, Some((_, why))) = (c.cases.is_empty(), not_checkable) {
            format!("(not checkable: {why})")
        } else if c.cases.is_empty() {
            if c.level == "MUST" {
                "UNCOVERED".to_string()
            } else {
                "(uncovered)".to_string()
            }
        } else {
            c.cases.join(", ")
        };
        let _ = writeln!(s, "{:<11} {:<7} {}", c.id, c.level, cases);
    }
    let must: Vec<&ClauseCoverage> = cov.iter().filter(|c| c.level == "MUST").collect();
    let covered = must.iter().filter(|c| !c.cases.is_empty()).count();
    let mnc = must
        .iter()
        .filter(|c| c.cases.is_empty() && NOT_CHECKABLE.iter().any(|(id, _)| *id == c.id))
        .count();
    let other: Vec<&ClauseCoverage> = cov
        .iter()
        .filter(|c| c.level == "SHOULD" || c.level == "MAY")
        .collect();
    let ocov = other.iter().filter(|c| !c.cases.is_empty()).count();
    let onc = other
        .iter()
        .filter(|c| c.cases.is_empty() && NOT_CHECKABLE.iter().any(|(id, _)| *id == c.id))
        .count();
    let _ = writeln!(
        s,
        "\nMUST clauses covered: {covered}/{} ({mnc} not checkable from outside); SHOULD/MAY covered: {ocov}/{} ({onc} not checkable from outside)",
        must.len(),
        other.len()
    );
    s
}
