//! The worker of one SQS mapping: receive → filter → batch → invoke → decide (queue policy) →
//! acknowledge. Polling, batching, holding and the drain are the shared queue poller's
//! ([`crate::runtime::poller`]); this module decides and acknowledges.
//!
//! Guarantees:
//! - at most `max_concurrency` batches are in flight, and nothing is received for a batch that
//!   could not start (the poller waits for capacity first);
//! - every received record is held by the heartbeat until its batch is decided, so it does not
//!   reappear while its handler is still running;
//! - a record is deleted only after the policy says so, and a dead letter only after the
//!   destination stored it; acknowledgements go in this order: dead letters, then one delete
//!   (handled and dead-lettered records), then retry delays, then FIFO followers released;
//! - on shutdown, records received but not yet started are made visible again at once; batches in
//!   flight finish until the drain deadline.

pub mod config;
mod large_payloads;

use self::config::SqsSourceConfig;
use crate::config::MappingConfig;
use crate::destinations::sqs::SpillPointer;
use crate::destinations::{DeadLetter, Destination, EnvelopeSource, envelope::now_since_epoch};
use crate::health::MappingHealthHandle;
use crate::runtime::invoker::{Invoker, Slot};
use crate::runtime::mapping::{Mapping, SourceClients, StartMapping};
use crate::runtime::poller::{self, Flight, PollSettings, QueueAcks, QueueWork, track_in_flight};
use crate::targets::{Invocation, SharedTarget};
use crate::telemetry::MappingMetrics;
use sluice_policies::{
    BatchLimits, DeadLetterCondition, ErrorInfo, FilterSet, Outcome, QueueDecision, QueueMessage,
    QueuePolicy, RecordDisposition, RetryDelay,
};
use sluice_sources::{QueueOpener, Record, records_event};
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock, so that a paused test clock drives batching windows and deadlines too.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a batch task needs, shared by all batches of the mapping.
struct MappingContext {
    /// The mapping's name, queue, heartbeat, readiness and metrics, and its acknowledgements.
    acks: Arc<QueueAcks>,
    target_name: String,
    invoker: Invoker,
    policy: QueuePolicy,
    filters: FilterSet,
    on_failure: Option<Arc<dyn Destination>>,
    /// With `large_payloads`: fetches Extended Client bodies.
    resolver: Option<large_payloads::Resolver>,
    /// The pointers of resolved records in flight, by receipt handle: their objects are
    /// deleted once the messages were handled and deleted.
    pointers: std::sync::Mutex<std::collections::HashMap<String, SpillPointer>>,
    /// Payload object deletes running in the background, at most
    /// [`large_payloads::CONCURRENT_DELETES`] (`delete_slots`); the mapping waits for them when
    /// it stops, within the daemon's drain deadline.
    deletes: TaskTracker,
    delete_slots: Arc<tokio::sync::Semaphore>,
}

/// Starts `mapping`, reading `source`.
pub fn start(source: &SqsSourceConfig, mapping: Mapping, clients: &SourceClients) -> StartMapping {
    let shutdown_timeout = mapping.shutdown_timeout;
    let worker = SqsMapping {
        config: mapping.config,
        source: source.clone(),
        queues: clients.queues.clone(),
        s3: clients.s3.clone(),
        target: mapping.target,
        on_failure: mapping.on_failure,
        health: mapping.health,
        metrics: mapping.metrics,
    };
    Box::new(move |token| Box::pin(worker.clone().run(token, shutdown_timeout)))
}

#[derive(Clone)]
pub struct SqsMapping {
    pub config: MappingConfig,
    pub source: SqsSourceConfig,
    /// Opens the mapping's queue.
    pub queues: Arc<dyn QueueOpener>,
    /// Fetches Extended Client bodies (with `large_payloads`).
    pub s3: aws_sdk_s3::Client,
    pub target: SharedTarget,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
}

