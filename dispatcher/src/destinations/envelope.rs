//! The dead-letter envelope: the AWS-compatible fields of Lambda's on-failure record plus a
//! `sluice` object with the full records, the last error and the attempt history, so a person can
//! read it and `sluice dlq replay` can re-drive it.
//!
//! The envelope is a user-visible contract, so it is one set of serde types ([`Envelope`] and
//! what it holds), written and read through the same types: a renamed field changes both sides
//! and the fixtures in `dispatcher/tests/fixtures/envelopes/` stop round-tripping. Reading is
//! lenient where people and other writers meet sluice: every field may be missing (Lambda's own
//! records have no `sluice`), an unknown source kind reads as [`SourceInfo::Other`], and fields
//! this version does not know are kept when an entry is written back. Where AWS distinguishes
//! JSON `null` from a missing key (`functionError`, semantics.md §13.4 and §13.5), so do the types.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use sluice_policies::{DeadLetterCondition, ErrorInfo};
use std::collections::BTreeMap;
use std::time::Duration;

/// Declares one object of the envelope: every field optional and read with `$read` (`"lenient"`,
/// or `"null_is_a_value"` where JSON `null` differs from a missing key), a missing field left out
/// when written, and fields this version does not know kept in `other`.
macro_rules! envelope_object {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ty => $read:literal, )*
        }
    ) => {
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = $read)]
                pub $field: Option<$ty>,
            )*
            /// Fields this version does not know, kept as they were.
            #[serde(flatten)]
            pub other: Map<String, Value>,
        }
    };
}

envelope_object! {
    /// A dead letter or an asynchronous invocation's destination record, as stored.
    ///
    /// Every field is optional and read leniently ([`lenient`]): a missing field stays missing
    /// when the envelope is written again, and one of another type (an older or foreign
    /// writer's) reads as missing without making the rest unreadable; `sluice dlq` rewrites
    /// stored envelopes by patching the stored document, so nothing it does not set is lost or
    /// invented.
    #[serde(rename_all = "camelCase")]
    pub struct Envelope {
        version: String => "lenient",
        timestamp: String => "lenient",
        request_context: RequestContext => "lenient",
        /// The event an asynchronous invocation received (semantics.md §13.5).
        request_payload: Value => "null_is_a_value",
        /// Missing for `RecordAgeExceeded` (semantics.md §13.4).
        response_context: ResponseContext => "lenient",
        /// The function's return value (JSON `null` when it returned nothing) or its error object.
        response_payload: Value => "null_is_a_value",
        #[serde(rename = "DDBStreamBatchInfo")]
        ddb_stream_batch_info: DdbStreamBatchInfo => "lenient",
        /// Lambda's `KinesisBatchInfo`: the same fields, arrival times with milliseconds.
        #[serde(rename = "KinesisBatchInfo")]
        kinesis_batch_info: DdbStreamBatchInfo => "lenient",
        #[serde(rename = "KafkaBatchInfo")]
        kafka_batch_info: KafkaBatchInfo => "lenient",
        /// The invocation event, kept by S3 and Kafka-topic destinations as Lambda's are.
        payload: Value => "null_is_a_value",
        sluice: SluiceInfo => "lenient",
    }
}

envelope_object! {
    #[serde(rename_all = "camelCase")]
    pub struct RequestContext {
        request_id: String => "lenient",
        function_arn: String => "lenient",
        condition: String => "lenient",
        approximate_invoke_count: u64 => "lenient",
    }
}

envelope_object! {
    #[serde(rename_all = "camelCase")]
    pub struct ResponseContext {
        status_code: u16 => "lenient",
        executed_version: String => "lenient",
        /// `Some("Unhandled")` when the function threw; `Some(null)` when it returned but its
        /// records counted as failed (a stream dead letter); missing on an asynchronous success.
        function_error: Value => "null_is_a_value",
    }
}

