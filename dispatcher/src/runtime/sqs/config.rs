//! An `sqs` source as written in the config file, checked with SQS's and Lambda's limits, and
//! built into the mapping's settings with its finished [`QueuePolicy`].

use crate::config::backoff::{self, RawBackoff};
use crate::config::destinations::{DestinationConfig, refuse_own_queue};
use crate::config::duration::HumanDuration;
use crate::config::kind::{BuildSource, MappingParts, SourceRules};
use crate::config::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::{ErrorClasses, IdentifierKind, QueuePolicy, StreamPolicy};
use sluice_sources::sqs::MAX_WAIT;
use std::time::Duration;

/// Records per invocation when `batch_size` is not given (Lambda's SQS default).
pub const DEFAULT_BATCH_SIZE: u32 = 10;
/// The largest batch of a standard queue (Lambda's limit; needs a batching window over 10).
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// The largest batch of a FIFO queue.
pub const MAX_FIFO_BATCH_SIZE: u32 = 10;
/// The longest batching window, as in Lambda.
pub const MAX_BATCHING_WINDOW: Duration = Duration::from_secs(300);
/// Batches in flight at once when `max_concurrency` is not given.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 5;
pub const MAX_MAX_CONCURRENCY: u32 = 1_000;
/// Receive loops by default at most, when every receive is a batch.
pub const MAX_DEFAULT_POLLERS: u32 = 5;
/// SQS's longest visibility timeout: the longest a message can be held, and the heartbeat's
/// default limit.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(43_200);
/// Lambda's range for `retry.max_receive_count`.
pub const RECEIVE_COUNT_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

// Defaults are given to serde as `Some(constant)`, so the schema shows them, while an empty
// value (null, or `${VAR:-}`) still reads as `None` and so as the default too.
fn default_batch_size() -> Option<u32> {
    Some(DEFAULT_BATCH_SIZE)
}
fn default_max_concurrency() -> Option<u32> {
    Some(DEFAULT_MAX_CONCURRENCY)
}
/// The long-poll wait when `wait_time` is not given: SQS's longest.
pub(crate) fn default_wait_time() -> Option<HumanDuration> {
    Some(HumanDuration(MAX_WAIT))
}

/// A queue source's `wait_time` at `path`: 0s..=20s (SQS's longest long poll), default 20s.
pub(crate) fn wait_time(v: &mut Validator, path: &str, raw: Option<HumanDuration>) -> Duration {
    let wait_time = raw.map_or(MAX_WAIT, |d| d.0);
    if wait_time > MAX_WAIT {
        v.error(
            format!("{path}.wait_time"),
            "must be 0s..=20s (SQS's longest long poll)",
        );
    }
    wait_time
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSqsSource {
    pub queue_url: String,
    /// Records per invocation: 1..=10000 (FIFO 1..=10).
    #[serde(default = "default_batch_size")]
    pub batch_size: Option<u32>,
    /// How long to gather records before invoking: 0s..=300s. Needed (>= 1s) when batch_size > 10.
    #[serde(default)]
    pub max_batching_window: Option<HumanDuration>,
    /// Batches in flight at once for this mapping: 1..=1000.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: Option<u32>,
    /// Receive loops running at once, so one loop's round trips do not cap throughput:
    /// 1..=max_concurrency. Each loop fills its own batches. Default: max_concurrency (at most 5)
    /// when every receive is a batch (batch_size <= 10, no batching window), else 1.
    #[serde(default)]
    pub pollers: Option<u32>,
    /// Long-poll wait per receive: 0s..=20s.
    #[serde(default = "default_wait_time")]
    pub wait_time: Option<HumanDuration>,
    /// Keep extending the visibility of messages while they are being handled. Default on, up
    /// to 12h.
    #[serde(default)]
    pub visibility_heartbeat: Option<RawHeartbeat>,
    /// Messages the SQS (or SNS) Extended Client Library sent with their body in S3: with
    /// `resolve`, the handler gets the body instead of the pointer.
    #[serde(default)]
    pub large_payloads: Option<RawLargePayloads>,
}

/// `large_payloads`: bodies the Extended Client stored in S3.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLargePayloads {
    /// Fetch each pointed-to body from S3 before invoking (default true).
    #[serde(default = "enabled")]
    pub resolve: Option<bool>,
    /// Delete the S3 object once its message was handled and deleted (default false: the
    /// object stays, as the Extended Client leaves it unless told otherwise).
    #[serde(default)]
    pub delete_after_success: Option<bool>,
}

