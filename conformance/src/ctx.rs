//! Per-case context: users, rooms, HTTP, WebSocket and SSE clients that record every frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxy_protocol::http::{CreateRoomRequest, HistoryPage, MemberSpec, TokenRequest};
use fluxy_protocol::server::{AckFrame, ErrorFrame, HistoryFrame, ReplayFrame, WelcomeFrame};
use fluxy_protocol::{ClientFrame, ErrorCode, ServerFrame, TimelineEvent};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::case::{fail, CaseError};
use crate::env::{error_chain, Env, BASE_WAIT};
use crate::transcript::{Dir, Transcript};

/// A user of the target with a token.
#[derive(Debug, Clone)]
pub struct User {
    /// User id (token `sub`).
    pub id: String,
    /// Bearer token.
    pub token: String,
    /// Tenant id (token `tid`).
    pub tenant: String,
    /// Granted roles.
    pub roles: Vec<String>,
}

/// One recorded HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResp {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body text.
    pub text: String,
    /// The case's transcript, where deviations of other clauses are recorded.
    pub tr: Transcript,
}

impl HttpResp {
    /// Body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.text).ok()
    }

    /// Decode the body as `T`, failing `clause` otherwise.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        clause: &str,
        what: &str,
    ) -> Result<T, CaseError> {
        serde_json::from_str(&self.text).map_err(|e| {
            fail(
                clause,
                format!("a {what} body"),
                format!("{} {} ({e})", self.status, short(&self.text, 400)),
            )
        })
    }

    /// The `error` code of an `ErrorBody`.
    pub fn error_code(&self) -> Option<String> {
        self.json()?.get("error")?.as_str().map(str::to_owned)
    }

    /// Fail `clause` unless status is `status`.
    pub fn expect_status(&self, clause: &str, what: &str, status: u16) -> Result<(), CaseError> {
        if self.status == status {
            Ok(())
        } else {
            Err(fail(
                clause,
                format!("{what}: HTTP {status}"),
                format!("HTTP {} {}", self.status, short(&self.text, 400)),
            ))
        }
    }

    /// Fail `clause` unless this is an `ErrorBody` with `code` and the code's status. A
    /// response with the right status whose body is no `ErrorBody` at all is a deviation from
    /// FX-ERR-4 (recorded, and judged by the cases citing it), not evidence about `clause`.
    pub fn expect_error(&self, clause: &str, what: &str, code: ErrorCode) -> Result<(), CaseError> {
        let st = code.http_status();
        if self.status == st && self.error_code().as_deref() == Some(code.as_str()) {
            Ok(())
        } else if self.status == st && self.error_code().is_none() && clause != "FX-ERR-4" {
            self.tr.observe(
                "FX-ERR-4",
                &format!("{what}: an ErrorBody with error={code}"),
                &format!("HTTP {} {}", self.status, short(&self.text, 300)),
            );
            Ok(())
        } else {
            Err(fail(
                clause,
                format!("{what}: HTTP {st} with ErrorBody error={code}"),
                format!("HTTP {} {}", self.status, short(&self.text, 400)),
            ))
        }
    }
}

