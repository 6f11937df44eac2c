//! On-failure destinations: where records that exhaust their policy go, inside the dead-letter
//! envelope (architecture.md "Dead-letter envelope").
//!
//! A destination either stores the whole envelope or reports an error; the caller deletes or
//! checkpoints the records only after a successful send, so a failed send never loses a record.

pub mod envelope;
pub mod kafka;
pub mod s3;
pub mod sqs;
#[cfg(test)]
pub mod testing;

pub use envelope::{AsyncRecord, DeadLetter, EnvelopeSource};

use crate::config::{DestinationConfig, SourceConfig};
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("sending the dead letter to queue {queue_url} failed: {message}")]
    Sqs { queue_url: String, message: String },
    #[error("producing the dead letter to Kafka topic {topic} failed: {message}")]
    Kafka { topic: String, message: String },
    #[error("storing the dead letter as s3://{bucket}/{key} failed: {message}")]
    S3 {
        bucket: String,
        key: String,
        message: String,
    },
}

/// Where a document goes within a destination.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub mapping: &'a str,
    /// The shard or queue the records came from (part of S3 keys).
    pub key_part: &'a str,
    /// Keeps FIFO ordering when the destination needs a message group.
    pub group_hint: &'a str,
    /// Identifies the document for deduplication.
    pub dedup_hint: &'a str,
}

#[async_trait]
pub trait Destination: Send + Sync + 'static {
    /// Stores one document: a dead-letter envelope or an async destination record.
    async fn store(
        &self,
        document: serde_json::Value,
        placement: &Placement<'_>,
    ) -> Result<(), DestinationError>;

    /// Whether the destination keeps the invocation event beside a dead letter, as Lambda's S3
    /// destination does (`payload`).
    fn keeps_payload(&self) -> bool {
        false
    }

    /// A short description for logs, such as the queue URL.
    fn describe(&self) -> &str;

    /// Stores one dead letter in its envelope.
    async fn send(
        &self,
        dead_letter: &DeadLetter,
        group_hint: &str,
        dedup_hint: &str,
    ) -> Result<(), DestinationError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut envelope = dead_letter.envelope(&request_id);
        if self.keeps_payload() {
            envelope.payload = Some(dead_letter.event_payload());
        }
        let document = envelope.to_value();
        let placement = Placement {
            mapping: &dead_letter.mapping,
            key_part: dead_letter.source.key_part(),
            group_hint,
            dedup_hint,
        };
        self.store(document, &placement).await
    }
}

/// Builds a destination. A Kafka topic destination lives on the cluster of `source` (a Kafka
/// source; config validation refuses it elsewhere).
pub fn build(
    destination: &DestinationConfig,
    source: Option<&SourceConfig>,
    sqs: &aws_sdk_sqs::Client,
    s3: &aws_sdk_s3::Client,
) -> Result<Arc<dyn Destination>, DestinationError> {
    Ok(match (destination, source) {
        (
            DestinationConfig::Sqs {
                queue_url,
                spill_bucket,
            },
            _,
        ) => Arc::new(sqs::SqsDestination::new(
            sqs.clone(),
            queue_url.clone(),
            spill_bucket.as_ref().map(|bucket| sqs::Spill {
                client: s3.clone(),
                bucket: bucket.clone(),
            }),
        )),
        (DestinationConfig::S3 { bucket, prefix }, _) => Arc::new(s3::S3Destination::new(
            s3.clone(),
            bucket.clone(),
            prefix.clone(),
        )),
        (DestinationConfig::Kafka { topic }, Some(SourceConfig::Kafka(kafka))) => {
            Arc::new(kafka::KafkaDestination::new(
                &kafka.bootstrap_servers,
                &kafka.properties,
                &kafka.tokens(),
                topic,
            )?)
        }
        (DestinationConfig::Kafka { topic }, _) => {
            return Err(DestinationError::Kafka {
                topic: topic.clone(),
                message: "a Kafka topic destination needs a Kafka source (its cluster)".into(),
            });
        }
    })
}
