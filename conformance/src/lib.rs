//! # fluxy-conformance
//!
//! The conformance runner of Fluxy protocol v1 (`spec/fluxy-v1.md`). Every case has a stable
//! hierarchical id (`ord/multi-sender-total-order`) and names the clauses it checks; verdicts are
//! pass, fail, non-strict (a SHOULD violated), skipped (with a reason) and error (the runner
//! could not tell). The runner drives any server through its HTTP and WebSocket surface using
//! only a base URL and API keys, or starts the embedded reference server.

pub mod case;
pub mod cases;
pub mod coverage;
pub mod ctx;
pub mod embedded;
pub mod env;
pub mod fuzz;
pub mod profile;
pub mod property;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod selftest;
pub mod transcript;

use std::sync::Arc;

pub use case::{Case, CaseError, Verdict};
pub use env::{DevJson, RunError, Target};
pub use runner::{Report, RunOptions};

/// Settings of a whole run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server to test; `None` starts the embedded reference server.
    pub target: Option<Target>,
    /// Case selection and strictness.
    pub options: RunOptions,
    /// Multiplier for every deadline.
    pub timeout_scale: f64,
    /// Seed of the randomised groups.
    pub seed: u64,
    /// Schedules of the property group.
    pub schedules: u32,
    /// Settings of the embedded server.
    pub embedded: embedded::EmbeddedOptions,
    /// A shell command that restarts the server under test (`--restart-cmd`); enables the
    /// durability group against an external server. The embedded server restarts itself.
    pub restart_cmd: Option<String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            target: None,
            options: RunOptions::default(),
            timeout_scale: 1.0,
            seed: 1,
            schedules: 8,
            embedded: embedded::EmbeddedOptions::default(),
            restart_cmd: None,
        }
    }
}

/// The selected cases, in report order.
pub fn select(filters: &[String]) -> Vec<Case> {
    select_in(filters, &[])
}

/// The selected cases of `profiles` (every profile when empty), in report order.
pub fn select_in(filters: &[String], profiles: &[String]) -> Vec<Case> {
    cases::all()
        .into_iter()
        .filter(|c| runner::selected(c, filters))
        .filter(|c| profiles.is_empty() || profiles.iter().any(|p| p == profile::of_case(c.id)))
        .collect()
}

/// Run the suite: start the embedded server when no target is given, check the target,
/// run the selected cases and return the report.
pub async fn run(config: &RunConfig) -> Result<Report, RunError> {
    for p in &config.options.profiles {
        if !profile::PROFILES.contains(&p.as_str()) {
            return Err(RunError::Config(format!(
                "unknown profile {p:?}; the profiles are {}",
                profile::PROFILES.join(", ")
            )));
        }
    }
    let selected = select_in(&config.options.filters, &config.options.profiles);
    if selected.is_empty() {
        return Err(RunError::Config(format!(
            "no case matches --filter {:?} --profile {:?}; `fluxy-conformance list` shows the ids",
            config.options.filters, config.options.profiles
        )));
    }
    let (target, server) = match &config.target {
        Some(t) => (t.clone(), None),
        None => {
            let e = Arc::new(embedded::Restartable::start(&config.embedded).await?);
            (e.target.clone(), Some(e))
        }
    };
    let env = env::Env::prepare(target, config.timeout_scale, config.seed, config.schedules).await;
    let report = match env {
        Ok(mut env) => {
            env.restart = match (&server, &config.restart_cmd) {
                (_, Some(cmd)) => Some(env::Restarter::command(
                    cmd,
                    &env.target.endpoint,
                    env.scale,
                )),
                (Some(s), None) => {
                    let s = s.clone();
                    Some(env::Restarter::new(
                        "the embedded server restarts on the same SQLite file",
                        move || {
                            let s = s.clone();
                            Box::pin(async move { s.restart().await })
                        },
                    ))
                }
                (None, None) => None,
            };
            Ok(
                runner::run_cases(Arc::new(env), &selected, &config.options, server.is_some())
                    .await,
            )
        }
        Err(e) => Err(e),
    };
    if let Some(s) = server {
        s.shutdown().await;
    }
    report
}
