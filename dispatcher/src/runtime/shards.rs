//! The worker of one sharded-stream mapping (DynamoDB Streams, Kinesis), whatever its kind:
//! discover shards → hold leases → read each shard → spread records over lanes → batch → invoke
//! → stream policy → checkpoint. A kind gives a [`ShardSource`]: how to find its stream, its
//! settings and read pacing, how its records are filtered and dead-lettered.
//!
//! Guarantees:
//! - a shard is read only while this instance holds its lease, and a child shard only after its
//!   parents (both, after a merge) were read to their end (the store's lineage rule);
//! - a shard without a checkpoint starts at the mapping's starting position. `latest` is the time
//!   the mapping started (Kinesis' AT_TIMESTAMP; DynamoDB reads from the trim horizon and
//!   checkpoints past older records), so a failed read, an expired iterator or a pause never
//!   skips what arrived meanwhile, and closed shards still retained are ended without delivering
//!   their history; a child of a shard read to its end from a checkpoint starts at its trim
//!   horizon, so nothing written to it after a split or merge, or while sluice was down, is lost;
//! - within a lane (a shard when `parallelization_factor` is 1) records are handled in order and a
//!   failing batch blocks the lane; records of one key always share a lane;
//! - the checkpoint only moves past records that are handled, filtered out or dead-lettered, and
//!   a dead letter counts only once the destination stored it (a failing destination is retried,
//!   never skipped);
//! - reads of a shard keep to the kind's pacing: at most one per `min_interval` (DynamoDB 4/s,
//!   Kinesis 5/s, the services' per-shard limits), slower while the shard is idle, and, with a
//!   byte budget (Kinesis 2 MB/s per shard), no sooner than the last page's bytes allow; a
//!   throttled read backs off and keeps its iterator; an expired iterator is renewed after the
//!   last record read, trimmed data resumes at the trim horizon;
//! - on shutdown (or a handoff to another instance) reading stops, batches in flight finish until
//!   the drain deadline, the checkpoint is written and the lease released; a lost lease stops the
//!   shard at once without writing.

use crate::config::stream::ShardSettings;
use crate::config::{MappingConfig, StartingPosition};
use crate::destinations::{Destination, EnvelopeSource, envelope::now_since_epoch};
use crate::health::MappingHealthHandle;
use crate::runtime::checkpoints::StoreSetup;
use crate::runtime::invoker::Invoker;
use crate::runtime::lane::{Entry, LaneHost, LaneSettings, run_lane};
use crate::runtime::mapping::{Mapping, SourceClients, StartError, StartMapping};
use crate::runtime::retry::{retry_delay, retry_until_ok};
use crate::runtime::window::{WindowSnapshot, Windows};
use crate::targets::SharedTarget;
use crate::telemetry::MappingMetrics;
use sluice_policies::{
    BatchLimits, FilterSet, ItemIdentifier, ShardProgress, lane_of, stream::Position,
};
use sluice_sources::checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, OpenWindow, ShardSpec,
};
use sluice_sources::shards::{
    CursorEvent, CursorRead, IteratorStart, OpenStream, ShardCursor, ShardReader,
};
use sluice_sources::{Record, records_event};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a sharded-stream mapping reads, as its kind set it up.
#[derive(Clone)]
pub struct ShardSource {
    /// Finds the stream (each kind names its stream its own way).
    pub open: OpenStream,
    /// The kind's validated settings: position, batching, lanes, discovery, stream policy.
    pub settings: ShardSettings,
    pub pacing: ReadPacing,
    /// Whether a record passes the mapping's filters: each kind filters its own view of a record.
    pub passes: fn(&FilterSet, &Record) -> bool,
    /// The dead-letter envelope's source for a batch of this kind.
    pub envelope: fn(ShardBatch) -> EnvelopeSource,
}

/// How fast a shard may be read: the kind's per-shard limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPacing {
    /// The shortest time between two reads of a shard.
    pub min_interval: Duration,
    /// The longest pause between reads of an idle shard.
    pub max_idle_interval: Duration,
    /// Records per read (the service's largest page: the lanes cut batches).
    pub max_records: i32,
    /// The shard's read budget: after a page of `n` bytes, the next read waits `n / budget`.
    pub bytes_per_second: Option<u64>,
}

impl ReadPacing {
    /// When the next read may start: after the interval the shard's state asks for, and after
    /// the last page's bytes are paid for.
    fn next_read(
        &self,
        last_call: tokio::time::Instant,
        idle_reads: u32,
        failures: u32,
        last_bytes: usize,
    ) -> tokio::time::Instant {
        let pause = if failures > 0 {
            retry_delay(failures)
        } else if idle_reads == 0 {
            self.min_interval
        } else {
            (self.min_interval * (1 << idle_reads.min(4))).min(self.max_idle_interval)
        };
        let budget = self
            .bytes_per_second
            .filter(|per_second| *per_second > 0)
            .map_or(Duration::ZERO, |per_second| {
                Duration::from_secs_f64(last_bytes as f64 / per_second as f64)
            });
        last_call + pause.max(budget)
    }
}

/// A batch as a dead-letter envelope names it.
pub struct ShardBatch {
    pub stream_arn: String,
    pub shard_id: String,
    pub sequence_numbers: Vec<String>,
    pub first_arrival: Duration,
    pub last_arrival: Duration,
}