fn default_heartbeat_max() -> Option<HumanDuration> {
    Some(HumanDuration(MAX_HEARTBEAT))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    #[serde(default = "enabled")]
    pub enabled: Option<bool>,
    /// Stop extending once a message has been held this long (at most 12h).
    #[serde(default = "default_heartbeat_max")]
    pub max: Option<HumanDuration>,
}

fn enabled() -> Option<bool> {
    Some(true)
}

/// An sqs mapping's `retry` block.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSqsRetry {
    /// After this many receives a failing message goes to on_failure with its error, then is
    /// deleted: 1..=1000. Omit it to leave dead-lettering to the queue's redrive policy.
    #[serde(default)]
    pub max_receive_count: Option<u32>,
    /// Delay failed messages by their receive count instead of the queue's visibility timeout.
    #[serde(default)]
    pub backoff: Option<RawBackoff>,
    /// errorType values that retrying cannot fix: such failures go to on_failure at once with
    /// condition NonRetryableError.
    #[serde(default)]
    pub non_retryable_errors: Option<Vec<String>>,
}

const RETRY_ADVICE: &str = "an sqs source retries through the queue: use max_receive_count, backoff and non_retryable_errors";

#[derive(Debug, Clone, PartialEq)]
pub struct SqsSourceConfig {
    pub queue_url: String,
    pub fifo: bool,
    pub batch_size: usize,
    pub max_batching_window: Duration,
    pub max_concurrency: usize,
    pub pollers: usize,
    pub wait_time: Duration,
    /// `None` when the heartbeat is off; else the longest a message is held.
    pub heartbeat_max: Option<Duration>,
    pub policy: QueuePolicy,
    /// Resolve Extended Client pointers; `Some(true)` also deletes their objects after success.
    pub large_payloads: Option<LargePayloads>,
}

/// How Extended Client pointers are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargePayloads {
    pub delete_after_success: bool,
}

impl BuildSource for RawSqsSource {
    type Config = SqsSourceConfig;
    type Retry = RawSqsRetry;

    fn build(self, v: &mut Validator, path: &str, mapping: MappingParts) -> SqsSourceConfig {
        let fifo = self.queue_url.ends_with(".fifo");
        if reqwest::Url::parse(&self.queue_url).is_err() {
            v.error(
                format!("{path}.queue_url"),
                format!(
                    "{:?} is not a queue URL; write it like https://sqs.us-east-1.amazonaws.com/123456789012/orders",
                    self.queue_url
                ),
            );
        }
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        let window = self.max_batching_window.map_or(Duration::ZERO, |d| d.0);
        if fifo && !(1..=MAX_FIFO_BATCH_SIZE).contains(&batch_size) {
            v.error(
                format!("{path}.batch_size"),
                format!("must be 1..={MAX_FIFO_BATCH_SIZE} for FIFO queues (got {batch_size})"),
            );
        } else if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            v.error(
                format!("{path}.batch_size"),
                format!("must be 1..={MAX_BATCH_SIZE} (got {batch_size})"),
            );
        }
        if window > MAX_BATCHING_WINDOW {
            v.error(
                format!("{path}.max_batching_window"),
                format!("must be 0s..=300s (got {window:?})"),
            );
        }
        if fifo && !window.is_zero() {
            v.error(
                format!("{path}.max_batching_window"),
                "is not supported on FIFO queues (as in Lambda); remove it",
            );
        }
        if !fifo && batch_size > 10 && window < Duration::from_secs(1) {
            v.error(
                format!("{path}.max_batching_window"),
                format!("must be at least 1s when batch_size is greater than 10 (batch_size is {batch_size})"),
            );
        }
        let max_concurrency = v.concurrency(
            &format!("{path}.max_concurrency"),
            self.max_concurrency,
            DEFAULT_MAX_CONCURRENCY,
            MAX_MAX_CONCURRENCY,
        ) as u32;
        // Several loops would each gather their own batch and fill batches more slowly, so only
        // a mapping whose every receive is a batch polls with several loops by default.
        let default_pollers = if window.is_zero() && batch_size <= 10 {
            max_concurrency.clamp(1, MAX_DEFAULT_POLLERS)
        } else {
            1
        };
        let pollers = self.pollers.unwrap_or(default_pollers);
        if pollers == 0 || pollers > max_concurrency.max(1) {
            v.error(
                format!("{path}.pollers"),
                format!("must be 1..=max_concurrency ({max_concurrency}) (got {pollers})"),
            );
        }
        let wait_time = wait_time(v, path, self.wait_time);
        let heartbeat_max = match self.visibility_heartbeat {
            Some(RawHeartbeat {
                enabled: Some(false),
                ..
            }) => None,
            Some(RawHeartbeat { max, .. }) => {
                let max = max.map_or(MAX_HEARTBEAT, |d| d.0);
                if max.is_zero() || max > MAX_HEARTBEAT {
                    v.error(
                        format!("{path}.visibility_heartbeat.max"),
                        "must be between 1s and 12h (SQS's longest visibility)",
                    );
                }
                Some(max)
            }
            None => Some(MAX_HEARTBEAT),
        };
        let policy = queue_policy(v, &mapping);
        SqsSourceConfig {
            queue_url: self.queue_url,
            fifo,
            batch_size: batch_size as usize,
            max_batching_window: window,
            max_concurrency: max_concurrency as usize,
            pollers: pollers.max(1) as usize,
            wait_time,
            heartbeat_max,
            policy,
            large_payloads: self
                .large_payloads
                .filter(|l| l.resolve.unwrap_or(true))
                .map(|l| LargePayloads {
                    delete_after_success: l.delete_after_success.unwrap_or(false),
                }),
        }
    }
}

