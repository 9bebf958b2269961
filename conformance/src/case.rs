//! Case registry types, case errors and verdicts.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

use crate::ctx::Ctx;

/// The future a case body returns.
pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CaseError>> + Send + 'a>>;

/// A case body.
pub type CaseFn = for<'a> fn(&'a Ctx) -> CaseFuture<'a>;

/// One conformance case: a stable hierarchical id tied to the clauses it checks.
#[derive(Clone, Copy)]
pub struct Case {
    /// Stable id, `group/name`, never reused.
    pub id: &'static str,
    /// Clause ids checked by this case (first is the main one).
    pub clauses: &'static [&'static str],
    /// One-line description of what is checked.
    pub title: &'static str,
    /// The body.
    pub run: CaseFn,
}

impl Case {
    /// The group (the id up to the first `/`).
    pub fn group(&self) -> &'static str {
        self.id.split('/').next().unwrap_or(self.id)
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("id", &self.id)
            .field("clauses", &self.clauses)
            .finish()
    }
}

/// Build a [`Case`] from an `async fn(&Ctx) -> Result<(), CaseError>`.
#[macro_export]
macro_rules! case {
    ($id:expr, [$($c:expr),* $(,)?], $title:expr, $f:path) => {
        $crate::case::Case {
            id: $id,
            clauses: &[$($c),*],
            title: $title,
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

/// A violated expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The clause violated.
    pub clause: String,
    /// What the spec requires here.
    pub expected: String,
    /// What the server did.
    pub observed: String,
}

/// Why a case did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseError {
    /// The server violated a clause.
    #[error("{} violated: expected {}; observed {}", .0.clause, .0.expected, .0.observed)]
    Fail(Failure),
    /// The case cannot run against this target (missing second tenant, secret, …).
    #[error("skipped: {0}")]
    Skip(String),
    /// The runner could not tell (setup failed, transport error).
    #[error("error: {0}")]
    Error(String),
    /// A precondition owned by another clause does not hold (a positive control failed, a
    /// feature the case needs is missing): the case cannot judge its own clauses.
    #[error("blocked: {} violated: expected {}; observed {}", .0.clause, .0.expected, .0.observed)]
    Blocked(Failure),
}

impl CaseError {
    /// Prefix what was being checked to a failure's expectation (or an error's message).
    pub fn context(self, what: impl Display) -> Self {
        match self {
            CaseError::Fail(f) => CaseError::Fail(Failure {
                expected: format!("{what}: {}", f.expected),
                ..f
            }),
            CaseError::Error(e) => CaseError::Error(format!("{what}: {e}")),
            CaseError::Blocked(f) => CaseError::Blocked(Failure {
                expected: format!("{what}: {}", f.expected),
                ..f
            }),
            skip => skip,
        }
    }
}

/// Fail a case: `clause` violated, `expected` vs `observed`.
pub fn fail(clause: &str, expected: impl Display, observed: impl Display) -> CaseError {
    CaseError::Fail(Failure {
        clause: clause.to_string(),
        expected: expected.to_string(),
        observed: observed.to_string(),
    })
}

/// Block a case: the precondition `clause` (not one the case checks) does not hold.
pub fn blocked(clause: &str, expected: impl Display, observed: impl Display) -> CaseError {
    CaseError::Blocked(Failure {
        clause: clause.to_string(),
        expected: expected.to_string(),
        observed: observed.to_string(),
    })
}

/// Turn a failure into a block: used when a positive control (the same request done right on
/// the same route and transport) does not succeed, so a refusal proves nothing.
pub fn as_precondition(e: CaseError) -> CaseError {
    match e {
        CaseError::Fail(f) => CaseError::Blocked(f),
        other => other,
    }
}

/// The outcome of a provocation a case needs (an error it makes the server produce, say),
/// whose correctness belongs to `owner`, not to the case's own clauses: a failure becomes a
/// block on `owner` (the case could not judge what it checks).
pub fn provocation(owner: &str, e: CaseError) -> CaseError {
    match e {
        CaseError::Fail(f) => CaseError::Blocked(Failure {
            clause: owner.to_string(),
            expected: format!("the provocation: {}", f.expected),
            observed: f.observed,
        }),
        other => other,
    }
}

/// Fail unless `cond`.
pub fn ensure(
    cond: bool,
    clause: &str,
    expected: impl Display,
    observed: impl Display,
) -> Result<(), CaseError> {
    if cond {
        Ok(())
    } else {
        Err(fail(clause, expected, observed))
    }
}

/// Fail unless `a == b` (values shown with `Debug`).
pub fn ensure_eq<T: PartialEq + std::fmt::Debug>(
    clause: &str,
    what: &str,
    observed: T,
    expected: T,
) -> Result<(), CaseError> {
    if observed == expected {
        Ok(())
    } else {
        Err(fail(
            clause,
            format!("{what} = {expected:?}"),
            format!("{what} = {observed:?}"),
        ))
    }
}

/// The result of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every check held.
    Pass,
    /// A MUST clause was violated.
    Fail,
    /// A SHOULD (or MAY) clause was violated; counts as a failure only with `--strict`.
    NonStrict,
    /// A precondition owned by a clause the case does not check did not hold, so the case could
    /// not judge its own clauses (TTCN-3 `inconc`, WPT `PRECONDITION_FAILED`).
    Blocked,
    /// Not run, with a reason.
    Skipped,
    /// The runner could not tell.
    Error,
}

impl Verdict {
    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::NonStrict => "non-strict",
            Verdict::Blocked => "blocked",
            Verdict::Skipped => "skipped",
            Verdict::Error => "error",
        }
    }
}
