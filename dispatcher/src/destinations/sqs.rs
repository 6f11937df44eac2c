//! An SQS queue as an on-failure destination: the envelope is the message body.
//!
//! - Every send is sized by the queue's own `MaximumMessageSize` (1 KiB to 1 MiB since August
//!   2025, when 1 MiB became the default; older queues keep 256 KiB), read every 15 minutes and
//!   at once when SQS refuses a message as too long (the attribute was lowered meanwhile); while
//!   it cannot be read, the old 256 KiB is assumed (and it is asked for again a minute later).
//! - An envelope over that limit is stored in the destination's `spill_bucket` first, and the
//!   queue gets a pointer in the format of the SQS Extended Client Library (a JSON array
//!   `["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName", "s3Key"}]` with
//!   the `ExtendedPayloadSize` attribute), so tools that know that client can read it too. The
//!   object is written before the pointer is sent: a pointer never names a missing object.
//! - Without a `spill_bucket`, an envelope over the limit is stored without the records'
//!   contents ([`reduced`]): retrying cannot make it fit.

use super::envelope::{Cut, Envelope, SluiceInfo, patch};
use super::{Destination, DestinationError, Placement};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::{Value, json};

/// SQS's largest message (body and attributes together) since August 2025.
pub const MAX_MESSAGE_BYTES: usize = 1_048_576;
/// SQS's limit before August 2025 (and so of older queues): what is assumed while a queue's
/// `MaximumMessageSize` cannot be read.
pub const DEFAULT_MESSAGE_BYTES: usize = 262_144;
/// The smallest `MaximumMessageSize` a queue can have.
const MIN_MESSAGE_BYTES: usize = 1024;
/// How long a queue's limit is used before it is read again.
const LIMIT_KEPT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// How long the assumed limit is used when the queue's could not be read.
const UNREADABLE_LIMIT_KEPT: std::time::Duration = std::time::Duration::from_secs(60);
/// The pointer's class name in the Extended Client's format.
const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The attribute that holds the stored body's size.
pub const PAYLOAD_SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";

/// Where a spilled body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillPointer {
    pub bucket: String,
    pub key: String,
}

impl SpillPointer {
    /// The pointer a message body holds, if it is one.
    pub fn parse(body: &str) -> Option<Self> {
        if !body.trim_start().starts_with('[') {
            return None;
        }
        let value: Value = serde_json::from_str(body).ok()?;
        let [class, location] = value.as_array()?.as_slice() else {
            return None;
        };
        if class != POINTER_CLASS {
            return None;
        }
        Some(Self {
            bucket: location["s3BucketName"].as_str()?.to_owned(),
            key: location["s3Key"].as_str()?.to_owned(),
        })
    }

    pub fn body(&self) -> String {
        json!([POINTER_CLASS, { "s3BucketName": self.bucket, "s3Key": self.key }]).to_string()
    }
}

/// The bucket envelopes over the limit go to.
#[derive(Clone)]
pub struct Spill {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
}

impl Spill {
    /// Stores `body` and returns the pointer to send instead.
    pub async fn store(
        &self,
        mapping: &str,
        body: String,
    ) -> Result<SpillPointer, super::s3::ObjectError> {
        let key = format!("sluice-spill/{mapping}/{}.json", uuid::Uuid::new_v4());
        super::s3::put_json_object(&self.client, &self.bucket, &key, body).await?;
        Ok(SpillPointer {
            bucket: self.bucket.clone(),
            key,
        })
    }
}

pub struct SqsDestination {
    client: Client,
    queue_url: String,
    fifo: bool,
    spill: Option<Spill>,
    /// The queue's `MaximumMessageSize` (or what is assumed), and until when it holds.
    limit: tokio::sync::Mutex<Option<(usize, std::time::Instant)>>,
}

/// Why a send failed: the queue refused the message as too long, or anything else.
enum SendFailure {
    TooLong(DestinationError),
    Other(DestinationError),
}

impl SqsDestination {
    pub fn new(client: Client, queue_url: String, spill: Option<Spill>) -> Self {
        let fifo = queue_url.ends_with(".fifo");
        Self {
            client,
            queue_url,
            fifo,
            spill,
            limit: tokio::sync::Mutex::new(None),
        }
    }

