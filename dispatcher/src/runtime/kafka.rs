//! The worker of one Kafka mapping: a consumer-group member whose assigned partitions each run
//! as one ordered lane under the stream policy (semantics.md §4).
//!
//! Guarantees:
//! - each partition is handled in offset order; a failing batch blocks only its partition (a
//!   blocked partition is paused at the broker, the others keep flowing);
//! - an offset is committed only when every record before it is done: handled, filtered out, or
//!   dead-lettered with the destination's confirmation;
//! - on a revoke, the revoked partitions stop taking records, batches in flight get until the
//!   drain deadline (`shutdown_timeout`), the finished offsets are committed, and only then does
//!   the rebalance go on; what did not finish is abandoned uncommitted (the next owner reads it
//!   again);
//! - on shutdown the same happens for every partition, then the consumer leaves the group.
//!
//! librdkafka is driven from one dedicated thread (polls, rebalance callbacks and commits happen
//! there, as librdkafka expects); the lanes run on the tokio runtime.

use super::invoker::Invoker;
use super::lane::{Entry, LaneHost, LaneSettings, run_lane, stream_policy};
use super::retry::retry_delay;
use crate::config::{KafkaSourceConfig, MappingConfig, StartingPosition};
use crate::destinations::envelope::now_since_epoch;
use crate::destinations::{Destination, EnvelopeSource};
use crate::health::MappingHealthHandle;
use crate::targets::SharedTarget;
use crate::telemetry::MappingMetrics;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use sluice_policies::{
    BatchLimits, FilterSet, IdentifierKind, ItemIdentifier, ShardProgress, stream::Position,
};
use sluice_sources::Record;
use sluice_sources::kafka::{
    KafkaCluster, MessageParts, StartOffset, StartPosition, consumer_config, partition_name,
    start_offset,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one poll waits for a message; bounds how late the thread notices a stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a poll waits while records are queued for full lanes: how late a lane's free room
/// is noticed.
const FULL_LANE_POLL: Duration = Duration::from_millis(2);
/// How often finished offsets are committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How often the same poll error is logged again.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How long after a client error an empty poll counts as healthy again.
const CLIENT_ERROR_QUIET: Duration = Duration::from_secs(30);
/// Broker calls made while assigning partitions (committed offsets, offsets for times).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct KafkaMapping {
    pub config: MappingConfig,
    pub source: KafkaSourceConfig,
    pub target: SharedTarget,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
    pub region: String,
}

/// Everything the partitions of a mapping share.
struct Shared {
    cluster: KafkaCluster,
    filters: FilterSet,
    /// Name, target, policy, health and metrics of the mapping.
    lane: LaneSettings,
    /// Bytes of records a partition may queue beyond its lane before it is paused at the
    /// broker. A pause drops what librdkafka prefetched and a resume waits for the fetch in
    /// flight (up to fetch.wait.max.ms), so pausing whenever the lane is full cost 500 ms per
    /// couple of batches (1 partition, no-op handler: 453 records/s, against 190k/s unpaused).
    waiting_limit: usize,
    drain_timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// When the client last reported an error (brokers down, authentication): an empty poll
    /// counts as healthy only some time after it.
    client_error_at: Mutex<Option<Instant>>,
}

/// Which records of a partition are done, and what may be committed.
struct PartitionProgress {
    topic: String,
    partition: i32,
    name: String,
    progress: Mutex<ShardProgress<i64>>,
    /// The offset to commit next (the last done offset + 1); `None` until something is done.
    done_until: Mutex<Option<i64>>,
}

impl PartitionProgress {
    fn finish(&self, positions: impl IntoIterator<Item = Position>) {
        let mut progress = self.progress.lock().expect("progress lock");
        for position in positions {
            progress.finish(position);
        }
        if let Some(offset) = progress.advance() {
            *self.done_until.lock().expect("done lock") = Some(offset + 1);
        }
    }

    fn done_until(&self) -> Option<i64> {
        *self.done_until.lock().expect("done lock")
    }
}

/// A partition this instance holds.
struct Partition {
    progress: Arc<PartitionProgress>,
    sender: mpsc::Sender<Entry>,
    /// Records the lane had no room for yet, in offset order; the partition is paused while
    /// there are too many.
    waiting: VecDeque<Entry>,
    waiting_bytes: usize,
    paused: bool,
    /// The next offset expected: anything below was taken already (a fetch repeated after a
    /// pause is skipped).
    next_offset: Option<i64>,
    /// The offset last committed (or found committed).
    committed: Option<i64>,
    stop: CancellationToken,
    abort: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    lag: metrics::Gauge,
}

