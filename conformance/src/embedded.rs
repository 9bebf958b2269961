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
    /// SQLite file (`None`: in memory). A file makes restarts observable (`dur/*`).
    pub db_path: Option<std::path::PathBuf>,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Unload idle rooms after this many ms (`None`: the server's default). A tiny value makes
    /// every case cross room unloads and reloads from storage.
    pub room_idle_unload_ms: Option<u64>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            faults: vec![],
            idle_timeout_ms: 4000,
            resume_window: 200,
            rate: None,
            db_path: None,
            port: 0,
            room_idle_unload_ms: None,
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
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], opts.port)),
            db_path: opts.db_path.clone(),
            dev: true,
            idle_timeout_ms: opts.idle_timeout_ms,
            resume_window: opts.resume_window,
            faults: opts.faults.clone(),
            ..fluxy_server::ServerConfig::default()
        };
        if let Some(ms) = opts.room_idle_unload_ms {
            config.room_idle_unload_ms = ms;
        }
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

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.server.local_addr.port()
    }
}

/// An embedded server that can be restarted on the same port and database file, so the
/// durability group (`dur/*`) can check what survives a restart.
pub struct Restartable {
    opts: EmbeddedOptions,
    current: tokio::sync::Mutex<Option<Embedded>>,
    /// How to reach it (unchanged by restarts: same port, same dev keys in the same file).
    pub target: Target,
}

impl std::fmt::Debug for Restartable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restartable")
            .field("target", &self.target)
            .finish()
    }
}

impl Restartable {
    /// Start with a fresh SQLite file under the system temp directory.
    pub async fn start(opts: &EmbeddedOptions) -> Result<Restartable, RunError> {
        let mut opts = opts.clone();
        if opts.db_path.is_none() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            opts.db_path = Some(std::env::temp_dir().join(format!(
                "fluxy-conformance-{}-{nanos}.db",
                std::process::id()
            )));
        }
        let e = Embedded::start(&opts).await?;
        opts.port = e.port();
        Ok(Restartable {
            target: e.target.clone(),
            opts,
            current: tokio::sync::Mutex::new(Some(e)),
        })
    }

    /// Stop the server (closing every connection) and start it again on the same state.
    pub async fn restart(&self) -> Result<(), String> {
        let mut cur = self.current.lock().await;
        if let Some(e) = cur.take() {
            e.shutdown().await;
        }
        let e = Embedded::start(&self.opts)
            .await
            .map_err(|e| e.to_string())?;
        *cur = Some(e);
        Ok(())
    }

    /// Stop it and delete its database file.
    pub async fn shutdown(&self) {
        if let Some(e) = self.current.lock().await.take() {
            e.shutdown().await;
        }
        if let Some(p) = &self.opts.db_path {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
        }
    }
}
