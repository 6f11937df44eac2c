//! The worker of one `schedule` mapping: fires the schedule's ticks as asynchronous invocations
//! (EventBridge's Scheduled Event, or the constant `input`), under the asynchronous policy.
//!
//! Guarantees:
//! - one instance fires: the schedule is one lease in the checkpoint store (with the DynamoDB
//!   lease table, fenced like a shard's; with the state file, every instance fires its own);
//! - a tick is written to the store (last tick, and the tick among those running) before it is
//!   invoked, and taken out once its invocation ended (succeeded, or stored in `on_failure`):
//!   an instance that dies mid-retry leaves it to the next holder, which runs it again under the
//!   same event id (at least once; `max_event_age` counts from the tick);
//! - ticks missed while nobody held the schedule are skipped (logged), or with `catch_up` fired
//!   oldest first, at most [`MAX_CATCH_UP`] of them;
//! - at most [`MAX_RUNNING`] ticks run at once; a tick due beyond that is skipped, logged and
//!   counted as discarded;
//! - a tick's invocation retries as an asynchronous event does (`async_exec`), in memory, and is
//!   given up (not finished) at shutdown, so the next holder runs it.

pub mod config;
pub mod expression;

use self::config::ScheduleSourceConfig;
use self::expression::Schedule;
use super::async_exec::{self, Attempt, Completion, EventStore};
use super::checkpoints::StoreSetup;
use super::clock::now_since_epoch;
use super::invoker::Invoker;
use super::mapping::{Mapping, SourceClients, StartError, StartMapping};
use super::retry::retry_until_ok;
use crate::destinations::envelope::AsyncRecord;
use crate::destinations::{Destination, EnvelopeSource, Placement};
use crate::targets::Invocation;
use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_policies::{AsyncAttempt, ErrorInfo};
use sluice_sources::checkpoint::{Checkpoint, CheckpointError, CheckpointStore, ShardSpec};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The one "shard" a schedule is in the checkpoint store.
const LEASE: &str = "schedule";
/// The most missed ticks `catch_up` fires (the newest ones).
pub const MAX_CATCH_UP: usize = 100;
/// The most ticks running at once.
pub const MAX_RUNNING: usize = 1_000;
/// How often the lease is renewed (and, without one, how often another instance's lease is
/// looked at) when the checkpoint store has no lease duration of its own.
const SYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Starts `mapping`, firing `source`'s schedule.
pub fn start(
    source: &ScheduleSourceConfig,
    mapping: Mapping,
    clients: &SourceClients,
) -> Result<StartMapping, StartError> {
    let store = clients
        .checkpoints
        .clone()
        .ok_or_else(|| StartError::NoCheckpointStore {
            mapping: mapping.config.name.clone(),
        })?;
    let worker = Arc::new(Worker {
        schedule: source.schedule(),
        source: source.clone(),
        region: clients.region.clone(),
        // Named as the EventBridge rule a SAM or Serverless `Schedule` event creates.
        arn: format!(
            "arn:aws:events:{}:000000000000:rule/{}",
            clients.region, mapping.config.name
        ),
        invoker: Invoker::new(mapping.target.clone(), mapping.metrics.clone()),
        mapping,
        store,
    });
    Ok(Box::new(move |token| Box::pin(worker.clone().run(token))))
}

/// What the store keeps for a schedule (as the checkpoint's text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    /// The last tick fired, in milliseconds since the Unix epoch.
    last_ms: i64,
    /// Ticks fired whose invocation has not ended yet.
    #[serde(default)]
    running: BTreeSet<i64>,
}