    /// The queue's `MaximumMessageSize` (see the module docs).
    pub async fn limit(&self) -> usize {
        let mut known = self.limit.lock().await;
        if let Some((limit, until)) = *known
            && std::time::Instant::now() < until
        {
            return limit;
        }
        let read = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize)
            .send()
            .await;
        let limit = match read {
            Ok(output) => output
                .attributes()
                .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize))
                .and_then(|v| v.parse::<usize>().ok())
                .map(|v| v.clamp(MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES)),
            Err(error) => {
                tracing::warn!(queue_url = %self.queue_url, error = %DisplayErrorContext(&error), assumed = DEFAULT_MESSAGE_BYTES, "cannot read the destination queue's MaximumMessageSize (the role needs sqs:GetQueueAttributes on it); assuming SQS's default");
                None
            }
        };
        // Read again now and then (a raised limit is used without a restart); an unreadable
        // one is asked for again sooner, without a failing call on every send.
        let (limit, keep) = match limit {
            Some(limit) => (limit, LIMIT_KEPT),
            None => (DEFAULT_MESSAGE_BYTES, UNREADABLE_LIMIT_KEPT),
        };
        *known = Some((limit, std::time::Instant::now() + keep));
        limit
    }

    /// Forgets the queue's limit: the next send reads it again.
    async fn forget_limit(&self) {
        *self.limit.lock().await = None;
    }

    /// Sends `body`, through the spill bucket when it is over the queue's limit; returns the
    /// message id. A refusal as too long reads the limit again and sends once more.
    pub async fn send_body(
        &self,
        mapping: &str,
        body: String,
        group_hint: &str,
        dedup_hint: &str,
    ) -> Result<String, DestinationError> {
        match self
            .send_sized(mapping, body.clone(), group_hint, dedup_hint)
            .await
        {
            Ok(id) => Ok(id),
            Err(SendFailure::TooLong(_)) => {
                self.forget_limit().await;
                self.send_sized(mapping, body, group_hint, dedup_hint)
                    .await
                    .map_err(SendFailure::into_error)
            }
            Err(SendFailure::Other(error)) => Err(error),
        }
    }

    async fn send_sized(
        &self,
        mapping: &str,
        body: String,
        group_hint: &str,
        dedup_hint: &str,
    ) -> Result<String, SendFailure> {
        let failed = |message: String| DestinationError::Sqs {
            queue_url: self.queue_url.clone(),
            message,
        };
        let limit = self.limit().await;
        let mut request = self.client.send_message().queue_url(&self.queue_url);
        if body.len() > limit {
            let Some(spill) = &self.spill else {
                return Err(SendFailure::Other(failed(format!(
                    "the envelope is {} bytes, over the queue's MaximumMessageSize of {limit}; set on_failure.sqs.spill_bucket so large envelopes are stored in S3",
                    body.len()
                ))));
            };
            let size = body.len();
            let pointer = spill.store(mapping, body).await.map_err(|error| {
                SendFailure::Other(failed(format!(
                    "storing the oversized envelope: {}",
                    crate::error_chain(&error)
                )))
            })?;
            request = request.message_body(pointer.body()).message_attributes(
                PAYLOAD_SIZE_ATTRIBUTE,
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(size.to_string())
                    .build()
                    .expect("data type is set"),
            );
        } else {
            request = request.message_body(body);
        }
        if self.fifo {
            // Deduplication ids allow at most 128 characters.
            let dedup: String = dedup_hint.chars().take(128).collect();
            request = request
                .message_group_id(group_hint)
                .message_deduplication_id(dedup);
        }
        request
            .send()
            .await
            .map(|output| output.message_id().unwrap_or_default().to_owned())
            .map_err(|error| {
                let too_long = is_too_long(&error);
                let error = failed(DisplayErrorContext(&error).to_string());
                if too_long {
                    SendFailure::TooLong(error)
                } else {
                    SendFailure::Other(error)
                }
            })
    }
}

impl SendFailure {
    fn into_error(self) -> DestinationError {
        match self {
            SendFailure::TooLong(error) | SendFailure::Other(error) => error,
        }
    }
}

/// Whether SQS refused a message as longer than the queue allows ("Message must be shorter
/// than N bytes", InvalidParameterValue; or MessageTooLong).
fn is_too_long<R>(
    error: &aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::send_message::SendMessageError, R>,
) -> bool {
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    let Some(service) = error.as_service_error() else {
        return false;
    };
    let code = service.code().unwrap_or_default();
    code.contains("MessageTooLong")
        || (code.contains("InvalidParameterValue")
            && service
                .message()
                .unwrap_or_default()
                .contains("shorter than"))
}

