//! `fluxy-conformance`: run the Fluxy v1 conformance suite against a server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fluxy_conformance::report::{self, Format};
use fluxy_conformance::{coverage, DevJson, RunConfig, RunError, RunOptions, Target};

/// Fluxy protocol v1 conformance runner.
#[derive(Debug, Parser)]
#[command(name = "fluxy-conformance", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the suite (against the embedded reference server when no endpoint is given).
    Run(Box<RunArgs>),
    /// List every case with its clauses.
    List {
        /// Only cases matching these globs (case or clause ids).
        #[arg(long)]
        filter: Vec<String>,
    },
    /// List every clause with the cases covering it; exits 1 if a MUST clause has none.
    Coverage,
    /// Show (and with --verify, prove) which case catches each deliberate fault of the
    /// embedded reference server.
    Faults {
        /// Start the reference server with each fault and check the suite fails as expected.
        #[arg(long)]
        verify: bool,
        /// Faulty servers run at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Multiply every deadline by this factor.
        #[arg(long, default_value_t = 1.0)]
        timeout_scale: f64,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Base URL of the server under test, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    endpoint: Option<String>,
    /// API key of the first tenant.
    #[arg(long)]
    api_key: Option<String>,
    /// API key of a second tenant (enables tenancy cases).
    #[arg(long = "api-key-2")]
    api_key2: Option<String>,
    /// JWT secret of the first tenant (enables crafted-token cases).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// JWT secret of the second tenant.
    #[arg(long = "jwt-secret-2")]
    jwt_secret2: Option<String>,
    /// The JSON line printed by `fluxy-server --dev` (endpoint, keys and secrets).
    #[arg(long, conflicts_with = "dev_json_file")]
    dev_json: Option<String>,
    /// A file holding that JSON line.
    #[arg(long)]
    dev_json_file: Option<PathBuf>,
    /// Glob on case ids or clause ids (repeatable), e.g. 'ord/*' or 'FX-RES-*'.
    #[arg(long)]
    filter: Vec<String>,
    /// Profiles to run, comma-separated or repeated: core, history, presence, edits, agents,
    /// fallback, batching, compat (default: all). A core-only server runs `--profile core`.
    #[arg(long = "profile", value_delimiter = ',')]
    profiles: Vec<String>,
    /// A shell command that restarts the server under test (same endpoint, same keys, same
    /// storage) and exits 0; enables the durability group (`dur/*`), run after every other case.
    /// The embedded server restarts itself.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// SHOULD violations fail the run.
    #[arg(long)]
    strict: bool,
    /// Stop at the first case that fails, errs or is blocked; the cases not started by then
    /// are reported `skipped` (quick iteration, mutation testing).
    #[arg(long)]
    fail_fast: bool,
    /// Multiply every deadline by this factor (slow servers, CI).
    #[arg(long, default_value_t = 1.0)]
    timeout_scale: f64,
    /// Seed of the randomised groups (property, fuzz); a failing schedule replays with it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output formats, comma-separated or repeated: console, json, junit, html.
    #[arg(long, value_delimiter = ',', default_value = "console")]
    format: Vec<Format>,
    /// Directory for report.json, junit.xml and report.html.
    #[arg(long, default_value = "conformance-report")]
    out: PathBuf,
    /// Cases run concurrently.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Schedules of the property group.
    #[arg(long, default_value_t = 8)]
    schedules: u32,
    /// Embedded mode only: enable a deliberate fault of the reference server (repeatable;
    /// `fluxy-conformance faults` lists them), to see the suite fail.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Embedded mode only: run the reference server with this frame rate limit, as
    /// BURST/PER_SECOND (e.g. 20/10, the floor of FX-LIM-9).
    #[arg(long, value_parser = parse_rate)]
    embedded_rate: Option<(u32, u32)>,
    /// Embedded mode only: unload idle rooms after this many ms (1 makes every case cross
    /// room unloads and reloads from storage).
    #[arg(long)]
    embedded_unload_ms: Option<u64>,
    /// Embedded mode only: the reference server's resumeWindow (at least 100, FX-RES-5).
    #[arg(long, default_value_t = 200)]
    embedded_resume_window: u32,
}

fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once('/')
        .ok_or_else(|| format!("expected BURST/PER_SECOND, got {s:?}"))?;
    let n = |x: &str| {
        x.trim()
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("{x:?} is not a positive integer"))
    };
    Ok((n(a)?, n(b)?))
}

fn target_from(a: &RunArgs) -> Result<Option<Target>, RunError> {
    let dev = match (&a.dev_json, &a.dev_json_file) {
        (Some(s), _) => Some(DevJson::parse(s)?),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| RunError::Config(format!("reading {}: {e}", p.display())))?;
            Some(DevJson::parse(&text)?)
        }
        _ => None,
    };
    let mut t = match (dev, &a.endpoint) {
        (Some(d), _) => d.target(),
        (None, Some(e)) => Target {
            endpoint: e.clone(),
            api_key: a.api_key.clone().ok_or_else(|| {
                RunError::Config("--endpoint needs --api-key (or pass --dev-json)".into())
            })?,
            ..Target::default()
        },
        (None, None) => {
            if a.api_key.is_some() || a.api_key2.is_some() {
                return Err(RunError::Config("--api-key needs --endpoint".into()));
            }
            return Ok(None);
        }
    };
    if let Some(e) = &a.endpoint {
        t.endpoint = e.clone();
    }
    if let Some(k) = &a.api_key {
        t.api_key = k.clone();
    }
    if a.api_key2.is_some() {
        t.api_key2 = a.api_key2.clone();
    }
    if a.jwt_secret.is_some() {
        t.jwt_secret = a.jwt_secret.clone();
    }
    if a.jwt_secret2.is_some() {
        t.jwt_secret2 = a.jwt_secret2.clone();
    }
    Ok(Some(t))
}

