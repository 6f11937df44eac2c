//! Batching: a batch is complete at whichever comes first of `max_records`, `max_bytes` (6 MB, the
//! synchronous invocation limit) and the batching window (semantics.md §1, §3).
//!
//! The window opens when the first record enters an empty batch; a window of zero means "send what
//! you have". A record that alone exceeds `max_bytes` can never be invoked; it is handed back so
//! the caller can dead-letter it (`PayloadTooLarge`, semantics.md §12) instead of losing it.

use std::time::Duration;

/// Lambda's synchronous invocation payload limit, record metadata included.
pub const MAX_INVOCATION_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// Bytes of the event envelope around the records (`{"Records":[` ... `]}`), kept free in every batch.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub window: Duration,
}

impl BatchLimits {
    pub fn new(max_records: usize, window: Duration) -> Self {
        Self {
            max_records: max_records.max(1),
            max_bytes: MAX_INVOCATION_PAYLOAD_BYTES - ENVELOPE_OVERHEAD_BYTES,
            window,
        }
    }
}

/// What a push produced besides growing the open batch.
#[derive(Debug, PartialEq)]
pub struct PushResult<T> {
    /// Batches that are complete and must be invoked now, oldest first.
    pub ready: Vec<Vec<T>>,
    /// The pushed record, when it is larger than a whole invocation may be.
    pub too_large: Option<T>,
}

/// Collects records into batches. Times are whatever monotonic clock the caller uses, as durations.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: BatchLimits,
    items: Vec<T>,
    bytes: usize,
    opened_at: Option<Duration>,
}

impl<T> Batcher<T> {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            items: Vec::new(),
            bytes: 0,
            opened_at: None,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many more records fit by count.
    pub fn remaining_capacity(&self) -> usize {
        self.limits.max_records - self.items.len()
    }

    /// When the open batch's window closes, if a batch is open.
    pub fn deadline(&self) -> Option<Duration> {
        self.opened_at.map(|opened| opened + self.limits.window)
    }

    pub fn push(&mut self, item: T, size_bytes: usize, now: Duration) -> PushResult<T> {
        let mut ready = Vec::new();
        if size_bytes > self.limits.max_bytes {
            return PushResult {
                ready,
                too_large: Some(item),
            };
        }
        if self.bytes + size_bytes > self.limits.max_bytes {
            ready.extend(self.take());
        }
        if self.items.is_empty() {
            self.opened_at = Some(now);
        }
        self.items.push(item);
        self.bytes += size_bytes;
        if self.items.len() >= self.limits.max_records {
            ready.extend(self.take());
        }
        PushResult {
            ready,
            too_large: None,
        }
    }

    /// The open batch, if its window has closed at `now`.
    pub fn poll(&mut self, now: Duration) -> Option<Vec<T>> {
        match self.deadline() {
            Some(deadline) if now >= deadline => self.take(),
            _ => None,
        }
    }

    /// The open batch, whatever its window says (shutdown, or a source that cannot wait).
    pub fn take(&mut self) -> Option<Vec<T>> {
        if self.items.is_empty() {
            return None;
        }
        self.bytes = 0;
        self.opened_at = None;
        Some(std::mem::take(&mut self.items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_batch_is_ready_at_once() {
        let mut batcher = Batcher::new(BatchLimits::new(3, ms(1000)));
        assert!(batcher.push(1, 10, ms(0)).ready.is_empty());
        assert!(batcher.push(2, 10, ms(1)).ready.is_empty());
        assert_eq!(batcher.push(3, 10, ms(2)).ready, vec![vec![1, 2, 3]]);
        assert!(batcher.is_empty());
    }

    #[test]
    fn the_window_opens_with_the_first_record() {
        let mut batcher = Batcher::new(BatchLimits::new(10, ms(500)));
        batcher.push("a", 1, ms(100));
        batcher.push("b", 1, ms(400));
        assert_eq!(batcher.deadline(), Some(ms(600)));
        assert_eq!(batcher.poll(ms(599)), None);
        assert_eq!(batcher.poll(ms(600)), Some(vec!["a", "b"]));
        assert_eq!(batcher.deadline(), None);
    }

    #[test]
    fn a_zero_window_sends_whatever_is_there() {
        let mut batcher = Batcher::new(BatchLimits::new(10, Duration::ZERO));
        batcher.push(1, 1, ms(5));
        assert_eq!(batcher.poll(ms(5)), Some(vec![1]));
    }

    // semantics.md §1: a batch is sent at whichever comes first, including 6 MB.
    #[test]
    fn the_byte_cap_closes_a_batch_before_it_overflows() {
        let limits = BatchLimits {
            max_records: 100,
            max_bytes: 100,
            window: ms(1000),
        };
        let mut batcher = Batcher::new(limits);
        assert!(batcher.push('a', 60, ms(0)).ready.is_empty());
        let result = batcher.push('b', 60, ms(1));
        assert_eq!(result.ready, vec![vec!['a']]);
        assert_eq!(batcher.take(), Some(vec!['b']));
    }

    #[test]
    fn a_record_larger_than_an_invocation_is_handed_back() {
        let limits = BatchLimits {
            max_records: 10,
            max_bytes: 100,
            window: ms(0),
        };
        let mut batcher = Batcher::new(limits);
        batcher.push(1, 50, ms(0));
        let result = batcher.push(2, 101, ms(0));
        assert_eq!(result.too_large, Some(2));
        assert!(result.ready.is_empty());
        assert_eq!(batcher.take(), Some(vec![1]));
    }

    proptest! {
        // Every record pushed comes out exactly once, in order, in batches within the limits.
        #[test]
        fn batches_keep_every_record_in_order_within_limits(
            sizes in proptest::collection::vec(1usize..150, 0..200),
            max_records in 1usize..20,
        ) {
            let limits = BatchLimits { max_records, max_bytes: 300, window: ms(10) };
            let mut batcher = Batcher::new(limits);
            let mut out: Vec<Vec<(usize, usize)>> = Vec::new();
            for (index, size) in sizes.iter().enumerate() {
                let result = batcher.push((index, *size), *size, ms(index as u64));
                prop_assert!(result.too_large.is_none());
                out.extend(result.ready);
                if let Some(batch) = batcher.poll(ms(index as u64)) { out.push(batch); }
            }
            out.extend(batcher.take());
            let flattened: Vec<usize> = out.iter().flatten().map(|(index, _)| *index).collect();
            prop_assert_eq!(flattened, (0..sizes.len()).collect::<Vec<_>>());
            for batch in &out {
                prop_assert!(!batch.is_empty());
                prop_assert!(batch.len() <= max_records);
                prop_assert!(batch.iter().map(|(_, size)| size).sum::<usize>() <= 300);
            }
        }
    }
}
