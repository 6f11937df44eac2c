//! Liveness and readiness of mappings and Invoke API functions, as `/readyz` reports them.
//!
//! A mapping is ready once it has polled its source successfully, as long as its last poll did not
//! fail and it has not gone `stall_after` without a successful poll while it was trying to poll
//! (a mapping waiting for its own in-flight batches to finish is busy, not stalled), no call to its
//! source or destination (a delete, a visibility change, a dead letter) has been waiting for an
//! answer for `stall_after` (in-flight batches stuck on AWS are not busy, they are stalled), and
//! none of its shards has kept failing (retrying one batch) for `stuck_after`.
//!
//! An Invoke API function has the same entry under `functions`: it is ready once its async worker
//! has read its queued events, and not while the state file fails ("failing"), after its worker
//! died until it runs again (counted in `restarts`), while a destination record cannot be stored
//! (`acknowledgement_error`) or a destination call has waited `stall_after` ("stalled"). It has no
//! source to poll, so time without a poll does not make it stalled.
//!
//! Targets report problems of their own (a worker pool that cannot start workers): while one is
//! set, `/readyz` is 503 and names it. A target whose circuit breaker is open is shown under
//! `targets` with `"circuit": "open"` and the reason, but does not make `/readyz` fail, and while
//! it is open the shards of mappings calling that target are not reported stuck: the breaker is
//! sluice holding records back on purpose, and a failing check would make ECS replace a task
//! that works.

use crate::control::{Control, PauseSwitch};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct MappingHealth {
    registered_at: Instant,
    last_success: Option<Instant>,
    last_error: Option<String>,
    consecutive_failures: u32,
    waiting_for_capacity: bool,
    /// Paused by an operator: not polling on purpose.
    pause: PauseSwitch,
    /// Shards (or shard lanes) retrying a failing batch, and since when.
    stuck: BTreeMap<String, Instant>,
    /// How often the mapping's worker panicked or exited and was restarted.
    restarts: u64,
    /// Calls to AWS waiting for an answer, by call number, since when.
    pending_calls: BTreeMap<u64, Instant>,
    /// The error of the last acknowledgement (delete, visibility change) when it failed; cleared
    /// only by one that succeeds, so working receives cannot hide failing deletes.
    ack_error: Option<String>,
    next_call: u64,
    /// The target the mapping calls: while its circuit breaker is open, shards that wait for it
    /// are waiting, not stuck.
    target: Option<String>,
}

/// What a problem is reported against besides a mapping or function entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Target,
}

impl Component {
    fn section(self) -> &'static str {
        match self {
            Component::Target => "targets",
        }
    }
}

/// Which section of `/readyz` an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Mappings,
    Functions,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Mappings => "mappings",
            Section::Functions => "functions",
        }
    }
}

#[derive(Clone)]
pub struct Health {
    stall_after: Duration,
    stuck_after: Duration,
    entries: Arc<Mutex<BTreeMap<(Section, String), MappingHealth>>>,
    problems: Arc<Mutex<BTreeMap<(Component, String), String>>>,
    /// Targets whose circuit breaker is not closed: its state and why it opened.
    circuits: Arc<Mutex<BTreeMap<String, (&'static str, String)>>>,
}

/// One mapping's (or function's) handle on the registry.
#[derive(Clone)]
pub struct MappingHealthHandle {
    key: (Section, String),
    health: Health,
    pause: PauseSwitch,
}

impl Health {
    pub fn new(stall_after: Duration, stuck_after: Duration) -> Self {
        Self {
            stall_after,
            stuck_after,
            entries: Arc::default(),
            problems: Arc::default(),
            circuits: Arc::default(),
        }
    }

