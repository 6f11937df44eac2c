//! Configuration: parsed raw → validated → built.
//!
//! [`load`] reads the file, expands `${VAR}` and `${VAR:-default}` from the environment inside
//! scalar values, parses it into [`raw`] structs that reject unknown keys, then validates every
//! rule and builds the typed [`Config`]. Every error names the file, line, column and key path
//! (`mappings[0].source.sqs.batch_size: ...`); all validation errors are reported at once.
//!
//! This module keeps what every mapping shares (loading, errors, targets, destinations, the
//! Invoke API); each source kind's block, defaults and policy live beside its runtime
//! (`runtime/<kind>/config.rs`), registered in [`sources`].

pub mod async_policy;
pub mod backoff;
pub mod destinations;
pub mod duration;
pub mod error;
pub mod expand;
pub mod invoke_api;
pub mod kind;
pub mod locate;
pub mod mapping;
pub mod raw;
pub mod sources;
pub mod stream;
pub mod targets;
#[cfg(test)]
pub(crate) mod testing;
pub mod validate;

pub use destinations::DestinationConfig;
pub use error::{ConfigError, ConfigErrors};
pub use invoke_api::{EVENT_QUEUE_WORKER, FunctionConfig, InvokeApiConfig};
pub use mapping::MappingConfig;
pub use sources::SourceConfig;
pub use stream::StartingPosition;
pub use targets::{
    CommandTargetConfig, HttpTargetConfig, InProcessTargetConfig, LambdaRuntimeTargetConfig,
    TargetConfig,
};

use locate::KeyIndex;
use raw::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use validate::Validator;

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9797";
/// The longest drain sluice accepts.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3_600);
/// The longest `admin.stall_after` / `admin.stuck_after`.
const MAX_HEALTH_WINDOW: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub shutdown_timeout: Duration,
    pub checkpoints: CheckpointsConfig,
    pub admin: AdminConfig,
    pub aws: AwsSettings,
    pub targets: BTreeMap<String, TargetConfig>,
    /// The circuit breakers of the targets that have one, by target name.
    pub circuit_breakers: BTreeMap<String, sluice_policies::BreakerSettings>,
    /// The adaptive concurrency bounds of the targets that have them, by target name.
    pub adaptive_concurrency: BTreeMap<String, sluice_policies::AdaptiveSettings>,
    /// This instance's rate limit (records per second, burst) of the targets that have one.
    pub rate_limits: BTreeMap<String, (f64, u32)>,
    pub mappings: Vec<MappingConfig>,
    pub invoke_api: Option<InvokeApiConfig>,
    pub traces: Option<TracesConfig>,
    /// `metrics.emf`: Lambda's ESM metrics as EMF lines on stdout.
    pub emf: Option<crate::telemetry::esm::EmfSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TracesConfig {
    pub otlp_endpoint: String,
    pub service_name: String,
}

impl Config {
    /// Things that load but may not do what the user expects; `validate` prints them and `run`
    /// logs them.
    pub fn warnings(&self) -> Vec<String> {
        let no_spill = |destination: &Option<DestinationConfig>| {
            destination
                .as_ref()
                .is_some_and(DestinationConfig::is_sqs_without_spill)
        };
        let mut warnings = Vec::new();
        let advice = "an envelope over SQS's 256 KB limit is then stored without its records' contents; set on_failure.sqs.spill_bucket to keep them";
        for mapping in &self.mappings {
            if no_spill(&mapping.on_failure) {
                warnings.push(format!(
                    "mappings.{}.on_failure.sqs has no spill_bucket, and a batch of its records (each up to {}) can exceed SQS's message limit: {advice}",
                    mapping.name,
                    mapping.source.rules().largest_record(),
                ));
            }
            if let (Some(emf), Some(_)) = (&self.emf, mapping.autoscaling.target_drain_time)
                && emf.interval > Duration::from_secs(60)
            {
                warnings.push(format!(
                    "mappings.{}.autoscaling: metrics.emf.interval is {:?}, longer than CloudWatch's one-minute period, so a target-tracking alarm on DesiredTasks sees minutes without data; use 60s or less",
                    mapping.name, emf.interval,
                ));
            }
        }
        for (name, function) in self.invoke_api.iter().flat_map(|api| &api.functions) {
            if no_spill(&function.on_failure) || no_spill(&function.on_success) {
                warnings.push(format!(
                    "invoke_api.functions.{name} sends to an SQS destination without spill_bucket, and its events can be up to 1 MB: {advice}"
                ));
            }
        }
        warnings
    }

