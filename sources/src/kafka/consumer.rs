//! A Kafka consumer-group member on a thread of its own, talking to its owner (the runtime)
//! through typed [`ConsumerEvent`]s over a bounded channel.
//!
//! librdkafka wants its polls, rebalance callbacks and commits on one thread; this module is the
//! only place that drives it. The owner never calls librdkafka: it reads events and answers
//! through a [`PartitionControl`] per partition (how far its records are done, whether it wants
//! the partition paused) and the [`Revoked`] reply.
//!
//! Guarantees:
//! - a partition's records arrive in offset order, after its [`ConsumerEvent::Assigned`] and
//!   before its [`ConsumerEvent::Revoked`]; a record librdkafka fetches again after a pause is
//!   delivered once;
//! - a record that does not pass the mapping's filters arrives without its record (`None`), so
//!   the owner can count it done in order;
//! - an offset is committed only as far as the owner reported done ([`PartitionControl::done_until`]),
//!   every [`COMMIT_INTERVAL`] and when partitions are released;
//! - a revoke (or the stop) waits for the owner's [`Revoked::released`] — at most
//!   `release_timeout` — before committing and letting the rebalance go on, so the next owner
//!   starts where this one finished; a partition already lost to another member is not committed;
//! - the channel holds at most [`EVENT_CAPACITY`] events of at most [`MAX_POLLED`] records and
//!   [`MAX_POLLED_BYTES`] each: a slow owner slows the polls; a partition the owner wants paused
//!   is paused at the broker before the next poll, and resumed before it is released (a pause
//!   is the application's, and librdkafka would keep it for the partition's next assignment);
//! - the thread ends after [`KafkaConsumer::stop`], or when the owner drops its receiver (then what
//!   the owner reported done is committed and the member leaves the group).

use super::{
    MessageParts, StartOffset, StartPosition, consumer_config, partition_name, start_offset,
};
use crate::record::Record;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use sluice_policies::FilterSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A topic and a partition number.
pub type PartitionKey = (String, i32);

/// How many events the channel holds before the consumer thread waits for the owner.
pub const EVENT_CAPACITY: usize = 16;
/// How many records one [`ConsumerEvent::Polled`] carries at most.
pub const MAX_POLLED: usize = 256;
/// How many bytes of records one [`ConsumerEvent::Polled`] carries at most (a record larger
/// than this travels alone). With [`EVENT_CAPACITY`], this bounds what can reach the owner after
/// it asked for a pause: about 17 MiB per mapping.
pub const MAX_POLLED_BYTES: usize = 1 << 20;
/// How often done offsets are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How long one poll waits for a message; bounds how late the thread notices a stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a poll waits while a partition is paused: how late a resume reaches the broker.
/// A resume starts a fetch that takes up to fetch.wait.max.ms, so a late one is costly.
const PAUSED_POLL_TIMEOUT: Duration = Duration::from_millis(2);
/// How often the same poll error is logged again.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How long after a client error an empty poll counts as healthy again.
const CLIENT_ERROR_QUIET: Duration = Duration::from_secs(30);
/// How often a healthy consumer says so: as often as an idle poll ends, so the owner's stall
/// detection (`stall_after`, 1 s at the least) sees every working poll.
const HEALTHY_EVERY: Duration = Duration::from_millis(100);
/// Broker calls made while assigning partitions (committed offsets, offsets for times).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the consumer needs to join its group.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The mapping, for logs and the thread's name.
    pub name: String,
    pub bootstrap_servers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// librdkafka properties, in file order (the ones sluice owns are overridden).
    pub properties: Vec<(String, String)>,
    pub position: StartPosition,
    pub filters: FilterSet,
    /// How long a revoke waits for the owner to release the partitions; past it, what is done is
    /// committed and the rebalance goes on.
    pub release_timeout: Duration,
    /// Set while the whole mapping is paused: every partition is paused at the broker, whatever
    /// its owner asks.
    pub paused: Arc<AtomicBool>,
    /// OAUTHBEARER tokens (MSK IAM), when the cluster wants them.
    pub tokens: super::auth::Tokens,
}

