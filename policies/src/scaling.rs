//! How many tasks a mapping needs to drain what waits for it within a target time.
//!
//! `desired = waiting / (throughput per task × target drain time)`, unrounded (an autoscaling
//! policy tracks the ratio to the running tasks; round up to read it as a count), 0 when nothing
//! waits. It is the backlog-per-task rule AWS recommends for scaling SQS consumers (and what
//! KEDA's SQS and Kafka scalers compute with a fixed `queueLength`/`lagThreshold`), with the
//! records one task drains in the target time measured instead of guessed. Records a task already
//! holds are not waiting: counting them would make a slow handler look like a backlog, and a
//! service whose calls take longer than the drain time would scale out forever.
//!
//! The throughput that counts is what a task finishes while it has more work than it can take
//! (records were waiting at both ends of an interval): a task that keeps up only shows the
//! arrival rate, which says nothing of what it could do. Saturated intervals inside `window` are
//! pooled; with none, the last saturated estimate stands (a task's capacity changes more slowly
//! than its load); with none ever, the throughput is unknown and so is the desired count while
//! records wait (a guess would drag an average across tasks down or up).

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

    /// Records per second one task finishes at capacity: `None` until an interval was saturated.
    pub fn per_task(&self) -> Option<f64> {
        self.saturated
    }
}

/// The tasks needed to drain `waiting` records within `drain` at `per_task` records per second
/// each, unrounded: 0 when nothing waits, `None` while records wait and the throughput is
/// unknown.
pub fn desired_tasks(waiting: u64, per_task: Option<f64>, drain: Duration) -> Option<f64> {
    if waiting == 0 {
        return Some(0.0);
    }
    let rate = per_task.filter(|rate| *rate > 0.0 && rate.is_finite())?;
    Some(waiting as f64 / (rate * drain.as_secs_f64().max(1.0)))
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
        let five_minutes = Duration::from_secs(300);
        assert_eq!(desired_tasks(6_000, Some(10.0), five_minutes), Some(2.0));
        assert_eq!(desired_tasks(1_500, Some(10.0), five_minutes), Some(0.5));
        assert_eq!(desired_tasks(0, Some(10.0), five_minutes), Some(0.0));
        assert_eq!(desired_tasks(0, None, five_minutes), Some(0.0));
        assert_eq!(
            desired_tasks(500, None, five_minutes),
            None,
            "unknown, not guessed"
        );
        assert_eq!(desired_tasks(500, Some(f64::NAN), five_minutes), None);
    }

    #[test]
    fn capacity_is_measured_while_saturated_not_while_keeping_up() {
        let mut throughput = Throughput::new(Duration::from_secs(300));
        // Keeping up with 2 records/s for a minute says nothing of capacity...
        throughput.observe(sample(0, 0, false));
        throughput.observe(sample(30, 60, false));
        throughput.observe(sample(60, 120, false));
        assert_eq!(throughput.per_task(), None);
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
    fn a_counter_that_went_back_is_not_read_as_throughput() {
        let mut throughput = Throughput::new(Duration::from_secs(300));
        throughput.observe(sample(0, 1_000, true));
        throughput.observe(sample(10, 10, true));
        assert_eq!(throughput.per_task(), None);
        throughput.observe(sample(20, 110, true));
        assert_eq!(throughput.per_task(), Some(10.0));
    }

    proptest! {
        // Rounded up, the desired tasks drain what waits in the drain time, and one task fewer
        // could not: the formula neither under- nor over-provisions.
        #[test]
        fn the_desired_tasks_drain_in_time_and_one_fewer_would_not(
            waiting in 1u64..10_000_000,
            rate in 0.1f64..10_000.0,
            drain in 1u64..86_400,
        ) {
            let desired = desired_tasks(waiting, Some(rate), Duration::from_secs(drain)).unwrap();
            let tasks = desired.ceil();
            let per_task = rate * drain as f64;
            prop_assert!(tasks * per_task >= waiting as f64 * (1.0 - 1e-9));
            if tasks > 1.0 {
                prop_assert!((tasks - 1.0) * per_task < waiting as f64 * (1.0 + 1e-9));
            }
        }
    }
}
