//! The worker of one S3 notification mapping: receive from the bucket's queue → parse the
//! notification → filter → one asynchronous invocation per S3 record → async policy.
//!
//! Guarantees:
//! - `s3:TestEvent` messages are deleted without an invocation, as are messages whose records no
//!   filter (`events`, `prefix`, `suffix` on the decoded key, and the mapping's `filters`
//!   patterns over the record) matches;
//! - each S3 record is invoked with Lambda's S3 event, `{"Records": [record]}`, the record exactly
//!   as the notification held it;
//! - the queue is the durable async queue: a failed event's message is hidden for the retry delay
//!   (about 1, then 2 minutes; backoff for throttles) and comes back; a message is deleted only
//!   once every record succeeded or was stored in `on_failure` as `RetriesExhausted` /
//!   `EventAgeExceeded`; a message that is not an S3 notification goes to `on_failure` with the
//!   reason, or stays for the queue's redrive policy when there is none;
//! - attempts are the message's receive count minus the receives the target refused (kept in
//!   memory; after a restart refused receives count as attempts); the event's age counts from
//!   when the message was sent;
//! - a message with several records is retried as a whole, so records that succeeded are invoked
//!   again with it (S3 sends one record per message);
//! - a message is held (visibility extended) while it is handled;
//! - polling is the SQS mappings' poller ([`crate::runtime::poller`], one message per batch): nothing is
//!   received that could not start at once (room in the mapping and in the shared target), every
//!   wait ends at shutdown, and at shutdown messages received but not started are made visible
//!   again at once.

pub mod config;

use self::config::S3SourceConfig;
use crate::config::MappingConfig;
use crate::destinations::{
    AsyncRecord, DeadLetter, Destination, EnvelopeSource, Placement, envelope::now_since_epoch,
};
use crate::health::MappingHealthHandle;
use crate::runtime::async_exec::{self, Completion, EventStore, RefusedReceives};
use crate::runtime::invoker::{Invoker, Slot};
use crate::runtime::mapping::{Mapping, SourceClients, StartMapping};
use crate::runtime::poller::{self, MessageEnd, PollSettings, QueueAcks, QueueWork};
use crate::targets::{Invocation, SharedTarget};
use crate::telemetry::MappingMetrics;
use serde_json::{Value, json};
use sluice_policies::{AsyncPolicy, BatchLimits, DeadLetterCondition, ErrorInfo, FilterSet};
use sluice_sources::s3::{Notification, S3Filter, parse_notification};
use sluice_sources::{QueueOpener, Record};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Starts `mapping`, reading `source`.
pub fn start(source: &S3SourceConfig, mapping: Mapping, clients: &SourceClients) -> StartMapping {
    let shutdown_timeout = mapping.shutdown_timeout;
    let worker = S3Mapping {
        config: mapping.config,
        source: source.clone(),
        queues: clients.queues.clone(),
        target: mapping.target,
        on_failure: mapping.on_failure,
        on_success: mapping.on_success,
        health: mapping.health,
        metrics: mapping.metrics,
    };
    Box::new(move |token| Box::pin(worker.clone().run(token, shutdown_timeout)))
}

#[derive(Clone)]
pub struct S3Mapping {
    pub config: MappingConfig,
    pub source: S3SourceConfig,
    /// Opens the mapping's queue.
    pub queues: Arc<dyn QueueOpener>,
    pub target: SharedTarget,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub on_success: Option<Arc<dyn Destination>>,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
}

struct Context {
    /// The mapping's name, queue, heartbeat, readiness and metrics, and its acknowledgements.
    acks: Arc<QueueAcks>,
    invoker: Invoker,
    filter: S3Filter,
    /// The mapping's FilterCriteria patterns, over each S3 record (semantics.md §7).
    patterns: FilterSet,
    policy: AsyncPolicy,
    on_failure: Option<Arc<dyn Destination>>,
    on_success: Option<Arc<dyn Destination>>,
    /// Receives the target refused, per message id: they are not attempts.
    not_run: RefusedReceives,
}