/// What the consumer tells its owner.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// These partitions are now this member's.
    Assigned(Vec<Assigned>),
    /// Records, in offset order within each partition.
    Polled(Vec<Polled>),
    /// These partitions are leaving (a rebalance, or the stop): the owner stops working on them
    /// and answers with [`Revoked::released`].
    Revoked(Revoked),
    /// A poll worked.
    Healthy,
    /// The client or a poll failed (brokers down, authentication, a subscription refused).
    Failed(String),
    /// Done offsets were committed.
    Committed,
    /// A commit failed; the next one carries its offsets.
    CommitFailed(String),
    /// Records between what is done and the partition's end, from librdkafka's statistics.
    Lag(Vec<(PartitionKey, i64)>),
}

/// A partition given to this member.
#[derive(Debug)]
pub struct Assigned {
    pub partition: PartitionKey,
    /// Where its records start (a committed offset wins over the starting position).
    pub start: StartOffset,
    /// How the owner reports on this partition for as long as it holds it.
    pub control: Arc<PartitionControl>,
}

/// A polled record of a held partition.
#[derive(Debug)]
pub struct Polled {
    pub partition: PartitionKey,
    pub offset: i64,
    /// `None` when the mapping's filters leave the record out.
    pub record: Option<Record>,
}

/// Partitions leaving this member.
#[derive(Debug)]
pub struct Revoked {
    pub partitions: Vec<PartitionKey>,
    /// Already another member's: nothing of them is committed.
    pub lost: bool,
    reply: std::sync::mpsc::SyncSender<()>,
}

impl Revoked {
    /// A revoke and the receiver its release is answered on (what the consumer waits on; also
    /// how a unit test of an owner plays the consumer).
    pub fn new(partitions: Vec<PartitionKey>, lost: bool) -> (Self, std::sync::mpsc::Receiver<()>) {
        let (reply, released) = std::sync::mpsc::sync_channel(1);
        (
            Self {
                partitions,
                lost,
                reply,
            },
            released,
        )
    }

    /// The owner has stopped working on the partitions and reported what is done.
    pub fn released(self) {
        let _ = self.reply.send(());
    }
}

/// What the owner says about one held partition.
#[derive(Debug)]
pub struct PartitionControl {
    /// The next offset to commit (the last done offset + 1); negative until something is done.
    done_until: AtomicI64,
    pause: AtomicBool,
}

impl Default for PartitionControl {
    fn default() -> Self {
        Self {
            done_until: AtomicI64::new(-1),
            pause: AtomicBool::new(false),
        }
    }
}

impl PartitionControl {
    /// Every record before `offset` is done (handled, filtered out or dead-lettered).
    pub fn done_until(&self, offset: i64) {
        self.done_until.fetch_max(offset, Ordering::AcqRel);
    }

    /// The next offset to commit, once something is done.
    pub fn done(&self) -> Option<i64> {
        let offset = self.done_until.load(Ordering::Acquire);
        (offset >= 0).then_some(offset)
    }

    /// Asks for the partition to be paused at the broker (`true`) or resumed (`false`).
    pub fn pause(&self, paused: bool) {
        self.pause.store(paused, Ordering::Release);
    }

    /// Whether the owner wants the partition paused.
    pub fn pause_wanted(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(
        "cannot create the Kafka consumer of mapping {mapping:?}: {source}; check source.kafka.properties"
    )]
    Create {
        mapping: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot start the Kafka consumer thread of mapping {mapping:?}: {source}")]
    Thread {
        mapping: String,
        #[source]
        source: std::io::Error,
    },
}

/// The running consumer. Dropping it asks the thread to stop.
pub struct KafkaConsumer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KafkaConsumer {
    /// Creates the consumer and starts its thread; the events arrive on the receiver, which ends
    /// when the thread has left the group.
    pub fn start(
        settings: ConsumerSettings,
    ) -> Result<(Self, mpsc::Receiver<ConsumerEvent>), ConsumerError> {
        let (events, receiver) = mpsc::channel(EVENT_CAPACITY);
        let context = Context {
            name: settings.name.clone(),
            position: settings.position,
            filters: settings.filters.clone(),
            release_timeout: settings.release_timeout,
            paused: settings.paused.clone(),
            tokens: settings.tokens.clone(),
            events,
            state: Mutex::default(),
        };
        let mut config = consumer_config(
            &settings.bootstrap_servers,
            &settings.group_id,
            settings.position,
            &settings.properties,
        );
        if config.get("statistics.interval.ms").is_none() {
            // Consumer lag comes from librdkafka's statistics.
            config.set("statistics.interval.ms", "5000");
        }
        let consumer: BaseConsumer<Context> =
            config
                .create_with_context(context)
                .map_err(|source| ConsumerError::Create {
                    mapping: settings.name.clone(),
                    source,
                })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let mapping = settings.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{}", settings.name))
            .spawn(move || consume(consumer, &settings, &thread_stop))
            .map_err(|source| ConsumerError::Thread { mapping, source })?;
        Ok((
            Self {
                stop,
                thread: Some(thread),
            },
            receiver,
        ))
    }

