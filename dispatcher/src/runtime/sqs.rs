//! The worker of one SQS mapping: receive → batch → invoke → decide (queue policy) → execute.
//!
//! Guarantees:
//! - at most `max_concurrency` batches are in flight, and nothing is received for a batch that
//!   could not start (the poller waits for capacity first);
//! - every received record is held by the heartbeat until its batch is decided, so it does not
//!   reappear while its handler is still running;
//! - a record is deleted only after the policy says so, and a dead letter only after the
//!   destination stored it;
//! - on shutdown, records received but not yet started are made visible again at once; batches in
//!   flight finish until the drain deadline.

use super::heartbeat::Heartbeat;
use super::invoker::{Invoker, Slot};
use super::retry::{retry_delay, retry_until_ok};
use crate::config::{MappingConfig, SqsSourceConfig};
use crate::destinations::{DeadLetter, Destination, EnvelopeSource, envelope::now_since_epoch};
use crate::health::MappingHealthHandle;
use crate::targets::{Invocation, SharedTarget};
use crate::telemetry::MappingMetrics;
use sluice_policies::batcher::PushResult;
use sluice_policies::{
    BatchLimits, Batcher, DeadLetterCondition, ErrorClasses, ErrorInfo, FilterSet, Outcome,
    QueueDecision, QueueMessage, QueuePolicy, RecordDisposition, RetryDelay,
};
use sluice_sources::sqs::{MAX_BATCH_ENTRIES, SqsQueue};
use sluice_sources::{Queue, Receipt, Record, records_event};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type OpenReceive = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Record>, sluice_sources::SourceError>> + Send>,
>;

/// Everything a batch task needs, shared by all batches of the mapping.
struct MappingContext {
    name: String,
    target_name: String,
    queue: Arc<dyn Queue>,
    invoker: Invoker,
    policy: QueuePolicy,
    filters: FilterSet,
    on_failure: Option<Arc<dyn Destination>>,
    heartbeat: Arc<Heartbeat>,
    metrics: MappingMetrics,
    health: MappingHealthHandle,
}

#[derive(Clone)]
pub struct SqsMapping {
    pub config: MappingConfig,
    pub source: SqsSourceConfig,
    pub client: aws_sdk_sqs::Client,
    pub target: SharedTarget,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
}

/// Pause after an empty short poll (`wait_time: 0s`), so an idle queue is not polled in a loop.
const IDLE_SHORT_POLL_PAUSE: Duration = Duration::from_millis(200);

