//! Configuration: parsed raw → validated → built.
//!
//! [`load`] reads the file, expands `${VAR}` and `${VAR:-default}` from the environment inside
//! scalar values, parses it into [`raw`] structs that reject unknown keys, then validates every
//! rule and builds the typed [`Config`]. Every error names the file, line, column and key path
//! (`mappings[0].source.sqs.batch_size: ...`); all validation errors are reported at once.

pub mod duration;
pub mod expand;
pub mod locate;
pub mod raw;

use duration::HumanDuration;
use locate::{KeyIndex, Position};
use raw::*;
use sluice_policies::{AsyncPolicy, Backoff, FilterSet, Pattern};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9797";
/// The longest drain sluice accepts.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3_600);
/// The longest `admin.stall_after` / `admin.stuck_after`.
const MAX_HEALTH_WINDOW: Duration = Duration::from_secs(86_400);

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub position: Option<Position>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => write!(f, "{}:{line}:{column}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub shutdown_timeout: Duration,
    pub checkpoints: CheckpointsConfig,
    pub admin: AdminConfig,
    pub aws: AwsSettings,
    pub targets: BTreeMap<String, TargetConfig>,
    pub mappings: Vec<MappingConfig>,
    pub invoke_api: Option<InvokeApiConfig>,
    pub traces: Option<TracesConfig>,
}

#[derive(Debug, Clone)]
pub struct TracesConfig {
    pub otlp_endpoint: String,
    pub service_name: String,
}

pub const DEFAULT_INVOKE_API_LISTEN: &str = "127.0.0.1:9001";
pub const DEFAULT_MAX_QUEUED_EVENTS: u64 = 10_000;
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 1 << 30;