    /// Asks the thread to release every partition (through [`ConsumerEvent::Revoked`]), commit
    /// and leave the group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits for the thread (blocking); a panic on it is returned.
    pub fn join(mut self) -> std::thread::Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join(),
            None => Ok(()),
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A partition this member holds, as the thread sees it.
struct Held {
    control: Arc<PartitionControl>,
    /// The next offset expected: anything below was delivered already (a fetch repeated after a
    /// pause is skipped).
    next_offset: Option<i64>,
    /// The offset last committed (or found committed).
    committed: Option<i64>,
    paused: bool,
}

impl Held {
    /// The offset to commit, when it moved past the last commit.
    fn uncommitted(&self) -> Option<i64> {
        let done = self.control.done()?;
        self.committed.is_none_or(|c| done > c).then_some(done)
    }
}

#[derive(Default)]
struct State {
    held: HashMap<PartitionKey, Held>,
    /// Records polled and not yet sent; sent before any rebalance event, so order holds.
    pending: Vec<Polled>,
    pending_bytes: usize,
    /// The owner dropped its receiver.
    owner_gone: bool,
    /// When the client last reported an error: an empty poll counts as healthy only some time
    /// after it.
    client_error_at: Option<Instant>,
    /// What the owner was last told about health, and when.
    reported: Option<(bool, Instant)>,
}

/// The consumer's callbacks; they run on the consumer thread, inside `poll` (log lines may come
/// from librdkafka's own threads, hence the lock).
struct Context {
    name: String,
    position: StartPosition,
    filters: FilterSet,
    release_timeout: Duration,
    paused: Arc<AtomicBool>,
    tokens: super::auth::Tokens,
    events: mpsc::Sender<ConsumerEvent>,
    state: Mutex<State>,
}

impl Context {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("consumer state lock")
    }

    /// Sends an event, waiting for room; false (and the owner marked gone) when nobody listens.
    fn send(&self, event: ConsumerEvent) -> bool {
        if self.state().owner_gone {
            return false;
        }
        let sent = if tokio::runtime::Handle::try_current().is_ok() {
            // Only when the consumer is closed on a runtime thread (its thread could not start):
            // blocking there would panic, and nobody is listening yet.
            self.events.try_send(event).is_ok()
        } else {
            self.events.blocking_send(event).is_ok()
        };
        if !sent {
            self.state().owner_gone = true;
        }
        sent
    }

    /// Sends the records polled so far.
    fn flush(&self) {
        let pending = {
            let mut state = self.state();
            state.pending_bytes = 0;
            std::mem::take(&mut state.pending)
        };
        if !pending.is_empty() {
            self.send(ConsumerEvent::Polled(pending));
        }
    }

    /// Whether the records polled so far make a full event.
    fn pending_full(&self) -> bool {
        let state = self.state();
        state.pending.len() >= MAX_POLLED || state.pending_bytes >= MAX_POLLED_BYTES
    }

    /// Tells the owner a poll worked (`None`) or why it failed; a working poll at most every
    /// [`HEALTHY_EVERY`].
    fn report_health(&self, failure: Option<String>) {
        let healthy = failure.is_none();
        let due = {
            let mut state = self.state();
            let due = match state.reported {
                Some((was, at)) => !healthy || was != healthy || at.elapsed() >= HEALTHY_EVERY,
                None => true,
            };
            if due {
                state.reported = Some((healthy, Instant::now()));
            }
            due
        };
        if due {
            self.send(match failure {
                None => ConsumerEvent::Healthy,
                Some(reason) => ConsumerEvent::Failed(reason),
            });
        }
    }

