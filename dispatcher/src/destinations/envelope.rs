//! The dead-letter envelope: the AWS-compatible fields of Lambda's on-failure record plus a
//! `sluice` object with the full records, the last error and the attempt history, so a person can
//! read it and `sluice dlq replay` can re-drive it.

use serde_json::{Value, json};
use sluice_policies::{DeadLetterCondition, ErrorInfo};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the records came from.
#[derive(Debug, Clone)]
pub enum EnvelopeSource {
    Sqs {
        queue_url: String,
        queue_arn: String,
        message_ids: Vec<String>,
    },
    /// S3 event notifications, read from the queue a bucket notifies.
    S3 {
        queue_url: String,
        queue_arn: String,
        message_ids: Vec<String>,
    },
    DynamodbStream {
        stream_arn: String,
        shard_id: String,
        /// The dead-lettered records' sequence numbers, in stream order.
        sequence_numbers: Vec<String>,
        /// Approximate arrival of the first and last record, since the Unix epoch.
        first_arrival: Duration,
        last_arrival: Duration,
    },
    /// A Kafka partition.
    Kafka {
        cluster: sluice_sources::kafka::KafkaCluster,
        topic: String,
        partition: i32,
        /// The dead-lettered records' offsets, in partition order.
        offsets: Vec<i64>,
        /// Timestamps (ms since the epoch) of the first and last record.
        first_timestamp: i64,
        last_timestamp: i64,
    },
    /// An `Event` invocation through the Invoke API.
    Invoke {
        function: String,
        request_id: String,
    },
}

impl EnvelopeSource {
    /// The `sluice.source` object: which source kind, and the identities replay needs.
    pub fn to_json(&self) -> Value {
        match self {
            EnvelopeSource::Sqs {
                queue_url,
                queue_arn,
                message_ids,
            }
            | EnvelopeSource::S3 {
                queue_url,
                queue_arn,
                message_ids,
            } => json!({
                "kind": if matches!(self, EnvelopeSource::S3 { .. }) { "s3" } else { "sqs" },
                "queue_url": queue_url,
                "queue_arn": queue_arn,
                "message_ids": message_ids,
            }),
            EnvelopeSource::DynamodbStream {
                stream_arn,
                shard_id,
                sequence_numbers,
                ..
            } => json!({
                "kind": "dynamodb_stream",
                "stream_arn": stream_arn,
                "shard_id": shard_id,
                "sequence_numbers": sequence_numbers,
            }),
            EnvelopeSource::Kafka {
                cluster,
                topic,
                partition,
                offsets,
                ..
            } => json!({
                "kind": "kafka",
                "bootstrap_servers": cluster.bootstrap_servers,
                "topic": topic,
                "partition": partition,
                "offsets": offsets,
            }),
            EnvelopeSource::Invoke {
                function,
                request_id,
            } => json!({ "kind": "invoke", "function": function, "request_id": request_id }),
        }
    }

    /// The part of an S3 key that says where the records came from: the shard, or the queue name.
    pub fn key_part(&self) -> &str {
        match self {
            EnvelopeSource::Sqs { queue_url, .. } | EnvelopeSource::S3 { queue_url, .. } => {
                queue_url.rsplit('/').next().unwrap_or(queue_url)
            }
            EnvelopeSource::DynamodbStream { shard_id, .. } => shard_id,
            EnvelopeSource::Kafka { topic, .. } => topic,
            EnvelopeSource::Invoke { .. } => "invoke",
        }
    }
}

/// Everything a dead letter says.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub mapping: String,
    pub target: String,
    pub region: String,
    pub condition: DeadLetterCondition,
    /// Invocations that included these records.
    pub attempts: u32,
    pub error: ErrorInfo,
    /// `"Unhandled"` when the function threw; `None` when it returned but the records counted as
    /// failed (a partial or invalid response), as AWS records it.
    pub function_error: Option<String>,
    pub source: EnvelopeSource,
    /// The records exactly as they were in the event.
    pub records: Vec<Value>,
    /// Since the Unix epoch.
    pub first_attempt_at: Duration,
    pub last_attempt_at: Duration,
}

pub fn iso8601_millis(since_epoch: Duration) -> String {
    let datetime = time::OffsetDateTime::UNIX_EPOCH + since_epoch;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    datetime
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// ISO 8601 with whole seconds, as DynamoDB's batch info writes arrival times.
pub fn iso8601_seconds(since_epoch: Duration) -> String {
    let datetime = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    datetime
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub fn now_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A Kafka timestamp (ms since the epoch; negative when the message has none).
pub fn epoch_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or_default())
}

impl DeadLetter {
    /// The records as the function received them: Lambda's Kafka event for Kafka records,
    /// `{"Records": [...]}` for the others.
    pub fn event_payload(&self) -> Value {
        match &self.source {
            EnvelopeSource::Kafka { cluster, .. } => {
                sluice_sources::kafka::event_value(cluster, &self.records)
            }
            _ => json!({ "Records": self.records }),
        }
    }

