//! Re-driving dead-lettered records: through the mapping's target under the mapping's policy, or
//! back to the mapping's source (`--to-source`).
//!
//! The policy is the stream policy the daemon runs (retries with the mapping's backoff, bisect,
//! partial batch responses, non-retryable errors), with two changes for a tool a person waits
//! on: records never expire by age (they are old by definition), and unlimited retries (-1)
//! become 2. SQS mappings retry up to `max_receive_count` receives (default 3 attempts).

use super::RecordKind;
use crate::config::MappingConfig;
use crate::runtime::invoker::Invoker;
use crate::runtime::ordered::{Control, Driven, Ended, drive};
use crate::targets::Invocation;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use sluice_policies::{
    Applied, ErrorInfo, FilterSet, ItemIdentifier, Outcome, StreamBatch, StreamDeadLetter,
    StreamItem, StreamPolicy,
};
use sluice_sources::kafka::KafkaCluster;
use std::collections::VecDeque;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
// Tokio's clock, so a paused test clock drives the limiter too.
use tokio::time::Instant;

/// Retries a replay makes where the mapping retries without limit.
const UNLIMITED_RETRIES_IN_REPLAY: u32 = 2;
/// Invocations the target may refuse in a row (throttled, unavailable) before the records count
/// as failed for this replay.
const MAX_REFUSALS: u32 = 5;

/// What became of an entry's records.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Indexes of the records that failed again.
    pub failed: Vec<usize>,
    /// The last error, when any record failed.
    pub error: Option<ErrorInfo>,
}

/// At most `per_second` records start in any window of a second (with a margin for the
/// network between sluice and the handler).
pub(crate) struct RateLimit {
    per_second: usize,
    started: VecDeque<(Instant, usize)>,
}

const RATE_WINDOW: Duration = Duration::from_millis(1_100);

impl RateLimit {
    pub(crate) fn new(per_second: usize) -> Self {
        Self {
            per_second: per_second.max(1),
            started: VecDeque::new(),
        }
    }

    pub(crate) fn per_second(&self) -> usize {
        self.per_second
    }

    /// Waits until `records` more may start, and counts them.
    pub(crate) async fn acquire(&mut self, records: usize) {
        let records = records.min(self.per_second);
        loop {
            let now = Instant::now();
            while self
                .started
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
            {
                self.started.pop_front();
            }
            let in_window: usize = self.started.iter().map(|(_, n)| n).sum();
            if in_window + records <= self.per_second {
                self.started.push_back((now, records));
                return;
            }
            let oldest = self.started.front().map_or(now, |(at, _)| *at);
            tokio::time::sleep((oldest + RATE_WINDOW).saturating_duration_since(now)).await;
        }
    }
}

/// The policy a replay of `mapping`'s records runs under: the mapping's own, as an ordered
/// stream policy, except that records never age out and no limit is endless.
pub(crate) fn replay_policy(mapping: &MappingConfig) -> StreamPolicy {
    let mut policy = mapping
        .source
        .rules()
        .replay_policy(mapping.on_failure.is_some());
    policy.max_record_age = None;
    policy.max_retry_attempts = Some(
        policy
            .max_retry_attempts
            .unwrap_or(UNLIMITED_RETRIES_IN_REPLAY),
    );
    policy
}

/// The largest batch a replay invokes.
pub(crate) fn batch_size(mapping: &MappingConfig) -> usize {
    mapping.source.rules().replay_batch_size().max(1)
}

/// Whether a record passes `--filter`, seen as the mapping's filters see it.
pub(crate) fn passes(filter: &FilterSet, kind: RecordKind, record: &Value) -> bool {
    match kind {
        RecordKind::Sqs => filter.passes_sqs(record),
        RecordKind::Kafka => filter.passes(&sluice_sources::kafka::record_filter_view(record)),
        RecordKind::Kinesis => {
            let (view, data_is_json) = sluice_sources::kinesis::event::filter_view(record);
            filter.passes_by_format(&view, "data", data_is_json)
        }
        RecordKind::S3 | RecordKind::DynamodbStream | RecordKind::Schedule => filter.passes(record),
    }
}

