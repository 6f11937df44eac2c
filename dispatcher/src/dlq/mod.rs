//! Dead-letter tooling (`sluice dlq peek` and `sluice dlq replay`): reads what a mapping
//! dead-lettered, wherever it went, as [`Entry`]s.
//!
//! Guarantees:
//! - reading never consumes: an SQS message is held while it is looked at and released after,
//!   an S3 object is only read, a Kafka offset is committed only by a replay;
//! - an entry is removed (deleted, or its offset committed) only after what it holds is done:
//!   replayed successfully, or written back as a new entry carrying what is left (the records that
//!   failed again or were not chosen), which is stored before the old one is removed;
//! - envelopes spilled to S3 (over SQS's 256 KB) are followed transparently, and their object is
//!   removed with their pointer.

pub mod command;
mod kafka;
mod replay;
mod s3;
mod sqs;

use crate::destinations::envelope::{Envelope, ErrorSection, SluiceInfo, SourceKind, patch};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("{operation} on {place} failed: {message}")]
    Store {
        place: String,
        operation: &'static str,
        message: String,
    },
    #[error(transparent)]
    Destination(#[from] crate::destinations::DestinationError),
    #[error("setting up the AWS clients")]
    Setup(#[from] crate::daemon::RunError),
    #[error("{queue_url}'s redrive policy names {arn:?}, which is not a queue ARN")]
    NotAQueueArn { queue_url: String, arn: String },
    #[error("mapping {mapping} has a Kafka failure topic but no Kafka source to read it on")]
    KafkaWithoutSource { mapping: String },
    #[error(
        "mapping {mapping} has no on_failure destination{}; there are no dead letters to read",
        if *.queue { " and its queue has no redrive policy" } else { "" }
    )]
    NoDeadLetters { mapping: String, queue: bool },
    #[error("the source queue of the redrive")]
    Source(#[from] sluice_sources::SourceError),
    #[error("a blocking task of the replay failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("creating the producer for the source topics")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("--to-source cannot write to a {kind} source; replay through the target instead")]
    NotWritable { kind: &'static str },
    #[error("mapping {mapping} names the unknown target {target}")]
    UnknownTarget { mapping: String, target: String },
    #[error("building the mapping's target")]
    Target(#[from] crate::targets::BuildError),
}

impl DlqError {
    fn store(place: &str, operation: &'static str, message: impl ToString) -> Self {
        DlqError::Store {
            place: place.to_owned(),
            operation,
            message: message.to_string(),
        }
    }
}

/// What kind of source the records of an entry came from; decides their event shape and how a
/// partial batch response names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Sqs,
    S3,
    DynamodbStream,
    Kinesis,
    Kafka,
    /// A schedule's tick: the record is the event itself.
    Schedule,
}

impl RecordKind {
    const ALL: [RecordKind; 6] = [
        RecordKind::Sqs,
        RecordKind::S3,
        RecordKind::DynamodbStream,
        RecordKind::Kinesis,
        RecordKind::Kafka,
        RecordKind::Schedule,
    ];

    /// The name envelopes use (`sluice.source.kind`), as `SourceConfig::kind` names sources.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Sqs => "sqs",
            RecordKind::S3 => "s3",
            RecordKind::DynamodbStream => "dynamodb_stream",
            RecordKind::Kinesis => "kinesis",
            RecordKind::Kafka => "kafka",
            RecordKind::Schedule => "schedule",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The kind of records a mapping's source produces.
    pub fn of(source: &crate::config::SourceConfig) -> Self {
        use crate::config::SourceConfig;
        // Exhaustive, so that a new source kind cannot compile without its record kind.
        match source {
            SourceConfig::Sqs(_) => RecordKind::Sqs,
            SourceConfig::S3(_) => RecordKind::S3,
            SourceConfig::DynamodbStream(_) => RecordKind::DynamodbStream,
            SourceConfig::Kinesis(_) => RecordKind::Kinesis,
            SourceConfig::Kafka(_) => RecordKind::Kafka,
            SourceConfig::Schedule(_) => RecordKind::Schedule,
        }
    }

    /// How a person finds the record at its source.
    pub fn identity(self, record: &Value) -> String {
        let text = |value: &Value| match value {
            Value::String(text) => text.clone(),
            Value::Null => "?".to_owned(),
            other => other.to_string(),
        };
        match self {
            RecordKind::Sqs => text(&record["messageId"]),
            RecordKind::S3 => format!(
                "s3://{}/{}",
                text(&record["s3"]["bucket"]["name"]),
                text(&record["s3"]["object"]["key"])
            ),
            RecordKind::DynamodbStream => text(&record["dynamodb"]["SequenceNumber"]),
            // The shard and sequence number, as Lambda's eventID has them.
            RecordKind::Kinesis => text(&record["eventID"]),
            RecordKind::Kafka => format!(
                "{}-{}@{}",
                text(&record["topic"]),
                text(&record["partition"]),
                text(&record["offset"])
            ),
            // The Scheduled Event's id and time (a constant `input` has neither).
            RecordKind::Schedule => format!("{}@{}", text(&record["id"]), text(&record["time"])),
        }
    }
}

/// One dead letter: an envelope, or a raw message an SQS redrive policy moved.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where the entry is within its store: a message id, an object key, `topic-partition@offset`.
    pub id: String,
    /// When it was dead-lettered (ISO 8601), when known.
    pub at: Option<String>,
    pub condition: String,
    pub attempts: u64,
    pub error_type: String,
    pub error_message: String,
    pub replay_count: u64,
    pub kind: RecordKind,
    /// The records exactly as the function received them.
    pub records: Vec<Value>,
    /// The envelope as stored; `None` for a raw message.
    pub envelope: Option<Value>,
    /// Why the entry cannot be replayed (unreadable body, pointer to a missing object).
    pub unreadable: Option<String>,
    pub(crate) handle: Handle,
}