/// Shorten text for messages.
pub fn short(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut cut = n;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// Everything a case needs: the run environment, its transcript and unique names.
#[derive(Debug)]
pub struct Ctx {
    /// Run-wide environment.
    pub env: Arc<Env>,
    /// This case's transcript.
    pub tr: Transcript,
    /// Case id.
    pub case_id: &'static str,
    n: AtomicU64,
}

/// Options for minting a token.
#[derive(Debug, Clone, Default)]
pub struct TokenOpts {
    /// Roles (empty: server default).
    pub roles: Vec<String>,
    /// ttlSeconds.
    pub ttl: Option<u64>,
    /// Use the second tenant's key.
    pub second_tenant: bool,
}

impl Ctx {
    /// A context for `case_id`.
    pub fn new(env: Arc<Env>, case_id: &'static str) -> Ctx {
        Ctx {
            env,
            tr: Transcript::new(),
            case_id,
            n: AtomicU64::new(0),
        }
    }

    /// The default deadline for one awaited condition (5 s × scale).
    pub fn wait(&self) -> Duration {
        self.env.scaled(BASE_WAIT)
    }

    /// `ms` milliseconds, scaled.
    pub fn ms(&self, ms: u64) -> Duration {
        self.env.scaled(Duration::from_millis(ms))
    }

    /// A fresh `ref`.
    pub fn r(&self) -> String {
        format!("r{}", self.n.fetch_add(1, Ordering::Relaxed))
    }

    /// A unique id with `label` (matches the id pattern).
    pub fn uid(&self, label: &str) -> String {
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(24)
            .collect();
        format!("{}-{}{}", self.env.run_id, label, self.env.next())
    }

    /// A unique `clientMessageId`.
    pub fn cmid(&self) -> String {
        format!("cm{}x{}", self.env.run_id, self.env.next())
    }

    /// Note something in the transcript.
    pub fn note(&self, text: &str) {
        self.tr.push("runner", Dir::Note, text);
    }

    /// The first tenant's JWT secret, or skip.
    pub fn secret(&self) -> Result<Vec<u8>, CaseError> {
        self.env
            .target
            .jwt_secret
            .as_ref()
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| CaseError::Skip("needs --jwt-secret to sign crafted tokens".into()))
    }

    /// Block unless the server implements `profile` (by the runner's probe): for a case of one
    /// profile that also needs another (a compat case reading history, say).
    pub fn need_profile(&self, profile: &str) -> Result<(), CaseError> {
        match self.env.probes.get().and_then(|m| m.get(profile)) {
            Some(crate::profile::Probe::NotImplemented(ev)) => {
                Err(CaseError::Blocked(crate::case::Failure {
                    clause: "FX-PRF-2".into(),
                    expected: format!("the {profile} profile, which this case also needs"),
                    observed: ev.clone(),
                }))
            }
            _ => Ok(()),
        }
    }

    /// Skip unless a second tenant is configured.
    pub fn need_tenant2(&self) -> Result<(), CaseError> {
        if self.env.target.api_key2.is_some() {
            Ok(())
        } else {
            Err(CaseError::Skip(
                "needs a second tenant (--api-key-2)".into(),
            ))
        }
    }

    /// Send one HTTP request and record it. `path` starts with `/`.
    pub async fn http(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<HttpResp, CaseError> {
        self.http_with(method, path, token, body, &[], None).await
    }

    /// [`Ctx::http`] with extra headers and a request timeout.
    pub async fn http_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<HttpResp, CaseError> {
        let url = format!("{}{}", self.env.target.endpoint, path);
        let mut rb = self.env.http.request(method.clone(), &url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        if let Some(t) = timeout {
            rb = rb.timeout(t);
        }
        let line = match body {
            Some(b) => format!("{method} {path} {b}"),
            None => format!("{method} {path}"),
        };
        self.send_logged(rb, &method, path, line).await
    }

    /// POST a body given byte for byte (`Content-Type: application/json`), e.g. to sit exactly
    /// at a size limit; the transcript shows its length and first characters.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        body: String,
    ) -> Result<HttpResp, CaseError> {
        let url = format!("{}{}", self.env.target.endpoint, path);
        let line = format!("POST {path} ({} bytes) {}", body.len(), short(&body, 120));
        let rb = self
            .env
            .http
            .post(&url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send_logged(rb, &reqwest::Method::POST, path, line)
            .await
    }

    async fn send_logged(
        &self,
        rb: reqwest::RequestBuilder,
        method: &reqwest::Method,
        path: &str,
        line: String,
    ) -> Result<HttpResp, CaseError> {
        self.tr.push("http", Dir::Sent, &line);
        let res = rb.send().await.map_err(|e| {
            self.tr.push(
                "http",
                Dir::Note,
                &format!("transport error: {}", error_chain(&e)),
            );
            CaseError::Error(format!("{method} {path}: {}", error_chain(&e)))
        })?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.map_err(|e| {
            CaseError::Error(format!(
                "{method} {path}: reading body: {}",
                error_chain(&e)
            ))
        })?;
        self.tr
            .push("http", Dir::Received, &format!("{status} {text}"));
        Ok(HttpResp {
            status,
            headers,
            text,
            tr: self.tr.clone(),
        })
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> Result<HttpResp, CaseError> {
        self.http(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// POST JSON with a token.
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Result<HttpResp, CaseError> {
        self.http(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    /// POST /auth/token for a new unique user.
    pub async fn mint(&self, label: &str, opts: TokenOpts) -> Result<User, CaseError> {
        let id = self.uid(label);
        self.mint_for(&id, opts).await
    }

    /// POST /auth/token for the given user id.
    pub async fn mint_for(&self, id: &str, opts: TokenOpts) -> Result<User, CaseError> {
        let key = if opts.second_tenant {
            self.need_tenant2()?;
            self.env.target.api_key2.clone().unwrap_or_default()
        } else {
            self.env.target.api_key.clone()
        };
        let req = TokenRequest {
            user_id: id.to_string(),
            roles: opts.roles.clone(),
            ttl_seconds: opts.ttl,
        };
        let body = serde_json::to_value(&req).unwrap_or(Value::Null);
        let res = self
            .http_with(
                reqwest::Method::POST,
                "/auth/token",
                None,
                Some(&body),
                &[("X-Fluxy-Api-Key", key.as_str())],
                None,
            )
            .await?;
        let (t, dev) = crate::env::read_token_response(res.status, &res.text).map_err(|e| {
            fail(
                "FX-AUTH-1",
                "POST /auth/token with a valid API key answers a TokenResponse",
                e,
            )
        })?;
        if !dev.is_empty() {
            self.tr.observe(
                "FX-AUTH-1",
                "POST /auth/token answers a TokenResponse (token, expiresIn, expiresAt, claims {sub, tid, roles})",
                &dev.join("; "),
            );
        }
        Ok(User {
            id: if t.sub.is_empty() {
                id.to_string()
            } else {
                t.sub
            },
            token: t.token,
            tenant: t.tid,
            roles: t.roles,
        })
    }

    /// A new member user.
    pub async fn user(&self, label: &str) -> Result<User, CaseError> {
        self.mint(label, TokenOpts::default()).await
    }

    /// A new user with `roles`.
    ///
    /// A token without every requested role is an FX-AUTH-2 violation (valid roles are
    /// granted as asked). With the tenant's JWT secret (`--jwt-secret`) the runner then signs
    /// the token it asked for itself, since identity and roles come from any token that
    /// verifies with the tenant's secret (FX-AUTH-6, FX-AUTH-7): FX-AUTH-2 is recorded as an
    /// observation and the case goes on. Without the secret a case needing those roles is
    /// blocked on FX-AUTH-2, not judged as if it had them.
    pub async fn user_roles(&self, label: &str, roles: &[&str]) -> Result<User, CaseError> {
        let u = self
            .mint(
                label,
                TokenOpts {
                    roles: roles.iter().map(|s| s.to_string()).collect(),
                    ..TokenOpts::default()
                },
            )
            .await?;
        let Some(missing) = roles.iter().find(|r| !u.roles.iter().any(|g| g == *r)) else {
            return Ok(u);
        };
        let expected = format!("a token with the requested roles {roles:?}");
        let observed = format!("roles {:?} (no `{missing}`)", u.roles);
        let tid = if u.tenant.is_empty() {
            self.env.tenant.clone()
        } else {
            u.tenant.clone()
        };
        let Some(secret) = self.env.target.jwt_secret.as_ref() else {
            return Err(fail("FX-AUTH-2", expected, observed));
        };
        self.tr.observe("FX-AUTH-2", &expected, &observed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "sub": u.id, "tid": tid, "roles": roles, "iat": now, "exp": now + 3600,
        });
        let token = fluxy_protocol::jwt::sign_raw(
            &serde_json::json!({"alg": "HS256", "typ": "JWT"}),
            &claims,
            secret.as_bytes(),
        );
        self.note(&format!(
            "signed a token for {} with roles {roles:?} with the tenant's secret (the minted one lacked `{missing}`)",
            u.id
        ));
        Ok(User {
            token,
            roles: roles.iter().map(|s| s.to_string()).collect(),
            ..u
        })
    }

    /// A new user of the second tenant (skips without one).
    pub async fn user2(&self, label: &str) -> Result<User, CaseError> {
        self.mint(
            label,
            TokenOpts {
                second_tenant: true,
                ..TokenOpts::default()
            },
        )
        .await
    }

    /// Create a room owned by `owner` with `members` (role member); returns its id.
    pub async fn room(&self, owner: &User, members: &[&User]) -> Result<String, CaseError> {
        let req = CreateRoomRequest {
            id: Some(self.uid("room")),
            name: format!("conformance {}", self.case_id),
            room_type: None,
            members: members
                .iter()
                .map(|u| MemberSpec {
                    user_id: u.id.clone(),
                    role: None,
                })
                .collect(),
        };
        self.room_req(owner, req).await
    }

    /// As `owner`, add `user_id` to `room` (or change its room role) with
    /// `POST /rooms/{roomId}/members`; fails FX-TEN-5 unless answered 200 or 201.
    pub async fn set_member(
        &self,
        owner: &User,
        room: &str,
        user_id: &str,
        role: Option<&str>,
    ) -> Result<(), CaseError> {
        let mut body = serde_json::json!({ "userId": user_id });
        if let Some(role) = role {
            body["role"] = Value::from(role);
        }
        let r = self
            .post(&format!("/rooms/{room}/members"), &owner.token, &body)
            .await?;
        if r.status == 200 || r.status == 201 {
            Ok(())
        } else {
            Err(crate::case::fail(
                "FX-TEN-5",
                format!("the owner sets member {user_id} (role {role:?}): 200 or 201"),
                format!("{} {}", r.status, short(&r.text, 300)),
            ))
        }
    }

    /// Create a room from a full request; returns its id.
    pub async fn room_req(
        &self,
        owner: &User,
        req: CreateRoomRequest,
    ) -> Result<String, CaseError> {
        let mut req = req;
        if req.room_type.is_none() {
            // FluxyChat requires `type`; sending the default costs nothing.
            req.room_type = Some(fluxy_protocol::common::RoomType::Group);
        }
        let asked = req.id.clone();
        let body = serde_json::to_value(&req).unwrap_or(Value::Null);
        let res = self.post("/rooms", &owner.token, &body).await?;
        let (id, dev) = crate::env::read_room_response(res.status, &res.text, asked.as_deref())
            .map_err(|e| {
                fail(
                    "FX-TEN-4",
                    "POST /rooms creates the room (201 with a RoomResponse)",
                    e,
                )
            })?;
        if !dev.is_empty() {
            self.tr.observe(
                "FX-TEN-4",
                "POST /rooms answers 201 with a RoomResponse",
                &dev.join("; "),
            );
        }
        Ok(id)
    }

    /// GET a history page.
    pub async fn history(
        &self,
        user: &User,
        room: &str,
        query: &str,
    ) -> Result<HistoryPage, CaseError> {
        let path = if query.is_empty() {
            format!("/rooms/{room}/history")
        } else {
            format!("/rooms/{room}/history?{query}")
        };
        let res = self.get(&path, &user.token).await?;
        res.expect_status("FX-HIS-1", &format!("GET {path}"), 200)?;
        res.parse("FX-HIS-1", "HistoryPage")
    }

    /// Walk the whole timeline forward with `limit`; returns every event (as parsed and as JSON).
    pub async fn walk_forward(
        &self,
        user: &User,
        room: &str,
        limit: u32,
    ) -> Result<Vec<(TimelineEvent, Value)>, CaseError> {
        let mut out = Vec::new();
        let mut q = format!("direction=forward&limit={limit}");
        for _ in 0..10_000 {
            let res = self
                .get(&format!("/rooms/{room}/history?{q}"), &user.token)
                .await?;
            res.expect_status("FX-HIS-1", "history page", 200)?;
            let v: Value = res.parse("FX-HIS-1", "HistoryPage")?;
            let page: HistoryPage = res.parse("FX-HIS-1", "HistoryPage")?;
            let raws = v
                .get("events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (e, raw) in page.events.iter().cloned().zip(raws) {
                out.push((e, raw));
            }
            if !page.has_more || page.events.is_empty() {
                break;
            }
            let c = page.next_cursor.ok_or_else(|| {
                fail(
                    "FX-HIS-6",
                    "a forward page carries nextCursor",
                    "no nextCursor",
                )
            })?;
            q = format!("direction=forward&limit={limit}&cursor={}", urlenc(&c));
        }
        Ok(out)
    }

    /// Open a WebSocket as `user` on `room` and wait for the connect sequence
    /// (welcome, snapshot, subscription_succeeded).
    pub async fn connect(&self, user: &User, room: &str) -> Result<Conn, CaseError> {
        self.connect_q(user, room, "").await
    }

    /// [`Ctx::connect`] with extra query parameters (`a=b&c=d`).
    pub async fn connect_q(&self, user: &User, room: &str, query: &str) -> Result<Conn, CaseError> {
        let mut q = format!("token={}", urlenc(&user.token));
        if !query.is_empty() {
            q.push('&');
            q.push_str(query);
        }
        let mut c = self
            .connect_raw(&user.id, &format!("/ws/room/{room}?{q}"), &[])
            .await?;
        c.handshake_as(Some(user)).await?;
        Ok(c)
    }

    /// Open a WebSocket on `path_and_query` without waiting for anything.
    pub async fn connect_raw(
        &self,
        label: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Conn, CaseError> {
        let url = format!("{}{}", self.env.ws_base(), path_and_query);
        Conn::open(self, label, &url, headers).await
    }

    /// Open an SSE stream on a room.
    pub async fn sse(
        &self,
        user: &User,
        room: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Sse, CaseError> {
        let path = if query.is_empty() {
            format!("/rooms/{room}/stream")
        } else {
            format!("/rooms/{room}/stream?{query}")
        };
        Sse::open(self, &user.id, &path, &user.token, headers).await
    }
}

/// A token bucket a little inside the server's advertised `rateBurst` / `ratePerSecond`, so
/// that no burst of a case that does not test the rate limit is refused (FX-LIM-3).
#[derive(Debug)]
struct Pacer {
    enabled: bool,
    /// Data frames handed to the writer and not yet sent.
    queued: usize,
    burst: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    fn new(burst: u64, rate: u64) -> Pacer {
        let mut p = Pacer {
            enabled: true,
            queued: 0,
            burst: 1.0,
            rate: 1.0,
            tokens: 0.0,
            last: Instant::now(),
        };
        p.set_limits(burst, rate);
        p.tokens = p.burst;
        p
    }

    /// Adopt advertised limits, keeping a margin for frames that the network bunches and for
    /// clock differences.
    fn set_limits(&mut self, burst: u64, rate: u64) {
        let new_burst = ((burst as f64) * 0.9 - 1.0).max(1.0);
        self.tokens += new_burst - self.burst;
        self.burst = new_burst;
        self.rate = ((rate as f64) * 0.85).max(0.5);
    }

    /// The tokens the bucket holds at `now` (refilled since the last take, at most `burst`).
    fn refilled(&self, now: Instant) -> f64 {
        (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst)
    }

    /// How long until the frames already taken have been sent.
    fn backlog(&self) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let owed = self.queued as f64 - self.refilled(Instant::now());
        if owed <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(owed / self.rate)
        }
    }

    /// Take one token; how long to wait before sending (zero when paced off).
    fn take(&mut self) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let now = Instant::now();
        self.tokens = self.refilled(now);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The `welcome` a tolerant client assumes when a server sends none (FX-HS-5 observed):
/// identity and roles from the token, the limits of the golden `welcome.json`.
fn synthetic_welcome(user: Option<&User>) -> WelcomeFrame {
    WelcomeFrame {
        protocol_version: fluxy_protocol::PROTOCOL_VERSION.into(),
        room_id: String::new(),
        user_id: user.map(|u| u.id.clone()).unwrap_or_default(),
        roles: user.map(|u| u.roles.clone()).unwrap_or_default(),
        connection_id: String::new(),
        current_seq: 0,
        heartbeat_interval_ms: 25_000,
        idle_timeout_ms: 60_000,
        token_expires_at: String::new(),
        limits: fluxy_protocol::common::Limits {
            max_frame_bytes: 65_536,
            max_content_chars: 4_000,
            rate_burst: 20,
            rate_per_second: 10,
            resume_window: 100,
            max_page_limit: 100,
        },
    }
}

/// Percent-encode a query value.
pub fn urlenc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Something a WebSocket connection delivered.
// Frames are kept unboxed so cases can pattern-match them directly; a log holds at most a few
// thousand of them.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A text frame.
    Text {
        /// Raw text.
        text: String,
        /// Parsed JSON.
        value: Option<Value>,
        /// Decoded server frame.
        frame: Option<ServerFrame>,
    },
    /// A binary frame (never allowed from a server).
    Binary(usize),
    /// The server closed (code and reason of its close frame).
    Closed {
        /// Close code, when a close frame was received.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The upgrade was refused with an HTTP response.
    Refused {
        /// HTTP status.
        status: u16,
        /// Body.
        body: String,
    },
    /// The transport failed.
    Broken(String),
}

impl Incoming {
    /// The decoded frame, if this is one.
    pub fn frame(&self) -> Option<&ServerFrame> {
        match self {
            Incoming::Text { frame, .. } => frame.as_ref(),
            _ => None,
        }
    }

    /// True for close, refusal or transport failure.
    pub fn is_end(&self) -> bool {
        matches!(
            self,
            Incoming::Closed { .. } | Incoming::Refused { .. } | Incoming::Broken(_)
        )
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Incoming::Text { text, .. } => short(text, 300),
            Incoming::Binary(n) => format!("binary frame of {n} bytes"),
            Incoming::Closed { code, reason } => format!("close {code:?} {reason:?}"),
            Incoming::Refused { status, body } => {
                format!("upgrade refused: HTTP {status} {}", short(body, 200))
            }
            Incoming::Broken(e) => format!("transport error: {e}"),
        }
    }
}

/// A frame sent on a [`Conn`]: its `ref`, the length of the log when it was sent, and its
/// `type` and `content` (to recognise its broadcast copy).
#[derive(Debug)]
struct SentFrame {
    reference: Option<String>,
    at: usize,
    ty: Option<String>,
    content: Option<String>,
}

/// A recorded WebSocket connection.
#[derive(Debug)]
pub struct Conn {
    /// Transcript label.
    pub label: String,
    pub(crate) tr: Transcript,
    out: Option<mpsc::UnboundedSender<Message>>,
    rx: mpsc::UnboundedReceiver<Incoming>,
    /// Everything received so far.
    pub log: Vec<Incoming>,
    pos: usize,
    wait: Duration,
    /// The `welcome` frame, once the handshake completed.
    pub welcome: Option<WelcomeFrame>,
    /// The connect `history` snapshot.
    pub snapshot: Option<HistoryFrame>,
    /// The connect `replay` (with `?lastSeq=`).
    pub replay: Option<ReplayFrame>,
    /// Raw JSON of the snapshot or replay events.
    pub snapshot_raw: Vec<Value>,
    tasks: Vec<JoinHandle<()>>,
    keepalive: Option<JoinHandle<()>>,
    /// Frames received before `welcome` (an FX-HS-5 violation).
    pub pre_welcome: Vec<String>,
    /// True when the server sent no `welcome` and [`Conn::welcome`] is the runner's stand-in
    /// (identity from the token, `currentSeq` from the snapshot).
    pub welcome_synthesized: bool,
    /// The client-side token bucket that keeps this connection within the server's advertised
    /// rate limit (FX-LIM-9's floor until `welcome` says more).
    pacer: Arc<std::sync::Mutex<Pacer>>,
    /// Negotiated subprotocol.
    pub subprotocol: Option<String>,
    /// Sizes of the `batch` frames received `[FX-TRN-10]`, in order. Their events are unpacked
    /// into [`Conn::log`] as if each had arrived alone (raw text as inside the batch).
    pub batches: Arc<std::sync::Mutex<Vec<usize>>>,
    /// The `ref` of every frame sent, with the length of [`Conn::log`] at that moment: where
    /// to look for what the server answered instead, when no frame carries the ref.
    sent_refs: std::sync::Mutex<Vec<SentFrame>>,
    /// True once an answer without `ref` or an own broadcast copy stood in for a frame with a
    /// `ref` after a grace period: later stand-ins on this connection are taken at once.
    stand_in_confirmed: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.stop_keepalive();
    }
}

static CONN_SEQ: AtomicU64 = AtomicU64::new(1);

impl Conn {
    pub(crate) async fn open(
        ctx: &Ctx,
        label: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Conn, CaseError> {
        let label = format!(
            "ws:{}#{}",
            label.rsplit('-').next().unwrap_or(label),
            CONN_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tr = ctx.tr.clone();
        let shown = url.split("token=").next().unwrap_or(url);
        tr.push(
            &label,
            Dir::Note,
            &format!(
                "connect {}{}",
                shown,
                if url.contains("token=") {
                    "token=…"
                } else {
                    ""
                }
            ),
        );
        let mut req = url
            .into_client_request()
            .map_err(|e| CaseError::Error(format!("bad WebSocket URL {url}: {e}")))?;
        for (k, v) in headers {
            if let (Ok(name), Ok(val)) = (
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                req.headers_mut().insert(name, val);
            }
        }
        let (tx_in, rx) = mpsc::unbounded_channel();
        let wait = ctx.wait();
        let connecting = tokio::time::timeout(wait, tokio_tungstenite::connect_async(req)).await;
        let mut conn = Conn {
            label: label.clone(),
            tr: tr.clone(),
            out: None,
            rx,
            log: Vec::new(),
            pos: 0,
            wait,
            welcome: None,
            snapshot: None,
            replay: None,
            snapshot_raw: Vec::new(),
            tasks: Vec::new(),
            keepalive: None,
            pre_welcome: Vec::new(),
            welcome_synthesized: false,
            pacer: Arc::new(std::sync::Mutex::new(Pacer::new(20, 10))),
            subprotocol: None,
            batches: Arc::default(),
            sent_refs: std::sync::Mutex::default(),
            stand_in_confirmed: false,
        };
        let (ws, resp) = match connecting {
            Err(_) => {
                return Err(CaseError::Error(format!(
                    "WebSocket connect to {shown} timed out"
                )));
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                tr.push(
                    &label,
                    Dir::Received,
                    &format!("upgrade refused: HTTP {status} {body}"),
                );
                conn.log.push(Incoming::Refused { status, body });
                return Ok(conn);
            }
            Ok(Err(e)) => {
                let msg = error_chain(&e);
                tr.push(&label, Dir::Note, &format!("connect failed: {msg}"));
                return Err(CaseError::Error(format!("WebSocket connect failed: {msg}")));
            }
            Ok(Ok(x)) => x,
        };
        conn.subprotocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (mut sink, mut stream) = ws.split();
        let (tx_out, mut rx_out) = mpsc::unbounded_channel::<Message>();
        let pacer = conn.pacer.clone();
        let writer = tokio::spawn(async move {
            while let Some(m) = rx_out.recv().await {
                let data = matches!(m, Message::Text(_) | Message::Binary(_));
                if data {
                    let wait = pacer.lock().map(|mut p| p.take()).unwrap_or_default();
                    if !wait.is_zero() {
                        // Rate shaping to the server's advertised limits, not synchronisation.
                        tokio::time::sleep(wait).await;
                    }
                }
                let sent = sink.send(m).await;
                if data {
                    if let Ok(mut p) = pacer.lock() {
                        p.queued = p.queued.saturating_sub(1);
                    }
                }
                if sent.is_err() {
                    break;
                }
            }
        });
        let tr2 = tr.clone();
        let label2 = label.clone();
        let batches = conn.batches.clone();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                let item = match m {
                    Ok(Message::Text(t)) => {
                        let text = t.to_string();
                        tr2.push(&label2, Dir::Received, &text);
                        let value = serde_json::from_str(&text).ok();
                        let frame = ServerFrame::decode(&text).ok();
                        if let Some(ServerFrame::Batch(_)) = frame {
                            let events = unpack_batch(&text);
                            if let Ok(mut b) = batches.lock() {
                                b.push(events.len());
                            }
                            for item in events {
                                if tx_in.send(item).is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                        Incoming::Text { text, value, frame }
                    }
                    Ok(Message::Binary(b)) => {
                        tr2.push(
                            &label2,
                            Dir::Received,
                            &format!("binary frame of {} bytes", b.len()),
                        );
                        Incoming::Binary(b.len())
                    }
                    Ok(Message::Close(cf)) => {
                        let (code, reason) = match cf {
                            Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                            None => (None, String::new()),
                        };
                        tr2.push(
                            &label2,
                            Dir::Received,
                            &format!(
                                "close {} {reason:?}",
                                code.map(|c| c.to_string())
                                    .unwrap_or_else(|| "(no code)".into())
                            ),
                        );
                        let _ = tx_in.send(Incoming::Closed { code, reason });
                        return;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let msg = error_chain(&e);
                        tr2.push(&label2, Dir::Note, &format!("transport: {msg}"));
                        let _ = tx_in.send(Incoming::Broken(msg));
                        return;
                    }
                };
                if tx_in.send(item).is_err() {
                    return;
                }
            }
            tr2.push(&label2, Dir::Note, "stream ended without close frame");
            let _ = tx_in.send(Incoming::Broken("stream ended without close frame".into()));
        });
        conn.out = Some(tx_out);
        conn.tasks.push(writer);
        conn.tasks.push(reader);
        Ok(conn)
    }

    /// Wait for the connect sequence: `welcome`, then `history`/`replay` (if any), then
    /// `subscription_succeeded`.
    pub async fn handshake(&mut self) -> Result<(), CaseError> {
        self.handshake_as(None).await
    }

    /// [`Conn::handshake`] for a connection of `user`. Deviations from FX-HS-5 and FX-HS-8
    /// are recorded as observations (they fail only the cases that cite those clauses) and
    /// worked around as a tolerant client would: without `welcome` the identity and roles come
    /// from the token and `currentSeq` from the snapshot; without `subscription_succeeded` the
    /// connection is used once the server has been quiet for a moment.
    pub async fn handshake_as(&mut self, user: Option<&User>) -> Result<(), CaseError> {
        if let Some(it @ Incoming::Refused { .. }) = self.log.first() {
            return Err(fail(
                "FX-HS-5",
                "an accepted connection starting with `welcome`",
                it.describe(),
            ));
        }
        let mut first_after: Option<Incoming> = None;
        let w = loop {
            match self.next_item().await {
                Some(Incoming::Text {
                    frame: Some(ServerFrame::Welcome(w)),
                    ..
                }) => break Some(w),
                // Presence churn from other connections delivered before `welcome` violates
                // FX-HS-5; it is recorded here and judged by `hs/welcome-first-under-churn`
                // and `hs/welcome-first`, so one server race does not fail unrelated cases.
                Some(Incoming::Text {
                    frame:
                        Some(
                            f @ (ServerFrame::Presence(_)
                            | ServerFrame::MemberJoined(_)
                            | ServerFrame::MemberLeft(_)),
                        ),
                    ..
                }) => {
                    self.tr.push(
                        &self.label,
                        Dir::Note,
                        "FX-HS-5 violated: a frame before `welcome` (judged by hs/welcome-first-under-churn)",
                    );
                    self.pre_welcome.push(f.encode());
                }
                Some(
                    it @ (Incoming::Closed { .. } | Incoming::Refused { .. } | Incoming::Broken(_)),
                ) => {
                    return Err(fail(
                        "FX-HS-5",
                        "an accepted connection starting with `welcome`",
                        it.describe(),
                    ));
                }
                Some(other) => {
                    self.tr
                        .observe("FX-HS-5", "the first frame is `welcome`", &other.describe());
                    first_after = Some(other);
                    break None;
                }
                None => {
                    self.tr.observe(
                        "FX-HS-5",
                        "a `welcome` frame",
                        "nothing within the deadline",
                    );
                    break None;
                }
            }
        };
        let synthesized = w.is_none();
        let w = w.unwrap_or_else(|| synthetic_welcome(user));
        let hb = w.heartbeat_interval_ms.clamp(200, 30_000);
        if let Ok(mut p) = self.pacer.lock() {
            p.set_limits(w.limits.rate_burst, w.limits.rate_per_second);
        }
        self.welcome = Some(w);
        self.welcome_synthesized = synthesized;
        self.pos = self.log.len();
        self.start_keepalive(Duration::from_millis(hb));
        // Without `welcome` nothing says what comes next: settle on a short quiet period.
        let quiet = if synthesized {
            self.wait.min(Duration::from_millis(1000))
        } else {
            self.wait
        };
        loop {
            let it = match first_after.take() {
                Some(it) => Some(it),
                None => self.next_item_until(Instant::now() + quiet).await,
            };
            let Some(it) = it else {
                self.tr.observe(
                    "FX-HS-8",
                    "`subscription_succeeded` after the snapshot",
                    "nothing within the deadline",
                );
                break;
            };
            self.pos = self.log.len();
            match &it {
                Incoming::Text {
                    frame: Some(ServerFrame::History(h)),
                    value,
                    ..
                } => {
                    self.snapshot = Some(h.clone());
                    self.snapshot_raw = raw_events(value);
                }
                Incoming::Text {
                    frame: Some(ServerFrame::Replay(r)),
                    value,
                    ..
                } => {
                    self.replay = Some(r.clone());
                    self.snapshot_raw = raw_events(value);
                }
                Incoming::Text {
                    frame: Some(ServerFrame::SubscriptionSucceeded(_)),
                    ..
                } => break,
                Incoming::Closed { .. } | Incoming::Broken(_) | Incoming::Refused { .. } => {
                    return Err(fail(
                        "FX-HS-8",
                        "the connect sequence completes on an accepted connection",
                        it.describe(),
                    ))
                }
                other if synthesized => {
                    // A server without `welcome` speaks its own connect sequence; keep going.
                    self.tr.push(
                        &self.label,
                        Dir::Note,
                        &format!("connect sequence without welcome: {}", other.describe()),
                    );
                }
                other => {
                    self.tr.observe(
                        "FX-HS-8",
                        "`history`/`replay` then `subscription_succeeded` after `welcome`",
                        &other.describe(),
                    );
                    // Leave it for the case to see.
                    self.pos -= 1;
                    break;
                }
            }
        }
        if synthesized {
            let last = self
                .snapshot
                .as_ref()
                .map(|h| h.current_seq)
                .or_else(|| self.replay.as_ref().map(|r| r.current_seq))
                .unwrap_or(0);
            if let Some(w) = self.welcome.as_mut() {
                w.current_seq = last;
            }
        }
        Ok(())
    }

    /// Send a `ping` every `every` (what a well-behaved client does) until stopped.
    pub fn start_keepalive(&mut self, every: Duration) {
        self.stop_keepalive();
        let Some(out) = self.out.clone() else { return };
        let tr = self.tr.clone();
        let label = self.label.clone();
        self.keepalive = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let t = r#"{"type":"ping"}"#;
                tr.push(&label, Dir::Sent, &format!("{t} (keepalive)"));
                if out.send(Message::text(t)).is_err() {
                    return;
                }
            }
        }));
    }

    /// How long until every frame sent so far has passed the pacer.
    pub fn backlog(&self) -> Duration {
        self.pacer.lock().map(|p| p.backlog()).unwrap_or_default()
    }

    /// Send frames as fast as the caller sends them, ignoring the advertised rate limit: for
    /// the cases that test the rate limit itself (FX-LIM-3, FX-LIM-4, FX-LIM-6).
    pub fn unpaced(&self) {
        if let Ok(mut p) = self.pacer.lock() {
            p.enabled = false;
        }
    }

    /// Pace this connection as if the server advertised `burst` and `rate` (a little inside
    /// them, as always), whatever its `welcome` said: for FX-LIM-9's floor.
    pub fn pace_at(&self, burst: u64, rate: u64) {
        if let Ok(mut p) = self.pacer.lock() {
            p.enabled = true;
            p.set_limits(burst, rate);
            p.tokens = p.tokens.min(p.burst);
        }
    }

    /// Stop the keepalive pings (to test the idle timeout).
    pub fn stop_keepalive(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
    }

    /// The default deadline of this connection's waits.
    pub fn wait_dur(&self) -> Duration {
        self.wait
    }

    /// The welcome's `currentSeq` (0 before the handshake).
    pub fn current_seq(&self) -> u64 {
        self.welcome.as_ref().map(|w| w.current_seq).unwrap_or(0)
    }

    async fn next_item(&mut self) -> Option<Incoming> {
        self.next_item_until(Instant::now() + self.wait).await
    }

    async fn next_item_until(&mut self, deadline: Instant) -> Option<Incoming> {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        match tokio::time::timeout(deadline - now, self.rx.recv()).await {
            Ok(Some(it)) => {
                self.log.push(it.clone());
                Some(it)
            }
            _ => None,
        }
    }

    /// Send a client frame.
    pub fn send(&self, f: &ClientFrame) -> Result<(), CaseError> {
        self.send_text(&f.encode())
    }

    /// Send raw JSON.
    pub fn send_json(&self, v: &Value) -> Result<(), CaseError> {
        self.send_text(&v.to_string())
    }

    /// Send a raw text frame.
    pub fn send_text(&self, t: &str) -> Result<(), CaseError> {
        self.tr.push(&self.label, Dir::Sent, t);
        let v = if t.contains("\"ref\"") {
            serde_json::from_str::<Value>(t).ok()
        } else {
            None
        };
        let field = |k: &str| {
            v.as_ref()
                .and_then(|v| v.get(k).and_then(Value::as_str).map(str::to_owned))
        };
        if let Ok(mut s) = self.sent_refs.lock() {
            s.push(SentFrame {
                reference: field("ref"),
                at: self.log.len(),
                ty: field("type"),
                content: field("content"),
            });
        }
        self.raw(Message::text(t.to_string()))
    }

    /// Send a binary frame.
    pub fn send_binary(&self, b: Vec<u8>) -> Result<(), CaseError> {
        if let Ok(mut s) = self.sent_refs.lock() {
            s.push(SentFrame {
                reference: None,
                at: self.log.len(),
                ty: None,
                content: None,
            });
        }
        self.tr.push(
            &self.label,
            Dir::Sent,
            &format!("binary frame of {} bytes", b.len()),
        );
        self.raw(Message::binary(b))
    }

    fn raw(&self, m: Message) -> Result<(), CaseError> {
        if matches!(m, Message::Text(_) | Message::Binary(_)) {
            if let Ok(mut p) = self.pacer.lock() {
                p.queued += 1;
            }
        }
        match &self.out {
            Some(o) => o
                .send(m)
                .map_err(|_| CaseError::Error(format!("{}: connection already gone", self.label))),
            None => Err(CaseError::Error(format!("{}: not connected", self.label))),
        }
    }

    /// Close the connection normally (1000).
    pub fn close(&mut self) {
        self.stop_keepalive();
        self.tr.push(&self.label, Dir::Sent, "close 1000");
        let _ = self.raw(Message::Close(Some(CloseFrame {
            code: WsCloseCode::Normal,
            reason: "normal".into(),
        })));
    }

    /// Drop the TCP connection without a close frame.
    pub fn kill(mut self) {
        self.tr.push(
            &self.label,
            Dir::Note,
            "drop TCP connection without close frame",
        );
        self.stop_keepalive();
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Wait for the next unconsumed item matching `pred`; non-matching items are skipped
    /// (they stay in `log`). Fails `clause` on deadline or connection end.
    pub async fn wait_item(
        &mut self,
        clause: &str,
        what: &str,
        mut pred: impl FnMut(&Incoming) -> bool + Send,
    ) -> Result<Incoming, CaseError> {
        self.wait_item_for(clause, what, self.wait, &mut pred).await
    }

    /// [`Conn::wait_item`] with an explicit deadline.
    pub async fn wait_item_for(
        &mut self,
        clause: &str,
        what: &str,
        dur: Duration,
        pred: &mut (dyn FnMut(&Incoming) -> bool + Send),
    ) -> Result<Incoming, CaseError> {
        while self.pos < self.log.len() {
            let it = &self.log[self.pos];
            self.pos += 1;
            if pred(it) {
                return Ok(it.clone());
            }
            if it.is_end() {
                return Err(fail(
                    clause,
                    what,
                    format!("connection ended first: {}", it.describe()),
                ));
            }
        }
        // Frames still queued behind the pacer have not reached the server yet: the deadline
        // starts when they will have.
        let deadline = Instant::now() + dur + self.backlog();
        loop {
            match self.next_item_until(deadline).await {
                Some(it) => {
                    self.pos = self.log.len();
                    if pred(&it) {
                        return Ok(it);
                    }
                    if it.is_end() {
                        return Err(fail(
                            clause,
                            what,
                            format!("connection ended first: {}", it.describe()),
                        ));
                    }
                }
                None => {
                    let last: Vec<String> = self
                        .log
                        .iter()
                        .rev()
                        .take(3)
                        .map(Incoming::describe)
                        .collect();
                    return Err(fail(
                        clause,
                        what,
                        format!(
                            "nothing matching on {} within {:.1}s (last received: {})",
                            self.label,
                            dur.as_secs_f64(),
                            if last.is_empty() {
                                "nothing".to_string()
                            } else {
                                last.join(" | ")
                            }
                        ),
                    ));
                }
            }
        }
    }

    /// Wait for a decoded frame matching `pred`.
    pub async fn wait_frame(
        &mut self,
        clause: &str,
        what: &str,
        mut pred: impl FnMut(&ServerFrame) -> bool + Send,
    ) -> Result<ServerFrame, CaseError> {
        let it = self
            .wait_item(clause, what, |i| i.frame().is_some_and(&mut pred))
            .await?;
        it.frame()
            .cloned()
            .ok_or_else(|| CaseError::Error("matched item has no frame".into()))
    }

    /// Wait for the `ack` or `error` answering `reference`; an error fails `clause`.
    ///
    /// A server that sends no `ack` at all but the sender's own broadcast copy (FluxyChat's
    /// confirmation) gets the ack a tolerant client would infer from that copy (its `id` or
    /// `messageId`, `seq`, `createdAt`); FX-ACK-1 is recorded as an observation, so only the
    /// cases citing it fail on it.
    pub async fn ack(&mut self, clause: &str, reference: &str) -> Result<AckFrame, CaseError> {
        match self.answer_or_stand_in(clause, reference).await? {
            Ok(ServerFrame::Ack(a)) => Ok(a),
            Ok(other) => Err(fail(
                clause,
                format!("an `ack` with ref {reference}"),
                other.encode(),
            )),
            Err(StandIn::OwnCopy(v, text)) => {
                self.tr.observe(
                    "FX-ACK-1",
                    "an `ack` for every frame that produces a timeline event",
                    &format!(
                        "no ack at all; the sender's own broadcast copy arrived: {}",
                        short(&text, 300)
                    ),
                );
                Ok(ack_from_copy(reference, &v))
            }
            Err(StandIn::RefLess(v, text)) => match self.refless_frame(reference, &v, &text) {
                Ok(ServerFrame::Ack(a)) => Ok(a),
                Ok(other) => Err(fail(
                    clause,
                    format!("an `ack` with ref {reference}"),
                    other.encode(),
                )),
                Err(_) if ty_of(&v) == "error" => {
                    // Refused, for a reason the client cannot read (no `code`): the request was
                    // not carried out, which is what `clause` is about; the shape is FX-ERR-1's.
                    self.tr.observe(
                        "FX-ERR-1",
                        "an `error` frame carries `code`, `message` and `retryable`",
                        &short(&text, 300),
                    );
                    Err(fail(
                        clause,
                        format!("an `ack` with ref {reference}"),
                        format!(
                            "refused with an error frame without `ref`: {}",
                            short(&text, 300)
                        ),
                    ))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Wait for any frame carrying `ref` = `reference` (ack, error, replay, token_refreshed).
    ///
    /// When none carries it, an answer without `ref` that decodes is taken (FX-FRM-7 recorded
    /// as an observation); one that does not decode fails the clause owning its shape (an
    /// `error` without `code` fails `clause`: a refusal the caller cannot use); the sender's
    /// own broadcast copy with no ack at all stands for the ack a tolerant client infers from
    /// it (FX-ACK-1 recorded as an observation).
    pub async fn answer(
        &mut self,
        clause: &str,
        reference: &str,
    ) -> Result<ServerFrame, CaseError> {
        match self.answer_or_stand_in(clause, reference).await? {
            Ok(f) => Ok(f),
            Err(StandIn::RefLess(v, text)) => match self.refless_frame(reference, &v, &text) {
                Err(_) if ty_of(&v) == "error" => {
                    // A refusal whose code the client cannot read: not the answer the caller
                    // needs (the code is FX-ERR-1's business).
                    self.tr.observe(
                        "FX-ERR-1",
                        "an `error` frame carries `code`, `message` and `retryable`",
                        &short(&text, 300),
                    );
                    Err(fail(
                        clause,
                        format!("the answer to the frame with ref {reference}"),
                        format!(
                            "refused with an error frame without `code`: {}",
                            short(&text, 300)
                        ),
                    ))
                }
                other => other,
            },
            Err(StandIn::OwnCopy(v, text)) => {
                self.tr.observe(
                    "FX-ACK-1",
                    "an `ack` for every frame that produces a timeline event",
                    &format!(
                        "no ack at all; the sender's own broadcast copy arrived: {}",
                        short(&text, 300)
                    ),
                );
                Ok(ServerFrame::Ack(ack_from_copy(reference, &v)))
            }
        }
    }

    /// An answer without `ref`: the decoded frame (FX-FRM-7 observed), or a failure of the
    /// clause that owns the shape of a frame of its type.
    fn refless_frame(
        &self,
        reference: &str,
        v: &Value,
        text: &str,
    ) -> Result<ServerFrame, CaseError> {
        self.tr.observe(
            "FX-FRM-7",
            "the answer to a frame with `ref` echoes that ref",
            &format!(
                "no frame with ref {reference}; a `ref`-less answer arrived: {}",
                short(text, 300)
            ),
        );
        match ServerFrame::decode(text) {
            Ok(f) => Ok(f),
            Err(e) => {
                let (owner, what) = match ty_of(v).as_str() {
                    "error" => (
                        "FX-ERR-1",
                        "an `error` frame with `code`, `message` and `retryable`",
                    ),
                    "replay" => (
                        "FX-RES-1",
                        "a `replay` frame (fromSeq, events, hasMore, currentSeq)",
                    ),
                    "ack" => ("FX-ACK-1", "an `ack` frame"),
                    "token_refreshed" => ("FX-AUTH-9", "a `token_refreshed` frame"),
                    _ => ("FX-FRM-7", "an answer echoing the ref"),
                };
                Err(fail(
                    owner,
                    format!("{what} answering the frame with ref {reference}"),
                    format!("{} ({e})", short(text, 300)),
                ))
            }
        }
    }

    /// Wait for the frame carrying `reference`; when none comes, what stands in for it (an
    /// answer without `ref`, or the sender's own broadcast copy with no ack at all).
    ///
    /// The wait ends early once a stand-in has arrived (a `ref`-less answer, or the own copy
    /// on a connection that never received an `ack`): the frame with the ref then gets a
    /// short grace period. A conforming server sends its ack before the broadcast copy
    /// (FX-ACK-3), so this never cuts its answer short.
    async fn answer_or_stand_in(
        &mut self,
        clause: &str,
        reference: &str,
    ) -> Result<Result<ServerFrame, StandIn>, CaseError> {
        let what = format!("an answer with ref {reference}");
        let deadline = Instant::now() + self.wait + self.backlog();
        let mut saw_ack = self
            .log
            .iter()
            .any(|i| matches!(i, Incoming::Text { value: Some(v), .. } if ty_of(v) == "ack"));
        // What the request's own broadcast copy would look like (its content, or its type for
        // a request without content), so that only such a frame ends the wait early.
        let (sent_ty, sent_content) = self
            .sent_refs
            .lock()
            .ok()
            .and_then(|s| {
                s.iter()
                    .rev()
                    .find(|f| f.reference.as_deref() == Some(reference))
                    .map(|f| {
                        (
                            f.ty.clone(),
                            f.content.as_deref().map(|c| c.trim().to_owned()),
                        )
                    })
            })
            .unwrap_or_default();
        loop {
            if let Some(stand) = self.stand_in(reference) {
                // A short grace period for the frame with the ref itself, until this
                // connection has shown that it answers without one.
                let grace = if self.stand_in_confirmed {
                    Duration::ZERO
                } else {
                    (self.wait / 10).min(deadline.saturating_duration_since(Instant::now()))
                };
                return match self
                    .wait_item_for(clause, &what, grace, &mut |it| {
                        it.frame().is_some_and(|f| frame_ref(f) == Some(reference))
                    })
                    .await
                {
                    Ok(it) => it
                        .frame()
                        .cloned()
                        .map(Ok)
                        .ok_or_else(|| CaseError::Error("matched item has no frame".into())),
                    Err(_) => {
                        self.stand_in_confirmed = true;
                        Ok(Err(stand))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut candidate = false;
            let got = self
                .wait_item_for(clause, &what, left, &mut |it| {
                    if it.frame().is_some_and(|f| frame_ref(f) == Some(reference)) {
                        return true;
                    }
                    if let Incoming::Text { value: Some(v), .. } = it {
                        let t = ty_of(v);
                        if t == "ack" {
                            saw_ack = true;
                        }
                        let refless_answer =
                            matches!(t.as_str(), "error" | "ack" | "replay" | "token_refreshed")
                                && v.get("ref").is_none_or(Value::is_null);
                        let maybe_copy = !saw_ack
                            && matches!(
                                t.as_str(),
                                "message" | "edit" | "delete" | "reaction" | "read" | "stream"
                            )
                            && match &sent_content {
                                Some(c) => {
                                    v.get("content").and_then(Value::as_str) == Some(c.as_str())
                                }
                                None => sent_ty.as_deref() == Some(t.as_str()),
                            };
                        if refless_answer || maybe_copy {
                            candidate = true;
                            return true;
                        }
                    }
                    false
                })
                .await;
            match got {
                Ok(it) if !candidate => {
                    return it
                        .frame()
                        .cloned()
                        .map(Ok)
                        .ok_or_else(|| CaseError::Error("matched item has no frame".into()));
                }
                // A possible stand-in: checked at the top of the loop.
                Ok(_) => continue,
                Err(CaseError::Fail(f)) => {
                    return match self.stand_in(reference) {
                        Some(stand) => Ok(Err(stand)),
                        None => Err(CaseError::Fail(f)),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// When nothing carrying `reference` arrived, what did arrive may stand in for it: an
    /// answer frame without a `ref` (FX-FRM-7), or, with no `ack` at all, the sender's own
    /// broadcast copy (FX-ACK-1).
    fn stand_in(&self, reference: &str) -> Option<StandIn> {
        let (start, refless_sent, sent_ty, content) = {
            let sent = self.sent_refs.lock().ok()?;
            let k = sent
                .iter()
                .rposition(|f| f.reference.as_deref() == Some(reference))?;
            // Frames sent without a ref since then may legitimately get ref-less answers, and
            // so may those sent back to back just before it (nothing received in between).
            let refless = sent[k..].iter().filter(|f| f.reference.is_none()).count();
            let before = sent[..k]
                .iter()
                .rev()
                .take_while(|f| f.at == sent[k].at)
                .filter(|f| f.reference.is_none())
                .count();
            (
                sent[k].at,
                refless + before,
                sent[k].ty.clone(),
                sent[k].content.clone(),
            )
        };
        let is_refless_answer = |v: &Value| {
            matches!(
                ty_of(v).as_str(),
                "error" | "ack" | "replay" | "token_refreshed"
            ) && v.get("ref").is_none_or(Value::is_null)
        };

        // Raw JSON, so that answers which do not decode (no `code`, no `seq`) count too.
        let later: Vec<(&Value, &str)> = self
            .log
            .get(start..)?
            .iter()
            .filter_map(|i| match i {
                Incoming::Text {
                    value: Some(v),
                    text,
                    ..
                } => Some((v, text.as_str())),
                _ => None,
            })
            .collect();
        let refless: Vec<(&Value, &str)> = later
            .iter()
            .filter(|(v, _)| is_refless_answer(v))
            .copied()
            .collect();
        let has_ack = later.iter().any(|(v, _)| ty_of(v) == "ack");
        let content = content.map(|c| c.trim().to_owned());
        let own = later.iter().find(|(v, _)| {
            let t = ty_of(v);
            let same_content =
                content.is_some() && v.get("content").and_then(Value::as_str) == content.as_deref();
            // A request without content (read, reaction, delete): its broadcast is of its type.
            let same_kind = content.is_none() && sent_ty.as_deref() == Some(t.as_str());
            // A request with content is recognised by it (several may be outstanding).
            let mine = if content.is_some() {
                same_content
            } else {
                same_kind
            };
            matches!(
                t.as_str(),
                "message" | "edit" | "delete" | "reaction" | "read" | "stream"
            ) && mine
        });
        // A copy with the request's own content shows it was carried out, whatever ref-less
        // errors (of requests pipelined after it) arrived since.
        if content.is_some() && !has_ack {
            if let Some((v, t)) = own {
                return Some(StandIn::OwnCopy((*v).clone(), t.to_string()));
            }
        }
        if let Some((v, t)) = refless.get(refless_sent) {
            return Some(StandIn::RefLess((*v).clone(), t.to_string()));
        }
        if has_ack {
            return None;
        }
        own.map(|(v, t)| StandIn::OwnCopy((*v).clone(), t.to_string()))
    }

    /// Wait for the `error` answering `reference` and check its code.
    ///
    /// No error but the request's own broadcast copy (no ack at all) means the request was
    /// carried out: that fails `clause`. An error without `ref` is taken as the answer
    /// (FX-FRM-7 observed); one without a `code` is taken as the refusal asked for, with
    /// FX-ERR-1 observed (the code, which the client cannot read, is that clause's business).
    pub async fn expect_error(
        &mut self,
        clause: &str,
        reference: &str,
        code: ErrorCode,
    ) -> Result<ErrorFrame, CaseError> {
        let got = match self.answer_or_stand_in(clause, reference).await? {
            Ok(f) => f,
            Err(StandIn::RefLess(v, text)) => match self.refless_frame(reference, &v, &text) {
                Ok(f) => f,
                Err(_) if ty_of(&v) == "error" => {
                    // Refused as asked, but without a `code` to tell which error it is: the
                    // refusal is what `clause` requires; the missing code is FX-ERR-1's.
                    self.tr.observe(
                        "FX-ERR-1",
                        "an `error` frame carries `code`, `message` and `retryable`",
                        &short(&text, 300),
                    );
                    let message = v
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    return Ok(ErrorFrame::new(code, message));
                }
                // Answered, but not with an error (whatever its shape, FX-FRM-7 observed):
                // the refusal `clause` requires did not happen.
                Err(_) => {
                    return Err(fail(
                        clause,
                        format!("`error {code}` with ref {reference}"),
                        format!(
                            "a `{}` answer without `ref`: {}",
                            ty_of(&v),
                            short(&text, 300)
                        ),
                    ))
                }
            },
            Err(StandIn::OwnCopy(_, text)) => {
                return Err(fail(
                    clause,
                    format!("`error {code}` with ref {reference}"),
                    format!(
                        "no error: the request was carried out (no ack; its broadcast arrived: {})",
                        short(&text, 300)
                    ),
                ))
            }
        };
        match got {
            ServerFrame::Error(e) if e.code == code => Ok(e),
            other => Err(fail(
                clause,
                format!("`error {code}` with ref {reference}"),
                other.encode(),
            )),
        }
    }

    /// Wait for an `error` frame (any ref) with `code`.
    pub async fn expect_error_any(
        &mut self,
        clause: &str,
        code: ErrorCode,
    ) -> Result<ErrorFrame, CaseError> {
        let what = format!("`error {code}`");
        match self
            .wait_frame(clause, &what, |f| matches!(f, ServerFrame::Error(_)))
            .await?
        {
            ServerFrame::Error(e) if e.code == code => Ok(e),
            other => Err(fail(clause, what, other.encode())),
        }
    }

    /// Wait for the connection to end; returns the close code.
    pub async fn wait_close(
        &mut self,
        clause: &str,
        dur: Duration,
    ) -> Result<Option<u16>, CaseError> {
        let it = self
            .wait_item_for(clause, "the server closes the connection", dur, &mut |i| {
                i.is_end()
            })
            .await?;
        Ok(match it {
            Incoming::Closed { code, .. } => code,
            _ => None,
        })
    }

    /// Round-trip a ping: everything the server sent before the pong is in `log` afterwards.
    pub async fn sync(&mut self, clause: &str) -> Result<(), CaseError> {
        let ts = 1_000_000 + CONN_SEQ.fetch_add(1, Ordering::Relaxed);
        let start = self.log.len();
        self.send(&ClientFrame::Ping(fluxy_protocol::client::PingFrame {
            ts: Some(ts),
        }))?;
        match self
            .wait_frame(
                clause,
                "`pong` echoing the ping's ts",
                |f| matches!(f, ServerFrame::Pong(p) if p.echo == Some(ts)),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(CaseError::Fail(f)) => {
                Err(self.unechoed_pong(start, ts).unwrap_or(CaseError::Fail(f)))
            }
            Err(e) => Err(e),
        }
    }

    /// When a `pong` echoing `ts` was awaited in vain: a `pong` without that echo received
    /// since log position `start` is FX-FRM-8's evidence, not the waiting caller's (the
    /// server answered, so the ping could not serve as a barrier).
    pub fn unechoed_pong(&self, start: usize, ts: u64) -> Option<CaseError> {
        let pong = self.log.get(start..)?.iter().find_map(|i| match i {
            Incoming::Text {
                value: Some(v),
                text,
                ..
            } if v.get("type").and_then(Value::as_str) == Some("pong")
                && v.get("echo").and_then(Value::as_u64) != Some(ts) =>
            {
                Some(text.clone())
            }
            _ => None,
        })?;
        Some(fail(
            "FX-FRM-8",
            format!("a `pong` echoing the ping's ts {ts}"),
            short(&pong, 200),
        ))
    }

    /// Every live timeline event received so far (decoded and raw).
    pub fn timeline(&self) -> Vec<(TimelineEvent, Value)> {
        self.log
            .iter()
            .filter_map(|i| match i {
                Incoming::Text {
                    frame: Some(f),
                    value: Some(v),
                    ..
                } => f.clone().into_timeline().map(|e| (e, v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Wait until a live timeline event with `seq >= seq` has arrived.
    pub async fn wait_seq(&mut self, clause: &str, seq: u64) -> Result<(), CaseError> {
        if self.timeline().iter().any(|(e, _)| e.seq() >= seq) {
            return Ok(());
        }
        let what = format!("a live timeline event with seq {seq}");
        self.wait_frame(clause, &what, |f| {
            f.clone().into_timeline().is_some_and(|e| e.seq() >= seq)
        })
        .await?;
        Ok(())
    }

    /// Wait for the live timeline event with `seq` (as [`Conn::wait_seq`]) and return it as JSON
    /// (`null` when a later event arrived but not that one).
    pub async fn event_at(&mut self, clause: &str, seq: u64) -> Result<Value, CaseError> {
        self.wait_seq(clause, seq).await?;
        Ok(self
            .timeline()
            .into_iter()
            .find(|(e, _)| e.seq() == seq)
            .map(|(_, v)| v)
            .unwrap_or_default())
    }

    /// Wait until `n` live timeline events have arrived in total.
    ///
    /// When they do not all arrive but enough frames of timeline types did, some without a
    /// `seq` (so they are no timeline events the runner can count), that is FX-ORD-1's
    /// evidence, not the caller's.
    pub async fn wait_count(&mut self, clause: &str, n: usize) -> Result<(), CaseError> {
        let what = format!("{n} live timeline events");
        loop {
            if self.timeline().len() >= n {
                return Ok(());
            }
            if let Err(e) = self
                .wait_frame(clause, &what, |f| f.clone().into_timeline().is_some())
                .await
            {
                return Err(self.unsequenced_events(n).unwrap_or(e));
            }
        }
    }

    /// FX-ORD-1's failure when at least `n` frames of timeline types arrived, some without
    /// `seq`.
    fn unsequenced_events(&self, n: usize) -> Option<CaseError> {
        let raw: Vec<&str> = self
            .log
            .iter()
            .filter_map(|i| match i {
                Incoming::Text {
                    value: Some(v),
                    text,
                    ..
                } if matches!(
                    ty_of(v).as_str(),
                    "message" | "edit" | "delete" | "reaction" | "read"
                ) =>
                {
                    Some(text.as_str())
                }
                _ => None,
            })
            .collect();
        let unsequenced = self.log.iter().find_map(|i| match i {
            Incoming::Text {
                value: Some(v),
                text,
                ..
            } if matches!(
                ty_of(v).as_str(),
                "message" | "edit" | "delete" | "reaction" | "read"
            ) && v.get("seq").and_then(Value::as_u64).is_none() =>
            {
                Some(text.clone())
            }
            _ => None,
        })?;
        (raw.len() >= n).then(|| {
            fail(
                "FX-ORD-1",
                "every timeline event carries a `seq`",
                format!(
                    "{} timeline frames arrived, some without seq: {}",
                    raw.len(),
                    short(&unsequenced, 300)
                ),
            )
        })
    }

    /// The raw JSON of every frame of a timeline type (`message`, `edit`, `delete`,
    /// `reaction`, `read`) received so far, whether or not it decodes (with or without `seq`).
    pub fn raw_timeline(&self) -> Vec<Value> {
        self.log
            .iter()
            .filter_map(|i| match i {
                Incoming::Text { value: Some(v), .. }
                    if matches!(
                        ty_of(v).as_str(),
                        "message" | "edit" | "delete" | "reaction" | "read"
                    ) =>
                {
                    Some(v.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Wait until `n` frames of timeline types have arrived in total ([`Conn::raw_timeline`]):
    /// for a case that judges fields of the events other than `seq` (FX-ORD-1's).
    pub async fn wait_raw_count(&mut self, clause: &str, n: usize) -> Result<(), CaseError> {
        let what = format!("{n} timeline frames");
        loop {
            if self.raw_timeline().len() >= n {
                return Ok(());
            }
            self.wait_item(clause, &what, |i| {
                matches!(i, Incoming::Text { value: Some(v), .. } if matches!(
                    ty_of(v).as_str(),
                    "message" | "edit" | "delete" | "reaction" | "read"
                ))
            })
            .await?;
        }
    }

    /// Every frame received so far, decoded.
    pub fn frames(&self) -> Vec<ServerFrame> {
        self.log.iter().filter_map(|i| i.frame().cloned()).collect()
    }
}

/// The `ref` a server frame carries.
pub fn frame_ref(f: &ServerFrame) -> Option<&str> {
    match f {
        ServerFrame::Ack(a) => a.reference.as_deref(),
        ServerFrame::Error(e) => e.reference.as_deref(),
        ServerFrame::Replay(r) => r.reference.as_deref(),
        ServerFrame::TokenRefreshed(t) => t.reference.as_deref(),
        _ => None,
    }
}

/// The events of a `batch` frame, each as the text it has inside the batch.
fn unpack_batch(text: &str) -> Vec<Incoming> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        events: Vec<&'a serde_json::value::RawValue>,
    }
    let Ok(raw) = serde_json::from_str::<Raw<'_>>(text) else {
        return Vec::new();
    };
    raw.events
        .into_iter()
        .map(|e| {
            let text = e.get().to_owned();
            Incoming::Text {
                value: serde_json::from_str(&text).ok(),
                frame: ServerFrame::decode(&text).ok(),
                text,
            }
        })
        .collect()
}

fn raw_events(v: &Option<Value>) -> Vec<Value> {
    v.as_ref()
        .and_then(|v| v.get("events"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` line.
    pub id: Option<String>,
    /// `event:` line (default `message`).
    pub event: String,
    /// Joined `data:` lines.
    pub data: String,
}

/// A recorded SSE stream.
#[derive(Debug)]
pub struct Sse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body, when the status is not 200.
    pub body: String,
    rx: mpsc::UnboundedReceiver<Option<SseEvent>>,
    /// Every event so far.
    pub log: Vec<SseEvent>,
    /// True once the stream ended.
    pub ended: bool,
    wait: Duration,
    task: Option<JoinHandle<()>>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Sse {
    async fn open(
        ctx: &Ctx,
        who: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
    ) -> Result<Sse, CaseError> {
        let label = format!(
            "sse:{}#{}",
            who.rsplit('-').next().unwrap_or(who),
            CONN_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let url = format!("{}{}", ctx.env.target.endpoint, path);
        let mut rb = ctx
            .env
            .http
            .get(&url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(3600));
        let mut has_accept = false;
        for (k, v) in headers {
            has_accept |= k.eq_ignore_ascii_case("accept");
            rb = rb.header(*k, *v);
        }
        if !has_accept {
            rb = rb.header("Accept", "text/event-stream");
        }
        ctx.tr
            .push(&label, Dir::Sent, &format!("GET {path} {headers:?}"));
        let res = tokio::time::timeout(ctx.wait(), rb.send())
            .await
            .map_err(|_| {
                CaseError::Error(format!(
                    "GET {path}: no response headers within the deadline"
                ))
            })?
            .map_err(|e| CaseError::Error(format!("GET {path}: {}", error_chain(&e))))?;
        let status = res.status().as_u16();
        let hdrs = res.headers().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sse = Sse {
            status,
            headers: hdrs.clone(),
            body: String::new(),
            rx,
            log: Vec::new(),
            ended: false,
            wait: ctx.wait(),
            task: None,
        };
        ctx.tr.push(
            &label,
            Dir::Received,
            &format!("{status} content-type={:?}", hdrs.get("content-type")),
        );
        if status != 200 {
            sse.body = tokio::time::timeout(ctx.wait(), res.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            ctx.tr.push(&label, Dir::Received, &sse.body);
            sse.ended = true;
            return Ok(sse);
        }
        let tr = ctx.tr.clone();
        let task = tokio::spawn(async move {
            let mut stream = res.bytes_stream();
            let mut buf = String::new();
            let mut cur = SseEvent {
                id: None,
                event: String::new(),
                data: String::new(),
            };
            let mut has_data = false;
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line = buf[..nl].trim_end_matches('\r').to_string();
                    buf.drain(..=nl);
                    if line.is_empty() {
                        if has_data || cur.id.is_some() || !cur.event.is_empty() {
                            let mut ev = std::mem::replace(
                                &mut cur,
                                SseEvent {
                                    id: None,
                                    event: String::new(),
                                    data: String::new(),
                                },
                            );
                            if ev.event.is_empty() {
                                ev.event = "message".into();
                            }
                            tr.push(
                                &label,
                                Dir::Received,
                                &format!(
                                    "id:{} event:{} data:{}",
                                    ev.id.as_deref().unwrap_or("-"),
                                    ev.event,
                                    ev.data
                                ),
                            );
                            if tx.send(Some(ev)).is_err() {
                                return;
                            }
                        }
                        has_data = false;
                    } else if let Some(c) = line.strip_prefix(':') {
                        tr.push(&label, Dir::Received, &format!(":{c}"));
                    } else {
                        let (field, val) = match line.find(':') {
                            Some(i) => (
                                &line[..i],
                                line[i + 1..].strip_prefix(' ').unwrap_or(&line[i + 1..]),
                            ),
                            None => (line.as_str(), ""),
                        };
                        match field {
                            "id" => cur.id = Some(val.to_string()),
                            "event" => cur.event = val.to_string(),
                            "data" => {
                                if has_data {
                                    cur.data.push('\n');
                                }
                                cur.data.push_str(val);
                                has_data = true;
                            }
                            _ => {}
                        }
                    }
                }
            }
            tr.push(&label, Dir::Note, "stream ended");
            let _ = tx.send(None);
        });
        sse.task = Some(task);
        Ok(sse)
    }

    /// Wait for the next event matching `pred` (events are kept in `log`).
    pub async fn wait_event(
        &mut self,
        clause: &str,
        what: &str,
        mut pred: impl FnMut(&SseEvent) -> bool + Send,
    ) -> Result<SseEvent, CaseError> {
        let deadline = Instant::now() + self.wait;
        loop {
            if self.ended {
                return Err(fail(clause, what, "the stream ended first"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(fail(
                    clause,
                    what,
                    format!("nothing matching within {:.1}s", self.wait.as_secs_f64()),
                ));
            }
            match tokio::time::timeout(deadline - now, self.rx.recv()).await {
                Ok(Some(Some(ev))) => {
                    self.log.push(ev.clone());
                    if pred(&ev) {
                        return Ok(ev);
                    }
                }
                Ok(_) => self.ended = true,
                Err(_) => {}
            }
        }
    }

    /// Wait for the stream to end.
    pub async fn wait_end(&mut self, clause: &str) -> Result<(), CaseError> {
        let deadline = Instant::now() + self.wait;
        while !self.ended {
            let now = Instant::now();
            if now >= deadline {
                return Err(fail(clause, "the stream ends", "it stayed open"));
            }
            match tokio::time::timeout(deadline - now, self.rx.recv()).await {
                Ok(Some(Some(ev))) => self.log.push(ev),
                Ok(_) => self.ended = true,
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Timeline events received so far (events with an `id:`), with their ids.
    pub fn timeline(&self) -> Vec<(Option<String>, TimelineEvent, Value)> {
        self.log
            .iter()
            .filter(|e| fluxy_protocol::events::TIMELINE_TYPES.contains(&e.event.as_str()))
            .filter_map(|e| {
                let v: Value = serde_json::from_str(&e.data).ok()?;
                let f = ServerFrame::decode(&e.data).ok()?.into_timeline()?;
                Some((e.id.clone(), f, v))
            })
            .collect()
    }

    /// Wait until a timeline event with `seq >= seq` arrived.
    pub async fn wait_seq(&mut self, clause: &str, seq: u64) -> Result<(), CaseError> {
        if self.timeline().iter().any(|(_, e, _)| e.seq() >= seq) {
            return Ok(());
        }
        let what = format!("an SSE timeline event with seq {seq}");
        self.wait_event(clause, &what, |e| {
            ServerFrame::decode(&e.data)
                .ok()
                .and_then(ServerFrame::into_timeline)
                .is_some_and(|t| t.seq() >= seq)
        })
        .await?;
        Ok(())
    }
}

/// What stands in for the answer to a request when no frame carries its `ref`.
#[derive(Debug)]
enum StandIn {
    /// An answer frame without `ref` (raw JSON and text): FX-FRM-7's evidence.
    RefLess(Value, String),
    /// No ack at all, but the sender's own broadcast copy (raw JSON and text): FX-ACK-1's.
    OwnCopy(Value, String),
}

/// The `type` of a raw frame ("" without one).
fn ty_of(v: &Value) -> String {
    v.get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The ack a tolerant client infers from its own broadcast copy of the event.
fn ack_from_copy(reference: &str, v: &Value) -> AckFrame {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    AckFrame {
        reference: Some(reference.to_owned()),
        client_message_id: text("clientMessageId"),
        id: v
            .get("id")
            .and_then(Value::as_u64)
            .or_else(|| v.get("messageId").and_then(Value::as_u64)),
        seq: v.get("seq").and_then(Value::as_u64),
        created_at: text("createdAt")
            .or_else(|| text("editedAt"))
            .or_else(|| text("deletedAt")),
        duplicate: false,
    }
}
