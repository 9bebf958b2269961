//! Proof that the suite can fail: every deliberate fault of the reference server, the cases
//! expected to catch it, and a runner that checks they do.

use serde::Serialize;

use crate::case::Verdict;
use crate::embedded::EmbeddedOptions;
use crate::runner::RunOptions;
use crate::{run, RunConfig, RunError};

/// A deliberate fault and what must catch it.
#[derive(Debug, Clone, Copy)]
pub struct FaultCatcher {
    /// Fault name (`fluxy_server::FAULTS`).
    pub fault: &'static str,
    /// Case filter run against the faulty server.
    pub filter: &'static [&'static str],
    /// At least one failing case must cite one of these clauses.
    pub clauses: &'static [&'static str],
}

/// Every fault of the reference server with its catching cases.
pub const FAULT_CATCHERS: &[FaultCatcher] = &[
    FaultCatcher {
        fault: "skip-seq",
        filter: &["ord/gap-free-burst"],
        clauses: &["FX-ORD-1", "FX-ORD-2"],
    },
    FaultCatcher {
        fault: "reorder-broadcast",
        filter: &["ord/one-sender-fifo"],
        clauses: &["FX-ORD-2", "FX-ORD-3", "FX-ORD-4"],
    },
    FaultCatcher {
        fault: "drop-broadcast",
        filter: &["ord/gap-free-burst"],
        clauses: &["FX-ORD-1", "FX-ORD-2"],
    },
    FaultCatcher {
        fault: "ack-before-store",
        filter: &["ord/durable-before-delivery"],
        clauses: &["FX-ACK-1", "FX-ORD-7"],
    },
    FaultCatcher {
        fault: "no-dedup",
        filter: &["ack/duplicate-returns-original"],
        clauses: &["FX-ACK-4"],
    },
    FaultCatcher {
        fault: "trust-frame-user-id",
        filter: &["auth/frame-user-id-ignored"],
        clauses: &["FX-AUTH-7", "FX-EDT-9"],
    },
    FaultCatcher {
        fault: "accept-expired-token",
        filter: &["auth/expired-token"],
        clauses: &["FX-AUTH-4"],
    },
    FaultCatcher {
        fault: "accept-alg-none",
        filter: &["auth/alg-none"],
        clauses: &["FX-AUTH-3"],
    },
    FaultCatcher {
        fault: "ignore-nbf",
        filter: &["auth/nbf-in-future"],
        clauses: &["FX-AUTH-5"],
    },
    FaultCatcher {
        fault: "cross-tenant-leak",
        filter: &["ten/no-cross-tenant-access"],
        clauses: &["FX-TEN-3"],
    },
    FaultCatcher {
        fault: "repeat-row-across-pages",
        filter: &["his/partition-backward"],
        clauses: &["FX-HIS-3"],
    },
    FaultCatcher {
        fault: "skip-row-across-pages",
        filter: &["his/partition-backward"],
        clauses: &["FX-HIS-3"],
    },
    FaultCatcher {
        fault: "resume-off-by-one",
        filter: &["res/resume-exact-after-drop"],
        clauses: &["FX-RES-1"],
    },
    FaultCatcher {
        fault: "no-resync",
        filter: &["res/resync-too-far-back"],
        clauses: &["FX-RES-4"],
    },
    FaultCatcher {
        fault: "ghost-presence",
        filter: &["pre/no-ghost-after-close"],
        clauses: &["FX-PRE-3", "FX-PRE-2"],
    },
    FaultCatcher {
        fault: "non-agent-tool-call",
        filter: &["agt/only-agent-role"],
        clauses: &["FX-AGT-2"],
    },
    FaultCatcher {
        fault: "edit-any-author",
        filter: &["edt/edit-author-only"],
        clauses: &["FX-EDT-1"],
    },
    FaultCatcher {
        fault: "no-rate-limit",
        filter: &["lim/rate-limit"],
        clauses: &["FX-LIM-3"],
    },
    FaultCatcher {
        fault: "unknown-type-closes",
        filter: &["frm/unknown-type"],
        clauses: &["FX-FRM-3"],
    },
    FaultCatcher {
        fault: "sse-no-id",
        filter: &["trn/sse-same-events"],
        clauses: &["FX-TRN-2"],
    },
    FaultCatcher {
        fault: "poll-ignores-cursor",
        filter: &["trn/poll"],
        clauses: &["FX-TRN-7"],
    },
    FaultCatcher {
        fault: "cursor-unsigned",
        filter: &["his/cursor-tamper"],
        clauses: &["FX-HIS-4"],
    },
    FaultCatcher {
        fault: "token-expiry-ignored",
        filter: &["auth/expiry-while-connected"],
        clauses: &["FX-AUTH-10"],
    },
    FaultCatcher {
        fault: "no-ack",
        filter: &["ack/fields"],
        clauses: &["FX-ACK-1"],
    },
    FaultCatcher {
        fault: "typing-to-sender-only",
        filter: &["pre/typing"],
        clauses: &["FX-PRE-5"],
    },
    FaultCatcher {
        fault: "delete-any-user",
        filter: &["edt/delete-authorisation"],
        clauses: &["FX-EDT-3"],
    },
    FaultCatcher {
        fault: "heartbeat-ignored",
        filter: &["lim/idle-timeout"],
        clauses: &["FX-LIM-8"],
    },
    FaultCatcher {
        fault: "binary-closes",
        filter: &["frm/binary-frame"],
        clauses: &["FX-FRM-9"],
    },
];