    /// Shows (`Some((state, reason))`) or clears (`None`) a target's open circuit breaker.
    pub fn set_circuit(&self, target: &str, circuit: Option<(&'static str, String)>) {
        let mut circuits = self.circuits.lock().expect("health lock");
        match circuit {
            Some(circuit) => {
                circuits.insert(target.to_owned(), circuit);
            }
            None => {
                circuits.remove(target);
            }
        }
    }

    /// Sets (`Some`) or clears (`None`) the problem of a target.
    pub fn set_problem(&self, component: Component, name: &str, problem: Option<String>) {
        let mut problems = self.problems.lock().expect("health lock");
        let key = (component, name.to_owned());
        match problem {
            Some(problem) => {
                problems.insert(key, problem);
            }
            None => {
                problems.remove(&key);
            }
        }
    }

    pub fn register(&self, name: &str) -> MappingHealthHandle {
        self.register_in(Section::Mappings, name)
    }

    /// An Invoke API function's entry (see the module docs).
    pub fn register_function(&self, name: &str) -> MappingHealthHandle {
        self.register_in(Section::Functions, name)
    }

    /// A mapping registered again (a reload that changed it) keeps its pause switch: it is the
    /// same mapping by name.
    fn register_in(&self, section: Section, name: &str) -> MappingHealthHandle {
        let key = (section, name.to_owned());
        let mut entries = self.entries.lock().expect("health lock");
        let pause = match entries.get(&key) {
            Some(old) => old.pause.clone(),
            None if section == Section::Mappings => PauseSwitch::new(name),
            // Invoke API functions have no source to pause.
            None => PauseSwitch::inert(),
        };
        entries.insert(
            key.clone(),
            MappingHealth {
                registered_at: Instant::now(),
                last_success: None,
                last_error: None,
                consecutive_failures: 0,
                waiting_for_capacity: false,
                pause: pause.clone(),
                stuck: BTreeMap::new(),
                restarts: 0,
                pending_calls: BTreeMap::new(),
                next_call: 0,
                ack_error: None,
                target: None,
            },
        );
        drop(entries);
        MappingHealthHandle {
            key,
            health: self.clone(),
            pause,
        }
    }

    /// Pauses a mapping (it stops receiving; `/readyz` shows it ready, `"paused"`) or resumes it;
    /// the time it was paused is not time without polls.
    pub fn set_paused(&self, mapping: &str, paused: bool) -> Control {
        let key = (Section::Mappings, mapping.to_owned());
        let mut entries = self.entries.lock().expect("health lock");
        let Some(health) = entries.get_mut(&key) else {
            return Control::UnknownMapping;
        };
        if !health.pause.set(paused) {
            return Control::AlreadySo;
        }
        if !paused {
            health.last_success = health.last_success.map(|_| Instant::now());
        }
        drop(entries);
        if paused {
            tracing::info!(%mapping, "mapping paused: no more receives; work in flight finishes");
        } else {
            tracing::info!(%mapping, "mapping resumed");
        }
        Control::Changed
    }

    /// Every mapping and whether it is paused.
    pub fn paused(&self) -> BTreeMap<String, bool> {
        self.entries
            .lock()
            .expect("health lock")
            .iter()
            .filter(|((section, _), _)| *section == Section::Mappings)
            .map(|((_, name), health)| (name.clone(), health.pause.is_paused()))
            .collect()
    }

    /// Drops a mapping that a reload removed (its worker has stopped), and its pause with it
    /// (`sluice_mapping_paused` back to 0: the name may come back, running).
    pub fn unregister(&self, mapping: &str) {
        let removed = self
            .entries
            .lock()
            .expect("health lock")
            .remove(&(Section::Mappings, mapping.to_owned()));
        if let Some(removed) = removed {
            removed.pause.set(false);
        }
    }

    /// Whether every mapping and function is ready, and a JSON report of each.
    pub fn readiness(&self) -> (bool, Value) {
        let now = Instant::now();
        let entries = self.entries.lock().expect("health lock");
        let circuits = self.circuits.lock().expect("health lock").clone();
        let mut all_ready = true;
        let mut document = json!({ "mappings": {} });
        for ((section, name), health) in entries.iter() {
            // Shards waiting for a target whose circuit is open are held back on purpose.
            let circuit_open = health
                .target
                .as_ref()
                .is_some_and(|target| circuits.contains_key(target));
            let stuck: BTreeMap<&str, f64> = health
                .stuck
                .iter()
                .map(|(key, since)| (key.as_str(), now.duration_since(*since).as_secs_f64()))
                .filter(|(_, seconds)| *seconds >= self.stuck_after.as_secs_f64())
                .filter(|_| !circuit_open)
                .collect();
            let call_waiting = health
                .pending_calls
                .values()
                .min()
                .map(|since| now.duration_since(*since));
            let call_stalled = call_waiting.is_some_and(|waiting| waiting > self.stall_after);
            let (ready, status) = match (health.last_success, health.consecutive_failures) {
                // Deletes, visibility changes and dead letters still run while paused: they fail
                // or hang for real.
                _ if health.ack_error.is_some() => (false, "failing"),
                _ if call_stalled => (false, "stalled"),
                // Not polling on purpose: neither a poll error from before the pause nor a lane
                // retrying a failing batch (the usual reason to pause) makes the task unready.
                _ if health.pause.is_paused() => (true, "paused"),
                (_, failures) if failures > 0 => (false, "failing"),
                _ if !stuck.is_empty() => (false, "stuck"),
                (None, _) => (false, "starting"),
                (Some(last), _)
                    if *section == Section::Mappings
                        && !health.waiting_for_capacity
                        && now.duration_since(last) > self.stall_after =>
                {
                    (false, "stalled")
                }
                (Some(_), _) => (true, "ready"),
            };
            all_ready &= ready;
            document[section.name()][name] = json!({
                    "status": status,
                    "seconds_since_last_poll": health.last_success.map(|t| now.duration_since(t).as_secs_f64()),
                    "seconds_since_start": now.duration_since(health.registered_at).as_secs_f64(),
                    "consecutive_failures": health.consecutive_failures,
                    "last_error": health.last_error,
                    "stuck_seconds": stuck,
                    "restarts": health.restarts,
                    "seconds_waiting_for_aws": call_waiting.map(|w| w.as_secs_f64()),
                    "acknowledgement_error": health.ack_error,
            });
        }
        drop(entries);
        for ((component, name), problem) in self.problems.lock().expect("health lock").iter() {
            all_ready = false;
            document[component.section()][name] = json!({ "status": "failing", "error": problem });
        }
        for (target, (state, reason)) in &circuits {
            let entry = &mut document[Component::Target.section()][target];
            if entry.is_null() {
                *entry = json!({ "status": "ready" });
            }
            entry["circuit"] = json!(state);
            entry["circuit_reason"] = json!(reason);
        }
        document["ready"] = json!(all_ready);
        (all_ready, document)
    }
}

/// One call to AWS in progress (see [`MappingHealthHandle::aws_call`]).
pub struct AwsCall {
    handle: MappingHealthHandle,
    id: u64,
}

impl Drop for AwsCall {
    fn drop(&mut self) {
        let id = self.id;
        self.handle.update(|h| {
            h.pending_calls.remove(&id);
        });
    }
}

impl MappingHealthHandle {
    fn update(&self, change: impl FnOnce(&mut MappingHealth)) {
        if let Some(health) = self
            .health
            .entries
            .lock()
            .expect("health lock")
            .get_mut(&self.key)
        {
            change(health);
        }
    }

