//! One ordered lane of a stream source (a DynamoDB shard lane, a Kafka partition): gathers
//! records into batches and runs each batch to its end under the stream policy.
//!
//! Guarantees:
//! - records reach the target in the order they entered the lane, and a failing batch blocks
//!   the lane until it is handled or dead-lettered;
//! - a record is reported finished to its host only once it is handled, or dead-lettered with
//!   the destination's confirmation (a failing destination is retried, never skipped); the host
//!   decides what finished means (a checkpoint, a Kafka offset);
//! - on `stop`, a batch waiting out a retry delay is given up unfinished (delivered again after
//!   the restart); on `abort`, the lane stops at once.

use super::invoker::Invoker;
use super::ordered::{Control, Driven, Ended, drive};
use super::retry::retry_delay;
use super::window::{self, Span, WindowCursor, Windows};
use crate::destinations::envelope::now_since_epoch;
use crate::destinations::{DeadLetter, Destination, EnvelopeSource};
use crate::health::MappingHealthHandle;
use crate::targets::Invocation;
use crate::telemetry::MappingMetrics;
use async_trait::async_trait;
use sluice_policies::batcher::PushResult;
use sluice_policies::{
    Applied, BatchLimits, Batcher, DeadLetterCondition, ErrorInfo, ItemIdentifier, Outcome,
    StreamBatch, StreamDeadLetter, StreamItem, StreamPolicy, stream::Position,
};
use sluice_sources::Record;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A record and its place in the host's progress.
pub(super) type Entry = (Record, Position);

/// What every lane of a mapping shares.
pub(super) struct LaneSettings {
    pub name: String,
    pub invoker: Invoker,
    pub policy: StreamPolicy,
    pub limits: BatchLimits,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
    /// Where records the policy gives up on go; `None` drops them (logged), as Lambda does.
    pub on_failure: Option<Arc<dyn Destination>>,
    /// Named in dead letters (`functionArn`).
    pub region: String,
}

/// The source side of a lane: how its records become an event, and what finishing them means.
#[async_trait]
pub(super) trait LaneHost: Send + Sync + 'static {
    fn settings(&self) -> &LaneSettings;

    /// The invocation event for these records, in order.
    fn event(&self, records: &[&Record]) -> Vec<u8>;

    /// How a partial batch response names this record.
    fn identifier(&self, record: &Record) -> ItemIdentifier;

    /// The shard or partition the lane reads, for logs and dead-letter placement.
    fn unit(&self) -> &str;

    /// Where dead-lettered `records` (in order) came from, for their envelope.
    fn envelope_source(&self, records: &[&Record]) -> EnvelopeSource;

    /// These records are done; the host moves its checkpoint (without waiting for the write).
    fn finished(self: Arc<Self>, positions: Vec<Position>);

    /// The lane took `record` off its input (a host that bounds what is queued counts it out).
    fn received(&self, _record: &Record) {}

    /// The shard's tumbling windows, when the mapping has them (then the shard is one lane).
    fn windows(&self) -> Option<&Windows> {
        None
    }

    /// What becomes of a record taken off the input before it is batched (a Kafka value
    /// decoded with its schema, say). Records are prepared one at a time, in order.
    async fn prepare(&self, record: Record) -> Prepared {
        Prepared::Ready(record)
    }
}

/// A record as [`LaneHost::prepare`] leaves it.
#[derive(Debug)]
pub(super) enum Prepared {
    /// Batch it.
    Ready(Record),
    /// The mapping's filters leave it out: it is finished at once.
    Skipped,
    /// It can never be invoked: it is dead-lettered alone, with this error, as non-retryable.
    Unusable(Record, ErrorInfo),
    /// Something it needs cannot answer now: it is prepared again after a backoff (the lane
    /// waits, in order, and shows as stuck meanwhile).
    Retry(Record, String),
}

/// What a lane runs next, in order.
enum Work {
    /// A batch, in its tumbling window when the mapping has them.
    Batch(Vec<Entry>, Option<Span>),
    /// A record [`LaneHost::prepare`] found unusable: dead-lettered, never invoked.
    Unusable(Box<(Entry, ErrorInfo)>),
    /// The final invocation of the window open before the next batch.
    CloseWindow,
}

/// Where a lane's records come from: a bounded channel (a stream shard: its reader waits for
/// room), or an unbounded one whose host bounds the bytes queued itself (a Kafka partition is
/// paused at the broker instead, so nothing waits outside the lane).
pub(super) trait LaneInput: Send + 'static {
    fn try_recv(&mut self) -> Result<Entry, mpsc::error::TryRecvError>;
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Entry>> + Send;
}

impl LaneInput for mpsc::Receiver<Entry> {
    fn try_recv(&mut self) -> Result<Entry, mpsc::error::TryRecvError> {
        mpsc::Receiver::try_recv(self)
    }
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Entry>> + Send {
        mpsc::Receiver::recv(self)
    }
}

impl LaneInput for mpsc::UnboundedReceiver<Entry> {
    fn try_recv(&mut self) -> Result<Entry, mpsc::error::TryRecvError> {
        mpsc::UnboundedReceiver::try_recv(self)
    }
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Entry>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
}

