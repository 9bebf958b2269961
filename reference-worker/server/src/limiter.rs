//! Token buckets for HTTP rate limiting (`[FX-LIM-7]`): one bucket per key (API key hash for
//! `POST /auth/token`, tenant and user for `POST /messages`).

use std::collections::HashMap;
use std::sync::Mutex;

/// Buckets idle for this long are full again and are dropped when the map is swept.
const SWEEP_EVERY: usize = 4096;

struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// A set of token buckets with one capacity and refill rate.
pub(crate) struct Limiter {
    burst: u32,
    per_second: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// `burst` 0 disables the limit.
    pub(crate) fn new(burst: u32, per_second: u32) -> Limiter {
        Limiter {
            burst,
            per_second: per_second.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key` at `now_ms`; `Err(retry_after_ms)` (at least 1) when empty.
    pub(crate) fn check(&self, key: &str, now_ms: u64) -> Result<(), u64> {
        if self.burst == 0 {
            return Ok(());
        }
        let burst = f64::from(self.burst);
        let rate = f64::from(self.per_second);
        let mut map = match self.buckets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if map.len() >= SWEEP_EVERY && !map.contains_key(key) {
            // Drop buckets that have refilled completely: they are equivalent to absent ones.
            let full_after_ms = (burst * 1000.0 / rate).ceil() as u64;
            map.retain(|_, b| now_ms.saturating_sub(b.last_ms) < full_after_ms);
        }
        let b = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.last_ms) as f64;
        b.tokens = (b.tokens + elapsed * rate / 1000.0).min(burst);
        b.last_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) * 1000.0 / rate).ceil() as u64;
            Err(wait.max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_over_burst_then_refills() {
        let l = Limiter::new(2, 10);
        assert!(l.check("k", 0).is_ok());
        assert!(l.check("k", 0).is_ok());
        let wait = l.check("k", 0).expect_err("third is over the burst");
        assert_eq!(wait, 100);
        assert!(l.check("other", 0).is_ok(), "keys are independent");
        assert!(l.check("k", 100).is_ok(), "refilled after retryAfterMs");
        assert!(Limiter::new(0, 1).check("k", 0).is_ok(), "burst 0 disables");
    }
}