fn identifier(kind: RecordKind, record: &Value) -> ItemIdentifier {
    let text = |value: &Value| {
        value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned)
    };
    match kind {
        RecordKind::Sqs => ItemIdentifier::Text(text(&record["messageId"])),
        RecordKind::DynamodbStream => {
            ItemIdentifier::Text(text(&record["dynamodb"]["SequenceNumber"]))
        }
        // A user record of a KPL aggregate is `<sequenceNumber>:<subSequenceNumber>`.
        RecordKind::Kinesis => {
            ItemIdentifier::Text(match &record["kinesis"]["subSequenceNumber"] {
                Value::Null => text(&record["kinesis"]["sequenceNumber"]),
                sub => format!("{}:{sub}", text(&record["kinesis"]["sequenceNumber"])),
            })
        }
        RecordKind::S3 => ItemIdentifier::Text(text(&record["s3"]["object"]["key"])),
        RecordKind::Schedule => ItemIdentifier::Text(text(&record["id"])),
        RecordKind::Kafka => ItemIdentifier::KafkaOffset {
            partition: sluice_sources::kafka::partition_name(
                record["topic"].as_str().unwrap_or_default(),
                record["partition"].as_i64().unwrap_or_default() as i32,
            ),
            offset: record["offset"].as_i64().unwrap_or(-1),
        },
    }
}

/// The invocation event for `records`, as the source would have built it.
fn event(kind: RecordKind, cluster: Option<&KafkaCluster>, records: &[&Value]) -> Value {
    match (kind, cluster) {
        (RecordKind::Kafka, Some(cluster)) => {
            sluice_sources::kafka::event_value(cluster, records.iter().copied())
        }
        // A tick's event is its record (batches of one).
        (RecordKind::Schedule, _) if records.len() == 1 => records[0].clone(),
        _ => json!({ "Records": records }),
    }
}

/// Invokes targets for replayed records.
pub(crate) struct Replayer {
    pub mapping: String,
    pub invoker: Invoker,
    pub policy: StreamPolicy,
    pub batch_size: usize,
    pub cluster: Option<KafkaCluster>,
    pub rate: Option<RateLimit>,
}

impl Replayer {
    /// Runs `records` to their end under the policy; returns which failed.
    pub(crate) async fn replay(&mut self, kind: RecordKind, records: &[Value]) -> Replayed {
        let mut result = Replayed::default();
        let chunk_size = match &self.rate {
            Some(rate) => self.batch_size.min(rate.per_second()),
            None => self.batch_size,
        };
        for (chunk_index, chunk) in records.chunks(chunk_size).enumerate() {
            let base = chunk_index * chunk_size;
            let items = chunk
                .iter()
                .map(|record| StreamItem {
                    identifier: identifier(kind, record),
                    arrived_at: Duration::ZERO,
                })
                .collect();
            let mut state = StreamBatch::new(self.policy.clone(), items);
            let mut driven = ReplayChunk {
                mapping: &self.mapping,
                kind,
                cluster: self.cluster.as_ref(),
                rate: self.rate.as_mut(),
                chunk,
                base,
                refusals: 0,
                result: &mut result,
            };
            // A replay has nothing to stop it but its own end, and nothing to checkpoint.
            let ended = drive(
                &self.invoker,
                &mut state,
                &mut driven,
                &CancellationToken::new(),
            )
            .await;
            if ended == Ended::GaveUp {
                result.failed.extend(
                    (0..chunk.len())
                        .filter(|&i| !state.is_finished(i))
                        .map(|i| base + i),
                );
            }
        }
        result.failed.sort_unstable();
        result
    }
}

/// One chunk of a replay, as the ordered-batch driver sees it.
struct ReplayChunk<'a> {
    mapping: &'a str,
    kind: RecordKind,
    cluster: Option<&'a KafkaCluster>,
    rate: Option<&'a mut RateLimit>,
    chunk: &'a [Value],
    /// The chunk's first index in the entry.
    base: usize,
    /// Invocations the target refused in a row.
    refusals: u32,
    result: &'a mut Replayed,
}

