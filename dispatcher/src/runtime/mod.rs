//! The mapping workers: one per enabled mapping and source kind, each polling its source,
//! batching, invoking its target and acknowledging by the policies' decisions. The daemon
//! ([`crate::daemon`]) builds and supervises them and owns the drain.

pub(crate) mod async_exec;
pub mod checkpoints;
pub mod clock;
pub mod heartbeat;
pub mod invoker;
pub mod kafka;
mod lane;
pub mod mapping;
pub(crate) mod ordered;
pub(crate) mod poller;
mod retry;
pub(crate) mod scaling;
pub(crate) use retry::retry_delay;
pub mod dynamodb_stream;
pub mod kinesis;
pub mod s3;
pub mod schedule;
pub mod shards;
pub mod sqs;
mod supervise;
pub(crate) mod window;
pub(crate) use supervise::{panic_message, supervise};
