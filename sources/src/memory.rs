//! An in-memory [`Queue`] with SQS's delivery semantics, for unit tests of the runtime that run
//! in milliseconds under tokio's paused clock (feature `testing`).
//!
//! What it keeps of SQS:
//! - a received message is hidden for the queue's visibility timeout, then comes back with its
//!   receive count raised, unless it was deleted (at-least-once);
//! - each receive gives the message a new receipt handle; a delete or visibility change with
//!   any other handle fails for that entry (`ReceiptHandleIsInvalid`), as after a redelivery;
//! - `change_visibility` hides a message for the given time from now (0: visible at once);
//! - FIFO: messages of one group come in send order, and none while an earlier message of the
//!   group is in flight;
//! - `receive` waits up to `wait` for a first message, then returns what is visible (at most
//!   `max_messages`); records are exactly what [`crate::sqs`] makes of an SQS message.
//!
//! Every delete and visibility change is kept in [`MemoryQueue::calls`], in order, so that a
//! test can check the order acknowledgements were made in.
//!
//! [`MemoryStream`] is a stream of shards with the reading semantics of DynamoDB Streams and
//! Kinesis: iterators that a test can expire, records a test can trim, reads a test can throttle
//! (the iterator stays good), shards that close.

use crate::queue::{DeleteReport, Queue, QueueBacklog, QueueDescription, QueueOpener, SourceError};
use crate::record::{AckToken, Receipt, Record};
use crate::shards::{IteratorStart, OpenStream, Page, ReadError, Shard, ShardReader};
use async_trait::async_trait;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// An acknowledgement made to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCall {
    /// Message ids deleted together.
    Delete(Vec<String>),
    /// Message ids and the visibility set for each, together.
    ChangeVisibility(Vec<(String, Duration)>),
}

#[derive(Debug)]
struct Stored {
    id: String,
    body: String,
    group: Option<String>,
    sent_ms: u64,
    first_receive_ms: Option<u64>,
    receive_count: u32,
    /// Hidden until then (in flight, or delayed).
    hidden_until: Option<Instant>,
    receipt: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<Stored>,
    next_id: u64,
    calls: Vec<QueueCall>,
}

/// See the module docs.
pub struct MemoryQueue {
    description: QueueDescription,
    state: Mutex<State>,
    /// Woken when a message may have become receivable (sent, released, its group freed).
    sent: Notify,
}

fn now_ms() -> u64 {
    crate::now_since_epoch().as_millis() as u64
}

impl MemoryQueue {
    /// A standard queue named `name` with this visibility timeout.
    pub fn standard(name: &str, visibility_timeout: Duration) -> Self {
        Self::new(name, false, visibility_timeout)
    }

    /// A FIFO queue (`name` should end in `.fifo`) with this visibility timeout.
    pub fn fifo(name: &str, visibility_timeout: Duration) -> Self {
        Self::new(name, true, visibility_timeout)
    }

    fn new(name: &str, fifo: bool, visibility_timeout: Duration) -> Self {
        Self {
            description: QueueDescription {
                url: format!("memory://queue/{name}"),
                arn: format!("arn:aws:sqs:us-east-1:000000000000:{name}"),
                region: "us-east-1".into(),
                fifo,
                visibility_timeout,
            },
            state: Mutex::default(),
            sent: Notify::new(),
        }
    }

    /// Sends a message; returns its id.
    pub fn send(&self, body: &str) -> String {
        self.send_in_group(body, None)
    }

    /// Sends a message in a FIFO message group; returns its id.
    pub fn send_in_group(&self, body: &str, group: Option<&str>) -> String {
        let mut state = self.state.lock().expect("queue lock");
        state.next_id += 1;
        let id = format!("m-{:04}", state.next_id);
        state.messages.push(Stored {
            id: id.clone(),
            body: body.to_owned(),
            group: group.map(str::to_owned),
            sent_ms: now_ms(),
            first_receive_ms: None,
            receive_count: 0,
            hidden_until: None,
            receipt: None,
        });
        drop(state);
        self.sent.notify_waiters();
        id
    }

    /// Ids of the messages still in the queue (visible, hidden or in flight), in send order.
    pub fn remaining(&self) -> Vec<String> {
        let state = self.state.lock().expect("queue lock");
        state.messages.iter().map(|m| m.id.clone()).collect()
    }