impl SqsMapping {
    /// Runs until `shutdown` is cancelled, then drains for at most `shutdown_timeout`.
    pub async fn run(self, shutdown: CancellationToken, shutdown_timeout: Duration) {
        let name = self.config.name.clone();
        let Some(queue) = self.connect(&shutdown).await else {
            return;
        };
        let queue: Arc<dyn Queue> = Arc::new(queue);
        let description = queue.description().clone();
        tracing::info!(
            mapping = %name,
            queue_url = %description.url,
            fifo = description.fifo,
            visibility_timeout_s = description.visibility_timeout.as_secs(),
            batch_size = self.source.batch_size,
            max_concurrency = self.source.max_concurrency,
            pollers = self.source.pollers,
            "mapping started"
        );
        let heartbeat = Heartbeat::new(
            queue.clone(),
            self.source.heartbeat_max,
            self.metrics.clone(),
            &name,
        );
        let heartbeat_stop = CancellationToken::new();
        let heartbeat_task = tokio::spawn(heartbeat.clone().run(heartbeat_stop.clone()));
        let context = Arc::new(MappingContext {
            name: name.clone(),
            target_name: self.config.target.clone(),
            queue: queue.clone(),
            invoker: Invoker::new(self.target.clone(), self.metrics.clone()),
            policy: QueuePolicy {
                report_batch_item_failures: self.config.report_batch_item_failures,
                max_receive_count: self.config.retry.max_receive_count,
                backoff: self.config.retry.backoff,
                non_retryable: self.on_failure.is_some().then(|| {
                    ErrorClasses::new(self.config.retry.non_retryable_errors.iter().cloned())
                }),
            },
            filters: self.config.filters.clone(),
            on_failure: self.on_failure.clone(),
            heartbeat: heartbeat.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        });

        let tracker = TaskTracker::new();
        let capacity = Arc::new(Semaphore::new(self.source.max_concurrency));
        let mapping = Arc::new(self);
        let mut pollers = tokio::task::JoinSet::new();
        for _ in 0..mapping.source.pollers {
            pollers.spawn(mapping.clone().poll_loop(
                context.clone(),
                shutdown.clone(),
                tracker.clone(),
                capacity.clone(),
            ));
        }
        let mut unstarted = Vec::new();
        let mut open_receives = Vec::new();
        while let Some(stopped) = pollers.join_next().await {
            match stopped {
                Ok((records, open_receive)) => {
                    unstarted.extend(records);
                    open_receives.extend(open_receive);
                }
                // A poller that panicked takes the mapping down with it: the supervisor logs it,
                // shows it on /readyz, stops this incarnation's tasks and starts the mapping again.
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => tracing::error!(mapping = %name, %error, "a poller failed"),
            }
        }

        // Shutdown: give back what never started, then let in-flight batches finish.
        let drain_deadline = Instant::now() + shutdown_timeout;
        if !unstarted.is_empty() {
            return_unstarted(&context, &unstarted).await;
        }
        tracker.close();
        // SQS keeps serving a long poll whose client went away, and would hide whatever it picks
        // up (the messages just returned, say) for a whole visibility timeout. While batches
        // drain anyway, open polls are awaited and what they bring is returned at once; an idle
        // mapping drops them and exits promptly.
        let mut receives = tokio::task::JoinSet::new();
        for receive in open_receives {
            let context = context.clone();
            receives.spawn(async move {
                if let Ok(records) = receive.await
                    && !records.is_empty()
                {
                    context
                        .metrics
                        .records_received
                        .increment(records.len() as u64);
                    track_in_flight(&context.metrics, &records, Flight::Entering);
                    return_unstarted(&context, &records).await;
                }
            });
        }
        let drained = tokio::time::timeout_at(drain_deadline.into(), async {
            loop {
                tokio::select! {
                    _ = tracker.wait() => return,
                    Some(_) = receives.join_next(), if !receives.is_empty() => {}
                }
            }
        })
        .await;
        receives.abort_all();
        if drained.is_err() {
            tracing::warn!(mapping = %name, in_flight = tracker.len(), "drain deadline reached; in-flight batches abandoned, their messages return after the visibility timeout");
        }
        heartbeat_stop.cancel();
        let _ = heartbeat_task.await;
        tracing::info!(mapping = %name, "mapping stopped");
    }

    async fn connect(&self, shutdown: &CancellationToken) -> Option<SqsQueue> {
        retry_until_ok(
            "looking up the queue",
            &self.config.name,
            &self.health,
            &self.metrics,
            shutdown,
            || SqsQueue::connect(self.client.clone(), &self.source.queue_url),
        )
        .await
    }

    /// Records a failed call to the source and waits before the next one; false when shutdown
    /// came first.
    async fn back_off_after_source_error(
        &self,
        error: &sluice_sources::SourceError,
        consecutive_failures: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        self.metrics.poll_errors.increment(1);
        self.health.poll_failed(&error.to_string());
        tracing::warn!(mapping = %self.config.name, %error, consecutive_failures, "source call failed; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(retry_delay(consecutive_failures)) => true,
        }
    }

