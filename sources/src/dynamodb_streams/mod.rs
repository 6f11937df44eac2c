//! DynamoDB Streams: the stream of a table, its shards and their records.
//!
//! - [`DynamoDbStream::resolve`] finds the stream (a table's latest stream, or a given ARN) and
//!   fails with what to do when the table has no stream;
//! - [`DynamoDbStream::list_shards`] returns every shard with its parent, following pagination;
//! - [`DynamoDbStream::read`] turns one GetRecords page into [`Record`]s that carry exactly the
//!   element of Lambda's DynamoDB event (see [`event`]), and tells an expired iterator and trimmed
//!   data apart from other failures so the caller can renew or skip ahead without a restart;
//! - it is a [`ShardReader`], read through [`crate::shards`] like every stream kind;
//! - [`DynamoDbStreams::opener`] finds the stream, so the runtime holds no AWS client.
//!
//! DynamoDB Streams has no timestamp iterator: [`IteratorStart::AtTimestamp`] starts at the trim
//! horizon and the runtime skips the older records.

pub mod event;

pub use crate::shards::{
    CursorEvent, CursorRead, IteratorStart, Page, ReadError, Shard, ShardCursor, ShardReader,
};

use crate::queue::SourceError;
use crate::record::{AckToken, Receipt, Record};
use async_trait::async_trait;
use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError;
use aws_sdk_dynamodbstreams::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use serde_json::value::RawValue;
use std::time::Duration;

/// GetRecords returns at most this many records per call.
pub const MAX_RECORDS_PER_READ: i32 = 1000;

#[derive(Clone)]
pub struct DynamoDbStream {
    client: Client,
    pub stream_arn: String,
    pub region: String,
}

impl DynamoDbStream {
    /// Finds the stream: `stream_arn` as given, or the latest stream of `table`.
    pub async fn resolve(
        client: Client,
        tables: &aws_sdk_dynamodb::Client,
        table: Option<&str>,
        stream_arn: Option<&str>,
    ) -> Result<Self, SourceError> {
        let stream_arn = match (stream_arn, table) {
            (Some(arn), _) => arn.to_owned(),
            (None, Some(table)) => {
                let output = tables
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .map_err(|e| SourceError::Stream {
                        stream: format!("table {table}"),
                        operation: "DescribeTable",
                        message: DisplayErrorContext(&e).to_string(),
                    })?;
                output
                    .table()
                    .and_then(|t| t.latest_stream_arn())
                    .map(str::to_owned)
                    .ok_or_else(|| SourceError::Stream {
                        stream: format!("table {table}"),
                        operation: "DescribeTable",
                        message: "the table has no stream; enable one with StreamSpecification (NEW_AND_OLD_IMAGES gives handlers both images)".into(),
                    })?
            }
            (None, None) => {
                return Err(SourceError::Stream {
                    stream: String::new(),
                    operation: "resolve",
                    message: "neither a table nor a stream ARN was given".into(),
                });
            }
        };
        let region =
            crate::shards::region_of(&stream_arn, client.config().region().map(|r| r.to_string()));
        Ok(Self {
            client,
            stream_arn,
            region,
        })
    }

    fn error(&self, operation: &'static str, message: String) -> SourceError {
        SourceError::Stream {
            stream: self.stream_arn.clone(),
            operation,
            message,
        }
    }