/// How a store finds the entry again to delete or replace it.
#[derive(Debug, Clone)]
pub(crate) enum Handle {
    Sqs {
        receipt: sluice_sources::record::Receipt,
        /// The message as received, for raw messages written back.
        message: Value,
        spilled: Option<crate::destinations::sqs::SpillPointer>,
    },
    S3 {
        key: String,
    },
    Kafka {
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        /// The message as stored, written again when the entry must stay.
        payload: Option<Vec<u8>>,
    },
}

impl Entry {
    /// Reads an envelope (through [`Envelope`]); `fallback` is the kind to assume when it names
    /// none.
    pub(crate) fn from_envelope(
        id: String,
        document: Value,
        fallback: RecordKind,
        handle: Handle,
    ) -> Self {
        let Some(envelope) = Envelope::parse(&document) else {
            return Self::unreadable(
                id,
                fallback,
                "the entry is not a JSON object".to_owned(),
                handle,
            );
        };
        let sluice = envelope.sluice.clone().unwrap_or_default();
        let kind = match sluice.source_kind() {
            Some(SourceKind::Sqs) => RecordKind::Sqs,
            Some(SourceKind::S3) => RecordKind::S3,
            Some(SourceKind::DynamodbStream) => RecordKind::DynamodbStream,
            Some(SourceKind::Kinesis) => RecordKind::Kinesis,
            Some(SourceKind::Kafka) => RecordKind::Kafka,
            Some(SourceKind::Schedule) => RecordKind::Schedule,
            Some(SourceKind::Invoke) | None => fallback,
        };
        let records = envelope.records();
        let unreadable = records
            .is_empty()
            .then(|| "the envelope holds no records (no sluice.records, no payload)".to_owned());
        let context = envelope.request_context.clone().unwrap_or_default();
        let error = sluice.error.clone().unwrap_or_default();
        Self {
            id,
            at: envelope.timestamp.clone(),
            condition: context.condition.unwrap_or_default(),
            attempts: context
                .approximate_invoke_count
                .or(sluice.attempts)
                .unwrap_or_default(),
            error_type: error.error_type.unwrap_or_default(),
            error_message: error.message.unwrap_or_default(),
            replay_count: sluice.replay_count.unwrap_or_default(),
            kind,
            records,
            envelope: Some(document),
            unreadable,
            handle,
        }
    }

