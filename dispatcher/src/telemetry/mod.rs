//! Logs and metrics.
//!
//! Logs are JSON lines when stdout is not a terminal (or with `--log-format json`), text
//! otherwise; `RUST_LOG` sets the filter (default `info`). Metrics are exported in Prometheus text
//! on the admin server; every name is listed in [`MappingMetrics`] and in the README.

pub mod esm;

use esm::{EsmCounts, EsmMetric};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if let Err(error) = result {
        eprintln!("sluice: logging was already initialised: {error}");
    }
}

/// Logging for one-shot commands (`sluice dlq`): text on stderr, so stdout holds only the
/// command's output; warnings and errors unless `RUST_LOG` says otherwise.
pub fn init_command_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the global Prometheus recorder and returns the handle that renders it.
pub fn init_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let buckets = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        900.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sluice_invoke_duration_seconds".into()),
            &buckets,
        )?
        .set_buckets_for_metric(
            Matcher::Full("sluice_target_rate_limit_wait_seconds".into()),
            &buckets,
        )?
        .set_buckets_for_metric(
            Matcher::Prefix("sluice_lambda_".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        )?
        .install_recorder()?;
    Ok(handle)
}

/// Every per-mapping metric, with its `mapping` label bound. Handles are resolved once per
/// mapping; a clone (one per batch and per task) shares them.
#[derive(Clone)]
pub struct MappingMetrics(std::sync::Arc<MappingHandles>);

impl std::ops::Deref for MappingMetrics {
    type Target = MappingHandles;

    fn deref(&self) -> &MappingHandles {
        &self.0
    }
}

/// The handles a [`MappingMetrics`] shares.
pub struct MappingHandles {
    mapping: String,
    /// `sluice_records_received_total`: records read from the source; see [`Self::received`].
    records_received: Counter,
    /// `sluice_batches_invoked_total`: invocations of the target.
    pub batches_invoked: Counter,
    /// `sluice_records_acknowledged_total`: records deleted or checkpointed after success; see
    /// [`Self::acknowledged`].
    records_acknowledged: Counter,
    /// `sluice_records_retried_total`: records that failed and will be delivered again.
    pub records_retried: Counter,
    /// `sluice_records_released_total`: records returned unhandled (FIFO followers, shutdown).
    pub records_released: Counter,
    /// `sluice_records_filtered_total`: records no filter pattern matched, acknowledged
    /// unhandled; see [`Self::filtered`].
    records_filtered: Counter,
    /// `sluice_invoke_duration_seconds`: time from request to complete response.
    pub invoke_duration: Histogram,
    /// `sluice_in_flight_records`: records received and not yet acknowledged or returned.
    pub in_flight_records: Gauge,
    /// `sluice_in_flight_bytes`: payload bytes of those records.
    pub in_flight_bytes: Gauge,
    /// `sluice_poll_errors_total`: failed receives/polls of the source.
    pub poll_errors: Counter,
    /// `sluice_visibility_extensions_total`: heartbeat visibility extensions.
    pub visibility_extensions: Counter,
    /// `sluice_ack_errors_total`: deletes or visibility changes that failed.
    pub ack_errors: Counter,
    /// `sluice_invocation_outcomes_total{outcome}`, one counter per outcome label.
    outcomes: Vec<(&'static str, Counter)>,
    /// Lambda's event source mapping metrics; `None` for Invoke API functions, which are not
    /// event source mappings.
    esm: Option<std::sync::Arc<EsmCounts>>,
    /// Records finished, a task's throughput for autoscaling: messages deleted from the queue
    /// (queue sources: handled, filtered or dead-lettered alike) or records checkpointed past
    /// (lanes). Each record counts once, at the step that ends it.
    finished: AtomicU64,
    /// The backlog and what of it waits (no task holds it), as the source reports them while
    /// reading (Kafka); `None` until it has.
    reported_backlog: std::sync::Mutex<Option<(u64, u64)>>,
}

/// Every `outcome` label of `sluice_invocation_outcomes_total`.
pub const OUTCOMES: [&str; 7] = [
    "success",
    "partial_failure",
    "function_error",
    "invalid_response",
    "timeout",
    "throttled",
    "unavailable",
];

impl MappingMetrics {
    /// The metrics of an event source mapping, Lambda's ESM metrics included.
    pub fn new(mapping: &str) -> Self {
        Self::build(mapping, true)
    }

