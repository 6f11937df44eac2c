//! Lambda's SQS semantics as a decision per batch (semantics.md §3, and §12 where sluice goes
//! further).
//!
//! Given the messages of one invoked batch and the [`Outcome`], [`QueuePolicy::decide`] says, for
//! each message, exactly one of: delete it, let it come back later, return it untouched (FIFO
//! followers), or dead-letter it. It guarantees:
//!
//! - a message is deleted only when the handler succeeded for it (success, or absent from a valid
//!   partial response); a whole-batch failure deletes nothing, not even the good messages;
//! - the response is only read for `batchItemFailures` when the mapping enables it; otherwise any
//!   normal return is success, as in AWS;
//! - FIFO: within a message group, once a message fails, it and every later message of that group
//!   in the batch go back, so no later message of a group is deleted before an earlier one; other
//!   groups carry on;
//! - a failure comes back after the queue's visibility timeout, or after the backoff delay for its
//!   receive count when `retry.backoff` is set;
//! - with `max_receive_count`, a message whose handler failed on its `max_receive_count`-th receive
//!   (or later) is dead-lettered with the error, condition `RetryAttemptsExhausted`; a throttle or
//!   an unreachable target never dead-letters (the handler did not run);
//! - with `non_retryable` error classes, a failure whose error is one of them is dead-lettered at
//!   once with condition `NonRetryableError`.

use crate::backoff::Backoff;
use crate::outcome::{ErrorClasses, ErrorInfo, Outcome};
use crate::response::{
    IdentifierKind, ItemFailures, ItemIdentifier, ResponseError, parse_batch_item_failures,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What the policy needs to know about one message of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub message_id: String,
    /// `ApproximateReceiveCount`, including the receive that produced this batch.
    pub receive_count: u32,
    /// FIFO `MessageGroupId`; `None` on standard queues.
    pub group_id: Option<String>,
}

/// When a failed message should be seen again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDelay {
    /// Leave its visibility alone: it returns when the queue's visibility timeout runs out (AWS).
    VisibilityTimeout,
    /// Set its visibility to this delay (sluice's `retry.backoff`).
    After(Duration),
}

/// Why a record goes to the on-failure destination (semantics.md §12 "Condition names").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterCondition {
    RetryAttemptsExhausted,
    RecordAgeExceeded,
    NonRetryableError,
    PayloadTooLarge,
}

impl DeadLetterCondition {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadLetterCondition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            DeadLetterCondition::RecordAgeExceeded => "RecordAgeExceeded",
            DeadLetterCondition::NonRetryableError => "NonRetryableError",
            DeadLetterCondition::PayloadTooLarge => "PayloadTooLarge",
        }
    }
}

/// What happens to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordDisposition {
    /// The handler succeeded for it: delete it.
    Delete,
    /// It failed: it comes back after `delay`.
    Retry { delay: RetryDelay, error: ErrorInfo },
    /// FIFO: an earlier message of its group failed, so it was not handled; make it visible again
    /// at once (its group stays blocked by the failed message until that one is done).
    ReturnUntouched,
    /// It failed and has used up its receives: send it to `on_failure`, then delete it.
    DeadLetter {
        condition: DeadLetterCondition,
        error: ErrorInfo,
    },
}

impl RecordDisposition {
    pub fn is_delete(&self) -> bool {
        matches!(self, RecordDisposition::Delete)
    }
}

/// The decision for one batch: one disposition per message, in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDecision {
    pub dispositions: Vec<RecordDisposition>,
    /// Set when the whole batch failed (function error, timeout, throttle, invalid response).
    pub batch_error: Option<ErrorInfo>,
    /// The identifiers the handler reported failed, when the response was a valid partial failure.
    pub reported_failures: usize,
}

/// The queue policy of one mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    pub report_batch_item_failures: bool,
    /// `retry.max_receive_count`: dead-letter at this receive count. `None` leaves it to the
    /// queue's own redrive policy.
    pub max_receive_count: Option<u32>,
    /// `retry.backoff`: delay failed messages by their receive count instead of the visibility timeout.
    pub backoff: Option<Backoff>,
    /// Errors dead-lettered at once; `None` when the mapping has no on-failure destination.
    pub non_retryable: Option<ErrorClasses>,
}

/// How a partial failure is described in the dead-letter envelope.
pub const PARTIAL_FAILURE_ERROR_TYPE: &str = "BatchItemFailure";

