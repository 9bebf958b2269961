//! Test harness: start `fluxy-server` as a child process and talk to it over real sockets.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use fluxy_protocol::jwt::{sign, Claims};
use fluxy_protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Deadline for any single expected event.
pub const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dev {
    pub endpoint: String,
    pub api_key: String,
    pub api_key2: String,
    pub tenant: String,
    pub tenant2: String,
    pub jwt_secret: String,
    pub jwt_secret2: String,
}

pub struct Srv {
    /// The server process (`Srv::start`), or none for an embedded server.
    pub child: Option<Child>,
    /// The embedded server (`Srv::embedded`), or none for a process.
    pub server: Option<fluxy_server::RunningServer>,
    pub dev: Dev,
    pub http: reqwest::Client,
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Srv {
    pub async fn start(args: &[&str]) -> Srv {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fluxy-server"))
            .args(["--listen", "127.0.0.1:0", "--dev"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn fluxy-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("server printed its JSON line in time")
            .expect("read stdout")
            .expect("a line");
        let dev: Dev = serde_json::from_str(&line).expect("dev JSON line");
        Srv {
            child: Some(child),
            server: None,
            dev,
            http: reqwest::Client::new(),
        }
    }

    /// Start the server in this process (for tests that observe its internals).
    pub async fn embedded(config: fluxy_server::ServerConfig) -> Srv {
        let server = fluxy_server::start(fluxy_server::ServerConfig {
            dev: true,
            ..config
        })
        .await
        .expect("start embedded server");
        let dev = server.dev.clone().expect("dev credentials");
        let dev: Dev = serde_json::from_value(serde_json::to_value(dev).unwrap()).unwrap();
        Srv {
            child: None,
            server: Some(server),
            dev,
            http: reqwest::Client::new(),
        }
    }

    /// The embedded server (panics for a process).
    pub fn embedded_server(&self) -> &fluxy_server::RunningServer {
        self.server.as_ref().expect("an embedded server")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.dev.endpoint, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.dev.endpoint.replacen("http", "ws", 1), path)
    }

    /// Mint a token through the API (tenant 1, or 2).
    pub async fn token_in(&self, tenant2: bool, user: &str, roles: &[&str]) -> String {
        let key = if tenant2 {
            &self.dev.api_key2
        } else {
            &self.dev.api_key
        };
        let r = self
            .http
            .post(self.url("/auth/token"))
            .header("X-Fluxy-Api-Key", key)
            .json(&json!({"userId": user, "roles": roles}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn token(&self, user: &str, roles: &[&str]) -> String {
        self.token_in(false, user, roles).await
    }

    /// Sign arbitrary claims with tenant 1's secret.
    pub fn craft(&self, sub: &str, exp: u64, nbf: Option<u64>) -> String {
        sign(
            &Claims {
                sub: sub.into(),
                tid: self.dev.tenant.clone(),
                roles: vec!["member".into()],
                exp,
                iat: None,
                nbf,
            },
            self.dev.jwt_secret.as_bytes(),
        )
    }

    pub async fn room(&self, token: &str, id: &str, members: &[&str]) {
        let members: Vec<Value> = members.iter().map(|m| json!({"userId": m})).collect();
        let r = self
            .http
            .post(self.url("/rooms"))
            .bearer_auth(token)
            .json(&json!({"id": id, "name": id, "members": members}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create room {id}");
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    }

    pub async fn ws(&self, room: &str, token: &str, query: &str) -> Ws {
        let url = self.ws_url(&format!("/ws/room/{room}?token={token}{query}"));
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Ws { stream }
    }

    /// Connect and consume the connect sequence up to `subscription_succeeded`.
    pub async fn join(&self, room: &str, token: &str) -> Ws {
        let mut ws = self.ws(room, token, "").await;
        ws.until(|f| matches!(f, ServerFrame::SubscriptionSucceeded(_)))
            .await;
        ws
    }

    /// Every event of a room through forward history pages.
    pub async fn all_history(&self, token: &str, room: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut path = format!("/rooms/{room}/history?direction=forward&limit=500");
        loop {
            let (s, page) = self.get(token, &path).await;
            assert_eq!(s, 200, "{page}");
            let events = page["events"].as_array().unwrap().clone();
            out.extend(events);
            if !page["hasMore"].as_bool().unwrap() {
                return out;
            }
            path = format!(
                "/rooms/{room}/history?cursor={}&limit=500",
                page["nextCursor"].as_str().unwrap()
            );
        }
    }
}

#[allow(clippy::large_enum_variant)]
pub enum Got {
    Frame(ServerFrame, String),
    Close(u16),
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.unwrap();
    }

    /// Next frame or close, within the deadline.
    pub async fn next(&mut self) -> Got {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame within the deadline");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let f = ServerFrame::decode(&t).expect("valid server frame");
                    return Got::Frame(f, t.to_string());
                }
                Some(Ok(Message::Close(c))) => {
                    return Got::Close(c.map(|c| u16::from(c.code)).unwrap_or(1005))
                }
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Got::Close(1006),
            }
        }
    }

    /// Skip frames until one matches.
    pub async fn until(&mut self, pred: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            match self.next().await {
                Got::Frame(f, _) if pred(&f) => return f,
                Got::Frame(..) => {}
                Got::Close(c) => panic!("closed with {c} while waiting"),
            }
        }
    }

    /// Skip frames until a close; returns its code and the frames seen before it.
    pub async fn close_code(&mut self) -> (u16, Vec<ServerFrame>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Got::Frame(f, _) => seen.push(f),
                Got::Close(c) => return (c, seen),
            }
        }
    }

    pub async fn error(&mut self) -> fluxy_protocol::server::ErrorFrame {
        match self.until(|f| matches!(f, ServerFrame::Error(_))).await {
            ServerFrame::Error(e) => e,
            _ => unreachable!(),
        }
    }

    pub async fn ack(&mut self) -> fluxy_protocol::server::AckFrame {
        match self.until(|f| matches!(f, ServerFrame::Ack(_))).await {
            ServerFrame::Ack(a) => a,
            _ => unreachable!(),
        }
    }

    /// Collect `n` timeline events as raw JSON values (in arrival order).
    pub async fn timeline(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next().await {
                Got::Frame(f, raw) => {
                    if f.into_timeline().is_some() {
                        out.push(serde_json::from_str(&raw).unwrap());
                    }
                }
                Got::Close(c) => panic!("closed with {c}"),
            }
        }
        out
    }
}