    /// Every shard of the stream, oldest first as DescribeStream lists them.
    pub async fn list_shards(&self) -> Result<Vec<Shard>, SourceError> {
        let mut shards = Vec::new();
        let mut start_after: Option<String> = None;
        loop {
            let output = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start_after.clone())
                .send()
                .await
                .map_err(|e| self.error("DescribeStream", DisplayErrorContext(&e).to_string()))?;
            let Some(description) = output.stream_description() else {
                break;
            };
            for shard in description.shards() {
                let Some(id) = shard.shard_id() else { continue };
                shards.push(Shard {
                    id: id.to_owned(),
                    parents: shard
                        .parent_shard_id()
                        .map(str::to_owned)
                        .into_iter()
                        .collect(),
                    ending_sequence_number: shard
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_owned),
                });
            }
            match description.last_evaluated_shard_id() {
                Some(last) if Some(last) != start_after.as_deref() => {
                    start_after = Some(last.to_owned());
                }
                _ => break,
            }
        }
        Ok(shards)
    }

    /// A new iterator for `shard_id` starting at `start`.
    pub async fn iterator(
        &self,
        shard_id: &str,
        start: &IteratorStart,
    ) -> Result<String, ReadError> {
        let (kind, sequence) = match start {
            IteratorStart::TrimHorizon | IteratorStart::AtTimestamp(_) => {
                (ShardIteratorType::TrimHorizon, None)
            }
            IteratorStart::Latest => (ShardIteratorType::Latest, None),
            IteratorStart::AfterSequence(sequence) => (
                ShardIteratorType::AfterSequenceNumber,
                Some(sequence.clone()),
            ),
        };
        let result = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_sequence_number(sequence)
            .send()
            .await;
        match result {
            Ok(output) => output.shard_iterator().map(str::to_owned).ok_or_else(|| {
                ReadError::Source(self.error(
                    "GetShardIterator",
                    format!("no iterator returned for shard {shard_id}"),
                ))
            }),
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    GetShardIteratorError::TrimmedDataAccessException(_)
                ) =>
            {
                Err(ReadError::Trimmed(format!("shard {shard_id}")))
            }
            Err(e) => Err(ReadError::Source(self.error(
                "GetShardIterator",
                format!("shard {shard_id}: {}", DisplayErrorContext(&e)),
            ))),
        }
    }

    /// Reads one page at `iterator`.
    pub async fn read(
        &self,
        shard_id: &str,
        iterator: &str,
        limit: i32,
    ) -> Result<Page, ReadError> {
        let result = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, MAX_RECORDS_PER_READ))
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(SdkError::ServiceError(e)) => {
                return Err(match e.err() {
                    GetRecordsError::ExpiredIteratorException(_) => ReadError::ExpiredIterator,
                    // The shard's read rate: back off with the iterator kept, as for Kinesis.
                    GetRecordsError::LimitExceededException(_) => ReadError::Throttled(format!(
                        "shard {shard_id}: {}",
                        DisplayErrorContext(e.err())
                    )),
                    GetRecordsError::TrimmedDataAccessException(t) => {
                        ReadError::Trimmed(format!("shard {shard_id}: {t}"))
                    }
                    other => ReadError::Source(self.error(
                        "GetRecords",
                        format!("shard {shard_id}: {}", DisplayErrorContext(other)),
                    )),
                });
            }
            Err(e) => {
                return Err(ReadError::Source(self.error(
                    "GetRecords",
                    format!("shard {shard_id}: {}", DisplayErrorContext(&e)),
                )));
            }
        };
        let now = crate::now_since_epoch();
        let records: Vec<Record> = output
            .records()
            .iter()
            .filter_map(|record| self.record(shard_id, record, now))
            .collect();
        let bytes = records.iter().map(|r| r.event.get().len()).sum();
        Ok(Page {
            records,
            next_iterator: output.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: None,
            bytes,
            at_tip: None,
        })
    }

    fn record(
        &self,
        shard_id: &str,
        record: &aws_sdk_dynamodbstreams::types::Record,
        now: Duration,
    ) -> Option<Record> {
        let change = record.dynamodb()?;
        let sequence = change.sequence_number()?.to_owned();
        let arrived_at = change
            .approximate_creation_date_time()
            .and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
            .map_or(now, Duration::from_millis);
        let key = change
            .keys()
            .map(|keys| event::item_json(keys).to_string())
            .unwrap_or_default();
        let json = event::lambda_record(record, &self.stream_arn, &self.region).to_string();
        let raw = RawValue::from_string(json).ok()?;
        Some(Record::new(
            Receipt {
                id: sequence,
                ack: AckToken::Stream {
                    shard_id: shard_id.to_owned(),
                },
            },
            Some(key),
            arrived_at,
            now,
            1,
            raw,
        ))
    }
}

