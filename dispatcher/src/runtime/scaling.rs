//! Autoscaling signals of one mapping: its backlog, sampled every `sample_interval`, and with
//! `autoscaling.target_drain_time` the tasks it needs ([`sluice_policies::scaling`]).
//!
//! Guarantees:
//! - one read of the source per interval at most (SQS: one GetQueueAttributes call); a failed
//!   read is logged, clears the signals in the EMF line (no stale value reaches an autoscaler)
//!   and never stops the mapping; so does the end of the run (a restart, a reload, the drain);
//! - `sluice_backlog_records{mapping}`: SQS/S3 `ApproximateNumberOfMessages` +
//!   `ApproximateNumberOfMessagesNotVisible` (the queue's, so every task sees the same); Kafka the
//!   lag of the partitions this task holds (its share);
//! - `sluice_backlog_waiting_records{mapping}`: what of it no task holds (SQS: the visible
//!   messages; Kafka: the lag less the records read), which the desired tasks are computed from;
//! - `sluice_desired_tasks{mapping}` (unrounded; NaN while unknown) and
//!   `sluice_task_throughput_records_per_second{mapping}` only with a target drain time; the
//!   backlog and the desired tasks also ride along in the EMF line.

use crate::config::mapping::AutoscalingConfig;
use crate::telemetry::MappingMetrics;
use sluice_policies::scaling::{Sample, Throughput, desired_tasks};
use sluice_sources::{Queue, SourceError};
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where a mapping's backlog comes from.
pub(crate) enum BacklogSource {
    /// Asked of the queue (SQS, S3 notifications).
    Queue(Arc<dyn Queue>),
    /// Reported by the source as it reads ([`MappingMetrics::report_backlog`]: Kafka's lag).
    Reported,
}

/// One reading: the backlog, and how much of it is waiting for a task to take it.
struct Reading {
    backlog: u64,
    waiting: u64,
}

impl BacklogSource {
    async fn read(&self, metrics: &MappingMetrics) -> Result<Option<Reading>, SourceError> {
        match self {
            BacklogSource::Queue(queue) => {
                let backlog = queue.backlog().await?;
                Ok(Some(Reading {
                    backlog: backlog.visible.saturating_add(backlog.in_flight),
                    waiting: backlog.visible,
                }))
            }
            BacklogSource::Reported => Ok(metrics
                .reported_backlog()
                .map(|(backlog, waiting)| Reading { backlog, waiting })),
        }
    }
}

/// Clears the EMF signals and the reported backlog when the run ends, however it ends.
struct ClearOnEnd(MappingMetrics);

impl Drop for ClearOnEnd {
    fn drop(&mut self) {
        self.0.clear_reported_backlog();
        if let Some(esm) = self.0.esm() {
            esm.set_scaling(None);
        }
    }
}

