//! A target's circuit breaker at run time: the decisions of [`sluice_policies::Breaker`], shared
//! by every mapping and function that calls the target.
//!
//! - Every caller waits while the breaker is open (a caller holding a target slot asks
//!   [`CircuitBreaker::try_admit`] and gives the slot back before it waits) (SQS pollers wait
//!   before they receive, so receive counts stop growing; stream lanes and Kafka partitions wait
//!   with their records, and a partition is paused at the broker once its buffer fills). After
//!   the wait exactly one caller becomes the probe; the rest wait for its verdict.
//! - A [`Probe`] dropped without a recorded outcome (its call was cancelled) hands the probe to
//!   the next caller, so a cancelled call never leaves the breaker half-open forever.
//! - State changes are logged, counted in `sluice_target_circuit_transitions_total{target, to}`,
//!   shown in `sluice_target_circuit_open{target}` (1 while open or half-open) and on `/readyz`
//!   under `targets` — without making `/readyz` fail: an open breaker is sluice protecting its
//!   records, and a failing health check would make ECS replace a task that is working as meant.

use crate::health::Health;
use sluice_policies::{Admission, Breaker, BreakerSettings, BreakerState, Outcome, Transition};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub struct CircuitBreaker {
    target: String,
    breaker: Mutex<Breaker>,
    epoch: Instant,
    /// Bumped on every change of state; waiters subscribe before they read the state, so no
    /// change between the read and the wait is missed.
    changes: watch::Sender<u64>,
    health: Option<Health>,
}

/// What [`CircuitBreaker::try_admit`] answers.
pub enum Admitted {
    Call,
    /// This call is the probe.
    Probe(Probe),
    /// Wait ([`CircuitBreaker::callable`]) and ask again.
    Wait,
}

/// The right to probe the target once; give it to [`CircuitBreaker::record`] with the outcome.
pub struct Probe {
    breaker: Arc<CircuitBreaker>,
    recorded: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.lock().probe_abandoned();
            self.breaker.changed();
        }
    }
}

