//! Reading one shard: a [`ShardReader`] (the stream's API: shards, iterators, pages) and a
//! [`ShardCursor`] that keeps a shard's place across reads.
//!
//! The cursor guarantees, for every reader:
//! - each call reads at most one page, continuing where the last page ended;
//! - an iterator that expired is renewed after the last record read, so no record is skipped or
//!   read twice ([`CursorEvent::ExpiredIterator`]);
//! - when the records past its place were trimmed (older than the stream's retention), it resumes
//!   at the trim horizon ([`CursorEvent::Trimmed`]): what was trimmed is gone, the rest is read;
//! - a throttled read keeps its iterator: the next call reads there again
//!   ([`CursorRead::Throttled`]);
//! - a failed call leaves its place unchanged: the next call tries again from there.

use super::types::{IteratorStart, Page, ReadError, Shard};
use crate::queue::SourceError;
use crate::record::Record;
use async_trait::async_trait;

/// A stream's shards, iterators and pages (DynamoDB Streams, Kinesis; an in-memory stream in
/// tests).
#[async_trait]
pub trait ShardReader: Send + Sync + 'static {
    /// The stream's ARN, named in dead letters.
    fn stream_arn(&self) -> &str;

    /// The stream's region, named in dead letters.
    fn region(&self) -> &str;

    /// Every shard of the stream, parents before children.
    async fn list_shards(&self) -> Result<Vec<Shard>, SourceError>;

    /// A new iterator for `shard_id` starting at `start`.
    async fn iterator(&self, shard_id: &str, start: &IteratorStart) -> Result<String, ReadError>;

    /// One page at `iterator`, at most `limit` records.
    async fn read(&self, shard_id: &str, iterator: &str, limit: i32) -> Result<Page, ReadError>;

    /// The runtime stopped reading `shard_id` here (finished, handed over, stopping): anything
    /// held for it (an enhanced fan-out subscription) is let go.
    async fn release(&self, _shard_id: &str) {}
}

/// Something the cursor did on its own that the caller reports (a metric, a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorEvent {
    /// The iterator expired; it is renewed after `after` (the last record read), if any.
    ExpiredIterator { after: Option<String> },
    /// Records past the cursor's place were trimmed; it resumes at the trim horizon.
    Trimmed { detail: String },
}

/// What one read gave.
#[derive(Debug)]
pub enum CursorRead {
    /// Records in shard order (maybe none), and whether the shard is closed and fully read.
    Page {
        records: Vec<Record>,
        end: bool,
        /// The stream's `MillisBehindLatest`, when it tells.
        millis_behind_latest: Option<u64>,
        /// The records' data in bytes (the read budget's measure).
        bytes: usize,
        /// The reader's own word on whether the page reaches the shard's newest record.
        at_tip: Option<bool>,
    },
    /// Nothing was read: the shard's read limit was exceeded; read again after a pause.
    Throttled { detail: String },
    /// Nothing was read: the iterator expired and the next call renews it.
    Renewing,
}

/// One shard's place (see the module docs).
#[derive(Debug, Clone)]
pub struct ShardCursor {
    shard_id: String,
    start: IteratorStart,
    last_read: Option<String>,
    iterator: Option<String>,
    events: Vec<CursorEvent>,
}

impl ShardCursor {
    /// A cursor at `start` (after a checkpoint, at the trim horizon or at the latest record).
    pub fn new(shard_id: &str, start: IteratorStart) -> Self {
        let last_read = match &start {
            IteratorStart::AfterSequence(sequence) => Some(sequence.clone()),
            _ => None,
        };
        Self {
            shard_id: shard_id.to_owned(),
            start,
            last_read,
            iterator: None,
            events: Vec::new(),
        }
    }

    /// The sequence number of the last record read, if any.
    pub fn last_read(&self) -> Option<&str> {
        self.last_read.as_deref()
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<CursorEvent> {
        std::mem::take(&mut self.events)
    }

    fn trimmed(&mut self, detail: String) {
        self.events.push(CursorEvent::Trimmed { detail });
        self.last_read = None;
        // From now on the place is the trim horizon, even for a shard started at `Latest`: a
        // failed call after this must not reopen at the newest record and skip the rest.
        self.start = IteratorStart::TrimHorizon;
    }

    /// Reads the next page (see the module docs).
    pub async fn read(
        &mut self,
        reader: &dyn ShardReader,
        limit: i32,
    ) -> Result<CursorRead, SourceError> {
        let shard_id = self.shard_id.clone();
        let current = match self.iterator.take() {
            Some(current) => current,
            None => {
                let from = match &self.last_read {
                    Some(sequence) => IteratorStart::AfterSequence(sequence.clone()),
                    None => self.start.clone(),
                };
                match reader.iterator(&shard_id, &from).await {
                    Ok(fresh) => fresh,
                    Err(ReadError::Trimmed(detail)) => {
                        self.trimmed(detail);
                        reader
                            .iterator(&shard_id, &IteratorStart::TrimHorizon)
                            .await
                            .map_err(|error| into_source(error, reader, &shard_id))?
                    }
                    Err(ReadError::Throttled(detail)) => {
                        return Ok(CursorRead::Throttled { detail });
                    }
                    Err(error) => return Err(into_source(error, reader, &shard_id)),
                }
            }
        };
        match reader.read(&shard_id, &current, limit).await {
            Ok(page) => {
                if let Some(last) = page.records.last() {
                    self.last_read = Some(last.id().to_owned());
                }
                let end = page.next_iterator.is_none();
                self.iterator = page.next_iterator;
                Ok(CursorRead::Page {
                    records: page.records,
                    end,
                    millis_behind_latest: page.millis_behind_latest,
                    bytes: page.bytes,
                    at_tip: page.at_tip,
                })
            }
            Err(ReadError::Throttled(detail)) => {
                self.iterator = Some(current);
                Ok(CursorRead::Throttled { detail })
            }
            Err(ReadError::ExpiredIterator) => {
                self.events.push(CursorEvent::ExpiredIterator {
                    after: self.last_read.clone(),
                });
                Ok(CursorRead::Renewing)
            }
            Err(ReadError::Trimmed(detail)) => {
                self.trimmed(detail);
                // Straight to the horizon; if that fails, the next call asks again.
                self.iterator = reader
                    .iterator(&shard_id, &IteratorStart::TrimHorizon)
                    .await
                    .ok();
                Ok(CursorRead::Renewing)
            }
            // The iterator may still be good; it is renewed after the last record either way.
            Err(error) => Err(into_source(error, reader, &shard_id)),
        }
    }
}

fn into_source(error: ReadError, reader: &dyn ShardReader, shard_id: &str) -> SourceError {
    match error {
        ReadError::Source(error) => error,
        other => SourceError::Stream {
            stream: reader.stream_arn().to_owned(),
            operation: "GetShardIterator",
            message: format!("shard {shard_id}: {other}"),
        },
    }
}
