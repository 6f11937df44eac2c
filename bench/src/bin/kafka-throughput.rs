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

/// What consumes the topic: the sluice binary, or the raw rdkafka loop (`kafka-raw-loop`).
#[derive(Clone, Copy)]
enum Contender<'a> {
    Sluice(&'a str),
    RawLoop(&'a str),
}

/// One case's result: the table row, and records per second.
struct CaseResult {
    row: String,
    rate: f64,
}

async fn run_case(
    contender: Contender<'_>,
    messages: usize,
    partitions: i32,
    batch_size: usize,
) -> anyhow::Result<CaseResult> {
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
    // KAFKA_BENCH_LOG=<file> keeps sluice's log (at RUST_LOG, default warn) for a closer look.
    let log: std::process::Stdio = match std::env::var("KAFKA_BENCH_LOG") {
        Ok(file) => std::fs::File::create(file)?.into(),
        Err(_) => std::process::Stdio::null(),
    };
    let sluice = match contender {
        Contender::Sluice(sluice) => sluice,
        Contender::RawLoop(raw) => {
            let child = std::process::Command::new(raw)
                .args([&bootstrap, &topic, &group, &batch_size.to_string()])
                .arg(format!("http://{address}/"))
                .stdout(log)
                .spawn()?;
            return finish(
                child, counter, started, &bootstrap, &group, &topic, partitions, messages,
                batch_size, server,
            )
            .await;
        }
    };
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
    let child = std::process::Command::new(sluice)
        .args(["run", "-c"])
        .arg(&path)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(log)
        .spawn()?;
    finish(
        child, counter, started, &bootstrap, &group, &topic, partitions, messages, batch_size,
        server,
    )
    .await
}

/// Waits until every record was handled and committed, stops the consumer, and reports.
#[allow(clippy::too_many_arguments)]
async fn finish(
    mut child: std::process::Child,
    counter: Arc<Counter>,
    started: Instant,
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    messages: usize,
    batch_size: usize,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<CaseResult> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while counter.records.load(Ordering::SeqCst) < messages as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handled_at = started.elapsed();
    while committed(bootstrap, group, topic, partitions) < messages as i64
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
    let rate = records as f64 / span;
    Ok(CaseResult {
        row: format!(
            "| {partitions} | {batch_size} | {records} | {invocations} | {span:.2} | {rate:.0} | {commit:.2} |",
            invocations = counter.invocations.load(Ordering::SeqCst),
            commit = committed_after.as_secs_f64(),
        ),
        rate,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn list(values: &[f64], digits: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: kafka-throughput <sluice> [messages] [kafka-raw-loop]";
    let sluice = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let messages: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let raw = args.next();
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
    println!();
    let Some(raw) = raw else {
        println!(
            "## Kafka throughput (`scripts/bench --kafka`, {messages} messages of ~100 bytes, librdkafka mock cluster, no-op HTTP handler)"
        );
        println!();
        println!(
            "| partitions | batch size | records | invocations | seconds (first to last record) | records/s | commit lag after last record (s) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (partitions, batch_size) in cases {
            let result =
                run_case(Contender::Sluice(&sluice), messages, partitions, batch_size).await?;
            println!("{}", result.row);
        }
        return Ok(());
    };
    // Interleaved rounds of sluice and the raw loop; each round's ratio is paired.
    let rounds: usize = std::env::var("KAFKA_BENCH_ROUNDS").map_or(Ok(3), |n| n.parse())?;
    let mut lines = vec![
        format!(
            "## Kafka: sluice beside a raw rdkafka loop (`scripts/bench --kafka-raw`, {messages} messages of ~100 bytes, librdkafka mock cluster, no-op HTTP handler, {rounds} interleaved rounds)"
        ),
        String::new(),
        "Records per second from the first record handled to the last. The raw loop: one task per partition batching up to the batch size within 100 ms, one POST of Lambda's Kafka event per batch, the batch's offset marked done after the handler answered, done offsets committed every 500 ms (bench/src/bin/kafka-raw-loop.rs).".to_owned(),
        String::new(),
        "| partitions | batch size | sluice records/s, each round | median | raw loop, each round | median | sluice / raw, each round | median |".to_owned(),
        "|---:|---:|---|---:|---|---:|---|---:|".to_owned(),
    ];
    for (partitions, batch_size) in cases {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for sluice_first in order {
                let contender = if sluice_first {
                    Contender::Sluice(&sluice)
                } else {
                    Contender::RawLoop(&raw)
                };
                let result = run_case(contender, messages, partitions, batch_size).await?;
                eprintln!(
                    "{} {}",
                    if sluice_first { "sluice" } else { "raw loop" },
                    result.row
                );
                if sluice_first {
                    ours.push(result.rate);
                } else {
                    theirs.push(result.rate);
                }
            }
        }
        let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
        lines.push(format!(
            "| {partitions} | {batch_size} | {} | {:.0} | {} | {:.0} | {} | {:.2}x |",
            list(&ours, 0),
            median(&ours),
            list(&theirs, 0),
            median(&theirs),
            list(&ratios, 2),
            median(&ratios),
        ));
    }
    println!("{}", lines.join("\n"));
    Ok(())
}
