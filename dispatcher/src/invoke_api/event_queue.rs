//! `Event` invocations kept in an SQS queue (`invoke_api.event_queue.sqs`) instead of the state
//! file, so that an accepted event outlives the task that accepted it: ECS replaces tasks with
//! their storage, and Lambda too keeps asynchronous events in a queue of its own.
//!
//! Guarantees:
//! - an event is in the queue (SendMessage answered) before the caller gets 202; an event the
//!   queue refuses is refused to the caller (413 when it is over the queue's size limit, 500
//!   otherwise), never accepted and lost;
//! - every instance receives from the queue (one poller, bounded by the functions' concurrency,
//!   each message held by the heartbeat while it runs) and runs each event under its function's
//!   async policy, on the same path as the state-file queue ([`async_exec`]), with the request id
//!   the caller got;
//! - a retry is a visibility change by the policy's delay; attempts are the message's receive
//!   count less the receives the target refused (throttled, unavailable: counted in memory, so
//!   after a restart they count as attempts, erring toward giving up sooner, never retrying
//!   more); `max_event_age` counts from the message's `SentTimestamp`;
//! - the message is deleted only once the event succeeded or gave up and its destination record,
//!   if any, is stored; a record that cannot be stored keeps the message, and in this process the
//!   handler does not run again for it, only the record is stored again;
//! - a message that names no function of this instance is left to the queue (its visibility
//!   timeout and redrive policy) and logged: another instance with that function takes it.

use super::{Ending, Finishing, Function, STORE_RETRY, store_ending};
use crate::runtime::async_exec::{self, Completion, EventStore};
use crate::runtime::invoker::Slot;
use crate::runtime::poller::{self, MessageEnd, PollSettings, QueueAcks, QueueWork};
use crate::targets::Invocation;
use crate::telemetry::MappingMetrics;
use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::Value;
use sluice_policies::{AsyncAttempt, BatchLimits, ErrorInfo};
use sluice_sources::{QueueOpener, Record};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The name of the queue's worker on `/readyz` (under `mappings`: it polls like one, and can be
/// paused like one) and in logs. No mapping may take it.
pub const WORKER_NAME: &str = "invoke_api.event_queue";
/// The message attribute that names the function.
const FUNCTION_ATTRIBUTE: &str = "SluiceFunction";
/// The message attribute that holds the request id the caller got.
const REQUEST_ID_ATTRIBUTE: &str = "SluiceRequestId";
/// How long one receive waits for messages.
const WAIT: Duration = Duration::from_secs(20);

/// Why an event was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "the event queue {queue_url} takes messages of at most its MaximumMessageSize: {message}"
    )]
    TooLarge { queue_url: String, message: String },
    #[error("sending the event to the queue {queue_url} failed: {message}")]
    Failed { queue_url: String, message: String },
}

/// Sends accepted events to the queue.
pub struct EventSender {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl EventSender {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: &str) -> Self {
        Self {
            client,
            queue_url: queue_url.to_owned(),
        }
    }

    /// Sends one event; `Ok` once SQS has it.
    pub async fn send(
        &self,
        function: &str,
        request_id: &str,
        payload: &str,
    ) -> Result<(), SendError> {
        let attribute = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .expect("data type is set")
        };
        let sent = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(payload)
            .message_attributes(FUNCTION_ATTRIBUTE, attribute(function))
            .message_attributes(REQUEST_ID_ATTRIBUTE, attribute(request_id))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(error) => {
                let message = DisplayErrorContext(&error).to_string();
                let too_large = error
                    .as_service_error()
                    .and_then(|e| aws_sdk_sqs::error::ProvideErrorMetadata::code(e))
                    .is_some_and(|code| code.contains("InvalidParameterValue"))
                    && message.contains("size");
                Err(if too_large {
                    SendError::TooLarge {
                        queue_url: self.queue_url.clone(),
                        message,
                    }
                } else {
                    SendError::Failed {
                        queue_url: self.queue_url.clone(),
                        message,
                    }
                })
            }
        }
    }
}

