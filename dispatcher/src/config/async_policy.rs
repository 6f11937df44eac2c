//! The asynchronous policy (S3 notifications, the Invoke API's `Event`): retries 0..=2 after one
//! or two delays, events kept 60s..=6h, throttles backed off. Read from an S3 mapping's `retry`
//! block and from a function's `async` block alike, with Lambda's defaults
//! ([`AsyncPolicy::lambda_defaults`]) for whatever is absent.

use super::backoff::{self, RawBackoff};
use super::duration::HumanDuration;
use super::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::AsyncPolicy;
use std::time::Duration;

/// Lambda's range for `max_event_age`.
pub const EVENT_AGE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(6 * 3600);
/// The longest delay before a retry.
pub const MAX_DELAY: Duration = Duration::from_secs(43_200);

/// An asynchronous policy as written (Lambda's defaults are in [`AsyncPolicy::lambda_defaults`]).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAsyncPolicy {
    /// Retries after the first attempt: 0..=2. Default 2.
    #[serde(default)]
    pub max_retry_attempts: Option<i64>,
    /// Events older than this go to on_failure as EventAgeExceeded: 60s..=6h. Default 6h.
    #[serde(default)]
    pub max_event_age: Option<HumanDuration>,
    /// Delays before retry 1 and 2. Default [1m, 2m].
    #[serde(default)]
    pub delays: Option<Vec<HumanDuration>>,
    /// Backoff for throttles. Default 1s doubling to 5m.
    #[serde(default)]
    pub backoff: Option<RawBackoff>,
}

/// What an asynchronous source says when its `retry` block has a key of another kind.
pub const RETRY_ADVICE: &str = "an s3 source retries asynchronously: use max_retry_attempts (0..=2), delays, max_event_age and backoff";

/// The policy `raw` describes at `path`, with Lambda's ranges.
pub fn policy(v: &mut Validator, path: &str, raw: RawAsyncPolicy) -> AsyncPolicy {
    let defaults = AsyncPolicy::lambda_defaults();
    let max_retry_attempts = match raw.max_retry_attempts {
        None => defaults.max_retry_attempts,
        Some(n @ 0..=2) => n as u32,
        Some(n) => {
            v.error(
                format!("{path}.max_retry_attempts"),
                format!("must be 0..=2 for asynchronous invocation, as in Lambda (got {n})"),
            );
            defaults.max_retry_attempts
        }
    };
    let max_event_age = raw.max_event_age.map_or(defaults.max_event_age, |d| d.0);
    if !EVENT_AGE_RANGE.contains(&max_event_age) {
        v.error(
            format!("{path}.max_event_age"),
            format!("must be 60s..=6h, as in Lambda (got {max_event_age:?})"),
        );
    }
    let delays: Vec<Duration> = raw
        .delays
        .map_or(defaults.delays, |d| d.into_iter().map(|d| d.0).collect());
    if delays.is_empty() || delays.iter().any(|d| d.is_zero() || *d > MAX_DELAY) {
        v.error(
            format!("{path}.delays"),
            "give one or two delays between 1ms and 12h, such as [1m, 2m]",
        );
    }
    let throttle_backoff = raw
        .backoff
        .and_then(|b| {
            backoff::build(
                v,
                &format!("{path}.backoff"),
                b,
                backoff::DEFAULT_BACKOFF_MAX,
            )
        })
        .unwrap_or(defaults.throttle_backoff);
    AsyncPolicy {
        max_retry_attempts,
        delays,
        throttle_backoff,
        max_event_age,
    }
}

/// The ordered policy `sluice dlq replay` runs an asynchronous kind's records under: one event
/// per invocation, no partial responses, the kind's retries and throttle backoff, and a failure
/// its target marks as not worth retrying sent to the destination at once.
pub fn replay_policy(policy: &AsyncPolicy, has_on_failure: bool) -> sluice_policies::StreamPolicy {
    sluice_policies::StreamPolicy {
        report_batch_item_failures: false,
        bisect_on_error: false,
        max_retry_attempts: Some(policy.max_retry_attempts),
        max_record_age: None,
        backoff: policy.throttle_backoff,
        identifier_kind: sluice_policies::IdentifierKind::Text,
        non_retryable: has_on_failure.then(sluice_policies::ErrorClasses::default),
    }
}
