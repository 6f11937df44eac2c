//! The worker of one Kafka mapping: the partitions its consumer-group member holds, each run
//! as one ordered lane under the stream policy (semantics.md §4). The consumer itself — its
//! thread, rebalances, pauses and commits — is `sluice_sources::kafka::consumer`; this module
//! only reads its events and answers through each partition's control.
//!
//! Guarantees:
//! - each partition is handled in offset order; a failing batch blocks only its partition (a
//!   partition whose records pile up beyond `partition_buffer_bytes` is paused at the broker, the
//!   others keep flowing);
//! - a partition's offset is reported done (and so committed) only when every record before it
//!   is done: handled, filtered out, or dead-lettered with the destination's confirmation;
//! - on a revoke, the revoked partitions stop taking records, batches in flight get until the
//!   drain deadline (`shutdown_timeout`), and only then is the consumer told they are released
//!   (it commits what finished and lets the rebalance go on); what did not finish is abandoned
//!   uncommitted (the next owner reads it again);
//! - on shutdown the consumer revokes every partition the same way, then leaves the group;
//! - a lane that ends while its partition is held (a panic) takes the mapping down: the consumer
//!   leaves the group and the supervisor starts the mapping again.

pub mod auth;
pub mod config;
pub mod schema;

use self::config::KafkaSourceConfig;
use crate::config::{MappingConfig, StartingPosition};
use crate::destinations::{Destination, EnvelopeSource};
use crate::health::MappingHealthHandle;
use crate::runtime::invoker::Invoker;
use crate::runtime::lane::{Entry, LaneHost, LaneSettings, Prepared, run_lane};
use crate::runtime::mapping::{Mapping, SourceClients, StartMapping};
use crate::targets::SharedTarget;
use crate::telemetry::MappingMetrics;
use sluice_policies::{BatchLimits, ItemIdentifier, ShardProgress, stream::Position};
use sluice_sources::Record;
use sluice_sources::kafka::consumer::{
    Assigned, ConsumerEvent, ConsumerSettings, KafkaConsumer, PartitionControl, PartitionKey,
    Polled, Revoked,
};
use sluice_sources::kafka::{KafkaCluster, StartPosition, partition_name};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the lanes are checked for one that ended while its partition is held.
const LANE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Beyond the drain deadline, how long the consumer waits for partitions to be released.
const RELEASE_MARGIN: Duration = Duration::from_secs(5);
/// How long an aborted lane gets to end (it drops its work at once) before its task is aborted.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Starts `mapping`, reading `source`.
pub fn start(
    source: &KafkaSourceConfig,
    mapping: Mapping,
    clients: &SourceClients,
) -> StartMapping {
    let shutdown_timeout = mapping.shutdown_timeout;
    let worker = KafkaMapping {
        config: mapping.config,
        source: source.clone(),
        target: mapping.target,
        on_failure: mapping.on_failure,
        health: mapping.health,
        metrics: mapping.metrics,
        region: clients.region.clone(),
    };
    Box::new(move |token| Box::pin(worker.clone().run(token, shutdown_timeout)))
}

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
    /// Name, target, policy, health and metrics of the mapping.
    lane: LaneSettings,
    /// Bytes of records a partition may queue in its lane before it is paused at the broker
    /// (`partition_buffer_bytes`); it is resumed once they are down to half. A pause drops what
    /// librdkafka prefetched and a resume waits for the fetch in flight (up to
    /// fetch.wait.max.ms), so pausing whenever a lane held a batch or two cost 500 ms per couple
    /// of batches (1 partition, no-op handler: 453 records/s, against 190k/s unpaused).
    queue_limit: usize,
    drain_timeout: Duration,
    /// The schema registry's decoder, when the mapping has one; the mapping's filters then run
    /// here, after decoding, instead of in the consumer.
    decoder: Option<(schema::Decoder, sluice_policies::FilterSet)>,
}

/// Which records of a partition are done, and how many bytes wait in its lane; what is done and
/// whether the partition should be paused are reported to the consumer.
struct PartitionProgress {
    topic: String,
    partition: i32,
    name: String,
    progress: Mutex<ShardProgress<i64>>,
    control: Arc<PartitionControl>,
    /// Signed: the lane may take a record before the router has counted it (they run on
    /// different threads), and the count must come out right in either order.
    queued_bytes: AtomicI64,
    queue_limit: usize,
}