    /// On ECS (`on_ecs`), what keeps state in `state_dir` that must outlive the task: ECS
    /// replaces tasks with their storage (Fargate's is ephemeral). One warning each, naming the
    /// setting that keeps it elsewhere.
    pub fn task_state_warnings(&self, on_ecs: bool) -> Vec<String> {
        if !on_ecs {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        if self.checkpoints == CheckpointsConfig::Embedded {
            for mapping in self
                .mappings
                .iter()
                .filter(|m| m.enabled && m.source.rules().keeps_checkpoints())
            {
                warnings.push(format!(
                    "mappings.{} keeps its stream checkpoints in state_dir, which ends with this ECS task: the task that replaces it starts again from starting_position (with latest, records written meanwhile are skipped); set checkpoints: {{ dynamodb: {{ table: <name> }} }} to keep them in DynamoDB",
                    mapping.name
                ));
            }
        }
        if let Some(api) = &self.invoke_api
            && api.event_queue.is_none()
            && !api.functions.is_empty()
        {
            warnings.push(
                "invoke_api keeps accepted Event invocations in state_dir, which ends with this ECS task: events accepted and not yet run are lost when ECS replaces it; set invoke_api.event_queue.sqs.queue_url to keep them in SQS".to_owned(),
            );
        }
        warnings
    }

    /// Whether anything in the config calls AWS (sources, destinations, a lease table).
    pub fn needs_aws(&self) -> bool {
        let calls_aws = |destination: &Option<DestinationConfig>| {
            destination
                .as_ref()
                .is_some_and(DestinationConfig::calls_aws)
        };
        let function_destinations = self.invoke_api.as_ref().is_some_and(|api| {
            api.functions
                .values()
                .any(|f| calls_aws(&f.on_failure) || calls_aws(&f.on_success))
        });
        self.mappings.iter().any(|m| {
            m.enabled
                && (m.source.rules().calls_aws()
                    || calls_aws(&m.on_failure)
                    || calls_aws(&m.on_success))
        }) || function_destinations
            || self
                .invoke_api
                .as_ref()
                .is_some_and(|api| api.event_queue.is_some())
            || matches!(self.checkpoints, CheckpointsConfig::DynamoDb { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub stall_after: Duration,
    pub stuck_after: Duration,
    /// Lets callers off loopback use the control endpoints.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointsConfig {
    Embedded,
    DynamoDb {
        table: String,
        lease_duration: Duration,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Reads, expands, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            position: None,
            path: String::new(),
            message: format!("cannot read the config file: {error}"),
        }])
    })?;
    let environment: HashMap<String, String> = std::env::vars().collect();
    parse(&file, &text, environment)
}

