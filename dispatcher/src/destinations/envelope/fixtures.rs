//! The envelope's JSON fixtures (`tests/fixtures/envelopes/`), one per kind of record sluice
//! writes, and two records written by Lambda itself (from AWS's documentation). Each fixture is
//! checked three ways: it is exactly what the writer produces (with the time and request id
//! fixed), it reads into [`Envelope`] and writes back unchanged, and `sluice dlq` reads its
//! records. `SLUICE_BLESS_FIXTURES=1 cargo test -p sluice --lib fixtures::every_fixture` rewrites
//! the sluice-written ones from the writers, for a deliberate change of the contract (review the
//! diff: the files are the contract). `newer-sluice-unknown-fields.json` stands for what a newer
//! sluice could write: a source kind and fields this version does not know.

use super::*;
use crate::destinations::kafka::record_message;
use crate::destinations::sqs::{DEFAULT_MESSAGE_BYTES, SpillPointer, reduced};
use crate::dlq::{Entry, RecordKind};
use serde_json::json;
use sluice_policies::{DeadLetterCondition, ErrorInfo};
use std::path::PathBuf;
use std::time::Duration;

const TIMESTAMP: &str = "2025-12-06T05:50:00.000Z";
const REQUEST_ID: &str = "3f0d6c1e-8a1b-4c55-9d3e-6b2f1a7c9e10";
/// 2025-12-06T05:46:40Z and a minute later.
const FIRST_ATTEMPT: Duration = Duration::from_millis(1_765_000_000_000);
const LAST_ATTEMPT: Duration = Duration::from_millis(1_765_000_060_000);

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/envelopes")
}

fn sqs_record(id: &str, body: &str) -> Value {
    json!({
        "messageId": id,
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "3",
            "SentTimestamp": "1765000000000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1765000000100"
        },
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders",
        "awsRegion": "us-east-1"
    })
}

fn dead_letter(source: EnvelopeSource, records: Vec<Value>) -> DeadLetter {
    DeadLetter {
        mapping: "orders".into(),
        target: "api".into(),
        region: "us-east-1".into(),
        condition: DeadLetterCondition::RetryAttemptsExhausted,
        attempts: 3,
        error: ErrorInfo::new("ValueError", "order 17 has no customer"),
        function_error: Some("Unhandled".into()),
        source,
        records,
        first_attempt_at: FIRST_ATTEMPT,
        last_attempt_at: LAST_ATTEMPT,
    }
}

fn sqs_dead_letter() -> DeadLetter {
    dead_letter(
        EnvelopeSource::Sqs {
            queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/orders".into(),
            queue_arn: "arn:aws:sqs:us-east-1:123456789012:orders".into(),
            message_ids: vec!["059f36b4-87a3-44ab-83d2-661975830a7d".into()],
        },
        vec![sqs_record(
            "059f36b4-87a3-44ab-83d2-661975830a7d",
            "{\"order\":17}",
        )],
    )
}

fn dynamodb_dead_letter() -> DeadLetter {
    let record = |sequence: &str, id: &str| {
        json!({
            "eventID": format!("c4ca4238a0b923820dcc509a6f75849{id}"),
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": 1765000000,
                "Keys": { "Id": { "N": id } },
                "NewImage": { "Id": { "N": id }, "Message": { "S": "New item!" } },
                "SequenceNumber": sequence,
                "SizeBytes": 26,
                "StreamViewType": "NEW_AND_OLD_IMAGES"
            },
            "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/items/stream/2025-12-01T00:00:00.000"
        })
    };
    DeadLetter {
        // The function returned a partial batch response: no `Unhandled` (semantics.md §13.6).
        function_error: None,
        ..dead_letter(
            EnvelopeSource::DynamodbStream {
                stream_arn:
                    "arn:aws:dynamodb:us-east-1:123456789012:table/items/stream/2025-12-01T00:00:00.000"
                        .into(),
                shard_id: "shardId-00000001765000000000-a1b2c3d4".into(),
                sequence_numbers: vec!["111".into(), "112".into()],
                first_arrival: Duration::from_millis(1_765_000_000_250),
                last_arrival: Duration::from_millis(1_765_000_001_750),
            },
            vec![record("111", "1"), record("112", "2")],
        )
    }
}

