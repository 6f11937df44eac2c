//! Dead letters in an SQS queue: envelopes sent by an `on_failure.sqs` destination (spilled ones
//! followed to S3), or raw messages the source queue's redrive policy moved there.
//!
//! Messages are received with a visibility timeout (`hold`) so no other reader gets them while
//! they are looked at; whatever is still held at the end is made visible again at once. A message
//! sluice itself wrote back during the run is never read again in the same run.

use super::{DlqError, Entry, Handle, RecordKind, Store};
use crate::destinations::envelope::Envelope;
use crate::destinations::envelope::iso8601_millis;
use crate::destinations::sqs::{SpillPointer, SqsDestination};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use sluice_sources::queue::Queue;
use sluice_sources::record::Receipt;
use sluice_sources::sqs::SqsQueue;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The message attribute that counts the replays of a raw message written back.
pub const REPLAY_COUNT_ATTRIBUTE: &str = "sluice-replay-count";

/// What the queue holds.
pub(crate) enum Contents {
    /// Envelopes; records of `fallback` kind when an envelope does not say.
    Envelopes { fallback: RecordKind },
    /// Raw messages a redrive policy moved from the mapping's queue (`source_arn`); an S3
    /// mapping's messages are notifications holding S3 records.
    Raw {
        kind: RecordKind,
        source_arn: String,
    },
}

pub(crate) struct SqsStore {
    client: Client,
    s3: aws_sdk_s3::Client,
    /// Deletes and visibility changes go through the source's batched, retried calls.
    queue: SqsQueue,
    contents: Contents,
    mapping: String,
    hold: Duration,
    writer: SqsDestination,
    /// Message ids returned or written back during this run.
    seen: HashSet<String>,
    /// Messages received and not yet released or deleted, by id, and since when their
    /// visibility runs.
    held: HashMap<String, (Receipt, Instant)>,
}

impl SqsStore {
    pub(crate) async fn open(
        client: Client,
        s3: aws_sdk_s3::Client,
        queue_url: &str,
        spill_bucket: Option<String>,
        contents: Contents,
        mapping: &str,
        hold: Duration,
    ) -> Result<Self, DlqError> {
        let queue = SqsQueue::connect(client.clone(), queue_url)
            .await
            .map_err(|e| DlqError::store(queue_url, "GetQueueAttributes", e))?;
        let spill = spill_bucket.map(|bucket| crate::destinations::sqs::Spill {
            client: s3.clone(),
            bucket,
        });
        Ok(Self {
            writer: SqsDestination::new(client.clone(), queue_url.to_owned(), spill),
            client,
            s3,
            queue,
            contents,
            mapping: mapping.to_owned(),
            hold,
            seen: HashSet::new(),
            held: HashMap::new(),
        })
    }

    fn url(&self) -> &str {
        &self.queue.description().url
    }

    fn failed(&self, operation: &'static str, message: impl ToString) -> DlqError {
        DlqError::store(self.url(), operation, message)
    }

    async fn read_spilled(
        &self,
        pointer: &SpillPointer,
    ) -> Result<String, crate::destinations::s3::ObjectError> {
        crate::destinations::s3::read_object_text(&self.s3, &pointer.bucket, &pointer.key).await
    }

