//! End-to-end: the real `sluice` binary consuming Kafka (librdkafka's mock cluster, or the broker
//! in `KAFKA_BOOTSTRAP_SERVERS`) into an HTTP handler in the test: Lambda's Kafka semantics
//! (semantics.md §4) with the stream policy per partition (§2, §12). The mock cluster cannot look
//! offsets up by time, so `at_timestamp` is covered by `sluice_sources::kafka`'s unit tests.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(240);

struct Setup<'a> {
    kafka: &'a Kafka,
    topic: &'a str,
    group: &'a str,
    handler_url: String,
    batch_size: usize,
    /// Extra mapping keys (retry, on_failure, ...), indented as mapping keys.
    extra: &'a str,
}

impl<'a> Setup<'a> {
    /// Batches of 10, no extra mapping keys.
    fn new(kafka: &'a Kafka, topic: &'a str, group: &'a str, handler: &Handler) -> Self {
        Setup {
            kafka,
            topic,
            group,
            handler_url: handler.url("/"),
            batch_size: 10,
            extra: "",
        }
    }
}

/// A Kafka mapping needs no state directory: offsets live in the group.
fn config(setup: &Setup<'_>) -> String {
    TestConfig::new(&setup.handler_url)
        .mappings(&format!(
            r#"  - name: clicks
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: trim_horizon
        batch_size: {batch}
        max_batching_window: 100ms
        properties:
          session.timeout.ms: "6000"
          heartbeat.interval.ms: "500"
{extra}"#,
            bootstrap = setup.kafka.bootstrap(),
            topic = setup.topic,
            group = setup.group,
            batch = setup.batch_size,
            extra = setup.extra,
        ))
        .render()
}

/// A fresh topic with `partitions` partitions and a fresh group name.
fn topic_and_group(kafka: &Kafka, prefix: &str, partitions: i32) -> (String, String) {
    let topic = Kafka::unique(prefix);
    kafka.create_topic(&topic, partitions);
    (topic, Kafka::unique("sluice"))
}

/// Messages `{"n": i}` for `range`, spread round-robin over `partitions`, without keys.
fn numbered(
    range: std::ops::Range<i32>,
    partitions: i32,
) -> Vec<(i32, Option<&'static str>, String)> {
    range
        .map(|i| (i % partitions, None, json!({ "n": i }).to_string()))
        .collect()
}

fn start(setup: &Setup<'_>) -> Sluice {
    Sluice::start(&config(setup), &[])
}

