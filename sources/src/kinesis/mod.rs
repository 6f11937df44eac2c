//! Kinesis Data Streams: a stream, its shards (with both parents of a merge) and their records.
//!
//! - [`KinesisStream::resolve`] finds the stream by name or ARN (DescribeStreamSummary), and
//!   fails with what to do when it does not exist;
//! - [`KinesisStream::list_shards`] returns every shard with its parents, following ListShards'
//!   pagination;
//! - [`KinesisStream::read`] turns one GetRecords page into [`Record`]s that carry exactly the
//!   element of Lambda's Kinesis event (see [`event`]); it tells an expired iterator and a
//!   throttled read (ProvisionedThroughputExceededException, KMS throttling) apart from other
//!   failures, so the cursor renews the first and keeps its iterator through the second;
//! - it is a [`ShardReader`], read through [`crate::shards`] like every stream kind, and
//!   [`Kinesis::opener`] finds the stream so the runtime holds no AWS client.
//!
//! Kinesis has a timestamp iterator: [`IteratorStart::AtTimestamp`] is passed on as
//! `AT_TIMESTAMP`.
//!
//! With `deaggregate`, a record the Kinesis Producer Library aggregated becomes its user records
//! ([`kpl`]), each a [`Record`] with the id `<sequenceNumber>:<subSequenceNumber>`. A place after
//! such an id (a checkpoint, or the last record read before an iterator expired) is reopened
//! `AT_SEQUENCE_NUMBER` of the aggregate, and the user records up to and including that
//! sub-sequence number are skipped, so none is read twice or lost.

pub mod event;
pub mod fanout;
pub mod kpl;

use crate::queue::SourceError;
use crate::record::{AckToken, Receipt, Record};
use crate::shards::{IteratorStart, OpenStream, Page, ReadError, Shard, ShardReader};
use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

/// GetRecords returns at most this many records per call.
pub const MAX_RECORDS_PER_READ: i32 = 10_000;

#[derive(Clone)]
pub struct KinesisStream {
    client: Client,
    pub stream_arn: String,
    pub region: String,
    invoke_identity_arn: Option<String>,
    deaggregate: bool,
}

/// An iterator this reader handed out that must skip the user records of one aggregate up to a
/// sub-sequence number: `<SKIP><sequence>:<sub>\n<iterator>`. Kinesis iterators are base64 and
/// never hold a newline.
const SKIP: &str = "sluice-skip:";

/// `<sequence>:<sub>`: a user record of an aggregate.
fn split_sub_sequence(id: &str) -> Option<(&str, u64)> {
    let (sequence, sub) = id.split_once(':')?;
    Some((sequence, sub.parse().ok()?))
}

impl KinesisStream {
    /// Finds the stream named `stream_name`, or the one `stream_arn` names.
    pub async fn resolve(
        client: Client,
        stream_name: Option<&str>,
        stream_arn: Option<&str>,
        invoke_identity_arn: Option<String>,
        deaggregate: bool,
    ) -> Result<Self, SourceError> {
        let named = stream_arn.or(stream_name).unwrap_or_default().to_owned();
        if named.is_empty() {
            return Err(SourceError::Stream {
                stream: String::new(),
                operation: "resolve",
                message: "neither a stream name nor a stream ARN was given".into(),
            });
        }
        let output = client
            .describe_stream_summary()
            .set_stream_name(stream_arn.is_none().then(|| named.clone()))
            .set_stream_arn(stream_arn.map(str::to_owned))
            .send()
            .await
            .map_err(|e| SourceError::Stream {
                stream: named.clone(),
                operation: "DescribeStreamSummary",
                message: match &e {
                    SdkError::ServiceError(service) if service.err().is_resource_not_found_exception() => format!(
                        "the stream does not exist in this account and region; create it (aws kinesis create-stream --stream-name {}) or fix the name: {}",
                        named.rsplit('/').next().unwrap_or(&named),
                        DisplayErrorContext(&e)
                    ),
                    _ => DisplayErrorContext(&e).to_string(),
                },
            })?;
        let stream_arn = output
            .stream_description_summary()
            .map(|summary| summary.stream_arn().to_owned())
            .filter(|arn| !arn.is_empty())
            .or_else(|| stream_arn.map(str::to_owned))
            .ok_or_else(|| SourceError::Stream {
                stream: named.clone(),
                operation: "DescribeStreamSummary",
                message: "the answer named no stream ARN".into(),
            })?;
        let region =
            crate::shards::region_of(&stream_arn, client.config().region().map(|r| r.to_string()));
        Ok(Self {
            client,
            stream_arn,
            region,
            invoke_identity_arn,
            deaggregate,
        })
    }

