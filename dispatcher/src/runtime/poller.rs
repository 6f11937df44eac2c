//! The one queue poller, shared by SQS mappings and S3 notification mappings (an S3 mapping is
//! this poller with one message per batch, plus a notification expander in its
//! [`QueueWork::handle`]).
//!
//! Guarantees:
//! - at most `max_concurrency` batches are in flight, and nothing is received for a batch that
//!   could not start: each poller first waits for room in the mapping and in the target (shared
//!   with other mappings); the target's slot itself is only taken once the batch is complete, and
//!   handed to the work (SQS invokes in it; S3 gives it back and takes one per invocation). The
//!   one exception is a starting mapping's first receive, sent beside the queue's lookup (see
//!   [`connect`]) when the target has room: its records are held before the first poller waits
//!   for room, like records of a batch still being filled;
//! - every received record the work admits is held by the heartbeat (its visibility extended)
//!   from the moment it is received until the work releases it;
//! - every wait (for room, for a receive, after an error, after an empty short poll) ends at
//!   shutdown;
//! - on shutdown, records received but not started are made visible again at once; a long poll
//!   still open is awaited while batches drain and what it brings is returned at once (SQS would
//!   otherwise hide it for a whole visibility timeout); batches in flight finish until the drain
//!   deadline.

use super::heartbeat::Heartbeat;
use super::invoker::Slot;
use super::retry::{back_off, retry_until_ok};
use crate::config::mapping::AutoscalingConfig;
use crate::health::MappingHealthHandle;
use crate::runtime::scaling::{self, BacklogSource};
use crate::targets::SharedTarget;
use crate::telemetry::MappingMetrics;
use async_trait::async_trait;
use sluice_policies::batcher::PushResult;
use sluice_policies::{BatchLimits, Batcher};
use sluice_sources::sqs::MAX_BATCH_ENTRIES;
use sluice_sources::{Queue, QueueOpener, Receipt, Record, SourceError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
// Tokio's clock, so that a paused test clock drives batching windows and deadlines too.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after an empty short poll (`wait_time: 0s`), so an idle queue is not polled in a loop.
const IDLE_SHORT_POLL_PAUSE: Duration = Duration::from_millis(200);

type OpenReceive = sluice_sources::PendingReceive;

/// What a queue mapping does with what its pollers receive.
#[async_trait]
pub(crate) trait QueueWork: Send + Sync + 'static {
    /// Records just received, before the heartbeat holds them: returns those to batch. The rest
    /// (filtered out) the work deals with itself, on `tracker`.
    fn admit(self: &Arc<Self>, records: Vec<Record>, _tracker: &TaskTracker) -> Vec<Record> {
        records
    }

    /// Records admitted and held by the heartbeat, before they are batched: returns those to
    /// batch. The rest the work ends itself, on `tracker` (releasing them from the heartbeat
    /// and counting them out of flight).
    async fn prepare(
        self: &Arc<Self>,
        records: Vec<Record>,
        _tracker: &TaskTracker,
    ) -> Vec<Record> {
        records
    }

    /// A record too large for any invocation.
    async fn too_large(self: Arc<Self>, record: Record);

    /// Runs one batch, in the target slot taken for it; releases its records from the heartbeat
    /// and acknowledges them.
    async fn handle(self: Arc<Self>, batch: Vec<Record>, slot: Slot);
}

/// What became of one message handled on its own (an asynchronous event: an S3 notification, an
/// Invoke API `Event` invocation).
pub(crate) enum MessageEnd {
    /// Handled (or stored in its destination): deleted.
    Done,
    /// Comes back after this delay.
    Retry(Duration),
    /// Left to the queue (its visibility timeout, its redrive policy).
    Leave,
}