/// What the queue's poller does with each message: runs its event.
struct Work {
    acks: Arc<QueueAcks>,
    functions: BTreeMap<String, Arc<Function>>,
    /// Receives the target refused, per message id: they are not attempts.
    not_run: Mutex<HashMap<String, u32>>,
    /// Events whose attempts are over but whose destination record could not be stored yet.
    finishing: Mutex<HashMap<String, Finishing>>,
}

/// Runs the queue's poller until `stop`, then drains for at most `drain`.
pub(super) async fn run(
    queue_url: String,
    queues: Arc<dyn QueueOpener>,
    functions: BTreeMap<String, Arc<Function>>,
    health: crate::health::MappingHealthHandle,
    drain: Duration,
    stop: CancellationToken,
) {
    let metrics = MappingMetrics::function(WORKER_NAME);
    // Room for as many events as the functions can run at once; each event takes its function's
    // own slot around each attempt.
    let room: usize = functions.values().map(|f| f.workers).sum::<usize>().max(1);
    let gate = crate::targets::SharedTarget::new(WORKER_NAME, Arc::new(Gate), room);
    let settings = PollSettings {
        pollers: 1,
        max_concurrency: room,
        limits: BatchLimits::new(1, Duration::ZERO),
        wait_time: WAIT,
        receive_ahead: true,
        autoscaling: Default::default(),
    };
    let Some((queue, _)) = poller::connect(
        queues.as_ref(),
        &queue_url,
        None,
        WORKER_NAME,
        &health,
        &metrics,
        &stop,
    )
    .await
    else {
        return;
    };
    tracing::info!(queue_url = %queue_url, functions = functions.len(), "invoke API event queue polling");
    let acks = QueueAcks::new(
        WORKER_NAME,
        queue,
        // Events may run long: held up to SQS's longest visibility.
        Some(sluice_sources::sqs::MAX_VISIBILITY),
        health,
        metrics,
    );
    let work = Arc::new(Work {
        acks: acks.clone(),
        functions,
        not_run: Mutex::new(HashMap::new()),
        finishing: Mutex::new(HashMap::new()),
    });
    poller::run(acks, work, gate, settings, stop, drain, None).await;
}

/// The poller's room: never called (each event calls its function's target).
struct Gate;

#[async_trait]
impl crate::targets::Target for Gate {
    async fn invoke(&self, _invocation: &Invocation) -> sluice_policies::Outcome {
        sluice_policies::Outcome::Unavailable {
            message: "the event queue's room is not a target".to_owned(),
        }
    }
}

#[async_trait]
impl QueueWork for Work {
    async fn too_large(self: Arc<Self>, record: Record) {
        // SQS's messages all fit one invocation; should one not, it still runs alone.
        self.handle_message(record).await;
    }

    async fn handle(self: Arc<Self>, mut batch: Vec<Record>, slot: Slot) {
        // The event takes its own function's slot around each attempt.
        drop(slot);
        if let Some(message) = batch.pop() {
            self.handle_message(message).await;
        }
    }
}

impl Work {
    async fn handle_message(&self, message: Record) {
        let end = self.run_event(&message).await;
        if matches!(end, MessageEnd::Done) {
            self.not_run
                .lock()
                .expect("not-run lock")
                .remove(message.id());
            self.finishing
                .lock()
                .expect("finishing lock")
                .remove(message.id());
        }
        if poller::end_message(&self.acks, &message, end).await {
            self.acks.metrics.acknowledged(1);
        }
    }

