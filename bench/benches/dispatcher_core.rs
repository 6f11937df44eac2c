//! The dispatcher's per-record work without any I/O: batching SQS-shaped records, building the
//! invocation payload, parsing a handler's partial-batch response and deciding the batch with the
//! queue policy. Reported as records per second, to find overhead that the AWS calls hide.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use sluice_policies::{BatchLimits, Batcher, Outcome, QueueMessage, QueuePolicy};
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

fn batch_build_decide(c: &mut Criterion) {
    let records: Vec<(Value, QueueMessage, usize)> = (0..RECORDS)
        .map(|index| {
            let event = sqs_record(index);
            let size = serde_json::to_vec(&event).unwrap().len() + 1;
            let message = QueueMessage {
                message_id: event["messageId"].as_str().unwrap().to_owned(),
                receive_count: 1,
                group_id: None,
            };
            (event, message, size)
        })
        .collect();
    let policy = QueuePolicy {
        report_batch_item_failures: true,
        max_receive_count: Some(5),
        backoff: None,
    };
    let mut group = c.benchmark_group("dispatcher_core");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("batch_payload_decide_10k_records", |b| {
        b.iter(|| {
            let mut batcher = Batcher::new(BatchLimits::new(10, Duration::ZERO));
            let mut decided = 0usize;
            let mut run = |batch: Vec<&(Value, QueueMessage, usize)>| {
                let events: Vec<&Value> = batch.iter().map(|(event, _, _)| event).collect();
                let payload = serde_json::to_vec(&json!({ "Records": events })).unwrap();
                black_box(&payload);
                let messages: Vec<QueueMessage> =
                    batch.iter().map(|(_, message, _)| message.clone()).collect();
                let response = json!({"batchItemFailures": [{"itemIdentifier": messages[0].message_id}]});
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
                let result = batcher.push(record, record.2, Duration::from_micros(index as u64));
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
        let messages: Vec<QueueMessage> = records.iter().map(|(_, m, _)| m.clone()).collect();
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
