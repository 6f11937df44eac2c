//! Lambda's event source mapping metrics, under Lambda's names and with Lambda's meanings, per
//! mapping: `PolledEventCount`, `FilteredOutEventCount`, `InvokedEventCount`,
//! `FailedInvokeEventCount`, `DroppedEventCount`, `OnFailureDestinationDeliveredEventCount`,
//! `DeletedEventCount` (queues) and `OffsetLag` (Kafka).
//!
//! Guarantees:
//! - each count is bumped in one place ([`super::MappingMetrics`]'s methods), and that one
//!   increment feeds both the Prometheus series `sluice_esm_events_total{mapping, metric}` and
//!   the running total the EMF writer reads, so the two never disagree;
//! - with `metrics.emf`, one CloudWatch Embedded Metric Format line per mapping per interval is
//!   written to stdout, holding what was counted since the previous line (never a count twice,
//!   never one lost: the last line is written after the drain, before exit);
//! - a line is one `write_all` on the locked stdout, so it never interleaves with a log line
//!   (CloudWatch Logs must see it as one JSON log event).

use metrics::{Counter, Gauge};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One of Lambda's event source mapping counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsmMetric {
    /// Records read from the source (0 on an empty poll).
    PolledEventCount,
    /// Records no filter pattern matched: acknowledged without an invocation.
    FilteredOutEventCount,
    /// Records in invocations of the target, each attempt counted (a retried record counts
    /// again).
    InvokedEventCount,
    /// Records in invocations that failed: the whole batch on a function error, timeout,
    /// throttle, unavailable target or invalid response; the records a partial batch response
    /// named (or, for streams, retried) as failed.
    FailedInvokeEventCount,
    /// Records the policy gave up on (retries or age exhausted) with no `on_failure`
    /// destination to keep them.
    DroppedEventCount,
    /// Records stored in the `on_failure` destination.
    OnFailureDestinationDeliveredEventCount,
    /// Messages deleted from the queue: handled, filtered out, or dead-lettered.
    DeletedEventCount,
}