/// Gathers batches from `receiver` and runs each to its end, until the sender closes (then the
/// last partial batch is run, and the window open is closed), `stop` or `abort`.
pub(super) async fn run_lane<H: LaneHost>(
    host: Arc<H>,
    lane: String,
    mut receiver: impl LaneInput,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    // Tokio's clock, so that a paused test clock drives the batching window.
    let started = tokio::time::Instant::now();
    let clock = || started.elapsed();
    let mut g = Gather {
        batcher: Batcher::new(host.settings().limits),
        ready: VecDeque::new(),
        windows: host
            .windows()
            .map(|windows| WindowCursor::new(windows.length, windows.restored())),
        held: None,
    };
    let lanes = Stops {
        lane: &lane,
        stop: &stop,
        abort: &abort,
    };
    // The input ended: run what is ready, then return.
    let mut ended = false;
    loop {
        let work = loop {
            if stop.is_cancelled() || abort.is_cancelled() {
                return;
            }
            if let Some(work) = g.ready.pop_front() {
                break work;
            }
            // A record that could not be prepared goes before anything after it, once the
            // records before it were run.
            if let Some(held) = g.held.take() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = abort.cancelled() => return,
                    _ = tokio::time::sleep(retry_delay(held.failures)) => {}
                }
                if !g
                    .prepare(
                        &host,
                        &lanes,
                        held.entry,
                        Some((held.failures, held.since)),
                        clock(),
                    )
                    .await
                {
                    return;
                }
                continue;
            }
            if ended {
                return;
            }
            // Read before looking at the input: records sent before the reader moved the mark
            // are in the input by then.
            let caught_up_ms = host.windows().map(Windows::caught_up_ms);
            match receiver.try_recv() {
                Ok(entry) => {
                    host.received(&entry.0);
                    if !g.prepare(&host, &lanes, entry, None, clock()).await {
                        return;
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    end_window(&mut g.batcher, &mut g.ready, &mut g.windows);
                    ended = true;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if let Some(batch) = g.batcher.poll(clock()) {
                let span = g.windows.as_ref().and_then(|w| w.current);
                g.ready.push_back(Work::Batch(batch, span));
                continue;
            }
            // Every record of the window was read and taken: it closes.
            let window_end = g.windows.as_ref().and_then(|w| w.current).map(|c| c.end_ms);
            if let (Some(end_ms), Some(caught_up_ms)) = (window_end, caught_up_ms)
                && caught_up_ms >= end_ms
            {
                end_window(&mut g.batcher, &mut g.ready, &mut g.windows);
                continue;
            }
            let batch_wait = g.batcher.deadline().map(|d| d.saturating_sub(clock()));
            // Until the window's end, then while the reader catches up past it.
            let window_wait = window_end.map(|end_ms| {
                let now_ms = now_since_epoch().as_millis() as u64;
                Duration::from_millis(end_ms.saturating_sub(now_ms)).max(WINDOW_END_POLL)
            });
            let wait = match (batch_wait, window_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                _ = abort.cancelled() => return,
                received = receiver.recv() => received,
                _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => continue,
            };
            match received {
                Some(entry) => {
                    host.received(&entry.0);
                    if !g.prepare(&host, &lanes, entry, None, clock()).await {
                        return;
                    }
                }
                None => {
                    end_window(&mut g.batcher, &mut g.ready, &mut g.windows);
                    ended = true;
                }
            }
        };
        match work {
            Work::Batch(batch, span) => {
                if let (Some(windows), Some(span)) = (host.windows(), span) {
                    windows.begin(span);
                }
                tokio::select! {
                    _ = abort.cancelled() => return,
                    _ = handle_batch(&host, &lane, batch, &stop) => {}
                }
                // A state over the limit ends the window early, before anything is stored.
                if host.windows().is_some_and(Windows::oversized)
                    && !close_window(&host, &lane, true, &stop, &abort).await
                {
                    return;
                }
            }
            Work::CloseWindow => {
                if !close_window(&host, &lane, false, &stop, &abort).await {
                    return;
                }
            }
            Work::Unusable(unusable) => {
                let (entry, error) = *unusable;
                tokio::select! {
                    _ = abort.cancelled() => return,
                    _ = dead_letter_alone(&host, entry, DeadLetterCondition::NonRetryableError, error) => {}
                }
            }
        }
    }
}

/// How often a lane whose window has ended looks whether the reader caught up past its end.
const WINDOW_END_POLL: Duration = Duration::from_millis(200);

/// Queues the window's last records and its final invocation (without windows: the last
/// records).
fn end_window(
    batcher: &mut Batcher<Entry>,
    ready: &mut VecDeque<Work>,
    windows: &mut Option<WindowCursor>,
) {
    let span = windows.as_ref().and_then(|w| w.current);
    if let Some(batch) = batcher.take() {
        ready.push_back(Work::Batch(batch, span));
    }
    if let Some(cursor) = windows
        && cursor.close().is_some()
    {
        ready.push_back(Work::CloseWindow);
    }
}

/// Runs the open window's final invocation (see [`window::close`]) and stores that it is done;
/// false when the lane must stop.
async fn close_window<H: LaneHost>(
    host: &Arc<H>,
    lane: &str,
    terminated_early: bool,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> bool {
    let Some(windows) = host.windows() else {
        return true;
    };
    let settings = host.settings();
    let closing = window::Closing {
        mapping: &settings.name,
        lane,
        invoker: &settings.invoker,
        health: &settings.health,
        metrics: &settings.metrics,
    };
    if stop.is_cancelled() {
        return false;
    }
    let closed = tokio::select! {
        _ = abort.cancelled() => return false,
        closed = window::close(windows, closing, terminated_early, stop) => closed,
    };
    if closed {
        // Nothing finished, but the window's end must be stored with the checkpoint.
        host.clone().finished(Vec::new());
    }
    closed
}

/// What a lane holds between its input and its work.
struct Gather {
    batcher: Batcher<Entry>,
    ready: VecDeque<Work>,
    windows: Option<WindowCursor>,
    /// A record its host could not prepare yet: nothing after it is taken until it is.
    held: Option<Held>,
}

/// A record waiting to be prepared again.
struct Held {
    entry: Entry,
    /// Failed preparations so far.
    failures: u32,
    /// Since when it has been failing (the lane shows as stuck from then).
    since: Instant,
}

/// The lane's name and its stop signals.
struct Stops<'a> {
    lane: &'a str,
    stop: &'a CancellationToken,
    abort: &'a CancellationToken,
}

impl Gather {
    /// Prepares a record taken off the input (or held, after `failed` preparations since a
    /// time) and puts it where it goes: the batcher, finished (filtered out), a dead letter
    /// queued after the records before it, or held to be prepared again after the backoff — the
    /// records before it are queued to run meanwhile. False when the lane must stop while the
    /// record is being prepared (it is not finished, so it is read again after the restart).
    async fn prepare<H: LaneHost>(
        &mut self,
        host: &Arc<H>,
        lanes: &Stops<'_>,
        (record, position): Entry,
        failed: Option<(u32, Instant)>,
        now: Duration,
    ) -> bool {
        let settings = host.settings();
        let started_preparing = tokio::time::Instant::now();
        let prepared = tokio::select! {
            _ = lanes.stop.cancelled() => return false,
            _ = lanes.abort.cancelled() => return false,
            prepared = host.prepare(record) => prepared,
        };
        // The batching window opens when the record is ready, not when it was taken (a schema
        // fetch can take seconds).
        let now = now + started_preparing.elapsed();
        if failed.is_some() && !matches!(prepared, Prepared::Retry(..)) {
            settings.health.stuck(lanes.lane, None);
        }
        match prepared {
            Prepared::Ready(record) => push(
                &mut self.batcher,
                &mut self.ready,
                &mut self.windows,
                (record, position),
                now,
            ),
            Prepared::Skipped => {
                settings.metrics.filtered(1);
                settings.metrics.checkpointed(1);
                host.clone().finished(vec![position]);
            }
            Prepared::Unusable(record, error) => {
                self.flush();
                self.ready
                    .push_back(Work::Unusable(Box::new(((record, position), error))));
            }
            Prepared::Retry(record, reason) => {
                let (failures, since) = failed.unwrap_or((0, Instant::now()));
                let failures = failures + 1;
                settings.health.stuck(lanes.lane, Some(since));
                settings.metrics.poll_errors.increment(1);
                tracing::warn!(mapping = %settings.name, lane = %lanes.lane, record = %record.id(), error = %reason, consecutive_failures = failures, "record cannot be prepared yet; the lane waits for it");
                self.flush();
                self.held = Some(Held {
                    entry: (record, position),
                    failures,
                    since,
                });
            }
        }
        true
    }

    /// Queues the open batch to run now.
    fn flush(&mut self) {
        let span = self.windows.as_ref().and_then(|w| w.current);
        if let Some(batch) = self.batcher.take() {
            self.ready.push_back(Work::Batch(batch, span));
        }
    }
}

/// Adds a prepared record to its batcher; a record too large for any invocation becomes a batch
/// of its own, which `handle_batch` dead-letters.
fn push(
    batcher: &mut Batcher<Entry>,
    ready: &mut VecDeque<Work>,
    windows: &mut Option<WindowCursor>,
    entry: Entry,
    now: Duration,
) {
    // The first record of a later window closes the open one: its records go first.
    let span = windows.as_mut().map(|cursor| {
        let before = cursor.current;
        let (span, closed) = cursor.place(entry.0.arrived_at.as_millis() as u64);
        if closed.is_some() {
            if let Some(batch) = batcher.take() {
                ready.push_back(Work::Batch(batch, before));
            }
            ready.push_back(Work::CloseWindow);
        }
        span
    });
    let size = entry.0.size_bytes;
    let PushResult {
        ready: complete,
        too_large,
    } = batcher.push(entry, size, now);
    ready.extend(complete.into_iter().map(|batch| Work::Batch(batch, span)));
    if let Some(entry) = too_large {
        ready.push_back(Work::Batch(vec![entry], span));
    }
}

/// Dead-letters one record that is never invoked (too large, unusable), then finishes it.
async fn dead_letter_alone<H: LaneHost>(
    host: &Arc<H>,
    (record, position): Entry,
    condition: DeadLetterCondition,
    error: ErrorInfo,
) {
    let dead_letter = StreamDeadLetter {
        records: vec![0],
        condition,
        invoke_count: 0,
        error: Some(error),
        function_error: false,
    };
    store_dead_letter(host.as_ref(), &[&record], &dead_letter).await;
    host.settings().metrics.checkpointed(1);
    host.clone().finished(vec![position]);
}

fn outcome_label(outcome: &Outcome, applied: &Applied) -> &'static str {
    match (outcome, applied) {
        (_, Applied::Succeeded) => "success",
        (_, Applied::Partial { .. }) => "partial_failure",
        (
            Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. },
            Applied::Failed { error, .. },
        ) if error.error_type == sluice_policies::ResponseError::ERROR_TYPE => "invalid_response",
        (Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. }, _) => "partial_failure",
        (failed, _) => failed.kind(),
    }
}

