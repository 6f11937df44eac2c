//! Live control of mappings: pause and resume (`POST /mappings/{name}/pause|resume` on the
//! admin server, `sluice ctl`).
//!
//! Guarantees:
//! - a paused mapping sends no more receives or reads to its source (SQS and S3: no
//!   ReceiveMessage, so receive counts stop growing; DynamoDB Streams: no GetRecords, leases kept;
//!   Kafka: its partitions paused at the broker, assignments kept); what it already holds runs to
//!   the end and is acknowledged or checkpointed as usual, so positions stay where the finished
//!   work left them;
//! - the switches live in the health registry ([`crate::health::Health::set_paused`]), one per
//!   mapping name, and outlive the mapping's worker: a restart after a panic, or a reload that leaves
//!   the mapping unchanged, keeps it paused; a reload that changes or re-adds it keeps it too
//!   (it is the same mapping by name), one that removes it forgets it;
//! - a paused mapping is `"paused"` on `/readyz`, which stays ready (pausing is deliberate), and
//!   `sluice_mapping_paused{mapping}` is 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// One mapping's pause switch; clones share it.
#[derive(Clone, Debug)]
pub struct PauseSwitch {
    state: watch::Sender<bool>,
    /// The same state for threads outside the runtime (the Kafka consumer's).
    flag: Arc<AtomicBool>,
    /// `sluice_mapping_paused{mapping}`; none for a switch nothing can turn.
    gauge: Option<metrics::Gauge>,
}

impl PauseSwitch {
    pub fn new(mapping: &str) -> Self {
        let gauge = metrics::gauge!("sluice_mapping_paused", "mapping" => mapping.to_owned());
        gauge.set(0.0);
        Self {
            gauge: Some(gauge),
            ..Self::inert()
        }
    }

    /// A switch that stays running, for what has no source to pause (Invoke API functions).
    pub fn inert() -> Self {
        Self {
            state: watch::Sender::new(false),
            flag: Arc::new(AtomicBool::new(false)),
            gauge: None,
        }
    }

    /// Sets the switch; true when that changed it.
    pub fn set(&self, paused: bool) -> bool {
        self.flag.store(paused, Ordering::Release);
        if let Some(gauge) = &self.gauge {
            gauge.set(if paused { 1.0 } else { 0.0 });
        }
        self.state.send_if_modified(|state| {
            let changed = *state != paused;
            *state = paused;
            changed
        })
    }

    pub fn is_paused(&self) -> bool {
        *self.state.borrow()
    }

    /// Returns once the mapping is not paused (at once when it is not).
    pub async fn until_running(&self) {
        let mut receiver = self.state.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail.
        let _ = receiver.wait_for(|paused| !paused).await;
    }

    /// The switch as a flag, for a thread that cannot await.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

/// What a control request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Changed,
    AlreadySo,
    UnknownMapping,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_paused_switch_holds_its_waiters_until_resumed() {
        let switch = PauseSwitch::new("m");
        tokio::time::timeout(Duration::from_secs(1), switch.until_running())
            .await
            .expect("running: no wait");
        assert!(switch.set(true));
        assert!(!switch.set(true), "already paused");
        assert!(switch.flag().load(Ordering::Acquire));
        let waiter = tokio::spawn({
            let switch = switch.clone();
            async move { switch.until_running().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "held while paused");
        assert!(switch.set(false));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released by the resume")
            .unwrap();
        assert!(!switch.flag().load(Ordering::Acquire));
    }
}
