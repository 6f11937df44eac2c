//! The function under load: an HTTP handler that reads every source's event shape, records what
//! it handled in a [`Ledger`], and misbehaves on request (503s, failing or slow records).
//!
//! The path names the event shape: `/sqs`, `/fifo`, `/ddb`, `/kafka`, `/s3`, `/event`. Failing
//! records are reported as `batchItemFailures` for the sources that read them, and fail the whole
//! invocation for the others (S3 records and Invoke API events are one per invocation).

use crate::ledger::{Ledger, Seen};
use axum::body::Bytes;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How the handler behaves; every field can change while it runs.
#[derive(Default)]
pub struct Behaviour {
    /// Answer every invocation with 503 (an overloaded or restarting service).
    pub unavailable: AtomicBool,
    /// Records whose id starts with this fail every time (poison).
    pub poison_prefix: std::sync::Mutex<Option<String>>,
    /// Per mille of record attempts that fail (then succeed on a later attempt, most likely).
    pub fail_per_mille: AtomicU32,
    /// Per mille of invocations that take `slow_ms` longer.
    pub slow_per_mille: AtomicU32,
    pub slow_ms: AtomicU64,
    /// Every invocation takes this long (a handler doing some work).
    pub latency_ms: AtomicU64,
}

struct State {
    ledger: Arc<Ledger>,
    behaviour: Arc<Behaviour>,
    counter: AtomicU64,
}

pub struct Handler {
    pub addr: SocketAddr,
    pub ledger: Arc<Ledger>,
    pub behaviour: Arc<Behaviour>,
}