/// Runs one batch until every record is handled or dead-lettered. On `stop`, a batch waiting out
/// a retry delay is given up: its unfinished records are not reported finished, so they are
/// delivered again after the restart, and the stop is not held up by the backoff.
async fn handle_batch<H: LaneHost>(
    host: &Arc<H>,
    lane: &str,
    batch: Vec<Entry>,
    stop: &CancellationToken,
) {
    let settings = host.settings();
    if batch.len() == 1 && batch[0].0.size_bytes > sluice_policies::MAX_INVOCATION_PAYLOAD_BYTES {
        let error = ErrorInfo::new(
            "PayloadTooLarge",
            format!(
                "the record is {} bytes; an invocation holds at most 6 MB",
                batch[0].0.size_bytes
            ),
        );
        let entry = batch.into_iter().next().expect("one record");
        dead_letter_alone(host, entry, DeadLetterCondition::PayloadTooLarge, error).await;
        return;
    }
    let records: Vec<&Record> = batch.iter().map(|(record, _)| record).collect();
    let items = records
        .iter()
        .map(|record| StreamItem {
            identifier: host.identifier(record),
            arrived_at: record.arrived_at,
        })
        .collect();
    let mut state = StreamBatch::new(settings.policy.clone(), items);
    let mut driven = LaneBatch {
        host,
        lane,
        records,
        batch: &batch,
        reported: vec![false; batch.len()],
        failing_since: None,
    };
    let ended = drive(&settings.invoker, &mut state, &mut driven, stop).await;
    if ended == Ended::Stopped {
        tracing::info!(mapping = %settings.name, %lane, "stopping during a retry delay; the batch is delivered again after the restart");
    }
    if driven.failing_since.is_some() || ended == Ended::Stopped {
        settings.health.stuck(lane, None);
    }
}

