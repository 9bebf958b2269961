//! Selecting, running and judging cases.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxy_protocol::spec::{self, Level};
use serde::Serialize;

use crate::case::{Case, CaseError, Failure, Verdict};
use crate::ctx::Ctx;
use crate::env::Env;
use crate::profile::{self, Probe, ProfileSummary};
use crate::transcript::{Entry, Observation};

/// How to run the selected cases.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Globs on case ids or clause ids; empty selects every case.
    pub filters: Vec<String>,
    /// SHOULD violations count as failures.
    pub strict: bool,
    /// Cases run at once.
    pub jobs: usize,
    /// Profiles to run (`core`, `history`, …); empty runs every profile.
    pub profiles: Vec<String>,
    /// Stop at the first case that makes the run exit non-zero (fail, error or blocked);
    /// cases not started by then are reported `skipped`.
    pub fail_fast: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            filters: vec![],
            strict: false,
            jobs: 4,
            profiles: vec![],
            fail_fast: false,
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
    /// The profile the case belongs to.
    pub profile: String,
    /// Failure details (for `fail` and `non-strict`), or the precondition that did not hold
    /// (for `blocked`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureReport>,
    /// Deviations from clauses this case does not check, seen and worked around by the
    /// runner's helpers (they are judged by the cases that cite those clauses).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<Observation>,
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
    /// The verdict of each profile that had selected cases.
    pub profiles: BTreeMap<String, ProfileSummary>,
    /// Failures and blocks grouped by the clause that was violated first (root cause), the
    /// biggest group first.
    pub root_causes: Vec<RootCause>,
    /// Deviations of the set-up routes seen by the preflight (clause, what).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub setup_deviations: Vec<(String, String)>,
    /// Every case.
    pub cases: Vec<CaseReport>,
}

/// Cases that failed or were blocked on one clause.
#[derive(Debug, Clone, Serialize)]
pub struct RootCause {
    /// The clause.
    pub clause: ClauseInfo,
    /// Cases that fail it (they cite it).
    pub failed: Vec<String>,
    /// Cases blocked on it (they needed it to hold).
    pub blocked: Vec<String>,
    /// What one of them observed.
    pub example: String,
}

impl Report {
    /// 0 when nothing failed, errored or was blocked, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self
            .cases
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Fail | Verdict::Error | Verdict::Blocked))
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

fn failure_report(f: &Failure) -> FailureReport {
    FailureReport {
        clause: clause_info(&f.clause),
        expected: f.expected.clone(),
        observed: f.observed.clone(),
    }
}

/// Judge a case's result. A failure of a clause the case does not cite (`clauses`) is a
/// precondition that did not hold: `blocked`, never `fail`. An observation (a deviation a
/// helper worked around) of a clause the case cites fails a case that otherwise passed.
pub fn judge(
    res: &Result<(), CaseError>,
    strict: bool,
    clauses: &[&str],
    observations: &[Observation],
) -> (Verdict, Option<String>, Option<FailureReport>) {
    let fail_on = |f: &Failure| {
        let lvl = spec::clause(&f.clause)
            .map(|c| c.level)
            .unwrap_or(Level::Must);
        let v = if matches!(lvl, Level::Should | Level::May) && !strict {
            Verdict::NonStrict
        } else {
            Verdict::Fail
        };
        (v, None, Some(failure_report(f)))
    };
    match res {
        Ok(()) => match observations
            .iter()
            .find(|o| clauses.contains(&o.clause.as_str()))
        {
            Some(o) => fail_on(&Failure {
                clause: o.clause.clone(),
                expected: o.expected.clone(),
                observed: o.observed.clone(),
            }),
            None => (Verdict::Pass, None, None),
        },
        Err(CaseError::Skip(r)) => (Verdict::Skipped, Some(r.clone()), None),
        Err(CaseError::Error(r)) => (Verdict::Error, Some(r.clone()), None),
        Err(CaseError::Blocked(f)) => (
            Verdict::Blocked,
            Some(format!("blocked: precondition {} did not hold", f.clause)),
            Some(failure_report(f)),
        ),
        Err(CaseError::Fail(f)) if !clauses.contains(&f.clause.as_str()) => (
            Verdict::Blocked,
            Some(format!(
                "blocked: precondition {} (not a clause of this case) did not hold",
                f.clause
            )),
            Some(failure_report(f)),
        ),
        Err(CaseError::Fail(f)) => fail_on(f),
    }
}

/// Group failed and blocked cases by the clause at fault.
pub fn root_causes(cases: &[CaseReport]) -> Vec<RootCause> {
    let mut m: BTreeMap<String, RootCause> = BTreeMap::new();
    for c in cases {
        let Some(f) = &c.failure else { continue };
        if !matches!(c.verdict, Verdict::Fail | Verdict::Blocked) {
            continue;
        }
        let rc = m.entry(f.clause.id.clone()).or_insert_with(|| RootCause {
            clause: f.clause.clone(),
            failed: vec![],
            blocked: vec![],
            example: format!("expected {}; observed {}", f.expected, f.observed),
        });
        if c.verdict == Verdict::Fail {
            rc.failed.push(c.id.clone());
        } else {
            rc.blocked.push(c.id.clone());
        }
    }
    let mut v: Vec<RootCause> = m.into_values().collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.failed.len() + r.blocked.len()));
    v
}

/// Hard limit on one case, before scaling.
pub const CASE_LIMIT: Duration = Duration::from_secs(90);

