//! The zoo: the suite run against servers written independently of the reference
//! (issue 10, item 6). `conformance/zoo/fluxy_zoo.py` is a Python (standard library only) Fluxy
//! server written from `spec/` alone, started here as a child process and driven through its
//! dev line like any third-party server. A false positive of the runner on a zoo server is a
//! runner bug; the ones found so far are listed in `conformance/zoo/FINDINGS.md`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fluxy_conformance::{run, DevJson, Report, RunConfig, RunOptions, Verdict};

/// One suite run at a time: each run already uses 4 jobs, and CI machines are small.
static ONE_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running zoo server, killed on drop.
struct Zoo {
    child: Child,
    dev: DevJson,
}

impl Drop for Zoo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn zoo_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("zoo")
        .join("fluxy_zoo.py")
}

/// Start `python3 zoo/fluxy_zoo.py ARGS` and wait (with a deadline) for its dev line.
fn start_zoo(args: &[&str]) -> Zoo {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .arg(zoo_script())
        .args(["--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {python} {}: {e}", zoo_script().display()));
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.trim_start().starts_with('{') {
                let _ = tx.send(line.clone());
                break;
            }
            line.clear();
        }
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let mut zoo = Zoo {
        child,
        dev: DevJson {
            endpoint: String::new(),
            api_key: String::new(),
            api_key2: None,
            tenant: None,
            tenant2: None,
            jwt_secret: None,
            jwt_secret2: None,
        },
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => zoo.dev = DevJson::parse(&line).expect("the zoo server's dev line"),
        Err(e) => panic!("no dev line from the zoo server within 30 s ({e}); args {args:?}"),
    }
    zoo
}

async fn run_against(args: &[&str]) -> Report {
    let _one = ONE_RUN.lock().await;
    let zoo = start_zoo(args);
    let config = RunConfig {
        target: Some(zoo.dev.target()),
        timeout_scale: 2.0,
        options: RunOptions {
            jobs: 4,
            ..RunOptions::default()
        },
        ..RunConfig::default()
    };
    let rep = run(&config).await.expect("the run proceeds");
    drop(zoo);
    eprintln!(
        "zoo {args:?}: {} cases in {} ms; totals {:?}",
        rep.cases.len(),
        rep.wall_ms,
        rep.totals
    );
    rep
}

/// Every case that did not pass, with its reason or failure text.
fn not_passed(rep: &Report) -> String {
    let mut out = String::new();
    for c in rep
        .cases
        .iter()
        .filter(|c| !matches!(c.verdict, Verdict::Pass))
    {
        out.push_str(&format!("{} [{}]", c.id, c.verdict.as_str()));
        if let Some(f) = &c.failure {
            out.push_str(&format!(
                " {} violated: expected {}; observed {}",
                f.clause.id, f.expected, f.observed
            ));
        }
        if let Some(r) = &c.reason {
            out.push_str(&format!(" ({r})"));
        }
        out.push('\n');
    }
    out
}

/// The verdict per profile, one line each.
fn profiles(rep: &Report) -> String {
    rep.profiles
        .iter()
        .map(|(name, p)| format!("  {name}: {} ({})\n", p.status, p.summary))
        .collect()
}

fn failing(rep: &Report) -> Vec<&str> {
    rep.cases
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail | Verdict::Error))
        .map(|c| c.id.as_str())
        .collect()
}

fn assert_no_failure(what: &str, rep: &Report) {
    let report = format!("{}profiles:\n{}", not_passed(rep), profiles(rep));
    eprintln!("{what}: cases that did not pass:\n{report}");
    let bad = failing(rep);
    assert!(
        bad.is_empty(),
        "{what}: {} cases failed or errored on a correct server {bad:?}\n{report}",
        bad.len()
    );
}

/// A correct server that implements every profile blocks no case and is conformant in each.
fn assert_all_profiles_conformant(what: &str, rep: &Report) {
    assert_no_failure(what, rep);
    let blocked: Vec<&str> = rep
        .cases
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Blocked))
        .map(|c| c.id.as_str())
        .collect();
    assert!(
        blocked.is_empty(),
        "{what}: cases blocked on a server implementing every profile {blocked:?}\n{}",
        not_passed(rep)
    );
    for (name, p) in &rep.profiles {
        assert_eq!(
            p.status, "conformant",
            "{what}: profile {name}: {}",
            p.summary
        );
    }
}