type Assignment = HashMap<(String, i32), Partition>;

/// The consumer's callbacks; they run on the consumer thread, inside `poll`.
struct Context {
    shared: Arc<Shared>,
    position: StartPosition,
    assignment: Arc<Mutex<Assignment>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let name = &self.shared.lane.name;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(mapping = %name, facility, librdkafka = message, "kafka client error")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(mapping = %name, facility, librdkafka = message, "kafka client warning")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(mapping = %name, facility, librdkafka = message, "kafka client notice")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(mapping = %name, facility, librdkafka = message, "kafka client debug")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        *self.shared.client_error_at.lock().expect("error lock") = Some(Instant::now());
        self.shared.lane.metrics.poll_errors.increment(1);
        self.shared.lane.health.poll_failed(reason);
        tracing::warn!(mapping = %self.shared.lane.name, %error, reason, "kafka client reported an error");
    }

    fn stats(&self, statistics: Statistics) {
        let assignment = self.assignment.lock().expect("assignment lock");
        for ((topic, partition), held) in assignment.iter() {
            let Some(stats) = statistics
                .topics
                .get(topic)
                .and_then(|t| t.partitions.get(partition))
            else {
                continue;
            };
            // Read-committed consumers see up to the last stable offset.
            let end = if stats.ls_offset >= 0 {
                stats.ls_offset
            } else {
                stats.hi_offset
            };
            let position = held.progress.done_until().or(held.committed);
            if let (true, Some(position)) = (end >= 0, position) {
                held.lag.set((end - position).max(0) as f64);
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, partitions);
                let assigned = if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                if let Err(error) = assigned {
                    tracing::error!(mapping = %self.shared.lane.name, %error, "assigning partitions failed");
                }
            }
            _ => {
                if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(mapping = %self.shared.lane.name, error = ?error, "rebalance error; giving up every partition");
                }
                let revoked = keys_of(partitions);
                let lost = consumer.assignment_lost();
                self.release(consumer, &revoked, !lost);
                let unassigned = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = unassigned {
                    tracing::error!(mapping = %self.shared.lane.name, %error, "unassigning partitions failed");
                }
            }
        }
    }
}