/// Starts `mapping`, reading `source`; its checkpoints go to `clients.checkpoints`.
pub fn start(
    source: ShardSource,
    mapping: Mapping,
    clients: &SourceClients,
) -> Result<StartMapping, StartError> {
    let shutdown_timeout = mapping.shutdown_timeout;
    let store = clients.checkpoint_store(&mapping.config.name)?;
    let worker = ShardMapping {
        config: mapping.config,
        source,
        store,
        target: mapping.target,
        on_failure: mapping.on_failure,
        health: mapping.health,
        metrics: mapping.metrics,
    };
    Ok(Box::new(move |token| {
        Box::pin(worker.clone().run(token, shutdown_timeout))
    }))
}

#[derive(Clone)]
pub struct ShardMapping {
    pub config: MappingConfig,
    pub source: ShardSource,
    pub store: StoreSetup,
    pub target: SharedTarget,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
}

/// Everything the shard workers of a mapping share.
struct Shared {
    source: ShardSource,
    stream: Arc<dyn ShardReader>,
    store: Arc<dyn CheckpointStore>,
    lane: LaneSettings,
    filters: FilterSet,
    /// Records that arrived before this are not wanted: `at_timestamp`'s time, or under `latest`
    /// the time the mapping first started (kept in the checkpoint store, so every incarnation
    /// and instance agrees), a second early so a record of the starting second is kept.
    wanted_from: Option<Duration>,
}

/// Throttled reads in a row after which a shard is reported as failing.
const THROTTLES_BEFORE_FAILING: u32 = 20;

/// Why a shard worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShardExit {
    /// Read to its end, every record finished, `SHARD_END` stored.
    Finished,
    /// Asked to stop (shutdown or handoff): in-flight work finished, checkpoint written.
    Stopped,
    /// The lease went to another instance, or the drain deadline passed: abandoned unwritten.
    Abandoned,
}

struct RunningShard {
    /// Stop reading, finish in-flight batches, write the checkpoint.
    stop: CancellationToken,
    /// Abandon at once (lease lost, drain deadline).
    abort: CancellationToken,
    /// Release the lease once stopped (a handoff).
    release_after: bool,
}

impl ShardMapping {
    /// Runs until `shutdown`, then drains for at most `shutdown_timeout`.
    pub async fn run(self, shutdown: CancellationToken, shutdown_timeout: Duration) {
        let name = self.config.name.clone();
        let Some(stream) = self.resolve(&shutdown).await else {
            return;
        };
        let Some(store) = self.open_store(stream.as_ref(), &shutdown).await else {
            return;
        };
        let wanted_from = match self.source.settings.starting_position {
            StartingPosition::TrimHorizon => None,
            StartingPosition::AtTimestamp(at) => Some(at),
            StartingPosition::Latest => {
                let first_started = retry_until_ok(
                    "reading when the mapping first started",
                    &self.config.name,
                    &self.health,
                    &self.metrics,
                    &shutdown,
                    || store.first_started(now_since_epoch()),
                )
                .await;
                let Some(first_started) = first_started else {
                    return;
                };
                Some(Duration::from_secs(
                    first_started.as_secs().saturating_sub(1),
                ))
            }
        };
        let (sync_interval, lease_duration) = match &self.store {
            StoreSetup::DynamoDb { lease_duration, .. } => {
                (*lease_duration / 4, Some(*lease_duration))
            }
            StoreSetup::Embedded(_) => (self.source.settings.discovery_interval, None),
        };
        tracing::info!(
            mapping = %name,
            stream_arn = %stream.stream_arn(),
            checkpoints = %store.describe(),
            batch_size = self.source.settings.batch_size,
            parallelization_factor = self.source.settings.parallelization_factor,
            "mapping started"
        );
        let shared = Arc::new(Shared {
            source: self.source.clone(),
            lane: LaneSettings {
                name: name.clone(),
                invoker: Invoker::new(self.target.clone(), self.metrics.clone()),
                policy: self.source.settings.policy.clone(),
                limits: batch_limits(&self.source.settings),
                health: self.health.clone(),
                metrics: self.metrics.clone(),
                on_failure: self.on_failure.clone(),
                region: stream.region().to_owned(),
            },
            stream,
            store,
            filters: self.config.filters.clone(),
            wanted_from,
        });
        coordinate(
            shared,
            sync_interval,
            lease_duration,
            shutdown,
            shutdown_timeout,
        )
        .await;
        tracing::info!(mapping = %name, "mapping stopped");
    }

    async fn resolve(&self, shutdown: &CancellationToken) -> Option<Arc<dyn ShardReader>> {
        retry_until_ok(
            "finding the stream",
            &self.config.name,
            &self.health,
            &self.metrics,
            shutdown,
            || (self.source.open)(),
        )
        .await
    }

    async fn open_store(
        &self,
        stream: &dyn ShardReader,
        shutdown: &CancellationToken,
    ) -> Option<Arc<dyn CheckpointStore>> {
        self.store
            .open(
                &self.config.name,
                stream.stream_arn(),
                &self.health,
                &self.metrics,
                shutdown,
            )
            .await
            .map(|(store, _)| store)
    }
}

