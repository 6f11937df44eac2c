//! A token bucket: at most `rate` records per second over time, with bursts of up to `burst`.
//!
//! - The bucket starts full and refills continuously at `rate` tokens per second, up to `burst`.
//! - A batch of `n` records may go once the bucket holds `min(n, burst)` tokens; it takes all `n`,
//!   so a batch larger than the burst leaves the bucket in debt and the next batch waits the debt
//!   off. Over any long stretch, no more than `rate × seconds + burst` records go.
//! - Times are [`Duration`]s on the caller's clock.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Duration,
}

impl TokenBucket {
    /// `rate` records per second (above 0), bursts of `burst` (at least 1).
    pub fn new(rate: f64, burst: u32, now: Duration) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                1.0
            },
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = self.updated.max(now);
    }

    /// Takes `n` tokens at `now`, or says how long to wait before asking again.
    pub fn take(&mut self, n: u32, now: Duration) -> Result<(), Duration> {
        self.refill(now);
        let needed = f64::from(n).min(self.burst);
        if self.tokens >= needed {
            self.tokens -= f64::from(n);
            Ok(())
        } else {
            Err(self.time_for(needed))
        }
    }

    /// How long until the bucket holds `tokens` (at least a millisecond, at most an hour: the
    /// caller asks again then).
    fn time_for(&self, tokens: f64) -> Duration {
        let seconds = ((tokens - self.tokens) / self.rate).clamp(0.001, 3_600.0);
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::from_secs(3_600))
    }

    /// Puts back `n` tokens taken for a call that did not happen.
    pub fn refund(&mut self, n: u32) {
        self.tokens = (self.tokens + f64::from(n)).min(self.burst);
    }

    /// `None` when a record could go at `now`; else how long until one can.
    pub fn until_available(&mut self, now: Duration) -> Option<Duration> {
        self.refill(now);
        (self.tokens < 1.0).then(|| self.time_for(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_to_the_rate() {
        let mut bucket = TokenBucket::new(10.0, 5, Duration::ZERO);
        for _ in 0..5 {
            assert!(bucket.take(1, Duration::ZERO).is_ok());
        }
        assert_eq!(bucket.take(1, Duration::ZERO), Err(ms(100)));
        assert!(bucket.take(1, ms(100)).is_ok());
    }

    #[test]
    fn a_refund_puts_tokens_back_and_availability_waits_out_a_debt() {
        let mut bucket = TokenBucket::new(10.0, 5, Duration::ZERO);
        assert!(bucket.take(5, Duration::ZERO).is_ok());
        bucket.refund(5);
        assert_eq!(bucket.until_available(Duration::ZERO), None);
        assert!(bucket.take(25, Duration::ZERO).is_ok());
        assert_eq!(bucket.until_available(Duration::ZERO), Some(ms(2100)));
        // A tiny rate waits at most an hour before asking again, never panics.
        let mut slow = TokenBucket::new(1e-20, 1, Duration::ZERO);
        assert!(slow.take(1, Duration::ZERO).is_ok());
        assert_eq!(
            slow.take(1, Duration::ZERO),
            Err(Duration::from_secs(3_600))
        );
    }

    #[test]
    fn a_batch_larger_than_the_burst_goes_when_the_bucket_is_full_and_leaves_a_debt() {
        let mut bucket = TokenBucket::new(10.0, 5, Duration::ZERO);
        assert!(bucket.take(20, Duration::ZERO).is_ok());
        // 15 tokens owed plus 1 needed: 1.6 s.
        assert_eq!(bucket.take(1, Duration::ZERO), Err(ms(1600)));
        assert!(bucket.take(1, ms(1600)).is_ok());
    }

    proptest! {
        /// However batches and times come, what goes never exceeds rate × elapsed + burst + the
        /// last batch beyond the burst.
        #[test]
        fn never_more_than_the_rate_allows(
            rate in 1u32..200,
            burst in 1u32..50,
            steps in proptest::collection::vec((1u32..30, 0u64..500), 1..300),
        ) {
            let mut bucket = TokenBucket::new(f64::from(rate), burst, Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut sent = 0u64;
            let mut largest = 0u32;
            for (n, advance) in steps {
                now += ms(advance);
                if bucket.take(n, now).is_ok() {
                    sent += u64::from(n);
                    largest = largest.max(n);
                }
                let allowed = f64::from(rate) * now.as_secs_f64()
                    + f64::from(burst)
                    + f64::from(largest.saturating_sub(burst));
                prop_assert!(sent as f64 <= allowed + 1e-6, "{sent} > {allowed}");
            }
        }
    }
}