impl Context {
    /// Starts a lane per new partition and sets where each starts reading.
    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        let shared = &self.shared;
        let wanted = keys_of(partitions);
        let committed = match consumer.committed_offsets(partitions.clone(), LOOKUP_TIMEOUT) {
            Ok(list) => offsets_of(&list),
            Err(error) => {
                tracing::warn!(mapping = %shared.lane.name, %error, "reading committed offsets failed; the broker's stored offsets apply");
                HashMap::new()
            }
        };
        let uncommitted: Vec<&(String, i32)> = wanted
            .iter()
            .filter(|key| !committed.contains_key(key))
            .collect();
        let by_time = match self.position {
            StartPosition::AtTimestamp(ms) if !uncommitted.is_empty() => {
                let mut query = TopicPartitionList::new();
                for (topic, partition) in uncommitted {
                    let _ = query.add_partition_offset(topic, *partition, Offset::Offset(ms));
                }
                match consumer.offsets_for_times(query, LOOKUP_TIMEOUT) {
                    Ok(list) => offsets_of(&list),
                    Err(error) => {
                        tracing::warn!(mapping = %shared.lane.name, %error, "looking offsets up by time failed; starting at the end");
                        HashMap::new()
                    }
                }
            }
            _ => HashMap::new(),
        };
        let mut assignment = self.assignment.lock().expect("assignment lock");
        for key in wanted {
            let start = start_offset(
                committed.get(&key).copied(),
                self.position,
                by_time.get(&key).copied(),
            );
            let offset = match start {
                StartOffset::Committed(_) => Offset::Stored,
                StartOffset::Beginning => Offset::Beginning,
                StartOffset::End => Offset::End,
                StartOffset::At(offset) => Offset::Offset(offset),
            };
            let _ = partitions.set_partition_offset(&key.0, key.1, offset);
            if assignment.contains_key(&key) {
                continue;
            }
            let name = partition_name(&key.0, key.1);
            tracing::info!(mapping = %shared.lane.name, partition = %name, start = ?start, "partition assigned");
            let progress = Arc::new(PartitionProgress {
                topic: key.0.clone(),
                partition: key.1,
                name: name.clone(),
                progress: Mutex::new(ShardProgress::new()),
                done_until: Mutex::new(None),
            });
            // A lane holds at most about two batches; beyond that the partition is paused.
            let (sender, receiver) = mpsc::channel::<Entry>(shared.lane.limits.max_records * 2);
            let stop = CancellationToken::new();
            let abort = CancellationToken::new();
            let host = Arc::new(PartitionLane {
                shared: shared.clone(),
                progress: progress.clone(),
            });
            let task = shared.runtime.spawn(run_lane(
                host,
                name.clone(),
                receiver,
                stop.clone(),
                abort.clone(),
            ));
            shared.lane.metrics.stream_event("partition_assigned");
            assignment.insert(
                key.clone(),
                Partition {
                    progress,
                    sender,
                    waiting: VecDeque::new(),
                    waiting_bytes: 0,
                    paused: false,
                    next_offset: None,
                    committed: committed.get(&key).copied(),
                    stop,
                    abort,
                    task,
                    lag: shared.lane.metrics.consumer_lag(&name),
                },
            );
        }
        shared
            .lane
            .metrics
            .partitions_assigned()
            .set(assignment.len() as f64);
    }

    /// Stops the lanes of `keys`, waits for in-flight batches until the drain deadline, commits
    /// what finished (unless the partitions are already lost to another member) and forgets them.
    fn release(&self, consumer: &BaseConsumer<Self>, keys: &[(String, i32)], commit: bool) {
        let shared = &self.shared;
        let mut released: Vec<Partition> = {
            let mut assignment = self.assignment.lock().expect("assignment lock");
            let released = keys.iter().filter_map(|k| assignment.remove(k)).collect();
            shared
                .lane
                .metrics
                .partitions_assigned()
                .set(assignment.len() as f64);
            released
        };
        if released.is_empty() {
            return;
        }
        for partition in &released {
            partition.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + shared.drain_timeout;
        let mut abandoned = 0;
        for partition in &mut released {
            let finished = shared.runtime.block_on(async {
                tokio::select! {
                    _ = &mut partition.task => true,
                    _ = tokio::time::sleep_until(deadline) => false,
                }
            });
            if !finished {
                abandoned += 1;
                partition.abort.cancel();
            }
        }
        if abandoned > 0 {
            tracing::warn!(mapping = %shared.lane.name, partitions = abandoned, "drain deadline reached; in-flight batches abandoned uncommitted, the next owner reads them again");
        }
        if commit {
            let mut list = TopicPartitionList::new();
            for partition in &released {
                if let Some(offset) = partition.uncommitted() {
                    let _ = list.add_partition_offset(
                        &partition.progress.topic,
                        partition.progress.partition,
                        Offset::Offset(offset),
                    );
                }
            }
            if list.count() > 0 {
                match consumer.commit(&list, CommitMode::Sync) {
                    Ok(()) => shared.lane.metrics.stream_event("offsets_committed"),
                    Err(error) => {
                        shared.lane.metrics.stream_event("commit_failed");
                        tracing::warn!(mapping = %shared.lane.name, %error, "committing the offsets of released partitions failed; their records are read again");
                    }
                }
            }
        }
        for partition in released {
            tracing::info!(mapping = %shared.lane.name, partition = %partition.progress.name, committed = ?partition.progress.done_until().or(partition.committed), "partition released");
            partition.lag.set(0.0);
            shared.lane.metrics.stream_event("partition_released");
        }
    }
}

/// The partitions of a list. Owned at once: a list from `committed` that outlives the consumer
/// hangs its drop (dependencies.md trap 9).
fn keys_of(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// The partitions of a list that have an actual offset, with it (owned, as `keys_of`).
fn offsets_of(list: &TopicPartitionList) -> HashMap<(String, i32), i64> {
    list.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some(((e.topic().to_owned(), e.partition()), offset)),
            _ => None,
        })
        .collect()
}

impl Partition {
    /// The offset to commit, when it moved past the last commit.
    fn uncommitted(&self) -> Option<i64> {
        let done = self.progress.done_until()?;
        (self.committed.is_none_or(|c| done > c)).then_some(done)
    }
}

/// A Kafka record's offset (its id).
fn offset_of(record: &Record) -> i64 {
    record.id().parse().unwrap_or(-1)
}

/// A partition's lane: Lambda's Kafka event, offsets as the checkpoint.
struct PartitionLane {
    shared: Arc<Shared>,
    progress: Arc<PartitionProgress>,
}

