//! What every stream source kind (DynamoDB Streams, Kafka) reads the same way: where a shard or
//! partition without a checkpoint starts, batch size and window, and the `retry` block that
//! becomes the kind's [`StreamPolicy`] — built here once, with Lambda's ranges and defaults.

use super::backoff::{self, RawBackoff};
use super::duration::{DurationLimit, HumanDuration};
use super::kind::MappingParts;
use super::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::{Backoff, ErrorClasses, IdentifierKind, StreamPolicy};
use std::time::Duration;

/// Records per invocation when `batch_size` is not given (Lambda's stream default).
pub const DEFAULT_BATCH_SIZE: u32 = 100;
/// The largest stream batch, as in Lambda.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// The longest batching window, as in Lambda.
pub const MAX_BATCHING_WINDOW: Duration = Duration::from_secs(300);
/// Retries after the first attempt, at most (Lambda's range; -1 is unlimited).
pub const MAX_RETRY_ATTEMPTS: i64 = 10_000;
/// The range of `max_record_age` when it is not -1, as in Lambda.
pub const RECORD_AGE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(604_800);
/// The delay before the first retry of a failed batch when `retry.backoff` is not given.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest delay between retries of a failed batch when `retry.backoff` is not given.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The backoff between retries of a failed stream batch when `retry.backoff` is not given:
/// 1 s doubling to 60 s, with full jitter.
pub fn default_backoff() -> Backoff {
    Backoff::new(DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, 2.0, true)
        .expect("the default stream backoff is valid")
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawStartingPosition {
    TrimHorizon,
    Latest,
    AtTimestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
    /// Records created at or after this time (since the Unix epoch).
    AtTimestamp(Duration),
}

/// A stream mapping's `retry` block.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStreamRetry {
    /// Retries after the first attempt: -1 (default, until the record is too old) or 0..=10000.
    #[serde(default)]
    pub max_retry_attempts: Option<i64>,
    /// Records older than this go to on_failure without an invocation: -1 (default) or 60s..=7d.
    #[serde(default)]
    pub max_record_age: Option<DurationLimit>,
    /// Halve a failing batch and retry the halves, down to single records. Default false.
    #[serde(default)]
    pub bisect_on_error: Option<bool>,
    /// The delay between retries of a failed batch (default 1s doubling to 60s).
    #[serde(default)]
    pub backoff: Option<RawBackoff>,
    /// errorType values that retrying cannot fix: such failures go to on_failure at once with
    /// condition NonRetryableError.
    #[serde(default)]
    pub non_retryable_errors: Option<Vec<String>>,
}

/// What a stream kind says when its `retry` block has a key of another kind.
pub const RETRY_ADVICE: &str = "a stream source retries with max_retry_attempts, max_record_age, bisect_on_error, backoff and non_retryable_errors";

/// What the stream policy needs from the mapping around the source.
pub struct PolicyInputs<'a> {
    /// The mapping's key path, such as `mappings[0]`.
    pub mapping_path: &'a str,
    pub kind: &'a str,
    pub retry: Option<serde_json::Value>,
    pub report_batch_item_failures: bool,
    pub has_on_failure: bool,
    pub identifier_kind: IdentifierKind,
}