impl Progress {
    fn of(checkpoint: Option<&Checkpoint>) -> Option<Self> {
        match checkpoint? {
            Checkpoint::After(text) => serde_json::from_str(text).ok(),
            Checkpoint::ShardEnd => None,
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::After(serde_json::to_string(self).expect("progress serializes"))
    }
}

struct Worker {
    schedule: Schedule,
    source: ScheduleSourceConfig,
    region: String,
    arn: String,
    invoker: Invoker,
    mapping: Mapping,
    store: StoreSetup,
}

/// The held schedule's progress and the store it is written to.
struct Held {
    store: Arc<dyn CheckpointStore>,
    progress: Mutex<Progress>,
    /// Serializes writes, so a later write never lands before an earlier one.
    writing: tokio::sync::Mutex<()>,
}

impl Held {
    /// Writes the progress as it is now; false when the lease was lost (stop firing).
    async fn save(&self, name: &str) -> bool {
        let _one = self.writing.lock().await;
        let checkpoint = self.progress.lock().expect("progress").checkpoint();
        match self.store.checkpoint(LEASE, &checkpoint).await {
            Ok(()) => true,
            Err(CheckpointError::LeaseLost { .. }) => false,
            Err(error) => {
                // Kept in memory and written with the next change; a restart repeats the ticks
                // that were running (at least once).
                tracing::warn!(mapping = %name, %error, "saving the schedule's progress failed");
                true
            }
        }
    }
}

impl Worker {
    fn name(&self) -> &str {
        &self.mapping.config.name
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let name = self.name().to_owned();
        let health = &self.mapping.health;
        let metrics = &self.mapping.metrics;
        let Some((store, lease_duration)) = self
            .store
            .open(&name, &self.arn, health, metrics, &shutdown)
            .await
        else {
            return;
        };
        let sync = lease_duration.map_or(SYNC_INTERVAL, |d| d / 4);
        tracing::info!(mapping = %name, expression = %self.source.expression, timezone = ?self.source.timezone, checkpoints = %store.describe(), "mapping started");
        let spec = [ShardSpec {
            id: LEASE.into(),
            parents: Vec::new(),
        }];
        let running = tokio_util::task::TaskTracker::new();
        let mut held: Option<Arc<Held>> = None;
        loop {
            let Some(acquired) = retry_until_ok(
                "taking the schedule's lease",
                &name,
                health,
                metrics,
                &shutdown,
                || store.acquire(&spec),
            )
            .await
            else {
                break;
            };
            health.poll_succeeded();
            match (acquired.held.iter().find(|h| h.shard_id == LEASE), &held) {
                (Some(_), Some(_)) => {}
                (Some(lease), None) => {
                    let now = Timestamp::now();
                    let progress = Progress::of(lease.checkpoint.as_ref());
                    let fresh = progress.is_none();
                    let mut progress = progress.unwrap_or(Progress {
                        last_ms: now.as_millisecond(),
                        running: BTreeSet::new(),
                    });
                    let rerun: Vec<i64> = progress.running.iter().copied().collect();
                    let missed = self.missed(progress.last_ms, now);
                    if let Some(&latest) = missed.last() {
                        progress.last_ms = latest;
                    }
                    let state = Arc::new(Held {
                        store: store.clone(),
                        progress: Mutex::new(progress),
                        writing: tokio::sync::Mutex::new(()),
                    });
                    if fresh || !missed.is_empty() {
                        state.save(&name).await;
                    }
                    tracing::info!(mapping = %name, rerun = rerun.len(), missed = missed.len(), catch_up = self.source.catch_up, "holding the schedule");
                    // Ticks a previous holder left running, then (with catch_up) the missed ones.
                    for tick in rerun {
                        self.clone().spawn(&running, &state, tick, &shutdown);
                    }
                    if self.source.catch_up {
                        for &tick in missed.iter().rev().take(MAX_CATCH_UP).rev() {
                            if self.mark_running(&state, tick) {
                                state.save(&name).await;
                                self.clone().spawn(&running, &state, tick, &shutdown);
                            }
                        }
                    }
                    held = Some(state);
                }
                (None, Some(_)) => {
                    tracing::warn!(mapping = %name, "the schedule's lease went to another instance; it fires from now on");
                    held = None;
                }
                (None, None) => {}
            }
            // Ticks that came due while this instance held the schedule are fired late, never
            // skipped: the next is the one after the last fired.
            let next = held.as_ref().and_then(|state| {
                let last = state.progress.lock().expect("progress").last_ms;
                self.schedule
                    .next_after(Timestamp::from_millisecond(last).ok()?)
            });
            let wait = next.map(|at| {
                Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()
            });
            let mut lost = false;
            // Until the next tick or the next lease renewal, whichever comes first.
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.stop(&running).await;
                    return;
                }
                _ = tokio::time::sleep(sync) => {}
                _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {
                    if let (Some(state), Some(tick)) = (&held, next) {
                        let tick = tick.as_millisecond();
                        let fire = self.mark_running(state, tick);
                        state.progress.lock().expect("progress").last_ms = tick;
                        if fire {
                            if state.save(&name).await {
                                self.clone().spawn(&running, state, tick, &shutdown);
                            } else {
                                tracing::warn!(mapping = %name, "the schedule's lease was lost before the tick; the new holder fires it");
                                lost = true;
                            }
                        }
                    }
                }
            }
            if lost {
                held = None;
            }
        }
        self.stop(&running).await;
    }

    /// Waits (at most the drain timeout) for the ticks running; what has not ended is left in
    /// the store for the next holder.
    async fn stop(&self, running: &tokio_util::task::TaskTracker) {
        running.close();
        if tokio::time::timeout(self.mapping.shutdown_timeout, running.wait())
            .await
            .is_err()
        {
            tracing::warn!(mapping = %self.name(), "drain deadline reached; ticks still retrying are left to the next start");
        }
        tracing::info!(mapping = %self.name(), "mapping stopped");
    }

    /// The ticks after `last_ms` up to `now`, oldest first (at most a few more than
    /// [`MAX_CATCH_UP`] are listed: only the newest are ever fired).
    fn missed(&self, last_ms: i64, now: Timestamp) -> Vec<i64> {
        let Ok(mut at) = Timestamp::from_millisecond(last_ms) else {
            return Vec::new();
        };
        let mut ticks = std::collections::VecDeque::new();
        let mut skipped = 0u64;
        while let Some(next) = self.schedule.next_after(at) {
            if next > now {
                break;
            }
            ticks.push_back(next.as_millisecond());
            if ticks.len() > MAX_CATCH_UP {
                ticks.pop_front();
                skipped += 1;
            }
            at = next;
        }
        if skipped > 0 || (!self.source.catch_up && !ticks.is_empty()) {
            tracing::warn!(mapping = %self.name(), missed = skipped + ticks.len() as u64, catch_up = self.source.catch_up, "ticks were missed while no instance held the schedule");
        }
        ticks.into()
    }

    /// Adds `tick` to the running ticks; false (logged, counted) when too many run already.
    fn mark_running(&self, state: &Held, tick: i64) -> bool {
        let mut progress = state.progress.lock().expect("progress");
        if progress.running.len() >= MAX_RUNNING {
            drop(progress);
            tracing::error!(mapping = %self.name(), tick_ms = tick, running = MAX_RUNNING, "tick skipped: too many ticks are still running (the target has been failing or throttling for long)");
            self.mapping.metrics.discarded("TooManyRunning", 1);
            return false;
        }
        progress.running.insert(tick)
    }

    /// Runs `tick`'s invocation in the background until it ends, then takes it out of the
    /// running ticks.
    fn spawn(
        self: Arc<Self>,
        running: &tokio_util::task::TaskTracker,
        state: &Arc<Held>,
        tick: i64,
        shutdown: &CancellationToken,
    ) {
        let state = state.clone();
        let shutdown = shutdown.clone();
        running.spawn(async move {
            if self.fire(tick, &shutdown).await {
                state
                    .progress
                    .lock()
                    .expect("progress")
                    .running
                    .remove(&tick);
                state.save(self.name()).await;
            }
        });
    }

    /// The event a tick sends, and its id (the same for every attempt and every holder).
    fn event(&self, tick: i64) -> (String, Value) {
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{}#{tick}", self.arn).as_bytes(),
        )
        .to_string();
        if let Some(input) = &self.source.input {
            return (id, input.clone());
        }
        let time = Timestamp::from_millisecond(tick)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let event = json!({
            "version": "0",
            "id": id,
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "000000000000",
            "time": time,
            "region": self.region,
            "resources": [self.arn],
            "detail": {}
        });
        (id, event)
    }

    /// Invokes `tick` until its policy ends it; false when the shutdown came first (the tick
    /// stays running in the store, for the next holder).
    async fn fire(&self, tick: i64, shutdown: &CancellationToken) -> bool {
        let (id, event) = self.event(tick);
        let payload = serde_json::to_vec(&event).expect("an event serializes");
        let tick_at = Duration::from_millis(u64::try_from(tick).unwrap_or_default());
        let mut attempt = AsyncAttempt {
            queued_at: tick_at,
            failed_attempts: 0,
            not_run: 0,
        };
        loop {
            let mut store = TickStore {
                worker: self,
                event: &event,
                id: &id,
                tick_at,
                next: None,
            };
            let run = async_exec::run(
                Attempt {
                    invoker: &self.invoker,
                    policy: &self.source.policy,
                    subject: &id,
                    attempt,
                    invocation: Invocation::new(self.name(), payload.clone()),
                },
                &mut store,
            );
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = run => {}
            }
            let Some((delay, failed_attempts, not_run)) = store.next else {
                return true;
            };
            attempt.failed_attempts = failed_attempts;
            attempt.not_run = not_run;
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// A tick between its attempts: rescheduling is a sleep in [`Worker::fire`].
struct TickStore<'a> {
    worker: &'a Worker,
    event: &'a Value,
    id: &'a str,
    tick_at: Duration,
    next: Option<(Duration, u32, u32)>,
}

