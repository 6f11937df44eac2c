//! Rules of semantics.md §2 and §12, one test each, and property tests over simulated runs.

use super::*;
use crate::outcome::ErrorClasses;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};

const SECOND: Duration = Duration::from_secs(1);

fn policy() -> StreamPolicy {
    StreamPolicy {
        report_batch_item_failures: false,
        bisect_on_error: false,
        max_retry_attempts: None,
        max_record_age: None,
        backoff: Backoff::new(SECOND, Duration::from_secs(60), 2.0, false).unwrap(),
        identifier_kind: IdentifierKind::Text,
        non_retryable: None,
    }
}

fn items(count: usize) -> Vec<StreamItem> {
    (0..count)
        .map(|i| StreamItem {
            identifier: ItemIdentifier::Text(format!("{}", 100 + i)),
            arrived_at: Duration::from_secs(1_000),
        })
        .collect()
}

fn error() -> Outcome {
    Outcome::FunctionError(ErrorInfo::new("Boom", "failed"))
}

fn ok() -> Outcome {
    Outcome::Returned { response: None }
}

fn report(ids: &[usize]) -> Outcome {
    let failures: Vec<_> = ids
        .iter()
        .map(|i| json!({"itemIdentifier": format!("{}", 100 + i)}))
        .collect();
    Outcome::Returned {
        response: Some(json!({ "batchItemFailures": failures })),
    }
}

const NOW: Duration = Duration::from_secs(2_000);

/// Drives a batch: invokes with `outcome_for(records)` and waits out every delay; returns the
/// invocations made and the dead letters sent.
fn run(
    batch: &mut StreamBatch,
    mut outcome_for: impl FnMut(&[usize]) -> Outcome,
) -> (Vec<Vec<usize>>, Vec<StreamDeadLetter>) {
    let mut now = NOW;
    let mut invocations = Vec::new();
    let mut dead_letters = Vec::new();
    for _ in 0..10_000 {
        match batch.next_step(now) {
            Step::Done => return (invocations, dead_letters),
            Step::Wait { until } => {
                assert!(until > now);
                now = until;
            }
            Step::Invoke { records, .. } => {
                let outcome = outcome_for(&records);
                invocations.push(records);
                batch.apply(&outcome, now, 0.5).unwrap();
            }
            Step::DeadLetter(dead_letter) => {
                dead_letters.push(dead_letter);
                batch.dead_lettered().unwrap();
            }
        }
    }
    panic!("the batch never finished");
}

#[test]
fn a_successful_batch_is_invoked_once_in_order() {
    let mut batch = StreamBatch::new(policy(), items(3));
    let (invocations, dead_letters) = run(&mut batch, |_| ok());
    assert_eq!(invocations, vec![vec![0, 1, 2]]);
    assert!(dead_letters.is_empty());
    assert_eq!(batch.finished_prefix(), 3);
}

#[test]
fn a_failing_batch_blocks_and_is_retried_after_the_backoff() {
    // semantics.md §2 "Function error": the whole batch is retried, the shard blocked meanwhile.
    let mut batch = StreamBatch::new(policy(), items(2));
    assert!(matches!(
        batch.next_step(NOW),
        Step::Invoke { attempt: 1, .. }
    ));
    batch.apply(&error(), NOW, 0.5).unwrap();
    assert_eq!(
        batch.next_step(NOW),
        Step::Wait {
            until: NOW + SECOND
        }
    );
    assert_eq!(batch.finished_prefix(), 0);
    let step = batch.next_step(NOW + SECOND);
    assert_eq!(
        step,
        Step::Invoke {
            records: vec![0, 1],
            attempt: 2
        }
    );
    batch.apply(&error(), NOW + SECOND, 0.5).unwrap();
    assert_eq!(
        batch.next_step(NOW + SECOND),
        Step::Wait {
            until: NOW + 3 * SECOND
        },
        "the second retry waits twice as long"
    );
}

