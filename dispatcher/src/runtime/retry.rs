//! Retrying calls to a source or store that fail: a short, capped backoff, and a loop that keeps
//! a mapping trying (visible on `/readyz`) instead of exiting while its source is away.

use crate::health::MappingHealthHandle;
use crate::telemetry::MappingMetrics;
use tokio_util::sync::CancellationToken;

pub(crate) use sluice_sources::retry_delay;

/// Calls `attempt` until it succeeds, or `None` once `shutdown` comes. Each failure is counted
/// as a poll error, reported to readiness and logged with `what`, then waited out with
/// [`retry_delay`]: a mapping whose source is not there yet keeps trying instead of exiting.
pub(crate) async fn retry_until_ok<T, E, F, Fut>(
    what: &str,
    mapping: &str,
    health: &MappingHealthHandle,
    metrics: &MappingMetrics,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            result = attempt() => result,
        };
        let error = match result {
            Ok(value) => return Some(value),
            Err(error) => error,
        };
        failures += 1;
        let error = error.to_string();
        if !back_off(what, mapping, health, metrics, shutdown, &error, failures).await {
            return None;
        }
    }
}

/// One failed call to a source: counted as a poll error, reported to readiness, logged with
/// `what`, then waited out with [`retry_delay`]. False when `shutdown` came first.
pub(crate) async fn back_off(
    what: &str,
    mapping: &str,
    health: &MappingHealthHandle,
    metrics: &MappingMetrics,
    shutdown: &CancellationToken,
    error: &str,
    consecutive_failures: u32,
) -> bool {
    metrics.poll_errors.increment(1);
    health.poll_failed(error);
    tracing::warn!(mapping, %error, consecutive_failures, "{what} failed; retrying");
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(retry_delay(consecutive_failures)) => true,
    }
}
