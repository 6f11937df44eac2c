//! `Event` invocations kept in an SQS queue (`invoke_api.event_queue.sqs`) instead of the state
//! file, so that an accepted event outlives the task that accepted it: ECS replaces tasks with
//! their storage, and Lambda too keeps asynchronous events in a queue of its own.
//!
//! Guarantees:
//! - an event is in the queue (SendMessage answered) before the caller gets 202; an event the
//!   queue refuses is refused to the caller (413 over the queue's size limit, 400 for characters
//!   SQS does not carry, 500 otherwise), never accepted and lost;
//! - every instance receives from the queue and runs each event under its function's async
//!   policy, on the same path as the state-file queue ([`async_exec`]), with the request id the
//!   caller got; at most a function's own concurrency of its events are held at once (a message
//!   that finds its function full goes back at once, so one busy function does not hold the
//!   others' messages);
//! - the event's progress travels in the message: its acceptance time (for `max_event_age`), its
//!   failed attempts and its refused calls are message attributes, and a retry is a copy of the
//!   message with the new counts, sent with the policy's delay before the original is deleted.
//!   So neither a restart, another instance, a message given back at shutdown nor one that waited
//!   for its function counts as an attempt, and a queue's redrive policy sees only messages that
//!   keep coming back without an end (at-least-once: a copy sent whose original could not be
//!   deleted runs twice);
//! - the message is deleted only once the event succeeded or gave up and its destination record,
//!   if any, is stored; a record that cannot be stored keeps the message, and in this process
//!   the handler does not run again for it, only the record is stored again;
//! - a message that names no function of this instance goes back to the queue for five minutes
//!   and is logged: another instance with that function takes it, and its redrive policy ends it
//!   otherwise.

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
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The name of the queue's worker on `/readyz` (under `mappings`: it polls like one, and can be
/// paused like one) and in logs. No mapping may take it.
pub const WORKER_NAME: &str = crate::config::EVENT_QUEUE_WORKER;
/// The message attribute that names the function.
const FUNCTION_ATTRIBUTE: &str = "SluiceFunction";
/// The message attribute that holds the request id the caller got.
const REQUEST_ID_ATTRIBUTE: &str = "SluiceRequestId";
/// When the event was accepted, in milliseconds since the epoch: its age counts from there.
const ACCEPTED_AT_ATTRIBUTE: &str = "SluiceAcceptedAt";
/// The attempts the function ran and failed.
const FAILED_ATTEMPTS_ATTRIBUTE: &str = "SluiceFailedAttempts";
/// The calls the target refused (throttled, unavailable): not attempts.
const NOT_RUN_ATTRIBUTE: &str = "SluiceNotRun";
/// Not to run before this time (ms since the epoch), for retry delays over SQS's 15 minutes.
const NOT_BEFORE_ATTRIBUTE: &str = "SluiceNotBefore";
/// SQS's longest DelaySeconds.
const MAX_SEND_DELAY: Duration = Duration::from_secs(900);
/// How long a message for a function this instance does not serve stays away.
const UNKNOWN_FUNCTION_BACKOFF: Duration = Duration::from_secs(300);
/// How long a message whose function is full stays away.
const FULL_FUNCTION_BACKOFF: Duration = Duration::from_secs(1);
/// How long an event whose record could not be stored is remembered, so its handler does not
/// run again: past it (the message was ended by another instance, or redriven), it is forgotten.
const FINISHING_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How long one receive waits for messages.
const WAIT: Duration = Duration::from_secs(20);

/// Why an event was not sent. The caller of the Invoke API sees only what it can act on; the
/// log has the queue and SQS's words.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the event is over the event queue's MaximumMessageSize: {message}")]
    TooLarge { message: String },
    #[error("the event holds characters an SQS message cannot carry: {message}")]
    InvalidContent { message: String },
    #[error("sending the event to the queue {queue_url} failed: {message}")]
    Failed { queue_url: String, message: String },
}

