//! Lambda's stream semantics (DynamoDB Streams, Kinesis, Kafka partitions) as a state machine per
//! batch, plus the lane and checkpoint bookkeeping of a shard (semantics.md §2 and §12).
//!
//! A [`StreamBatch`] holds the records of one batch of one lane, in order. The caller asks it for
//! the next [`Step`] (invoke these records, wait until then, dead-letter these, or done), performs
//! it, and reports back. It guarantees:
//!
//! - **order**: an invocation always starts at the oldest record that is not yet done, so a failing
//!   record blocks everything after it in its lane;
//! - **retries**: a failed invocation is retried after `backoff` until it succeeds, uses up
//!   `max_retry_attempts` (retries after the first attempt; `None` is unlimited) or a record is
//!   older than `max_record_age`; throttles and an unreachable target never use an attempt;
//! - **bisect**: with `bisect_on_error`, a whole-batch failure of more than one record halves the
//!   records, first half first; the halves keep the parent's attempt count and splitting uses none,
//!   so a single poison record ends up dead-lettered alone;
//! - **partial responses**: with `report_batch_item_failures`, the records before the lowest
//!   reported one are done; the rest is retried as a new batch whose attempt count restarts (as
//!   observed on AWS); a report naming the first record is a failure of the whole rest; an invalid
//!   response fails the whole batch;
//! - **record age**: records older than `max_record_age` are split out before an invocation and
//!   dead-lettered with `RecordAgeExceeded`; the others are still delivered;
//! - **error classes**: with `non_retryable` set, a failure whose error is non-retryable goes to
//!   `on_failure` at once as `NonRetryableError`: the reported record alone for a partial response
//!   (the rest goes on), the whole records of a failed invocation otherwise (bisect, when on,
//!   first narrows them down, as for any failure);
//! - **exactly once to an end**: every record ends either done or dead-lettered, once.
//!
//! [`lane_of`] spreads records over `parallelization_factor` lanes by their key, and
//! [`ShardProgress`] turns completions in any lane into the shard checkpoint: the newest sequence
//! number below which every record is done. It never moves backwards.

use crate::backoff::Backoff;
use crate::outcome::{ErrorClasses, ErrorInfo, Outcome};
use crate::queue::{DeadLetterCondition, PARTIAL_FAILURE_ERROR_TYPE};
use crate::response::{IdentifierKind, ItemIdentifier, ResponseError, parse_batch_item_failures};
use std::collections::VecDeque;
use std::time::Duration;

/// The stream policy of one mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPolicy {
    pub report_batch_item_failures: bool,
    pub bisect_on_error: bool,
    /// Retries after the first attempt; `None` retries until the records are too old (AWS's -1).
    pub max_retry_attempts: Option<u32>,
    /// `None` never expires a record (AWS's -1).
    pub max_record_age: Option<Duration>,
    pub backoff: Backoff,
    /// How handlers name records in `batchItemFailures`.
    pub identifier_kind: IdentifierKind,
    /// Errors dead-lettered at once; `None` when the mapping has no on-failure destination.
    pub non_retryable: Option<ErrorClasses>,
}

/// What the policy knows about one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItem {
    /// How a partial response names it: the sequence number, or the Kafka partition and offset.
    pub identifier: ItemIdentifier,
    /// When the record reached the stream, since the Unix epoch.
    pub arrived_at: Duration,
}

/// Records that go to the on-failure destination together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDeadLetter {
    /// Indexes into the batch, ascending.
    pub records: Vec<usize>,
    pub condition: DeadLetterCondition,
    /// Lambda's `approximateInvokeCount`: invocations that included these records (1 when they
    /// were too old before any).
    pub invoke_count: u32,
    /// The last error; `None` for records that were never invoked.
    pub error: Option<ErrorInfo>,
    /// Whether the function threw (`"Unhandled"`), rather than returned a response that failed
    /// the records. `false` with no error means there is no response at all (`RecordAgeExceeded`).
    pub function_error: bool,
}

/// What the caller does next for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Invoke the target with these records (indexes into the batch, ascending). `attempt` counts
    /// the invocations of these records so far, this one included.
    Invoke { records: Vec<usize>, attempt: u32 },
    /// Nothing to do before this time (since the Unix epoch): a retry is backing off.
    Wait { until: Duration },
    /// Send these to `on_failure`, then call [`StreamBatch::dead_lettered`].
    DeadLetter(StreamDeadLetter),
    /// Every record is done or dead-lettered.
    Done,
}

