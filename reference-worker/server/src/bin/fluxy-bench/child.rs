//! `fluxy-server` as a separate child process (for the RSS measurement and real restarts),
//! and the file-descriptor limit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::BenchError;

/// The `--dev` line a server prints (fluxy-server and scripts/worker-dev print the same).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevLine {
    /// Base URL.
    pub endpoint: String,
    /// API key of the first tenant.
    pub api_key: String,
}

/// A `fluxy-server` child process.
pub struct ServerProc {
    child: Child,
    /// Its credentials.
    pub dev: DevLine,
    /// Process id (for `/proc/<pid>/status`).
    pub pid: u32,
}

/// How to start the server binary.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `fluxy-server` binary.
    pub bin: PathBuf,
    /// SQLite file.
    pub db: PathBuf,
    /// Extra flags.
    pub args: Vec<String>,
    /// Where the child's stderr goes.
    pub log: PathBuf,
}

impl ServerSpec {
    /// Start on `listen` (`127.0.0.1:0` for any port) and wait for its dev line.
    pub async fn spawn(&self, listen: &str) -> Result<ServerProc, BenchError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.bin)
            .arg("--listen")
            .arg(listen)
            .arg("--dev")
            .arg("--db")
            .arg(&self.db)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Spawn(self.bin.display().to_string(), e))?;
        let pid = child.id().ok_or(BenchError::ChildGone)?;
        let stdout = child.stdout.take().ok_or(BenchError::ChildGone)?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| BenchError::ChildGone)??
            .ok_or(BenchError::ChildGone)?;
        let dev: DevLine = serde_json::from_str(&line)?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProc { child, dev, pid })
    }
}

impl ServerProc {
    /// Resident set size of the process, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Result<u64, BenchError> {
        rss_kib(self.pid)
    }

    /// SIGTERM (graceful: closes every connection with 1001), then wait for the exit (10 s,
    /// then SIGKILL).
    pub async fn stop(mut self) -> Result<(), BenchError> {
        let pid = i32::try_from(self.pid).map_err(|_| BenchError::ChildGone)?;
        // SAFETY: kill(2) with a pid this process spawned and still owns (not yet reaped).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(BenchError::Parse("VmRSS"))
}

/// Raise RLIMIT_NOFILE's soft limit to `want` (at most the hard limit); returns the new soft
/// limit. Children inherit it.
pub fn raise_nofile(want: u64) -> Result<u64, BenchError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let target = (want as libc::rlim_t).min(lim.rlim_max);
        if target > lim.rlim_cur {
            lim.rlim_cur = target;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
    }
    Ok(lim.rlim_cur)
}
