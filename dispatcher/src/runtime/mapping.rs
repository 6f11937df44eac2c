//! What the daemon hands a source kind's runtime to start a mapping: the parts every mapping has
//! whatever its source ([`Mapping`]), the clients sources read through, built once
//! ([`SourceClients`]), and what the kind gives back: a way to start one incarnation of its
//! worker ([`StartMapping`]), which the daemon runs under a supervisor.

use super::checkpoints::StoreSetup;
use crate::config::MappingConfig;
use crate::destinations::Destination;
use crate::health::MappingHealthHandle;
use crate::targets::SharedTarget;
use crate::telemetry::MappingMetrics;
use sluice_sources::QueueOpener;
use sluice_sources::dynamodb_streams::DynamoDbStreams;
use sluice_sources::kinesis::Kinesis;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Starts one incarnation of a mapping's worker with its own stop token; the worker drains for
/// at most the shutdown timeout after the token is cancelled.
pub type StartMapping =
    Box<dyn FnMut(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What every mapping has, whatever its source.
#[derive(Clone)]
pub struct Mapping {
    pub config: MappingConfig,
    pub target: SharedTarget,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub on_success: Option<Arc<dyn Destination>>,
    pub health: MappingHealthHandle,
    pub metrics: MappingMetrics,
    pub shutdown_timeout: Duration,
}

/// The clients and stores sources read through, built once for every mapping.
#[derive(Clone)]
pub struct SourceClients {
    pub queues: Arc<dyn QueueOpener>,
    /// Finds DynamoDB streams.
    pub dynamodb_streams: DynamoDbStreams,
    /// Finds Kinesis streams.
    pub kinesis: Kinesis,
    /// Where stream checkpoints go; `None` when no enabled mapping keeps checkpoints.
    pub checkpoints: Option<StoreSetup>,
    /// The AWS region, named in Lambda's events.
    pub region: String,
    /// Fetches the bodies of SQS messages the Extended Client stored in S3.
    pub s3: aws_sdk_s3::Client,
}

impl SourceClients {
    /// The checkpoint store setup a mapping that keeps checkpoints needs.
    pub fn checkpoint_store(&self, mapping: &str) -> Result<StoreSetup, StartError> {
        self.checkpoints
            .clone()
            .ok_or_else(|| StartError::NoCheckpointStore {
                mapping: mapping.to_owned(),
            })
    }
}

/// Why a mapping could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("mapping {mapping}: the checkpoint store is not open")]
    NoCheckpointStore { mapping: String },
}