/// Lists shards, keeps leases and runs one worker per held shard until shutdown.
async fn coordinate(
    shared: Arc<Shared>,
    sync_interval: Duration,
    lease_duration: Option<Duration>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
) {
    let mut last_sync = Instant::now();
    let mut running: HashMap<String, RunningShard> = HashMap::new();
    let mut workers: tokio::task::JoinSet<(String, ShardExit)> = tokio::task::JoinSet::new();
    let mut shards: Vec<ShardSpec> = Vec::new();
    let mut listed_at: Option<Instant> = None;
    let mut failures = 0u32;
    let held_gauge = shared.lane.metrics.shards_held();
    loop {
        let due =
            listed_at.is_none_or(|at| at.elapsed() >= shared.source.settings.discovery_interval);
        if due {
            match shared.stream.list_shards().await {
                Ok(listed) => {
                    shards = listed
                        .into_iter()
                        .map(|s| ShardSpec {
                            id: s.id,
                            parents: s.parents,
                        })
                        .collect();
                    listed_at = Some(Instant::now());
                    failures = 0;
                    shared.lane.health.poll_succeeded();
                }
                Err(error) => {
                    failures += 1;
                    shared.lane.metrics.poll_errors.increment(1);
                    shared.lane.health.poll_failed(&error.to_string());
                    tracing::warn!(mapping = %shared.lane.name, %error, "listing shards failed");
                }
            }
        }
        match shared.store.acquire(&shards).await {
            Ok(acquired) => {
                last_sync = Instant::now();
                let held: HashSet<&str> =
                    acquired.held.iter().map(|h| h.shard_id.as_str()).collect();
                for (shard_id, shard) in running.iter_mut() {
                    if !held.contains(shard_id.as_str()) && !shard.release_after {
                        tracing::warn!(mapping = %shared.lane.name, %shard_id, "lease lost; abandoning the shard");
                        shared.lane.metrics.stream_event("lease_lost");
                        shard.abort.cancel();
                    }
                }
                for shard_id in &acquired.handoff_requested {
                    if let Some(shard) = running.get_mut(shard_id)
                        && !shard.release_after
                    {
                        tracing::info!(mapping = %shared.lane.name, %shard_id, "handing the shard over to another instance");
                        shard.release_after = true;
                        shard.stop.cancel();
                    }
                }
                for held in acquired.held {
                    if running.contains_key(&held.shard_id)
                        || acquired.handoff_requested.contains(&held.shard_id)
                    {
                        continue;
                    }
                    let stop = CancellationToken::new();
                    let abort = CancellationToken::new();
                    running.insert(
                        held.shard_id.clone(),
                        RunningShard {
                            stop: stop.clone(),
                            abort: abort.clone(),
                            release_after: false,
                        },
                    );
                    shared.lane.metrics.stream_event("shard_started");
                    let start = start_of(held.checkpoint, shared.wanted_from);
                    let shared = shared.clone();
                    workers.spawn(async move {
                        let exit =
                            run_shard(shared, held.shard_id.clone(), start, stop, abort).await;
                        (held.shard_id, exit)
                    });
                }
                held_gauge.set(running.len() as f64);
            }
            Err(error) => {
                shared.lane.metrics.poll_errors.increment(1);
                shared.lane.health.poll_failed(&error.to_string());
                tracing::warn!(mapping = %shared.lane.name, %error, "lease sync failed");
                // Leases not renewed for a lease duration may belong to others by now: stop
                // rather than process a shard beside its new owner.
                if lease_duration.is_some_and(|lease| last_sync.elapsed() >= lease) {
                    for (shard_id, shard) in &running {
                        if !shard.abort.is_cancelled() {
                            tracing::warn!(mapping = %shared.lane.name, %shard_id, "leases could not be renewed for a lease duration; abandoning the shard");
                            shard.abort.cancel();
                        }
                    }
                }
            }
        }
        let pause = if failures > 0 {
            retry_delay(failures).min(sync_interval)
        } else {
            sync_interval
        };
        let next = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    drain(&shared, running, workers, shutdown_timeout).await;
                    return;
                }
                _ = tokio::time::sleep_until(next) => break,
                Some(joined) = workers.join_next(), if !workers.is_empty() => {
                    let (shard_id, exit) = match joined {
                        Ok(exit) => exit,
                        // A shard worker that panicked would leave its shard unread for good:
                        // the mapping goes down with it and its supervisor restarts it.
                        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                        Err(_) => continue,
                    };
                    let shard = running.remove(&shard_id);
                    held_gauge.set(running.len() as f64);
                    let release = exit == ShardExit::Finished
                        || (exit == ShardExit::Stopped && shard.is_some_and(|s| s.release_after));
                    if release && let Err(error) = shared.store.release(&shard_id).await {
                        tracing::warn!(mapping = %shared.lane.name, %shard_id, %error, "releasing the lease failed; it expires instead");
                    }
                    if exit == ShardExit::Finished {
                        // Its children may start now.
                        break;
                    }
                }
            }
        }
    }
}

/// Stops every shard, waits for in-flight batches until the deadline, releases the leases.
async fn drain(
    shared: &Shared,
    running: HashMap<String, RunningShard>,
    mut workers: tokio::task::JoinSet<(String, ShardExit)>,
    shutdown_timeout: Duration,
) {
    for shard in running.values() {
        shard.stop.cancel();
    }
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    let mut exits = Vec::new();
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(exit)) => exits.push(exit),
                Some(Err(_)) => {}
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(mapping = %shared.lane.name, shards = workers.len(), "drain deadline reached; in-flight batches abandoned, their records are delivered again from the checkpoint");
                for shard in running.values() {
                    shard.abort.cancel();
                }
                while let Some(joined) = workers.join_next().await {
                    if let Ok(exit) = joined {
                        exits.push(exit);
                    }
                }
                break;
            }
        }
    }
    for (shard_id, _) in exits {
        if let Err(error) = shared.store.release(&shard_id).await {
            tracing::warn!(mapping = %shared.lane.name, %shard_id, %error, "releasing the lease failed; it expires instead");
        }
    }
}

