//! The unit that flows from a source through the policies to a target.

use serde_json::value::RawValue;
use std::time::Duration;

/// What a source needs to acknowledge a record later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckToken {
    /// SQS: the receipt handle of the receive that produced this record.
    Sqs { receipt_handle: String },
    /// A stream record: acknowledged by moving its shard's checkpoint past `Receipt::id`.
    Stream { shard_id: String },
}

/// A record's identity and acknowledgement token: all that deletes, visibility changes and
/// checkpoints need, cheap to keep while the record itself is being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The source's identity for the record: SQS message id, stream sequence number, Kafka offset.
    pub id: String,
    pub ack: AckToken,
}

/// One record, as received.
#[derive(Debug, Clone)]
pub struct Record {
    pub receipt: Receipt,
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
    /// Exactly the element AWS would put in the event's `Records` list, serialized once.
    pub event: Box<RawValue>,
    /// The trace the producer attached, continued by the invocation.
    pub trace: Option<crate::trace::TraceContext>,
    /// The element as the source had it, when `event` is a decoding of it (a Kafka value
    /// decoded with its schema): dead letters keep this, so a replay to the source writes the
    /// original bytes back.
    pub source_event: Option<Box<RawValue>>,
}

impl Record {
    /// Builds a record; its payload size is that of `event`.
    pub fn new(
        receipt: Receipt,
        ordering_key: Option<String>,
        arrived_at: Duration,
        first_received_at: Duration,
        attempt: u32,
        event: Box<RawValue>,
    ) -> Self {
        Self {
            size_bytes: event.get().len() + 1,
            receipt,
            ordering_key,
            arrived_at,
            first_received_at,
            attempt,
            event,
            trace: None,
            source_event: None,
        }
    }

    /// The record, continuing `trace`.
    pub fn with_trace(mut self, trace: Option<crate::trace::TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// The record with `event` in place of its element (a source's own rewrite, such as a
    /// decoded Kafka value); its size follows.
    pub fn with_event(mut self, event: Box<RawValue>) -> Self {
        self.size_bytes = event.get().len() + 1;
        self.event = event;
        self
    }

    /// The record with `event` decoded from what it was; the original stays as
    /// [`Record::source_event`] (for dead letters).
    pub fn decoded(mut self, event: Box<RawValue>) -> Self {
        let original = std::mem::replace(&mut self.event, event);
        self.size_bytes = self.event.get().len() + 1;
        self.source_event.get_or_insert(original);
        self
    }

    /// The element as the source had it (what a dead letter keeps).
    pub fn source_element(&self) -> &RawValue {
        self.source_event.as_deref().unwrap_or(&self.event)
    }

    pub fn id(&self) -> &str {
        &self.receipt.id
    }
}

/// The invocation event for `records`: `{"Records":[...]}`, built from the already serialized
/// records without parsing or re-serializing them.
pub fn records_event<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1024);
    payload.extend_from_slice(b"{\"Records\":[");
    for (index, record) in records.into_iter().enumerate() {
        if index > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(record.event.get().as_bytes());
    }
    payload.extend_from_slice(b"]}");
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        Record::new(
            Receipt {
                id: "m".into(),
                ack: AckToken::Sqs {
                    receipt_handle: "h".into(),
                },
            },
            None,
            Duration::ZERO,
            Duration::ZERO,
            1,
            RawValue::from_string(json.to_owned()).unwrap(),
        )
    }

    #[test]
    fn the_event_is_valid_json_holding_every_record_in_order() {
        let records = [record(r#"{"body":"a"}"#), record(r#"{"body":"b"}"#)];
        let event: serde_json::Value = serde_json::from_slice(&records_event(&records)).unwrap();
        assert_eq!(
            event,
            serde_json::json!({"Records": [{"body": "a"}, {"body": "b"}]})
        );
        let empty: serde_json::Value = serde_json::from_slice(&records_event([])).unwrap();
        assert_eq!(empty, serde_json::json!({"Records": []}));
    }

    #[test]
    fn the_size_counts_the_serialized_record_and_a_separator() {
        assert_eq!(record(r#"{"body":"a"}"#).size_bytes, 13);
    }
}