    /// Names the target the mapping calls (see [`Health::set_circuit`]).
    /// The mapping's pause switch: sources wait on it before each receive or read.
    pub fn pause(&self) -> &PauseSwitch {
        &self.pause
    }

    pub fn calls_target(&self, target: &str) {
        let target = target.to_owned();
        self.update(|h| h.target = Some(target));
    }

    pub fn poll_succeeded(&self) {
        self.update(|h| {
            h.last_success = Some(Instant::now());
            h.consecutive_failures = 0;
            h.last_error = None;
        });
    }

    /// The mapping's worker panicked or stopped on its own: not ready until it polls again.
    pub fn restarting(&self, error: &str) {
        let error = error.to_owned();
        self.update(|h| {
            h.consecutive_failures += 1;
            h.restarts += 1;
            h.last_error = Some(error);
        });
    }

    /// A call to AWS (an acknowledgement, a dead letter) is under way until the guard drops; one
    /// that waits longer than `stall_after` makes the mapping stalled.
    pub fn aws_call(&self) -> AwsCall {
        let mut id = 0;
        self.update(|h| {
            id = h.next_call;
            h.next_call += 1;
            h.pending_calls.insert(id, Instant::now());
        });
        AwsCall {
            handle: self.clone(),
            id,
        }
    }

