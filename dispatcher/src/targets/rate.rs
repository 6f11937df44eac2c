//! A target's rate limit at run time: one [`sluice_policies::TokenBucket`] shared by every
//! mapping and function that calls the target.
//!
//! - A call waits, holding its slot, until the bucket lets its batch's records go; the wait is
//!   recorded in `sluice_target_rate_limit_wait_seconds{target}`.
//! - Waiters are not served in order: under a steady overload a caller may wait longer than its
//!   share, never past the moment its records fit.

use sluice_policies::TokenBucket;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

pub struct RateLimit {
    target: String,
    bucket: Mutex<TokenBucket>,
    epoch: Instant,
}

impl RateLimit {
    pub fn new(target: &str, records_per_second: f64, burst: u32) -> Arc<Self> {
        Arc::new(Self {
            target: target.to_owned(),
            bucket: Mutex::new(TokenBucket::new(
                records_per_second,
                burst,
                std::time::Duration::ZERO,
            )),
            epoch: Instant::now(),
        })
    }

    /// Waits until `records` more records may go.
    pub async fn acquire(&self, records: u32) {
        let started = Instant::now();
        loop {
            let taken = self
                .bucket
                .lock()
                .expect("rate limit lock")
                .take(records, self.epoch.elapsed());
            match taken {
                Ok(()) => break,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
        let waited = started.elapsed();
        if !waited.is_zero() {
            metrics::histogram!("sluice_target_rate_limit_wait_seconds", "target" => self.target.clone())
                .record(waited.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn callers_share_one_bucket_and_wait_their_turn() {
        let limit = RateLimit::new("api", 10.0, 10);
        let started = Instant::now();
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move { limit.acquire(10).await })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        // 40 records at 10 per second with a burst of 10: the last goes after 3 s.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(3) && elapsed < Duration::from_millis(3_100),
            "{elapsed:?}"
        );
    }
}
