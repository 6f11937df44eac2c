//! Kafka topics as Lambda delivers them (semantics.md §4): each message becomes the record AWS
//! puts in a Kafka event, batches become Lambda's Kafka event, and a partition's starting offset
//! follows Lambda's rule (a committed offset wins over the starting position).
//!
//! Guarantees:
//! - a record's JSON is exactly Lambda's: topic, partition, offset, timestamp (ms),
//!   timestampType, base64 key (absent when the message has none) and value, headers as arrays
//!   of signed bytes (Lambda's Java encoding); header keys are read as bytes, so a key that is not
//!   UTF-8 is passed on with U+FFFD in place of its bad bytes instead of stopping the consumer;
//! - the event groups records under `"<topic>-<partition>"` and keeps their order;
//! - the client settings sluice depends on (group, commits, offset reset) cannot be overridden by
//!   `properties`: [`reserved_property`] names the config key to use instead.

pub mod auth;
pub mod consumer;

use crate::record::{AckToken, Receipt, Record};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedMessage, Message, Timestamp};
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::time::Duration;

/// The cluster a mapping reads, as the event names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaCluster {
    pub bootstrap_servers: String,
    /// Set for MSK: the event then says `aws:kafka` and carries the cluster ARN.
    pub msk_cluster_arn: Option<String>,
}

impl KafkaCluster {
    pub fn event_source(&self) -> &'static str {
        if self.msk_cluster_arn.is_some() {
            "aws:kafka"
        } else {
            "SelfManagedKafka"
        }
    }
}

/// The name Lambda gives a partition in events and partial batch responses.
pub fn partition_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// A message's parts, independent of the client library.
#[derive(Debug, Clone)]
pub struct MessageParts<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch and the kind of timestamp, when the message has one.
    pub timestamp: Option<(i64, TimestampKind)>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Header keys are decoded lossily: Kafka allows any bytes, a JSON key must be text.
    pub headers: Vec<(Cow<'a, str>, Option<&'a [u8]>)>,
}

/// A message's headers, keys decoded lossily. rdkafka's own header accessors unwrap each key as
/// UTF-8 and so panic on a key that is not (a producer may write any bytes): the headers are read
/// through librdkafka's C API instead.
fn header_bytes<'a>(message: &'a BorrowedMessage<'_>) -> Vec<(Cow<'a, str>, Option<&'a [u8]>)> {
    use rdkafka::bindings as rd;
    let mut headers: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is a valid message for as long as `message` is borrowed, and the
    // headers it returns belong to the message (they are not freed here).
    let error = unsafe { rd::rd_kafka_message_headers(message.ptr(), &mut headers) };
    if error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return Vec::new();
    }
    // SAFETY: `headers` is the message's valid header list.
    let count = unsafe { rd::rd_kafka_header_cnt(headers) };
    let mut parts = Vec::with_capacity(count);
    for index in 0..count {
        let mut name: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `index < count`; the out pointers are valid for writes.
        let error = unsafe {
            rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size)
        };
        if error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka keeps the name NUL-terminated and the value `size` bytes long, both
        // owned by the message, which outlives `'a`.
        let key = unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        parts.push((key, value));
    }
    parts
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampKind {
    CreateTime,
    LogAppendTime,
}

