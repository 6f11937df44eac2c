//! The daemon: builds the AWS clients (in one place), the state file, targets and destinations,
//! starts the admin and Invoke API servers, runs every enabled mapping under a supervisor, and
//! owns the single drain deadline on shutdown (stop polling → return unstarted records → finish
//! in-flight batches and queued events until `shutdown_timeout` → exit). The CLI and the
//! embedding API ([`crate::embed`]) both run it.

mod mappings;

use crate::config::{AwsSettings, CheckpointsConfig, Config, DestinationConfig};
use crate::health::Health;
use crate::runtime::mapping::SourceClients;
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_sources::checkpoint::CheckpointError;
use sluice_sources::checkpoint::dynamodb::LeaseTable;
use sluice_sources::dynamodb_streams::DynamoDbStreams;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `app/sluice` in the User-Agent of every AWS call: CloudTrail (and the IAM policy tests) can
/// tell sluice's calls from others'.
pub fn app_name() -> aws_config::AppName {
    aws_config::AppName::new("sluice").expect("a valid app name")
}

/// The longest one attempt of an AWS call may take: above the longest SQS long poll (20 s), so
/// that a connection that stops answering (a lost NAT entry, a stalled proxy) fails the call
/// and it is retried, instead of holding a poller or an acknowledgement forever.
pub const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why sluice could not start (or keep) running. Each variant says what it was doing; the cause
/// is its source, so a caller can print the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no AWS region: set aws.region in the config file, or AWS_REGION in the environment")]
    NoRegion,
    #[error("opening the checkpoint store (the state file under state_dir)")]
    StateFile(#[source] CheckpointError),
    #[error(
        "opening the invoke API's queue of Event invocations; if the state file is corrupt, move it aside (its queued events and checkpoints are lost)"
    )]
    AsyncQueue(#[source] CheckpointError),
    #[error("the state file for the invoke API's queue is not open")]
    StateFileNotOpen,
    #[error("building a target")]
    Target(#[from] crate::targets::BuildError),
    #[error("{owner} names the unknown target {target}")]
    UnknownTarget { owner: String, target: String },
    #[error("{owner}: building {key}")]
    Destination {
        owner: String,
        key: &'static str,
        #[source]
        source: crate::destinations::DestinationError,
    },
    #[error("starting a server")]
    Listen(#[from] crate::http_server::ListenError),
    #[error("starting a mapping")]
    Start(#[from] crate::runtime::mapping::StartError),
    #[error("writing the address file {path}")]
    AddressFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The AWS configuration every client is built from: config values first, then the standard
/// environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, ECS and instance credentials).
/// Without `needs_aws` (nothing in the config calls AWS) a missing region is not an error.
pub async fn aws_config_for(
    settings: &AwsSettings,
    needs_aws: bool,
) -> Result<aws_config::SdkConfig, RunError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .app_name(app_name())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if !needs_aws && settings.region.is_none() && std::env::var_os("AWS_REGION").is_none() {
        // Functions behind the Invoke API with local handlers: ARNs still name a region.
        loader = loader.region(aws_config::Region::new("us-east-1"));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(RunError::NoRegion);
    }
    Ok(config)
}

/// An S3 client; with an endpoint override (moto, LocalStack) buckets are addressed by path,
/// since those serve no virtual-host names.
pub fn s3_client(sdk_config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(sdk_config.endpoint_url().is_some())
            .build(),
    )
}

/// How a run reports itself, beyond its logs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where to write the addresses the servers listen on, once they all do (`--address-file`):
    /// a JSON object `{"admin": "127.0.0.1:9797", "invoke_api": "127.0.0.1:9001"}`. With port 0
    /// in the config this is how to find them. Removed when the run ends.
    pub address_file: Option<PathBuf>,
    /// How to read the config again on SIGHUP; `None`: SIGHUP is not listened for.
    pub reload: Option<ConfigLoader>,
}

/// Runs every enabled mapping until `shutdown`, then drains and returns.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<(), RunError> {
    run_with_handlers(config, metrics, shutdown, BTreeMap::new(), options).await
}