    /// The envelope document.
    pub fn to_json(&self, request_id: &str) -> Value {
        let mut envelope = json!({
            "version": "1.0",
            "timestamp": iso8601_millis(now_since_epoch()),
            "requestContext": {
                "requestId": request_id,
                // sluice targets are not Lambda functions; account 000000000000 marks a sluice target.
                "functionArn": format!("arn:aws:lambda:{}:000000000000:function:{}", self.region, self.target),
                "condition": self.condition.as_str(),
                "approximateInvokeCount": self.attempts,
            },
        });
        // A record that aged out has no response to describe (semantics.md §13.4).
        if self.condition != DeadLetterCondition::RecordAgeExceeded {
            envelope["responseContext"] = json!({
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": self.function_error,
            });
        }
        if let EnvelopeSource::DynamodbStream {
            stream_arn,
            shard_id,
            sequence_numbers,
            first_arrival,
            last_arrival,
        } = &self.source
        {
            envelope["DDBStreamBatchInfo"] = json!({
                "shardId": shard_id,
                "startSequenceNumber": sequence_numbers.first(),
                "endSequenceNumber": sequence_numbers.last(),
                "approximateArrivalOfFirstRecord": iso8601_seconds(*first_arrival),
                "approximateArrivalOfLastRecord": iso8601_seconds(*last_arrival),
                "batchSize": sequence_numbers.len(),
                "streamArn": stream_arn,
            });
        }
        if let EnvelopeSource::Kafka {
            cluster,
            topic,
            partition,
            offsets,
            first_timestamp,
            last_timestamp,
        } = &self.source
        {
            envelope["KafkaBatchInfo"] = json!({
                "batchSize": offsets.len(),
                "eventSourceArn": cluster.msk_cluster_arn,
                "bootstrapServers": cluster.bootstrap_servers,
                "payloadSize": self.event_payload().to_string().len(),
                "recordsInfo": {
                    sluice_sources::kafka::partition_name(topic, *partition): {
                        "firstRecordOffset": offsets.first().map(i64::to_string),
                        "lastRecordOffset": offsets.last().map(i64::to_string),
                        "firstRecordTimestamp": iso8601_millis(epoch_millis(*first_timestamp)),
                        "lastRecordTimestamp": iso8601_millis(epoch_millis(*last_timestamp)),
                    }
                },
            });
        }
        envelope["sluice"] = json!({
            "mapping": self.mapping,
            "source": self.source.to_json(),
            "records": self.records,
            "error": { "type": self.error.error_type, "message": self.error.message },
            "attempts": self.attempts,
            "first_attempt_at": iso8601_millis(self.first_attempt_at),
            "last_attempt_at": iso8601_millis(self.last_attempt_at),
            "replay_count": 0,
        });
        envelope
    }
}

/// The record an asynchronous invocation sends to its destinations (semantics.md §13.5): the
/// AWS fields plus the `sluice` object.
#[derive(Debug, Clone)]
pub struct AsyncRecord {
    pub mapping: String,
    pub target: String,
    pub region: String,
    /// `Success`, `RetriesExhausted` or `EventAgeExceeded`.
    pub condition: &'static str,
    pub invoke_count: u32,
    pub request_id: String,
    /// The event as the function received it.
    pub request_payload: Value,
    /// The function's return value, or its error.
    pub response: Result<Option<Value>, ErrorInfo>,
    pub source: EnvelopeSource,
    pub first_attempt_at: Duration,
    pub last_attempt_at: Duration,
}