impl MessageParts<'_> {
    /// The parts of a message read by rdkafka.
    pub fn of<'a>(message: &'a BorrowedMessage<'_>) -> MessageParts<'a> {
        let timestamp = match message.timestamp() {
            Timestamp::NotAvailable => None,
            Timestamp::CreateTime(ms) => Some((ms, TimestampKind::CreateTime)),
            Timestamp::LogAppendTime(ms) => Some((ms, TimestampKind::LogAppendTime)),
        };
        let headers = header_bytes(message);
        MessageParts {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp,
            key: message.key(),
            value: message.payload(),
            headers,
        }
    }

    /// Lambda's record fields but `value`; `timestamp` is -1 without one.
    fn fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("topic".into(), json!(self.topic));
        fields.insert("partition".into(), json!(self.partition));
        fields.insert("offset".into(), json!(self.offset));
        let (timestamp, kind) = match self.timestamp {
            Some((ms, TimestampKind::CreateTime)) => (ms, "CREATE_TIME"),
            Some((ms, TimestampKind::LogAppendTime)) => (ms, "LOG_APPEND_TIME"),
            None => (-1, "NO_TIMESTAMP_TYPE"),
        };
        fields.insert("timestamp".into(), json!(timestamp));
        fields.insert("timestampType".into(), json!(kind));
        if let Some(key) = self.key {
            fields.insert("key".into(), json!(BASE64.encode(key)));
        }
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(key, value)| {
                let bytes: Vec<i8> = value.unwrap_or_default().iter().map(|&b| b as i8).collect();
                json!({ key.as_ref(): bytes })
            })
            .collect();
        fields.insert("headers".into(), Value::Array(headers));
        fields
    }

    /// The record, as Lambda puts it in the event. `received_at` stands in for a missing
    /// timestamp in the record's age.
    pub fn to_record(&self, received_at: Duration) -> Record {
        let mut event = self.fields();
        if let Some(value) = self.value {
            event.insert("value".into(), json!(BASE64.encode(value)));
        }
        let arrived_at = self
            .timestamp
            .and_then(|(ms, _)| u64::try_from(ms).ok())
            .map_or(received_at, Duration::from_millis);
        let name = partition_name(self.topic, self.partition);
        let trace = self
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("traceparent"))
            .and_then(|(_, value)| std::str::from_utf8(value.unwrap_or_default()).ok())
            .and_then(crate::trace::TraceContext::parse_traceparent);
        Record::new(
            Receipt {
                id: self.offset.to_string(),
                ack: AckToken::Stream {
                    shard_id: name.clone(),
                },
            },
            Some(name),
            arrived_at,
            received_at,
            1,
            serde_json::value::to_raw_value(&Value::Object(event))
                .expect("a JSON object serializes"),
        )
        .with_trace(trace)
    }

    /// The record Lambda filters the message as: `value` parsed when it is JSON; when it is not,
    /// `value` is left out, so only patterns on the metadata can match.
    pub fn filter_view(&self) -> Value {
        let mut view = self.fields();
        if let Some(value) = self
            .value
            .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        {
            view.insert("value".into(), value);
        }
        Value::Object(view)
    }
}

/// [`MessageParts::filter_view`] for a record already in Lambda's shape (a dead letter's).
pub fn record_filter_view(record: &Value) -> Value {
    let mut view = record.clone();
    let decoded = record["value"]
        .as_str()
        .and_then(|value| BASE64.decode(value).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    if let Some(fields) = view.as_object_mut() {
        match decoded {
            Some(value) => fields.insert("value".into(), value),
            None => fields.remove("value"),
        };
    }
    view
}

/// The head of Lambda's Kafka event: everything but `records`.
fn event_head(cluster: &KafkaCluster) -> Map<String, Value> {
    let mut head = Map::new();
    head.insert("eventSource".into(), json!(cluster.event_source()));
    if let Some(arn) = &cluster.msk_cluster_arn {
        head.insert("eventSourceArn".into(), json!(arn));
    }
    head.insert("bootstrapServers".into(), json!(cluster.bootstrap_servers));
    head
}

/// Lambda's Kafka event for records already in Lambda's shape (dead letters), grouped under
/// `<topic>-<partition>` by each record's own fields, in the order they appear.
pub fn event_value<'a>(
    cluster: &KafkaCluster,
    records: impl IntoIterator<Item = &'a Value>,
) -> Value {
    let mut groups = Map::new();
    for record in records {
        let name = partition_name(
            record["topic"].as_str().unwrap_or_default(),
            record["partition"].as_i64().unwrap_or_default() as i32,
        );
        if let Value::Array(members) = groups.entry(name).or_insert_with(|| json!([])) {
            members.push(record.clone());
        }
    }
    let mut event = event_head(cluster);
    event.insert("records".into(), Value::Object(groups));
    Value::Object(event)
}

/// Lambda's Kafka event for `records`, grouped by partition in the order they first appear.
pub fn event<'a>(cluster: &KafkaCluster, records: impl IntoIterator<Item = &'a Record>) -> Vec<u8> {
    let mut groups: Vec<(&str, Vec<&Record>)> = Vec::new();
    for record in records {
        let name = record.ordering_key.as_deref().unwrap_or_default();
        match groups.iter_mut().find(|(group, _)| *group == name) {
            Some((_, members)) => members.push(record),
            None => groups.push((name, vec![record])),
        }
    }
    let head = serde_json::to_string(&Value::Object(event_head(cluster)))
        .expect("a JSON object serializes");
    let mut payload = Vec::with_capacity(1024);
    // The head without its closing brace, then the records spliced in unparsed.
    payload.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    payload.extend_from_slice(b",\"records\":{");
    for (index, (name, members)) in groups.iter().enumerate() {
        if index > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(
            serde_json::to_string(name)
                .expect("a string serializes")
                .as_bytes(),
        );
        payload.extend_from_slice(b":[");
        for (position, record) in members.iter().enumerate() {
            if position > 0 {
                payload.push(b',');
            }
            payload.extend_from_slice(record.event.get().as_bytes());
        }
        payload.push(b']');
    }
    payload.extend_from_slice(b"}}");
    payload
}

