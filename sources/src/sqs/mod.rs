//! SQS as a [`Queue`]: long-polled receives, batched deletes and visibility changes.
//!
//! Records carry exactly the element Lambda's SQS event has (semantics.md §3 "Record shape",
//! §13.1). Deletes and visibility changes go out in batches of ten and retry entries that fail for
//! reasons other than an invalid receipt handle; what still fails is reported, never hidden.

use crate::queue::{
    DeleteReport, PendingReceive, Queue, QueueBacklog, QueueDescription, QueueOpener, SourceError,
};
use crate::record::{AckToken, Receipt, Record};
use crate::trace::TraceContext;
use async_trait::async_trait;
use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::sqs::{SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use std::collections::HashMap;
use std::time::Duration;

/// SQS's limit on entries per batch call and messages per receive.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SQS's longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's longest visibility timeout (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
const BATCH_CALL_ATTEMPTS: usize = 3;

/// Opens SQS queues with one client.
#[derive(Clone)]
pub struct SqsOpener(pub Client);

#[async_trait]
impl QueueOpener for SqsOpener {
    async fn open(&self, queue_url: &str) -> Result<std::sync::Arc<dyn Queue>, SourceError> {
        Ok(std::sync::Arc::new(
            SqsQueue::connect(self.0.clone(), queue_url).await?,
        ))
    }

    /// Sends GetQueueAttributes and the first ReceiveMessage at once: the first poll costs no
    /// extra round trip. The messages are turned into records once the queue is described (they
    /// carry its ARN and region).
    async fn open_receiving(
        &self,
        queue_url: &str,
        max_messages: usize,
        wait: Duration,
    ) -> Result<(std::sync::Arc<dyn Queue>, PendingReceive), SourceError> {
        let first = FirstReceive::send(&self.0, queue_url, max_messages, wait);
        // Should the lookup fail (or this future be dropped), `first` releases what it brings.
        let queue = SqsQueue::connect(self.0.clone(), queue_url).await?;
        let description = queue.description.clone();
        let received = first.claim();
        let pending: PendingReceive = Box::pin(async move {
            let output = received.await.map_err(|error| SourceError::Queue {
                queue_url: description.url.clone(),
                operation: "ReceiveMessage",
                message: format!("the receive task ended early: {error}"),
            })??;
            Ok(output
                .messages()
                .iter()
                .map(|m| record_from_message(&description, m))
                .collect())
        });
        Ok((std::sync::Arc::new(queue), pending))
    }
}

/// A mapping's first ReceiveMessage, sent while its queue is still being looked up. Until it is
/// claimed, dropping it makes whatever the receive brings visible again at once, so that a failed
/// lookup does not hide messages for a whole visibility timeout.
struct FirstReceive {
    task: Option<tokio::task::JoinHandle<Result<ReceiveMessageOutput, SourceError>>>,
    client: Client,
    queue_url: String,
}

impl FirstReceive {
    fn send(client: &Client, queue_url: &str, max_messages: usize, wait: Duration) -> Self {
        let request = receive_request(client, queue_url, max_messages, wait, None);
        let url = queue_url.to_owned();
        let task = tokio::spawn(async move {
            request.send().await.map_err(|e| SourceError::Queue {
                queue_url: url,
                operation: "ReceiveMessage",
                message: DisplayErrorContext(&e).to_string(),
            })
        });
        Self {
            task: Some(task),
            client: client.clone(),
            queue_url: queue_url.to_owned(),
        }
    }

    /// Hands the receive over: from here on its caller owns what it brings.
    fn claim(mut self) -> tokio::task::JoinHandle<Result<ReceiveMessageOutput, SourceError>> {
        self.task.take().expect("claimed once")
    }
}

impl Drop for FirstReceive {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let (client, queue_url) = (self.client.clone(), self.queue_url.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let Ok(Ok(output)) = task.await else {
                return;
            };
            let receipts: Vec<Receipt> = output
                .messages()
                .iter()
                .map(|message| Receipt {
                    id: message.message_id().unwrap_or_default().to_owned(),
                    ack: AckToken::Sqs {
                        receipt_handle: message.receipt_handle().unwrap_or_default().to_owned(),
                    },
                })
                .collect();
            let changes: Vec<(&Receipt, Duration)> =
                receipts.iter().map(|r| (r, Duration::ZERO)).collect();
            let failed = match change_visibility(&client, &queue_url, &changes).await {
                Ok(failed) => failed,
                Err(error) => receipts
                    .iter()
                    .map(|r| (r.id.clone(), error.to_string()))
                    .collect(),
            };
            for (message_id, reason) in failed {
                tracing::warn!(%queue_url, %message_id, %reason, "could not return a message of the first receive after the queue lookup failed; it comes back after the visibility timeout");
            }
        });
    }
}