impl CircuitBreaker {
    pub fn new(target: &str, settings: BreakerSettings, health: Option<Health>) -> Arc<Self> {
        metrics::gauge!("sluice_target_circuit_open", "target" => target.to_owned()).set(0.0);
        Arc::new(Self {
            target: target.to_owned(),
            breaker: Mutex::new(Breaker::new(settings)),
            epoch: Instant::now(),
            changes: watch::Sender::new(0),
            health,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock")
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Whether a call may start now, without waiting.
    pub fn try_admit(self: &Arc<Self>) -> Admitted {
        let admission = self.lock().admit(self.now());
        match admission {
            Admission::Call => Admitted::Call,
            Admission::Probe => {
                tracing::info!(target_name = %self.target, "circuit half-open: probing the target with one call");
                Admitted::Probe(Probe {
                    breaker: self.clone(),
                    recorded: false,
                })
            }
            Admission::WaitUntil(_) | Admission::WaitForProbe => Admitted::Wait,
        }
    }

    /// Waits until a call could start (closed, or a probe could go), without becoming the probe.
    pub async fn callable(&self) {
        loop {
            let mut changes = self.changes.subscribe();
            let admission = self.lock().peek(self.now());
            match admission {
                Admission::Call | Admission::Probe => return,
                Admission::WaitUntil(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(self.epoch + until) => {}
                        _ = changes.changed() => {}
                    }
                }
                Admission::WaitForProbe => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// Whether a call would have to wait now.
    pub fn would_wait(&self) -> bool {
        self.lock().would_wait(self.now())
    }

    /// Why calls are held back now, while the breaker is not closed.
    pub fn open_reason(&self) -> Option<String> {
        let breaker = self.lock();
        match breaker.state() {
            BreakerState::Closed => None,
            state => Some(format!(
                "the circuit breaker of target {} is {}: {}",
                self.target,
                state.as_str().replace('_', "-"),
                breaker.reason().unwrap_or("")
            )),
        }
    }

    /// Records how a call ended; `probe` is the call's probe right, if it was the probe.
    pub fn record(&self, outcome: &Outcome, probe: Option<Probe>) {
        let is_probe = probe.is_some();
        let transition = self.lock().record(outcome, is_probe, self.now());
        if let Some(mut probe) = probe {
            probe.recorded = true;
        }
        let Some(transition) = transition else {
            return;
        };
        let target = self.target.clone();
        match &transition {
            Transition::Opened { until, reason } => {
                let retry_in = until.saturating_sub(self.now());
                tracing::warn!(target_name = %target, %reason, probe_in_ms = retry_in.as_millis() as u64, "circuit open: no calls to the target until a probe succeeds");
                metrics::counter!("sluice_target_circuit_transitions_total", "target" => target.clone(), "to" => "open").increment(1);
                metrics::gauge!("sluice_target_circuit_open", "target" => target.clone()).set(1.0);
                if let Some(health) = &self.health {
                    health.set_circuit(&target, Some(("open", reason.clone())));
                }
            }
            Transition::Closed => {
                tracing::info!(target_name = %target, "circuit closed: the probe succeeded; calls resume");
                metrics::counter!("sluice_target_circuit_transitions_total", "target" => target.clone(), "to" => "closed").increment(1);
                metrics::gauge!("sluice_target_circuit_open", "target" => target.clone()).set(0.0);
                if let Some(health) = &self.health {
                    health.set_circuit(&target, None);
                }
            }
        }
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `SharedTarget::permit_for` does around the slot: ask, and wait while told to.
    async fn admit(breaker: &Arc<CircuitBreaker>) -> Option<Probe> {
        loop {
            match breaker.try_admit() {
                Admitted::Call => return None,
                Admitted::Probe(probe) => return Some(probe),
                Admitted::Wait => breaker.callable().await,
            }
        }
    }

    fn unavailable() -> Outcome {
        Outcome::Unavailable {
            message: "connection refused".into(),
        }
    }

    fn breaker() -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            "api",
            BreakerSettings {
                consecutive_failures: 2,
                failure_ratio: None,
                open_for: Duration::from_secs(5),
                max_open_for: Duration::from_secs(60),
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn callers_wait_while_open_and_one_probe_decides_for_all() {
        let breaker = breaker();
        assert!(admit(&breaker).await.is_none());
        breaker.record(&unavailable(), None);
        breaker.record(&unavailable(), None);
        assert!(breaker.would_wait());
        let opened = Instant::now();
        let probe = admit(&breaker)
            .await
            .expect("the first caller after the wait probes");
        assert!(opened.elapsed() >= Duration::from_secs(5));
        let waiter = {
            let breaker = breaker.clone();
            tokio::spawn(async move { admit(&breaker).await.is_none() })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiter.is_finished(), "others wait for the probe's verdict");
        breaker.record(&Outcome::Returned { response: None }, Some(probe));
        assert!(
            waiter.await.unwrap(),
            "the probe's success lets them all call"
        );
        assert!(!breaker.would_wait());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_hands_the_probe_to_the_next_caller() {
        let breaker = breaker();
        breaker.record(&unavailable(), None);
        breaker.record(&unavailable(), None);
        let probe = admit(&breaker).await.expect("probe");
        let next = {
            let breaker = breaker.clone();
            tokio::spawn(async move { admit(&breaker).await.is_some() })
        };
        tokio::task::yield_now().await;
        drop(probe);
        assert!(next.await.unwrap(), "the next caller probes");
    }

    #[tokio::test(start_paused = true)]
    async fn callable_waits_out_the_open_time_without_taking_the_probe() {
        let breaker = breaker();
        breaker.record(&unavailable(), None);
        breaker.record(&unavailable(), None);
        let started = Instant::now();
        breaker.callable().await;
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert!(admit(&breaker).await.is_some(), "the probe is still free");
    }
}
