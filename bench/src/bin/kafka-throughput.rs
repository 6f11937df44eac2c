//! Kafka throughput (run by `scripts/bench --kafka`): the release `sluice` binary consuming a
//! topic of librdkafka's mock cluster (in this process, over TCP) into a no-op HTTP handler (an
//! axum server in this process), for several partition counts and batch sizes. Prints a markdown
//! table: records per second from the first record handled to the last, and the time until the
//! group's committed offsets reached the end. One-partition cases hold at most 30,000 messages:
//! the mock cluster trims a partition beyond about 5 MB.
//!
//! Usage: kafka-throughput <path to sluice> [messages]

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Messages of this bench that fit one mock partition (librdkafka's mock keeps ~5 MB each).
const MOCK_PARTITION_MESSAGES: usize = 30_000;

/// Counts records and invocations; remembers when the first and the latest arrived.
#[derive(Default)]
struct Counter {
    records: AtomicU64,
    invocations: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

fn produce(bootstrap: &str, topic: &str, partitions: i32, messages: usize) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .create()?;
    let value = format!("{{\"payload\":\"{}\"}}", "x".repeat(80));
    for i in 0..messages {
        let key = format!("key-{}", i % 1000);
        loop {
            let record = BaseRecord::to(topic)
                .partition((i % partitions as usize) as i32)
                .key(&key)
                .payload(&value);
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

fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
    {
        Ok(consumer) => consumer,
        Err(_) => return 0,
    };
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    match consumer.committed_offsets(list, Duration::from_secs(5)) {
        Ok(list) => list
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum(),
        Err(_) => 0,
    }
}

async fn run_case(
    sluice: &str,
    messages: usize,
    partitions: i32,
    batch_size: usize,
) -> anyhow::Result<String> {
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    let topic = format!("bench-{partitions}-{batch_size}");
    cluster.create_topic(&topic, partitions, 1)?;
    // The mock cluster keeps about 5 MB per partition and drops older segments beyond that.
    let messages = messages.min(MOCK_PARTITION_MESSAGES * partitions as usize);
    produce(&bootstrap, &topic, partitions, messages)?;

    let counter = Arc::new(Counter::default());
    let started = Instant::now();
    let state = (counter.clone(), started);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new()
        .fallback(
            |axum::extract::State((counter, started)): axum::extract::State<(
                Arc<Counter>,
                Instant,
            )>,
             body: axum::body::Bytes| async move {
                let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let count: usize = event["records"].as_object().map_or(0, |p| {
                    p.values().map(|l| l.as_array().map_or(0, Vec::len)).sum()
                });
                let now = started.elapsed().as_nanos() as u64;
                let _ =
                    counter
                        .first_ns
                        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
                counter.last_ns.store(now, Ordering::SeqCst);
                counter.records.fetch_add(count as u64, Ordering::SeqCst);
                counter.invocations.fetch_add(1, Ordering::SeqCst);
                "{}"
            },
        )
        .with_state(state);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let group = format!("bench-group-{partitions}-{batch_size}");
    let config = format!(
        r#"version: 1
shutdown_timeout: 10s
state_dir: "{state}"
admin: {{ listen: "127.0.0.1:0" }}
targets:
  noop:
    http: {{ url: "http://{address}/", max_concurrency: 64 }}
mappings:
  - name: bench
    target: noop
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: trim_horizon
        batch_size: {batch_size}
        max_batching_window: 100ms
"#,
        state = dir.path().display()
    );
    let path = dir.path().join("sluice.yaml");
    std::fs::File::create(&path)?.write_all(config.as_bytes())?;
    // KAFKA_BENCH_LOG=<file> keeps sluice's log (at RUST_LOG, default warn) for a closer look.
    let log: std::process::Stdio = match std::env::var("KAFKA_BENCH_LOG") {
        Ok(file) => std::fs::File::create(file)?.into(),
        Err(_) => std::process::Stdio::null(),
    };
    let mut child = std::process::Command::new(sluice)
        .args(["run", "-c"])
        .arg(&path)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while counter.records.load(Ordering::SeqCst) < messages as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handled_at = started.elapsed();
    while committed(&bootstrap, &group, &topic, partitions) < messages as i64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let committed_after = started.elapsed().saturating_sub(handled_at);
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
    let records = counter.records.load(Ordering::SeqCst);
    let first = Duration::from_nanos(counter.first_ns.load(Ordering::SeqCst));
    let last = Duration::from_nanos(counter.last_ns.load(Ordering::SeqCst));
    let span = last.saturating_sub(first).as_secs_f64().max(1e-6);
    Ok(format!(
        "| {partitions} | {batch_size} | {records} | {invocations} | {span:.2} | {rate:.0} | {commit:.2} |",
        invocations = counter.invocations.load(Ordering::SeqCst),
        rate = records as f64 / span,
        commit = committed_after.as_secs_f64(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sluice = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: kafka-throughput <sluice> [messages]"))?;
    let messages: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;
    println!();
    println!(
        "## Kafka throughput (`scripts/bench --kafka`, {messages} messages of ~100 bytes, librdkafka mock cluster, no-op HTTP handler)"
    );
    println!();
    println!(
        "| partitions | batch size | records | invocations | seconds (first to last record) | records/s | commit lag after last record (s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    // KAFKA_BENCH_CASES="1:100,6:1000" picks the (partitions, batch size) cases.
    let cases: Vec<(i32, usize)> = match std::env::var("KAFKA_BENCH_CASES") {
        Ok(list) => list
            .split(',')
            .filter_map(|case| {
                let (p, b) = case.split_once(':')?;
                Some((p.parse().ok()?, b.parse().ok()?))
            })
            .collect(),
        Err(_) => vec![(1, 100), (6, 100), (6, 1000)],
    };
    for (partitions, batch_size) in cases {
        let row = run_case(&sluice, messages, partitions, batch_size).await?;
        println!("{row}");
    }
    Ok(())
}