/// The ReceiveMessage every reader of a queue sends: every system and message attribute (Lambda's
/// event carries them), at most ten messages, a long poll of at most 20 s.
fn receive_request(
    client: &Client,
    queue_url: &str,
    max_messages: usize,
    wait: Duration,
    hold: Option<Duration>,
) -> aws_sdk_sqs::operation::receive_message::builders::ReceiveMessageFluentBuilder {
    let max_messages = max_messages.clamp(1, MAX_BATCH_ENTRIES) as i32;
    let wait_secs = wait.min(MAX_WAIT).as_secs() as i32;
    client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max_messages)
        .wait_time_seconds(wait_secs)
        .set_visibility_timeout(hold.map(|h| h.min(MAX_VISIBILITY).as_secs() as i32))
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
}

pub struct SqsQueue {
    client: Client,
    description: QueueDescription,
}

impl SqsQueue {
    /// Looks the queue up (ARN, FIFO, visibility timeout); fails when it does not exist.
    pub async fn connect(client: Client, queue_url: &str) -> Result<Self, SourceError> {
        let error = |message: String| SourceError::Queue {
            queue_url: queue_url.to_owned(),
            operation: "GetQueueAttributes",
            message,
        };
        let output = client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| error(DisplayErrorContext(&e).to_string()))?;
        let attributes = output.attributes().cloned().unwrap_or_default();
        let arn = attributes
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .ok_or_else(|| error("the queue has no QueueArn attribute".into()))?;
        let visibility_secs = attributes
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(30);
        let fifo = attributes
            .get(&QueueAttributeName::FifoQueue)
            .is_some_and(|v| v == "true")
            || queue_url.ends_with(".fifo");
        // The ARN is arn:aws:sqs:<region>:<account>:<name>; the region there is authoritative.
        let region = arn
            .split(':')
            .nth(3)
            .map(str::to_owned)
            .or_else(|| client.config().region().map(|r| r.to_string()))
            .unwrap_or_default();
        Ok(Self {
            client,
            description: QueueDescription {
                url: queue_url.to_owned(),
                arn,
                region,
                fifo,
                visibility_timeout: Duration::from_secs(visibility_secs),
            },
        })
    }

    fn error(&self, operation: &'static str, message: String) -> SourceError {
        SourceError::Queue {
            queue_url: self.description.url.clone(),
            operation,
            message,
        }
    }

    /// [`Queue::receive`], hiding the records for `hold` instead of the queue's visibility
    /// timeout when given (readers that are not the mapping, such as `sluice dlq`).
    pub async fn receive_holding(
        &self,
        max_messages: usize,
        wait: Duration,
        hold: Option<Duration>,
    ) -> Result<Vec<Record>, SourceError> {
        let output = receive_request(
            &self.client,
            &self.description.url,
            max_messages,
            wait,
            hold,
        )
        .send()
        .await
        .map_err(|e| self.error("ReceiveMessage", DisplayErrorContext(&e).to_string()))?;
        Ok(output
            .messages()
            .iter()
            .map(|m| record_from_message(&self.description, m))
            .collect())
    }
}