#[async_trait::async_trait]
impl LaneHost for PartitionLane {
    fn settings(&self) -> &LaneSettings {
        &self.shared.lane
    }

    fn event(&self, records: &[&Record]) -> Vec<u8> {
        sluice_sources::kafka::event(&self.shared.cluster, records.iter().copied())
    }

    fn identifier(&self, record: &Record) -> ItemIdentifier {
        ItemIdentifier::KafkaOffset {
            partition: self.progress.name.clone(),
            offset: offset_of(record),
        }
    }

    fn unit(&self) -> &str {
        &self.progress.name
    }

    fn envelope_source(&self, records: &[&Record]) -> EnvelopeSource {
        let timestamp =
            |record: &Record| i64::try_from(record.arrived_at.as_millis()).unwrap_or(-1);
        EnvelopeSource::Kafka {
            cluster: self.shared.cluster.clone(),
            topic: self.progress.topic.clone(),
            partition: self.progress.partition,
            offsets: records.iter().map(|r| offset_of(r)).collect(),
            first_timestamp: records.first().map_or(-1, |r| timestamp(r)),
            last_timestamp: records.last().map_or(-1, |r| timestamp(r)),
        }
    }

    fn finished(self: Arc<Self>, positions: Vec<Position>) {
        self.progress.finish(positions);
    }
}

impl KafkaMapping {
    /// Runs until `shutdown`, then drains for at most `shutdown_timeout` and leaves the group.
    pub async fn run(self, shutdown: CancellationToken, shutdown_timeout: Duration) {
        let name = self.config.name.clone();
        let position = match self.source.starting_position {
            StartingPosition::TrimHorizon => StartPosition::TrimHorizon,
            StartingPosition::Latest => StartPosition::Latest,
            StartingPosition::AtTimestamp(at) => {
                StartPosition::AtTimestamp(i64::try_from(at.as_millis()).unwrap_or(i64::MAX))
            }
        };
        let shared = Arc::new(Shared {
            cluster: self.source.cluster(),
            filters: self.config.filters.clone(),
            lane: LaneSettings {
                name: name.clone(),
                invoker: Invoker::new(self.target.clone(), self.metrics.clone()),
                policy: stream_policy(
                    &self.config,
                    IdentifierKind::KafkaOffset,
                    self.on_failure.is_some(),
                ),
                limits: BatchLimits::new(self.source.batch_size, self.source.max_batching_window),
                health: self.health.clone(),
                metrics: self.metrics.clone(),
                on_failure: self.on_failure.clone(),
                region: self.region.clone(),
            },
            waiting_limit: self.source.partition_buffer_bytes,
            drain_timeout: shutdown_timeout,
            runtime: tokio::runtime::Handle::current(),
            client_error_at: Mutex::new(None),
        });
        let source = self.source.clone();
        let thread_shutdown = shutdown.clone();
        let consumer_thread = std::thread::Builder::new()
            .name(format!("kafka-{name}"))
            .spawn(move || consume(shared, source, position, thread_shutdown));
        let consumer_thread = match consumer_thread {
            Ok(thread) => thread,
            Err(error) => {
                tracing::error!(mapping = %name, %error, "cannot start the consumer thread");
                return;
            }
        };
        // The thread ends after shutdown; wait for it without blocking the runtime. A panic on the
        // thread is carried into this task, so the mapping's supervisor sees it and restarts.
        if let Ok(Err(panic)) = tokio::task::spawn_blocking(move || consumer_thread.join()).await {
            std::panic::resume_unwind(panic);
        }
        tracing::info!(mapping = %name, "mapping stopped");
    }
}

