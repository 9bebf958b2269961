//! The target under test, run-wide settings and the preflight that checks the target is usable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fluxy_protocol::http::{CreateRoomRequest, TokenRequest, TokenResponse};
use serde::Deserialize;

/// How to reach a server and authenticate against it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8787`.
    pub endpoint: String,
    /// API key of the first tenant.
    pub api_key: String,
    /// API key of a second tenant (tenancy cases are skipped without it).
    pub api_key2: Option<String>,
    /// HS256 secret of the first tenant (crafted-token cases are skipped without it).
    pub jwt_secret: Option<String>,
    /// HS256 secret of the second tenant.
    pub jwt_secret2: Option<String>,
}

/// The JSON line a `fluxy-server --dev` prints once listening.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DevJson {
    /// Base URL.
    pub endpoint: String,
    /// First tenant's API key.
    pub api_key: String,
    /// Second tenant's API key.
    #[serde(default)]
    pub api_key2: Option<String>,
    /// First tenant id.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Second tenant id.
    #[serde(default)]
    pub tenant2: Option<String>,
    /// First tenant's JWT secret.
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// Second tenant's JWT secret.
    #[serde(default)]
    pub jwt_secret2: Option<String>,
}

impl DevJson {
    /// Parse the dev line (the first line that is a JSON object).
    pub fn parse(text: &str) -> Result<DevJson, RunError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with('{'))
            .ok_or_else(|| {
                RunError::Config("no JSON object found in the --dev-json input".into())
            })?;
        serde_json::from_str(line)
            .map_err(|e| RunError::Config(format!("--dev-json is not the server's dev line: {e}")))
    }

    /// The target it describes.
    pub fn target(&self) -> Target {
        Target {
            endpoint: self.endpoint.clone(),
            api_key: self.api_key.clone(),
            api_key2: self.api_key2.clone(),
            jwt_secret: self.jwt_secret.clone(),
            jwt_secret2: self.jwt_secret2.clone(),
        }
    }
}

/// A run that could not proceed (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Bad command line or configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Nothing answers at the endpoint.
    #[error("cannot reach {endpoint}: {detail}. Check that the server is running and that --endpoint is its base URL (http://HOST:PORT).")]
    Unreachable {
        /// Base URL tried.
        endpoint: String,
        /// Transport error.
        detail: String,
    },
    /// The API key was refused.
    #[error("{flag} was refused by POST /auth/token ({status}: {body}). Pass an API key the server knows (its --dev line prints one).")]
    BadApiKey {
        /// Which flag.
        flag: &'static str,
        /// HTTP status.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// The server answered set-up requests wrongly, so no case can run.
    #[error("set-up request {what} failed: {detail}. The runner needs POST /auth/token and POST /rooms to work before any case can run; fix them first.")]
    Setup {
        /// The request.
        what: String,
        /// What went wrong.
        detail: String,
    },
    /// The embedded reference server could not start.
    #[error("embedded reference server failed to start: {0}")]
    Embedded(String),
    /// Writing reports failed.
    #[error("writing reports: {0}")]
    Io(String),
}

/// Run-wide state shared by every case.
#[derive(Debug)]
pub struct Env {
    /// The target.
    pub target: Target,
    /// HTTP client (rustls, no proxy).
    pub http: reqwest::Client,
    /// Unique prefix of every user, room and key this run creates.
    pub run_id: String,
    /// Multiplier for every deadline.
    pub scale: f64,
    /// Seed for randomised groups.
    pub seed: u64,
    /// Number of schedules of the property group.
    pub schedules: u32,
    /// First tenant id (from the token claims).
    pub tenant: String,
    /// Second tenant id, when `api_key2` is set.
    pub tenant2: Option<String>,
    /// Deviations of the set-up routes (`POST /auth/token`, `POST /rooms`) seen by the
    /// preflight, as (clause, what): worked around, and judged by the cases citing them.
    pub setup_deviations: Vec<(String, String)>,
    /// How to restart the server under test (`--restart-cmd`, or the embedded server); the
    /// durability group is skipped without one.
    pub restart: Option<Restarter>,
    /// What the profile probes found, set by the runner before any case runs.
    pub probes: std::sync::OnceLock<std::collections::BTreeMap<String, crate::profile::Probe>>,
    counter: AtomicU64,
}

