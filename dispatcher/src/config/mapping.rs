//! A mapping as built: its source (with the kind's finished policy), target, filters and
//! destinations. What a mapping must satisfy whatever its source is checked here; what depends
//! on the source kind is asked of it ([`super::kind::SourceRules`]).

use super::destinations::{self, DestinationConfig};
use super::kind::MappingParts;
use super::raw::RawAutoscaling;
use super::raw::RawMapping;
use super::sources::SourceConfig;
use super::validate::Validator;
use sluice_policies::{FilterSet, Pattern};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct MappingConfig {
    pub name: String,
    pub target: String,
    pub enabled: bool,
    pub source: SourceConfig,
    pub report_batch_item_failures: bool,
    pub filters: FilterSet,
    pub on_failure: Option<DestinationConfig>,
    pub on_success: Option<DestinationConfig>,
    pub autoscaling: AutoscalingConfig,
}

/// How often a queue's backlog is read without `autoscaling`: a modest rate, one
/// GetQueueAttributes call a minute.
pub const DEFAULT_BACKLOG_SAMPLE: Duration = Duration::from_secs(60);

/// `mappings[].autoscaling`: the backlog is sampled for every mapping whose source can tell it;
/// `target_drain_time` adds `sluice_desired_tasks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoscalingConfig {
    pub sample_interval: Duration,
    pub target_drain_time: Option<Duration>,
    pub throughput_window: Duration,
}

impl Default for AutoscalingConfig {
    fn default() -> Self {
        Self {
            sample_interval: DEFAULT_BACKLOG_SAMPLE,
            target_drain_time: None,
            throughput_window: Duration::from_secs(300),
        }
    }
}

fn autoscaling(v: &mut Validator, path: &str, raw: Option<RawAutoscaling>) -> AutoscalingConfig {
    let Some(raw) = raw else {
        return AutoscalingConfig::default();
    };
    let drain = raw.target_drain_time.0;
    if !(Duration::from_secs(10)..=Duration::from_secs(86_400)).contains(&drain) {
        v.error(
            format!("{path}.autoscaling.target_drain_time"),
            format!("must be 10s..=1d (got {drain:?})"),
        );
    }
    let sample_interval = raw.sample_interval.map_or(Duration::from_secs(30), |d| d.0);
    if !(Duration::from_secs(5)..=Duration::from_secs(900)).contains(&sample_interval) {
        v.error(
            format!("{path}.autoscaling.sample_interval"),
            format!("must be 5s..=15m (got {sample_interval:?})"),
        );
    }
    let throughput_window = raw
        .throughput_window
        .map_or(Duration::from_secs(300), |d| d.0);
    if throughput_window < sample_interval * 2 || throughput_window > Duration::from_secs(3600) {
        v.error(
            format!("{path}.autoscaling.throughput_window"),
            format!(
                "must be at least two sample intervals ({:?}) and at most 1h (got {throughput_window:?}): the throughput is measured between samples",
                sample_interval * 2
            ),
        );
    }
    AutoscalingConfig {
        sample_interval,
        target_drain_time: Some(drain),
        throughput_window,
    }
}

/// The mapping `raw` describes at `path` (such as `mappings[0]`).
pub fn build(v: &mut Validator, path: &str, raw: RawMapping) -> MappingConfig {
    let on_failure = raw
        .on_failure
        .map(|d| destinations::build(v, &format!("{path}.on_failure"), d));
    let on_success = raw
        .on_success
        .map(|d| destinations::build(v, &format!("{path}.on_success"), d));
    let report_batch_item_failures = raw.report_batch_item_failures.unwrap_or(false);
    let source = raw.source.build(
        v,
        MappingParts {
            path,
            retry: raw.retry,
            report_batch_item_failures,
            on_failure: on_failure.as_ref(),
            enabled: raw.enabled.unwrap_or(true),
        },
    );
    let rules = source.rules();
    for (key, destination) in [("on_failure", &on_failure), ("on_success", &on_success)] {
        if let Some(destination) = destination {
            rules.check_destination(v, &format!("{path}.{key}"), destination);
        }
    }
    if on_success.is_some() && !rules.is_asynchronous() {
        v.error(
            format!("{path}.on_success"),
            "is only for asynchronous sources (s3); Lambda rejects OnSuccess on event source mappings",
        );
    }
    let filters = build_filters(v, path, raw.filters.unwrap_or_default(), &source);
    if raw.autoscaling.is_some()
        && let Some(why) = source.rules().no_backlog()
    {
        v.error(
            format!("{path}.autoscaling"),
            format!("does not apply: {why}"),
        );
    }
    let autoscaling = autoscaling(v, path, raw.autoscaling);
    MappingConfig {
        name: raw.name,
        target: raw.target,
        enabled: raw.enabled.unwrap_or(true),
        source,
        report_batch_item_failures,
        filters,
        on_failure,
        on_success,
        autoscaling,
    }
}

/// Lambda's FilterCriteria: at most `max_filters_per_mapping` patterns, each compiled, and
/// checked against the records the source makes.
fn build_filters(
    v: &mut Validator,
    path: &str,
    patterns: Vec<serde_json::Value>,
    source: &SourceConfig,
) -> FilterSet {
    if patterns.len() > v.max_filters {
        v.error(
            format!("{path}.filters"),
            format!(
                "{} patterns; a mapping may have at most {} (raise max_filters_per_mapping to allow more)",
                patterns.len(),
                v.max_filters
            ),
        );
    }
    let mut compiled: Vec<Pattern> = Vec::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let at = format!("{path}.filters[{index}]");
        match Pattern::compile(pattern) {
            Ok(pattern) => {
                source.rules().check_filter(v, &at, &pattern);
                compiled.push(pattern);
            }
            Err(error) => {
                let inner = if error.path.is_empty() {
                    at
                } else {
                    format!("{at}.{}", error.path)
                };
                v.error(inner, error.message);
            }
        }
    }
    FilterSet::new(compiled)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn filter_patterns_compile_and_errors_point_into_the_pattern() {
        let text = format!(
            "{BASE}    filters:\n      - body: {{ type: [order] }}\n      - body:\n          price: [{{ numeric: [\">\", x] }}]\n"
        );
        let errors = parse_text(&text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        let error = &errors.0[0];
        assert_eq!(error.path, "mappings[0].filters[1].body.price[0].numeric");
        assert!(error.message.contains("not a number"), "{}", error.message);
        assert_eq!(error.position.map(|p| p.line), Some(16), "{errors}");
        let fixed = text.replace("x] }]", "5] }]");
        let config = parse_text(&fixed).unwrap();
        assert!(!config.mappings[0].filters.is_empty());
    }

    #[test]
    fn the_number_of_filters_is_limited_and_the_limit_configurable() {
        let five = "      - body: [a]\n".repeat(6);
        let text = format!("{BASE}    filters:\n{five}");
        assert!(
            parse_text(&text)
                .unwrap_err()
                .to_string()
                .contains("at most 5")
        );
        let raised = format!("max_filters_per_mapping: 10\n{text}");
        assert!(parse_text(&raised).is_ok());
    }
}