#[async_trait]
impl ShardReader for DynamoDbStream {
    fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    fn region(&self) -> &str {
        &self.region
    }

    async fn list_shards(&self) -> Result<Vec<Shard>, SourceError> {
        DynamoDbStream::list_shards(self).await
    }

    async fn iterator(&self, shard_id: &str, start: &IteratorStart) -> Result<String, ReadError> {
        DynamoDbStream::iterator(self, shard_id, start).await
    }

    async fn read(&self, shard_id: &str, iterator: &str, limit: i32) -> Result<Page, ReadError> {
        DynamoDbStream::read(self, shard_id, iterator, limit).await
    }
}

/// The clients that find DynamoDB streams: DynamoDB Streams, and DynamoDB for a table's latest
/// stream.
#[derive(Clone)]
pub struct DynamoDbStreams {
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub tables: aws_sdk_dynamodb::Client,
}

impl DynamoDbStreams {
    /// Finds the stream `stream_arn` names, or `table`'s latest stream, each time it is called.
    pub fn opener(
        &self,
        table: Option<String>,
        stream_arn: Option<String>,
    ) -> crate::shards::OpenStream {
        let clients = self.clone();
        std::sync::Arc::new(move || {
            let clients = clients.clone();
            let (table, stream_arn) = (table.clone(), stream_arn.clone());
            Box::pin(async move {
                let stream = DynamoDbStream::resolve(
                    clients.streams,
                    &clients.tables,
                    table.as_deref(),
                    stream_arn.as_deref(),
                )
                .await?;
                Ok(std::sync::Arc::new(stream) as std::sync::Arc<dyn ShardReader>)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    /// Reading through the cursor against scripted DynamoDB Streams responses (aws-smithy-mocks):
    /// moto never expires iterators nor trims data (dependencies.md trap 4).
    mod scripted {
        use super::super::*;
        use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsOutput;
        use aws_sdk_dynamodbstreams::operation::get_shard_iterator::GetShardIteratorOutput;
        use aws_sdk_dynamodbstreams::primitives::DateTime;
        use aws_sdk_dynamodbstreams::types::error::{
            ExpiredIteratorException, TrimmedDataAccessException,
        };
        use aws_sdk_dynamodbstreams::types::{
            AttributeValue, OperationType, Record as SdkRecord, StreamRecord,
        };
        use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
        use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
        use std::sync::{Arc, Mutex};

        fn record(sequence: u32) -> SdkRecord {
            SdkRecord::builder()
                .event_id(format!("e{sequence}"))
                .event_name(OperationType::Insert)
                .dynamodb(
                    StreamRecord::builder()
                        .sequence_number(sequence.to_string())
                        .keys("id", AttributeValue::S(format!("k{sequence}")))
                        .approximate_creation_date_time(DateTime::from_secs(1_800_000_000))
                        .build(),
                )
                .build()
        }

        fn page(sequences: &[u32], next: Option<&str>) -> GetRecordsOutput {
            GetRecordsOutput::builder()
                .set_records(Some(sequences.iter().map(|s| record(*s)).collect()))
                .set_next_shard_iterator(next.map(str::to_owned))
                .build()
        }

        #[tokio::test]
        async fn a_limit_exceeded_read_is_a_throttle_that_keeps_the_iterator() {
            use aws_sdk_dynamodbstreams::types::error::LimitExceededException;
            let limited = Arc::new(AtomicBool::new(false));
            let records = mock!(Client::get_records).then_compute_response(move |_| {
                if limited.swap(true, AtomicOrdering::SeqCst) {
                    MockResponse::Output(page(&[1], Some("it-2")))
                } else {
                    MockResponse::Error(GetRecordsError::LimitExceededException(
                        LimitExceededException::builder()
                            .message("slow down")
                            .build(),
                    ))
                }
            });
            let client = mock_client!(aws_sdk_dynamodbstreams, RuleMode::MatchAny, [&records]);
            let stream = DynamoDbStream {
                client,
                stream_arn: "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2024".into(),
                region: "us-east-1".into(),
            };
            assert!(matches!(
                stream.read("shardId-1", "it-1", 100).await,
                Err(ReadError::Throttled(_))
            ));
            let page = stream.read("shardId-1", "it-1", 100).await.unwrap();
            assert_eq!(page.records.len(), 1);
        }

        #[tokio::test]
        async fn an_expired_iterator_is_renewed_after_the_last_record_and_trimmed_data_resumes_at_the_horizon()
         {
            let iterator_requests = Arc::new(Mutex::new(Vec::new()));
            let requests = iterator_requests.clone();
            let trimmed = Arc::new(AtomicBool::new(false));
            let after_trim = trimmed.clone();
            let iterators = mock!(Client::get_shard_iterator).then_compute_output(move |request| {
                let iterator = match request.shard_iterator_type() {
                    Some(ShardIteratorType::TrimHorizon)
                        if after_trim.load(AtomicOrdering::SeqCst) =>
                    {
                        "it-horizon-after-trim".to_owned()
                    }
                    Some(ShardIteratorType::TrimHorizon) => "it-horizon".to_owned(),
                    Some(ShardIteratorType::AfterSequenceNumber) => {
                        format!("it-after-{}", request.sequence_number().unwrap())
                    }
                    other => panic!("unexpected iterator type {other:?}"),
                };
                requests.lock().unwrap().push(iterator.clone());
                GetShardIteratorOutput::builder()
                    .shard_iterator(iterator)
                    .build()
            });
            let expired_once = Arc::new(AtomicBool::new(false));
            let records = mock!(Client::get_records).then_compute_response(move |request| {
                match request.shard_iterator().unwrap() {
                    "it-horizon" => MockResponse::Output(page(&[1, 2, 3], Some("it-stale"))),
                    "it-stale" if !expired_once.swap(true, AtomicOrdering::SeqCst) => {
                        MockResponse::Error(GetRecordsError::ExpiredIteratorException(
                            ExpiredIteratorException::builder()
                                .message("Iterator expired")
                                .build(),
                        ))
                    }
                    "it-after-3" => MockResponse::Output(page(&[4, 5, 6], Some("it-trimmed"))),
                    "it-trimmed" => {
                        trimmed.store(true, AtomicOrdering::SeqCst);
                        MockResponse::Error(GetRecordsError::TrimmedDataAccessException(
                            TrimmedDataAccessException::builder()
                                .message("trimmed")
                                .build(),
                        ))
                    }
                    "it-horizon-after-trim" => MockResponse::Output(page(&[8, 9], None)),
                    other => panic!("unexpected iterator {other}"),
                }
            });
            let client = mock_client!(
                aws_sdk_dynamodbstreams,
                RuleMode::MatchAny,
                [&iterators, &records]
            );
            let stream = DynamoDbStream {
                client,
                stream_arn: "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2024".into(),
                region: "us-east-1".into(),
            };
            let mut cursor = ShardCursor::new("shardId-1", IteratorStart::TrimHorizon);
            let mut seen = Vec::new();
            let mut events = Vec::new();
            loop {
                let read = cursor.read(&stream, 1000).await.unwrap();
                events.extend(cursor.take_events());
                match read {
                    CursorRead::Page { records, end, .. } => {
                        seen.extend(records.iter().map(|r| r.id().to_owned()));
                        if end {
                            break;
                        }
                    }
                    CursorRead::Renewing | CursorRead::Throttled { .. } => {}
                }
            }
            assert_eq!(
                seen,
                ["1", "2", "3", "4", "5", "6", "8", "9"],
                "nothing repeated after the renewal; the trimmed record 7 is gone"
            );
            assert_eq!(
                *iterator_requests.lock().unwrap(),
                ["it-horizon", "it-after-3", "it-horizon-after-trim"]
            );
            assert_eq!(events.len(), 2, "{events:?}");
            assert_eq!(
                events[0],
                CursorEvent::ExpiredIterator {
                    after: Some("3".into())
                }
            );
            assert!(matches!(events[1], CursorEvent::Trimmed { .. }));
        }
    }
}