/// (partition, offset) of every record a handler received, in arrival order.
fn delivered(handler: &Handler) -> Vec<(i64, i64)> {
    handler
        .received()
        .iter()
        .flat_map(|r| kafka_records(&r.event))
        .map(|r| {
            (
                r["partition"].as_i64().unwrap(),
                r["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn wait_committed_to_end(kafka: &Kafka, group: &str, topic: &str, partitions: i32) {
    let ends = kafka.end_offsets(topic, partitions);
    eventually(WAIT, "committed offsets to reach the end offsets", || {
        let committed = kafka.committed(group, topic, partitions);
        let ends = ends.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (committed == ends).then_some(())
        }
    })
    .await;
}

// Issue 4 acceptance: 10,000 messages over 6 partitions are each handled, in order per partition,
// and the committed offsets end at the end offsets. semantics.md §4 "Event" for the shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_six_partitions_are_handled_in_order_and_committed() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "clicks", 6);
    let messages: Vec<(i32, Option<String>, String)> = (0..10_000)
        .map(|i| {
            let partition = i % 6;
            (
                partition,
                Some(format!("user-{}", i % 97)),
                json!({ "partition": partition, "seq": i / 6 }).to_string(),
            )
        })
        .collect();
    let borrowed: Vec<(i32, Option<&str>, String)> = messages
        .iter()
        .map(|(p, k, v)| (*p, k.as_deref(), v.clone()))
        .collect();
    kafka.produce_with_headers(&topic, &borrowed, &[("trace", &[1, 255])]);

    let handler = Handler::start(|_, _| Reply::ok("")).await;
    let setup = Setup {
        batch_size: 100,
        ..Setup::new(&kafka, &topic, &group, &handler)
    };
    let sluice = start(&setup);
    eventually(WAIT, "10,000 records handled", || {
        let count = delivered(&handler).len();
        async move { (count >= 10_000).then_some(()) }
    })
    .await;
    wait_committed_to_end(&kafka, &group, &topic, 6).await;

    let records = delivered(&handler);
    let unique: HashSet<(i64, i64)> = records.iter().copied().collect();
    assert_eq!(unique.len(), 10_000, "every message handled");
    assert_eq!(
        records.len(),
        10_000,
        "no message handled twice in a clean run"
    );
    let mut last: HashMap<i64, i64> = HashMap::new();
    for (partition, offset) in &records {
        if let Some(previous) = last.insert(*partition, *offset) {
            assert!(
                previous < *offset,
                "partition {partition} went from offset {previous} back to {offset}"
            );
        }
    }
    // Each record's value matches its place: offset n of a partition holds its n-th message.
    let first = &handler.received()[0].event;
    assert_eq!(first["eventSource"], "SelfManagedKafka");
    assert_eq!(first["bootstrapServers"], kafka.bootstrap());
    let (name, list) = first["records"].as_object().unwrap().iter().next().unwrap();
    let record = &list[0];
    assert_eq!(
        name,
        &format!("{topic}-{}", record["partition"]),
        "records are keyed <topic>-<partition>"
    );
    assert_eq!(record["topic"], topic.as_str());
    assert_eq!(record["timestampType"], "CREATE_TIME");
    assert!(record["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(record["key"].as_str().is_some(), "the key is base64");
    assert_eq!(kafka_header(record, "trace"), Some(vec![1, 255]));
    for received in handler.received() {
        for record in kafka_records(&received.event) {
            assert_eq!(record["decoded"]["seq"], record["offset"]);
            assert_eq!(record["decoded"]["partition"], record["partition"]);
        }
    }
    // Lag comes from librdkafka's statistics (every 5 s): every partition reports one, and it
    // reaches 0 once everything is committed.
    eventually(WAIT, "consumer lag 0 on every partition", || async {
        let (_, text) = sluice.get("/metrics").await;
        let lags: Vec<f64> = (0..6)
            .filter_map(|p| {
                metric_sample(
                    &text,
                    &format!(
                        "sluice_kafka_consumer_lag{{mapping=\"clicks\",partition=\"{topic}-{p}\"}}"
                    ),
                )
            })
            .collect();
        (lags.len() == 6 && lags.iter().all(|&lag| lag == 0.0)).then_some(())
    })
    .await;
}

// Issue 4 acceptance: with bisect, exactly the poison message reaches the failure topic, keyed as
// it was, as Lambda's kafka:// destination writes it (semantics.md §4 "On-failure to a Kafka
// topic"); every other message is handled and the offsets move past the poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_alone_reaches_the_failure_topic_with_its_key() {
    let kafka = Kafka::start();
    let topic = Kafka::unique("orders");
    let failures = Kafka::unique("orders-failed");
    let group = Kafka::unique("sluice");
    kafka.create_topic(&topic, 2);
    kafka.create_topic(&failures, 1);
    let messages: Vec<(i32, Option<String>, String)> = (0..200)
        .map(|i| {
            let poison = i == 77;
            let key = if poison {
                "poison-key".to_owned()
            } else {
                format!("key-{i}")
            };
            (
                i % 2,
                Some(key),
                json!({ "n": i, "poison": poison }).to_string(),
            )
        })
        .collect();
    let borrowed: Vec<(i32, Option<&str>, String)> = messages
        .iter()
        .map(|(p, k, v)| (*p, k.as_deref(), v.clone()))
        .collect();
    kafka.produce(&topic, &borrowed);

    let handled = Arc::new(Mutex::new(BTreeMap::<i64, usize>::new()));
    let seen = handled.clone();
    let handler = Handler::start(move |_, event| {
        let records = kafka_records(event);
        if records.iter().any(|r| r["decoded"]["poison"] == true) {
            return Reply::status(
                500,
                json!({"errorType": "Poison", "errorMessage": "cannot parse"}).to_string(),
            );
        }
        let mut seen = seen.lock().unwrap();
        for record in records {
            *seen
                .entry(record["decoded"]["n"].as_i64().unwrap())
                .or_default() += 1;
        }
        Reply::ok("")
    })
    .await;
    let extra = format!(
        r#"    retry:
      max_retry_attempts: 1
      bisect_on_error: true
      backoff: {{ initial: 10ms, max: 50ms }}
    on_failure:
      kafka: {{ topic: {failures} }}"#
    );
    let setup = Setup {
        batch_size: 20,
        extra: &extra,
        ..Setup::new(&kafka, &topic, &group, &handler)
    };
    let _sluice = start(&setup);
    wait_committed_to_end(&kafka, &group, &topic, 2).await;

    let handled = handled.lock().unwrap().clone();
    let expected: Vec<i64> = (0..200).filter(|&n| n != 77).collect();
    assert_eq!(handled.keys().copied().collect::<Vec<_>>(), expected);
    let dead = kafka.read_all(&failures, 1);
    assert_eq!(dead.len(), 1, "exactly the poison message is dead-lettered");
    let message = &dead[0];
    assert_eq!(message.key.as_deref(), Some(&b"poison-key"[..]));
    let body = message.json();
    assert_eq!(body["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(body["KafkaBatchInfo"]["batchSize"], 1);
    let payload_records = kafka_records(&body["payload"]);
    assert_eq!(payload_records.len(), 1);
    assert_eq!(payload_records[0]["decoded"]["n"], 77);
    assert_eq!(
        body["KafkaBatchInfo"]["recordInfo"]["offset"],
        payload_records[0]["offset"].to_string()
    );
    assert_eq!(body["sluice"]["error"]["type"], "Poison");
}

// Issue 4 acceptance: SIGKILL mid-run, then a restart: nothing is lost, and the only records
// handled twice are ones whose offsets had not been committed when the process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_loses_nothing_and_repeats_only_uncommitted_records() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "events", 3);
    let messages = numbered(0..3_000, 3);
    kafka.produce(&topic, &messages);
    let handler = Handler::start(|_, _| Reply::ok("").after(Duration::from_millis(25))).await;
    let setup = Setup::new(&kafka, &topic, &group, &handler);
    let mut first = start(&setup);
    eventually(WAIT, "a third of the records handled", || {
        let count = handler.completed().len() * 10;
        async move { (count >= 1_000).then_some(()) }
    })
    .await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).expect("killed");
    let committed_at_kill = kafka.committed(&group, &topic, 3);
    assert!(
        committed_at_kill.iter().any(|&c| c > 0),
        "commits happened while running: {committed_at_kill:?}"
    );
    let before = delivered(&handler).len();
    assert!(before < 3_000, "the kill came mid-run");

    let _second = start(&setup);
    eventually(WAIT, "every record handled after the restart", || {
        let unique: HashSet<(i64, i64)> = delivered(&handler).into_iter().collect();
        async move { (unique.len() >= 3_000).then_some(()) }
    })
    .await;
    wait_committed_to_end(&kafka, &group, &topic, 3).await;
    let mut counts: HashMap<(i64, i64), usize> = HashMap::new();
    for key in delivered(&handler) {
        *counts.entry(key).or_default() += 1;
    }
    assert_eq!(counts.len(), 3_000, "nothing lost");
    for ((partition, offset), count) in counts {
        if count > 1 {
            assert!(
                offset >= committed_at_kill[partition as usize],
                "offset {offset} of partition {partition} was committed ({:?}) yet handled {count} times",
                committed_at_kill
            );
        }
    }
}

async fn assigned(sluice: &Sluice) -> f64 {
    sluice
        .metric("sluice_kafka_partitions_assigned{mapping=\"clicks\"}")
        .await
}

// Issue 4 acceptance: two instances in one group share the partitions; after one is killed the
// other takes its partitions over and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_and_one_takes_over_after_a_kill() {
    share_then_take_over(None).await;
}

// The same with incremental (cooperative) rebalancing, which revokes only the partitions that move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_rebalancing_shares_partitions_and_takes_over_after_a_kill() {
    share_then_take_over(Some("cooperative-sticky")).await;
}

async fn share_then_take_over(strategy: Option<&str>) {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "shared", 6);
    let handler_a = Handler::start(|_, _| Reply::ok("")).await;
    let handler_b = Handler::start(|_, _| Reply::ok("")).await;
    let setup_a = Setup::new(&kafka, &topic, &group, &handler_a);
    let setup_b = Setup::new(&kafka, &topic, &group, &handler_b);
    let with_strategy = |setup: &Setup<'_>| {
        let text = config(setup);
        let text = match strategy {
            Some(strategy) => text.replace(
                "        properties:\n",
                &format!(
                    "        properties:\n          partition.assignment.strategy: {strategy}\n"
                ),
            ),
            None => text,
        };
        assert!(strategy.is_none_or(|s| text.contains(s)), "{text}");
        Sluice::start(&text, &[])
    };
    let mut a = with_strategy(&setup_a);
    eventually(
        WAIT,
        "the first instance to hold every partition",
        || async { (assigned(&a).await == 6.0).then_some(()) },
    )
    .await;
    let b = with_strategy(&setup_b);
    eventually(WAIT, "the partitions to be shared 3 and 3", || async {
        (assigned(&a).await == 3.0 && assigned(&b).await == 3.0).then_some(())
    })
    .await;
    let batch = |from: i32| numbered(from..from + 600, 6);
    kafka.produce(&topic, &batch(0));
    eventually(WAIT, "the first 600 handled", || {
        let count = delivered(&handler_a).len() + delivered(&handler_b).len();
        async move { (count >= 600).then_some(()) }
    })
    .await;
    let partitions = |handler: &Handler| -> HashSet<i64> {
        delivered(handler).into_iter().map(|(p, _)| p).collect()
    };
    let (of_a, of_b) = (partitions(&handler_a), partitions(&handler_b));
    assert_eq!(of_a.len(), 3, "instance a handled partitions {of_a:?}");
    assert_eq!(of_b.len(), 3, "instance b handled partitions {of_b:?}");
    assert!(of_a.is_disjoint(&of_b), "{of_a:?} and {of_b:?} overlap");

    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).expect("killed");
    kafka.produce(&topic, &batch(600));
    eventually(WAIT, "the survivor to take every partition", || async {
        (assigned(&b).await == 6.0).then_some(())
    })
    .await;
    eventually(WAIT, "all 1,200 handled", || {
        let unique: HashSet<(i64, i64)> = delivered(&handler_a)
            .into_iter()
            .chain(delivered(&handler_b))
            .collect();
        async move { (unique.len() >= 1_200).then_some(()) }
    })
    .await;
    wait_committed_to_end(&kafka, &group, &topic, 6).await;
    let taken_over: HashSet<i64> = delivered(&handler_b)
        .into_iter()
        .filter(|(_, offset)| *offset >= 100)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        taken_over.len(),
        6,
        "the survivor handled the later records of every partition"
    );
}