impl S3Mapping {
    pub async fn run(self, shutdown: CancellationToken, shutdown_timeout: Duration) {
        let name = self.config.name.clone();
        // One message per batch (each is one asynchronous event, or a few); a receive asks for
        // as many as could start at once.
        let settings = PollSettings {
            pollers: 1,
            max_concurrency: self.source.max_concurrency,
            limits: BatchLimits::new(1, Duration::ZERO),
            wait_time: self.source.wait_time,
            receive_ahead: true,
            autoscaling: self.config.autoscaling.clone(),
        };
        let Some((queue, first)) = poller::connect(
            self.queues.as_ref(),
            &self.source.queue_url,
            settings.early_receive(&self.target),
            &name,
            &self.health,
            &self.metrics,
            &shutdown,
        )
        .await
        else {
            return;
        };
        tracing::info!(mapping = %name, queue_url = %self.source.queue_url, "mapping started");
        let acks = QueueAcks::new(
            &name,
            queue,
            // S3 notification events may run long: held up to SQS's longest visibility.
            Some(sluice_sources::sqs::MAX_VISIBILITY),
            self.health.clone(),
            self.metrics.clone(),
        );
        let context = Arc::new(Context {
            acks: acks.clone(),
            invoker: Invoker::new(self.target.clone(), self.metrics.clone()),
            filter: S3Filter {
                events: self.source.events.clone(),
                prefix: self.source.prefix.clone(),
                suffix: self.source.suffix.clone(),
            },
            patterns: self.config.filters.clone(),
            policy: self.source.policy.clone(),
            on_failure: self.on_failure.clone(),
            on_success: self.on_success.clone(),
            not_run: RefusedReceives::default(),
        });
        poller::run(
            acks,
            context,
            self.target.clone(),
            settings,
            shutdown,
            shutdown_timeout,
            first,
        )
        .await;
    }
}

#[async_trait::async_trait]
impl QueueWork for Context {
    async fn too_large(self: Arc<Self>, record: Record) {
        // No SQS message is too large for an invocation; should one be, its records are still
        // invoked one by one.
        handle_message(&self, record).await;
    }

    async fn handle(self: Arc<Self>, mut batch: Vec<Record>, slot: Slot) {
        // The poller made sure the target had room; a message takes a slot only around each of
        // its invocations, not while it is parsed, filtered or dead-lettered (the target is
        // shared with other mappings).
        drop(slot);
        let Some(message) = batch.pop() else { return };
        handle_message(&self, message).await;
    }
}

async fn handle_message(context: &Context, message: Record) {
    let end = process(context, &message).await;
    if matches!(end, MessageEnd::Done) {
        context.not_run.forget(&message);
    }
    if poller::end_message(&context.acks, &message, end).await {
        context.acks.metrics.acknowledged(1);
    }
}

fn sqs_source(context: &Context, message: &Record) -> EnvelopeSource {
    let description = context.acks.queue.description();
    EnvelopeSource::S3 {
        queue_url: description.url.clone(),
        queue_arn: description.arn.clone(),
        message_ids: vec![message.id().to_owned()],
    }
}

