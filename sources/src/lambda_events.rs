//! Every event sluice builds, read by `aws_lambda_events` (the types Rust functions on Lambda
//! use) and written back: a field sluice misnames or mistypes shows here as a parse error or as a
//! field the crate's types do not carry back (issue 18: events checked against a crate users
//! rely on).
//!
//! The comparison walks every value sluice wrote and looks it up in what the crate wrote back;
//! the crate may add fields of its own (defaults it always writes) and write two values its own
//! way (a Kafka `timestamp` as a string of its milliseconds, an S3 `eventTime` in another RFC 3339
//! form), but may not lose or change any other of ours.

use crate::kafka::{KafkaCluster, MessageParts, TimestampKind};
use crate::queue::QueueDescription;
use crate::records_event;
use serde_json::{Value, json};
use std::time::Duration;

/// Paths (`Records[0].s3.object.key`) where `ours` and `theirs` differ or `theirs` lacks a value.
fn lost_or_changed(ours: &Value, theirs: &Value, path: &str, found: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(ours), Value::Object(theirs)) => {
            for (key, value) in ours {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match theirs.get(key) {
                    Some(other) => lost_or_changed(value, other, &path, found),
                    None if value.is_null() => {}
                    None => found.push(format!("{path}: lost ({value})")),
                }
            }
        }
        (Value::Array(ours), Value::Array(theirs)) if ours.len() == theirs.len() => {
            for (index, (value, other)) in ours.iter().zip(theirs).enumerate() {
                lost_or_changed(value, other, &format!("{path}[{index}]"), found);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        // The crate's own representations of the same value: a Kafka timestamp written back as
        // a string of its milliseconds, an S3 event time re-formatted (`.000Z` → `Z`).
        (Value::Number(a), Value::String(b))
            if path.ends_with(".timestamp") && b.parse::<f64>().ok() == a.as_f64() => {}
        (Value::String(a), Value::String(b))
            if path.ends_with(".eventTime") && same_instant(a, b) => {}
        (a, b) if a == b => {}
        (a, b) => found.push(format!("{path}: {a} became {b}")),
    }
}

/// Two RFC 3339 times naming the same instant.
fn same_instant(a: &str, b: &str) -> bool {
    let parse = |text: &str| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
    };
    matches!((parse(a), parse(b)), (Some(a), Some(b)) if a == b)
}

/// Reads `event` as `T`, writes it back, and returns what did not survive.
fn check<T: serde::de::DeserializeOwned + serde::Serialize>(event: &[u8]) -> Vec<String> {
    let ours: Value = serde_json::from_slice(event).unwrap();
    let typed: T = serde_json::from_slice(event)
        .unwrap_or_else(|error| panic!("aws_lambda_events cannot read {ours}: {error}"));
    let theirs = serde_json::to_value(&typed).unwrap();
    let mut found = Vec::new();
    lost_or_changed(&ours, &theirs, "", &mut found);
    found
}

#[test]
fn the_sqs_event_reads_as_aws_lambda_events_sqs_event() {
    use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
    let message = Message::builder()
        .message_id("059f36b4-87a3-44ab-83d2-661975830a7d")
        .receipt_handle("AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a")
        .body("{\"order\":17}")
        .md5_of_body("e4e68fb7bd0e697a0ae8f1bb342846b3")
        .md5_of_message_attributes("00484c68...59e48fb7")
        .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "1")
        .attributes(MessageSystemAttributeName::SentTimestamp, "1765000000000")
        .attributes(
            MessageSystemAttributeName::SenderId,
            "AIDAIENQZJOLO23YVJ4VO",
        )
        .attributes(
            MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
            "1765000000100",
        )
        .message_attributes(
            "kind",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("order")
                .build()
                .unwrap(),
        )
        .build();
    let description = QueueDescription {
        url: "https://sqs.us-east-1.amazonaws.com/123456789012/orders".into(),
        arn: "arn:aws:sqs:us-east-1:123456789012:orders".into(),
        region: "us-east-1".into(),
        fifo: false,
        visibility_timeout: Duration::from_secs(30),
    };
    let record = crate::sqs::record_from_message(&description, &message);
    let event = records_event([&record]);
    assert_eq!(
        check::<aws_lambda_events::sqs::SqsEvent>(&event),
        Vec::<String>::new()
    );
}

#[test]
fn the_kafka_event_reads_as_aws_lambda_events_kafka_event() {
    let headers = vec![
        ("trace".into(), Some(&[104u8, 255][..])),
        ("empty".into(), None),
    ];
    let first = MessageParts {
        topic: "clicks",
        partition: 2,
        offset: 7,
        timestamp: Some((1_765_000_000_000, TimestampKind::CreateTime)),
        key: Some(b"k1"),
        value: Some(b"{\"a\":1}"),
        headers,
    };
    let second = MessageParts {
        offset: 8,
        key: None,
        timestamp: Some((1_765_000_001_000, TimestampKind::LogAppendTime)),
        headers: vec![],
        ..first.clone()
    };
    let records = [
        first.to_record(Duration::ZERO),
        second.to_record(Duration::ZERO),
    ];
    for cluster in [
        KafkaCluster {
            bootstrap_servers: "b-1:9092,b-2:9092".into(),
            msk_cluster_arn: None,
        },
        KafkaCluster {
            bootstrap_servers: "b-1:9092".into(),
            msk_cluster_arn: Some("arn:aws:kafka:us-east-1:123456789012:cluster/c/1".into()),
        },
    ] {
        let event = crate::kafka::event(&cluster, records.iter());
        assert_eq!(
            check::<aws_lambda_events::kafka::KafkaEvent>(&event),
            Vec::<String>::new(),
            "{}",
            String::from_utf8_lossy(&event)
        );
    }
}

