//! The floor for a Kinesis mapping: what a careful hand-written GetRecords loop does to deliver
//! Lambda's Kinesis event to an HTTP handler, at least once. It lists the stream's shards, reads
//! each from the trim horizon (one task per shard, parents not awaited: the bench never
//! reshards) in pages of up to 10,000 records, one read per 200 ms at most (Kinesis' 5 reads per
//! second per shard), POSTs Lambda's event (`{"Records":[…]}`, each record with `kinesis`
//! {partition key, sequence number, base64 data, arrival time}, `eventID`, `eventSourceARN`) in
//! batches of BATCH_SIZE, and after each batch the handler answered writes the shard's last
//! sequence number to a checkpoint file and fsyncs it (sluice's embedded checkpoint store commits
//! durably too). Runs until killed.
//!
//! Usage: kinesis-raw-loop STREAM BATCH_SIZE HANDLER_URL CHECKPOINT_DIR
//! (AWS_ENDPOINT_URL, AWS_REGION and credentials from the environment.)

use aws_sdk_kinesis::types::ShardIteratorType;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

fn record_of(
    record: &aws_sdk_kinesis::types::Record,
    shard_id: &str,
    arn: &str,
    region: &str,
) -> Value {
    let arrived = record
        .approximate_arrival_timestamp()
        .and_then(|t| t.to_millis().ok())
        .unwrap_or_default();
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record.partition_key(),
            "sequenceNumber": record.sequence_number(),
            "data": BASE64.encode(record.data().as_ref()),
            "approximateArrivalTimestamp": arrived as f64 / 1000.0,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{shard_id}:{}", record.sequence_number()),
        "eventName": "aws:kinesis:record",
        "awsRegion": region,
        "eventSourceARN": arn,
    })
}

/// What every shard's task shares.
#[derive(Clone)]
struct Shared {
    kinesis: aws_sdk_kinesis::Client,
    http: reqwest::Client,
    arn: String,
    region: String,
    batch_size: usize,
    handler_url: String,
}

async fn read_shard(shared: Shared, shard_id: String, checkpoint: std::path::PathBuf) {
    let Shared {
        kinesis,
        http,
        arn,
        region,
        batch_size,
        handler_url,
    } = shared;
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("a shard iterator")
        .shard_iterator
        .expect("an iterator");
    loop {
        let read_at = tokio::time::Instant::now();
        let page = kinesis
            .get_records()
            .stream_arn(&arn)
            .shard_iterator(&iterator)
            .limit(10_000)
            .send()
            .await
            .expect("records");
        for batch in page.records().chunks(batch_size) {
            let records: Vec<Value> = batch
                .iter()
                .map(|r| record_of(r, &shard_id, &arn, &region))
                .collect();
            let event = serde_json::to_vec(&json!({ "Records": records })).expect("serializes");
            sluice_bench::post_until_answered(&http, &handler_url, event).await;
            let last = batch
                .last()
                .map(|r| r.sequence_number())
                .unwrap_or_default();
            let mut file = std::fs::File::create(&checkpoint).expect("a checkpoint file");
            file.write_all(last.as_bytes()).expect("checkpoint written");
            file.sync_all().expect("checkpoint synced");
        }
        let idle = page.records().is_empty();
        match page.next_shard_iterator {
            Some(next) => iterator = next,
            None => return,
        }
        // Kinesis allows 5 reads per second per shard; an idle shard is read once a second.
        let pause = if idle {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(200)
        };
        tokio::time::sleep_until(read_at + pause).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, stream, batch_size, handler_url, checkpoint_dir] = &args[..] else {
        eprintln!("usage: kinesis-raw-loop STREAM BATCH_SIZE HANDLER_URL CHECKPOINT_DIR");
        std::process::exit(2);
    };
    let batch_size: usize = batch_size.parse().expect("batch size is a number");
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let region = config.region().map(|r| r.to_string()).unwrap_or_default();
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .expect("the stream")
        .stream_description_summary
        .expect("a summary")
        .stream_arn;
    let shards = kinesis
        .list_shards()
        .stream_arn(&arn)
        .send()
        .await
        .expect("the shards")
        .shards
        .unwrap_or_default();
    let shared = Shared {
        kinesis,
        http: reqwest::Client::new(),
        arn,
        region,
        batch_size,
        handler_url: handler_url.clone(),
    };
    let mut tasks = Vec::new();
    for shard in shards {
        let checkpoint = std::path::Path::new(checkpoint_dir).join(&shard.shard_id);
        tasks.push(tokio::spawn(read_shard(
            shared.clone(),
            shard.shard_id,
            checkpoint,
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
    // The harness kills this process once every record was handled.
    std::future::pending::<()>().await;
}
