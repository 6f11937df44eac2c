//! Autoscaling signals of one mapping: its backlog, sampled every `sample_interval`, and with
//! `autoscaling.target_drain_time` the tasks it needs ([`sluice_policies::scaling`]).
//!
//! Guarantees:
//! - one read of the source per interval at most (SQS: one GetQueueAttributes call); a failed
//!   read is logged and leaves the gauges at their last value, it never stops the mapping;
//! - `sluice_backlog_records{mapping}`: SQS/S3 `ApproximateNumberOfMessages` +
//!   `ApproximateNumberOfMessagesNotVisible` (the queue's, so every task sees the same); Kafka the
//!   lag of the partitions this task holds (its share);
//! - `sluice_desired_tasks{mapping}` and `sluice_task_throughput_records_per_second{mapping}`
//!   only with a target drain time; both also ride along in the EMF line.

use crate::config::mapping::AutoscalingConfig;
use crate::telemetry::MappingMetrics;
use sluice_policies::scaling::{Sample, Throughput, desired_tasks};
use sluice_sources::Queue;
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
    async fn read(&self, metrics: &MappingMetrics) -> Result<Option<Reading>, String> {
        match self {
            BacklogSource::Queue(queue) => {
                let backlog = queue.backlog().await.map_err(|e| e.to_string())?;
                Ok(Some(Reading {
                    backlog: backlog.visible.saturating_add(backlog.in_flight),
                    waiting: backlog.visible,
                }))
            }
            // The lag holds the records being handled too: only what exceeds them waits.
            BacklogSource::Reported => Ok(metrics.reported_backlog().map(|backlog| Reading {
                backlog,
                waiting: backlog,
            })),
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
    let backlog_gauge = metrics::gauge!("sluice_backlog_records", "mapping" => name.clone());
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
                // Every failure the first time, then one in ten: a queue that cannot be asked
                // for its size fails the receives too, and those say so on /readyz.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(mapping = %name, %error, failures, "cannot read the backlog; autoscaling gauges keep their last value");
                }
                continue;
            }
        };
        backlog_gauge.set(reading.backlog as f64);
        let desired = config.target_drain_time.map(|drain| {
            throughput.observe(Sample {
                at: started.elapsed(),
                finished: metrics.finished(),
                saturated: reading.waiting > 0,
            });
            let per_task = throughput.per_task();
            if let Some(gauge) = &throughput_gauge {
                gauge.set(per_task.unwrap_or(0.0));
            }
            desired_tasks(reading.backlog, per_task, drain)
        });
        if let (Some(gauge), Some(desired)) = (&desired_gauge, desired) {
            gauge.set(desired as f64);
        }
        if let Some(esm) = metrics.esm() {
            esm.set_scaling(reading.backlog, desired);
        }
    }
}

/// Starts the sampling task of a mapping; it ends at `stop`.
pub(crate) fn spawn(
    name: &str,
    source: BacklogSource,
    metrics: &MappingMetrics,
    config: &AutoscalingConfig,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(
        name.to_owned(),
        source,
        metrics.clone(),
        config.clone(),
        stop,
    ))
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
    // drain time one task does 60, so ten are needed; the EMF line carries both signals.
    #[tokio::test(start_paused = true)]
    async fn desired_tasks_follow_the_backlog_and_the_measured_throughput() {
        let queue = Arc::new(MemoryQueue::standard("q", Duration::from_secs(30)));
        for n in 0..600 {
            queue.send(&format!("m{n}"));
        }
        let metrics = MappingMetrics::new("scaled");
        let stop = CancellationToken::new();
        let task = spawn(
            "scaled",
            BacklogSource::Queue(queue.clone()),
            &metrics,
            &config(Some(Duration::from_secs(60))),
            stop.clone(),
        );
        // Between the samples (at 0, 30, 60, ...), so each sample sees a whole 30 s of work.
        tokio::time::sleep(Duration::from_secs(15)).await;
        for _ in 0..4 {
            metrics.acknowledged(30);
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let esm = metrics.esm().unwrap();
        let (backlog, desired) = esm.scaling().unwrap();
        assert_eq!(backlog, 600);
        assert_eq!(desired, Some(10));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reported_backlog_is_used_once_reported_and_no_desired_tasks_without_a_drain_time() {
        let metrics = MappingMetrics::new("kafka");
        let stop = CancellationToken::new();
        let task = spawn(
            "kafka",
            BacklogSource::Reported,
            &metrics,
            &config(None),
            stop.clone(),
        );
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(
            metrics.esm().unwrap().scaling().is_none(),
            "nothing reported yet"
        );
        metrics.offset_lag(42);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(metrics.esm().unwrap().scaling(), Some((42, None)));
        stop.cancel();
        task.await.unwrap();
    }
}