fn kinesis_dead_letter() -> DeadLetter {
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
    let record = |sequence: &str, data: &str| {
        json!({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "customer-17",
                "sequenceNumber": sequence,
                "data": data,
                "approximateArrivalTimestamp": 1_765_000_000.25
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": format!("shardId-000000000001:{sequence}"),
            "eventName": "aws:kinesis:record",
            "awsRegion": "us-east-1",
            "eventSourceARN": arn
        })
    };
    let first = "49590338271490256608559692538361571095921575989136588898";
    let last = "49590338271490256608559692540925702759324208523137515618";
    dead_letter(
        EnvelopeSource::Kinesis {
            stream_arn: arn.into(),
            shard_id: "shardId-000000000001".into(),
            sequence_numbers: vec![first.into(), last.into()],
            first_arrival: Duration::from_millis(1_765_000_000_250),
            last_arrival: Duration::from_millis(1_765_000_001_750),
        },
        vec![
            record(first, "eyJvcmRlciI6MTd9"),
            record(last, "eyJvcmRlciI6MTh9"),
        ],
    )
}

fn aged_out_dead_letter() -> DeadLetter {
    DeadLetter {
        condition: DeadLetterCondition::RecordAgeExceeded,
        attempts: 1,
        error: ErrorInfo::new(
            "RecordAgeExceeded",
            "the record is older than max_record_age",
        ),
        function_error: None,
        ..dynamodb_dead_letter()
    }
}

fn kafka_dead_letter() -> DeadLetter {
    dead_letter(
        EnvelopeSource::Kafka {
            cluster: sluice_sources::kafka::KafkaCluster {
                bootstrap_servers: "b-1.kafka:9092,b-2.kafka:9092".into(),
                msk_cluster_arn: None,
            },
            topic: "clicks".into(),
            partition: 2,
            offsets: vec![7, 8],
            first_timestamp: 1_765_000_000_000,
            last_timestamp: 1_765_000_001_000,
        },
        vec![
            json!({"topic": "clicks", "partition": 2, "offset": 7, "timestamp": 1_765_000_000_000_i64,
                   "timestampType": "CREATE_TIME", "key": "azE=", "value": "eyJhIjoxfQ==", "headers": []}),
            json!({"topic": "clicks", "partition": 2, "offset": 8, "timestamp": 1_765_000_001_000_i64,
                   "timestampType": "CREATE_TIME", "value": "eyJhIjoyfQ==", "headers": [{"trace": [104, -1]}]}),
        ],
    )
}

fn async_record(
    source: EnvelopeSource,
    request_payload: Value,
    response: Result<Option<Value>, ErrorInfo>,
) -> AsyncRecord {
    AsyncRecord {
        mapping: "uploads".into(),
        target: "thumbnailer".into(),
        region: "us-east-1".into(),
        condition: if response.is_ok() {
            "Success"
        } else {
            "RetriesExhausted"
        },
        invoke_count: if response.is_ok() { 1 } else { 3 },
        request_id: REQUEST_ID.into(),
        request_payload,
        response,
        source,
        first_attempt_at: FIRST_ATTEMPT,
        last_attempt_at: LAST_ATTEMPT,
    }
}

fn s3_failure() -> AsyncRecord {
    async_record(
        EnvelopeSource::S3 {
            queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/uploads".into(),
            queue_arn: "arn:aws:sqs:us-east-1:123456789012:uploads".into(),
            message_ids: vec!["5b7c1c2e-2f2a-4d1e-9d86-3f1e2a9b8c7d".into()],
        },
        json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2025-12-06T05:46:40.000Z", "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
            "requestParameters": {"sourceIPAddress": "203.0.113.7"},
            "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "uploads",
                   "bucket": {"name": "photos", "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": "arn:aws:s3:::photos"},
                   "object": {"key": "cat.jpg", "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0055AED6DCD90281E5"}}
        }]}),
        Err(ErrorInfo::new("ImageError", "not a JPEG")),
    )
}

fn invoke_success() -> AsyncRecord {
    async_record(
        EnvelopeSource::Invoke {
            function: "thumbnailer".into(),
            request_id: REQUEST_ID.into(),
        },
        json!({"bucket": "photos", "key": "cat.jpg"}),
        Ok(Some(json!({"thumbnail": "thumbs/cat.jpg"}))),
    )
}

fn schedule_failure() -> AsyncRecord {
    let id = "3f1c2b9e-6a7d-5c4b-9e8f-1a2b3c4d5e6f";
    let mut record = async_record(
        EnvelopeSource::Schedule {
            schedule_arn: "arn:aws:events:us-east-1:000000000000:rule/nightly".into(),
            event_id: id.into(),
        },
        json!({
            "version": "0", "id": id, "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "000000000000", "time": "2025-12-06T02:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:000000000000:rule/nightly"], "detail": {}
        }),
        Err(ErrorInfo::new("ReportError", "the warehouse is down")),
    );
    record.mapping = "nightly".into();
    record.request_id = id.into();
    record
}