async fn process(context: &Context, message: &Record) -> MessageEnd {
    let record: Value = serde_json::from_str(message.event.get()).unwrap_or_default();
    let body = record["body"].as_str().unwrap_or_default();
    let s3_records = match parse_notification(body) {
        Ok(Notification::Test) => {
            tracing::info!(mapping = %context.acks.name, message_id = %message.id(), "s3:TestEvent deleted without an invocation");
            context.acks.metrics.filtered(1);
            return MessageEnd::Done;
        }
        Ok(Notification::Records(records)) => records,
        Err(error) => {
            let reason = crate::error_chain(&error);
            return invalid_message(context, message, &record, &reason).await;
        }
    };
    let wanted: Vec<Value> = s3_records
        .into_iter()
        .filter(|r| context.filter.matches(r) && context.patterns.passes(r))
        .collect();
    if wanted.is_empty() {
        context.acks.metrics.filtered(1);
        return MessageEnd::Done;
    }
    let attempt = context.not_run.attempt(message);
    let mut retry_after: Option<Duration> = None;
    let mut refused = false;
    for (index, s3_record) in wanted.into_iter().enumerate() {
        let event = json!({ "Records": [s3_record] });
        let request_id = event_request_id(context, message, index);
        let invocation = Invocation::attempt_of(
            &context.acks.name,
            event.to_string().into_bytes(),
            &request_id,
            message.trace.as_ref(),
        );
        let key = event["Records"][0]["s3"]["object"]["key"]
            .as_str()
            .unwrap_or_default();
        let subject = format!("message {}, key {key}", message.id());
        let mut store = MessageEvent {
            context,
            message,
            request_id: &request_id,
            event: &event,
            base_not_run: attempt.not_run,
            retry_after: &mut retry_after,
            refused: &mut refused,
        };
        async_exec::run(
            async_exec::Attempt {
                invoker: &context.invoker,
                policy: &context.policy,
                subject: &subject,
                attempt,
                invocation,
            },
            &mut store,
        )
        .await;
    }
    if refused {
        context.not_run.refused(message);
    }
    match retry_after {
        Some(delay) => MessageEnd::Retry(delay),
        None => MessageEnd::Done,
    }
}

/// One S3 record's event as the async executor's store: its notification's message. Messages
/// are retried whole, after the longest delay any of their events asked for.
struct MessageEvent<'a> {
    context: &'a Context,
    message: &'a Record,
    request_id: &'a str,
    event: &'a Value,
    /// The message's refused receives before this one.
    base_not_run: u32,
    retry_after: &'a mut Option<Duration>,
    refused: &'a mut bool,
}

impl MessageEvent<'_> {
    fn retry_after(&mut self, delay: Duration) {
        *self.retry_after = Some(self.retry_after.map_or(delay, |d| d.max(delay)));
    }
}

#[async_trait::async_trait]
impl EventStore for MessageEvent<'_> {
    async fn reschedule(&mut self, delay: Duration, _failed_attempts: u32, not_run: u32) {
        // The failed attempts are the message's receive count; refusals are kept in memory.
        *self.refused |= not_run > self.base_not_run;
        self.retry_after(delay);
    }

    async fn complete(
        &mut self,
        completion: Completion,
        invoke_count: u32,
        response: Result<Option<Value>, ErrorInfo>,
    ) {
        let context = self.context;
        match completion {
            Completion::Success => {
                if context.on_success.is_some() {
                    store_success(
                        context,
                        self.message,
                        self.request_id,
                        self.event.clone(),
                        response.ok().flatten(),
                        invoke_count,
                    )
                    .await;
                }
            }
            Completion::Failed(condition) => {
                let stored = store_async(
                    context,
                    self.message,
                    condition.as_str(),
                    invoke_count,
                    self.request_id,
                    self.event.clone(),
                    response,
                )
                .await;
                if !stored {
                    self.retry_after(context.policy.throttle_backoff.delay(1, 0.5));
                }
            }
        }
    }
}

/// The request id of the `index`th wanted record of a notification: the same for every attempt
/// (a retry is the same message received again), as Lambda keeps one id across an asynchronous
/// event's retries.
fn event_request_id(context: &Context, message: &Record, index: usize) -> String {
    crate::targets::stable_request_id(&[&context.acks.name, message.id(), &index.to_string()])
}

