//! A Kafka topic as the on-failure destination of a Kafka mapping, written as Lambda's
//! `kafka://` destination writes it (semantics.md §4): one message per record, keyed with the
//! record's own key (no key: the producer's partitioner spreads them), whose value is the
//! on-failure record with `KafkaBatchInfo.recordInfo` and the one-record event as `payload`,
//! plus sluice's `sluice` object.
//!
//! A dead letter counts as stored only when the broker acknowledged every one of its messages
//! (`acks=all`, idempotent producer); a failure is reported and the caller retries the whole
//! dead letter, so a record is never skipped (a retry may write a message twice).

use super::envelope::{DeadLetter, EnvelopeSource, KafkaRecordInfo, epoch_millis, iso8601_millis};
use super::{Destination, DestinationError, Placement};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sluice_policies::DeadLetterCondition;
use sluice_sources::kafka::auth::{ClientAuth, Tokens};
use std::time::Duration;

/// How long one message may wait for the broker before the send counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaDestination {
    producer: FutureProducer<ClientAuth>,
    topic: String,
    description: String,
}

impl KafkaDestination {
    pub fn new(
        bootstrap_servers: &str,
        properties: &[(String, String)],
        tokens: &Tokens,
        topic: &str,
    ) -> Result<Self, DestinationError> {
        let producer = sluice_sources::kafka::producer_config(bootstrap_servers, properties)
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create_with_context(ClientAuth {
                tokens: tokens.clone(),
            })
            .map_err(|error| DestinationError::Kafka {
                topic: topic.to_owned(),
                message: error.to_string(),
            })?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            description: format!("kafka://{topic}"),
        })
    }

    /// Produces one message and waits for the broker's acknowledgement.
    pub(crate) async fn produce(
        &self,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(), DestinationError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, DELIVERY_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| DestinationError::Kafka {
                topic: self.topic.clone(),
                message: error.to_string(),
            })
    }
}

/// The message for one dead-lettered record: the envelope of a one-record dead letter, with
/// Lambda's topic-destination condition and `KafkaBatchInfo.recordInfo`.
pub(crate) fn record_message(dead_letter: &DeadLetter, record: &Value, request_id: &str) -> Value {
    let offset = record["offset"].as_i64().unwrap_or(-1);
    let timestamp = record["timestamp"].as_i64().unwrap_or(-1);
    let source = match &dead_letter.source {
        EnvelopeSource::Kafka {
            cluster,
            topic,
            partition,
            ..
        } => EnvelopeSource::Kafka {
            cluster: cluster.clone(),
            topic: topic.clone(),
            partition: *partition,
            offsets: vec![offset],
            first_timestamp: timestamp,
            last_timestamp: timestamp,
        },
        other => other.clone(),
    };
    let single = DeadLetter {
        mapping: dead_letter.mapping.clone(),
        target: dead_letter.target.clone(),
        region: dead_letter.region.clone(),
        condition: dead_letter.condition,
        attempts: dead_letter.attempts,
        error: dead_letter.error.clone(),
        function_error: dead_letter.function_error.clone(),
        source,
        records: vec![record.clone()],
        first_attempt_at: dead_letter.first_attempt_at,
        last_attempt_at: dead_letter.last_attempt_at,
    };
    // Lambda's topic destination names exhaustion RetriesExhausted (semantics.md §11 item 2).
    let condition = match dead_letter.condition {
        DeadLetterCondition::RetryAttemptsExhausted => "RetriesExhausted",
        other => other.as_str(),
    };
    let mut message = single.envelope(request_id);
    if let Some(context) = message.request_context.as_mut() {
        context.condition = Some(condition.to_owned());
    }
    // A one-record batch: its info describes the record instead of per-partition ranges.
    if let Some(info) = message.kafka_batch_info.as_mut() {
        info.records_info = None;
        info.record_info = Some(KafkaRecordInfo {
            offset: Some(offset.to_string()),
            timestamp: Some(iso8601_millis(epoch_millis(timestamp))),
            ..KafkaRecordInfo::default()
        });
    }
    message.payload = Some(single.event_payload());
    message.to_value()
}