impl EsmMetric {
    pub const ALL: [EsmMetric; 7] = [
        EsmMetric::PolledEventCount,
        EsmMetric::FilteredOutEventCount,
        EsmMetric::InvokedEventCount,
        EsmMetric::FailedInvokeEventCount,
        EsmMetric::DroppedEventCount,
        EsmMetric::OnFailureDestinationDeliveredEventCount,
        EsmMetric::DeletedEventCount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EsmMetric::PolledEventCount => "PolledEventCount",
            EsmMetric::FilteredOutEventCount => "FilteredOutEventCount",
            EsmMetric::InvokedEventCount => "InvokedEventCount",
            EsmMetric::FailedInvokeEventCount => "FailedInvokeEventCount",
            EsmMetric::DroppedEventCount => "DroppedEventCount",
            EsmMetric::OnFailureDestinationDeliveredEventCount => {
                "OnFailureDestinationDeliveredEventCount"
            }
            EsmMetric::DeletedEventCount => "DeletedEventCount",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counts of one mapping.
pub struct EsmCounts {
    mapping: String,
    counters: [Counter; 7],
    totals: [AtomicU64; 7],
    /// Set by Kafka mappings only; so only they show (and write) `OffsetLag`.
    offset_lag: OnceLock<(Gauge, AtomicU64)>,
    /// `Backlog` and `DesiredTasks`, while autoscaling has a fresh reading.
    scaling: std::sync::Mutex<Option<(u64, Option<f64>)>>,
}

impl EsmCounts {
    pub fn new(mapping: &str) -> Self {
        Self {
            mapping: mapping.to_owned(),
            counters: EsmMetric::ALL.map(|metric| {
                metrics::counter!("sluice_esm_events_total", "mapping" => mapping.to_owned(), "metric" => metric.name())
            }),
            totals: Default::default(),
            offset_lag: OnceLock::new(),
            scaling: std::sync::Mutex::new(None),
        }
    }

    pub fn add(&self, metric: EsmMetric, count: u64) {
        if count == 0 {
            return;
        }
        self.counters[metric.index()].increment(count);
        self.totals[metric.index()].fetch_add(count, Ordering::Relaxed);
    }

    /// `OffsetLag`: messages past the committed position, summed over the partitions this
    /// instance holds (each instance reports its own; CloudWatch sums them across tasks).
    pub fn set_offset_lag(&self, lag: u64) {
        let (gauge, value) = self.offset_lag.get_or_init(|| {
            (
                metrics::gauge!("sluice_esm_offset_lag", "mapping" => self.mapping.clone()),
                AtomicU64::new(0),
            )
        });
        gauge.set(lag as f64);
        value.store(lag, Ordering::Relaxed);
    }

    /// The autoscaling signals, written beside Lambda's metrics so CloudWatch has them too:
    /// `Backlog` (records waiting or in flight) and `DesiredTasks` (unrounded; absent while
    /// unknown). `None` clears them: a reading that failed, or a run that ended, must leave the
    /// autoscaler without data rather than with a stale value.
    pub fn set_scaling(&self, signals: Option<(u64, Option<f64>)>) {
        *self.scaling.lock().expect("scaling lock") = signals;
    }

    pub(crate) fn scaling(&self) -> Option<(u64, Option<f64>)> {
        *self.scaling.lock().expect("scaling lock")
    }

    pub fn total(&self, metric: EsmMetric) -> u64 {
        self.totals[metric.index()].load(Ordering::Relaxed)
    }

    fn offset_lag(&self) -> Option<u64> {
        self.offset_lag
            .get()
            .map(|(_, value)| value.load(Ordering::Relaxed))
    }
}

/// `metrics.emf`: where and how often the EMF lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmfSettings {
    pub namespace: String,
    pub interval: Duration,
}

/// What the EMF writer knows of one mapping.
pub struct EmfMapping {
    pub name: String,
    pub target: String,
    /// Whether the source is a queue (SQS, S3 through SQS): only those write
    /// `DeletedEventCount`, as Lambda does.
    pub deletes: bool,
    pub counts: std::sync::Arc<EsmCounts>,
}

/// The mappings the EMF writer writes, by name; a reload adds, replaces and retires them.
#[derive(Clone, Default)]
pub struct EmfRegistry(std::sync::Arc<std::sync::Mutex<EmfMappings>>);

#[derive(Default)]
struct EmfMappings {
    current: std::collections::BTreeMap<String, std::sync::Arc<EmfMapping>>,
    /// Removed by a reload: written once more (what their drain counted), then forgotten.
    retired: Vec<std::sync::Arc<EmfMapping>>,
}

impl EmfRegistry {
    /// Adds a mapping, or replaces one of the same name (a reload that changed it; its counts
    /// are the same, so nothing is counted twice).
    pub fn insert(&self, mapping: EmfMapping) {
        let mut mappings = self.0.lock().expect("emf lock");
        mappings
            .current
            .insert(mapping.name.clone(), std::sync::Arc::new(mapping));
    }

    /// Retires a mapping a reload removed, once its worker has drained.
    pub fn retire(&self, name: &str) {
        let mut mappings = self.0.lock().expect("emf lock");
        if let Some(mapping) = mappings.current.remove(name) {
            mappings.retired.push(mapping);
        }
    }

