//! Adaptive concurrency for one target: how many calls may be in flight, learned from how the
//! target answers — additive increase, multiplicative decrease, in the spirit of TCP congestion
//! control and Vector's adaptive request concurrency.
//!
//! Calls are judged in windows about one round trip long. At the end of each window:
//!
//! - **decrease** (the limit times `decrease_ratio`, never below `min`) when the window's mean
//!   latency is more than `1 + queueing_tolerance` times the baseline (the target is queueing
//!   our calls); a call that was throttled (429), found the target unavailable or timed out
//!   decreases it at once, and each further one within the same window by one more;
//! - **increase** by one (never above `max`) when the limit was reached during the window and
//!   the window's latency was within `1 + growth_tolerance` of the baseline: the target kept up
//!   with all we sent — except that growing back to a limit at which the target refused calls
//!   waits ten windows after the refusal;
//! - otherwise keep the limit.
//!
//! The baseline is the target's latency when it is not queueing our calls. It follows faster
//! windows at once, and slower ones only while the limit was not reached (our calls cannot have
//! queued) — or when five decreases did not bring the latency back (or the limit is at `min`):
//! then the target itself became slower, and its new latency is the baseline. Ten windows in a
//! row at the limit with a latency between growth and queueing count as a decrease too, so the
//! limit never stands still for good.
//!
//! Times are [`Duration`]s on the caller's clock; the state is a few numbers, whatever the rate.

use crate::outcome::Outcome;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSettings {
    /// The lowest limit (at least 1); also where the limit starts.
    pub min: usize,
    /// The highest limit.
    pub max: usize,
    /// Factor applied on overload (0 < r < 1).
    pub decrease_ratio: f64,
    /// Latency above the baseline by more than this share is queueing: decrease.
    pub queueing_tolerance: f64,
    /// Latency within this share above the baseline lets the limit grow.
    pub growth_tolerance: f64,
}

impl AdaptiveSettings {
    pub fn new(min: usize, max: usize) -> Self {
        Self {
            min: min.max(1),
            max: max.max(min.max(1)),
            decrease_ratio: 0.9,
            queueing_tolerance: 0.5,
            growth_tolerance: 0.1,
        }
    }
}

/// How a call ended, as far as the limit cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The target answered (successfully or with a function error): its latency counts.
    Answered,
    /// Throttled, unavailable or timed out: the target is overloaded.
    Overloaded,
}

impl Signal {
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Throttled { .. } | Outcome::Unavailable { .. } | Outcome::Timeout { .. } => {
                Signal::Overloaded
            }
            _ => Signal::Answered,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    settings: AdaptiveSettings,
    limit: usize,
    /// Seconds.
    baseline: Option<f64>,
    /// Slow windows in a row (each one lowered the limit).
    slow_windows: u32,
    /// Windows in a row at the limit, slower than growth allows but not slow enough to lower it.
    stalled_windows: u32,
    window_started: Duration,
    latency_sum: f64,
    answered: u32,
    overloaded: bool,
    reached_limit: bool,
    /// When the limit was last lowered for an overload signal, and from which limit.
    overload: Option<(Duration, usize)>,
}

/// The shortest window, so a very fast target is still judged over several calls.
const MIN_WINDOW: Duration = Duration::from_millis(50);
/// Windows to wait before growing back to a limit at which the target refused calls.
const HOLD_WINDOWS: u32 = 10;
/// Windows in a row between growth and queueing before the limit is lowered to find out why.
const STALLED_WINDOWS: u32 = 10;