    /// How many messages can be received now.
    pub fn visible(&self) -> usize {
        let now = Instant::now();
        let state = self.state.lock().expect("queue lock");
        state
            .messages
            .iter()
            .filter(|m| m.hidden_until.is_none_or(|until| until <= now))
            .count()
    }

    /// How often the message was received.
    pub fn receive_count(&self, id: &str) -> Option<u32> {
        let state = self.state.lock().expect("queue lock");
        state
            .messages
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.receive_count)
    }

    /// Every acknowledgement made so far, in order.
    pub fn calls(&self) -> Vec<QueueCall> {
        self.state.lock().expect("queue lock").calls.clone()
    }

    /// Takes what can be received now.
    fn take_visible(&self, max_messages: usize) -> Vec<Record> {
        let now = Instant::now();
        let visibility = self.description.visibility_timeout;
        let fifo = self.description.fifo;
        let mut state = self.state.lock().expect("queue lock");
        // As in SQS, a group with a message in flight gives nothing to another receive; one
        // receive may take several messages of a free group, in order.
        let blocked_groups: Vec<String> = if fifo {
            state
                .messages
                .iter()
                .filter(|m| m.hidden_until.is_some_and(|until| until > now))
                .filter_map(|m| m.group.clone())
                .collect()
        } else {
            Vec::new()
        };
        let mut taken = Vec::new();
        for message in state.messages.iter_mut() {
            if taken.len() >= max_messages {
                break;
            }
            if message.hidden_until.is_some_and(|until| until > now) {
                continue;
            }
            if let Some(group) = &message.group
                && blocked_groups.contains(group)
            {
                continue;
            }
            message.receive_count += 1;
            let received_ms = now_ms();
            message.first_receive_ms.get_or_insert(received_ms);
            message.hidden_until = Some(now + visibility);
            let receipt = format!("{}-r{}", message.id, message.receive_count);
            message.receipt = Some(receipt.clone());
            taken.push(self.record(message, &receipt));
        }
        taken
    }

    fn record(&self, message: &Stored, receipt: &str) -> Record {
        let mut builder = Message::builder()
            .message_id(&message.id)
            .receipt_handle(receipt)
            .body(&message.body)
            .attributes(
                MessageSystemAttributeName::ApproximateReceiveCount,
                message.receive_count.to_string(),
            )
            .attributes(
                MessageSystemAttributeName::SentTimestamp,
                message.sent_ms.to_string(),
            )
            .attributes(
                MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
                message
                    .first_receive_ms
                    .unwrap_or(message.sent_ms)
                    .to_string(),
            );
        if let Some(group) = &message.group {
            builder = builder.attributes(MessageSystemAttributeName::MessageGroupId, group);
        }
        crate::sqs::record_from_message(&self.description, &builder.build())
    }

    /// Applies `apply` to the message each receipt names; entries whose receipt is not the
    /// message's latest fail.
    fn with_receipts(
        &self,
        receipts: &[&Receipt],
        mut apply: impl FnMut(&mut State, usize),
    ) -> Vec<(String, String)> {
        let mut state = self.state.lock().expect("queue lock");
        let mut failed = Vec::new();
        for receipt in receipts {
            let AckToken::Sqs { receipt_handle } = &receipt.ack else {
                failed.push((receipt.id.clone(), "not an SQS receipt".to_owned()));
                continue;
            };
            match state
                .messages
                .iter()
                .position(|m| m.receipt.as_deref() == Some(receipt_handle.as_str()))
            {
                Some(index) => apply(&mut state, index),
                None => failed.push((
                    receipt.id.clone(),
                    "ReceiptHandleIsInvalid: the receipt handle is not the message's latest"
                        .to_owned(),
                )),
            }
        }
        failed
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn description(&self) -> &QueueDescription {
        &self.description
    }

    async fn receive(
        &self,
        max_messages: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, SourceError> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so a send in between is not missed.
            let sent = self.sent.notified();
            let taken = self.take_visible(max_messages.max(1));
            if !taken.is_empty() || Instant::now() >= deadline {
                return Ok(taken);
            }
            // The next time a hidden message comes back (a message already back but held by
            // its FIFO group waits for a delete or visibility change, which wakes this).
            let next_visible = {
                let now = Instant::now();
                let state = self.state.lock().expect("queue lock");
                state
                    .messages
                    .iter()
                    .filter_map(|m| m.hidden_until)
                    .filter(|until| *until > now)
                    .min()
            };
            let until = next_visible.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                _ = sent => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn delete(&self, receipts: &[&Receipt]) -> Result<DeleteReport, SourceError> {
        if receipts.is_empty() {
            return Ok(DeleteReport::default());
        }
        let mut deleted = Vec::new();
        let failed = self.with_receipts(receipts, |state, index| {
            deleted.push(state.messages.remove(index).id);
        });
        let count = deleted.len();
        if !deleted.is_empty() {
            self.state
                .lock()
                .expect("queue lock")
                .calls
                .push(QueueCall::Delete(deleted));
            // A delete can free a FIFO group.
            self.sent.notify_waiters();
        }
        Ok(DeleteReport {
            deleted: count,
            failed,
        })
    }

    async fn change_visibility(
        &self,
        changes: &[(&Receipt, Duration)],
    ) -> Result<Vec<(String, String)>, SourceError> {
        let now = Instant::now();
        let mut changed = Vec::new();
        let mut failed = Vec::new();
        for (receipt, visibility) in changes {
            let entry_failed = self.with_receipts(&[receipt], |state, index| {
                let message = &mut state.messages[index];
                message.hidden_until = Some(now + *visibility);
                changed.push((message.id.clone(), *visibility));
            });
            failed.extend(entry_failed);
        }
        if !changed.is_empty() {
            self.state
                .lock()
                .expect("queue lock")
                .calls
                .push(QueueCall::ChangeVisibility(changed));
        }
        self.sent.notify_waiters();
        Ok(failed)
    }

    /// Hidden messages count as in flight: the memory queue has no send delays.
    async fn backlog(&self) -> Result<QueueBacklog, SourceError> {
        // Both counts under one lock, so they always add up to the queue's messages.
        let now = Instant::now();
        let state = self.state.lock().expect("queue lock");
        let total = state.messages.len() as u64;
        let visible = state
            .messages
            .iter()
            .filter(|m| m.hidden_until.is_none_or(|until| until <= now))
            .count() as u64;
        Ok(QueueBacklog {
            visible,
            in_flight: total - visible,
            delayed: 0,
        })
    }
}

/// A stream of shards in memory (see the module docs). Records are `{"n": <index>}`, their
/// sequence numbers the shard's record index (`"1"`, `"2"`, ...).
pub struct MemoryStream {
    shards: Mutex<Vec<MemoryShard>>,
    /// Iterators from an older generation have expired.
    generation: Mutex<u64>,
    /// Iterator requests still to fail.
    failing_iterators: Mutex<u32>,
    /// Reads still to be throttled.
    throttled_reads: Mutex<u32>,
}

struct MemoryShard {
    id: String,
    parents: Vec<String>,
    /// Sequence numbers 1..=len.
    len: u64,
    /// Records with a sequence number at or below this are trimmed.
    trimmed_through: u64,
    closed: bool,
}

impl Default for MemoryStream {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStream {
    pub fn new() -> Self {
        Self {
            shards: Mutex::default(),
            generation: Mutex::new(0),
            failing_iterators: Mutex::new(0),
            throttled_reads: Mutex::new(0),
        }
    }

    /// Adds an open shard.
    pub fn add_shard(&self, id: &str, parent: Option<&str>) {
        self.shards.lock().expect("stream lock").push(MemoryShard {
            id: id.to_owned(),
            parents: parent.into_iter().map(str::to_owned).collect(),
            len: 0,
            trimmed_through: 0,
            closed: false,
        });
    }

    /// Adds an open shard merged from `parent` and `adjacent` (Kinesis' MergeShards).
    pub fn add_merged_shard(&self, id: &str, parent: &str, adjacent: &str) {
        self.shards.lock().expect("stream lock").push(MemoryShard {
            id: id.to_owned(),
            parents: vec![parent.to_owned(), adjacent.to_owned()],
            len: 0,
            trimmed_through: 0,
            closed: false,
        });
    }

    fn with_shard<T>(&self, id: &str, f: impl FnOnce(&mut MemoryShard) -> T) -> Option<T> {
        let mut shards = self.shards.lock().expect("stream lock");
        shards.iter_mut().find(|s| s.id == id).map(f)
    }

    /// Appends `count` records to a shard.
    pub fn append(&self, shard_id: &str, count: u64) {
        self.with_shard(shard_id, |s| s.len += count)
            .expect("a known shard");
    }

    /// Trims a shard's records through sequence number `through`.
    pub fn trim(&self, shard_id: &str, through: u64) {
        self.with_shard(shard_id, |s| s.trimmed_through = through)
            .expect("a known shard");
    }

    /// Closes a shard: once read to its end, reads return no next iterator.
    pub fn close(&self, shard_id: &str) {
        self.with_shard(shard_id, |s| s.closed = true)
            .expect("a known shard");
    }

    /// The next `count` iterator requests fail (a throttled or unreachable stream).
    pub fn fail_iterators(&self, count: u32) {
        *self.failing_iterators.lock().expect("stream lock") = count;
    }

    /// The next `count` reads are throttled (Kinesis' ProvisionedThroughputExceededException).
    pub fn throttle_reads(&self, count: u32) {
        *self.throttled_reads.lock().expect("stream lock") = count;
    }

    /// Expires every iterator handed out so far.
    pub fn expire_iterators(&self) {
        *self.generation.lock().expect("stream lock") += 1;
    }

    fn generation(&self) -> u64 {
        *self.generation.lock().expect("stream lock")
    }

    fn record(shard_id: &str, sequence: u64) -> Record {
        let event = serde_json::value::to_raw_value(&serde_json::json!({ "n": sequence }))
            .expect("a JSON value");
        Record::new(
            Receipt {
                id: sequence.to_string(),
                ack: AckToken::Stream {
                    shard_id: shard_id.to_owned(),
                },
            },
            Some(sequence.to_string()),
            Duration::ZERO,
            Duration::ZERO,
            1,
            event,
        )
    }
}

#[async_trait]
impl ShardReader for MemoryStream {
    fn stream_arn(&self) -> &str {
        "arn:aws:dynamodb:us-east-1:000000000000:table/memory/stream/1"
    }

    fn region(&self) -> &str {
        "us-east-1"
    }

    async fn list_shards(&self) -> Result<Vec<Shard>, SourceError> {
        let shards = self.shards.lock().expect("stream lock");
        Ok(shards
            .iter()
            .map(|s| Shard {
                id: s.id.clone(),
                parents: s.parents.clone(),
                ending_sequence_number: s.closed.then(|| s.len.to_string()),
            })
            .collect())
    }

    async fn iterator(&self, shard_id: &str, start: &IteratorStart) -> Result<String, ReadError> {
        {
            let mut failing = self.failing_iterators.lock().expect("stream lock");
            if *failing > 0 {
                *failing -= 1;
                return Err(ReadError::Source(SourceError::Stream {
                    stream: "memory".into(),
                    operation: "GetShardIterator",
                    message: "LimitExceededException: a failure the test asked for".into(),
                }));
            }
        }
        let generation = self.generation();
        let (trimmed_through, len) = self
            .with_shard(shard_id, |s| (s.trimmed_through, s.len))
            .ok_or_else(|| missing(shard_id))?;
        // The index of the next record to read.
        let next = match start {
            // Memory records arrive at time zero: every one is at or after any timestamp.
            IteratorStart::TrimHorizon | IteratorStart::AtTimestamp(_) => trimmed_through + 1,
            IteratorStart::Latest => len + 1,
            IteratorStart::AfterSequence(sequence) => {
                let after: u64 = sequence.parse().unwrap_or(0);
                if after < trimmed_through {
                    return Err(ReadError::Trimmed(format!(
                        "shard {shard_id}: records through {trimmed_through} are trimmed"
                    )));
                }
                after + 1
            }
        };
        Ok(format!("{generation}/{shard_id}/{next}"))
    }

    async fn read(&self, shard_id: &str, iterator: &str, limit: i32) -> Result<Page, ReadError> {
        let mut parts = iterator.splitn(3, '/');
        let generation: u64 = parts.next().and_then(|g| g.parse().ok()).unwrap_or(0);
        let _shard = parts.next();
        let next: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
        if generation != self.generation() {
            return Err(ReadError::ExpiredIterator);
        }
        {
            let mut throttled = self.throttled_reads.lock().expect("stream lock");
            if *throttled > 0 {
                *throttled -= 1;
                return Err(ReadError::Throttled(format!(
                    "shard {shard_id}: a throttle the test asked for"
                )));
            }
        }
        let (trimmed_through, len, closed) = self
            .with_shard(shard_id, |s| (s.trimmed_through, s.len, s.closed))
            .ok_or_else(|| missing(shard_id))?;
        if next <= trimmed_through {
            return Err(ReadError::Trimmed(format!(
                "shard {shard_id}: records through {trimmed_through} are trimmed"
            )));
        }
        let last = len.min(next + limit.max(1) as u64 - 1);
        let records: Vec<Record> = (next..=last).map(|n| Self::record(shard_id, n)).collect();
        let bytes = records.iter().map(|r| r.event.get().len()).sum();
        let next_iterator = if closed && last >= len {
            None
        } else {
            Some(format!("{generation}/{shard_id}/{}", last + 1))
        };
        Ok(Page {
            records,
            next_iterator,
            millis_behind_latest: None,
            bytes,
            at_tip: None,
        })
    }
}

fn missing(shard_id: &str) -> ReadError {
    ReadError::Source(SourceError::Stream {
        stream: "memory".into(),
        operation: "GetShardIterator",
        message: format!("ResourceNotFoundException: no shard {shard_id}"),
    })
}

/// Opens `stream`, whatever stream is asked for.
pub fn stream_opener(stream: Arc<MemoryStream>) -> OpenStream {
    Arc::new(move || {
        let stream = stream.clone();
        Box::pin(async move { Ok(stream as Arc<dyn ShardReader>) })
    })
}

/// Opens one memory queue by its URL (`memory://queue/<name>`).
pub struct MemoryOpener(pub Arc<MemoryQueue>);

#[async_trait]
impl QueueOpener for MemoryOpener {
    async fn open(&self, queue_url: &str) -> Result<Arc<dyn Queue>, SourceError> {
        if queue_url == self.0.description.url {
            Ok(self.0.clone())
        } else {
            Err(SourceError::Queue {
                queue_url: queue_url.to_owned(),
                operation: "GetQueueAttributes",
                message: "AWS.SimpleQueueService.NonExistentQueue: no such memory queue".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISIBILITY: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn an_unacknowledged_message_comes_back_after_its_visibility_timeout() {
        let queue = MemoryQueue::standard("q", VISIBILITY);
        let id = queue.send("hello");
        let first = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attempt, 1);
        // Hidden while in flight.
        tokio::time::advance(VISIBILITY - Duration::from_secs(1)).await;
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        // Back once the timeout ran out, with its receive count raised and a new receipt.
        tokio::time::advance(Duration::from_secs(1)).await;
        let again = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id(), id);
        assert_eq!(again[0].attempt, 2);
        assert_ne!(again[0].receipt, first[0].receipt);
        // The first receipt is stale now.
        let report = queue.delete(&[&first[0].receipt]).await.unwrap();
        assert_eq!(report.deleted, 0);
        assert_eq!(report.failed.len(), 1);
        let report = queue.delete(&[&again[0].receipt]).await.unwrap();
        assert_eq!(report.deleted, 1);
        assert!(queue.remaining().is_empty());
        tokio::time::advance(VISIBILITY * 2).await;
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_visibility_change_hides_for_that_long_and_zero_releases_at_once() {
        let queue = MemoryQueue::standard("q", VISIBILITY);
        queue.send("a");
        queue.send("b");
        let received = queue.receive(10, Duration::ZERO).await.unwrap();
        queue
            .change_visibility(&[
                (&received[0].receipt, Duration::ZERO),
                (&received[1].receipt, Duration::from_secs(5)),
            ])
            .await
            .unwrap();
        let now = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].id(), received[0].id());
        // A long poll waits for the other one to come back.
        let started = Instant::now();
        let later = queue.receive(10, Duration::from_secs(20)).await.unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].id(), received[1].id());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(
            queue.calls(),
            vec![QueueCall::ChangeVisibility(vec![
                (received[0].id().to_owned(), Duration::ZERO),
                (received[1].id().to_owned(), Duration::from_secs(5)),
            ])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_returns_as_soon_as_a_message_is_sent_or_when_it_times_out() {
        let queue = std::sync::Arc::new(MemoryQueue::standard("q", VISIBILITY));
        let started = Instant::now();
        assert!(
            queue
                .receive(10, Duration::from_secs(20))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        let sender = {
            let queue = queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                queue.send("late");
            })
        };
        let started = Instant::now();
        let received = queue.receive(10, Duration::from_secs(20)).await.unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_backlog_counts_visible_and_received_messages_until_deleted() {
        let queue = MemoryQueue::standard("q", Duration::from_secs(30));
        for n in 0..5 {
            queue.send(&format!("m{n}"));
        }
        let received = queue.receive(2, Duration::ZERO).await.unwrap();
        assert_eq!(received.len(), 2);
        let backlog = queue.backlog().await.unwrap();
        assert_eq!((backlog.visible, backlog.in_flight), (3, 2));
        // Not deleted, they are visible again once their visibility timeout is over.
        tokio::time::advance(Duration::from_secs(31)).await;
        let backlog = queue.backlog().await.unwrap();
        assert_eq!((backlog.visible, backlog.in_flight), (5, 0));
        let again = queue.receive(2, Duration::ZERO).await.unwrap();
        let receipts: Vec<&Receipt> = again.iter().map(|r| &r.receipt).collect();
        queue.delete(&receipts).await.unwrap();
        let backlog = queue.backlog().await.unwrap();
        assert_eq!((backlog.visible, backlog.in_flight), (3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fifo_group_is_delivered_in_order_one_in_flight_at_a_time() {
        let queue = MemoryQueue::fifo("q.fifo", VISIBILITY);
        let a1 = queue.send_in_group("a1", Some("a"));
        let a2 = queue.send_in_group("a2", Some("a"));
        let b1 = queue.send_in_group("b1", Some("b"));
        let a3 = queue.send_in_group("a3", Some("a"));
        let first = queue.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(first[0].id(), a1);
        assert_eq!(first[0].ordering_key.as_deref(), Some("a"));
        // a2 and a3 wait behind a1 in flight; b1 does not.
        let second = queue.receive(10, Duration::ZERO).await.unwrap();
        let ids: Vec<&str> = second.iter().map(Record::id).collect();
        assert_eq!(ids, vec![b1.as_str()]);
        queue.delete(&[&first[0].receipt]).await.unwrap();
        // Once the group is free, one receive takes its messages in order.
        let third = queue.receive(10, Duration::ZERO).await.unwrap();
        let ids: Vec<&str> = third.iter().map(Record::id).collect();
        assert_eq!(ids, vec![a2.as_str(), a3.as_str()]);
    }

    #[tokio::test]
    async fn records_have_the_shape_of_lambda_sqs_records() {
        let queue = MemoryQueue::standard("q", VISIBILITY);
        queue.send(r#"{"n":1}"#);
        let record = queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
        let event: serde_json::Value = serde_json::from_str(record.event.get()).unwrap();
        assert_eq!(event["body"], r#"{"n":1}"#);
        assert_eq!(event["eventSource"], "aws:sqs");
        assert_eq!(event["attributes"]["ApproximateReceiveCount"], "1");
        assert_eq!(
            event["eventSourceARN"],
            "arn:aws:sqs:us-east-1:000000000000:q"
        );
    }

    #[tokio::test]
    async fn the_opener_opens_its_queue_by_url_and_nothing_else() {
        let queue = Arc::new(MemoryQueue::standard("q", VISIBILITY));
        let opener = MemoryOpener(queue.clone());
        let opened = opener.open("memory://queue/q").await.unwrap();
        assert_eq!(opened.description().url, "memory://queue/q");
        assert!(opener.open("memory://queue/other").await.is_err());
    }

    mod stream {
        use super::super::*;
        use crate::shards::{CursorEvent, CursorRead, ShardCursor};

        async fn read_all(stream: &MemoryStream, cursor: &mut ShardCursor) -> Vec<String> {
            let mut read = Vec::new();
            loop {
                match cursor.read(stream, 2).await.unwrap() {
                    CursorRead::Page { records, end, .. } => {
                        if records.is_empty() && !end {
                            return read;
                        }
                        read.extend(records.iter().map(|r| r.id().to_owned()));
                        if end {
                            return read;
                        }
                    }
                    CursorRead::Renewing | CursorRead::Throttled { .. } => {}
                }
            }
        }

        #[tokio::test]
        async fn a_cursor_reads_a_shard_in_pages_to_its_end() {
            let stream = MemoryStream::new();
            stream.add_shard("s1", None);
            stream.append("s1", 5);
            stream.close("s1");
            let mut cursor = ShardCursor::new("s1", IteratorStart::TrimHorizon);
            assert_eq!(
                read_all(&stream, &mut cursor).await,
                ["1", "2", "3", "4", "5"]
            );
            let shards = stream.list_shards().await.unwrap();
            assert_eq!(shards[0].ending_sequence_number.as_deref(), Some("5"));
        }

        #[tokio::test]
        async fn a_throttled_read_keeps_its_place_and_reads_on_from_there() {
            let stream = MemoryStream::new();
            stream.add_shard("s1", None);
            stream.append("s1", 4);
            stream.close("s1");
            let mut cursor = ShardCursor::new("s1", IteratorStart::TrimHorizon);
            let CursorRead::Page { records, .. } = cursor.read(&stream, 2).await.unwrap() else {
                panic!("a page")
            };
            assert_eq!(records.len(), 2);
            stream.throttle_reads(2);
            for _ in 0..2 {
                assert!(matches!(
                    cursor.read(&stream, 2).await.unwrap(),
                    CursorRead::Throttled { .. }
                ));
            }
            assert!(cursor.take_events().is_empty(), "a throttle renews nothing");
            assert_eq!(read_all(&stream, &mut cursor).await, ["3", "4"]);
        }

        #[tokio::test]
        async fn an_expired_iterator_is_renewed_after_the_last_record_read() {
            let stream = MemoryStream::new();
            stream.add_shard("s1", None);
            stream.append("s1", 4);
            let mut cursor = ShardCursor::new("s1", IteratorStart::TrimHorizon);
            let CursorRead::Page { records, .. } = cursor.read(&stream, 2).await.unwrap() else {
                panic!("a page")
            };
            assert_eq!(records.len(), 2);
            stream.expire_iterators();
            assert!(matches!(
                cursor.read(&stream, 2).await.unwrap(),
                CursorRead::Renewing
            ));
            assert_eq!(
                cursor.take_events(),
                [CursorEvent::ExpiredIterator {
                    after: Some("2".into())
                }]
            );
            // Nothing skipped, nothing twice.
            assert_eq!(read_all(&stream, &mut cursor).await, ["3", "4"]);
        }

        #[tokio::test]
        async fn trimmed_records_are_skipped_to_the_horizon_and_the_rest_read() {
            let stream = MemoryStream::new();
            stream.add_shard("s1", None);
            stream.append("s1", 6);
            // A checkpoint after record 1; records through 3 are then trimmed.
            let mut cursor = ShardCursor::new("s1", IteratorStart::AfterSequence("1".into()));
            stream.trim("s1", 3);
            let read = read_all(&stream, &mut cursor).await;
            assert_eq!(read, ["4", "5", "6"]);
            assert!(matches!(
                cursor.take_events().as_slice(),
                [CursorEvent::Trimmed { .. }]
            ));
            // Trimmed under an open iterator: the next read resumes at the horizon.
            stream.append("s1", 4);
            stream.trim("s1", 8);
            let read = read_all(&stream, &mut cursor).await;
            assert_eq!(read, ["9", "10"]);
        }

        // Review of issue 17: a shard started at `Latest` that hit trimmed data, and whose request
        // for a trim-horizon iterator then failed, reopened at `Latest` and skipped the records
        // between the horizon and the newest one.
        #[tokio::test]
        async fn after_trimmed_data_a_latest_shard_resumes_at_the_horizon_even_after_a_failure() {
            let stream = MemoryStream::new();
            stream.add_shard("s1", None);
            stream.append("s1", 5);
            let mut cursor = ShardCursor::new("s1", IteratorStart::Latest);
            assert!(read_all(&stream, &mut cursor).await.is_empty());
            stream.append("s1", 3);
            stream.trim("s1", 6);
            stream.fail_iterators(1);
            assert!(matches!(
                cursor.read(&stream, 2).await.unwrap(),
                CursorRead::Renewing
            ));
            assert_eq!(read_all(&stream, &mut cursor).await, ["7", "8"]);
        }

        #[tokio::test]
        async fn a_failed_iterator_request_leaves_the_place_unchanged() {
            let stream = MemoryStream::new();
            let mut cursor = ShardCursor::new("missing", IteratorStart::TrimHorizon);
            assert!(cursor.read(&stream, 2).await.is_err());
            stream.add_shard("missing", None);
            stream.append("missing", 1);
            assert_eq!(read_all(&stream, &mut cursor).await, ["1"]);
        }
    }
}