enum Failed {
    Nothing,
    Whole(ErrorInfo),
    Some(HashMap<String, Option<ErrorInfo>>),
}

impl QueuePolicy {
    /// Decides what happens to every message of `batch` after `outcome`. `unit_random` in `[0, 1)`
    /// feeds backoff jitter.
    pub fn decide(
        &self,
        batch: &[QueueMessage],
        outcome: &Outcome,
        unit_random: f64,
    ) -> QueueDecision {
        let failed = self.failed_messages(batch, outcome);
        let (batch_error, reported_failures) = match &failed {
            Failed::Nothing => (None, 0),
            Failed::Whole(error) => (Some(error.clone()), 0),
            Failed::Some(ids) => (None, ids.len()),
        };
        let handler_ran = !outcome.handler_did_not_run();
        let mut failed_groups: HashSet<&str> = HashSet::new();
        let dispositions = batch
            .iter()
            .map(|message| {
                let group = message.group_id.as_deref();
                if let Some(group) = group
                    && failed_groups.contains(group)
                {
                    return RecordDisposition::ReturnUntouched;
                }
                let error = match &failed {
                    Failed::Nothing => return RecordDisposition::Delete,
                    Failed::Whole(error) => error.clone(),
                    Failed::Some(ids) => match ids.get(&message.message_id) {
                        None => return RecordDisposition::Delete,
                        Some(Some(error)) => error.clone(),
                        Some(None) => ErrorInfo::new(
                            PARTIAL_FAILURE_ERROR_TYPE,
                            "the handler reported this message in batchItemFailures",
                        ),
                    },
                };
                if let Some(group) = group {
                    failed_groups.insert(group);
                }
                self.failure_disposition(message, error, handler_ran, unit_random)
            })
            .collect();
        QueueDecision {
            dispositions,
            batch_error,
            reported_failures,
        }
    }

    fn failure_disposition(
        &self,
        message: &QueueMessage,
        error: ErrorInfo,
        handler_ran: bool,
        unit_random: f64,
    ) -> RecordDisposition {
        if handler_ran
            && self
                .non_retryable
                .as_ref()
                .is_some_and(|classes| classes.is_non_retryable(&error))
        {
            return RecordDisposition::DeadLetter {
                condition: DeadLetterCondition::NonRetryableError,
                error,
            };
        }
        let exhausted = self
            .max_receive_count
            .is_some_and(|max| message.receive_count >= max);
        if handler_ran && exhausted {
            return RecordDisposition::DeadLetter {
                condition: DeadLetterCondition::RetryAttemptsExhausted,
                error,
            };
        }
        let delay = match &self.backoff {
            Some(backoff) => RetryDelay::After(backoff.delay(message.receive_count, unit_random)),
            None => RetryDelay::VisibilityTimeout,
        };
        RecordDisposition::Retry { delay, error }
    }

    fn failed_messages(&self, batch: &[QueueMessage], outcome: &Outcome) -> Failed {
        match outcome {
            Outcome::Returned { response } => {
                if !self.report_batch_item_failures {
                    return Failed::Nothing;
                }
                let known: HashSet<&str> = batch.iter().map(|m| m.message_id.as_str()).collect();
                let parsed = parse_batch_item_failures(
                    response.as_ref(),
                    IdentifierKind::Text,
                    |identifier| match identifier {
                        ItemIdentifier::Text(id) => known.contains(id.as_str()),
                        ItemIdentifier::KafkaOffset { .. } => false,
                    },
                );
                match parsed {
                    Ok(ids) if ids.is_empty() => Failed::Nothing,
                    Ok(ids) => Failed::Some(text_ids(ids)),
                    Err(error) => {
                        Failed::Whole(ErrorInfo::new(ResponseError::ERROR_TYPE, error.to_string()))
                    }
                }
            }
            Outcome::ReturnedNonJson { body } => {
                if !self.report_batch_item_failures {
                    return Failed::Nothing;
                }
                let error = ResponseError::NotJson {
                    body_prefix: crate::outcome::text_prefix(body),
                };
                Failed::Whole(ErrorInfo::new(ResponseError::ERROR_TYPE, error.to_string()))
            }
            other => Failed::Whole(other.error().unwrap_or_else(|| {
                ErrorInfo::new("Unknown", "the invocation failed without an error")
            })),
        }
    }
}