/// The queue policy of the mapping's `retry` block. An sqs source dead-letters only with a
/// receive count or error classes, and either needs a destination to send to.
fn queue_policy(v: &mut Validator, mapping: &MappingParts) -> QueuePolicy {
    let path = format!("{}.retry", mapping.path);
    let raw: RawSqsRetry = v.block(&path, mapping.retry.clone(), "sqs", RETRY_ADVICE);
    let has_on_failure = mapping.on_failure.is_some();
    if let Some(count) = raw.max_receive_count {
        if !RECEIVE_COUNT_RANGE.contains(&count) {
            v.error(
                format!("{path}.max_receive_count"),
                format!("must be 1..=1000 (got {count})"),
            );
        }
        if !has_on_failure {
            v.error(
                format!("{path}.max_receive_count"),
                "needs an on_failure destination to send exhausted messages to",
            );
        }
    }
    let non_retryable_errors = raw.non_retryable_errors.unwrap_or_default();
    if !non_retryable_errors.is_empty() && !has_on_failure {
        v.error(
            format!("{path}.non_retryable_errors"),
            "needs an on_failure destination to send those failures to",
        );
    }
    if has_on_failure && raw.max_receive_count.is_none() && non_retryable_errors.is_empty() {
        v.error(
            format!("{}.on_failure", mapping.path),
            "an sqs source dead-letters only with retry.max_receive_count or retry.non_retryable_errors; set one, or remove on_failure to leave failures to the queue's redrive policy",
        );
    }
    QueuePolicy {
        report_batch_item_failures: mapping.report_batch_item_failures,
        max_receive_count: raw.max_receive_count,
        backoff: raw.backoff.and_then(|raw| {
            backoff::build(
                v,
                &format!("{path}.backoff"),
                raw,
                backoff::DEFAULT_BACKOFF_MAX,
            )
        }),
        // Error classes apply only with a destination to send them to.
        non_retryable: has_on_failure.then(|| ErrorClasses::new(non_retryable_errors)),
    }
}