#[test]
fn max_retry_attempts_bounds_invocations_to_one_plus_retries() {
    // semantics.md §13.6: a whole-batch failure is tried exactly 1 + MaximumRetryAttempts times.
    for max in [0u32, 1, 2, 3] {
        let mut batch = StreamBatch::new(
            StreamPolicy {
                max_retry_attempts: Some(max),
                ..policy()
            },
            items(3),
        );
        let (invocations, dead_letters) = run(&mut batch, |_| error());
        assert_eq!(invocations.len() as u32, max + 1);
        assert_eq!(dead_letters.len(), 1);
        let dead_letter = &dead_letters[0];
        assert_eq!(dead_letter.records, vec![0, 1, 2]);
        assert_eq!(
            dead_letter.condition,
            DeadLetterCondition::RetryAttemptsExhausted
        );
        assert_eq!(dead_letter.invoke_count, max + 1);
        assert!(dead_letter.function_error);
        assert_eq!(batch.finished_prefix(), 3, "the shard moves on");
    }
}

#[test]
fn throttles_and_an_unavailable_target_never_use_attempts() {
    // semantics.md §2: throttles and errors before the function runs do not use up attempts.
    let mut batch = StreamBatch::new(
        StreamPolicy {
            max_retry_attempts: Some(0),
            ..policy()
        },
        items(1),
    );
    let mut calls = 0;
    let (invocations, dead_letters) = run(&mut batch, |_| {
        calls += 1;
        match calls {
            1..=5 => Outcome::Throttled {
                message: "429".into(),
            },
            6..=8 => Outcome::Unavailable {
                message: "refused".into(),
            },
            _ => ok(),
        }
    });
    assert_eq!(invocations.len(), 9);
    assert!(dead_letters.is_empty());
}

#[test]
fn bisect_halves_first_half_first_and_dead_letters_only_the_poison_record() {
    // semantics.md §12 "Bisect": halve down to single records; one poison record costs one record.
    let mut batch = StreamBatch::new(
        StreamPolicy {
            bisect_on_error: true,
            max_retry_attempts: Some(2),
            ..policy()
        },
        items(8),
    );
    let (invocations, dead_letters) = run(&mut batch, |records| {
        if records.contains(&5) { error() } else { ok() }
    });
    assert_eq!(
        invocations,
        vec![
            vec![0, 1, 2, 3, 4, 5, 6, 7],
            vec![0, 1, 2, 3],
            vec![4, 5, 6, 7],
            vec![4, 5],
            vec![4],
            vec![5],
            vec![5],
            vec![5],
            vec![6, 7],
        ]
    );
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(dead_letters[0].records, vec![5]);
    assert_eq!(
        dead_letters[0].invoke_count, 6,
        "every invocation that included it"
    );
}

#[test]
fn splitting_uses_no_attempt_and_is_immediate() {
    let mut batch = StreamBatch::new(
        StreamPolicy {
            bisect_on_error: true,
            max_retry_attempts: Some(0),
            ..policy()
        },
        items(4),
    );
    let (invocations, dead_letters) = run(&mut batch, |records| {
        if records.contains(&0) { error() } else { ok() }
    });
    assert_eq!(
        invocations,
        vec![vec![0, 1, 2, 3], vec![0, 1], vec![0], vec![1], vec![2, 3]]
    );
    assert_eq!(dead_letters[0].records, vec![0]);
}

#[test]
fn a_partial_response_moves_past_the_records_before_the_lowest_failure() {
    // semantics.md §13.6: records before the reported one are never delivered again, and the
    // count restarts: record 6 of [4,5,6] fails, then alone 1 + MaximumRetryAttempts times.
    let mut batch = StreamBatch::new(
        StreamPolicy {
            report_batch_item_failures: true,
            max_retry_attempts: Some(3),
            ..policy()
        },
        items(3),
    );
    let (invocations, dead_letters) = run(&mut batch, |records| {
        if records.contains(&2) {
            report(&[2])
        } else {
            ok()
        }
    });
    assert_eq!(invocations[0], vec![0, 1, 2]);
    assert_eq!(&invocations[1..], &[vec![2], vec![2], vec![2], vec![2]]);
    assert_eq!(dead_letters.len(), 1);
    let dead_letter = &dead_letters[0];
    assert_eq!(dead_letter.records, vec![2]);
    assert_eq!(dead_letter.invoke_count, 4);
    assert!(!dead_letter.function_error, "the function returned");
    assert_eq!(
        dead_letter.error.as_ref().unwrap().error_type,
        PARTIAL_FAILURE_ERROR_TYPE
    );
}