// semantics.md §4 "Partial response": an itemIdentifier {partition, offset} names the failed
// record; the records before it are done, it and the later ones are delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_response_retries_from_the_named_offset() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "partial", 1);
    let messages = numbered(0..30, 1);
    kafka.produce(&topic, &messages);
    let failed_once = Arc::new(Mutex::new(false));
    let flag = failed_once.clone();
    let name = format!("{topic}-0");
    let handler = Handler::start(move |_, event| {
        let records = kafka_records(event);
        let mut failed = flag.lock().unwrap();
        if !*failed && records.iter().any(|r| r["offset"] == 15) {
            *failed = true;
            return Reply::json(json!({
                "batchItemFailures": [{ "itemIdentifier": { "partition": name, "offset": 15 } }]
            }));
        }
        Reply::json(Value::Null)
    })
    .await;
    let setup = Setup {
        extra: "    report_batch_item_failures: true\n    retry: { backoff: { initial: 10ms, max: 50ms } }",
        ..Setup::new(&kafka, &topic, &group, &handler)
    };
    let _sluice = start(&setup);
    wait_committed_to_end(&kafka, &group, &topic, 1).await;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, offset) in delivered(&handler) {
        *counts.entry(offset).or_default() += 1;
    }
    assert_eq!(counts.len(), 30);
    for (offset, count) in counts {
        match offset {
            0..15 => assert_eq!(count, 1, "offset {offset} was before the failure"),
            15 => assert_eq!(count, 2, "the reported offset is delivered again"),
            _ => assert!(count <= 2, "offset {offset} delivered {count} times"),
        }
    }
}

