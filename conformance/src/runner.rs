//! Selecting, running and judging cases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxy_protocol::spec::{self, Level};
use serde::Serialize;

use crate::case::{Case, CaseError, Verdict};
use crate::ctx::Ctx;
use crate::env::Env;
use crate::transcript::Entry;

/// How to run the selected cases.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Globs on case ids or clause ids; empty selects every case.
    pub filters: Vec<String>,
    /// SHOULD violations count as failures.
    pub strict: bool,
    /// Cases run at once.
    pub jobs: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            filters: vec![],
            strict: false,
            jobs: 4,
        }
    }
}

/// Glob match with `*` (any run) and `?` (one character), case-sensitive.
pub fn glob_match(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// True when `case` is selected by `filters` (a filter without wildcards also matches as a
/// prefix of the case id, so `ord` selects the group).
pub fn selected(case: &Case, filters: &[String]) -> bool {
    if filters.is_empty() {
        return true;
    }
    filters.iter().any(|f| {
        glob_match(f, case.id)
            || (!f.contains(['*', '?']) && (case.id.starts_with(&format!("{f}/")) || case.id == f))
            || case.clauses.iter().any(|c| glob_match(f, c))
    })
}

/// A clause with its level and text, as reports show it.
#[derive(Debug, Clone, Serialize)]
pub struct ClauseInfo {
    /// Clause id.
    pub id: String,
    /// MUST, SHOULD, MAY or REMOVED (or UNKNOWN when the id is not in the spec).
    pub level: String,
    /// The clause text.
    pub text: String,
}

/// Look a clause up for reports.
pub fn clause_info(id: &str) -> ClauseInfo {
    match spec::clause(id) {
        Some(c) => ClauseInfo {
            id: c.id,
            level: c.level.as_str().to_string(),
            text: c.text,
        },
        None => ClauseInfo {
            id: id.to_string(),
            level: "UNKNOWN".into(),
            text: "(not in the spec)".into(),
        },
    }
}

/// Details of a failed or non-strict case.
#[derive(Debug, Clone, Serialize)]
pub struct FailureReport {
    /// The violated clause.
    pub clause: ClauseInfo,
    /// What the spec requires.
    pub expected: String,
    /// What the server did.
    pub observed: String,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Case id.
    pub id: String,
    /// Group.
    pub group: String,
    /// What it checks.
    pub title: String,
    /// Clauses the case checks.
    pub clauses: Vec<ClauseInfo>,
    /// Verdict.
    pub verdict: Verdict,
    /// Wall time.
    pub duration_ms: u64,
    /// Skip reason or error message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failure details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureReport>,
    /// Transcript of every connection (kept for fail, non-strict and error verdicts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transcript: Vec<Entry>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Runner name and version.
    pub runner: String,
    /// Protocol version tested.
    pub protocol_version: String,
    /// Unique prefix of this run's names.
    pub run_id: String,
    /// Base URL tested.
    pub endpoint: String,
    /// Whether the embedded reference server was used.
    pub embedded: bool,
    /// `--strict`.
    pub strict: bool,
    /// `--seed`.
    pub seed: u64,
    /// `--timeout-scale`.
    pub timeout_scale: f64,
    /// Wall time of the whole run.
    pub wall_ms: u64,
    /// Count per verdict.
    pub totals: BTreeMap<String, usize>,
    /// Every case.
    pub cases: Vec<CaseReport>,
}

impl Report {
    /// 0 when nothing failed or errored, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self
            .cases
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Fail | Verdict::Error))
        {
            1
        } else {
            0
        }
    }

    /// Per group: verdict → count.
    pub fn by_group(&self) -> BTreeMap<String, BTreeMap<Verdict, usize>> {
        let mut m: BTreeMap<String, BTreeMap<Verdict, usize>> = BTreeMap::new();
        for c in &self.cases {
            *m.entry(c.group.clone())
                .or_default()
                .entry(c.verdict)
                .or_default() += 1;
        }
        m
    }
}