#[test]
fn a_partial_response_cuts_at_the_lowest_reported_record_without_bisecting() {
    // semantics.md §2 "Bisect": with both on, a partial response cuts; only the rest is retried.
    let mut batch = StreamBatch::new(
        StreamPolicy {
            report_batch_item_failures: true,
            bisect_on_error: true,
            max_retry_attempts: Some(5),
            ..policy()
        },
        items(6),
    );
    batch.next_step(NOW);
    let applied = batch.apply(&report(&[4, 2]), NOW, 0.5).unwrap();
    assert_eq!(applied, Applied::Partial { done: 2, failed: 4 });
    assert_eq!(batch.finished_prefix(), 2);
    assert_eq!(
        batch.next_step(NOW),
        Step::Invoke {
            records: vec![2, 3, 4, 5],
            attempt: 1
        }
    );
}

#[test]
fn a_report_naming_the_first_record_uses_an_attempt() {
    let mut batch = StreamBatch::new(
        StreamPolicy {
            report_batch_item_failures: true,
            max_retry_attempts: Some(1),
            ..policy()
        },
        items(3),
    );
    let (invocations, dead_letters) = run(&mut batch, |_| report(&[0]));
    assert_eq!(invocations, vec![vec![0, 1, 2], vec![0, 1, 2]]);
    assert_eq!(dead_letters[0].records, vec![0, 1, 2]);
}

#[test]
fn invalid_identifiers_fail_the_whole_batch_and_may_be_bisected() {
    // semantics.md §2: "", null, unknown ids and wrong keys fail the whole batch.
    for response in [
        json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
        json!({"batchItemFailures": [{"itemIdentifier": null}]}),
        json!({"batchItemFailures": [{"itemIdentifier": "123"}]}),
        json!({"batchItemFailures": [{"foo": "100"}]}),
    ] {
        let mut batch = StreamBatch::new(
            StreamPolicy {
                report_batch_item_failures: true,
                max_retry_attempts: Some(1),
                ..policy()
            },
            items(2),
        );
        let outcome = Outcome::Returned {
            response: Some(response.clone()),
        };
        let (invocations, dead_letters) = run(&mut batch, |_| outcome.clone());
        assert_eq!(invocations.len(), 2, "{response}");
        assert_eq!(dead_letters[0].records, vec![0, 1]);
        assert!(!dead_letters[0].function_error, "functionError is null");
        assert_eq!(
            dead_letters[0].error.as_ref().unwrap().error_type,
            ResponseError::ERROR_TYPE
        );
    }
}

#[test]
fn success_shapes_are_success_and_responses_are_ignored_without_the_setting() {
    for response in [
        json!(""),
        json!([]),
        json!(null),
        json!({}),
        json!({"batchItemFailures": []}),
        json!({"batchItemFailures": null}),
    ] {
        let mut batch = StreamBatch::new(
            StreamPolicy {
                report_batch_item_failures: true,
                ..policy()
            },
            items(2),
        );
        batch.next_step(NOW);
        let outcome = Outcome::Returned {
            response: Some(response),
        };
        assert_eq!(batch.apply(&outcome, NOW, 0.5), Ok(Applied::Succeeded));
    }
    let mut batch = StreamBatch::new(policy(), items(2));
    batch.next_step(NOW);
    assert_eq!(batch.apply(&report(&[1]), NOW, 0.5), Ok(Applied::Succeeded));
}

#[test]
fn records_older_than_max_record_age_are_dead_lettered_without_an_invocation() {
    // semantics.md §13.6 "Record age": the stale record is split out, the rest delivered.
    let mut records = items(4);
    for record in &mut records {
        record.arrived_at = NOW - Duration::from_secs(10);
    }
    records[0].arrived_at = NOW - Duration::from_secs(120);
    let mut batch = StreamBatch::new(
        StreamPolicy {
            max_record_age: Some(Duration::from_secs(60)),
            ..policy()
        },
        records,
    );
    let (invocations, dead_letters) = run(&mut batch, |_| ok());
    assert_eq!(invocations, vec![vec![1, 2, 3]]);
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(dead_letters[0].records, vec![0]);
    assert_eq!(
        dead_letters[0].condition,
        DeadLetterCondition::RecordAgeExceeded
    );
    assert_eq!(dead_letters[0].invoke_count, 1);
    assert_eq!(dead_letters[0].error, None);
}

