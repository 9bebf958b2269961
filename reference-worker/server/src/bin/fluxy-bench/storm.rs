//! Resume storm: fill a room, restart the server on the same storage and port, then many
//! clients reconnect at once with `?lastSeq=` (FX-HS-7) from varied positions and catch up
//! through `replay` + `resume` (FX-RES-1) or, outside the resume window, through HTTP history
//! after `resync_required` (FX-RES-4). Every client's catch-up is verified exactly: every seq
//! from its `lastSeq + 1` to `currentSeq`, once, no gap, no duplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::api::Api;
use crate::{pct, BenchError, Row};

/// Why a client's catch-up is not exact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatchupError {
    /// A seq in `lastSeq+1..=currentSeq` never arrived.
    #[error("gap: seq {0} missing")]
    Gap(u64),
    /// A seq arrived twice.
    #[error("duplicate: seq {0}")]
    Duplicate(u64),
    /// A seq outside `lastSeq+1..=currentSeq` arrived.
    #[error("out of range: seq {0}")]
    OutOfRange(u64),
}

/// Check that `seqs` (in arrival order) hold every seq in `last_seq+1..=current` exactly once.
pub fn verify_catchup(last_seq: u64, current: u64, seqs: &[u64]) -> Result<(), CatchupError> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        if w[0] == w[1] {
            return Err(CatchupError::Duplicate(w[0]));
        }
    }
    if let Some(&s) = sorted.iter().find(|&&s| s <= last_seq || s > current) {
        return Err(CatchupError::OutOfRange(s));
    }
    let mut expect = last_seq + 1;
    for &s in &sorted {
        if s != expect {
            return Err(CatchupError::Gap(expect));
        }
        expect += 1;
    }
    if expect <= current {
        return Err(CatchupError::Gap(expect));
    }
    Ok(())
}

/// Options of a storm.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// Events to commit before the restart.
    pub events: u64,
    /// Reconnecting clients.
    pub clients: usize,
    /// Distinct users among the clients (round-robin).
    pub users: usize,
    /// Connections that fill the room (each paced by the advertised rate limit).
    pub fillers: usize,
    /// Label in the summary (e.g. "native" or "worker").
    pub label: String,
}

/// What the fill and the restart leave for the storm.
pub struct Filled {
    /// Room id.
    pub room: String,
    /// User tokens (minted before the restart: they must survive it).
    pub tokens: Vec<String>,
    /// `limits.resumeWindow` advertised.
    pub window: u64,
    /// Highest committed seq.
    pub current: u64,
}

/// Create the room and commit `events` messages, paced by `welcome.limits`.
pub async fn fill(api: &Api, o: &StormOptions) -> Result<Filled, BenchError> {
    let room = format!("storm-{}", std::process::id());
    let owner = api.token("storm-owner").await?;
    api.room(&owner, &room).await?;
    let mut tokens = Vec::new();
    for u in 0..o.users.max(1) {
        tokens.push(api.token(&format!("storm-user{u}")).await?);
    }
    let fillers = o.fillers.max(1);
    let per = o.events.div_ceil(fillers as u64);
    let mut tasks = Vec::new();
    let mut window = 0;
    for f in 0..fillers {
        let (ws, welcome) = api.ws_subscribed(&room, &tokens[f % tokens.len()]).await?;
        let limits = &welcome["limits"];
        window = limits["resumeWindow"].as_u64().unwrap_or(100);
        let burst = limits["rateBurst"].as_u64().unwrap_or(20);
        let rate = limits["ratePerSecond"].as_u64().unwrap_or(10).max(1);
        let n = per.min(o.events.saturating_sub(per * f as u64));
        tasks.push(tokio::spawn(fill_one(ws, f, n, burst, rate)));
    }
    let mut acked = 0;
    let mut refused = 0;
    for t in tasks {
        let (a, r) = t.await.map_err(|_| BenchError::ChildGone)??;
        acked += a;
        refused += r;
    }
    let page = api.history(&owner, &room, "limit=1").await?;
    let current = page["currentSeq"]
        .as_u64()
        .ok_or(BenchError::Parse("currentSeq"))?;
    println!(
        "storm {}: filled {room}: {acked} acked, {refused} refused, currentSeq {current}, resumeWindow {window}",
        o.label
    );
    Ok(Filled {
        room,
        tokens,
        window,
        current,
    })
}