impl SourceRules for SqsSourceConfig {
    fn largest_record(&self) -> &'static str {
        "256 KB"
    }

    fn replay_policy(&self, _has_on_failure: bool) -> StreamPolicy {
        StreamPolicy {
            report_batch_item_failures: self.policy.report_batch_item_failures,
            bisect_on_error: false,
            // A receive count counts the first receive too.
            max_retry_attempts: self.policy.max_receive_count.map(|n| n.saturating_sub(1)),
            max_record_age: None,
            backoff: self
                .policy
                .backoff
                .unwrap_or_else(crate::config::stream::default_backoff),
            identifier_kind: IdentifierKind::Text,
            non_retryable: self.policy.non_retryable.clone(),
        }
    }

    fn replay_batch_size(&self) -> usize {
        self.batch_size
    }

    fn check_destination(&self, v: &mut Validator, path: &str, destination: &DestinationConfig) {
        refuse_own_queue(
            v,
            path,
            destination,
            &self.queue_url,
            "is the mapping's own source queue; dead letters would be consumed again",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn fifo_batch_size_over_ten_is_refused_at_its_value() {
        let text = BASE
            .replace("orders}", "orders.fifo}")
            .replace("batch_size: 10", "batch_size: 20");
        let errors = parse_text(&text).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "sluice.yaml:12:21: mappings[0].source.sqs.batch_size: must be 1..=10 for FIFO queues (got 20)"
        );
    }

    #[test]
    fn several_pollers_only_when_every_receive_is_a_batch() {
        let pollers = |text: &str| {
            let config = parse_text(text).unwrap();
            let sqs = source_of!(config, Sqs);
            sqs.pollers
        };
        assert_eq!(pollers(BASE), 5);
        assert_eq!(
            pollers(&BASE.replace(
                "batch_size: 10",
                "batch_size: 10\n        max_concurrency: 2"
            )),
            2
        );
        assert_eq!(
            pollers(&BASE.replace(
                "batch_size: 10",
                "batch_size: 10\n        max_batching_window: 1s"
            )),
            1
        );
        let too_many = BASE.replace(
            "batch_size: 10",
            "batch_size: 10\n        max_concurrency: 2\n        pollers: 3",
        );
        assert!(
            parse_text(&too_many)
                .unwrap_err()
                .to_string()
                .contains("pollers: must be 1..=max_concurrency (2)")
        );
    }

    // An empty value (`${VAR:-}` expands to null) means the default, as a missing key does.
    #[test]
    fn empty_values_take_the_defaults() {
        let text = BASE.replace(
            "batch_size: 10",
            "batch_size: ${NO_BATCH:-}\n        max_concurrency: ~\n        wait_time:\n        visibility_heartbeat: { enabled: ~, max: ~ }",
        );
        let config = parse_text(&text).unwrap();
        let sqs = source_of!(config, Sqs);
        assert_eq!(sqs.batch_size, DEFAULT_BATCH_SIZE as usize);
        assert_eq!(sqs.max_concurrency, DEFAULT_MAX_CONCURRENCY as usize);
        assert_eq!(sqs.wait_time, MAX_WAIT);
        assert_eq!(sqs.heartbeat_max, Some(MAX_HEARTBEAT));
    }

    #[test]
    fn a_quoted_number_in_retry_reads_as_in_the_source_block() {
        let text = format!(
            "{BASE}    retry: {{ max_receive_count: \"5\" }}\n    on_failure: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/dlq\" }} }}\n"
        );
        let config = parse_text(&text).unwrap();
        assert_eq!(source_of!(config, Sqs).policy.max_receive_count, Some(5));
    }

    #[test]
    fn large_batches_need_a_batching_window() {
        let text = BASE.replace("batch_size: 10", "batch_size: 100");
        let errors = parse_text(&text).unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("max_batching_window: must be at least 1s")
        );
        let fixed = BASE.replace(
            "batch_size: 10",
            "batch_size: 100\n        max_batching_window: 1s",
        );
        assert!(parse_text(&fixed).is_ok());
    }

    #[test]
    fn max_receive_count_and_on_failure_go_together() {
        let text = format!("{BASE}    retry: {{ max_receive_count: 3 }}\n");
        assert!(
            parse_text(&text)
                .unwrap_err()
                .to_string()
                .contains("needs an on_failure destination")
        );
    }

    #[test]
    fn error_classes_need_a_destination_and_statuses_must_be_4xx() {
        let text = format!("{BASE}    retry: {{ non_retryable_errors: [ValidationError] }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("non_retryable_errors: needs an on_failure destination"),
            "{rendered}"
        );
        let text = format!(
            "{BASE}    retry: {{ non_retryable_errors: [ValidationError] }}\n    on_failure: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/dlq\" }} }}\n"
        );
        let config = parse_text(&text).unwrap();
        assert_eq!(
            source_of!(config, Sqs).policy.non_retryable,
            Some(ErrorClasses::new(["ValidationError".to_owned()]))
        );
        let text = BASE.replace(
            "http: { url: \"http://127.0.0.1:8080/events\" }",
            "http: { url: \"http://127.0.0.1:8080/events\", non_retryable_statuses: [422, 429, 500] }",
        );
        let errors = parse_text(&text).unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
    }
}