fn text_ids(failures: ItemFailures) -> HashMap<String, Option<ErrorInfo>> {
    failures
        .into_iter()
        .filter_map(|(id, error)| match id {
            ItemIdentifier::Text(text) => Some((text, error)),
            ItemIdentifier::KafkaOffset { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn standard(ids: &[&str], receive_count: u32) -> Vec<QueueMessage> {
        ids.iter()
            .map(|id| QueueMessage {
                message_id: id.to_string(),
                receive_count,
                group_id: None,
            })
            .collect()
    }

    fn fifo(messages: &[(&str, &str)]) -> Vec<QueueMessage> {
        messages
            .iter()
            .map(|(id, group)| QueueMessage {
                message_id: id.to_string(),
                receive_count: 1,
                group_id: Some(group.to_string()),
            })
            .collect()
    }

    fn policy(rbif: bool) -> QueuePolicy {
        QueuePolicy {
            report_batch_item_failures: rbif,
            max_receive_count: None,
            backoff: None,
            non_retryable: None,
        }
    }

    fn returned(value: Value) -> Outcome {
        Outcome::Returned {
            response: Some(value),
        }
    }

    fn failures(ids: &[&str]) -> Value {
        json!({"batchItemFailures": ids.iter().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()})
    }

    fn kinds(decision: &QueueDecision) -> String {
        decision
            .dispositions
            .iter()
            .map(|d| match d {
                RecordDisposition::Delete => 'D',
                RecordDisposition::Retry { .. } => 'R',
                RecordDisposition::ReturnUntouched => 'U',
                RecordDisposition::DeadLetter { .. } => 'X',
            })
            .collect()
    }

    // semantics.md §12 "Condition names": NonRetryableError.
    #[test]
    fn a_non_retryable_error_is_dead_lettered_on_its_first_receive() {
        let classes = ErrorClasses::new(["ValidationError".to_owned()]);
        let policy = QueuePolicy {
            non_retryable: Some(classes),
            ..policy(true)
        };
        let batch = standard(&["a", "b"], 1);
        let partial = Outcome::Returned {
            response: Some(serde_json::json!({"batchItemFailures": [
                {"itemIdentifier": "a", "errorType": "ValidationError", "errorMessage": "no sku"},
                {"itemIdentifier": "b", "errorType": "Timeout"}
            ]})),
        };
        let decision = policy.decide(&batch, &partial, 0.5);
        assert!(matches!(
            decision.dispositions[0],
            RecordDisposition::DeadLetter {
                condition: DeadLetterCondition::NonRetryableError,
                ..
            }
        ));
        assert!(matches!(
            decision.dispositions[1],
            RecordDisposition::Retry { .. }
        ));
        let marked =
            Outcome::FunctionError(ErrorInfo::new("HTTP 422", "bad").marked_non_retryable());
        let decision = policy.decide(&batch[..1], &marked, 0.5);
        assert!(matches!(
            decision.dispositions[0],
            RecordDisposition::DeadLetter {
                condition: DeadLetterCondition::NonRetryableError,
                ..
            }
        ));
        let without_destination = policy_without_destination();
        let decision = without_destination.decide(&batch[..1], &marked, 0.5);
        assert!(matches!(
            decision.dispositions[0],
            RecordDisposition::Retry { .. }
        ));
    }

    fn policy_without_destination() -> QueuePolicy {
        policy(true)
    }

    // semantics.md §3 "Visibility": success deletes the batch.
    #[test]
    fn success_deletes_every_message() {
        let decision = policy(true).decide(&standard(&["a", "b"], 1), &returned(json!({})), 0.5);
        assert_eq!(kinds(&decision), "DD");
        assert_eq!(decision.batch_error, None);
    }

    // semantics.md §3 "Partial batch": only the listed messages stay.
    #[test]
    fn partial_response_keeps_only_the_listed_messages() {
        let decision = policy(true).decide(
            &standard(&["a", "b", "c"], 1),
            &returned(failures(&["b"])),
            0.5,
        );
        assert_eq!(kinds(&decision), "DRD");
        assert_eq!(decision.reported_failures, 1);
    }

    // semantics.md §2/§3: the response is ignored unless ReportBatchItemFailures is on.
    #[test]
    fn partial_response_is_ignored_without_report_batch_item_failures() {
        let decision =
            policy(false).decide(&standard(&["a", "b"], 1), &returned(failures(&["b"])), 0.5);
        assert_eq!(kinds(&decision), "DD");
        let non_json = Outcome::ReturnedNonJson {
            body: b"ok".to_vec(),
        };
        assert_eq!(
            kinds(&policy(false).decide(&standard(&["a"], 1), &non_json, 0.5)),
            "D"
        );
    }

    // semantics.md §3 "Whole-batch failure" and §13.6: invalid responses fail every message.
    #[test]
    fn invalid_partial_responses_fail_the_whole_batch() {
        let batch = standard(&["a", "b"], 1);
        for response in [
            failures(&["zz"]),
            failures(&[""]),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"foo": 1}),
        ] {
            let decision = policy(true).decide(&batch, &returned(response.clone()), 0.5);
            assert_eq!(kinds(&decision), "RR", "{response}");
            assert_eq!(
                decision.batch_error.unwrap().error_type,
                "InvalidBatchItemFailures"
            );
        }
        let non_json = Outcome::ReturnedNonJson {
            body: b"<html>".to_vec(),
        };
        assert_eq!(kinds(&policy(true).decide(&batch, &non_json, 0.5)), "RR");
    }

    // semantics.md §13.6: when the function throws, even the good messages count as failed.
    #[test]
    fn function_error_and_timeout_fail_every_message() {
        let batch = standard(&["a", "b"], 1);
        let error = Outcome::FunctionError(ErrorInfo::new("Boom", "it broke"));
        let decision = policy(true).decide(&batch, &error, 0.5);
        assert_eq!(kinds(&decision), "RR");
        assert_eq!(decision.batch_error.unwrap().error_type, "Boom");
        let timeout = Outcome::Timeout { after_ms: 3000 };
        assert_eq!(kinds(&policy(false).decide(&batch, &timeout, 0.5)), "RR");
    }

    #[test]
    fn failures_wait_for_the_visibility_timeout_without_backoff() {
        let decision = policy(true).decide(
            &standard(&["a"], 3),
            &Outcome::FunctionError(ErrorInfo::new("E", "m")),
            0.5,
        );
        assert!(matches!(
            decision.dispositions[0],
            RecordDisposition::Retry {
                delay: RetryDelay::VisibilityTimeout,
                ..
            }
        ));
    }

    // semantics.md §12 "SQS backoff": the delay follows the receive count.
    #[test]
    fn backoff_delays_follow_the_receive_count() {
        let mut with_backoff = policy(true);
        with_backoff.backoff = Some(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2.0, false).unwrap(),
        );
        for (receive_count, expected_secs) in [(1, 1), (2, 2), (3, 4), (10, 60)] {
            let decision = with_backoff.decide(
                &standard(&["a"], receive_count),
                &Outcome::FunctionError(ErrorInfo::new("E", "m")),
                0.5,
            );
            assert_eq!(
                decision.dispositions[0],
                RecordDisposition::Retry {
                    delay: RetryDelay::After(Duration::from_secs(expected_secs)),
                    error: ErrorInfo::new("E", "m")
                }
            );
        }
    }

    // semantics.md §12 "SQS dead-lettering": at max_receive_count, with the error attached.
    #[test]
    fn messages_at_max_receive_count_are_dead_lettered_with_the_error() {
        let mut limited = policy(true);
        limited.max_receive_count = Some(3);
        let mut batch = standard(&["a", "b", "c"], 2);
        batch[1].receive_count = 3;
        batch[2].receive_count = 4;
        let decision = limited.decide(&batch, &returned(failures(&["a", "b", "c"])), 0.5);
        assert_eq!(kinds(&decision), "RXX");
        assert_eq!(
            decision.dispositions[1],
            RecordDisposition::DeadLetter {
                condition: DeadLetterCondition::RetryAttemptsExhausted,
                error: ErrorInfo::new(
                    PARTIAL_FAILURE_ERROR_TYPE,
                    "the handler reported this message in batchItemFailures"
                ),
            }
        );
    }

    #[test]
    fn throttles_and_unreachable_targets_never_dead_letter() {
        let mut limited = policy(true);
        limited.max_receive_count = Some(1);
        let batch = standard(&["a"], 5);
        for outcome in [
            Outcome::Throttled {
                message: "429".into(),
            },
            Outcome::Unavailable {
                message: "connection refused".into(),
            },
        ] {
            assert_eq!(kinds(&limited.decide(&batch, &outcome, 0.5)), "R");
        }
    }

    // semantics.md §3 "FIFO": a failure returns it and every later message of its group.
    #[test]
    fn fifo_failure_returns_the_rest_of_its_group_untouched() {
        let batch = fifo(&[
            ("a1", "A"),
            ("b1", "B"),
            ("b2", "B"),
            ("a2", "A"),
            ("b3", "B"),
            ("c1", "C"),
        ]);
        let decision = policy(true).decide(&batch, &returned(failures(&["b2"])), 0.5);
        assert_eq!(kinds(&decision), "DDRDUD");
    }

    #[test]
    fn fifo_whole_batch_failure_retries_each_group_head_and_returns_followers() {
        let batch = fifo(&[("a1", "A"), ("b1", "B"), ("a2", "A")]);
        let decision = policy(false).decide(
            &batch,
            &Outcome::FunctionError(ErrorInfo::new("E", "m")),
            0.5,
        );
        assert_eq!(kinds(&decision), "RRU");
    }

    fn arbitrary_outcome(ids: Vec<String>) -> impl Strategy<Value = Outcome> {
        let subset = proptest::sample::subsequence(ids.clone(), 0..=ids.len());
        prop_oneof![
            Just(Outcome::Returned { response: None }),
            subset.prop_map(|failed| Outcome::Returned {
                response: Some(json!({"batchItemFailures": failed.iter().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()}))
            }),
            Just(Outcome::Returned { response: Some(json!({"batchItemFailures": [{"itemIdentifier": "nope"}]})) }),
            Just(Outcome::FunctionError(ErrorInfo::new("E", "m"))),
            Just(Outcome::Timeout { after_ms: 1 }),
            Just(Outcome::Throttled { message: "t".into() }),
            Just(Outcome::Unavailable { message: "u".into() }),
        ]
    }

    fn arbitrary_case() -> impl Strategy<Value = (Vec<QueueMessage>, Outcome, QueuePolicy)> {
        proptest::collection::vec((0u8..3, 1u32..6, any::<bool>()), 1..12)
            .prop_flat_map(|specs| {
                let fifo = specs[0].2;
                let batch: Vec<QueueMessage> = specs
                    .iter()
                    .enumerate()
                    .map(|(index, (group, receive_count, _))| QueueMessage {
                        message_id: format!("m{index}"),
                        receive_count: *receive_count,
                        group_id: fifo.then(|| format!("g{group}")),
                    })
                    .collect();
                let ids = batch.iter().map(|m| m.message_id.clone()).collect();
                (
                    Just(batch),
                    arbitrary_outcome(ids),
                    any::<bool>(),
                    proptest::option::of(1u32..6),
                )
            })
            .prop_map(|(batch, outcome, rbif, max_receive_count)| {
                let policy = QueuePolicy {
                    report_batch_item_failures: rbif,
                    max_receive_count,
                    backoff: None,
                    non_retryable: None,
                };
                (batch, outcome, policy)
            })
    }

    proptest! {
        // A message is deleted only after success; failures are never deleted; dead letters only
        // after the handler ran and the receive count reached the limit.
        #[test]
        fn deletes_only_successes_and_dead_letters_only_exhausted_messages(
            (batch, outcome, policy) in arbitrary_case(), random in 0.0f64..1.0
        ) {
            let decision = policy.decide(&batch, &outcome, random);
            prop_assert_eq!(decision.dispositions.len(), batch.len());
            let whole_failure = decision.batch_error.is_some();
            for (message, disposition) in batch.iter().zip(&decision.dispositions) {
                match disposition {
                    RecordDisposition::Delete => prop_assert!(!whole_failure),
                    RecordDisposition::DeadLetter { .. } => {
                        prop_assert!(!outcome.handler_did_not_run());
                        prop_assert!(message.receive_count >= policy.max_receive_count.unwrap());
                    }
                    RecordDisposition::ReturnUntouched => prop_assert!(message.group_id.is_some()),
                    RecordDisposition::Retry { .. } => {}
                }
            }
            if outcome.handler_did_not_run() {
                prop_assert!(decision.dispositions.iter().all(|d| !d.is_delete()));
            }
        }

        // FIFO order: within a group, no message is deleted after an earlier one was not.
        #[test]
        fn fifo_never_deletes_past_a_failure_in_its_group(
            (batch, outcome, policy) in arbitrary_case(), random in 0.0f64..1.0
        ) {
            let decision = policy.decide(&batch, &outcome, random);
            let mut blocked: HashSet<&str> = HashSet::new();
            for (message, disposition) in batch.iter().zip(&decision.dispositions) {
                let Some(group) = message.group_id.as_deref() else { continue };
                if blocked.contains(group) {
                    prop_assert_eq!(disposition, &RecordDisposition::ReturnUntouched);
                } else if !disposition.is_delete() {
                    blocked.insert(group);
                }
            }
        }

        // A queue simulated over many receives: every message ends deleted exactly once, either
        // after a receive whose outcome succeeded for it or after it was dead-lettered at its
        // receive limit; nothing is acknowledged twice or lost.
        #[test]
        fn every_message_ends_acknowledged_or_dead_lettered_exactly_once(
            message_count in 1usize..40,
            rounds in proptest::collection::vec((0u8..5, any::<u16>()), 0..60),
            max_receive_count in proptest::option::of(1u32..4),
            fifo in any::<bool>(),
        ) {
            #[derive(Debug, Clone, Copy, PartialEq)]
            enum End { Acknowledged, DeadLettered }
            let policy = QueuePolicy { report_batch_item_failures: true, max_receive_count, backoff: None, non_retryable: None };
            let mut receive_counts = vec![0u32; message_count];
            let mut ends: Vec<Option<End>> = vec![None; message_count];
            let group_of = |index: usize| fifo.then(|| format!("g{}", index % 3));
            let success_round = (0u8, 0u16);
            let all_rounds = rounds.iter().copied().chain(std::iter::repeat_n(success_round, 200));
            for (kind, bits) in all_rounds {
                // The oldest pending messages, in order: as SQS FIFO hands out a group's
                // messages, and one valid order for a standard queue.
                let pending: Vec<usize> = (0..message_count).filter(|&i| ends[i].is_none()).collect();
                if pending.is_empty() { break; }
                let batch_indexes: Vec<usize> = pending.into_iter().take(10).collect();
                for &index in &batch_indexes { receive_counts[index] += 1; }
                let batch: Vec<QueueMessage> = batch_indexes.iter().map(|&index| QueueMessage {
                    message_id: format!("m{index}"),
                    receive_count: receive_counts[index],
                    group_id: group_of(index),
                }).collect();
                let failed_ids: Vec<Value> = batch.iter().enumerate()
                    .filter(|(position, _)| bits & (1 << (position % 16)) != 0)
                    .map(|(_, m)| json!({"itemIdentifier": m.message_id}))
                    .collect();
                let outcome = match kind {
                    0 => Outcome::Returned { response: None },
                    1 => Outcome::Returned { response: Some(json!({"batchItemFailures": failed_ids})) },
                    2 => Outcome::FunctionError(ErrorInfo::new("E", "m")),
                    3 => Outcome::Throttled { message: "t".into() },
                    _ => Outcome::Timeout { after_ms: 1 },
                };
                let decision = policy.decide(&batch, &outcome, 0.5);
                for (&index, disposition) in batch_indexes.iter().zip(&decision.dispositions) {
                    match disposition {
                        RecordDisposition::Delete => {
                            prop_assert!(ends[index].is_none(), "m{} acknowledged twice", index);
                            let returned = matches!(outcome, Outcome::Returned { .. });
                            prop_assert!(returned, "deleted after {:?}", outcome);
                            ends[index] = Some(End::Acknowledged);
                        }
                        RecordDisposition::DeadLetter { .. } => {
                            prop_assert!(ends[index].is_none(), "m{} dead-lettered twice", index);
                            prop_assert!(receive_counts[index] >= max_receive_count.unwrap());
                            ends[index] = Some(End::DeadLettered);
                        }
                        RecordDisposition::Retry { .. } | RecordDisposition::ReturnUntouched => {}
                    }
                }
            }
            prop_assert!(ends.iter().all(Option::is_some), "every message ends: {:?}", ends);
            if max_receive_count.is_none() {
                prop_assert!(ends.iter().all(|e| *e == Some(End::Acknowledged)));
            }
        }
    }
}