/// The future a restart returns.
pub type RestartFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Restarts the server under test and returns once it answers again.
#[derive(Clone)]
pub struct Restarter {
    /// What restarts it, for reports.
    pub describe: String,
    run: std::sync::Arc<dyn Fn() -> RestartFuture + Send + Sync>,
}

impl std::fmt::Debug for Restarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restarter")
            .field("describe", &self.describe)
            .finish()
    }
}

impl Restarter {
    /// A restarter from a function.
    pub fn new(
        describe: impl Into<String>,
        run: impl Fn() -> RestartFuture + Send + Sync + 'static,
    ) -> Restarter {
        Restarter {
            describe: describe.into(),
            run: std::sync::Arc::new(run),
        }
    }

    /// Run `sh -c CMD` (it must exit 0), then wait until `GET /health` answers 200.
    pub fn command(cmd: &str, endpoint: &str, scale: f64) -> Restarter {
        let cmd = cmd.to_string();
        let endpoint = endpoint.trim_end_matches('/').to_string();
        Restarter::new(format!("--restart-cmd {cmd:?}"), move || {
            let cmd = cmd.clone();
            let endpoint = endpoint.clone();
            Box::pin(async move {
                let limit = BASE_WAIT.mul_f64(12.0 * scale);
                let out = tokio::time::timeout(
                    limit,
                    tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(&cmd)
                        .stdin(std::process::Stdio::null())
                        .output(),
                )
                .await
                .map_err(|_| format!("the restart command did not finish within {limit:?}"))?
                .map_err(|e| format!("cannot run the restart command: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "the restart command failed ({}): {}",
                        out.status,
                        short(&String::from_utf8_lossy(&out.stderr))
                    ));
                }
                wait_healthy(&endpoint, limit).await
            })
        })
    }

    /// Restart now.
    pub async fn restart(&self) -> Result<(), String> {
        (self.run)().await
    }
}

/// Poll `GET /health` until it answers 200 or `limit` passes.
async fn wait_healthy(endpoint: &str, limit: Duration) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::from("no answer");
    while tokio::time::Instant::now() < deadline {
        match http.get(format!("{endpoint}/health")).send().await {
            Ok(r) if r.status().as_u16() == 200 => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = error_chain(&e),
        }
        // Polling a server that is starting up: nothing to await but its port.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "GET /health did not answer 200 within {limit:?} after the restart ({last})"
    ))
}

/// Base deadline for one awaited condition, before scaling.
pub const BASE_WAIT: Duration = Duration::from_secs(5);

fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &s[..cut])
    } else {
        s.to_string()
    }
}

