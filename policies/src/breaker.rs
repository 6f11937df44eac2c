//! A circuit breaker for one target: when to stop calling it, and when to try again.
//!
//! Times are [`Duration`]s on the caller's monotonic clock. Guarantees:
//!
//! - **closed** (calls flow): the breaker opens after `consecutive_failures` outcomes in a row in
//!   which the handler did not run (the target was unreachable or throttled; semantics.md §3 —
//!   AWS never counts them as attempts; a timeout in between neither counts nor breaks the run),
//!   or, with a `failure_ratio`, once at least `min_calls`
//!   calls ended within the last `window` and at least `ratio` of them failed in any way;
//! - **open**: no call is admitted until `open_for` has passed; each time a probe fails the wait
//!   doubles, up to `max_open_for`;
//! - **half-open**: exactly one call, the probe, is admitted at a time; every other caller waits
//!   for its verdict. A probe that succeeds closes the breaker (and forgets the old counts); one
//!   that fails or times out opens it again; one that ends without an outcome (its caller was
//!   cancelled) lets the next caller probe instead;
//! - a call admitted while the breaker was closed that ends after it opened never closes it
//!   again and never extends the wait: only probes decide in the open and half-open states.
//!
//! The ratio is counted in ten buckets that each span a tenth of the window, so memory is fixed
//! whatever the call rate.

use crate::outcome::Outcome;
use std::time::Duration;

/// A failure ratio over a sliding window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRatio {
    /// Share of failed calls (0 < ratio <= 1) that opens the breaker.
    pub ratio: f64,
    pub window: Duration,
    /// Calls the window must hold before the ratio is judged.
    pub min_calls: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Outcomes in a row in which the handler did not run that open the breaker (at least 1).
    pub consecutive_failures: u32,
    pub failure_ratio: Option<FailureRatio>,
    /// The first wait before a probe.
    pub open_for: Duration,
    /// The longest wait before a probe, however often probes fail.
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: None,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
        }
    }
}

/// The breaker's state, as metrics and `/readyz` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: go.
    Call,
    /// Go as the probe: report its outcome with `probe: true` (or [`Breaker::probe_abandoned`]).
    Probe,
    /// Wait until this time, then ask again.
    WaitUntil(Duration),
    /// A probe is running: wait for its verdict, then ask again.
    WaitForProbe,
}

/// A change of state that callers should hear about (waiters, metrics, `/readyz`).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Opened (again): no call until `until`; `reason` says why.
    Opened {
        until: Duration,
        reason: String,
    },
    Closed,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which tenth of the window (time / (window / 10)) this bucket counts.
    index: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug, Clone)]