#[async_trait]
impl EventStore for TickStore<'_> {
    async fn reschedule(&mut self, delay: Duration, failed_attempts: u32, not_run: u32) {
        self.next = Some((delay, failed_attempts, not_run));
    }

    async fn complete(
        &mut self,
        completion: Completion,
        invoke_count: u32,
        response: Result<Option<Value>, ErrorInfo>,
    ) {
        let worker = self.worker;
        let mapping = &worker.mapping;
        let destination = match completion {
            Completion::Success => mapping.on_success.as_ref(),
            Completion::Failed(_) => mapping.on_failure.as_ref(),
        };
        let condition = completion.as_str();
        let Some(destination) = destination else {
            if let Completion::Failed(_) = completion {
                tracing::error!(mapping = %worker.name(), event_id = %self.id, condition, "tick discarded: its retries ran out and the mapping has no on_failure destination");
                mapping.metrics.discarded(condition, 1);
            }
            return;
        };
        let record = AsyncRecord {
            mapping: worker.name().to_owned(),
            target: worker.invoker.target().name.clone(),
            region: worker.region.clone(),
            condition,
            invoke_count,
            request_id: self.id.to_owned(),
            request_payload: self.event.clone(),
            response,
            source: EnvelopeSource::Schedule {
                schedule_arn: worker.arn.clone(),
                event_id: self.id.to_owned(),
            },
            first_attempt_at: self.tick_at,
            last_attempt_at: now_since_epoch(),
        };
        store_until_stored(worker, destination.as_ref(), &record, condition).await;
    }
}

/// Stores a destination record, retrying until it is stored: a tick is never finished while its
/// record could not be written.
async fn store_until_stored(
    worker: &Worker,
    destination: &dyn Destination,
    record: &AsyncRecord,
    condition: &'static str,
) {
    let dedup = format!("{}-{condition}", record.request_id);
    let placement = Placement {
        mapping: worker.name(),
        key_part: "schedule",
        group_hint: worker.name(),
        dedup_hint: &dedup,
    };
    let mut failures = 0u32;
    loop {
        match destination.store(record.to_json(), &placement).await {
            Ok(()) => {
                if condition != "Success" {
                    worker.mapping.metrics.dead_lettered(condition, 1);
                    tracing::warn!(mapping = %worker.name(), event_id = %record.request_id, condition, destination = destination.describe(), "tick dead-lettered");
                }
                return;
            }
            Err(error) => {
                failures += 1;
                worker.mapping.metrics.ack_errors.increment(1);
                tracing::error!(mapping = %worker.name(), event_id = %record.request_id, condition, %error, "storing the destination record failed; retrying");
                tokio::time::sleep(super::retry::retry_delay(failures)).await;
            }
        }
    }
}