/// Samples until `stop`.
pub(crate) async fn run(
    name: String,
    source: BacklogSource,
    metrics: MappingMetrics,
    config: AutoscalingConfig,
    stop: CancellationToken,
) {
    let _clear = ClearOnEnd(metrics.clone());
    let backlog_gauge = metrics::gauge!("sluice_backlog_records", "mapping" => name.clone());
    let waiting_gauge =
        metrics::gauge!("sluice_backlog_waiting_records", "mapping" => name.clone());
    let desired_gauge = config
        .target_drain_time
        .map(|_| metrics::gauge!("sluice_desired_tasks", "mapping" => name.clone()));
    let throughput_gauge = config.target_drain_time.map(
        |_| metrics::gauge!("sluice_task_throughput_records_per_second", "mapping" => name.clone()),
    );
    let mut throughput = Throughput::new(config.throughput_window);
    let started = Instant::now();
    let mut failures = 0u32;
    let mut ticks = tokio::time::interval(config.sample_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let reading = tokio::select! {
            reading = source.read(&metrics) => reading,
            _ = stop.cancelled() => return,
        };
        let reading = match reading {
            Ok(Some(reading)) => {
                failures = 0;
                reading
            }
            Ok(None) => continue,
            Err(error) => {
                failures += 1;
                if let Some(esm) = metrics.esm() {
                    esm.set_scaling(None);
                }
                // Every failure the first time, then one in ten: a queue that cannot be asked
                // for its size fails the receives too, and those say so on /readyz.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(mapping = %name, %error, failures, "cannot read the backlog; autoscaling gauges keep their last value");
                }
                continue;
            }
        };
        backlog_gauge.set(reading.backlog as f64);
        waiting_gauge.set(reading.waiting as f64);
        let desired = config.target_drain_time.and_then(|drain| {
            throughput.observe(Sample {
                at: started.elapsed(),
                finished: metrics.finished(),
                saturated: reading.waiting > 0,
            });
            let per_task = throughput.per_task();
            if let Some(gauge) = &throughput_gauge {
                gauge.set(per_task.unwrap_or(0.0));
            }
            desired_tasks(reading.waiting, per_task, drain)
        });
        if let Some(gauge) = &desired_gauge {
            gauge.set(desired.unwrap_or(f64::NAN));
        }
        if let Some(esm) = metrics.esm() {
            esm.set_scaling(Some((reading.backlog, desired)));
        }
    }
}

/// Starts the sampling task of a mapping; it ends when the returned guard is dropped (with the
/// run that started it, however that ends).
#[must_use = "the sampling stops when the guard is dropped"]
pub(crate) fn start(
    name: &str,
    source: BacklogSource,
    metrics: &MappingMetrics,
    config: &AutoscalingConfig,
) -> tokio_util::sync::DropGuard {
    let stop = CancellationToken::new();
    tokio::spawn(run(
        name.to_owned(),
        source,
        metrics.clone(),
        config.clone(),
        stop.clone(),
    ));
    stop.drop_guard()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sources::memory::MemoryQueue;
    use std::time::Duration;

    fn config(drain: Option<Duration>) -> AutoscalingConfig {
        AutoscalingConfig {
            sample_interval: Duration::from_secs(30),
            target_drain_time: drain,
            throughput_window: Duration::from_secs(300),
        }
    }

    // A queue with 600 messages waiting, drained by this task at 1 record/s: in a 60 s target
    // drain time one task does 60, so ten are needed; the EMF line carries both signals, and
    // they are gone once the run ends.
    #[tokio::test(start_paused = true)]
    async fn desired_tasks_follow_the_backlog_and_the_measured_throughput() {
        let queue = Arc::new(MemoryQueue::standard("q", Duration::from_secs(30)));
        for n in 0..600 {
            queue.send(&format!("m{n}"));
        }
        let metrics = MappingMetrics::new("scaled");
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            "scaled".into(),
            BacklogSource::Queue(queue.clone()),
            metrics.clone(),
            config(Some(Duration::from_secs(60))),
            stop.clone(),
        ));
        // Between the samples (at 0, 30, 60, ...), so each sample sees a whole 30 s of work.
        tokio::time::sleep(Duration::from_secs(15)).await;
        for _ in 0..4 {
            metrics.deleted(30);
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let esm = metrics.esm().unwrap();
        let (backlog, desired) = esm.scaling().unwrap();
        assert_eq!(backlog, 600);
        assert_eq!(desired, Some(10.0));
        stop.cancel();
        task.await.unwrap();
        assert_eq!(esm.scaling(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reported_backlog_is_used_once_reported_and_no_desired_tasks_without_a_drain_time() {
        let metrics = MappingMetrics::new("kafka");
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            "kafka".into(),
            BacklogSource::Reported,
            metrics.clone(),
            config(None),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(
            metrics.esm().unwrap().scaling().is_none(),
            "nothing reported yet"
        );
        metrics.report_backlog(42, 40);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(metrics.esm().unwrap().scaling(), Some((42, None)));
        stop.cancel();
        task.await.unwrap();
    }
}
