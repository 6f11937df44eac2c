//! Messages the SQS (or SNS) Extended Client Library sent with their body in S3
//! (`source.sqs.large_payloads`): the queue holds a pointer,
//! `["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName", "s3Key"}]`, as the
//! body, or as the `Message` of an SNS notification (raw delivery off).
//!
//! Guarantees:
//! - a pointer is replaced by the object's text before the record is batched, so filters and
//!   the handler see the real body; the Extended Client's size attribute (`ExtendedPayloadSize`,
//!   or the older `SQSLargePayloadSize`) is removed, as the client's own receive does;
//! - a body that cannot fit an invocation (by that attribute, the object's length, or the record
//!   it makes) is [`Resolved::Unusable`] as `PayloadTooLarge`, keeping its pointer;
//! - a missing object (or bucket), or one that is not text, is [`Resolved::Unusable`]: a
//!   non-retryable `PayloadNotFound` / `PayloadNotText`; any other S3 failure is retried later
//!   (the mapping bounds that with `retry.max_receive_count`);
//! - at most [`CONCURRENT_FETCHES`] bodies are fetched at once per mapping, so the bodies held
//!   while fetching stay under that many invocations' worth;
//! - bodies that are not pointers pass unchanged.

use crate::destinations::sqs::SpillPointer;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::operation::get_object::GetObjectError;
use serde_json::Value;
use sluice_policies::{DeadLetterCondition, ErrorInfo};
use sluice_sources::Record;

/// Bodies fetched at once per mapping.
pub const CONCURRENT_FETCHES: usize = 4;
/// Batches whose payload objects are being deleted in the background at once per mapping; at
/// the bound (S3 slow or failing) a batch waits for one to end before it ends itself, which
/// holds its place in `max_concurrency` and so slows polling instead of piling up deletes.
pub const CONCURRENT_DELETES: usize = 16;
/// How long reading one object's body may take (the SDK's operation timeout ends with the
/// response headers, not with the body streamed after them).
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The Extended Client's attributes that hold the stored body's size.
const SIZE_ATTRIBUTES: [&str; 2] = ["ExtendedPayloadSize", "SQSLargePayloadSize"];

/// What became of one record.
#[derive(Debug)]
pub(super) enum Resolved {
    /// Ready to batch: it held no pointer, or its body was fetched (the pointer kept, so the
    /// object can be deleted after the message), or its body is too large to fetch.
    Ready(Record, Option<SpillPointer>),
    /// The body cannot be had, or cannot be invoked: dead-letter it.
    Unusable(Record, DeadLetterCondition, ErrorInfo),
    /// S3 failed for now: the message comes back later.
    Retry(Record, String),
}

impl Resolved {
    /// The record, whatever became of it.
    pub(super) fn record(&self) -> &Record {
        match self {
            Resolved::Ready(record, _)
            | Resolved::Unusable(record, ..)
            | Resolved::Retry(record, _) => record,
        }
    }

    pub(super) fn into_record(self) -> Record {
        match self {
            Resolved::Ready(record, _)
            | Resolved::Unusable(record, ..)
            | Resolved::Retry(record, _) => record,
        }
    }
}

/// Where in a record's event the pointer is.
enum Place {
    Body,
    SnsMessage(serde_json::Map<String, Value>),
}

/// The pointer `event` (a Lambda SQS record) holds, and where.
fn pointer_of(event: &Value) -> Option<(SpillPointer, Place)> {
    let body = event["body"].as_str()?;
    if let Some(pointer) = SpillPointer::parse(body) {
        return Some((pointer, Place::Body));
    }
    if !body.trim_start().starts_with('{') {
        return None;
    }
    let notification: serde_json::Map<String, Value> = serde_json::from_str(body).ok()?;
    if notification.get("Type").and_then(Value::as_str) != Some("Notification") {
        return None;
    }
    let pointer = SpillPointer::parse(notification.get("Message")?.as_str()?)?;
    Some((pointer, Place::SnsMessage(notification)))
}

/// The size the Extended Client declared for the stored body, if it did.
fn declared_size(event: &Value, place: &Place) -> Option<usize> {
    let sqs = &event["messageAttributes"];
    SIZE_ATTRIBUTES.iter().find_map(|name| {
        let value = match place {
            Place::Body => sqs[*name]["stringValue"].as_str(),
            Place::SnsMessage(notification) => notification
                .get("MessageAttributes")
                .and_then(|attributes| attributes[*name]["Value"].as_str()),
        };
        value?.parse().ok()
    })
}

/// The record with `text` as its body (or its SNS message), without the size attributes.
fn with_body(record: Record, mut event: Value, place: Place, text: String) -> Record {
    let body = match place {
        Place::Body => text,
        Place::SnsMessage(mut notification) => {
            notification.insert("Message".into(), Value::String(text));
            if let Some(Value::Object(attributes)) = notification.get_mut("MessageAttributes") {
                for name in SIZE_ATTRIBUTES {
                    attributes.remove(name);
                }
            }
            Value::Object(notification).to_string()
        }
    };
    event["body"] = Value::String(body);
    if let Some(Value::Object(attributes)) = event.get_mut("messageAttributes") {
        for name in SIZE_ATTRIBUTES {
            attributes.remove(name);
        }
    }
    let Ok(raw) = serde_json::value::to_raw_value(&event) else {
        return record;
    };
    record.with_event(raw)
}