/// One batch of a lane, as the ordered-batch driver sees it.
struct LaneBatch<'a, H: LaneHost> {
    host: &'a Arc<H>,
    lane: &'a str,
    records: Vec<&'a Record>,
    batch: &'a [Entry],
    reported: Vec<bool>,
    /// Since when the batch has been failing, for `/readyz`.
    failing_since: Option<Instant>,
}

#[async_trait]
impl<H: LaneHost> Driven for LaneBatch<'_, H> {
    fn check(&mut self, outcome: Outcome) -> Outcome {
        match self.host.windows() {
            Some(windows) => windows.check(outcome),
            None => outcome,
        }
    }

    fn invocation(&self, chosen: &[usize]) -> Invocation {
        let subset: Vec<&Record> = chosen.iter().map(|&i| self.records[i]).collect();
        Invocation::for_records(
            &self.host.settings().name,
            self.host.event(&subset),
            subset.iter().copied(),
        )
    }

    fn invoked(
        &mut self,
        invocation: &Invocation,
        outcome: &Outcome,
        chosen: &[usize],
        attempt: u32,
        applied: Applied,
    ) -> Control {
        let settings = self.host.settings();
        let lane = self.lane;
        if let Some(windows) = self.host.windows() {
            windows.judged(matches!(
                applied,
                Applied::Succeeded | Applied::Partial { .. }
            ));
        }
        let failed = match &applied {
            Applied::Succeeded => 0,
            Applied::Partial { failed, .. } => *failed,
            Applied::Failed { .. } | Applied::NotRun { .. } => chosen.len(),
        };
        settings.metrics.invoked(
            outcome_label(outcome, &applied),
            chosen.len() as u64,
            failed as u64,
        );
        let first = self.records[chosen[0]].id();
        let last = self.records[chosen[chosen.len() - 1]].id();
        match applied {
            Applied::Succeeded | Applied::Partial { .. } => {
                if self.failing_since.take().is_some() {
                    settings.health.stuck(lane, None);
                }
                if let Applied::Partial { failed, .. } = applied {
                    settings.metrics.records_retried.increment(failed as u64);
                    tracing::info!(mapping = %settings.name, %lane, request_id = %invocation.request_id, first_record = %first, failed, "partial batch failure; retrying from the lowest failed record");
                }
            }
            Applied::Failed { error, split } => {
                self.failing_since.get_or_insert_with(Instant::now);
                settings.health.stuck(lane, self.failing_since);
                settings
                    .metrics
                    .records_retried
                    .increment(chosen.len() as u64);
                tracing::warn!(mapping = %settings.name, %lane, request_id = %invocation.request_id, first_record = %first, last_record = %last, records = chosen.len(), attempt, error_type = %error.error_type, error = %error.message, bisect = split, "batch failed");
            }
            Applied::NotRun { error } => {
                self.failing_since.get_or_insert_with(Instant::now);
                settings.health.stuck(lane, self.failing_since);
                tracing::warn!(mapping = %settings.name, %lane, request_id = %invocation.request_id, first_record = %first, error_type = %error.error_type, error = %error.message, "target did not run the batch; retrying without using an attempt");
            }
        }
        Control::Continue
    }

    async fn dead_letter(&mut self, dead_letter: &StreamDeadLetter) {
        store_dead_letter(self.host.as_ref(), &self.records, dead_letter).await;
    }

    fn progress(&mut self, state: &StreamBatch) {
        report_finished(self.host, state, self.batch, &mut self.reported);
    }
}