// Hardening issue, item 4: a header key that is not UTF-8 used to panic rdkafka's header
// iterator on the consumer thread, which stopped the mapping for good without a log line. The
// record is delivered (its key with U+FFFD for the bad bytes, the value as bytes) and the mapping
// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_that_is_not_utf8_is_delivered_and_does_not_stop_the_mapping() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "rawheader", 1);
    kafka.produce_with_raw_header_key(&topic, r#"{"n":-1}"#, b"k\xff\xfe", &[1, 2, 255]);
    kafka.produce(&topic, &numbered(0..5, 1));
    let handler = Handler::start(|_, _| Reply::json(Value::Null)).await;
    let _sluice = start(&Setup::new(&kafka, &topic, &group, &handler));
    wait_committed_to_end(&kafka, &group, &topic, 1).await;
    let records: Vec<Value> = handler
        .received()
        .iter()
        .flat_map(|r| kafka_records(&r.event))
        .collect();
    assert_eq!(records.len(), 6, "{records:?}");
    assert_eq!(
        kafka_header(&records[0], "k\u{fffd}\u{fffd}"),
        Some(vec![1, 2, 255]),
        "{}",
        records[0]
    );
}

// Issue 4: on SIGTERM sluice drains (batches in flight finish), commits and leaves the group, so
// the next member repeats nothing the first one handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_the_next_member_repeats_nothing() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "drain", 2);
    let messages = numbered(0..400, 2);
    kafka.produce(&topic, &messages);
    let handler = Handler::start(|_, _| Reply::ok("").after(Duration::from_millis(300))).await;
    let setup = Setup::new(&kafka, &topic, &group, &handler);
    let mut first = start(&setup);
    eventually(WAIT, "some batches handled", || {
        let count = handler.completed().len();
        async move { (count >= 4).then_some(()) }
    })
    .await;
    let stopping = std::time::Instant::now();
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(15))
        .expect("sluice exits after draining");
    assert!(status.success(), "clean exit: {status:?}");
    let stop_time = stopping.elapsed();
    assert!(
        stop_time < Duration::from_secs(5),
        "a drain of one batch per partition took {stop_time:?}"
    );
    assert!(first.logs().contains("leaving the group"));
    let handled_by_first = delivered(&handler);
    assert_eq!(
        handler.received().len(),
        handler.completed().len(),
        "every batch in flight finished before the exit"
    );
    let committed = kafka.committed(&group, &topic, 2);
    for (partition, offset) in &handled_by_first {
        assert!(
            *offset < committed[*partition as usize],
            "offset {offset} of partition {partition} was handled but not committed ({committed:?})"
        );
    }

    let _second = start(&setup);
    wait_committed_to_end(&kafka, &group, &topic, 2).await;
    let mut counts: HashMap<(i64, i64), usize> = HashMap::new();
    for key in delivered(&handler) {
        *counts.entry(key).or_default() += 1;
    }
    assert_eq!(counts.len(), 400);
    assert!(
        counts.values().all(|&c| c == 1),
        "a record was handled twice across a clean stop"
    );
}