/// The stream policy of a mapping's `retry` block. A limit that can run out needs an on-failure
/// destination (Lambda would drop the records); so do error classes.
pub fn policy(v: &mut Validator, inputs: PolicyInputs) -> StreamPolicy {
    let path = format!("{}.retry", inputs.mapping_path);
    let raw: RawStreamRetry = v.block(&path, inputs.retry, inputs.kind, RETRY_ADVICE);
    let max_retry_attempts = match raw.max_retry_attempts {
        None | Some(-1) => None,
        Some(n @ 0..=MAX_RETRY_ATTEMPTS) => Some(n as u32),
        Some(n) => {
            v.error(
                format!("{path}.max_retry_attempts"),
                format!("must be -1 (retry until the record is too old) or 0..={MAX_RETRY_ATTEMPTS} (got {n})"),
            );
            None
        }
    };
    let max_record_age = raw.max_record_age.and_then(|limit| limit.0);
    if let Some(age) = max_record_age
        && !RECORD_AGE_RANGE.contains(&age)
    {
        v.error(
            format!("{path}.max_record_age"),
            format!("must be -1 or 60s..=7d, as in Lambda (got {age:?})"),
        );
    }
    if !inputs.has_on_failure {
        let limited = [
            ("max_retry_attempts", max_retry_attempts.is_some()),
            ("max_record_age", max_record_age.is_some()),
        ];
        for (key, set) in limited {
            if set {
                v.error(
                    format!("{path}.{key}"),
                    "needs an on_failure destination: records that run out of retries would otherwise be dropped (Lambda drops them); add on_failure (sqs, s3, or kafka for a kafka source), or remove the limit to retry until success",
                );
            }
        }
    }
    let non_retryable_errors = raw.non_retryable_errors.unwrap_or_default();
    if !non_retryable_errors.is_empty() && !inputs.has_on_failure {
        v.error(
            format!("{path}.non_retryable_errors"),
            "needs an on_failure destination to send those failures to",
        );
    }
    let backoff = raw
        .backoff
        .and_then(|raw| backoff::build(v, &format!("{path}.backoff"), raw, DEFAULT_BACKOFF_MAX))
        .unwrap_or_else(default_backoff);
    StreamPolicy {
        report_batch_item_failures: inputs.report_batch_item_failures,
        bisect_on_error: raw.bisect_on_error.unwrap_or(false),
        max_retry_attempts,
        max_record_age,
        backoff,
        identifier_kind: inputs.identifier_kind,
        // Error classes apply only with a destination to send them to.
        non_retryable: inputs
            .has_on_failure
            .then(|| ErrorClasses::new(non_retryable_errors)),
    }
}

/// `starting_position` (with `starting_timestamp` for at_timestamp) at `path`.
pub fn starting_position(
    v: &mut Validator,
    path: &str,
    position: &RawStartingPosition,
    timestamp: Option<&str>,
) -> StartingPosition {
    let starting_position = match position {
        RawStartingPosition::TrimHorizon => StartingPosition::TrimHorizon,
        RawStartingPosition::Latest => StartingPosition::Latest,
        RawStartingPosition::AtTimestamp => match timestamp {
            None => {
                v.error(
                    format!("{path}.starting_position"),
                    "at_timestamp needs starting_timestamp (RFC 3339 or Unix seconds)",
                );
                StartingPosition::TrimHorizon
            }
            Some(text) => match parse_timestamp(text) {
                Ok(at) => StartingPosition::AtTimestamp(at),
                Err(message) => {
                    v.error(format!("{path}.starting_timestamp"), message);
                    StartingPosition::TrimHorizon
                }
            },
        },
    };
    if timestamp.is_some() && !matches!(position, RawStartingPosition::AtTimestamp) {
        v.error(
            format!("{path}.starting_timestamp"),
            "is only read with starting_position: at_timestamp",
        );
    }
    starting_position
}

/// A stream source's batch size (1..=10000, default 100) and window (0s..=300s).
pub fn batching(
    v: &mut Validator,
    path: &str,
    batch_size: Option<u32>,
    window: Option<HumanDuration>,
    default_window: Duration,
) -> (usize, Duration) {
    let batch_size = batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        v.error(
            format!("{path}.batch_size"),
            format!("must be 1..={MAX_BATCH_SIZE} (got {batch_size})"),
        );
    }
    let window = window.map_or(default_window, |d| d.0);
    if window > MAX_BATCHING_WINDOW {
        v.error(
            format!("{path}.max_batching_window"),
            format!("must be 0s..=300s (got {window:?})"),
        );
    }
    (batch_size.max(1) as usize, window)
}

/// How long a sharded stream's batch gathers when `max_batching_window` is not given (Lambda's 0
/// for DynamoDB Streams and Kinesis).
pub const DEFAULT_SHARD_BATCHING_WINDOW: Duration = Duration::ZERO;
/// Batches in flight per shard when `parallelization_factor` is not given.
pub const DEFAULT_PARALLELIZATION_FACTOR: u32 = 1;
/// Lambda's largest parallelization factor.
pub const MAX_PARALLELIZATION_FACTOR: u32 = 10;
/// How often shards are listed again when `discovery_interval` is not given.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
pub const DISCOVERY_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);