impl Config {
    /// Things that load but may not do what the user expects; `validate` prints them and `run`
    /// logs them.
    pub fn warnings(&self) -> Vec<String> {
        let no_spill = |destination: &Option<DestinationConfig>| {
            matches!(
                destination,
                Some(DestinationConfig::Sqs {
                    spill_bucket: None,
                    ..
                })
            )
        };
        let mut warnings = Vec::new();
        let advice = "an envelope over SQS's 256 KB limit is then stored without its records' contents; set on_failure.sqs.spill_bucket to keep them";
        for mapping in &self.mappings {
            if no_spill(&mapping.on_failure) {
                warnings.push(format!(
                    "mappings.{}.on_failure.sqs has no spill_bucket, and a batch of its records (each up to {}) can exceed SQS's message limit: {advice}",
                    mapping.name,
                    match mapping.source {
                        SourceConfig::Sqs(_) | SourceConfig::S3(_) => "256 KB",
                        SourceConfig::DynamodbStream(_) => "400 KB",
                        SourceConfig::Kafka(_) => "1 MB or more",
                    }
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

    /// Whether anything in the config calls AWS (sources, destinations, a lease table).
    pub fn needs_aws(&self) -> bool {
        let function_destinations = self.invoke_api.as_ref().is_some_and(|api| {
            api.functions
                .values()
                .any(|f| f.on_failure.is_some() || f.on_success.is_some())
        });
        let calls_aws = |destination: &Option<DestinationConfig>| {
            matches!(
                destination,
                Some(DestinationConfig::Sqs { .. } | DestinationConfig::S3 { .. })
            )
        };
        self.mappings.iter().any(|m| {
            m.enabled
                && (!matches!(m.source, SourceConfig::Kafka(_))
                    || calls_aws(&m.on_failure)
                    || calls_aws(&m.on_success))
        }) || function_destinations
            || matches!(self.checkpoints, CheckpointsConfig::DynamoDb { .. })
    }
}

#[derive(Debug, Clone)]
pub struct InvokeApiConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub max_queued_events: u64,
    pub max_queued_bytes: u64,
    pub functions: BTreeMap<String, FunctionConfig>,
}

#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub target: String,
    pub policy: AsyncPolicy,
    pub on_failure: Option<DestinationConfig>,
    pub on_success: Option<DestinationConfig>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub stall_after: Duration,
    pub stuck_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointsConfig {
    Embedded,
    DynamoDb {
        table: String,
        lease_duration: Duration,
    },
}

#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone)]
pub enum TargetConfig {
    Http(HttpTargetConfig),
    Command(CommandTargetConfig),
    InProcess(InProcessTargetConfig),
    LambdaRuntime(LambdaRuntimeTargetConfig),
}

#[derive(Debug, Clone)]
pub struct LambdaRuntimeTargetConfig {
    pub command: Vec<String>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub init_timeout: Duration,
    pub handler: Option<String>,
    pub function_name: Option<String>,
    pub memory_size: u32,
    pub env: Vec<(String, String)>,
    /// Whether the processes get sluice's environment besides `env`.
    pub inherit_env: bool,
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InProcessTargetConfig {
    pub timeout: Duration,
    pub max_concurrency: usize,
}

impl TargetConfig {
    /// Invocations in flight at once, shared by every mapping using the target.
    pub fn max_concurrency(&self) -> usize {
        match self {
            TargetConfig::Http(http) => http.max_concurrency,
            TargetConfig::Command(command) => command.max_concurrency,
            TargetConfig::InProcess(in_process) => in_process.max_concurrency,
            TargetConfig::LambdaRuntime(pool) => pool.concurrency,
        }
    }

    /// The longest one call may take by the target's own timeouts (a `lambda_runtime` call may
    /// first wait `init_timeout + timeout` for a worker, then run for `timeout`).
    pub fn longest_call(&self) -> Duration {
        match self {
            TargetConfig::Http(http) => http.timeout,
            TargetConfig::Command(command) => command.timeout,
            TargetConfig::InProcess(in_process) => in_process.timeout,
            TargetConfig::LambdaRuntime(pool) => pool
                .init_timeout
                .saturating_add(pool.timeout)
                .saturating_add(pool.timeout),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CommandTargetConfig {
    pub program: Vec<String>,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    /// Whether the processes get sluice's environment besides `env`.
    pub inherit_env: bool,
    pub working_dir: Option<String>,
    pub max_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct HttpTargetConfig {
    pub url: reqwest::Url,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    pub non_retryable_statuses: Vec<u16>,
    pub max_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct MappingConfig {
    pub name: String,
    pub target: String,
    pub enabled: bool,
    pub source: SourceConfig,
    pub report_batch_item_failures: bool,
    pub retry: RetryConfig,
    pub filters: FilterSet,
    pub on_failure: Option<DestinationConfig>,
    pub on_success: Option<DestinationConfig>,
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    Sqs(SqsSourceConfig),
    DynamodbStream(StreamSourceConfig),
    S3(S3SourceConfig),
    Kafka(KafkaSourceConfig),
}

#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub bootstrap_servers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub starting_position: StartingPosition,
    pub batch_size: usize,
    pub max_batching_window: Duration,
    /// librdkafka properties, in file order.
    pub properties: Vec<(String, String)>,
    /// Bytes a partition may queue beyond its lane before it is paused.
    pub partition_buffer_bytes: usize,
    pub msk_cluster_arn: Option<String>,
}

impl KafkaSourceConfig {
    /// The cluster as Lambda's Kafka event names it.
    pub fn cluster(&self) -> sluice_sources::kafka::KafkaCluster {
        sluice_sources::kafka::KafkaCluster {
            bootstrap_servers: self.bootstrap_servers.clone(),
            msk_cluster_arn: self.msk_cluster_arn.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3SourceConfig {
    pub queue_url: String,
    pub events: Vec<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub max_concurrency: usize,
    pub wait_time: Duration,
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Sqs(_) => "sqs",
            SourceConfig::DynamodbStream(_) => "dynamodb_stream",
            SourceConfig::S3(_) => "s3",
            SourceConfig::Kafka(_) => "kafka",
        }
    }

    /// Whether the stream policy applies (ordered, checkpointed sources).
    pub fn is_stream(&self) -> bool {
        matches!(
            self,
            SourceConfig::DynamodbStream(_) | SourceConfig::Kafka(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    TrimHorizon,
    Latest,
    /// Records created at or after this time (since the Unix epoch).
    AtTimestamp(Duration),
}

#[derive(Debug, Clone)]
pub struct StreamSourceConfig {
    pub table: Option<String>,
    pub stream_arn: Option<String>,
    pub starting_position: StartingPosition,
    pub batch_size: usize,
    pub max_batching_window: Duration,
    pub parallelization_factor: usize,
    pub discovery_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct SqsSourceConfig {
    pub queue_url: String,
    pub fifo: bool,
    pub batch_size: usize,
    pub max_batching_window: Duration,
    pub max_concurrency: usize,
    pub pollers: usize,
    pub wait_time: Duration,
    /// `None` when the heartbeat is off; else the longest a message is held.
    pub heartbeat_max: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct RetryConfig {
    pub max_receive_count: Option<u32>,
    pub backoff: Option<Backoff>,
    /// Streams: `None` is unlimited (-1).
    pub max_retry_attempts: Option<u32>,
    /// Streams: `None` is unlimited (-1).
    pub max_record_age: Option<Duration>,
    pub bisect_on_error: bool,
    pub non_retryable_errors: Vec<String>,
    /// Asynchronous sources.
    pub max_event_age: Duration,
    pub delays: Vec<Duration>,
}

#[derive(Debug, Clone)]
pub enum DestinationConfig {
    Sqs {
        queue_url: String,
        /// Where envelopes over 256 KB are stored, with a pointer in the queue.
        spill_bucket: Option<String>,
    },
    S3 {
        bucket: String,
        prefix: String,
    },
    /// A topic on the Kafka source's cluster.
    Kafka {
        topic: String,
    },
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
        .map_err(|error| ConfigErrors(vec![parse_error(file, &index, &expanded, &error)]))?;
    let mut validator = Validator {
        file,
        index: &index,
        errors: Vec::new(),
        max_filters: 5,
    };
    let config = validator.build(raw, file);
    if validator.errors.is_empty() {
        Ok(config)
    } else {
        validator.errors.sort_by_key(|e| e.position);
        Err(ConfigErrors(validator.errors))
    }
}

fn parse_error(
    file: &str,
    index: &KeyIndex,
    expanded: &expand::Expanded,
    error: &serde_saphyr::Error,
) -> ConfigError {
    let error = error.without_snippet();
    let position = error.location().map(|location| {
        expanded.original_position(Position {
            line: location.line(),
            column: location.column(),
        })
    });
    let mut path = position
        .and_then(|p| index.path_at(p))
        .unwrap_or_default()
        .to_owned();
    let mut position = position;
    let mut message = error.to_string();
    // The location is shown in front already; drop serde-saphyr's own suffix.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    // A missing field is reported at some key of the mapping that lacks it; name the mapping.
    if message.starts_with("missing field") {
        path.truncate(path.rfind(['.', '[']).unwrap_or(0));
        if !path.is_empty() {
            position = index.key_position_of(&path).or(position);
        }
    }
    ConfigError {
        file: file.to_owned(),
        position,
        path,
        message: plain_type_message(message),
    }
}

/// Rewrites deserializer jargon ("invalid u32") into what the value should be.
fn plain_type_message(message: String) -> String {
    let expectations = [
        ("invalid u32", "expected a whole number, 0 or more"),
        ("invalid u64", "expected a whole number, 0 or more"),
        ("invalid u16", "expected a whole number, 0 or more"),
        ("invalid usize", "expected a whole number, 0 or more"),
        ("invalid i64", "expected a whole number"),
        ("invalid i32", "expected a whole number"),
        ("invalid f64", "expected a number"),
        ("invalid bool", "expected true or false"),
    ];
    for (jargon, plain) in expectations {
        if message.starts_with(jargon) {
            return plain.to_owned();
        }
    }
    message
}

struct Validator<'a> {
    file: &'a str,
    index: &'a KeyIndex,
    errors: Vec<ConfigError>,
    max_filters: usize,
}

impl Validator<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        // A path inside a value (a filter pattern's list entry) may have no key of its own:
        // point at the nearest enclosing key.
        let mut lookup = path.as_str();
        let position = loop {
            if let Some(position) = self.index.position_of(lookup) {
                break Some(position);
            }
            match lookup.rfind(['.', '[']) {
                Some(cut) if cut > 0 => lookup = &lookup[..cut],
                _ => break None,
            }
        };
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            position,
            path,
            message: message.into(),
        });
    }

    fn build(&mut self, raw: RawConfig, file: &str) -> Config {
        if raw.version != 1 {
            self.error(
                "version",
                format!(
                    "unsupported version {}; this sluice reads version 1",
                    raw.version
                ),
            );
        }
        if let Some(limit) = raw.max_filters_per_mapping {
            if !(1..=100).contains(&limit) {
                self.error("max_filters_per_mapping", "must be 1..=100");
            }
            self.max_filters = limit.clamp(1, 100) as usize;
        }
        let admin_raw = raw.admin.unwrap_or(RawAdmin {
            listen: None,
            stall_after: None,
            stuck_after: None,
        });
        let listen_text = admin_raw
            .listen
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
        let listen = listen_text.parse().unwrap_or_else(|_| {
            self.error(
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
            self.error("admin.stall_after", "must be 1s..=1d");
        }
        let stuck_after = admin_raw
            .stuck_after
            .map_or(Duration::from_secs(300), |d| d.0);
        if !(Duration::from_secs(1)..=MAX_HEALTH_WINDOW).contains(&stuck_after) {
            self.error("admin.stuck_after", "must be 1s..=1d");
        }
        let checkpoints = match raw.checkpoints {
            None | Some(RawCheckpoints::Embedded(_)) => CheckpointsConfig::Embedded,
            Some(RawCheckpoints::Dynamodb(dynamodb)) => {
                if dynamodb.table.trim().is_empty() {
                    self.error("checkpoints.dynamodb.table", "must not be empty");
                }
                let lease_duration = dynamodb
                    .lease_duration
                    .map_or(Duration::from_secs(10), |d| d.0);
                if !(Duration::from_secs(3)..=Duration::from_secs(300)).contains(&lease_duration) {
                    self.error(
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
            self.error(
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
            self.error("aws.endpoint_url", format!("{endpoint:?} is not a URL"));
        }

        let mut targets = BTreeMap::new();
        for (name, target) in raw.targets {
            let path = format!("targets.{name}");
            if let Some(built) = self.build_target(&path, target) {
                targets.insert(name, built);
            }
        }

        let mut names = HashSet::new();
        let mut mappings = Vec::new();
        for (position, mapping) in raw.mappings.into_iter().enumerate() {
            let path = format!("mappings[{position}]");
            if mapping.name.trim().is_empty() {
                self.error(format!("{path}.name"), "must not be empty");
            } else if !names.insert(mapping.name.clone()) {
                self.error(
                    format!("{path}.name"),
                    format!(
                        "{:?} is used by an earlier mapping; names must be unique",
                        mapping.name
                    ),
                );
            }
            if !targets.contains_key(&mapping.target) {
                let known: Vec<&str> = targets.keys().map(String::as_str).collect();
                self.error(
                    format!("{path}.target"),
                    format!(
                        "no target named {:?}; defined targets: [{}]",
                        mapping.target,
                        known.join(", ")
                    ),
                );
            }
            mappings.push(self.build_mapping(&path, mapping));
        }
        let invoke_api = raw
            .invoke_api
            .map(|api| self.build_invoke_api(api, &targets));
        let traces = raw.traces.map(|traces| {
            let fine = reqwest::Url::parse(&traces.otlp_endpoint)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
            if !fine {
                self.error(
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
        if mappings.is_empty()
            && invoke_api
                .as_ref()
                .is_none_or(|api| api.functions.is_empty())
        {
            self.error(
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
            },
            aws,
            targets,
            mappings,
            invoke_api,
            traces,
        }
    }

    fn build_invoke_api(
        &mut self,
        raw: RawInvokeApi,
        targets: &BTreeMap<String, TargetConfig>,
    ) -> InvokeApiConfig {
        let listen_text = raw
            .listen
            .unwrap_or_else(|| DEFAULT_INVOKE_API_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().unwrap_or_else(|_| {
            self.error(
                "invoke_api.listen",
                format!(
                    "{listen_text:?} is not an address; write it as host:port, e.g. 127.0.0.1:9001"
                ),
            );
            DEFAULT_INVOKE_API_LISTEN
                .parse()
                .expect("default address parses")
        });
        let token = raw.token;
        if token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            self.error(
                "invoke_api.token",
                "is empty or whitespace, which would let anyone in; set a long random secret, or remove the key to serve loopback without a token",
            );
        }
        if !listen.ip().is_loopback() && token.is_none() {
            self.error(
                "invoke_api.listen",
                "is not a loopback address, so anyone who reaches it could invoke your functions; set invoke_api.token",
            );
        }
        let max_queued_events = raw.max_queued_events.unwrap_or(DEFAULT_MAX_QUEUED_EVENTS);
        if !(1..=1_000_000).contains(&max_queued_events) {
            self.error(
                "invoke_api.max_queued_events",
                format!("must be 1..=1000000 (got {max_queued_events})"),
            );
        }
        let max_queued_bytes = raw.max_queued_bytes.unwrap_or(DEFAULT_MAX_QUEUED_BYTES);
        if !((1 << 20)..=100 << 30).contains(&max_queued_bytes) {
            self.error(
                "invoke_api.max_queued_bytes",
                format!(
                    "must be 1048576 (1 MiB) ..= 107374182400 (100 GiB) (got {max_queued_bytes})"
                ),
            );
        }
        let mut functions = BTreeMap::new();
        for (name, function) in raw.functions {
            let path = format!("invoke_api.functions.{name}");
            if !targets.contains_key(&function.target) {
                let known: Vec<&str> = targets.keys().map(String::as_str).collect();
                self.error(
                    format!("{path}.target"),
                    format!(
                        "no target named {:?}; defined targets: [{}]",
                        function.target,
                        known.join(", ")
                    ),
                );
            }
            let policy = self.build_async_policy(&format!("{path}.async"), function.async_policy);
            let source = SourceConfig::S3(S3SourceConfig {
                queue_url: String::new(),
                events: Vec::new(),
                prefix: None,
                suffix: None,
                max_concurrency: 1,
                wait_time: Duration::ZERO,
            });
            let on_failure = function
                .on_failure
                .map(|d| self.build_destination(&format!("{path}.on_failure"), d, &source));
            let on_success = function
                .on_success
                .map(|d| self.build_destination(&format!("{path}.on_success"), d, &source));
            functions.insert(
                name,
                FunctionConfig {
                    target: function.target,
                    policy,
                    on_failure,
                    on_success,
                },
            );
        }
        InvokeApiConfig {
            listen,
            token,
            max_queued_events,
            max_queued_bytes,
            functions,
        }
    }

    /// The asynchronous limits (S3 sources, Invoke API functions) with Lambda's ranges: retries
    /// 0..=2, event age 60s..=6h, one or two delays; absent values take Lambda's defaults.
    fn async_limits(
        &mut self,
        path: &str,
        max_retry_attempts: Option<i64>,
        max_event_age: Option<HumanDuration>,
        delays: Option<Vec<HumanDuration>>,
    ) -> (u32, Duration, Vec<Duration>) {
        let defaults = AsyncPolicy::lambda_defaults();
        let attempts = match max_retry_attempts {
            None => defaults.max_retry_attempts,
            Some(n @ 0..=2) => n as u32,
            Some(n) => {
                self.error(
                    format!("{path}.max_retry_attempts"),
                    format!("must be 0..=2 for asynchronous invocation, as in Lambda (got {n})"),
                );
                defaults.max_retry_attempts
            }
        };
        let max_event_age = max_event_age.map_or(defaults.max_event_age, |d| d.0);
        if !(Duration::from_secs(60)..=Duration::from_secs(6 * 3600)).contains(&max_event_age) {
            self.error(
                format!("{path}.max_event_age"),
                format!("must be 60s..=6h, as in Lambda (got {max_event_age:?})"),
            );
        }
        let delays: Vec<Duration> =
            delays.map_or(defaults.delays, |d| d.into_iter().map(|d| d.0).collect());
        if delays.is_empty()
            || delays
                .iter()
                .any(|d| d.is_zero() || *d > Duration::from_secs(43_200))
        {
            self.error(
                format!("{path}.delays"),
                "give one or two delays between 1ms and 12h, such as [1m, 2m]",
            );
        }
        (attempts, max_event_age, delays)
    }

    fn build_async_policy(&mut self, path: &str, raw: Option<RawAsyncPolicy>) -> AsyncPolicy {
        let defaults = AsyncPolicy::lambda_defaults();
        let Some(raw) = raw else {
            return defaults;
        };
        let (max_retry_attempts, max_event_age, delays) =
            self.async_limits(path, raw.max_retry_attempts, raw.max_event_age, raw.delays);
        let throttle_backoff = raw
            .backoff
            .and_then(|b| self.build_backoff(&format!("{path}.backoff"), b))
            .unwrap_or(defaults.throttle_backoff);
        AsyncPolicy {
            max_retry_attempts,
            delays,
            throttle_backoff,
            max_event_age,
        }
    }

    fn build_target(&mut self, path: &str, target: RawTarget) -> Option<TargetConfig> {
        match target {
            RawTarget::Http(http) => {
                let url = match reqwest::Url::parse(&http.url) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => url,
                    Ok(url) => {
                        self.error(
                            format!("{path}.http.url"),
                            format!(
                                "scheme {:?} is not supported; use http or https",
                                url.scheme()
                            ),
                        );
                        return None;
                    }
                    Err(error) => {
                        self.error(
                            format!("{path}.http.url"),
                            format!("{:?} is not a URL: {error}", http.url),
                        );
                        return None;
                    }
                };
                let timeout = http.timeout.map_or(Duration::from_secs(30), |d| d.0);
                if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
                    self.error(
                        format!("{path}.http.timeout"),
                        "must be between 1ms and 12h",
                    );
                }
                let mut headers = Vec::new();
                for (name, value) in http.headers {
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || reqwest::header::HeaderValue::from_str(&value).is_err()
                    {
                        self.error(
                            format!("{path}.http.headers.{name}"),
                            "is not a valid HTTP header name and value",
                        );
                    }
                    headers.push((name, value));
                }
                let max_concurrency = self.concurrency(
                    &format!("{path}.http.max_concurrency"),
                    http.max_concurrency,
                    100,
                    10_000,
                );
                let non_retryable_statuses = http.non_retryable_statuses.unwrap_or_default();
                for status in &non_retryable_statuses {
                    if !(400..=499).contains(status) || *status == 429 {
                        self.error(
                            format!("{path}.http.non_retryable_statuses"),
                            format!("{status} is not a 4xx status other than 429 (a throttle, always retried)"),
                        );
                    }
                }
                Some(TargetConfig::Http(HttpTargetConfig {
                    url,
                    timeout,
                    headers,
                    non_retryable_statuses,
                    max_concurrency,
                }))
            }
            RawTarget::Command(command) => {
                if command.program.first().is_none_or(|p| p.trim().is_empty()) {
                    self.error(
                        format!("{path}.command.program"),
                        "give the program and its arguments, such as [python3, handler.py]",
                    );
                }
                let timeout = command.timeout.map_or(Duration::from_secs(30), |d| d.0);
                if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
                    self.error(
                        format!("{path}.command.timeout"),
                        "must be between 1ms and 12h",
                    );
                }
                let max_concurrency = self.concurrency(
                    &format!("{path}.command.max_concurrency"),
                    command.max_concurrency,
                    10,
                    1_000,
                );
                Some(TargetConfig::Command(CommandTargetConfig {
                    program: command.program,
                    timeout,
                    env: command.env.into_iter().collect(),
                    inherit_env: command.inherit_env.unwrap_or(true),
                    working_dir: command.working_dir,
                    max_concurrency,
                }))
            }
            RawTarget::InProcess(raw) => Some(self.build_in_process(path, raw)),
            RawTarget::LambdaRuntime(raw) => Some(self.build_lambda_runtime(path, raw)),
        }
    }

    fn build_lambda_runtime(&mut self, path: &str, raw: RawLambdaRuntimeTarget) -> TargetConfig {
        let at = format!("{path}.lambda_runtime");
        if raw.command.first().is_none_or(|p| p.trim().is_empty()) {
            self.error(
                format!("{at}.command"),
                "give the worker program and its arguments, such as [./bootstrap] or [python3, -m, awslambdaric, app.handler]",
            );
        }
        let concurrency = self.concurrency(&format!("{at}.concurrency"), raw.concurrency, 1, 1_000);
        let timeout = raw.timeout.map_or(Duration::from_secs(30), |d| d.0);
        if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
            self.error(format!("{at}.timeout"), "must be between 1ms and 12h");
        }
        let init_timeout = raw.init_timeout.map_or(Duration::from_secs(10), |d| d.0);
        if init_timeout.is_zero() || init_timeout > Duration::from_secs(3_600) {
            self.error(format!("{at}.init_timeout"), "must be between 1ms and 1h");
        }
        let memory_size = raw.memory_size.unwrap_or(128);
        if !(128..=10_240).contains(&memory_size) {
            self.error(
                format!("{at}.memory_size"),
                format!("must be 128..=10240 MB, as in Lambda (got {memory_size})"),
            );
        }
        TargetConfig::LambdaRuntime(LambdaRuntimeTargetConfig {
            command: raw.command,
            concurrency,
            timeout,
            init_timeout,
            handler: raw.handler,
            function_name: raw.function_name,
            memory_size,
            env: raw.env.into_iter().collect(),
            inherit_env: raw.inherit_env.unwrap_or(true),
            working_dir: raw.working_dir,
        })
    }

    fn build_in_process(&mut self, path: &str, raw: RawInProcessTarget) -> TargetConfig {
        let timeout = raw.timeout.map_or(Duration::from_secs(30), |d| d.0);
        if timeout.is_zero() || timeout > Duration::from_secs(43_200) {
            self.error(
                format!("{path}.in_process.timeout"),
                "must be between 1ms and 12h",
            );
        }
        let max_concurrency = self.concurrency(
            &format!("{path}.in_process.max_concurrency"),
            raw.max_concurrency,
            100,
            10_000,
        );
        TargetConfig::InProcess(InProcessTargetConfig {
            timeout,
            max_concurrency,
        })
    }

    fn concurrency(&mut self, path: &str, value: Option<u32>, default: u32, max: u32) -> usize {
        let value = value.unwrap_or(default);
        if !(1..=max).contains(&value) {
            self.error(path, format!("must be 1..={max} (got {value})"));
        }
        value.clamp(1, max) as usize
    }

    fn build_mapping(&mut self, path: &str, mapping: RawMapping) -> MappingConfig {
        let source = match mapping.source {
            RawSource::Sqs(sqs) => {
                SourceConfig::Sqs(self.build_sqs_source(&format!("{path}.source.sqs"), sqs))
            }
            RawSource::DynamodbStream(stream) => SourceConfig::DynamodbStream(
                self.build_stream_source(&format!("{path}.source.dynamodb_stream"), stream),
            ),
            RawSource::S3(s3) => {
                SourceConfig::S3(self.build_s3_source(&format!("{path}.source.s3"), s3))
            }
            RawSource::Kafka(kafka) => {
                SourceConfig::Kafka(self.build_kafka_source(&format!("{path}.source.kafka"), kafka))
            }
        };
        let is_stream = source.is_stream();
        let is_async = matches!(source, SourceConfig::S3(_));
        let retry_raw = mapping.retry.unwrap_or(RawRetry {
            max_receive_count: None,
            backoff: None,
            max_retry_attempts: None,
            max_record_age: None,
            bisect_on_error: None,
            non_retryable_errors: None,
            max_event_age: None,
            delays: None,
        });
        let retry_path = format!("{path}.retry");
        let retry = self.build_retry(&retry_path, retry_raw, &source);
        let filters = self.build_filters(path, mapping.filters.unwrap_or_default(), &source);
        let on_success = mapping.on_success.map(|destination| {
            if !is_async {
                self.error(
                    format!("{path}.on_success"),
                    "is only for asynchronous sources (s3); Lambda rejects OnSuccess on event source mappings",
                );
            }
            self.build_destination(&format!("{path}.on_success"), destination, &source)
        });
        let on_failure = mapping.on_failure.map(|destination| {
            self.build_destination(&format!("{path}.on_failure"), destination, &source)
        });
        if !retry.non_retryable_errors.is_empty() && on_failure.is_none() {
            self.error(
                format!("{path}.retry.non_retryable_errors"),
                "needs an on_failure destination to send those failures to",
            );
        }
        if is_stream && on_failure.is_none() {
            let limited = [
                ("max_retry_attempts", retry.max_retry_attempts.is_some()),
                ("max_record_age", retry.max_record_age.is_some()),
            ];
            for (key, set) in limited {
                if set {
                    self.error(
                        format!("{path}.retry.{key}"),
                        "needs an on_failure destination: records that run out of retries would otherwise be dropped (Lambda drops them); add on_failure (sqs, s3, or kafka for a kafka source), or remove the limit to retry until success",
                    );
                }
            }
        }
        if matches!(source, SourceConfig::Sqs(_)) {
            if retry.max_receive_count.is_some() && on_failure.is_none() {
                self.error(
                    format!("{path}.retry.max_receive_count"),
                    "needs an on_failure destination to send exhausted messages to",
                );
            }
            if on_failure.is_some()
                && retry.max_receive_count.is_none()
                && retry.non_retryable_errors.is_empty()
            {
                self.error(
                    format!("{path}.on_failure"),
                    "an sqs source dead-letters only with retry.max_receive_count or retry.non_retryable_errors; set one, or remove on_failure to leave failures to the queue's redrive policy",
                );
            }
        }
        MappingConfig {
            name: mapping.name,
            target: mapping.target,
            enabled: mapping.enabled.unwrap_or(true),
            source,
            report_batch_item_failures: mapping.report_batch_item_failures.unwrap_or(false),
            retry,
            filters,
            on_failure,
            on_success,
        }
    }

    fn build_destination(
        &mut self,
        path: &str,
        destination: RawDestination,
        source: &SourceConfig,
    ) -> DestinationConfig {
        match destination {
            RawDestination::Sqs(sqs) => {
                if reqwest::Url::parse(&sqs.queue_url).is_err() {
                    self.error(
                        format!("{path}.sqs.queue_url"),
                        format!("{:?} is not a queue URL", sqs.queue_url),
                    );
                }
                if let SourceConfig::Sqs(source) = source
                    && sqs.queue_url == source.queue_url
                {
                    self.error(
                        format!("{path}.sqs.queue_url"),
                        "is the mapping's own source queue; dead letters would be consumed again",
                    );
                }
                if let Some(bucket) = &sqs.spill_bucket
                    && (bucket.trim().is_empty() || bucket.contains('/'))
                {
                    self.error(
                        format!("{path}.sqs.spill_bucket"),
                        format!("{bucket:?} is not a bucket name; give the name alone, without s3:// or a key"),
                    );
                }
                DestinationConfig::Sqs {
                    queue_url: sqs.queue_url,
                    spill_bucket: sqs.spill_bucket,
                }
            }
            RawDestination::S3(s3) => {
                if s3.bucket.trim().is_empty() || s3.bucket.contains('/') {
                    self.error(
                        format!("{path}.s3.bucket"),
                        format!("{:?} is not a bucket name; give the name alone, without s3:// or a key", s3.bucket),
                    );
                }
                DestinationConfig::S3 {
                    bucket: s3.bucket,
                    prefix: s3.prefix.unwrap_or_default(),
                }
            }
            RawDestination::Kafka(kafka) => {
                match source {
                    SourceConfig::Kafka(source) if source.topics.contains(&kafka.topic) => {
                        self.error(
                            format!("{path}.kafka.topic"),
                            format!("{:?} is a source topic of this mapping; dead letters would be consumed again (Lambda refuses this too); name another topic", kafka.topic),
                        );
                    }
                    SourceConfig::Kafka(_) => {}
                    _ => self.error(
                        format!("{path}.kafka"),
                        "a Kafka topic destination is only for kafka sources (it is written on the source's cluster); use sqs or s3",
                    ),
                }
                if kafka.topic.trim().is_empty() {
                    self.error(format!("{path}.kafka.topic"), "must not be empty");
                }
                DestinationConfig::Kafka { topic: kafka.topic }
            }
        }
    }

    fn build_filters(
        &mut self,
        path: &str,
        patterns: Vec<serde_json::Value>,
        source: &SourceConfig,
    ) -> FilterSet {
        if patterns.len() > self.max_filters {
            self.error(
                format!("{path}.filters"),
                format!(
                    "{} patterns; a mapping may have at most {} (raise max_filters_per_mapping to allow more)",
                    patterns.len(),
                    self.max_filters
                ),
            );
        }
        let mut compiled = Vec::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let at = format!("{path}.filters[{index}]");
            match Pattern::compile(pattern) {
                Ok(pattern) => {
                    if matches!(source, SourceConfig::DynamodbStream(_))
                        && pattern.field_is_json("dynamodb") == Some(false)
                    {
                        self.error(
                            format!("{at}.dynamodb"),
                            "DynamoDB records are JSON: filter dynamodb with an object pattern, such as {NewImage: {status: {S: [\"open\"]}}}",
                        );
                    }
                    compiled.push(pattern);
                }
                Err(error) => {
                    let inner = if error.path.is_empty() {
                        at
                    } else {
                        format!("{at}.{}", error.path)
                    };
                    self.error(inner, error.message);
                }
            }
        }
        FilterSet::new(compiled)
    }

    fn build_retry(&mut self, path: &str, raw: RawRetry, source: &SourceConfig) -> RetryConfig {
        let kind = source.kind();
        let is_stream = source.is_stream();
        let is_async = matches!(source, SourceConfig::S3(_));
        let is_queue = matches!(source, SourceConfig::Sqs(_));
        // Which retry keys each kind reads; the others are refused with what to use instead.
        let keys = [
            (
                "max_receive_count",
                raw.max_receive_count.is_some(),
                is_queue,
                "sqs",
            ),
            (
                "max_retry_attempts",
                raw.max_retry_attempts.is_some(),
                is_stream || is_async,
                "stream and s3",
            ),
            (
                "max_record_age",
                raw.max_record_age.is_some(),
                is_stream,
                "stream",
            ),
            (
                "bisect_on_error",
                raw.bisect_on_error.is_some(),
                is_stream,
                "stream",
            ),
            ("max_event_age", raw.max_event_age.is_some(), is_async, "s3"),
            ("delays", raw.delays.is_some(), is_async, "s3"),
        ];
        for (key, present, applies, kinds) in keys {
            if present && !applies {
                let instead = match kind {
                    "sqs" => "an sqs source retries through the queue: use max_receive_count",
                    "s3" => {
                        "an s3 source retries asynchronously: use max_retry_attempts (0..=2), delays and max_event_age"
                    }
                    _ => {
                        "a stream source uses max_retry_attempts, max_record_age and bisect_on_error"
                    }
                };
                self.error(
                    format!("{path}.{key}"),
                    format!("applies to {kinds} sources; {instead}"),
                );
            }
        }
        if let Some(count) = raw.max_receive_count
            && is_queue
            && !(1..=1000).contains(&count)
        {
            self.error(
                format!("{path}.max_receive_count"),
                format!("must be 1..=1000 (got {count})"),
            );
        }
        // Other kinds refused the async keys above; their values are then Lambda's defaults.
        let (async_attempts, max_event_age, delays) = if is_async {
            self.async_limits(path, raw.max_retry_attempts, raw.max_event_age, raw.delays)
        } else {
            self.async_limits(path, None, None, None)
        };
        let max_retry_attempts = if is_async {
            Some(async_attempts)
        } else {
            match raw.max_retry_attempts {
                None | Some(-1) => None,
                Some(n @ 0..=10_000) => Some(n as u32),
                Some(n) => {
                    self.error(
                        format!("{path}.max_retry_attempts"),
                        format!(
                            "must be -1 (retry until the record is too old) or 0..=10000 (got {n})"
                        ),
                    );
                    None
                }
            }
        };
        let max_record_age = raw.max_record_age.and_then(|limit| limit.0);
        if let Some(age) = max_record_age
            && !(Duration::from_secs(60)..=Duration::from_secs(604_800)).contains(&age)
        {
            self.error(
                format!("{path}.max_record_age"),
                format!("must be -1 or 60s..=7d, as in Lambda (got {age:?})"),
            );
        }
        let backoff = match raw.backoff {
            Some(backoff) => self.build_backoff(&format!("{path}.backoff"), backoff),
            None if is_stream => Some(
                Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2.0, true)
                    .expect("the default stream backoff is valid"),
            ),
            None if is_async => Some(
                Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 2.0, true)
                    .expect("the default throttle backoff is valid"),
            ),
            None => None,
        };
        RetryConfig {
            max_receive_count: raw.max_receive_count,
            backoff,
            max_retry_attempts,
            max_record_age,
            bisect_on_error: raw.bisect_on_error.unwrap_or(false),
            non_retryable_errors: raw.non_retryable_errors.unwrap_or_default(),
            max_event_age,
            delays,
        }
    }

    fn build_s3_source(&mut self, path: &str, raw: RawS3Source) -> S3SourceConfig {
        if reqwest::Url::parse(&raw.queue_url).is_err() {
            self.error(
                format!("{path}.queue_url"),
                format!("{:?} is not a queue URL", raw.queue_url),
            );
        }
        for (index, event) in raw.events.iter().enumerate() {
            if !event.starts_with("s3:") {
                self.error(
                    format!("{path}.events[{index}]"),
                    format!("{event:?} is not an S3 event name; write it like s3:ObjectCreated:* or s3:ObjectRemoved:Delete"),
                );
            }
        }
        let max_concurrency = self.concurrency(
            &format!("{path}.max_concurrency"),
            raw.max_concurrency,
            5,
            1_000,
        );
        let wait_time = raw.wait_time.map_or(Duration::from_secs(20), |d| d.0);
        if wait_time > Duration::from_secs(20) {
            self.error(
                format!("{path}.wait_time"),
                "must be 0s..=20s (SQS's longest long poll)",
            );
        }
        S3SourceConfig {
            queue_url: raw.queue_url,
            events: raw.events,
            prefix: raw.prefix,
            suffix: raw.suffix,
            max_concurrency,
            wait_time,
        }
    }

    fn starting_position(
        &mut self,
        path: &str,
        position: &RawStartingPosition,
        timestamp: Option<&str>,
    ) -> StartingPosition {
        let starting_position = match position {
            RawStartingPosition::TrimHorizon => StartingPosition::TrimHorizon,
            RawStartingPosition::Latest => StartingPosition::Latest,
            RawStartingPosition::AtTimestamp => match timestamp {
                None => {
                    self.error(
                        format!("{path}.starting_position"),
                        "at_timestamp needs starting_timestamp (RFC 3339 or Unix seconds)",
                    );
                    StartingPosition::TrimHorizon
                }
                Some(text) => match parse_timestamp(text) {
                    Ok(at) => StartingPosition::AtTimestamp(at),
                    Err(message) => {
                        self.error(format!("{path}.starting_timestamp"), message);
                        StartingPosition::TrimHorizon
                    }
                },
            },
        };
        if timestamp.is_some() && !matches!(position, RawStartingPosition::AtTimestamp) {
            self.error(
                format!("{path}.starting_timestamp"),
                "is only read with starting_position: at_timestamp",
            );
        }
        starting_position
    }

    /// A stream source's batch size (1..=10000, default 100) and window (0s..=300s).
    fn stream_batching(
        &mut self,
        path: &str,
        batch_size: Option<u32>,
        window: Option<HumanDuration>,
        default_window: Duration,
    ) -> (usize, Duration) {
        let batch_size = batch_size.unwrap_or(100);
        if !(1..=10_000).contains(&batch_size) {
            self.error(
                format!("{path}.batch_size"),
                format!("must be 1..=10000 (got {batch_size})"),
            );
        }
        let window = window.map_or(default_window, |d| d.0);
        if window > Duration::from_secs(300) {
            self.error(
                format!("{path}.max_batching_window"),
                format!("must be 0s..=300s (got {window:?})"),
            );
        }
        (batch_size.max(1) as usize, window)
    }

    fn build_kafka_source(&mut self, path: &str, raw: RawKafkaSource) -> KafkaSourceConfig {
        if raw.bootstrap_servers.trim().is_empty() {
            self.error(
                format!("{path}.bootstrap_servers"),
                "must list at least one broker, as host:port[,host:port...]",
            );
        }
        if raw.topics.is_empty() {
            self.error(format!("{path}.topics"), "must name at least one topic");
        }
        for (index, topic) in raw.topics.iter().enumerate() {
            if topic.trim().is_empty() || topic.contains(char::is_whitespace) {
                self.error(
                    format!("{path}.topics[{index}]"),
                    format!("{topic:?} is not a topic name"),
                );
            }
        }
        if raw.group_id.trim().is_empty() {
            self.error(format!("{path}.group_id"), "must not be empty");
        }
        let starting_position = self.starting_position(
            path,
            &raw.starting_position,
            raw.starting_timestamp.as_deref(),
        );
        let (batch_size, window) = self.stream_batching(
            path,
            raw.batch_size,
            raw.max_batching_window,
            Duration::from_millis(500),
        );
        let partition_buffer_bytes = raw.partition_buffer_bytes.unwrap_or(16 << 20);
        if !(1_024..=(1 << 30)).contains(&partition_buffer_bytes) {
            self.error(
                format!("{path}.partition_buffer_bytes"),
                format!("must be 1024..=1073741824 (got {partition_buffer_bytes})"),
            );
        }
        let partition_buffer_bytes = partition_buffer_bytes.clamp(1_024, 1 << 30) as usize;
        for name in raw.properties.keys() {
            if let Some(instead) = sluice_sources::kafka::reserved_property(name) {
                self.error(
                    format!("{path}.properties.{name}"),
                    format!("is set by sluice; {instead}"),
                );
            }
        }
        if let Some(arn) = &raw.msk_cluster_arn
            && (!arn.starts_with("arn:") || !arn.contains(":kafka:"))
        {
            self.error(
                format!("{path}.msk_cluster_arn"),
                format!("{arn:?} is not an MSK cluster ARN; it looks like arn:aws:kafka:us-east-1:123456789012:cluster/name/uuid"),
            );
        }
        KafkaSourceConfig {
            bootstrap_servers: raw.bootstrap_servers,
            topics: raw.topics,
            group_id: raw.group_id,
            starting_position,
            batch_size,
            max_batching_window: window,
            properties: raw.properties.into_iter().collect(),
            partition_buffer_bytes,
            msk_cluster_arn: raw.msk_cluster_arn,
        }
    }

    fn build_stream_source(
        &mut self,
        path: &str,
        raw: RawDynamoDbStreamSource,
    ) -> StreamSourceConfig {
        match (&raw.table, &raw.stream_arn) {
            (None, None) => self.error(path, "give the table (or its stream_arn) to read"),
            (Some(_), Some(_)) => self.error(
                format!("{path}.stream_arn"),
                "give either table or stream_arn, not both",
            ),
            (_, Some(arn)) if !arn.starts_with("arn:") || !arn.contains("/stream/") => self
                .error(
                    format!("{path}.stream_arn"),
                    format!("{arn:?} is not a stream ARN; it looks like arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-05-01T00:00:00.000"),
                ),
            _ => {}
        }
        let starting_position = self.starting_position(
            path,
            &raw.starting_position,
            raw.starting_timestamp.as_deref(),
        );
        let (batch_size, window) = self.stream_batching(
            path,
            raw.batch_size,
            raw.max_batching_window,
            Duration::ZERO,
        );
        let factor = raw.parallelization_factor.unwrap_or(1);
        if !(1..=10).contains(&factor) {
            self.error(
                format!("{path}.parallelization_factor"),
                format!("must be 1..=10 (got {factor})"),
            );
        }
        let discovery_interval = raw
            .discovery_interval
            .map_or(Duration::from_secs(10), |d| d.0);
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&discovery_interval) {
            self.error(format!("{path}.discovery_interval"), "must be 1s..=10m");
        }
        StreamSourceConfig {
            table: raw.table,
            stream_arn: raw.stream_arn,
            starting_position,
            batch_size,
            max_batching_window: window,
            parallelization_factor: factor.clamp(1, 10) as usize,
            discovery_interval,
        }
    }

    fn build_sqs_source(&mut self, path: &str, sqs: RawSqsSource) -> SqsSourceConfig {
        let fifo = sqs.queue_url.ends_with(".fifo");
        if reqwest::Url::parse(&sqs.queue_url).is_err() {
            self.error(
                format!("{path}.queue_url"),
                format!(
                    "{:?} is not a queue URL; write it like https://sqs.us-east-1.amazonaws.com/123456789012/orders",
                    sqs.queue_url
                ),
            );
        }
        let batch_size = sqs.batch_size.unwrap_or(10);
        let window = sqs.max_batching_window.map_or(Duration::ZERO, |d| d.0);
        if fifo && !(1..=10).contains(&batch_size) {
            self.error(
                format!("{path}.batch_size"),
                format!("must be 1..=10 for FIFO queues (got {batch_size})"),
            );
        } else if !(1..=10_000).contains(&batch_size) {
            self.error(
                format!("{path}.batch_size"),
                format!("must be 1..=10000 (got {batch_size})"),
            );
        }
        if window > Duration::from_secs(300) {
            self.error(
                format!("{path}.max_batching_window"),
                format!("must be 0s..=300s (got {window:?})"),
            );
        }
        if fifo && !window.is_zero() {
            self.error(
                format!("{path}.max_batching_window"),
                "is not supported on FIFO queues (as in Lambda); remove it",
            );
        }
        if !fifo && batch_size > 10 && window < Duration::from_secs(1) {
            self.error(
                format!("{path}.max_batching_window"),
                format!("must be at least 1s when batch_size is greater than 10 (batch_size is {batch_size})"),
            );
        }
        let max_concurrency = sqs.max_concurrency.unwrap_or(5);
        if !(1..=1000).contains(&max_concurrency) {
            self.error(
                format!("{path}.max_concurrency"),
                format!("must be 1..=1000 (got {max_concurrency})"),
            );
        }
        // Several loops would each gather their own batch and fill batches more slowly, so only
        // a mapping whose every receive is a batch polls with several loops by default.
        let default_pollers = if window.is_zero() && batch_size <= 10 {
            max_concurrency.clamp(1, 5)
        } else {
            1
        };
        let pollers = sqs.pollers.unwrap_or(default_pollers);
        if pollers == 0 || pollers > max_concurrency.max(1) {
            self.error(
                format!("{path}.pollers"),
                format!("must be 1..=max_concurrency ({max_concurrency}) (got {pollers})"),
            );
        }
        let wait_time = sqs.wait_time.map_or(Duration::from_secs(20), |d| d.0);
        if wait_time > Duration::from_secs(20) {
            self.error(
                format!("{path}.wait_time"),
                "must be 0s..=20s (SQS's longest long poll)",
            );
        }
        let heartbeat_max = match sqs.visibility_heartbeat {
            Some(RawHeartbeat {
                enabled: Some(false),
                ..
            }) => None,
            Some(RawHeartbeat { max, .. }) => {
                let max = max.map_or(Duration::from_secs(43_200), |d| d.0);
                if max.is_zero() || max > Duration::from_secs(43_200) {
                    self.error(
                        format!("{path}.visibility_heartbeat.max"),
                        "must be between 1s and 12h (SQS's longest visibility)",
                    );
                }
                Some(max)
            }
            None => Some(Duration::from_secs(43_200)),
        };
        SqsSourceConfig {
            queue_url: sqs.queue_url,
            fifo,
            batch_size: batch_size as usize,
            max_batching_window: window,
            max_concurrency: max_concurrency as usize,
            pollers: pollers.max(1) as usize,
            wait_time,
            heartbeat_max,
        }
    }

    fn build_backoff(&mut self, path: &str, raw: RawBackoff) -> Option<Backoff> {
        let initial = raw.initial.map_or(Duration::from_secs(1), |d| d.0);
        let max = raw.max.map_or(Duration::from_secs(300), |d| d.0);
        if max > Duration::from_secs(43_200) {
            self.error(
                format!("{path}.max"),
                "must be at most 12h (SQS's longest visibility)",
            );
        }
        match Backoff::new(
            initial,
            max,
            raw.multiplier.unwrap_or(2.0),
            raw.jitter.unwrap_or(true),
        ) {
            Ok(backoff) => Some(backoff),
            Err(error) => {
                self.error(path, error.to_string());
                None
            }
        }
    }
}

/// A point in time written as RFC 3339 (`2024-05-01T12:00:00Z`) or Unix seconds.
fn parse_timestamp(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!(
                "{text:?} is not a time: {e}; write it like 2024-05-01T12:00:00Z or as Unix seconds"
            )
        })?;
    let since_epoch = parsed - time::OffsetDateTime::UNIX_EPOCH;
    Duration::try_from(since_epoch).map_err(|_| format!("{text:?} is before 1970"))
}

/// The JSON Schema of the config file.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawConfig)).expect("a schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: orders
    target: api
    source:
      sqs:
        queue_url: "${QUEUE_URL:-http://127.0.0.1:5000/123456789012/orders}"
        batch_size: 10
"#;

    fn parse_text(text: &str) -> Result<Config, ConfigErrors> {
        parse("sluice.yaml", text, HashMap::new())
    }

    #[test]
    fn a_minimal_file_builds_with_defaults() {
        let config = parse_text(BASE).unwrap();
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        let SourceConfig::Sqs(sqs) = &config.mappings[0].source else {
            panic!("an sqs source")
        };
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
        let SourceConfig::Sqs(sqs) = &config.mappings[0].source else {
            panic!("an sqs source")
        };
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
    fn fifo_batch_size_over_ten_is_refused_at_its_value() {
        let text = BASE
            .replace("orders}", "orders.fifo}")
            .replace("batch_size: 10", "batch_size: 20");
        let errors = parse_text(&text).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "sluice.yaml:12:21: mappings[0].source.sqs.batch_size: must be 1..=10 for FIFO queues (got 20)"
        );
    }

    #[test]
    fn several_pollers_only_when_every_receive_is_a_batch() {
        let pollers = |text: &str| {
            let config = parse_text(text).unwrap();
            let SourceConfig::Sqs(sqs) = &config.mappings[0].source else {
                panic!("an sqs source")
            };
            sqs.pollers
        };
        assert_eq!(pollers(BASE), 5);
        assert_eq!(
            pollers(&BASE.replace(
                "batch_size: 10",
                "batch_size: 10\n        max_concurrency: 2"
            )),
            2
        );
        assert_eq!(
            pollers(&BASE.replace(
                "batch_size: 10",
                "batch_size: 10\n        max_batching_window: 1s"
            )),
            1
        );
        let too_many = BASE.replace(
            "batch_size: 10",
            "batch_size: 10\n        max_concurrency: 2\n        pollers: 3",
        );
        assert!(
            parse_text(&too_many)
                .unwrap_err()
                .to_string()
                .contains("pollers: must be 1..=max_concurrency (2)")
        );
    }

    #[test]
    fn large_batches_need_a_batching_window() {
        let text = BASE.replace("batch_size: 10", "batch_size: 100");
        let errors = parse_text(&text).unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("max_batching_window: must be at least 1s")
        );
        let fixed = BASE.replace(
            "batch_size: 10",
            "batch_size: 100\n        max_batching_window: 1s",
        );
        assert!(parse_text(&fixed).is_ok());
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
    fn max_receive_count_and_on_failure_go_together() {
        let text = format!("{BASE}    retry: {{ max_receive_count: 3 }}\n");
        assert!(
            parse_text(&text)
                .unwrap_err()
                .to_string()
                .contains("needs an on_failure destination")
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

    const KAFKA: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: clicks
    target: api
    source:
      kafka:
        bootstrap_servers: "b1:9092,b2:9092"
        topics: [clicks]
        group_id: sluice-clicks
        starting_position: trim_horizon
"#;

    fn kafka_source(config: &Config) -> &KafkaSourceConfig {
        match &config.mappings[0].source {
            SourceConfig::Kafka(kafka) => kafka,
            other => panic!("not a kafka source: {other:?}"),
        }
    }

    #[test]
    fn a_kafka_mapping_builds_with_lambdas_defaults() {
        let config = parse_text(KAFKA).unwrap();
        let kafka = kafka_source(&config);
        assert_eq!(kafka.batch_size, 100);
        // semantics.md §1: Kafka's default window is 0.5 s.
        assert_eq!(kafka.max_batching_window, Duration::from_millis(500));
        assert_eq!(kafka.starting_position, StartingPosition::TrimHorizon);
        assert_eq!(config.mappings[0].retry.max_retry_attempts, None);
        assert!(
            !config.needs_aws(),
            "a Kafka mapping without AWS destinations needs no AWS"
        );
        let with_sqs = format!(
            "{KAFKA}    retry: {{ max_retry_attempts: 2, bisect_on_error: true }}\n    on_failure: {{ sqs: {{ queue_url: \"http://localhost:4566/000000000000/dlq\" }} }}\n"
        );
        let config = parse_text(&with_sqs).unwrap();
        assert!(config.needs_aws());
        assert!(config.mappings[0].retry.bisect_on_error);
    }

    #[test]
    fn a_failure_topic_must_not_be_a_source_topic() {
        let text = format!(
            "{KAFKA}    retry: {{ max_retry_attempts: 2 }}\n    on_failure: {{ kafka: {{ topic: clicks }} }}\n"
        );
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].on_failure.kafka.topic");
        assert!(error.message.contains("source topic"), "{}", error.message);
        let fine = text.replace("topic: clicks }", "topic: clicks-failed }");
        assert!(parse_text(&fine).is_ok());
    }

    #[test]
    fn an_msk_cluster_arn_must_be_a_kafka_arn() {
        let with = |arn: &str| {
            KAFKA.replace(
                "starting_position: trim_horizon",
                &format!("starting_position: trim_horizon\n        msk_cluster_arn: \"{arn}\""),
            )
        };
        let error = parse_text(&with("arn:aws:sqs:us-east-1:1:q"))
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!(error.path, "mappings[0].source.kafka.msk_cluster_arn");
        assert!(parse_text(&with("cluster/c/abc")).is_err());
        let config = parse_text(&with("arn:aws:kafka:us-east-1:1:cluster/c/abc")).unwrap();
        assert!(kafka_source(&config).msk_cluster_arn.is_some());
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

    #[test]
    fn a_spill_bucket_is_a_bucket_name() {
        let with = |bucket: &str| {
            format!(
                "{STREAM}    retry: {{ max_retry_attempts: 2 }}\n    on_failure: {{ sqs: {{ queue_url: \"http://q/dead\", spill_bucket: \"{bucket}\" }} }}\n"
            )
        };
        let error = parse_text(&with("s3://spill/x")).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].on_failure.sqs.spill_bucket");
        let config = parse_text(&with("spill")).unwrap();
        assert!(matches!(
            &config.mappings[0].on_failure,
            Some(DestinationConfig::Sqs { spill_bucket: Some(bucket), .. }) if bucket == "spill"
        ));
    }

    #[test]
    fn a_kafka_destination_needs_a_kafka_source() {
        let text = format!(
            "{STREAM}    retry: {{ max_retry_attempts: 2 }}\n    on_failure: {{ kafka: {{ topic: failed }} }}\n"
        );
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].on_failure.kafka");
    }

    #[test]
    fn kafka_properties_sluice_owns_are_refused_at_their_key() {
        let text = KAFKA.replace(
            "starting_position: trim_horizon",
            "starting_position: trim_horizon\n        properties: { enable.auto.commit: \"true\", security.protocol: SASL_SSL }",
        );
        let errors = parse_text(&text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(
            errors.0[0].path,
            "mappings[0].source.kafka.properties.enable.auto.commit"
        );
        assert!(errors.0[0].position.is_some());
    }

    #[test]
    fn kafka_source_settings_are_checked_at_their_keys() {
        let text = KAFKA
            .replace("topics: [clicks]", "topics: []")
            .replace(
                "starting_position: trim_horizon",
                "starting_position: at_timestamp\n        batch_size: 20000\n        max_batching_window: 301s",
            );
        let errors = parse_text(&text).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "mappings[0].source.kafka.topics",
                "mappings[0].source.kafka.starting_position",
                "mappings[0].source.kafka.batch_size",
                "mappings[0].source.kafka.max_batching_window",
            ]
        );
        let at = KAFKA.replace(
            "starting_position: trim_horizon",
            "starting_position: at_timestamp\n        starting_timestamp: \"2026-01-01T00:00:00Z\"",
        );
        let config = parse_text(&at).unwrap();
        assert_eq!(
            kafka_source(&config).starting_position,
            StartingPosition::AtTimestamp(Duration::from_secs(1_767_225_600))
        );
    }

    const STREAM: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: changes
    target: api
    source:
      dynamodb_stream:
        table: orders
        starting_position: trim_horizon
"#;

    fn stream_source(config: &Config) -> &StreamSourceConfig {
        match &config.mappings[0].source {
            SourceConfig::DynamodbStream(stream) => stream,
            other => panic!("not a stream source: {other:?}"),
        }
    }

    #[test]
    fn a_stream_mapping_builds_with_lambdas_defaults() {
        let config = parse_text(STREAM).unwrap();
        let stream = stream_source(&config);
        assert_eq!(stream.batch_size, 100);
        assert_eq!(stream.parallelization_factor, 1);
        assert_eq!(stream.starting_position, StartingPosition::TrimHorizon);
        let retry = &config.mappings[0].retry;
        assert_eq!(
            retry.max_retry_attempts, None,
            "-1: until the record is too old"
        );
        assert_eq!(retry.max_record_age, None);
        assert!(!retry.bisect_on_error);
        assert!(retry.backoff.is_some(), "streams back off by default");
        assert_eq!(config.checkpoints, CheckpointsConfig::Embedded);
    }

    #[test]
    fn stream_retry_limits_follow_lambdas_ranges() {
        let with = |retry: &str| {
            parse_text(&format!(
                "{STREAM}    retry: {retry}\n    on_failure: {{ s3: {{ bucket: b }} }}\n"
            ))
        };
        let config = with("{ max_retry_attempts: -1, max_record_age: -1 }").unwrap();
        assert_eq!(config.mappings[0].retry.max_record_age, None);
        let config = with("{ max_retry_attempts: 10000, max_record_age: 7d }").unwrap();
        assert_eq!(config.mappings[0].retry.max_retry_attempts, Some(10_000));
        assert_eq!(
            config.mappings[0].retry.max_record_age,
            Some(Duration::from_secs(604_800))
        );
        let errors = with("{ max_retry_attempts: 10001, max_record_age: 30s }")
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("retry.max_retry_attempts: must be -1"),
            "{errors}"
        );
        assert!(
            errors.contains("retry.max_record_age: must be -1 or 60s..=7d"),
            "{errors}"
        );
        let errors = with("{ max_record_age: 60 }").unwrap_err().to_string();
        assert!(errors.contains("no unit"), "{errors}");
    }

    #[test]
    fn limits_that_can_run_out_need_an_on_failure_destination() {
        let text = format!("{STREAM}    retry: {{ max_retry_attempts: 3 }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered
                .contains("mappings[0].retry.max_retry_attempts: needs an on_failure destination"),
            "{rendered}"
        );
    }

    #[test]
    fn retry_keys_of_the_other_source_kind_are_refused() {
        let text = format!("{STREAM}    retry: {{ max_receive_count: 3 }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(rendered.contains("applies to sqs sources"), "{rendered}");
        let text = format!("{BASE}    retry: {{ bisect_on_error: true }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("retry.bisect_on_error: applies to stream sources"),
            "{rendered}"
        );
    }

    #[test]
    fn stream_source_settings_are_checked_at_their_keys() {
        let text = STREAM.replace(
            "starting_position: trim_horizon",
            "starting_position: at_timestamp\n        stream_arn: nope\n        parallelization_factor: 11",
        );
        let errors = parse_text(&text).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"mappings[0].source.dynamodb_stream.starting_position"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"mappings[0].source.dynamodb_stream.stream_arn"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"mappings[0].source.dynamodb_stream.parallelization_factor"),
            "{paths:?}"
        );
    }

    #[test]
    fn at_timestamp_reads_rfc3339_or_unix_seconds() {
        for (written, seconds) in [
            ("2024-05-01T12:00:00Z", 1_714_564_800),
            ("1714564800", 1_714_564_800),
        ] {
            let text = STREAM.replace(
                "starting_position: trim_horizon",
                &format!(
                    "starting_position: at_timestamp\n        starting_timestamp: \"{written}\""
                ),
            );
            let config = parse_text(&text).unwrap();
            assert_eq!(
                stream_source(&config).starting_position,
                StartingPosition::AtTimestamp(Duration::from_secs(seconds))
            );
        }
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

    #[test]
    fn a_dynamodb_filter_must_be_an_object_pattern() {
        let text = format!("{STREAM}    filters:\n      - dynamodb: [x]\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("filters[0].dynamodb: DynamoDB records are JSON"),
            "{rendered}"
        );
    }

    #[test]
    fn error_classes_need_a_destination_and_statuses_must_be_4xx() {
        let text = format!("{BASE}    retry: {{ non_retryable_errors: [ValidationError] }}\n");
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("non_retryable_errors: needs an on_failure destination"),
            "{rendered}"
        );
        let text = format!(
            "{BASE}    retry: {{ non_retryable_errors: [ValidationError] }}\n    on_failure: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/dlq\" }} }}\n"
        );
        let config = parse_text(&text).unwrap();
        assert_eq!(
            config.mappings[0].retry.non_retryable_errors,
            vec!["ValidationError"]
        );
        let text = BASE.replace(
            "http: { url: \"http://127.0.0.1:8080/events\" }",
            "http: { url: \"http://127.0.0.1:8080/events\", non_retryable_statuses: [422, 429, 500] }",
        );
        let errors = parse_text(&text).unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
    }

    const S3: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: uploads
    target: api
    source:
      s3: { queue_url: "http://127.0.0.1:5000/123456789012/uploads", events: ["s3:ObjectCreated:*"] }
"#;

    #[test]
    fn an_s3_mapping_gets_lambdas_async_defaults() {
        let config = parse_text(S3).unwrap();
        let retry = &config.mappings[0].retry;
        assert_eq!(retry.max_retry_attempts, Some(2));
        assert_eq!(
            retry.delays,
            vec![Duration::from_secs(60), Duration::from_secs(120)]
        );
        assert_eq!(retry.max_event_age, Duration::from_secs(6 * 3600));
        assert!(retry.backoff.is_some(), "throttles back off");
    }

    #[test]
    fn async_limits_follow_lambdas_ranges_and_other_kinds_keys_are_refused() {
        let text = format!(
            "{S3}    retry: {{ max_retry_attempts: 3, max_event_age: 7h, max_record_age: 1h }}\n"
        );
        let rendered = parse_text(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("max_retry_attempts: must be 0..=2"),
            "{rendered}"
        );
        assert!(
            rendered.contains("max_event_age: must be 60s..=6h"),
            "{rendered}"
        );
        assert!(
            rendered.contains("max_record_age: applies to stream sources"),
            "{rendered}"
        );
        let bad_event = S3.replace("s3:ObjectCreated:*", "ObjectCreated");
        assert!(
            parse_text(&bad_event)
                .unwrap_err()
                .to_string()
                .contains("events[0]")
        );
        let success_on_sqs = format!(
            "{BASE}    on_success: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/ok\" }} }}\n"
        );
        assert!(
            parse_text(&success_on_sqs)
                .unwrap_err()
                .to_string()
                .contains("on_success: is only for asynchronous sources")
        );
        let success_on_s3 = format!(
            "{S3}    on_success: {{ sqs: {{ queue_url: \"http://127.0.0.1:1/1/ok\" }} }}\n"
        );
        assert!(parse_text(&success_on_s3).is_ok());
    }

    #[test]
    fn the_invoke_api_needs_a_token_off_loopback_and_known_targets() {
        let local = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
invoke_api:
  functions:
    hello: { target: api, async: { max_retry_attempts: 1, delays: [10s] } }
"#;
        let config = parse_text(local).unwrap();
        let api = config.invoke_api.as_ref().unwrap();
        assert_eq!(api.listen.to_string(), DEFAULT_INVOKE_API_LISTEN);
        assert_eq!(api.functions["hello"].policy.max_retry_attempts, 1);
        assert!(!config.needs_aws(), "no mapping and no destination: no AWS");
        let open = local.replace("invoke_api:\n", "invoke_api:\n  listen: 0.0.0.0:9001\n");
        assert!(
            parse_text(&open)
                .unwrap_err()
                .to_string()
                .contains("set invoke_api.token")
        );
        for empty in ["\"\"", "\"  \""] {
            let blank = local.replace("invoke_api:\n", &format!("invoke_api:\n  token: {empty}\n"));
            assert!(
                parse_text(&blank)
                    .unwrap_err()
                    .to_string()
                    .contains("invoke_api.token: is empty or whitespace"),
                "{empty}"
            );
        }
        let unknown = local.replace("target: api,", "target: nope,");
        assert!(
            parse_text(&unknown)
                .unwrap_err()
                .to_string()
                .contains("invoke_api.functions.hello.target: no target named")
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
        ] {
            assert!(properties.contains_key(key), "{key}");
        }
    }
}
