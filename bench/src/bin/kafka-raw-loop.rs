//! The floor for a Kafka mapping: what a careful hand-written rdkafka consumer does to deliver
//! Lambda's Kafka event to an HTTP handler with at-least-once commits. It subscribes with the
//! group, gives each partition a task that batches up to BATCH_SIZE records (or what arrived
//! within 100 ms of the batch's first record, like the mapping's `max_batching_window`), POSTs
//! one Lambda-shaped event per batch (`{"eventSource","bootstrapServers","records":{"topic-p":
//! [...]}}`, key and value in base64, headers) and, after the handler answered, marks the
//! batch's last offset done; done offsets are committed every 500 ms, as sluice does. One batch
//! per partition is in flight at a time (per-partition order), partitions run concurrently.
//! Runs until killed (the bench stops it once the committed offsets reached the end).
//!
//! Usage: kafka-raw-loop BOOTSTRAP TOPIC GROUP BATCH_SIZE HANDLER_URL

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const WINDOW: Duration = Duration::from_millis(100);
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

fn record_of(message: &rdkafka::message::BorrowedMessage<'_>) -> Value {
    let (timestamp, kind) = match message.timestamp() {
        rdkafka::Timestamp::CreateTime(ms) => (ms, "CREATE_TIME"),
        rdkafka::Timestamp::LogAppendTime(ms) => (ms, "LOG_APPEND_TIME"),
        rdkafka::Timestamp::NotAvailable => (-1, "NO_TIMESTAMP_TYPE"),
    };
    let headers: Vec<Value> = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let bytes: Vec<i8> = h
                        .value
                        .unwrap_or_default()
                        .iter()
                        .map(|&b| b as i8)
                        .collect();
                    json!({ h.key: bytes })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut record = json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": timestamp,
        "timestampType": kind,
        "headers": headers,
    });
    if let Some(key) = message.key() {
        record["key"] = json!(BASE64.encode(key));
    }
    if let Some(value) = message.payload() {
        record["value"] = json!(BASE64.encode(value));
    }
    record
}

/// What every partition's task shares.
#[derive(Clone)]
struct Shared {
    http: reqwest::Client,
    handler_url: String,
    bootstrap: String,
    batch_size: usize,
    /// The next offset to commit, per (topic, partition).
    done: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

/// Batches one partition's records, POSTs each batch, then marks its last offset done.
async fn partition_task(
    shared: Shared,
    key: (String, i32),
    mut records: mpsc::Receiver<(i64, Value)>,
) {
    let Shared {
        http,
        handler_url,
        bootstrap,
        batch_size,
        done,
    } = shared;
    let name = format!("{}-{}", key.0, key.1);
    while let Some(first) = records.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + WINDOW;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, records.recv()).await {
                Ok(Some(record)) => batch.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        let last = batch.last().map(|(offset, _)| *offset).unwrap_or_default();
        let event = json!({
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": bootstrap,
            "records": { name.clone(): batch.into_iter().map(|(_, r)| r).collect::<Vec<_>>() },
        });
        // At least once: only marked done once the handler answered.
        let event = serde_json::to_vec(&event).expect("an event serializes");
        sluice_bench::post_until_answered(&http, &handler_url, event).await;
        done.lock()
            .expect("not poisoned")
            .insert(key.clone(), last + 1);
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, topic, group, batch_size, handler_url] = &args[..] else {
        eprintln!("usage: kafka-raw-loop BOOTSTRAP TOPIC GROUP BATCH_SIZE HANDLER_URL");
        std::process::exit(2);
    };
    let batch_size: usize = batch_size.parse().expect("batch size is a number");
    let consumer: Arc<StreamConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("a consumer"),
    );
    consumer.subscribe(&[topic]).expect("subscribe");
    let shared = Shared {
        http: reqwest::Client::new(),
        handler_url: handler_url.clone(),
        bootstrap: bootstrap.clone(),
        batch_size,
        done: Arc::default(),
    };
    {
        let (consumer, done) = (consumer.clone(), shared.done.clone());
        tokio::spawn(async move {
            let mut committed: HashMap<(String, i32), i64> = HashMap::new();
            let mut tick = tokio::time::interval(COMMIT_INTERVAL);
            loop {
                tick.tick().await;
                let mut list = TopicPartitionList::new();
                for (key, offset) in done.lock().expect("not poisoned").iter() {
                    if committed.get(key) != Some(offset) {
                        list.add_partition_offset(&key.0, key.1, Offset::Offset(*offset))
                            .expect("a valid offset");
                        committed.insert(key.clone(), *offset);
                    }
                }
                if list.count() > 0 && consumer.commit(&list, CommitMode::Async).is_err() {
                    committed.clear();
                }
            }
        });
    }
    let mut lanes: HashMap<i32, mpsc::Sender<(i64, Value)>> = HashMap::new();
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(error) => {
                eprintln!("kafka-raw-loop: {error}");
                continue;
            }
        };
        let partition = message.partition();
        let lane = lanes.entry(partition).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(batch_size * 2);
            let key = (message.topic().to_owned(), partition);
            tokio::spawn(partition_task(shared.clone(), key, receiver));
            sender
        });
        let record = (message.offset(), record_of(&message));
        drop(message);
        let _ = lane.send(record).await;
    }
}
