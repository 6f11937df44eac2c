//! The clock the runtime's policy decisions read: time since the Unix epoch (what record
//! timestamps and `max_record_age` / `max_event_age` are measured in), advanced by tokio's
//! monotonic clock from one wall-clock reading at first use. Retry delays therefore follow
//! tokio's time — a paused test clock drives them, and a wall-clock step (NTP, a VM resume) does
//! not shorten or stretch a backoff — while ages stay within the drift of the monotonic clock
//! from the wall clock since the process started.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(Duration, std::time::Instant)> = OnceLock::new();

/// Now, since the Unix epoch (see the module docs).
pub fn now_since_epoch() -> Duration {
    let (epoch, at) = *ANCHOR.get_or_init(|| {
        (
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            std::time::Instant::now(),
        )
    });
    epoch
        + tokio::time::Instant::now()
            .into_std()
            .saturating_duration_since(at)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Within a second: another test's runtime may have set the anchor a moment after this
        // runtime's paused clock started.
        let advanced = after - before;
        assert!(
            advanced.abs_diff(Duration::from_secs(3600)) < Duration::from_secs(1),
            "{before:?} → {after:?}"
        );
    }
}