/// The same time and request id in every fixture.
fn fixed(mut document: Value) -> Value {
    document["timestamp"] = json!(TIMESTAMP);
    document
}

/// Each sluice-written fixture and what the writer produces for it now.
fn written() -> Vec<(&'static str, Value)> {
    let kafka = kafka_dead_letter();
    let with_payload = {
        let letter = dynamodb_dead_letter();
        let mut envelope = letter.envelope(REQUEST_ID);
        envelope.payload = Some(letter.event_payload());
        envelope.to_value()
    };
    let sqs = sqs_dead_letter().to_json(REQUEST_ID);
    let size = sqs.to_string().len();
    vec![
        ("sqs.json", fixed(sqs.clone())),
        (
            "dynamodb-partial.json",
            fixed(dynamodb_dead_letter().to_json(REQUEST_ID)),
        ),
        (
            "dynamodb-aged-out.json",
            fixed(aged_out_dead_letter().to_json(REQUEST_ID)),
        ),
        ("dynamodb-s3-object.json", fixed(with_payload)),
        ("kafka.json", fixed(kafka.to_json(REQUEST_ID))),
        (
            "kinesis.json",
            fixed(kinesis_dead_letter().to_json(REQUEST_ID)),
        ),
        (
            "kafka-topic-message.json",
            fixed(record_message(&kafka, &kafka.records[1], REQUEST_ID)),
        ),
        ("s3-async-failure.json", fixed(s3_failure().to_json())),
        (
            "invoke-async-success.json",
            fixed(invoke_success().to_json()),
        ),
        (
            "schedule-async-failure.json",
            fixed(schedule_failure().to_json()),
        ),
        (
            "sqs-cut.json",
            fixed(reduced(sqs, size, DEFAULT_MESSAGE_BYTES)),
        ),
    ]
}

fn read(name: &str) -> Value {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn every_fixture_is_what_sluice_writes() {
    let bless = std::env::var("SLUICE_BLESS_FIXTURES").is_ok_and(|v| v == "1");
    for (name, produced) in written() {
        if bless {
            let text = serde_json::to_string_pretty(&produced).unwrap() + "\n";
            std::fs::write(dir().join(name), text).unwrap();
            continue;
        }
        assert_eq!(
            produced,
            read(name),
            "{name}: the writer no longer produces the fixture (a contract change? then bless it)"
        );
    }
}

#[test]
fn every_envelope_fixture_reads_into_the_types_and_writes_back_unchanged() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json") && name != "spill-pointer.json")
        .collect();
    names.sort();
    assert!(names.len() >= 12, "fixtures missing: {names:?}");
    for name in names {
        let document = read(&name);
        let envelope = Envelope::parse(&document).unwrap_or_else(|| panic!("{name} does not read"));
        assert_eq!(
            envelope.to_value(),
            document,
            "{name} changed on the way back"
        );
        if !name.starts_with("newer-") {
            assert!(
                envelope.other.is_empty(),
                "{name}: unknown fields {:?}",
                envelope.other
            );
        }
    }
}