async fn run(a: RunArgs) -> Result<i32, RunError> {
    let target = target_from(&a)?;
    let config = RunConfig {
        target,
        options: RunOptions {
            filters: a.filter.clone(),
            strict: a.strict,
            jobs: a.jobs.max(1),
            profiles: a.profiles.clone(),
            fail_fast: a.fail_fast,
        },
        timeout_scale: a.timeout_scale,
        seed: a.seed,
        schedules: a.schedules,
        restart_cmd: a.restart_cmd.clone(),
        embedded: fluxy_conformance::embedded::EmbeddedOptions {
            faults: a.faults.clone(),
            rate: a.embedded_rate,
            room_idle_unload_ms: a.embedded_unload_ms,
            resume_window: a.embedded_resume_window,
            ..Default::default()
        },
    };
    if config.target.is_some() && !a.faults.is_empty() {
        return Err(RunError::Config(
            "--fault applies to the embedded server only".into(),
        ));
    }
    let rep = match fluxy_conformance::run(&config).await {
        Ok(r) => r,
        Err(e) => {
            write_aborted(&a, &e);
            return Err(e);
        }
    };
    let mut files = Vec::new();
    for f in &a.format {
        let (name, body) = match f {
            Format::Console => {
                print!("{}", report::console(&rep));
                continue;
            }
            Format::Json => ("report.json", report::json(&rep)),
            Format::Junit => ("junit.xml", report::junit(&rep)),
            Format::Html => ("report.html", report::html(&rep)),
        };
        std::fs::create_dir_all(&a.out)
            .map_err(|e| RunError::Io(format!("{}: {e}", a.out.display())))?;
        let p = a.out.join(name);
        std::fs::write(&p, body).map_err(|e| RunError::Io(format!("{}: {e}", p.display())))?;
        files.push(p);
    }
    for p in files {
        eprintln!("wrote {}", p.display());
    }
    Ok(rep.exit_code())
}

/// A run that could not proceed still leaves report.json and junit.xml (when asked for),
/// saying why, so CI dashboards show the reason instead of a missing file.
fn write_aborted(a: &RunArgs, e: &RunError) {
    let reason = e.to_string();
    let mut out = Vec::new();
    for f in &a.format {
        match f {
            Format::Json => out.push(("report.json", report::aborted_json(&reason))),
            Format::Junit => out.push(("junit.xml", report::aborted_junit(&reason))),
            Format::Html | Format::Console => {}
        }
    }
    if out.is_empty() || std::fs::create_dir_all(&a.out).is_err() {
        return;
    }
    for (name, body) in out {
        let p = a.out.join(name);
        if std::fs::write(&p, body).is_ok() {
            eprintln!("wrote {}", p.display());
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::List { filter } => {
            for c in fluxy_conformance::select(&filter) {
                println!("{:<48} {:<40} {}", c.id, c.clauses.join(","), c.title);
            }
            ExitCode::SUCCESS
        }
        Cmd::Coverage => {
            let cases = fluxy_conformance::cases::all();
            let cov = coverage::coverage(&cases);
            print!("{}", coverage::render(&cov));
            let unknown = coverage::unknown_clauses(&cases);
            if !unknown.is_empty() {
                println!(
                    "cases name clauses that are not in the spec: {}",
                    unknown.join(", ")
                );
            }
            let missing = coverage::uncovered_must(&cov);
            if missing.is_empty() && unknown.is_empty() {
                ExitCode::SUCCESS
            } else {
                println!("MUST clauses without a case: {}", missing.join(", "));
                ExitCode::from(1)
            }
        }
        Cmd::Faults {
            verify,
            jobs,
            timeout_scale,
        } => {
            use fluxy_conformance::selftest::{check_all, FAULT_CATCHERS};
            if !verify {
                for f in FAULT_CATCHERS {
                    println!(
                        "{:<26} {:<36} {}",
                        f.fault,
                        f.filter.join(","),
                        f.clauses.join(",")
                    );
                }
                return ExitCode::SUCCESS;
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fluxy-conformance: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            let res = rt.block_on(check_all(timeout_scale, jobs));
            let mut ok = true;
            println!("{:<26} {:<8} caught by (case: clause)", "fault", "caught");
            for (f, r) in FAULT_CATCHERS.iter().zip(res) {
                match r {
                    Ok(o) => {
                        ok &= o.caught;
                        let by: Vec<String> = o
                            .caught_by
                            .iter()
                            .map(|(c, cl)| format!("{c}: {cl}"))
                            .collect();
                        println!(
                            "{:<26} {:<8} {}{}",
                            f.fault,
                            if o.caught { "yes" } else { "NO" },
                            by.join("; "),
                            o.note.map(|n| format!("  [{n}]")).unwrap_or_default()
                        );
                    }
                    Err(e) => {
                        ok = false;
                        println!("{:<26} {:<8} run failed: {e}", f.fault, "ERROR");
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::Run(a) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fluxy-conformance: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(run(*a)) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("fluxy-conformance: the run could not proceed: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
