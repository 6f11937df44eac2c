//! A `kinesis` source as written in the config file, checked with Lambda's limits for Kinesis
//! (semantics.md §1), and built into the mapping's settings with its finished [`StreamPolicy`].

use crate::config::duration::HumanDuration;
use crate::config::kind::{BuildSource, MappingParts, SourceRules};
use crate::config::stream::{self, RawStartingPosition, RawStreamRetry, ShardKeys, ShardSettings};
use crate::config::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::{Pattern, StreamPolicy};

// `Some(constant)`: the schema shows the default, and an empty value still reads as it.
fn default_batch_size() -> Option<u32> {
    Some(stream::DEFAULT_BATCH_SIZE)
}
fn default_window() -> Option<HumanDuration> {
    Some(HumanDuration(stream::DEFAULT_SHARD_BATCHING_WINDOW))
}
fn default_factor() -> Option<u32> {
    Some(stream::DEFAULT_PARALLELIZATION_FACTOR)
}
fn default_deaggregate() -> Option<bool> {
    Some(false)
}
fn default_discovery_interval() -> Option<HumanDuration> {
    Some(HumanDuration(stream::DEFAULT_DISCOVERY_INTERVAL))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKinesisSource {
    /// The stream's name, in the configured account and region. Give this or stream_arn.
    #[serde(default)]
    pub stream_name: Option<String>,
    /// The stream's ARN (arn:aws:kinesis:<region>:<account>:stream/<name>). Give this or
    /// stream_name.
    #[serde(default)]
    pub stream_arn: Option<String>,
    /// Where a shard without a checkpoint starts: trim_horizon, latest or at_timestamp (Kinesis'
    /// own AT_TIMESTAMP iterator).
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
    /// Batches in flight per shard, records spread by partition key: 1..=10.
    #[serde(default = "default_factor")]
    pub parallelization_factor: Option<u32>,
    /// How often shards are listed again to find the children of a split or merge: 1s..=10m.
    #[serde(default = "default_discovery_interval")]
    pub discovery_interval: Option<HumanDuration>,
    /// Aggregate each shard's records over fixed windows of this length (1s..=15m, aligned to
    /// multiples of it since the Unix epoch, by each record's arrival time), as Lambda's tumbling
    /// windows do: every invocation carries the `state` the previous one returned, and when the
    /// window closes a final invocation (`isFinalInvokeForWindow`) gets it. Needs
    /// parallelization_factor 1.
    #[serde(default)]
    pub tumbling_window: Option<HumanDuration>,
    /// The `invokeIdentityArn` of every record (Lambda puts the function's execution role there);
    /// left out of the records when not given.
    #[serde(default)]
    pub invoke_identity_arn: Option<String>,
    /// Unpack records aggregated by the Kinesis Producer Library into their user records, as
    /// the Kinesis Client Library does (Lambda does not): each is delivered with its own
    /// partition key and `subSequenceNumber`, and a partial batch response names one as
    /// `<sequenceNumber>:<subSequenceNumber>`. Records that are not aggregates pass as they are.
    #[serde(default = "default_deaggregate")]
    pub deaggregate: Option<bool>,
    /// Read with enhanced fan-out through this stream consumer (registered when it does not
    /// exist): SubscribeToShard pushes each shard's records at 2 MB/s for this consumer alone,
    /// instead of GetRecords sharing 5 reads and 2 MB per second per shard with every other
    /// reader of the stream.
    #[serde(default)]
    pub consumer: Option<RawConsumer>,
}

/// `consumer`: the stream consumer enhanced fan-out reads through.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    /// The consumer's name on the stream: 1..=128 of `[a-zA-Z0-9_.-]`. Every instance of the
    /// mapping uses the same one.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KinesisSourceConfig {
    pub stream_name: Option<String>,
    pub stream_arn: Option<String>,
    pub invoke_identity_arn: Option<String>,
    /// Unpack KPL aggregates into their user records.
    pub deaggregate: bool,
    /// Enhanced fan-out through the stream consumer of this name.
    pub consumer: Option<String>,
    /// How the shards are read and retried.
    pub settings: ShardSettings,
}

impl KinesisSourceConfig {
    /// The stream as a user names it, for messages.
    pub fn stream(&self) -> &str {
        self.stream_arn
            .as_deref()
            .or(self.stream_name.as_deref())
            .unwrap_or_default()
    }
}

