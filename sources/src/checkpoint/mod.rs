//! Where stream checkpoints live, and who may move them.
//!
//! A [`CheckpointStore`] belongs to one mapping. It tells the mapping which shards to process
//! now ([`CheckpointStore::acquire`]) and stores how far each got. Two stores exist:
//!
//! - [`embedded::EmbeddedStore`]: a redb file under `state_dir`, for one instance; the file is
//!   locked, so a second process on the same `state_dir` is refused rather than sharing shards;
//! - [`dynamodb::DynamoDbLeaseStore`]: a lease table shared by several instances, in the manner of
//!   the Kinesis Client Library: one lease per shard with an owner and a lease counter; every
//!   write is conditional on the counter, so an instance that lost a lease cannot move its
//!   checkpoint.
//!
//! Both apply the same lineage rule ([`eligible_shards`]): a child shard is processed only after
//! its parents (one after a split, two after a Kinesis merge) have been read to their end, so
//! records of one key are never handled out of order across a split or a merge.

pub mod dynamodb;
pub mod embedded;

use async_trait::async_trait;
use std::collections::HashSet;

/// How the end of a closed shard is stored.
pub const SHARD_END: &str = "SHARD_END";

/// How far a shard has been processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Every record up to and including this sequence number is finished.
    After(String),
    /// The shard is closed and every record in it is finished.
    ShardEnd,
}

impl Checkpoint {
    pub fn parse(stored: &str) -> Self {
        if stored == SHARD_END {
            Checkpoint::ShardEnd
        } else {
            Checkpoint::After(stored.to_owned())
        }
    }

    pub fn as_stored(&self) -> &str {
        match self {
            Checkpoint::After(sequence) => sequence,
            Checkpoint::ShardEnd => SHARD_END,
        }
    }
}

/// A tumbling window open on a shard, stored beside its checkpoint: the state the handler returned
/// for the records up to the checkpoint, so a restart (or the next owner) resumes the window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenWindow {
    /// The window's start and end, in milliseconds since the Unix epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    /// The handler's `state`, as JSON text.
    pub state: String,
}

/// A shard as the stream lists it: enough for the lineage rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub id: String,
    /// The shard it was split from, or the two it was merged from; none for a root shard.
    pub parents: Vec<String>,
}

/// A shard this instance holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldShard {
    pub shard_id: String,
    /// `None` when the shard was never checkpointed: start at the mapping's starting position.
    pub checkpoint: Option<Checkpoint>,
}

/// The result of one [`CheckpointStore::acquire`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acquired {
    /// Every shard this instance holds now.
    pub held: Vec<HeldShard>,
    /// Held shards another instance asked for, to balance load: finish the work in flight,
    /// checkpoint, then [`CheckpointStore::release`] them.
    pub handoff_requested: Vec<String>,
    /// Shards read to their end (by any instance).
    pub finished: HashSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Another instance holds the shard now; stop processing it without writing.
    #[error("the lease on shard {shard_id} was lost to another instance")]
    LeaseLost { shard_id: String },
    #[error("checkpoint store {store}: {message}")]
    Store { store: String, message: String },
}

#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// For logs: the file or table.
    fn describe(&self) -> String;

    /// Renews the leases held, takes the shards this instance should process among `shards`
    /// (lineage and balance permitting), and reports what it holds.
    async fn acquire(&self, shards: &[ShardSpec]) -> Result<Acquired, CheckpointError>;

    /// Moves a held shard's checkpoint and, in the same write, stores the tumbling window open
    /// at it (`None` clears it). Fails with `LeaseLost` when the shard is no longer held.
    async fn checkpoint_with(
        &self,
        shard_id: &str,
        checkpoint: &Checkpoint,
        window: Option<&OpenWindow>,
    ) -> Result<(), CheckpointError>;

    /// Moves a held shard's checkpoint, with no window open at it.
    async fn checkpoint(
        &self,
        shard_id: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        self.checkpoint_with(shard_id, checkpoint, None).await
    }

    /// A shard's checkpoint and the tumbling window stored with it (if one was open), read
    /// together, so the window always belongs to the checkpoint returned.
    async fn window(
        &self,
        shard_id: &str,
    ) -> Result<(Option<Checkpoint>, Option<OpenWindow>), CheckpointError>;

    /// Gives a held shard up so another instance can take it at once.
    async fn release(&self, shard_id: &str) -> Result<(), CheckpointError>;

    /// The time the mapping first started, since the Unix epoch: the first call (by any
    /// instance) stores `now`, every later call returns what was stored. `latest` means the
    /// records that arrived from then on, in every incarnation and on every instance.
    async fn first_started(
        &self,
        now: std::time::Duration,
    ) -> Result<std::time::Duration, CheckpointError>;
}

/// The shards that may be processed now: not finished, and every parent either finished or no
/// longer listed (trimmed away with its records after the stream's retention). A shard merged
/// from two waits for both.
pub fn eligible_shards(shards: &[ShardSpec], finished: &HashSet<String>) -> Vec<String> {
    let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    shards
        .iter()
        .filter(|shard| !finished.contains(&shard.id))
        .filter(|shard| {
            shard
                .parents
                .iter()
                .all(|parent| finished.contains(parent) || !listed.contains(parent.as_str()))
        })
        .map(|shard| shard.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, parent: Option<&str>) -> ShardSpec {
        ShardSpec {
            id: id.into(),
            parents: parent.into_iter().map(Into::into).collect(),
        }
    }

    fn finished(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A scripted lineage of three generations: a splits into b and c, b into d and e; f is a
    /// root whose parent was trimmed away.
    fn listing() -> Vec<ShardSpec> {
        vec![
            spec("a", None),
            spec("b", Some("a")),
            spec("c", Some("a")),
            spec("d", Some("b")),
            spec("e", Some("b")),
            spec("f", Some("gone")),
        ]
    }

    #[test]
    fn parents_are_processed_before_their_children_over_generations() {
        let shards = listing();
        assert_eq!(eligible_shards(&shards, &finished(&[])), vec!["a", "f"]);
        assert_eq!(
            eligible_shards(&shards, &finished(&["a"])),
            vec!["b", "c", "f"]
        );
        assert_eq!(
            eligible_shards(&shards, &finished(&["a", "b", "f"])),
            vec!["c", "d", "e"]
        );
        assert!(eligible_shards(&shards, &finished(&["a", "b", "c", "d", "e", "f"])).is_empty());
    }

    #[test]
    fn a_merged_shard_waits_for_both_of_its_parents() {
        let merged = ShardSpec {
            id: "m".into(),
            parents: vec!["a".into(), "b".into()],
        };
        let shards = vec![spec("a", None), spec("b", None), merged];
        assert_eq!(eligible_shards(&shards, &finished(&[])), vec!["a", "b"]);
        assert_eq!(eligible_shards(&shards, &finished(&["a"])), vec!["b"]);
        assert_eq!(eligible_shards(&shards, &finished(&["a", "b"])), vec!["m"]);
    }

    #[test]
    fn a_child_whose_parent_left_the_listing_starts_at_once() {
        let shards = vec![spec("d", Some("b")), spec("e", Some("b"))];
        assert_eq!(eligible_shards(&shards, &finished(&[])), vec!["d", "e"]);
    }

    #[test]
    fn checkpoints_round_trip_through_their_stored_form() {
        for checkpoint in [Checkpoint::After("123".into()), Checkpoint::ShardEnd] {
            assert_eq!(Checkpoint::parse(checkpoint.as_stored()), checkpoint);
        }
    }
}