/// Parses and validates config `text`; `file` names it in errors.
pub fn parse(
    file: &str,
    text: &str,
    environment: HashMap<String, String>,
) -> Result<Config, ConfigErrors> {
    let index = KeyIndex::build(text);
    let expanded = expand::expand(text, &environment).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            position: Some(error.position),
            path: index.path_at(error.position).unwrap_or_default().to_owned(),
            message: error.message,
        }])
    })?;
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let raw: RawConfig = serde_saphyr::from_str_with_options(&expanded.text, options)
        .map_err(|error| ConfigErrors(vec![error::parse_error(file, &index, &expanded, &error)]))?;
    let mut validator = Validator::new(file, &index);
    let config = build(&mut validator, raw, file);
    let errors = validator.into_errors();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn build(v: &mut Validator, raw: RawConfig, file: &str) -> Config {
    if raw.version != 1 {
        v.error(
            "version",
            format!(
                "unsupported version {}; this sluice reads version 1",
                raw.version
            ),
        );
    }
    if let Some(limit) = raw.max_filters_per_mapping {
        if !(1..=100).contains(&limit) {
            v.error("max_filters_per_mapping", "must be 1..=100");
        }
        v.max_filters = limit.clamp(1, 100) as usize;
    }
    let admin_raw = raw.admin.unwrap_or(RawAdmin {
        listen: None,
        stall_after: None,
        stuck_after: None,
        token: None,
    });
    if admin_raw
        .token
        .as_ref()
        .is_some_and(|t| t.trim().is_empty())
    {
        v.error(
            "admin.token",
            "is empty or whitespace; set a long random secret, or remove the key so that only loopback callers may pause and resume mappings",
        );
    }
    let listen_text = admin_raw
        .listen
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
    let listen = listen_text.parse().unwrap_or_else(|_| {
        v.error(
            "admin.listen",
            format!(
                "{listen_text:?} is not an address; write it as host:port, e.g. 127.0.0.1:9797"
            ),
        );
        DEFAULT_ADMIN_LISTEN
            .parse()
            .expect("default address parses")
    });
    let stall_after = admin_raw
        .stall_after
        .map_or(Duration::from_secs(120), |d| d.0);
    if !(Duration::from_secs(1)..=MAX_HEALTH_WINDOW).contains(&stall_after) {
        v.error("admin.stall_after", "must be 1s..=1d");
    }
    let stuck_after = admin_raw
        .stuck_after
        .map_or(Duration::from_secs(300), |d| d.0);
    if !(Duration::from_secs(1)..=MAX_HEALTH_WINDOW).contains(&stuck_after) {
        v.error("admin.stuck_after", "must be 1s..=1d");
    }
    let checkpoints = match raw.checkpoints {
        None | Some(RawCheckpoints::Embedded(_)) => CheckpointsConfig::Embedded,
        Some(RawCheckpoints::Dynamodb(dynamodb)) => {
            if dynamodb.table.trim().is_empty() {
                v.error("checkpoints.dynamodb.table", "must not be empty");
            }
            let lease_duration = dynamodb
                .lease_duration
                .map_or(Duration::from_secs(10), |d| d.0);
            if !(Duration::from_secs(3)..=Duration::from_secs(300)).contains(&lease_duration) {
                v.error(
                    "checkpoints.dynamodb.lease_duration",
                    format!("must be 3s..=5m (got {lease_duration:?})"),
                );
            }
            CheckpointsConfig::DynamoDb {
                table: dynamodb.table,
                lease_duration,
            }
        }
    };
    let shutdown_timeout = raw
        .shutdown_timeout
        .map_or(Duration::from_secs(30), |d| d.0);
    if shutdown_timeout > MAX_SHUTDOWN_TIMEOUT {
        v.error(
            "shutdown_timeout",
            "must be at most 1h (ECS stops a task at most 2 minutes after SIGTERM by default; set the task's stopTimeout to match)",
        );
    }
    let aws = raw
        .aws
        .map_or_else(AwsSettings::default, |aws| AwsSettings {
            region: aws.region.filter(|r| !r.is_empty()),
            endpoint_url: aws.endpoint_url.filter(|u| !u.is_empty()),
        });
    if let Some(endpoint) = &aws.endpoint_url
        && reqwest::Url::parse(endpoint).is_err()
    {
        v.error("aws.endpoint_url", format!("{endpoint:?} is not a URL"));
    }

    let mut targets = BTreeMap::new();
    let mut circuit_breakers = BTreeMap::new();
    let mut adaptive_concurrency = BTreeMap::new();
    let mut rate_limits = BTreeMap::new();
    for (name, mut target) in raw.targets {
        let path = format!("targets.{name}");
        let (kind, flow) = target.take_flow_control();
        let (breaker, adaptive) = (flow.circuit_breaker, flow.adaptive_concurrency);
        if let Some(rate) = flow.rate_limit {
            let limit = targets::rate_limit(v, &format!("{path}.{kind}.rate_limit"), rate);
            rate_limits.insert(name.clone(), limit);
        }
        if let Some(breaker) = breaker {
            let settings =
                targets::circuit_breaker(v, &format!("{path}.{kind}.circuit_breaker"), breaker);
            circuit_breakers.insert(name.clone(), settings);
        }
        let built = targets::build(v, &path, target);
        if let (Some(adaptive), Some(built)) = (adaptive, &built) {
            let settings = targets::adaptive_concurrency(
                v,
                &format!("{path}.{kind}.adaptive_concurrency"),
                adaptive,
                built.max_concurrency(),
                // A lambda_runtime pool runs `concurrency` workers: more calls would only queue.
                matches!(built, TargetConfig::LambdaRuntime(_)),
            );
            adaptive_concurrency.insert(name.clone(), settings);
        }
        if let Some(built) = built {
            targets.insert(name, built);
        }
    }

    let mut names = HashSet::new();
    let mut consumers: HashMap<(String, String), String> = HashMap::new();
    let mut mappings = Vec::new();
    for (position, mapping) in raw.mappings.into_iter().enumerate() {
        let path = format!("mappings[{position}]");
        if mapping.name.trim().is_empty() {
            v.error(format!("{path}.name"), "must not be empty");
        } else if mapping.name == invoke_api::EVENT_QUEUE_WORKER {
            v.error(
                format!("{path}.name"),
                format!(
                    "{:?} is the name of the Invoke API's event queue worker; choose another",
                    mapping.name
                ),
            );
        } else if !names.insert(mapping.name.clone()) {
            v.error(
                format!("{path}.name"),
                format!(
                    "{:?} is used by an earlier mapping; names must be unique",
                    mapping.name
                ),
            );
        }
        if !targets.contains_key(&mapping.target) {
            let known: Vec<&str> = targets.keys().map(String::as_str).collect();
            v.error(
                format!("{path}.target"),
                format!(
                    "no target named {:?}; defined targets: [{}]",
                    mapping.target,
                    known.join(", ")
                ),
            );
        }
        let built = mapping::build(v, &path, mapping);
        // One SubscribeToShard per consumer and shard: two mappings on one consumer would take
        // each other's subscriptions away, over and over.
        if let SourceConfig::Kinesis(source) = &built.source
            && let Some(consumer) = &source.consumer
        {
            let stream = source.stream().rsplit('/').next().unwrap_or_default();
            let key = (stream.to_owned(), consumer.clone());
            if let Some(earlier) = consumers.insert(key, built.name.clone()) {
                v.error(
                    format!("{path}.source.kinesis.consumer.name"),
                    format!("mapping {earlier:?} reads stream {stream} through consumer {consumer:?} already; give each mapping its own consumer"),
                );
            }
        }
        mappings.push(built);
    }
    let invoke_api = raw
        .invoke_api
        .map(|api| invoke_api::build(v, api, &targets));
    let traces = raw.traces.map(|traces| {
        let fine = reqwest::Url::parse(&traces.otlp_endpoint)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
        if !fine {
            v.error(
                "traces.otlp_endpoint",
                format!(
                    "{:?} is not an http(s) URL; give the collector's OTLP/HTTP base URL, such as http://127.0.0.1:4318",
                    traces.otlp_endpoint
                ),
            );
        }
        TracesConfig {
            otlp_endpoint: traces.otlp_endpoint,
            service_name: traces.service_name.unwrap_or_else(|| "sluice".into()),
        }
    });
    let emf = raw
        .metrics
        .and_then(|metrics| metrics.emf)
        .map(|emf| emf_settings(v, emf));
    if mappings.is_empty()
        && invoke_api
            .as_ref()
            .is_none_or(|api| api.functions.is_empty())
    {
        v.error(
            "mappings",
            "at least one mapping (or an invoke_api function) is needed",
        );
    }

    Config {
        file: PathBuf::from(file),
        state_dir: PathBuf::from(raw.state_dir.unwrap_or_else(|| "./sluice-state".into())),
        shutdown_timeout,
        checkpoints,
        admin: AdminConfig {
            listen,
            stall_after,
            stuck_after,
            token: admin_raw.token,
        },
        aws,
        targets,
        circuit_breakers,
        adaptive_concurrency,
        rate_limits,
        mappings,
        invoke_api,
        traces,
        emf,
    }
}

