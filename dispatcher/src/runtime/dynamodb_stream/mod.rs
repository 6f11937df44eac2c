//! A DynamoDB Streams mapping: the shard runtime ([`crate::runtime::shards`]) reading a table's
//! stream, with DynamoDB's pacing (about 4 GetRecords per second per shard, semantics.md §2),
//! Lambda's filtering of the whole record, and `DDBStreamBatchInfo` dead letters.

pub mod config;

use self::config::StreamSourceConfig;
use crate::destinations::EnvelopeSource;
use crate::runtime::mapping::{Mapping, SourceClients, StartError, StartMapping};
use crate::runtime::shards::{self, ReadPacing, ShardBatch, ShardSource};
use sluice_policies::FilterSet;
use sluice_sources::Record;
use sluice_sources::shards::OpenStream;
use std::time::Duration;

/// DynamoDB Streams allows about 4 GetRecords per second per shard (semantics.md §2); reads are
/// whole pages, since the lanes cut batches and a read capped at batch_size would cap a shard at
/// 4 batches per second.
pub const PACING: ReadPacing = ReadPacing {
    min_interval: Duration::from_millis(250),
    max_idle_interval: Duration::from_secs(1),
    max_records: sluice_sources::dynamodb_streams::MAX_RECORDS_PER_READ,
    bytes_per_second: None,
};

/// Starts `mapping`, reading `source`; its checkpoints go to `clients.checkpoints`.
pub fn start(
    source: &StreamSourceConfig,
    mapping: Mapping,
    clients: &SourceClients,
) -> Result<StartMapping, StartError> {
    let open = clients
        .dynamodb_streams
        .opener(source.table.clone(), source.stream_arn.clone());
    shards::start(shard_source(source, open), mapping, clients)
}

/// What the shard runtime reads for `source`, finding the stream with `open`.
pub fn shard_source(source: &StreamSourceConfig, open: OpenStream) -> ShardSource {
    ShardSource {
        open,
        settings: source.settings.clone(),
        pacing: PACING,
        passes,
        envelope,
    }
}

/// Lambda filters DynamoDB records on the whole record (eventName, dynamodb, ...).
fn passes(filters: &FilterSet, record: &Record) -> bool {
    serde_json::from_str::<serde_json::Value>(record.event.get())
        .map_or(true, |event| filters.passes(&event))
}

fn envelope(batch: ShardBatch) -> EnvelopeSource {
    EnvelopeSource::DynamodbStream {
        stream_arn: batch.stream_arn,
        shard_id: batch.shard_id,
        sequence_numbers: batch.sequence_numbers,
        first_arrival: batch.first_arrival,
        last_arrival: batch.last_arrival,
    }
}