impl SqsMapping {
    /// Runs until `shutdown` is cancelled, then drains for at most `shutdown_timeout`.
    pub async fn run(self, shutdown: CancellationToken, shutdown_timeout: Duration) {
        let settings = PollSettings {
            pollers: self.source.pollers,
            max_concurrency: self.source.max_concurrency,
            limits: BatchLimits::new(self.source.batch_size, self.source.max_batching_window),
            wait_time: self.source.wait_time,
            receive_ahead: false,
            autoscaling: self.config.autoscaling.clone(),
        };
        let Some((queue, first)) = poller::connect(
            self.queues.as_ref(),
            &self.source.queue_url,
            settings.early_receive(&self.target),
            &self.config.name,
            &self.health,
            &self.metrics,
            &shutdown,
        )
        .await
        else {
            return;
        };
        let name = self.config.name.clone();
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
        let acks = QueueAcks::new(
            &name,
            queue,
            self.source.heartbeat_max,
            self.health.clone(),
            self.metrics.clone(),
        );
        let settings_limits = settings.limits;
        let context = Arc::new(MappingContext {
            acks: acks.clone(),
            target_name: self.config.target.clone(),
            invoker: Invoker::new(self.target.clone(), self.metrics.clone()),
            policy: self.source.policy.clone(),
            filters: self.config.filters.clone(),
            on_failure: self.on_failure.clone(),
            resolver: self
                .source
                .large_payloads
                .map(|settings| large_payloads::Resolver {
                    s3: self.s3.clone(),
                    delete_after_success: settings.delete_after_success,
                    max_record_bytes: settings_limits.max_bytes,
                    fetches: tokio::sync::Semaphore::new(large_payloads::CONCURRENT_FETCHES),
                }),
            pointers: Default::default(),
            deletes: TaskTracker::new(),
            delete_slots: Arc::new(tokio::sync::Semaphore::new(
                large_payloads::CONCURRENT_DELETES,
            )),
        });
        let polling = poller::run(
            acks,
            context.clone(),
            self.target.clone(),
            settings,
            shutdown.clone(),
            shutdown_timeout,
            first,
        );
        tokio::pin!(polling);
        let drain_deadline = tokio::select! {
            () = &mut polling => None,
            () = shutdown.cancelled() => {
                let deadline = Instant::now() + shutdown_timeout;
                polling.await;
                Some(deadline)
            }
        };
        // Stopping: the payload deletes under way get what is left of the drain deadline (an
        // object whose delete is cut stays in S3, as when a delete fails). Ended on its own
        // (the supervisor restarts it), they go on in the background.
        context.deletes.close();
        if let Some(deadline) = drain_deadline
            && tokio::time::timeout_at(deadline, context.deletes.wait())
                .await
                .is_err()
        {
            tracing::warn!(mapping = %name, deleting = context.deletes.len(), "drain deadline reached; payload objects still being deleted stay in S3");
        }
    }
}

#[async_trait::async_trait]
impl QueueWork for MappingContext {
    fn admit(self: &Arc<Self>, records: Vec<Record>, tracker: &TaskTracker) -> Vec<Record> {
        // With large payloads, filters see the fetched bodies (in `prepare`).
        if self.resolver.is_some() {
            return records;
        }
        let (records, filtered) = filter_records(&self.filters, records);
        if !filtered.is_empty() {
            self.acks.metrics.filtered(filtered.len() as u64);
            let context = self.clone();
            tracker.spawn(async move {
                let references: Vec<&Record> = filtered.iter().collect();
                context.acks.delete(&references).await;
            });
        }
        records
    }

