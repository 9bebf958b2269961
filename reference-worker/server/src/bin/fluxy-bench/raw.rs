//! The raw baseline: a plain `tokio-tungstenite` broadcast server with no persistence, no
//! acks and no validation. Every text frame received is forwarded to every connection
//! (the sender included, as Fluxy echoes a `message` to its sender). It is the physical
//! limit the native shell is compared against in the fan-out benchmark. It uses the same
//! WebSocket read buffer as fluxy-server (`crate::ws_config`), so the comparison is between
//! equally tuned transports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// First frame the raw server sends once a connection is registered for broadcasts, so a
/// client knows it will receive every later frame (Fluxy's `subscription_succeeded`).
pub const READY: &str = "{\"type\":\"ready\"}";

type Peers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Utf8Bytes>>>>;

/// A running raw broadcast server; dropping it stops accepting.
pub struct RawServer {
    /// Bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind on 127.0.0.1 and serve in the background.
pub async fn start() -> std::io::Result<RawServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let peers: Peers = Arc::default();
    let task = tokio::spawn(async move {
        let mut next = 0u64;
        while let Ok((tcp, _)) = listener.accept().await {
            // Same socket option as fluxy-server's accept path.
            let _ = tcp.set_nodelay(true);
            next += 1;
            tokio::spawn(connection(tcp, next, peers.clone()));
        }
    });
    Ok(RawServer { addr, task })
}

async fn connection(tcp: tokio::net::TcpStream, id: u64, peers: Peers) {
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(crate::ws_config())).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let _ = tx.send(Utf8Bytes::from_static(READY));
    if let Ok(mut p) = peers.lock() {
        p.insert(id, tx);
    }
    // Writer: feed everything queued, flush once (as fluxy-server's write loop does).
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::Text(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(m)) = stream.next().await {
        match m {
            Message::Text(t) => {
                if let Ok(p) = peers.lock() {
                    for tx in p.values() {
                        // `Utf8Bytes` is reference-counted: no copy per receiver.
                        let _ = tx.send(t.clone());
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    if let Ok(mut p) = peers.lock() {
        p.remove(&id);
    }
    writer.abort();
}
