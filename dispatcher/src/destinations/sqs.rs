//! An SQS queue as an on-failure destination: the envelope is the message body.
//!
//! An envelope over SQS's message limit (256 KB) is stored in the destination's `spill_bucket`
//! first, and the queue gets a pointer in the format of the SQS Extended Client Library (a JSON
//! array `["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName", "s3Key"}]`
//! with the `ExtendedPayloadSize` attribute), so tools that know that client can read it too.
//! The object is written before the pointer is sent: a pointer never names a missing object.

use super::envelope::{Cut, Envelope, SluiceInfo, patch};
use super::{Destination, DestinationError, Placement};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::{Value, json};

/// SQS's largest message: body and attributes together.
pub const MAX_MESSAGE_BYTES: usize = 262_144;
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
}

impl SqsDestination {
    pub fn new(client: Client, queue_url: String, spill: Option<Spill>) -> Self {
        let fifo = queue_url.ends_with(".fifo");
        Self {
            client,
            queue_url,
            fifo,
            spill,
        }
    }

    /// Sends `body`, through the spill bucket when it is over the limit; returns the message id.
    pub async fn send_body(
        &self,
        mapping: &str,
        body: String,
        group_hint: &str,
        dedup_hint: &str,
    ) -> Result<String, DestinationError> {
        let failed = |message: String| DestinationError::Sqs {
            queue_url: self.queue_url.clone(),
            message,
        };
        let mut request = self.client.send_message().queue_url(&self.queue_url);
        if body.len() > MAX_MESSAGE_BYTES {
            let Some(spill) = &self.spill else {
                return Err(failed(format!(
                    "the envelope is {} bytes, over SQS's {MAX_MESSAGE_BYTES}; set on_failure.sqs.spill_bucket so large envelopes are stored in S3",
                    body.len()
                )));
            };
            let size = body.len();
            let pointer = spill.store(mapping, body).await.map_err(|error| {
                failed(format!(
                    "storing the oversized envelope: {}",
                    crate::error_chain(&error)
                ))
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
            .map_err(|error| failed(DisplayErrorContext(&error).to_string()))
    }
}

/// The envelope without the records' contents and payloads (what made it too large), with a
/// note of what was cut. Identities (ids, sequence numbers, offsets, batch info), the error and
/// the attempt history stay.
pub(crate) fn reduced(mut document: Value, size: usize) -> Value {
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
                    "the envelope was {size} bytes, over SQS's {MAX_MESSAGE_BYTES}, and on_failure has no spill_bucket"
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
        let mut body = document.to_string();
        if body.len() > MAX_MESSAGE_BYTES && self.spill.is_none() {
            // Retrying cannot make it fit: keep what identifies the records and why they failed.
            let size = body.len();
            body = reduced(document, size).to_string();
            metrics::counter!("sluice_destination_reduced_envelopes_total", "mapping" => placement.mapping.to_owned()).increment(1);
            tracing::warn!(mapping = placement.mapping, queue_url = %self.queue_url, envelope_bytes = size, reduced_bytes = body.len(), "the envelope is over SQS's limit and there is no spill_bucket; storing it without the records' contents (set on_failure.sqs.spill_bucket to keep them)");
        }
        self.send_body(
            placement.mapping,
            body,
            placement.group_hint,
            placement.dedup_hint,
        )
        .await
        .map(|_| ())
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
        let small = reduced(envelope, 600_000);
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