/// Judge a case's result.
pub fn judge(
    res: &Result<(), CaseError>,
    strict: bool,
) -> (Verdict, Option<String>, Option<FailureReport>) {
    match res {
        Ok(()) => (Verdict::Pass, None, None),
        Err(CaseError::Skip(r)) => (Verdict::Skipped, Some(r.clone()), None),
        Err(CaseError::Error(r)) => (Verdict::Error, Some(r.clone()), None),
        Err(CaseError::Fail(f)) => {
            let ci = clause_info(&f.clause);
            let lvl = spec::clause(&f.clause)
                .map(|c| c.level)
                .unwrap_or(Level::Must);
            let v = if matches!(lvl, Level::Should | Level::May) && !strict {
                Verdict::NonStrict
            } else {
                Verdict::Fail
            };
            (
                v,
                None,
                Some(FailureReport {
                    clause: ci,
                    expected: f.expected.clone(),
                    observed: f.observed.clone(),
                }),
            )
        }
    }
}

/// Hard limit on one case, before scaling.
pub const CASE_LIMIT: Duration = Duration::from_secs(90);

/// Run `cases` against `env`.
pub async fn run_cases(env: Arc<Env>, cases: &[Case], opts: &RunOptions, embedded: bool) -> Report {
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let mut handles = Vec::new();
    for case in cases.iter().copied() {
        let env = env.clone();
        let sem = sem.clone();
        let strict = opts.strict;
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            run_one(env, case, strict).await
        }));
    }
    let mut out = Vec::new();
    for (h, case) in handles.into_iter().zip(cases.iter()) {
        match h.await {
            Ok(r) => out.push(r),
            Err(e) => out.push(CaseReport {
                id: case.id.into(),
                group: case.group().into(),
                title: case.title.into(),
                clauses: case.clauses.iter().map(|c| clause_info(c)).collect(),
                verdict: Verdict::Error,
                duration_ms: 0,
                reason: Some(format!("runner task failed: {e}")),
                failure: None,
                transcript: vec![],
            }),
        }
    }
    let mut totals = BTreeMap::new();
    for v in [
        Verdict::Pass,
        Verdict::Fail,
        Verdict::NonStrict,
        Verdict::Skipped,
        Verdict::Error,
    ] {
        totals.insert(
            v.as_str().to_string(),
            out.iter().filter(|c| c.verdict == v).count(),
        );
    }
    Report {
        runner: format!("fluxy-conformance {}", env!("CARGO_PKG_VERSION")),
        protocol_version: fluxy_protocol::PROTOCOL_VERSION.into(),
        run_id: env.run_id.clone(),
        endpoint: env.target.endpoint.clone(),
        embedded,
        strict: opts.strict,
        seed: env.seed,
        timeout_scale: env.scale,
        wall_ms: start.elapsed().as_millis() as u64,
        totals,
        cases: out,
    }
}

async fn run_one(env: Arc<Env>, case: Case, strict: bool) -> CaseReport {
    let ctx = Ctx::new(env.clone(), case.id);
    let t0 = Instant::now();
    let limit = env.scaled(CASE_LIMIT);
    let res = {
        let fut = (case.run)(&ctx);
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(CaseError::Error(format!(
                "case did not finish within {:.0}s",
                limit.as_secs_f64()
            ))),
        }
    };
    let (verdict, reason, failure) = judge(&res, strict);
    let transcript = if matches!(verdict, Verdict::Fail | Verdict::NonStrict | Verdict::Error) {
        ctx.tr.entries()
    } else {
        vec![]
    };
    CaseReport {
        id: case.id.into(),
        group: case.group().into(),
        title: case.title.into(),
        clauses: case.clauses.iter().map(|c| clause_info(c)).collect(),
        verdict,
        duration_ms: t0.elapsed().as_millis() as u64,
        reason,
        failure,
        transcript,
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("ord/*", "ord/fifo"));
        assert!(glob_match("FX-ORD-*", "FX-ORD-3"));
        assert!(!glob_match("FX-ORD-*", "FX-ACK-3"));
        assert!(glob_match("*fifo", "ord/one-sender-fifo"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
    }
}
