//! Reporters: console, JSON, JUnit XML and a self-contained HTML page.

use std::fmt::Write as _;

use crate::case::Verdict;
use crate::runner::{CaseReport, Report};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable summary on stdout.
    Console,
    /// `report.json`.
    Json,
    /// `junit.xml`.
    Junit,
    /// `report.html`, one self-contained file.
    Html,
}

const VERDICTS: [Verdict; 6] = [
    Verdict::Pass,
    Verdict::Fail,
    Verdict::NonStrict,
    Verdict::Blocked,
    Verdict::Skipped,
    Verdict::Error,
];

/// The run's one-line conclusion.
pub fn conclusion(r: &Report) -> String {
    let n = |v: &str| r.totals.get(v).copied().unwrap_or(0);
    if r.exit_code() == 0 {
        "CONFORMANT (every MUST case passed)".into()
    } else if n("fail") == 0 && n("error") == 0 {
        format!(
            "NOT PROVEN: no failure, but {} cases blocked (a precondition or profile missing; see root causes and profiles)",
            n("blocked")
        )
    } else {
        "NOT CONFORMANT".into()
    }
}

/// Root causes and profile verdicts, as console lines.
fn summary_text(r: &Report) -> String {
    let mut s = String::new();
    if !r.root_causes.is_empty() {
        let _ = writeln!(
            s,
            "
root causes (failures and blocks by the clause at fault):"
        );
        for rc in &r.root_causes {
            let _ = writeln!(
                s,
                "  [{}] ({}) {} failed, {} blocked: {}",
                rc.clause.id,
                rc.clause.level,
                rc.failed.len(),
                rc.blocked.len(),
                crate::ctx::short(&rc.example, 240)
            );
            if !rc.failed.is_empty() {
                let _ = writeln!(s, "      failed: {}", rc.failed.join(", "));
            }
            if !rc.blocked.is_empty() {
                let shown: Vec<&str> = rc.blocked.iter().take(12).map(String::as_str).collect();
                let more = rc.blocked.len().saturating_sub(shown.len());
                let _ = writeln!(
                    s,
                    "      blocked: {}{}",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    for (clause, what) in &r.setup_deviations {
        let _ = writeln!(s, "set-up deviation [{clause}]: {what}");
    }
    if !r.profiles.is_empty() {
        let _ = writeln!(
            s,
            "
profiles:"
        );
        for p in r.profiles.values() {
            let _ = writeln!(s, "  {}", p.summary);
        }
    }
    s
}

fn transcript_text(c: &CaseReport) -> String {
    let mut s = String::new();
    for e in &c.transcript {
        let _ = writeln!(
            s,
            "  {:>7}ms {:<16} {} {}",
            e.at_ms,
            e.conn,
            e.dir.arrow(),
            e.text
        );
    }
    s
}

/// The console report: failures with transcripts, then the summary table.
pub fn console(r: &Report) -> String {
    let mut s = String::new();
    for c in &r.cases {
        match c.verdict {
            Verdict::Fail | Verdict::NonStrict | Verdict::Error => {
                let _ = writeln!(
                    s,
                    "\n=== {} [{}] {}",
                    c.id,
                    c.verdict.as_str().to_uppercase(),
                    c.title
                );
                let ids: Vec<&str> = c.clauses.iter().map(|x| x.id.as_str()).collect();
                let _ = writeln!(s, "clauses: {}", ids.join(", "));
                if let Some(f) = &c.failure {
                    let _ = writeln!(
                        s,
                        "violated: [{}] ({}) {}",
                        f.clause.id, f.clause.level, f.clause.text
                    );
                    let _ = writeln!(s, "expected: {}", f.expected);
                    let _ = writeln!(s, "observed: {}", f.observed);
                }
                if let Some(r) = &c.reason {
                    let _ = writeln!(s, "error: {r}");
                }
                let _ = writeln!(s, "transcript ({} entries):", c.transcript.len());
                s.push_str(&transcript_text(c));
            }
            _ => {}
        }
    }
    let skipped: Vec<&CaseReport> = r
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Skipped)
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(s, "\nskipped:");
        for c in skipped {
            let _ = writeln!(s, "  {:<48} {}", c.id, c.reason.as_deref().unwrap_or(""));
        }
    }
    let _ = writeln!(
        s,
        "\n{:<12} {:>6} {:>6} {:>10} {:>8} {:>8} {:>6} {:>6}",
        "group", "pass", "fail", "non-strict", "blocked", "skipped", "error", "total"
    );
    let mut tot = [0usize; 6];
    for (g, m) in r.by_group() {
        let counts: Vec<usize> = VERDICTS
            .iter()
            .map(|v| m.get(v).copied().unwrap_or(0))
            .collect();
        for (i, n) in counts.iter().enumerate() {
            tot[i] += n;
        }
        let _ = writeln!(
            s,
            "{:<12} {:>6} {:>6} {:>10} {:>8} {:>8} {:>6} {:>6}",
            g,
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            counts[4],
            counts[5],
            counts.iter().sum::<usize>()
        );
    }
    let _ = writeln!(
        s,
        "{:<12} {:>6} {:>6} {:>10} {:>8} {:>8} {:>6} {:>6}",
        "TOTAL",
        tot[0],
        tot[1],
        tot[2],
        tot[3],
        tot[4],
        tot[5],
        tot.iter().sum::<usize>()
    );
    s.push_str(&summary_text(r));
    let _ = writeln!(
        s,
        "\n{} against {}{} in {:.1}s (run id {}, seed {}{}): {}",
        r.runner,
        r.endpoint,
        if r.embedded {
            " (embedded reference server)"
        } else {
            ""
        },
        r.wall_ms as f64 / 1000.0,
        r.run_id,
        r.seed,
        if r.strict { ", strict" } else { "" },
        conclusion(r)
    );
    s
}

/// The JSON report.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Escape XML/HTML text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

/// `report.json` of a run that could not proceed (exit code 2).
pub fn aborted_json(reason: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "runner": format!("fluxy-conformance {}", env!("CARGO_PKG_VERSION")),
        "protocolVersion": fluxy_protocol::PROTOCOL_VERSION,
        "aborted": true,
        "exitCode": 2,
        "reason": reason,
        "cases": [],
    }))
    .unwrap_or_default()
}

