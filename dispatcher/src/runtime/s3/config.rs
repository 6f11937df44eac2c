//! An `s3` source (S3 event notifications read from an SQS queue) as written in the config file,
//! built into the mapping's settings with its finished [`AsyncPolicy`]: each S3 record is one
//! asynchronous invocation.

use crate::config::async_policy::{self, RawAsyncPolicy};
use crate::config::destinations::{DestinationConfig, refuse_own_queue};
use crate::config::duration::HumanDuration;
use crate::config::kind::{BuildSource, MappingParts, SourceRules};
use crate::config::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::{AsyncPolicy, StreamPolicy};
use std::time::Duration;

/// Events in flight at once when `max_concurrency` is not given.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 5;
pub const MAX_MAX_CONCURRENCY: u32 = 1_000;

// `Some(constant)`: the schema shows the default, and an empty value still reads as it.
fn default_max_concurrency() -> Option<u32> {
    Some(DEFAULT_MAX_CONCURRENCY)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawS3Source {
    /// The queue that receives the bucket's notifications.
    pub queue_url: String,
    /// Event names to handle, such as s3:ObjectCreated:* (a trailing * is a wildcard). Default all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only keys (decoded) starting with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only keys (decoded) ending with this.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Events in flight at once: 1..=1000.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: Option<u32>,
    /// Long-poll wait per receive: 0s..=20s.
    #[serde(default = "crate::runtime::sqs::config::default_wait_time")]
    pub wait_time: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3SourceConfig {
    pub queue_url: String,
    pub events: Vec<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub max_concurrency: usize,
    pub wait_time: Duration,
    pub policy: AsyncPolicy,
}

impl BuildSource for RawS3Source {
    type Config = S3SourceConfig;
    type Retry = RawAsyncPolicy;

    fn build(self, v: &mut Validator, path: &str, mapping: MappingParts) -> S3SourceConfig {
        if reqwest::Url::parse(&self.queue_url).is_err() {
            v.error(
                format!("{path}.queue_url"),
                format!("{:?} is not a queue URL", self.queue_url),
            );
        }
        for (index, event) in self.events.iter().enumerate() {
            if !event.starts_with("s3:") {
                v.error(
                    format!("{path}.events[{index}]"),
                    format!("{event:?} is not an S3 event name; write it like s3:ObjectCreated:* or s3:ObjectRemoved:Delete"),
                );
            }
        }
        let max_concurrency = v.concurrency(
            &format!("{path}.max_concurrency"),
            self.max_concurrency,
            DEFAULT_MAX_CONCURRENCY,
            MAX_MAX_CONCURRENCY,
        );
        // The notifications are read by the SQS poller: the same long poll.
        let wait_time = crate::runtime::sqs::config::wait_time(v, path, self.wait_time);
        let retry_path = format!("{}.retry", mapping.path);
        let raw: RawAsyncPolicy =
            v.block(&retry_path, mapping.retry, "s3", async_policy::RETRY_ADVICE);
        let policy = async_policy::policy(v, &retry_path, raw);
        S3SourceConfig {
            queue_url: self.queue_url,
            events: self.events,
            prefix: self.prefix,
            suffix: self.suffix,
            max_concurrency,
            wait_time,
            policy,
        }
    }
}

impl SourceRules for S3SourceConfig {
    fn largest_record(&self) -> &'static str {
        "256 KB"
    }

    fn is_asynchronous(&self) -> bool {
        true
    }

    // S3 events are invoked one by one, asynchronously: no partial responses.
    fn replay_policy(&self, has_on_failure: bool) -> StreamPolicy {
        async_policy::replay_policy(&self.policy, has_on_failure)
    }

    // Lambda invokes the function once per S3 event.
    fn replay_batch_size(&self) -> usize {
        1
    }

    fn check_destination(&self, v: &mut Validator, path: &str, destination: &DestinationConfig) {
        refuse_own_queue(
            v,
            path,
            destination,
            &self.queue_url,
            "is the mapping's own notification queue; records sent there would be read again as notifications",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn an_s3_mapping_gets_lambdas_async_defaults() {
        let config = parse_text(S3).unwrap();
        let policy = &source_of!(config, S3).policy;
        assert_eq!(policy.max_retry_attempts, 2);
        assert_eq!(
            policy.delays,
            vec![Duration::from_secs(60), Duration::from_secs(120)]
        );
        assert_eq!(policy.max_event_age, Duration::from_secs(6 * 3600));
        assert_eq!(
            policy.throttle_backoff,
            AsyncPolicy::lambda_defaults().throttle_backoff,
            "throttles back off"
        );
    }

    #[test]
    fn the_notification_queue_is_not_a_destination() {
        let text = format!(
            "{S3}    on_failure: {{ sqs: {{ queue_url: \"http://127.0.0.1:5000/123456789012/uploads\" }} }}\n"
        );
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].on_failure.sqs.queue_url");
        assert!(
            error.message.contains("own notification queue"),
            "{}",
            error.message
        );
    }

    // S3 events are invoked asynchronously: Lambda has no error classes there, and sluice's
    // async policy never read them.
    #[test]
    fn error_classes_are_refused_on_an_s3_mapping() {
        let text = format!("{S3}    retry: {{ non_retryable_errors: [Bad] }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("retry.non_retryable_errors: is not a setting of s3 sources"),
            "{rendered}"
        );
    }

    #[test]
    fn async_limits_follow_lambdas_ranges_and_other_kinds_keys_are_refused() {
        let text = format!(
            "{S3}    retry: {{ max_retry_attempts: 3, max_event_age: 7h, max_record_age: 1h }}\n"
        );
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("max_retry_attempts: must be 0..=2"),
            "{rendered}"
        );
        assert!(
            rendered.contains("max_event_age: must be 60s..=6h"),
            "{rendered}"
        );
        assert!(
            rendered.contains("retry.max_record_age: is not a setting of s3 sources; an s3 source retries asynchronously"),
            "{rendered}"
        );
        let bad_event = S3.replace("s3:ObjectCreated:*", "ObjectCreated");
        assert!(
            parse_text(&bad_event)
                .unwrap_err()
                .to_string()
                .contains("events[0]")
        );
        let success_on_sqs = format!(
            "{BASE}    on_success: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/ok\" }} }}\n"
        );
        assert!(
            parse_text(&success_on_sqs)
                .unwrap_err()
                .to_string()
                .contains("on_success: is only for asynchronous sources")
        );
        let success_on_s3 = format!(
            "{S3}    on_success: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/ok\" }} }}\n"
        );
        assert!(parse_text(&success_on_s3).is_ok());
    }
}
