//! The one ordered-batch driver: runs one batch to its end under the stream policy
//! ([`StreamBatch`]: retries with backoff, bisect, partial batch responses, dead letters), for
//! every user of ordered batches — a DynamoDB shard lane, a Kafka partition lane, and
//! `sluice dlq replay`. The caller says what is particular to it through [`Driven`]: the event
//! for a set of records, what an invocation's result means for its logs, health and metrics,
//! where dead letters go, and what finishing a record means (a checkpoint; nothing for a replay).
//!
//! Guarantees:
//! - records are invoked in the order of the batch, through the one invoke path
//!   ([`super::invoker`]); the policy decides every retry, split and dead letter;
//! - a dead letter is handed to [`Driven::dead_letter`] and the batch goes on only once that
//!   returns (the lanes return once the destination confirmed it);
//! - [`Driven::progress`] is told after every step that may have finished records;
//! - a `stop` during a retry delay, or while the batch waits for a slot of the target (full,
//!   behind an open circuit breaker, or paced by its rate limit), ends the batch at once,
//!   unfinished ([`Ended::Stopped`]).

use super::clock::now_since_epoch;
use super::invoker::Invoker;
use crate::targets::Invocation;
use async_trait::async_trait;
use sluice_policies::{Applied, Outcome, Step, StreamBatch, StreamDeadLetter};
use tokio_util::sync::CancellationToken;

/// How a batch's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every record is handled or dead-lettered.
    Done,
    /// `stop` came during a retry delay; unfinished records stay unfinished.
    Stopped,
    /// [`Driven::invoked`] gave up; unfinished records stay unfinished.
    GaveUp,
}

/// What the caller decides after an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Continue,
    GiveUp,
}

/// The caller's side of a batch run (see the module docs).
#[async_trait]
pub(crate) trait Driven: Send {
    /// The invocation of these records (indexes into the batch, ascending).
    fn invocation(&self, records: &[usize]) -> Invocation;

    /// Called before each invocation; a rate limit waits here.
    async fn before_invoke(&mut self, _records: &[usize]) {}

    /// The outcome the policy judges: what the target answered, or what the caller makes of it
    /// (a tumbling window's response without `state` is a failure).
    fn check(&mut self, outcome: Outcome) -> Outcome {
        outcome
    }

    /// What one invocation of `records` (its `attempt`th) did.
    fn invoked(
        &mut self,
        invocation: &Invocation,
        outcome: &Outcome,
        records: &[usize],
        attempt: u32,
        applied: Applied,
    ) -> Control;

    /// Deals with records the policy gives up on; the batch goes on once this returns.
    async fn dead_letter(&mut self, dead_letter: &StreamDeadLetter);

    /// Records may have finished (see [`StreamBatch::is_finished`]).
    fn progress(&mut self, state: &StreamBatch);
}

