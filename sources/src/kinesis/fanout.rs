//! Enhanced fan-out: reading a Kinesis stream through a registered stream consumer with
//! `SubscribeToShard`, which pushes each shard's records over a long-lived HTTP/2 event stream
//! (2 MB/s per shard for this consumer alone, no 5-reads-per-second limit shared with others).
//!
//! - [`register`] finds the consumer `name` on the stream (DescribeStreamConsumer), registers it
//!   when it does not exist (RegisterStreamConsumer, a race with another instance included), and
//!   waits until it is ACTIVE;
//! - [`FanOutReader`] is a [`ShardReader`] like the GetRecords one, so the shard runtime, the
//!   cursor, checkpoints and leases are the same. Its iterators are places (`efo:...`), not
//!   service tokens; a read takes the next event of the shard's subscription, subscribing at the
//!   place when there is none (first read, after a failure, or when Kinesis ended it after its
//!   five minutes), and a subscription only serves the place it reached, so a read from
//!   anywhere else subscribes anew there;
//! - `ResourceInUseException` (the shard's subscription is still held, by this consumer's last
//!   owner of the shard) and `LimitExceededException` (one subscribe per second per shard) are
//!   throttles: the cursor keeps its place and the runtime backs off; so is KMS throttling;
//! - a closed shard ends with an event that has no continuation sequence number and names its
//!   child shards (an event with neither is an error, not the end);
//! - a subscription silent for [`EVENT_WAIT`] is dropped and the read fails, so the next one
//!   subscribes again after the last record read (a half-open connection never ends itself);
//! - an event that was already waiting when the read came does not say the shard is caught up
//!   ([`Page::at_tip`]), whatever its MillisBehindLatest: it was sent a while ago;
//! - a consumer found gone (deregistered under the running mapping) is registered again;
//! - [`ShardReader::release`] drops the shard's subscription when the runtime stops reading it,
//!   so the next owner can subscribe;
//! - with `deaggregate`, a place inside an aggregate subscribes `AT_SEQUENCE_NUMBER` of it and
//!   skips the user records already read, as the GetRecords reader does.