    async fn entry(&self, received: sluice_sources::Record) -> Entry {
        let id = received.receipt.id.clone();
        let mut record: Value = serde_json::from_str(received.event.get()).unwrap_or_default();
        let mut body = record["body"].as_str().unwrap_or_default().to_owned();
        let spilled = SpillPointer::parse(&body);
        let mut unreadable = None;
        if let Some(pointer) = &spilled {
            match self.read_spilled(pointer).await {
                Ok(text) => body = text,
                Err(error) => {
                    unreadable = Some(format!(
                        "the envelope was spilled to s3://{}/{} and cannot be read: {}",
                        pointer.bucket,
                        pointer.key,
                        crate::error_chain(&error)
                    ))
                }
            }
        }
        let sent_at = record["attributes"]["SentTimestamp"]
            .as_str()
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| iso8601_millis(Duration::from_millis(ms)));
        let replay_count = record["messageAttributes"][REPLAY_COUNT_ATTRIBUTE]["stringValue"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        let handle = |record: Value| Handle::Sqs {
            receipt: received.receipt.clone(),
            message: record,
            spilled: spilled.clone(),
        };
        let mut entry = match &self.contents {
            Contents::Envelopes { fallback } => match serde_json::from_str::<Value>(&body) {
                Ok(envelope) if envelope.is_object() && unreadable.is_none() => {
                    Entry::from_envelope(id, envelope, *fallback, handle(record))
                }
                _ => Entry {
                    replay_count,
                    ..Entry::unreadable(
                        id,
                        *fallback,
                        unreadable.unwrap_or_else(|| {
                            "the message is not a dead-letter envelope".to_owned()
                        }),
                        handle(record),
                    )
                },
            },
            Contents::Raw { kind, source_arn } => {
                let receives = record["attributes"]["ApproximateReceiveCount"]
                    .as_str()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_default();
                // The records came from the mapping's queue; name it as the function saw it.
                record["eventSourceARN"] = json!(source_arn);
                let (records, unreadable) = match kind {
                    RecordKind::S3 => match serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["Records"].as_array().cloned())
                    {
                        Some(records) => (records, unreadable),
                        None => (
                            Vec::new(),
                            Some("the message is not an S3 event notification".to_owned()),
                        ),
                    },
                    _ => (vec![record.clone()], unreadable),
                };
                Entry {
                    id,
                    at: sent_at.clone(),
                    condition: "RedrivePolicy".to_owned(),
                    attempts: receives,
                    error_type: String::new(),
                    error_message: "moved by the queue's redrive policy".to_owned(),
                    replay_count,
                    kind: *kind,
                    records,
                    envelope: None,
                    unreadable,
                    handle: handle(record),
                }
            }
        };
        if entry.at.is_none() {
            entry.at = sent_at;
        }
        entry
    }

    /// Sets the visibility of held messages; one that is no longer in flight (its hold ran out
    /// and another reader took it) is only logged: it is that reader's now.
    async fn set_visibility(
        &self,
        receipts: &[Receipt],
        timeout: Duration,
    ) -> Result<(), DlqError> {
        let changes: Vec<(&Receipt, Duration)> = receipts.iter().map(|r| (r, timeout)).collect();
        let failed = self
            .queue
            .change_visibility(&changes)
            .await
            .map_err(|e| self.failed("ChangeMessageVisibilityBatch", e))?;
        for (message_id, reason) in failed {
            tracing::warn!(queue_url = %self.url(), %message_id, %reason, "changing the visibility of a held dead letter failed");
        }
        Ok(())
    }

    async fn delete_message(&mut self, entry: &Entry) -> Result<(), DlqError> {
        let Handle::Sqs {
            receipt, spilled, ..
        } = &entry.handle
        else {
            return Ok(());
        };
        let report = self
            .queue
            .delete(&[receipt])
            .await
            .map_err(|e| self.failed("DeleteMessageBatch", e))?;
        if let Some((message_id, reason)) = report.failed.first() {
            return Err(self.failed(
                "DeleteMessageBatch",
                format!("message {message_id}: {reason}"),
            ));
        }
        self.held.remove(&entry.id);
        if let Some(pointer) = spilled
            && let Err(error) = self
                .s3
                .delete_object()
                .bucket(&pointer.bucket)
                .key(&pointer.key)
                .send()
                .await
        {
            tracing::warn!(bucket = %pointer.bucket, key = %pointer.key, error = %DisplayErrorContext(&error), "the spilled envelope's object could not be deleted; its pointer is gone");
        }
        Ok(())
    }

    /// Sends a raw message again with `records` (an S3 notification's subset) and a raised
    /// replay count; returns the new message id.
    async fn resend_raw(&self, entry: &Entry, envelope: &Value) -> Result<String, DlqError> {
        let Handle::Sqs { message, .. } = &entry.handle else {
            return Err(self.failed("SendMessage", "not an SQS entry"));
        };
        let sluice = Envelope::parse(envelope)
            .and_then(|envelope| envelope.sluice)
            .unwrap_or_default();
        let records = sluice.record_list().cloned();
        let body = match (entry.kind, records) {
            (RecordKind::S3, Some(records)) => json!({ "Records": records }).to_string(),
            _ => message["body"].as_str().unwrap_or_default().to_owned(),
        };
        let replay_count = sluice.replay_count.unwrap_or_default();
        let mut attributes = message_attributes(message);
        attributes.insert(
            REPLAY_COUNT_ATTRIBUTE.to_owned(),
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(replay_count.to_string())
                .build()
                .expect("data type is set"),
        );
        send_message(
            &self.client,
            self.url(),
            self.queue.description().fifo,
            body,
            attributes,
            message,
        )
        .await
        .map_err(|e| self.failed("SendMessage", e))
    }
}

#[async_trait]
impl Store for SqsStore {
    fn describe(&self) -> &str {
        self.url()
    }

