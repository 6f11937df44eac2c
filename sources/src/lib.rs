//! sluice-sources: each module turns a remote system into [`Record`]s and executes the
//! acknowledgements the policies decide (delete, change visibility, checkpoint).
//!
//! - [`sqs`]: SQS queues; [`shards`]: what every sharded stream is read through;
//!   [`dynamodb_streams`] and [`kinesis`]: their shards and records; [`checkpoint`]: where
//!   stream checkpoints and shard leases live.
//!
//! Sources know nothing of targets or of the dispatcher; they depend only on `sluice-policies`.
//! Delivery is at-least-once: a source never acknowledges a record on its own initiative.

pub mod async_queue;
pub mod checkpoint;
pub mod dynamodb_streams;
#[cfg(test)]
mod fuzz;
pub mod kafka;
pub mod kinesis;
#[cfg(test)]
mod lambda_events;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod queue;
pub mod record;
pub mod s3;
pub mod shards;
pub mod sqs;
pub mod trace;

pub use queue::{
    DeleteReport, PendingReceive, Queue, QueueBacklog, QueueDescription, QueueOpener, SourceError,
};

/// Backoff between failed calls to a source or store: short, so readiness recovers quickly once
/// the service is back (250 ms doubling to 5 s).
pub fn retry_delay(consecutive_failures: u32) -> std::time::Duration {
    let millis = 250u64.saturating_mul(1 << consecutive_failures.min(5));
    std::time::Duration::from_millis(millis.min(5_000))
}

/// The wall clock, as time since the Unix epoch (what record timestamps and ages are measured
/// in); zero if the clock is set before 1970.
pub fn now_since_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The text of a panic's payload (for logs and `/readyz`: a caught panic is reported, not lost).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
pub use record::{AckToken, Receipt, Record, records_event};