envelope_object! {
    /// Lambda's `DDBStreamBatchInfo`, and `KinesisBatchInfo` which has the same fields
    /// (semantics.md §13.4). The sequence numbers are `null` for an empty batch, as sluice has
    /// always written them.
    #[serde(rename_all = "camelCase")]
    pub struct DdbStreamBatchInfo {
        shard_id: String => "lenient",
        start_sequence_number: Value => "null_is_a_value",
        end_sequence_number: Value => "null_is_a_value",
        approximate_arrival_of_first_record: String => "lenient",
        approximate_arrival_of_last_record: String => "lenient",
        batch_size: u64 => "lenient",
        stream_arn: String => "lenient",
    }
}

envelope_object! {
    /// Lambda's `KafkaBatchInfo`: per-partition ranges (`recordsInfo`) for a batch, or one
    /// record's (`recordInfo`) in a Kafka-topic destination's message (semantics.md §4).
    /// `eventSourceArn` is `null` for a self-managed cluster.
    #[serde(rename_all = "camelCase")]
    pub struct KafkaBatchInfo {
        batch_size: u64 => "lenient",
        event_source_arn: Value => "null_is_a_value",
        bootstrap_servers: String => "lenient",
        payload_size: u64 => "lenient",
        records_info: BTreeMap<String, KafkaRecordsInfo> => "lenient",
        record_info: KafkaRecordInfo => "lenient",
    }
}

envelope_object! {
    #[serde(rename_all = "camelCase")]
    pub struct KafkaRecordsInfo {
        first_record_offset: Value => "null_is_a_value",
        last_record_offset: Value => "null_is_a_value",
        first_record_timestamp: String => "lenient",
        last_record_timestamp: String => "lenient",
    }
}

envelope_object! {
    pub struct KafkaRecordInfo {
        offset: String => "lenient",
        timestamp: String => "lenient",
    }
}

envelope_object! {
    /// The `sluice` object: what replay needs and what a person wants to know.
    pub struct SluiceInfo {
        mapping: String => "lenient",
        /// Which source kind, and the identities replay needs; kept as stored (a newer sluice's
        /// kind stays intact), written from [`SourceInfo`], read as [`SourceKind`].
        source: Value => "null_is_a_value",
        /// The records exactly as they were in the event; empty when cut to fit a queue. Kept as
        /// stored: a reader falls back to the kept event when it is not an array.
        records: Value => "null_is_a_value",
        error: ErrorSection => "lenient",
        attempts: u64 => "lenient",
        first_attempt_at: String => "lenient",
        last_attempt_at: String => "lenient",
        replay_count: u64 => "lenient",
        last_replay_at: String => "lenient",
        /// Set when the envelope was over SQS's limit without a spill bucket.
        cut: Cut => "lenient",
    }
}

envelope_object! {
    pub struct ErrorSection {
        #[serde(rename = "type")]
        error_type: String => "lenient",
        message: String => "lenient",
    }
}

envelope_object! {
    /// What was cut from an envelope too large for SQS, and why.
    pub struct Cut {
        reason: String => "lenient",
        /// The fields emptied or removed (`payload`, `sluice.records`, …).
        fields: Vec<String> => "lenient",
        /// How many records were in `sluice.records`.
        records: u64 => "lenient",
    }
}

/// `sluice.source`, read: which source kind, and the identities replay needs. Written from an
/// [`EnvelopeSource`]; a stored one is read as [`SourceKind`] with [`SluiceInfo::source_kind`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceInfo {
    Sqs {
        queue_url: String,
        queue_arn: String,
        message_ids: Vec<String>,
    },
    S3 {
        queue_url: String,
        queue_arn: String,
        message_ids: Vec<String>,
    },
    DynamodbStream {
        stream_arn: String,
        shard_id: String,
        sequence_numbers: Vec<String>,
    },
    Kinesis {
        stream_arn: String,
        shard_id: String,
        sequence_numbers: Vec<String>,
    },
    Kafka {
        bootstrap_servers: String,
        topic: String,
        partition: i32,
        offsets: Vec<i64>,
    },
    Invoke {
        function: String,
        request_id: String,
    },
    Schedule {
        schedule_arn: String,
        event_id: String,
    },
}

impl ErrorSection {
    pub fn of(error: &ErrorInfo) -> Self {
        Self {
            error_type: Some(error.error_type.clone()),
            message: Some(error.message.clone()),
            ..Self::default()
        }
    }
}

