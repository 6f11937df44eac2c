//! The worker of one `schedule` mapping: fires the schedule's ticks as asynchronous invocations
//! (EventBridge's Scheduled Event, or the constant `input`), under the asynchronous policy.
//!
//! Guarantees:
//! - one instance fires: the schedule is one lease in the checkpoint store (with the DynamoDB
//!   lease table, fenced like a shard's, and released at shutdown so the next instance need not
//!   wait it out; with the state file, every instance fires its own);
//! - a tick is written to the store (as the last tick, and among the ticks running) before it
//!   is invoked, and taken out once its invocation ended (succeeded, or stored in its
//!   destination). A store that fails leaves the tick due, never fired unrecorded. An instance
//!   that dies mid-retry leaves the tick to the next holder, which runs it again under the same
//!   event id (at least once; `max_event_age` counts from the tick);
//! - ticks missed while nothing held the schedule are skipped (logged), or with `catch_up` fired
//!   oldest first, at most the newest [`MAX_CATCH_UP`], looked for no further back than
//!   `max_event_age`. With leases, the ticks that came due while the lease changed hands (a
//!   lease duration and a sync) are fired whatever `catch_up` says. A tick overdue by more than
//!   a sync while holding (the process stopped, the clock jumped) follows the same rule: no
//!   burst of late ticks;
//! - a holding that ends (the lease lost, shutdown) stops its ticks' retries and writes nothing
//!   more; attempts under way finish, and shutdown waits for them until the drain deadline;
//! - at most [`MAX_RUNNING`] ticks run at once; a tick due beyond that is skipped, logged and
//!   counted as discarded; a paused mapping skips its ticks;
//! - destination records are retried until stored, and a failing destination shows on
//!   `/readyz`.

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
    let store = clients.checkpoint_store(&mapping.config.name)?;
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
    /// Cancelled when this holding ends (the lease was lost, or shutdown): its ticks stop and it
    /// writes nothing more, so a later holding is never overwritten with this one's progress.
    ended: CancellationToken,
}

/// Why a save did not land.
enum Unsaved {
    /// Another instance holds the schedule now.
    LeaseLost,
    /// The store failed; nothing was written.
    Failed(String),
}