impl Env {
    /// Check the target is reachable and the keys work, then build the run environment.
    pub async fn prepare(
        target: Target,
        scale: f64,
        seed: u64,
        schedules: u32,
    ) -> Result<Env, RunError> {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        let endpoint = target.endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(RunError::Config(format!(
                "--endpoint must start with http:// or https://, got {endpoint:?}"
            )));
        }
        let target = Target { endpoint, ..target };
        let http = reqwest::Client::builder()
            .timeout(BASE_WAIT.mul_f64(2.0 * scale))
            .connect_timeout(BASE_WAIT.mul_f64(scale))
            .no_proxy()
            .build()
            .map_err(|e| RunError::Config(format!("HTTP client: {e}")))?;
        let run_id = make_run_id(seed);
        // 1. Reachability.
        let health = format!("{}/health", target.endpoint);
        if let Err(e) = http.get(&health).send().await {
            if e.is_connect() || e.is_timeout() || e.is_request() {
                return Err(RunError::Unreachable {
                    endpoint: target.endpoint.clone(),
                    detail: error_chain(&e),
                });
            }
        }
        // 2. Tokens for each key.
        let tenant = mint_probe(
            &http,
            &target.endpoint,
            &target.api_key,
            "--api-key",
            &run_id,
        )
        .await?;
        let tenant2 = match &target.api_key2 {
            Some(k) => Some(
                mint_probe(&http, &target.endpoint, k, "--api-key-2", &run_id)
                    .await?
                    .0,
            ),
            None => None,
        };
        // 3. Rooms can be created (200 or 201, `type` always sent; deviations are judged by
        // the cases that cite FX-TEN-4, not here).
        let (tenant, token, mut setup_deviations) = tenant;
        let room_id = format!("{run_id}-probe");
        let body = CreateRoomRequest {
            id: Some(room_id.clone()),
            name: "conformance probe".into(),
            room_type: Some(fluxy_protocol::common::RoomType::Group),
            members: vec![],
        };
        let res = http
            .post(format!("{}/rooms", target.endpoint))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .map_err(|e| RunError::Setup {
                what: "POST /rooms".into(),
                detail: if e.is_timeout() {
                    format!("timed out after {:?}", BASE_WAIT.mul_f64(2.0 * scale))
                } else {
                    error_chain(&e)
                },
            })?;
        let status = res.status().as_u16();
        let text = res.text().await.map_err(|e| RunError::Setup {
            what: "POST /rooms".into(),
            detail: if e.is_timeout() {
                "timed out reading the body".into()
            } else {
                error_chain(&e)
            },
        })?;
        match read_room_response(status, &text, Some(&room_id)) {
            Ok((_, dev)) => setup_deviations.extend(
                dev.into_iter()
                    .map(|d| ("FX-TEN-4".to_string(), format!("POST /rooms: {d}"))),
            ),
            Err(detail) => {
                return Err(RunError::Setup {
                    what: "POST /rooms".into(),
                    detail,
                })
            }
        }
        Ok(Env {
            target,
            http,
            run_id,
            scale,
            seed,
            schedules,
            tenant,
            tenant2,
            setup_deviations,
            restart: None,
            probes: std::sync::OnceLock::new(),
            counter: AtomicU64::new(0),
        })
    }

    /// A number unique within this run.
    pub fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A deadline of `d` scaled by `--timeout-scale`.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale)
    }

    /// WebSocket base URL (`ws://HOST:PORT`).
    pub fn ws_base(&self) -> String {
        if let Some(rest) = self.target.endpoint.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.target.endpoint.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.target.endpoint.clone()
        }
    }
}

/// Render a reqwest error with its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn make_run_id(seed: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = now ^ seed.rotate_left(17) ^ u64::from(std::process::id());
    let mut out = String::from("c");
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    for _ in 0..7 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(ALPHA[(x % ALPHA.len() as u64) as usize] as char);
    }
    out
}

async fn mint_probe(
    http: &reqwest::Client,
    endpoint: &str,
    key: &str,
    flag: &'static str,
    run_id: &str,
) -> Result<(String, String, Vec<(String, String)>), RunError> {
    let what = format!("POST /auth/token (with {flag})");
    let res = http
        .post(format!("{endpoint}/auth/token"))
        .header("X-Fluxy-Api-Key", key)
        .json(&TokenRequest {
            user_id: format!("{run_id}-probe"),
            roles: vec![],
            ttl_seconds: None,
        })
        .send()
        .await
        .map_err(|e| RunError::Setup {
            what: what.clone(),
            detail: if e.is_timeout() {
                "timed out".into()
            } else {
                error_chain(&e)
            },
        })?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(|e| RunError::Setup {
        what: what.clone(),
        detail: error_chain(&e),
    })?;
    if status == 401 || status == 403 {
        return Err(RunError::BadApiKey {
            flag,
            status,
            body: short(&text),
        });
    }
    let (info, dev) =
        read_token_response(status, &text).map_err(|detail| RunError::Setup { what, detail })?;
    let dev = dev
        .into_iter()
        .map(|d| ("FX-AUTH-1".to_string(), format!("POST /auth/token: {d}")))
        .collect();
    Ok((info.tid, info.token, dev))
}

