//! Per-case transcript of every frame and HTTP exchange, with time since case start.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Direction of one transcript entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    /// Sent by the runner.
    Sent,
    /// Received from the server.
    Received,
    /// A note by the runner (connect, close, proxy action).
    Note,
}

impl Dir {
    /// Arrow used in text output.
    pub fn arrow(self) -> &'static str {
        match self {
            Dir::Sent => "->",
            Dir::Received => "<-",
            Dir::Note => "--",
        }
    }
}

/// One line of a transcript.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Milliseconds since the case started.
    pub at_ms: u64,
    /// Connection label (`ws:alice#1`, `http`, `sse:bob#2`, `proxy`).
    pub conn: String,
    /// Direction.
    pub dir: Dir,
    /// Frame text (truncated when huge).
    pub text: String,
}

/// Largest frame text kept verbatim in a transcript.
const MAX_TEXT: usize = 4096;

/// A deviation from a clause that a shared helper saw and worked around (a `welcome` missing,
/// a token response of the wrong shape). It fails the case only when the case cites the clause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The clause deviated from.
    pub clause: String,
    /// What the spec requires.
    pub expected: String,
    /// What the server did.
    pub observed: String,
}

/// A shared, append-only transcript.
#[derive(Debug, Clone)]
pub struct Transcript {
    start: Instant,
    entries: Arc<Mutex<Vec<Entry>>>,
    observations: Arc<Mutex<Vec<Observation>>>,
}

impl Default for Transcript {
    fn default() -> Self {
        Transcript::new()
    }
}

impl Transcript {
    /// A new transcript whose clock starts now.
    pub fn new() -> Transcript {
        Transcript {
            start: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
            observations: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Milliseconds since the transcript started.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Append one entry.
    pub fn push(&self, conn: &str, dir: Dir, text: &str) {
        let text = if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}… ({} bytes)", &text[..cut], text.len())
        } else {
            text.to_string()
        };
        let e = Entry {
            at_ms: self.elapsed_ms(),
            conn: conn.to_string(),
            dir,
            text,
        };
        if let Ok(mut v) = self.entries.lock() {
            v.push(e);
        }
    }

    /// Record a deviation from `clause` that a helper worked around (also noted in the
    /// transcript). Repeats of the same clause and expectation are kept once.
    pub fn observe(&self, clause: &str, expected: &str, observed: &str) {
        self.push(
            "runner",
            Dir::Note,
            &format!("observed {clause} deviation: expected {expected}; observed {observed}"),
        );
        if let Ok(mut v) = self.observations.lock() {
            if !v
                .iter()
                .any(|o| o.clause == clause && o.expected == expected)
            {
                v.push(Observation {
                    clause: clause.to_string(),
                    expected: expected.to_string(),
                    observed: observed.to_string(),
                });
            }
        }
    }

    /// Every deviation observed so far.
    pub fn observations(&self) -> Vec<Observation> {
        self.observations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// A copy of every entry so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().map(|v| v.clone()).unwrap_or_default()
    }
}
