//! How many tasks a mapping needs to drain its backlog within a target time.
//!
//! `desired = ceil(backlog / (throughput per task × target drain time))`, 0 for an empty backlog.
//! It is the backlog-per-task rule AWS recommends for scaling SQS consumers (and what KEDA's SQS
//! and Kafka scalers compute with a fixed `queueLength`/`lagThreshold`), with the records one task
//! drains in the target time measured instead of guessed.
//!
//! The throughput that counts is what a task finishes while it has more work than it can take
//! (records were waiting at both ends of an interval): a task that keeps up only shows the
//! arrival rate, which says nothing of what it could do. Saturated intervals inside `window` are
//! pooled; with none, the last saturated estimate stands (a task's capacity changes more slowly
//! than its load); with none ever, the overall rate is used, which can only underestimate capacity
//! and so errs toward more tasks, never fewer.

use std::collections::VecDeque;
use std::time::Duration;

/// One reading of a mapping, taken every sample interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When, on any monotonic clock.
    pub at: Duration,
    /// Records this task has finished (acknowledged, filtered, dead-lettered) since it started.
    pub finished: u64,
    /// Whether records were waiting that no task had taken yet.
    pub saturated: bool,
}

/// A task's throughput, from its samples.
#[derive(Debug, Clone)]
pub struct Throughput {
    window: Duration,
    samples: VecDeque<Sample>,
    /// The newest saturated estimate, kept after its intervals leave the window.
    saturated: Option<f64>,
}

impl Throughput {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
            saturated: None,
        }
    }

    pub fn observe(&mut self, sample: Sample) {
        if self
            .samples
            .back()
            .is_some_and(|last| sample.at <= last.at || sample.finished < last.finished)
        {
            // A clock that did not move, or a counter that went back (a restart): start over.
            self.samples.clear();
        }
        self.samples.push_back(sample);
        while self
            .samples
            .front()
            .is_some_and(|first| sample.at - first.at > self.window)
        {
            self.samples.pop_front();
        }
        let (mut records, mut seconds) = (0u64, 0f64);
        for pair in self.samples.iter().collect::<Vec<_>>().windows(2) {
            if pair[0].saturated && pair[1].saturated {
                records += pair[1].finished - pair[0].finished;
                seconds += (pair[1].at - pair[0].at).as_secs_f64();
            }
        }
        if seconds > 0.0 && records > 0 {
            self.saturated = Some(records as f64 / seconds);
        }
    }

    /// Records per second one task finishes at capacity, as well as it is known; `None` before
    /// two samples or while nothing was ever finished.
    pub fn per_task(&self) -> Option<f64> {
        self.saturated.or_else(|| {
            let (first, last) = (self.samples.front()?, self.samples.back()?);
            let seconds = (last.at - first.at).as_secs_f64();
            let records = last.finished - first.finished;
            (seconds > 0.0 && records > 0).then(|| records as f64 / seconds)
        })
    }
}

/// The tasks needed to drain `backlog` within `drain` at `per_task` records per second each: 0
/// for no backlog, at least 1 for any, and 1 while the throughput is unknown (one task will
/// measure it).
pub fn desired_tasks(backlog: u64, per_task: Option<f64>, drain: Duration) -> u64 {
    if backlog == 0 {
        return 0;
    }
    let Some(rate) = per_task.filter(|rate| *rate > 0.0) else {
        return 1;
    };
    let per_task_in_drain = rate * drain.as_secs_f64().max(1.0);
    let tasks = (backlog as f64 / per_task_in_drain).ceil();
    // A backlog of u64::MAX at a trickle is still a finite number of tasks.
    (tasks as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(at: u64, finished: u64, saturated: bool) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            finished,
            saturated,
        }
    }

    #[test]
    fn a_backlog_of_ten_minutes_for_one_task_needs_two_tasks_to_drain_in_five() {
        assert_eq!(
            desired_tasks(6_000, Some(10.0), Duration::from_secs(300)),
            2
        );
        assert_eq!(
            desired_tasks(6_001, Some(10.0), Duration::from_secs(300)),
            3
        );
        assert_eq!(desired_tasks(0, Some(10.0), Duration::from_secs(300)), 0);
        assert_eq!(desired_tasks(1, Some(10.0), Duration::from_secs(300)), 1);
        assert_eq!(desired_tasks(500, None, Duration::from_secs(300)), 1);
    }

    #[test]
    fn capacity_is_measured_while_saturated_not_while_keeping_up() {
        let mut throughput = Throughput::new(Duration::from_secs(300));
        // Keeping up with 2 records/s for a minute...
        throughput.observe(sample(0, 0, false));
        throughput.observe(sample(30, 60, false));
        throughput.observe(sample(60, 120, false));
        assert_eq!(throughput.per_task(), Some(2.0));
        // ...then a burst: 50 records/s while records wait.
        throughput.observe(sample(90, 1_620, true));
        throughput.observe(sample(120, 3_120, true));
        assert_eq!(throughput.per_task(), Some(50.0));
        // Keeping up again: the capacity stays what was measured.
        for at in (150..1_000).step_by(30) {
            throughput.observe(sample(at, 3_120 + at, false));
        }
        assert_eq!(throughput.per_task(), Some(50.0));
    }

    #[test]
    fn a_restart_of_the_counter_starts_the_measurement_over() {
        let mut throughput = Throughput::new(Duration::from_secs(300));
        throughput.observe(sample(0, 1_000, false));
        throughput.observe(sample(10, 10, false));
        assert_eq!(throughput.per_task(), None);
        throughput.observe(sample(20, 110, false));
        assert_eq!(throughput.per_task(), Some(10.0));
    }

    proptest! {
        // Draining with the desired tasks takes at most the drain time, and one task fewer could
        // not: the formula neither under- nor over-provisions.
        #[test]
        fn the_desired_tasks_drain_in_time_and_one_fewer_would_not(
            backlog in 1u64..10_000_000,
            rate in 0.1f64..10_000.0,
            drain in 1u64..86_400,
        ) {
            let tasks = desired_tasks(backlog, Some(rate), Duration::from_secs(drain));
            let per_task = rate * drain as f64;
            prop_assert!(tasks as f64 * per_task >= backlog as f64 * (1.0 - 1e-9));
            if tasks > 1 {
                prop_assert!(((tasks - 1) as f64) * per_task < backlog as f64 * (1.0 + 1e-9));
            }
        }
    }
}