/// Kinesis stream names: 1..=128 of `[a-zA-Z0-9_.-]`.
fn valid_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl BuildSource for RawKinesisSource {
    type Config = KinesisSourceConfig;
    type Retry = RawStreamRetry;

    fn build(self, v: &mut Validator, path: &str, mapping: MappingParts) -> KinesisSourceConfig {
        match (&self.stream_name, &self.stream_arn) {
            (None, None) => v.error(path, "give the stream_name (or stream_arn) to read"),
            (Some(_), Some(_)) => v.error(
                format!("{path}.stream_arn"),
                "give either stream_name or stream_arn, not both",
            ),
            (Some(name), None) if !valid_stream_name(name) => v.error(
                format!("{path}.stream_name"),
                format!("{name:?} is not a Kinesis stream name: 1 to 128 letters, digits, '_', '.' or '-'"),
            ),
            (None, Some(arn))
                if !arn.starts_with("arn:")
                    || arn.split(':').nth(2) != Some("kinesis")
                    || !arn.contains(":stream/")
                    || arn.contains("/consumer/") =>
            {
                v.error(
                    format!("{path}.stream_arn"),
                    format!("{arn:?} is not a Kinesis stream ARN; it looks like arn:aws:kinesis:us-east-1:123456789012:stream/orders (a consumer ARN is not a stream ARN)"),
                )
            }
            _ => {}
        }
        if let Some(consumer) = &self.consumer
            && !valid_stream_name(&consumer.name)
        {
            v.error(
                format!("{path}.consumer.name"),
                format!(
                    "{:?} is not a stream consumer name: 1 to 128 letters, digits, '_', '.' or '-'",
                    consumer.name
                ),
            );
        }
        if let Some(arn) = &self.invoke_identity_arn
            && !arn.starts_with("arn:")
        {
            v.error(
                format!("{path}.invoke_identity_arn"),
                format!("{arn:?} is not an ARN; Lambda puts the function's role here, such as arn:aws:iam::123456789012:role/orders-consumer"),
            );
        }
        let settings = stream::shard_settings(
            v,
            path,
            "kinesis",
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
        KinesisSourceConfig {
            stream_name: self.stream_name,
            stream_arn: self.stream_arn,
            invoke_identity_arn: self.invoke_identity_arn,
            deaggregate: self.deaggregate.unwrap_or(false),
            consumer: self.consumer.map(|consumer| consumer.name),
            settings,
        }
    }
}

impl SourceRules for KinesisSourceConfig {
    fn largest_record(&self) -> &'static str {
        "1 MB"
    }

    fn no_backlog(&self) -> Option<&'static str> {
        Some(
            "Kinesis tells no backlog in records, and tasks beyond its shards would idle; scale on sluice_stream_millis_behind_latest or sluice_stream_iterator_age_seconds instead (README \"Autoscaling on ECS\")",
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
        // Lambda refuses a plain-text data pattern at create time (semantics.md §7).
        if pattern.field_is_json("data") == Some(false) {
            v.error(
                format!("{path}.data"),
                "Kinesis data is filtered as JSON: filter data with an object pattern, such as {data: {type: [\"order\"]}}; records whose data is not JSON never match it",
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

    fn kinesis_source(config: &crate::config::Config) -> &KinesisSourceConfig {
        source_of!(config, Kinesis)
    }

    #[test]
    fn a_kinesis_mapping_builds_with_lambdas_defaults() {
        let config = parse_text(KINESIS).unwrap();
        let source = kinesis_source(&config);
        assert_eq!(source.stream_name.as_deref(), Some("orders"));
        assert_eq!(source.invoke_identity_arn, None);
        assert!(!source.deaggregate, "Lambda does not deaggregate");
        assert_eq!(source.consumer, None, "standard GetRecords reads");
        let settings = &source.settings;
        assert_eq!(settings.batch_size, 100);
        assert_eq!(settings.max_batching_window, Duration::ZERO);
        assert_eq!(settings.parallelization_factor, 1);
        assert_eq!(settings.discovery_interval, Duration::from_secs(10));
        assert_eq!(settings.starting_position, StartingPosition::TrimHorizon);
        assert_eq!(settings.policy.max_retry_attempts, None);
        assert_eq!(settings.policy.max_record_age, None);
        assert!(!settings.policy.bisect_on_error);
        assert_eq!(
            config.checkpoints,
            crate::config::CheckpointsConfig::Embedded
        );
    }

    #[test]
    fn at_timestamp_is_kept_for_kinesis_own_iterator() {
        let text = KINESIS.replace(
            "starting_position: trim_horizon",
            "starting_position: at_timestamp\n        starting_timestamp: \"2024-05-01T12:00:00Z\"",
        );
        let config = parse_text(&text).unwrap();
        assert_eq!(
            kinesis_source(&config).settings.starting_position,
            StartingPosition::AtTimestamp(Duration::from_secs(1_714_564_800))
        );
    }

    #[test]
    fn kinesis_settings_are_checked_at_their_keys() {
        for (replacement, key) in [
            ("stream_arn: arn:aws:sqs:us-east-1:1:x", "stream_arn"),
            ("stream_name: \"has space\"", "stream_name"),
            ("batch_size: 10001", "batch_size"),
            ("parallelization_factor: 11", "parallelization_factor"),
            ("max_batching_window: 301s", "max_batching_window"),
            ("discovery_interval: 11m", "discovery_interval"),
            ("invoke_identity_arn: role", "invoke_identity_arn"),
            ("tumbling_window: 901s", "tumbling_window"),
            ("consumer: { name: \"a b\" }", "consumer.name"),
            ("tumbling_window: 1500ms", "tumbling_window"),
        ] {
            let text = if key.starts_with("stream_") {
                KINESIS.replace("stream_name: orders", replacement)
            } else {
                KINESIS.replace(
                    "stream_name: orders",
                    &format!("stream_name: orders\n        {replacement}"),
                )
            };
            let errors = parse_text(&text).unwrap_err();
            let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
            let wanted = format!("mappings[0].source.kinesis.{key}");
            assert!(paths.contains(&wanted.as_str()), "{key}: {paths:?}");
        }
    }

    #[test]
    fn a_stream_arn_must_name_a_kinesis_stream() {
        for arn in [
            "arn:aws:dynamodb:us-east-1:1:table/t/stream/2024",
            "arn:aws:kinesis:us-east-1:1:stream/s/consumer/c:1",
            "orders",
        ] {
            let text = KINESIS.replace("stream_name: orders", &format!("stream_arn: \"{arn}\""));
            let rendered = parse_text(&text).unwrap_err().to_string();
            assert!(
                rendered.contains("is not a Kinesis stream ARN"),
                "{rendered}"
            );
        }
        let text = KINESIS.replace(
            "stream_name: orders",
            "stream_arn: arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
        );
        assert_eq!(
            kinesis_source(&parse_text(&text).unwrap()).stream(),
            "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
        );
    }

    #[test]
    fn a_kinesis_data_filter_must_be_an_object_pattern() {
        let text = format!("{KINESIS}    filters:\n      - data: [x]\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("filters[0].data: Kinesis data is filtered as JSON"),
            "{rendered}"
        );
        let text = format!(
            "{KINESIS}    filters:\n      - data: {{ type: [order] }}\n        partitionKey: [p1]\n"
        );
        parse_text(&text).unwrap();
    }

    #[test]
    fn limits_that_run_out_need_an_on_failure_destination() {
        let text = format!("{KINESIS}    retry: {{ max_retry_attempts: 2 }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("retry.max_retry_attempts: needs an on_failure destination"),
            "{rendered}"
        );
    }

    #[test]
    fn a_tumbling_window_is_off_by_default_or_at_0s_and_needs_one_lane_per_shard() {
        assert_eq!(
            kinesis_source(&parse_text(KINESIS).unwrap())
                .settings
                .tumbling_window,
            None
        );
        let with = |keys: &str| {
            KINESIS.replace(
                "stream_name: orders",
                &format!("stream_name: orders\n        {keys}"),
            )
        };
        let config = parse_text(&with("tumbling_window: 0s")).unwrap();
        assert_eq!(kinesis_source(&config).settings.tumbling_window, None);
        let config = parse_text(&with("tumbling_window: 15m")).unwrap();
        assert_eq!(
            kinesis_source(&config).settings.tumbling_window,
            Some(Duration::from_secs(900))
        );
        let rendered = parse_text(&with(
            "tumbling_window: 30s\n        parallelization_factor: 2",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            rendered.contains("tumbling_window: a tumbling window's state is one per shard, so it needs parallelization_factor 1"),
            "{rendered}"
        );
    }

    #[test]
    fn two_mappings_cannot_share_a_stream_consumer() {
        let consumer = |name: &str| {
            KINESIS.replace(
                "stream_name: orders",
                &format!("stream_name: orders\n        consumer: {{ name: {name} }}"),
            )
        };
        let config = parse_text(&consumer("sluice-orders")).unwrap();
        assert_eq!(
            kinesis_source(&config).consumer.as_deref(),
            Some("sluice-orders")
        );
        let first = consumer("shared");
        let mapping_start = first.find("  - name:").unwrap();
        let second =
            first[mapping_start..].replacen("- name: orders-stream", "- name: orders-2", 1);
        let text = format!("{first}{second}");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("reads stream orders through consumer \"shared\" already"),
            "{rendered}"
        );
    }
}
