//! Exponential backoff, optionally with full jitter.
//!
//! The delay for retry `n` (1-based) is `initial * multiplier^(n-1)`, capped at `max`. With
//! jitter, the caller supplies a uniform random number in `[0, 1)` and the delay is that fraction
//! of the capped value (AWS's "full jitter"), never below one millisecond so that a retry is never
//! immediate by accident. Randomness comes in as an argument so the schedule stays testable.

use std::time::Duration;

/// Backoff parameters. Construct through [`Backoff::new`], which checks them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: bool,
}

/// Why a set of backoff parameters was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("initial must be greater than zero")]
    ZeroInitial,
    #[error("max ({max:?}) must not be less than initial ({initial:?})")]
    MaxBelowInitial { initial: Duration, max: Duration },
    #[error("multiplier must be a finite number >= 1.0 (got {0})")]
    BadMultiplier(f64),
}

impl Backoff {
    pub fn new(
        initial: Duration,
        max: Duration,
        multiplier: f64,
        jitter: bool,
    ) -> Result<Self, BackoffError> {
        if initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if max < initial {
            return Err(BackoffError::MaxBelowInitial { initial, max });
        }
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(BackoffError::BadMultiplier(multiplier));
        }
        Ok(Self {
            initial,
            max,
            multiplier,
            jitter,
        })
    }

    /// The delay before retry number `retry` (1 = the first retry). `unit_random` must lie in
    /// `[0, 1)`; it is only used when jitter is on.
    pub fn delay(&self, retry: u32, unit_random: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(1_000) as i32;
        let uncapped_secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped_secs = if uncapped_secs.is_finite() {
            uncapped_secs.min(self.max.as_secs_f64())
        } else {
            self.max.as_secs_f64()
        };
        let capped = Duration::from_secs_f64(capped_secs);
        if !self.jitter {
            return capped;
        }
        let fraction = unit_random.clamp(0.0, 1.0);
        Duration::from_secs_f64(capped_secs * fraction).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn delays_grow_by_the_multiplier_and_stop_at_max() {
        let backoff = Backoff::new(secs(1), secs(60), 2.0, false).unwrap();
        let delays: Vec<u64> = (1..=8).map(|n| backoff.delay(n, 0.5).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn retry_zero_is_treated_as_the_first_retry() {
        let backoff = Backoff::new(secs(3), secs(60), 2.0, false).unwrap();
        assert_eq!(backoff.delay(0, 0.0), secs(3));
    }

    #[test]
    fn huge_retry_numbers_saturate_at_max() {
        let backoff = Backoff::new(secs(1), secs(300), 10.0, false).unwrap();
        assert_eq!(backoff.delay(u32::MAX, 0.0), secs(300));
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert_eq!(
            Backoff::new(Duration::ZERO, secs(1), 2.0, false),
            Err(BackoffError::ZeroInitial)
        );
        assert!(matches!(
            Backoff::new(secs(2), secs(1), 2.0, false),
            Err(BackoffError::MaxBelowInitial { .. })
        ));
        assert!(matches!(
            Backoff::new(secs(1), secs(2), 0.5, false),
            Err(BackoffError::BadMultiplier(_))
        ));
        assert!(matches!(
            Backoff::new(secs(1), secs(2), f64::NAN, false),
            Err(BackoffError::BadMultiplier(_))
        ));
    }

    proptest! {
        #[test]
        fn jittered_delay_never_exceeds_the_unjittered_one(
            retry in 0u32..100, random in 0.0f64..1.0, multiplier in 1.0f64..5.0
        ) {
            let plain = Backoff::new(Duration::from_millis(10), secs(30), multiplier, false).unwrap();
            let jittered = Backoff::new(Duration::from_millis(10), secs(30), multiplier, true).unwrap();
            let cap = plain.delay(retry, random);
            let delay = jittered.delay(retry, random);
            prop_assert!(delay <= cap.max(Duration::from_millis(1)));
            prop_assert!(delay >= Duration::from_millis(1));
            prop_assert!(cap <= secs(30));
        }

        #[test]
        fn unjittered_delays_never_decrease(retry in 1u32..200, multiplier in 1.0f64..4.0) {
            let backoff = Backoff::new(Duration::from_millis(5), secs(600), multiplier, false).unwrap();
            prop_assert!(backoff.delay(retry + 1, 0.0) >= backoff.delay(retry, 0.0));
        }
    }
}