/// The kind a stored `sluice.source` names (only the kind: the identities may be missing in an
/// older or hand-written envelope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Sqs,
    S3,
    DynamodbStream,
    Kinesis,
    Kafka,
    Invoke,
    Schedule,
}

impl SluiceInfo {
    /// The kind `source` names, when it names one this version knows.
    pub fn source_kind(&self) -> Option<SourceKind> {
        let kind = self.source.as_ref()?.get("kind")?.clone();
        serde_json::from_value(kind).ok()
    }

    /// The records, when `records` is an array.
    pub fn record_list(&self) -> Option<&Vec<Value>> {
        self.records.as_ref()?.as_array()
    }
}

/// Reads a field as `T`, or as missing when it holds something else (an older or foreign
/// writer's value): a stored envelope stays readable for what it does hold.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

/// For `Option<Value>` fields where JSON `null` differs from a missing key: a present `null`
/// reads as `Some(Value::Null)` (serde would make it `None`).
fn null_is_a_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl Envelope {
    /// Reads a stored envelope: `None` only when the document is not a JSON object.
    pub fn parse(document: &Value) -> Option<Self> {
        document
            .is_object()
            .then(|| serde_json::from_value(document.clone()).ok())
            .flatten()
    }

    /// The document as stored.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an envelope serializes")
    }

    /// The records it holds: `sluice.records`, else those of the event it keeps (Lambda's own
    /// S3 and Kafka-topic destination records have only that).
    pub fn records(&self) -> Vec<Value> {
        if let Some(records) = self.sluice.as_ref().and_then(SluiceInfo::record_list) {
            return records.clone();
        }
        [&self.payload, &self.request_payload]
            .into_iter()
            .flatten()
            .find_map(records_of_event)
            .unwrap_or_default()
    }
}

