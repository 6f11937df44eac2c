//! A Kinesis Data Streams mapping: the shard runtime ([`crate::runtime::shards`]) reading a
//! stream, with Kinesis' per-shard limits (5 GetRecords per second and a 2 MB/s read budget per
//! shard, throttled reads backed off), Lambda's filtering on `data` (semantics.md §7) and
//! `KinesisBatchInfo` dead letters. Splits and merges are followed by the lineage rule: a child
//! shard is read once its parents (both, after a merge) are finished.

pub mod config;

use self::config::KinesisSourceConfig;
use crate::destinations::EnvelopeSource;
use crate::runtime::mapping::{Mapping, SourceClients, StartError, StartMapping};
use crate::runtime::shards::{self, ReadPacing, ShardBatch, ShardSource};
use sluice_policies::FilterSet;
use sluice_sources::Record;
use sluice_sources::shards::OpenStream;
use std::time::Duration;

/// Kinesis allows 5 GetRecords per second per shard and 2 MB/s of reads per shard, shared by
/// every standard consumer of the stream; an idle shard is read once a second, as Lambda does
/// (semantics.md §2). A page can be 10 MB: the byte budget then holds the next read back 5 s
/// rather than letting it fail with ProvisionedThroughputExceededException.
pub const PACING: ReadPacing = ReadPacing {
    min_interval: Duration::from_millis(200),
    max_idle_interval: Duration::from_secs(1),
    max_records: sluice_sources::kinesis::MAX_RECORDS_PER_READ,
    bytes_per_second: Some(2 * 1024 * 1024),
};

/// With `deaggregate`, pages of at most 100 Kinesis records: each can be an aggregate of
/// thousands of user records, all held as Lambda records until the lanes take them, so the page
/// bounds memory (100 aggregates of the KPL's default 50 KB are 5 MB of data).
pub const DEAGGREGATING: ReadPacing = ReadPacing {
    max_records: 100,
    ..PACING
};

/// With enhanced fan-out, Kinesis pushes records (2 MB/s per shard for this consumer) and a
/// read waits for the next event itself: the runtime adds no pause of its own.
pub const FAN_OUT: ReadPacing = ReadPacing {
    min_interval: Duration::ZERO,
    max_idle_interval: Duration::ZERO,
    max_records: sluice_sources::kinesis::MAX_RECORDS_PER_READ,
    bytes_per_second: None,
};

/// Starts `mapping`, reading `source`; its checkpoints go to `clients.checkpoints`.
pub fn start(
    source: &KinesisSourceConfig,
    mapping: Mapping,
    clients: &SourceClients,
) -> Result<StartMapping, StartError> {
    let open = clients.kinesis.opener(
        source.stream_name.clone(),
        source.stream_arn.clone(),
        source.invoke_identity_arn.clone(),
        source.deaggregate,
        source.consumer.clone(),
    );
    shards::start(shard_source(source, open), mapping, clients)
}

/// What the shard runtime reads for `source`, finding the stream with `open`.
pub fn shard_source(source: &KinesisSourceConfig, open: OpenStream) -> ShardSource {
    ShardSource {
        open,
        settings: source.settings.clone(),
        pacing: match (&source.consumer, source.deaggregate) {
            (Some(_), _) => FAN_OUT,
            (None, true) => DEAGGREGATING,
            (None, false) => PACING,
        },
        passes,
        envelope,
    }
}

/// Lambda filters a Kinesis record on its `kinesis` fields, `data` decoded and parsed when it is
/// JSON; a JSON `data` pattern never matches data that is not.
fn passes(filters: &FilterSet, record: &Record) -> bool {
    let Ok(event) = serde_json::from_str::<serde_json::Value>(record.event.get()) else {
        return true;
    };
    let (view, data_is_json) = sluice_sources::kinesis::event::filter_view(&event);
    filters.passes_by_format(&view, "data", data_is_json)
}

fn envelope(batch: ShardBatch) -> EnvelopeSource {
    EnvelopeSource::Kinesis {
        stream_arn: batch.stream_arn,
        shard_id: batch.shard_id,
        sequence_numbers: batch.sequence_numbers,
        first_arrival: batch.first_arrival,
        last_arrival: batch.last_arrival,
    }
}
