//! Steady load on each source, at a fixed rate, every record registered in the ledger once the
//! source accepted it (a send that failed is not a record the source owes anyone).

use crate::ledger::Ledger;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Calls `tick(first, n)` every 100 ms with the next slice of `total` records at `per_second`.
async fn paced<F, Fut>(total: u64, per_second: u64, mut tick: F)
where
    F: FnMut(u64, u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() + 0.1) * per_second as f64) as u64;
        let n = due.min(total).saturating_sub(sent);
        if n > 0 {
            tick(sent, n).await;
            sent += n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a queue's bodies are named: `r<n>`, FIFO `g<group>:<position>`, or with a poison share.
#[derive(Clone, Copy)]
pub enum Bodies {
    Plain,
    Fifo {
        groups: u64,
    },
    /// Every `every`-th record is `poison-<n>` (it always fails).
    Poison {
        every: u64,
    },
}

impl Bodies {
    pub fn body(self, n: u64) -> String {
        match self {
            Bodies::Plain => format!("r{n}"),
            Bodies::Fifo { groups } => format!("g{}:{}", n % groups, n / groups),
            Bodies::Poison { every } if n % every == every - 1 => format!("poison-{n}"),
            Bodies::Poison { .. } => format!("r{n}"),
        }
    }
}

pub fn sqs(
    client: aws_sdk_sqs::Client,
    queue_url: String,
    bodies: Bodies,
    ledger: Arc<Ledger>,
    total: u64,
    per_second: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        paced(total, per_second, |first, n| {
            let (client, queue_url, ledger) = (client.clone(), queue_url.clone(), ledger.clone());
            async move {
                let numbers: Vec<u64> = (first..first + n).collect();
                for chunk in numbers.chunks(10) {
                    let entries = chunk
                        .iter()
                        .map(|n| {
                            let body = bodies.body(*n);
                            let mut entry = SendMessageBatchRequestEntry::builder()
                                .id(format!("e{n}"))
                                .message_body(&body);
                            if let Bodies::Fifo { groups } = bodies {
                                entry = entry
                                    .message_group_id(format!("g{}", n % groups))
                                    .message_deduplication_id(format!("d{n}"));
                            }
                            entry.build().expect("a complete entry")
                        })
                        .collect::<Vec<_>>();
                    match client
                        .send_message_batch()
                        .queue_url(&queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                    {
                        Ok(output) => {
                            for entry in output.successful() {
                                let n: u64 = entry.id()[1..].parse().unwrap_or(0);
                                let body = bodies.body(n);
                                if body.starts_with("poison") {
                                    ledger.owed_to_dead_letters(body);
                                } else {
                                    ledger.sent(body);
                                }
                            }
                        }
                        Err(error) => eprintln!("chaos: a send failed: {error}"),
                    }
                }
            }
        })
        .await;
    })
}

/// Spawns a load that offers records `0..total` one by one, at `per_second`.
fn each_record<F, Fut>(total: u64, per_second: u64, offer: F) -> JoinHandle<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let offer = Arc::new(offer);
    tokio::spawn(async move {
        paced(total, per_second, |first, n| {
            let offer = offer.clone();
            async move {
                for i in first..first + n {
                    offer(i).await;
                }
            }
        })
        .await;
    })
}

/// Items `k<n % keys>` written with version `n / keys`: one stream record per write, each key's
/// versions in order.
pub fn dynamodb(
    client: aws_sdk_dynamodb::Client,
    table: String,
    keys: u64,
    ledger: Arc<Ledger>,
    total: u64,
    per_second: u64,
) -> JoinHandle<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    each_record(total, per_second, move |i| {
        let (client, table, ledger) = (client.clone(), table.clone(), ledger.clone());
        async move {
            let (key, version) = (format!("k{}", i % keys), i / keys);
            let put = client
                .put_item()
                .table_name(&table)
                .item("id", AttributeValue::S(key.clone()))
                .item("v", AttributeValue::N(version.to_string()))
                .send()
                .await;
            match put {
                Ok(_) => ledger.sent(format!("{key}:{version}")),
                Err(error) => eprintln!("chaos: a put failed: {error}"),
            }
        }
    })
}

/// Values `k<n % keys>:<n / keys>` keyed `k<n % keys>`, so a key's records share a partition.
pub fn kafka(
    bootstrap: String,
    topic: String,
    keys: u64,
    ledger: Arc<Ledger>,
    total: u64,
    per_second: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "5")
            .create()
            .expect("a Kafka producer");
        paced(total, per_second, |first, n| {
            let (producer, topic, ledger) = (producer.clone(), topic.clone(), ledger.clone());
            async move {
                // Enqueue the whole slice first, then wait for the deliveries.
                let mut pending = Vec::new();
                for i in first..first + n {
                    let key = format!("k{}", i % keys);
                    let value = format!("{key}:{}", i / keys);
                    let record = FutureRecord::to(&topic).key(&key).payload(&value);
                    match producer.send_result(record) {
                        Ok(delivery) => pending.push((value, delivery)),
                        Err((error, _)) => eprintln!("chaos: a produce failed: {error}"),
                    }
                }
                for (value, delivery) in pending {
                    match delivery.await {
                        Ok(Ok(_)) => ledger.sent(value),
                        Ok(Err((error, _))) => eprintln!("chaos: a produce failed: {error}"),
                        Err(_) => eprintln!("chaos: a produce was cancelled"),
                    }
                }
            }
        })
        .await;
    })
}

/// Objects `o<n>` in a bucket that notifies the source queue.
pub fn s3(
    client: aws_sdk_s3::Client,
    bucket: String,
    ledger: Arc<Ledger>,
    total: u64,
    per_second: u64,
) -> JoinHandle<()> {
    each_record(total, per_second, move |i| {
        let (client, bucket, ledger) = (client.clone(), bucket.clone(), ledger.clone());
        async move {
            let key = format!("o{i}");
            let put = client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
                .send()
                .await;
            match put {
                Ok(_) => ledger.sent(key),
                Err(error) => eprintln!("chaos: an upload failed: {error}"),
            }
        }
    })
}

/// Invoke API `Event` calls `{"id": "e<n>"}`; only a 202 makes the event owed.
pub fn invoke_events(
    url: String,
    ledger: Arc<Ledger>,
    total: u64,
    per_second: u64,
) -> JoinHandle<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    each_record(total, per_second, move |i| {
        let (client, url, ledger) = (client.clone(), url.clone(), ledger.clone());
        async move {
            let id = format!("e{i}");
            // A kill can store the event and lose the 202: handling it is then allowed.
            ledger.offered(id.clone());
            let accepted = client
                .post(&url)
                .header("X-Amz-Invocation-Type", "Event")
                .body(serde_json::json!({ "id": id }).to_string())
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 202);
            if accepted {
                ledger.sent(id);
            }
        }
    })
}