/// A sharded stream's `parallelization_factor` (1..=10, default 1) and `discovery_interval`
/// (1s..=10m, default 10s).
pub fn shard_reading(
    v: &mut Validator,
    path: &str,
    factor: Option<u32>,
    discovery_interval: Option<HumanDuration>,
) -> (usize, Duration) {
    let factor = factor.unwrap_or(DEFAULT_PARALLELIZATION_FACTOR);
    if !(1..=MAX_PARALLELIZATION_FACTOR).contains(&factor) {
        v.error(
            format!("{path}.parallelization_factor"),
            format!("must be 1..={MAX_PARALLELIZATION_FACTOR} (got {factor})"),
        );
    }
    let discovery_interval = discovery_interval.map_or(DEFAULT_DISCOVERY_INTERVAL, |d| d.0);
    if !DISCOVERY_INTERVAL_RANGE.contains(&discovery_interval) {
        v.error(format!("{path}.discovery_interval"), "must be 1s..=10m");
    }
    (
        factor.clamp(1, MAX_PARALLELIZATION_FACTOR) as usize,
        discovery_interval,
    )
}

/// How a sharded stream (DynamoDB Streams, Kinesis) is read and retried: the keys both kinds
/// share, checked alike.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSettings {
    pub starting_position: StartingPosition,
    pub batch_size: usize,
    pub max_batching_window: Duration,
    pub parallelization_factor: usize,
    pub discovery_interval: Duration,
    /// Lambda's tumbling windows: records are aggregated per shard over fixed windows of this
    /// length, the handler's returned `state` carried from one invocation to the next.
    pub tumbling_window: Option<Duration>,
    pub policy: StreamPolicy,
}

/// The shared keys of a sharded stream's `source` block, as written.
pub struct ShardKeys<'a> {
    pub starting_position: &'a RawStartingPosition,
    pub starting_timestamp: Option<&'a str>,
    pub batch_size: Option<u32>,
    pub max_batching_window: Option<HumanDuration>,
    pub parallelization_factor: Option<u32>,
    pub discovery_interval: Option<HumanDuration>,
    pub tumbling_window: Option<HumanDuration>,
}

/// Checks a sharded stream's shared keys at `path` (a `kind` source) and builds its settings
/// with the mapping's stream policy; the batching window defaults to Lambda's 0 for streams.
pub fn shard_settings(
    v: &mut Validator,
    path: &str,
    kind: &str,
    keys: ShardKeys,
    mapping: MappingParts,
) -> ShardSettings {
    let starting_position =
        starting_position(v, path, keys.starting_position, keys.starting_timestamp);
    let (batch_size, max_batching_window) = batching(
        v,
        path,
        keys.batch_size,
        keys.max_batching_window,
        DEFAULT_SHARD_BATCHING_WINDOW,
    );
    let (parallelization_factor, discovery_interval) = shard_reading(
        v,
        path,
        keys.parallelization_factor,
        keys.discovery_interval,
    );
    let tumbling_window = tumbling_window(v, path, keys.tumbling_window, parallelization_factor);
    let policy = policy(
        v,
        PolicyInputs {
            mapping_path: mapping.path,
            kind,
            retry: mapping.retry,
            report_batch_item_failures: mapping.report_batch_item_failures,
            has_on_failure: mapping.on_failure.is_some(),
            identifier_kind: IdentifierKind::Text,
        },
    );
    ShardSettings {
        starting_position,
        batch_size,
        max_batching_window,
        parallelization_factor,
        discovery_interval,
        tumbling_window,
        policy,
    }
}

/// Lambda's longest tumbling window (`TumblingWindowInSeconds` 0..=900).
pub const MAX_TUMBLING_WINDOW: Duration = Duration::from_secs(900);

