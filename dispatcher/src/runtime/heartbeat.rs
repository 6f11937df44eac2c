//! The visibility heartbeat (semantics.md §12, beyond AWS): while records are held (in a batch
//! being assembled or being handled), extend their visibility before it runs out, up to a maximum
//! hold time, so a slow handler causes no duplicate deliveries.
//!
//! Extensions and releases are serialised by one async lock: once [`Heartbeat::release`] returns,
//! no extension of those records is in flight or will start, so the caller's own visibility
//! change (a backoff delay, or 0) is the last word.

use crate::telemetry::MappingMetrics;
use sluice_sources::{Queue, Receipt, Record};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock, so that a paused test clock drives batching windows and deadlines too.
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Held {
    receipt: Receipt,
    held_since: Instant,
    visible_at: Instant,
}

pub struct Heartbeat {
    queue: Arc<dyn Queue>,
    visibility_timeout: Duration,
    max_hold: Option<Duration>,
    held: Mutex<HashMap<String, Held>>,
    metrics: MappingMetrics,
    mapping: String,
}

impl Heartbeat {
    /// `max_hold` `None` turns extension off (records are still tracked for release).
    pub fn new(
        queue: Arc<dyn Queue>,
        max_hold: Option<Duration>,
        metrics: MappingMetrics,
        mapping: &str,
    ) -> Arc<Self> {
        let visibility_timeout = queue
            .description()
            .visibility_timeout
            .max(Duration::from_secs(1));
        Arc::new(Self {
            queue,
            visibility_timeout,
            max_hold,
            held: Mutex::new(HashMap::new()),
            metrics,
            mapping: mapping.to_owned(),
        })
    }

    fn key(receipt: &Receipt) -> String {
        match &receipt.ack {
            sluice_sources::AckToken::Sqs { receipt_handle } => receipt_handle.clone(),
            // Stream records have no visibility; they are never held.
            sluice_sources::AckToken::Stream { .. } => receipt.id.clone(),
        }
    }

    /// Starts holding records that were received by a request sent at `requested_at`.
    pub async fn hold(&self, records: &[Record], requested_at: Instant) {
        let mut held = self.held.lock().await;
        for record in records {
            held.insert(
                Self::key(&record.receipt),
                Held {
                    receipt: record.receipt.clone(),
                    held_since: requested_at,
                    visible_at: requested_at + self.visibility_timeout,
                },
            );
        }
    }

    /// Stops holding records; after it returns no extension of them runs.
    pub async fn release(&self, records: &[Record]) {
        let mut held = self.held.lock().await;
        for record in records {
            held.remove(&Self::key(&record.receipt));
        }
    }

    /// Extends every held record whose visibility ends within half a timeout; runs until cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.max_hold.is_none() {
            return;
        }
        let tick =
            (self.visibility_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => self.extend_due().await,
            }
        }
    }

    async fn extend_due(&self) {
        let Some(max_hold) = self.max_hold else {
            return;
        };
        let mut held = self.held.lock().await;
        let now = Instant::now();
        let margin = self.visibility_timeout / 2;
        let due: Vec<String> = held
            .iter()
            .filter(|(_, h)| {
                h.visible_at <= now + margin && now.duration_since(h.held_since) < max_hold
            })
            .map(|(key, _)| key.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let sent_at = Instant::now();
        let changes: Vec<(&Receipt, Duration)> = due
            .iter()
            .filter_map(|key| held.get(key))
            .map(|h| {
                let left = max_hold.saturating_sub(now.duration_since(h.held_since));
                (
                    &h.receipt,
                    self.visibility_timeout
                        .min(left)
                        .max(Duration::from_secs(1)),
                )
            })
            .collect();
        let extended_to: Vec<Duration> = changes.iter().map(|(_, d)| *d).collect();
        match self.queue.change_visibility(&changes).await {
            Ok(failed) => {
                let failed_ids: Vec<&str> = failed.iter().map(|(id, _)| id.as_str()).collect();
                self.metrics
                    .visibility_extensions
                    .increment((changes.len() - failed.len()) as u64);
                for (id, reason) in &failed {
                    tracing::warn!(mapping = %self.mapping, message_id = %id, %reason, "visibility extension failed");
                }
                for (key, extension) in due.iter().zip(extended_to) {
                    if let Some(h) = held.get_mut(key)
                        && !failed_ids.contains(&h.receipt.id.as_str())
                    {
                        h.visible_at = sent_at + extension;
                    }
                }
            }
            Err(error) => {
                self.metrics.ack_errors.increment(1);
                tracing::warn!(mapping = %self.mapping, %error, "visibility extension failed");
            }
        }
    }
}
