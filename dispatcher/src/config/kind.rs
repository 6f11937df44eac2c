//! What a source kind gives the config: how its `source` block and the mapping's `retry` block
//! are read into the kind's finished settings and policy ([`BuildSource`]), and the rules the
//! mapping around it must follow ([`SourceRules`]). Each kind implements both beside its
//! runtime (`runtime/<kind>/config.rs`); [`super::sources`] registers them.

use super::destinations::{self, DestinationConfig};
use super::validate::Validator;
use sluice_policies::{Pattern, StreamPolicy};

/// What a source kind's build needs from the mapping around it.
pub struct MappingParts<'a> {
    /// The mapping's key path, such as `mappings[0]`.
    pub path: &'a str,
    /// The mapping's `retry` block as written; the kind reads its own keys from it.
    pub retry: Option<serde_json::Value>,
    pub report_batch_item_failures: bool,
    pub on_failure: Option<&'a DestinationConfig>,
    /// `enabled` as written (true when absent): a disabled mapping never starts, so a kind may
    /// accept settings that would make a running one do nothing.
    pub enabled: bool,
}

/// A source kind's `source` block as written.
pub trait BuildSource {
    /// The kind's validated settings, with its finished policy.
    type Config;
    /// The kind's `retry` block as written (for the schema).
    type Retry: schemars::JsonSchema;
    /// Checks the block at `path` (such as `mappings[0].source.sqs`) and the mapping's `retry`,
    /// reporting every problem to `v`; returns usable settings even when there were problems.
    fn build(self, v: &mut Validator, path: &str, mapping: MappingParts) -> Self::Config;
}

/// What a built source kind says about the mapping around it.
pub trait SourceRules {
    /// How large one record can be, for the warning about SQS destinations without a spill
    /// bucket.
    fn largest_record(&self) -> &'static str;

    /// Whether reading the source calls AWS.
    fn calls_aws(&self) -> bool {
        true
    }

    /// Whether records are invoked asynchronously, so that `on_success` applies.
    fn is_asynchronous(&self) -> bool {
        false
    }

    /// Whether the source keeps checkpoints (in the state file, with embedded checkpoints).
    fn keeps_checkpoints(&self) -> bool {
        false
    }

    /// Why `autoscaling` does not apply to the kind, if it does not: the source cannot tell its
    /// backlog in records.
    fn no_backlog(&self) -> Option<&'static str> {
        None
    }

    /// Checks a destination at `path` against the source (by default: no Kafka topic, since
    /// there is no Kafka cluster to write it on).
    fn check_destination(&self, v: &mut Validator, path: &str, destination: &DestinationConfig) {
        destinations::refuse_kafka(v, path, destination);
    }

    /// Checks a compiled filter pattern at `path` against the records the source makes.
    fn check_filter(&self, _v: &mut Validator, _path: &str, _pattern: &Pattern) {}

    /// The kind's policy as an ordered stream policy, which `sluice dlq replay` runs records
    /// under (`max_retry_attempts: None` is unlimited). `has_on_failure`: the mapping has an
    /// on-failure destination.
    fn replay_policy(&self, has_on_failure: bool) -> StreamPolicy;

    /// The largest batch a replay invokes: the kind's own batch size.
    fn replay_batch_size(&self) -> usize;
}
