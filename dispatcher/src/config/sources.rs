//! The registry of source kinds: one line per kind names its key in the config file, its raw
//! block and its built settings (both beside the kind's runtime, in `runtime/<kind>/config.rs`).
//! From these lines come the `source` block's enum (and so its schema), the built
//! [`SourceConfig`], its kind name, and the schema of the `retry` block. See
//! `docs/adding-a-source-kind.md`.

use super::kind::{BuildSource, MappingParts, SourceRules};
use super::validate::Validator;
use crate::runtime::{dynamodb_stream, kafka, kinesis, s3, schedule, sqs};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

macro_rules! source_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal: $raw:ty => $built:ty, )*) => {
        /// A source: exactly one kind.
        #[derive(Debug, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub enum RawSource {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($raw), )*
        }

        /// A mapping's source, validated, with its policy.
        #[derive(Debug, Clone, PartialEq)]
        pub enum SourceConfig {
            $( $variant($built), )*
        }

        impl RawSource {
            /// Builds the source of the mapping that `mapping` describes.
            pub fn build(self, v: &mut Validator, mapping: MappingParts) -> SourceConfig {
                match self {
                    $( RawSource::$variant(raw) => {
                        let path = format!("{}.source.{}", mapping.path, $name);
                        SourceConfig::$variant(raw.build(v, &path, mapping))
                    } )*
                }
            }
        }

        impl SourceConfig {
            /// The kind's key in the config file, also its name in dead-letter envelopes.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( SourceConfig::$variant(_) => $name, )*
                }
            }

            /// The rules the mapping around this source follows.
            pub fn rules(&self) -> &dyn SourceRules {
                match self {
                    $( SourceConfig::$variant(source) => source, )*
                }
            }
        }

        /// The `retry` block's schema: one of the kinds' retry blocks.
        pub fn retry_schema(generator: &mut SchemaGenerator) -> Schema {
            // `retry: ~` reads as no block.
            let mut kinds: Vec<Schema> = vec![json_schema!({ "type": "null" })];
            $(
                let schema = generator.subschema_for::<<$raw as BuildSource>::Retry>();
                // Kinds that share a retry block (the stream kinds) list it once.
                if !kinds.contains(&schema) {
                    kinds.push(schema);
                }
            )*
            json_schema!({ "anyOf": kinds })
        }
    };
}

source_kinds! {
    /// An SQS queue (standard or FIFO).
    Sqs = "sqs": sqs::config::RawSqsSource => sqs::config::SqsSourceConfig,
    /// The stream of a DynamoDB table.
    DynamodbStream = "dynamodb_stream": dynamodb_stream::config::RawDynamoDbStreamSource => dynamodb_stream::config::StreamSourceConfig,
    /// A Kinesis data stream, read shard by shard with the stream policy.
    Kinesis = "kinesis": kinesis::config::RawKinesisSource => kinesis::config::KinesisSourceConfig,
    /// S3 event notifications, read from the SQS queue a bucket notifies (raw, through SNS, or
    /// EventBridge); each S3 record is one asynchronous invocation.
    S3 = "s3": s3::config::RawS3Source => s3::config::S3SourceConfig,
    /// Kafka topics, read as a consumer group with the stream policy per partition.
    Kafka = "kafka": kafka::config::RawKafkaSource => kafka::config::KafkaSourceConfig,
    /// A schedule (EventBridge Scheduler's rate, cron and at expressions).
    Schedule = "schedule": schedule::config::RawScheduleSource => schedule::config::ScheduleSourceConfig,
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    // The kind's name is its key in the file, in errors and in dead-letter envelopes alike.
    #[test]
    fn each_kind_is_named_by_its_key_in_the_file() {
        for (document, key) in [
            (BASE, "sqs"),
            (STREAM, "dynamodb_stream"),
            (S3, "s3"),
            (KAFKA, "kafka"),
        ] {
            let config = parse_text(document).unwrap();
            assert_eq!(config.mappings[0].source.kind(), key);
            let broken = format!("{document}    retry: {{ nope: 1 }}\n");
            let errors = parse_text(&broken).unwrap_err();
            assert!(
                errors.to_string().contains(&format!(
                    "mappings[0].retry.nope: is not a setting of {key} sources"
                )),
                "{errors}"
            );
        }
    }

    #[test]
    fn the_schema_shows_each_kinds_defaults_from_its_constants() {
        let schema = crate::config::json_schema();
        let property = |kind: &str, key: &str| schema["$defs"][kind]["properties"][key].clone();
        assert_eq!(
            property("RawSqsSource", "batch_size")["default"],
            crate::runtime::sqs::config::DEFAULT_BATCH_SIZE
        );
        assert_eq!(property("RawSqsSource", "wait_time")["default"], "20s");
        assert_eq!(
            property("RawKafkaSource", "max_batching_window")["default"],
            "500ms"
        );
        assert_eq!(
            property("RawDynamoDbStreamSource", "batch_size")["default"],
            crate::config::stream::DEFAULT_BATCH_SIZE
        );
        let retry = &schema["$defs"]["RawMapping"]["properties"]["retry"]["anyOf"];
        assert_eq!(
            retry.as_array().map(Vec::len),
            Some(4),
            "null and three blocks: {retry}"
        );
    }
}