    /// The mappings to write now, each with whether it is retired (handed out this once). The
    /// retired come first: a mapping removed and added again between two lines has new counts
    /// under the same name, and the old ones' last line must be written from the old state.
    fn take(&self) -> Vec<(std::sync::Arc<EmfMapping>, bool)> {
        let mut mappings = self.0.lock().expect("emf lock");
        let mut all: Vec<_> = mappings
            .retired
            .drain(..)
            .map(|mapping| (mapping, true))
            .collect();
        all.extend(
            mappings
                .current
                .values()
                .map(|mapping| (mapping.clone(), false)),
        );
        all
    }
}

/// The totals of one mapping at the previous line.
#[derive(Debug, Clone, Copy, Default)]
struct Written([u64; 7]);

/// One EMF document: the counts since `previous`, under dimension `EventSourceMapping`.
fn render(
    settings: &EmfSettings,
    mapping: &EmfMapping,
    previous: &mut Written,
    timestamp_ms: u64,
) -> Value {
    let mut root = Map::new();
    let mut names = Vec::new();
    for metric in EsmMetric::ALL {
        if metric == EsmMetric::DeletedEventCount && !mapping.deletes {
            continue;
        }
        let total = mapping.counts.total(metric);
        let delta = total.saturating_sub(previous.0[metric.index()]);
        previous.0[metric.index()] = total;
        root.insert(metric.name().to_owned(), json!(delta));
        names.push(json!({"Name": metric.name(), "Unit": "Count"}));
    }
    if let Some(lag) = mapping.counts.offset_lag() {
        root.insert("OffsetLag".to_owned(), json!(lag));
        names.push(json!({"Name": "OffsetLag", "Unit": "Count"}));
    }
    if let Some((backlog, desired)) = mapping.counts.scaling() {
        root.insert("Backlog".to_owned(), json!(backlog));
        names.push(json!({"Name": "Backlog", "Unit": "Count"}));
        if let Some(desired) = desired {
            root.insert("DesiredTasks".to_owned(), json!(desired));
            names.push(json!({"Name": "DesiredTasks", "Unit": "Count"}));
        }
    }
    root.insert("EventSourceMapping".to_owned(), json!(mapping.name));
    root.insert("FunctionName".to_owned(), json!(mapping.target));
    root.insert(
        "_aws".to_owned(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": settings.namespace,
                "Dimensions": [["EventSourceMapping"]],
                "Metrics": names,
            }],
        }),
    );
    Value::Object(root)
}

/// One document per mapping of `registry`, with what was counted since `previous`.
fn documents(
    settings: &EmfSettings,
    registry: &EmfRegistry,
    previous: &mut std::collections::HashMap<String, Written>,
    timestamp_ms: u64,
) -> Vec<Value> {
    let mut documents = Vec::new();
    for (mapping, retired) in registry.take() {
        let written = previous.entry(mapping.name.clone()).or_default();
        documents.push(render(settings, &mapping, written, timestamp_ms));
        if retired {
            previous.remove(&mapping.name);
        }
    }
    documents
}

/// Writes one line per mapping every `interval` until `stop`, then a last one.
pub async fn run_emf(settings: EmfSettings, mappings: EmfRegistry, stop: CancellationToken) {
    // By name: a mapping a reload replaced keeps its counts, and so what was written of them.
    let mut previous: std::collections::HashMap<String, Written> = Default::default();
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.interval,
        settings.interval,
    );
    // A stalled stdout (a full pipe) must not make later lines pile up into a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.cancelled() => true,
        };
        let lines: Vec<String> = documents(
            &settings,
            &mappings,
            &mut previous,
            sluice_sources::now_since_epoch().as_millis() as u64,
        )
        .iter()
        .map(Value::to_string)
        .collect();
        // Blocking, but short: a few hundred bytes a mapping, written on the blocking pool so
        // a slow stdout never holds a runtime worker.
        let written = tokio::task::spawn_blocking(move || write_lines(&lines)).await;
        if let Ok(Err(error)) = written {
            tracing::warn!(%error, "cannot write EMF metric lines to stdout");
        }
        if last {
            return;
        }
    }
}