/// Sets in `document` (a stored envelope) every field `patch` has, field by field, and leaves
/// every other field as it was: how a stored envelope is rewritten without losing or inventing
/// anything.
pub fn patch(document: &mut Value, patch: &Value) {
    let (Some(target), Some(fields)) = (document.as_object_mut(), patch.as_object()) else {
        return;
    };
    for (key, value) in fields {
        match (target.get_mut(key), value) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => self::patch(existing, value),
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The records of an invocation event: `Records` (SQS, S3, DynamoDB) or Kafka's `records` map.
pub fn records_of_event(event: &Value) -> Option<Vec<Value>> {
    if let Some(records) = event["Records"].as_array() {
        return Some(records.clone());
    }
    let partitions = event["records"].as_object()?;
    Some(
        partitions
            .values()
            .filter_map(Value::as_array)
            .flatten()
            .cloned()
            .collect(),
    )
}

/// Where the records came from.
#[derive(Debug, Clone)]
pub enum EnvelopeSource {
    Sqs {
        queue_url: String,
        queue_arn: String,
        message_ids: Vec<String>,
    },
    /// S3 event notifications, read from the queue a bucket notifies.
    S3 {
        queue_url: String,
        queue_arn: String,
        message_ids: Vec<String>,
    },
    DynamodbStream {
        stream_arn: String,
        shard_id: String,
        /// The dead-lettered records' sequence numbers, in stream order.
        sequence_numbers: Vec<String>,
        /// Approximate arrival of the first and last record, since the Unix epoch.
        first_arrival: Duration,
        last_arrival: Duration,
    },
    /// A Kinesis shard.
    Kinesis {
        stream_arn: String,
        shard_id: String,
        /// The dead-lettered records' sequence numbers, in shard order.
        sequence_numbers: Vec<String>,
        /// Approximate arrival of the first and last record, since the Unix epoch.
        first_arrival: Duration,
        last_arrival: Duration,
    },
    /// A Kafka partition.
    Kafka {
        cluster: sluice_sources::kafka::KafkaCluster,
        topic: String,
        partition: i32,
        /// The dead-lettered records' offsets, in partition order.
        offsets: Vec<i64>,
        /// Timestamps (ms since the epoch) of the first and last record.
        first_timestamp: i64,
        last_timestamp: i64,
    },
    /// An `Event` invocation through the Invoke API.
    Invoke {
        function: String,
        request_id: String,
    },
    /// A tick of a schedule.
    Schedule {
        schedule_arn: String,
        /// The tick's event id (the same for every attempt).
        event_id: String,
    },
}

impl EnvelopeSource {
    /// The stored `sluice.source` object.
    pub fn info_value(&self) -> Value {
        serde_json::to_value(self.info()).expect("a source serializes")
    }

    /// The `sluice.source` object: which source kind, and the identities replay needs.
    pub fn info(&self) -> SourceInfo {
        match self.clone() {
            EnvelopeSource::Sqs {
                queue_url,
                queue_arn,
                message_ids,
            } => SourceInfo::Sqs {
                queue_url,
                queue_arn,
                message_ids,
            },
            EnvelopeSource::S3 {
                queue_url,
                queue_arn,
                message_ids,
            } => SourceInfo::S3 {
                queue_url,
                queue_arn,
                message_ids,
            },
            EnvelopeSource::DynamodbStream {
                stream_arn,
                shard_id,
                sequence_numbers,
                ..
            } => SourceInfo::DynamodbStream {
                stream_arn,
                shard_id,
                sequence_numbers,
            },
            EnvelopeSource::Kinesis {
                stream_arn,
                shard_id,
                sequence_numbers,
                ..
            } => SourceInfo::Kinesis {
                stream_arn,
                shard_id,
                sequence_numbers,
            },
            EnvelopeSource::Kafka {
                cluster,
                topic,
                partition,
                offsets,
                ..
            } => SourceInfo::Kafka {
                bootstrap_servers: cluster.bootstrap_servers,
                topic,
                partition,
                offsets,
            },
            EnvelopeSource::Invoke {
                function,
                request_id,
            } => SourceInfo::Invoke {
                function,
                request_id,
            },
            EnvelopeSource::Schedule {
                schedule_arn,
                event_id,
            } => SourceInfo::Schedule {
                schedule_arn,
                event_id,
            },
        }
    }

    /// The part of an S3 key that says where the records came from: the shard, or the queue name.
    pub fn key_part(&self) -> &str {
        match self {
            EnvelopeSource::Sqs { queue_url, .. } | EnvelopeSource::S3 { queue_url, .. } => {
                queue_url.rsplit('/').next().unwrap_or(queue_url)
            }
            EnvelopeSource::DynamodbStream { shard_id, .. }
            | EnvelopeSource::Kinesis { shard_id, .. } => shard_id,
            EnvelopeSource::Kafka { topic, .. } => topic,
            EnvelopeSource::Invoke { .. } => "invoke",
            EnvelopeSource::Schedule { .. } => "schedule",
        }
    }
}

/// Everything a dead letter says.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub mapping: String,
    pub target: String,
    pub region: String,
    pub condition: DeadLetterCondition,
    /// Invocations that included these records.
    pub attempts: u32,
    pub error: ErrorInfo,
    /// `"Unhandled"` when the function threw; `None` when it returned but the records counted as
    /// failed (a partial or invalid response), as AWS records it.
    pub function_error: Option<String>,
    pub source: EnvelopeSource,
    /// The records exactly as they were in the event.
    pub records: Vec<Value>,
    /// Since the Unix epoch.
    pub first_attempt_at: Duration,
    pub last_attempt_at: Duration,
}

pub fn iso8601_millis(since_epoch: Duration) -> String {
    let datetime = time::OffsetDateTime::UNIX_EPOCH + since_epoch;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    datetime
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// ISO 8601 with whole seconds, as DynamoDB's batch info writes arrival times.
pub fn iso8601_seconds(since_epoch: Duration) -> String {
    let datetime = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    datetime
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub use sluice_sources::now_since_epoch;

/// A Kafka timestamp (ms since the epoch; negative when the message has none).
pub fn epoch_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or_default())
}

impl DeadLetter {
    /// The records as the function received them: Lambda's Kafka event for Kafka records,
    /// `{"Records": [...]}` for the others.
    pub fn event_payload(&self) -> Value {
        match &self.source {
            EnvelopeSource::Kafka { cluster, .. } => {
                sluice_sources::kafka::event_value(cluster, &self.records)
            }
            _ => json!({ "Records": self.records }),
        }
    }

    /// The envelope.
    pub fn envelope(&self, request_id: &str) -> Envelope {
        // A record that aged out has no response to describe (semantics.md §13.4).
        let response_context =
            (self.condition != DeadLetterCondition::RecordAgeExceeded).then(|| ResponseContext {
                status_code: Some(200),
                executed_version: Some("$LATEST".into()),
                function_error: Some(json!(self.function_error)),
                ..ResponseContext::default()
            });
        let stream_batch_info = |stream_arn: &String,
                                 shard_id: &String,
                                 sequence_numbers: &Vec<String>,
                                 arrivals: [String; 2]| {
            let [first, last] = arrivals;
            DdbStreamBatchInfo {
                shard_id: Some(shard_id.clone()),
                start_sequence_number: Some(json!(sequence_numbers.first())),
                end_sequence_number: Some(json!(sequence_numbers.last())),
                approximate_arrival_of_first_record: Some(first),
                approximate_arrival_of_last_record: Some(last),
                batch_size: Some(sequence_numbers.len() as u64),
                stream_arn: Some(stream_arn.clone()),
                ..DdbStreamBatchInfo::default()
            }
        };
        // DynamoDB writes arrival times in whole seconds, Kinesis with milliseconds (§13.4).
        let (ddb_stream_batch_info, kinesis_batch_info) = match &self.source {
            EnvelopeSource::DynamodbStream {
                stream_arn,
                shard_id,
                sequence_numbers,
                first_arrival,
                last_arrival,
            } => (
                Some(stream_batch_info(
                    stream_arn,
                    shard_id,
                    sequence_numbers,
                    [first_arrival, last_arrival].map(|at| iso8601_seconds(*at)),
                )),
                None,
            ),
            EnvelopeSource::Kinesis {
                stream_arn,
                shard_id,
                sequence_numbers,
                first_arrival,
                last_arrival,
            } => (
                None,
                Some(stream_batch_info(
                    stream_arn,
                    shard_id,
                    sequence_numbers,
                    [first_arrival, last_arrival].map(|at| iso8601_millis(*at)),
                )),
            ),
            _ => (None, None),
        };
        let kafka_batch_info = match &self.source {
            EnvelopeSource::Kafka {
                cluster,
                topic,
                partition,
                offsets,
                first_timestamp,
                last_timestamp,
            } => Some(KafkaBatchInfo {
                batch_size: Some(offsets.len() as u64),
                event_source_arn: Some(json!(cluster.msk_cluster_arn)),
                bootstrap_servers: Some(cluster.bootstrap_servers.clone()),
                payload_size: Some(self.event_payload().to_string().len() as u64),
                records_info: Some(BTreeMap::from([(
                    sluice_sources::kafka::partition_name(topic, *partition),
                    KafkaRecordsInfo {
                        first_record_offset: Some(json!(offsets.first().map(i64::to_string))),
                        last_record_offset: Some(json!(offsets.last().map(i64::to_string))),
                        first_record_timestamp: Some(iso8601_millis(epoch_millis(
                            *first_timestamp,
                        ))),
                        last_record_timestamp: Some(iso8601_millis(epoch_millis(*last_timestamp))),
                        ..KafkaRecordsInfo::default()
                    },
                )])),
                ..KafkaBatchInfo::default()
            }),
            _ => None,
        };
        Envelope {
            version: Some("1.0".into()),
            timestamp: Some(iso8601_millis(now_since_epoch())),
            request_context: Some(RequestContext {
                request_id: Some(request_id.to_owned()),
                // sluice targets are not Lambda functions; account 000000000000 marks a sluice target.
                function_arn: Some(format!(
                    "arn:aws:lambda:{}:000000000000:function:{}",
                    self.region, self.target
                )),
                condition: Some(self.condition.as_str().to_owned()),
                approximate_invoke_count: Some(u64::from(self.attempts)),
                ..RequestContext::default()
            }),
            response_context,
            ddb_stream_batch_info,
            kinesis_batch_info,
            kafka_batch_info,
            sluice: Some(SluiceInfo {
                mapping: Some(self.mapping.clone()),
                source: Some(self.source.info_value()),
                records: Some(Value::Array(self.records.clone())),
                error: Some(ErrorSection::of(&self.error)),
                attempts: Some(u64::from(self.attempts)),
                first_attempt_at: Some(iso8601_millis(self.first_attempt_at)),
                last_attempt_at: Some(iso8601_millis(self.last_attempt_at)),
                replay_count: Some(0),
                ..SluiceInfo::default()
            }),
            ..Envelope::default()
        }
    }

    /// The envelope document.
    pub fn to_json(&self, request_id: &str) -> Value {
        self.envelope(request_id).to_value()
    }
}

/// The record an asynchronous invocation sends to its destinations (semantics.md §13.5): the
/// AWS fields plus the `sluice` object.
#[derive(Debug, Clone)]
pub struct AsyncRecord {
    pub mapping: String,
    pub target: String,
    pub region: String,
    /// `Success`, `RetriesExhausted` or `EventAgeExceeded`.
    pub condition: &'static str,
    pub invoke_count: u32,
    pub request_id: String,
    /// The event as the function received it.
    pub request_payload: Value,
    /// The function's return value, or its error.
    pub response: Result<Option<Value>, ErrorInfo>,
    pub source: EnvelopeSource,
    pub first_attempt_at: Duration,
    pub last_attempt_at: Duration,
}

impl AsyncRecord {
    pub fn envelope(&self) -> Envelope {
        let failed = self.response.is_err();
        let response_payload = match &self.response {
            Ok(response) => response.clone().unwrap_or(Value::Null),
            Err(error) => json!({
                "errorMessage": error.message,
                "errorType": error.error_type,
                "requestId": self.request_id,
                "stackTrace": [],
            }),
        };
        Envelope {
            version: Some("1.0".into()),
            timestamp: Some(iso8601_millis(now_since_epoch())),
            request_context: Some(RequestContext {
                request_id: Some(self.request_id.clone()),
                // Qualified, as AWS writes it for asynchronous invocations.
                function_arn: Some(format!(
                    "arn:aws:lambda:{}:000000000000:function:{}:$LATEST",
                    self.region, self.target
                )),
                condition: Some(self.condition.to_owned()),
                approximate_invoke_count: Some(u64::from(self.invoke_count)),
                ..RequestContext::default()
            }),
            request_payload: Some(self.request_payload.clone()),
            response_context: Some(ResponseContext {
                status_code: Some(200),
                executed_version: Some("$LATEST".into()),
                function_error: failed.then(|| json!("Unhandled")),
                ..ResponseContext::default()
            }),
            response_payload: Some(response_payload),
            sluice: Some(SluiceInfo {
                mapping: Some(self.mapping.clone()),
                source: Some(self.source.info_value()),
                // S3 events carry records; an Invoke API event is the record itself.
                records: Some(
                    self.request_payload
                        .get("Records")
                        .cloned()
                        .unwrap_or_else(|| json!([self.request_payload])),
                ),
                error: self.response.as_ref().err().map(ErrorSection::of),
                attempts: Some(u64::from(self.invoke_count)),
                first_attempt_at: Some(iso8601_millis(self.first_attempt_at)),
                last_attempt_at: Some(iso8601_millis(self.last_attempt_at)),
                replay_count: Some(0),
                ..SluiceInfo::default()
            }),
            ..Envelope::default()
        }
    }

    pub fn to_json(&self) -> Value {
        self.envelope().to_value()
    }
}

#[cfg(test)]
mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601_utc_with_milliseconds() {
        assert_eq!(
            iso8601_millis(Duration::from_millis(1_573_691_886_021)),
            "2019-11-14T00:38:06.021Z"
        );
    }

    #[test]
    fn the_envelope_carries_aws_fields_and_the_full_records() {
        let dead_letter = DeadLetter {
            mapping: "orders".into(),
            target: "api".into(),
            region: "us-east-1".into(),
            condition: DeadLetterCondition::RetryAttemptsExhausted,
            attempts: 3,
            error: ErrorInfo::new("ValueError", "bad"),
            function_error: Some("Unhandled".into()),
            source: EnvelopeSource::Sqs {
                queue_url: "http://q".into(),
                queue_arn: "arn:aws:sqs:us-east-1:1:q".into(),
                message_ids: vec!["m1".into()],
            },
            records: vec![json!({"messageId": "m1", "body": "x"})],
            first_attempt_at: Duration::from_secs(1),
            last_attempt_at: Duration::from_secs(2),
        };
        let envelope = dead_letter.to_json("req-1");
        assert_eq!(
            envelope["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
        assert_eq!(envelope["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(envelope["responseContext"]["functionError"], "Unhandled");
        assert_eq!(envelope["sluice"]["records"][0]["body"], "x");
        assert_eq!(envelope["sluice"]["error"]["type"], "ValueError");
        assert_eq!(envelope["sluice"]["source"]["message_ids"][0], "m1");
    }

    #[test]
    fn a_stream_envelope_has_ddb_batch_info_and_no_response_when_aged_out() {
        let dead_letter = DeadLetter {
            mapping: "changes".into(),
            target: "api".into(),
            region: "us-east-1".into(),
            condition: DeadLetterCondition::RecordAgeExceeded,
            attempts: 1,
            error: ErrorInfo::new("RecordAgeExceeded", "too old"),
            function_error: None,
            source: EnvelopeSource::DynamodbStream {
                stream_arn: "arn:aws:dynamodb:us-east-1:1:table/t/stream/x".into(),
                shard_id: "shardId-1".into(),
                sequence_numbers: vec!["100".into(), "101".into()],
                first_arrival: Duration::from_millis(1_573_691_884_835),
                last_arrival: Duration::from_millis(1_573_691_885_580),
            },
            records: vec![json!({"eventID": "a"}), json!({"eventID": "b"})],
            first_attempt_at: Duration::from_secs(1),
            last_attempt_at: Duration::from_secs(2),
        };
        let envelope = dead_letter.to_json("req-2");
        assert!(envelope.get("responseContext").is_none());
        assert_eq!(
            envelope["DDBStreamBatchInfo"],
            json!({
                "shardId": "shardId-1",
                "startSequenceNumber": "100",
                "endSequenceNumber": "101",
                "approximateArrivalOfFirstRecord": "2019-11-14T00:38:04Z",
                "approximateArrivalOfLastRecord": "2019-11-14T00:38:05Z",
                "batchSize": 2,
                "streamArn": "arn:aws:dynamodb:us-east-1:1:table/t/stream/x"
            })
        );
        assert_eq!(envelope["sluice"]["records"][1]["eventID"], "b");
    }

    #[test]
    fn async_records_have_lambdas_destination_shape() {
        let record = |response| AsyncRecord {
            mapping: "uploads".into(),
            target: "thumbnailer".into(),
            region: "us-east-1".into(),
            condition: "RetriesExhausted",
            invoke_count: 3,
            request_id: "req-9".into(),
            request_payload: json!({"Records": [{"s3": {"object": {"key": "a"}}}]}),
            response,
            source: EnvelopeSource::S3 {
                queue_url: "http://q".into(),
                queue_arn: "arn:aws:sqs:us-east-1:1:q".into(),
                message_ids: vec!["m".into()],
            },
            first_attempt_at: Duration::from_secs(1),
            last_attempt_at: Duration::from_secs(2),
        };
        let failed = record(Err(ErrorInfo::new("ValueError", "bad image"))).to_json();
        assert_eq!(
            failed["requestContext"]["functionArn"],
            "arn:aws:lambda:us-east-1:000000000000:function:thumbnailer:$LATEST"
        );
        assert_eq!(failed["responseContext"]["functionError"], "Unhandled");
        assert_eq!(failed["responsePayload"]["errorType"], "ValueError");
        assert_eq!(failed["responsePayload"]["requestId"], "req-9");
        assert_eq!(
            failed["requestPayload"]["Records"][0]["s3"]["object"]["key"],
            "a"
        );
        let succeeded = record(Ok(Some(json!({"ok": true})))).to_json();
        assert!(succeeded["responseContext"].get("functionError").is_none());
        assert_eq!(succeeded["responsePayload"], json!({"ok": true}));
    }
}
