//! A fault-injecting WebSocket relay on 127.0.0.1.
//!
//! Clients connect to the proxy exactly as to the server (same path, query and headers); the
//! proxy opens the same URL upstream and relays frames both ways. Rules chosen by a case can
//! drop, delay or duplicate frames matching a predicate, or cut the connection (TCP closed on
//! both sides without a close frame) at a chosen point. Every action is noted in the case
//! transcript.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::case::CaseError;
use crate::ctx::{urlenc, Conn, Ctx, User};
use crate::transcript::{Dir, Transcript};

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Server → client.
    ToClient,
    /// Client → server.
    ToServer,
}

/// What to do with a matching frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Do not forward it.
    Drop,
    /// Forward it after a delay (frames behind it wait too, as on a slow link).
    Delay(Duration),
    /// Forward it twice.
    Duplicate,
    /// Close both TCP connections without a close frame, instead of forwarding it.
    Cut,
}

type Matcher = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// One rule.
pub struct Rule {
    side: Side,
    matcher: Matcher,
    action: Action,
    skip: u32,
    times: u32,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("side", &self.side)
            .field("action", &self.action)
            .field("skip", &self.skip)
            .field("times", &self.times)
            .finish()
    }
}

impl Rule {
    /// Apply `action` once to the first frame on `side` matching `matcher`.
    pub fn new(
        side: Side,
        action: Action,
        matcher: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Rule {
        Rule {
            side,
            matcher: Box::new(matcher),
            action,
            skip: 0,
            times: 1,
        }
    }

    /// Let the first `n` matching frames pass untouched.
    pub fn after(mut self, n: u32) -> Rule {
        self.skip = n;
        self
    }

    /// Apply to `n` matching frames (default 1).
    pub fn times(mut self, n: u32) -> Rule {
        self.times = n;
        self
    }
}

/// Frames whose JSON `type` is `t`.
pub fn of_type(t: &'static str) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |s: &str| {
        serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| v.get("type").and_then(|x| x.as_str()).map(|x| x == t))
            .unwrap_or(false)
    }
}

#[derive(Debug)]
struct Ctl {
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    cut: Notify,
    cut_gen: AtomicU64,
    tr: Transcript,
}

impl Ctl {
    fn decide(&self, side: Side, text: &str) -> Option<Action> {
        let mut rules = self.rules.lock().ok()?;
        for r in rules.iter_mut() {
            if r.side == side && r.times > 0 && (r.matcher)(text) {
                if r.skip > 0 {
                    r.skip -= 1;
                    return None;
                }
                r.times -= 1;
                return Some(r.action);
            }
        }
        None
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    ctl: Arc<Ctl>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

impl Proxy {
    /// Start a proxy in front of `ctx`'s endpoint, noting actions in `ctx`'s transcript.
    pub async fn start(ctx: &Ctx) -> Result<Proxy, CaseError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CaseError::Error(format!("proxy bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CaseError::Error(format!("proxy addr: {e}")))?;
        let ctl = Arc::new(Ctl {
            upstream: ctx.env.ws_base(),
            rules: Mutex::new(Vec::new()),
            cut: Notify::new(),
            cut_gen: AtomicU64::new(0),
            tr: ctx.tr.clone(),
        });
        let c2 = ctl.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((sock, _)) = listener.accept().await {
                n += 1;
                let ctl = c2.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(ctl.clone(), sock, n).await {
                        ctl.tr.push("proxy", Dir::Note, &format!("relay {n}: {e}"));
                    }
                });
            }
        });
        ctx.tr.push(
            "proxy",
            Dir::Note,
            &format!("fault proxy listening on {addr}"),
        );
        Ok(Proxy { addr, ctl, task })
    }

    /// Add a rule.
    pub fn rule(&self, r: Rule) {
        self.ctl.tr.push("proxy", Dir::Note, &format!("rule {r:?}"));
        if let Ok(mut v) = self.ctl.rules.lock() {
            v.push(r);
        }
    }

    /// Cut every open relayed connection now (TCP closed both ways, no close frame).
    pub fn cut_all(&self) {
        self.ctl.cut_gen.fetch_add(1, Ordering::SeqCst);
        self.ctl.cut.notify_waiters();
    }

    /// Connect `user` to `room` through the proxy and wait for the connect sequence.
    pub async fn connect(
        &self,
        ctx: &Ctx,
        user: &User,
        room: &str,
        query: &str,
    ) -> Result<Conn, CaseError> {
        let mut q = format!("token={}", urlenc(&user.token));
        if !query.is_empty() {
            q.push('&');
            q.push_str(query);
        }
        let url = format!("ws://{}/ws/room/{room}?{q}", self.addr);
        let mut c = Conn::open(ctx, &format!("{}-via-proxy", user.id), &url, &[]).await?;
        c.handshake_as(Some(user)).await?;
        Ok(c)
    }
}

