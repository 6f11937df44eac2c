//! What a stream reader hands out: shards, iterator starts, pages and read errors.

use crate::queue::SourceError;
use crate::record::Record;

/// One shard as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    pub parent: Option<String>,
    /// Set once the shard is closed (split or stream disabled): no records after it.
    pub ending_sequence_number: Option<String>,
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IteratorStart {
    TrimHorizon,
    Latest,
    AfterSequence(String),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The iterator is older than 15 minutes: get a new one after the last record read.
    #[error("the shard iterator expired")]
    ExpiredIterator,
    /// The iterator points before the trim horizon (records older than 24 hours are gone).
    #[error("the records at the iterator were trimmed from the stream: {0}")]
    Trimmed(String),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// One page of a shard.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Record>,
    /// `None` once the shard is closed and fully read.
    pub next_iterator: Option<String>,
}