/// Runs `state` to its end (see the module docs).
pub(crate) async fn drive<D: Driven>(
    invoker: &Invoker,
    state: &mut StreamBatch,
    driven: &mut D,
    stop: &CancellationToken,
) -> Ended {
    loop {
        let now = now_since_epoch();
        match state.next_step(now) {
            Step::Done => return Ended::Done,
            Step::Wait { until } => {
                tokio::select! {
                    _ = stop.cancelled() => return Ended::Stopped,
                    _ = tokio::time::sleep(until.saturating_sub(now)) => {}
                }
            }
            Step::Invoke { records, attempt } => {
                driven.before_invoke(&records).await;
                let invocation = driven.invocation(&records);
                // Waiting for a slot (a full target, an open circuit breaker) ends at a stop; a
                // call that started runs to its end.
                let slot = tokio::select! {
                    _ = stop.cancelled() => return Ended::Stopped,
                    slot = invoker.target().permit_for(invocation.records) => slot,
                };
                let outcome = driven.check(invoker.invoke_in(slot, invocation.clone()).await);
                let applied = state
                    .apply(&outcome, now_since_epoch(), rand::random::<f64>())
                    .expect("an invocation is outstanding");
                let control = driven.invoked(&invocation, &outcome, &records, attempt, applied);
                driven.progress(state);
                if control == Control::GiveUp {
                    return Ended::GaveUp;
                }
            }
            Step::DeadLetter(dead_letter) => {
                driven.dead_letter(&dead_letter).await;
                state.dead_lettered().expect("a dead letter is outstanding");
                driven.progress(state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::SharedTarget;
    use crate::targets::testing::ScriptedTarget;
    use crate::telemetry::MappingMetrics;
    use serde_json::json;
    use sluice_policies::{
        Backoff, DeadLetterCondition, ErrorInfo, IdentifierKind, ItemIdentifier, StreamItem,
        StreamPolicy,
    };
    use std::sync::Arc;
    use std::time::Duration;

    /// Records what the driver asked of it.
    #[derive(Default)]
    struct Log {
        invoked: Vec<Vec<usize>>,
        dead_letters: Vec<(Vec<usize>, DeadLetterCondition)>,
        finished: Vec<usize>,
        give_up_after: Option<usize>,
    }

    #[async_trait]
    impl Driven for Log {
        fn invocation(&self, records: &[usize]) -> Invocation {
            Invocation::new("m", json!({ "Records": records }).to_string().into_bytes())
        }
        fn invoked(
            &mut self,
            _: &Invocation,
            _: &Outcome,
            records: &[usize],
            _: u32,
            _: Applied,
        ) -> Control {
            self.invoked.push(records.to_vec());
            if self.give_up_after == Some(self.invoked.len()) {
                Control::GiveUp
            } else {
                Control::Continue
            }
        }
        async fn dead_letter(&mut self, dead_letter: &StreamDeadLetter) {
            self.dead_letters
                .push((dead_letter.records.clone(), dead_letter.condition));
        }
        fn progress(&mut self, state: &StreamBatch) {
            for index in 0..4 {
                if state.is_finished(index) && !self.finished.contains(&index) {
                    self.finished.push(index);
                }
            }
        }
    }

    fn policy(bisect: bool, retries: u32) -> StreamPolicy {
        StreamPolicy {
            report_batch_item_failures: true,
            bisect_on_error: bisect,
            max_retry_attempts: Some(retries),
            max_record_age: None,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 2.0, false)
                .unwrap(),
            identifier_kind: IdentifierKind::Text,
            non_retryable: None,
        }
    }

    fn batch(policy: StreamPolicy) -> StreamBatch {
        StreamBatch::new(
            policy,
            (0..4)
                .map(|i| StreamItem {
                    identifier: ItemIdentifier::Text(format!("r{i}")),
                    arrived_at: Duration::ZERO,
                })
                .collect(),
        )
    }

    fn invoker(target: &Arc<ScriptedTarget>) -> Invoker {
        Invoker::new(
            SharedTarget::new("t", target.clone(), 1),
            MappingMetrics::new("m"),
        )
    }

    fn failed() -> Outcome {
        Outcome::FunctionError(ErrorInfo::new("E", "failed"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_batch_is_bisected_down_to_the_poison_record_which_is_dead_lettered() {
        // Any call that includes record 2 fails.
        let target = Arc::new(ScriptedTarget::answering(|event| {
            let poisoned = event["Records"]
                .as_array()
                .is_some_and(|records| records.contains(&json!(2)));
            if poisoned {
                failed()
            } else {
                Outcome::Returned { response: None }
            }
        }));
        let mut log = Log::default();
        let mut state = batch(policy(true, 1));
        let ended = drive(
            &invoker(&target),
            &mut state,
            &mut log,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(ended, Ended::Done);
        assert_eq!(log.invoked[0], vec![0, 1, 2, 3]);
        assert_eq!(log.dead_letters.len(), 1, "{:?}", log.dead_letters);
        let (records, condition) = &log.dead_letters[0];
        assert_eq!(records, &vec![2], "only the poison record is dead-lettered");
        assert_eq!(*condition, DeadLetterCondition::RetryAttemptsExhausted);
        // Record 3 runs alone, last: after record 2 was given up on.
        assert_eq!(log.invoked.last(), Some(&vec![3]), "{:?}", log.invoked);
        log.finished.sort_unstable();
        assert_eq!(log.finished, vec![0, 1, 2, 3]);
        // Records went to the target in batch order, each call a contiguous ascending run.
        for call in target.payloads() {
            let records: Vec<u64> = call["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert!(records.windows(2).all(|w| w[1] == w[0] + 1), "{records:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_retry_delay_ends_the_batch_unfinished_at_once() {
        let target = Arc::new(ScriptedTarget::default());
        target.push(failed());
        let stop = CancellationToken::new();
        let mut log = Log::default();
        let mut state = batch(policy(false, 5));
        let driver = {
            let stop = stop.clone();
            async move {
                let ended = drive(&invoker(&target), &mut state, &mut log, &stop).await;
                (ended, log)
            }
        };
        let running = tokio::spawn(driver);
        // The first call failed; the batch now waits out its one-second backoff.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        let (ended, log) = running.await.unwrap();
        assert_eq!(ended, Ended::Stopped);
        assert_eq!(log.invoked.len(), 1);
        assert!(
            log.finished.is_empty(),
            "nothing finished: {log:?}",
            log = log.finished
        );
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_after_an_invocation_leaves_the_rest_unfinished() {
        let target = Arc::new(ScriptedTarget::default());
        target.push(Outcome::Throttled {
            message: "busy".into(),
        });
        let mut log = Log {
            give_up_after: Some(1),
            ..Log::default()
        };
        let mut state = batch(policy(false, 5));
        let ended = drive(
            &invoker(&target),
            &mut state,
            &mut log,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(ended, Ended::GaveUp);
        assert!((0..4).all(|i| !state.is_finished(i)));
    }
}
