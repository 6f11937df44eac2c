//! The config file as written: serde structs that reject unknown keys. Their doc comments are the
//! descriptions in `sluice schema`. Nothing here is checked beyond types; see `validate`.

use super::async_policy::RawAsyncPolicy;
use super::destinations::RawDestination;
use super::duration::HumanDuration;
use crate::config::sources::RawSource;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A sluice configuration file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Config format version; must be 1.
    pub version: u32,
    /// Directory for embedded state (checkpoints, leases, the async queue). Default ./sluice-state.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// How long in-flight batches may run after SIGTERM/SIGINT before sluice exits. Default 30s.
    #[serde(default)]
    pub shutdown_timeout: Option<HumanDuration>,
    /// Where stream checkpoints and shard leases live. Default: embedded (a file under state_dir).
    #[serde(default)]
    pub checkpoints: Option<RawCheckpoints>,
    /// The admin HTTP server: /healthz, /readyz, /metrics.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Defaults for every AWS client. Absent values come from AWS_REGION / AWS_ENDPOINT_URL and
    /// the standard credential chain.
    #[serde(default)]
    pub aws: Option<RawAws>,
    /// Most filter patterns a mapping may have (Lambda allows 5, 10 with a quota increase).
    /// Default 5.
    #[serde(default)]
    pub max_filters_per_mapping: Option<u32>,
    /// Named handlers that mappings invoke.
    pub targets: BTreeMap<String, RawTarget>,
    /// Event source mappings: a source, the target it feeds, and the policy between them.
    #[serde(default)]
    pub mappings: Vec<RawMapping>,
    /// Lambda's Invoke API, for synchronous and asynchronous callers.
    #[serde(default)]
    pub invoke_api: Option<RawInvokeApi>,
    /// Trace export: one span per invocation, over OTLP/HTTP.
    #[serde(default)]
    pub traces: Option<RawTraces>,
    /// Metrics beyond the admin server's Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Lambda's event source mapping metrics as CloudWatch Embedded Metric Format lines on
    /// stdout (one per mapping per interval), which the ECS awslogs driver and CloudWatch Logs
    /// turn into CloudWatch metrics with no agent.
    #[serde(default)]
    pub emf: Option<RawEmf>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEmf {
    /// The CloudWatch namespace of the metrics: 1..=255 printable ASCII characters, not
    /// starting with `AWS/` (reserved for AWS).
    pub namespace: String,
    /// How often each mapping's line is written, 1s..=1h. Default 60s (CloudWatch's standard
    /// resolution).
    #[serde(default)]
    pub interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTraces {
    /// The OTLP/HTTP collector's base URL, such as http://127.0.0.1:4318 (spans go to /v1/traces).
    pub otlp_endpoint: String,
    /// service.name of the exported spans. Default sluice.
    #[serde(default)]
    pub service_name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEventQueue {
    /// An SQS standard queue: each accepted event is sent to it before the 202, and every
    /// instance receives from it and runs the events under their function's async policy.
    pub sqs: RawEventQueueSqs,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEventQueueSqs {
    /// The queue's URL. Give it a visibility timeout above the functions' longest call and, as
    /// a safety net, a redrive policy.
    pub queue_url: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInvokeApi {
    /// Address to serve POST /2015-03-31/functions/{name}/invocations on. Default 127.0.0.1:9001.
    #[serde(default)]
    pub listen: Option<String>,
    /// A shared secret callers present as `Authorization: Bearer <token>`, or as their AWS access
    /// key id (so unmodified AWS clients can use it). Required when listen is not loopback.
    #[serde(default)]
    pub token: Option<String>,
    /// The most `Event` invocations queued (not yet finished) across all functions; beyond it
    /// callers get 429 TooManyRequestsException. 1..=1000000, default 10000.
    #[serde(default)]
    pub max_queued_events: Option<u64>,
    /// The most bytes of `Event` payloads queued across all functions; beyond it callers get 429
    /// TooManyRequestsException. 1048576 (1 MiB) ..= 107374182400 (100 GiB), default 1073741824
    /// (1 GiB). Queued payloads live in the state file, not in memory.
    #[serde(default)]
    pub max_queued_bytes: Option<u64>,
    /// Function names callers invoke, each backed by a target.
    pub functions: BTreeMap<String, RawFunction>,
    /// Where accepted `Event` invocations wait: by default the state file under state_dir,
    /// which ends with the task on ECS; with `sqs`, a queue every instance drains, so an
    /// accepted event outlives the task that accepted it.
    #[serde(default)]
    pub event_queue: Option<RawEventQueue>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    /// The name of a target in `targets`.
    pub target: String,
    /// The asynchronous policy for `Event` invocations.
    #[serde(default, rename = "async")]
    pub async_policy: Option<RawAsyncPolicy>,
    /// Where `Event` invocations that run out of retries or age go.
    #[serde(default)]
    pub on_failure: Option<RawDestination>,
    /// Where the Success record of each `Event` invocation goes.
    #[serde(default)]
    pub on_success: Option<RawDestination>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin server. Default 127.0.0.1:9797.
    #[serde(default)]
    pub listen: Option<String>,
    /// A mapping with no successful poll for this long is reported stalled by /readyz. Default 2m.
    #[serde(default)]
    pub stall_after: Option<HumanDuration>,
    /// A stream shard that keeps failing (retrying one batch) for this long makes /readyz fail,
    /// naming the shard. Default 5m.
    #[serde(default)]
    pub stuck_after: Option<HumanDuration>,
    /// A shared secret for the control endpoints (`POST /mappings/{name}/pause|resume`) when
    /// called from another host, as `Authorization: Bearer <token>`; callers on loopback need
    /// none. Without it only loopback callers may control mappings.
    #[serde(default)]
    pub token: Option<String>,
}

/// Where stream checkpoints live: exactly one kind.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCheckpoints {
    /// A redb file under state_dir; one instance owns every shard.
    Embedded(RawEmbeddedCheckpoints),
    /// A DynamoDB lease table shared by several instances (created if missing).
    Dynamodb(RawDynamoDbCheckpoints),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEmbeddedCheckpoints {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDynamoDbCheckpoints {
    /// The lease table's name.
    pub table: String,
    /// A lease not renewed for this long is taken over by another instance: 3s..=5m. Default 10s.
    #[serde(default)]
    pub lease_duration: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAws {
    /// AWS region, e.g. us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override for every AWS service (e.g. a local moto or LocalStack).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

/// A target: exactly one kind.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawTarget {
    /// POST the event JSON to a URL.
    Http(RawHttpTarget),
    /// Run a program per invocation: the event on stdin, the response on stdout.
    Command(RawCommandTarget),
    /// A Rust handler registered by a program that embeds sluice (sluice::embed).
    InProcess(RawInProcessTarget),
    /// Unmodified Lambda functions: a warm pool of processes speaking the Lambda Runtime API.
    LambdaRuntime(RawLambdaRuntimeTarget),
}

impl RawTarget {
    /// The key of the target's kind (`http`, `command`, ...), and its flow control, taken out.
    pub fn take_flow_control(&mut self) -> (&'static str, RawFlowControl) {
        macro_rules! take {
            ($kind:literal, $t:expr) => {
                (
                    $kind,
                    RawFlowControl {
                        circuit_breaker: $t.circuit_breaker.take(),
                        adaptive_concurrency: $t.adaptive_concurrency.take(),
                        rate_limit: $t.rate_limit.take(),
                    },
                )
            };
        }
        match self {
            RawTarget::Http(t) => take!("http", t),
            RawTarget::Command(t) => take!("command", t),
            RawTarget::InProcess(t) => take!("in_process", t),
            RawTarget::LambdaRuntime(t) => take!("lambda_runtime", t),
        }
    }
}

/// The flow control keys every target kind has.
pub struct RawFlowControl {
    pub circuit_breaker: Option<RawCircuitBreaker>,
    pub adaptive_concurrency: Option<RawAdaptiveConcurrency>,
    pub rate_limit: Option<RawRateLimit>,
}

/// A rate limit: a token bucket that refills at `records_per_second` up to `burst`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Records per second, across every mapping using the target: 0.001..=1000000.
    pub records_per_second: f64,
    /// Records that may go at once after a quiet spell: 1..=1000000. Default: one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Instances of sluice sharing the limit: each takes 1/instances of the rate and of the burst
    /// (rounded up). 1..=1000. Default 1.
    #[serde(default)]
    pub instances: Option<u32>,
}

/// Adaptive concurrency: the limit starts at `min`, grows by one per round trip while the target
/// keeps up with every call sent, and shrinks by 10 % when it throttles (429), is unavailable,
/// times out, or answers much slower than usual (it is queueing the calls).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptiveConcurrency {
    /// The lowest limit, where it starts: 1..=max. Default 1.
    #[serde(default)]
    pub min: Option<u32>,
    /// The highest limit: min..=10000. Default: the target's max_concurrency (lambda_runtime: its
    /// concurrency).
    #[serde(default)]
    pub max: Option<u32>,
}

/// A target's circuit breaker. While it is open, no mapping calls the target: SQS pollers stop
/// receiving (receive counts stop growing), stream lanes and Kafka partitions wait. After
/// `open_for` one call probes the target; success closes the breaker, failure doubles the wait.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Calls in a row that did not reach the handler (unreachable, throttled) that open the
    /// breaker: 1..=1000. Default 5.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Also open when this share of calls failed in any way within a sliding window.
    #[serde(default)]
    pub failure_ratio: Option<RawFailureRatio>,
    /// How long the breaker stays open before the first probe: 100ms..=1h. Default 5s.
    #[serde(default)]
    pub open_for: Option<HumanDuration>,
    /// The longest wait between probes (the wait doubles per failed probe): open_for..=1h.
    /// Default 60s.
    #[serde(default)]
    pub max_open_for: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFailureRatio {
    /// Share of failed calls that opens the breaker: above 0, at most 1.
    pub ratio: f64,
    /// The sliding window the calls are counted in: 1s..=1h.
    pub window: HumanDuration,
    /// Calls the window must hold before the ratio is judged: 1..=100000. Default 20.
    #[serde(default)]
    pub min_calls: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLambdaRuntimeTarget {
    /// The worker program and its arguments: a bootstrap, or e.g. [python3, -m, awslambdaric, app.handler].
    pub command: Vec<String>,
    /// Warm workers (Lambda's provisioned concurrency), one invocation each: 1..=1000. Default 1.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// How long one invocation may take; then the worker is killed and replaced. Default 30s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// How long a new worker may take to ask for its first invocation. Default 10s.
    #[serde(default)]
    pub init_timeout: Option<HumanDuration>,
    /// _HANDLER for the runtime interface client, e.g. app.handler.
    #[serde(default)]
    pub handler: Option<String>,
    /// AWS_LAMBDA_FUNCTION_NAME. Default: the target's name.
    #[serde(default)]
    pub function_name: Option<String>,
    /// AWS_LAMBDA_FUNCTION_MEMORY_SIZE in MB: 128..=10240. Default 128.
    #[serde(default)]
    pub memory_size: Option<u32>,
    /// Extra environment variables for the workers.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the workers inherit sluice's environment (its AWS credentials included, as a
    /// Lambda function gets its role's). Default true. With false they see only `env` (plus
    /// PATH and the Lambda runtime variables); use it to keep sluice's credentials from handler code.
    #[serde(default)]
    pub inherit_env: Option<bool>,

    /// Working directory (and LAMBDA_TASK_ROOT). Default: sluice's own.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// A circuit breaker: after repeated calls that could not reach the handler, stop calling
    /// the target (and stop receiving for it) and probe it now and then. Default: none.
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Let the target's concurrency limit follow how it answers, between `min` and `max`,
    /// instead of staying at its fixed limit. Default: the fixed limit.
    #[serde(default)]
    pub adaptive_concurrency: Option<RawAdaptiveConcurrency>,
    /// At most this many records per second to the target, shared by the mappings using it.
    /// Default: none.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInProcessTarget {
    /// How long one invocation may take. Default 30s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Invocations in flight at once, shared by every mapping using this target: 1..=10000.
    /// Default 100.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// A circuit breaker: after repeated calls that could not reach the handler, stop calling
    /// the target (and stop receiving for it) and probe it now and then. Default: none.
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Let the target's concurrency limit follow how it answers, between `min` and `max`,
    /// instead of staying at its fixed limit. Default: the fixed limit.
    #[serde(default)]
    pub adaptive_concurrency: Option<RawAdaptiveConcurrency>,
    /// At most this many records per second to the target, shared by the mappings using it.
    /// Default: none.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCommandTarget {
    /// The program and its arguments, such as [python3, handler.py].
    pub program: Vec<String>,
    /// How long one invocation may take; then the process group is killed. Default 30s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Extra environment variables for the program.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the program's processes inherit sluice's environment (its AWS credentials included, as a
    /// Lambda function gets its role's). Default true. With false they see only `env` (plus
    /// PATH and the SLUICE_ variables); use it to keep sluice's credentials from handler code.
    #[serde(default)]
    pub inherit_env: Option<bool>,

    /// Working directory. Default: sluice's own.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Processes running at once, shared by every mapping using this target: 1..=1000. Default 10.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// A circuit breaker: after repeated calls that could not reach the handler, stop calling
    /// the target (and stop receiving for it) and probe it now and then. Default: none.
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Let the target's concurrency limit follow how it answers, between `min` and `max`,
    /// instead of staying at its fixed limit. Default: the fixed limit.
    #[serde(default)]
    pub adaptive_concurrency: Option<RawAdaptiveConcurrency>,
    /// At most this many records per second to the target, shared by the mappings using it.
    /// Default: none.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttpTarget {
    /// http:// or https:// URL that receives the event as a POST.
    pub url: String,
    /// How long one invocation may take. Default 30s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Invocations in flight at once, shared by every mapping using this target: 1..=10000.
    /// Default 100.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// 4xx statuses (not 429) that mean retrying cannot help: with an on_failure destination,
    /// the records go there at once as NonRetryableError.
    #[serde(default)]
    pub non_retryable_statuses: Option<Vec<u16>>,
    /// A circuit breaker: after repeated calls that could not reach the handler, stop calling
    /// the target (and stop receiving for it) and probe it now and then. Default: none.
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Let the target's concurrency limit follow how it answers, between `min` and `max`,
    /// instead of staying at its fixed limit. Default: the fixed limit.
    #[serde(default)]
    pub adaptive_concurrency: Option<RawAdaptiveConcurrency>,
    /// At most this many records per second to the target, shared by the mappings using it.
    /// Default: none.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    /// Unique name; used in metrics, logs and dead-letter envelopes.
    pub name: String,
    /// The name of a target in `targets`.
    pub target: String,
    /// false: the mapping is not run. Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    pub source: RawSource,
    /// Read `batchItemFailures` from the handler's response (Lambda's ReportBatchItemFailures).
    #[serde(default)]
    pub report_batch_item_failures: Option<bool>,
    /// How failures are retried. The keys are the source kind's own: its retry block
    /// (RawSqsRetry for sqs, RawStreamRetry for stream sources, RawAsyncPolicy for s3).
    #[serde(default)]
    #[schemars(schema_with = "crate::config::sources::retry_schema")]
    pub retry: Option<serde_json::Value>,
    /// Lambda FilterCriteria patterns, OR'ed: records that match none are acknowledged without an
    /// invocation (SQS: deleted; streams: checkpointed past).
    #[serde(default)]
    pub filters: Option<Vec<serde_json::Value>>,
    /// Where records that exhaust the policy go.
    #[serde(default)]
    pub on_failure: Option<RawDestination>,
    /// Asynchronous sources (s3): where the Success record of each handled event goes.
    #[serde(default)]
    pub on_success: Option<RawDestination>,
    /// Autoscaling signals for ECS: the backlog and `sluice_desired_tasks` (sqs, s3, kafka).
    #[serde(default)]
    pub autoscaling: Option<RawAutoscaling>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAutoscaling {
    /// How soon the tasks should drain the backlog: `sluice_desired_tasks` is the backlog divided
    /// by what one task finishes in this time. 10s..=1d.
    pub target_drain_time: HumanDuration,
    /// How often the backlog is read (SQS: one GetQueueAttributes call). 5s..=15m, default 30s.
    #[serde(default)]
    pub sample_interval: Option<HumanDuration>,
    /// How far back a task's throughput is measured. At least two sample intervals, at most 1h;
    /// default 5m.
    #[serde(default)]
    pub throughput_window: Option<HumanDuration>,
}