// semantics.md §4 "each partition is read in order" and §2 "a failing batch blocks the shard":
// a record that keeps failing holds back its own partition only; the offset stays before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_blocks_only_its_partition() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "blocked", 2);
    let messages: Vec<(i32, Option<&str>, String)> = (0..100)
        .map(|i| (i % 2, None, json!({ "n": i, "bad": i == 20 }).to_string()))
        .collect();
    kafka.produce(&topic, &messages);
    let handler = Handler::start(|_, event| {
        if kafka_records(event)
            .iter()
            .any(|r| r["decoded"]["bad"] == true)
        {
            return Reply::status(500, "{}");
        }
        Reply::ok("")
    })
    .await;
    let setup = Setup {
        batch_size: 5,
        extra: "    retry: { backoff: { initial: 10ms, max: 100ms } }",
        ..Setup::new(&kafka, &topic, &group, &handler)
    };
    // Readiness names the partition that keeps failing (issue 9).
    let text = config(&setup).replace(
        "admin: { listen: \"{admin}\" }",
        "admin: { listen: \"{admin}\", stuck_after: 1s }",
    );
    assert!(text.contains("stuck_after"));
    let sluice = Sluice::start(&text, &[]);
    // Message 20 is offset 10 of partition 0; partition 1 holds the odd numbers.
    eventually(WAIT, "partition 1 committed to its end", || {
        let committed = kafka.committed(&group, &topic, 2);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (committed[1] == 50).then_some(())
        }
    })
    .await;
    eventually(WAIT, "partition 0 retried a few times", || {
        let attempts = handler
            .received()
            .iter()
            .filter(|r| {
                kafka_records(&r.event)
                    .iter()
                    .any(|x| x["decoded"]["bad"] == true)
            })
            .count();
        async move { (attempts >= 3).then_some(()) }
    })
    .await;
    let committed = kafka.committed(&group, &topic, 2);
    assert!(
        committed[0] <= 10,
        "partition 0 committed past its failing record: {committed:?}"
    );
    let beyond: Vec<(i64, i64)> = delivered(&handler)
        .into_iter()
        .filter(|&(p, offset)| p == 0 && offset > 14)
        .collect();
    assert!(
        beyond.is_empty(),
        "records after the failing batch were delivered: {beyond:?}"
    );
    // The partition counts as stuck once it has failed for `stuck_after` (1 s), which can be
    // after the third attempt: the retries above take ~0.2 s.
    let body = eventually(WAIT, "readiness reporting the stuck partition", || async {
        let (status, body) = sluice.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    let report: Value = serde_json::from_str(&body).unwrap();
    let mapping = &report["mappings"]["clicks"];
    assert_eq!(mapping["status"], "stuck", "{body}");
    assert!(
        mapping["stuck_seconds"][format!("{topic}-0")].is_number(),
        "the report names the partition: {body}"
    );
    assert!(mapping["stuck_seconds"][format!("{topic}-1")].is_null());
}

// A partition whose records wait beyond `partition_buffer_bytes` is paused at the broker and
// resumed once its lane catches up; pausing drops librdkafka's prefetch and fetches again from
// the last record taken, so nothing is skipped or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_resumes_without_skipping_or_repeating() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "paused", 1);
    let messages: Vec<(i32, Option<&str>, String)> = (0..2_000)
        .map(|i| {
            (
                0,
                None,
                json!({ "n": i, "pad": "x".repeat(100) }).to_string(),
            )
        })
        .collect();
    kafka.produce(&topic, &messages);
    let handler = Handler::start(|_, _| Reply::ok("").after(Duration::from_millis(2))).await;
    let setup = Setup::new(&kafka, &topic, &group, &handler);
    let config = config(&setup).replace(
        "        properties:",
        "        partition_buffer_bytes: 4096\n        properties:",
    );
    let sluice = Sluice::start(&config, &[]);
    wait_committed_to_end(&kafka, &group, &topic, 1).await;
    let offsets: Vec<i64> = delivered(&handler).into_iter().map(|(_, o)| o).collect();
    assert_eq!(
        offsets,
        (0..2_000).collect::<Vec<i64>>(),
        "each record once, in order"
    );
    let paused = sluice
        .metric("sluice_stream_events_total{mapping=\"clicks\",event=\"partition_paused\"}")
        .await;
    assert!(paused > 0.0, "the small buffer paused the partition");
}

// Issue 4: a batch still in flight at the drain deadline is abandoned without a commit, so the
// next member delivers it again (at-least-once), and the stop is not held up past the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_drain_deadline_is_abandoned_uncommitted_and_delivered_again() {
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "slow", 1);
    let messages = numbered(0..10, 1);
    kafka.produce(&topic, &messages);
    let first_call = Arc::new(Mutex::new(true));
    let flag = first_call.clone();
    let handler = Handler::start(move |_, _| {
        let mut first = flag.lock().unwrap();
        if std::mem::replace(&mut *first, false) {
            return Reply::ok("").after(Duration::from_secs(20));
        }
        Reply::ok("")
    })
    .await;
    let setup = Setup::new(&kafka, &topic, &group, &handler);
    let text = config(&setup).replace("shutdown_timeout: 10s", "shutdown_timeout: 1s");
    let mut first = Sluice::start(&text, &[]);
    eventually(WAIT, "the slow batch in flight", || {
        let count = handler.received().len();
        async move { (count >= 1).then_some(()) }
    })
    .await;
    let stopping = std::time::Instant::now();
    first.signal("TERM");
    first
        .wait_exit(Duration::from_secs(15))
        .expect("sluice exits after the drain deadline");
    let stop_time = stopping.elapsed();
    assert!(
        stop_time < Duration::from_secs(6),
        "the stop waited {stop_time:?}, past the 1s drain deadline"
    );
    assert!(first.logs().contains("drain deadline reached"));
    assert_eq!(
        kafka.committed(&group, &topic, 1),
        vec![-1],
        "nothing committed for the abandoned batch"
    );
    let _second = Sluice::start(&text, &[]);
    wait_committed_to_end(&kafka, &group, &topic, 1).await;
    let offsets: Vec<i64> = delivered(&handler).into_iter().map(|(_, o)| o).collect();
    assert_eq!(
        offsets.len(),
        20,
        "the abandoned batch came again: {offsets:?}"
    );
}