    /// An entry that cannot be replayed, and why; it stays where it is.
    pub(crate) fn unreadable(id: String, kind: RecordKind, reason: String, handle: Handle) -> Self {
        Self {
            id,
            at: None,
            condition: String::new(),
            attempts: 0,
            error_type: String::new(),
            error_message: String::new(),
            replay_count: 0,
            kind,
            records: Vec::new(),
            envelope: None,
            unreadable: Some(reason),
            handle,
        }
    }

    /// The identities of its records, for a person.
    pub fn record_ids(&self) -> Vec<String> {
        self.records.iter().map(|r| self.kind.identity(r)).collect()
    }

    /// What `--json` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "at": self.at,
            "condition": self.condition,
            "attempts": self.attempts,
            "replay_count": self.replay_count,
            "error": { "type": self.error_type, "message": self.error_message },
            "source_kind": self.kind.as_str(),
            "raw": self.envelope.is_none(),
            "unreadable": self.unreadable,
            "record_ids": self.record_ids(),
            "records": self.records,
        })
    }

    /// The envelope to store instead of this one: `records` left, the replay's error when it
    /// failed again, and the replay count raised when `failed`. An event kept beside the records
    /// (`payload`, as Lambda's S3 destination keeps it) is cut to the same records. The stored
    /// document is patched: every field this does not set stays as it was.
    pub(crate) fn rewritten(
        &self,
        records: Vec<Value>,
        failure: Option<&sluice_policies::ErrorInfo>,
    ) -> Value {
        let mut document = self.envelope.clone().unwrap_or_else(|| json!({}));
        let keeps_event = document["payload"].get("Records").is_some();
        let changes = Envelope {
            payload: keeps_event.then(|| json!({ "Records": records })),
            sluice: Some(SluiceInfo {
                records: Some(Value::Array(records)),
                replay_count: Some(self.replay_count + u64::from(failure.is_some())),
                error: failure.map(ErrorSection::of),
                last_replay_at: failure.map(|_| {
                    crate::destinations::envelope::iso8601_millis(
                        crate::destinations::envelope::now_since_epoch(),
                    )
                }),
                ..SluiceInfo::default()
            }),
            ..Envelope::default()
        };
        if !document["sluice"].is_object()
            && let Some(fields) = document.as_object_mut()
        {
            fields.insert("sluice".into(), json!({}));
        }
        patch(&mut document, &changes.to_value());
        document
    }
}

/// A place dead letters are kept. Entries come out held (no other reader sees them) until they
/// are released, deleted or replaced.
#[async_trait]
pub(crate) trait Store: Send {
    /// The queue URL, `s3://bucket/prefix` or `kafka://topic`.
    fn describe(&self) -> &str;

    /// Up to `max` entries not returned before; empty once every entry has been seen.
    async fn next(&mut self, max: usize) -> Result<Vec<Entry>, DlqError>;

    /// Leaves entries where they are, visible to other readers again.
    async fn release(&mut self, entries: &[Entry]) -> Result<(), DlqError>;

    /// Removes an entry whose records are done.
    async fn delete(&mut self, entry: &Entry) -> Result<(), DlqError>;

    /// Stores `envelope` as a new entry in place of `entry` (stored first, then `entry` removed).
    async fn replace(&mut self, entry: &Entry, envelope: Value) -> Result<(), DlqError>;

    /// Leaves an entry that was not replayed where later runs find it.
    async fn keep(&mut self, entry: &Entry) -> Result<(), DlqError> {
        self.release(std::slice::from_ref(entry)).await
    }

    /// Keeps the entries it holds from being seen by others for a while longer (called before
    /// each entry a replay works on, since handling one can take long).
    async fn refresh(&mut self) -> Result<(), DlqError> {
        Ok(())
    }

    /// Makes removals durable (Kafka commits offsets); called at the end and after interrupts.
    async fn finish(&mut self) -> Result<(), DlqError> {
        Ok(())
    }
}

