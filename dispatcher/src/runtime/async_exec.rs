//! The one asynchronous-event executor, for S3 notifications and Invoke API `Event` calls: runs
//! one attempt of an event under [`AsyncPolicy`] and carries out what the policy decides against
//! the event's store ([`EventStore`]: reschedule it, or complete it with its destination record).
//! The S3 store is the notification's SQS message (a retry is a visibility change); the Invoke
//! API's is the durable local queue, or with `invoke_api.event_queue` an SQS message carrying the
//! event's progress (a retry is a copy sent with the delay).
//!
//! Guarantees:
//! - an event older than `max_event_age` is not invoked: it completes as `EventAgeExceeded`;
//! - every attempt goes through the one invoke path, and its outcome is counted
//!   (`sluice_invocation_outcomes_total`);
//! - a failure the function ran for is retried after the policy's delays (about 1, then 2
//!   minutes) up to `max_retry_attempts`; a call the target refused (throttled, unavailable) is
//!   retried with the throttle backoff and uses no attempt; a retry that would land past
//!   `max_event_age` completes as `EventAgeExceeded` at once instead (the lookahead);
//! - completion carries a typed condition ([`Completion`]) and the response or the last error.

use super::clock::now_since_epoch;
use super::invoker::Invoker;
use crate::targets::Invocation;
use async_trait::async_trait;
use serde_json::Value;
use sluice_policies::{
    AsyncAttempt, AsyncCondition, AsyncDecision, AsyncPolicy, ErrorInfo, Outcome,
};
use std::time::Duration;

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The function returned: to `on_success`, when there is one.
    Success,
    /// Given up: to `on_failure`.
    Failed(AsyncCondition),
}

impl Completion {
    /// The `requestContext.condition` of the destination record.
    pub fn as_str(&self) -> &'static str {
        match self {
            Completion::Success => "Success",
            Completion::Failed(condition) => condition.as_str(),
        }
    }
}

/// Where an event lives between attempts.
#[async_trait]
pub(crate) trait EventStore: Send {
    /// The event runs again after `delay`, with these counts.
    async fn reschedule(&mut self, delay: Duration, failed_attempts: u32, not_run: u32);

    /// The event is over: store its destination record (when there is a destination) and
    /// remove it. `response` is the function's (JSON) response, or the last error.
    async fn complete(
        &mut self,
        completion: Completion,
        invoke_count: u32,
        response: Result<Option<Value>, ErrorInfo>,
    );
}

/// Receives of S3 notification messages that the target refused (throttled, unavailable), per
/// message id: a notification's receive count counts attempts, and a refusal is not one. (The
/// Invoke API's event queue carries its counts in the message instead.) Kept in memory: after a
/// restart a refusal counts as an attempt, erring toward giving up sooner, never retrying more.
/// An entry goes when its message is deleted; one whose message never comes back (another
/// instance took it) stays until the process ends, one small entry per such message.
#[derive(Default)]
pub(crate) struct RefusedReceives(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl RefusedReceives {
    /// The attempt a message's receive is: its receive count, less the refusals.
    pub fn attempt(&self, message: &sluice_sources::Record) -> AsyncAttempt {
        let not_run = self
            .0
            .lock()
            .expect("refusals lock")
            .get(message.id())
            .copied()
            .unwrap_or(0);
        AsyncAttempt {
            queued_at: message.arrived_at,
            failed_attempts: message.attempt.saturating_sub(1).saturating_sub(not_run),
            not_run,
        }
    }

    /// The target refused this receive of the message.
    pub fn refused(&self, message: &sluice_sources::Record) {
        *self
            .0
            .lock()
            .expect("refusals lock")
            .entry(message.id().to_owned())
            .or_insert(0) += 1;
    }

    /// The message is gone (deleted).
    pub fn forget(&self, message: &sluice_sources::Record) {
        self.0.lock().expect("refusals lock").remove(message.id());
    }
}

/// One attempt of an event, as the policy sees it.
pub(crate) struct Attempt<'a> {
    pub invoker: &'a Invoker,
    pub policy: &'a AsyncPolicy,
    /// For logs: the event (a message id and key, a request id).
    pub subject: &'a str,
    pub attempt: AsyncAttempt,
    /// The call, for the mapping or function it names.
    pub invocation: Invocation,
}

