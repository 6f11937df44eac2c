//! A `dynamodb_stream` source as written in the config file, checked with Lambda's limits, and
//! built into the mapping's settings with its finished [`StreamPolicy`].

use crate::config::duration::HumanDuration;
use crate::config::kind::{BuildSource, MappingParts, SourceRules};
use crate::config::stream::{self, RawStartingPosition, RawStreamRetry, ShardKeys, ShardSettings};
use crate::config::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::{Pattern, StreamPolicy};

pub use crate::config::stream::{
    DEFAULT_DISCOVERY_INTERVAL, DEFAULT_PARALLELIZATION_FACTOR, MAX_PARALLELIZATION_FACTOR,
};

// `Some(constant)`: the schema shows the default, and an empty value still reads as it.
fn default_batch_size() -> Option<u32> {
    Some(stream::DEFAULT_BATCH_SIZE)
}
fn default_window() -> Option<HumanDuration> {
    Some(HumanDuration(stream::DEFAULT_SHARD_BATCHING_WINDOW))
}
fn default_factor() -> Option<u32> {
    Some(DEFAULT_PARALLELIZATION_FACTOR)
}
fn default_discovery_interval() -> Option<HumanDuration> {
    Some(HumanDuration(DEFAULT_DISCOVERY_INTERVAL))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDynamoDbStreamSource {
    /// The table whose latest stream is read. Give this or stream_arn.
    #[serde(default)]
    pub table: Option<String>,
    /// The stream's ARN. Give this or table.
    #[serde(default)]
    pub stream_arn: Option<String>,
    /// Where a shard without a checkpoint starts: trim_horizon, latest or at_timestamp.
    pub starting_position: RawStartingPosition,
    /// With at_timestamp: RFC 3339 time (2024-05-01T12:00:00Z) or Unix seconds.
    #[serde(default)]
    pub starting_timestamp: Option<String>,
    /// Records per invocation: 1..=10000.
    #[serde(default = "default_batch_size")]
    pub batch_size: Option<u32>,
    /// How long to gather records before invoking: 0s..=300s.
    #[serde(default = "default_window")]
    pub max_batching_window: Option<HumanDuration>,
    /// Batches in flight per shard, records spread by key: 1..=10.
    #[serde(default = "default_factor")]
    pub parallelization_factor: Option<u32>,
    /// How often shards are listed again to find new ones: 1s..=10m.
    #[serde(default = "default_discovery_interval")]
    pub discovery_interval: Option<HumanDuration>,
    /// Aggregate each shard's records over fixed windows of this length (1s..=15m, aligned to
    /// multiples of it since the Unix epoch, by each record's arrival time), as Lambda's tumbling
    /// windows do: every invocation carries the `state` the previous one returned, and when the
    /// window closes a final invocation (`isFinalInvokeForWindow`) gets it. Needs
    /// parallelization_factor 1.
    #[serde(default)]
    pub tumbling_window: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamSourceConfig {
    pub table: Option<String>,
    pub stream_arn: Option<String>,
    /// How the shards are read and retried.
    pub settings: ShardSettings,
}

impl BuildSource for RawDynamoDbStreamSource {
    type Config = StreamSourceConfig;
    type Retry = RawStreamRetry;

    fn build(self, v: &mut Validator, path: &str, mapping: MappingParts) -> StreamSourceConfig {
        match (&self.table, &self.stream_arn) {
            (None, None) => v.error(path, "give the table (or its stream_arn) to read"),
            (Some(_), Some(_)) => v.error(
                format!("{path}.stream_arn"),
                "give either table or stream_arn, not both",
            ),
            (_, Some(arn)) if !arn.starts_with("arn:") || !arn.contains("/stream/") => v.error(
                format!("{path}.stream_arn"),
                format!("{arn:?} is not a stream ARN; it looks like arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-05-01T00:00:00.000"),
            ),
            _ => {}
        }
        let settings = stream::shard_settings(
            v,
            path,
            "dynamodb_stream",
            ShardKeys {
                starting_position: &self.starting_position,
                starting_timestamp: self.starting_timestamp.as_deref(),
                batch_size: self.batch_size,
                max_batching_window: self.max_batching_window,
                parallelization_factor: self.parallelization_factor,
                discovery_interval: self.discovery_interval,
                tumbling_window: self.tumbling_window,
            },
            mapping,
        );
        StreamSourceConfig {
            table: self.table,
            stream_arn: self.stream_arn,
            settings,
        }
    }
}

impl SourceRules for StreamSourceConfig {
    fn largest_record(&self) -> &'static str {
        "400 KB"
    }

    fn no_backlog(&self) -> Option<&'static str> {
        Some(
            "DynamoDB Streams tells no backlog in records, and tasks beyond its shards would idle; scale on sluice_stream_iterator_age_seconds instead (README \"Autoscaling on ECS\")",
        )
    }

    fn keeps_checkpoints(&self) -> bool {
        true
    }

    fn replay_policy(&self, _has_on_failure: bool) -> StreamPolicy {
        self.settings.policy.clone()
    }

    fn replay_batch_size(&self) -> usize {
        self.settings.batch_size
    }

    fn check_filter(&self, v: &mut Validator, path: &str, pattern: &Pattern) {
        if pattern.field_is_json("dynamodb") == Some(false) {
            v.error(
                format!("{path}.dynamodb"),
                "DynamoDB records are JSON: filter dynamodb with an object pattern, such as {NewImage: {status: {S: [\"open\"]}}}",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stream::StartingPosition;
    use crate::config::testing::*;
    use std::time::Duration;

    fn stream_source(config: &crate::config::Config) -> &StreamSourceConfig {
        source_of!(config, DynamodbStream)
    }

    #[test]
    fn a_stream_mapping_builds_with_lambdas_defaults() {
        let config = parse_text(STREAM).unwrap();
        let stream = &stream_source(&config).settings;
        assert_eq!(stream.batch_size, 100);
        assert_eq!(stream.parallelization_factor, 1);
        assert_eq!(stream.starting_position, StartingPosition::TrimHorizon);
        let policy = &stream.policy;
        assert_eq!(
            policy.max_retry_attempts, None,
            "-1: until the record is too old"
        );
        assert_eq!(policy.max_record_age, None);
        assert!(!policy.bisect_on_error);
        assert_eq!(
            policy.backoff,
            stream::default_backoff(),
            "streams back off by default"
        );
        assert_eq!(
            policy.non_retryable, None,
            "no destination, no error classes"
        );
        assert_eq!(
            config.checkpoints,
            crate::config::CheckpointsConfig::Embedded
        );
    }

    #[test]
    fn stream_source_settings_are_checked_at_their_keys() {
        let text = STREAM.replace(
            "starting_position: trim_horizon",
            "starting_position: at_timestamp\n        stream_arn: nope\n        parallelization_factor: 11",
        );
        let errors = parse_text(&text).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"mappings[0].source.dynamodb_stream.starting_position"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"mappings[0].source.dynamodb_stream.stream_arn"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"mappings[0].source.dynamodb_stream.parallelization_factor"),
            "{paths:?}"
        );
    }

    #[test]
    fn at_timestamp_reads_rfc3339_or_unix_seconds() {
        for (written, seconds) in [
            ("2024-05-01T12:00:00Z", 1_714_564_800),
            ("1714564800", 1_714_564_800),
        ] {
            let text = STREAM.replace(
                "starting_position: trim_horizon",
                &format!(
                    "starting_position: at_timestamp\n        starting_timestamp: \"{written}\""
                ),
            );
            let config = parse_text(&text).unwrap();
            assert_eq!(
                stream_source(&config).settings.starting_position,
                StartingPosition::AtTimestamp(Duration::from_secs(seconds))
            );
        }
    }

    #[test]
    fn a_dynamodb_filter_must_be_an_object_pattern() {
        let text = format!("{STREAM}    filters:\n      - dynamodb: [x]\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("filters[0].dynamodb: DynamoDB records are JSON"),
            "{rendered}"
        );
    }
}