/// The consumer thread: creates the consumer (retrying until the client can be built), polls
/// until shutdown, then drains and leaves the group.
fn consume(
    shared: Arc<Shared>,
    source: KafkaSourceConfig,
    position: StartPosition,
    shutdown: CancellationToken,
) {
    let assignment: Arc<Mutex<Assignment>> = Arc::default();
    let context = Context {
        shared: shared.clone(),
        position,
        assignment: assignment.clone(),
    };
    let mut settings = consumer_config(
        &source.bootstrap_servers,
        &source.group_id,
        position,
        &source.properties,
    );
    if settings.get("statistics.interval.ms").is_none() {
        // Consumer lag comes from librdkafka's statistics.
        settings.set("statistics.interval.ms", "5000");
    }
    let consumer: BaseConsumer<Context> = match settings.create_with_context(context) {
        Ok(consumer) => consumer,
        Err(error) => {
            // Bad properties: nothing a retry can fix.
            shared.lane.health.poll_failed(&error.to_string());
            tracing::error!(mapping = %shared.lane.name, %error, "cannot create the Kafka consumer; check source.kafka.properties");
            return;
        }
    };
    let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    let mut failures = 0u32;
    while let Err(error) = consumer.subscribe(&topics) {
        failures += 1;
        shared.lane.health.poll_failed(&error.to_string());
        tracing::warn!(mapping = %shared.lane.name, %error, "subscribing failed; retrying");
        if sleep_or_stop(&shutdown, retry_delay(failures)) {
            return;
        }
    }
    tracing::info!(
        mapping = %shared.lane.name,
        bootstrap_servers = %source.bootstrap_servers,
        topics = ?source.topics,
        group_id = %source.group_id,
        batch_size = source.batch_size,
        "mapping started"
    );
    let mut last_commit = Instant::now();
    let mut queued = Queued::Nothing;
    let mut last_error: Option<(String, Instant)> = None;
    while !shutdown.is_cancelled() {
        // Poll without waiting while a lane has room for queued records, briefly while lanes are
        // full, for long only with nothing queued.
        let timeout = match queued {
            Queued::Nothing => POLL_TIMEOUT,
            Queued::LanesFull => FULL_LANE_POLL,
            Queued::Movable => Duration::ZERO,
        };
        match consumer.poll(timeout) {
            None => {
                let error_at = *shared.client_error_at.lock().expect("error lock");
                if error_at.is_none_or(|at| at.elapsed() >= CLIENT_ERROR_QUIET) {
                    shared.lane.health.poll_succeeded();
                }
            }
            Some(Ok(message)) => {
                *shared.client_error_at.lock().expect("error lock") = None;
                shared.lane.health.poll_succeeded();
                if take(&shared, &consumer, &assignment, &MessageParts::of(&message)) {
                    queued = Queued::Movable;
                }
            }
            Some(Err(error)) => {
                let text = error.to_string();
                shared.lane.metrics.poll_errors.increment(1);
                shared.lane.health.poll_failed(&text);
                // A persistent error comes back on every poll: log it when it changes, and
                // otherwise at most every ERROR_LOG_INTERVAL.
                let repeated = last_error
                    .as_ref()
                    .is_some_and(|(last, at): &(String, Instant)| {
                        *last == text && at.elapsed() < ERROR_LOG_INTERVAL
                    });
                if !repeated {
                    tracing::warn!(mapping = %shared.lane.name, %error, "polling Kafka failed");
                    last_error = Some((text, Instant::now()));
                }
            }
        }
        // Queued records move into lanes between polls; with nothing queued there is nothing to
        // walk the partitions for.
        if queued != Queued::Nothing {
            queued = feed_waiting(&shared, &consumer, &assignment);
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            last_commit = Instant::now();
            commit(&shared, &consumer, &assignment);
            // A lane ends only when its partition is released; one that ended while assigned
            // panicked, and its partition would never move again. Take the mapping down: its
            // supervisor logs it, shows it on /readyz and starts it again (uncommitted records
            // are delivered again).
            let dead: Vec<String> = assignment
                .lock()
                .expect("assignment lock")
                .iter()
                .filter(|(_, partition)| partition.task.is_finished())
                .map(|((topic, partition), _)| partition_name(topic, *partition))
                .collect();
            if !dead.is_empty() {
                panic!("the lanes of partitions {dead:?} stopped unexpectedly");
            }
        }
    }
    tracing::info!(mapping = %shared.lane.name, "stopping: draining partitions, committing, leaving the group");
    let held: Vec<(String, i32)> = assignment
        .lock()
        .expect("assignment lock")
        .keys()
        .cloned()
        .collect();
    consumer.context().release(&consumer, &held, true);
    consumer.unsubscribe();
    // Dropping the consumer closes it: it leaves the group, so the partitions move at once.
    drop(consumer);
}

/// Sleeps on the consumer thread; true when shutdown came first.
fn sleep_or_stop(shutdown: &CancellationToken, pause: Duration) -> bool {
    let until = Instant::now() + pause;
    while Instant::now() < until {
        if shutdown.is_cancelled() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(pause));
    }
    shutdown.is_cancelled()
}

