//! A small HTTP + WebSocket client of the Fluxy API for the benches that drive a server in
//! another process (fluxy-server child, or the Durable Object shell under wrangler).

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{BenchError, Ws};

/// Endpoint and credentials.
#[derive(Clone)]
pub struct Api {
    /// HTTP client (keep-alive pool).
    pub http: reqwest::Client,
    /// `http://host:port`.
    pub base: String,
    /// Tenant API key.
    pub api_key: String,
}

impl Api {
    /// A client of `base` with `api_key`.
    pub fn new(base: &str, api_key: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
        }
    }

    /// Mint an admin token for `user` (`POST /auth/token`).
    pub async fn token(&self, user: &str) -> Result<String, BenchError> {
        let r = self
            .http
            .post(format!("{}/auth/token", self.base))
            .header("X-Fluxy-Api-Key", &self.api_key)
            .json(&json!({"userId": user, "roles": ["admin"], "ttlSeconds": 86400}))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(BenchError::Status("POST /auth/token", r.status().as_u16()));
        }
        let v: Value = r.json().await?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or(BenchError::Parse("token"))
    }

    /// Create room `id` (`POST /rooms`).
    pub async fn room(&self, token: &str, id: &str) -> Result<(), BenchError> {
        let r = self
            .http
            .post(format!("{}/rooms", self.base))
            .bearer_auth(token)
            .json(&json!({"id": id, "name": id}))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(BenchError::Status("POST /rooms", r.status().as_u16()));
        }
        Ok(())
    }

    /// `GET /rooms/{room}/history?{query}` as JSON.
    pub async fn history(&self, token: &str, room: &str, query: &str) -> Result<Value, BenchError> {
        let r = self
            .http
            .get(format!("{}/rooms/{room}/history?{query}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(BenchError::Status("GET history", r.status().as_u16()));
        }
        Ok(r.json().await?)
    }

    /// WebSocket URL of `room` with `query` (the token is added).
    pub fn ws_url(&self, room: &str, token: &str, query: &str) -> String {
        format!(
            "{}/ws/room/{room}?token={token}&{query}",
            self.base.replacen("http", "ws", 1)
        )
    }

    /// Connect with `replay=off` and read up to `subscription_succeeded`; returns the socket
    /// and the `welcome` frame.
    pub async fn ws_subscribed(&self, room: &str, token: &str) -> Result<(Ws, Value), BenchError> {
        let (mut ws, _) = crate::connect_ws(self.ws_url(room, token, "replay=off")).await?;
        let mut welcome = Value::Null;
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m? {
                if t.starts_with("{\"type\":\"welcome\"") {
                    welcome = serde_json::from_str(&t)?;
                } else if t.contains("\"type\":\"subscription_succeeded\"") {
                    return Ok((ws, welcome));
                } else if t.starts_with("{\"type\":\"error\"") {
                    return Err(BenchError::Frame(t.to_string()));
                }
            }
        }
        Err(BenchError::Closed("before subscription_succeeded"))
    }
}