/// Reports records that became finished since the last report.
fn report_finished<H: LaneHost>(
    host: &Arc<H>,
    state: &StreamBatch,
    batch: &[Entry],
    reported: &mut [bool],
) {
    let mut positions = Vec::new();
    for (index, (_, position)) in batch.iter().enumerate() {
        if !reported[index] && state.is_finished(index) {
            reported[index] = true;
            positions.push(*position);
        }
    }
    if positions.is_empty() {
        return;
    }
    let metrics = &host.settings().metrics;
    metrics.acknowledged(positions.len() as u64);
    metrics.checkpointed(positions.len() as u64);
    host.clone().finished(positions);
}

/// Sends the records of `batch` that `dead_letter` names to the mapping's destination inside
/// the envelope, retrying until it is stored: a record is never skipped because its dead letter
/// could not be written. Without a destination the records are logged and dropped.
async fn store_dead_letter<H: LaneHost>(
    host: &H,
    batch: &[&Record],
    dead_letter: &StreamDeadLetter,
) {
    let settings = host.settings();
    let unit = host.unit();
    let records: Vec<&Record> = dead_letter.records.iter().map(|&i| batch[i]).collect();
    let (first, last) = (records[0].id(), records[records.len() - 1].id());
    let condition = dead_letter.condition.as_str();
    let error = dead_letter_error(dead_letter, &settings.policy);
    let Some(destination) = &settings.on_failure else {
        settings.metrics.discarded(condition, records.len() as u64);
        tracing::error!(mapping = %settings.name, %unit, first_record = %first, records = records.len(), condition, error_type = %error.error_type, error = %error.message, "records discarded: the policy gave up on them and the mapping has no on_failure destination");
        return;
    };
    let envelope = DeadLetter {
        mapping: settings.name.clone(),
        target: settings.invoker.target().name.clone(),
        region: settings.region.clone(),
        condition: dead_letter.condition,
        attempts: dead_letter.invoke_count,
        error: error.clone(),
        function_error: dead_letter.function_error.then(|| "Unhandled".to_owned()),
        source: host.envelope_source(&records),
        records: records
            .iter()
            .map(|r| serde_json::from_str(r.source_element().get()).unwrap_or_default())
            .collect(),
        first_attempt_at: records
            .iter()
            .map(|r| r.first_received_at)
            .min()
            .unwrap_or_default(),
        last_attempt_at: now_since_epoch(),
    };
    let dedup = format!("{unit}-{first}-{condition}");
    let mut failures = 0u32;
    while let Err(send_error) = destination.send(&envelope, unit, &dedup).await {
        failures += 1;
        settings.metrics.ack_errors.increment(1);
        tracing::error!(mapping = %settings.name, %unit, first_record = %first, error = %send_error, "dead-lettering failed; the lane waits and retries, nothing is skipped");
        tokio::time::sleep(retry_delay(failures)).await;
    }
    settings
        .metrics
        .dead_lettered(condition, records.len() as u64);
    tracing::warn!(mapping = %settings.name, %unit, first_record = %first, last_record = %last, records = records.len(), condition, attempts = dead_letter.invoke_count, error_type = %error.error_type, error = %error.message, destination = destination.describe(), "records dead-lettered");
}

/// The error a dead letter names: the policy's, or one that describes the condition.
fn dead_letter_error(dead_letter: &StreamDeadLetter, policy: &StreamPolicy) -> ErrorInfo {
    dead_letter
        .error
        .clone()
        .unwrap_or_else(|| match dead_letter.condition {
            DeadLetterCondition::RecordAgeExceeded => ErrorInfo::new(
                "RecordAgeExceeded",
                format!(
                    "the record is older than retry.max_record_age ({:?})",
                    policy.max_record_age.unwrap_or_default()
                ),
            ),
            other => ErrorInfo::new(other.as_str(), "dead-lettered"),
        })
}

#[cfg(test)]
mod tests {
    //! A lane against a scripted target and a recording destination, under tokio's paused clock.
    use super::*;
    use crate::destinations::testing::MemoryDestination;
    use crate::health::Health;
    use crate::targets::SharedTarget;
    use crate::targets::testing::ScriptedTarget;
    use serde_json::json;
    use sluice_policies::{Backoff, IdentifierKind, stream::ShardProgress};
    use sluice_sources::{AckToken, Receipt};
    use std::sync::Mutex;