// semantics.md §4 "On-failure record, SQS/SNS/S3": an SQS destination receives the envelope with
// KafkaBatchInfo (recordsInfo per partition) and the full records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_records_reach_an_sqs_destination_with_kafka_batch_info() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let dlq = create_queue(&sqs, "kafka-dlq", &[]).await;
    let kafka = Kafka::start();
    let (topic, group) = topic_and_group(&kafka, "payments", 1);
    let messages: Vec<(i32, Option<&str>, String)> = (0..5)
        .map(|i| (0, Some("acct-1"), json!({ "n": i }).to_string()))
        .collect();
    kafka.produce(&topic, &messages);
    let handler = Handler::start(|_, _| {
        Reply::status(500, r#"{"errorType":"Declined","errorMessage":"no funds"}"#)
    })
    .await;
    let extra = format!(
        "    retry: {{ max_retry_attempts: 1, backoff: {{ initial: 10ms, max: 20ms }} }}\n    on_failure: {{ sqs: {{ queue_url: \"{dlq}\" }} }}"
    );
    let setup = Setup {
        extra: &extra,
        ..Setup::new(&kafka, &topic, &group, &handler)
    };
    let _sluice = Sluice::start(&config(&setup), &moto_env(&moto));
    wait_committed_to_end(&kafka, &group, &topic, 1).await;
    let bodies = eventually(WAIT, "the dead letter in SQS", || async {
        let messages = receive_all(&sqs, &dlq, 30).await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(bodies.len(), 1, "one envelope for the batch");
    let envelope: Value = serde_json::from_str(bodies[0].body().unwrap()).unwrap();
    assert_eq!(
        envelope["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    assert_eq!(envelope["requestContext"]["approximateInvokeCount"], 2);
    let info = &envelope["KafkaBatchInfo"];
    assert_eq!(info["batchSize"], 5);
    assert_eq!(info["bootstrapServers"], kafka.bootstrap());
    let partition = format!("{topic}-0");
    assert_eq!(info["recordsInfo"][&partition]["firstRecordOffset"], "0");
    assert_eq!(info["recordsInfo"][&partition]["lastRecordOffset"], "4");
    assert_eq!(envelope["sluice"]["source"]["kind"], "kafka");
    assert_eq!(envelope["sluice"]["records"].as_array().unwrap().len(), 5);
    assert_eq!(envelope["sluice"]["error"]["type"], "Declined");
}

// architecture.md "CLI": `validate --connect` reaches the brokers and names a missing topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_names_a_missing_topic() {
    let kafka = Kafka::start();
    let topic = Kafka::unique("present");
    kafka.create_topic(&topic, 1);
    let missing = Kafka::unique("absent");
    let registry = SchemaRegistry::start(Some(("sluice", "right"))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    let write = |password: &str| {
        std::fs::write(
            &path,
            format!(
                "version: 1\ntargets:\n  api:\n    http: {{ url: \"http://127.0.0.1:1/\" }}\nmappings:\n  - name: k\n    target: api\n    source:\n      kafka:\n        bootstrap_servers: \"{}\"\n        topics: [{topic}, {missing}]\n        group_id: g\n        starting_position: latest\n        schema_registry: {{ url: \"{}\", auth: {{ basic: {{ username: sluice, password: {password} }} }}, value: {{ format: avro }} }}\n",
                kafka.bootstrap(),
                registry.url()
            ),
        )
        .unwrap()
    };
    write("right");
    let output = std::process::Command::new(sluice_binary())
        .args(["validate", "--connect", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mappings[0].source.kafka (k)") && stderr.contains(&missing),
        "{stderr}"
    );
    assert!(!stderr.contains(&format!("\"{topic}\"")), "{stderr}");
    assert!(
        !stderr.contains("schema_registry"),
        "the registry answers: {stderr}"
    );
    // Wrong credentials: named before anything is consumed.
    write("wrong");
    let output = std::process::Command::new(sluice_binary())
        .args(["validate", "--connect", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mappings[0].source.kafka.schema_registry (k)")
            && stderr.contains("401")
            && stderr.contains("credentials"),
        "{stderr}"
    );
}

/// Avro's binary encoding, written by hand so the decoder is checked against the spec rather
/// than against the crate it uses: a long is a zigzag varint, a string its length then bytes.
fn avro_long(value: i64, out: &mut Vec<u8>) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn avro_string(value: &str, out: &mut Vec<u8>) {
    avro_long(value.len() as i64, out);
    out.extend_from_slice(value.as_bytes());
}

/// The Confluent wire format: magic byte 0, the schema id, then `payload`.
fn framed(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// An `Order` datum (id, status, total: Money {currency, cents}) framed with schema `id`.
fn avro_order(schema_id: u32, id: &str, status: &str, cents: i64) -> Vec<u8> {
    let mut datum = Vec::new();
    avro_string(id, &mut datum);
    avro_string(status, &mut datum);
    avro_string("EUR", &mut datum);
    avro_long(cents, &mut datum);
    framed(schema_id, &datum)
}

const MONEY_AVRO: &str = r#"{"type":"record","name":"Money","namespace":"shop","fields":[{"name":"currency","type":"string"},{"name":"cents","type":"long"}]}"#;
const ORDER_AVRO: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"status","type":"string"},{"name":"total","type":"shop.Money"}]}"#;
const LINES_PROTO: &str = r#"syntax = "proto3";
package shop;
message Header { string id = 1; }
message Order {
  string id = 1;
  message Line { string sku = 1; int32 quantity = 2; }
  repeated Line lines = 2;
}
"#;

// Issue 22 item 3: keys and values in the Confluent wire format are decoded with their schemas
// (Avro with a reference, JSON Schema keys, Protobuf nested messages), filters see the decoded
// fields, records that cannot be decoded go alone to on_failure as SchemaRegistryError without
// blocking their partition, schemas are fetched once per id, and a registry that is down holds
// records back (in order) instead of dead-lettering them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_registry_records_are_decoded_filtered_and_undecodable_ones_dead_lettered() {
    let kafka = Kafka::start();
    let orders = Kafka::unique("orders");
    let lines = Kafka::unique("lines");
    let failures = Kafka::unique("orders-failed");
    kafka.create_topic(&orders, 1);
    kafka.create_topic(&lines, 1);
    kafka.create_topic(&failures, 1);
    let registry = SchemaRegistry::start(Some(("sluice", "s3cret"))).await;
    let money_reference = json!([{"name": "shop.Money", "subject": "money", "version": 1}]);
    registry.add(1, registered(None, ORDER_AVRO, money_reference.clone()));
    registry.add(5, registered(None, ORDER_AVRO, money_reference));
    registry.add_subject("money", 1, registered(None, MONEY_AVRO, json!([])));
    registry.add(2, registered(Some("PROTOBUF"), LINES_PROTO, json!([])));
    registry.add(
        3,
        registered(Some("JSON"), r#"{"type":"object"}"#, json!([])),
    );

    let key = framed(3, br#"{"customer":"c1"}"#);
    let mut truncated = avro_order(1, "o-5", "paid", 500);
    truncated.truncate(truncated.len() - 4);
    let mut order_messages: Vec<ByteMessage> = vec![
        (0, Some(key.clone()), avro_order(1, "o-0", "paid", 100)),
        (0, Some(key.clone()), avro_order(1, "o-1", "draft", 200)),
        (0, None, br#"{"id":"o-2"}"#.to_vec()),
        (0, None, avro_order(99, "o-3", "paid", 300)),
        (0, None, framed(2, &[0, 0x0a, 1, b'x'])),
        (0, None, truncated),
        (0, Some(key.clone()), avro_order(1, "o-6", "paid", 600)),
    ];
    kafka.produce_bytes(&orders, &order_messages);
    // Line {sku: "A-1", quantity: 3} under path [1, 0] (Order's first nested message).
    let line = vec![0x0a, 3, b'A', b'-', b'1', 0x10, 3];
    let mut line_payload = vec![4, 2, 0];
    line_payload.extend_from_slice(&line);
    kafka.produce_bytes(&lines, &[(0, None, framed(2, &line_payload))]);

    // o-6 fails at the handler: its dead letter must keep the record as it was in the topic.
    let handler = Handler::start(|_, event| {
        if kafka_records(event)
            .iter()
            .any(|r| r["decoded"]["id"] == "o-6")
        {
            return Reply::status(500, json!({"errorType": "Refused"}).to_string());
        }
        Reply::ok("")
    })
    .await;
    let registry_block = |value: &str, format: &str| {
        format!(
            r#"        schema_registry:
          url: "{url}"
          auth: {{ basic: {{ username: sluice, password: "${{REGISTRY_PASSWORD}}" }} }}
          value: {{ format: {value} }}
          event_record_format: {format}
"#,
            url = registry.url()
        )
    };
    let config = TestConfig::new(&handler.url("/"))
        .mappings(&format!(
            r#"  - name: orders
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{orders}]
        group_id: {orders}-group
        starting_position: trim_horizon
        max_batching_window: 100ms
{orders_registry}          key: {{ format: json_schema }}
    filters:
      - value: {{ status: [paid] }}
    retry: {{ max_retry_attempts: 0 }}
    on_failure:
      kafka: {{ topic: {failures} }}
  - name: lines
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{lines}]
        group_id: {lines}-group
        starting_position: trim_horizon
        max_batching_window: 100ms
{lines_registry}"#,
            bootstrap = kafka.bootstrap(),
            orders_registry = registry_block("avro", "JSON"),
            lines_registry = registry_block("protobuf", "SOURCE"),
        ))
        .render();
    let sluice = Sluice::start(&config, &[("REGISTRY_PASSWORD".into(), "s3cret".into())]);

    let records_of = |topic: &str| -> Vec<Value> {
        handler
            .received()
            .iter()
            .flat_map(|r| kafka_records(&r.event))
            .filter(|r| r["topic"] == topic)
            .collect()
    };
    eventually(WAIT, "the decoded orders and the line", || {
        let done = records_of(&orders).len() >= 2 && !records_of(&lines).is_empty();
        async move { done.then_some(()) }
    })
    .await;
    // Offset 3 names an id the registry does not have: it is asked again for 20 s (a lagging
    // registry) before that record is dead-lettered.
    let dead = eventually(WAIT, "five dead letters", || {
        let dead = kafka.read_all(&failures, 1);
        async move { (dead.len() >= 5).then_some(dead) }
    })
    .await;

    let delivered = records_of(&orders);
    let ids: Vec<&str> = delivered
        .iter()
        .map(|r| r["decoded"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["o-0", "o-6"],
        "o-1 is filtered out on its decoded status"
    );
    assert_eq!(
        delivered[0]["decoded"],
        json!({"id": "o-0", "status": "paid", "total": {"currency": "EUR", "cents": 100}})
    );
    assert_eq!(
        delivered[0]["valueSchemaMetadata"],
        json!({"dataFormat": "AVRO", "schemaId": "1"})
    );
    let decoded_key = BASE64
        .decode(delivered[0]["key"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&decoded_key).unwrap(),
        json!({"customer": "c1"})
    );
    assert_eq!(
        delivered[0]["keySchemaMetadata"],
        json!({"dataFormat": "JSON", "schemaId": "3"})
    );
    let line_record = &records_of(&lines)[0];
    assert_eq!(
        BASE64
            .decode(line_record["value"].as_str().unwrap())
            .unwrap(),
        line,
        "SOURCE delivers the message without the framing and the index path"
    );
    assert_eq!(
        line_record["valueSchemaMetadata"],
        json!({"dataFormat": "PROTOBUF", "schemaId": "2"})
    );

    assert_eq!(dead.len(), 5, "{dead:?}");
    let (exhausted, dead): (Vec<_>, Vec<_>) = dead
        .iter()
        .partition(|m| m.json()["requestContext"]["condition"] == "RetriesExhausted");
    assert_eq!(exhausted.len(), 1);
    let exhausted = kafka_records(&exhausted[0].json()["payload"]);
    assert_eq!(
        BASE64
            .decode(exhausted[0]["value"].as_str().unwrap())
            .unwrap(),
        avro_order(1, "o-6", "paid", 600),
        "a dead letter keeps the bytes as they were in the topic (a replay to the source writes them back)"
    );
    assert_eq!(
        BASE64
            .decode(exhausted[0]["key"].as_str().unwrap())
            .unwrap(),
        key
    );
    let mut reasons = BTreeMap::new();
    for message in &dead {
        let body = message.json();
        assert_eq!(body["requestContext"]["condition"], "NonRetryableError");
        assert_eq!(body["sluice"]["error"]["type"], "SchemaRegistryError");
        let records = kafka_records(&body["payload"]);
        assert_eq!(records.len(), 1, "each undecodable record alone");
        reasons.insert(
            records[0]["offset"].as_i64().unwrap(),
            body["sluice"]["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(reasons.keys().copied().collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert!(reasons[&2].contains("magic byte"), "{}", reasons[&2]);
    assert!(
        reasons[&3].contains("schema 99") && reasons[&3].contains("404"),
        "{}",
        reasons[&3]
    );
    assert!(reasons[&4].contains("PROTOBUF schema"), "{}", reasons[&4]);
    assert!(reasons[&5].contains("does not decode"), "{}", reasons[&5]);
    assert!(
        reasons
            .values()
            .all(|r| r.contains(&format!("topic {orders} partition 0 offset"))),
        "{reasons:?}"
    );
    let asked = registry.requests();
    let count = |path: &str| asked.iter().filter(|p| *p == path).count();
    assert_eq!(
        count("/schemas/ids/1"),
        1,
        "a schema is fetched once: {asked:?}"
    );
    assert_eq!(count("/subjects/money/versions/1"), 1, "{asked:?}");

    // The registry goes down while a record of a new schema id waits: it is held, in order,
    // and delivered once the registry is back; nothing is dead-lettered for the outage.
    registry.set_down(true);
    order_messages.clear();
    order_messages.push((0, None, avro_order(5, "o-7", "paid", 700)));
    order_messages.push((0, None, avro_order(1, "o-8", "paid", 800)));
    kafka.produce_bytes(&orders, &order_messages);
    eventually(
        WAIT,
        "sluice asking the registry again while it is down",
        || {
            let tries = registry
                .requests()
                .iter()
                .filter(|p| *p == "/schemas/ids/5")
                .count();
            async move { (tries >= 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        records_of(&orders).len(),
        2,
        "o-7 and o-8 wait for the registry"
    );
    registry.set_down(false);
    eventually(WAIT, "o-7 and o-8 after the registry came back", || {
        let done = records_of(&orders).len() >= 4;
        async move { done.then_some(()) }
    })
    .await;
    let ids: Vec<String> = records_of(&orders)
        .iter()
        .map(|r| r["decoded"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["o-0", "o-6", "o-7", "o-8"]);
    sluice.settled("orders", Duration::from_secs(1)).await;
    assert_eq!(
        kafka.read_all(&failures, 1).len(),
        5,
        "nothing dead-lettered for the outage"
    );
}