    /// An acknowledgement (delete, visibility change) failed as a whole: not ready until one
    /// succeeds.
    pub fn ack_failed(&self, error: &str) {
        let error = error.to_owned();
        self.update(|h| h.ack_error = Some(error));
    }

    pub fn ack_succeeded(&self) {
        self.update(|h| h.ack_error = None);
    }

    pub fn poll_failed(&self, error: &str) {
        let error = error.to_owned();
        self.update(|h| {
            h.consecutive_failures += 1;
            h.last_error = Some(error);
        });
    }

    /// Marks `key` (a shard, or a shard's lane) as retrying a failing batch since `since`, or as
    /// moving again with `None`.
    pub fn stuck(&self, key: &str, since: Option<Instant>) {
        let key = key.to_owned();
        self.update(|h| match since {
            Some(since) => {
                h.stuck.entry(key).or_insert(since);
            }
            None => {
                h.stuck.remove(&key);
            }
        });
    }

    pub fn waiting_for_capacity(&self, waiting: bool) {
        self.update(|h| {
            if h.waiting_for_capacity && !waiting {
                // Time spent waiting on our own batches is not time without polls.
                h.last_success = h.last_success.map(|_| Instant::now());
            }
            h.waiting_for_capacity = waiting;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_a_successful_poll_and_not_while_failing() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(60));
        let orders = health.register("orders");
        assert!(!health.readiness().0);
        orders.poll_succeeded();
        assert!(health.readiness().0);
        orders.poll_failed("connection refused");
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["mappings"]["orders"]["status"], "failing");
        assert_eq!(
            report["mappings"]["orders"]["last_error"],
            "connection refused"
        );
        orders.poll_succeeded();
        assert!(health.readiness().0);
    }

    // Reliability issue: with every batch stuck on a delete to an endpoint that stopped
    // answering, the pollers waited for capacity and /readyz said ready.
    #[test]
    fn an_aws_call_waiting_longer_than_stall_after_is_a_stall_even_while_busy() {
        let health = Health::new(Duration::from_millis(50), Duration::from_secs(60));
        let orders = health.register("orders");
        orders.poll_succeeded();
        orders.waiting_for_capacity(true);
        let call = orders.aws_call();
        assert!(health.readiness().0, "a call just started is not a stall");
        std::thread::sleep(Duration::from_millis(80));
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["mappings"]["orders"]["status"], "stalled");
        assert!(report["mappings"]["orders"]["seconds_waiting_for_aws"].as_f64() > Some(0.05));
        drop(call);
        assert!(health.readiness().0, "busy again once the call answered");
    }