use super::{KinesisStream, split_sub_sequence};
use crate::queue::SourceError;
use crate::shards::{IteratorStart, Page, ReadError, Shard, ShardReader};
use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEvent,
    SubscribeToShardEventStream,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a read waits for the next event before it answers an empty page (Kinesis sends an
/// event about every 5 seconds even when no record comes).
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// How long [`register`] waits for a new consumer to become ACTIVE.
const ACTIVE_WITHIN: Duration = Duration::from_secs(120);

/// How long a consumer just registered may stay unseen before it is registered again.
const REGISTRATION_VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// The stream consumer named `name` on `stream`, registered if need be; its ARN once ACTIVE.
pub async fn register(
    client: &Client,
    stream_arn: &str,
    name: &str,
) -> Result<String, SourceError> {
    let error = |operation: &'static str, message: String| SourceError::Stream {
        stream: stream_arn.to_owned(),
        operation,
        message: format!("consumer {name}: {message}"),
    };
    let started = tokio::time::Instant::now();
    // Kinesis may not show a consumer it just registered for a moment (and refuses to register
    // one while the stream is updating): not-found shortly after a registration is polled on.
    let mut registered_at: Option<tokio::time::Instant> = None;
    loop {
        let described = client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await;
        match described {
            Ok(output) => {
                let Some(consumer) = output.consumer_description() else {
                    return Err(error(
                        "DescribeStreamConsumer",
                        "no description returned".into(),
                    ));
                };
                match consumer.consumer_status() {
                    ConsumerStatus::Active => return Ok(consumer.consumer_arn().to_owned()),
                    ConsumerStatus::Deleting => {
                        return Err(error(
                            "DescribeStreamConsumer",
                            "the consumer is being deregistered; wait until it is gone, or give another consumer.name".into(),
                        ));
                    }
                    _ => {}
                }
            }
            Err(SdkError::ServiceError(e))
                if e.err().is_resource_not_found_exception()
                    && registered_at
                        .is_none_or(|at| at.elapsed() > REGISTRATION_VISIBLE_WITHIN) =>
            {
                match client
                    .register_stream_consumer()
                    .stream_arn(stream_arn)
                    .consumer_name(name)
                    .send()
                    .await
                {
                    Ok(_) => {
                        tracing::info!(stream_arn, consumer = name, "stream consumer registered")
                    }
                    // Another instance registered it first, or the stream is updating.
                    Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
                    Err(e) => {
                        return Err(error(
                            "RegisterStreamConsumer",
                            format!(
                                "{} (a stream holds at most 20 consumers, an account registers at most 5 per second, and the role needs kinesis:RegisterStreamConsumer)",
                                DisplayErrorContext(&e)
                            ),
                        ));
                    }
                }
                registered_at = Some(tokio::time::Instant::now());
            }
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {}
            Err(e) => {
                return Err(error(
                    "DescribeStreamConsumer",
                    DisplayErrorContext(&e).to_string(),
                ));
            }
        }
        if started.elapsed() > ACTIVE_WITHIN {
            return Err(error(
                "DescribeStreamConsumer",
                format!("not ACTIVE after {ACTIVE_WITHIN:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads a stream's shards through a registered consumer (see the module docs).
pub struct FanOutReader {
    stream: KinesisStream,
    consumer_name: String,
    /// Registered again (a new ARN) when the consumer is found gone.
    consumer_arn: Mutex<String>,
    subscriptions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Subscription>>>>>,
}

type Events = aws_sdk_kinesis::primitives::event_stream::EventReceiver<
    SubscribeToShardEventStream,
    SubscribeToShardEventStreamError,
>;

struct Subscription {
    /// The place its next event continues from (the iterator a read of it names).
    place: String,
    events: Events,
    /// With `deaggregate`: the aggregate and sub-sequence number read up to, until it is passed.
    skip: Option<(String, u64)>,
}

/// An iterator of this reader: where a subscription starts.
const PLACE: &str = "efo:";

fn place(start: &IteratorStart) -> String {
    match start {
        IteratorStart::TrimHorizon => format!("{PLACE}TRIM_HORIZON"),
        IteratorStart::Latest => format!("{PLACE}LATEST"),
        IteratorStart::AfterSequence(id) => format!("{PLACE}AFTER:{id}"),
        IteratorStart::AtTimestamp(at) => format!("{PLACE}AT_TIMESTAMP:{}", at.as_millis()),
    }
}

/// The subscription's starting position for a place, and the user records it skips.
fn starting_position(place: &str) -> Result<(StartingPosition, Option<(String, u64)>), String> {
    let unknown = || format!("{place:?} is not a place of this reader");
    let place = place.strip_prefix(PLACE).ok_or_else(unknown)?;
    let builder = StartingPosition::builder();
    let (builder, skip) = if place == "TRIM_HORIZON" {
        (builder.r#type(ShardIteratorType::TrimHorizon), None)
    } else if place == "LATEST" {
        (builder.r#type(ShardIteratorType::Latest), None)
    } else if let Some(id) = place.strip_prefix("AFTER:") {
        match split_sub_sequence(id) {
            Some((sequence, sub)) => (
                builder
                    .r#type(ShardIteratorType::AtSequenceNumber)
                    .sequence_number(sequence),
                Some((sequence.to_owned(), sub)),
            ),
            None => (
                builder
                    .r#type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(id),
                None,
            ),
        }
    } else if let Some(ms) = place.strip_prefix("AT_TIMESTAMP:") {
        let ms: i64 = ms.parse().map_err(|_| unknown())?;
        (
            builder
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(ms)),
            None,
        )
    } else {
        return Err(unknown());
    };
    Ok((builder.build().map_err(|e| e.to_string())?, skip))
}

impl FanOutReader {
    pub fn new(stream: KinesisStream, consumer_name: String, consumer_arn: String) -> Self {
        FanOutReader {
            stream,
            consumer_name,
            consumer_arn: Mutex::new(consumer_arn),
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    pub fn consumer_arn(&self) -> String {
        self.consumer_arn.lock().expect("consumer lock").clone()
    }

    fn slot(&self, shard_id: &str) -> Arc<tokio::sync::Mutex<Option<Subscription>>> {
        self.subscriptions
            .lock()
            .expect("subscriptions lock")
            .entry(shard_id.to_owned())
            .or_default()
            .clone()
    }

    fn error(&self, operation: &'static str, shard_id: &str, message: String) -> ReadError {
        ReadError::Source(
            self.stream
                .error(operation, format!("shard {shard_id}: {message}")),
        )
    }

    async fn subscribe(&self, shard_id: &str, place: &str) -> Result<Subscription, ReadError> {
        let (position, skip) =
            starting_position(place).map_err(|e| self.error("SubscribeToShard", shard_id, e))?;
        let output = self
            .stream
            .client
            .subscribe_to_shard()
            .consumer_arn(self.consumer_arn())
            .shard_id(shard_id)
            .starting_position(position)
            .send()
            .await;
        if let Err(SdkError::ServiceError(e)) = &output
            && e.err().is_resource_not_found_exception()
        {
            // The consumer was deregistered under the running mapping: register it again, and
            // let the next read subscribe through it.
            let arn = register(
                &self.stream.client,
                &self.stream.stream_arn,
                &self.consumer_name,
            )
            .await?;
            *self.consumer_arn.lock().expect("consumer lock") = arn;
            return Err(self.error(
                "SubscribeToShard",
                shard_id,
                format!(
                    "the consumer {} was gone; it is registered again",
                    self.consumer_name
                ),
            ));
        }
        let output = output.map_err(|e| match &e {
            SdkError::ServiceError(service)
                if matches!(
                    service.err(),
                    SubscribeToShardError::ResourceInUseException(_)
                        | SubscribeToShardError::LimitExceededException(_)
                ) =>
            {
                ReadError::Throttled(format!(
                    "shard {shard_id}: SubscribeToShard: {}",
                    DisplayErrorContext(service.err())
                ))
            }
            _ => self.error(
                "SubscribeToShard",
                shard_id,
                DisplayErrorContext(&e).to_string(),
            ),
        })?;
        Ok(Subscription {
            place: place.to_owned(),
            events: output.event_stream,
            skip,
        })
    }

    fn event_error(
        &self,
        shard_id: &str,
        error: SdkError<
            SubscribeToShardEventStreamError,
            aws_smithy_types::event_stream::RawMessage,
        >,
    ) -> ReadError {
        match &error {
            SdkError::ServiceError(service)
                if matches!(
                    service.err(),
                    SubscribeToShardEventStreamError::KmsThrottlingException(_)
                        | SubscribeToShardEventStreamError::ResourceInUseException(_)
                ) =>
            {
                ReadError::Throttled(format!(
                    "shard {shard_id}: SubscribeToShard event stream: {}",
                    DisplayErrorContext(service.err())
                ))
            }
            _ => self.error(
                "SubscribeToShard",
                shard_id,
                format!("event stream: {}", DisplayErrorContext(&error)),
            ),
        }
    }

    /// The page one event is: its records (past the skip), where the subscription continues.
    fn page(
        &self,
        shard_id: &str,
        subscription: &mut Subscription,
        event: &SubscribeToShardEvent,
        buffered: bool,
    ) -> Result<Page, ReadError> {
        let skip = subscription
            .skip
            .as_ref()
            .map(|(sequence, sub)| (sequence.as_str(), *sub));
        let (records, bytes) = self.stream.page_records(shard_id, event.records(), skip);
        if !event.records().is_empty() {
            subscription.skip = None;
        }
        let continuation = event.continuation_sequence_number();
        // No continuation: the shard is closed and every record of it was sent, which Kinesis
        // says with the child shards. Without them the event is not believed: the shard would
        // be ended for good.
        if continuation.is_empty() && event.child_shards().is_empty() {
            return Err(self.error(
                "SubscribeToShard",
                shard_id,
                "an event with neither a continuation sequence number nor child shards".into(),
            ));
        }
        let next = (!continuation.is_empty()).then(|| match &subscription.skip {
            // The aggregate was not reached yet: the place stays at it.
            Some(_) => subscription.place.clone(),
            None => place(&IteratorStart::AfterSequence(continuation.to_owned())),
        });
        if let Some(next) = &next {
            subscription.place = next.clone();
        }
        Ok(Page {
            records,
            next_iterator: next,
            millis_behind_latest: u64::try_from(event.millis_behind_latest()).ok(),
            bytes,
            at_tip: Some(event.millis_behind_latest() == 0 && !buffered),
        })
    }
}

#[async_trait]
impl ShardReader for FanOutReader {
    fn stream_arn(&self) -> &str {
        &self.stream.stream_arn
    }

    fn region(&self) -> &str {
        &self.stream.region
    }

    async fn list_shards(&self) -> Result<Vec<Shard>, SourceError> {
        self.stream.list_shards().await
    }

    /// A place, not a service iterator: nothing is asked of Kinesis until the read.
    async fn iterator(&self, _shard_id: &str, start: &IteratorStart) -> Result<String, ReadError> {
        Ok(place(start))
    }

    async fn read(&self, shard_id: &str, iterator: &str, _limit: i32) -> Result<Page, ReadError> {
        let slot = self.slot(shard_id);
        let mut slot = slot.lock().await;
        // A subscription serves only the place it reached; any other place starts anew.
        if slot.as_ref().is_some_and(|s| s.place != iterator) {
            *slot = None;
        }
        // Kinesis ends every subscription after five minutes: one that ended is renewed at
        // once, at the place it reached.
        for _ in 0..2 {
            if slot.is_none() {
                *slot = Some(self.subscribe(shard_id, iterator).await?);
            }
            let subscription = slot.as_mut().expect("subscribed above");
            // An event already waiting is taken at once (receiving is cancel-safe), and marked:
            // its MillisBehindLatest is of when it was sent, not of now.
            let (buffered, received) =
                match tokio::time::timeout(Duration::ZERO, subscription.events.recv()).await {
                    Ok(received) => (true, received),
                    Err(_) => {
                        match tokio::time::timeout(EVENT_WAIT, subscription.events.recv()).await {
                            Ok(received) => (false, received),
                            // Kinesis sends an event every few seconds even without records:
                            // this connection is dead (a half-open one never ends by itself).
                            Err(_) => {
                                *slot = None;
                                return Err(self.error(
                                    "SubscribeToShard",
                                    shard_id,
                                    format!("no event for {EVENT_WAIT:?}; subscribing again"),
                                ));
                            }
                        }
                    }
                };
            match received {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    let page = self.page(shard_id, subscription, &event, buffered);
                    if page.is_err() {
                        *slot = None;
                    }
                    return page;
                }
                // An event type this SDK does not know: nothing read, the place stays.
                Ok(Some(_)) => {
                    return Ok(Page {
                        records: Vec::new(),
                        next_iterator: Some(iterator.to_owned()),
                        millis_behind_latest: None,
                        bytes: 0,
                        at_tip: Some(false),
                    });
                }
                Ok(None) => *slot = None,
                Err(error) => {
                    *slot = None;
                    return Err(self.event_error(shard_id, error));
                }
            }
        }
        Err(self.error(
            "SubscribeToShard",
            shard_id,
            "the subscription ended before its first event".into(),
        ))
    }

    async fn release(&self, shard_id: &str) {
        let slot = self
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .remove(shard_id);
        if let Some(slot) = slot {
            slot.lock().await.take();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reader against an HTTP client that answers SubscribeToShard with event-stream frames
    //! built here: moto does not serve SubscribeToShard, and the SDK's mocks cannot stream
    //! events. Each subscription's body is written whole, so it ends after its last frame, as a
    //! subscription does after five minutes.

    use super::*;
    use crate::shards::{CursorRead, ShardCursor};
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    use base64::Engine;
    use serde_json::{Value, json};
    use std::collections::VecDeque;

    const ARN: &str = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders";
    const CONSUMER: &str = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders/consumer/sluice:1";

    enum Answer {
        /// A subscription: these frames, then the end of the stream.
        Frames(Vec<Vec<u8>>),
        /// A subscription whose frames the test sends when it likes; it never ends.
        Feed(tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>),
        /// An error answer to SubscribeToShard itself.
        Refused(&'static str),
    }

    fn frame(message_type: &str, type_header: (&str, &str), payload: Value) -> Vec<u8> {
        let message = Message::new(bytes::Bytes::from(payload.to_string()))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String(message_type.to_owned().into()),
            ))
            .add_header(Header::new(
                type_header.0.to_owned(),
                HeaderValue::String(type_header.1.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let mut bytes = Vec::new();
        write_message_to(&message, &mut bytes).unwrap();
        bytes
    }

    fn event(records: &[(&str, &[u8])], continuation: &str, behind: i64) -> Vec<u8> {
        let records: Vec<Value> = records
            .iter()
            .map(|(sequence, data)| {
                json!({
                    "SequenceNumber": sequence,
                    "ApproximateArrivalTimestamp": 1_800_000_000.25,
                    "Data": base64::engine::general_purpose::STANDARD.encode(data),
                    "PartitionKey": "k",
                })
            })
            .collect();
        let mut event = json!({"Records": records, "MillisBehindLatest": behind});
        if continuation.is_empty() {
            event["ChildShards"] = json!([{
                "ShardId": "shardId-000000000002",
                "ParentShards": ["shardId-000000000000"],
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
            }]);
        } else {
            event["ContinuationSequenceNumber"] = json!(continuation);
        }
        frame("event", (":event-type", "SubscribeToShardEvent"), event)
    }

    /// A response body fed frame by frame.
    struct Feed(tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>);

    impl http_body::Body for Feed {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|frame| frame.map(|bytes| Ok(http_body::Frame::data(bytes.into()))))
        }
    }

    fn exception(kind: &str) -> Vec<u8> {
        frame(
            "exception",
            (":exception-type", kind),
            json!({"message": kind}),
        )
    }

    /// A reader whose SubscribeToShard calls get `answers` in turn; the request bodies are kept.
    fn reader(answers: Vec<Answer>, deaggregate: bool) -> (FanOutReader, Arc<Mutex<Vec<Value>>>) {
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let http = aws_smithy_http_client::test_util::infallible_client_fn(move |request| {
            let body: Value = serde_json::from_slice(request.body().bytes().unwrap()).unwrap();
            seen.lock().unwrap().push(body);
            match answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted answer")
            {
                Answer::Frames(frames) => http::Response::builder()
                    .status(200)
                    .header("content-type", "application/vnd.amazon.eventstream")
                    .body(SdkBody::from(frames.concat()))
                    .unwrap(),
                Answer::Feed(frames) => http::Response::builder()
                    .status(200)
                    .header("content-type", "application/vnd.amazon.eventstream")
                    .body(SdkBody::from_body_1_x(Feed(frames)))
                    .unwrap(),
                Answer::Refused(kind) => http::Response::builder()
                    .status(400)
                    .header("content-type", "application/x-amz-json-1.1")
                    .body(SdkBody::from(
                        json!({"__type": kind, "message": "scripted"}).to_string(),
                    ))
                    .unwrap(),
            }
        });
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("a", "b", None, None, "test"))
            // One answer per call: the SDK's own retries (it retries both refusals below three
            // times before the reader sees them) would consume the script.
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .http_client(http)
            .build();
        let stream = KinesisStream {
            client: Client::from_conf(config),
            stream_arn: ARN.into(),
            region: "eu-west-1".into(),
            invoke_identity_arn: None,
            deaggregate,
        };
        (
            FanOutReader::new(stream, "sluice".into(), CONSUMER.into()),
            requests,
        )
    }

    fn ids(read: &CursorRead) -> Vec<String> {
        match read {
            CursorRead::Page { records, .. } => records.iter().map(|r| r.id().to_owned()).collect(),
            other => panic!("not a page: {other:?}"),
        }
    }

    const SHARD: &str = "shardId-000000000000";

    #[tokio::test]
    async fn reads_follow_the_subscription_and_resubscribe_where_it_ended() {
        let (reader, requests) = reader(
            vec![
                Answer::Frames(vec![
                    event(&[("1", b"a"), ("2", b"b")], "2", 1500),
                    // Kinesis may continue past the last record it sent.
                    event(&[], "4", 0),
                ]),
                Answer::Frames(vec![event(&[("5", b"c")], "5", 0)]),
            ],
            false,
        );
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::TrimHorizon);
        let first = cursor.read(&reader, 100).await.unwrap();
        assert_eq!(ids(&first), ["1", "2"]);
        let CursorRead::Page {
            millis_behind_latest,
            end,
            bytes,
            ..
        } = first
        else {
            unreachable!()
        };
        assert_eq!((millis_behind_latest, end, bytes), (Some(1500), false, 4));
        assert!(ids(&cursor.read(&reader, 100).await.unwrap()).is_empty());
        // The first subscription ended (as Kinesis ends each after five minutes): the read
        // subscribes again after its continuation.
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["5"]);
        let requests = requests.lock().unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0]["ConsumerARN"], CONSUMER);
        assert_eq!(requests[0]["ShardId"], SHARD);
        assert_eq!(
            requests[0]["StartingPosition"],
            json!({"Type": "TRIM_HORIZON"})
        );
        assert_eq!(
            requests[1]["StartingPosition"],
            json!({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": "4"})
        );
    }

    #[tokio::test]
    async fn a_subscription_still_held_is_a_throttle_and_a_closed_shard_ends_the_cursor() {
        let (reader, requests) = reader(
            vec![
                Answer::Refused("ResourceInUseException"),
                Answer::Refused("LimitExceededException"),
                Answer::Frames(vec![event(&[("9", b"z")], "", 0)]),
            ],
            false,
        );
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::AfterSequence("8".into()));
        for _ in 0..2 {
            let read = cursor.read(&reader, 100).await.unwrap();
            assert!(matches!(read, CursorRead::Throttled { .. }), "{read:?}");
        }
        let last = cursor.read(&reader, 100).await.unwrap();
        assert_eq!(ids(&last), ["9"]);
        assert!(matches!(last, CursorRead::Page { end: true, .. }));
        // Every attempt subscribed at the checkpoint: a throttle keeps the place.
        for request in requests.lock().unwrap().iter() {
            assert_eq!(
                request["StartingPosition"],
                json!({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": "8"})
            );
        }
    }

    #[tokio::test]
    async fn errors_in_the_event_stream_resubscribe_after_the_last_record_read() {
        let (reader, requests) = reader(
            vec![
                Answer::Frames(vec![
                    event(&[("1", b"a")], "3", 0),
                    exception("KMSThrottlingException"),
                ]),
                Answer::Frames(vec![
                    event(&[("4", b"b")], "5", 0),
                    exception("InternalFailureException"),
                ]),
                Answer::Frames(vec![event(&[("6", b"c")], "6", 0)]),
            ],
            false,
        );
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::Latest);
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["1"]);
        let throttled = cursor.read(&reader, 100).await.unwrap();
        assert!(
            matches!(throttled, CursorRead::Throttled { .. }),
            "{throttled:?}"
        );
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["4"]);
        let failed = cursor.read(&reader, 100).await;
        assert!(
            failed
                .as_ref()
                .is_err_and(|e| e.to_string().contains("InternalFailureException")),
            "{failed:?}"
        );
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["6"]);
        let positions: Vec<Value> = requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r["StartingPosition"].clone())
            .collect();
        assert_eq!(
            positions,
            [
                json!({"Type": "LATEST"}),
                // A throttle keeps the place the subscription had reached (its continuation).
                json!({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": "3"}),
                // Another error starts again after the last record read.
                json!({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": "4"}),
            ]
        );
    }

    #[tokio::test]
    async fn a_place_inside_an_aggregate_subscribes_at_it_and_skips_what_was_read() {
        let users: Vec<super::super::kpl::UserRecord> = (0..3)
            .map(|n| super::super::kpl::UserRecord {
                partition_key: format!("p{n}"),
                explicit_hash_key: None,
                data: format!("u{n}").into_bytes(),
            })
            .collect();
        let aggregate = super::super::kpl::aggregate(&users);
        let (reader, requests) = reader(
            vec![Answer::Frames(vec![
                // An empty event first: the skip holds until the aggregate comes.
                event(&[], "4", 0),
                event(&[("5", &aggregate), ("6", b"plain")], "6", 0),
            ])],
            true,
        );
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::AfterSequence("5:1".into()));
        assert!(ids(&cursor.read(&reader, 100).await.unwrap()).is_empty());
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["5:2", "6"]);
        assert_eq!(
            requests.lock().unwrap()[0]["StartingPosition"],
            json!({"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": "5"})
        );
    }

    #[tokio::test]
    async fn a_released_shard_lets_its_subscription_go() {
        let (reader, requests) = reader(
            vec![
                Answer::Frames(vec![event(&[("1", b"a")], "1", 0), event(&[], "1", 0)]),
                Answer::Frames(vec![event(&[("2", b"b")], "2", 0)]),
            ],
            false,
        );
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::TrimHorizon);
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["1"]);
        reader.release(SHARD).await;
        // The next owner of the shard (here, the same reader) subscribes again at its place.
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::AfterSequence("1".into()));
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["2"]);
        assert_eq!(requests.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_consumer_is_registered_and_waited_for_until_active() {
        use aws_sdk_kinesis::operation::describe_stream_consumer::{
            DescribeStreamConsumerError, DescribeStreamConsumerOutput,
        };
        use aws_sdk_kinesis::operation::register_stream_consumer::RegisterStreamConsumerOutput;
        use aws_sdk_kinesis::types::error::ResourceNotFoundException;
        use aws_sdk_kinesis::types::{Consumer, ConsumerDescription};
        use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};
        let described = |status: ConsumerStatus| {
            DescribeStreamConsumerOutput::builder()
                .consumer_description(
                    ConsumerDescription::builder()
                        .consumer_name("sluice")
                        .consumer_arn(CONSUMER)
                        .consumer_status(status)
                        .consumer_creation_timestamp(DateTime::from_secs(0))
                        .stream_arn(ARN)
                        .build()
                        .unwrap(),
                )
                .build()
        };
        let calls = Arc::new(Mutex::new(0u32));
        let counted = calls.clone();
        let describe =
            mock!(Client::describe_stream_consumer).then_compute_response(move |request| {
                assert_eq!(
                    (request.stream_arn(), request.consumer_name()),
                    (Some(ARN), Some("sluice"))
                );
                let mut calls = counted.lock().unwrap();
                *calls += 1;
                match *calls {
                    1 => {
                        MockResponse::Error(DescribeStreamConsumerError::ResourceNotFoundException(
                            ResourceNotFoundException::builder().message("no").build(),
                        ))
                    }
                    2 => MockResponse::Output(described(ConsumerStatus::Creating)),
                    _ => MockResponse::Output(described(ConsumerStatus::Active)),
                }
            });
        let registered = mock!(Client::register_stream_consumer).then_output(|| {
            RegisterStreamConsumerOutput::builder()
                .consumer(
                    Consumer::builder()
                        .consumer_name("sluice")
                        .consumer_arn(CONSUMER)
                        .consumer_status(ConsumerStatus::Creating)
                        .consumer_creation_timestamp(DateTime::from_secs(0))
                        .build()
                        .unwrap(),
                )
                .build()
        });
        let client = mock_client!(
            aws_sdk_kinesis,
            RuleMode::MatchAny,
            [&describe, &registered]
        );
        assert_eq!(register(&client, ARN, "sluice").await.unwrap(), CONSUMER);
        assert_eq!(registered.num_calls(), 1);
        assert_eq!(*calls.lock().unwrap(), 3);
    }

    fn at_tip(read: &CursorRead) -> Option<bool> {
        match read {
            CursorRead::Page { at_tip, .. } => *at_tip,
            other => panic!("not a page: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_subscription_is_dropped_and_only_fresh_events_say_the_shard_is_caught_up() {
        let (feed, frames) = tokio::sync::mpsc::unbounded_channel();
        let (reader, requests) = reader(
            vec![
                Answer::Feed(frames),
                Answer::Frames(vec![event(&[("7", b"g")], "7", 0)]),
            ],
            false,
        );
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::TrimHorizon);
        // Two events waiting when the read comes: neither says the shard is caught up now.
        feed.send(event(&[("1", b"a")], "1", 0)).unwrap();
        feed.send(event(&[("2", b"b")], "2", 0)).unwrap();
        let first = cursor.read(&reader, 100).await.unwrap();
        assert_eq!(
            (ids(&first), at_tip(&first)),
            (vec!["1".to_owned()], Some(false))
        );
        let second = cursor.read(&reader, 100).await.unwrap();
        assert_eq!(
            (ids(&second), at_tip(&second)),
            (vec!["2".to_owned()], Some(false))
        );
        // One that comes while the read waits is news.
        let sender = feed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            sender.send(event(&[("3", b"c")], "3", 0)).unwrap();
        });
        let fresh = cursor.read(&reader, 100).await.unwrap();
        assert_eq!(
            (ids(&fresh), at_tip(&fresh)),
            (vec!["3".to_owned()], Some(true))
        );
        // Then nothing for EVENT_WAIT (a half-open connection): the read fails, and the next
        // subscribes again after the last record read.
        let silent = tokio::time::Instant::now();
        let failed = cursor.read(&reader, 100).await;
        assert!(
            failed
                .as_ref()
                .is_err_and(|e| e.to_string().contains("no event")),
            "{failed:?}"
        );
        assert_eq!(silent.elapsed(), EVENT_WAIT);
        assert_eq!(ids(&cursor.read(&reader, 100).await.unwrap()), ["7"]);
        assert_eq!(
            requests.lock().unwrap()[1]["StartingPosition"],
            json!({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": "3"})
        );
        drop(feed);
    }

    #[tokio::test]
    async fn an_event_without_continuation_or_children_does_not_end_the_shard() {
        let mut bare = event(&[("1", b"a")], "1", 0);
        bare = {
            // The same event without its continuation, and no child shards.
            let payload = json!({"Records": [], "MillisBehindLatest": 0});
            let _ = bare;
            frame("event", (":event-type", "SubscribeToShardEvent"), payload)
        };
        let (reader, _) = reader(
            vec![
                Answer::Frames(vec![bare]),
                Answer::Frames(vec![event(&[("2", b"b")], "2", 0)]),
            ],
            false,
        );
        let mut cursor = ShardCursor::new(SHARD, IteratorStart::AfterSequence("1".into()));
        let read = cursor.read(&reader, 100).await;
        assert!(
            read.as_ref()
                .is_err_and(|e| e.to_string().contains("neither")),
            "{read:?}"
        );
        let next = cursor.read(&reader, 100).await.unwrap();
        assert_eq!(ids(&next), ["2"]);
        assert!(matches!(next, CursorRead::Page { end: false, .. }));
    }
}