    /// Keeps a polled message for the owner unless it was delivered already.
    fn take(&self, parts: &MessageParts<'_>) {
        let key = (parts.topic.to_owned(), parts.partition);
        let mut state = self.state();
        // A message came: the client works again.
        state.client_error_at = None;
        let Some(held) = state.held.get_mut(&key) else {
            // A message of a partition released a moment ago; the next owner reads it.
            return;
        };
        if held.next_offset.is_some_and(|next| parts.offset < next) {
            return;
        }
        held.next_offset = Some(parts.offset + 1);
        let record = (self.filters.is_empty() || self.filters.passes(&parts.filter_view()))
            .then(|| parts.to_record(crate::now_since_epoch()));
        state.pending_bytes += record.as_ref().map_or(0, |r| r.size_bytes);
        state.pending.push(Polled {
            partition: key,
            offset: parts.offset,
            record,
        });
    }

    /// Pauses and resumes partitions as their owners asked; true while any is paused.
    fn apply_pauses(&self, consumer: &BaseConsumer<Self>) -> bool {
        let mut state = self.state();
        let mut any_paused = false;
        let mapping_paused = self.paused.load(Ordering::Acquire);
        for ((topic, partition), held) in state.held.iter_mut() {
            let wanted = mapping_paused || held.control.pause_wanted();
            if wanted != held.paused {
                let mut list = TopicPartitionList::new();
                let _ = list.add_partition(topic, *partition);
                let done = if wanted {
                    consumer.pause(&list)
                } else {
                    consumer.resume(&list)
                };
                match done {
                    Ok(()) => held.paused = wanted,
                    // Tried again on the next round.
                    Err(error) => {
                        tracing::debug!(mapping = %self.name, partition = %partition_name(topic, *partition), paused = wanted, %error, "pausing or resuming the partition failed")
                    }
                }
            }
            any_paused |= held.paused || wanted != held.paused;
        }
        any_paused
    }

    /// Commits `keys` (every held partition when `None`) as far as their owners reported done.
    fn commit(&self, consumer: &BaseConsumer<Self>, keys: Option<&[PartitionKey]>) {
        let moved: Vec<(PartitionKey, i64)> = {
            let state = self.state();
            state
                .held
                .iter()
                .filter(|(key, _)| keys.is_none_or(|keys| keys.contains(key)))
                .filter_map(|(key, held)| held.uncommitted().map(|offset| (key.clone(), offset)))
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
                let mut state = self.state();
                for (key, offset) in moved {
                    if let Some(held) = state.held.get_mut(&key) {
                        held.committed = Some(offset);
                    }
                }
                drop(state);
                self.send(ConsumerEvent::Committed);
            }
            Err(error) => {
                tracing::warn!(mapping = %self.name, %error, "committing offsets failed; the next commit carries them");
                self.send(ConsumerEvent::CommitFailed(error.to_string()));
            }
        }
    }