    async fn next(&mut self, max: usize) -> Result<Vec<Entry>, DlqError> {
        loop {
            let received = self
                .queue
                .receive_holding(max, Duration::from_secs(1), Some(self.hold))
                .await
                .map_err(|e| self.failed("ReceiveMessage", e))?;
            if received.is_empty() {
                return Ok(Vec::new());
            }
            let mut entries = Vec::new();
            for record in received {
                let id = record.receipt.id.clone();
                // Held until the end even when seen before, so the receives run dry.
                self.held
                    .insert(id.clone(), (record.receipt.clone(), Instant::now()));
                if self.seen.insert(id) {
                    entries.push(self.entry(record).await);
                }
            }
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
    }

    async fn release(&mut self, entries: &[Entry]) -> Result<(), DlqError> {
        let receipts: Vec<Receipt> = entries
            .iter()
            .filter_map(|e| self.held.remove(&e.id))
            .map(|(receipt, _)| receipt)
            .collect();
        self.set_visibility(&receipts, Duration::ZERO).await
    }

    async fn delete(&mut self, entry: &Entry) -> Result<(), DlqError> {
        self.delete_message(entry).await
    }

    async fn replace(&mut self, entry: &Entry, envelope: Value) -> Result<(), DlqError> {
        let written = if entry.envelope.is_none() {
            self.resend_raw(entry, &envelope).await?
        } else {
            let group = match &entry.handle {
                Handle::Sqs { message, .. } => message["attributes"]["MessageGroupId"]
                    .as_str()
                    .unwrap_or(&self.mapping)
                    .to_owned(),
                _ => self.mapping.clone(),
            };
            self.writer
                .send_body(
                    &self.mapping,
                    envelope.to_string(),
                    &group,
                    &uuid::Uuid::new_v4().to_string(),
                )
                .await?
        };
        self.seen.insert(written);
        self.delete_message(entry).await
    }

    async fn keep(&mut self, _entry: &Entry) -> Result<(), DlqError> {
        // Held until `finish`: released now, it would be received again (and in a FIFO queue,
        // block the rest of its group).
        Ok(())
    }

    async fn refresh(&mut self) -> Result<(), DlqError> {
        let stale: Vec<Receipt> = self
            .held
            .iter_mut()
            .filter(|(_, (_, since))| since.elapsed() >= self.hold / 2)
            .map(|(_, (receipt, since))| {
                *since = Instant::now();
                receipt.clone()
            })
            .collect();
        self.set_visibility(&stale, self.hold).await
    }

    async fn finish(&mut self) -> Result<(), DlqError> {
        let receipts: Vec<Receipt> = self.held.drain().map(|(_, (receipt, _))| receipt).collect();
        self.set_visibility(&receipts, Duration::ZERO).await
    }
}

/// The message attributes a Lambda SQS record carries, as SendMessage takes them.
pub(crate) fn message_attributes(record: &Value) -> HashMap<String, MessageAttributeValue> {
    let mut attributes = HashMap::new();
    let Some(given) = record["messageAttributes"].as_object() else {
        return attributes;
    };
    for (name, value) in given {
        let data_type = value["dataType"].as_str().unwrap_or("String");
        let mut builder = MessageAttributeValue::builder().data_type(data_type);
        if let Some(text) = value["stringValue"].as_str() {
            builder = builder.string_value(text);
        }
        if let Some(bytes) = value["binaryValue"]
            .as_str()
            .and_then(|b| BASE64.decode(b).ok())
        {
            builder = builder.binary_value(Blob::new(bytes));
        }
        if let Ok(attribute) = builder.build() {
            attributes.insert(name.clone(), attribute);
        }
    }
    attributes
}

/// Sends `body` with `attributes`; a FIFO queue gets the record's message group and a fresh
/// deduplication id (the original one would be dropped as a duplicate within 5 minutes).
pub(crate) async fn send_message(
    client: &Client,
    queue_url: &str,
    fifo: bool,
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    record: &Value,
) -> Result<String, String> {
    let mut request = client
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .set_message_attributes((!attributes.is_empty()).then_some(attributes));
    if fifo {
        let group = record["attributes"]["MessageGroupId"]
            .as_str()
            .unwrap_or("sluice-replay");
        request = request
            .message_group_id(group)
            .message_deduplication_id(uuid::Uuid::new_v4().to_string());
    }
    request
        .send()
        .await
        .map(|output| output.message_id().unwrap_or_default().to_owned())
        .map_err(|e| DisplayErrorContext(&e).to_string())
}