/// Where a partition starts when nothing was committed for the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    /// Milliseconds since the Unix epoch.
    AtTimestamp(i64),
}

/// Where a newly assigned partition is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    /// The group's committed offset.
    Committed(i64),
    /// The group's committed offset as the client finds it (looking it up here failed); without
    /// one, the starting position's reset rule applies.
    Stored,
    Beginning,
    End,
    At(i64),
}

/// Lambda's rule: a committed offset wins; else the starting position. `by_time` is the broker's
/// answer to offsets-for-times (the first offset at or after the timestamp; `None` or negative
/// when no message is that new, which starts at the end).
pub fn start_offset(
    committed: Option<i64>,
    position: StartPosition,
    by_time: Option<i64>,
) -> StartOffset {
    match (committed, position) {
        (Some(offset), _) if offset >= 0 => StartOffset::Committed(offset),
        (_, StartPosition::TrimHorizon) => StartOffset::Beginning,
        (_, StartPosition::Latest) => StartOffset::End,
        (_, StartPosition::AtTimestamp(_)) => match by_time {
            Some(offset) if offset >= 0 => StartOffset::At(offset),
            _ => StartOffset::End,
        },
    }
}

/// librdkafka settings sluice sets itself, and the config key that controls each instead.
pub fn reserved_property(name: &str) -> Option<&'static str> {
    match name {
        "bootstrap.servers" | "metadata.broker.list" => Some("use source.kafka.bootstrap_servers"),
        "group.id" => Some("use source.kafka.group_id"),
        "enable.auto.commit" | "enable.auto.offset.store" => {
            Some("sluice commits offsets itself, only for finished records")
        }
        "auto.offset.reset" => Some("use source.kafka.starting_position"),
        _ => None,
    }
}

/// The consumer's client settings: the user's `properties` first, then what sluice needs.
pub fn consumer_config(
    bootstrap_servers: &str,
    group_id: &str,
    position: StartPosition,
    properties: &[(String, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in properties {
        config.set(name, value);
    }
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match position {
                StartPosition::TrimHorizon => "earliest",
                // At-timestamp partitions get an explicit offset; the reset applies only when
                // that offset is out of range.
                StartPosition::Latest | StartPosition::AtTimestamp(_) => "latest",
            },
        );
    config
}

/// Properties that say how to reach and authenticate to the cluster; the failure topic's
/// producer takes these from the source's `properties`.
pub const CONNECTION_PREFIXES: &[&str] = &[
    "security.",
    "sasl.",
    "ssl.",
    "socket.",
    "client.",
    "broker.",
    "reconnect.",
    "api.version",
];

/// The producer's client settings for a failure topic on the same cluster.
pub fn producer_config(bootstrap_servers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in properties {
        // Only how to reach the cluster: consumer settings would be refused or warned about.
        if CONNECTION_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            config.set(name, value);
        }
    }
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    config
}

/// Checks that the cluster answers and every topic exists with partitions (`validate --connect`).
pub fn check_topics(
    bootstrap_servers: &str,
    properties: &[(String, String)],
    tokens: &auth::Tokens,
    topics: &[String],
    timeout: Duration,
) -> Result<(), String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer<auth::ClientAuth> = producer_config(bootstrap_servers, properties)
        .remove("enable.idempotence")
        .remove("acks")
        .create_with_context(auth::ClientAuth {
            tokens: tokens.clone(),
        })
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    auth::answer_token_request(&consumer);
    let mut problems = Vec::new();
    for topic in topics {
        match consumer.fetch_metadata(Some(topic), timeout) {
            Ok(metadata) => {
                let found = metadata.topics().iter().find(|t| t.name() == topic);
                match found {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
                    Some(t) => problems.push(format!(
                        "topic {topic:?}: {}",
                        t.error()
                            .map(|e| format!("{:?}", rdkafka::error::RDKafkaErrorCode::from(e)))
                            .unwrap_or_else(|| "has no partitions".into())
                    )),
                    None => problems.push(format!("topic {topic:?} does not exist")),
                }
            }
            Err(error) => problems.push(format!(
                "cannot reach the brokers at {bootstrap_servers} for topic {topic:?}: {error}"
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests;