impl AdaptiveLimit {
    pub fn new(settings: AdaptiveSettings, now: Duration) -> Self {
        let settings = settings.sanitized();
        Self {
            limit: settings.min,
            settings,
            baseline: None,
            slow_windows: 0,
            stalled_windows: 0,
            window_started: now,
            latency_sum: 0.0,
            answered: 0,
            overloaded: false,
            reached_limit: false,
            overload: None,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A call starts with `in_flight` calls running, itself included.
    pub fn started(&mut self, in_flight: usize) {
        if in_flight >= self.limit {
            self.reached_limit = true;
        }
    }

    /// A call ended after `latency` with `signal`; returns the new limit when it changed.
    pub fn ended(&mut self, latency: Duration, signal: Signal, now: Duration) -> Option<usize> {
        let window = self.window();
        match signal {
            Signal::Answered => {
                self.latency_sum += latency.as_secs_f64();
                self.answered += 1;
            }
            Signal::Overloaded => {
                self.overloaded = true;
                // At once, not at the window's end: a refused call frees its slot in a moment,
                // and the next caller would be refused again, many times per window. The first
                // signal of a window takes 10 %, each further one a single slot.
                let recently = self
                    .overload
                    .is_some_and(|(at, _)| now.saturating_sub(at) < window);
                let before = self.limit;
                if recently {
                    // Each further refusal in the same window takes one more slot away: a
                    // capacity that fell from 16 to 4 is followed within a dozen refusals, not
                    // nine windows of 10 % with refused calls churning through the excess slots.
                    self.limit = self.limit.saturating_sub(1).max(self.settings.min);
                } else {
                    self.limit = self.decreased();
                    self.overload = Some((now, before));
                }
                return (self.limit != before).then_some(self.limit);
            }
        }
        if now.saturating_sub(self.window_started) < window {
            return None;
        }
        self.end_window(now)
    }

    /// About one round trip of the target.
    fn window(&self) -> Duration {
        self.baseline
            .map_or(MIN_WINDOW, Duration::from_secs_f64)
            .max(MIN_WINDOW)
    }

    fn decreased(&self) -> usize {
        ((self.limit as f64 * self.settings.decrease_ratio).floor() as usize)
            .clamp(self.settings.min, self.settings.max)
    }

    fn end_window(&mut self, now: Duration) -> Option<usize> {
        let before = self.limit;
        let settings = self.settings;
        let current = (self.answered > 0).then(|| self.latency_sum / f64::from(self.answered));
        let ratio = match (current, self.baseline) {
            (Some(current), Some(baseline)) if baseline > 0.0 => current / baseline,
            _ => 1.0,
        };
        // Ten windows in a row at the limit with latency between growth and queueing: lower
        // the limit as if queueing, to learn whether the latency is ours (it falls, the baseline
        // stands) or the target's (it does not, and after five such the baseline moves). Without
        // this the limit could stand still for good, even at `min`.
        let stalled = current.is_some()
            && self.reached_limit
            && !self.overloaded
            && ratio > 1.0 + settings.growth_tolerance;
        self.stalled_windows = if stalled { self.stalled_windows + 1 } else { 0 };
        let probing = self.stalled_windows >= STALLED_WINDOWS;
        if probing {
            self.stalled_windows = 0;
        }
        let queueing = ratio > 1.0 + settings.queueing_tolerance || probing;
        // Back at the limit where the target last refused calls, wait HOLD_WINDOWS windows
        // before trying it again, so refusals stay rare at a steady capacity.
        let holding = self.overload.is_some_and(|(at, refused_at)| {
            self.limit + 1 >= refused_at && now.saturating_sub(at) < self.window() * HOLD_WINDOWS
        });
        if self.overloaded {
            // Lowered already when the signals came.
        } else if queueing {
            self.limit = self.decreased();
        } else if current.is_some()
            && self.reached_limit
            && !holding
            && ratio <= 1.0 + settings.growth_tolerance
        {
            self.limit = (self.limit + 1).min(settings.max);
        }
        if queueing {
            self.slow_windows += 1;
        } else if ratio <= 1.0 + settings.growth_tolerance {
            self.slow_windows = 0;
        }
        if let (Some(current), false) = (current, self.overloaded) {
            self.baseline = Some(match self.baseline {
                None => current,
                Some(baseline) if current < baseline => baseline + 0.5 * (current - baseline),
                // Our calls did not fill the limit, so they did not queue: the target's own pace.
                Some(baseline) if !self.reached_limit => baseline + 0.1 * (current - baseline),
                // Five windows of lowering the limit did not bring the latency back (or the
                // limit is at `min`, where there is nothing left to lower): it is the target's own.
                Some(_) if self.slow_windows >= 5 || (queueing && before == settings.min) => {
                    self.slow_windows = 0;
                    current
                }
                Some(baseline) => baseline,
            });
        }
        self.window_started = now;
        self.latency_sum = 0.0;
        self.answered = 0;
        self.overloaded = false;
        self.reached_limit = false;
        (self.limit != before).then_some(self.limit)
    }
}

impl AdaptiveSettings {
    /// Bounds and factors in their ranges: `min` at least 1, `max` at least `min`, ratios between
    /// 0 and 1 (the defaults otherwise).
    fn sanitized(self) -> Self {
        let min = self.min.max(1);
        let defaults = AdaptiveSettings::new(min, self.max);
        let positive = |value: f64, default: f64| {
            if value.is_finite() && value > 0.0 {
                value
            } else {
                default
            }
        };
        Self {
            min,
            max: self.max.max(min),
            decrease_ratio: if self.decrease_ratio > 0.0 && self.decrease_ratio < 1.0 {
                self.decrease_ratio
            } else {
                defaults.decrease_ratio
            },
            queueing_tolerance: positive(self.queueing_tolerance, defaults.queueing_tolerance),
            growth_tolerance: positive(self.growth_tolerance, defaults.growth_tolerance),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives `limit` against a target that answers in `base` while at most `capacity` calls
    /// run, queues beyond that (latency grows with the queue), and throttles beyond
    /// `throttle_at`; returns the limit after `windows` windows of full use.
    fn drive(
        limit: &mut AdaptiveLimit,
        now: &mut Duration,
        capacity: usize,
        throttle_at: usize,
        windows: usize,
    ) {
        let base = 100u64;
        for _ in 0..windows {
            let in_flight = limit.limit();
            for _ in 0..in_flight {
                limit.started(in_flight);
            }
            let latency = if in_flight <= capacity {
                base
            } else {
                base * in_flight as u64 / capacity as u64
            };
            *now += ms(latency);
            for _ in 0..in_flight {
                let signal = if in_flight > throttle_at {
                    Signal::Overloaded
                } else {
                    Signal::Answered
                };
                limit.ended(ms(latency), signal, *now);
            }
        }
    }

    #[test]
    fn the_limit_grows_while_the_target_keeps_up_and_stops_near_its_capacity() {
        let mut now = Duration::ZERO;
        let mut limit = AdaptiveLimit::new(AdaptiveSettings::new(1, 100), now);
        drive(&mut limit, &mut now, 10, usize::MAX, 200);
        assert!(
            (10..=15).contains(&limit.limit()),
            "limit {} for a capacity of 10",
            limit.limit()
        );
    }

    #[test]
    fn throttles_cut_the_limit_and_it_follows_a_capacity_that_changes() {
        let mut now = Duration::ZERO;
        let mut limit = AdaptiveLimit::new(AdaptiveSettings::new(1, 100), now);
        drive(&mut limit, &mut now, 40, 20, 300);
        assert!(limit.limit() <= 22, "throttled above 20: {}", limit.limit());
        assert!(limit.limit() >= 12, "but not starved: {}", limit.limit());
        drive(&mut limit, &mut now, 5, 6, 200);
        assert!(limit.limit() <= 7, "follows the drop: {}", limit.limit());
        drive(&mut limit, &mut now, 30, usize::MAX, 400);
        assert!(limit.limit() >= 20, "and the recovery: {}", limit.limit());
    }

    #[test]
    fn a_target_that_became_somewhat_slower_does_not_freeze_the_limit() {
        let mut now = Duration::ZERO;
        let mut limit = AdaptiveLimit::new(AdaptiveSettings::new(1, 100), now);
        let window = |limit: &mut AdaptiveLimit, now: &mut Duration, latency: u64| {
            let in_flight = limit.limit();
            for _ in 0..in_flight {
                limit.started(in_flight);
            }
            *now += ms(latency);
            for _ in 0..in_flight {
                limit.ended(ms(latency), Signal::Answered, *now);
            }
        };
        // A fast first window, then every call 25 % slower, whatever the concurrency: between
        // growth (10 %) and queueing (50 %).
        window(&mut limit, &mut now, 80);
        for _ in 0..200 {
            window(&mut limit, &mut now, 100);
        }
        assert!(limit.limit() > 20, "frozen at {}", limit.limit());
    }

    #[test]
    fn an_idle_target_does_not_grow_the_limit() {
        let mut now = Duration::ZERO;
        let mut limit = AdaptiveLimit::new(AdaptiveSettings::new(2, 100), now);
        for _ in 0..100 {
            limit.started(1);
            now += ms(100);
            limit.ended(ms(100), Signal::Answered, now);
        }
        assert_eq!(
            limit.limit(),
            2,
            "one call at a time never reaches the limit"
        );
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_its_bounds(
            min in 1usize..10,
            span in 0usize..50,
            calls in proptest::collection::vec((1usize..80, 1u64..2_000, any::<bool>()), 1..300),
        ) {
            let mut now = Duration::ZERO;
            let mut limit = AdaptiveLimit::new(AdaptiveSettings::new(min, min + span), now);
            for (in_flight, latency, overloaded) in calls {
                limit.started(in_flight);
                now += ms(latency);
                let signal = if overloaded { Signal::Overloaded } else { Signal::Answered };
                if let Some(changed) = limit.ended(ms(latency), signal, now) {
                    prop_assert!(changed >= min && changed <= min + span);
                }
                prop_assert!(limit.limit() >= min && limit.limit() <= min + span);
            }
        }
    }
}