#[test]
fn records_that_age_out_while_retrying_stop_the_retries() {
    let mut batch = StreamBatch::new(
        StreamPolicy {
            max_record_age: Some(Duration::from_secs(1_005)),
            ..policy()
        },
        items(2),
    );
    let (invocations, dead_letters) = run(&mut batch, |_| error());
    // Arrived at 1000 s, now starts at 2000 s: retried at +1, +3, then +7 is past 2005 s.
    assert_eq!(invocations.len(), 3);
    assert_eq!(
        dead_letters[0].condition,
        DeadLetterCondition::RecordAgeExceeded
    );
    assert_eq!(dead_letters[0].invoke_count, 3);
    assert_eq!(dead_letters[0].error.as_ref().unwrap().error_type, "Boom");
}

#[test]
fn reporting_out_of_turn_is_refused() {
    let mut batch = StreamBatch::new(policy(), items(1));
    assert_eq!(batch.apply(&ok(), NOW, 0.5), Err(StepError::NoInvocation));
    assert_eq!(batch.dead_lettered(), Err(StepError::NoDeadLetter));
    assert!(matches!(batch.next_step(NOW), Step::Invoke { .. }));
    assert!(
        matches!(batch.next_step(NOW), Step::Invoke { attempt: 1, .. }),
        "asking again returns the same outstanding invocation"
    );
}

#[test]
fn kafka_identifiers_name_records_by_partition_and_offset() {
    let records: Vec<StreamItem> = (0..3)
        .map(|offset| StreamItem {
            identifier: ItemIdentifier::KafkaOffset {
                partition: "t-0".into(),
                offset,
            },
            arrived_at: NOW,
        })
        .collect();
    let mut batch = StreamBatch::new(
        StreamPolicy {
            report_batch_item_failures: true,
            identifier_kind: IdentifierKind::KafkaOffset,
            ..policy()
        },
        records,
    );
    batch.next_step(NOW);
    let outcome = Outcome::Returned {
        response: Some(
            json!({"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": 1}}]}),
        ),
    };
    assert_eq!(
        batch.apply(&outcome, NOW, 0.5),
        Ok(Applied::Partial { done: 1, failed: 2 })
    );
}

/// semantics.md §4 "Partial response": a partition or offset that is not in the event fails the
/// whole batch.
#[test]
fn a_kafka_identifier_outside_the_batch_fails_the_whole_batch() {
    let kafka_batch = || {
        let records: Vec<StreamItem> = (0..3)
            .map(|offset| StreamItem {
                identifier: ItemIdentifier::KafkaOffset {
                    partition: "t-0".into(),
                    offset,
                },
                arrived_at: NOW,
            })
            .collect();
        let mut batch = StreamBatch::new(
            StreamPolicy {
                report_batch_item_failures: true,
                identifier_kind: IdentifierKind::KafkaOffset,
                ..policy()
            },
            records,
        );
        batch.next_step(NOW);
        batch
    };
    for (partition, offset) in [("t-1", 1), ("t-0", 7), ("other-0", 0)] {
        let outcome = Outcome::Returned {
            response: Some(json!({"batchItemFailures": [
                {"itemIdentifier": {"partition": partition, "offset": offset}}
            ]})),
        };
        let applied = kafka_batch().apply(&outcome, NOW, 0.5);
        assert!(
            matches!(applied, Ok(Applied::Failed { .. })),
            "{partition}@{offset}: {applied:?}"
        );
    }
}