/// One shard's checkpoint: records in read order, which are finished, and the store writes.
struct ShardCheckpoint {
    shard_id: String,
    progress: Mutex<ShardProgress<String>>,
    /// The newest checkpoint not yet stored. Only changed under the `progress` lock.
    unsaved: Mutex<Option<String>>,
    /// The checkpoint last stored (or found at the start).
    saved: Mutex<Option<String>>,
    /// The shard's tumbling windows: their state is stored with the checkpoint.
    windows: Option<Windows>,
    write: tokio::sync::Mutex<()>,
    abort: CancellationToken,
}

impl ShardCheckpoint {
    fn push(&self, sequence: String) -> Position {
        self.progress.lock().expect("progress lock").push(sequence)
    }

    /// Marks records finished. `by_lane`: finished by an invocation (or a dead letter), so the
    /// window state it returned goes with the checkpoint that now covers them; records the
    /// reader skipped leave the state as it is.
    fn finish(&self, positions: impl IntoIterator<Item = Position>, by_lane: bool) {
        let mut progress = self.progress.lock().expect("progress lock");
        for position in positions {
            progress.finish(position);
        }
        if by_lane && let Some(windows) = &self.windows {
            windows.commit();
        }
        if let Some(sequence) = progress.advance() {
            *self.unsaved.lock().expect("unsaved lock") = Some(sequence);
        }
    }

    fn outstanding(&self) -> usize {
        self.progress.lock().expect("progress lock").outstanding()
    }

    /// What the next write stores: the newest finished position (or, when only the window
    /// changed, the last stored one) and the window open at it; `None` when there is nothing to
    /// write, or the window's state waits for its early end.
    fn to_save(&self) -> Option<(String, Option<WindowSnapshot>)> {
        // Under the progress lock: the position and the window state are of the same records.
        let _progress = self.progress.lock().expect("progress lock");
        let window = match &self.windows {
            Some(windows) => Some(windows.for_save()?),
            None => None,
        };
        let window_changed = window.as_ref().is_some_and(|w| w.changed);
        let sequence = match self.unsaved.lock().expect("unsaved lock").take() {
            Some(sequence) => sequence,
            None if window_changed => self.saved.lock().expect("saved lock").clone()?,
            None => return None,
        };
        Some((sequence, window))
    }

    /// Stores the newest finished position; false when the lease is lost.
    async fn save(&self, shared: &Shared) -> bool {
        let _guard = self.write.lock().await;
        // An abandoned shard writes nothing more: the next run of it (here or elsewhere) may
        // already have read the checkpoint.
        if self.abort.is_cancelled() {
            return false;
        }
        let Some((sequence, window)) = self.to_save() else {
            return true;
        };
        match shared
            .store
            .checkpoint_with(
                &self.shard_id,
                &Checkpoint::After(sequence.clone()),
                window.as_ref().and_then(|w| w.open.as_ref()),
            )
            .await
        {
            Ok(()) => {
                *self.saved.lock().expect("saved lock") = Some(sequence.clone());
                if let (Some(windows), Some(window)) = (&self.windows, &window) {
                    windows.stored(window.generation);
                }
                shared.lane.metrics.stream_event("checkpoint_written");
                tracing::debug!(mapping = %shared.lane.name, shard_id = %self.shard_id, %sequence, "checkpoint stored");
                true
            }
            Err(CheckpointError::LeaseLost { .. }) => {
                shared.lane.metrics.stream_event("lease_lost");
                tracing::warn!(mapping = %shared.lane.name, shard_id = %self.shard_id, "lease lost; the shard stops without moving its checkpoint");
                self.abort.cancel();
                false
            }
            Err(error) => {
                shared.lane.metrics.stream_event("checkpoint_failed");
                tracing::warn!(mapping = %shared.lane.name, shard_id = %self.shard_id, %error, "storing the checkpoint failed; the next one will carry it");
                let _progress = self.progress.lock().expect("progress lock");
                let mut unsaved = self.unsaved.lock().expect("unsaved lock");
                if unsaved.is_none() {
                    *unsaved = Some(sequence);
                }
                true
            }
        }
    }
}

/// The lanes of one shard: Lambda's event, the shard's checkpoint.
struct ShardLanes {
    shared: Arc<Shared>,
    progress: Arc<ShardCheckpoint>,
}

#[async_trait::async_trait]
impl LaneHost for ShardLanes {
    fn settings(&self) -> &LaneSettings {
        &self.shared.lane
    }

    fn event(&self, records: &[&Record]) -> Vec<u8> {
        let event = records_event(records.iter().copied());
        match &self.progress.windows {
            Some(windows) => windows.event(event, false, false),
            None => event,
        }
    }

    fn windows(&self) -> Option<&Windows> {
        self.progress.windows.as_ref()
    }

    fn identifier(&self, record: &Record) -> ItemIdentifier {
        ItemIdentifier::Text(record.id().to_owned())
    }

    fn unit(&self) -> &str {
        &self.progress.shard_id
    }

    fn envelope_source(&self, records: &[&Record]) -> EnvelopeSource {
        (self.shared.source.envelope)(ShardBatch {
            stream_arn: self.shared.stream.stream_arn().to_owned(),
            shard_id: self.progress.shard_id.clone(),
            sequence_numbers: records.iter().map(|r| r.id().to_owned()).collect(),
            first_arrival: records.first().map_or(Duration::ZERO, |r| r.arrived_at),
            last_arrival: records.last().map_or(Duration::ZERO, |r| r.arrived_at),
        })
    }

