//! A target's rate limit at run time: one [`sluice_policies::TokenBucket`] shared by every
//! mapping and function that calls the target.
//!
//! - Calls wait for their records' tokens in arrival order (the bucket's lock is fair and held
//!   across the wait), so a batch of ten is not starved by a stream of single-record calls.
//! - The wait comes before a call takes its slot or asks the circuit breaker
//!   ([`super::SharedTarget::permit_for`]); a caller that gives up (a stop, a deadline) takes no
//!   tokens. Tokens of a call the breaker then holds back are given back.
//! - Waits are recorded in `sluice_target_rate_limit_wait_seconds{target}`.

use sluice_policies::TokenBucket;
use std::sync::Arc;
use tokio::sync::Mutex;
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

    /// Waits, in turn, until `records` more records may go, and takes their tokens.
    pub async fn acquire(&self, records: u32) {
        let started = Instant::now();
        let mut bucket = self.bucket.lock().await;
        while let Err(wait) = bucket.take(records, self.epoch.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        drop(bucket);
        let waited = started.elapsed();
        if !waited.is_zero() {
            metrics::histogram!("sluice_target_rate_limit_wait_seconds", "target" => self.target.clone())
                .record(waited.as_secs_f64());
        }
    }

    /// Gives back the tokens of a call that did not happen.
    pub fn refund(&self, records: u32) {
        // A waiter holding the lock only sleeps; a refund that finds it held is skipped rather
        // than waited for (it only lets later calls go a little sooner).
        if let Ok(mut bucket) = self.bucket.try_lock() {
            bucket.refund(records);
        }
    }

    /// Waits until at least one record could go (without taking it).
    pub async fn wait_until_available(&self) {
        loop {
            let wait = self
                .bucket
                .lock()
                .await
                .until_available(self.epoch.elapsed());
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Whether a record would have to wait now (callers are queued, or the bucket is empty).
    pub fn would_wait(&self) -> bool {
        match self.bucket.try_lock() {
            Ok(mut bucket) => bucket.until_available(self.epoch.elapsed()).is_some(),
            Err(_) => true,
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

    // Review of the rate limit: single-record callers must not starve a batch that needs more
    // tokens at once.
    #[tokio::test(start_paused = true)]
    async fn a_batch_is_not_starved_by_single_record_calls() {
        let limit = RateLimit::new("api", 10.0, 10);
        limit.acquire(10).await;
        let singles = {
            let limit = limit.clone();
            tokio::spawn(async move {
                loop {
                    limit.acquire(1).await;
                }
            })
        };
        tokio::task::yield_now().await;
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), limit.acquire(10))
            .await
            .expect("the batch gets its turn");
        assert!(started.elapsed() <= Duration::from_secs(2));
        singles.abort();
    }
}