#[test]
fn a_non_retryable_error_goes_to_on_failure_at_once() {
    // issue 7 "Error classes"; semantics.md §12 "Condition names".
    let classes = Some(ErrorClasses::new(["ValidationError".to_owned()]));
    let mut batch = StreamBatch::new(
        StreamPolicy {
            non_retryable: classes.clone(),
            ..policy()
        },
        items(3),
    );
    let (invocations, dead_letters) = run(&mut batch, |_| {
        Outcome::FunctionError(ErrorInfo::new("ValidationError", "bad"))
    });
    assert_eq!(invocations.len(), 1, "no retries");
    assert_eq!(
        dead_letters[0].condition,
        DeadLetterCondition::NonRetryableError
    );
    assert_eq!(dead_letters[0].records, vec![0, 1, 2]);

    // A partial response naming a non-retryable record dead-letters it alone; the rest goes on.
    let mut batch = StreamBatch::new(
        StreamPolicy {
            report_batch_item_failures: true,
            non_retryable: classes,
            ..policy()
        },
        items(4),
    );
    let (invocations, dead_letters) = run(&mut batch, |records| {
        if records.contains(&1) {
            Outcome::Returned {
                response: Some(json!({"batchItemFailures": [
                    {"itemIdentifier": "101", "errorType": "ValidationError", "errorMessage": "no sku"}
                ]})),
            }
        } else {
            ok()
        }
    });
    assert_eq!(invocations, vec![vec![0, 1, 2, 3], vec![2, 3]]);
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(dead_letters[0].records, vec![1]);
    assert_eq!(
        dead_letters[0].condition,
        DeadLetterCondition::NonRetryableError
    );
    assert_eq!(dead_letters[0].invoke_count, 1);
    assert_eq!(batch.finished_prefix(), 4);

    // A target's mark counts too; other errors are still retried.
    let mut batch = StreamBatch::new(
        StreamPolicy {
            non_retryable: Some(ErrorClasses::default()),
            max_retry_attempts: Some(1),
            ..policy()
        },
        items(1),
    );
    let mut calls = 0;
    let (invocations, dead_letters) = run(&mut batch, |_| {
        calls += 1;
        if calls == 1 {
            error()
        } else {
            Outcome::FunctionError(ErrorInfo::new("HTTP 422", "bad").marked_non_retryable())
        }
    });
    assert_eq!(invocations.len(), 2);
    assert_eq!(
        dead_letters[0].condition,
        DeadLetterCondition::NonRetryableError
    );
}

#[test]
fn lanes_are_stable_and_spread() {
    assert_eq!(lane_of(b"anything", 1), 0);
    assert_eq!(lane_of(b"order-1", 4), lane_of(b"order-1", 4));
    let used: BTreeSet<usize> = (0..100)
        .map(|i| lane_of(format!("key-{i}").as_bytes(), 4))
        .collect();
    assert_eq!(used.len(), 4);
}

#[test]
fn the_checkpoint_waits_for_the_oldest_pending_record() {
    let mut progress = ShardProgress::new();
    let a = progress.push("1");
    let b = progress.push("2");
    let c = progress.push("3");
    progress.finish(b);
    assert_eq!(progress.advance(), None);
    progress.finish(a);
    assert_eq!(progress.advance(), Some("2"));
    progress.finish(a);
    assert_eq!(progress.advance(), None);
    progress.finish(c);
    assert_eq!(progress.advance(), Some("3"));
    assert_eq!(progress.outstanding(), 0);
}

// ---- property tests ----

#[derive(Debug, Clone)]
struct Scenario {
    count: usize,
    poison: BTreeSet<usize>,
    throttle_every: Option<u32>,
    report: bool,
    bisect: bool,
    max_retry_attempts: u32,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1usize..40,
        proptest::collection::btree_set(0usize..40, 0..4),
        proptest::option::of(2u32..5),
        any::<bool>(),
        any::<bool>(),
        0u32..4,
    )
        .prop_map(
            |(count, poison, throttle_every, report, bisect, max_retry_attempts)| Scenario {
                count,
                poison: poison.into_iter().filter(|p| *p < count).collect(),
                throttle_every,
                report,
                bisect,
                max_retry_attempts,
            },
        )
}