/// Ends one message: released from the heartbeat, then deleted, made visible again after its
/// retry delay, or left to the queue. SQS visibility has whole seconds: a shorter delay is waited
/// out first, the message held. True when it was deleted.
pub(crate) async fn end_message(acks: &QueueAcks, message: &Record, end: MessageEnd) -> bool {
    let mut end = end;
    if let MessageEnd::Retry(delay) = end
        && delay < Duration::from_secs(1)
    {
        tokio::time::sleep(delay).await;
        end = MessageEnd::Retry(Duration::ZERO);
    }
    acks.heartbeat.release(std::slice::from_ref(message)).await;
    let deleted = match end {
        MessageEnd::Done => acks.delete(&[message]).await == 1,
        MessageEnd::Retry(delay) => {
            let whole_seconds =
                Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0));
            acks.change_visibility(&[(message, whole_seconds)], "retry delay")
                .await;
            false
        }
        MessageEnd::Leave => false,
    };
    track_in_flight(&acks.metrics, [message], Flight::Leaving);
    deleted
}

/// The acknowledgements every queue mapping makes, with their metrics, logs and readiness.
pub(crate) struct QueueAcks {
    pub name: String,
    pub queue: Arc<dyn Queue>,
    pub heartbeat: Arc<Heartbeat>,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
}

impl QueueAcks {
    /// The acknowledgements of the mapping `name` on `queue`, with the heartbeat that holds its
    /// records (at most `heartbeat_max` each; [`run`] runs it).
    pub fn new(
        name: &str,
        queue: Arc<dyn Queue>,
        heartbeat_max: Option<Duration>,
        health: MappingHealthHandle,
        metrics: MappingMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            heartbeat: Heartbeat::new(queue.clone(), heartbeat_max, metrics.clone(), name),
            queue,
            health,
            metrics,
        })
    }

    /// Deletes records; what fails comes back later (at-least-once). Returns how many were
    /// deleted.
    pub async fn delete(&self, records: &[&Record]) -> usize {
        self.delete_reporting(records).await.0
    }

    /// Deletes records: how many were deleted, and the message ids of those that were not.
    pub async fn delete_reporting(
        &self,
        records: &[&Record],
    ) -> (usize, std::collections::HashSet<String>) {
        if records.is_empty() {
            return (0, Default::default());
        }
        let receipts: Vec<&Receipt> = records.iter().map(|r| &r.receipt).collect();
        let _call = self.health.aws_call();
        match self.queue.delete(&receipts).await {
            Ok(report) => {
                self.health.ack_succeeded();
                for (message_id, reason) in &report.failed {
                    self.metrics.ack_errors.increment(1);
                    tracing::warn!(mapping = %self.name, queue_url = %self.queue.description().url, %message_id, %reason, "delete failed; the message will be delivered again");
                }
                self.metrics.deleted(report.deleted as u64);
                let failed = report.failed.into_iter().map(|(id, _)| id).collect();
                (report.deleted, failed)
            }
            Err(error) => {
                self.metrics.ack_errors.increment(1);
                self.health.ack_failed(&error.to_string());
                tracing::error!(mapping = %self.name, %error, records = records.len(), "delete failed; the messages will be delivered again");
                (0, records.iter().map(|r| r.id().to_owned()).collect())
            }
        }
    }

    /// Hides each record for its duration from now.
    pub async fn change_visibility(&self, changes: &[(&Record, Duration)], why: &str) {
        let changes: Vec<(&Receipt, Duration)> =
            changes.iter().map(|(r, d)| (&r.receipt, *d)).collect();
        let _call = self.health.aws_call();
        match self.queue.change_visibility(&changes).await {
            Ok(failed) => {
                self.health.ack_succeeded();
                for (message_id, reason) in failed {
                    self.metrics.ack_errors.increment(1);
                    tracing::warn!(mapping = %self.name, %message_id, %reason, why, "visibility change failed");
                }
            }
            Err(error) => {
                self.metrics.ack_errors.increment(1);
                self.health.ack_failed(&error.to_string());
                tracing::warn!(mapping = %self.name, %error, why, "visibility change failed");
            }
        }
    }

    /// Makes records visible again at once, unhandled (FIFO followers, unstarted at shutdown).
    pub async fn release_now(&self, records: &[&Record], why: &str) {
        if records.is_empty() {
            return;
        }
        let changes: Vec<(&Record, Duration)> =
            records.iter().map(|r| (*r, Duration::ZERO)).collect();
        self.change_visibility(&changes, why).await;
        self.metrics
            .records_released
            .increment(records.len() as u64);
    }

    /// Returns records that never started, at shutdown.
    async fn return_unstarted(&self, records: &[Record]) {
        self.heartbeat.release(records).await;
        let references: Vec<&Record> = records.iter().collect();
        self.release_now(&references, "shutdown").await;
        track_in_flight(&self.metrics, records, Flight::Leaving);
        tracing::info!(mapping = %self.name, records = records.len(), "returned unstarted messages to the queue");
    }
}