    async fn prepare(self: &Arc<Self>, records: Vec<Record>, tracker: &TaskTracker) -> Vec<Record> {
        let Some(resolver) = &self.resolver else {
            return records;
        };
        // Counted in flight at their received size; counted again at what they became.
        track_in_flight(&self.acks.metrics, &records, Flight::Leaving);
        let resolved =
            futures_util::future::join_all(records.into_iter().map(|r| resolver.resolve(r))).await;
        track_in_flight(
            &self.acks.metrics,
            resolved.iter().map(large_payloads::Resolved::record),
            Flight::Entering,
        );
        let mut ready = Vec::new();
        let mut unusable = Vec::new();
        let mut retry = Vec::new();
        // FIFO: once a message of a group is taken out (its dead letter may fail, its retry
        // comes later), the group's later messages go back untouched, in order behind it.
        let mut blocked: std::collections::HashSet<String> = Default::default();
        let mut followers = Vec::new();
        for outcome in resolved {
            let group = outcome.record().ordering_key.clone();
            if group.as_ref().is_some_and(|g| blocked.contains(g)) {
                followers.push(outcome.into_record());
                continue;
            }
            match outcome {
                large_payloads::Resolved::Ready(record, pointer) => {
                    if let Some(pointer) = pointer {
                        self.pointers
                            .lock()
                            .expect("pointers lock")
                            .insert(receipt_key(&record), pointer);
                    }
                    ready.push(record);
                }
                large_payloads::Resolved::Unusable(record, condition, error) => {
                    blocked.extend(group);
                    unusable.push((record, condition, error));
                }
                large_payloads::Resolved::Retry(record, why) => {
                    blocked.extend(group);
                    retry.push((record, why));
                }
            }
        }
        let (ready, filtered) = filter_records(&self.filters, ready);
        if filtered.is_empty() && unusable.is_empty() && retry.is_empty() {
            return ready;
        }
        let context = self.clone();
        tracker.spawn(async move {
            let objects = context
                .end_unresolved(filtered, unusable, retry, followers)
                .await;
            // Last, with the records gone: waiting for a delete slot holds no message hidden.
            context.delete_objects(objects).await;
        });
        ready
    }

    async fn too_large(self: Arc<Self>, record: Record) {
        dead_letter_oversized(&self, record).await;
    }

    async fn handle(self: Arc<Self>, batch: Vec<Record>, slot: Slot) {
        handle_batch(&self, batch, slot).await;
    }
}

impl MappingContext {
    /// Ends the records `prepare` took out: filtered ones are deleted (their objects too, as
    /// handled), unusable ones dead-lettered as non-retryable (deleted once stored, else back
    /// after the backoff), ones whose body could not be fetched come back later, and FIFO
    /// followers of those two are made visible at once (SQS holds them behind the first).
    /// Gives back the filtered ones' payload objects to delete.
    async fn end_unresolved(
        &self,
        filtered: Vec<Record>,
        unusable: Vec<(Record, DeadLetterCondition, ErrorInfo)>,
        retry: Vec<(Record, String)>,
        followers: Vec<Record>,
    ) -> Vec<SpillPointer> {
        // A fetch that keeps failing (access denied, a bucket in another region) ends like any
        // failure at retry.max_receive_count.
        let (exhausted, retry): (Vec<_>, Vec<_>) = retry.into_iter().partition(|(record, _)| {
            self.policy
                .max_receive_count
                .is_some_and(|most| record.attempt >= most)
        });
        let mut unusable = unusable;
        unusable.extend(exhausted.into_iter().map(|(record, why)| {
            let error = ErrorInfo::new(
                "PayloadNotFetched",
                format!(
                    "{why} (receive {}; retry.max_receive_count reached)",
                    record.attempt
                ),
            );
            (record, DeadLetterCondition::RetryAttemptsExhausted, error)
        }));
        let mut all: Vec<&Record> = filtered.iter().collect();
        all.extend(unusable.iter().map(|(r, ..)| r));
        all.extend(retry.iter().map(|(r, _)| r));
        all.extend(followers.iter());
        let owned: Vec<Record> = all.iter().map(|r| (*r).clone()).collect();
        self.acks.heartbeat.release(&owned).await;
        let mut objects = Vec::new();
        if !filtered.is_empty() {
            self.acks.metrics.filtered(filtered.len() as u64);
            let references: Vec<&Record> = filtered.iter().collect();
            let (_, failed) = self.acks.delete_reporting(&references).await;
            objects = self.objects_to_delete(&references, &failed);
        }
        let later = |record: &Record| {
            self.policy.backoff.as_ref().map_or(UNRESOLVED_RETRY, |b| {
                b.delay(record.attempt, rand::random::<f64>())
            })
        };
        let mut delete = Vec::new();
        let mut delayed = Vec::new();
        for (record, condition, error) in &unusable {
            if send_dead_letter(self, record, *condition, error, None).await {
                delete.push(record);
            } else {
                delayed.push((record, later(record)));
            }
        }
        for (record, why) in &retry {
            tracing::warn!(mapping = %self.acks.name, message_id = %record.id(), error = %why, "cannot fetch the message's body from S3; it comes back later");
            delayed.push((record, later(record)));
        }
        self.acks.delete(&delete).await;
        if !delayed.is_empty() {
            self.acks
                .change_visibility(&delayed, "large payload not fetched")
                .await;
        }
        let followers: Vec<&Record> = followers.iter().collect();
        self.forget_pointers(&owned);
        self.acks.release_now(&followers, "fifo follower").await;
        track_in_flight(&self.acks.metrics, &owned, Flight::Leaving);
        objects
    }