/// A message that is not an S3 notification: to `on_failure` with the reason, else left to the
/// queue's redrive policy.
async fn invalid_message(
    context: &Context,
    message: &Record,
    record: &Value,
    reason: &str,
) -> MessageEnd {
    let Some(destination) = &context.on_failure else {
        tracing::error!(mapping = %context.acks.name, message_id = %message.id(), %reason, "not an S3 notification; no on_failure destination, so it stays for the queue's redrive policy");
        return MessageEnd::Leave;
    };
    let description = context.acks.queue.description();
    let dead_letter = DeadLetter {
        mapping: context.acks.name.clone(),
        target: context.invoker.target().name.clone(),
        region: description.region.clone(),
        condition: DeadLetterCondition::NonRetryableError,
        attempts: 0,
        error: ErrorInfo::new("InvalidS3Notification", reason),
        function_error: None,
        source: sqs_source(context, message),
        records: vec![record.clone()],
        first_attempt_at: message.first_received_at,
        last_attempt_at: now_since_epoch(),
    };
    let _call = context.acks.health.aws_call();
    match destination
        .send(&dead_letter, &context.acks.name, message.id())
        .await
    {
        Ok(()) => {
            context
                .acks
                .metrics
                .dead_lettered(DeadLetterCondition::NonRetryableError.as_str(), 1);
            tracing::warn!(mapping = %context.acks.name, message_id = %message.id(), %reason, "not an S3 notification; dead-lettered");
            MessageEnd::Done
        }
        Err(error) => {
            context.acks.metrics.ack_errors.increment(1);
            tracing::error!(mapping = %context.acks.name, message_id = %message.id(), %error, "dead-lettering failed; the message stays");
            MessageEnd::Leave
        }
    }
}

async fn store_async(
    context: &Context,
    message: &Record,
    condition: &'static str,
    invoke_count: u32,
    request_id: &str,
    event: Value,
    response: Result<Option<Value>, ErrorInfo>,
) -> bool {
    let Some(destination) = &context.on_failure else {
        tracing::error!(mapping = %context.acks.name, message_id = %message.id(), condition, "event discarded: its retries ran out and the mapping has no on_failure destination");
        context.acks.metrics.discarded(condition, 1);
        return true;
    };
    let stored = store_record(
        context,
        destination.as_ref(),
        message,
        condition,
        invoke_count,
        request_id,
        event,
        response,
    )
    .await;
    if stored {
        context.acks.metrics.dead_lettered(condition, 1);
        tracing::warn!(mapping = %context.acks.name, message_id = %message.id(), condition, attempts = invoke_count, destination = destination.describe(), "event dead-lettered");
    }
    stored
}