    /// The metrics of an Invoke API function: the same series under the function's name, without
    /// the event source mapping metrics.
    pub fn function(name: &str) -> Self {
        Self::build(name, false)
    }

    fn build(mapping: &str, esm: bool) -> Self {
        let label = mapping.to_owned();
        Self(std::sync::Arc::new(MappingHandles {
            mapping: label.clone(),
            records_received: metrics::counter!("sluice_records_received_total", "mapping" => label.clone()),
            batches_invoked: metrics::counter!("sluice_batches_invoked_total", "mapping" => label.clone()),
            records_acknowledged: metrics::counter!("sluice_records_acknowledged_total", "mapping" => label.clone()),
            records_retried: metrics::counter!("sluice_records_retried_total", "mapping" => label.clone()),
            records_released: metrics::counter!("sluice_records_released_total", "mapping" => label.clone()),
            records_filtered: metrics::counter!("sluice_records_filtered_total", "mapping" => label.clone()),
            invoke_duration: metrics::histogram!("sluice_invoke_duration_seconds", "mapping" => label.clone()),
            in_flight_records: metrics::gauge!("sluice_in_flight_records", "mapping" => label.clone()),
            in_flight_bytes: metrics::gauge!("sluice_in_flight_bytes", "mapping" => label.clone()),
            poll_errors: metrics::counter!("sluice_poll_errors_total", "mapping" => label.clone()),
            visibility_extensions: metrics::counter!("sluice_visibility_extensions_total", "mapping" => label.clone()),
            ack_errors: metrics::counter!("sluice_ack_errors_total", "mapping" => label.clone()),
            outcomes: OUTCOMES
                .iter()
                .map(|&outcome| {
                    let counter = metrics::counter!("sluice_invocation_outcomes_total", "mapping" => label.clone(), "outcome" => outcome);
                    (outcome, counter)
                })
                .collect(),
            esm: esm.then(|| std::sync::Arc::new(EsmCounts::new(mapping))),
            finished: AtomicU64::new(0),
            reported_backlog: std::sync::Mutex::new(None),
        }))
    }

    /// The ESM counts, for the EMF writer; `None` for an Invoke API function.
    pub fn esm(&self) -> Option<std::sync::Arc<EsmCounts>> {
        self.esm.clone()
    }

    fn count(&self, metric: EsmMetric, records: u64) {
        if let Some(esm) = &self.esm {
            esm.add(metric, records);
        }
    }

    /// Records deleted or checkpointed after success: `sluice_records_acknowledged_total`.
    pub fn acknowledged(&self, records: u64) {
        self.records_acknowledged.increment(records);
    }

    /// Records a lane checkpointed past (handled, filtered or dead-lettered): what a stream or
    /// Kafka task finished.
    pub fn checkpointed(&self, records: u64) {
        self.finished.fetch_add(records, Ordering::Relaxed);
    }

    /// Records finished since start (see the field).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The backlog as the source counts it while reading, and what of it no task holds yet
    /// (Kafka: the lag of the partitions this task holds, and that lag less the records read).
    pub fn report_backlog(&self, backlog: u64, waiting: u64) {
        *self.reported_backlog.lock().expect("backlog lock") =
            Some((backlog, waiting.min(backlog)));
    }

    /// Forgets the reported backlog: the run that reported it ended.
    pub fn clear_reported_backlog(&self) {
        *self.reported_backlog.lock().expect("backlog lock") = None;
    }

    /// What [`Self::report_backlog`] last said.
    pub fn reported_backlog(&self) -> Option<(u64, u64)> {
        *self.reported_backlog.lock().expect("backlog lock")
    }

    /// Records read from the source: `sluice_records_received_total`, `PolledEventCount`.
    pub fn received(&self, records: u64) {
        self.records_received.increment(records);
        self.count(EsmMetric::PolledEventCount, records);
    }

    /// Records no filter pattern matched: `sluice_records_filtered_total`,
    /// `FilteredOutEventCount`.
    pub fn filtered(&self, records: u64) {
        self.records_filtered.increment(records);
        self.count(EsmMetric::FilteredOutEventCount, records);
    }