    /// The write runs beside the next batch: writes are serialized and always store the newest
    /// finished position, so they stay in order, and the shard's final write waits for them.
    fn finished(self: Arc<Self>, positions: Vec<Position>) {
        self.progress.finish(positions, true);
        tokio::spawn(async move { self.progress.save(&self.shared).await });
    }
}

/// A lane's batch limits. With tumbling windows an invocation also carries the window's state
/// (up to 1 MiB) and keys: the records leave room for them within the 6 MB.
fn batch_limits(settings: &ShardSettings) -> BatchLimits {
    let mut limits = BatchLimits::new(settings.batch_size, settings.max_batching_window);
    if settings.tumbling_window.is_some() {
        limits.max_bytes = limits
            .max_bytes
            .saturating_sub(crate::runtime::window::MAX_WINDOW_STATE_BYTES + 4096);
    }
    limits
}

/// Where a held shard starts.
#[derive(Debug, Clone, PartialEq)]
enum ShardStart {
    /// Finished: nothing to read.
    End,
    /// After its checkpoint, or (without one) where the mapping starts.
    At(IteratorStart),
}

/// Where a shard starts: after its checkpoint; without one, at the mapping's starting position,
/// which for `latest` and `at_timestamp` is the time records are wanted from. That time stays put
/// across failed reads, expired iterators, pauses, restarts and instances (a LATEST iterator
/// looked up again would skip what arrived meanwhile), and it holds for every generation of
/// shards: a child of a split after it is read from its start, history before it is not read.
fn start_of(checkpoint: Option<Checkpoint>, wanted_from: Option<Duration>) -> ShardStart {
    ShardStart::At(match checkpoint {
        Some(Checkpoint::After(sequence)) => IteratorStart::AfterSequence(sequence),
        Some(Checkpoint::ShardEnd) => return ShardStart::End,
        None => match wanted_from {
            Some(at) => IteratorStart::AtTimestamp(at),
            None => IteratorStart::TrimHorizon,
        },
    })
}