#[async_trait]
impl Driven for ReplayChunk<'_> {
    fn invocation(&self, chosen: &[usize]) -> Invocation {
        let subset: Vec<&Value> = chosen.iter().map(|&i| &self.chunk[i]).collect();
        let payload = event(self.kind, self.cluster, &subset).to_string();
        Invocation::new(self.mapping, payload.into_bytes())
    }

    async fn before_invoke(&mut self, chosen: &[usize]) {
        if let Some(rate) = self.rate.as_mut() {
            rate.acquire(chosen.len()).await;
        }
    }

    fn invoked(
        &mut self,
        invocation: &Invocation,
        _: &Outcome,
        chosen: &[usize],
        _: u32,
        applied: Applied,
    ) -> Control {
        match applied {
            Applied::Failed { error, .. } => {
                self.refusals = 0;
                tracing::warn!(mapping = %self.mapping, request_id = %invocation.request_id, records = chosen.len(), error_type = %error.error_type, error = %error.message, "replayed records failed");
                self.result.error = Some(error);
            }
            Applied::NotRun { error } => {
                self.refusals += 1;
                tracing::warn!(mapping = %self.mapping, request_id = %invocation.request_id, error_type = %error.error_type, error = %error.message, "the target did not run the replayed records");
                self.result.error = Some(error);
                if self.refusals >= MAX_REFUSALS {
                    return Control::GiveUp;
                }
            }
            Applied::Succeeded | Applied::Partial { .. } => self.refusals = 0,
        }
        Control::Continue
    }

    async fn dead_letter(&mut self, dead_letter: &StreamDeadLetter) {
        let base = self.base;
        self.result
            .failed
            .extend(dead_letter.records.iter().map(|&i| base + i));
        if let Some(error) = &dead_letter.error {
            self.result.error = Some(error.clone());
        }
    }

    fn progress(&mut self, _: &StreamBatch) {}
}

/// Sends records back to the mapping's source (`--to-source`).
pub(crate) enum SourceWriter {
    Sqs {
        client: aws_sdk_sqs::Client,
        queue_url: String,
        fifo: bool,
    },
    Kafka {
        producer: rdkafka::producer::FutureProducer<sluice_sources::kafka::auth::ClientAuth>,
    },
    /// PutRecord, one record at a time so each partition key keeps its order.
    Kinesis {
        client: aws_sdk_kinesis::Client,
        stream_name: Option<String>,
        stream_arn: Option<String>,
    },
}