    // Review of the reliability change: a failed delete was cleared by the next good receive,
    // so a mapping whose deletes always fail (no permission) looked ready while redelivering.
    #[test]
    fn a_failing_acknowledgement_is_cleared_only_by_one_that_succeeds() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(60));
        let orders = health.register("orders");
        orders.poll_succeeded();
        orders.ack_failed("AccessDenied: sqs:DeleteMessage");
        orders.poll_succeeded();
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["mappings"]["orders"]["status"], "failing");
        assert_eq!(
            report["mappings"]["orders"]["acknowledgement_error"],
            "AccessDenied: sqs:DeleteMessage"
        );
        orders.ack_succeeded();
        assert!(health.readiness().0);
    }

    #[test]
    fn a_problem_of_a_target_fails_readiness_and_is_named() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(60));
        health.register("orders").poll_succeeded();
        health.set_problem(Component::Target, "pool", Some("no worker starts".into()));
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["ready"], false);
        assert_eq!(report["targets"]["pool"]["error"], "no worker starts");
        health.set_problem(Component::Target, "pool", None);
        assert!(health.readiness().0);
    }

    // Issue 17: Invoke API functions get the entries mappings have.
    #[test]
    fn a_function_has_a_mapping_s_entry_but_idle_time_is_no_stall() {
        let health = Health::new(Duration::from_millis(1), Duration::from_secs(60));
        let hello = health.register_function("hello");
        let (ready, report) = health.readiness();
        assert!(!ready, "starting until its events are read");
        assert_eq!(report["functions"]["hello"]["status"], "starting");
        hello.poll_succeeded();
        std::thread::sleep(Duration::from_millis(5));
        assert!(health.readiness().0, "nothing due is not a stall");
        hello.restarting("the async worker died: boom");
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["functions"]["hello"]["restarts"], 1);
        assert!(report["mappings"].as_object().unwrap().is_empty());
        hello.poll_succeeded();
        let call = hello.aws_call();
        std::thread::sleep(Duration::from_millis(5));
        let (ready, report) = health.readiness();
        assert!(!ready, "a destination call waiting stall_after is a stall");
        assert_eq!(report["functions"]["hello"]["status"], "stalled");
        drop(call);
        assert!(health.readiness().0);
    }

    #[test]
    fn a_restarting_mapping_is_not_ready_until_it_polls_again() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(60));
        let orders = health.register("orders");
        orders.poll_succeeded();
        orders.restarting("the worker panicked: boom");
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["mappings"]["orders"]["restarts"], 1);
        assert_eq!(
            report["mappings"]["orders"]["last_error"],
            "the worker panicked: boom"
        );
        orders.poll_succeeded();
        assert!(health.readiness().0);
    }

    #[test]
    fn only_time_spent_waiting_for_capacity_is_forgiven() {
        let health = Health::new(Duration::from_millis(1), Duration::from_secs(60));
        let orders = health.register("orders");
        orders.poll_succeeded();
        std::thread::sleep(Duration::from_millis(5));
        orders.waiting_for_capacity(false);
        assert!(
            !health.readiness().0,
            "no wait happened, so the mapping is still stalled"
        );
        orders.waiting_for_capacity(true);
        orders.waiting_for_capacity(false);
        assert!(health.readiness().0, "the wait ended just now");
    }

    #[test]
    fn a_mapping_without_recent_polls_is_stalled() {
        let health = Health::new(Duration::from_millis(1), Duration::from_secs(60));
        let orders = health.register("orders");
        orders.poll_succeeded();
        std::thread::sleep(Duration::from_millis(5));
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["mappings"]["orders"]["status"], "stalled");
        orders.waiting_for_capacity(true);
        assert!(health.readiness().0);
    }

    #[test]
    fn a_shard_retrying_longer_than_stuck_after_fails_readiness_and_is_named() {
        let health = Health::new(Duration::from_secs(60), Duration::from_millis(1));
        let changes = health.register("changes");
        changes.poll_succeeded();
        changes.stuck("shardId-1", Some(Instant::now()));
        std::thread::sleep(Duration::from_millis(5));
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert_eq!(report["mappings"]["changes"]["status"], "stuck");
        assert!(report["mappings"]["changes"]["stuck_seconds"]["shardId-1"].is_number());
        changes.stuck("shardId-1", None);
        assert!(health.readiness().0);
    }

    #[test]
    fn an_open_circuit_is_shown_but_neither_it_nor_the_shards_waiting_for_it_fail_readiness() {
        let health = Health::new(Duration::from_secs(60), Duration::from_millis(1));
        let changes = health.register("changes");
        changes.calls_target("api");
        changes.poll_succeeded();
        changes.stuck("shardId-1", Some(Instant::now()));
        std::thread::sleep(Duration::from_millis(5));
        health.set_circuit("api", Some(("open", "5 calls in a row".into())));
        let (ready, report) = health.readiness();
        assert!(ready, "{report}");
        assert_eq!(report["targets"]["api"]["circuit"], "open");
        assert_eq!(report["mappings"]["changes"]["status"], "ready");
        health.set_circuit("api", None);
        let (ready, report) = health.readiness();
        assert!(!ready, "stuck again once the circuit closed: {report}");
        assert!(report.get("targets").is_none_or(|t| t.get("api").is_none()));
    }
}