/// What one invocation did to the batch, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Every invoked record is done.
    Succeeded,
    /// A partial response: `done` records before the lowest failure are done, the rest retried.
    Partial { done: usize, failed: usize },
    /// The invocation failed as a whole and will be retried (after a delay, or split in two).
    Failed { error: ErrorInfo, split: bool },
    /// The handler did not run; retried after a delay, no attempt used.
    NotRun { error: ErrorInfo },
}

#[derive(Debug, Clone)]
struct Segment {
    records: Vec<usize>,
    /// Failed invocations that count against `max_retry_attempts`.
    failures: u32,
    /// Invocations that included these records (`approximateInvokeCount`).
    invocations: u32,
    /// Consecutive invocations the handler did not get to run, for their backoff.
    not_run: u32,
    not_before: Option<Duration>,
    last_error: Option<ErrorInfo>,
    function_error: bool,
    /// Its last error is one retrying cannot fix: dead-letter it next.
    non_retryable: bool,
}

impl Segment {
    fn fresh(records: Vec<usize>) -> Self {
        Self {
            records,
            failures: 0,
            invocations: 0,
            not_run: 0,
            not_before: None,
            last_error: None,
            function_error: false,
            non_retryable: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Done,
    DeadLettered,
}

/// One batch of one lane under the stream policy.
#[derive(Debug, Clone)]
pub struct StreamBatch {
    policy: StreamPolicy,
    items: Vec<StreamItem>,
    states: Vec<State>,
    /// Work still to do, front first. Segments are disjoint and ordered by their first record.
    segments: VecDeque<Segment>,
    /// The segment whose invocation or dead letter is outstanding.
    outstanding: Option<Outstanding>,
}

#[derive(Debug, Clone)]
enum Outstanding {
    Invocation(Segment),
    DeadLetter(StreamDeadLetter),
}

/// Why a step could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("no invocation is outstanding")]
    NoInvocation,
    #[error("no dead letter is outstanding")]
    NoDeadLetter,
}

impl StreamBatch {
    pub fn new(policy: StreamPolicy, items: Vec<StreamItem>) -> Self {
        let states = vec![State::Pending; items.len()];
        let mut segments = VecDeque::new();
        if !items.is_empty() {
            segments.push_back(Segment::fresh((0..items.len()).collect()));
        }
        Self {
            policy,
            items,
            states,
            segments,
            outstanding: None,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// What to do next at time `now` (since the Unix epoch). Calling it again before reporting an
    /// outstanding invocation or dead letter returns the same step.
    pub fn next_step(&mut self, now: Duration) -> Step {
        match &self.outstanding {
            Some(Outstanding::Invocation(segment)) => {
                return Step::Invoke {
                    records: segment.records.clone(),
                    attempt: segment.invocations + 1,
                };
            }
            Some(Outstanding::DeadLetter(dead_letter)) => {
                return Step::DeadLetter(dead_letter.clone());
            }
            None => {}
        }
        let Some(mut segment) = self.segments.pop_front() else {
            return Step::Done;
        };
        let exhausted = self
            .policy
            .max_retry_attempts
            .is_some_and(|max| segment.failures > max);
        if segment.non_retryable || exhausted {
            let dead_letter = StreamDeadLetter {
                records: segment.records,
                condition: if segment.non_retryable {
                    DeadLetterCondition::NonRetryableError
                } else {
                    DeadLetterCondition::RetryAttemptsExhausted
                },
                invoke_count: segment.invocations,
                error: segment.last_error,
                function_error: segment.function_error,
            };
            self.outstanding = Some(Outstanding::DeadLetter(dead_letter.clone()));
            return Step::DeadLetter(dead_letter);
        }
        if let Some(max_age) = self.policy.max_record_age {
            let (stale, fresh): (Vec<usize>, Vec<usize>) = segment
                .records
                .iter()
                .partition(|&&index| now.saturating_sub(self.items[index].arrived_at) > max_age);
            if !stale.is_empty() {
                let dead_letter = StreamDeadLetter {
                    records: stale,
                    condition: DeadLetterCondition::RecordAgeExceeded,
                    invoke_count: segment.invocations.max(1),
                    error: segment.last_error.clone(),
                    function_error: false,
                };
                if !fresh.is_empty() {
                    segment.records = fresh;
                    self.segments.push_front(segment);
                }
                self.outstanding = Some(Outstanding::DeadLetter(dead_letter.clone()));
                return Step::DeadLetter(dead_letter);
            }
        }
        if let Some(until) = segment.not_before
            && until > now
        {
            self.segments.push_front(segment);
            return Step::Wait { until };
        }
        let step = Step::Invoke {
            records: segment.records.clone(),
            attempt: segment.invocations + 1,
        };
        self.outstanding = Some(Outstanding::Invocation(segment));
        step
    }

    /// Confirms that the outstanding dead letter was stored; its records are finished.
    pub fn dead_lettered(&mut self) -> Result<(), StepError> {
        match self.outstanding.take() {
            Some(Outstanding::DeadLetter(dead_letter)) => {
                for index in dead_letter.records {
                    self.states[index] = State::DeadLettered;
                }
                Ok(())
            }
            other => {
                self.outstanding = other;
                Err(StepError::NoDeadLetter)
            }
        }
    }

    /// Reports the outcome of the outstanding invocation at time `now`. `unit_random` in `[0, 1)`
    /// feeds backoff jitter.
    pub fn apply(
        &mut self,
        outcome: &Outcome,
        now: Duration,
        unit_random: f64,
    ) -> Result<Applied, StepError> {
        let mut segment = match self.outstanding.take() {
            Some(Outstanding::Invocation(segment)) => segment,
            other => {
                self.outstanding = other;
                return Err(StepError::NoInvocation);
            }
        };
        segment.invocations += 1;
        if outcome.handler_did_not_run() {
            let error = outcome
                .error()
                .expect("a handler that did not run is an error");
            segment.not_run += 1;
            segment.not_before =
                Some(now + self.policy.backoff.delay(segment.not_run, unit_random));
            segment.last_error = Some(error.clone());
            self.segments.push_front(segment);
            return Ok(Applied::NotRun { error });
        }
        segment.not_run = 0;
        let failure = match self.failed_from(outcome, &segment) {
            Ok(None) => {
                for &index in &segment.records {
                    self.states[index] = State::Done;
                }
                return Ok(Applied::Succeeded);
            }
            Ok(Some((position, error))) if self.is_non_retryable(&error) => {
                // The reported record goes to on_failure alone; the records before it are done
                // and the ones after it are a new batch.
                let mut rest = segment.records.split_off(position);
                for &index in &segment.records {
                    self.states[index] = State::Done;
                }
                let after = rest.split_off(1);
                let failed = rest.len() + after.len();
                if !after.is_empty() {
                    self.segments.push_front(Segment::fresh(after));
                }
                let mut poisoned = Segment::fresh(rest);
                poisoned.invocations = segment.invocations;
                poisoned.last_error = Some(error);
                poisoned.non_retryable = true;
                self.segments.push_front(poisoned);
                return Ok(Applied::Partial {
                    done: position,
                    failed,
                });
            }
            Ok(Some((position, error))) if position > 0 => {
                // The checkpoint moves to the lowest reported record; what follows is a new batch.
                let rest = segment.records.split_off(position);
                for &index in &segment.records {
                    self.states[index] = State::Done;
                }
                let failed = rest.len();
                let mut next = Segment::fresh(rest);
                next.last_error = Some(error);
                self.segments.push_front(next);
                return Ok(Applied::Partial {
                    done: position,
                    failed,
                });
            }
            Ok(Some((_, error))) => Failure {
                error,
                function_error: false,
                may_split: false,
            },
            Err(failure) => failure,
        };
        segment.last_error = Some(failure.error.clone());
        segment.function_error = failure.function_error;
        if failure.may_split && self.policy.bisect_on_error && segment.records.len() > 1 {
            let second = segment.records.split_off(segment.records.len().div_ceil(2));
            let mut second_half = segment.clone();
            second_half.records = second;
            segment.not_before = None;
            second_half.not_before = None;
            self.segments.push_front(second_half);
            self.segments.push_front(segment);
            return Ok(Applied::Failed {
                error: failure.error,
                split: true,
            });
        }
        segment.failures += 1;
        if self.is_non_retryable(&failure.error) {
            segment.non_retryable = true;
            segment.not_before = None;
        } else {
            segment.not_before =
                Some(now + self.policy.backoff.delay(segment.failures, unit_random));
        }
        self.segments.push_front(segment);
        Ok(Applied::Failed {
            error: failure.error,
            split: false,
        })
    }

    fn is_non_retryable(&self, error: &ErrorInfo) -> bool {
        self.policy
            .non_retryable
            .as_ref()
            .is_some_and(|classes| classes.is_non_retryable(error))
    }

    /// How many records from the start of the batch are finished (done or dead-lettered): the
    /// lane may checkpoint through them.
    pub fn finished_prefix(&self) -> usize {
        self.states
            .iter()
            .take_while(|s| **s != State::Pending)
            .count()
    }

    /// Whether the record at `index` is finished.
    pub fn is_finished(&self, index: usize) -> bool {
        self.states[index] != State::Pending
    }

    pub fn items(&self) -> &[StreamItem] {
        &self.items
    }

    /// Which record failed first in a response, or why the whole invocation failed.
    fn failed_from(
        &self,
        outcome: &Outcome,
        segment: &Segment,
    ) -> Result<Option<(usize, ErrorInfo)>, Failure> {
        let response = match outcome {
            Outcome::Returned { response } => response.as_ref(),
            Outcome::ReturnedNonJson { body } => {
                if !self.policy.report_batch_item_failures {
                    return Ok(None);
                }
                return Err(Failure::invalid(ResponseError::NotJson {
                    body_prefix: crate::outcome::text_prefix(body),
                }));
            }
            failed => {
                return Err(Failure {
                    error: failed.error().expect("a failed outcome has an error"),
                    function_error: true,
                    may_split: true,
                });
            }
        };
        if !self.policy.report_batch_item_failures {
            return Ok(None);
        }
        let is_known = |identifier: &ItemIdentifier| {
            segment
                .records
                .iter()
                .any(|&index| self.items[index].identifier == *identifier)
        };
        let failures = parse_batch_item_failures(response, self.policy.identifier_kind, is_known)
            .map_err(Failure::invalid)?;
        let lowest = segment
            .records
            .iter()
            .enumerate()
            .find_map(|(position, &index)| {
                failures
                    .get(&self.items[index].identifier)
                    .map(|error| (position, error.clone()))
            });
        Ok(lowest.map(|(position, error)| {
            let error = error.unwrap_or_else(|| {
                ErrorInfo::new(
                    PARTIAL_FAILURE_ERROR_TYPE,
                    "the handler reported this record in batchItemFailures",
                )
            });
            (position, error)
        }))
    }
}

struct Failure {
    error: ErrorInfo,
    function_error: bool,
    /// Whole-batch failures may be bisected; a partial response is cut instead.
    may_split: bool,
}

impl Failure {
    fn invalid(error: ResponseError) -> Self {
        Self {
            error: ErrorInfo::new(ResponseError::ERROR_TYPE, error.to_string()),
            function_error: false,
            may_split: true,
        }
    }
}

/// The lane (0..`lanes`) of a record with this key: a stable hash (FNV-1a), so one key always
/// lands in the same lane and keeps its order.
pub fn lane_of(key: &[u8], lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % lanes as u64) as usize
}

/// The position of a record in its shard's read order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(u64);

/// A shard's records in read order and which are finished; the checkpoint is the newest record
/// before which nothing is pending.
#[derive(Debug, Clone)]
pub struct ShardProgress<S> {
    /// Position of the front of `pending`.
    base: u64,
    pending: VecDeque<(S, bool)>,
}

impl<S: Clone> Default for ShardProgress<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone> ShardProgress<S> {
    pub fn new() -> Self {
        Self {
            base: 0,
            pending: VecDeque::new(),
        }
    }

    /// Registers the next record read from the shard.
    pub fn push(&mut self, sequence: S) -> Position {
        let position = Position(self.base + self.pending.len() as u64);
        self.pending.push_back((sequence, false));
        position
    }

    /// Marks a record finished (handled, filtered or dead-lettered). Unknown or already
    /// checkpointed positions are ignored.
    pub fn finish(&mut self, position: Position) {
        if let Some(offset) = position.0.checked_sub(self.base)
            && let Some(entry) = self.pending.get_mut(offset as usize)
        {
            entry.1 = true;
        }
    }

    /// Forgets the finished records at the front and returns the newest of them: the sequence the
    /// shard may checkpoint at now. `None` when the checkpoint does not move.
    pub fn advance(&mut self) -> Option<S> {
        let mut newest = None;
        while let Some((_, true)) = self.pending.front() {
            let (sequence, _) = self.pending.pop_front().expect("front exists");
            self.base += 1;
            newest = Some(sequence);
        }
        newest
    }

    /// Records registered and not yet checkpointed.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests;
