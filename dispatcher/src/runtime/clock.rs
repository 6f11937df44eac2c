//! The clock the runtime's policy decisions read: the wall clock (time since the Unix epoch,
//! what record timestamps, `max_record_age` and `max_event_age` are measured in), plus however far
//! tokio's clock runs ahead of the monotonic clock. In production that is nothing, so ages and
//! delays are the wall clock's; under a paused test clock it is the time the test advanced, so
//! retry delays and ages follow the paused clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, since the Unix epoch (see the module docs).
pub fn now_since_epoch() -> Duration {
    // Read together: the std reading is never behind the tokio one in production.
    let tokio_now = tokio::time::Instant::now().into_std();
    let std_now = std::time::Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    wall + tokio_now.saturating_duration_since(std_now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_paused_clock_it_is_the_wall_clock() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let now = now_since_epoch();
            assert!(
                now.abs_diff(wall) < Duration::from_millis(100),
                "{now:?} vs {wall:?}"
            );
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_advances_it_and_it_starts_at_the_wall_clock() {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let before = now_since_epoch();
        assert!(
            before.abs_diff(wall) < Duration::from_secs(60),
            "{before:?} vs {wall:?}"
        );
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = now_since_epoch();
        // Within a second: real time passes between the readings too.
        let advanced = after - before;
        assert!(
            advanced.abs_diff(Duration::from_secs(3600)) < Duration::from_secs(1),
            "{before:?} → {after:?}"
        );
    }
}