impl Handler {
    pub async fn start() -> anyhow::Result<Self> {
        let ledger = Arc::new(Ledger::default());
        let behaviour = Arc::new(Behaviour::default());
        let state = Arc::new(State {
            ledger: ledger.clone(),
            behaviour: behaviour.clone(),
            counter: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(handle).with_state(state);
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Ok(Self {
            addr,
            ledger,
            behaviour,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A record of the event, and how the handler names it in a partial batch response.
struct Item {
    seen: Seen,
    identifier: Value,
}

/// Reads the records of one event shape. Ids are what the load generator sent.
fn items(kind: &str, event: &Value) -> Vec<Item> {
    let records = || event["Records"].as_array().cloned().unwrap_or_default();
    match kind {
        "sqs" | "fifo" => records()
            .iter()
            .map(|record| {
                let body = record["body"].as_str().unwrap_or_default().to_owned();
                let order = (kind == "fifo").then(|| split_position(&body)).flatten();
                Item {
                    seen: Seen { id: body, order },
                    identifier: record["messageId"].clone(),
                }
            })
            .collect(),
        "ddb" => records()
            .iter()
            .map(|record| {
                let image = &record["dynamodb"]["NewImage"];
                let key = image["id"]["S"].as_str().unwrap_or_default().to_owned();
                let version: u64 = image["v"]["N"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Item {
                    seen: Seen {
                        id: format!("{key}:{version}"),
                        order: Some((key, version)),
                    },
                    identifier: record["dynamodb"]["SequenceNumber"].clone(),
                }
            })
            .collect(),
        "kafka" => event["records"]
            .as_object()
            .into_iter()
            .flat_map(|partitions| partitions.iter())
            .flat_map(|(topic_partition, records)| {
                records
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |record| {
                        let value = record["value"]
                            .as_str()
                            .and_then(|v| BASE64.decode(v).ok())
                            .map(|v| String::from_utf8_lossy(&v).into_owned())
                            .unwrap_or_default();
                        let order = split_position(&value);
                        Item {
                            seen: Seen { id: value, order },
                            identifier: json!({
                                "partition": topic_partition,
                                "offset": record["offset"],
                            }),
                        }
                    })
            })
            .collect(),
        "s3" => records()
            .iter()
            .map(|record| Item {
                seen: Seen {
                    id: record["s3"]["object"]["key"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    order: None,
                },
                identifier: Value::Null,
            })
            .collect(),
        "event" => vec![Item {
            seen: Seen {
                id: event["id"].as_str().unwrap_or_default().to_owned(),
                order: None,
            },
            identifier: Value::Null,
        }],
        _ => Vec::new(),
    }
}

/// `"<key>:<position>"` → the record's order key and position.
fn split_position(id: &str) -> Option<(String, u64)> {
    let (key, position) = id.rsplit_once(':')?;
    Some((key.to_owned(), position.parse().ok()?))
}

/// A cheap deterministic spread for the per-mille choices (no shared RNG under the lock).
fn per_mille(counter: u64) -> u32 {
    ((counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000) as u32
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> (StatusCode, String) {
    let behaviour = &state.behaviour;
    state.ledger.attempt();
    if behaviour.unavailable.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "restarting".into());
    }
    let kind = uri.path().trim_start_matches('/').to_owned();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let items = items(&kind, &event);
    let latency = behaviour.latency_ms.load(Ordering::Relaxed);
    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let slow = per_mille(n) < behaviour.slow_per_mille.load(Ordering::Relaxed);
    let extra = if slow {
        behaviour.slow_ms.load(Ordering::Relaxed)
    } else {
        0
    };
    if latency + extra > 0 {
        tokio::time::sleep(Duration::from_millis(latency + extra)).await;
    }
    let poison = behaviour.poison_prefix.lock().unwrap().clone();
    let fail_rate = behaviour.fail_per_mille.load(Ordering::Relaxed);
    // Ordered sources (FIFO, streams, Kafka) report the first failure and everything after it,
    // as Lambda requires; a standard queue reports only the failed records.
    let ordered = kind != "sqs";
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    let mut cut = false;
    for (index, item) in items.into_iter().enumerate() {
        let poisoned = poison
            .as_deref()
            .is_some_and(|p| item.seen.id.starts_with(p));
        let unlucky = per_mille(n.wrapping_mul(31).wrapping_add(index as u64 + 7)) < fail_rate;
        let fails = poisoned || unlucky || (ordered && cut);
        cut |= fails;
        if fails {
            failed.push(item);
        } else {
            done.push(item.seen);
        }
    }
    let partial = matches!(kind.as_str(), "sqs" | "fifo" | "ddb" | "kafka");
    if !failed.is_empty() && !partial {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"errorType": "Poison", "errorMessage": "this record always fails"}).to_string(),
        );
    }
    state.ledger.handled(&done);
    if failed.is_empty() {
        return (StatusCode::OK, "{}".into());
    }
    let failures: Vec<Value> = failed
        .into_iter()
        .map(|i| json!({"itemIdentifier": i.identifier}))
        .collect();
    (
        StatusCode::OK,
        json!({"batchItemFailures": failures}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_shape_gives_the_ids_the_load_sent() {
        let sqs = json!({"Records": [{"body": "r1", "messageId": "m1"}]});
        assert_eq!(items("sqs", &sqs)[0].seen.id, "r1");
        let fifo = json!({"Records": [{"body": "g3:17", "messageId": "m1"}]});
        assert_eq!(items("fifo", &fifo)[0].seen.order, Some(("g3".into(), 17)));
        let ddb = json!({"Records": [{"dynamodb": {"SequenceNumber": "9",
            "NewImage": {"id": {"S": "k1"}, "v": {"N": "4"}}}}]});
        assert_eq!(items("ddb", &ddb)[0].seen.id, "k1:4");
        let kafka = json!({"records": {"t-0": [{"offset": 5, "value": BASE64.encode("k2:8")}]}});
        let kafka_items = items("kafka", &kafka);
        assert_eq!(kafka_items[0].seen.order, Some(("k2".into(), 8)));
        assert_eq!(kafka_items[0].identifier["partition"], "t-0");
        let s3 = json!({"Records": [{"s3": {"object": {"key": "o7"}}}]});
        assert_eq!(items("s3", &s3)[0].seen.id, "o7");
        assert_eq!(items("event", &json!({"id": "e1"}))[0].seen.id, "e1");
    }

    #[test]
    fn per_mille_spreads_over_the_whole_range() {
        let below_10: usize = (0..100_000u64).filter(|n| per_mille(*n) < 10).count();
        assert!((700..1300).contains(&below_10), "{below_10}");
    }
}
