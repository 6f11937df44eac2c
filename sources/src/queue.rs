//! The narrow contract every queue-shaped source (SQS, S3 notifications through SQS) offers.
//!
//! - `receive` returns at most `max_messages` records, waiting up to `wait` for the first one; the
//!   records are hidden from other consumers until acknowledged or their visibility runs out.
//! - `delete` is idempotent per record and retries entries that fail transiently; an empty list is
//!   a no-op. A record it could not delete comes back later (at-least-once), never silently lost.
//! - `change_visibility` sets how long from now each record stays hidden (0 = visible at once);
//!   the caller owns visibility: the source never extends or releases on its own.

use crate::record::{Receipt, Record};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Facts about a queue that the dispatcher plans with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDescription {
    pub url: String,
    pub arn: String,
    pub region: String,
    pub fifo: bool,
    /// The queue's default visibility timeout.
    pub visibility_timeout: Duration,
}

/// Per-record result of a delete.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeleteReport {
    pub deleted: usize,
    /// Message id and reason of every record that could not be deleted.
    pub failed: Vec<(String, String)>,
}

/// How many messages a queue holds: SQS's approximate figures, which trail the queue by up to a
/// minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueBacklog {
    /// Ready to be received (`ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Received and not yet deleted or visible again (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Sent with a delay that has not passed (`ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{operation} on queue {queue_url} failed: {message}")]
    Queue {
        queue_url: String,
        operation: &'static str,
        message: String,
    },
    #[error("{operation} on stream {stream} failed: {message}")]
    Stream {
        stream: String,
        operation: &'static str,
        message: String,
    },
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    fn description(&self) -> &QueueDescription;

    async fn receive(
        &self,
        max_messages: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, SourceError>;

    async fn delete(&self, receipts: &[&Receipt]) -> Result<DeleteReport, SourceError>;

    /// Returns the message ids whose visibility could not be changed, with the reason.
    async fn change_visibility(
        &self,
        changes: &[(&Receipt, Duration)],
    ) -> Result<Vec<(String, String)>, SourceError>;

    /// How many messages the queue holds now.
    async fn backlog(&self) -> Result<QueueBacklog, SourceError>;
}

/// A receive already sent (or about to be), resolving to its records.
pub type PendingReceive =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Record>, SourceError>> + Send>>;

/// Opens queues by URL (looking each up once): all a queue mapping needs from its AWS client, so
/// that the runtime never holds one.
#[async_trait]
pub trait QueueOpener: Send + Sync + 'static {
    /// The queue at `queue_url`; fails when it does not exist or cannot be described.
    async fn open(&self, queue_url: &str) -> Result<Arc<dyn Queue>, SourceError>;

    /// [`QueueOpener::open`], with the mapping's first receive (`max_messages`, `wait`) sent
    /// beside the lookup instead of after it, so that a starting mapping's first poll does not
    /// wait for the lookup's round trip. Returns once the queue is described; the receive may
    /// still be open. When the lookup fails, whatever that receive brings is made visible again
    /// (while the process runs: at exit it comes back after the visibility timeout). The default
    /// opens, then receives.
    async fn open_receiving(
        &self,
        queue_url: &str,
        max_messages: usize,
        wait: Duration,
    ) -> Result<(Arc<dyn Queue>, PendingReceive), SourceError> {
        let queue = self.open(queue_url).await?;
        let first = queue.clone();
        Ok((
            queue,
            Box::pin(async move { first.receive(max_messages, wait).await }),
        ))
    }
}
