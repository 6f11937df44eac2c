//! The unit that flows from a source through the policies to a target.

use serde_json::Value;
use std::time::Duration;

/// What a source needs to acknowledge a record later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckToken {
    /// SQS: the receipt handle of the receive that produced this record.
    Sqs { receipt_handle: String },
}

/// One record, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The source's identity for it: SQS message id, stream sequence number, Kafka offset.
    pub id: String,
    /// The key order is kept within: FIFO message group, partition key, Kafka partition + key.
    pub ordering_key: Option<String>,
    /// When the record first reached the source (SQS `SentTimestamp`), since the Unix epoch.
    pub arrived_at: Duration,
    /// When sluice first received it (SQS `ApproximateFirstReceiveTimestamp`), since the Unix epoch.
    pub first_received_at: Duration,
    /// Delivery attempts so far, this one included (SQS `ApproximateReceiveCount`).
    pub attempt: u32,
    /// The record's size in the invocation payload: its serialized JSON plus a separator.
    pub size_bytes: usize,
    /// Exactly the element AWS would put in the event's `Records` list.
    pub event: Value,
    pub ack: AckToken,
}

impl Record {
    /// Builds a record, computing its payload size from `event`.
    pub fn new(
        id: String,
        ordering_key: Option<String>,
        arrived_at: Duration,
        first_received_at: Duration,
        attempt: u32,
        event: Value,
        ack: AckToken,
    ) -> Self {
        let size_bytes = serde_json::to_vec(&event).map_or(0, |bytes| bytes.len()) + 1;
        Self {
            id,
            ordering_key,
            arrived_at,
            first_received_at,
            attempt,
            size_bytes,
            event,
            ack,
        }
    }
}