/// [`run`], with the handlers of `in_process` targets (see [`crate::embed`]).
pub async fn run_with_handlers(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    handlers: BTreeMap<String, Arc<dyn crate::targets::in_process::Handler>>,
    options: RunOptions,
) -> Result<(), RunError> {
    if let Some(path) = &options.address_file {
        // A file left by a run that was killed would point at a port someone else may hold now;
        // and a file that cannot be written should stop the start, not surface after the
        // mappings run.
        prepare_address_file(path).map_err(|source| RunError::AddressFile {
            path: path.clone(),
            source,
        })?;
    }
    // First: from here on a SIGHUP is a reload (until now `sluice run` ignored it), and the
    // targets' processes started below inherit no ignored SIGHUP.
    let mut reloads = reload_signals(options.reload.is_some());
    let sdk_config = aws_config_for(&config.aws, config.needs_aws()).await?;
    let sqs_client = aws_sdk_sqs::Client::new(&sdk_config);
    let tables_client = aws_sdk_dynamodb::Client::new(&sdk_config);
    let streams_client = aws_sdk_dynamodbstreams::Client::new(&sdk_config);
    let s3_client = s3_client(&sdk_config);
    let queues: Arc<dyn sluice_sources::QueueOpener> =
        Arc::new(sluice_sources::sqs::SqsOpener(sqs_client.clone()));
    let dynamodb_streams = DynamoDbStreams {
        streams: streams_client.clone(),
        tables: tables_client.clone(),
    };
    let kinesis = sluice_sources::kinesis::Kinesis {
        client: aws_sdk_kinesis::Client::new(&sdk_config),
    };
    let health = Health::new(config.admin.stall_after, config.admin.stuck_after);
    let region = sdk_config
        .region()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let state_file = if uses_state_file(&config) {
        Some(
            sluice_sources::checkpoint::embedded::StateFile::open(&config.state_dir)
                .map_err(RunError::StateFile)?,
        )
    } else {
        None
    };

    let mut targets = mappings::Targets::build(&config, handlers, &region, &health)?;

    let admin_stop = CancellationToken::new();
    let (admin, admin_address) = crate::admin::serve(
        config.admin.listen,
        health.clone(),
        metrics,
        config.admin.token.clone(),
        admin_stop.clone(),
    )
    .await?;

    let api_queues = queues.clone();
    let source_clients = SourceClients {
        queues,
        dynamodb_streams,
        kinesis,
        checkpoints: crate::runtime::checkpoints::StoreSetup::from_config(
            &config.checkpoints,
            state_file.as_ref(),
            |table| LeaseTable {
                client: tables_client.clone(),
                table: table.to_owned(),
            },
        ),
        region: region.clone(),
        s3: s3_client.clone(),
    };
    let function_destination =
        |function: &str, key: &'static str, destination: &DestinationConfig| {
            crate::destinations::build(destination, None, &sqs_client, &s3_client).map_err(
                |source| RunError::Destination {
                    owner: format!("invoke_api function {function}"),
                    key,
                    source,
                },
            )
        };
    // Only with a writer: without one nothing would ever empty it.
    let emf_registry = config
        .emf
        .is_some()
        .then(crate::telemetry::esm::EmfRegistry::default);
    let mut mapping_set = mappings::MappingSet::new(mappings::StartContext {
        health: health.clone(),
        source_clients,
        sqs_client: sqs_client.clone(),
        s3_client: s3_client.clone(),
        shutdown: shutdown.clone(),
        shutdown_timeout: config.shutdown_timeout,
        emf: emf_registry.clone(),
    });
    mapping_set.start_all(&config, &targets)?;
    // Stopped after the drain, so its last lines hold what the drain counted.
    let emf_stop = CancellationToken::new();
    let emf = config
        .emf
        .clone()
        .zip(emf_registry)
        .map(|(settings, registry)| {
            tokio::spawn(crate::telemetry::esm::run_emf(
                settings,
                registry,
                emf_stop.clone(),
            ))
        });
    let api_stop = CancellationToken::new();
    let api_workers = tokio_util::task::TaskTracker::new();
    let api = match &config.invoke_api {
        Some(api_config) => {
            // Opened above whenever there is an Invoke API.
            let Some(state_file) = state_file.clone() else {
                return Err(RunError::StateFileNotOpen);
            };
            let queue = sluice_sources::async_queue::AsyncQueue::open(state_file)
                .map_err(RunError::AsyncQueue)?;
            let backlog = Arc::new(crate::invoke_api::Backlog::new(
                api_config.max_queued_events,
                api_config.max_queued_bytes,
            ));
            let event_sender = api_config.event_queue.as_ref().map(|url| {
                Arc::new(crate::invoke_api::event_queue::EventSender::new(
                    sqs_client.clone(),
                    url,
                ))
            });
            let mut functions = BTreeMap::new();
            for (name, function) in &api_config.functions {
                let target =
                    targets
                        .get(&function.target)
                        .ok_or_else(|| RunError::UnknownTarget {
                            owner: format!("invoke_api function {name}"),
                            target: function.target.clone(),
                        })?;
                functions.insert(
                    name.clone(),
                    Arc::new(crate::invoke_api::Function::new(
                        name,
                        function,
                        target,
                        queue.clone(),
                        backlog.clone(),
                        function
                            .on_failure
                            .as_ref()
                            .map(|d| function_destination(name, "on_failure", d))
                            .transpose()?,
                        function
                            .on_success
                            .as_ref()
                            .map(|d| function_destination(name, "on_success", d))
                            .transpose()?,
                        &region,
                        health.clone(),
                        event_sender.clone(),
                    )),
                );
            }
            let consumer =
                event_sender
                    .clone()
                    .map(|sender| crate::invoke_api::EventQueueConsumer {
                        queues: api_queues.clone(),
                        sender,
                        health: health.clone(),
                        drain: config.shutdown_timeout,
                    });
            Some(
                crate::invoke_api::serve(
                    api_config,
                    functions,
                    region.clone(),
                    api_stop.clone(),
                    api_workers.clone(),
                    consumer,
                )
                .await?,
            )
        }
        None => None,
    };
    let (api, api_address) = match api {
        Some((api, address)) => (Some(api), Some(address)),
        None => (None, None),
    };
    if let Some(path) = &options.address_file
        && let Err(error) = write_addresses(path, admin_address, api_address)
    {
        // Checked writable at start: only a disk that filled since gets here. The servers run;
        // only the file that names them is missing.
        tracing::error!(file = %path.display(), %error, "cannot write the address file");
    }
    if mapping_set.len() == 0 && api.is_none() {
        tracing::warn!("no enabled mappings; waiting for a stop signal");
    }
    log_warnings(&config);
    tracing::info!(mappings = mapping_set.len(), "sluice running");
    let mut config = config;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = reloads.recv() => {
                let Some(loader) = &options.reload else { continue };
                if let Some(new) = reload(loader, &config, &mut mapping_set, &mut targets, &shutdown).await {
                    config = new;
                }
            }
        }
    }
    tracing::info!(
        shutdown_timeout_ms = config.shutdown_timeout.as_millis() as u64,
        "stop signal received; draining"
    );
    // One deadline for the whole drain: the Invoke API's connections, the mappings' in-flight
    // batches and the queued events in flight all stop at it.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    api_stop.cancel();
    api_workers.close();
    let drain = async {
        if let Some(api) = api {
            let _ = api.await;
        }
        mapping_set.drained().await;
        api_workers.wait().await;
    };
    if tokio::time::timeout_at(deadline, drain).await.is_err() {
        tracing::warn!(
            "drain deadline reached; work still in flight (batches, queued events, slow clients) is delivered again after the restart"
        );
    }
    emf_stop.cancel();
    if let Some(emf) = emf {
        let _ = tokio::time::timeout(Duration::from_secs(1), emf).await;
    }
    admin_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    if let Some(path) = &options.address_file {
        // A stale file would point a health check at a port someone else may hold next.
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// Whether `config` keeps state in the state file under `state_dir` (opened once, at start).
fn uses_state_file(config: &Config) -> bool {
    (config.checkpoints == CheckpointsConfig::Embedded
        && config
            .mappings
            .iter()
            .any(|m| m.enabled && m.source.rules().keeps_checkpoints()))
        // The Invoke API queues its Event invocations there (with or without functions yet).
        || config.invoke_api.is_some()
}

/// The config's warnings, at start and at each reload.
fn log_warnings(config: &Config) {
    for warning in config.warnings() {
        tracing::warn!(%warning, "config warning");
    }
    for warning in config.task_state_warnings(crate::config::on_ecs()) {
        tracing::warn!(%warning, "state that must outlive the task lives in it");
    }
}

/// SIGHUP, as a stream of reload requests; none when reloading is off (an embedded daemon).
fn reload_signals(enabled: bool) -> tokio::sync::mpsc::Receiver<()> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    if !enabled {
        return receiver;
    }
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    // One pending reload is enough: it reads the file as it is then.
                    let _ = sender.try_send(());
                }
            });
        }
        Err(error) => tracing::error!(%error, "cannot listen for SIGHUP; config reload is off"),
    }
    receiver
}