enum Phase {
    Closed,
    Open { until: Duration },
    HalfOpen { probing: bool },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    phase: Phase,
    /// Handler-did-not-run outcomes in a row, while closed.
    consecutive: u32,
    buckets: [Bucket; 10],
    /// The current wait before a probe (doubles per failed probe).
    open_for: Duration,
    /// Why the breaker last opened, while it is not closed.
    reason: Option<String>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings: BreakerSettings {
                consecutive_failures: settings.consecutive_failures.max(1),
                max_open_for: settings.max_open_for.max(settings.open_for),
                ..settings
            },
            phase: Phase::Closed,
            consecutive: 0,
            buckets: [Bucket::default(); 10],
            open_for: settings.open_for,
            reason: None,
        }
    }

    /// Why the breaker opened, while it is open or half-open.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// What [`Breaker::admit`] would answer at `now`, without making anyone the probe.
    pub fn peek(&self, now: Duration) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Call,
            Phase::Open { until } if now < until => Admission::WaitUntil(until),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => Admission::Probe,
            Phase::HalfOpen { probing: true } => Admission::WaitForProbe,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call would have to wait now (without admitting one).
    pub fn would_wait(&self, now: Duration) -> bool {
        matches!(
            self.peek(now),
            Admission::WaitUntil(_) | Admission::WaitForProbe
        )
    }

    /// Decides whether a call may start at `now`; a `Probe` answer makes this call the probe.
    pub fn admit(&mut self, now: Duration) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Call,
            Phase::Open { until } if now < until => Admission::WaitUntil(until),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                self.phase = Phase::HalfOpen { probing: true };
                Admission::Probe
            }
            Phase::HalfOpen { probing: true } => Admission::WaitForProbe,
        }
    }

    /// The probe ended without an outcome: the next caller probes instead.
    pub fn probe_abandoned(&mut self) {
        if let Phase::HalfOpen { probing: true } = self.phase {
            self.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// Records how a call ended at `now`; `probe` when it was admitted as the probe.
    pub fn record(&mut self, outcome: &Outcome, probe: bool, now: Duration) -> Option<Transition> {
        let did_not_run = outcome.handler_did_not_run();
        // A timeout says neither that the target is down nor that it is up (it may be hanging,
        // or the handler slow): it keeps the count, and fails a probe.
        let timed_out = matches!(outcome, Outcome::Timeout { .. });
        let failed = outcome.error().is_some();
        match self.phase {
            Phase::Closed => {
                if did_not_run {
                    self.consecutive += 1;
                } else if !timed_out {
                    self.consecutive = 0;
                }
                self.count(failed, now);
                if self.consecutive >= self.settings.consecutive_failures {
                    let reason = format!(
                        "{} calls in a row did not reach the handler (last: {})",
                        self.consecutive,
                        describe(outcome)
                    );
                    return Some(self.open(now, reason));
                }
                if let Some(reason) = self.ratio_exceeded() {
                    return Some(self.open(now, reason));
                }
                None
            }
            Phase::HalfOpen { probing: true } if probe => {
                // A probe fails by whatever could have opened the breaker: a handler that did not
                // run, or (with a ratio configured) any failure.
                let probe_failed =
                    did_not_run || timed_out || (failed && self.settings.failure_ratio.is_some());
                if probe_failed {
                    self.open_for = self
                        .open_for
                        .saturating_mul(2)
                        .min(self.settings.max_open_for);
                    let reason = format!("the probe failed ({})", describe(outcome));
                    Some(self.open(now, reason))
                } else {
                    self.close();
                    Some(Transition::Closed)
                }
            }
            // Calls that started before the breaker opened say nothing about the target now.
            _ => None,
        }
    }

    fn open(&mut self, now: Duration, reason: String) -> Transition {
        let until = now + self.open_for;
        self.phase = Phase::Open { until };
        self.reason = Some(reason.clone());
        Transition::Opened { until, reason }
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.reason = None;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); 10];
        self.open_for = self.settings.open_for;
    }

    fn bucket_span(&self) -> Option<Duration> {
        self.settings
            .failure_ratio
            .map(|ratio| (ratio.window / 10).max(Duration::from_millis(1)))
    }

    fn count(&mut self, failed: bool, now: Duration) {
        let Some(span) = self.bucket_span() else {
            return;
        };
        let index = (now.as_nanos() / span.as_nanos()) as u64;
        let bucket = &mut self.buckets[(index % 10) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
        self.prune(index);
    }

    /// Forgets buckets older than the window that ends in bucket `current`.
    fn prune(&mut self, current: u64) {
        for bucket in &mut self.buckets {
            if current.saturating_sub(bucket.index) >= 10 {
                *bucket = Bucket::default();
            }
        }
    }

    fn ratio_exceeded(&self) -> Option<String> {
        let settings = self.settings.failure_ratio?;
        let (calls, failures) = self
            .buckets
            .iter()
            .fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
        (calls >= settings.min_calls.max(1)
            && f64::from(failures) >= settings.ratio * f64::from(calls))
        .then(|| {
            format!(
                "{failures} of the last {calls} calls failed within {:?} (failure_ratio {})",
                settings.window, settings.ratio
            )
        })
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome.error() {
        Some(error) => format!("{}: {}", error.error_type, error.message),
        None => outcome.kind().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ErrorInfo;
    use proptest::prelude::*;

    fn unavailable() -> Outcome {
        Outcome::Unavailable {
            message: "connection refused".into(),
        }
    }

    fn ok() -> Outcome {
        Outcome::Returned { response: None }
    }

    fn function_error() -> Outcome {
        Outcome::FunctionError(ErrorInfo::new("Boom", "failed"))
    }

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn breaker(consecutive: u32) -> Breaker {
        Breaker::new(BreakerSettings {
            consecutive_failures: consecutive,
            failure_ratio: None,
            open_for: s(5),
            max_open_for: s(30),
        })
    }

    #[test]
    fn opens_after_consecutive_unreachable_outcomes_and_a_success_resets_the_count() {
        let mut b = breaker(3);
        assert_eq!(b.record(&unavailable(), false, s(0)), None);
        assert_eq!(b.record(&unavailable(), false, s(0)), None);
        assert_eq!(b.record(&ok(), false, s(0)), None);
        assert_eq!(b.record(&unavailable(), false, s(1)), None);
        assert_eq!(b.record(&unavailable(), false, s(1)), None);
        let opened = b.record(&unavailable(), false, s(1));
        assert!(matches!(opened, Some(Transition::Opened { until, .. }) if until == s(6)));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_function_error_means_the_target_is_reachable() {
        let mut b = breaker(2);
        b.record(&unavailable(), false, s(0));
        b.record(&function_error(), false, s(0));
        assert_eq!(b.record(&unavailable(), false, s(0)), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn open_admits_nothing_until_the_wait_ends_then_exactly_one_probe() {
        let mut b = breaker(1);
        b.record(&unavailable(), false, s(10));
        assert_eq!(b.admit(s(12)), Admission::WaitUntil(s(15)));
        assert_eq!(b.peek(s(15)), Admission::Probe);
        assert!(b.reason().unwrap().contains("did not reach the handler"));
        assert!(b.would_wait(s(12)));
        assert_eq!(b.admit(s(15)), Admission::Probe);
        assert_eq!(b.admit(s(15)), Admission::WaitForProbe);
        assert_eq!(b.admit(s(100)), Admission::WaitForProbe);
        assert_eq!(b.record(&ok(), true, s(16)), Some(Transition::Closed));
        assert_eq!(b.admit(s(16)), Admission::Call);
    }

    #[test]
    fn each_failed_probe_doubles_the_wait_up_to_the_maximum() {
        let mut b = breaker(1);
        b.record(&unavailable(), false, s(0));
        let mut now = s(0);
        let mut waits = Vec::new();
        for _ in 0..5 {
            let Admission::WaitUntil(until) = b.admit(now) else {
                panic!("open")
            };
            now = until;
            assert_eq!(b.admit(now), Admission::Probe);
            let Some(Transition::Opened { until: next, .. }) = b.record(&unavailable(), true, now)
            else {
                panic!("reopened")
            };
            waits.push((next - now).as_secs());
        }
        assert_eq!(waits, [10, 20, 30, 30, 30]);
        // A successful probe starts the next outage from the first wait again.
        let Admission::WaitUntil(until) = b.admit(now) else {
            panic!()
        };
        assert_eq!(b.admit(until), Admission::Probe);
        b.record(&ok(), true, until);
        let Some(Transition::Opened {
            until: reopened, ..
        }) = b.record(&unavailable(), false, until)
        else {
            panic!()
        };
        assert_eq!(reopened - until, s(5));
    }

    #[test]
    fn a_timeout_keeps_the_count_and_fails_a_probe() {
        let timeout = Outcome::Timeout { after_ms: 30_000 };
        let mut b = breaker(2);
        b.record(&unavailable(), false, s(0));
        assert_eq!(b.record(&timeout, false, s(0)), None);
        assert!(matches!(
            b.record(&unavailable(), false, s(0)),
            Some(Transition::Opened { .. })
        ));
        assert_eq!(b.admit(s(5)), Admission::Probe);
        assert!(matches!(
            b.record(&timeout, true, s(35)),
            Some(Transition::Opened { .. })
        ));
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let mut b = breaker(1);
        b.record(&unavailable(), false, s(0));
        assert_eq!(b.admit(s(5)), Admission::Probe);
        b.probe_abandoned();
        assert_eq!(b.admit(s(5)), Admission::Probe);
    }

    #[test]
    fn calls_started_before_the_breaker_opened_do_not_decide_for_the_probe() {
        let mut b = breaker(1);
        b.record(&unavailable(), false, s(0));
        // A late success of an earlier call neither closes the breaker nor extends the wait.
        assert_eq!(b.record(&ok(), false, s(1)), None);
        assert_eq!(b.record(&unavailable(), false, s(1)), None);
        assert_eq!(b.admit(s(5)), Admission::Probe);
        assert_eq!(b.record(&ok(), false, s(5)), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.record(&ok(), true, s(6)), Some(Transition::Closed));
    }

    #[test]
    fn the_failure_ratio_opens_only_with_enough_calls_in_the_window() {
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 100,
            failure_ratio: Some(FailureRatio {
                ratio: 0.5,
                window: s(10),
                min_calls: 4,
            }),
            open_for: s(5),
            max_open_for: s(30),
        });
        assert_eq!(b.record(&function_error(), false, s(0)), None);
        assert_eq!(b.record(&function_error(), false, s(1)), None);
        assert_eq!(b.record(&ok(), false, s(2)), None);
        // Four calls, two failed: 50 %.
        assert!(matches!(
            b.record(&ok(), false, s(3)),
            Some(Transition::Opened { .. })
        ));
        // Old failures leave the window.
        let mut b = Breaker::new(b.settings);
        b.record(&function_error(), false, s(0));
        b.record(&function_error(), false, s(0));
        for t in 11..14 {
            assert_eq!(b.record(&ok(), false, s(t)), None);
        }
        assert_eq!(b.record(&function_error(), false, s(14)), None);
    }

    #[test]
    fn with_a_ratio_a_probe_that_gets_a_function_error_fails() {
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 1,
            failure_ratio: Some(FailureRatio {
                ratio: 0.5,
                window: s(10),
                min_calls: 10,
            }),
            ..BreakerSettings::default()
        });
        b.record(&unavailable(), false, s(0));
        assert_eq!(b.admit(s(5)), Admission::Probe);
        assert!(matches!(
            b.record(&function_error(), true, s(5)),
            Some(Transition::Opened { .. })
        ));
        // Without a ratio, a function error shows the target is reachable: it closes.
        let mut b = breaker(1);
        b.record(&unavailable(), false, s(0));
        assert_eq!(b.admit(s(5)), Admission::Probe);
        assert_eq!(
            b.record(&function_error(), true, s(5)),
            Some(Transition::Closed)
        );
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![Just(ok()), Just(unavailable()), Just(function_error())]
    }

    proptest! {
        /// Whatever happens, at most one probe is out at a time, and nothing is admitted while
        /// the breaker is open and its wait has not ended.
        #[test]
        fn never_two_probes_and_never_a_call_while_open(
            steps in proptest::collection::vec((0u8..4, outcome(), 0u64..3_000), 1..200)
        ) {
            let mut b = breaker(2);
            let mut now = Duration::ZERO;
            let mut probes_out = 0u32;
            for (action, outcome, advance) in steps {
                now += Duration::from_millis(advance);
                match action {
                    0 => match b.admit(now) {
                        Admission::Probe => {
                            probes_out += 1;
                            prop_assert_eq!(probes_out, 1);
                        }
                        Admission::Call => prop_assert_eq!(b.state(), BreakerState::Closed),
                        Admission::WaitUntil(until) => prop_assert!(until > now),
                        Admission::WaitForProbe => prop_assert_eq!(probes_out, 1),
                    },
                    1 if probes_out == 1 => {
                        b.record(&outcome, true, now);
                        probes_out = 0;
                    }
                    2 if probes_out == 1 => {
                        b.probe_abandoned();
                        probes_out = 0;
                    }
                    _ => {
                        b.record(&outcome, false, now);
                    }
                }
            }
        }
    }
}