/// The envelope without the records' contents and payloads (what made it too large), with a
/// note of what was cut. Identities (ids, sequence numbers, offsets, batch info), the error and
/// the attempt history stay.
pub(crate) fn reduced(mut document: Value, size: usize, limit: usize) -> Value {
    let Some(envelope) = Envelope::parse(&document) else {
        return document;
    };
    let mut cut = Vec::new();
    if let Some(fields) = document.as_object_mut() {
        for (field, present) in [
            ("payload", envelope.payload.is_some()),
            ("requestPayload", envelope.request_payload.is_some()),
            ("responsePayload", envelope.response_payload.is_some()),
        ] {
            if present && fields.remove(field).is_some() {
                cut.push(field.to_owned());
            }
        }
    }
    let sluice = envelope.sluice.unwrap_or_default();
    let records = match sluice.record_list() {
        Some(removed) => {
            cut.push("sluice.records".into());
            removed.len() as u64
        }
        None => 0,
    };
    let changes = Envelope {
        sluice: Some(SluiceInfo {
            records: Some(json!([])),
            cut: Some(Cut {
                reason: Some(format!(
                    "the envelope was {size} bytes, over the queue's MaximumMessageSize of {limit}, and on_failure has no spill_bucket"
                )),
                fields: Some(cut),
                records: Some(records),
                ..Cut::default()
            }),
            ..SluiceInfo::default()
        }),
        ..Envelope::default()
    };
    patch(&mut document, &changes.to_value());
    document
}

#[async_trait]
impl Destination for SqsDestination {
    async fn store(
        &self,
        document: serde_json::Value,
        placement: &Placement<'_>,
    ) -> Result<(), DestinationError> {
        let full = document.to_string();
        // Twice at most: a refusal as too long reads the queue's limit again first.
        let mut outcome = Ok(String::new());
        for attempt in 0..2 {
            if attempt > 0 {
                self.forget_limit().await;
            }
            let limit = self.limit().await;
            let mut body = full.clone();
            if body.len() > limit && self.spill.is_none() {
                // Retrying cannot make it fit: keep what identifies the records and why they
                // failed.
                let size = body.len();
                body = reduced(document.clone(), size, limit).to_string();
                metrics::counter!("sluice_destination_reduced_envelopes_total", "mapping" => placement.mapping.to_owned()).increment(1);
                tracing::warn!(mapping = placement.mapping, queue_url = %self.queue_url, envelope_bytes = size, reduced_bytes = body.len(), limit, "the envelope is over the queue's MaximumMessageSize and there is no spill_bucket; storing it without the records' contents (set on_failure.sqs.spill_bucket to keep them)");
            }
            outcome = self
                .send_sized(
                    placement.mapping,
                    body,
                    placement.group_hint,
                    placement.dedup_hint,
                )
                .await;
            if !matches!(outcome, Err(SendFailure::TooLong(_))) {
                break;
            }
        }
        outcome.map(|_| ()).map_err(SendFailure::into_error)
    }

    fn describe(&self) -> &str {
        &self.queue_url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spill_pointer_round_trips_and_other_bodies_are_not_pointers() {
        let pointer = SpillPointer {
            bucket: "dead".into(),
            key: "sluice-spill/m/1.json".into(),
        };
        assert_eq!(SpillPointer::parse(&pointer.body()), Some(pointer));
        assert_eq!(SpillPointer::parse(r#"{"version":"1.0"}"#), None);
        assert_eq!(
            SpillPointer::parse(r#"["other", {"s3BucketName": "b", "s3Key": "k"}]"#),
            None
        );
        assert_eq!(SpillPointer::parse("[1, 2"), None);
    }

    // Hardening issue, item 11: an envelope that cannot fit its queue (no spill_bucket) is
    // stored reduced instead of being retried forever.
    #[test]
    fn a_reduced_envelope_keeps_identities_and_error_and_says_what_was_cut() {
        let envelope = json!({
            "requestContext": {"condition": "RetryAttemptsExhausted"},
            "DDBStreamBatchInfo": {"startSequenceNumber": "1"},
            "payload": {"Records": ["x".repeat(300_000)]},
            "sluice": {
                "records": [{"messageId": "m1", "body": "x".repeat(300_000)}],
                "error": {"type": "Boom", "message": "failed"},
                "source": {"kind": "sqs", "message_ids": ["m1"]},
            }
        });
        let small = reduced(envelope, 600_000, DEFAULT_MESSAGE_BYTES);
        assert!(small.to_string().len() < 2_000, "{small}");
        assert_eq!(small["DDBStreamBatchInfo"]["startSequenceNumber"], "1");
        assert_eq!(small["sluice"]["source"]["message_ids"][0], "m1");
        assert_eq!(small["sluice"]["error"]["type"], "Boom");
        assert_eq!(small["sluice"]["cut"]["records"], 1);
        assert_eq!(
            small["sluice"]["cut"]["fields"],
            json!(["payload", "sluice.records"])
        );
    }
}