    fn error(&self, operation: &'static str, message: String) -> SourceError {
        SourceError::Stream {
            stream: self.stream_arn.clone(),
            operation,
            message,
        }
    }

    /// Every shard of the stream, open and closed, with its parents.
    pub async fn list_shards(&self) -> Result<Vec<Shard>, SourceError> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            // With a NextToken, ListShards refuses the stream's name or ARN.
            let output = self
                .client
                .list_shards()
                .set_stream_arn(next_token.is_none().then(|| self.stream_arn.clone()))
                .set_next_token(next_token.clone())
                .send()
                .await
                .map_err(|e| self.error("ListShards", DisplayErrorContext(&e).to_string()))?;
            for shard in output.shards() {
                shards.push(Shard {
                    id: shard.shard_id().to_owned(),
                    parents: shard
                        .parent_shard_id()
                        .into_iter()
                        .chain(shard.adjacent_parent_shard_id())
                        .map(str::to_owned)
                        .collect(),
                    ending_sequence_number: shard
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_owned),
                });
            }
            match output.next_token() {
                // An empty page may still carry a token: only a repeated one ends the listing.
                Some(token) if Some(token) != next_token.as_deref() => {
                    next_token = Some(token.to_owned());
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
        let request = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard_id);
        // After a user record of an aggregate: at the aggregate, skipping what was read of it.
        let skip = match start {
            IteratorStart::AfterSequence(id) => split_sub_sequence(id),
            _ => None,
        };
        let request = match (start, skip) {
            (_, Some((sequence, _))) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence),
            (IteratorStart::TrimHorizon, None) => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            (IteratorStart::Latest, None) => request.shard_iterator_type(ShardIteratorType::Latest),
            (IteratorStart::AfterSequence(sequence), None) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
            (IteratorStart::AtTimestamp(at), None) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(at.as_millis() as i64)),
        };
        match request.send().await {
            Ok(output) => output
                .shard_iterator()
                .map(|iterator| match skip {
                    Some((sequence, sub)) => format!("{SKIP}{sequence}:{sub}\n{iterator}"),
                    None => iterator.to_owned(),
                })
                .ok_or_else(|| {
                    ReadError::Source(self.error(
                        "GetShardIterator",
                        format!("no iterator returned for shard {shard_id}"),
                    ))
                }),
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    GetShardIteratorError::ProvisionedThroughputExceededException(_)
                ) =>
            {
                Err(ReadError::Throttled(format!(
                    "shard {shard_id}: GetShardIterator: {}",
                    DisplayErrorContext(e.err())
                )))
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
        let (skip, iterator) = match iterator
            .strip_prefix(SKIP)
            .and_then(|rest| rest.split_once('\n'))
        {
            Some((place, iterator)) => (split_sub_sequence(place), iterator),
            None => (None, iterator),
        };
        let result = self
            .client
            .get_records()
            .stream_arn(&self.stream_arn)
            .shard_iterator(iterator)
            .limit(limit.clamp(1, MAX_RECORDS_PER_READ))
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(SdkError::ServiceError(e)) => {
                return Err(match e.err() {
                    GetRecordsError::ExpiredIteratorException(_) => ReadError::ExpiredIterator,
                    GetRecordsError::ProvisionedThroughputExceededException(_)
                    | GetRecordsError::KmsThrottlingException(_) => ReadError::Throttled(format!(
                        "shard {shard_id}: {}",
                        DisplayErrorContext(e.err())
                    )),
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
        let (records, bytes) = self.page_records(shard_id, output.records(), skip);
        // The skip holds until the aggregate is read: an empty page (Kinesis may answer one
        // before the records at the iterator) passes it on to the next iterator.
        let next_iterator = output.next_shard_iterator().map(|next| match skip {
            Some((sequence, sub)) if output.records().is_empty() => {
                format!("{SKIP}{sequence}:{sub}\n{next}")
            }
            _ => next.to_owned(),
        });
        Ok(Page {
            records,
            next_iterator,
            millis_behind_latest: output
                .millis_behind_latest()
                .and_then(|millis| u64::try_from(millis).ok()),
            bytes,
            at_tip: None,
        })
    }

    /// The records of one page (GetRecords' or a fan-out event's) as Lambda records, without
    /// the user records of the aggregate `skip` names up to its sub-sequence number, and their
    /// bytes as the shard's read budget counts them.
    fn page_records(
        &self,
        shard_id: &str,
        page: &[aws_sdk_kinesis::types::Record],
        skip: Option<(&str, u64)>,
    ) -> (Vec<Record>, usize) {
        let now = crate::now_since_epoch();
        let bytes = page
            .iter()
            .map(|r| r.data().as_ref().len() + r.partition_key().map_or(0, str::len))
            .sum();
        let records = page
            .iter()
            .flat_map(|record| self.records(shard_id, record, now))
            .filter(|record| match (skip, split_sub_sequence(record.id())) {
                (Some((place, read)), Some((sequence, sub))) => place != sequence || sub > read,
                _ => true,
            })
            .collect();
        (records, bytes)
    }

    /// The records `record` is: itself, or with `deaggregate` the user records of an aggregate.
    fn records(
        &self,
        shard_id: &str,
        record: &aws_sdk_kinesis::types::Record,
        now: Duration,
    ) -> Vec<Record> {
        let arrived_at = record
            .approximate_arrival_timestamp()
            .and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
            .map_or(now, Duration::from_millis);
        let parts = event::KinesisRecordParts {
            shard_id,
            sequence_number: record.sequence_number(),
            sub_sequence_number: None,
            partition_key: record.partition_key().unwrap_or_default(),
            data: record.data().as_ref(),
            arrived_at,
            encryption_type: record
                .encryption_type()
                .map(|e| e.as_str())
                .filter(|e| *e != "NONE"),
        };
        let users = if self.deaggregate {
            kpl::deaggregate(parts.data)
        } else {
            None
        };
        match users {
            None => self.record(&parts, now).into_iter().collect(),
            Some(users) => users
                .iter()
                .enumerate()
                .filter_map(|(index, user)| {
                    let user = event::KinesisRecordParts {
                        sub_sequence_number: Some(index as u64),
                        partition_key: &user.partition_key,
                        data: &user.data,
                        ..parts
                    };
                    self.record(&user, now)
                })
                .collect(),
        }
    }

    fn record(&self, parts: &event::KinesisRecordParts<'_>, now: Duration) -> Option<Record> {
        let origin = event::KinesisOrigin {
            stream_arn: &self.stream_arn,
            region: &self.region,
            invoke_identity_arn: self.invoke_identity_arn.as_deref(),
        };
        let raw = RawValue::from_string(event::lambda_record(parts, &origin)).ok()?;
        let id = match parts.sub_sequence_number {
            None => parts.sequence_number.to_owned(),
            Some(sub) => format!("{}:{sub}", parts.sequence_number),
        };
        Some(Record::new(
            Receipt {
                id,
                ack: AckToken::Stream {
                    shard_id: parts.shard_id.to_owned(),
                },
            },
            Some(parts.partition_key.to_owned()),
            parts.arrived_at,
            now,
            1,
            raw,
        ))
    }
}

#[async_trait]
impl ShardReader for KinesisStream {
    fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    fn region(&self) -> &str {
        &self.region
    }

    async fn list_shards(&self) -> Result<Vec<Shard>, SourceError> {
        KinesisStream::list_shards(self).await
    }

    async fn iterator(&self, shard_id: &str, start: &IteratorStart) -> Result<String, ReadError> {
        KinesisStream::iterator(self, shard_id, start).await
    }

    async fn read(&self, shard_id: &str, iterator: &str, limit: i32) -> Result<Page, ReadError> {
        KinesisStream::read(self, shard_id, iterator, limit).await
    }
}

/// The client that finds Kinesis streams.
#[derive(Clone)]
pub struct Kinesis {
    pub client: Client,
}

impl Kinesis {
    /// Finds the stream `stream_arn` or `stream_name` names, each time it is called; with a
    /// `consumer` name, registers that consumer if need be and reads with enhanced fan-out.
    pub fn opener(
        &self,
        stream_name: Option<String>,
        stream_arn: Option<String>,
        invoke_identity_arn: Option<String>,
        deaggregate: bool,
        consumer: Option<String>,
    ) -> OpenStream {
        let client = self.client.clone();
        Arc::new(move || {
            let client = client.clone();
            let (name, arn, identity, consumer) = (
                stream_name.clone(),
                stream_arn.clone(),
                invoke_identity_arn.clone(),
                consumer.clone(),
            );
            Box::pin(async move {
                let stream = KinesisStream::resolve(
                    client,
                    name.as_deref(),
                    arn.as_deref(),
                    identity,
                    deaggregate,
                )
                .await?;
                if let Some(consumer) = consumer {
                    let consumer_arn =
                        fanout::register(&stream.client, &stream.stream_arn, &consumer).await?;
                    return Ok(
                        Arc::new(fanout::FanOutReader::new(stream, consumer, consumer_arn))
                            as Arc<dyn ShardReader>,
                    );
                }
                Ok(Arc::new(stream) as Arc<dyn ShardReader>)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    //! Reading through the cursor against scripted Kinesis responses (aws-smithy-mocks): moto
    //! never throttles, never expires iterators and always answers a next iterator.

    use super::*;
    use crate::shards::{CursorEvent, CursorRead, ShardCursor};
    use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
    use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorOutput;
    use aws_sdk_kinesis::operation::list_shards::ListShardsOutput;
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::error::{
        ExpiredIteratorException, ProvisionedThroughputExceededException,
    };
    use aws_sdk_kinesis::types::{Record as SdkRecord, SequenceNumberRange, Shard as SdkShard};
    use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    const ARN: &str = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders";

    fn stream(client: Client) -> KinesisStream {
        KinesisStream {
            client,
            stream_arn: ARN.into(),
            region: "eu-west-1".into(),
            invoke_identity_arn: None,
            deaggregate: true,
        }
    }

    fn record(sequence: u32) -> SdkRecord {
        SdkRecord::builder()
            .sequence_number(sequence.to_string())
            .partition_key(format!("k{}", sequence % 3))
            .data(Blob::new(format!("r{sequence}")))
            .approximate_arrival_timestamp(DateTime::from_millis(1_800_000_000_250))
            .build()
            .unwrap()
    }

    fn page(sequences: &[u32], next: Option<&str>) -> GetRecordsOutput {
        GetRecordsOutput::builder()
            .set_records(Some(sequences.iter().map(|s| record(*s)).collect()))
            .set_next_shard_iterator(next.map(str::to_owned))
            .millis_behind_latest(1500)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn throttled_reads_keep_the_iterator_and_expired_ones_renew_after_the_last_record() {
        let iterator_requests = Arc::new(Mutex::new(Vec::new()));
        let requests = iterator_requests.clone();
        let iterators = mock!(Client::get_shard_iterator).then_compute_output(move |request| {
            let iterator = match request.shard_iterator_type() {
                Some(ShardIteratorType::AtTimestamp) => {
                    assert_eq!(
                        request.timestamp(),
                        Some(&DateTime::from_millis(1_700_000_000_000))
                    );
                    "it-at".to_owned()
                }
                Some(ShardIteratorType::AfterSequenceNumber) => {
                    format!("it-after-{}", request.starting_sequence_number().unwrap())
                }
                other => panic!("unexpected iterator type {other:?}"),
            };
            requests.lock().unwrap().push(iterator.clone());
            GetShardIteratorOutput::builder()
                .shard_iterator(iterator)
                .build()
        });
        let throttles = Arc::new(AtomicU32::new(0));
        let throttled = throttles.clone();
        let expired = Arc::new(AtomicU32::new(0));
        let records =
            mock!(Client::get_records).then_compute_response(move |request| {
                match request.shard_iterator().unwrap() {
                    "it-at" => MockResponse::Output(page(&[1, 2], Some("it-2"))),
                    "it-2" if throttled.fetch_add(1, Ordering::SeqCst) < 2 => MockResponse::Error(
                        GetRecordsError::ProvisionedThroughputExceededException(
                            ProvisionedThroughputExceededException::builder()
                                .message("Rate exceeded for shard")
                                .build(),
                        ),
                    ),
                    "it-2" => MockResponse::Output(page(&[3], Some("it-stale"))),
                    "it-stale" if expired.fetch_add(1, Ordering::SeqCst) == 0 => {
                        MockResponse::Error(GetRecordsError::ExpiredIteratorException(
                            ExpiredIteratorException::builder()
                                .message("Iterator expired")
                                .build(),
                        ))
                    }
                    "it-after-3" => MockResponse::Output(page(&[4], None)),
                    other => panic!("unexpected iterator {other}"),
                }
            });
        let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&iterators, &records]);
        let stream = stream(client);
        let mut cursor = ShardCursor::new(
            "shardId-000000000000",
            IteratorStart::AtTimestamp(Duration::from_secs(1_700_000_000)),
        );
        let mut seen = Vec::new();
        let mut throttled_reads = 0;
        let mut behind = Vec::new();
        loop {
            match cursor.read(&stream, 100).await.unwrap() {
                CursorRead::Page {
                    records,
                    end,
                    millis_behind_latest,
                    bytes,
                    ..
                } => {
                    assert_eq!(
                        bytes,
                        records.iter().map(|r| 1 + r.id().len() + 2).sum::<usize>()
                    );
                    behind.push(millis_behind_latest);
                    seen.extend(records.iter().map(|r| r.id().to_owned()));
                    if end {
                        break;
                    }
                }
                CursorRead::Throttled { .. } => throttled_reads += 1,
                CursorRead::Renewing => {}
            }
        }
        assert_eq!(seen, ["1", "2", "3", "4"], "nothing skipped or repeated");
        assert_eq!(throttled_reads, 2);
        assert_eq!(
            *iterator_requests.lock().unwrap(),
            ["it-at", "it-after-3"],
            "a throttle asks for no new iterator"
        );
        assert_eq!(
            cursor.take_events(),
            [CursorEvent::ExpiredIterator {
                after: Some("3".into())
            }]
        );
        assert!(behind.iter().all(|b| *b == Some(1500)));
    }

    #[tokio::test]
    async fn records_carry_lambdas_kinesis_event_and_their_partition_key() {
        let records = mock!(Client::get_records).then_output(|| page(&[7], Some("next")));
        let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&records]);
        let page = stream(client)
            .read("shardId-000000000001", "it", 100)
            .await
            .unwrap();
        let record = &page.records[0];
        assert_eq!(record.id(), "7");
        assert_eq!(record.ordering_key.as_deref(), Some("k1"));
        assert_eq!(record.arrived_at, Duration::from_millis(1_800_000_000_250));
        let event: serde_json::Value = serde_json::from_str(record.event.get()).unwrap();
        assert_eq!(event["eventID"], "shardId-000000000001:7");
        assert_eq!(event["kinesis"]["data"], "cjc=");
        assert_eq!(
            event["kinesis"]["approximateArrivalTimestamp"],
            1_800_000_000.25
        );
        assert_eq!(event["eventSourceARN"], ARN);
        assert_eq!(event["awsRegion"], "eu-west-1");
        assert!(event.get("invokeIdentityArn").is_none());
    }

    fn aggregated(sequence: u32, users: &[(&str, &str)]) -> SdkRecord {
        let users: Vec<kpl::UserRecord> = users
            .iter()
            .map(|(key, data)| kpl::UserRecord {
                partition_key: (*key).into(),
                explicit_hash_key: None,
                data: data.as_bytes().to_vec(),
            })
            .collect();
        SdkRecord::builder()
            .sequence_number(sequence.to_string())
            .partition_key("aggregate")
            .data(Blob::new(kpl::aggregate(&users)))
            .approximate_arrival_timestamp(DateTime::from_millis(1_800_000_000_250))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn aggregates_become_user_records_and_a_place_inside_one_skips_what_was_read() {
        let iterator_requests = Arc::new(Mutex::new(Vec::new()));
        let requests = iterator_requests.clone();
        let iterators = mock!(Client::get_shard_iterator).then_compute_output(move |request| {
            requests.lock().unwrap().push(format!(
                "{:?} {}",
                request.shard_iterator_type().unwrap(),
                request.starting_sequence_number().unwrap_or_default()
            ));
            GetShardIteratorOutput::builder()
                .shard_iterator("it-5")
                .build()
        });
        let records = mock!(Client::get_records).then_compute_output(|request| {
            assert_eq!(
                request.shard_iterator(),
                Some("it-5"),
                "the skip is ours alone"
            );
            GetRecordsOutput::builder()
                .records(aggregated(5, &[("a", "u0"), ("b", "u1"), ("a", "u2")]))
                .records(record(6))
                .next_shard_iterator("it-7")
                .build()
                .unwrap()
        });
        let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&iterators, &records]);
        let stream = stream(client);
        let mut cursor = ShardCursor::new(
            "shardId-000000000000",
            IteratorStart::AfterSequence("5:1".into()),
        );
        let CursorRead::Page { records, .. } = cursor.read(&stream, 100).await.unwrap() else {
            panic!("a page")
        };
        let ids: Vec<&str> = records.iter().map(|r| r.id()).collect();
        assert_eq!(ids, ["5:2", "6"], "user records 0 and 1 were read before");
        assert_eq!(
            *iterator_requests.lock().unwrap(),
            ["AtSequenceNumber 5"],
            "reopened at the aggregate"
        );
        let event: serde_json::Value = serde_json::from_str(records[0].event.get()).unwrap();
        assert_eq!(event["kinesis"]["sequenceNumber"], "5");
        assert_eq!(event["kinesis"]["subSequenceNumber"], 2);
        assert_eq!(event["kinesis"]["partitionKey"], "a");
        assert_eq!(event["kinesis"]["data"], "dTI=");
        assert_eq!(event["eventID"], "shardId-000000000000:5:2");
        assert_eq!(records[0].ordering_key.as_deref(), Some("a"));
        assert_eq!(cursor.last_read(), Some("6"));
    }

    #[tokio::test]
    async fn a_skip_inside_an_aggregate_survives_an_empty_page() {
        let iterators = mock!(Client::get_shard_iterator).then_output(|| {
            GetShardIteratorOutput::builder()
                .shard_iterator("it-at-5")
                .build()
        });
        let records = mock!(Client::get_records).then_compute_output(|request| {
            match request.shard_iterator().unwrap() {
                // Kinesis may answer an empty page before the records at the iterator.
                "it-at-5" => GetRecordsOutput::builder()
                    .set_records(Some(Vec::new()))
                    .next_shard_iterator("it-still-5")
                    .build()
                    .unwrap(),
                "it-still-5" => GetRecordsOutput::builder()
                    .records(aggregated(5, &[("a", "u0"), ("b", "u1"), ("a", "u2")]))
                    .next_shard_iterator("it-6")
                    .build()
                    .unwrap(),
                other => panic!("unexpected iterator {other}"),
            }
        });
        let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&iterators, &records]);
        let stream = stream(client);
        let mut cursor = ShardCursor::new(
            "shardId-000000000000",
            IteratorStart::AfterSequence("5:1".into()),
        );
        let mut ids = Vec::new();
        for _ in 0..2 {
            let CursorRead::Page { records, .. } = cursor.read(&stream, 100).await.unwrap() else {
                panic!("a page")
            };
            ids.extend(records.iter().map(|r| r.id().to_owned()));
        }
        assert_eq!(
            ids,
            ["5:2"],
            "user records 0 and 1 stay skipped after the empty page"
        );
    }

    #[tokio::test]
    async fn without_deaggregate_an_aggregate_is_one_record() {
        let records = mock!(Client::get_records).then_output(|| {
            GetRecordsOutput::builder()
                .records(aggregated(5, &[("a", "u0"), ("b", "u1")]))
                .next_shard_iterator("next")
                .build()
                .unwrap()
        });
        let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&records]);
        let stream = KinesisStream {
            deaggregate: false,
            ..stream(client)
        };
        let page = stream.read("shardId-1", "it", 100).await.unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].id(), "5");
        assert_eq!(page.records[0].ordering_key.as_deref(), Some("aggregate"));
    }

    #[tokio::test]
    async fn shards_are_listed_across_pages_with_both_parents_of_a_merge() {
        let calls = Arc::new(AtomicU32::new(0));
        let count = calls.clone();
        let listing = mock!(Client::list_shards).then_compute_output(move |request| {
            count.fetch_add(1, Ordering::SeqCst);
            let shard = |id: &str, parent: Option<&str>, adjacent: Option<&str>, closed: bool| {
                SdkShard::builder()
                    .shard_id(id)
                    .set_parent_shard_id(parent.map(str::to_owned))
                    .set_adjacent_parent_shard_id(adjacent.map(str::to_owned))
                    .sequence_number_range(
                        SequenceNumberRange::builder()
                            .starting_sequence_number("1")
                            .set_ending_sequence_number(closed.then(|| "9".to_owned()))
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap()
            };
            match request.next_token() {
                None => {
                    assert_eq!(request.stream_arn(), Some(ARN));
                    ListShardsOutput::builder()
                        .shards(shard("shardId-0", None, None, true))
                        .shards(shard("shardId-1", None, None, true))
                        .next_token("page-2")
                        .build()
                }
                Some("page-2") => {
                    assert_eq!(request.stream_arn(), None, "a token goes alone");
                    ListShardsOutput::builder()
                        .shards(shard(
                            "shardId-2",
                            Some("shardId-0"),
                            Some("shardId-1"),
                            false,
                        ))
                        .build()
                }
                other => panic!("unexpected token {other:?}"),
            }
        });
        let client = mock_client!(aws_sdk_kinesis, RuleMode::MatchAny, [&listing]);
        let shards = stream(client).list_shards().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0].ending_sequence_number.as_deref(), Some("9"));
        assert_eq!(shards[2].parents, ["shardId-0", "shardId-1"]);
        assert_eq!(shards[2].ending_sequence_number, None);
    }
}
