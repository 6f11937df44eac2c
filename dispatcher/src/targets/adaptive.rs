//! A target's adaptive concurrency limit at run time: [`sluice_policies::AdaptiveLimit`] decides,
//! this module makes the target's semaphore hold that many permits.
//!
//! - A raised limit adds permits at once; a lowered limit forgets idle permits at once and the
//!   rest as the calls holding them end (a call in flight is never interrupted), so the calls in
//!   flight fall to the new limit as soon as enough of them finish.
//! - The limit is `sluice_target_concurrency_limit{target}`; each change is logged at debug.
//! - Only calls that record an outcome move the limit; a slot dropped unused just returns.

use sluice_policies::{AdaptiveLimit, AdaptiveSettings, Outcome, Signal};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub struct AdaptiveConcurrency {
    target: String,
    limit: Mutex<AdaptiveLimit>,
    epoch: Instant,
    semaphore: Arc<Semaphore>,
    in_flight: AtomicUsize,
    /// Permits to forget as they come back, after a decrease found them in use.
    debt: AtomicUsize,
    /// The limit the permits were last made to add up to (idle + in use - owed). Kept rather
    /// than counted from the semaphore, which moves under concurrent acquires and releases.
    applied: AtomicUsize,
}

impl AdaptiveConcurrency {
    pub fn new(target: &str, settings: AdaptiveSettings) -> Arc<Self> {
        let epoch = Instant::now();
        let limit = AdaptiveLimit::new(settings, Duration::ZERO);
        let initial = limit.limit();
        metrics::gauge!("sluice_target_concurrency_limit", "target" => target.to_owned())
            .set(initial as f64);
        Arc::new(Self {
            target: target.to_owned(),
            limit: Mutex::new(limit),
            epoch,
            semaphore: Arc::new(Semaphore::new(initial)),
            in_flight: AtomicUsize::new(0),
            debt: AtomicUsize::new(0),
            applied: AtomicUsize::new(initial),
        })
    }

    pub fn semaphore(&self) -> Arc<Semaphore> {
        self.semaphore.clone()
    }

    pub fn limit(&self) -> usize {
        self.limit.lock().expect("limit lock").limit()
    }

    /// A call took a permit and starts now.
    pub fn started(&self) {
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.limit.lock().expect("limit lock").started(in_flight);
    }

    /// A call ended after `latency` with `outcome`.
    pub fn ended(&self, latency: Duration, outcome: &Outcome) {
        let mut limit = self.limit.lock().expect("limit lock");
        let changed = limit.ended(latency, Signal::of(outcome), self.epoch.elapsed());
        if let Some(new) = changed {
            // Under the lock: resizes happen one at a time, in the order the limit moved.
            self.resize(new);
        }
    }

    /// A slot's permit comes back: forgotten while a decrease is still owed, else released.
    pub fn release(&self, permit: OwnedSemaphorePermit) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let owed = self
            .debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |debt| {
                debt.checked_sub(1)
            })
            .is_ok();
        if owed {
            permit.forget();
        } else {
            drop(permit);
        }
    }

    /// Makes the semaphore's permits (idle, in use and owed) add up to `new`.
    fn resize(&self, new: usize) {
        let mut current = self.applied.swap(new, Ordering::SeqCst);
        metrics::gauge!("sluice_target_concurrency_limit", "target" => self.target.clone())
            .set(new as f64);
        tracing::debug!(target_name = %self.target, from = current, to = new, "adaptive concurrency limit changed");
        while current < new {
            // Pay back what a decrease still owes before adding permits.
            if self
                .debt
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |debt| {
                    debt.checked_sub(1)
                })
                .is_err()
            {
                self.semaphore.add_permits(1);
            }
            current += 1;
        }
        if current > new {
            let excess = current - new;
            let forgotten = self.semaphore.forget_permits(excess);
            self.debt.fetch_add(excess - forgotten, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overloaded() -> Outcome {
        Outcome::Throttled {
            message: "slow down".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_limit_waits_for_calls_in_flight_and_a_higher_one_pays_back_first() {
        let adaptive = AdaptiveConcurrency::new("api", AdaptiveSettings::new(1, 20));
        adaptive.resize(10);
        assert_eq!(adaptive.semaphore.available_permits(), 10);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(adaptive.semaphore.clone().try_acquire_owned().unwrap());
            adaptive.started();
        }
        adaptive.resize(4);
        assert_eq!(
            adaptive.semaphore.available_permits(),
            0,
            "idle permits forgotten"
        );
        assert_eq!(
            adaptive.debt.load(Ordering::SeqCst),
            4,
            "four more as calls end"
        );
        for permit in held.drain(..5) {
            adaptive.release(permit);
        }
        assert_eq!(adaptive.semaphore.available_permits(), 1);
        adaptive.resize(6);
        assert_eq!(adaptive.semaphore.available_permits(), 3);
        assert_eq!(adaptive.applied.load(Ordering::SeqCst), 6);
        for permit in held.drain(..) {
            adaptive.release(permit);
        }
        assert_eq!(adaptive.semaphore.available_permits(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn the_permits_follow_the_limit_up_under_use_and_down_under_overload() {
        let adaptive = AdaptiveConcurrency::new("api", AdaptiveSettings::new(2, 50));
        let call = |outcome: Outcome| {
            let adaptive = adaptive.clone();
            async move {
                let limit = adaptive.limit();
                let mut permits = Vec::new();
                for _ in 0..limit {
                    permits.push(adaptive.semaphore.clone().acquire_owned().await.unwrap());
                    adaptive.started();
                }
                tokio::time::advance(Duration::from_millis(60)).await;
                for permit in permits {
                    adaptive.ended(Duration::from_millis(60), &outcome);
                    adaptive.release(permit);
                }
            }
        };
        // One more per window (a round trip) while every permit is used.
        for _ in 0..40 {
            call(Outcome::Returned { response: None }).await;
        }
        let raised = adaptive.limit();
        assert!(raised > 25, "{raised}");
        assert_eq!(adaptive.semaphore.available_permits(), raised);
        for _ in 0..5 {
            call(overloaded()).await;
        }
        let lowered = adaptive.limit();
        assert!(lowered < raised, "{lowered} after {raised}");
        assert_eq!(adaptive.semaphore.available_permits(), lowered);
    }
}