/// Reads the config again and applies it; the new config when it was applied (even in part:
/// what cannot change while running is reported and kept), `None` when it was refused.
async fn reload(
    loader: &ConfigLoader,
    current: &Config,
    mapping_set: &mut mappings::MappingSet,
    targets: &mut mappings::Targets,
    shutdown: &CancellationToken,
) -> Option<Config> {
    tracing::info!(config = %current.file.display(), "SIGHUP: reloading the config");
    // The loader may block (a file, or S3 through its own runtime): on a thread of its own.
    let load = loader.0.clone();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(load());
    });
    // A stop while the file loads (S3 can take a while) is not held up by it.
    let loaded = tokio::select! {
        loaded = receiver => loaded,
        _ = shutdown.cancelled() => return None,
    };
    let mut new = match loaded {
        Ok(Ok(new)) => new,
        Ok(Err(errors)) => {
            tracing::error!(errors = %errors, "config reload refused: the file does not validate; the running config stays");
            return None;
        }
        Err(_) => {
            tracing::error!("config reload failed: the loader stopped; the running config stays");
            return None;
        }
    };
    let fixed = mappings::keep_fixed(current, &mut new);
    if !fixed.is_empty() {
        tracing::warn!(keys = ?fixed, "config reload: these keys cannot change while sluice runs; they keep their running values until a restart");
    }
    // After the fixed keys are put back: a change of those alone is kept, not refused.
    if uses_state_file(&new) && !uses_state_file(current) {
        tracing::error!(
            "config reload refused: it needs the state file under state_dir (embedded checkpoints for a DynamoDB stream mapping), which is opened only at start; restart sluice to apply it"
        );
        return None;
    }
    if new.needs_aws() && !current.needs_aws() {
        tracing::error!(
            "config reload refused: it calls AWS, and sluice started without AWS clients configured for that; restart sluice to apply it"
        );
        return None;
    }
    log_warnings(&new);
    match mapping_set.reload(current, &mut new, targets).await {
        Ok(changes) => {
            tracing::info!(changes = ?changes, mappings = mapping_set.len(), "config reloaded");
            Some(new)
        }
        Err(error) => {
            tracing::error!(error = %crate::error_chain(&error), "config reload refused: building what it changes failed; the running config stays");
            None
        }
    }
}

/// Reads the config file again, for a reload on SIGHUP.
#[derive(Clone)]
pub struct ConfigLoader(
    pub Arc<dyn Fn() -> Result<Config, crate::config::ConfigErrors> + Send + Sync>,
);

impl std::fmt::Debug for ConfigLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigLoader")
    }
}

/// Removes a stale address file and checks that one can be written beside it.
fn prepare_address_file(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let probe = path.with_extension("partial");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Writes the servers' addresses to `path` at once (a reader never sees half a file).
fn write_addresses(
    path: &std::path::Path,
    admin: std::net::SocketAddr,
    invoke_api: Option<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let mut addresses = serde_json::json!({ "admin": admin.to_string() });
    if let Some(invoke_api) = invoke_api {
        addresses["invoke_api"] = invoke_api.to_string().into();
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{addresses}\n"))?;
    std::fs::rename(&partial, path)?;
    tracing::info!(file = %path.display(), "addresses written");
    Ok(())
}