proptest! {
    #[test]
    fn every_record_ends_done_or_dead_lettered_once_in_order(s in scenario()) {
        let policy = StreamPolicy {
            report_batch_item_failures: s.report,
            bisect_on_error: s.bisect,
            max_retry_attempts: Some(s.max_retry_attempts),
            ..policy()
        };
        let mut batch = StreamBatch::new(policy, items(s.count));
        let mut calls = 0u32;
        let mut now = NOW;
        let mut dead: Vec<usize> = Vec::new();
        let mut succeeded: BTreeSet<usize> = BTreeSet::new();
        let mut finished_before = 0;
        for _ in 0..100_000 {
            let step = batch.next_step(now);
            match step {
                Step::Done => break,
                Step::Wait { until } => now = until,
                Step::Invoke { records, .. } => {
                    // In order: an invocation starts at the oldest unfinished record.
                    let oldest = (0..s.count).find(|&i| !batch.is_finished(i));
                    prop_assert_eq!(Some(records[0]), oldest);
                    calls += 1;
                    let failing: Vec<usize> =
                        records.iter().copied().filter(|r| s.poison.contains(r)).collect();
                    let outcome = if s.throttle_every.is_some_and(|n| calls.is_multiple_of(n)) {
                        Outcome::Throttled { message: "busy".into() }
                    } else if failing.is_empty() {
                        for r in &records {
                            succeeded.insert(*r);
                        }
                        ok()
                    } else if s.report {
                        for r in records.iter().take_while(|r| **r < failing[0]) {
                            succeeded.insert(*r);
                        }
                        report(&failing)
                    } else {
                        error()
                    };
                    batch.apply(&outcome, now, 0.3).unwrap();
                }
                Step::DeadLetter(dead_letter) => {
                    for r in &dead_letter.records {
                        prop_assert!(!batch.is_finished(*r), "record {} finished twice", r);
                    }
                    dead.extend(&dead_letter.records);
                    batch.dead_lettered().unwrap();
                }
            }
            let finished = batch.finished_prefix();
            prop_assert!(finished >= finished_before, "the checkpoint moved back");
            finished_before = finished;
        }
        prop_assert_eq!(batch.next_step(now), Step::Done);
        prop_assert_eq!(batch.finished_prefix(), s.count);
        let dead_set: BTreeSet<usize> = dead.iter().copied().collect();
        prop_assert_eq!(dead_set.len(), dead.len(), "a record was dead-lettered twice");
        for p in &s.poison {
            prop_assert!(dead_set.contains(p), "poison record {} was not dead-lettered", p);
        }
        for r in 0..s.count {
            prop_assert!(
                succeeded.contains(&r) != dead_set.contains(&r),
                "record {} must end handled or dead-lettered, not both or neither", r
            );
        }
        if s.bisect && !s.report {
            prop_assert_eq!(&dead_set, &s.poison, "bisect dead-letters exactly the poison records");
        }
    }

    #[test]
    fn lanes_keep_per_key_order_and_the_checkpoint_covers_only_finished_records(
        keys in proptest::collection::vec(0u8..6, 1..80),
        lanes in 1usize..5,
        schedule in proptest::collection::vec(0usize..5, 1..400),
    ) {
        // Records of a shard spread over lanes; lanes finish their records in order, in an
        // arbitrary interleaving; the checkpoint never passes an unfinished record.
        let mut progress = ShardProgress::new();
        let mut queues: HashMap<usize, VecDeque<(usize, Position)>> = HashMap::new();
        for (sequence, key) in keys.iter().enumerate() {
            let position = progress.push(sequence);
            queues.entry(lane_of(&[*key], lanes)).or_default().push_back((sequence, position));
        }
        let mut finished = vec![false; keys.len()];
        let mut last_seen_by_key: HashMap<u8, usize> = HashMap::new();
        let mut checkpoint: Option<usize> = None;
        let mut pick = schedule.into_iter().cycle();
        while queues.values().any(|q| !q.is_empty()) {
            let lane = pick.next().unwrap() % lanes;
            let Some((sequence, position)) = queues.get_mut(&lane).and_then(|q| q.pop_front()) else {
                let lane = *queues.iter().find(|(_, q)| !q.is_empty()).unwrap().0;
                let (sequence, position) = queues.get_mut(&lane).unwrap().pop_front().unwrap();
                finished[sequence] = true;
                progress.finish(position);
                continue;
            };
            let key = keys[sequence];
            if let Some(previous) = last_seen_by_key.insert(key, sequence) {
                prop_assert!(previous < sequence, "key {} out of order", key);
            }
            finished[sequence] = true;
            progress.finish(position);
            if let Some(moved) = progress.advance() {
                prop_assert!(checkpoint.is_none_or(|c| moved > c), "checkpoint moved back");
                prop_assert!(finished[..=moved].iter().all(|f| *f));
                checkpoint = Some(moved);
            }
        }
        if let Some(moved) = progress.advance() {
            checkpoint = Some(moved);
        }
        prop_assert_eq!(checkpoint, Some(keys.len() - 1));
    }
}
