//! Proof that the suite can fail: for every deliberate fault of the reference server, the
//! cases declared to catch it fail, citing one of the expected clauses.

use fluxy_conformance::selftest::{check_all, FAULT_CATCHERS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_deliberate_fault_is_caught() {
    let names: Vec<&str> = fluxy_server::FAULTS.iter().map(|(n, _)| *n).collect();
    for n in &names {
        assert!(
            FAULT_CATCHERS.iter().any(|f| f.fault == *n),
            "fault {n} has no catching case"
        );
    }
    assert!(FAULT_CATCHERS.len() >= 20);
    let res = check_all(2.0, 4).await;
    let mut table = String::new();
    let mut missed = Vec::new();
    for (f, r) in FAULT_CATCHERS.iter().zip(res) {
        let o = r.unwrap_or_else(|e| panic!("fault {}: run failed: {e}", f.fault));
        table.push_str(&format!("{:<26} {:?}\n", o.fault, o.caught_by));
        if !o.caught {
            missed.push(format!("{}: {:?}", o.fault, o.note));
        }
    }
    eprintln!("{table}");
    assert!(missed.is_empty(), "faults not caught: {missed:#?}");
}

#[test]
fn every_group_has_a_fault() {
    let groups: std::collections::BTreeSet<&str> = FAULT_CATCHERS
        .iter()
        .flat_map(|f| f.filter.iter().map(|c| c.split('/').next().unwrap_or("")))
        .collect();
    for g in [
        "ord", "ack", "auth", "ten", "his", "res", "pre", "agt", "edt", "lim", "frm", "trn",
    ] {
        assert!(groups.contains(g), "no fault exercises group {g}");
    }
}