fn write_lines(lines: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        out.write_all(&bytes)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn mapping(deletes: bool) -> EmfMapping {
        EmfMapping {
            name: "orders".into(),
            target: "handler".into(),
            deletes,
            counts: Arc::new(EsmCounts::new("orders")),
        }
    }

    fn settings() -> EmfSettings {
        EmfSettings {
            namespace: "Shop/Sluice".into(),
            interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_line_is_a_valid_emf_document_naming_every_value_it_holds() {
        let mapping = mapping(true);
        mapping.counts.add(EsmMetric::PolledEventCount, 10);
        mapping.counts.add(EsmMetric::DeletedEventCount, 7);
        let document = render(
            &settings(),
            &mapping,
            &mut Written::default(),
            1_700_000_000_000,
        );
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(document["_aws"]["Timestamp"], 1_700_000_000_000u64);
        assert_eq!(directive["Namespace"], "Shop/Sluice");
        assert_eq!(directive["Dimensions"], json!([["EventSourceMapping"]]));
        assert_eq!(document["EventSourceMapping"], "orders");
        // Every declared metric and dimension is a member of the root, as the spec requires.
        for name in directive["Metrics"].as_array().unwrap() {
            let name = name["Name"].as_str().unwrap();
            assert!(document[name].is_u64(), "{name} missing");
        }
        assert_eq!(directive["Metrics"].as_array().unwrap().len(), 7);
        assert_eq!(document["PolledEventCount"], 10);
        assert_eq!(document["DeletedEventCount"], 7);
        assert_eq!(document["InvokedEventCount"], 0);
        assert!(document.get("OffsetLag").is_none());
    }

    #[test]
    fn each_line_holds_what_was_counted_since_the_previous_one() {
        let mapping = mapping(true);
        let mut previous = Written::default();
        mapping.counts.add(EsmMetric::InvokedEventCount, 5);
        assert_eq!(
            render(&settings(), &mapping, &mut previous, 1)["InvokedEventCount"],
            5
        );
        assert_eq!(
            render(&settings(), &mapping, &mut previous, 2)["InvokedEventCount"],
            0
        );
        mapping.counts.add(EsmMetric::InvokedEventCount, 3);
        assert_eq!(
            render(&settings(), &mapping, &mut previous, 3)["InvokedEventCount"],
            3
        );
        assert_eq!(mapping.counts.total(EsmMetric::InvokedEventCount), 8);
    }

    #[test]
    fn only_queues_write_deleted_and_only_kafka_writes_offset_lag() {
        let stream = mapping(false);
        stream.counts.set_offset_lag(42);
        let document = render(&settings(), &stream, &mut Written::default(), 1);
        assert!(document.get("DeletedEventCount").is_none());
        assert_eq!(document["OffsetLag"], 42);
        let names: Vec<&str> = document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"OffsetLag"));
        assert!(!names.contains(&"DeletedEventCount"));
    }

    #[test]
    fn autoscaling_signals_ride_along_once_sampled() {
        let mapping = mapping(true);
        let document = render(&settings(), &mapping, &mut Written::default(), 1);
        assert!(document.get("Backlog").is_none());
        mapping.counts.set_scaling(Some((1_200, None)));
        let document = render(&settings(), &mapping, &mut Written::default(), 2);
        assert_eq!(document["Backlog"], 1_200);
        assert!(document.get("DesiredTasks").is_none());
        mapping.counts.set_scaling(Some((1_200, Some(2.5))));
        let document = render(&settings(), &mapping, &mut Written::default(), 3);
        assert_eq!(document["DesiredTasks"], 2.5);
        let names = document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(names, 9);
        mapping.counts.set_scaling(None);
        let document = render(&settings(), &mapping, &mut Written::default(), 4);
        assert!(document.get("Backlog").is_none(), "cleared, not stale");
    }

    // A mapping removed by a reload and added again before the next line: the old counts' last
    // delta and the new counts' first are both right.
    #[test]
    fn a_mapping_removed_and_added_again_between_two_lines_is_counted_once() {
        let registry = EmfRegistry::default();
        let mut previous: std::collections::HashMap<String, Written> = Default::default();
        let old = mapping(true);
        let old_counts = old.counts.clone();
        registry.insert(old);
        old_counts.add(EsmMetric::PolledEventCount, 100);
        let write = |previous: &mut std::collections::HashMap<String, Written>| {
            documents(&settings(), &registry, previous, 1)
                .iter()
                .map(|document| document["PolledEventCount"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(write(&mut previous), [json!(100)]);
        old_counts.add(EsmMetric::PolledEventCount, 7);
        registry.retire("orders");
        let new = mapping(true);
        new.counts.add(EsmMetric::PolledEventCount, 3);
        registry.insert(new);
        assert_eq!(write(&mut previous), [json!(7), json!(3)]);
    }

    #[tokio::test]
    async fn a_stop_writes_the_last_line_at_once() {
        let stop = CancellationToken::new();
        let registry = EmfRegistry::default();
        registry.insert(mapping(true));
        let task = tokio::spawn(run_emf(settings(), registry, stop.clone()));
        stop.cancel();
        // The interval is 60 s: ending within seconds means the stop, not a tick, wrote it.
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the writer ends on stop without waiting for a tick")
            .unwrap();
    }
}