/// (b) of issue 10: every section of the spec, in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zoo_full_profile_has_no_failure() {
    let rep = run_against(&["--memory"]).await;
    assert_all_profiles_conformant("zoo --profile full", &rep);
    assert!(rep.cases.len() > 100);
}

/// (b) of issue 10: the core sections only; everything else is absent (`unknown_type`, 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zoo_core_profile_has_no_failure() {
    let rep = run_against(&["--memory", "--profile", "core"]).await;
    assert_no_failure("zoo --profile core", &rep);
    let status = |name: &str| rep.profiles.get(name).map(|p| p.status.as_str());
    assert_eq!(status("core"), Some("conformant"), "{}", profiles(&rep));
    for name in ["history", "presence", "edits", "agents", "fallback"] {
        assert_eq!(
            status(name),
            Some("not-implemented"),
            "profile {name}\n{}",
            profiles(&rep)
        );
    }
}

/// (c) of issue 10: a correct server taking every alternative the spec permits
/// (listed with their clauses in conformance/zoo/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zoo_alternatives_have_no_failure() {
    let rep = run_against(&["--memory", "--alternatives"]).await;
    assert_all_profiles_conformant("zoo --alternatives", &rep);
}

/// POST /auth/token for `user`, then the request's bearer token.
async fn mint(http: &reqwest::Client, dev: &DevJson, user: &str) -> String {
    let res = http
        .post(format!("{}/auth/token", dev.endpoint))
        .header("X-Fluxy-Api-Key", &dev.api_key)
        .json(&serde_json::json!({ "userId": user }))
        .send()
        .await
        .expect("POST /auth/token");
    assert!(res.status().is_success(), "token: {}", res.status());
    let body: serde_json::Value = res.json().await.expect("TokenResponse");
    body["token"].as_str().expect("token").to_string()
}

/// POST /messages; (status, the event's seq).
async fn post(
    http: &reqwest::Client,
    dev: &DevJson,
    token: &str,
    content: &str,
    key: &str,
) -> (u16, Option<u64>) {
    let res = http
        .post(format!("{}/messages", dev.endpoint))
        .bearer_auth(token)
        .json(
            &serde_json::json!({ "roomId": "durable", "content": content, "clientMessageId": key }),
        )
        .send()
        .await
        .expect("POST /messages");
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    (status, body["message"]["seq"].as_u64())
}

/// The zoo's storage modes, which the durability group (issue 10, item 10) will rely on: with
/// `--db` a room, its `seq` and its idempotency keys survive a `kill -9`; with `--memory`
/// everything is lost, so a durability check must catch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoo_db_survives_a_kill_and_memory_does_not() {
    let http = reqwest::Client::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let db = std::env::temp_dir().join(format!("fluxy-zoo-{}-{nanos}.db", std::process::id()));
    let db_arg = db.to_string_lossy().to_string();
    let seed = format!("seed-{nanos}");
    for (mode, durable) in [
        (vec!["--db", db_arg.as_str()], true),
        (vec!["--memory"], false),
    ] {
        let args: Vec<&str> = mode.iter().copied().chain(["--seed", &seed]).collect();
        let zoo = start_zoo(&args);
        let token = mint(&http, &zoo.dev, "writer").await;
        let res = http
            .post(format!("{}/rooms", zoo.dev.endpoint))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "id": "durable", "name": "durable" }))
            .send()
            .await
            .expect("POST /rooms");
        assert_eq!(res.status().as_u16(), 201, "{mode:?}");
        for i in 0..3 {
            let (status, seq) =
                post(&http, &zoo.dev, &token, "before", &format!("key-{i:05}")).await;
            assert_eq!((status, seq), (201, Some(i + 1)), "{mode:?}");
        }
        drop(zoo); // SIGKILL: no chance to flush anything
        let zoo = start_zoo(&args);
        let token = mint(&http, &zoo.dev, "writer").await;
        let repeat = post(&http, &zoo.dev, &token, "again", "key-00001").await;
        let fresh = post(&http, &zoo.dev, &token, "after", "key-00099").await;
        if durable {
            assert_eq!(
                repeat,
                (200, Some(2)),
                "the key is honoured after a restart"
            );
            assert_eq!(fresh, (201, Some(4)), "seq continues without a gap");
        } else {
            assert_eq!(repeat.0, 404, "--memory forgets the room");
            assert_eq!(fresh.0, 404, "--memory forgets the room");
        }
        drop(zoo);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db_arg}{suffix}"));
    }
}