impl Held {
    /// Writes the progress as it is now.
    async fn save(&self) -> Result<(), Unsaved> {
        let _one = self.writing.lock().await;
        if self.ended.is_cancelled() {
            return Err(Unsaved::LeaseLost);
        }
        let checkpoint = self.progress.lock().expect("progress").checkpoint();
        match self.store.checkpoint(LEASE, &checkpoint).await {
            Ok(()) => Ok(()),
            Err(CheckpointError::LeaseLost { .. }) => {
                self.ended.cancel();
                Err(Unsaved::LeaseLost)
            }
            Err(error) => Err(Unsaved::Failed(error.to_string())),
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
        // With leases, a tick that came due while the lease changed hands (the old holder died,
        // the new one waited out the lease) is not "missed while nothing ran": it is fired.
        let handover = lease_duration.map(|d| d + sync);
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
            let holds = acquired.held.iter().any(|h| h.shard_id == LEASE);
            if !holds && let Some(lost) = held.take() {
                tracing::warn!(mapping = %name, "the schedule's lease went to another instance; its ticks are left to it");
                lost.ended.cancel();
            }
            if holds && held.is_none() {
                // The checkpoint as stored now (the listing may predate a last write).
                let stored = match store.window(LEASE).await {
                    Ok((checkpoint, _)) => checkpoint,
                    Err(error) => {
                        health.poll_failed(&error.to_string());
                        tracing::warn!(mapping = %name, %error, "reading the schedule's progress failed; retrying");
                        if !self.pause(&shutdown, Duration::from_secs(1)).await {
                            break;
                        }
                        continue;
                    }
                };
                let now = Timestamp::now();
                let progress = Progress::of(stored.as_ref()).unwrap_or(Progress {
                    last_ms: now.as_millisecond(),
                    running: BTreeSet::new(),
                });
                let rerun: Vec<i64> = progress.running.iter().copied().collect();
                let state = Arc::new(Held {
                    store: store.clone(),
                    progress: Mutex::new(progress),
                    writing: tokio::sync::Mutex::new(()),
                    ended: shutdown.child_token(),
                });
                tracing::info!(mapping = %name, rerun = rerun.len(), "holding the schedule");
                // Ticks a previous holder left running, under the same event ids.
                for tick in rerun {
                    self.clone().spawn(&running, &state, tick);
                }
                if self.catch_up(&running, &state, now, handover).await {
                    held = Some(state);
                } else {
                    state.ended.cancel();
                }
            }
            let next = held.as_ref().and_then(|state| {
                let last = state.progress.lock().expect("progress").last_ms;
                self.schedule
                    .next_after(Timestamp::from_millisecond(last).ok()?)
            });
            let wait = next.map(|at| {
                Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()
            });
            // Until the next tick or the next lease renewal, whichever comes first.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(sync) => {}
                _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {
                    let (Some(state), Some(tick)) = (&held, next) else { continue };
                    // A tick long overdue (the process was stopped, the clock jumped): the rule
                    // for missed ticks applies, not a burst of late ones.
                    let overdue = Timestamp::now().duration_since(tick) > jiff::SignedDuration::try_from(sync).unwrap_or_default();
                    let kept = if overdue {
                        self.catch_up(&running, state, Timestamp::now(), None).await
                    } else {
                        self.fire_tick(&running, state, tick.as_millisecond()).await
                    };
                    if !kept {
                        state.ended.cancel();
                        held = None;
                    }
                }
            }
        }
        if let Some(state) = held.take() {
            self.stop(&running, &state.ended).await;
            // The next instance need not wait out the lease.
            if let Err(error) = store.release(LEASE).await {
                tracing::debug!(mapping = %name, %error, "releasing the schedule's lease failed; it expires");
            }
        } else {
            self.stop(&running, &shutdown).await;
        }
    }

    /// Sleeps `delay` unless shutdown comes first (false).
    async fn pause(&self, shutdown: &CancellationToken, delay: Duration) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Fires `tick`: recorded first, invoked once the record landed. False when the lease was
    /// lost (the holding ends). A store that fails leaves the tick due: it is tried again after
    /// a pause (shown on `/readyz`), never fired unrecorded.
    async fn fire_tick(
        self: &Arc<Self>,
        running: &tokio_util::task::TaskTracker,
        state: &Arc<Held>,
        tick: i64,
    ) -> bool {
        let name = self.name();
        if self.mapping.health.pause().is_paused() {
            tracing::info!(mapping = %name, tick_ms = tick, "tick skipped: the mapping is paused");
            state.progress.lock().expect("progress").last_ms = tick;
            return !matches!(state.save().await, Err(Unsaved::LeaseLost));
        }
        let before = state.progress.lock().expect("progress").clone();
        let fire = self.mark_running(state, tick);
        state.progress.lock().expect("progress").last_ms = tick;
        match state.save().await {
            Ok(()) => {
                if fire {
                    self.clone().spawn(running, state, tick);
                }
                true
            }
            Err(Unsaved::LeaseLost) => {
                tracing::warn!(mapping = %name, "the schedule's lease was lost before the tick; the new holder fires it");
                false
            }
            Err(Unsaved::Failed(error)) => {
                *state.progress.lock().expect("progress") = before;
                self.mapping.health.poll_failed(&error);
                self.mapping.metrics.poll_errors.increment(1);
                tracing::warn!(mapping = %name, %error, tick_ms = tick, "recording the tick failed; it is fired once it is recorded");
                let _ = self.pause(&state.ended, Duration::from_secs(1)).await;
                true
            }
        }
    }

    /// Takes the ticks after the last one fired up to `now`: the ones within `handover` of now
    /// (a lease changing hands) are fired; older ones are skipped, or with `catch_up` fired
    /// (the newest [`MAX_CATCH_UP`]). False when the lease was lost meanwhile.
    async fn catch_up(
        self: &Arc<Self>,
        running: &tokio_util::task::TaskTracker,
        state: &Arc<Held>,
        now: Timestamp,
        handover: Option<Duration>,
    ) -> bool {
        let last = state.progress.lock().expect("progress").last_ms;
        let recent_from = handover
            .and_then(|h| jiff::SignedDuration::try_from(h).ok())
            .map(|h| (now - h).as_millisecond());
        let (missed, older) = self.missed(last, now);
        let fire: Vec<i64> = missed
            .iter()
            .copied()
            .filter(|&tick| self.source.catch_up || recent_from.is_some_and(|from| tick >= from))
            .collect();
        let skipped = older + (missed.len() - fire.len()) as u64;
        if skipped > 0 {
            tracing::warn!(mapping = %self.name(), skipped, catch_up = self.source.catch_up, "ticks missed while no instance held the schedule were skipped");
        }
        let before = state.progress.lock().expect("progress").clone();
        if let Some(&newest) = missed.last() {
            let mut progress = state.progress.lock().expect("progress");
            progress.last_ms = progress.last_ms.max(newest);
        }
        let fire: Vec<i64> = fire
            .into_iter()
            .filter(|&tick| self.mark_running(state, tick))
            .collect();
        // One write for the lot, before any of them is invoked.
        match state.save().await {
            Ok(()) => {
                for tick in fire {
                    self.clone().spawn(running, state, tick);
                }
                true
            }
            Err(Unsaved::LeaseLost) => false,
            Err(Unsaved::Failed(error)) => {
                // Nothing fired unrecorded: the ticks stay due and are looked at again.
                *state.progress.lock().expect("progress") = before;
                self.mapping.health.poll_failed(&error);
                self.mapping.metrics.poll_errors.increment(1);
                tracing::warn!(mapping = %self.name(), %error, "recording the missed ticks failed; retrying");
                let _ = self.pause(&state.ended, Duration::from_secs(1)).await;
                true
            }
        }
    }

    /// Waits (at most the drain timeout) for the ticks running; what has not ended is left in
    /// the store for the next holder. `ended` is cancelled first: retries waiting out a delay
    /// stop; attempts under way finish.
    async fn stop(&self, running: &tokio_util::task::TaskTracker, ended: &CancellationToken) {
        running.close();
        ended.cancel();
        if tokio::time::timeout(self.mapping.shutdown_timeout, running.wait())
            .await
            .is_err()
        {
            tracing::warn!(mapping = %self.name(), "drain deadline reached; ticks still running are left to the next start");
        }
        tracing::info!(mapping = %self.name(), "mapping stopped");
    }

    /// The ticks after `last_ms` up to `now`, oldest first, looked for no further back than
    /// `max_event_age` (an older tick could only age out), at most [`MAX_CATCH_UP`] of the
    /// newest; and how many older ticks were passed over (counted while walking, bounded).
    fn missed(&self, last_ms: i64, now: Timestamp) -> (Vec<i64>, u64) {
        let horizon = jiff::SignedDuration::try_from(self.source.policy.max_event_age)
            .map(|age| (now - age).as_millisecond())
            .unwrap_or(last_ms);
        let Ok(mut at) = Timestamp::from_millisecond(last_ms.max(horizon)) else {
            return (Vec::new(), 0);
        };
        let mut ticks = std::collections::VecDeque::new();
        let mut older = u64::from(last_ms < horizon);
        while let Some(next) = self.schedule.next_after(at) {
            if next > now {
                break;
            }
            ticks.push_back(next.as_millisecond());
            if ticks.len() > MAX_CATCH_UP {
                ticks.pop_front();
                older += 1;
            }
            at = next;
        }
        (ticks.into(), older)
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
    /// running ticks (once the holding's write of it landed: the writes are serialized).
    fn spawn(
        self: Arc<Self>,
        running: &tokio_util::task::TaskTracker,
        state: &Arc<Held>,
        tick: i64,
    ) {
        let state = state.clone();
        running.spawn(async move {
            if self.fire(tick, &state.ended).await {
                state.progress.lock().expect("progress").running.remove(&tick);
                if let Err(Unsaved::Failed(error)) = state.save().await {
                    tracing::warn!(mapping = %self.name(), %error, tick_ms = tick, "recording the end of a tick failed; a restart runs it again");
                }
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

    /// Invokes `tick` until its policy ends it; false when the holding ended while a retry
    /// waited (the tick stays running in the store, for the next holder).
    async fn fire(&self, tick: i64, ended: &CancellationToken) -> bool {
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
            // An attempt under way finishes (its destination record too); only a retry's wait
            // is cut short by the end of the holding.
            run.await;
            let Some((delay, failed_attempts, not_run)) = store.next else {
                return true;
            };
            attempt.failed_attempts = failed_attempts;
            attempt.not_run = not_run;
            tokio::select! {
                _ = ended.cancelled() => return false,
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
        let stored = {
            let _call = worker.mapping.health.aws_call();
            destination.store(record.to_json(), &placement).await
        };
        match stored {
            Ok(()) => {
                worker.mapping.health.ack_succeeded();
                if condition != "Success" {
                    worker.mapping.metrics.dead_lettered(condition, 1);
                    tracing::warn!(mapping = %worker.name(), event_id = %record.request_id, condition, destination = destination.describe(), "tick dead-lettered");
                }
                return;
            }
            Err(error) => {
                failures += 1;
                worker.mapping.health.ack_failed(&error.to_string());
                worker.mapping.metrics.ack_errors.increment(1);
                tracing::error!(mapping = %worker.name(), event_id = %record.request_id, condition, %error, "storing the destination record failed; retrying");
                tokio::time::sleep(super::retry::retry_delay(failures)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The worker's pure parts: which missed ticks `catch_up` fires, and the event a tick sends.
    //! (Firing, retries and the single-firer lease run end to end in `tests/schedule.rs`.)
    use super::*;
    use crate::config::SourceConfig;
    use crate::health::Health;
    use crate::targets::SharedTarget;
    use crate::targets::testing::ScriptedTarget;
    use crate::telemetry::MappingMetrics;

    /// A worker for `schedule: {source}` (and `retry: {retry}`), with a state file of its own.
    fn worker(source: &str, retry: &str) -> (Worker, tempfile::TempDir) {
        let state = tempfile::tempdir().unwrap();
        let text = format!(
            "version: 1\ntargets:\n  t: {{ http: {{ url: \"http://127.0.0.1:1/\" }} }}\nmappings:\n  - name: nightly\n    target: t\n    source:\n      schedule: {source}\n    retry: {retry}\n"
        );
        let config = crate::config::parse("sluice.yaml", &text, Default::default()).unwrap();
        let mapping = config.mappings[0].clone();
        let SourceConfig::Schedule(source) = mapping.source.clone() else {
            panic!("a schedule source")
        };
        let file = sluice_sources::checkpoint::embedded::StateFile::open(state.path()).unwrap();
        let target = SharedTarget::new("t", Arc::new(ScriptedTarget::default()), 1);
        let metrics = MappingMetrics::new("nightly");
        let worker = Worker {
            schedule: source.schedule(),
            source,
            region: "eu-west-1".into(),
            arn: "arn:aws:events:eu-west-1:000000000000:rule/nightly".into(),
            invoker: Invoker::new(target.clone(), metrics.clone()),
            mapping: Mapping {
                config: mapping,
                target,
                on_failure: None,
                on_success: None,
                health: Health::new(Duration::from_secs(60), Duration::from_secs(60))
                    .register("nightly"),
                metrics,
                shutdown_timeout: Duration::from_secs(5),
            },
            store: StoreSetup::Embedded(file),
        };
        (worker, state)
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn missed_ticks_are_those_within_max_event_age_at_most_the_newest_hundred() {
        let (minutely, _state) = worker(
            "{ expression: \"rate(1 minute)\", catch_up: true }",
            "{ max_event_age: 1h }",
        );
        let now = at("2026-12-08T12:00:30Z");
        // Down for five hours: only the last hour's ticks could still be fired.
        let last = at("2026-12-08T07:00:00Z").as_millisecond();
        let (ticks, older) = minutely.missed(last, now);
        assert_eq!(ticks.len(), 60);
        assert_eq!(ticks[0], at("2026-12-08T11:01:00Z").as_millisecond());
        assert_eq!(
            *ticks.last().unwrap(),
            at("2026-12-08T12:00:00Z").as_millisecond()
        );
        assert_eq!(older, 1, "older ticks were passed over");
        // Down for ten minutes: each missed tick, none older.
        let recent = at("2026-12-08T11:50:00Z").as_millisecond();
        let (ticks, older) = minutely.missed(recent, now);
        assert_eq!((ticks.len(), older), (10, 0));
        assert!(
            ticks.iter().all(|t| *t > recent),
            "the last tick fired is not again"
        );
        // Six hours of age (Lambda's most): 360 due, the newest 100 fired.
        let (long, _state) = worker(
            "{ expression: \"rate(1 minute)\", catch_up: true }",
            "{ max_event_age: 6h }",
        );
        let (ticks, older) = long.missed(last, now);
        assert_eq!(ticks.len(), MAX_CATCH_UP);
        assert_eq!(
            *ticks.last().unwrap(),
            at("2026-12-08T12:00:00Z").as_millisecond()
        );
        assert_eq!(older, 300 - MAX_CATCH_UP as u64, "from 07:01 to 12:00");
    }

    #[test]
    fn a_ticks_event_is_eventbridges_scheduled_event_with_an_id_stable_per_tick() {
        let (nightly, _state) = worker(
            "{ expression: \"cron(0 2 * * ? *)\" }",
            "{ max_retry_attempts: 0 }",
        );
        let tick = at("2026-12-08T02:00:00Z").as_millisecond();
        let (id, event) = nightly.event(tick);
        assert_eq!(
            nightly.event(tick).0,
            id,
            "every attempt and holder: one id"
        );
        assert_ne!(nightly.event(tick + 86_400_000).0, id);
        assert_eq!(event["id"], id);
        assert_eq!(event["detail-type"], "Scheduled Event");
        assert_eq!(event["source"], "aws.events");
        assert_eq!(event["time"], "2026-12-08T02:00:00Z");
        assert_eq!(event["region"], "eu-west-1");
        assert_eq!(event["resources"][0], nightly.arn);
        assert_eq!(event["detail"], json!({}));
        let (constant, _state) = worker(
            "{ expression: \"rate(5 minutes)\", input: { job: reindex } }",
            "{ max_retry_attempts: 0 }",
        );
        assert_eq!(constant.event(tick).1, json!({ "job": "reindex" }));
    }
}