/// The outcome of running one fault's catching cases.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    /// Fault name.
    pub fault: String,
    /// Cases that failed, with the clause each cited.
    pub caught_by: Vec<(String, String)>,
    /// True when a failing case cited an expected clause.
    pub caught: bool,
    /// Why not, when not.
    pub note: Option<String>,
}

/// Start the reference server with `fc.fault` and run its catching cases.
pub async fn check_fault(fc: &FaultCatcher, timeout_scale: f64) -> Result<FaultOutcome, RunError> {
    let config = RunConfig {
        target: None,
        options: RunOptions {
            filters: fc.filter.iter().map(|s| s.to_string()).collect(),
            strict: false,
            jobs: 2,
            profiles: vec![],
            fail_fast: false,
        },
        timeout_scale,
        embedded: EmbeddedOptions {
            faults: vec![fc.fault.to_string()],
            ..EmbeddedOptions::default()
        },
        ..RunConfig::default()
    };
    let rep = run(&config).await?;
    let caught_by: Vec<(String, String)> = rep
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| {
            (
                c.id.clone(),
                c.failure
                    .as_ref()
                    .map(|f| f.clause.id.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let caught = caught_by
        .iter()
        .any(|(_, cl)| fc.clauses.contains(&cl.as_str()));
    let note = if caught {
        None
    } else {
        Some(format!(
            "verdicts: {:?}",
            rep.cases
                .iter()
                .map(|c| (
                    c.id.clone(),
                    c.verdict.as_str(),
                    c.failure.as_ref().map(|f| f.clause.id.clone()),
                    c.reason.clone()
                ))
                .collect::<Vec<_>>()
        ))
    };
    Ok(FaultOutcome {
        fault: fc.fault.to_string(),
        caught_by,
        caught,
        note,
    })
}

/// Check every fault (at most `jobs` servers at once).
pub async fn check_all(timeout_scale: f64, jobs: usize) -> Vec<Result<FaultOutcome, RunError>> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut hs = Vec::new();
    for fc in FAULT_CATCHERS {
        let sem = sem.clone();
        hs.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.ok();
            check_fault(fc, timeout_scale).await
        }));
    }
    let mut out = Vec::new();
    for h in hs {
        out.push(
            h.await
                .unwrap_or_else(|e| Err(RunError::Embedded(format!("task failed: {e}")))),
        );
    }
    out
}