impl AsyncRecord {
    pub fn to_json(&self) -> Value {
        let mut response_context = json!({ "statusCode": 200, "executedVersion": "$LATEST" });
        let response_payload = match &self.response {
            Ok(response) => response.clone().unwrap_or(Value::Null),
            Err(error) => {
                response_context["functionError"] = json!("Unhandled");
                json!({
                    "errorMessage": error.message,
                    "errorType": error.error_type,
                    "requestId": self.request_id,
                    "stackTrace": [],
                })
            }
        };
        let mut sluice = json!({
            "mapping": self.mapping,
            "source": self.source.to_json(),
            // S3 events carry records; an Invoke API event is the record itself.
            "records": self
                .request_payload
                .get("Records")
                .cloned()
                .unwrap_or_else(|| json!([self.request_payload])),
            "attempts": self.invoke_count,
            "first_attempt_at": iso8601_millis(self.first_attempt_at),
            "last_attempt_at": iso8601_millis(self.last_attempt_at),
            "replay_count": 0,
        });
        if let Err(error) = &self.response {
            sluice["error"] = json!({ "type": error.error_type, "message": error.message });
        }
        json!({
            "version": "1.0",
            "timestamp": iso8601_millis(now_since_epoch()),
            "requestContext": {
                "requestId": self.request_id,
                // Qualified, as AWS writes it for asynchronous invocations.
                "functionArn": format!("arn:aws:lambda:{}:000000000000:function:{}:$LATEST", self.region, self.target),
                "condition": self.condition,
                "approximateInvokeCount": self.invoke_count,
            },
            "requestPayload": self.request_payload,
            "responseContext": response_context,
            "responsePayload": response_payload,
            "sluice": sluice,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601_utc_with_milliseconds() {
        assert_eq!(
            iso8601_millis(Duration::from_millis(1_573_691_886_021)),
            "2019-11-14T00:38:06.021Z"
        );
    }

    #[test]
    fn the_envelope_carries_aws_fields_and_the_full_records() {
        let dead_letter = DeadLetter {
            mapping: "orders".into(),
            target: "api".into(),
            region: "us-east-1".into(),
            condition: DeadLetterCondition::RetryAttemptsExhausted,
            attempts: 3,
            error: ErrorInfo::new("ValueError", "bad"),
            function_error: Some("Unhandled".into()),
            source: EnvelopeSource::Sqs {
                queue_url: "http://q".into(),
                queue_arn: "arn:aws:sqs:us-east-1:1:q".into(),
                message_ids: vec!["m1".into()],
            },
            records: vec![json!({"messageId": "m1", "body": "x"})],
            first_attempt_at: Duration::from_secs(1),
            last_attempt_at: Duration::from_secs(2),
        };
        let envelope = dead_letter.to_json("req-1");
        assert_eq!(
            envelope["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
        assert_eq!(envelope["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(envelope["responseContext"]["functionError"], "Unhandled");
        assert_eq!(envelope["sluice"]["records"][0]["body"], "x");
        assert_eq!(envelope["sluice"]["error"]["type"], "ValueError");
        assert_eq!(envelope["sluice"]["source"]["message_ids"][0], "m1");
    }

    #[test]
    fn a_stream_envelope_has_ddb_batch_info_and_no_response_when_aged_out() {
        let dead_letter = DeadLetter {
            mapping: "changes".into(),
            target: "api".into(),
            region: "us-east-1".into(),
            condition: DeadLetterCondition::RecordAgeExceeded,
            attempts: 1,
            error: ErrorInfo::new("RecordAgeExceeded", "too old"),
            function_error: None,
            source: EnvelopeSource::DynamodbStream {
                stream_arn: "arn:aws:dynamodb:us-east-1:1:table/t/stream/x".into(),
                shard_id: "shardId-1".into(),
                sequence_numbers: vec!["100".into(), "101".into()],
                first_arrival: Duration::from_millis(1_573_691_884_835),
                last_arrival: Duration::from_millis(1_573_691_885_580),
            },
            records: vec![json!({"eventID": "a"}), json!({"eventID": "b"})],
            first_attempt_at: Duration::from_secs(1),
            last_attempt_at: Duration::from_secs(2),
        };
        let envelope = dead_letter.to_json("req-2");
        assert!(envelope.get("responseContext").is_none());
        assert_eq!(
            envelope["DDBStreamBatchInfo"],
            json!({
                "shardId": "shardId-1",
                "startSequenceNumber": "100",
                "endSequenceNumber": "101",
                "approximateArrivalOfFirstRecord": "2019-11-14T00:38:04Z",
                "approximateArrivalOfLastRecord": "2019-11-14T00:38:05Z",
                "batchSize": 2,
                "streamArn": "arn:aws:dynamodb:us-east-1:1:table/t/stream/x"
            })
        );
        assert_eq!(envelope["sluice"]["records"][1]["eventID"], "b");
    }

    #[test]
    fn async_records_have_lambdas_destination_shape() {
        let record = |response| AsyncRecord {
            mapping: "uploads".into(),
            target: "thumbnailer".into(),
            region: "us-east-1".into(),
            condition: "RetriesExhausted",
            invoke_count: 3,
            request_id: "req-9".into(),
            request_payload: json!({"Records": [{"s3": {"object": {"key": "a"}}}]}),
            response,
            source: EnvelopeSource::S3 {
                queue_url: "http://q".into(),
                queue_arn: "arn:aws:sqs:us-east-1:1:q".into(),
                message_ids: vec!["m".into()],
            },
            first_attempt_at: Duration::from_secs(1),
            last_attempt_at: Duration::from_secs(2),
        };
        let failed = record(Err(ErrorInfo::new("ValueError", "bad image"))).to_json();
        assert_eq!(
            failed["requestContext"]["functionArn"],
            "arn:aws:lambda:us-east-1:000000000000:function:thumbnailer:$LATEST"
        );
        assert_eq!(failed["responseContext"]["functionError"], "Unhandled");
        assert_eq!(failed["responsePayload"]["errorType"], "ValueError");
        assert_eq!(failed["responsePayload"]["requestId"], "req-9");
        assert_eq!(
            failed["requestPayload"]["Records"][0]["s3"]["object"]["key"],
            "a"
        );
        let succeeded = record(Ok(Some(json!({"ok": true})))).to_json();
        assert!(succeeded["responseContext"].get("functionError").is_none());
        assert_eq!(succeeded["responsePayload"], json!({"ok": true}));
    }
}