#[async_trait]
impl Destination for KafkaDestination {
    async fn store(
        &self,
        document: Value,
        _placement: &Placement<'_>,
    ) -> Result<(), DestinationError> {
        self.produce(None, document.to_string().as_bytes()).await
    }

    fn describe(&self) -> &str {
        &self.description
    }

    async fn send(
        &self,
        dead_letter: &DeadLetter,
        _group_hint: &str,
        _dedup_hint: &str,
    ) -> Result<(), DestinationError> {
        for record in &dead_letter.records {
            let request_id = uuid::Uuid::new_v4().to_string();
            let message = record_message(dead_letter, record, &request_id);
            let key = record["key"].as_str().and_then(|k| BASE64.decode(k).ok());
            self.produce(key.as_deref(), message.to_string().as_bytes())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_policies::ErrorInfo;
    use sluice_sources::kafka::KafkaCluster;

    fn dead_letter() -> DeadLetter {
        DeadLetter {
            mapping: "clicks".into(),
            target: "report".into(),
            region: "us-east-1".into(),
            condition: DeadLetterCondition::RetryAttemptsExhausted,
            attempts: 4,
            error: ErrorInfo::new("Boom", "failed"),
            function_error: Some("Unhandled".into()),
            source: EnvelopeSource::Kafka {
                cluster: KafkaCluster {
                    bootstrap_servers: "b:9092".into(),
                    msk_cluster_arn: None,
                },
                topic: "clicks".into(),
                partition: 2,
                offsets: vec![7, 8],
                first_timestamp: 1_700_000_000_000,
                last_timestamp: 1_700_000_001_000,
            },
            records: vec![
                json!({"topic": "clicks", "partition": 2, "offset": 7, "timestamp": 1_700_000_000_000_i64, "key": "azE=", "value": "YQ=="}),
                json!({"topic": "clicks", "partition": 2, "offset": 8, "timestamp": 1_700_000_001_000_i64, "value": "Yg=="}),
            ],
            first_attempt_at: Duration::ZERO,
            last_attempt_at: Duration::ZERO,
        }
    }

    #[test]
    fn a_topic_message_describes_one_record_as_lambda_does() {
        let dead_letter = dead_letter();
        let message = record_message(&dead_letter, &dead_letter.records[1], "req");
        assert_eq!(message["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(message["requestContext"]["approximateInvokeCount"], 4);
        assert_eq!(message["KafkaBatchInfo"]["batchSize"], 1);
        assert_eq!(message["KafkaBatchInfo"]["recordInfo"]["offset"], "8");
        assert_eq!(
            message["KafkaBatchInfo"]["recordInfo"]["timestamp"],
            "2023-11-14T22:13:21.000Z"
        );
        assert_eq!(message["payload"]["eventSource"], "SelfManagedKafka");
        let records = message["payload"]["records"]["clicks-2"]
            .as_array()
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["offset"], 8);
        assert_eq!(message["sluice"]["source"]["offsets"], json!([8]));
        assert_eq!(message["sluice"]["records"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_sqs_or_s3_dead_letter_carries_the_batch_info_of_the_whole_batch() {
        let envelope = dead_letter().to_json("req");
        assert_eq!(
            envelope["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
        let info = &envelope["KafkaBatchInfo"];
        assert_eq!(info["batchSize"], 2);
        assert_eq!(info["bootstrapServers"], "b:9092");
        assert_eq!(info["recordsInfo"]["clicks-2"]["firstRecordOffset"], "7");
        assert_eq!(info["recordsInfo"]["clicks-2"]["lastRecordOffset"], "8");
        assert_eq!(envelope["sluice"]["source"]["kind"], "kafka");
    }
}
