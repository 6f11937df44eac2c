//! The running daemon: one worker per enabled mapping, the admin server, and the drain on
//! shutdown (stop polling → return unstarted records → finish in-flight batches until
//! `shutdown_timeout` → exit).

pub mod heartbeat;
pub mod s3;
pub mod sqs;
pub mod stream;

use crate::config::{AwsSettings, CheckpointsConfig, Config, DestinationConfig, SourceConfig};
use crate::destinations::Destination;
use crate::destinations::s3::S3Destination;
use crate::destinations::sqs::SqsDestination;
use crate::health::Health;
use crate::targets::{self, SharedTarget};
use crate::telemetry::MappingMetrics;
use anyhow::Context;
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The AWS configuration every client is built from: config values first, then the standard
/// environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, ECS and instance credentials).
pub async fn aws_config(settings: &AwsSettings) -> anyhow::Result<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .build(),
    );
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        anyhow::bail!(
            "no AWS region: set aws.region in the config file, or AWS_REGION in the environment"
        );
    }
    Ok(config)
}

/// Runs every enabled mapping until `shutdown`, then drains and returns.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_handlers(config, metrics, shutdown, BTreeMap::new()).await
}

/// [`run`], with the handlers of `in_process` targets (see [`crate::embed`]).
pub async fn run_with_handlers(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    handlers: BTreeMap<String, Arc<dyn crate::embed::Handler>>,
) -> anyhow::Result<()> {
    let sdk_config = aws_config(&config.aws).await?;
    let sqs_client = aws_sdk_sqs::Client::new(&sdk_config);
    let tables_client = aws_sdk_dynamodb::Client::new(&sdk_config);
    let streams_client = aws_sdk_dynamodbstreams::Client::new(&sdk_config);
    // moto and LocalStack serve buckets by path, not by virtual host.
    let s3_client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(config.aws.endpoint_url.is_some())
            .build(),
    );
    let health = Health::new(config.admin.stall_after, config.admin.stuck_after);
    let region = sdk_config
        .region()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let uses_state_file = config.checkpoints == CheckpointsConfig::Embedded
        && config
            .mappings
            .iter()
            .any(|m| m.enabled && matches!(m.source, SourceConfig::DynamodbStream(_)));
    let state_file = if uses_state_file {
        Some(
            sluice_sources::checkpoint::embedded::StateFile::open(&config.state_dir)
                .context("opening the checkpoint store")?,
        )
    } else {
        None
    };

    let mut built_targets: BTreeMap<String, SharedTarget> = BTreeMap::new();
    for (name, target) in &config.targets {
        let built = targets::build(name, target, &handlers, &region)
            .with_context(|| format!("building target {name}"))?;
        built_targets.insert(name.clone(), built);
    }

    let admin_stop = CancellationToken::new();
    let admin = crate::admin::serve(
        config.admin.listen,
        health.clone(),
        metrics,
        admin_stop.clone(),
    )
    .await?;

    let mut workers = tokio::task::JoinSet::new();
    for mapping in config.mappings.iter().filter(|m| m.enabled) {
        let target = built_targets
            .get(&mapping.target)
            .cloned()
            .with_context(|| format!("mapping {} names an unknown target", mapping.name))?;
        let build_destination = |destination: &DestinationConfig| -> Arc<dyn Destination> {
            match destination {
                DestinationConfig::Sqs { queue_url } => {
                    Arc::new(SqsDestination::new(sqs_client.clone(), queue_url.clone()))
                }
                DestinationConfig::S3 { bucket, prefix } => Arc::new(S3Destination::new(
                    s3_client.clone(),
                    bucket.clone(),
                    prefix.clone(),
                )),
            }
        };
        let on_failure = mapping.on_failure.as_ref().map(build_destination);
        let on_success = mapping.on_success.as_ref().map(build_destination);
        let health = health.register(&mapping.name);
        let metrics = MappingMetrics::new(&mapping.name);
        match &mapping.source {
            SourceConfig::Sqs(source) => {
                let worker = sqs::SqsMapping {
                    config: mapping.clone(),
                    source: source.clone(),
                    client: sqs_client.clone(),
                    target,
                    on_failure,
                    health,
                    metrics,
                };
                workers.spawn(worker.run(shutdown.clone(), config.shutdown_timeout));
            }
            SourceConfig::S3(source) => {
                let worker = s3::S3Mapping {
                    config: mapping.clone(),
                    source: source.clone(),
                    client: sqs_client.clone(),
                    target,
                    on_failure,
                    on_success,
                    health,
                    metrics,
                };
                workers.spawn(worker.run(shutdown.clone(), config.shutdown_timeout));
            }
            SourceConfig::DynamodbStream(source) => {
                let store = stream::StoreSetup::from_config(
                    &config.checkpoints,
                    state_file.as_ref(),
                    &tables_client,
                )
                .context("the checkpoint store is not open")?;
                let worker = stream::StreamMapping {
                    config: mapping.clone(),
                    source: source.clone(),
                    streams: streams_client.clone(),
                    tables: tables_client.clone(),
                    store,
                    target,
                    on_failure,
                    health,
                    metrics,
                };
                workers.spawn(worker.run(shutdown.clone(), config.shutdown_timeout));
            }
        }
    }
    if workers.is_empty() {
        tracing::warn!("no enabled mappings; waiting for a stop signal");
    }
    tracing::info!(mappings = workers.len(), "sluice running");
    shutdown.cancelled().await;
    tracing::info!(
        shutdown_timeout_ms = config.shutdown_timeout.as_millis() as u64,
        "stop signal received; draining"
    );
    while let Some(result) = workers.join_next().await {
        if let Err(error) = result {
            tracing::error!(%error, "a mapping worker failed");
        }
    }
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("drained; exiting");
    Ok(())
}