#[test]
fn dlq_reads_the_records_and_history_of_every_fixture() {
    let cases = [
        (
            "sqs.json",
            RecordKind::Sqs,
            vec!["059f36b4-87a3-44ab-83d2-661975830a7d"],
        ),
        (
            "dynamodb-partial.json",
            RecordKind::DynamodbStream,
            vec!["111", "112"],
        ),
        (
            "dynamodb-s3-object.json",
            RecordKind::DynamodbStream,
            vec!["111", "112"],
        ),
        (
            "kafka.json",
            RecordKind::Kafka,
            vec!["clicks-2@7", "clicks-2@8"],
        ),
        (
            "kinesis.json",
            RecordKind::Kinesis,
            vec![
                "shardId-000000000001:49590338271490256608559692538361571095921575989136588898",
                "shardId-000000000001:49590338271490256608559692540925702759324208523137515618",
            ],
        ),
        (
            "kafka-topic-message.json",
            RecordKind::Kafka,
            vec!["clicks-2@8"],
        ),
        (
            "s3-async-failure.json",
            RecordKind::S3,
            vec!["s3://photos/cat.jpg"],
        ),
        (
            "aws-dynamodb-on-failure.json",
            RecordKind::DynamodbStream,
            vec![],
        ),
        (
            "aws-kafka-topic-message.json",
            RecordKind::Kafka,
            vec!["mytopic-0@15"],
        ),
        (
            "schedule-async-failure.json",
            RecordKind::Schedule,
            vec!["3f1c2b9e-6a7d-5c4b-9e8f-1a2b3c4d5e6f@2025-12-06T02:00:00Z"],
        ),
    ];
    for (name, kind, ids) in cases {
        let entry = Entry::from_envelope(
            name.into(),
            read(name),
            kind,
            crate::dlq::Handle::S3 { key: name.into() },
        );
        assert_eq!(entry.kind, kind, "{name}");
        assert_eq!(entry.record_ids(), ids, "{name}");
        assert!(!entry.condition.is_empty(), "{name}");
        assert!(entry.attempts >= 1, "{name}");
        assert_eq!(entry.unreadable.is_some(), ids.is_empty(), "{name}");
    }
    let sqs = Entry::from_envelope(
        "m".into(),
        read("sqs.json"),
        RecordKind::Kafka,
        crate::dlq::Handle::S3 { key: "m".into() },
    );
    assert_eq!(
        (sqs.error_type.as_str(), sqs.attempts, sqs.at.as_deref()),
        ("ValueError", 3, Some(TIMESTAMP))
    );
}

// Review of the typed envelope: a stored envelope is rewritten by a replay; what this version
// does not know (a newer sluice's source kind, fields inside nested objects) or cannot read (a
// field of another type) must come back as it was, and nothing may be added but what changed.
#[test]
fn a_rewritten_envelope_keeps_what_it_does_not_know_and_invents_nothing() {
    let mut stored = read("newer-sluice-unknown-fields.json");
    stored["requestContext"]["approximateInvokeCount"] = json!("2");
    let entry = Entry::from_envelope(
        "m".into(),
        stored.clone(),
        RecordKind::Sqs,
        crate::dlq::Handle::S3 { key: "m".into() },
    );
    assert_eq!(entry.kind, RecordKind::Sqs, "an unknown kind falls back");
    assert_eq!(
        entry.attempts, 2,
        "a count of another type reads from sluice.attempts"
    );
    assert_eq!(entry.records.len(), 1);
    assert_eq!(entry.error_type, "ValueError");
    let again = ErrorInfo::new("StillBad", "again");
    let rewritten = entry.rewritten(entry.records.clone(), Some(&again));
    let mut expected = stored.clone();
    expected["sluice"]["replay_count"] = json!(1);
    expected["sluice"]["error"]["type"] = json!("StillBad");
    expected["sluice"]["error"]["message"] = json!("again");
    expected["sluice"]["last_replay_at"] = rewritten["sluice"]["last_replay_at"].clone();
    assert!(rewritten["sluice"]["last_replay_at"].is_string());
    assert_eq!(rewritten, expected);

    // Lambda's Kafka-topic message has no `sluice`: a rewrite adds only what it sets.
    let lambda = read("aws-kafka-topic-message.json");
    let entry = Entry::from_envelope(
        "t".into(),
        lambda.clone(),
        RecordKind::Kafka,
        crate::dlq::Handle::S3 { key: "t".into() },
    );
    let rewritten = entry.rewritten(entry.records.clone(), None);
    let mut expected = lambda;
    expected["sluice"] = json!({ "records": entry.records, "replay_count": 0 });
    assert_eq!(rewritten, expected);

    // An S3 destination object keeps the event beside the records: both are cut alike.
    let object = read("dynamodb-s3-object.json");
    let entry = Entry::from_envelope(
        "o".into(),
        object,
        RecordKind::DynamodbStream,
        crate::dlq::Handle::S3 { key: "o".into() },
    );
    let left = vec![entry.records[1].clone()];
    let rewritten = entry.rewritten(left.clone(), None);
    assert_eq!(rewritten["payload"]["Records"], json!(left));
    assert_eq!(rewritten["sluice"]["records"], json!(left));
}

#[test]
fn the_spill_pointer_fixture_is_the_extended_client_format() {
    let text = std::fs::read_to_string(dir().join("spill-pointer.json")).unwrap();
    let pointer = SpillPointer::parse(&text).expect("a pointer");
    assert_eq!(pointer.bucket, "sluice-spill-bucket");
    assert_eq!(
        serde_json::from_str::<Value>(&pointer.body()).unwrap(),
        serde_json::from_str::<Value>(&text).unwrap()
    );
}
