//! What was sent and what was handled, per record: the source of every figure in the table.
//!
//! A record counts as handled when the handler answered that it is done with it (a failed attempt
//! that is retried later is not a delivery). Lost = accepted by the source and never handled;
//! duplicated = handlings beyond the first. Records that carry an order key (a FIFO group, a
//! DynamoDB item, a Kafka key) are checked for the order of their *first* handling: a redelivery
//! of an old record after a crash is a duplicate, not an order violation, but a record handled
//! for the first time before an earlier record of its key is one.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

/// One record as the handler sees it: its id, and its order key and position when it has one.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub order: Option<(String, u64)>,
}

#[derive(Default)]
struct Inner {
    sent: HashSet<String>,
    /// Records owed to a dead-letter destination, not to the handler.
    owed_to_dead_letters: HashSet<String>,
    /// Records offered whose acceptance is unknown (the answer was lost with a killed process):
    /// not owed, but no surprise if handled.
    offered: HashSet<String>,
    deliveries: HashMap<String, u32>,
    /// Per order key, the positions in the order they were first handled.
    first_handled: HashMap<String, Vec<u64>>,
    /// When each record was handled for the first time.
    first_times: Vec<Instant>,
    attempts: u64,
}

#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

/// The figures of one scenario's run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub sent: u64,
    pub handled: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub order_violations: u64,
    /// Handled records that were never sent (a handler seeing something it should not).
    pub unknown: u64,
}

impl Ledger {
    pub fn sent(&self, id: impl Into<String>) {
        self.inner.lock().unwrap().sent.insert(id.into());
    }

    /// A record offered to the source whose acceptance may never be known.
    pub fn offered(&self, id: impl Into<String>) {
        self.inner.lock().unwrap().offered.insert(id.into());
    }

    /// A record that always fails: it is owed to the dead-letter destination, and the scenario
    /// checks it there.
    pub fn owed_to_dead_letters(&self, id: impl Into<String>) {
        self.inner
            .lock()
            .unwrap()
            .owed_to_dead_letters
            .insert(id.into());
    }

    pub fn dead_letters_owed(&self) -> HashSet<String> {
        self.inner.lock().unwrap().owed_to_dead_letters.clone()
    }

    /// Records `records` as handled now.
    pub fn handled(&self, records: &[Seen]) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        for record in records {
            let count = inner.deliveries.entry(record.id.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                inner.first_times.push(now);
                if let Some((key, position)) = &record.order {
                    inner
                        .first_handled
                        .entry(key.clone())
                        .or_default()
                        .push(*position);
                }
            }
        }
    }

    /// An invocation reached the handler (whatever it answered).
    pub fn attempt(&self) {
        self.inner.lock().unwrap().attempts += 1;
    }

    pub fn attempts(&self) -> u64 {
        self.inner.lock().unwrap().attempts
    }

    /// Records sent and not handled yet.
    pub fn missing(&self) -> usize {
        let inner = self.inner.lock().unwrap();
        inner
            .sent
            .iter()
            .filter(|id| !inner.deliveries.contains_key(*id))
            .count()
    }

    /// Up to `limit` records handled more than once, with their handling counts.
    pub fn duplicated_sample(&self, limit: usize) -> Vec<(String, u32)> {
        let inner = self.inner.lock().unwrap();
        let mut out: Vec<(String, u32)> = inner
            .deliveries
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        out.sort();
        out.truncate(limit);
        out
    }

    /// The first first-time handling at or after `since`, if any.
    pub fn first_new_after(&self, since: Instant) -> Option<Instant> {
        let inner = self.inner.lock().unwrap();
        inner.first_times.iter().copied().find(|t| *t >= since)
    }

    pub fn tally(&self) -> Tally {
        let inner = self.inner.lock().unwrap();
        let handled = inner
            .deliveries
            .keys()
            .filter(|id| inner.sent.contains(*id))
            .count() as u64;
        let order_violations = inner
            .first_handled
            .values()
            .map(|positions| positions.windows(2).filter(|w| w[1] < w[0]).count() as u64)
            .sum();
        Tally {
            sent: inner.sent.len() as u64,
            handled,
            lost: inner.sent.len() as u64 - handled,
            duplicated: inner
                .deliveries
                .values()
                .map(|n| u64::from(n.saturating_sub(1)))
                .sum(),
            order_violations,
            unknown: inner
                .deliveries
                .keys()
                .filter(|id| !inner.sent.contains(*id) && !inner.offered.contains(*id))
                .count() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, order: Option<(&str, u64)>) -> Seen {
        Seen {
            id: id.into(),
            order: order.map(|(k, p)| (k.into(), p)),
        }
    }

    #[test]
    fn lost_and_duplicated_are_counted_against_what_was_sent() {
        let ledger = Ledger::default();
        for id in ["a", "b", "c"] {
            ledger.sent(id);
        }
        ledger.handled(&[seen("a", None), seen("b", None)]);
        ledger.handled(&[seen("a", None), seen("x", None)]);
        let tally = ledger.tally();
        assert_eq!(
            (tally.sent, tally.handled, tally.lost, tally.duplicated),
            (3, 2, 1, 1)
        );
        assert_eq!(tally.unknown, 1);
        assert_eq!(ledger.missing(), 1);
        // Offered but never known to be accepted: handling it is no surprise, and not owed.
        ledger.offered("y");
        ledger.handled(&[seen("y", None)]);
        assert_eq!(ledger.tally().unknown, 1);
        assert_eq!(ledger.missing(), 1);
    }

    #[test]
    fn a_redelivery_is_a_duplicate_but_a_late_first_handling_breaks_order() {
        let ledger = Ledger::default();
        ledger.handled(&[seen("g1", Some(("g", 1))), seen("g2", Some(("g", 2)))]);
        // An old record again: a duplicate, the first-handling order is still 1, 2.
        ledger.handled(&[seen("g1", Some(("g", 1)))]);
        assert_eq!(ledger.tally().order_violations, 0);
        ledger.handled(&[seen("g4", Some(("g", 4))), seen("g3", Some(("g", 3)))]);
        assert_eq!(ledger.tally().order_violations, 1);
        // Other keys are independent.
        ledger.handled(&[seen("h9", Some(("h", 9)))]);
        assert_eq!(ledger.tally().order_violations, 1);
    }
}