    /// One invocation's outcome: `sluice_invocation_outcomes_total{mapping, outcome}` (success,
    /// partial_failure, function_error, invalid_response, timeout, throttled, unavailable),
    /// `InvokedEventCount` (its records) and `FailedInvokeEventCount` (those of them that failed).
    pub fn invoked(&self, outcome: &'static str, records: u64, failed: u64) {
        match self.outcomes.iter().find(|(label, _)| *label == outcome) {
            Some((_, counter)) => counter.increment(1),
            None => debug_assert!(false, "unknown outcome label {outcome}"),
        }
        self.count(EsmMetric::InvokedEventCount, records);
        self.count(EsmMetric::FailedInvokeEventCount, failed.min(records));
    }

    /// Messages deleted from the queue: `DeletedEventCount`, and what a queue task finished.
    pub fn deleted(&self, records: u64) {
        self.finished.fetch_add(records, Ordering::Relaxed);
        self.count(EsmMetric::DeletedEventCount, records);
    }

    /// `OffsetLag`, summed over the partitions this instance holds.
    pub fn offset_lag(&self, lag: u64) {
        if let Some(esm) = &self.esm {
            esm.set_offset_lag(lag);
        }
    }

    /// `sluice_stream_iterator_age_seconds{mapping, shard}`: how far behind the newest record read
    /// from a shard is (0 when the shard is caught up).
    pub fn iterator_age(&self, shard: &str) -> Gauge {
        metrics::gauge!("sluice_stream_iterator_age_seconds", "mapping" => self.mapping.clone(), "shard" => shard.to_owned())
    }

    /// `sluice_stream_millis_behind_latest{mapping, shard}`: how far the last page read from a
    /// shard is behind the shard's newest record, as the stream says (Kinesis'
    /// `MillisBehindLatest`; 0 once the shard stops here).
    pub fn millis_behind_latest(&self, shard: &str) -> Gauge {
        metrics::gauge!("sluice_stream_millis_behind_latest", "mapping" => self.mapping.clone(), "shard" => shard.to_owned())
    }

    /// `sluice_stream_events_total{mapping, event}`: expired_iterator, trimmed_data, throttled,
    /// checkpoint_written, checkpoint_failed, lease_lost, shard_finished, shard_started.
    pub fn stream_event(&self, event: &'static str) {
        metrics::counter!("sluice_stream_events_total", "mapping" => self.mapping.clone(), "event" => event)
            .increment(1);
    }

    /// `sluice_kafka_consumer_lag{mapping, partition}`: messages in the partition past the
    /// offset sluice would commit (high watermark minus the next offset to commit).
    pub fn consumer_lag(&self, partition: &str) -> Gauge {
        metrics::gauge!("sluice_kafka_consumer_lag", "mapping" => self.mapping.clone(), "partition" => partition.to_owned())
    }

    /// `sluice_kafka_partitions_assigned{mapping}`: partitions the group gave this instance.
    pub fn partitions_assigned(&self) -> Gauge {
        metrics::gauge!("sluice_kafka_partitions_assigned", "mapping" => self.mapping.clone())
    }

    /// `sluice_stream_shards_held{mapping}`: shards this instance processes now.
    pub fn shards_held(&self) -> Gauge {
        metrics::gauge!("sluice_stream_shards_held", "mapping" => self.mapping.clone())
    }

    /// Records stored in the `on_failure` destination:
    /// `sluice_records_dead_lettered_total{mapping, condition}`,
    /// `OnFailureDestinationDeliveredEventCount`.
    pub fn dead_lettered(&self, condition: &'static str, count: u64) {
        metrics::counter!("sluice_records_dead_lettered_total", "mapping" => self.mapping.clone(), "condition" => condition)
            .increment(count);
        self.count(EsmMetric::OnFailureDestinationDeliveredEventCount, count);
    }

    /// Records the policy gave up on with no destination to keep them: also
    /// `sluice_records_dead_lettered_total{mapping, condition}` (the policy's verdict is the
    /// same), and `DroppedEventCount`.
    pub fn discarded(&self, condition: &'static str, count: u64) {
        metrics::counter!("sluice_records_dead_lettered_total", "mapping" => self.mapping.clone(), "condition" => condition)
            .increment(count);
        self.count(EsmMetric::DroppedEventCount, count);
    }
}