/// The record of a message received from the queue `description` names: exactly the element
/// Lambda's SQS event holds for it.
pub fn record_from_message(description: &QueueDescription, message: &Message) -> Record {
    let system: HashMap<String, String> = message
        .attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let number = |name: &str| system.get(name).and_then(|v| v.parse::<u64>().ok());
    let receive_count = number("ApproximateReceiveCount").unwrap_or(1) as u32;
    let sent_ms = number("SentTimestamp").unwrap_or(0);
    let first_receive_ms = number("ApproximateFirstReceiveTimestamp").unwrap_or(sent_ms);
    let group_id = system.get("MessageGroupId").cloned();
    let trace = system
        .get("AWSTraceHeader")
        .and_then(|header| TraceContext::parse_xray(header))
        .or_else(|| {
            message
                .message_attributes()
                .and_then(|attributes| attributes.get("traceparent"))
                .and_then(|value| value.string_value())
                .and_then(TraceContext::parse_traceparent)
        });

    let mut event = SqsMessage::default();
    event.message_id = message.message_id().map(str::to_owned);
    event.receipt_handle = message.receipt_handle().map(str::to_owned);
    event.body = Some(message.body().unwrap_or_default().to_owned());
    event.md5_of_body = message.md5_of_body().map(str::to_owned);
    event.md5_of_message_attributes = message.md5_of_message_attributes().map(str::to_owned);
    event.attributes = system;
    event.message_attributes = message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| {
                    let mut attribute = SqsMessageAttribute::default();
                    attribute.string_value = value.string_value().map(str::to_owned);
                    attribute.binary_value = value.binary_value().map(|b| base64_data(b.as_ref()));
                    attribute.string_list_values = value.string_list_values().to_vec();
                    attribute.binary_list_values = value
                        .binary_list_values()
                        .iter()
                        .map(|b| base64_data(b.as_ref()))
                        .collect();
                    attribute.data_type = Some(value.data_type().to_owned());
                    (name.clone(), attribute)
                })
                .collect()
        })
        .unwrap_or_default();
    event.event_source = Some("aws:sqs".to_owned());
    event.event_source_arn = Some(description.arn.clone());
    event.aws_region = Some(description.region.clone());
    let event = serde_json::value::to_raw_value(&event).expect("an SQS message always serializes");

    Record::new(
        Receipt {
            id: message.message_id().unwrap_or_default().to_owned(),
            ack: AckToken::Sqs {
                receipt_handle: message.receipt_handle().unwrap_or_default().to_owned(),
            },
        },
        group_id,
        Duration::from_millis(sent_ms),
        Duration::from_millis(first_receive_ms),
        receive_count,
        event,
    )
    .with_trace(trace)
}

fn base64_data(bytes: &[u8]) -> Base64Data {
    let mut data = Base64Data::default();
    data.extend_from_slice(bytes);
    data
}

fn receipt_handle(receipt: &Receipt) -> &str {
    match &receipt.ack {
        AckToken::Sqs { receipt_handle } => receipt_handle,
        // Not a queue's record: SQS refuses the empty handle as invalid, and it is reported.
        AckToken::Stream { .. } => "",
    }
}

/// Entry ids must be unique within a batch call and match `[A-Za-z0-9_-]{1,80}`.
fn entry_id(index: usize) -> String {
    format!("e{index}")
}

/// The position in a batch call of `chunk_len` entries that a response entry's id names, or `None`
/// for an id sluice did not send (a misbehaving endpoint must not make sluice index out of range).
fn entry_index(id: &str, chunk_len: usize) -> Option<usize> {
    id.strip_prefix('e')
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|&index| index < chunk_len)
}

/// Errors that will not get better by retrying the entry.
fn is_permanent(code: &str) -> bool {
    code.contains("ReceiptHandleIsInvalid")
        || code.contains("InvalidParameterValue")
        || code.contains("MessageNotInflight")
}

#[async_trait]
impl Queue for SqsQueue {
    fn description(&self) -> &QueueDescription {
        &self.description
    }

    async fn receive(
        &self,
        max_messages: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, SourceError> {
        self.receive_holding(max_messages, wait, None).await
    }

    async fn delete(&self, receipts: &[&Receipt]) -> Result<DeleteReport, SourceError> {
        let mut report = DeleteReport::default();
        for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            for attempt in 1..=BATCH_CALL_ATTEMPTS {
                let entries = pending
                    .iter()
                    .map(|&index| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(entry_id(index))
                            .receipt_handle(receipt_handle(chunk[index]))
                            .build()
                            .expect("id and receipt handle are set")
                    })
                    .collect::<Vec<_>>();
                let output = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.description.url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
                let output = match output {
                    Ok(output) => output,
                    Err(e) if attempt < BATCH_CALL_ATTEMPTS => {
                        tracing::warn!(queue_url = %self.description.url, error = %DisplayErrorContext(&e), "delete batch failed, retrying");
                        tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                        continue;
                    }
                    Err(e) => {
                        return Err(
                            self.error("DeleteMessageBatch", DisplayErrorContext(&e).to_string())
                        );
                    }
                };
                // Entries not sent in this attempt count as answered, so that a response naming
                // them again is ignored.
                let mut answered = vec![true; chunk.len()];
                for &index in &pending {
                    answered[index] = false;
                }
                for success in output.successful() {
                    match entry_index(success.id(), chunk.len()) {
                        Some(index) if !answered[index] => {
                            answered[index] = true;
                            report.deleted += 1;
                        }
                        _ => {
                            tracing::warn!(queue_url = %self.description.url, entry_id = success.id(), "DeleteMessageBatch answered an entry id it was not sent; ignoring it")
                        }
                    }
                }
                let mut retry = Vec::new();
                for failure in output.failed() {
                    let index = entry_index(failure.id(), chunk.len())
                        .filter(|&index| !std::mem::replace(&mut answered[index], true));
                    let Some(index) = index else {
                        tracing::warn!(queue_url = %self.description.url, entry_id = failure.id(), code = failure.code(), "DeleteMessageBatch reported a failure for an entry id it was not sent; ignoring it");
                        continue;
                    };
                    let reason = format!(
                        "{}: {}",
                        failure.code(),
                        failure.message().unwrap_or_default()
                    );
                    if is_permanent(failure.code()) || attempt == BATCH_CALL_ATTEMPTS {
                        report.failed.push((chunk[index].id.clone(), reason));
                    } else {
                        retry.push(index);
                    }
                }
                // An entry the response does not mention was not deleted as far as sluice can
                // tell: retried, then reported.
                for &index in &pending {
                    if !answered[index] {
                        if attempt == BATCH_CALL_ATTEMPTS {
                            report.failed.push((
                                chunk[index].id.clone(),
                                "the DeleteMessageBatch response did not mention this entry".into(),
                            ));
                        } else {
                            retry.push(index);
                        }
                    }
                }
                if retry.is_empty() {
                    break;
                }
                pending = retry;
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
        }
        Ok(report)
    }