    /// Sets where each new partition starts and tells the owner about it.
    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        let wanted = keys_of(partitions);
        // When the lookup fails, the client reads the committed offsets itself (`Stored`): what
        // was committed must win over the starting position, or records would be skipped.
        let committed = match consumer.committed_offsets(partitions.clone(), LOOKUP_TIMEOUT) {
            Ok(list) => Some(offsets_of(&list)),
            Err(error) => {
                tracing::warn!(mapping = %self.name, %error, "reading committed offsets failed; the client reads them itself (the starting position applies only without one)");
                None
            }
        };
        let uncommitted: Vec<&PartitionKey> = match &committed {
            Some(committed) => wanted
                .iter()
                .filter(|key| !committed.contains_key(key))
                .collect(),
            None => Vec::new(),
        };
        let by_time = match self.position {
            StartPosition::AtTimestamp(ms) if !uncommitted.is_empty() => {
                let mut query = TopicPartitionList::new();
                for (topic, partition) in uncommitted {
                    let _ = query.add_partition_offset(topic, *partition, Offset::Offset(ms));
                }
                match consumer.offsets_for_times(query, LOOKUP_TIMEOUT) {
                    Ok(list) => offsets_of(&list),
                    Err(error) => {
                        tracing::warn!(mapping = %self.name, %error, "looking offsets up by time failed; starting at the end");
                        HashMap::new()
                    }
                }
            }
            _ => HashMap::new(),
        };
        let mut assigned = Vec::new();
        {
            let mut state = self.state();
            for key in wanted {
                let start = match &committed {
                    Some(committed) => start_offset(
                        committed.get(&key).copied(),
                        self.position,
                        by_time.get(&key).copied(),
                    ),
                    None => StartOffset::Stored,
                };
                let offset = match start {
                    StartOffset::Committed(_) | StartOffset::Stored => Offset::Stored,
                    StartOffset::Beginning => Offset::Beginning,
                    StartOffset::End => Offset::End,
                    StartOffset::At(offset) => Offset::Offset(offset),
                };
                let _ = partitions.set_partition_offset(&key.0, key.1, offset);
                if state.held.contains_key(&key) {
                    continue;
                }
                tracing::info!(mapping = %self.name, partition = %partition_name(&key.0, key.1), start = ?start, "partition assigned");
                let control = Arc::new(PartitionControl::default());
                state.held.insert(
                    key.clone(),
                    Held {
                        control: control.clone(),
                        next_offset: None,
                        committed: committed.as_ref().and_then(|c| c.get(&key).copied()),
                        paused: false,
                    },
                );
                assigned.push(Assigned {
                    partition: key,
                    start,
                    control,
                });
            }
        }
        if !assigned.is_empty() {
            self.send(ConsumerEvent::Assigned(assigned));
        }
    }

    /// Hands `keys` back: the owner stops them, then what is done is committed (unless the
    /// partitions are lost already) and they are forgotten.
    fn release(&self, consumer: &BaseConsumer<Self>, keys: &[PartitionKey], lost: bool) {
        let keys: Vec<PartitionKey> = {
            let state = self.state();
            keys.iter()
                .filter(|key| state.held.contains_key(key))
                .cloned()
                .collect()
        };
        if keys.is_empty() {
            return;
        }
        let (revoked, released) = Revoked::new(keys.clone(), lost);
        let sent = self.send(ConsumerEvent::Revoked(revoked));
        // The owner answers within its drain deadline; without an owner, what it reported done is
        // all there is.
        if sent && released.recv_timeout(self.release_timeout).is_err() {
            tracing::warn!(mapping = %self.name, partitions = ?keys, "the partitions were not released in time; committing what is done");
        }
        if !lost {
            self.commit(consumer, Some(&keys));
        }
        let mut state = self.state();
        for key in &keys {
            if let Some(held) = state.held.remove(key) {
                if held.paused {
                    let mut list = TopicPartitionList::new();
                    let _ = list.add_partition(&key.0, key.1);
                    if let Err(error) = consumer.resume(&list) {
                        tracing::warn!(mapping = %self.name, partition = %partition_name(&key.0, key.1), %error, "resuming a released partition failed; if it comes back it may stay paused");
                    }
                }
                tracing::info!(mapping = %self.name, partition = %partition_name(&key.0, key.1), committed = ?held.committed, "partition released");
            }
        }
    }
}

impl ClientContext for Context {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        super::auth::oauth_token(&self.tokens)
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let name = &self.name;
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
        self.state().client_error_at = Some(Instant::now());
        tracing::warn!(mapping = %self.name, %error, reason, "kafka client reported an error");
        self.report_health(Some(reason.to_owned()));
    }

    fn stats(&self, statistics: Statistics) {
        let lag: Vec<(PartitionKey, i64)> = {
            let state = self.state();
            state
                .held
                .iter()
                .filter_map(|((topic, partition), held)| {
                    let stats = statistics.topics.get(topic)?.partitions.get(partition)?;
                    // Read-committed consumers see up to the last stable offset.
                    let end = if stats.ls_offset >= 0 {
                        stats.ls_offset
                    } else {
                        stats.hi_offset
                    };
                    let position = held.control.done().or(held.committed)?;
                    (end >= 0).then(|| ((topic.clone(), *partition), (end - position).max(0)))
                })
                .collect()
        };
        // Statistics come again: when the owner is busy, this one can go.
        if !lag.is_empty() {
            let _ = self.events.try_send(ConsumerEvent::Lag(lag));
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
        // Records polled before the rebalance reach the owner before it hears of it.
        self.flush();
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
                    tracing::error!(mapping = %self.name, %error, "assigning partitions failed");
                } else if self.paused.load(Ordering::Acquire) {
                    // A paused mapping's new partitions are paused before any fetch of theirs
                    // is polled, not at the next round.
                    self.apply_pauses(consumer);
                }
            }
            _ => {
                if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(mapping = %self.name, error = ?error, "rebalance error; giving up every partition");
                }
                let revoked = keys_of(partitions);
                self.release(consumer, &revoked, consumer.assignment_lost());
                let unassigned = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = unassigned {
                    tracing::error!(mapping = %self.name, %error, "unassigning partitions failed");
                }
            }
        }
    }
}