/// Hands a polled record to its partition's lane, or queues it there (pausing the partition
/// when too much waits); true when it was queued.
fn take(
    shared: &Shared,
    consumer: &BaseConsumer<Context>,
    assignment: &Mutex<Assignment>,
    parts: &MessageParts<'_>,
) -> bool {
    let mut assignment = assignment.lock().expect("assignment lock");
    let key = (parts.topic.to_owned(), parts.partition);
    let Some(partition) = assignment.get_mut(&key) else {
        // A message of a partition released a moment ago; the new owner reads it.
        return false;
    };
    if partition
        .next_offset
        .is_some_and(|next| parts.offset < next)
    {
        return false;
    }
    partition.next_offset = Some(parts.offset + 1);
    shared.lane.metrics.records_received.increment(1);
    let position = partition
        .progress
        .progress
        .lock()
        .expect("progress lock")
        .push(parts.offset);
    if !shared.filters.is_empty() && !shared.filters.passes(&parts.filter_view()) {
        shared.lane.metrics.records_filtered.increment(1);
        partition.progress.finish([position]);
        return false;
    }
    let mut entry = (parts.to_record(now_since_epoch()), position);
    // Records already waiting go first, to keep the partition's order.
    if partition.waiting.is_empty() {
        entry = match partition.sender.try_send(entry) {
            Err(mpsc::error::TrySendError::Full(entry)) => entry,
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return false,
        };
    }
    partition.waiting_bytes += entry.0.size_bytes;
    partition.waiting.push_back(entry);
    if !partition.paused && partition.waiting_bytes >= shared.waiting_limit {
        let mut list = TopicPartitionList::new();
        let _ = list.add_partition(&key.0, key.1);
        match consumer.pause(&list) {
            Ok(()) => {
                partition.paused = true;
                shared.lane.metrics.stream_event("partition_paused");
            }
            Err(error) => {
                tracing::debug!(mapping = %shared.lane.name, partition = %partition.progress.name, %error, "pausing the partition failed")
            }
        }
    }
    true
}

/// Moves queued records into lanes that have room and resumes partitions whose queue went down
/// to half the limit (resuming before it empties hides the fetch that a resume starts).
fn feed_waiting(
    shared: &Shared,
    consumer: &BaseConsumer<Context>,
    assignment: &Mutex<Assignment>,
) -> Queued {
    let mut queued = Queued::Nothing;
    let mut assignment = assignment.lock().expect("assignment lock");
    for ((topic, number), partition) in assignment.iter_mut() {
        while let Some(entry) = partition.waiting.pop_front() {
            let size = entry.0.size_bytes;
            match partition.sender.try_send(entry) {
                Ok(()) => partition.waiting_bytes -= size,
                Err(mpsc::error::TrySendError::Full(entry)) => {
                    partition.waiting.push_front(entry);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    partition.waiting.clear();
                    partition.waiting_bytes = 0;
                }
            }
        }
        if partition.paused && partition.waiting_bytes <= shared.waiting_limit / 2 {
            let mut list = TopicPartitionList::new();
            let _ = list.add_partition(topic, *number);
            if consumer.resume(&list).is_ok() {
                partition.paused = false;
            }
        }
        if !partition.waiting.is_empty() {
            queued = if partition.sender.capacity() > 0 {
                Queued::Movable
            } else {
                queued.max(Queued::LanesFull)
            };
        } else if partition.paused {
            // A resume that failed is tried again on the next round.
            queued = queued.max(Queued::LanesFull);
        }
    }
    queued
}

/// What waits in partition queues after feeding the lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Queued {
    Nothing,
    LanesFull,
    Movable,
}

/// Commits every partition whose done offset moved.
fn commit(shared: &Shared, consumer: &BaseConsumer<Context>, assignment: &Mutex<Assignment>) {
    let moved: Vec<((String, i32), i64)> = {
        let assignment = assignment.lock().expect("assignment lock");
        assignment
            .iter()
            .filter_map(|(key, partition)| {
                partition.uncommitted().map(|offset| (key.clone(), offset))
            })
            .collect()
    };
    if moved.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in &moved {
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => {
            shared.lane.metrics.stream_event("offsets_committed");
            let mut assignment = assignment.lock().expect("assignment lock");
            for (key, offset) in moved {
                if let Some(partition) = assignment.get_mut(&key) {
                    partition.committed = Some(offset);
                }
            }
        }
        Err(error) => {
            shared.lane.metrics.stream_event("commit_failed");
            tracing::warn!(mapping = %shared.lane.name, %error, "committing offsets failed; the next commit carries them");
        }
    }
}
