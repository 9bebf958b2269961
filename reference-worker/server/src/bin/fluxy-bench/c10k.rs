//! 10,000 concurrent WebSocket connections held by a `fluxy-server` child process: server
//! memory per connection (VmRSS delta), connect time, and the latency of one broadcast to all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::api::Api;
use crate::child::ServerProc;
use crate::{pct, BenchError, Row};

/// Options of the run.
pub struct C10kOptions {
    /// Connections in all.
    pub connections: usize,
    /// Connections per room.
    pub room_size: usize,
    /// Distinct users per room (connections share them round-robin).
    pub users: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
}

/// What one connection reports.
enum Event {
    /// Connected and subscribed after this long (from its own start).
    Connected(Duration),
    /// Received the broadcast `message` at this many µs after `t0`.
    Received { at_us: u64 },
    /// Failed.
    Failed(String),
}

/// Run it against `server`; returns the summary rows.
pub async fn run(server: &ServerProc, o: &C10kOptions) -> Result<Vec<Row>, BenchError> {
    let api = Api::new(&server.dev.endpoint, &server.dev.api_key);
    let rooms = o.connections.div_ceil(o.room_size.max(1));
    let owner = api.token("c10k-owner").await?;
    for r in 0..rooms {
        api.room(&owner, &format!("c10k-{r}")).await?;
    }
    let mut tokens = Vec::new();
    for u in 0..o.users.max(1) {
        tokens.push(api.token(&format!("c10k-user{u}")).await?);
    }
    let tokens = Arc::new(tokens);
    // Let the server settle (token minting, room loads) before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib()?;
    let t0 = Instant::now();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let gate = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let mut senders = Vec::new();
    let mut tasks = Vec::with_capacity(o.connections);
    for i in 0..o.connections {
        let room = i / o.room_size.max(1);
        let url = api.ws_url(
            &format!("c10k-{room}"),
            &tokens[i % tokens.len()],
            "replay=off",
        );
        let (ev, gate) = (ev_tx.clone(), gate.clone());
        // The first connection of each room also sends the broadcast.
        let (send_tx, send_rx) = tokio::sync::oneshot::channel::<String>();
        if i % o.room_size.max(1) == 0 {
            senders.push((room, send_tx));
        }
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let start = Instant::now();
            let mut ws = match connect(&url).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ev.send(Event::Failed(e.to_string()));
                    return;
                }
            };
            drop(permit);
            let _ = ev.send(Event::Connected(start.elapsed()));
            let mut send_rx = Some(send_rx);
            loop {
                tokio::select! {
                    text = async { send_rx.as_mut()?.await.ok() }, if send_rx.is_some() => {
                        send_rx = None;
                        if let Some(text) = text {
                            if ws.send(Message::Text(text.into())).await.is_err() {
                                let _ = ev.send(Event::Failed("send".into()));
                                return;
                            }
                        }
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            if t.starts_with("{\"type\":\"message\"") {
                                let at_us = t0.elapsed().as_micros() as u64;
                                let _ = ev.send(Event::Received { at_us });
                            }
                        }
                        Some(Ok(_)) => {}
                        other => {
                            let _ = ev.send(Event::Failed(format!("closed: {other:?}")));
                            return;
                        }
                    }
                }
            }
        }));
    }
    drop(ev_tx);
    let mut connect_us = Vec::with_capacity(o.connections);
    let mut failed = Vec::new();
    while connect_us.len() + failed.len() < o.connections {
        match ev_rx.recv().await {
            Some(Event::Connected(d)) => connect_us.push(d.as_micros() as u64),
            Some(Event::Failed(e)) => failed.push(e),
            Some(Event::Received { .. }) => {}
            None => break,
        }
    }
    let connect_wall = t0.elapsed();
    if !failed.is_empty() {
        eprintln!(
            "c10k: {} connections failed, first: {}",
            failed.len(),
            failed[0]
        );
    }
    // Presence broadcasts of the joins are still being written: wait until the server is
    // idle (RSS stable), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = server.rss_kib()?;
    let held = connect_us.len();
    // One broadcast per room, all at once; the send time is taken before the first send.
    let send_at = t0.elapsed().as_micros() as u64;
    for (room, tx) in senders {
        let _ = tx.send(format!(
            r#"{{"type":"message","content":"c10k broadcast to room {room}"}}"#
        ));
    }
    let mut lat = Vec::with_capacity(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while lat.len() < held {
        match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
            Ok(Some(Event::Received { at_us, .. })) => lat.push(at_us.saturating_sub(send_at)),
            Ok(Some(Event::Failed(e))) => failed.push(e),
            Ok(Some(Event::Connected(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let rss2 = server.rss_kib()?;
    for t in &tasks {
        t.abort();
    }
    lat.sort_unstable();
    connect_us.sort_unstable();
    let per_conn = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / held.max(1) as f64;
    println!(
        "c10k: {held}/{} connections held in {rooms} rooms of {} ({} users each); connect wall {:.2} s, per-connection p50 {:.2} ms p99 {:.2} ms; server RSS {} -> {} KiB ({:.1} KiB/conn; {} KiB after the broadcast); broadcast to {} receivers: p50 {:.2} ms p99 {:.2} ms max {:.2} ms; failures {}",
        o.connections,
        o.room_size,
        o.users,
        connect_wall.as_secs_f64(),
        pct(&connect_us, 0.5),
        pct(&connect_us, 0.99),
        rss0,
        rss1,
        per_conn / 1024.0,
        rss2,
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        failed.len(),
    );
    Ok(vec![
        Row::new(
            "c10k: connections held",
            format!("{held} / {}", o.connections),
            format!(
                "{rooms} rooms of {}, {} failures",
                o.room_size,
                failed.len()
            ),
        ),
        Row::new(
            "c10k: server memory per connection",
            format!("{:.1} KiB", per_conn / 1024.0),
            format!("VmRSS {rss0} -> {rss1} KiB (child process)"),
        ),
        Row::new(
            "c10k: connect",
            format!("{:.2} s wall", connect_wall.as_secs_f64()),
            format!(
                "{} in flight; per handshake p50 {:.2} ms, p99 {:.2} ms",
                o.concurrency,
                pct(&connect_us, 0.5),
                pct(&connect_us, 0.99)
            ),
        ),
        Row::new(
            "c10k: one broadcast to all",
            format!("max {:.2} ms", pct(&lat, 1.0)),
            format!(
                "{} receivers; p50 {:.2} ms, p99 {:.2} ms",
                lat.len(),
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            ),
        ),
    ])
}

/// Connect and read up to `subscription_succeeded`.
async fn connect(url: &str) -> Result<crate::Ws, BenchError> {
    let (mut ws, _) = crate::connect_ws(url).await?;
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m? {
            if t.contains("\"type\":\"subscription_succeeded\"") {
                return Ok(ws);
            }
            if t.starts_with("{\"type\":\"error\"") {
                return Err(BenchError::Frame(t.to_string()));
            }
        }
    }
    Err(BenchError::Closed("before subscription_succeeded"))
}