impl PartitionProgress {
    fn push(&self, offset: i64) -> Position {
        self.progress.lock().expect("progress lock").push(offset)
    }

    /// Records read and not yet finished.
    fn outstanding(&self) -> usize {
        self.progress.lock().expect("progress lock").outstanding()
    }

    fn finish(&self, positions: impl IntoIterator<Item = Position>) {
        let mut progress = self.progress.lock().expect("progress lock");
        for position in positions {
            progress.finish(position);
        }
        if let Some(offset) = progress.advance() {
            self.control.done_until(offset + 1);
        }
    }

    /// A record entered the lane; true when that asked for the partition to be paused.
    fn queued(&self, bytes: usize) -> bool {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if queued >= self.limit() && !self.control.pause_wanted() {
            self.control.pause(true);
            return true;
        }
        false
    }

    /// The lane took a record; the partition is resumed once half the limit is left.
    fn taken(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let queued = self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        if queued <= self.limit() / 2 && self.control.pause_wanted() {
            self.control.pause(false);
        }
    }

    fn limit(&self) -> i64 {
        i64::try_from(self.queue_limit).unwrap_or(i64::MAX)
    }
}

/// A partition this member holds.
struct Partition {
    progress: Arc<PartitionProgress>,
    /// Unbounded: the bytes in it are bounded by pausing the partition (see `Shared::queue_limit`).
    sender: mpsc::UnboundedSender<Entry>,
    stop: CancellationToken,
    abort: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    lag: metrics::Gauge,
    /// The lag last reported, for the mapping's `OffsetLag` (their sum).
    lag_now: u64,
}

