//! Lambda's asynchronous invocation policy (S3 notifications, Invoke API `Event`; semantics.md
//! §5 and §12) as a decision per attempt.
//!
//! An event is invoked; [`AsyncPolicy::decide`] says what happens next. It guarantees:
//!
//! - a normal return is success (the response is not read for `batchItemFailures`);
//! - a function error or timeout uses an attempt: the event is retried after `delays[n]` (about
//!   one minute, then two) until `max_retry_attempts` (0..=2) retries are used up, then it goes to
//!   `on_failure` as `RetriesExhausted` with the number of invocations;
//! - a throttle or an unreachable target uses no attempt: it is retried with `throttle_backoff`
//!   (1 s doubling to 5 min by default);
//! - when the next try would land past `max_event_age` after the event was queued, it stops
//!   early with `EventAgeExceeded` and the real number of invocations (semantics.md §13.6); an event
//!   already too old is not invoked at all ([`AsyncPolicy::expired`]).

use crate::backoff::Backoff;
use crate::outcome::{ErrorInfo, Outcome};
use std::time::Duration;

/// Why an async event goes to its on-failure destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncCondition {
    RetriesExhausted,
    EventAgeExceeded,
}

impl AsyncCondition {
    pub fn as_str(&self) -> &'static str {
        match self {
            AsyncCondition::RetriesExhausted => "RetriesExhausted",
            AsyncCondition::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// The async policy of one mapping or function.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncPolicy {
    /// Retries after the first attempt: 0..=2.
    pub max_retry_attempts: u32,
    /// The delay before retry 1, 2, ...; the last one repeats.
    pub delays: Vec<Duration>,
    pub throttle_backoff: Backoff,
    pub max_event_age: Duration,
}

impl AsyncPolicy {
    /// Lambda's defaults: 2 retries, about 1 then 2 minutes apart, throttles backed off from 1 s to
    /// 5 min, events kept for 6 hours.
    pub fn lambda_defaults() -> Self {
        Self {
            max_retry_attempts: 2,
            delays: vec![Duration::from_secs(60), Duration::from_secs(120)],
            throttle_backoff: Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(300),
                2.0,
                true,
            )
            .expect("valid defaults"),
            max_event_age: Duration::from_secs(6 * 3600),
        }
    }
}

/// What is known about an event before this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncAttempt {
    /// When the event was queued, since the Unix epoch.
    pub queued_at: Duration,
    /// Invocations whose function ran and failed, before this one.
    pub failed_attempts: u32,
    /// Invocations the target refused or could not take, before this one.
    pub not_run: u32,
}

/// What happens after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AsyncDecision {
    /// The function returned: done (and to `on_success`, when there is one).
    Succeeded,
    /// Try again after `delay`; `failed_attempts` / `not_run` are the new counts.
    Retry {
        delay: Duration,
        failed_attempts: u32,
        not_run: u32,
        error: ErrorInfo,
    },
    /// Give up: to `on_failure`.
    DeadLetter {
        condition: AsyncCondition,
        /// Lambda's `approximateInvokeCount`.
        invoke_count: u32,
        error: ErrorInfo,
    },
}

impl AsyncPolicy {
    /// Whether an event is too old to be invoked at `now`.
    pub fn expired(&self, attempt: &AsyncAttempt, now: Duration) -> bool {
        now.saturating_sub(attempt.queued_at) > self.max_event_age
    }

