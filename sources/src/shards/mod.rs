//! Sharded streams (DynamoDB Streams, Kinesis Data Streams): what every stream kind reads through.
//!
//! - [`ShardReader`] is a stream's API as a trait: its shards with their parents, iterators, and
//!   pages of [`Record`](crate::Record)s. Each kind implements it ([`crate::dynamodb_streams`],
//!   [`crate::kinesis`]; an in-memory stream in tests);
//! - [`ShardCursor`] keeps one shard's place across reads, whatever the kind: it renews expired
//!   iterators after the last record read, resumes at the trim horizon past trimmed data, and
//!   keeps its iterator through a throttled read;
//! - [`OpenStream`] finds a mapping's stream, so the runtime holds no AWS client.
//!
//! Sequence numbers can have more digits than any integer type holds (dependencies.md trap 5):
//! compare them with [`compare_sequence_numbers`].

mod cursor;
mod types;

pub use cursor::{CursorEvent, CursorRead, ShardCursor, ShardReader};
pub use types::{IteratorStart, Page, ReadError, Shard};

use crate::queue::SourceError;
use std::cmp::Ordering;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Orders two sequence numbers of one shard: by length, then as text.
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The region an ARN names (`arn:aws:<service>:<region>:...`), else the client's.
pub fn region_of(arn: &str, client_region: Option<String>) -> String {
    arn.split(':')
        .nth(3)
        .filter(|region| !region.is_empty())
        .map(str::to_owned)
        .or(client_region)
        .unwrap_or_default()
}

/// Finds a mapping's stream: built by each kind from its clients and its source settings, so
/// the shard runtime never holds an AWS client and never knows the kind's way of naming a stream.
pub type OpenStream = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn ShardReader>, SourceError>> + Send>>
        + Send
        + Sync,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_by_length_then_text() {
        assert_eq!(compare_sequence_numbers("9", "10"), Ordering::Less);
        assert_eq!(
            compare_sequence_numbers(
                "4000000000000000000000000000000000000001",
                "3999999999999999999999999999999999999999"
            ),
            Ordering::Greater
        );
        assert_eq!(compare_sequence_numbers("12", "12"), Ordering::Equal);
    }
}