/// `junit.xml` of a run that could not proceed: one errored `setup` test carrying the reason.
pub fn aborted_junit(reason: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"fluxy-conformance\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\">\n  <testsuite name=\"setup\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\">\n    <testcase classname=\"fluxy.setup\" name=\"preflight\"><error message=\"{}\">{}</error></testcase>\n  </testsuite>\n</testsuites>\n",
        esc(reason),
        esc(reason)
    )
}

/// The JUnit XML report (one testsuite per group).
pub fn junit(r: &Report) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let fails = r
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    let errs = r
        .cases
        .iter()
        .filter(|c| c.verdict == Verdict::Error)
        .count();
    let skips = r
        .cases
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Skipped | Verdict::Blocked))
        .count();
    let _ = writeln!(
        s,
        "<testsuites name=\"fluxy-conformance\" tests=\"{}\" failures=\"{fails}\" errors=\"{errs}\" skipped=\"{skips}\" time=\"{:.3}\">",
        r.cases.len(),
        r.wall_ms as f64 / 1000.0
    );
    for (g, _) in r.by_group() {
        let cs: Vec<&CaseReport> = r.cases.iter().filter(|c| c.group == g).collect();
        let f = cs.iter().filter(|c| c.verdict == Verdict::Fail).count();
        let e = cs.iter().filter(|c| c.verdict == Verdict::Error).count();
        let sk = cs
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Skipped | Verdict::Blocked))
            .count();
        let t: u64 = cs.iter().map(|c| c.duration_ms).sum();
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" errors=\"{e}\" skipped=\"{sk}\" time=\"{:.3}\">",
            esc(&g),
            cs.len(),
            t as f64 / 1000.0
        );
        for c in cs {
            let ids: Vec<&str> = c.clauses.iter().map(|x| x.id.as_str()).collect();
            let _ = writeln!(
                s,
                "    <testcase classname=\"fluxy.{}\" name=\"{}\" time=\"{:.3}\">",
                esc(&g),
                esc(&c.id),
                c.duration_ms as f64 / 1000.0
            );
            let _ = writeln!(s, "      <properties><property name=\"clauses\" value=\"{}\"/><property name=\"verdict\" value=\"{}\"/></properties>", esc(&ids.join(",")), c.verdict.as_str());
            let detail = |c: &CaseReport| {
                let mut d = String::new();
                if let Some(f) = &c.failure {
                    let _ = writeln!(
                        d,
                        "violated [{}] ({}) {}",
                        f.clause.id, f.clause.level, f.clause.text
                    );
                    let _ = writeln!(d, "expected: {}", f.expected);
                    let _ = writeln!(d, "observed: {}", f.observed);
                }
                if let Some(r) = &c.reason {
                    let _ = writeln!(d, "{r}");
                }
                d.push_str("transcript:\n");
                d.push_str(&transcript_text(c));
                d
            };
            match c.verdict {
                Verdict::Fail => {
                    let msg = c
                        .failure
                        .as_ref()
                        .map(|f| format!("{}: expected {}", f.clause.id, f.expected))
                        .unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                        esc(&msg),
                        c.failure
                            .as_ref()
                            .map(|f| f.clause.id.clone())
                            .unwrap_or_default(),
                        esc(&detail(c))
                    );
                }
                Verdict::Error => {
                    let _ = writeln!(
                        s,
                        "      <error message=\"{}\">{}</error>",
                        esc(c.reason.as_deref().unwrap_or("")),
                        esc(&detail(c))
                    );
                }
                Verdict::Skipped => {
                    let _ = writeln!(
                        s,
                        "      <skipped message=\"{}\"/>",
                        esc(c.reason.as_deref().unwrap_or(""))
                    );
                }
                // Blocked is not a failure of this case's clauses: JUnit's nearest kind is
                // `skipped`, with the precondition that did not hold.
                Verdict::Blocked => {
                    let msg = c
                        .failure
                        .as_ref()
                        .map(|f| format!("BLOCKED on {}: expected {}", f.clause.id, f.expected))
                        .unwrap_or_else(|| "BLOCKED".into());
                    let _ = writeln!(
                        s,
                        "      <skipped message=\"{}\"/><system-out>{}</system-out>",
                        esc(&msg),
                        esc(&detail(c))
                    );
                }
                Verdict::NonStrict => {
                    let _ = writeln!(
                        s,
                        "      <system-out>NON-STRICT (SHOULD violated)\n{}</system-out>",
                        esc(&detail(c))
                    );
                }
                Verdict::Pass => {}
            }
            let _ = writeln!(s, "    </testcase>");
        }
        let _ = writeln!(s, "  </testsuite>");
    }
    s.push_str("</testsuites>\n");
    s
}