/// Send `n` messages on one connection at the advertised rate (the burst first, keeping a
/// margin), and wait for their acks. Returns (acked, refused).
async fn fill_one(
    ws: crate::Ws,
    f: usize,
    n: u64,
    burst: u64,
    rate: u64,
) -> Result<(u64, u64), BenchError> {
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        // Half the burst up front, then 80 % of the advertised refill: the bucket is never
        // overdrawn even if the server's clock is coarse (a Durable Object's clock only
        // advances across I/O).
        let upfront = (burst / 2).max(1);
        let gap = Duration::from_secs_f64(1.0 / (rate as f64 * 0.8));
        for i in 0..n {
            if i >= upfront {
                tokio::time::sleep(gap).await;
            }
            let m = format!(
                r#"{{"type":"message","content":"storm fill {f} {i}","clientMessageId":"storm-{f}-{i}"}}"#
            );
            if sink.send(Message::Text(m.into())).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    let (mut acked, mut refused) = (0, 0);
    while acked + refused < n {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.starts_with("{\"type\":\"ack\"") {
                    acked += 1;
                } else if t.starts_with("{\"type\":\"error\"") {
                    if refused == 0 {
                        eprintln!("storm fill {f}: refused: {t}");
                    }
                    refused += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    writer.abort();
    Ok((acked, refused))
}

/// The `lastSeq` of client `i`: one in ten is older than the resume window (it must page
/// HTTP history after `resync_required`), one in ten is already up to date, the others are
/// spread over the window.
pub fn position(i: usize, current: u64, window: u64) -> u64 {
    let i = i as u64;
    match i % 10 {
        0 => {
            let span = current.saturating_sub(window + 1).max(1);
            (i * 7919) % span
        }
        1 => current,
        _ => current.saturating_sub(1 + (i * 613) % window.clamp(1, current.max(1))),
    }
}

/// One client's result.
#[derive(Debug)]
struct Outcome {
    /// From the start signal until it held every seq up to `currentSeq`.
    live: Duration,
    /// Caught up through HTTP history after `resync_required`.
    resynced: bool,
    /// Exactness.
    verdict: Result<(), CatchupError>,
    /// Events received.
    events: usize,
}

fn push_events(events: &Value, seqs: &mut Vec<u64>, highest: &mut u64) {
    if let Some(list) = events.as_array() {
        for e in list {
            if let Some(s) = e["seq"].as_u64() {
                seqs.push(s);
                *highest = (*highest).max(s);
            }
        }
    }
}

async fn client(
    api: Api,
    room: String,
    token: String,
    last_seq: u64,
    start: Instant,
    mut stop: watch::Receiver<bool>,
    done: tokio::sync::mpsc::UnboundedSender<Result<Outcome, String>>,
) {
    let url = api.ws_url(&room, &token, &format!("lastSeq={last_seq}"));
    let mut ws = match crate::connect_ws(url).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let _ = done.send(Err(format!("connect: {e}")));
            return;
        }
    };
    let mut seqs = Vec::new();
    let mut highest = last_seq;
    let mut target: Option<u64> = None;
    let mut resynced = false;
    let mut reported = false;
    // A `replay` frame or the HTTP catch-up after `resync_required` has been seen.
    let mut snapshot_seen = false;
    // A `resume` for the next replay page is outstanding.
    let mut pending = false;
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            other => {
                if !reported {
                    let _ = done.send(Err(format!("closed before live: {other:?}")));
                }
                return;
            }
        };
        if reported {
            // Live: only the presence of the other clients is expected now.
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        match v["type"].as_str() {
            Some("welcome") => target = v["currentSeq"].as_u64(),
            Some("replay") => {
                snapshot_seen = true;
                push_events(&v["events"], &mut seqs, &mut highest);
                pending = v["hasMore"].as_bool() == Some(true);
                if pending {
                    let r = format!(r#"{{"type":"resume","lastSeq":{highest}}}"#);
                    if ws.send(Message::Text(r.into())).await.is_err() {
                        let _ = done.send(Err("send resume".into()));
                        return;
                    }
                }
            }
            Some("error") if v["code"] == "resync_required" => {
                resynced = true;
                snapshot_seen = true;
                if let Err(e) =
                    page_history(&api, &token, &room, &mut seqs, &mut highest, target).await
                {
                    let _ = done.send(Err(format!("history: {e}")));
                    return;
                }
            }
            Some("error") if v["code"] == "rate_limited" => {
                let wait = v["retryAfterMs"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let r = format!(r#"{{"type":"resume","lastSeq":{highest}}}"#);
                if ws.send(Message::Text(r.into())).await.is_err() {
                    let _ = done.send(Err("send resume".into()));
                    return;
                }
            }
            Some("error") => {
                let _ = done.send(Err(format!("error frame: {t}")));
                return;
            }
            _ => {
                if let Some(s) = v["seq"].as_u64() {
                    seqs.push(s);
                    highest = highest.max(s);
                }
            }
        }
        if let (Some(cur), true, false) = (target, snapshot_seen, pending) {
            // Live once the snapshot (replay pages, or history after resync_required) holds
            // everything up to the welcome's currentSeq: the room is quiet during the storm.
            if highest >= cur {
                let verdict = verify_catchup(last_seq, cur, &seqs);
                let _ = done.send(Ok(Outcome {
                    live: start.elapsed(),
                    resynced,
                    verdict,
                    events: seqs.len(),
                }));
                reported = true;
            }
        }
    }
}

/// Page HTTP history forward from `highest` until `target`.
async fn page_history(
    api: &Api,
    token: &str,
    room: &str,
    seqs: &mut Vec<u64>,
    highest: &mut u64,
    target: Option<u64>,
) -> Result<(), BenchError> {
    let target = target.ok_or(BenchError::Parse("welcome before resync_required"))?;
    let mut query = format!("direction=forward&afterSeq={highest}&limit=500");
    while *highest < target {
        let page = api.history(token, room, &query).await?;
        let before = *highest;
        push_events(&page["events"], seqs, highest);
        match page["nextCursor"].as_str() {
            Some(c) if *highest > before => query = format!("cursor={c}&limit=500"),
            _ => break,
        }
    }
    Ok(())
}

/// Reconnect `clients` at once after the restart and verify each catch-up.
pub async fn storm(api: &Api, filled: &Filled, o: &StormOptions) -> Result<Vec<Row>, BenchError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let api = Arc::new(api.clone());
    let mut far = 0;
    for i in 0..o.clients {
        let last_seq = position(i, filled.current, filled.window);
        if filled.current.saturating_sub(last_seq) > filled.window {
            far += 1;
        }
        tokio::spawn(client(
            (*api).clone(),
            filled.room.clone(),
            filled.tokens[i % filled.tokens.len()].clone(),
            last_seq,
            start,
            stop_rx.clone(),
            done_tx.clone(),
        ));
    }
    drop(done_tx);
    let mut live = Vec::new();
    let mut failures = Vec::new();
    let mut inexact = Vec::new();
    let mut resynced = 0;
    let mut events = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while live.len() + failures.len() < o.clients {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(Ok(out))) => {
                if out.resynced {
                    resynced += 1;
                }
                events += out.events;
                if let Err(e) = out.verdict {
                    inexact.push(e);
                }
                live.push(out.live.as_micros() as u64);
            }
            Ok(Some(Err(e))) => failures.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = stop_tx.send(true);
    live.sort_unstable();
    if let Some(f) = failures.first() {
        eprintln!(
            "storm {}: {} clients failed, first: {f}",
            o.label,
            failures.len()
        );
    }
    if let Some(e) = inexact.first() {
        eprintln!(
            "storm {}: {} inexact catch-ups, first: {e}",
            o.label,
            inexact.len()
        );
    }
    let exact = live.len() - inexact.len();
    println!(
        "storm {}: {} clients reconnected at once to seq {} ({far} outside the {}-event window, {resynced} resync_required); {} live, {exact} exact, {} failed; {events} events delivered; last live after {:.0} ms, p50 {:.0} ms, p99 {:.0} ms",
        o.label,
        o.clients,
        filled.current,
        filled.window,
        live.len(),
        failures.len(),
        pct(&live, 1.0),
        pct(&live, 0.5),
        pct(&live, 0.99),
    );
    Ok(vec![Row::new(
        &format!("storm {}: {} clients, {} events", o.label, o.clients, filled.current),
        format!("last live {:.0} ms", pct(&live, 1.0)),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms; exact {exact}/{} ({resynced} via resync_required + history), {} failed",
            pct(&live, 0.5),
            pct(&live, 0.99),
            o.clients,
            failures.len()
        ),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_catchup_passes() {
        assert_eq!(verify_catchup(3, 6, &[4, 5, 6]), Ok(()));
        assert_eq!(verify_catchup(6, 6, &[]), Ok(()));
        assert_eq!(verify_catchup(3, 6, &[6, 4, 5]), Ok(()));
    }

    #[test]
    fn gap_duplicate_and_range_are_detected() {
        assert_eq!(verify_catchup(3, 6, &[4, 6]), Err(CatchupError::Gap(5)));
        assert_eq!(verify_catchup(3, 6, &[4, 5]), Err(CatchupError::Gap(6)));
        assert_eq!(
            verify_catchup(3, 6, &[4, 5, 5, 6]),
            Err(CatchupError::Duplicate(5))
        );
        assert_eq!(
            verify_catchup(3, 6, &[3, 4, 5, 6]),
            Err(CatchupError::OutOfRange(3))
        );
        assert_eq!(
            verify_catchup(3, 6, &[4, 5, 6, 7]),
            Err(CatchupError::OutOfRange(7))
        );
    }

    #[test]
    fn positions_cover_window_far_and_current() {
        let (cur, win) = (3000, 1000);
        let ps: Vec<u64> = (0..100).map(|i| position(i, cur, win)).collect();
        assert!(ps.iter().all(|&p| p <= cur));
        assert!(ps.iter().any(|&p| cur - p > win));
        assert!(ps.contains(&cur));
        assert!(ps.iter().any(|&p| p < cur && cur - p <= win));
    }
}