/// What a `POST /auth/token` answer yielded, read leniently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The bearer token.
    pub token: String,
    /// User id (`claims.sub`, else the JWT's `sub`).
    pub sub: String,
    /// Tenant id (`claims.tid`, else the JWT's `tid`).
    pub tid: String,
    /// Granted roles (`claims.roles`, else the JWT's `roles`, else `["member"]`).
    pub roles: Vec<String>,
}

/// The JSON payload of a JWT, if it has one.
pub fn jwt_payload(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Read a `POST /auth/token` answer as a client that needs only the token would: take the
/// token string, and the claims from the JWT when the body lacks them. Returns what is usable
/// and every deviation from the `TokenResponse` shape of FX-AUTH-1 at once (empty when the
/// body is exact), or why no token can be had.
pub fn read_token_response(status: u16, text: &str) -> Result<(TokenInfo, Vec<String>), String> {
    use serde_json::Value;
    if status != 200 && status != 201 {
        return Err(format!("HTTP {status} {}", short(text)));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("body is not JSON ({e}): {}", short(text)))?;
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("no `token` string in the body: {}", short(text)))?
        .to_string();
    let mut dev = Vec::new();
    if serde_json::from_str::<TokenResponse>(text).is_err() {
        if !v.get("expiresIn").is_some_and(Value::is_u64) {
            dev.push("`expiresIn` missing or not an integer".to_string());
        }
        if v.get("expiresAt")
            .and_then(Value::as_str)
            .and_then(fluxy_protocol::common::parse_timestamp)
            .is_none()
        {
            dev.push("`expiresAt` missing or not a timestamp".to_string());
        }
        match v.get("claims") {
            Some(Value::Object(c)) => {
                for f in ["sub", "tid"] {
                    if !c.get(f).is_some_and(Value::is_string) {
                        dev.push(format!("`claims.{f}` missing or not a string"));
                    }
                }
                if !c.get("roles").is_some_and(Value::is_array) {
                    dev.push("`claims.roles` missing or not an array".to_string());
                }
            }
            _ => dev.push("`claims` missing or not an object".to_string()),
        }
        if dev.is_empty() {
            dev.push(format!("body is not a TokenResponse: {}", short(text)));
        }
    }
    let jwt = jwt_payload(&token).unwrap_or(Value::Null);
    let pick = |f: &str| -> Option<Value> {
        v.pointer(&format!("/claims/{f}"))
            .filter(|x| !x.is_null())
            .or_else(|| jwt.get(f))
            .cloned()
    };
    let sub = pick("sub")
        .and_then(|x| x.as_str().map(str::to_owned))
        .unwrap_or_default();
    let tid = pick("tid")
        .and_then(|x| x.as_str().map(str::to_owned))
        .unwrap_or_default();
    let roles = pick("roles")
        .and_then(|x| serde_json::from_value::<Vec<String>>(x).ok())
        .unwrap_or_else(|| vec!["member".to_string()]);
    Ok((
        TokenInfo {
            token,
            sub,
            tid,
            roles,
        },
        dev,
    ))
}

/// Read a `POST /rooms` answer leniently: 200 or 201 with the room id at `room.id` (or `id`,
/// or the id asked for). Returns the id and every deviation from FX-TEN-4 (201 with a
/// `RoomResponse`), or why the room was not created.
pub fn read_room_response(
    status: u16,
    text: &str,
    asked: Option<&str>,
) -> Result<(String, Vec<String>), String> {
    use serde_json::Value;
    if status != 200 && status != 201 {
        return Err(format!("HTTP {status} {}", short(text)));
    }
    let mut dev = Vec::new();
    if status != 201 {
        dev.push(format!("HTTP {status}, not 201"));
    }
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if serde_json::from_str::<fluxy_protocol::http::RoomResponse>(text).is_err() {
        dev.push(format!("body is not a RoomResponse: {}", short(text)));
    }
    let id = v
        .pointer("/room/id")
        .or_else(|| v.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| asked.map(str::to_owned))
        .ok_or_else(|| format!("no room id in the body: {}", short(text)))?;
    Ok((id, dev))
}
