//! SQS as a [`Queue`]: long-polled receives, batched deletes and visibility changes.
//!
//! Records carry exactly the element Lambda's SQS event has (semantics.md §3 "Record shape",
//! §13.1). Deletes and visibility changes go out in batches of ten and retry entries that fail for
//! reasons other than an invalid receipt handle; what still fails is reported, never hidden.

use crate::queue::{DeleteReport, Queue, QueueDescription, QueueOpener, SourceError};
use crate::record::{AckToken, Receipt, Record};
use crate::trace::TraceContext;
use async_trait::async_trait;
use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::sqs::{SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
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
        let max_messages = max_messages.clamp(1, MAX_BATCH_ENTRIES) as i32;
        let wait_secs = wait.min(MAX_WAIT).as_secs() as i32;
        let output = self
            .client
            .receive_message()
            .queue_url(&self.description.url)
            .max_number_of_messages(max_messages)
            .wait_time_seconds(wait_secs)
            .set_visibility_timeout(hold.map(|h| h.min(MAX_VISIBILITY).as_secs() as i32))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
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
            let output = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.description.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    self.error(
                        "ChangeMessageVisibilityBatch",
                        DisplayErrorContext(&e).to_string(),
                    )
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