/// A sharded stream's `tumbling_window`: 1s..=15m, whole seconds as Lambda counts them; `0s` (or
/// no key) is off. The state is one per shard, so the shard must be one lane.
fn tumbling_window(
    v: &mut Validator,
    path: &str,
    window: Option<HumanDuration>,
    parallelization_factor: usize,
) -> Option<Duration> {
    let window = window.map(|d| d.0).filter(|d| !d.is_zero())?;
    let key = format!("{path}.tumbling_window");
    if window > MAX_TUMBLING_WINDOW || window.subsec_nanos() != 0 {
        v.error(
            key.as_str(),
            format!("must be whole seconds, 1s..=15m (got {window:?}); 0s turns windows off"),
        );
    }
    if parallelization_factor > 1 {
        v.error(
            key.as_str(),
            format!("a tumbling window's state is one per shard, so it needs parallelization_factor 1 (got {parallelization_factor}); drop one of the two keys"),
        );
    }
    Some(window)
}

/// A point in time written as RFC 3339 (`2024-05-01T12:00:00Z`) or Unix seconds.
pub fn parse_timestamp(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!(
                "{text:?} is not a time: {e}; write it like 2024-05-01T12:00:00Z or as Unix seconds"
            )
        })?;
    let since_epoch = parsed - time::OffsetDateTime::UNIX_EPOCH;
    Duration::try_from(since_epoch).map_err(|_| format!("{text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    fn policy(config: &crate::config::Config) -> &StreamPolicy {
        &source_of!(config, DynamodbStream).settings.policy
    }

    #[test]
    fn stream_retry_limits_follow_lambdas_ranges() {
        let with = |retry: &str| {
            parse_text(&format!(
                "{STREAM}    retry: {retry}\n    on_failure: {{ s3: {{ bucket: b }} }}\n"
            ))
        };
        let config = with("{ max_retry_attempts: -1, max_record_age: -1 }").unwrap();
        assert_eq!(policy(&config).max_record_age, None);
        let config = with("{ max_retry_attempts: 10000, max_record_age: 7d }").unwrap();
        assert_eq!(policy(&config).max_retry_attempts, Some(10_000));
        assert_eq!(
            policy(&config).max_record_age,
            Some(Duration::from_secs(604_800))
        );
        let errors = with("{ max_retry_attempts: 10001, max_record_age: 30s }")
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("retry.max_retry_attempts: must be -1"),
            "{errors}"
        );
        assert!(
            errors.contains("retry.max_record_age: must be -1 or 60s..=7d"),
            "{errors}"
        );
        let errors = with("{ max_record_age: 60 }").unwrap_err().to_string();
        assert!(errors.contains("no unit"), "{errors}");
    }

    // README: a stream's backoff grows to 1m unless its max is given, with or without a block.
    #[test]
    fn a_partial_backoff_block_keeps_the_stream_default_max() {
        let text = format!("{STREAM}    retry: {{ backoff: {{ initial: 2s }} }}\n");
        let config = parse_text(&text).unwrap();
        let expected =
            Backoff::new(Duration::from_secs(2), DEFAULT_BACKOFF_MAX, 2.0, true).unwrap();
        assert_eq!(policy(&config).backoff, expected);
    }

    #[test]
    fn limits_that_can_run_out_need_an_on_failure_destination() {
        let text = format!("{STREAM}    retry: {{ max_retry_attempts: 3 }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered
                .contains("mappings[0].retry.max_retry_attempts: needs an on_failure destination"),
            "{rendered}"
        );
    }

    #[test]
    fn retry_keys_of_the_other_source_kind_are_refused() {
        let text = format!("{STREAM}    retry: {{ max_receive_count: 3 }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains(
                "retry.max_receive_count: is not a setting of dynamodb_stream sources; a stream source retries with max_retry_attempts"
            ),
            "{rendered}"
        );
        let text = format!("{BASE}    retry: {{ bisect_on_error: true }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains(
                "retry.bisect_on_error: is not a setting of sqs sources; an sqs source retries through the queue"
            ),
            "{rendered}"
        );
    }
}
