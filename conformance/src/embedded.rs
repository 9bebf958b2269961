//! The embedded reference server (in process, in-memory database, dev tenants).

use crate::env::{RunError, Target};

/// Settings of an embedded server.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Deliberate faults to enable (see `fluxy_server::FAULTS`).
    pub faults: Vec<String>,
    /// Idle timeout, small so the heartbeat case is fast.
    pub idle_timeout_ms: u64,
    /// Resume window, small so the resync case is fast.
    pub resume_window: u32,
    /// Frame rate limit (`rateBurst`, `ratePerSecond`); `None` keeps the server's default.
    /// The spec's floor (20, 10; FX-LIM-9) shows the runner keeps within advertised limits.
    pub rate: Option<(u32, u32)>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            faults: vec![],
            idle_timeout_ms: 4000,
            resume_window: 200,
            rate: None,
        }
    }
}

/// A running embedded server.
pub struct Embedded {
    server: fluxy_server::RunningServer,
    /// How to reach it.
    pub target: Target,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("target", &self.target)
            .finish()
    }
}

impl Embedded {
    /// Start the reference server on 127.0.0.1 with an ephemeral port.
    pub async fn start(opts: &EmbeddedOptions) -> Result<Embedded, RunError> {
        let mut config = fluxy_server::ServerConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: None,
            dev: true,
            idle_timeout_ms: opts.idle_timeout_ms,
            resume_window: opts.resume_window,
            faults: opts.faults.clone(),
            ..fluxy_server::ServerConfig::default()
        };
        if let Some((burst, per_second)) = opts.rate {
            config.rate_burst = burst;
            config.rate_per_second = per_second;
        }
        let server = fluxy_server::start(config)
            .await
            .map_err(|e| RunError::Embedded(e.to_string()))?;
        let dev = server
            .dev
            .clone()
            .ok_or_else(|| RunError::Embedded("the server started without dev tenants".into()))?;
        let target = Target {
            endpoint: format!("http://{}", server.local_addr),
            api_key: dev.api_key,
            api_key2: Some(dev.api_key2),
            jwt_secret: Some(dev.jwt_secret),
            jwt_secret2: Some(dev.jwt_secret2),
        };
        Ok(Embedded { server, target })
    }

    /// Stop it.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
