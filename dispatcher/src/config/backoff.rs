//! A `backoff` block, as written and as built: exponential delays with full jitter, read the
//! same way wherever a policy backs off (SQS retries, stream retries, async throttles).

use super::duration::HumanDuration;
use super::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::Backoff;
use std::time::Duration;

/// The longest a backoff may wait: SQS's longest visibility timeout.
pub const MAX_BACKOFF: Duration = Duration::from_secs(43_200);
/// A backoff's first delay when `initial` is not given.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// A backoff's longest delay when `max` is not given (stream retries: 60 s, see
/// [`super::stream::DEFAULT_BACKOFF_MAX`]).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A backoff's growth per attempt when `multiplier` is not given.
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    /// Default 1s.
    #[serde(default)]
    pub initial: Option<HumanDuration>,
    /// Default 5m (stream retries: 1m).
    #[serde(default)]
    pub max: Option<HumanDuration>,
    /// Default 2.0.
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Full jitter. Default true.
    #[serde(default)]
    pub jitter: Option<bool>,
}

/// A `backoff` block; absent values take the `DEFAULT_BACKOFF_*` constants, except `max`, whose
/// default is the policy's (`default_max`).
pub fn build(
    v: &mut Validator,
    path: &str,
    raw: RawBackoff,
    default_max: Duration,
) -> Option<Backoff> {
    let initial = raw.initial.map_or(DEFAULT_BACKOFF_INITIAL, |d| d.0);
    let max = raw.max.map_or(default_max, |d| d.0);
    if max > MAX_BACKOFF {
        v.error(
            format!("{path}.max"),
            "must be at most 12h (SQS's longest visibility)",
        );
    }
    match Backoff::new(
        initial,
        max,
        raw.multiplier.unwrap_or(DEFAULT_BACKOFF_MULTIPLIER),
        raw.jitter.unwrap_or(true),
    ) {
        Ok(backoff) => Some(backoff),
        Err(error) => {
            v.error(path, error.to_string());
            None
        }
    }
}
