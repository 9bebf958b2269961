//! Configuration from `wrangler.toml` vars, read once per isolate.
//!
//! | var | meaning | default |
//! |---|---|---|
//! | `FLUXY_TENANTS` | JSON `[{"id","apiKey","jwtSecret"}]`: tenants seeded into D1 (keys stored hashed) | none |
//! | `FLUXY_IDLE_TIMEOUT_MS` | close 4000 after this long without a frame | 60000 |
//! | `FLUXY_RATE_BURST` / `FLUXY_RATE_PER_SECOND` | per-connection token bucket | 200 / 100 |
//! | `FLUXY_RESUME_WINDOW` | events `resume` can replay (at least 100) | 1000 |
//! | `FLUXY_FAULTS` | comma-separated deliberate faults (conformance self-test only) | none |
//! | `FLUXY_SSE_PING_MS` | SSE keep-alive comment period: a listener whose client went away is released within about 3 of them (see `room.rs`) | 3000 |
//! | `FLUXY_DEBUG` | `1`: serve `GET /rooms/{id}/debug/stats` (the room object's live counts, for tests) | off |

use std::cell::RefCell;
use std::rc::Rc;

use fluxy_room::Faults;
use serde::Deserialize;
use worker::Env;

/// One tenant to seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSeed {
    /// Tenant id.
    pub id: String,
    /// API key in clear (only its SHA-256 is stored).
    pub api_key: String,
    /// HS256 secret of the tenant's tokens.
    pub jwt_secret: String,
}

/// Effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tenants to seed.
    pub tenants: Vec<TenantSeed>,
    /// Idle timeout, ms.
    pub idle_timeout_ms: u64,
    /// Token-bucket capacity.
    pub rate_burst: u32,
    /// Token-bucket refill per second.
    pub rate_per_second: u32,
    /// Resume window in events.
    pub resume_window: u32,
    /// Enabled faults.
    pub faults: Faults,
    /// SSE keep-alive comment period, ms (at least 100). workerd notices a closed client only
    /// when a write to it fails, one hop at a time (client socket, then Worker → object), so
    /// this period bounds how long a gone listener lingers: about 3 periods.
    pub sse_ping_ms: u64,
    /// Serve the debug routes (`FLUXY_DEBUG=1`; tests only).
    pub debug: bool,
}

thread_local! {
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

fn num<T: std::str::FromStr>(env: &Env, name: &str, default: T) -> T {
    var(env, name)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// The configuration (parsed on first use in this isolate).
pub fn config(env: &Env) -> Rc<Config> {
    if let Some(c) = CONFIG.with(|c| c.borrow().clone()) {
        return c;
    }
    let tenants = var(env, "FLUXY_TENANTS")
        .and_then(|s| match serde_json::from_str::<Vec<TenantSeed>>(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                worker::console_error!("fluxy-worker: FLUXY_TENANTS is not valid: {e}");
                None
            }
        })
        .unwrap_or_default();
    let fault_names: Vec<String> = var(env, "FLUXY_FAULTS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let faults = Faults::from_names(&fault_names).unwrap_or_else(|e| {
        worker::console_error!("fluxy-worker: FLUXY_FAULTS: {e}; running without faults");
        Faults::NONE
    });
    let c = Rc::new(Config {
        tenants,
        idle_timeout_ms: num(env, "FLUXY_IDLE_TIMEOUT_MS", 60_000u64).max(1000),
        rate_burst: num(env, "FLUXY_RATE_BURST", 200u32).max(1),
        rate_per_second: num(env, "FLUXY_RATE_PER_SECOND", 100u32).max(1),
        // FX-RES-5: at least 100 events.
        resume_window: num(env, "FLUXY_RESUME_WINDOW", 1000u32).max(100),
        faults,
        sse_ping_ms: num(env, "FLUXY_SSE_PING_MS", 3_000u64).max(100),
        debug: matches!(
            var(env, "FLUXY_DEBUG").as_deref().map(str::trim),
            Some("1" | "true")
        ),
    });
    CONFIG.with(|slot| *slot.borrow_mut() = Some(c.clone()));
    c
}
