//! The floor for a DynamoDB Streams mapping: what a careful hand-written GetRecords loop does to
//! deliver Lambda's DynamoDB event to an HTTP handler, at least once. It looks the table's stream
//! up, reads every shard from the trim horizon (one task per shard, parents not awaited: moto has
//! one shard per table) in pages of up to 1,000 records, POSTs Lambda's event
//! (`{"Records":[…]}`, each record with `eventID`, `eventName`, `dynamodb` keys, images, sequence
//! number and size, `eventSourceARN`) in batches of BATCH_SIZE, and after each batch the handler
//! answered writes the shard's last sequence number to a checkpoint file and fsyncs it (sluice's
//! embedded checkpoint store commits durably too). Runs until killed.
//!
//! Usage: dynamodb-raw-loop TABLE BATCH_SIZE HANDLER_URL CHECKPOINT_DIR
//! (AWS_ENDPOINT_URL, AWS_REGION and credentials from the environment.)

use aws_sdk_dynamodbstreams::types::{AttributeValue, ShardIteratorType};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

fn attribute(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": BASE64.encode(b.as_ref()) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(n) => json!({ "NULL": n }),
        AttributeValue::Ss(values) => json!({ "SS": values }),
        AttributeValue::Ns(values) => json!({ "NS": values }),
        AttributeValue::Bs(values) => {
            json!({ "BS": values.iter().map(|b| BASE64.encode(b.as_ref())).collect::<Vec<_>>() })
        }
        AttributeValue::L(values) => {
            json!({ "L": values.iter().map(attribute).collect::<Vec<_>>() })
        }
        AttributeValue::M(map) => json!({ "M": item(map) }),
        _ => Value::Null,
    }
}

fn item(map: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), attribute(v)))
            .collect::<Map<_, _>>(),
    )
}

fn record_of(record: &aws_sdk_dynamodbstreams::types::Record, arn: &str, region: &str) -> Value {
    let mut dynamodb = Map::new();
    if let Some(change) = record.dynamodb() {
        if let Some(time) = change.approximate_creation_date_time() {
            dynamodb.insert("ApproximateCreationDateTime".into(), json!(time.secs()));
        }
        if let Some(keys) = change.keys() {
            dynamodb.insert("Keys".into(), item(keys));
        }
        if let Some(image) = change.new_image() {
            dynamodb.insert("NewImage".into(), item(image));
        }
        if let Some(image) = change.old_image() {
            dynamodb.insert("OldImage".into(), item(image));
        }
        dynamodb.insert("SequenceNumber".into(), json!(change.sequence_number()));
        dynamodb.insert("SizeBytes".into(), json!(change.size_bytes()));
        dynamodb.insert(
            "StreamViewType".into(),
            json!(change.stream_view_type().map(|t| t.as_str())),
        );
    }
    json!({
        "eventID": record.event_id(),
        "eventName": record.event_name().map(|n| n.as_str()),
        "eventVersion": record.event_version(),
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": dynamodb,
        "eventSourceARN": arn,
    })
}

/// What every shard's task shares.
#[derive(Clone)]
struct Shared {
    streams: aws_sdk_dynamodbstreams::Client,
    http: reqwest::Client,
    arn: String,
    region: String,
    batch_size: usize,
    handler_url: String,
}

async fn read_shard(shared: Shared, shard_id: String, checkpoint: std::path::PathBuf) {
    let Shared {
        streams,
        http,
        arn,
        region,
        batch_size,
        handler_url,
    } = shared;
    let mut iterator = streams
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
        let page = streams
            .get_records()
            .shard_iterator(&iterator)
            .limit(1000)
            .send()
            .await
            .expect("records");
        for batch in page.records().chunks(batch_size) {
            let records: Vec<Value> = batch.iter().map(|r| record_of(r, &arn, &region)).collect();
            let event = serde_json::to_vec(&json!({ "Records": records })).expect("serializes");
            sluice_bench::post_until_answered(&http, &handler_url, event).await;
            let last = batch
                .last()
                .and_then(|r| r.dynamodb())
                .and_then(|d| d.sequence_number())
                .unwrap_or_default()
                .to_owned();
            let mut file = std::fs::File::create(&checkpoint).expect("a checkpoint file");
            file.write_all(last.as_bytes()).expect("checkpoint written");
            file.sync_all().expect("checkpoint synced");
        }
        match page.next_shard_iterator {
            Some(next) => iterator = next,
            None => return,
        }
        if page.records.as_ref().is_none_or(Vec::is_empty) {
            // DynamoDB Streams asks readers to pause when a shard has nothing new.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, table, batch_size, handler_url, checkpoint_dir] = &args[..] else {
        eprintln!("usage: dynamodb-raw-loop TABLE BATCH_SIZE HANDLER_URL CHECKPOINT_DIR");
        std::process::exit(2);
    };
    let batch_size: usize = batch_size.parse().expect("batch size is a number");
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let region = config.region().map(|r| r.to_string()).unwrap_or_default();
    let tables = aws_sdk_dynamodb::Client::new(&config);
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let arn = tables
        .describe_table()
        .table_name(table)
        .send()
        .await
        .expect("the table")
        .table
        .and_then(|t| t.latest_stream_arn)
        .expect("a stream");
    let shards = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .expect("the stream")
        .stream_description
        .map(|d| d.shards.unwrap_or_default())
        .unwrap_or_default();
    let shared = Shared {
        streams,
        http: reqwest::Client::new(),
        arn,
        region,
        batch_size,
        handler_url: handler_url.clone(),
    };
    let mut tasks = Vec::new();
    for shard in shards {
        let shard_id = shard.shard_id.unwrap_or_default();
        let checkpoint = std::path::Path::new(checkpoint_dir).join(&shard_id);
        tasks.push(tokio::spawn(read_shard(
            shared.clone(),
            shard_id,
            checkpoint,
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
    // Closed shards are done; the harness kills this process once every change was handled.
    std::future::pending::<()>().await;
}