    async fn run_event(&self, message: &Record) -> MessageEnd {
        let record: Value = serde_json::from_str(message.event.get()).unwrap_or_default();
        let attribute = |name: &str| record["messageAttributes"][name]["stringValue"].as_str();
        let (Some(name), Some(request_id)) = (
            attribute(FUNCTION_ATTRIBUTE),
            attribute(REQUEST_ID_ATTRIBUTE),
        ) else {
            tracing::error!(message_id = %message.id(), "a message in the invoke API's event queue is not an event sluice sent (no SluiceFunction and SluiceRequestId attributes); it is left to the queue's redrive policy");
            return MessageEnd::Leave;
        };
        let Some(function) = self.functions.get(name) else {
            tracing::error!(message_id = %message.id(), function = %name, %request_id, "an event for a function this instance does not serve; it is left to the queue (another instance may serve it; its redrive policy ends it otherwise)");
            return MessageEnd::Leave;
        };
        let body = record["body"].as_str().unwrap_or_default().to_owned();
        let payload = || serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
        let finishing = self
            .finishing
            .lock()
            .expect("finishing lock")
            .get(message.id())
            .cloned();
        if let Some(end) = finishing {
            // The handler already ran: only the destination record is still to be stored.
            let ending = Ending {
                request_id,
                completion: end.condition,
                invoke_count: end.invoke_count,
                payload: payload(),
                response: end.response,
                first_attempt_at: message.arrived_at,
            };
            return if store_ending(function, ending).await {
                MessageEnd::Done
            } else {
                MessageEnd::Retry(STORE_RETRY)
            };
        }
        let not_run = self
            .not_run
            .lock()
            .expect("not-run lock")
            .get(message.id())
            .copied()
            .unwrap_or(0);
        let attempt = AsyncAttempt {
            queued_at: message.arrived_at,
            failed_attempts: message.attempt.saturating_sub(1).saturating_sub(not_run),
            not_run,
        };
        let invocation = Invocation::attempt_of(
            &function.name,
            body.clone().into_bytes(),
            request_id,
            message.trace.as_ref(),
        );
        let mut store = MessageStore {
            work: self,
            function,
            message,
            request_id,
            body: &body,
            base_not_run: not_run,
            end: MessageEnd::Leave,
        };
        async_exec::run(
            async_exec::Attempt {
                invoker: &function.invoker,
                policy: &function.policy,
                subject: request_id,
                attempt,
                invocation,
            },
            &mut store,
        )
        .await;
        store.end
    }
}

/// One event as the async executor's store: its message.
struct MessageStore<'a> {
    work: &'a Work,
    function: &'a Function,
    message: &'a Record,
    request_id: &'a str,
    body: &'a str,
    /// The message's refused receives before this one.
    base_not_run: u32,
    end: MessageEnd,
}

#[async_trait]
impl EventStore for MessageStore<'_> {
    async fn reschedule(&mut self, delay: Duration, _failed_attempts: u32, not_run: u32) {
        // The failed attempts are the message's receive count; refusals are kept in memory.
        if not_run > self.base_not_run {
            *self
                .work
                .not_run
                .lock()
                .expect("not-run lock")
                .entry(self.message.id().to_owned())
                .or_insert(0) += 1;
        }
        self.end = MessageEnd::Retry(delay);
    }

    async fn complete(
        &mut self,
        completion: Completion,
        invoke_count: u32,
        response: Result<Option<Value>, ErrorInfo>,
    ) {
        if completion == Completion::Success {
            tracing::info!(function = %self.function.name, request_id = %self.request_id, attempts = invoke_count, "event handled");
        }
        let ending = Ending {
            request_id: self.request_id,
            completion,
            invoke_count,
            payload: serde_json::from_str(self.body).unwrap_or(Value::Null),
            response: response.clone(),
            first_attempt_at: self.message.arrived_at,
        };
        self.end = if store_ending(self.function, ending).await {
            MessageEnd::Done
        } else {
            self.work.finishing.lock().expect("finishing lock").insert(
                self.message.id().to_owned(),
                Finishing {
                    condition: completion,
                    invoke_count,
                    response,
                },
            );
            MessageEnd::Retry(STORE_RETRY)
        };
    }
}