/// Run `cases` against `env`.
pub async fn run_cases(env: Arc<Env>, cases: &[Case], opts: &RunOptions, embedded: bool) -> Report {
    let start = Instant::now();
    // Probe every optional profile that has selected cases (FX-PRF-2).
    let mut probes: BTreeMap<String, Probe> = BTreeMap::new();
    for p in profile::PROFILES {
        if p == "core" || !cases.iter().any(|c| profile::of_case(c.id) == p) {
            continue;
        }
        let ctx = Ctx::new(env.clone(), "probe");
        let found =
            tokio::time::timeout(env.scaled(Duration::from_secs(30)), profile::probe(&ctx, p))
                .await
                .unwrap_or_else(|_| Probe::Unknown("the probe did not finish".into()));
        probes.insert(p.to_string(), found);
    }
    let _ = env.probes.set(probes.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    // Set by the first case that fails, errs or is blocked when `fail_fast` is on.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    // Cases that restart the server run alone, after every other case has finished.
    let (normal, restarting): (Vec<Case>, Vec<Case>) = cases
        .iter()
        .copied()
        .partition(|c| !crate::cases::dur::restarts(c.id));
    let mut order = normal.clone();
    order.extend(restarting.iter().copied());
    for case in normal.iter().copied() {
        let env = env.clone();
        let sem = sem.clone();
        let strict = opts.strict;
        let absent = match probes.get(profile::of_case(case.id)) {
            Some(Probe::NotImplemented(ev)) => Some(ev.clone()),
            _ => None,
        };
        let (stop, fail_fast) = (stop.clone(), opts.fail_fast);
        // Cases start in registry order: the permit is taken before the task is spawned.
        let permit = match absent {
            Some(_) => None,
            None => sem.acquire_owned().await.ok(),
        };
        handles.push(tokio::spawn(async move {
            if let Some(ev) = absent {
                return not_implemented(case, &ev);
            }
            let _permit = permit;
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return not_run(case);
            }
            let r = run_one(env, case, strict).await;
            if fail_fast && stops_run(r.verdict) {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            r
        }));
    }
    let mut out = Vec::new();
    let mut restart_reports = Vec::new();
    // Wait for the others first (their reports are collected below, in order).
    let mut normal_reports = Vec::new();
    for h in handles {
        normal_reports.push(h.await);
    }
    for case in restarting.iter().copied() {
        let env = env.clone();
        let strict = opts.strict;
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            restart_reports.push(Ok(not_run(case)));
            continue;
        }
        let r = tokio::spawn(async move { run_one(env, case, strict).await }).await;
        if opts.fail_fast && r.as_ref().map_or(true, |r| stops_run(r.verdict)) {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        restart_reports.push(r);
    }
    let results: Vec<_> = normal_reports.into_iter().chain(restart_reports).collect();
    for (h, case) in results.into_iter().zip(order.iter()) {
        match h {
            Ok(r) => out.push(r),
            Err(e) => out.push(CaseReport {
                id: case.id.into(),
                group: case.group().into(),
                title: case.title.into(),
                clauses: case.clauses.iter().map(|c| clause_info(c)).collect(),
                verdict: Verdict::Error,
                duration_ms: 0,
                reason: Some(format!("runner task failed: {e}")),
                profile: profile::of_case(case.id).into(),
                failure: None,
                observations: vec![],
                transcript: vec![],
            }),
        }
    }
    let mut totals = BTreeMap::new();
    for v in [
        Verdict::Pass,
        Verdict::Fail,
        Verdict::NonStrict,
        Verdict::Blocked,
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
        profiles: profile::summarise(
            &order
                .iter()
                .copied()
                .zip(out.iter().map(|c| c.verdict))
                .collect::<Vec<_>>(),
            &probes,
        ),
        root_causes: root_causes(&out),
        setup_deviations: env.setup_deviations.clone(),
        cases: out,
    }
}

/// Whether a verdict makes the run exit non-zero.
fn stops_run(v: Verdict) -> bool {
    matches!(v, Verdict::Fail | Verdict::Error | Verdict::Blocked)
}

/// The report of a case that did not run, with its verdict and reason.
fn unrun(
    case: Case,
    verdict: Verdict,
    reason: String,
    failure: Option<FailureReport>,
) -> CaseReport {
    CaseReport {
        id: case.id.into(),
        group: case.group().into(),
        title: case.title.into(),
        clauses: case.clauses.iter().map(|c| clause_info(c)).collect(),
        verdict,
        duration_ms: 0,
        reason: Some(reason),
        profile: profile::of_case(case.id).into(),
        failure,
        observations: vec![],
        transcript: vec![],
    }
}

/// A case `--fail-fast` did not start because an earlier case failed.
fn not_run(case: Case) -> CaseReport {
    let why = "not run: --fail-fast stopped the run after an earlier case";
    unrun(case, Verdict::Skipped, why.into(), None)
}

fn not_implemented(case: Case, evidence: &str) -> CaseReport {
    let p = profile::of_case(case.id);
    let failure = FailureReport {
        clause: clause_info("FX-PRF-2"),
        expected: format!("the {p} profile (FX-PRF-1)"),
        observed: evidence.to_string(),
    };
    let why = format!("profile {p} not implemented by this server");
    unrun(case, Verdict::Blocked, why, Some(failure))
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
    let observations = ctx.tr.observations();
    let (verdict, reason, failure) = judge(&res, strict, case.clauses, &observations);
    let transcript = if matches!(
        verdict,
        Verdict::Fail | Verdict::NonStrict | Verdict::Error | Verdict::Blocked
    ) {
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
        profile: profile::of_case(case.id).into(),
        failure,
        observations: observations
            .into_iter()
            .filter(|o| !case.clauses.contains(&o.clause.as_str()))
            .collect(),
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