/// The consumer thread: subscribes (retrying), polls until the stop or until the owner is gone,
/// then releases every partition, commits and leaves the group.
fn consume(consumer: BaseConsumer<Context>, settings: &ConsumerSettings, stop: &AtomicBool) {
    let context = consumer.context();
    let stopped = || stop.load(Ordering::Acquire) || context.state().owner_gone;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    let mut failures = 0u32;
    while let Err(error) = consumer.subscribe(&topics) {
        failures += 1;
        tracing::warn!(mapping = %settings.name, %error, "subscribing failed; retrying");
        context.report_health(Some(error.to_string()));
        if sleep_or_stop(&stopped, crate::retry_delay(failures)) {
            return;
        }
    }
    tracing::info!(
        mapping = %settings.name,
        bootstrap_servers = %settings.bootstrap_servers,
        topics = ?settings.topics,
        group_id = %settings.group_id,
        "consumer started"
    );
    let mut last_commit = Instant::now();
    let mut last_error: Option<(String, Instant)> = None;
    while !stopped() {
        // Short polls while some partition is paused for its buffer, so its resume reaches the
        // broker soon; a mapping paused whole waits for an operator, not for a buffer.
        let mut wait = if context.apply_pauses(&consumer) && !context.paused.load(Ordering::Acquire)
        {
            PAUSED_POLL_TIMEOUT
        } else {
            POLL_TIMEOUT
        };
        // Gather what is there without waiting once a message came, up to one event's worth.
        let mut polled = 0;
        while !context.pending_full() {
            match consumer.poll(wait) {
                None => {
                    let error_at = context.state().client_error_at;
                    if polled == 0 && error_at.is_none_or(|at| at.elapsed() >= CLIENT_ERROR_QUIET) {
                        context.report_health(None);
                    }
                    break;
                }
                Some(Ok(message)) => {
                    context.take(&MessageParts::of(&message));
                    polled += 1;
                    wait = Duration::ZERO;
                }
                Some(Err(error)) => {
                    let text = error.to_string();
                    // A persistent error comes back on every poll: log it when it changes, and
                    // otherwise at most every ERROR_LOG_INTERVAL.
                    let repeated = last_error.as_ref().is_some_and(|(last, at)| {
                        *last == text && at.elapsed() < ERROR_LOG_INTERVAL
                    });
                    if !repeated {
                        tracing::warn!(mapping = %settings.name, %error, "polling Kafka failed");
                        last_error = Some((text.clone(), Instant::now()));
                    }
                    context.report_health(Some(text));
                    break;
                }
            }
        }
        if polled > 0 {
            context.report_health(None);
        }
        context.flush();
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            last_commit = Instant::now();
            context.commit(&consumer, None);
        }
    }
    tracing::info!(mapping = %settings.name, "stopping: releasing partitions, committing, leaving the group");
    context.flush();
    let held: Vec<PartitionKey> = context.state().held.keys().cloned().collect();
    context.release(&consumer, &held, false);
    consumer.unsubscribe();
    // Dropping the consumer closes it: it leaves the group, so the partitions move at once.
    drop(consumer);
}

/// Sleeps on the consumer thread; true when it should stop instead.
fn sleep_or_stop(stopped: &impl Fn() -> bool, pause: Duration) -> bool {
    let until = Instant::now() + pause;
    while Instant::now() < until {
        if stopped() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(pause));
    }
    stopped()
}

/// The partitions of a list. Owned at once: a list from `committed` that outlives the consumer
/// hangs its drop (dependencies.md trap 9).
fn keys_of(list: &TopicPartitionList) -> Vec<PartitionKey> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// The partitions of a list that have an actual offset, with it (owned, as `keys_of`).
fn offsets_of(list: &TopicPartitionList) -> HashMap<PartitionKey, i64> {
    list.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some(((e.topic().to_owned(), e.partition()), offset)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