/// Fetches the bodies of Extended Client pointers.
pub(super) struct Resolver {
    pub s3: aws_sdk_s3::Client,
    pub delete_after_success: bool,
    /// The largest record a batch holds (the batcher's limit).
    pub max_record_bytes: usize,
    pub fetches: tokio::sync::Semaphore,
}

impl Resolver {
    pub async fn resolve(&self, record: Record) -> Resolved {
        let Ok(event) = serde_json::from_str::<Value>(record.event.get()) else {
            return Resolved::Ready(record, None);
        };
        let Some((pointer, place)) = pointer_of(&event) else {
            return Resolved::Ready(record, None);
        };
        let limit = self.max_record_bytes;
        let too_large = |size: usize, record: Record| {
            Resolved::Unusable(
                record,
                DeadLetterCondition::PayloadTooLarge,
                ErrorInfo::new(
                    "PayloadTooLarge",
                    format!(
                        "the message's body in s3://{}/{} is {size} bytes; an invocation holds at most {limit} of records",
                        pointer.bucket, pointer.key
                    ),
                ),
            )
        };
        if let Some(size) = declared_size(&event, &place)
            && size > limit
        {
            return too_large(size, record);
        }
        let Ok(_fetching) = self.fetches.acquire().await else {
            return Resolved::Retry(record, "the mapping is stopping".into());
        };
        let fetched = self
            .s3
            .get_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await;
        let output = match fetched {
            Ok(output) => output,
            Err(error) => {
                let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&error)
                    .unwrap_or_default()
                    .to_owned();
                let missing =
                    matches!(error.as_service_error(), Some(GetObjectError::NoSuchKey(_)))
                        || code == "NoSuchBucket"
                        || code == "NoSuchKey";
                if missing {
                    return Resolved::Unusable(
                        record,
                        DeadLetterCondition::NonRetryableError,
                        ErrorInfo::new(
                            "PayloadNotFound",
                            format!(
                                "the message's body is stored in s3://{}/{} (SQS Extended Client), and that object does not exist; it was deleted, or the producer's upload failed",
                                pointer.bucket, pointer.key
                            ),
                        ),
                    );
                }
                return Resolved::Retry(
                    record,
                    format!(
                        "fetching s3://{}/{}: {}",
                        pointer.bucket,
                        pointer.key,
                        DisplayErrorContext(&error)
                    ),
                );
            }
        };
        let length = output
            .content_length()
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0);
        if length > limit {
            return too_large(length, record);
        }
        // Read at most one byte past the limit, within the deadline: an object without a
        // Content-Length (or with a wrong one) cannot make the read grow without bound.
        let mut body = output.body;
        let read = async {
            let mut bytes = Vec::with_capacity(length.min(limit));
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                if bytes.len() + chunk.len() > limit {
                    return Ok(Err::<Vec<u8>, usize>(bytes.len() + chunk.len()));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, String>(Ok(bytes))
        };
        let bytes = match tokio::time::timeout(BODY_DEADLINE, read).await {
            Ok(Ok(Ok(bytes))) => bytes,
            Ok(Ok(Err(at_least))) => return too_large(at_least, record),
            Ok(Err(error)) => {
                return Resolved::Retry(
                    record,
                    format!("reading s3://{}/{}: {error}", pointer.bucket, pointer.key),
                );
            }
            Err(_) => {
                return Resolved::Retry(
                    record,
                    format!(
                        "reading s3://{}/{} took longer than {BODY_DEADLINE:?}",
                        pointer.bucket, pointer.key
                    ),
                );
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => {
                // JSON escaping can make the record larger than the body: it must still fit.
                let resolved = with_body(record.clone(), event, place, text);
                if resolved.size_bytes > limit {
                    return too_large(resolved.size_bytes, record);
                }
                Resolved::Ready(resolved, Some(pointer))
            }
            Err(_) => Resolved::Unusable(
                record,
                DeadLetterCondition::NonRetryableError,
                ErrorInfo::new(
                    "PayloadNotText",
                    format!(
                        "the message's body in s3://{}/{} is not UTF-8 text, which an SQS body must be",
                        pointer.bucket, pointer.key
                    ),
                ),
            ),
        }
    }

    /// Deletes the objects of messages that were handled and deleted; a failure leaves the
    /// object (logged), never the message.
    pub async fn delete_objects(
        s3: aws_sdk_s3::Client,
        mapping: String,
        pointers: Vec<SpillPointer>,
    ) {
        let mapping = mapping.as_str();
        for pointer in pointers {
            let deleted = s3
                .delete_object()
                .bucket(&pointer.bucket)
                .key(&pointer.key)
                .send()
                .await;
            if let Err(error) = deleted {
                tracing::warn!(mapping, bucket = %pointer.bucket, key = %pointer.key, error = %DisplayErrorContext(&error), "deleting a handled message's payload object failed; it stays in S3");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POINTER: &str = r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"payloads","s3Key":"k1"}]"#;

    fn record(event: Value) -> Record {
        Record::new(
            sluice_sources::Receipt {
                id: "m1".into(),
                ack: sluice_sources::AckToken::Sqs {
                    receipt_handle: "h".into(),
                },
            },
            None,
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
            1,
            serde_json::value::to_raw_value(&event).unwrap(),
        )
    }

    /// An S3 endpoint that streams every object as chunks of 64 KiB without a Content-Length
    /// (chunked transfer encoding): `chunks` of them, or without end.
    async fn streaming_s3(chunks: Option<usize>) -> aws_sdk_s3::Client {
        let app = axum::Router::new().fallback(move || async move {
            let chunk = || Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 << 10]));
            let stream = futures_util::StreamExt::take(
                futures_util::stream::repeat_with(chunk),
                chunks.unwrap_or(usize::MAX),
            );
            axum::body::Body::from_stream(stream)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "a", "b", None, None, "test",
            ))
            .endpoint_url(format!("http://{address}"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    fn resolver(s3: aws_sdk_s3::Client, max_record_bytes: usize) -> Resolver {
        Resolver {
            s3,
            delete_after_success: false,
            max_record_bytes,
            fetches: tokio::sync::Semaphore::new(CONCURRENT_FETCHES),
        }
    }

    // Review: an object sent without a Content-Length was read whole, however large, before its
    // size was looked at.
    #[tokio::test]
    async fn a_body_without_a_length_is_read_no_further_than_the_limit() {
        let pointer = json!({"messageId": "m1", "body": POINTER});
        // A body that never ends, against a limit of 200 KiB: read whole, it would never end.
        let endless = resolver(streaming_s3(None).await, 200 << 10);
        let resolved = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            endless.resolve(record(pointer.clone())),
        )
        .await
        .expect("the read stops at the limit");
        match resolved {
            Resolved::Unusable(_, DeadLetterCondition::PayloadTooLarge, error) => {
                assert!(error.message.contains("bytes"), "{}", error.message);
            }
            other => panic!("{other:?}"),
        }
        // Under the limit the same stream is read whole.
        let small = resolver(streaming_s3(Some(2)).await, 200 << 10);
        match small.resolve(record(pointer)).await {
            Resolved::Ready(resolved, Some(_)) => {
                assert!(resolved.size_bytes > 128 << 10, "{}", resolved.size_bytes);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pointer_is_found_in_the_body_or_an_sns_message_and_nowhere_else() {
        let direct = json!({"body": POINTER});
        assert!(matches!(pointer_of(&direct), Some((p, Place::Body)) if p.key == "k1"));
        let sns = json!({"body": json!({
            "Type": "Notification",
            "Message": POINTER,
            "MessageAttributes": {"ExtendedPayloadSize": {"Type": "Number", "Value": "7000000"}},
        }).to_string()});
        let (pointer, place) = pointer_of(&sns).unwrap();
        assert_eq!(pointer.bucket, "payloads");
        assert_eq!(declared_size(&sns, &place), Some(7_000_000));
        for other in [
            json!({"body": "hello"}),
            json!({"body": "{\"Type\":\"Notification\",\"Message\":\"hi\"}"}),
            json!({"body": "[1,2]"}),
        ] {
            assert!(pointer_of(&other).is_none(), "{other}");
        }
    }

    #[test]
    fn the_body_replaces_the_pointer_and_the_size_attributes_go() {
        let event = json!({
            "messageId": "m1",
            "body": POINTER,
            "messageAttributes": {
                "ExtendedPayloadSize": {"stringValue": "5", "dataType": "Number"},
                "kept": {"stringValue": "x", "dataType": "String"},
            },
        });
        let resolved = with_body(record(event.clone()), event, Place::Body, "hello".into());
        let event: Value = serde_json::from_str(resolved.event.get()).unwrap();
        assert_eq!(event["body"], "hello");
        assert_eq!(
            event["messageAttributes"],
            json!({"kept": {"stringValue": "x", "dataType": "String"}})
        );
        assert_eq!(resolved.size_bytes, resolved.event.get().len() + 1);

        let notification = json!({
            "Type": "Notification",
            "Message": POINTER,
            "MessageAttributes": {"ExtendedPayloadSize": {"Type": "Number", "Value": "5"}},
        });
        let event = json!({"body": notification.to_string()});
        let (_, place) = pointer_of(&event).unwrap();
        let resolved = with_body(record(event.clone()), event, place, "hello".into());
        let event: Value = serde_json::from_str(resolved.event.get()).unwrap();
        let body: Value = serde_json::from_str(event["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["Message"], "hello");
        assert_eq!(body["Type"], "Notification");
        assert_eq!(body["MessageAttributes"], json!({}));
    }
}
