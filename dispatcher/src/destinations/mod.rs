//! On-failure destinations: where records that exhaust their policy go, inside the dead-letter
//! envelope (architecture.md "Dead-letter envelope").
//!
//! A destination either stores the whole envelope or reports an error; the caller deletes or
//! checkpoints the records only after a successful send, so a failed send never loses a record.

pub mod envelope;
pub mod s3;
pub mod sqs;

pub use envelope::{DeadLetter, EnvelopeSource};

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("sending the dead letter to queue {queue_url} failed: {message}")]
    Sqs { queue_url: String, message: String },
    #[error("storing the dead letter as s3://{bucket}/{key} failed: {message}")]
    S3 {
        bucket: String,
        key: String,
        message: String,
    },
}

#[async_trait]
pub trait Destination: Send + Sync + 'static {
    /// Stores one dead letter. `group_hint` keeps FIFO ordering when the destination needs a
    /// message group; `dedup_hint` identifies the dead letter for deduplication.
    async fn send(
        &self,
        dead_letter: &DeadLetter,
        group_hint: &str,
        dedup_hint: &str,
    ) -> Result<(), DestinationError>;

    /// A short description for logs, such as the queue URL.
    fn describe(&self) -> &str;
}