/// How long a replay holds an SQS entry; released at once when the replay ends.
pub(crate) const HOLD: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Value {
        json!({
            "version": "1.0",
            "timestamp": "2026-12-01T10:00:00.000Z",
            "requestContext": { "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 3 },
            "sluice": {
                "mapping": "items",
                "source": { "kind": "dynamodb_stream" },
                "records": [
                    { "dynamodb": { "SequenceNumber": "100" } },
                    { "dynamodb": { "SequenceNumber": "101" } }
                ],
                "error": { "type": "Boom", "message": "failed" },
                "replay_count": 1
            }
        })
    }

    fn entry() -> Entry {
        Entry::from_envelope(
            "key".into(),
            envelope(),
            RecordKind::Sqs,
            Handle::S3 { key: "key".into() },
        )
    }

    #[test]
    fn record_kinds_use_the_names_of_source_kinds() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(RecordKind::parse("invoke"), None);
        use crate::config::testing::{BASE, KAFKA, S3, STREAM, parse_text};
        for document in [BASE, KAFKA, S3, STREAM] {
            let source = &parse_text(document).unwrap().mappings[0].source;
            assert_eq!(RecordKind::of(source).as_str(), source.kind());
        }
    }

    #[test]
    fn an_envelope_says_when_why_and_which_records() {
        let entry = entry();
        assert_eq!(entry.kind, RecordKind::DynamodbStream);
        assert_eq!(entry.condition, "RetryAttemptsExhausted");
        assert_eq!(entry.attempts, 3);
        assert_eq!(entry.replay_count, 1);
        assert_eq!(entry.at.as_deref(), Some("2026-12-01T10:00:00.000Z"));
        assert_eq!(entry.record_ids(), ["100", "101"]);
        assert!(entry.unreadable.is_none());
    }

    #[test]
    fn a_rewritten_envelope_holds_what_is_left_and_counts_only_failed_replays() {
        let entry = entry();
        let left = vec![entry.records[1].clone()];
        let again = sluice_policies::ErrorInfo::new("Again", "still failing");
        let failed = entry.rewritten(left.clone(), Some(&again));
        assert_eq!(failed["sluice"]["records"], json!(left));
        assert_eq!(failed["sluice"]["replay_count"], 2);
        assert_eq!(failed["sluice"]["error"]["type"], "Again");
        assert_eq!(
            failed["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
        // Records not chosen by a filter stay without counting a replay.
        let skipped = entry.rewritten(left, None);
        assert_eq!(skipped["sluice"]["replay_count"], 1);
        assert_eq!(skipped["sluice"]["error"]["type"], "Boom");
    }

    #[test]
    fn a_topic_message_without_sluice_records_is_read_from_its_payload() {
        let message = json!({
            "requestContext": { "condition": "RetriesExhausted", "approximateInvokeCount": 1 },
            "payload": { "eventSource": "SelfManagedKafka",
                         "records": { "t-0": [ { "topic": "t", "partition": 0, "offset": 7 } ] } }
        });
        let entry = Entry::from_envelope(
            "t-0@3".into(),
            message,
            RecordKind::Kafka,
            Handle::S3 { key: String::new() },
        );
        assert_eq!(entry.record_ids(), ["t-0@7"]);
    }

    #[test]
    fn rates_and_filters_are_checked_before_anything_runs() {
        assert_eq!(command::parse_rate("50/s"), Ok(50));
        assert_eq!(command::parse_rate("7"), Ok(7));
        assert!(command::parse_rate("0/s").is_err());
        assert!(command::parse_rate("fast").is_err());
        assert!(command::parse_filter(r#"{"body": {"kind": ["order"]}}"#).is_ok());
        assert!(command::parse_filter("{not json").is_err());
        assert!(command::parse_filter(r#"{"body": {"n": [{"numeric": [">"]}]}}"#).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_never_starts_more_than_its_rate_in_a_window() {
        let mut rate = replay::RateLimit::new(3);
        let started = tokio::time::Instant::now();
        let mut starts = Vec::new();
        for batch in [2, 2, 1, 3, 1] {
            rate.acquire(batch).await;
            starts.push((tokio::time::Instant::now() - started, batch));
        }
        for (at, _) in &starts {
            let in_window: usize = starts
                .iter()
                .filter(|(other, _)| *other >= *at && *other - *at < Duration::from_secs(1))
                .map(|(_, n)| n)
                .sum();
            assert!(in_window <= 3, "{starts:?}");
        }
    }
}
