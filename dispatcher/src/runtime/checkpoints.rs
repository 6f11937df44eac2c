//! Where a stream mapping's checkpoints (and shard leases) go, as the config's `checkpoints`
//! block describes: the embedded state file, or a DynamoDB lease table shared by instances.

use crate::config::CheckpointsConfig;
use sluice_sources::checkpoint::dynamodb::LeaseTable;
use sluice_sources::checkpoint::embedded::StateFile;
use std::time::Duration;

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
}