/// `metrics.emf`: CloudWatch's namespace rules (1..=255 of `[0-9A-Za-z._-/#: ]`, `AWS/` is AWS's)
/// and an interval between a second and an hour.
fn emf_settings(v: &mut Validator, emf: RawEmf) -> crate::telemetry::esm::EmfSettings {
    let namespace = emf.namespace;
    // CloudWatch's own rule; a namespace it refuses drops every line without a word.
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/#: ".contains(c);
    if namespace.trim().is_empty() || namespace.len() > 255 || !namespace.chars().all(allowed) {
        v.error(
            "metrics.emf.namespace",
            format!(
                "{namespace:?} is not a CloudWatch namespace: use 1..=255 of letters, digits, spaces and . _ - / # :, such as MyCompany/Sluice"
            ),
        );
    } else if namespace.starts_with("AWS/") {
        v.error(
            "metrics.emf.namespace",
            format!(
                "{namespace:?} starts with AWS/, which CloudWatch reserves for AWS services; choose your own, such as MyCompany/Sluice"
            ),
        );
    }
    let interval = emf.interval.map_or(Duration::from_secs(60), |d| d.0);
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&interval) {
        v.error(
            "metrics.emf.interval",
            format!("must be 1s..=1h (got {interval:?})"),
        );
    }
    crate::telemetry::esm::EmfSettings {
        namespace,
        interval,
    }
}