/// Reads one shard until it ends, `stop` or `abort`.
async fn run_shard(
    shared: Arc<Shared>,
    shard_id: String,
    start: ShardStart,
    stop: CancellationToken,
    abort: CancellationToken,
) -> ShardExit {
    let start = match start {
        ShardStart::End => return ShardExit::Finished,
        ShardStart::At(start) => start,
    };
    // A kind without a timestamp iterator (DynamoDB Streams) reads from the trim horizon and
    // checkpoints past what arrived before the time, also when a restart finds it part way.
    let skip_before = shared.wanted_from;
    let mut start = start;
    let windows = match shared.source.settings.tumbling_window {
        Some(length) => {
            let Some((checkpoint, restored)) =
                restored_window(&shared, &shard_id, &stop, &abort).await
            else {
                return ShardExit::Stopped;
            };
            // The window belongs to the checkpoint read with it, which is where the shard starts.
            match checkpoint {
                Some(Checkpoint::After(sequence)) => start = IteratorStart::AfterSequence(sequence),
                Some(Checkpoint::ShardEnd) => return ShardExit::Finished,
                None => {}
            }
            Some(Windows::new(
                length,
                &shard_id,
                shared.stream.stream_arn(),
                restored,
            ))
        }
        None => None,
    };
    tracing::info!(mapping = %shared.lane.name, %shard_id, start = ?start, window = ?windows.as_ref().and_then(Windows::restored), "shard started");
    let progress = Arc::new(ShardCheckpoint {
        shard_id: shard_id.clone(),
        progress: Mutex::new(ShardProgress::new()),
        unsaved: Mutex::new(None),
        saved: Mutex::new(match &start {
            IteratorStart::AfterSequence(sequence) => Some(sequence.clone()),
            _ => None,
        }),
        windows,
        write: tokio::sync::Mutex::new(()),
        abort: abort.clone(),
    });
    let lanes = shared.source.settings.parallelization_factor;
    let mut senders = Vec::with_capacity(lanes);
    let mut lane_tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        // A lane holds at most about two batches, so a blocked lane stops the reader.
        let (sender, receiver) = mpsc::channel::<Entry>(shared.source.settings.batch_size * 2);
        senders.push(sender);
        lane_tasks.spawn(run_lane(
            Arc::new(ShardLanes {
                shared: shared.clone(),
                progress: progress.clone(),
            }),
            format!("{shard_id}/{lane}"),
            receiver,
            stop.clone(),
            abort.clone(),
        ));
    }
    let age = shared.lane.metrics.iterator_age(&shard_id);
    // A lane that panics takes the mapping down at once (its supervisor restarts it); waiting
    // for the reader would leave its batch unfinished, pinning the checkpoint, for as long as the
    // reader finds records for the other lanes.
    let read = {
        let lane_panicked = async {
            loop {
                match lane_tasks.join_next().await {
                    Some(Err(error)) if error.is_panic() => break error.into_panic(),
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            read = read_shard(
                &shared,
                &shard_id,
                start,
                skip_before,
                &progress,
                &senders,
                &stop,
                &abort,
            ) => read,
            panic = lane_panicked => std::panic::resume_unwind(panic),
        }
    };
    drop(senders);
    shared.stream.release(&shard_id).await;
    while let Some(joined) = lane_tasks.join_next().await {
        if let Err(error) = joined
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    age.set(0.0);
    shared.lane.metrics.millis_behind_latest(&shard_id).set(0.0);
    if abort.is_cancelled() {
        // A write already under way finishes before the shard can be started again, so the
        // next run reads what it wrote rather than have it land after.
        drop(progress.write.lock().await);
        return ShardExit::Abandoned;
    }
    if !progress.save(&shared).await {
        return ShardExit::Abandoned;
    }
    // A window whose final invocation did not happen (a stop during its retries) stays stored
    // with the checkpoint; the shard is not finished until it is closed.
    let window_open = progress.windows.as_ref().is_some_and(Windows::is_open);
    if read == ReadEnd::ShardEnd && progress.outstanding() == 0 && !window_open {
        let mut failures = 0u32;
        loop {
            match shared
                .store
                .checkpoint(&shard_id, &Checkpoint::ShardEnd)
                .await
            {
                Ok(()) => break,
                Err(CheckpointError::LeaseLost { .. }) => return ShardExit::Abandoned,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(mapping = %shared.lane.name, %shard_id, %error, "storing the end of the shard failed; retrying");
                    tokio::select! {
                        _ = abort.cancelled() => return ShardExit::Abandoned,
                        _ = tokio::time::sleep(retry_delay(failures)) => {}
                    }
                }
            }
        }
        shared.lane.metrics.stream_event("shard_finished");
        tracing::info!(mapping = %shared.lane.name, %shard_id, "shard finished; its children may start");
        return ShardExit::Finished;
    }
    tracing::info!(mapping = %shared.lane.name, %shard_id, "shard stopped");
    ShardExit::Stopped
}

/// The shard's checkpoint and the tumbling window stored with it, read together (retried)
/// before the shard starts; `None` on a stop.
async fn restored_window(
    shared: &Shared,
    shard_id: &str,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> Option<(Option<Checkpoint>, Option<OpenWindow>)> {
    let mut failures = 0u32;
    loop {
        match shared.store.window(shard_id).await {
            Ok(stored) => return Some(stored),
            Err(error) => {
                failures += 1;
                read_failed(
                    shared,
                    shard_id,
                    &format!("reading the shard's tumbling window: {error}"),
                );
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = abort.cancelled() => return None,
            _ = tokio::time::sleep(retry_delay(failures)) => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    ShardEnd,
    Stopped,
}

#[allow(clippy::too_many_arguments)]
async fn read_shard(
    shared: &Shared,
    shard_id: &str,
    start: IteratorStart,
    skip_before: Option<Duration>,
    progress: &ShardCheckpoint,
    lanes: &[mpsc::Sender<Entry>],
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> ReadEnd {
    let age = shared.lane.metrics.iterator_age(shard_id);
    let behind = shared.lane.metrics.millis_behind_latest(shard_id);
    let mut cursor = ShardCursor::new(shard_id, start);
    let mut failures = 0u32;
    let mut throttles = 0u32;
    let mut idle_reads = 0u32;
    let mut last_bytes = 0usize;
    let pacing = shared.source.pacing;
    let mut last_call = tokio::time::Instant::now() - pacing.min_interval;
    loop {
        let next = pacing.next_read(last_call, idle_reads, failures.max(throttles), last_bytes);
        tokio::select! {
            _ = stop.cancelled() => return ReadEnd::Stopped,
            _ = abort.cancelled() => return ReadEnd::Stopped,
            _ = tokio::time::sleep_until(next) => {}
        }
        // A paused mapping reads nothing; its lease and checkpoint stay (README "Live control").
        tokio::select! {
            _ = stop.cancelled() => return ReadEnd::Stopped,
            _ = abort.cancelled() => return ReadEnd::Stopped,
            _ = shared.lane.health.pause().until_running() => {}
        }
        last_call = tokio::time::Instant::now();
        let called_at = now_since_epoch();
        // A read can wait (an enhanced fan-out subscription waits for its next event): a stop or
        // a lost lease does not wait for it. Records of an interrupted read were not handed on.
        let read = tokio::select! {
            _ = stop.cancelled() => return ReadEnd::Stopped,
            _ = abort.cancelled() => return ReadEnd::Stopped,
            read = cursor.read(shared.stream.as_ref(), pacing.max_records) => read,
        };
        for event in cursor.take_events() {
            match event {
                CursorEvent::ExpiredIterator { after } => {
                    shared.lane.metrics.stream_event("expired_iterator");
                    tracing::info!(mapping = %shared.lane.name, %shard_id, ?after, "shard iterator expired; renewing it after the last record read");
                }
                CursorEvent::Trimmed { detail } => trimmed(shared, shard_id, &detail),
            }
        }
        let (records, end, millis_behind_latest, bytes, at_tip) = match read {
            Ok(CursorRead::Page {
                records,
                end,
                millis_behind_latest,
                bytes,
                at_tip,
            }) => (records, end, millis_behind_latest, bytes, at_tip),
            Ok(CursorRead::Renewing) => continue,
            Ok(CursorRead::Throttled { detail }) => {
                // The shard's limits are shared with the stream's other consumers: back off, and
                // only a shard that stays throttled (about a minute and a half of backing off)
                // is reported as failing, so it shows on /readyz instead of looking ready.
                throttles = throttles.saturating_add(1);
                shared.lane.metrics.stream_event("throttled");
                if throttles >= THROTTLES_BEFORE_FAILING {
                    read_failed(
                        shared,
                        shard_id,
                        &format!(
                            "{throttles} reads in a row throttled (other consumers of the stream share its 5 reads and 2 MB per second per shard): {detail}"
                        ),
                    );
                } else {
                    tracing::debug!(mapping = %shared.lane.name, %shard_id, %detail, "reads of the shard are throttled; backing off");
                }
                continue;
            }
            Err(error) => {
                failures += 1;
                read_failed(shared, shard_id, &error.to_string());
                continue;
            }
        };
        failures = 0;
        throttles = 0;
        last_bytes = bytes;
        shared.lane.health.poll_succeeded();
        if let Some(millis) = millis_behind_latest {
            behind.set(millis as f64);
        }
        let now = now_since_epoch();
        let page_was_empty = records.is_empty();
        if records.is_empty() {
            // An empty page behind the shard's newest record is a gap, not an idle shard.
            let caught_up = millis_behind_latest.is_none_or(|behind| behind == 0);
            idle_reads = if caught_up {
                idle_reads.saturating_add(1)
            } else {
                0
            };
            age.set(0.0);
        } else {
            idle_reads = 0;
            let newest = records.last().map_or(now, |r| r.arrived_at);
            age.set(now.saturating_sub(newest).as_secs_f64());
            shared.lane.metrics.received(records.len() as u64);
        }
        let page_was_full = records.len() >= pacing.max_records.max(1) as usize;
        let mut skipped = false;
        for record in records {
            let position = progress.push(record.id().to_owned());
            // A skipped record is finished before any later record goes to a lane: once a lane
            // finishes a record, the checkpoint can move up to it, so a tumbling window's state
            // is never stored with a checkpoint short of the records it counts.
            if skip_before.is_some_and(|at| record.arrived_at < at) {
                progress.finish([position], false);
                skipped = true;
                continue;
            }
            if !shared.filters.is_empty() && !(shared.source.passes)(&shared.filters, &record) {
                shared.lane.metrics.filtered(1);
                shared.lane.metrics.checkpointed(1);
                progress.finish([position], false);
                skipped = true;
                continue;
            }
            let key = record.ordering_key.clone().unwrap_or_default();
            let lane = &lanes[lane_of(key.as_bytes(), lanes.len())];
            let entry = match lane.try_send((record, position)) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(entry)) => entry,
                Err(mpsc::error::TrySendError::Closed(_)) => return ReadEnd::Stopped,
            };
            // The lane is busy (or blocked retrying): wait for it, which is not a stalled poll.
            shared.lane.health.waiting_for_capacity(true);
            let sent = tokio::select! {
                _ = abort.cancelled() => false,
                sent = lane.send(entry) => sent.is_ok(),
            };
            shared.lane.health.waiting_for_capacity(false);
            if !sent {
                return ReadEnd::Stopped;
            }
        }
        if skipped && !progress.save(shared).await {
            return ReadEnd::Stopped;
        }
        // A page that reaches the shard's newest record means every record that arrived a while
        // before the call was read, and was sent to the lanes above: a tumbling window that
        // ended before then may close. Kinesis says so (`MillisBehindLatest` 0, on a page that
        // is not full: a burst of one millisecond can fill several); DynamoDB Streams only by
        // empty pages, and one empty page is not enough (it can take several calls to reach the
        // records of a shard), so it takes a few in a row.
        let by_page = !page_was_full
            && match millis_behind_latest {
                Some(behind) => behind == 0,
                None => page_was_empty && idle_reads >= EMPTY_PAGES_TO_CATCH_UP,
            };
        let caught_up = at_tip.unwrap_or(by_page);
        if caught_up && let Some(windows) = &progress.windows {
            windows.caught_up(called_at.saturating_sub(ARRIVAL_MARGIN));
        }
        if end {
            return ReadEnd::ShardEnd;
        }
    }
}

/// Empty pages in a row after which a stream that does not say how far behind it is
/// (DynamoDB Streams) counts as read up to the time of the last one.
const EMPTY_PAGES_TO_CATCH_UP: u32 = 3;

/// How far before a read that caught up a record may still have arrived unseen (the stream's
/// arrival stamps are the service's clock, a record is readable a moment after it).
const ARRIVAL_MARGIN: Duration = Duration::from_secs(1);

fn trimmed(shared: &Shared, shard_id: &str, detail: &str) {
    shared.lane.metrics.stream_event("trimmed_data");
    tracing::warn!(mapping = %shared.lane.name, %shard_id, %detail, "records past the checkpoint were trimmed from the stream (older than its retention); resuming at the trim horizon");
}

fn read_failed(shared: &Shared, shard_id: &str, error: &str) {
    shared.lane.metrics.poll_errors.increment(1);
    shared.lane.health.poll_failed(error);
    tracing::warn!(mapping = %shared.lane.name, %shard_id, %error, "reading the shard failed; retrying");
}

#[cfg(test)]
mod tests {
    //! The shard worker on an in-memory stream (sluice_sources::memory::MemoryStream): shards
    //! are read to their end through lanes, in order, and checkpointed, through throttled reads.
    //! How iterators are renewed and trimmed data skipped is the cursor's, tested in
    //! sluice-sources against scripted DynamoDB Streams and Kinesis responses and the memory
    //! stream.

    use super::*;
    use crate::config::SourceConfig;
    use crate::health::Health;
    use crate::targets::testing::ScriptedTarget;
    use sluice_sources::memory::{MemoryStream, stream_opener};

    async fn run_to_end(stream: Arc<MemoryStream>, starting_position: &str) -> Vec<u64> {
        let config = crate::config::parse(
            "test.yaml",
            &format!(
                r#"
version: 1
targets:
  t: {{ http: {{ url: "http://127.0.0.1:1/" }} }}
mappings:
  - name: memory
    target: t
    source:
      dynamodb_stream:
        stream_arn: "{arn}"
        starting_position: {starting_position}
        batch_size: 3
"#,
                arn = stream.stream_arn()
            ),
            Default::default(),
        )
        .unwrap();
        let mapping = config.mappings[0].clone();
        let SourceConfig::DynamodbStream(source) = mapping.source.clone() else {
            panic!("a stream source")
        };
        let state = tempfile::tempdir().unwrap();
        let file = sluice_sources::checkpoint::embedded::StateFile::open(state.path()).unwrap();
        let target = Arc::new(ScriptedTarget::default());
        let worker = ShardMapping {
            config: mapping,
            source: crate::runtime::dynamodb_stream::shard_source(
                &source,
                stream_opener(stream.clone()),
            ),
            store: StoreSetup::Embedded(file.clone()),
            target: SharedTarget::new("t", target.clone(), 4),
            on_failure: None,
            health: Health::new(Duration::from_secs(60), Duration::from_secs(60))
                .register("memory"),
            metrics: MappingMetrics::new("memory"),
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone(), Duration::from_secs(5)));
        let store = sluice_sources::checkpoint::embedded::EmbeddedStore::new(file, "memory");
        let listing: Vec<ShardSpec> = stream
            .list_shards()
            .await
            .unwrap()
            .into_iter()
            .map(|shard| ShardSpec {
                id: shard.id,
                parents: shard.parents,
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let acquired = store.acquire(&listing).await.unwrap();
            if listing.iter().all(|s| acquired.finished.contains(&s.id)) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the shards never finished"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
        target
            .payloads()
            .iter()
            .flat_map(|event| {
                event["Records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["n"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_closed_shard_is_read_to_its_end_in_order_and_finished() {
        let stream = Arc::new(MemoryStream::new());
        stream.add_shard("shardId-1", None);
        stream.append("shardId-1", 10);
        stream.close("shardId-1");
        let seen = run_to_end(stream, "trim_horizon").await;
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn reading_from_the_trim_horizon_starts_after_what_was_trimmed() {
        let stream = Arc::new(MemoryStream::new());
        stream.add_shard("shardId-1", None);
        stream.append("shardId-1", 8);
        stream.trim("shardId-1", 5);
        stream.close("shardId-1");
        let seen = run_to_end(stream, "trim_horizon").await;
        assert_eq!(seen, [6, 7, 8]);
    }

    #[tokio::test]
    async fn throttled_reads_back_off_and_lose_nothing() {
        let stream = Arc::new(MemoryStream::new());
        stream.add_shard("shardId-1", None);
        stream.append("shardId-1", 7);
        stream.close("shardId-1");
        stream.throttle_reads(3);
        let seen = run_to_end(stream, "trim_horizon").await;
        assert_eq!(seen, (1..=7).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn under_latest_retained_history_is_not_delivered_across_generations() {
        // Memory records arrived at the epoch: all before the mapping started.
        let stream = Arc::new(MemoryStream::new());
        stream.add_shard("parent", None);
        stream.append("parent", 4);
        stream.close("parent");
        stream.add_shard("child", Some("parent"));
        stream.append("child", 3);
        stream.close("child");
        let seen = run_to_end(stream, "latest").await;
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn a_shard_without_a_checkpoint_starts_where_records_are_wanted_from() {
        let t0 = Duration::from_secs(1_800_000_000);
        assert_eq!(
            start_of(None, Some(t0)),
            ShardStart::At(IteratorStart::AtTimestamp(t0)),
            "latest and at_timestamp: a failed read or an expired iterator reopens at the same \
             time, never at LATEST"
        );
        assert_eq!(
            start_of(None, None),
            ShardStart::At(IteratorStart::TrimHorizon)
        );
        assert_eq!(
            start_of(Some(Checkpoint::After("7".into())), Some(t0)),
            ShardStart::At(IteratorStart::AfterSequence("7".into()))
        );
        assert_eq!(start_of(Some(Checkpoint::ShardEnd), None), ShardStart::End);
    }

    #[tokio::test]
    async fn a_merged_shard_is_read_after_both_parents() {
        let stream = Arc::new(MemoryStream::new());
        stream.add_shard("a", None);
        stream.add_shard("b", None);
        stream.append("a", 2);
        stream.append("b", 2);
        stream.close("a");
        stream.close("b");
        stream.add_merged_shard("m", "a", "b");
        stream.append("m", 3);
        stream.close("m");
        let seen = run_to_end(stream, "trim_horizon").await;
        assert_eq!(seen.len(), 7);
        assert_eq!(
            &seen[4..],
            [1, 2, 3],
            "the child's records come after both parents'"
        );
    }

    #[test]
    fn reads_wait_for_the_interval_and_for_the_last_pages_bytes() {
        let pacing = ReadPacing {
            min_interval: Duration::from_millis(200),
            max_idle_interval: Duration::from_secs(1),
            max_records: 10_000,
            bytes_per_second: Some(2_000_000),
        };
        let at = tokio::time::Instant::now();
        assert_eq!(
            pacing.next_read(at, 0, 0, 0) - at,
            Duration::from_millis(200)
        );
        assert_eq!(
            pacing.next_read(at, 0, 0, 4_000_000) - at,
            Duration::from_secs(2),
            "a 4 MB page spends two seconds of the 2 MB/s budget"
        );
        assert_eq!(pacing.next_read(at, 9, 0, 0) - at, Duration::from_secs(1));
        assert_eq!(pacing.next_read(at, 0, 1, 0) - at, retry_delay(1));
    }
}