/// An event's progress, as its message carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub accepted_at: Duration,
    pub failed_attempts: u32,
    pub not_run: u32,
    pub not_before: Option<Duration>,
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

    /// Sends one event just accepted; `Ok` once SQS has it.
    pub async fn send(
        &self,
        function: &str,
        request_id: &str,
        payload: &str,
    ) -> Result<(), SendError> {
        let progress = Progress {
            accepted_at: crate::destinations::envelope::now_since_epoch(),
            failed_attempts: 0,
            not_run: 0,
            not_before: None,
        };
        self.send_with(function, request_id, payload, progress, Duration::ZERO)
            .await
    }

    /// Sends an event again with its new progress, to run after `delay`.
    async fn send_with(
        &self,
        function: &str,
        request_id: &str,
        payload: &str,
        progress: Progress,
        delay: Duration,
    ) -> Result<(), SendError> {
        let text = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .expect("data type is set")
        };
        let number = |value: u128| {
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(value.to_string())
                .build()
                .expect("data type is set")
        };
        let whole_seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(payload)
            .delay_seconds(whole_seconds.min(MAX_SEND_DELAY.as_secs()) as i32)
            .message_attributes(FUNCTION_ATTRIBUTE, text(function))
            .message_attributes(REQUEST_ID_ATTRIBUTE, text(request_id))
            .message_attributes(
                ACCEPTED_AT_ATTRIBUTE,
                number(progress.accepted_at.as_millis()),
            )
            .message_attributes(
                FAILED_ATTEMPTS_ATTRIBUTE,
                number(progress.failed_attempts.into()),
            )
            .message_attributes(NOT_RUN_ATTRIBUTE, number(progress.not_run.into()));
        if let Some(not_before) = progress.not_before {
            request =
                request.message_attributes(NOT_BEFORE_ATTRIBUTE, number(not_before.as_millis()));
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(error) => {
                let message = DisplayErrorContext(&error).to_string();
                let code = error
                    .as_service_error()
                    .and_then(|e| aws_sdk_sqs::error::ProvideErrorMetadata::code(e))
                    .unwrap_or_default()
                    .to_owned();
                // SQS: "Message must be shorter than 262144 bytes." (InvalidParameterValue).
                Err(if code.contains("InvalidMessageContents") {
                    SendError::InvalidContent { message }
                } else if code.contains("MessageTooLong")
                    || (code.contains("InvalidParameterValue") && message.contains("shorter than"))
                {
                    SendError::TooLarge { message }
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

/// The progress a received message carries; a message sent before these attributes existed
/// counts from its SentTimestamp with no attempts.
fn progress_of(record: &Value, message: &Record) -> Progress {
    let number = |name: &str| {
        record["messageAttributes"][name]["stringValue"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
    };
    Progress {
        accepted_at: number(ACCEPTED_AT_ATTRIBUTE)
            .map_or(message.arrived_at, Duration::from_millis),
        failed_attempts: number(FAILED_ATTEMPTS_ATTRIBUTE)
            .map_or(0, |n| n.min(u32::MAX.into()) as u32),
        not_run: number(NOT_RUN_ATTRIBUTE).map_or(0, |n| n.min(u32::MAX.into()) as u32),
        not_before: number(NOT_BEFORE_ATTRIBUTE).map(Duration::from_millis),
    }
}

/// What the queue's poller does with each message: runs its event.
struct Work {
    acks: Arc<QueueAcks>,
    sender: Arc<EventSender>,
    functions: BTreeMap<String, Arc<Function>>,
    /// Per function, its events held now: at most its concurrency.
    room: BTreeMap<String, Arc<tokio::sync::Semaphore>>,
    /// Events whose attempts are over, by message id, since when: their destination record is
    /// still to be stored (`Some`), or it is and only the delete failed (`None`).
    finishing: Mutex<HashMap<String, (Instant, Option<Finishing>)>>,
}

/// Runs the queue's poller until `stop`, then drains for at most `drain`.
pub(super) async fn run(
    queue_url: String,
    queues: Arc<dyn QueueOpener>,
    sender: Arc<EventSender>,
    functions: BTreeMap<String, Arc<Function>>,
    health: crate::health::MappingHealthHandle,
    drain: Duration,
    stop: CancellationToken,
) {
    let metrics = MappingMetrics::function(WORKER_NAME);
    // Room for as many events as the functions can run at once; each event takes its function's
    // own room, then its target's slot around each attempt.
    let total: usize = functions.values().map(|f| f.workers).sum::<usize>().max(1);
    let gate = crate::targets::SharedTarget::new(WORKER_NAME, Arc::new(Gate), total);
    let settings = PollSettings {
        pollers: 1,
        max_concurrency: total,
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
    let room = functions
        .iter()
        .map(|(name, f)| {
            (
                name.clone(),
                Arc::new(tokio::sync::Semaphore::new(f.workers.max(1))),
            )
        })
        .collect();
    let work = Arc::new(Work {
        acks: acks.clone(),
        sender,
        functions,
        room,
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
        // The event takes its own function's room, and its target's slot around each attempt.
        drop(slot);
        if let Some(message) = batch.pop() {
            self.handle_message(message).await;
        }
    }
}

/// What becomes of a message once its event's turn is over.
enum End {
    Message(MessageEnd),
    /// A retry: a copy with the new progress, after the delay; then the original goes.
    Resend {
        delay: Duration,
        progress: Progress,
    },
}

impl Work {
    async fn handle_message(&self, message: Record) {
        let end = match self.run_event(&message).await {
            End::Message(end) => end,
            End::Resend { delay, progress } => self.resend(&message, delay, progress).await,
        };
        let done = matches!(end, MessageEnd::Done);
        if done {
            // Remembered as ended until the delete worked: if it fails, the message comes back
            // and is only deleted then, neither run nor recorded again.
            self.remember(message.id(), None);
        }
        if poller::end_message(&self.acks, &message, end).await {
            self.acks.metrics.acknowledged(1);
            self.finishing
                .lock()
                .expect("finishing lock")
                .remove(message.id());
        } else if done {
            tracing::warn!(message_id = %message.id(), "an ended event's message could not be deleted; it is deleted when it comes back");
        }
    }

    fn remember(&self, message_id: &str, finishing: Option<Finishing>) {
        let mut remembered = self.finishing.lock().expect("finishing lock");
        if finishing.is_some() {
            // Bounded by time: a message another instance ended never comes back here. Only
            // here, not on every ended message: those entries go with their delete.
            remembered.retain(|_, (since, _)| since.elapsed() < FINISHING_MEMORY);
        }
        remembered.insert(message_id.to_owned(), (Instant::now(), finishing));
    }

    /// Sends the retry's copy; the original goes once the copy is in the queue. Should the copy
    /// fail, the original itself comes back after the delay (its progress as it was).
    async fn resend(&self, message: &Record, delay: Duration, progress: Progress) -> MessageEnd {
        let record: Value = serde_json::from_str(message.event.get()).unwrap_or_default();
        let attribute = |name: &str| record["messageAttributes"][name]["stringValue"].as_str();
        let (Some(function), Some(request_id)) = (
            attribute(FUNCTION_ATTRIBUTE),
            attribute(REQUEST_ID_ATTRIBUTE),
        ) else {
            return MessageEnd::Retry(delay);
        };
        let body = record["body"].as_str().unwrap_or_default();
        let now = crate::destinations::envelope::now_since_epoch();
        let progress = Progress {
            not_before: (delay > MAX_SEND_DELAY).then(|| now + delay),
            ..progress
        };
        match self
            .sender
            .send_with(function, request_id, body, progress, delay)
            .await
        {
            Ok(()) => MessageEnd::Done,
            Err(error) => {
                tracing::warn!(message_id = %message.id(), %request_id, %error, "sending an event's retry failed; the message itself comes back after the delay");
                MessageEnd::Retry(delay)
            }
        }
    }

    async fn run_event(&self, message: &Record) -> End {
        let leave = |end| End::Message(end);
        let record: Value = serde_json::from_str(message.event.get()).unwrap_or_default();
        let attribute = |name: &str| record["messageAttributes"][name]["stringValue"].as_str();
        let (Some(name), Some(request_id)) = (
            attribute(FUNCTION_ATTRIBUTE),
            attribute(REQUEST_ID_ATTRIBUTE),
        ) else {
            tracing::error!(message_id = %message.id(), "a message in the invoke API's event queue is not an event sluice sent (no SluiceFunction and SluiceRequestId attributes); it is left to the queue's redrive policy");
            return leave(MessageEnd::Retry(UNKNOWN_FUNCTION_BACKOFF));
        };
        let (Some(function), Some(room)) = (self.functions.get(name), self.room.get(name)) else {
            tracing::error!(message_id = %message.id(), function = %name, %request_id, "an event for a function this instance does not serve; it goes back to the queue for another instance (its redrive policy ends it otherwise)");
            return leave(MessageEnd::Retry(UNKNOWN_FUNCTION_BACKOFF));
        };
        let progress = progress_of(&record, message);
        let now = crate::destinations::envelope::now_since_epoch();
        if let Some(not_before) = progress.not_before.filter(|at| *at > now) {
            return leave(MessageEnd::Retry(not_before - now));
        }
        let body = record["body"].as_str().unwrap_or_default().to_owned();
        let payload = || serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
        let remembered = self
            .finishing
            .lock()
            .expect("finishing lock")
            .get(message.id())
            .map(|(_, finishing)| finishing.clone());
        match remembered {
            // Ended and recorded; only its delete failed.
            Some(None) => return leave(MessageEnd::Done),
            // The handler already ran: only the destination record is still to be stored.
            Some(Some(end)) => {
                let ending = Ending {
                    request_id,
                    completion: end.condition,
                    invoke_count: end.invoke_count,
                    payload: payload(),
                    response: end.response,
                    first_attempt_at: progress.accepted_at,
                };
                return leave(if store_ending(function, ending).await {
                    MessageEnd::Done
                } else {
                    MessageEnd::Retry(STORE_RETRY)
                });
            }
            None => {}
        }
        // A function whose events fill its concurrency takes no more: this one goes back at once
        // (no attempt counted), so other functions' messages are not held behind it.
        let Ok(_room) = room.clone().try_acquire_owned() else {
            return leave(MessageEnd::Retry(FULL_FUNCTION_BACKOFF));
        };
        let attempt = AsyncAttempt {
            queued_at: progress.accepted_at,
            failed_attempts: progress.failed_attempts,
            not_run: progress.not_run,
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
            accepted_at: progress.accepted_at,
            end: End::Message(MessageEnd::Leave),
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
    accepted_at: Duration,
    end: End,
}

#[async_trait]
impl EventStore for MessageStore<'_> {
    async fn reschedule(&mut self, delay: Duration, failed_attempts: u32, not_run: u32) {
        self.end = End::Resend {
            delay,
            progress: Progress {
                accepted_at: self.accepted_at,
                failed_attempts,
                not_run,
                not_before: None,
            },
        };
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
            first_attempt_at: self.accepted_at,
        };
        self.end = End::Message(if store_ending(self.function, ending).await {
            MessageEnd::Done
        } else {
            self.work.remember(
                self.message.id(),
                Some(Finishing {
                    condition: completion,
                    invoke_count,
                    response,
                }),
            );
            MessageEnd::Retry(STORE_RETRY)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(attributes: Value) -> (Value, Record) {
        let event = json!({"messageId": "m-1", "body": "{}", "messageAttributes": attributes});
        let record = Record::new(
            sluice_sources::Receipt {
                id: "m-1".into(),
                ack: sluice_sources::AckToken::Sqs {
                    receipt_handle: "r".into(),
                },
            },
            None,
            Duration::from_secs(1_600_000_000),
            Duration::from_secs(1_600_000_001),
            1,
            serde_json::value::to_raw_value(&event).unwrap(),
        );
        (event, record)
    }

    #[test]
    fn an_events_progress_is_read_from_its_attributes() {
        let number = |n: u64| json!({"stringValue": n.to_string(), "dataType": "Number"});
        let (event, record) = message(json!({
            "SluiceAcceptedAt": number(1_700_000_000_000),
            "SluiceFailedAttempts": number(1),
            "SluiceNotRun": number(4),
        }));
        let progress = progress_of(&event, &record);
        assert_eq!(
            progress.accepted_at,
            Duration::from_millis(1_700_000_000_000)
        );
        assert_eq!((progress.failed_attempts, progress.not_run), (1, 4));
        assert_eq!(progress.not_before, None);
        // A message without them (sent by an older sluice) starts counting from its arrival.
        let (event, record) = message(json!({}));
        let progress = progress_of(&event, &record);
        assert_eq!(progress.accepted_at, record.arrived_at);
        assert_eq!((progress.failed_attempts, progress.not_run), (0, 0));
    }
}