async fn store_success(
    context: &Context,
    message: &Record,
    request_id: &str,
    event: Value,
    response: Option<Value>,
    invoke_count: u32,
) {
    if let Some(destination) = &context.on_success {
        store_record(
            context,
            destination.as_ref(),
            message,
            "Success",
            invoke_count,
            request_id,
            event,
            Ok(response),
        )
        .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn store_record(
    context: &Context,
    destination: &dyn Destination,
    message: &Record,
    condition: &'static str,
    invoke_count: u32,
    request_id: &str,
    event: Value,
    response: Result<Option<Value>, ErrorInfo>,
) -> bool {
    let record = AsyncRecord {
        mapping: context.acks.name.clone(),
        target: context.invoker.target().name.clone(),
        region: context.acks.queue.description().region.clone(),
        condition,
        invoke_count,
        request_id: request_id.to_owned(),
        request_payload: event,
        response,
        source: sqs_source(context, message),
        first_attempt_at: message.first_received_at,
        last_attempt_at: now_since_epoch(),
    };
    let key_part = record.source.key_part().to_owned();
    let dedup = format!("{}-{condition}-{}", message.id(), message.attempt);
    let placement = Placement {
        mapping: &context.acks.name,
        key_part: &key_part,
        group_hint: &context.acks.name,
        dedup_hint: &dedup,
    };
    let _call = context.acks.health.aws_call();
    match destination.store(record.to_json(), &placement).await {
        Ok(()) => true,
        Err(error) => {
            context.acks.metrics.ack_errors.increment(1);
            tracing::error!(mapping = %context.acks.name, message_id = %message.id(), condition, %error, "storing the destination record failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    //! The S3 worker on the in-memory queue and a scripted target, under tokio's paused clock.
    use super::*;
    use crate::config::SourceConfig;
    use crate::health::Health;
    use crate::targets::testing::ScriptedTarget;
    use serde_json::json;
    use sluice_sources::Queue;
    use sluice_sources::memory::{MemoryOpener, MemoryQueue, QueueCall};

    fn notification(key: &str) -> String {
        json!({ "Records": [{
            "eventName": "ObjectCreated:Put",
            "s3": { "bucket": { "name": "b" }, "object": { "key": key } }
        }] })
        .to_string()
    }

    fn mapping(queue: Arc<MemoryQueue>, target: SharedTarget, max_concurrency: usize) -> S3Mapping {
        let yaml = format!(
            r#"
version: 1
targets:
  t: {{ http: {{ url: "http://127.0.0.1:1/" }} }}
mappings:
  - name: uploads
    target: t
    source:
      s3: {{ queue_url: "{url}", max_concurrency: {max_concurrency}, wait_time: 1s }}
"#,
            url = queue.description().url
        );
        let config = crate::config::parse("test.yaml", &yaml, Default::default()).unwrap();
        let mapping = config.mappings[0].clone();
        let SourceConfig::S3(source) = mapping.source.clone() else {
            panic!("an S3 source")
        };
        S3Mapping {
            config: mapping,
            source,
            queues: Arc::new(MemoryOpener(queue)),
            target,
            on_failure: None,
            on_success: None,
            health: Health::new(Duration::from_secs(60), Duration::from_secs(60))
                .register("uploads"),
            metrics: MappingMetrics::new("uploads"),
        }
    }

    // Issue 17: the S3 worker used to drop what it had received at shutdown (it came back only
    // after the visibility timeout); on the shared poller it is made visible again at once.
    #[tokio::test(start_paused = true)]
    async fn at_shutdown_a_message_waiting_for_the_shared_target_is_returned_at_once() {
        let queue = Arc::new(MemoryQueue::standard("uploads", Duration::from_secs(30)));
        let first = queue.send(&notification("a.txt"));
        let second = queue.send(&notification("b.txt"));
        let target = Arc::new(ScriptedTarget::default());
        target.push_hang();
        // One target slot, two message slots: the second message waits for the target.
        let shared = SharedTarget::new("t", target.clone(), 1);
        let worker = mapping(queue.clone(), shared, 2);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
        while target.calls() == 0 || queue.visible() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
        assert_eq!(
            target.calls(),
            1,
            "only the first message reached the target"
        );
        assert_eq!(
            queue.calls(),
            [QueueCall::ChangeVisibility(vec![(second, Duration::ZERO)])]
        );
        // The first, abandoned at the drain deadline, comes back after its visibility timeout.
        assert!(queue.remaining().contains(&first));
    }

    #[tokio::test(start_paused = true)]
    async fn each_record_is_invoked_with_lambdas_s3_event_and_the_message_deleted() {
        let queue = Arc::new(MemoryQueue::standard("uploads", Duration::from_secs(30)));
        let id = queue.send(&notification("photos/cat.jpg"));
        let target = Arc::new(ScriptedTarget::default());
        let worker = mapping(queue.clone(), SharedTarget::new("t", target.clone(), 1), 2);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
        while queue.calls().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
        assert_eq!(queue.calls(), [QueueCall::Delete(vec![id])]);
        let event = &target.payloads()[0];
        assert_eq!(event["Records"][0]["s3"]["object"]["key"], "photos/cat.jpg");
        assert_eq!(event["Records"].as_array().unwrap().len(), 1);
    }
}
