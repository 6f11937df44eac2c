//! sluice-policies: the pure decision logic of sluice.
//!
//! Everything here is a function of its inputs: no I/O, no async runtime, no AWS SDK and no clock
//! reads. Callers pass the current time (as a [`std::time::Duration`] since the Unix epoch) and any
//! randomness (jitter) in as arguments, and receive decisions as data that the dispatcher executes.
//! That is what lets every rule of `semantics.md` be unit- and property-tested here.
//!
//! - [`async_invoke`]: Lambda's asynchronous invocation policy (semantics.md §5).
//! - [`breaker`]: a target's circuit breaker: when to stop calling it and when to probe again.
//! - [`concurrency`]: a target's adaptive concurrency limit (AIMD on latency and overload).
//! - [`batcher`]: when a batch is complete (count, bytes, window), with the 6 MB invocation cap.
//! - [`response`]: the handler's response, parsed as Lambda parses it (`batchItemFailures`).
//! - [`filter`]: Lambda's event filter patterns (semantics.md §7).
//! - [`outcome`]: what one invocation produced, as the policies see it.
//! - [`backoff`]: exponential backoff with optional full jitter.
//! - [`rate`]: a token bucket for a target's records per second.
//! - [`scaling`]: how many tasks a mapping needs to drain its backlog in a target time.
//! - [`queue`]: Lambda's SQS semantics (semantics.md §3 and §12) as a decision per batch.
//! - [`stream`]: Lambda's stream semantics (semantics.md §2 and §12): retries, bisect, partial
//!   responses, record age, lanes and the shard checkpoint.

pub mod async_invoke;
pub mod backoff;
pub mod batcher;
pub mod breaker;
pub mod concurrency;
pub mod filter;
#[cfg(test)]
mod fuzz;
pub mod outcome;
pub mod queue;
pub mod rate;
pub mod response;
pub mod scaling;
pub mod stream;

pub use async_invoke::{AsyncAttempt, AsyncCondition, AsyncDecision, AsyncPolicy};
pub use backoff::Backoff;
pub use batcher::{BatchLimits, Batcher, MAX_INVOCATION_PAYLOAD_BYTES};
pub use breaker::{Admission, Breaker, BreakerSettings, BreakerState, FailureRatio, Transition};
pub use concurrency::{AdaptiveLimit, AdaptiveSettings, Signal};
pub use filter::{FilterSet, Pattern, PatternError};
pub use outcome::{ErrorClasses, ErrorInfo, Outcome};
pub use queue::{
    DeadLetterCondition, QueueDecision, QueueMessage, QueuePolicy, RecordDisposition, RetryDelay,
};
pub use rate::TokenBucket;
pub use response::{
    IdentifierKind, ItemFailures, ItemIdentifier, ResponseError, parse_batch_item_failures,
};
pub use stream::{
    Applied, ShardProgress, Step, StreamBatch, StreamDeadLetter, StreamItem, StreamPolicy, lane_of,
};