pub(crate) enum Flight {
    Entering,
    Leaving,
}

/// Counts records (and their bytes) into or out of `sluice_in_flight_*`.
pub(crate) fn track_in_flight<'a>(
    metrics: &MappingMetrics,
    records: impl IntoIterator<Item = &'a Record>,
    flight: Flight,
) {
    let (count, bytes) = records
        .into_iter()
        .fold((0usize, 0usize), |(count, bytes), record| {
            (count + 1, bytes + record.size_bytes)
        });
    let sign = match flight {
        Flight::Entering => 1.0,
        Flight::Leaving => -1.0,
    };
    metrics.in_flight_records.increment(sign * count as f64);
    metrics.in_flight_bytes.increment(sign * bytes as f64);
}

/// A starting mapping's first receive, sent beside the queue's lookup
/// ([`QueueOpener::open_receiving`]); the first poller takes it instead of sending its own.
pub(crate) struct FirstPoll {
    receive: OpenReceive,
    requested_at: Instant,
}

/// Looks the mapping's queue up, retrying (visible on `/readyz`) until it answers; `None` once
/// `shutdown` comes first. With `early` (see [`PollSettings::early_receive`]) the first attempt
/// sends the first receive beside the lookup: the mapping's first poll then costs no extra round
/// trip. Later attempts only look up: every early receive whose lookup failed is returned to the
/// queue but counts as a receive, and must not add up against a redrive policy while the lookup
/// keeps failing.
pub(crate) async fn connect(
    queues: &dyn QueueOpener,
    queue_url: &str,
    early: Option<(usize, Duration)>,
    name: &str,
    health: &MappingHealthHandle,
    metrics: &MappingMetrics,
    shutdown: &CancellationToken,
) -> Option<(Arc<dyn Queue>, Option<FirstPoll>)> {
    let mut attempts = 0u32;
    retry_until_ok(
        "looking up the queue",
        name,
        health,
        metrics,
        shutdown,
        || {
            attempts += 1;
            // Nothing is received for a paused mapping, not even the first receive.
            let early = early.filter(|_| attempts == 1 && !health.pause().is_paused());
            async move {
                let Some((max_messages, wait)) = early else {
                    return Ok((queues.open(queue_url).await?, None));
                };
                let requested_at = Instant::now();
                let (queue, receive) = queues.open_receiving(queue_url, max_messages, wait).await?;
                Ok::<_, sluice_sources::SourceError>((
                    queue,
                    Some(FirstPoll {
                        receive,
                        requested_at,
                    }),
                ))
            }
        },
    )
    .await
}

/// How a mapping polls.
pub(crate) struct PollSettings {
    pub pollers: usize,
    pub max_concurrency: usize,
    pub limits: BatchLimits,
    pub wait_time: Duration,
    /// Receive for every free batch slot, not only for the batch being filled (batches of one
    /// message: S3 notifications).
    pub receive_ahead: bool,
    /// How the queue's backlog is sampled for autoscaling.
    pub autoscaling: AutoscalingConfig,
}