    /// A shard of `r0`, `r1`, ... whose finished records are kept in the order reported.
    struct Shard {
        settings: LaneSettings,
        progress: Mutex<ShardProgress<String>>,
        finished: Mutex<Vec<String>>,
        names: Mutex<Vec<(Position, String)>>,
        windows: Option<Windows>,
        /// What `prepare` answers for a record, in turn ("skip", "unusable", "retry"); a record
        /// with nothing left is ready.
        verdicts: Mutex<Vec<(String, &'static str)>>,
    }

    #[async_trait]
    impl LaneHost for Shard {
        fn settings(&self) -> &LaneSettings {
            &self.settings
        }
        fn event(&self, records: &[&Record]) -> Vec<u8> {
            let ids: Vec<&str> = records.iter().map(|r| r.id()).collect();
            let event = json!({ "Records": ids }).to_string().into_bytes();
            match &self.windows {
                Some(windows) => windows.event(event, false, false),
                None => event,
            }
        }
        fn windows(&self) -> Option<&Windows> {
            self.windows.as_ref()
        }
        async fn prepare(&self, record: Record) -> Prepared {
            let mut verdicts = self.verdicts.lock().unwrap();
            let Some(at) = verdicts.iter().position(|(name, _)| name == record.id()) else {
                return Prepared::Ready(record);
            };
            match verdicts.remove(at).1 {
                "skip" => Prepared::Skipped,
                "unusable" => Prepared::Unusable(record, ErrorInfo::new("Unusable", "scripted")),
                _ => Prepared::Retry(record, "scripted outage".into()),
            }
        }
        fn identifier(&self, record: &Record) -> ItemIdentifier {
            ItemIdentifier::Text(record.id().to_owned())
        }
        fn unit(&self) -> &str {
            "shard-1"
        }
        fn envelope_source(&self, records: &[&Record]) -> EnvelopeSource {
            EnvelopeSource::Sqs {
                queue_url: "memory://shard".into(),
                queue_arn: "arn:shard".into(),
                message_ids: records.iter().map(|r| r.id().to_owned()).collect(),
            }
        }
        fn finished(self: Arc<Self>, positions: Vec<Position>) {
            if let Some(windows) = &self.windows {
                windows.commit();
            }
            let names = self.names.lock().unwrap();
            let mut finished = self.finished.lock().unwrap();
            for position in positions {
                self.progress.lock().unwrap().finish(position);
                let (_, name) = names.iter().find(|(p, _)| *p == position).unwrap();
                finished.push(name.clone());
            }
        }
    }

    impl Shard {
        /// The next record of the shard, `name`, arrived at `arrived`, with its place.
        fn entry(&self, name: &str, arrived: Duration) -> Entry {
            let position = self.progress.lock().unwrap().push(name.into());
            self.names.lock().unwrap().push((position, name.into()));
            let event = serde_json::value::to_raw_value(&json!(name)).unwrap();
            let record = Record::new(
                Receipt {
                    id: name.into(),
                    ack: AckToken::Stream {
                        shard_id: "shard-1".into(),
                    },
                },
                None,
                arrived,
                Duration::ZERO,
                1,
                event,
            );
            (record, position)
        }
    }

    fn shard(
        target: Arc<ScriptedTarget>,
        batch_size: usize,
        bisect: bool,
        retries: Option<u32>,
        on_failure: Option<Arc<dyn Destination>>,
    ) -> Arc<Shard> {
        Arc::new(Shard {
            settings: LaneSettings {
                name: "lane-test".into(),
                invoker: Invoker::new(
                    SharedTarget::new("t", target, 1),
                    MappingMetrics::new("lane-test"),
                ),
                policy: StreamPolicy {
                    report_batch_item_failures: false,
                    bisect_on_error: bisect,
                    max_retry_attempts: retries,
                    max_record_age: None,
                    backoff: Backoff::new(
                        Duration::from_secs(1),
                        Duration::from_secs(1),
                        2.0,
                        false,
                    )
                    .unwrap(),
                    identifier_kind: IdentifierKind::Text,
                    non_retryable: None,
                },
                limits: BatchLimits::new(batch_size, Duration::ZERO),
                health: Health::new(Duration::from_secs(60), Duration::from_secs(60))
                    .register("lane-test"),
                metrics: MappingMetrics::new("lane-test"),
                on_failure,
                region: "us-east-1".into(),
            },
            progress: Mutex::default(),
            finished: Mutex::default(),
            names: Mutex::default(),
            windows: None,
            verdicts: Mutex::default(),
        })
    }

    /// Feeds `count` records into a lane of `shard` and runs it until the records are all sent
    /// and every batch ended.
    async fn run(shard: &Arc<Shard>, count: usize) {
        run_arriving(shard, &vec![Duration::ZERO; count]).await
    }

    /// Feeds records that arrived at `arrivals` into a lane of `shard`, as [`run`].
    async fn run_arriving(shard: &Arc<Shard>, arrivals: &[Duration]) {
        let (sender, receiver) = mpsc::channel(16);
        let lane = tokio::spawn(run_lane(
            shard.clone(),
            "shard-1".into(),
            receiver,
            CancellationToken::new(),
            CancellationToken::new(),
        ));
        for (index, arrived) in arrivals.iter().enumerate() {
            sender
                .send(shard.entry(&format!("r{index}"), *arrived))
                .await
                .unwrap();
        }
        drop(sender);
        lane.await.unwrap();
    }