/// Runs one attempt of an event and carries out the policy's decision on `store`.
pub(crate) async fn run<S: EventStore + ?Sized>(attempt: Attempt<'_>, store: &mut S) {
    let Attempt {
        invoker,
        policy,
        subject,
        attempt,
        invocation,
    } = attempt;
    let metrics = invoker.metrics();
    // The slot first: the wait for it (a full target, an open circuit breaker, a rate limit) can
    // be long, and an event that aged out meanwhile must not be run.
    let slot = invoker.target().permit_for(invocation.records).await;
    if policy.expired(&attempt, now_since_epoch()) {
        drop(slot);
        let error = ErrorInfo::new(
            "EventAgeExceeded",
            format!(
                "the event is older than max_event_age ({:?})",
                policy.max_event_age
            ),
        );
        store
            .complete(
                Completion::Failed(AsyncCondition::EventAgeExceeded),
                attempt.failed_attempts,
                Err(error),
            )
            .await;
        return;
    }
    let outcome = invoker.invoke_in(slot, invocation.clone()).await;
    let (label, failed) = match &outcome {
        Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. } => ("success", 0),
        failed => (failed.kind(), 1),
    };
    metrics.invoked(label, 1, failed);
    match policy.decide(&attempt, &outcome, now_since_epoch(), rand::random::<f64>()) {
        AsyncDecision::Succeeded => {
            let response = match outcome {
                Outcome::Returned { response } => response,
                _ => None,
            };
            store
                .complete(
                    Completion::Success,
                    attempt.failed_attempts + 1,
                    Ok(response),
                )
                .await;
        }
        AsyncDecision::Retry {
            delay,
            failed_attempts,
            not_run,
            error,
        } => {
            tracing::warn!(mapping = %invocation.mapping, event = %subject, request_id = %invocation.request_id, error_type = %error.error_type, error = %error.message, retry_in_ms = delay.as_millis() as u64, "event failed; retrying");
            metrics.records_retried.increment(1);
            store.reschedule(delay, failed_attempts, not_run).await;
        }
        AsyncDecision::DeadLetter {
            condition,
            invoke_count,
            error,
        } => {
            store
                .complete(Completion::Failed(condition), invoke_count, Err(error))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::SharedTarget;
    use crate::targets::testing::ScriptedTarget;
    use crate::telemetry::MappingMetrics;
    use sluice_policies::Backoff;
    use std::sync::Arc;

    /// An event kept in memory: rescheduling runs it again after the delay (on the paused
    /// clock), as both real stores do.
    #[derive(Default)]
    struct Log {
        attempt: Option<AsyncAttempt>,
        /// Each reschedule, with the time it was asked at.
        retries: Vec<(Duration, Duration)>,
        completed: Option<(Completion, u32, Result<Option<Value>, ErrorInfo>)>,
    }

    #[async_trait]
    impl EventStore for Log {
        async fn reschedule(&mut self, delay: Duration, failed_attempts: u32, not_run: u32) {
            let attempt = self.attempt.as_mut().unwrap();
            attempt.failed_attempts = failed_attempts;
            attempt.not_run = not_run;
            self.retries.push((now_since_epoch(), delay));
        }
        async fn complete(
            &mut self,
            completion: Completion,
            invoke_count: u32,
            response: Result<Option<Value>, ErrorInfo>,
        ) {
            self.completed = Some((completion, invoke_count, response));
        }
    }

    /// Lambda's defaults, without jitter (the schedule is asserted) and with `max_event_age`.
    fn policy(max_event_age: Duration) -> AsyncPolicy {
        AsyncPolicy {
            throttle_backoff: Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(300),
                2.0,
                false,
            )
            .unwrap(),
            max_event_age,
            ..AsyncPolicy::lambda_defaults()
        }
    }

    /// Runs the event until the store completes it, waiting out each delay.
    async fn drive(target: Arc<ScriptedTarget>, policy: &AsyncPolicy) -> Log {
        let invoker = Invoker::new(SharedTarget::new("t", target, 1), MappingMetrics::new("f"));
        let mut log = Log {
            attempt: Some(AsyncAttempt {
                queued_at: now_since_epoch(),
                failed_attempts: 0,
                not_run: 0,
            }),
            ..Log::default()
        };
        while log.completed.is_none() {
            let attempt = Attempt {
                invoker: &invoker,
                policy,
                subject: "request-1",
                attempt: log.attempt.unwrap(),
                invocation: Invocation::attempt_of("f", b"{}".to_vec(), "request-1", None),
            };
            let retries = log.retries.len();
            run(attempt, &mut log).await;
            if let Some((_, delay)) = log.retries.get(retries) {
                tokio::time::sleep(*delay).await;
            }
        }
        log
    }

    fn failed() -> Outcome {
        Outcome::FunctionError(ErrorInfo::new("Boom", "failed"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_event_is_retried_after_one_then_two_minutes_then_given_up() {
        let target = Arc::new(ScriptedTarget::answering(|_| failed()));
        let log = drive(target.clone(), &policy(Duration::from_secs(6 * 3600))).await;
        let delays: Vec<Duration> = log.retries.iter().map(|(_, delay)| *delay).collect();
        assert_eq!(delays, [Duration::from_secs(60), Duration::from_secs(120)]);
        assert_eq!(target.calls(), 3);
        let (completion, invoke_count, response) = log.completed.unwrap();
        assert_eq!(
            completion,
            Completion::Failed(AsyncCondition::RetriesExhausted)
        );
        assert_eq!(invoke_count, 3);
        assert_eq!(response.unwrap_err().error_type, "Boom");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_calls_back_off_without_using_attempts_then_success_completes() {
        let target = Arc::new(ScriptedTarget::default());
        target.push(Outcome::Throttled {
            message: "busy".into(),
        });
        target.push(Outcome::Throttled {
            message: "busy".into(),
        });
        target.push(failed());
        target.push(Outcome::Returned {
            response: Some(serde_json::json!({"ok": true})),
        });
        let log = drive(target.clone(), &policy(Duration::from_secs(6 * 3600))).await;
        let delays: Vec<Duration> = log.retries.iter().map(|(_, delay)| *delay).collect();
        // Throttle backoff 1 s, 2 s; then the first real failure waits a minute.
        assert_eq!(
            delays,
            [
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(60)
            ]
        );
        let (completion, invoke_count, response) = log.completed.unwrap();
        assert_eq!(completion, Completion::Success);
        assert_eq!(invoke_count, 2, "refused calls are not attempts");
        assert_eq!(response.unwrap(), Some(serde_json::json!({"ok": true})));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_would_land_past_max_event_age_gives_up_at_once() {
        // 90 s to live: the first retry (in 60 s) fits, the second (120 s later) would not.
        let target = Arc::new(ScriptedTarget::answering(|_| failed()));
        let log = drive(target.clone(), &policy(Duration::from_secs(90))).await;
        assert_eq!(log.retries.len(), 1);
        assert_eq!(target.calls(), 2);
        let (completion, invoke_count, _) = log.completed.unwrap();
        assert_eq!(
            completion,
            Completion::Failed(AsyncCondition::EventAgeExceeded)
        );
        assert_eq!(invoke_count, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_already_too_old_is_not_invoked() {
        let target = Arc::new(ScriptedTarget::default());
        let invoker = Invoker::new(
            SharedTarget::new("t", target.clone(), 1),
            MappingMetrics::new("f"),
        );
        let mut log = Log::default();
        let policy = policy(Duration::from_secs(60));
        run(
            Attempt {
                invoker: &invoker,
                policy: &policy,
                subject: "request-1",
                attempt: AsyncAttempt {
                    queued_at: now_since_epoch() - Duration::from_secs(61),
                    failed_attempts: 1,
                    not_run: 0,
                },
                invocation: Invocation::attempt_of("f", b"{}".to_vec(), "request-1", None),
            },
            &mut log,
        )
        .await;
        assert_eq!(target.calls(), 0);
        let (completion, invoke_count, _) = log.completed.unwrap();
        assert_eq!(
            completion,
            Completion::Failed(AsyncCondition::EventAgeExceeded)
        );
        assert_eq!(invoke_count, 1);
    }
}
