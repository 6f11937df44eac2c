//! Dead-letter tooling speed (run by `scripts/bench --dlq`): a Kafka failure topic on
//! librdkafka's mock cluster holding N dead letters (one message per record, as sluice's topic
//! destination writes them), then the release `sluice` binary's `dlq peek --json`, `dlq replay
//! --dry-run` and `dlq replay` into a no-op HTTP handler (an axum server in this process). Prints
//! a markdown table of wall time per command and entries per second.
//!
//! The failure topic gets one partition per 8,000 entries: the mock cluster keeps about 5 MB per
//! partition and drops older messages beyond that.
//!
//! Usage: dlq-replay <path to sluice> [entries]

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Dead letters (of about 600 bytes) one mock partition keeps.
const PER_PARTITION: usize = 8_000;

fn produce_dead_letters(
    bootstrap: &str,
    topic: &str,
    entries: usize,
    partitions: usize,
) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .create()?;
    for offset in 0..entries {
        let record = json!({
            "topic": "orders", "partition": 0, "offset": offset, "timestamp": 1_764_583_200_000_i64,
            "timestampType": "CREATE_TIME", "key": "a2V5", "value": "eyJuIjoxfQ==", "headers": []
        });
        let envelope = json!({
            "version": "1.0",
            "timestamp": "2026-12-01T10:00:00.000Z",
            "requestContext": { "condition": "RetriesExhausted", "approximateInvokeCount": 3 },
            "sluice": {
                "mapping": "bench", "source": { "kind": "kafka", "topic": "orders", "partition": 0 },
                "records": [record], "error": { "type": "Boom", "message": "failed" },
                "attempts": 3, "replay_count": 0
            }
        })
        .to_string();
        loop {
            let record = BaseRecord::to(topic)
                .partition((offset % partitions) as i32)
                .key("key")
                .payload(&envelope);
            match producer.send(record) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(20));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

fn timed(sluice: &str, config: &std::path::Path, args: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = std::process::Command::new(sluice)
        .arg("dlq")
        .arg(args[0])
        .arg("-c")
        .arg(config)
        .args(&args[1..])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "sluice dlq {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sluice = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: dlq-replay <sluice> [entries]"))?;
    let entries: usize = args.next().map_or(Ok(5_000), |n| n.parse())?;

    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("orders", 1, 1)?;
    let partitions = entries.div_ceil(PER_PARTITION).max(1);
    cluster.create_topic("orders-failures", partitions as i32, 1)?;
    produce_dead_letters(&bootstrap, "orders-failures", entries, partitions)?;

    let invocations = Arc::new(AtomicU64::new(0));
    let counter = invocations.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "{}"
        }
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let config = format!(
        r#"version: 1
targets:
  noop:
    http: {{ url: "http://{address}/" }}
mappings:
  - name: bench
    target: noop
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [orders]
        group_id: bench
        starting_position: trim_horizon
    retry: {{ max_retry_attempts: 2 }}
    on_failure:
      kafka: {{ topic: orders-failures }}
"#
    );
    let path = dir.path().join("sluice.yaml");
    std::fs::File::create(&path)?.write_all(config.as_bytes())?;
    let limit = entries.to_string();
    let peek = timed(
        &sluice,
        &path,
        &["peek", "--mapping", "bench", "--json", "--limit", &limit],
    )?;
    let dry = timed(
        &sluice,
        &path,
        &["replay", "--mapping", "bench", "--dry-run"],
    )?;
    let replay = timed(&sluice, &path, &["replay", "--mapping", "bench"])?;
    server.abort();
    let handled = invocations.load(Ordering::SeqCst);
    anyhow::ensure!(
        handled == entries as u64,
        "the handler saw {handled} invocations for {entries} entries"
    );
    println!();
    println!(
        "## sluice dlq ({entries} Kafka dead letters on {partitions} partitions, `scripts/bench --dlq`, mock cluster, no-op HTTP handler)"
    );
    println!();
    println!("| command | seconds | entries/s |");
    println!("|---|---:|---:|");
    for (name, took) in [
        ("dlq peek --json", peek),
        ("dlq replay --dry-run", dry),
        ("dlq replay", replay),
    ] {
        println!(
            "| {name} | {:.2} | {:.0} |",
            took.as_secs_f64(),
            entries as f64 / took.as_secs_f64().max(1e-6)
        );
    }
    Ok(())
}