    fn records_of(call: &serde_json::Value) -> Vec<String> {
        call["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_batch_blocks_its_lane_until_it_is_handled() {
        let target = Arc::new(ScriptedTarget::default());
        target.push(Outcome::FunctionError(ErrorInfo::new("E", "first try")));
        target.push(Outcome::FunctionError(ErrorInfo::new("E", "second try")));
        let shard = shard(target.clone(), 2, false, None, None);
        let started = tokio::time::Instant::now();
        run(&shard, 4).await;
        let calls: Vec<Vec<String>> = target.payloads().iter().map(records_of).collect();
        assert_eq!(
            calls,
            [
                vec!["r0", "r1"],
                vec!["r0", "r1"],
                vec!["r0", "r1"],
                vec!["r2", "r3"]
            ]
        );
        // Two one-second backoffs before the lane moved on (the policy clock may lag the paused
        // clock by the moment between this runtime's start and the clock's anchor).
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2500),
            "{elapsed:?}"
        );
        assert_eq!(*shard.finished.lock().unwrap(), ["r0", "r1", "r2", "r3"]);
        assert_eq!(
            shard.progress.lock().unwrap().advance().as_deref(),
            Some("r3")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bisect_dead_letters_the_poison_record_before_the_records_after_it_finish() {
        let target = Arc::new(ScriptedTarget::answering(|event| {
            if records_of(event).iter().any(|r| r == "r2") {
                Outcome::FunctionError(ErrorInfo::new("Poison", "r2"))
            } else {
                Outcome::Returned { response: None }
            }
        }));
        // Each dead letter is kept with the records finished by then.
        let recorder = Arc::new(MemoryDestination::default());
        let shard = shard(target.clone(), 4, true, Some(1), Some(recorder.clone()));
        let observed = shard.clone();
        recorder.observe(move || json!(*observed.finished.lock().unwrap()));
        run(&shard, 4).await;
        let stored = recorder.stored();
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(stored[0].document["sluice"]["records"], json!(["r2"]));
        let finished_then = &stored[0].observed;
        assert_eq!(
            *finished_then,
            json!(["r0", "r1"]),
            "only the records before r2 finished before its dead letter was stored"
        );
        let mut finished = shard.finished.lock().unwrap().clone();
        finished.sort();
        assert_eq!(finished, ["r0", "r1", "r2", "r3"]);
        assert_eq!(
            shard.progress.lock().unwrap().advance().as_deref(),
            Some("r3")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn prepared_records_are_skipped_dead_lettered_alone_or_retried_in_order() {
        let target = Arc::new(ScriptedTarget::default());
        let recorder = Arc::new(MemoryDestination::default());
        let shard = shard(target.clone(), 2, false, None, Some(recorder.clone()));
        let observed = shard.clone();
        recorder.observe(move || json!(*observed.finished.lock().unwrap()));
        *shard.verdicts.lock().unwrap() = vec![
            ("r1".into(), "skip"),
            ("r2".into(), "unusable"),
            ("r3".into(), "retry"),
            ("r3".into(), "retry"),
        ];
        let started = tokio::time::Instant::now();
        run(&shard, 5).await;
        let calls: Vec<Vec<String>> = target.payloads().iter().map(records_of).collect();
        // r0 runs before r2 is dead-lettered, and before r3 waits: a record that cannot be
        // prepared never holds back the ones before it.
        assert_eq!(calls, [vec!["r0"], vec!["r3", "r4"]]);
        let stored = recorder.stored();
        assert_eq!(stored.len(), 1, "{stored:?}");
        // r1 (filtered out) finished as it was taken; r0 once its batch ran.
        assert_eq!(stored[0].observed, json!(["r1", "r0"]));
        assert_eq!(stored[0].document["sluice"]["records"], json!(["r2"]));
        assert_eq!(
            stored[0].document["requestContext"]["condition"],
            "NonRetryableError"
        );
        assert_eq!(stored[0].document["sluice"]["error"]["type"], "Unusable");
        // r3 waited out two backoffs (0.5 s, then 1 s) before it was batched, and nothing after
        // it overtook it.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let mut finished = shard.finished.lock().unwrap().clone();
        finished.sort();
        assert_eq!(finished, ["r0", "r1", "r2", "r3", "r4"]);
        assert_eq!(
            shard.progress.lock().unwrap().advance().as_deref(),
            Some("r4")
        );
    }

    /// A shard of one-minute tumbling windows, batches of `batch_size`.
    fn windowed(target: Arc<ScriptedTarget>, batch_size: usize) -> Arc<Shard> {
        let mut shard = Arc::into_inner(shard(target, batch_size, false, None, None)).unwrap();
        shard.windows = Some(Windows::new(
            Duration::from_secs(60),
            "shard-1",
            "arn:stream",
            None,
        ));
        Arc::new(shard)
    }

    /// A handler counting records in its window state, as Lambda's tumbling-window examples do.
    fn counting(event: &serde_json::Value) -> Outcome {
        if event["isFinalInvokeForWindow"] == json!(true) {
            return Outcome::Returned { response: None };
        }
        let count = event["state"]["count"].as_u64().unwrap_or(0) + records_of(event).len() as u64;
        Outcome::Returned {
            response: Some(json!({"state": {"count": count}})),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tumbling_windows_carry_the_state_and_end_with_a_final_invocation_retried_until_it_succeeds()
     {
        // semantics.md §8: the first final invocation fails and blocks the shard until a retry
        // succeeds; a response without state fails its batch, which is retried with the state
        // it had.
        let target = Arc::new(ScriptedTarget::answering(counting));
        target.push(Outcome::Returned {
            response: Some(json!({"batchItemFailures": []})),
        });
        let shard = windowed(target.clone(), 2);
        let second = |s: u64| Duration::from_secs(s);
        // Three records in [60 s, 120 s), two in [120 s, 180 s), one late for the first window.
        let arrivals = [
            second(61),
            second(62),
            second(63),
            second(125),
            second(126),
            second(70),
        ];
        run_arriving(&shard, &arrivals).await;
        let calls = target.payloads();
        let summary: Vec<(Vec<String>, serde_json::Value, bool, String)> = calls
            .iter()
            .map(|call| {
                (
                    records_of(call),
                    call["state"].clone(),
                    call["isFinalInvokeForWindow"].as_bool().unwrap(),
                    call["window"]["start"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let w1 = "1970-01-01T00:01:00Z".to_owned();
        let w2 = "1970-01-01T00:02:00Z".to_owned();
        assert_eq!(
            summary,
            vec![
                (vec!["r0".into(), "r1".into()], json!({}), false, w1.clone()),
                (vec!["r0".into(), "r1".into()], json!({}), false, w1.clone()),
                (vec!["r2".into()], json!({"count": 2}), false, w1.clone()),
                (vec![], json!({"count": 3}), true, w1.clone()),
                (vec!["r3".into(), "r4".into()], json!({}), false, w2.clone()),
                (vec!["r5".into()], json!({"count": 2}), false, w2.clone()),
                (vec![], json!({"count": 3}), true, w2.clone()),
            ],
            "{calls:#?}"
        );
        assert_eq!(calls[3]["window"]["end"], json!("1970-01-01T00:02:00Z"));
        assert_eq!(calls[3]["shardId"], json!("shard-1"));
        assert_eq!(calls[3]["isWindowTerminatedEarly"], json!(false));
        assert!(!shard.windows.as_ref().unwrap().is_open());
        assert_eq!(
            *shard.finished.lock().unwrap(),
            ["r0", "r1", "r2", "r3", "r4", "r5"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_invocation_that_fails_blocks_the_lane_until_it_succeeds() {
        let target = Arc::new(ScriptedTarget::answering(counting));
        let shard = windowed(target.clone(), 5);
        let (sender, receiver) = mpsc::channel(16);
        let lane = tokio::spawn(run_lane(
            shard.clone(),
            "shard-1".into(),
            receiver,
            CancellationToken::new(),
            CancellationToken::new(),
        ));
        let send = |name: &str, at: u64| shard.entry(name, Duration::from_secs(at));
        sender.send(send("r0", 61)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The final invocation of [60 s, 120 s) fails twice before it succeeds; r1 waits.
        target.push(Outcome::FunctionError(ErrorInfo::new("E", "final 1")));
        target.push(Outcome::Timeout { after_ms: 5 });
        sender.send(send("r1", 130)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(target.calls(), 2, "r0, then the first final invocation");
        assert_eq!(*shard.finished.lock().unwrap(), ["r0"]);
        assert!(shard.windows.as_ref().unwrap().is_open());
        drop(sender);
        lane.await.unwrap();
        let calls = target.payloads();
        let finals: Vec<bool> = calls
            .iter()
            .map(|c| c["isFinalInvokeForWindow"].as_bool().unwrap())
            .collect();
        assert_eq!(finals, [false, true, true, true, false, true]);
        assert_eq!(calls[3]["state"], json!({"count": 1}));
        assert_eq!(records_of(&calls[4]), ["r1"]);
        assert_eq!(calls[4]["state"], json!({}), "the next window starts fresh");
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_over_a_mebibyte_ends_the_window_early_and_it_goes_on_fresh() {
        let big = "x".repeat(window::MAX_WINDOW_STATE_BYTES);
        let target = Arc::new(ScriptedTarget::answering(counting));
        target.push(Outcome::Returned {
            response: Some(json!({"state": {"big": big}})),
        });
        let shard = windowed(target.clone(), 1);
        let second = Duration::from_secs;
        run_arriving(&shard, &[second(61), second(62)]).await;
        let calls = target.payloads();
        let flags: Vec<(Vec<String>, bool, bool)> = calls
            .iter()
            .map(|c| {
                (
                    records_of(c),
                    c["isFinalInvokeForWindow"].as_bool().unwrap(),
                    c["isWindowTerminatedEarly"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            flags,
            vec![
                (vec!["r0".to_owned()], false, false),
                (vec![], true, true),
                (vec!["r1".to_owned()], false, false),
                (vec![], true, false),
            ]
        );
        assert_eq!(
            calls[1]["state"]["big"].as_str().map(str::len),
            Some(big.len())
        );
        assert_eq!(calls[2]["state"], json!({}), "the same window, fresh");
        assert_eq!(calls[2]["window"], calls[1]["window"]);
        assert_eq!(calls[3]["state"], json!({"count": 1}));
    }
}