    async fn change_visibility(
        &self,
        changes: &[(&Receipt, Duration)],
    ) -> Result<Vec<(String, String)>, SourceError> {
        change_visibility(&self.client, &self.description.url, changes).await
    }

    async fn backlog(&self) -> Result<QueueBacklog, SourceError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.description.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| SourceError::Queue {
                queue_url: self.description.url.clone(),
                operation: "GetQueueAttributes",
                message: DisplayErrorContext(&e).to_string(),
            })?;
        let attributes = output.attributes().cloned().unwrap_or_default();
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueBacklog {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

/// ChangeMessageVisibilityBatch in chunks of ten; the message ids whose visibility could not be
/// changed, with the reason.
async fn change_visibility(
    client: &Client,
    queue_url: &str,
    changes: &[(&Receipt, Duration)],
) -> Result<Vec<(String, String)>, SourceError> {
    let mut failed = Vec::new();
    for chunk in changes.chunks(MAX_BATCH_ENTRIES) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(index, (record, timeout))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(entry_id(index))
                    .receipt_handle(receipt_handle(record))
                    .visibility_timeout(timeout.min(&MAX_VISIBILITY).as_secs() as i32)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect::<Vec<_>>();
        let output = client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| SourceError::Queue {
                queue_url: queue_url.to_owned(),
                operation: "ChangeMessageVisibilityBatch",
                message: DisplayErrorContext(&e).to_string(),
            })?;
        for failure in output.failed() {
            if let Some(index) = entry_index(failure.id(), chunk.len()) {
                failed.push((
                    chunk[index].0.id.clone(),
                    format!(
                        "{}: {}",
                        failure.code(),
                        failure.message().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchOutput;
    use aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesOutput;
    use aws_sdk_sqs::types::{BatchResultErrorEntry, DeleteMessageBatchResultEntry};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    fn receipt(id: &str) -> Receipt {
        Receipt {
            id: id.to_owned(),
            ack: AckToken::Sqs {
                receipt_handle: format!("handle-{id}"),
            },
        }
    }

    fn failure(id: &str, code: &str) -> BatchResultErrorEntry {
        BatchResultErrorEntry::builder()
            .id(id)
            .code(code)
            .sender_fault(true)
            .build()
            .unwrap()
    }

    fn one_message() -> ReceiveMessageOutput {
        ReceiveMessageOutput::builder()
            .messages(
                Message::builder()
                    .message_id("m1")
                    .receipt_handle("handle-m1")
                    .body("{}")
                    .build(),
            )
            .build()
    }

    /// A local SQS endpoint (JSON protocol) that answers GetQueueAttributes only once a
    /// ReceiveMessage has arrived: a client that looks the queue up before receiving gets a 500
    /// after 5 s instead.
    async fn lookup_waits_for_a_receive() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(tokio::sync::Notify::new());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let received = received.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    // One request per connection is enough for this test: the head and a body
                    // of Content-Length bytes.
                    let (head, length) = loop {
                        let n = socket.read(&mut buffer).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buffer[..n]);
                        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            break (head, end + 4 + length);
                        }
                    };
                    while request.len() < length {
                        let n = socket.read(&mut buffer).await.unwrap();
                        request.extend_from_slice(&buffer[..n]);
                    }
                    let (status, body) = if head.contains("amazonsqs.receivemessage") {
                        received.notify_one();
                        (
                            "200 OK",
                            r#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"handle-m1","Body":"{}"}]}"#,
                        )
                    } else if tokio::time::timeout(Duration::from_secs(5), received.notified())
                        .await
                        .is_ok()
                    {
                        (
                            "200 OK",
                            r#"{"Attributes":{"QueueArn":"arn:aws:sqs:eu-west-1:000000000000:q","VisibilityTimeout":"30"}}"#,
                        )
                    } else {
                        ("500 Internal Server Error", r#"{"__type":"InternalError"}"#)
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn the_first_receive_is_sent_beside_the_lookup_and_its_records_carry_the_queue_arn() {
        let endpoint = lookup_waits_for_a_receive().await;
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("eu-west-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::for_tests())
            .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
            .build();
        let client = Client::from_conf(config);
        let (queue, first) = SqsOpener(client)
            .open_receiving(
                &format!("{endpoint}/000000000000/q"),
                10,
                Duration::from_secs(1),
            )
            .await
            .expect("the lookup answered: the receive went out beside it");
        assert_eq!(queue.description().region, "eu-west-1");
        let records = first.await.unwrap();
        assert_eq!(records.len(), 1);
        let event: serde_json::Value = serde_json::from_str(records[0].event.get()).unwrap();
        assert_eq!(
            event["eventSourceARN"],
            "arn:aws:sqs:eu-west-1:000000000000:q"
        );
        assert_eq!(event["awsRegion"], "eu-west-1");
    }

    #[tokio::test]
    async fn messages_of_a_first_receive_whose_lookup_failed_are_made_visible_again() {
        let attributes = mock!(Client::get_queue_attributes).then_error(|| {
            aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesError::QueueDoesNotExist(
                aws_sdk_sqs::types::error::QueueDoesNotExist::builder().build(),
            )
        });
        let receive = mock!(Client::receive_message).then_output(one_message);
        let released = mock!(Client::change_message_visibility_batch)
            .match_requests(|request| {
                request.entries().len() == 1
                    && request.entries()[0].receipt_handle() == "handle-m1"
                    && request.entries()[0].visibility_timeout() == Some(0)
            })
            .then_output(|| {
                aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchOutput::builder()
                    .set_successful(Some(vec![]))
                    .set_failed(Some(vec![]))
                    .build()
                    .unwrap()
            });
        let client = mock_client!(
            aws_sdk_sqs,
            RuleMode::MatchAny,
            [&attributes, &receive, &released]
        );
        let opened = SqsOpener(client)
            .open_receiving(
                "http://localhost/000000000000/q",
                10,
                Duration::from_secs(1),
            )
            .await;
        assert!(opened.is_err(), "the lookup failed");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while released.num_calls() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            released.num_calls(),
            1,
            "the received message was not made visible again"
        );
    }

    #[tokio::test]
    async fn a_batch_response_naming_entries_that_were_not_sent_does_not_panic() {
        let attributes = mock!(Client::get_queue_attributes).then_output(|| {
            GetQueueAttributesOutput::builder()
                .attributes(
                    QueueAttributeName::QueueArn,
                    "arn:aws:sqs:us-east-1:000000000000:q",
                )
                .build()
        });
        // e0 succeeds, e1 fails for good, e99 and "x" were never sent, e2 is not mentioned.
        let delete = mock!(Client::delete_message_batch).then_output(|| {
            DeleteMessageBatchOutput::builder()
                .successful(
                    DeleteMessageBatchResultEntry::builder()
                        .id("e0")
                        .build()
                        .unwrap(),
                )
                .failed(failure("e1", "ReceiptHandleIsInvalid"))
                .failed(failure("e99", "InternalError"))
                .failed(failure("x", "InternalError"))
                .build()
                .unwrap()
        });
        let client = mock_client!(aws_sdk_sqs, RuleMode::MatchAny, [&attributes, &delete]);
        let queue = SqsQueue::connect(client, "http://localhost/000000000000/q")
            .await
            .unwrap();
        let (a, b, c) = (receipt("a"), receipt("b"), receipt("c"));
        let report = queue.delete(&[&a, &b, &c]).await.unwrap();
        assert_eq!(report.deleted, 1);
        let failed: Vec<&str> = report.failed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(failed, ["b", "c"], "{:?}", report.failed);
    }

    #[test]
    fn entry_ids_out_of_range_or_malformed_name_no_entry() {
        assert_eq!(entry_index("e3", 4), Some(3));
        assert_eq!(entry_index("e4", 4), None);
        assert_eq!(entry_index("e-1", 4), None);
        assert_eq!(entry_index("3", 4), None);
    }
}
