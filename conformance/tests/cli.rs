//! The command line: list, coverage, and exit code 2 when a run cannot proceed.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fluxy-conformance"))
}

#[test]
fn coverage_covers_every_must_clause() {
    let out = bin().arg("coverage").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("MUST clauses covered"), "{text}");
}

#[test]
fn list_prints_cases_with_clauses() {
    let out = bin().arg("list").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("ord/multi-sender-total-order") && text.contains("FX-ORD-4"),
        "{text}"
    );
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(ids.len(), dedup.len(), "case ids are unique");
}

#[test]
fn unreachable_endpoint_exits_2_with_a_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let out = bin()
        .args([
            "run",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--api-key",
            "k",
            "--timeout-scale",
            "0.2",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn endpoint_without_key_exits_2() {
    let out = bin()
        .args(["run", "--endpoint", "http://127.0.0.1:9"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn reports_are_written_in_every_format() {
    let dir = std::env::temp_dir().join(format!("fluxy-conf-{}", std::process::id()));
    let out = bin()
        .args([
            "run",
            "--filter",
            "frm/ping-pong",
            "--filter",
            "msg/trim",
            "--format",
            "console,json,junit,html",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let html = std::fs::read_to_string(dir.join("report.html")).expect("html");
    assert!(
        html.starts_with("<!DOCTYPE html>")
            && html.contains("<style>")
            && !html.contains("<link")
            && !html.contains("<script")
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("json"))
            .expect("valid json");
    assert_eq!(json["cases"].as_array().map(|a| a.len()), Some(2));
    let junit = std::fs::read_to_string(dir.join("junit.xml")).expect("junit");
    assert!(junit.contains("<testsuites") && junit.contains("frm/ping-pong"));
    let _ = std::fs::remove_dir_all(&dir);
}