impl Partition {
    /// Stops the lane at once and waits (briefly) for it to end, so nothing of it runs beside the
    /// partition's next owner.
    async fn abort(&mut self) {
        self.abort.cancel();
        if tokio::time::timeout(ABORT_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// The partitions held, fed from the consumer's events. Dropped (the mapping ends or unwinds),
/// it stops every lane still running.
struct Router {
    shared: Arc<Shared>,
    partitions: HashMap<PartitionKey, Partition>,
}

impl Drop for Router {
    fn drop(&mut self) {
        for partition in self.partitions.values() {
            partition.abort.cancel();
            partition.task.abort();
        }
    }
}

/// Why the router gave up: lanes that ended while their partitions were held.
#[derive(Debug)]
struct LanesStopped(Vec<String>);

impl Router {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            partitions: HashMap::new(),
        }
    }

    /// Handles the consumer's events until it ends (after `stop_consumer`, which is called once
    /// `shutdown` comes), or until a lane ends on its own.
    async fn run(
        &mut self,
        events: &mut mpsc::Receiver<ConsumerEvent>,
        stop_consumer: impl Fn(),
        shutdown: &CancellationToken,
    ) -> Result<(), LanesStopped> {
        let mut check = tokio::time::interval(LANE_CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    stop_consumer();
                }
                event = events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => return Ok(()),
                },
                _ = check.tick() => {
                    let dead: Vec<String> = self
                        .partitions
                        .values()
                        .filter(|partition| partition.task.is_finished())
                        .map(|partition| partition.progress.name.clone())
                        .collect();
                    if !dead.is_empty() {
                        return Err(LanesStopped(dead));
                    }
                }
            }
        }
    }

    async fn handle(&mut self, event: ConsumerEvent) {
        let metrics = &self.shared.lane.metrics;
        let health = &self.shared.lane.health;
        match event {
            ConsumerEvent::Assigned(assigned) => {
                for partition in assigned {
                    self.assign(partition).await;
                }
                self.shared
                    .lane
                    .metrics
                    .partitions_assigned()
                    .set(self.partitions.len() as f64);
            }
            ConsumerEvent::Polled(polled) => {
                for record in polled {
                    self.take(record);
                }
            }
            ConsumerEvent::Revoked(revoked) => self.release(revoked).await,
            ConsumerEvent::Healthy => health.poll_succeeded(),
            ConsumerEvent::Failed(reason) => {
                metrics.poll_errors.increment(1);
                health.poll_failed(&reason);
            }
            ConsumerEvent::Committed => metrics.stream_event("offsets_committed"),
            ConsumerEvent::CommitFailed(_) => metrics.stream_event("commit_failed"),
            ConsumerEvent::Lag(lags) => {
                for (key, lag) in lags {
                    if let Some(partition) = self.partitions.get_mut(&key) {
                        partition.lag.set(lag as f64);
                        partition.lag_now = lag.max(0) as u64;
                    }
                }
                self.publish_offset_lag();
            }
        }
    }

    /// Starts the lane of a partition given to this member.
    async fn assign(&mut self, assigned: Assigned) {
        let shared = &self.shared;
        let (topic, number) = assigned.partition.clone();
        let name = partition_name(&topic, number);
        let progress = Arc::new(PartitionProgress {
            topic,
            partition: number,
            name: name.clone(),
            progress: Mutex::new(ShardProgress::new()),
            control: assigned.control,
            queued_bytes: AtomicI64::new(0),
            queue_limit: shared.queue_limit,
        });
        let (sender, receiver) = mpsc::unbounded_channel::<Entry>();
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let host = Arc::new(PartitionLane {
            shared: shared.clone(),
            progress: progress.clone(),
        });
        let task = tokio::spawn(run_lane(
            host,
            name.clone(),
            receiver,
            stop.clone(),
            abort.clone(),
        ));
        shared.lane.metrics.stream_event("partition_assigned");
        let lag = shared.lane.metrics.consumer_lag(&name);
        let old = self.partitions.insert(
            assigned.partition,
            Partition {
                progress,
                sender,
                stop,
                abort,
                task,
                lag,
                lag_now: 0,
            },
        );
        if let Some(mut old) = old {
            // The consumer assigns a partition only once until it revokes it; should it not, the
            // old lane's work is abandoned uncommitted rather than run beside the new one.
            old.abort().await;
        }
    }

    /// Hands a polled record to its partition's lane (asking for the partition to be paused when
    /// too much waits there).
    fn take(&mut self, polled: Polled) {
        let shared = &self.shared;
        let Some(partition) = self.partitions.get_mut(&polled.partition) else {
            // A record of a partition released a moment ago; the next owner reads it.
            return;
        };
        shared.lane.metrics.received(1);
        let position = partition.progress.push(polled.offset);
        let Some(record) = polled.record else {
            shared.lane.metrics.filtered(1);
            shared.lane.metrics.checkpointed(1);
            partition.progress.finish([position]);
            return;
        };
        // Counted before it is sent: the lane, on another thread, may take it at once.
        if partition.progress.queued(record.size_bytes) {
            shared.lane.metrics.stream_event("partition_paused");
        }
        // Fails only when the lane has ended; the lane check then takes the mapping down.
        let _ = partition.sender.send((record, position));
    }

    /// Stops the lanes of the revoked partitions, waits for in-flight batches until the drain
    /// deadline, then tells the consumer they are released (it commits what is done).
    async fn release(&mut self, revoked: Revoked) {
        let shared = self.shared.clone();
        let mut released: Vec<Partition> = revoked
            .partitions
            .iter()
            .filter_map(|key| self.partitions.remove(key))
            .collect();
        shared
            .lane
            .metrics
            .partitions_assigned()
            .set(self.partitions.len() as f64);
        for partition in &released {
            partition.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + shared.drain_timeout;
        let mut abandoned = 0;
        for partition in &mut released {
            let finished = tokio::select! {
                _ = &mut partition.task => true,
                _ = tokio::time::sleep_until(deadline) => false,
            };
            if !finished {
                abandoned += 1;
                partition.abort().await;
            }
        }
        if abandoned > 0 {
            tracing::warn!(mapping = %shared.lane.name, partitions = abandoned, "drain deadline reached; in-flight batches abandoned uncommitted, the next owner reads them again");
        }
        for partition in &released {
            tracing::info!(mapping = %shared.lane.name, partition = %partition.progress.name, done_until = ?partition.progress.control.done(), lost = revoked.lost, "partition stopped");
            partition.lag.set(0.0);
            // A lane abandoned while retrying a failing batch leaves its stuck mark behind.
            shared.lane.health.stuck(&partition.progress.name, None);
            shared.lane.metrics.stream_event("partition_released");
        }
        revoked.released();
        self.publish_offset_lag();
    }

    /// `OffsetLag`: the lag of the partitions this member holds, summed; and for autoscaling
    /// the same lag as the backlog, less the records already read (they wait in a lane or are
    /// being handled, held by this task) as what waits.
    fn publish_offset_lag(&self) {
        let total: u64 = self.partitions.values().map(|p| p.lag_now).sum();
        let held: u64 = self
            .partitions
            .values()
            .map(|p| p.progress.outstanding() as u64)
            .sum();
        let metrics = &self.shared.lane.metrics;
        metrics.offset_lag(total);
        metrics.report_backlog(total, total.saturating_sub(held));
    }

    /// Stops every lane (the mapping is going down without releasing its partitions).
    async fn abort_all(&mut self) {
        for (_, mut partition) in self.partitions.drain() {
            partition.abort().await;
            partition.lag.set(0.0);
            self.shared
                .lane
                .health
                .stuck(&partition.progress.name, None);
        }
        self.publish_offset_lag();
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

    fn received(&self, record: &Record) {
        self.progress.taken(record.size_bytes);
    }

    async fn prepare(&self, record: Record) -> Prepared {
        let Some((decoder, filters)) = &self.shared.decoder else {
            return Prepared::Ready(record);
        };
        match decoder.decode(record, !filters.is_empty()).await {
            schema::Decoded::Ready(record, view) => {
                if filters.is_empty() || filters.passes(&view) {
                    Prepared::Ready(record)
                } else {
                    Prepared::Skipped
                }
            }
            schema::Decoded::Unusable(record, error) => Prepared::Unusable(record, error),
            schema::Decoded::Retry(record, reason) => Prepared::Retry(record, reason),
        }
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
        let decoder = match &self.source.schema_registry {
            None => None,
            Some(registry) => match schema::Decoder::new(registry) {
                Ok(decoder) => Some((decoder, self.config.filters.clone())),
                Err(error) => {
                    // A certificate file that cannot be read: the supervisor restarts the
                    // mapping with its backoff and /readyz names the error.
                    let error = crate::error_chain(&error);
                    self.health.poll_failed(&error);
                    tracing::error!(mapping = %name, %error, "cannot set up the schema registry client");
                    return;
                }
            },
        };
        // With a registry the filters need the decoded values: they run in the lanes.
        let consumer_filters = match decoder {
            Some(_) => sluice_policies::FilterSet::default(),
            None => self.config.filters.clone(),
        };
        let shared = Arc::new(Shared {
            cluster: self.source.cluster(),
            lane: LaneSettings {
                name: name.clone(),
                invoker: Invoker::new(self.target.clone(), self.metrics.clone()),
                policy: self.source.policy.clone(),
                limits: BatchLimits::new(self.source.batch_size, self.source.max_batching_window),
                health: self.health.clone(),
                metrics: self.metrics.clone(),
                on_failure: self.on_failure.clone(),
                region: self.region.clone(),
            },
            queue_limit: self.source.partition_buffer_bytes,
            drain_timeout: shutdown_timeout,
            decoder,
        });
        let settings = ConsumerSettings {
            name: name.clone(),
            bootstrap_servers: self.source.bootstrap_servers.clone(),
            group_id: self.source.group_id.clone(),
            topics: self.source.topics.clone(),
            properties: self.source.properties.clone(),
            position,
            filters: consumer_filters,
            release_timeout: shutdown_timeout + RELEASE_MARGIN,
            paused: self.health.pause().flag(),
            tokens: self.source.tokens(),
        };
        let (consumer, mut events) = match KafkaConsumer::start(settings) {
            Ok(started) => started,
            Err(error) => {
                // Bad properties: nothing a retry can fix soon; the supervisor restarts the
                // mapping with its backoff and /readyz names the error.
                self.health.poll_failed(&error.to_string());
                tracing::error!(mapping = %name, %error, "cannot start the kafka consumer");
                return;
            }
        };
        tracing::info!(mapping = %name, topics = ?self.source.topics, batch_size = self.source.batch_size, "mapping started");
        // The lag the router reports is the backlog; sampling ends with this run however it ends.
        let _sampling = crate::runtime::scaling::start(
            &name,
            crate::runtime::scaling::BacklogSource::Reported,
            &self.metrics,
            &self.config.autoscaling,
        );
        let mut router = Router::new(shared);
        let outcome = router.run(&mut events, || consumer.stop(), &shutdown).await;
        // Normally every partition was released; after a dead lane, or a consumer thread that
        // ended without releasing (a panic), the lanes left stop here, not beside the next
        // incarnation. The consumer commits what is done and leaves once nobody listens.
        router.abort_all().await;
        consumer.stop();
        drop(events);
        // Wait for the thread without blocking the runtime. A panic on it is carried into this
        // task, so the mapping's supervisor sees it and restarts.
        if let Ok(Err(panic)) = tokio::task::spawn_blocking(move || consumer.join()).await {
            std::panic::resume_unwind(panic);
        }
        if let Err(LanesStopped(dead)) = outcome {
            // A lane ends only when its partition is released; one that ended while held
            // panicked, and its partition would never move again. The supervisor logs this,
            // shows it on /readyz and starts the mapping again (uncommitted records come again).
            panic!("the lanes of partitions {dead:?} stopped unexpectedly");
        }
        tracing::info!(mapping = %name, "mapping stopped");
    }
}

#[cfg(test)]
mod tests {
    //! The router against events a test sends in the consumer's place, a scripted target, and
    //! tokio's paused clock.
    use super::*;
    use crate::health::Health;
    use crate::targets::testing::ScriptedTarget;
    use serde_json::json;
    use sluice_policies::Outcome;
    use sluice_sources::kafka::MessageParts;

    const TOPIC: &str = "clicks";

    fn shared(target: Arc<ScriptedTarget>, batch_size: usize, queue_limit: usize) -> Arc<Shared> {
        Arc::new(Shared {
            cluster: KafkaCluster {
                bootstrap_servers: "mock:9092".into(),
                msk_cluster_arn: None,
            },
            lane: LaneSettings {
                name: "clicks".into(),
                invoker: Invoker::new(
                    SharedTarget::new("t", target, 1),
                    MappingMetrics::new("clicks"),
                ),
                policy: sluice_policies::StreamPolicy {
                    report_batch_item_failures: false,
                    bisect_on_error: false,
                    max_retry_attempts: None,
                    max_record_age: None,
                    backoff: sluice_policies::Backoff::new(
                        Duration::from_secs(1),
                        Duration::from_secs(1),
                        2.0,
                        false,
                    )
                    .unwrap(),
                    identifier_kind: sluice_policies::IdentifierKind::KafkaOffset,
                    non_retryable: None,
                },
                limits: BatchLimits::new(batch_size, Duration::ZERO),
                health: Health::new(Duration::from_secs(60), Duration::from_secs(60))
                    .register("clicks"),
                metrics: MappingMetrics::new("clicks"),
                on_failure: None,
                region: "us-east-1".into(),
            },
            queue_limit,
            drain_timeout: Duration::from_secs(30),
            decoder: None,
        })
    }

    fn key(partition: i32) -> PartitionKey {
        (TOPIC.to_owned(), partition)
    }

    fn assigned(partition: i32) -> (ConsumerEvent, Arc<PartitionControl>) {
        let control = Arc::new(PartitionControl::default());
        let event = ConsumerEvent::Assigned(vec![Assigned {
            partition: key(partition),
            start: sluice_sources::kafka::StartOffset::Beginning,
            control: control.clone(),
        }]);
        (event, control)
    }

    /// Records `offsets` of `partition`; an odd offset is filtered out when `filter_odd`.
    fn polled(partition: i32, offsets: std::ops::Range<i64>, filter_odd: bool) -> ConsumerEvent {
        ConsumerEvent::Polled(
            offsets
                .map(|offset| {
                    let value = json!({ "n": offset }).to_string();
                    let parts = MessageParts {
                        topic: TOPIC,
                        partition,
                        offset,
                        timestamp: None,
                        key: None,
                        value: Some(value.as_bytes()),
                        headers: vec![],
                    };
                    Polled {
                        partition: key(partition),
                        offset,
                        record: (!filter_odd || offset % 2 == 0)
                            .then(|| parts.to_record(Duration::ZERO)),
                    }
                })
                .collect(),
        )
    }

    /// The offsets each call carried, in call order.
    fn calls(target: &ScriptedTarget) -> Vec<Vec<i64>> {
        target
            .payloads()
            .iter()
            .map(|event| {
                event["records"][format!("{TOPIC}-0")]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["offset"].as_i64().unwrap())
                    .collect()
            })
            .collect()
    }

    /// A router's task, giving back the router and how its run ended.
    type RouterTask = tokio::task::JoinHandle<(Router, Result<(), LanesStopped>)>;

    /// A router running on the events the returned sender sends.
    fn start(shared: Arc<Shared>) -> (mpsc::Sender<ConsumerEvent>, RouterTask) {
        let (sender, mut events) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            let mut router = Router::new(shared);
            let outcome = router
                .run(&mut events, || {}, &CancellationToken::new())
                .await;
            (router, outcome)
        });
        (sender, task)
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Revokes `partition` as the consumer does and waits for its release; how long it took.
    async fn revoke(sender: &mpsc::Sender<ConsumerEvent>, partition: i32) -> Duration {
        let (revoked, released) = Revoked::new(vec![key(partition)], false);
        let sent = tokio::time::Instant::now();
        sender.send(ConsumerEvent::Revoked(revoked)).await.unwrap();
        // A loop, not `until`: the receiver is not `Sync`, and this runs in spawned tasks too.
        while released.try_recv().is_err() {
            assert!(
                sent.elapsed() < Duration::from_secs(600),
                "waited for the release"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn records_are_done_in_offset_order_filtered_ones_included_and_a_revoke_waits_for_the_lane()
     {
        let target = Arc::new(ScriptedTarget::default());
        // The second batch takes 20 s (within the 30 s drain deadline): the revoke waits for it.
        target.push(Outcome::Returned { response: None });
        target.push_after(
            Duration::from_secs(20),
            Outcome::Returned { response: None },
        );
        let (sender, task) = start(shared(target.clone(), 3, 1 << 20));
        let (event, control) = assigned(0);
        sender.send(event).await.unwrap();
        sender.send(polled(0, 0..8, true)).await.unwrap();
        // Batches 0, 2, 4 | 6; the filtered 1, 3, 5, 7 are done in their places, so after the
        // first batch everything before 6 is.
        until("the first batch", || control.done() == Some(6)).await;
        let waited = revoke(&sender, 0).await;
        assert!(
            waited >= Duration::from_secs(19) && waited < Duration::from_secs(21),
            "{waited:?}"
        );
        assert_eq!(
            control.done(),
            Some(8),
            "the batch in flight finished first"
        );
        assert_eq!(calls(&target), vec![vec![0, 2, 4], vec![6]]);
        drop(sender);
        let (router, outcome) = task.await.unwrap();
        assert!(outcome.is_ok() && router.partitions.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoke_past_the_drain_deadline_abandons_the_batch_uncommitted() {
        let target = Arc::new(ScriptedTarget::default());
        target.push_hang();
        let (sender, task) = start(shared(target.clone(), 2, 1 << 20));
        let (event, control) = assigned(0);
        sender.send(event).await.unwrap();
        sender.send(polled(0, 0..2, false)).await.unwrap();
        until("the call", || target.calls() == 1).await;
        let waited = revoke(&sender, 0).await;
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        );
        assert_eq!(control.done(), None, "nothing finished, nothing to commit");
        drop(sender);
        assert!(task.await.unwrap().1.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_whose_records_pile_up_is_paused_and_resumed_once_half_has_drained() {
        let target = Arc::new(ScriptedTarget::default());
        target.push_after(
            Duration::from_secs(10),
            Outcome::Returned { response: None },
        );
        let record_size = match polled(0, 0..1, false) {
            ConsumerEvent::Polled(mut p) => p.remove(0).record.unwrap().size_bytes,
            _ => unreachable!(),
        };
        // One record per batch: the lane takes the one in flight and two more; six may wait.
        let (sender, task) = start(shared(target.clone(), 1, record_size * 6));
        let (event, control) = assigned(0);
        sender.send(event).await.unwrap();
        sender.send(polled(0, 0..12, false)).await.unwrap();
        until("the pause", || control.pause_wanted()).await;
        // The slow first call answers; the rest answer at once, and the queue drains.
        until("everything done", || control.done() == Some(12)).await;
        assert!(!control.pause_wanted(), "resumed once the queue went down");
        assert_eq!(calls(&target), (0..12).map(|o| vec![o]).collect::<Vec<_>>());
        drop(sender);
        assert!(task.await.unwrap().1.is_ok());
    }

    /// Seen in the chaos suite: the lane took a record on another thread before the router
    /// counted its bytes, the count went below zero, and the lane panicked (the mapping restarted
    /// and its partitions were read again).
    #[test]
    fn a_record_taken_before_it_is_counted_leaves_the_queued_bytes_right() {
        let control = Arc::new(PartitionControl::default());
        let progress = PartitionProgress {
            topic: TOPIC.into(),
            partition: 0,
            name: "clicks-0".into(),
            progress: Mutex::new(ShardProgress::new()),
            control: control.clone(),
            queued_bytes: AtomicI64::new(0),
            queue_limit: 100,
        };
        progress.taken(60);
        assert!(!progress.queued(60), "nothing waits: no pause");
        assert_eq!(progress.queued_bytes.load(Ordering::Acquire), 0);
        assert!(progress.queued(100), "at the limit: paused");
        progress.taken(40);
        assert!(control.pause_wanted(), "60 bytes wait, over half the limit");
        progress.taken(10);
        assert!(!control.pause_wanted(), "half the limit left: resumed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_that_ends_while_its_partition_is_held_stops_the_router() {
        let target = Arc::new(ScriptedTarget::default());
        let (_sender, mut events) = mpsc::channel(16);
        let mut router = Router::new(shared(target, 1, 1 << 20));
        let (event, _control) = assigned(3);
        router.handle(event).await;
        // The lane ends from outside while the partition is held.
        router.partitions[&key(3)].abort.cancel();
        let outcome = router
            .run(&mut events, || {}, &CancellationToken::new())
            .await;
        match outcome {
            Err(LanesStopped(dead)) => assert_eq!(dead, vec!["clicks-3".to_owned()]),
            Ok(()) => panic!("the router went on without the lane"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_the_consumer_is_stopped_and_its_final_revoke_waits_for_the_lane() {
        let target = Arc::new(ScriptedTarget::default());
        target.push_after(Duration::from_secs(5), Outcome::Returned { response: None });
        let (sender, mut events) = mpsc::channel(16);
        let mut router = Router::new(shared(target.clone(), 2, 1 << 20));
        let shutdown = CancellationToken::new();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (event, control) = assigned(0);
        sender.send(event).await.unwrap();
        sender.send(polled(0, 0..2, false)).await.unwrap();
        // The consumer's part: once asked to stop, it revokes what it holds and ends.
        let consumer = tokio::spawn({
            let stopped = stopped.clone();
            let target = target.clone();
            async move {
                while target.calls() == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                revoke(&sender, 0).await
            }
        });
        tokio::spawn({
            let shutdown = shutdown.clone();
            let target = target.clone();
            async move {
                while target.calls() == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                shutdown.cancel();
            }
        });
        router
            .run(
                &mut events,
                || stopped.store(true, std::sync::atomic::Ordering::SeqCst),
                &shutdown,
            )
            .await
            .unwrap();
        let waited = consumer.await.unwrap();
        assert!(
            waited >= Duration::from_secs(4),
            "released after {waited:?}"
        );
        assert_eq!(
            control.done(),
            Some(2),
            "the batch in flight finished first"
        );
        assert!(router.partitions.is_empty());
    }
}