    fn delay_for_retry(&self, retry: u32) -> Duration {
        let index = (retry.max(1) - 1) as usize;
        self.delays
            .get(index)
            .or(self.delays.last())
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Decides after an invocation that ended with `outcome` at `now`. `unit_random` in `[0, 1)`
    /// feeds the throttle backoff's jitter.
    pub fn decide(
        &self,
        attempt: &AsyncAttempt,
        outcome: &Outcome,
        now: Duration,
        unit_random: f64,
    ) -> AsyncDecision {
        let Some(error) = outcome.error() else {
            return AsyncDecision::Succeeded;
        };
        let deadline = attempt.queued_at + self.max_event_age;
        let (failed_attempts, not_run, delay) = if outcome.handler_did_not_run() {
            let not_run = attempt.not_run + 1;
            (
                attempt.failed_attempts,
                not_run,
                self.throttle_backoff.delay(not_run, unit_random),
            )
        } else {
            let failed = attempt.failed_attempts + 1;
            if failed > self.max_retry_attempts {
                return AsyncDecision::DeadLetter {
                    condition: AsyncCondition::RetriesExhausted,
                    invoke_count: failed,
                    error,
                };
            }
            (failed, attempt.not_run, self.delay_for_retry(failed))
        };
        if now + delay > deadline {
            return AsyncDecision::DeadLetter {
                condition: AsyncCondition::EventAgeExceeded,
                invoke_count: failed_attempts.max(1),
                error,
            };
        }
        AsyncDecision::Retry {
            delay,
            failed_attempts,
            not_run,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_000_000);

    fn failed() -> Outcome {
        Outcome::FunctionError(ErrorInfo::new("Boom", "failed"))
    }

    fn fresh() -> AsyncAttempt {
        AsyncAttempt {
            queued_at: T0,
            failed_attempts: 0,
            not_run: 0,
        }
    }

    /// Runs an always-failing event to its end; returns the delays and the final decision.
    fn run_to_end(policy: &AsyncPolicy, outcome: Outcome) -> (Vec<Duration>, AsyncDecision) {
        let mut attempt = fresh();
        let mut now = T0;
        let mut delays = Vec::new();
        loop {
            match policy.decide(&attempt, &outcome, now, 0.5) {
                AsyncDecision::Retry {
                    delay,
                    failed_attempts,
                    not_run,
                    ..
                } => {
                    delays.push(delay);
                    now += delay;
                    attempt.failed_attempts = failed_attempts;
                    attempt.not_run = not_run;
                }
                end => return (delays, end),
            }
        }
    }

    #[test]
    fn a_returning_function_succeeds_whatever_it_returns() {
        let policy = AsyncPolicy::lambda_defaults();
        for response in [
            None,
            Some(serde_json::json!({"batchItemFailures": [{"itemIdentifier": "x"}]})),
        ] {
            assert_eq!(
                policy.decide(&fresh(), &Outcome::Returned { response }, T0, 0.5),
                AsyncDecision::Succeeded
            );
        }
    }

    #[test]
    fn function_errors_are_retried_a_minute_then_two_minutes_later_then_dead_lettered() {
        // semantics.md §5: two retries, about 1 and 2 minutes apart.
        let (delays, end) = run_to_end(&AsyncPolicy::lambda_defaults(), failed());
        assert_eq!(
            delays,
            vec![Duration::from_secs(60), Duration::from_secs(120)]
        );
        let AsyncDecision::DeadLetter {
            condition,
            invoke_count,
            error,
        } = end
        else {
            panic!("{end:?}")
        };
        assert_eq!(condition, AsyncCondition::RetriesExhausted);
        assert_eq!(invoke_count, 3, "1 + max_retry_attempts invocations");
        assert_eq!(error.error_type, "Boom");
        for max in [0, 1] {
            let policy = AsyncPolicy {
                max_retry_attempts: max,
                ..AsyncPolicy::lambda_defaults()
            };
            let (delays, end) = run_to_end(&policy, failed());
            assert_eq!(delays.len() as u32, max);
            assert!(
                matches!(end, AsyncDecision::DeadLetter { invoke_count, .. } if invoke_count == max + 1)
            );
        }
    }

    #[test]
    fn throttles_use_no_attempt_and_back_off_until_the_event_is_too_old() {
        let policy = AsyncPolicy {
            max_event_age: Duration::from_secs(600),
            ..AsyncPolicy::lambda_defaults()
        };
        let throttled = Outcome::Throttled {
            message: "429".into(),
        };
        let (delays, end) = run_to_end(&policy, throttled);
        assert!(delays.len() >= 4, "{delays:?}");
        assert!(delays.windows(2).all(|d| d[1] >= d[0]), "{delays:?}");
        assert!(matches!(
            end,
            AsyncDecision::DeadLetter {
                condition: AsyncCondition::EventAgeExceeded,
                invoke_count: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_retry_that_would_land_past_the_event_age_stops_early_with_the_real_count() {
        // semantics.md §13.6 "Async": EventAgeExceeded with the real number of attempts.
        let policy = AsyncPolicy {
            max_event_age: Duration::from_secs(90),
            ..AsyncPolicy::lambda_defaults()
        };
        let (delays, end) = run_to_end(&policy, failed());
        assert_eq!(delays, vec![Duration::from_secs(60)]);
        assert!(matches!(
            end,
            AsyncDecision::DeadLetter {
                condition: AsyncCondition::EventAgeExceeded,
                invoke_count: 2,
                ..
            }
        ));
        assert!(policy.expired(&fresh(), T0 + Duration::from_secs(91)));
        assert!(!policy.expired(&fresh(), T0 + Duration::from_secs(90)));
    }
}