/// Whether this process runs in an ECS task (its container metadata endpoint is set).
pub fn on_ecs() -> bool {
    std::env::var_os("ECS_CONTAINER_METADATA_URI_V4").is_some()
        || std::env::var_os("ECS_CONTAINER_METADATA_URI").is_some()
}

/// The JSON Schema of the config file.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawConfig)).expect("a schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use locate::Position;

    #[test]
    fn a_minimal_file_builds_with_defaults() {
        let config = parse_text(BASE).unwrap();
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        let sqs = source_of!(config, Sqs);
        assert_eq!(sqs.queue_url, "http://127.0.0.1:5000/123456789012/orders");
        assert_eq!(sqs.max_concurrency, 5);
        assert!(!sqs.fifo);
    }

    #[test]
    fn environment_variables_are_expanded_in_values() {
        let environment = HashMap::from([(
            "QUEUE_URL".to_owned(),
            "http://127.0.0.1:1/1/q.fifo".to_owned(),
        )]);
        let config = parse("f.yaml", BASE, environment).unwrap();
        let sqs = source_of!(config, Sqs);
        assert!(sqs.fifo);
    }

    #[test]
    fn an_unset_variable_without_default_is_an_error_with_a_position() {
        let text = BASE.replace(
            "${QUEUE_URL:-http://127.0.0.1:5000/123456789012/orders}",
            "${NOPE}",
        );
        let errors = parse_text(&text).unwrap_err();
        let rendered = errors.to_string();
        assert!(rendered.starts_with("sluice.yaml:11:"), "{rendered}");
        assert!(rendered.contains("NOPE"), "{rendered}");
    }

    #[test]
    fn a_circuit_breaker_is_read_from_any_target_kind_with_defaults_and_checked_bounds() {
        let text = BASE.replace(
            r#"http: { url: "http://127.0.0.1:8080/events" }"#,
            r#"http: { url: "http://127.0.0.1:8080/events", circuit_breaker: { failure_ratio: { ratio: 0.5, window: 30s } } }"#,
        );
        let config = parse_text(&text).unwrap();
        let breaker = config.circuit_breakers["api"];
        assert_eq!(breaker.consecutive_failures, 5);
        assert_eq!(breaker.open_for, Duration::from_secs(5));
        assert_eq!(breaker.max_open_for, Duration::from_secs(60));
        let ratio = breaker.failure_ratio.unwrap();
        assert_eq!((ratio.ratio, ratio.min_calls), (0.5, 20));
        assert!(parse_text(BASE).unwrap().circuit_breakers.is_empty());

        let text = BASE.replace(
            r#"http: { url: "http://127.0.0.1:8080/events" }"#,
            r#"command: { program: [handler], circuit_breaker: { consecutive_failures: 0, open_for: 2s, max_open_for: 1s } }"#,
        );
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains(
                "targets.api.command.circuit_breaker.consecutive_failures: must be 1..=1000"
            ),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "targets.api.command.circuit_breaker.max_open_for: must be between open_for"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn adaptive_concurrency_defaults_to_the_targets_own_limit_and_checks_its_bounds() {
        let text = BASE.replace(
            r#"http: { url: "http://127.0.0.1:8080/events" }"#,
            r#"http: { url: "http://127.0.0.1:8080/events", max_concurrency: 40, adaptive_concurrency: {} }"#,
        );
        let config = parse_text(&text).unwrap();
        let adaptive = config.adaptive_concurrency["api"];
        assert_eq!((adaptive.min, adaptive.max), (1, 40));
        let text = BASE.replace(
            r#"http: { url: "http://127.0.0.1:8080/events" }"#,
            r#"lambda_runtime: { command: [bootstrap], concurrency: 4, adaptive_concurrency: { min: 5 } }"#,
        );
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains(
                "targets.api.lambda_runtime.adaptive_concurrency.min: must be 1..=max (4) (got 5)"
            ),
            "{rendered}"
        );
        let text = BASE.replace(
            r#"http: { url: "http://127.0.0.1:8080/events" }"#,
            r#"lambda_runtime: { command: [bootstrap], concurrency: 4, adaptive_concurrency: { max: 8 } }"#,
        );
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("adaptive_concurrency.max: must be 1..=4 (got 8)"),
            "{rendered}"
        );
    }

    #[test]
    fn a_rate_limit_is_divided_among_instances_and_checked() {
        let text = BASE.replace(
            r#"http: { url: "http://127.0.0.1:8080/events" }"#,
            r#"http: { url: "http://127.0.0.1:8080/events", rate_limit: { records_per_second: 100, instances: 4 } }"#,
        );
        let config = parse_text(&text).unwrap();
        assert_eq!(config.rate_limits["api"], (25.0, 25));
        let text = BASE.replace(
            r#"http: { url: "http://127.0.0.1:8080/events" }"#,
            r#"http: { url: "http://127.0.0.1:8080/events", rate_limit: { records_per_second: 0, burst: 0 } }"#,
        );
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("targets.api.http.rate_limit.records_per_second: must be 0.001..="),
            "{rendered}"
        );
        assert!(
            rendered.contains("targets.api.http.rate_limit.burst: must be 1..=1000000"),
            "{rendered}"
        );
    }

    #[test]
    fn huge_durations_are_config_errors_with_a_position_not_panics() {
        let text = BASE.replace(
            "batch_size: 10",
            "batch_size: 10\n        wait_time: 99999999999999999999999s",
        );
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(rendered.starts_with("sluice.yaml:13:"), "{rendered}");
        assert!(rendered.contains("longer than 365d"), "{rendered}");
        let text = format!("shutdown_timeout: 9300000000000000000s\n{BASE}");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(rendered.contains("longer than 365d"), "{rendered}");
        let text = format!("shutdown_timeout: 2h\n{BASE}");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("shutdown_timeout: must be at most 1h"),
            "{rendered}"
        );
        let text = format!("admin: {{ stall_after: 2d }}\n{BASE}");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("admin.stall_after: must be 1s..=1d"),
            "{rendered}"
        );
    }

    #[test]
    fn unknown_keys_name_file_line_column_and_path() {
        let text = BASE.replace("batch_size: 10", "batch_sise: 10");
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(
            error.position,
            Some(Position {
                line: 12,
                column: 9
            })
        );
        assert_eq!(error.path, "mappings[0].source.sqs.batch_sise");
        assert!(error.message.contains("batch_sise"), "{}", error.message);
    }

    #[test]
    fn all_validation_errors_are_reported_together() {
        let text = BASE.replace("target: api", "target: nope").replace(
            "batch_size: 10",
            "batch_size: 0\n        max_concurrency: 0",
        );
        let errors = parse_text(&text).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "mappings[0].target",
                "mappings[0].source.sqs.batch_size",
                "mappings[0].source.sqs.max_concurrency"
            ]
        );
    }

    #[test]
    fn a_missing_field_names_the_mapping_that_lacks_it() {
        let text = BASE.replace("    target: api\n", "");
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0]");
        assert_eq!(error.message, "missing field `target`");
        assert_eq!(error.position, Some(Position { line: 7, column: 5 }));
    }

    #[test]
    fn type_errors_say_what_the_value_should_be() {
        let text = BASE.replace("batch_size: 10", "batch_size: ten");
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].source.sqs.batch_size");
        assert_eq!(error.message, "expected a whole number, 0 or more");
    }

    #[test]
    fn durations_need_units() {
        let text = format!("{BASE}shutdown_timeout: 30\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(rendered.contains("shutdown_timeout"), "{rendered}");
        assert!(rendered.contains("30s"), "{rendered}");
    }

    #[test]
    fn a_lease_table_is_configured_with_its_lease_duration() {
        let text = format!(
            "{STREAM}checkpoints: {{ dynamodb: {{ table: leases, lease_duration: 20s }} }}\n"
        );
        let config = parse_text(&text).unwrap();
        assert_eq!(
            config.checkpoints,
            CheckpointsConfig::DynamoDb {
                table: "leases".into(),
                lease_duration: Duration::from_secs(20)
            }
        );
        let text = format!(
            "{STREAM}checkpoints: {{ dynamodb: {{ table: leases, lease_duration: 1s }} }}\n"
        );
        assert!(
            parse_text(&text)
                .unwrap_err()
                .to_string()
                .contains("lease_duration: must be 3s..=5m")
        );
    }

    #[test]
    fn the_schema_names_every_top_level_key() {
        let schema = json_schema();
        let properties = schema["properties"].as_object().unwrap();
        for key in [
            "version",
            "targets",
            "mappings",
            "admin",
            "aws",
            "shutdown_timeout",
            "checkpoints",
            "state_dir",
            "metrics",
        ] {
            assert!(properties.contains_key(key), "{key}");
        }
    }

    #[test]
    fn emf_metrics_take_a_namespace_and_default_to_a_minute() {
        let config = parse_text(&format!(
            "{BASE}metrics: {{ emf: {{ namespace: Shop/Sluice }} }}\n"
        ))
        .unwrap();
        let emf = config.emf.unwrap();
        assert_eq!(emf.namespace, "Shop/Sluice");
        assert_eq!(emf.interval, Duration::from_secs(60));
        assert!(parse_text(BASE).unwrap().emf.is_none());
    }

    #[test]
    fn an_emf_namespace_aws_reserves_or_an_interval_out_of_range_is_refused() {
        let error = parse_text(&format!(
            "{BASE}metrics: {{ emf: {{ namespace: AWS/Lambda }} }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("metrics.emf.namespace"), "{error}");
        assert!(error.contains("reserves"), "{error}");
        let error = parse_text(&format!(
            "{BASE}metrics: {{ emf: {{ namespace: ok, interval: 2h }} }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("metrics.emf.interval"), "{error}");
        for bad in ["\"\"", "\"  \"", "\"Shop*Sluice\"", "\"a,b\""] {
            let error = parse_text(&format!(
                "{BASE}metrics: {{ emf: {{ namespace: {bad} }} }}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                error.contains("not a CloudWatch namespace"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn on_ecs_state_that_ends_with_the_task_is_warned_about_naming_the_setting() {
        let config = parse_text(STREAM).unwrap();
        assert!(config.task_state_warnings(false).is_empty());
        let warnings = config.task_state_warnings(true);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("checkpoints: { dynamodb"),
            "{warnings:?}"
        );
        let text = format!("{STREAM}checkpoints: {{ dynamodb: {{ table: leases }} }}\n");
        assert!(
            parse_text(&text)
                .unwrap()
                .task_state_warnings(true)
                .is_empty()
        );
        let api = format!("{BASE}invoke_api:\n  functions:\n    hello: {{ target: api }}\n");
        let warnings = parse_text(&api).unwrap().task_state_warnings(true);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("invoke_api.event_queue.sqs.queue_url"));
        let queued = format!(
            "{api}  event_queue: {{ sqs: {{ queue_url: \"https://sqs.us-east-1.amazonaws.com/1/events\" }} }}\n"
        );
        assert!(
            parse_text(&queued)
                .unwrap()
                .task_state_warnings(true)
                .is_empty()
        );
        let fifo = queued.replace("/events", "/events.fifo");
        assert!(parse_text(&fifo).unwrap_err().to_string().contains("FIFO"));
    }

    #[test]
    fn autoscaling_with_emf_lines_rarer_than_a_minute_is_warned_about() {
        let text = format!(
            "{BASE}    autoscaling: {{ target_drain_time: 5m }}\nmetrics: {{ emf: {{ namespace: Shop, interval: 5m }} }}\n"
        );
        let warnings = parse_text(&text).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("mappings.orders.autoscaling"),
            "{warnings:?}"
        );
        let text = text.replace("interval: 5m", "interval: 60s");
        assert!(parse_text(&text).unwrap().warnings().is_empty());
    }

    #[test]
    fn autoscaling_is_refused_where_the_source_tells_no_backlog() {
        let text = format!("{STREAM}    autoscaling: {{ target_drain_time: 5m }}\n");
        let error = parse_text(&text).unwrap_err().to_string();
        assert!(error.contains("autoscaling: does not apply"), "{error}");
        let text = format!(
            "{BASE}    autoscaling: {{ target_drain_time: 5m, sample_interval: 1m, throughput_window: 1m }}\n"
        );
        let error = parse_text(&text).unwrap_err().to_string();
        assert!(error.contains("throughput_window"), "{error}");
    }

    #[test]
    fn an_sqs_on_failure_without_spill_bucket_is_warned_about() {
        let text = format!(
            "{BASE}    retry: {{ max_receive_count: 3 }}\n    on_failure: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/dead\" }} }}\n"
        );
        let warnings = parse_text(&text).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("mappings.orders.on_failure.sqs has no spill_bucket"));
        assert!(parse_text(BASE).unwrap().warnings().is_empty());
    }
}