impl PollSettings {
    /// The first receive (messages, wait) a starting mapping may send beside its queue's lookup:
    /// what the first poller would ask for first (an empty batch, its own slot taken), or `None`
    /// while `target` has no room for a batch (nothing is received for a batch that could not
    /// start).
    pub fn early_receive(&self, target: &SharedTarget) -> Option<(usize, Duration)> {
        (!target.is_saturated()).then(|| {
            let messages = self.receive_size(
                self.limits.max_records,
                self.max_concurrency.saturating_sub(1),
            );
            (messages, self.wait_time)
        })
    }

    /// How many messages to ask for while filling a batch with room for `room` more records, with
    /// `free_slots` more batches that could start.
    fn receive_size(&self, room: usize, free_slots: usize) -> usize {
        let wanted = if self.receive_ahead {
            // This batch's slot is taken; each free slot could start one more batch at once.
            room + free_slots * self.limits.max_records
        } else {
            room
        };
        wanted.clamp(1, MAX_BATCH_ENTRIES)
    }
}

/// Polls `acks.queue` for `work` until `shutdown`, then drains for at most `shutdown_timeout`;
/// the heartbeat runs meanwhile.
pub(crate) async fn run<W: QueueWork>(
    acks: Arc<QueueAcks>,
    work: Arc<W>,
    target: SharedTarget,
    settings: PollSettings,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    first: Option<FirstPoll>,
) {
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(acks.heartbeat.clone().run(heartbeat_stop.clone()));
    // Ends with this run, however it ends (a panic that restarts the mapping included).
    let _sampling = scaling::start(
        &acks.name,
        BacklogSource::Queue(acks.queue.clone()),
        &acks.metrics,
        &settings.autoscaling,
    );
    let tracker = TaskTracker::new();
    let poller = Arc::new(Poller {
        acks: acks.clone(),
        work,
        target,
        capacity: Arc::new(Semaphore::new(settings.max_concurrency)),
        settings,
        tracker: tracker.clone(),
    });
    let mut pollers = tokio::task::JoinSet::new();
    let mut first = first;
    for _ in 0..poller.settings.pollers {
        pollers.spawn(poller.clone().poll_loop(shutdown.clone(), first.take()));
    }
    let mut unstarted = Vec::new();
    let mut open_receives = Vec::new();
    while let Some(stopped) = pollers.join_next().await {
        match stopped {
            Ok((records, open_receive)) => {
                unstarted.extend(records);
                open_receives.extend(open_receive);
            }
            // A poller that panicked takes the mapping down with it: the supervisor logs it,
            // shows it on /readyz, stops this incarnation's tasks and starts the mapping again.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => tracing::error!(mapping = %acks.name, %error, "a poller failed"),
        }
    }

    // Shutdown: give back what never started, then let in-flight batches finish.
    let drain_deadline = Instant::now() + shutdown_timeout;
    if !unstarted.is_empty() {
        acks.return_unstarted(&unstarted).await;
    }
    tracker.close();
    // SQS keeps serving a long poll whose client went away, and would hide whatever it picks
    // up (the messages just returned, say) for a whole visibility timeout. While batches drain
    // anyway, open polls are awaited and what they bring is returned at once; an idle mapping
    // drops them and exits promptly.
    let mut receives = tokio::task::JoinSet::new();
    for receive in open_receives {
        let acks = acks.clone();
        receives.spawn(async move {
            if let Ok(records) = receive.await
                && !records.is_empty()
            {
                acks.metrics.received(records.len() as u64);
                track_in_flight(&acks.metrics, &records, Flight::Entering);
                acks.return_unstarted(&records).await;
            }
        });
    }
    let drained = tokio::time::timeout_at(drain_deadline, async {
        loop {
            tokio::select! {
                _ = tracker.wait() => return,
                Some(_) = receives.join_next(), if !receives.is_empty() => {}
            }
        }
    })
    .await;
    receives.abort_all();
    if drained.is_err() {
        tracing::warn!(mapping = %acks.name, in_flight = tracker.len(), "drain deadline reached; in-flight batches abandoned, their messages return after the visibility timeout");
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    tracing::info!(mapping = %acks.name, "mapping stopped");
}

/// See [`Poller::settle`].
enum Settled {
    Records(Vec<Record>),
    Retry,
    Stop,
}

struct Poller<W> {
    acks: Arc<QueueAcks>,
    work: Arc<W>,
    target: SharedTarget,
    settings: PollSettings,
    /// One permit per batch in flight.
    capacity: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl<W: QueueWork> Poller<W> {
    /// How many messages to ask for while filling `batcher`.
    fn receive_size(&self, batcher: &Batcher<Record>) -> usize {
        self.settings.receive_size(
            batcher.remaining_capacity(),
            self.capacity.available_permits(),
        )
    }

    /// What a finished receive means for the poll loop: its records, a retry after the error was
    /// reported and waited out, or a stop (shutdown came during that wait).
    async fn settle(
        &self,
        received: Result<Vec<Record>, SourceError>,
        failures: &mut u32,
        shutdown: &CancellationToken,
    ) -> Settled {
        let acks = &self.acks;
        match received {
            Ok(records) => {
                *failures = 0;
                acks.health.poll_succeeded();
                Settled::Records(records)
            }
            Err(error) => {
                *failures += 1;
                let waited = back_off(
                    "receiving from the queue",
                    &acks.name,
                    &acks.health,
                    &acks.metrics,
                    shutdown,
                    &error.to_string(),
                    *failures,
                )
                .await;
                if waited {
                    Settled::Retry
                } else {
                    Settled::Stop
                }
            }
        }
    }

    /// Counts received records, lets the work admit them, holds what it admits under the
    /// heartbeat (as of `requested_at`) and adds it to the batch being filled; `clock` is read
    /// once they are held, so a wait for the heartbeat's lock does not shorten the window.
    async fn take_in(
        &self,
        records: Vec<Record>,
        requested_at: Instant,
        batcher: &mut Batcher<Record>,
        ready: &mut VecDeque<Vec<Record>>,
        clock: &impl Fn() -> Duration,
    ) {
        if records.is_empty() {
            return;
        }
        let acks = &self.acks;
        acks.metrics.received(records.len() as u64);
        let records = self.work.admit(records, &self.tracker);
        if records.is_empty() {
            return;
        }
        acks.heartbeat.hold(&records, requested_at).await;
        track_in_flight(&acks.metrics, &records, Flight::Entering);
        let records = self.work.prepare(records, &self.tracker).await;
        for record in records {
            let size = record.size_bytes;
            let PushResult {
                ready: complete,
                too_large,
            } = batcher.push(record, size, clock());
            ready.extend(complete);
            if let Some(record) = too_large {
                self.tracker.spawn(self.work.clone().too_large(record));
            }
        }
    }

    /// Receives and dispatches until shutdown; returns the records received but never started,
    /// and the receive that was open when the shutdown came, if any.
    async fn poll_loop(
        self: Arc<Self>,
        shutdown: CancellationToken,
        first: Option<FirstPoll>,
    ) -> (Vec<Record>, Option<OpenReceive>) {
        let acks = &self.acks;
        let mut open_receive = None;
        let started = Instant::now();
        let clock = || started.elapsed();
        let mut batcher: Batcher<Record> = Batcher::new(self.settings.limits);
        let mut ready: VecDeque<Vec<Record>> = VecDeque::new();
        let mut failures = 0u32;

        // A first receive sent beside the queue's lookup is taken in before the first wait for
        // room, so that its records are held (and batched) from the moment they arrive rather
        // than waiting unheld while other mappings keep the shared target full.
        if let Some(FirstPoll {
            mut receive,
            requested_at,
        }) = first
        {
            let received = tokio::select! {
                _ = shutdown.cancelled() => {
                    return (Vec::new(), Some(receive));
                }
                received = &mut receive => received,
            };
            match self.settle(received, &mut failures, &shutdown).await {
                Settled::Records(records) => {
                    self.take_in(records, requested_at, &mut batcher, &mut ready, &clock)
                        .await;
                }
                Settled::Retry => {}
                Settled::Stop => return (Vec::new(), None),
            }
        }

        'poll: loop {
            // Nothing is received for a batch that could not start: room in the mapping, and room
            // in the target (shared with other mappings), come first. The target's slot is only
            // taken once the batch is full, so an idle poll never holds it from other mappings;
            // at most one batch per poller waits for it.
            let waiting = self.capacity.available_permits() == 0 || self.target.is_saturated();
            if waiting {
                acks.health.waiting_for_capacity(true);
            }
            // A paused mapping receives nothing (README "Live control"), but what it already
            // holds (batches complete or filling) goes first: held back, it would outlive its
            // visibility and come back to another consumer.
            let hold = ready.is_empty() && batcher.is_empty();
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'poll,
                permit = async {
                    if hold {
                        acks.health.pause().until_running().await;
                    }
                    let mapping = self.capacity.clone().acquire_owned().await.expect("semaphore is never closed");
                    self.target.wait_for_room().await;
                    mapping
                } => permit,
            };
            if waiting {
                acks.health.waiting_for_capacity(false);
            }
            // Fill one batch (or take one that is already complete).
            let batch = loop {
                if let Some(batch) = ready.pop_front() {
                    break batch;
                }
                if let Some(batch) = batcher.poll(clock()) {
                    break batch;
                }
                if acks.health.pause().is_paused() {
                    // Paused while this batch filled: what it holds goes now, and nothing more
                    // is received until the mapping resumes.
                    match batcher.take() {
                        Some(batch) => break batch,
                        None => continue 'poll,
                    }
                }
                let wait = match batcher.deadline() {
                    None => self.settings.wait_time,
                    Some(deadline) => deadline
                        .saturating_sub(clock())
                        .min(self.settings.wait_time),
                };
                let max_messages = self.receive_size(&batcher);
                let requested_at = Instant::now();
                let queue = acks.queue.clone();
                let mut receive: OpenReceive =
                    Box::pin(async move { queue.receive(max_messages, wait).await });
                let received = tokio::select! {
                    _ = shutdown.cancelled() => {
                        open_receive = Some(receive);
                        break 'poll;
                    }
                    received = &mut receive => received,
                };
                let records = match self.settle(received, &mut failures, &shutdown).await {
                    Settled::Records(records) => records,
                    Settled::Retry => continue,
                    Settled::Stop => break 'poll,
                };
                if records.is_empty() {
                    // SQS long polls last whole seconds, so a shorter wait was a short poll:
                    // pause (until the window closes, at most) rather than ask again at once.
                    if wait < Duration::from_secs(1) {
                        let pause = batcher
                            .deadline()
                            .map_or(IDLE_SHORT_POLL_PAUSE, |d| d.saturating_sub(clock()))
                            .min(Duration::from_secs(1));
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'poll,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                    continue;
                }
                self.take_in(records, requested_at, &mut batcher, &mut ready, &clock)
                    .await;
            };
            // The target may have filled up (or its circuit opened) while the batch filled: a
            // poller waiting here is waiting for capacity, not stalled.
            let waiting = self.target.is_saturated();
            if waiting {
                acks.health.waiting_for_capacity(true);
            }
            let slot = tokio::select! {
                _ = shutdown.cancelled() => {
                    ready.push_front(batch);
                    break 'poll;
                }
                slot = self.target.permit_for(batch.len() as u32) => slot,
            };
            if waiting {
                acks.health.waiting_for_capacity(false);
            }
            let work = self.work.clone();
            self.tracker.spawn(async move {
                work.handle(batch, slot).await;
                drop(permit);
            });
        }
        let mut unstarted: Vec<Record> = ready.into_iter().flatten().collect();
        unstarted.extend(batcher.take().unwrap_or_default());
        (unstarted, open_receive)
    }
}
