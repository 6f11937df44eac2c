//! Where a stream mapping's checkpoints (and shard leases) go, as the config's `checkpoints`
//! block describes: the embedded state file, or a DynamoDB lease table shared by instances.

use crate::config::CheckpointsConfig;
use crate::health::MappingHealthHandle;
use crate::runtime::retry::retry_until_ok;
use crate::telemetry::MappingMetrics;
use sluice_sources::checkpoint::CheckpointStore;
use sluice_sources::checkpoint::dynamodb::LeaseTable;
use sluice_sources::checkpoint::embedded::{EmbeddedStore, StateFile};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where this mapping's checkpoints go.
#[derive(Clone)]
pub enum StoreSetup {
    Embedded(StateFile),
    DynamoDb {
        leases: LeaseTable,
        lease_duration: Duration,
    },
}

impl StoreSetup {
    /// The setup `config` describes; `leases` is the lease table's client when checkpoints go
    /// to DynamoDB.
    pub fn from_config(
        config: &CheckpointsConfig,
        state: Option<&StateFile>,
        leases: impl FnOnce(&str) -> LeaseTable,
    ) -> Option<Self> {
        match config {
            CheckpointsConfig::Embedded => state.cloned().map(StoreSetup::Embedded),
            CheckpointsConfig::DynamoDb {
                table,
                lease_duration,
            } => Some(StoreSetup::DynamoDb {
                leases: leases(table),
                lease_duration: *lease_duration,
            }),
        }
    }

    /// Opens `mapping`'s store, leases named after `arn` (what it reads), with the lease
    /// duration when there are leases. Opening the lease table is retried (shown on `/readyz`)
    /// until it works; `None` when `shutdown` comes first.
    pub async fn open(
        &self,
        mapping: &str,
        arn: &str,
        health: &MappingHealthHandle,
        metrics: &MappingMetrics,
        shutdown: &CancellationToken,
    ) -> Option<(Arc<dyn CheckpointStore>, Option<Duration>)> {
        let (leases, lease_duration) = match self {
            StoreSetup::Embedded(file) => {
                return Some((Arc::new(EmbeddedStore::new(file.clone(), mapping)), None));
            }
            StoreSetup::DynamoDb {
                leases,
                lease_duration,
            } => (leases, *lease_duration),
        };
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "sluice".into()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let store = retry_until_ok(
            "opening the lease table",
            mapping,
            health,
            metrics,
            shutdown,
            || leases.open(mapping, arn, owner.clone(), lease_duration),
        )
        .await?;
        Some((Arc::new(store), Some(lease_duration)))
    }
}