    /// The payload objects of handled `records` to delete, except those whose message delete
    /// `failed` (they come back and need them). Their pointers are forgotten.
    fn objects_to_delete(
        &self,
        records: &[&Record],
        failed: &std::collections::HashSet<String>,
    ) -> Vec<SpillPointer> {
        let Some(resolver) = &self.resolver else {
            return Vec::new();
        };
        let pointers: Vec<SpillPointer> = {
            let mut known = self.pointers.lock().expect("pointers lock");
            records
                .iter()
                .filter_map(|r| Some((known.remove(&receipt_key(r))?, r)))
                .filter(|(_, r)| !failed.contains(r.id()))
                .map(|(pointer, _)| pointer)
                .collect()
        };
        if resolver.delete_after_success {
            pointers
        } else {
            Vec::new()
        }
    }

    /// Deletes `objects` in the background: the batch does not wait for S3 unless
    /// [`large_payloads::CONCURRENT_DELETES`] batches' deletes are already running. Called once
    /// every acknowledgement of the batch is done.
    async fn delete_objects(&self, objects: Vec<SpillPointer>) {
        let Some(resolver) = &self.resolver else {
            return;
        };
        if objects.is_empty() {
            return;
        }
        let Ok(slot) = self.delete_slots.clone().acquire_owned().await else {
            return;
        };
        let deleting = large_payloads::Resolver::delete_objects(
            resolver.s3.clone(),
            self.acks.name.clone(),
            objects,
        );
        self.deletes.spawn(async move {
            deleting.await;
            drop(slot);
        });
    }

    /// Forgets the pointers of records that leave without being handled.
    fn forget_pointers<'a>(&self, records: impl IntoIterator<Item = &'a Record>) {
        if self.resolver.is_some() {
            let mut known = self.pointers.lock().expect("pointers lock");
            for record in records {
                known.remove(&receipt_key(record));
            }
        }
    }
}

/// What the pointers map is keyed by: the receipt, so two deliveries of one message in flight
/// keep apart.
fn receipt_key(record: &Record) -> String {
    match &record.receipt.ack {
        sluice_sources::AckToken::Sqs { receipt_handle } => receipt_handle.clone(),
        _ => record.id().to_owned(),
    }
}

/// When a message whose body could not be fetched comes back, without a retry backoff.
const UNRESOLVED_RETRY: Duration = Duration::from_secs(30);

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
    let invocation = Invocation::for_records(&context.acks.name, records_event(&batch), &batch);
    let started = Instant::now();
    let outcome = context.invoker.invoke_in(slot, invocation.clone()).await;
    let elapsed = started.elapsed();

    let decision = context
        .policy
        .decide(&queue_messages(&batch), &outcome, rand::random::<f64>());
    let label = outcome_label(&outcome, &decision);
    let failed = if decision.batch_error.is_some() {
        batch.len()
    } else {
        decision.reported_failures
    };
    context
        .acks
        .metrics
        .invoked(label, batch.len() as u64, failed as u64);
    match &decision.batch_error {
        Some(error) => tracing::warn!(
            mapping = %context.acks.name,
            request_id = %invocation.request_id,
            records = batch.len(),
            outcome = label,
            error_type = %error.error_type,
            error = %error.message,
            duration_ms = elapsed.as_millis() as u64,
            "batch failed"
        ),
        None => tracing::debug!(
            mapping = %context.acks.name,
            request_id = %invocation.request_id,
            records = batch.len(),
            outcome = label,
            failed = decision.reported_failures,
            duration_ms = elapsed.as_millis() as u64,
            "batch handled"
        ),
    }
    // From here on sluice's own visibility changes are the last word.
    context.acks.heartbeat.release(&batch).await;
    let objects = execute(context, &batch, &decision, &outcome).await;
    // Last, with the batch gone: waiting for a delete slot holds no message hidden.
    drop(batch);
    context.delete_objects(objects).await;
}