/// The HTML report: one self-contained page (inline CSS, no scripts or external assets).
pub fn html(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Fluxy conformance report</title>\n<style>\n");
    s.push_str("body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}h1{font-size:1.5em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}.pass{color:#176f2c}.fail{color:#b00020;font-weight:bold}.non-strict{color:#a65f00}.skipped{color:#777}.blocked{color:#35618f}.case.blocked{border-color:#35618f}.error{color:#7b1fa2;font-weight:bold}pre{background:#f8f8f8;border:1px solid #ddd;padding:.5em;overflow-x:auto;font-size:12px;white-space:pre-wrap;word-break:break-all}details{margin:.3em 0}summary{cursor:pointer}.case{border-left:4px solid #ccc;padding-left:.8em;margin:1em 0}.case.fail{border-color:#b00020}.case.error{border-color:#7b1fa2}.case.non-strict{border-color:#a65f00}.case.fail>*:not(h3),.case.error>*:not(h3),.case.non-strict>*:not(h3){color:#222;font-weight:normal}.clause{font-family:monospace}.num{text-align:right}\n");
    s.push_str("</style></head><body>\n");
    let _ = writeln!(
        s,
        "<h1>Fluxy protocol {} conformance report</h1>",
        esc(&r.protocol_version)
    );
    let verdict = format!(
        "<span class=\"{}\">{}</span>",
        if r.exit_code() == 0 { "pass" } else { "fail" },
        esc(&conclusion(r))
    );
    let _ = writeln!(
        s,
        "<p>{verdict}<br>Endpoint <code>{}</code>{}, run id <code>{}</code>, seed {}, timeout scale {}, {}; {} cases in {:.1}s. Runner {}.</p>",
        esc(&r.endpoint),
        if r.embedded { " (embedded reference server)" } else { "" },
        esc(&r.run_id),
        r.seed,
        r.timeout_scale,
        if r.strict { "strict" } else { "not strict" },
        r.cases.len(),
        r.wall_ms as f64 / 1000.0,
        esc(&r.runner)
    );
    if !r.profiles.is_empty() {
        s.push_str(
            "<h2>Profiles</h2><table><tr><th>profile</th><th>verdict</th><th>summary</th></tr>\n",
        );
        for (name, p) in &r.profiles {
            let class = match p.status.as_str() {
                "conformant" => "pass",
                "not-conformant" => "fail",
                "not-implemented" => "skipped",
                _ => "blocked",
            };
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
                esc(name),
                esc(&p.status),
                esc(&p.summary)
            );
        }
        s.push_str("</table>\n");
    }
    if !r.root_causes.is_empty() {
        s.push_str("<h2>Root causes</h2><p>Failures and blocks grouped by the clause at fault: a case fails only on a clause it cites; a case whose precondition (another clause) did not hold is blocked.</p><table><tr><th>clause</th><th>failed</th><th>blocked</th><th>example</th></tr>\n");
        for rc in &r.root_causes {
            let _ = writeln!(
                s,
                "<tr><td class=\"clause\">[{}] {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&rc.clause.id),
                esc(&rc.clause.level),
                esc(&rc.failed.join(" ")),
                esc(&rc.blocked.join(" ")),
                esc(&crate::ctx::short(&rc.example, 300))
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("<h2>Summary</h2><table><tr><th>group</th><th>pass</th><th>fail</th><th>non-strict</th><th>blocked</th><th>skipped</th><th>error</th><th>total</th></tr>\n");
    for (g, m) in r.by_group() {
        let _ = write!(s, "<tr><td>{}</td>", esc(&g));
        let mut t = 0;
        for v in VERDICTS {
            let n = m.get(&v).copied().unwrap_or(0);
            t += n;
            let _ = write!(
                s,
                "<td class=\"num {}\">{}</td>",
                if n > 0 { v.as_str() } else { "" },
                n
            );
        }
        let _ = writeln!(s, "<td class=\"num\">{t}</td></tr>");
    }
    s.push_str("</table>\n<h2>Cases</h2>\n<table><tr><th>case</th><th>verdict</th><th>clauses</th><th>ms</th></tr>\n");
    for c in &r.cases {
        let ids: Vec<String> = c.clauses.iter().map(|x| x.id.clone()).collect();
        let _ = writeln!(
            s,
            "<tr><td><a href=\"#{}\">{}</a></td><td class=\"{}\">{}</td><td class=\"clause\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&c.id),
            esc(&c.id),
            c.verdict.as_str(),
            c.verdict.as_str(),
            esc(&ids.join(" ")),
            c.duration_ms
        );
    }
    s.push_str("</table>\n<h2>Details</h2>\n");
    for c in &r.cases {
        let _ = writeln!(
            s,
            "<div class=\"case {}\" id=\"{}\"><h3>{} <span class=\"{}\">{}</span></h3><p>{}</p>",
            c.verdict.as_str(),
            esc(&c.id),
            esc(&c.id),
            c.verdict.as_str(),
            c.verdict.as_str(),
            esc(&c.title)
        );
        s.push_str("<details><summary>clauses</summary><ul>");
        for cl in &c.clauses {
            let _ = write!(
                s,
                "<li><span class=\"clause\">[{}]</span> {} — {}</li>",
                esc(&cl.id),
                esc(&cl.level),
                esc(&cl.text)
            );
        }
        s.push_str("</ul></details>\n");
        if let Some(f) = &c.failure {
            let _ = writeln!(s, "<p><b>{}</b> <span class=\"clause\">[{}]</span> ({}) {}</p><p><b>Expected:</b> {}</p><p><b>Observed:</b> {}</p>", if c.verdict == Verdict::Blocked { "Blocked: precondition" } else { "Violated" }, esc(&f.clause.id), esc(&f.clause.level), esc(&f.clause.text), esc(&f.expected), esc(&f.observed));
        }
        if let Some(rs) = &c.reason {
            let _ = writeln!(
                s,
                "<p><b>{}:</b> {}</p>",
                match c.verdict {
                    Verdict::Skipped => "Skipped",
                    Verdict::Blocked => "Blocked",
                    _ => "Error",
                },
                esc(rs)
            );
        }
        if !c.observations.is_empty() {
            s.push_str("<p><b>Observed deviations</b> (other clauses; worked around):</p><ul>");
            for o in &c.observations {
                let _ = write!(
                    s,
                    "<li><span class=\"clause\">[{}]</span> expected {}; observed {}</li>",
                    esc(&o.clause),
                    esc(&o.expected),
                    esc(&o.observed)
                );
            }
            s.push_str("</ul>\n");
        }
        if !c.transcript.is_empty() {
            let _ = writeln!(
                s,
                "<details{}><summary>transcript ({} entries)</summary><pre>{}</pre></details>",
                if c.verdict == Verdict::Fail {
                    " open"
                } else {
                    ""
                },
                c.transcript.len(),
                esc(&transcript_text(c))
            );
        }
        s.push_str("</div>\n");
    }
    s.push_str("</body></html>\n");
    s
}