    /// Receives and dispatches until shutdown; returns the records received but never started,
    /// and the receive that was open when the shutdown came, if any.
    async fn poll_loop(
        self: Arc<Self>,
        context: Arc<MappingContext>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        capacity: Arc<Semaphore>,
    ) -> (Vec<Record>, Option<OpenReceive>) {
        let mut open_receive = None;
        let started = Instant::now();
        let clock = || started.elapsed();
        let limits = BatchLimits::new(self.source.batch_size, self.source.max_batching_window);
        let mut batcher: Batcher<Record> = Batcher::new(limits);
        let mut ready: VecDeque<Vec<Record>> = VecDeque::new();
        let mut failures = 0u32;

        'poll: loop {
            // Nothing is received for a batch that could not start: room in the mapping, and room
            // in the target (shared with other mappings), come first. The target's slot is only
            // taken once the batch is full, so an idle poll never holds it from other mappings;
            // at most one batch per poller waits for it.
            let waiting =
                capacity.available_permits() == 0 || context.invoker.target().is_saturated();
            if waiting {
                self.health.waiting_for_capacity(true);
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'poll,
                permit = async {
                    let mapping = capacity.clone().acquire_owned().await.expect("semaphore is never closed");
                    context.invoker.target().wait_for_room().await;
                    mapping
                } => permit,
            };
            if waiting {
                self.health.waiting_for_capacity(false);
            }
            // Fill one batch (or take one that is already complete).
            let batch = loop {
                if let Some(batch) = ready.pop_front() {
                    break batch;
                }
                if let Some(batch) = batcher.poll(clock()) {
                    break batch;
                }
                let wait = match batcher.deadline() {
                    None => self.source.wait_time,
                    Some(deadline) => deadline.saturating_sub(clock()).min(self.source.wait_time),
                };
                let max_messages = batcher.remaining_capacity().min(MAX_BATCH_ENTRIES);
                let requested_at = Instant::now();
                let queue = context.queue.clone();
                let mut receive: OpenReceive =
                    Box::pin(async move { queue.receive(max_messages, wait).await });
                let received = tokio::select! {
                    _ = shutdown.cancelled() => {
                        open_receive = Some(receive);
                        break 'poll;
                    }
                    received = &mut receive => received,
                };
                let records = match received {
                    Ok(records) => {
                        failures = 0;
                        self.health.poll_succeeded();
                        records
                    }
                    Err(error) => {
                        failures += 1;
                        if !self
                            .back_off_after_source_error(&error, failures, &shutdown)
                            .await
                        {
                            break 'poll;
                        }
                        continue;
                    }
                };
                if records.is_empty() {
                    // SQS long polls last whole seconds, so a shorter wait was a short poll:
                    // pause (until the window closes, at most) rather than ask again at once.
                    if wait < Duration::from_secs(1) {
                        let pause = batcher
                            .deadline()
                            .map_or(IDLE_SHORT_POLL_PAUSE, |d| d.saturating_sub(clock()))
                            .min(Duration::from_secs(1));
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'poll,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                    continue;
                }
                self.metrics
                    .records_received
                    .increment(records.len() as u64);
                let (records, filtered) = filter_records(&context.filters, records);
                if !filtered.is_empty() {
                    self.metrics
                        .records_filtered
                        .increment(filtered.len() as u64);
                    let context = context.clone();
                    tracker.spawn(async move {
                        let references: Vec<&Record> = filtered.iter().collect();
                        delete_records(&context, &references).await;
                    });
                }
                if records.is_empty() {
                    continue;
                }
                context.heartbeat.hold(&records, requested_at).await;
                track_in_flight(&self.metrics, &records, Flight::Entering);
                for record in records {
                    let size = record.size_bytes;
                    let PushResult {
                        ready: complete,
                        too_large,
                    } = batcher.push(record, size, clock());
                    ready.extend(complete);
                    if let Some(record) = too_large {
                        let context = context.clone();
                        tracker.spawn(async move { dead_letter_oversized(&context, record).await });
                    }
                }
            };
            let target_permit = tokio::select! {
                _ = shutdown.cancelled() => {
                    ready.push_front(batch);
                    break 'poll;
                }
                target_permit = context.invoker.target().permit() => target_permit,
            };
            let context = context.clone();
            tracker.spawn(async move {
                handle_batch(&context, batch, target_permit).await;
                drop(permit);
            });
        }
        let mut unstarted: Vec<Record> = ready.into_iter().flatten().collect();
        unstarted.extend(batcher.take().unwrap_or_default());
        (unstarted, open_receive)
    }
}

/// Splits records into those a filter pattern matches (or all, without filters) and those none
/// does, which Lambda deletes without an invocation (semantics.md §7).
fn filter_records(filters: &FilterSet, records: Vec<Record>) -> (Vec<Record>, Vec<Record>) {
    if filters.is_empty() {
        return (records, Vec::new());
    }
    records.into_iter().partition(|record| {
        serde_json::from_str::<serde_json::Value>(record.event.get())
            .map_or(true, |event| filters.passes_sqs(&event))
    })
}

fn queue_messages(batch: &[Record]) -> Vec<QueueMessage> {
    batch
        .iter()
        .map(|record| QueueMessage {
            message_id: record.id().to_owned(),
            receive_count: record.attempt,
            group_id: record.ordering_key.clone(),
        })
        .collect()
}

fn outcome_label(outcome: &Outcome, decision: &QueueDecision) -> &'static str {
    match outcome {
        Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. } => {
            if decision.batch_error.is_some() {
                "invalid_response"
            } else if decision.reported_failures > 0 {
                "partial_failure"
            } else {
                "success"
            }
        }
        failed => failed.kind(),
    }
}

