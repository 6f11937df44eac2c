//! The dispatcher's per-record work without any I/O, on the same types and functions the SQS
//! mapping uses: batching records, building the invocation payload, parsing a handler's
//! partial-batch response and deciding the batch with the queue policy. Reported as records per
//! second, to find overhead that the AWS calls hide. (Filters and in-process handlers join this
//! path when they exist.)

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use sluice_policies::{BatchLimits, Batcher, Outcome, QueueMessage, QueuePolicy};
use sluice_sources::{AckToken, Receipt, Record, records_event};
use std::hint::black_box;
use std::time::Duration;

const RECORDS: usize = 10_000;

fn sqs_record(index: usize) -> Value {
    json!({
        "messageId": format!("0f9c6b3e-1b1a-4d0e-9b7a-{index:012}"),
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": format!("{{\"order\":{index},\"sku\":\"A-1\",\"quantity\":2}}"),
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185"
        },
        "messageAttributes": {},
        "md5OfMessageAttributes": null,
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders",
        "awsRegion": "us-east-1"
    })
}

fn record(index: usize) -> Record {
    let event = sqs_record(index);
    Record::new(
        Receipt {
            id: event["messageId"].as_str().unwrap().to_owned(),
            ack: AckToken::Sqs {
                receipt_handle: event["receiptHandle"].as_str().unwrap().to_owned(),
            },
        },
        None,
        Duration::ZERO,
        Duration::ZERO,
        1,
        serde_json::value::to_raw_value(&event).unwrap(),
    )
}

fn batch_build_decide(c: &mut Criterion) {
    let records: Vec<Record> = (0..RECORDS).map(record).collect();
    let policy = QueuePolicy {
        report_batch_item_failures: true,
        max_receive_count: Some(5),
        backoff: None,
        non_retryable: None,
    };
    let mut group = c.benchmark_group("dispatcher_core");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("batch_payload_decide_10k_records", |b| {
        b.iter(|| {
            let mut batcher = Batcher::new(BatchLimits::new(10, Duration::ZERO));
            let mut decided = 0usize;
            let mut run = |batch: Vec<&Record>| {
                let payload = records_event(batch.iter().copied());
                black_box(&payload);
                let messages: Vec<QueueMessage> = batch
                    .iter()
                    .map(|record| QueueMessage {
                        message_id: record.id().to_owned(),
                        receive_count: record.attempt,
                        group_id: record.ordering_key.clone(),
                    })
                    .collect();
                let body = format!(
                    r#"{{"batchItemFailures":[{{"itemIdentifier":"{}"}}]}}"#,
                    messages[0].message_id
                );
                let response: Value = serde_json::from_str(&body).unwrap();
                let decision = policy.decide(
                    &messages,
                    &Outcome::Returned {
                        response: Some(response),
                    },
                    0.5,
                );
                decided += decision.dispositions.len();
            };
            for (index, record) in records.iter().enumerate() {
                let result = batcher.push(
                    record,
                    record.size_bytes,
                    Duration::from_micros(index as u64),
                );
                for batch in result.ready {
                    run(batch);
                }
            }
            if let Some(batch) = batcher.take() {
                run(batch);
            }
            assert_eq!(decided, RECORDS);
        })
    });
    group.bench_function("decide_only_10k_records", |b| {
        let messages: Vec<QueueMessage> = records
            .iter()
            .map(|record| QueueMessage {
                message_id: record.id().to_owned(),
                receive_count: 1,
                group_id: None,
            })
            .collect();
        b.iter(|| {
            for chunk in messages.chunks(10) {
                black_box(policy.decide(chunk, &Outcome::Returned { response: None }, 0.5));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, batch_build_decide);
criterion_main!(benches);