/// A zoo started (and restarted) by `zoo/zoo_restart.py`, on a fixed port; killed on drop.
struct RestartableZoo {
    dir: PathBuf,
    restart_cmd: String,
    dev: DevJson,
}

impl Drop for RestartableZoo {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Start a zoo with `args` through the restart helper, which `--restart-cmd` then calls again.
fn start_restartable(name: &str, args: &[&str]) -> RestartableZoo {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("fluxy-zoo-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let helper = zoo_script().with_file_name("zoo_restart.py");
    let (pid, out, db) = (dir.join("pid"), dir.join("out"), dir.join("zoo.db"));
    let mut words: Vec<String> = vec![
        python,
        helper.to_string_lossy().into(),
        pid.to_string_lossy().into(),
        out.to_string_lossy().into(),
        "--".into(),
        "--port".into(),
        port,
        "--seed".into(),
        format!("seed-{nanos}"),
    ];
    for a in args {
        words.push(if *a == "DB" {
            db.to_string_lossy().into()
        } else {
            a.to_string()
        });
    }
    let restart_cmd = words
        .iter()
        .map(|w| sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    let mut zoo = RestartableZoo {
        dir,
        restart_cmd,
        dev: DevJson::parse("{\"endpoint\":\"\",\"apiKey\":\"\"}").expect("placeholder"),
    };
    let ok = Command::new("sh")
        .arg("-c")
        .arg(&zoo.restart_cmd)
        .status()
        .expect("sh");
    assert!(ok.success(), "starting the zoo: {}", zoo.restart_cmd);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    zoo.dev = DevJson::parse(&text).expect("the zoo server's dev line");
    zoo
}

async fn run_durability(name: &str, args: &[&str]) -> Report {
    let _one = ONE_RUN.lock().await;
    let zoo = start_restartable(name, args);
    let config = RunConfig {
        target: Some(zoo.dev.target()),
        timeout_scale: 2.0,
        options: RunOptions {
            filters: vec!["dur/*".into()],
            ..RunOptions::default()
        },
        restart_cmd: Some(zoo.restart_cmd.clone()),
        ..RunConfig::default()
    };
    let rep = run(&config).await.expect("the run proceeds");
    drop(zoo);
    eprintln!("zoo durability {args:?}:\n{}", not_passed(&rep));
    rep
}

/// Issue 10, item 10: the durability group passes against the zoo on SQLite, restarted by
/// `kill -9` (full and alternatives).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zoo_durability_group_passes_on_sqlite() {
    for args in [vec!["--db", "DB"], vec!["--db", "DB", "--alternatives"]] {
        let rep = run_durability("db", &args).await;
        assert!(!rep.cases.is_empty());
        assert!(
            rep.cases.iter().all(|c| matches!(c.verdict, Verdict::Pass)),
            "{args:?}\n{}",
            not_passed(&rep)
        );
    }
}

/// Issue 10, item 10: no durability case may pass against a zoo that keeps everything in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zoo_durability_group_never_passes_a_memory_server() {
    let rep = run_durability("memory", &["--memory"]).await;
    assert!(!rep.cases.is_empty());
    let passed: Vec<&str> = rep
        .cases
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Pass | Verdict::Skipped))
        .map(|c| c.id.as_str())
        .collect();
    assert!(
        passed.is_empty(),
        "durability cases passed against a server that forgets everything on restart: {passed:?}\n{}",
        not_passed(&rep)
    );
}

/// Issue 10, item 10: a zoo that keeps everything in memory must *fail* the durability group
/// (a room gone after the restart is FX-ORD-7's failure itself: FINDINGS.md, D1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zoo_durability_group_fails_a_memory_server() {
    let rep = run_durability("memory", &["--memory"]).await;
    assert!(!rep.cases.is_empty());
    let not_failed: Vec<&str> = rep
        .cases
        .iter()
        .filter(|c| !matches!(c.verdict, Verdict::Fail))
        .map(|c| c.id.as_str())
        .collect();
    assert!(
        not_failed.is_empty(),
        "durability cases that did not fail a server that forgets everything on restart: {not_failed:?}\n{}",
        not_passed(&rep)
    );
}