/// Carries out a decision: dead letters first (deleted only once stored), then deletes, then
/// visibility changes for retries and for FIFO followers. Gives back the payload objects to
/// delete now that their messages are gone.
async fn execute(
    context: &MappingContext,
    batch: &[Record],
    decision: &QueueDecision,
    outcome: &Outcome,
) -> Vec<SpillPointer> {
    let mut delete: Vec<&Record> = Vec::new();
    let mut handled: Vec<&Record> = Vec::new();
    let mut delayed: Vec<(&Record, Duration)> = Vec::new();
    let mut untouched: Vec<&Record> = Vec::new();
    let mut retried = 0u64;
    let function_error = match outcome {
        Outcome::FunctionError(_) | Outcome::Timeout { .. } => Some("Unhandled".to_owned()),
        _ => None,
    };
    for (record, disposition) in batch.iter().zip(&decision.dispositions) {
        match disposition {
            RecordDisposition::Delete => {
                delete.push(record);
                handled.push(record);
            }
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
    context.acks.metrics.records_retried.increment(retried);
    let acknowledged = decision
        .dispositions
        .iter()
        .filter(|d| d.is_delete())
        .count();
    let (_, failed) = context.acks.delete_reporting(&delete).await;
    context.acks.metrics.acknowledged(acknowledged as u64);
    // Objects of handled messages go once the messages are gone; a dead letter keeps its own.
    let objects = context.objects_to_delete(&handled, &failed);
    context.forget_pointers(batch);
    if !delayed.is_empty() {
        context
            .acks
            .change_visibility(&delayed, "retry backoff")
            .await;
    }
    context.acks.release_now(&untouched, "fifo follower").await;
    track_in_flight(&context.acks.metrics, batch, Flight::Leaving);
    objects
}

/// Sends one record to the on-failure destination; true when it was stored.
async fn send_dead_letter(
    context: &MappingContext,
    record: &Record,
    condition: DeadLetterCondition,
    error: &ErrorInfo,
    function_error: Option<String>,
) -> bool {
    let description = context.acks.queue.description();
    let Some(destination) = &context.on_failure else {
        tracing::error!(mapping = %context.acks.name, message_id = %record.id(), "no on_failure destination; the message stays in the queue");
        return false;
    };
    let dead_letter = DeadLetter {
        mapping: context.acks.name.clone(),
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
    let group = record.ordering_key.as_deref().unwrap_or(&context.acks.name);
    let dedup = format!("{}-{}", record.id(), record.attempt);
    let _call = context.acks.health.aws_call();
    match destination.send(&dead_letter, group, &dedup).await {
        Ok(()) => {
            context.acks.metrics.dead_lettered(condition.as_str(), 1);
            tracing::warn!(
                mapping = %context.acks.name,
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
            context.acks.metrics.ack_errors.increment(1);
            tracing::error!(mapping = %context.acks.name, message_id = %record.id(), error = %send_error, "dead-lettering failed; the message stays in the queue and will be retried");
            false
        }
    }
}

/// A record that cannot fit one invocation goes straight to the on-failure destination.
async fn dead_letter_oversized(context: &MappingContext, record: Record) {
    context
        .acks
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
        context.acks.delete(&[&record]).await;
    }
    context.forget_pointers(std::slice::from_ref(&record));
    track_in_flight(&context.acks.metrics, [&record], Flight::Leaving);
}

#[cfg(test)]
mod tests {
    //! The SQS worker against the in-memory queue and a scripted target, under tokio's paused
    //! clock: milliseconds each, no moto.
    use super::*;
    use crate::config::SourceConfig;
    use crate::destinations::testing::MemoryDestination;
    use crate::health::Health;
    use crate::targets::testing::ScriptedTarget;
    use serde_json::json;
    use sluice_sources::memory::{MemoryOpener, MemoryQueue, QueueCall};
    use sluice_sources::{Queue, SourceError};

    const VISIBILITY: Duration = Duration::from_secs(30);

    fn mapping(
        queue: Arc<MemoryQueue>,
        source_yaml: &str,
        extra_yaml: &str,
        target: Arc<ScriptedTarget>,
        on_failure: Option<Arc<dyn Destination>>,
    ) -> SqsMapping {
        let url = queue.description().url.clone();
        let yaml = format!(
            r#"
version: 1
targets:
  t: {{ http: {{ url: "http://127.0.0.1:1/" }} }}
mappings:
  - name: worker
    target: t
    source:
      sqs: {{ queue_url: "{url}", {source_yaml} }}
{extra_yaml}
"#
        );
        let config = crate::config::parse("test.yaml", &yaml, Default::default()).unwrap();
        let mapping = config.mappings[0].clone();
        let SourceConfig::Sqs(source) = mapping.source.clone() else {
            panic!("an SQS source")
        };
        SqsMapping {
            config: mapping,
            source,
            queues: Arc::new(MemoryOpener(queue)),
            // Never called: these mappings have no large_payloads.
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::Config::builder()
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .region(aws_sdk_s3::config::Region::new("us-east-1"))
                    .build(),
            ),
            target: SharedTarget::new("t", target, 10),
            on_failure,
            health: Health::new(Duration::from_secs(60), Duration::from_secs(60))
                .register("worker"),
            metrics: MappingMetrics::new("worker"),
        }
    }

    fn failures(ids: &[&str]) -> Outcome {
        Outcome::Returned {
            response: Some(json!({
                "batchItemFailures": ids.iter().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()
            })),
        }
    }

    /// Runs the worker until `done` says the queue reached the wanted state, then stops it.
    async fn run_until(
        worker: SqsMapping,
        queue: Arc<MemoryQueue>,
        done: impl Fn(&MemoryQueue) -> bool,
    ) {
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
        let started = tokio::time::Instant::now();
        while !done(&queue) {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the queue never got there: {:?}",
                queue.calls()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgements_go_dead_letters_then_deletes_then_delays() {
        let queue = Arc::new(MemoryQueue::standard("q", VISIBILITY));
        let poisoned = queue.send("poisoned");
        // The first message was received once before and not handled: this is its 2nd receive.
        queue.receive(1, Duration::ZERO).await.unwrap();
        tokio::time::advance(VISIBILITY).await;
        let failing = queue.send("failing");
        let fine = queue.send("fine");
        let target = Arc::new(ScriptedTarget::default());
        target.push(failures(&[&poisoned, &failing]));
        // Each dead letter is kept with how many acknowledgements the queue had seen by then.
        let recorder = Arc::new(MemoryDestination::default());
        let observed = queue.clone();
        recorder.observe(move || json!(observed.calls().len()));
        let worker = mapping(
            queue.clone(),
            "batch_size: 10, max_batching_window: 1s",
            "    report_batch_item_failures: true\n    retry: { max_receive_count: 2, backoff: { initial: 7s, jitter: false } }\n    on_failure: { sqs: { queue_url: \"memory://dlq\" } }",
            target.clone(),
            Some(recorder.clone()),
        );
        run_until(worker, queue.clone(), |queue| queue.calls().len() >= 2).await;

        // One invocation with all three, in send order.
        let payloads = target.payloads();
        assert_eq!(payloads.len(), 1);
        let bodies: Vec<&str> = payloads[0]["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, ["poisoned", "failing", "fine"]);
        // The dead letter was stored before the queue saw any acknowledgement.
        let stored = recorder.stored();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].observed, 0, "stored after an acknowledgement");
        assert_eq!(
            stored[0].document["sluice"]["records"][0]["messageId"],
            poisoned.as_str()
        );
        // Then one delete (the dead-lettered and the handled message), then the retry delay.
        assert_eq!(
            queue.calls()[..2],
            [
                QueueCall::Delete(vec![poisoned.clone(), fine.clone()]),
                QueueCall::ChangeVisibility(vec![(failing.clone(), Duration::from_secs(7))]),
            ]
        );
        assert_eq!(queue.remaining(), vec![failing]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fifo_failure_retries_the_message_and_returns_its_group_followers_untouched() {
        let queue = Arc::new(MemoryQueue::fifo("q.fifo", VISIBILITY));
        let a1 = queue.send_in_group("a1", Some("a"));
        let a2 = queue.send_in_group("a2", Some("a"));
        let b1 = queue.send_in_group("b1", Some("b"));
        let target = Arc::new(ScriptedTarget::default());
        target.push(failures(&[&a1]));
        let worker = mapping(
            queue.clone(),
            "batch_size: 10",
            "    report_batch_item_failures: true\n    retry: { backoff: { initial: 3s, jitter: false } }",
            target.clone(),
            None,
        );
        run_until(worker, queue.clone(), |queue| queue.calls().len() >= 3).await;
        assert_eq!(
            queue.calls()[..3],
            [
                QueueCall::Delete(vec![b1.clone()]),
                QueueCall::ChangeVisibility(vec![(a1.clone(), Duration::from_secs(3))]),
                QueueCall::ChangeVisibility(vec![(a2.clone(), Duration::ZERO)]),
            ]
        );
        // a2 was not handled: it did not reach the target after a failed a1.
        assert_eq!(target.calls(), 1);
    }

    /// Fails its first lookup; counts the lookups that came with an early first receive.
    struct FailsFirstLookup {
        inner: MemoryOpener,
        lookups: std::sync::atomic::AtomicUsize,
        early_receives: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl QueueOpener for FailsFirstLookup {
        async fn open(&self, queue_url: &str) -> Result<Arc<dyn Queue>, SourceError> {
            if self
                .lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return Err(SourceError::Queue {
                    queue_url: queue_url.to_owned(),
                    operation: "GetQueueAttributes",
                    message: "ThrottlingException".into(),
                });
            }
            self.inner.open(queue_url).await
        }

        async fn open_receiving(
            &self,
            queue_url: &str,
            max_messages: usize,
            wait: Duration,
        ) -> Result<(Arc<dyn Queue>, sluice_sources::PendingReceive), SourceError> {
            self.early_receives
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let queue = self.open(queue_url).await?;
            let first = send_first_receive(queue.clone(), max_messages, wait);
            Ok((queue, first))
        }
    }

    /// Sends a first receive at once, as SqsOpener does: its records are out of the queue from
    /// then on, whether or not anyone awaits it.
    fn send_first_receive(
        queue: Arc<dyn Queue>,
        max_messages: usize,
        wait: Duration,
    ) -> sluice_sources::PendingReceive {
        let receive = tokio::spawn(async move { queue.receive(max_messages, wait).await });
        Box::pin(async move { receive.await.expect("the receive task ran") })
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_first_lookup_sends_an_early_receive() {
        // Each early receive whose lookup failed counts against the queue's redrive policy; a
        // lookup that keeps failing must not add them up.
        let queue = Arc::new(MemoryQueue::standard("q", VISIBILITY));
        let id = queue.send("one");
        let target = Arc::new(ScriptedTarget::default());
        let mut worker = mapping(queue.clone(), "batch_size: 1", "", target.clone(), None);
        let opener = Arc::new(FailsFirstLookup {
            inner: MemoryOpener(queue.clone()),
            lookups: Default::default(),
            early_receives: Default::default(),
        });
        worker.queues = opener.clone();
        run_until(worker, queue.clone(), |queue| queue.remaining().is_empty()).await;
        assert_eq!(target.calls(), 1);
        assert_eq!(opener.lookups.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            opener
                .early_receives
                .load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the retried lookup came with another early receive"
        );
        assert_eq!(queue.receive_count(&id), None, "deleted");
    }

    /// Looks up like the memory opener and sends the first receive at once, then fills the shared
    /// target (as another mapping would) before the mapping's first poller gets to wait for room;
    /// keeps it full until `held` is emptied.
    struct FillsTargetAfterLookup {
        inner: MemoryOpener,
        target: SharedTarget,
        held: std::sync::Mutex<Option<crate::targets::Slot>>,
    }

    #[async_trait::async_trait]
    impl QueueOpener for FillsTargetAfterLookup {
        async fn open(&self, queue_url: &str) -> Result<Arc<dyn Queue>, SourceError> {
            self.inner.open(queue_url).await
        }

        async fn open_receiving(
            &self,
            queue_url: &str,
            max_messages: usize,
            wait: Duration,
        ) -> Result<(Arc<dyn Queue>, sluice_sources::PendingReceive), SourceError> {
            let queue = self.inner.open(queue_url).await?;
            let first = send_first_receive(queue.clone(), max_messages, wait);
            *self.held.lock().unwrap() = Some(self.target.permit().await);
            Ok((queue, first))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn records_of_the_early_first_receive_are_held_while_the_target_is_full() {
        let queue = Arc::new(MemoryQueue::standard("q", VISIBILITY));
        let id = queue.send("one");
        let target = Arc::new(ScriptedTarget::default());
        let mut worker = mapping(queue.clone(), "batch_size: 1", "", target.clone(), None);
        worker.target = SharedTarget::new("t", target.clone(), 1);
        let opener = Arc::new(FillsTargetAfterLookup {
            inner: MemoryOpener(queue.clone()),
            target: worker.target.clone(),
            held: Default::default(),
        });
        worker.queues = opener.clone();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
        // The target stays full for three visibility timeouts: the message must stay hidden.
        tokio::time::sleep(VISIBILITY * 3).await;
        assert_eq!(target.calls(), 0);
        assert_eq!(
            queue.receive_count(&id),
            Some(1),
            "the message came back while its mapping waited for room: {:?}",
            queue.calls()
        );
        drop(opener.held.lock().unwrap().take());
        while !queue.remaining().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
        assert_eq!(target.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_messages_that_never_started_are_returned_at_once() {
        let queue = Arc::new(MemoryQueue::standard("q", VISIBILITY));
        let first = queue.send("first");
        let second = queue.send("second");
        let target = Arc::new(ScriptedTarget::default());
        // A batch waits for its window (a minute) to fill; the stop comes first.
        let worker = mapping(
            queue.clone(),
            "batch_size: 10, max_batching_window: 1m",
            "",
            target.clone(),
            None,
        );
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
        while queue.visible() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopping = tokio::time::Instant::now();
        shutdown.cancel();
        running.await.unwrap();
        assert!(
            stopping.elapsed() < Duration::from_secs(1),
            "{:?}",
            stopping.elapsed()
        );
        assert_eq!(target.calls(), 0);
        assert_eq!(
            queue.calls(),
            [QueueCall::ChangeVisibility(vec![
                (first, Duration::ZERO),
                (second, Duration::ZERO),
            ])]
        );
        assert_eq!(queue.visible(), 2, "both can be received again at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_target_fails_the_batch_and_the_worker_goes_on() {
        let queue = Arc::new(MemoryQueue::standard("q", VISIBILITY));
        let id = queue.send("boom");
        let target = Arc::new(ScriptedTarget::default());
        target.push_panic("a bug in the target");
        let worker = mapping(
            queue.clone(),
            "batch_size: 1",
            "    retry: { backoff: { initial: 2s, jitter: false } }",
            target.clone(),
            None,
        );
        // Failed (not lost): delayed by the backoff, then handled on its next receive.
        run_until(worker, queue.clone(), |queue| queue.remaining().is_empty()).await;
        assert_eq!(target.calls(), 2);
        assert_eq!(
            queue.calls()[0],
            QueueCall::ChangeVisibility(vec![(id.clone(), Duration::from_secs(2))])
        );
        assert_eq!(queue.calls()[1], QueueCall::Delete(vec![id]));
    }
}