#[test]
fn the_s3_events_read_as_aws_lambda_events_s3_event() {
    // A notification as S3 sends it, and the record sluice builds from an EventBridge event.
    let notification = json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2025-12-06T05:46:40.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "uploads",
               "bucket": {"name": "photos", "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": "arn:aws:s3:::photos"},
               "object": {"key": "cat+photo.jpg", "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0055AED6DCD90281E5"}}
    }]});
    let eventbridge = json!({
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created", "source": "aws.s3", "account": "123456789012",
        "time": "2025-12-06T05:46:40Z", "region": "us-east-1",
        "resources": ["arn:aws:s3:::photos"],
        "detail": {
            "version": "0", "bucket": {"name": "photos"},
            "object": {"key": "cat photo.jpg", "size": 1024, "etag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "00617F08299329D189"},
            "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
            "source-ip-address": "203.0.113.7", "reason": "PutObject"
        }
    });
    for body in [notification, eventbridge] {
        let crate::s3::Notification::Records(records) =
            crate::s3::parse_notification(&body.to_string()).unwrap()
        else {
            panic!("records expected")
        };
        // sluice invokes with one record per event.
        let event = serde_json::to_vec(&json!({ "Records": [records[0]] })).unwrap();
        assert_eq!(
            check::<aws_lambda_events::s3::S3Event>(&event),
            Vec::<String>::new(),
            "{}",
            String::from_utf8_lossy(&event)
        );
    }
}

#[test]
fn the_dynamodb_event_reads_as_aws_lambda_events_dynamodb_event() {
    use aws_sdk_dynamodbstreams::primitives::{Blob, DateTime};
    use aws_sdk_dynamodbstreams::types::{
        AttributeValue, OperationType, Record as StreamRecord, StreamRecord as Change,
        StreamViewType,
    };
    let record = StreamRecord::builder()
        .event_id("7de3041dd709b024af6f29e4fa13d34c")
        .event_name(OperationType::Modify)
        .event_version("1.1")
        .event_source("aws:dynamodb")
        .aws_region("eu-west-1")
        .dynamodb(
            Change::builder()
                .approximate_creation_date_time(DateTime::from_secs(1_765_000_000))
                .keys("Id", AttributeValue::N("101".into()))
                .new_image("Id", AttributeValue::N("101".into()))
                .new_image("Blob", AttributeValue::B(Blob::new(b"foobar".to_vec())))
                .new_image("Name", AttributeValue::S("cat".into()))
                .new_image(
                    "Tags",
                    AttributeValue::L(vec![
                        AttributeValue::S("a".into()),
                        AttributeValue::Bool(true),
                    ]),
                )
                .old_image("Id", AttributeValue::N("101".into()))
                .sequence_number("111")
                .size_bytes(26)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build(),
        )
        .build();
    let arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/t/stream/2025-12-01T00:00:00.000";
    let event = serde_json::to_vec(&json!({
        "Records": [crate::dynamodb_streams::event::lambda_record(&record, arn, "us-east-1")]
    }))
    .unwrap();
    assert_eq!(
        check::<aws_lambda_events::dynamodb::Event>(&event),
        Vec::<String>::new(),
        "{}",
        String::from_utf8_lossy(&event)
    );
}

#[test]
fn a_kinesis_event_reads_as_the_crates_kinesis_event() {
    use crate::kinesis::event::{KinesisOrigin, KinesisRecordParts, lambda_record};
    let origin = KinesisOrigin {
        stream_arn: "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
        region: "eu-west-1",
        invoke_identity_arn: Some("arn:aws:iam::123456789012:role/orders-consumer"),
    };
    let record = |sequence: &str, data: &[u8], encryption: Option<&str>| {
        lambda_record(
            &KinesisRecordParts {
                shard_id: "shardId-000000000003",
                sequence_number: sequence,
                sub_sequence_number: None,
                partition_key: "customer-17",
                data,
                arrived_at: Duration::from_millis(1_765_000_000_250),
                encryption_type: encryption,
            },
            &origin,
        )
    };
    let records = [
        record(
            "49590338271490256608559692538361571095921575989136588898",
            br#"{"order":17}"#,
            None,
        ),
        record(
            "49590338271490256608559692540925702759324208523137515618",
            &[0, 159, 146, 150],
            Some("KMS"),
        ),
    ];
    let event = format!(r#"{{"Records":[{}]}}"#, records.join(",")).into_bytes();
    // The crate mis-scales fractional seconds both ways (dependencies.md trap 8: it reads .250
    // as a quarter of a millisecond), and Lambda sends them too; so the arrival time is checked
    // to the second, as the crate reads it, below.
    let lost: Vec<String> = check::<aws_lambda_events::kinesis::KinesisEvent>(&event)
        .into_iter()
        .filter(|found| !found.contains(".kinesis.approximateArrivalTimestamp: "))
        .collect();
    assert_eq!(
        lost,
        Vec::<String>::new(),
        "{}",
        String::from_utf8_lossy(&event)
    );
    let typed: aws_lambda_events::kinesis::KinesisEvent = serde_json::from_slice(&event).unwrap();
    for record in &typed.records {
        assert_eq!(
            record.kinesis.approximate_arrival_timestamp.0.timestamp(),
            1_765_000_000
        );
    }
}
