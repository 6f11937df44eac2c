//! On-failure and on-success destinations as written and as built. Each is checked on its own
//! here; what depends on the source (not the mapping's own queue or topic; Kafka topics only for
//! Kafka sources) is checked by the source kind ([`super::kind::SourceRules::check_destination`]).

use super::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;

/// A destination: exactly one kind.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawDestination {
    /// An SQS queue that receives the dead-letter envelope as the message body.
    Sqs(RawSqsDestination),
    /// An S3 bucket that receives one object per dead letter (the envelope plus the event as
    /// `payload`).
    S3(RawS3Destination),
    /// A Kafka topic on the source's cluster (Kafka mappings only): one message per record, with
    /// the record's key, as Lambda's kafka:// destination writes it.
    Kafka(RawKafkaDestination),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaDestination {
    pub topic: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawS3Destination {
    pub bucket: String,
    /// Key prefix, such as sluice/. Default none.
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSqsDestination {
    pub queue_url: String,
    /// A bucket for envelopes over SQS's 256 KB message limit: the envelope is stored there and
    /// the queue gets a pointer (the SQS Extended Client's format), which `sluice dlq` follows.
    /// Without it, such an envelope cannot be stored and its records wait (logged).
    #[serde(default)]
    pub spill_bucket: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DestinationConfig {
    Sqs {
        queue_url: String,
        /// Where envelopes over 256 KB are stored, with a pointer in the queue.
        spill_bucket: Option<String>,
    },
    S3 {
        bucket: String,
        prefix: String,
    },
    /// A topic on the Kafka source's cluster.
    Kafka {
        topic: String,
    },
}

impl DestinationConfig {
    /// Whether writing here calls AWS.
    pub fn calls_aws(&self) -> bool {
        !matches!(self, DestinationConfig::Kafka { .. })
    }

    /// An SQS destination that cannot hold an envelope over SQS's message limit.
    pub fn is_sqs_without_spill(&self) -> bool {
        matches!(
            self,
            DestinationConfig::Sqs {
                spill_bucket: None,
                ..
            }
        )
    }
}

/// The destination `raw` describes at `path` (such as `mappings[0].on_failure`).
pub fn build(v: &mut Validator, path: &str, raw: RawDestination) -> DestinationConfig {
    match raw {
        RawDestination::Sqs(sqs) => {
            if reqwest::Url::parse(&sqs.queue_url).is_err() {
                v.error(
                    format!("{path}.sqs.queue_url"),
                    format!("{:?} is not a queue URL", sqs.queue_url),
                );
            }
            if let Some(bucket) = &sqs.spill_bucket
                && (bucket.trim().is_empty() || bucket.contains('/'))
            {
                v.error(
                    format!("{path}.sqs.spill_bucket"),
                    format!("{bucket:?} is not a bucket name; give the name alone, without s3:// or a key"),
                );
            }
            DestinationConfig::Sqs {
                queue_url: sqs.queue_url,
                spill_bucket: sqs.spill_bucket,
            }
        }
        RawDestination::S3(s3) => {
            if s3.bucket.trim().is_empty() || s3.bucket.contains('/') {
                v.error(
                    format!("{path}.s3.bucket"),
                    format!(
                        "{:?} is not a bucket name; give the name alone, without s3:// or a key",
                        s3.bucket
                    ),
                );
            }
            DestinationConfig::S3 {
                bucket: s3.bucket,
                prefix: s3.prefix.unwrap_or_default(),
            }
        }
        RawDestination::Kafka(kafka) => {
            if kafka.topic.trim().is_empty() {
                v.error(format!("{path}.kafka.topic"), "must not be empty");
            }
            DestinationConfig::Kafka { topic: kafka.topic }
        }
    }
}

/// Refuses an SQS destination that is the queue the mapping reads (`why` says what would happen),
/// and a Kafka topic (a queue source has no Kafka cluster).
pub fn refuse_own_queue(
    v: &mut Validator,
    path: &str,
    destination: &DestinationConfig,
    source_queue: &str,
    why: &str,
) {
    refuse_kafka(v, path, destination);
    if let DestinationConfig::Sqs { queue_url, .. } = destination
        && queue_url == source_queue
    {
        v.error(format!("{path}.sqs.queue_url"), why);
    }
}

/// Refuses a Kafka topic destination where there is no Kafka source to write it on.
pub fn refuse_kafka(v: &mut Validator, path: &str, destination: &DestinationConfig) {
    if matches!(destination, DestinationConfig::Kafka { .. }) {
        v.error(
            format!("{path}.kafka"),
            "a Kafka topic destination is only for kafka sources (it is written on the source's cluster); use sqs or s3",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn a_spill_bucket_is_a_bucket_name() {
        let with = |bucket: &str| {
            format!(
                "{STREAM}    retry: {{ max_retry_attempts: 2 }}\n    on_failure: {{ sqs: {{ queue_url: \"http://q/dead\", spill_bucket: \"{bucket}\" }} }}\n"
            )
        };
        let error = parse_text(&with("s3://spill/x")).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].on_failure.sqs.spill_bucket");
        let config = parse_text(&with("spill")).unwrap();
        assert!(matches!(
            &config.mappings[0].on_failure,
            Some(DestinationConfig::Sqs { spill_bucket: Some(bucket), .. }) if bucket == "spill"
        ));
    }

    #[test]
    fn a_kafka_destination_needs_a_kafka_source() {
        let text = format!(
            "{STREAM}    retry: {{ max_retry_attempts: 2 }}\n    on_failure: {{ kafka: {{ topic: failed }} }}\n"
        );
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].on_failure.kafka");
    }
}
