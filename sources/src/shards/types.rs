//! What a stream reader hands out: shards, iterator starts, pages and read errors.

use crate::queue::SourceError;
use crate::record::Record;

/// One shard as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    /// The shard it was split from, or the two it was merged from (Kinesis); none for a root.
    pub parents: Vec<String>,
    /// Set once the shard is closed (split or stream disabled): no records after it.
    pub ending_sequence_number: Option<String>,
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IteratorStart {
    TrimHorizon,
    Latest,
    AfterSequence(String),
    /// The first record that arrived at or after this time since the Unix epoch. A kind without
    /// a timestamp iterator (DynamoDB Streams) starts at the trim horizon, and the runtime skips
    /// the records before it.
    AtTimestamp(std::time::Duration),
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
    /// The shard's read limits were exceeded (Kinesis' ProvisionedThroughputExceededException,
    /// KMS throttling): the iterator stays good; read again after a pause.
    #[error("reads of the shard are throttled: {0}")]
    Throttled(String),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// One page of a shard.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Record>,
    /// `None` once the shard is closed and fully read.
    pub next_iterator: Option<String>,
    /// How far the page is behind the shard's newest record, when the stream says (Kinesis'
    /// `MillisBehindLatest`).
    pub millis_behind_latest: Option<u64>,
    /// The records' data in bytes, as the stream's read budget counts it.
    pub bytes: usize,
    /// Whether the page reaches the shard's newest record as of the read, when the reader knows
    /// better than `millis_behind_latest` tells (an enhanced fan-out event that waited in a
    /// buffer says nothing about now); `None` leaves it to the runtime.
    pub at_tip: Option<bool>,
}