async fn handle_batch(context: &MappingContext, batch: Vec<Record>, slot: Slot) {
    let invocation = Invocation::for_records(&context.name, records_event(&batch), &batch);
    let started = Instant::now();
    let outcome = context.invoker.invoke_in(slot, invocation.clone()).await;
    let elapsed = started.elapsed();

    let decision = context
        .policy
        .decide(&queue_messages(&batch), &outcome, rand::random::<f64>());
    let label = outcome_label(&outcome, &decision);
    context.metrics.outcome(label);
    match &decision.batch_error {
        Some(error) => tracing::warn!(
            mapping = %context.name,
            request_id = %invocation.request_id,
            records = batch.len(),
            outcome = label,
            error_type = %error.error_type,
            error = %error.message,
            duration_ms = elapsed.as_millis() as u64,
            "batch failed"
        ),
        None => tracing::debug!(
            mapping = %context.name,
            request_id = %invocation.request_id,
            records = batch.len(),
            outcome = label,
            failed = decision.reported_failures,
            duration_ms = elapsed.as_millis() as u64,
            "batch handled"
        ),
    }
    // From here on sluice's own visibility changes are the last word.
    context.heartbeat.release(&batch).await;
    execute(context, &batch, &decision, &outcome).await;
}

/// Carries out a decision: dead letters first (deleted only once stored), then deletes, then
/// visibility changes for retries and for FIFO followers.
async fn execute(
    context: &MappingContext,
    batch: &[Record],
    decision: &QueueDecision,
    outcome: &Outcome,
) {
    let mut delete: Vec<&Record> = Vec::new();
    let mut delayed: Vec<(&Record, Duration)> = Vec::new();
    let mut untouched: Vec<&Record> = Vec::new();
    let mut retried = 0u64;
    let function_error = match outcome {
        Outcome::FunctionError(_) | Outcome::Timeout { .. } => Some("Unhandled".to_owned()),
        _ => None,
    };
    for (record, disposition) in batch.iter().zip(&decision.dispositions) {
        match disposition {
            RecordDisposition::Delete => delete.push(record),
            RecordDisposition::Retry { delay, .. } => {
                retried += 1;
                if let RetryDelay::After(delay) = delay {
                    delayed.push((record, *delay));
                }
            }
            RecordDisposition::ReturnUntouched => untouched.push(record),
            RecordDisposition::DeadLetter { condition, error } => {
                if send_dead_letter(context, record, *condition, error, function_error.clone())
                    .await
                {
                    delete.push(record);
                } else if let Some(backoff) = &context.policy.backoff {
                    // Not stored, so not deleted: it comes back like any failure and is
                    // dead-lettered again on its next receive.
                    delayed.push((record, backoff.delay(record.attempt, rand::random::<f64>())));
                }
            }
        }
    }
    context.metrics.records_retried.increment(retried);
    let acknowledged = decision
        .dispositions
        .iter()
        .filter(|d| d.is_delete())
        .count();
    delete_records(context, &delete).await;
    context
        .metrics
        .records_acknowledged
        .increment(acknowledged as u64);
    if !delayed.is_empty() {
        change_visibility(context, &delayed, "retry backoff").await;
    }
    release_now(context, &untouched, "fifo follower").await;
    track_in_flight(&context.metrics, batch, Flight::Leaving);
}

enum Flight {
    Entering,
    Leaving,
}

fn track_in_flight<'a>(
    metrics: &MappingMetrics,
    records: impl IntoIterator<Item = &'a Record>,
    flight: Flight,
) {
    let (count, bytes) = records
        .into_iter()
        .fold((0usize, 0usize), |(count, bytes), record| {
            (count + 1, bytes + record.size_bytes)
        });
    let sign = match flight {
        Flight::Entering => 1.0,
        Flight::Leaving => -1.0,
    };
    metrics.in_flight_records.increment(sign * count as f64);
    metrics.in_flight_bytes.increment(sign * bytes as f64);
}

async fn delete_records(context: &MappingContext, records: &[&Record]) {
    if records.is_empty() {
        return;
    }
    let receipts: Vec<&Receipt> = records.iter().map(|r| &r.receipt).collect();
    let _call = context.health.aws_call();
    match context.queue.delete(&receipts).await {
        Ok(report) => {
            context.health.ack_succeeded();
            for (message_id, reason) in &report.failed {
                context.metrics.ack_errors.increment(1);
                tracing::warn!(mapping = %context.name, queue_url = %context.queue.description().url, %message_id, %reason, "delete failed; the message will be delivered again");
            }
        }
        Err(error) => {
            context.metrics.ack_errors.increment(1);
            context.health.ack_failed(&error.to_string());
            tracing::error!(mapping = %context.name, %error, records = records.len(), "delete failed; the messages will be delivered again");
        }
    }
}