// The handshake callback's error type is tungstenite's (large) HTTP response.
#[allow(clippy::result_large_err)]
async fn relay(ctl: Arc<Ctl>, sock: TcpStream, n: u64) -> Result<(), String> {
    let mut path = String::from("/");
    let mut auth: Option<String> = None;
    let gen0 = ctl.cut_gen.load(Ordering::SeqCst);
    let client = tokio_tungstenite::accept_hdr_async(sock, |req: &Request, resp: Response| {
        path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(resp)
    })
    .await
    .map_err(|e| format!("client handshake: {e}"))?;
    let mut up_req = format!("{}{}", ctl.upstream, path)
        .into_client_request()
        .map_err(|e| format!("upstream url: {e}"))?;
    if let Some(a) = auth {
        if let Ok(v) = a.parse() {
            up_req.headers_mut().insert("authorization", v);
        }
    }
    let (server, _) = tokio_tungstenite::connect_async(up_req)
        .await
        .map_err(|e| format!("upstream connect: {e}"))?;
    let tag = format!("proxy#{n}");
    let (mut c_tx, mut c_rx) = client.split();
    let (mut s_tx, mut s_rx) = server.split();
    loop {
        if ctl.cut_gen.load(Ordering::SeqCst) != gen0 {
            ctl.tr.push(
                &tag,
                Dir::Note,
                "cut: both TCP connections dropped without a close frame",
            );
            return Ok(());
        }
        let cut = ctl.cut.notified();
        tokio::select! {
            _ = cut => {
                ctl.tr.push(&tag, Dir::Note, "cut: both TCP connections dropped without a close frame");
                return Ok(());
            }
            m = c_rx.next() => {
                let Some(Ok(m)) = m else { let _ = s_tx.close().await; return Ok(()) };
                if !forward(&ctl, &tag, Side::ToServer, m, &mut s_tx).await {
                    return Ok(());
                }
            }
            m = s_rx.next() => {
                let Some(Ok(m)) = m else { let _ = c_tx.close().await; return Ok(()) };
                if !forward(&ctl, &tag, Side::ToClient, m, &mut c_tx).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Forward one message applying the rules; false when the connection must be cut.
async fn forward<S>(ctl: &Ctl, tag: &str, side: Side, m: Message, out: &mut S) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    let text = match &m {
        Message::Text(t) => Some(t.to_string()),
        _ => None,
    };
    let action = text.as_deref().and_then(|t| ctl.decide(side, t));
    let dir = if side == Side::ToClient {
        "server→client"
    } else {
        "client→server"
    };
    let shown = text
        .as_deref()
        .map(|t| crate::ctx::short(t, 160))
        .unwrap_or_default();
    match action {
        None => out.send(m).await.is_ok(),
        Some(Action::Drop) => {
            ctl.tr
                .push(tag, Dir::Note, &format!("dropped {dir}: {shown}"));
            true
        }
        Some(Action::Delay(d)) => {
            ctl.tr
                .push(tag, Dir::Note, &format!("delaying {dir} by {d:?}: {shown}"));
            tokio::time::sleep(d).await;
            out.send(m).await.is_ok()
        }
        Some(Action::Duplicate) => {
            ctl.tr
                .push(tag, Dir::Note, &format!("duplicated {dir}: {shown}"));
            out.send(m.clone()).await.is_ok() && out.send(m).await.is_ok()
        }
        Some(Action::Cut) => {
            ctl.tr
                .push(tag, Dir::Note, &format!("cut before {dir}: {shown}"));
            false
        }
    }
}