impl SourceWriter {
    /// Sends `records`; returns the indexes that could not be sent and the last error.
    pub(crate) async fn send(&self, kind: RecordKind, records: &[Value]) -> Replayed {
        let mut result = Replayed::default();
        let mut fail = |index: usize, message: String| {
            result.failed.push(index);
            result.error = Some(ErrorInfo::new("SendFailed", message));
        };
        match self {
            SourceWriter::Sqs {
                client,
                queue_url,
                fifo,
            } => {
                if kind == RecordKind::S3 {
                    // One notification holding the records, as S3 sent them.
                    let body = json!({ "Records": records }).to_string();
                    if let Err(error) = super::sqs::send_message(
                        client,
                        queue_url,
                        *fifo,
                        body,
                        Default::default(),
                        &Value::Null,
                    )
                    .await
                    {
                        (0..records.len()).for_each(|i| fail(i, error.clone()));
                    }
                    return result;
                }
                for (index, record) in records.iter().enumerate() {
                    let body = record["body"].as_str().unwrap_or_default().to_owned();
                    let attributes = super::sqs::message_attributes(record);
                    if let Err(error) =
                        super::sqs::send_message(client, queue_url, *fifo, body, attributes, record)
                            .await
                    {
                        fail(index, error);
                    }
                }
            }
            SourceWriter::Kinesis {
                client,
                stream_name,
                stream_arn,
            } => {
                // A key whose record failed sends nothing more: a later replay would otherwise
                // write the failed record after newer ones of its key.
                let mut failed_keys = std::collections::HashSet::new();
                for (index, record) in records.iter().enumerate() {
                    let key = record["kinesis"]["partitionKey"].as_str();
                    if key.is_some_and(|key| failed_keys.contains(key)) {
                        fail(
                            index,
                            "an earlier record of its partition key was not written; it waits, so the key keeps its order".to_owned(),
                        );
                        continue;
                    }
                    let data = record["kinesis"]["data"]
                        .as_str()
                        .and_then(|text| BASE64.decode(text).ok());
                    let (Some(data), Some(key)) =
                        (data, record["kinesis"]["partitionKey"].as_str())
                    else {
                        fail(
                            index,
                            "the record has no kinesis.data (base64) or kinesis.partitionKey"
                                .to_owned(),
                        );
                        continue;
                    };
                    let sent = client
                        .put_record()
                        .set_stream_name(stream_name.clone())
                        .set_stream_arn(stream_arn.clone())
                        .partition_key(key)
                        .data(aws_sdk_kinesis::primitives::Blob::new(data))
                        .send()
                        .await;
                    if let Err(error) = sent {
                        failed_keys.insert(key.to_owned());
                        fail(
                            index,
                            format!(
                                "PutRecord: {}",
                                aws_sdk_kinesis::error::DisplayErrorContext(&error)
                            ),
                        );
                    }
                }
            }
            SourceWriter::Kafka { producer } => {
                use rdkafka::message::{Header, OwnedHeaders};
                for (index, record) in records.iter().enumerate() {
                    let decode = |field: &str| {
                        record[field]
                            .as_str()
                            .and_then(|text| BASE64.decode(text).ok())
                    };
                    let (key, value) = (decode("key"), decode("value"));
                    let topic = record["topic"].as_str().unwrap_or_default();
                    // Lambda writes each header as {name: [signed bytes]}.
                    let mut headers = OwnedHeaders::new();
                    for header in record["headers"].as_array().into_iter().flatten() {
                        for (name, bytes) in header.as_object().into_iter().flatten() {
                            let bytes: Vec<u8> = bytes
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_i64)
                                .map(|b| b as u8)
                                .collect();
                            headers = headers.insert(Header {
                                key: name,
                                value: Some(&bytes),
                            });
                        }
                    }
                    let mut message: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
                        rdkafka::producer::FutureRecord::to(topic).headers(headers);
                    if let Some(partition) = record["partition"].as_i64() {
                        message = message.partition(partition as i32);
                    }
                    if let Some(key) = key.as_deref() {
                        message = message.key(key);
                    }
                    if let Some(value) = value.as_deref() {
                        message = message.payload(value);
                    }
                    if let Err((error, _)) = producer.send(message, Duration::from_secs(30)).await {
                        fail(index, format!("producing to {topic} failed: {error}"));
                    }
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(source: &str, retry: &str) -> MappingConfig {
        let text = format!(
            r#"
version: 1
targets:
  api:
    http: {{ url: "http://127.0.0.1:8080/events" }}
mappings:
  - name: m
    target: api
    source: {source}
    retry: {retry}
    report_batch_item_failures: true
    on_failure: {{ sqs: {{ queue_url: "http://q/dead" }} }}
"#
        );
        crate::config::parse("test.yaml", &text, Default::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .mappings
            .remove(0)
    }

    // semantics.md §2 (retries, record age, bisect) and §3 (receive count): a replay runs the
    // mapping's own policy, but records never age out and -1 does not retry forever.
    #[test]
    fn a_replay_runs_the_mappings_policy_without_record_age_or_endless_retries() {
        let stream = replay_policy(&mapping(
            "{ dynamodb_stream: { table: t, starting_position: trim_horizon } }",
            "{ bisect_on_error: true, max_record_age: 60s }",
        ));
        assert_eq!(stream.max_retry_attempts, Some(UNLIMITED_RETRIES_IN_REPLAY));
        assert_eq!(stream.max_record_age, None);
        assert!(stream.bisect_on_error && stream.report_batch_item_failures);
        assert_eq!(
            stream.identifier_kind,
            sluice_policies::IdentifierKind::Text
        );

        let kafka = replay_policy(&mapping(
            "{ kafka: { bootstrap_servers: \"b:9092\", topics: [t], group_id: g, starting_position: trim_horizon } }",
            "{ max_retry_attempts: 5 }",
        ));
        assert_eq!(kafka.max_retry_attempts, Some(5));
        assert_eq!(
            kafka.identifier_kind,
            sluice_policies::IdentifierKind::KafkaOffset
        );

        let sqs = replay_policy(&mapping(
            "{ sqs: { queue_url: \"http://q/src\" } }",
            "{ max_receive_count: 4 }",
        ));
        assert_eq!(sqs.max_retry_attempts, Some(3), "4 receives are 3 retries");
        assert!(sqs.non_retryable.is_some());

        let s3 = replay_policy(&mapping("{ s3: { queue_url: \"http://q/src\" } }", "{}"));
        assert!(
            !s3.report_batch_item_failures,
            "S3 events are invoked asynchronously"
        );
        assert_eq!(
            batch_size(&mapping("{ s3: { queue_url: \"http://q/src\" } }", "{}")),
            1
        );
    }
}