async fn change_visibility(context: &MappingContext, changes: &[(&Record, Duration)], why: &str) {
    let changes: Vec<(&Receipt, Duration)> =
        changes.iter().map(|(r, d)| (&r.receipt, *d)).collect();
    let _call = context.health.aws_call();
    match context.queue.change_visibility(&changes).await {
        Ok(failed) => {
            context.health.ack_succeeded();
            for (message_id, reason) in failed {
                context.metrics.ack_errors.increment(1);
                tracing::warn!(mapping = %context.name, %message_id, %reason, why, "visibility change failed");
            }
        }
        Err(error) => {
            context.metrics.ack_errors.increment(1);
            context.health.ack_failed(&error.to_string());
            tracing::warn!(mapping = %context.name, %error, why, "visibility change failed");
        }
    }
}

/// Makes records visible again at once, unhandled (FIFO followers, unstarted at shutdown).
async fn release_now(context: &MappingContext, records: &[&Record], why: &str) {
    if records.is_empty() {
        return;
    }
    let changes: Vec<(&Record, Duration)> = records.iter().map(|r| (*r, Duration::ZERO)).collect();
    change_visibility(context, &changes, why).await;
    context
        .metrics
        .records_released
        .increment(records.len() as u64);
}

/// Returns records that never started, at shutdown.
async fn return_unstarted(context: &MappingContext, records: &[Record]) {
    context.heartbeat.release(records).await;
    let references: Vec<&Record> = records.iter().collect();
    release_now(context, &references, "shutdown").await;
    track_in_flight(&context.metrics, records, Flight::Leaving);
    tracing::info!(mapping = %context.name, records = records.len(), "returned unstarted messages to the queue");
}

/// Sends one record to the on-failure destination; true when it was stored.
async fn send_dead_letter(
    context: &MappingContext,
    record: &Record,
    condition: DeadLetterCondition,
    error: &ErrorInfo,
    function_error: Option<String>,
) -> bool {
    let description = context.queue.description();
    let Some(destination) = &context.on_failure else {
        tracing::error!(mapping = %context.name, message_id = %record.id(), "no on_failure destination; the message stays in the queue");
        return false;
    };
    let dead_letter = DeadLetter {
        mapping: context.name.clone(),
        target: context.target_name.clone(),
        region: description.region.clone(),
        condition,
        attempts: record.attempt,
        error: error.clone(),
        function_error,
        source: EnvelopeSource::Sqs {
            queue_url: description.url.clone(),
            queue_arn: description.arn.clone(),
            message_ids: vec![record.id().to_owned()],
        },
        records: vec![serde_json::from_str(record.event.get()).unwrap_or_default()],
        first_attempt_at: record.first_received_at,
        last_attempt_at: now_since_epoch(),
    };
    let group = record.ordering_key.as_deref().unwrap_or(&context.name);
    let dedup = format!("{}-{}", record.id(), record.attempt);
    let _call = context.health.aws_call();
    match destination.send(&dead_letter, group, &dedup).await {
        Ok(()) => {
            context.metrics.dead_lettered(condition.as_str(), 1);
            tracing::warn!(
                mapping = %context.name,
                message_id = %record.id(),
                condition = condition.as_str(),
                attempts = record.attempt,
                error_type = %error.error_type,
                error = %error.message,
                destination = destination.describe(),
                "message dead-lettered"
            );
            true
        }
        Err(send_error) => {
            context.metrics.ack_errors.increment(1);
            tracing::error!(mapping = %context.name, message_id = %record.id(), error = %send_error, "dead-lettering failed; the message stays in the queue and will be retried");
            false
        }
    }
}

/// A record that cannot fit one invocation goes straight to the on-failure destination.
async fn dead_letter_oversized(context: &MappingContext, record: Record) {
    context
        .heartbeat
        .release(std::slice::from_ref(&record))
        .await;
    let error = ErrorInfo::new(
        "PayloadTooLarge",
        format!(
            "the record is {} bytes; an invocation holds at most 6 MB",
            record.size_bytes
        ),
    );
    if send_dead_letter(
        context,
        &record,
        DeadLetterCondition::PayloadTooLarge,
        &error,
        None,
    )
    .await
    {
        delete_records(context, &[&record]).await;
    }
    track_in_flight(&context.metrics, [&record], Flight::Leaving);
}
