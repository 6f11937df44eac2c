//! End-to-end: the real `sluice` binary, moto's Kinesis (with the launcher's resharding and
//! shard-end fixes, patches 8 to 10), and an HTTP handler in the test, checking Lambda's stream
//! semantics for Kinesis (semantics.md §2, §7, §13.3, §13.4) as a user sees them: per-key order
//! across a split and a merge, partial batch responses, bisect to a dead letter with
//! `KinesisBatchInfo` and its replay, records too old to invoke, checkpoints and leases shared by
//! two instances, and `validate --connect`.

use aws_sdk_kinesis::types::ScalingType;
use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn config(handler_url: &str, state_dir: &std::path::Path, top: &str, mapping: &str) -> String {
    TestConfig::new(handler_url)
        .state_dir(state_dir)
        .top(top)
        .mappings(mapping)
        .render()
}

/// `(key, n)` of a delivered record, from its JSON data.
fn key_and_n(record: &Value) -> (String, u64) {
    let data = kinesis_data(record);
    (
        data["key"].as_str().expect("key").to_owned(),
        data["n"].as_u64().expect("n"),
    )
}

/// Per key, `n` must increase in delivery order.
fn assert_in_order_per_key(records: &[Value], what: &str) {
    let mut last: HashMap<String, u64> = HashMap::new();
    for record in records {
        let (key, n) = key_and_n(record);
        if let Some(previous) = last.insert(key.clone(), n) {
            assert!(
                previous < n,
                "{what}: key {key} went from {previous} to {n}"
            );
        }
    }
}

fn shard_of(record: &Value) -> String {
    record["eventID"]
        .as_str()
        .and_then(|id| id.split(':').next())
        .expect("an eventID")
        .to_owned()
}

// semantics.md §2 (a batch from one shard, in order per key), §13.3 (the record); issue 21 item 2:
// resharding under load loses nothing and keeps each key's order across a split and a merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_keeps_its_order_and_nothing_is_lost_across_a_split_and_a_merge_under_load() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    let arn = create_kinesis_stream(&kinesis, "orders", 2).await;
    let handler =
        Handler::start(|_, _| Reply::json(json!({})).after(Duration::from_millis(5))).await;
    let state = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &config(
            &handler.url("/orders"),
            state.path(),
            "",
            r#"
  - name: orders
    target: handler
    source:
      kinesis:
        stream_name: orders
        starting_position: trim_horizon
        batch_size: 25
        discovery_interval: 1s
        invoke_identity_arn: arn:aws:iam::123456789012:role/orders-consumer
"#,
        ),
        &moto_env(&moto),
    );
    const KEYS: u64 = 16;
    const ROUNDS: u64 = 60;
    let mut written = 0;
    let ctl = |action: &str| {
        let output = Command::new(sluice_binary())
            .args(["ctl", action, "orders", "--address-file"])
            .arg(sluice.address_file())
            .output()
            .expect("sluice ctl");
        assert!(output.status.success(), "{output:?}");
    };
    for round in 0..ROUNDS {
        // Reading is paused around each reshard, so the parents still hold unread records when
        // their children get newer ones: a runtime that read a child before its parents were
        // finished would deliver a key's records out of order.
        if round == 20 || round == 40 {
            ctl("pause");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if round == 30 || round == 50 {
            ctl("resume");
        }
        let mut writers = tokio::task::JoinSet::new();
        for key in 0..KEYS {
            let client = kinesis.clone();
            writers.spawn(async move {
                let key = format!("customer-{key}");
                put_kinesis(&client, "orders", &key, &json!({"key": key, "n": round})).await;
            });
        }
        while let Some(joined) = writers.join_next().await {
            joined.expect("a put");
            written += 1;
        }
        // Split both shards a third of the way in, merge back two thirds in.
        let target = match round {
            20 => Some(4),
            40 => Some(2),
            _ => None,
        };
        if let Some(target) = target {
            kinesis
                .update_shard_count()
                .stream_name("orders")
                .target_shard_count(target)
                .scaling_type(ScalingType::UniformScaling)
                .send()
                .await
                .expect("UpdateShardCount");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = kinesis
        .list_shards()
        .stream_name("orders")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.shards().len(), 8, "2 roots, 4 children, 2 merged");
    let delivered = eventually(Duration::from_secs(240), "every record handled", || async {
        let records = handler.records();
        let distinct: HashSet<(String, u64)> = records.iter().map(key_and_n).collect();
        (distinct.len() as u64 == written).then_some(records)
    })
    .await;
    assert_eq!(
        delivered.len() as u64,
        written,
        "no failure, no restart: every record exactly once"
    );
    assert_in_order_per_key(&delivered, "across the split and the merge");
    let shards: HashSet<String> = delivered.iter().map(shard_of).collect();
    assert_eq!(
        shards.len(),
        8,
        "records came from every generation: {shards:?}"
    );
    // Every batch comes from one shard (semantics.md §2).
    for received in handler.received() {
        let in_batch: HashSet<String> = received.records().iter().map(shard_of).collect();
        assert_eq!(in_batch.len(), 1, "a batch mixed shards: {in_batch:?}");
    }
    // Lambda's Kinesis record (semantics.md §13.3).
    let record = &delivered[0];
    let (key, _) = key_and_n(record);
    assert_eq!(record["eventSource"], "aws:kinesis");
    assert_eq!(record["eventName"], "aws:kinesis:record");
    assert_eq!(record["eventVersion"], "1.0");
    assert_eq!(record["awsRegion"], "us-east-1");
    assert_eq!(record["eventSourceARN"], arn.as_str());
    assert_eq!(
        record["invokeIdentityArn"],
        "arn:aws:iam::123456789012:role/orders-consumer"
    );
    assert_eq!(record["kinesis"]["kinesisSchemaVersion"], "1.0");
    assert_eq!(record["kinesis"]["partitionKey"], key.as_str());
    let sequence = record["kinesis"]["sequenceNumber"].as_str().unwrap();
    assert_eq!(
        record["eventID"].as_str().unwrap(),
        format!("{}:{sequence}", shard_of(record))
    );
    let arrived = record["kinesis"]["approximateArrivalTimestamp"]
        .as_f64()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now).contains(&arrived),
        "epoch seconds: {arrived}"
    );
    let finished = sluice
        .metric("sluice_stream_events_total{mapping=\"orders\",event=\"shard_finished\"}")
        .await;
    assert_eq!(finished, 6.0, "the 6 closed shards finished");
    let (_, metrics) = sluice.get("/metrics").await;
    assert!(
        metrics.contains("sluice_stream_millis_behind_latest{mapping=\"orders\""),
        "{metrics}"
    );
}

// semantics.md §2 ReportBatchItemFailures: the checkpoint goes to the lowest reported sequence
// number and everything from there on is retried; §7: a data filter sees the decoded JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_response_retries_from_the_reported_record_and_filters_see_decoded_data() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    create_kinesis_stream(&kinesis, "events", 1).await;
    for n in 0..20u64 {
        let kind = if n % 4 == 3 { "noise" } else { "order" };
        put_kinesis(
            &kinesis,
            "events",
            "p",
            &json!({"key": "p", "n": n, "type": kind}),
        )
        .await;
    }
    let failed_once = Arc::new(AtomicBool::new(false));
    let fail = failed_once.clone();
    let handler = Handler::start(move |_, event| {
        let records = event["Records"].as_array().cloned().unwrap_or_default();
        let seventh = records.iter().find(|r| kinesis_data(r)["n"] == 6);
        match seventh {
            Some(record) if !fail.swap(true, Ordering::SeqCst) => Reply::json(json!({
                "batchItemFailures": [{"itemIdentifier": record["kinesis"]["sequenceNumber"]}]
            })),
            _ => Reply::json(json!({"batchItemFailures": []})),
        }
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let _sluice = Sluice::start(
        &config(
            &handler.url("/events"),
            state.path(),
            "",
            r#"
  - name: events
    target: handler
    report_batch_item_failures: true
    filters:
      - data: { type: [order] }
    source:
      kinesis: { stream_name: events, starting_position: trim_horizon, batch_size: 10, max_batching_window: 1s }
    retry:
      backoff: { initial: 10ms, max: 50ms }
"#,
        ),
        &moto_env(&moto),
    );
    let wanted: HashSet<u64> = (0..20).filter(|n| n % 4 != 3).collect();
    let records = eventually(Duration::from_secs(120), "every order handled", || async {
        let records = handler.records();
        let seen: HashSet<u64> = records.iter().map(|r| key_and_n(r).1).collect();
        (seen == wanted && failed_once.load(Ordering::SeqCst)).then_some(records)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = handler.records().len().max(records.len());
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for record in handler.records() {
        *count.entry(key_and_n(&record).1).or_default() += 1;
    }
    assert!(
        count.keys().all(|n| n % 4 != 3),
        "filtered records were delivered: {count:?}"
    );
    // The first batch is the first ten orders, [0 1 2 4 5 6 8 9 10 12] (all were written before
    // sluice started, and the window gathers a full batch): the reported 6 and everything after
    // it in that batch are retried, nothing before it.
    for (n, times) in &count {
        let expected = if [6, 8, 9, 10, 12].contains(n) { 2 } else { 1 };
        assert_eq!(
            *times, expected,
            "record {n}: {count:?} ({records} deliveries)"
        );
    }
}

// semantics.md §2 bisect and discard, §13.4 the on-failure record with KinesisBatchInfo;
// issue 21 item 8: dlq peek and replay for Kinesis dead letters, to the target and to the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_alone_with_kinesis_batch_info_and_replayed() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    let sqs = moto.sqs().await;
    let arn = create_kinesis_stream(&kinesis, "payments", 1).await;
    let dlq = create_queue(&sqs, "payments-dlq", &[]).await;
    let mut poison_sequence = String::new();
    for n in 0..30u64 {
        let (shard, sequence) = put_kinesis(
            &kinesis,
            "payments",
            &format!("k{}", n % 3),
            &json!({"key": format!("k{}", n % 3), "n": n}),
        )
        .await;
        assert_eq!(shard, "shardId-000000000000");
        if n == 17 {
            poison_sequence = sequence;
        }
    }
    let healed = Arc::new(AtomicBool::new(false));
    let cured = healed.clone();
    let handler = Handler::start(move |_, event| {
        let poisoned = event["Records"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| kinesis_data(r)["n"] == 17);
        if poisoned && !cured.load(Ordering::SeqCst) {
            Reply::status(
                500,
                r#"{"errorType":"PoisonError","errorMessage":"cannot pay"}"#,
            )
        } else {
            Reply::json(json!(null))
        }
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::start(
        &config(
            &handler.url("/payments"),
            state.path(),
            "",
            &format!(
                r#"
  - name: payments
    target: handler
    source:
      kinesis: {{ stream_name: payments, starting_position: trim_horizon, batch_size: 10 }}
    retry:
      max_retry_attempts: 1
      bisect_on_error: true
      backoff: {{ initial: 10ms, max: 50ms }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    // Held for a second only: `sluice dlq` reads it from the queue below.
    let messages = eventually(Duration::from_secs(120), "the dead letter", || async {
        let messages = receive_all(&sqs, &dlq, 1).await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(messages.len(), 1, "one dead letter");
    let envelope: Value = serde_json::from_str(messages[0].body().unwrap()).unwrap();
    let info = &envelope["KinesisBatchInfo"];
    assert_eq!(info["shardId"], "shardId-000000000000");
    assert_eq!(info["startSequenceNumber"], poison_sequence.as_str());
    assert_eq!(info["endSequenceNumber"], poison_sequence.as_str());
    assert_eq!(
        info["batchSize"], 1,
        "bisected down to the poison record alone"
    );
    assert_eq!(info["streamArn"], arn.as_str());
    let arrival = info["approximateArrivalOfFirstRecord"].as_str().unwrap();
    assert!(
        arrival.ends_with('Z') && arrival.len() == "2019-11-14T00:38:04.835Z".len(),
        "milliseconds, as Kinesis writes them: {arrival}"
    );
    assert!(envelope.get("DDBStreamBatchInfo").is_none());
    assert_eq!(
        envelope["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    assert_eq!(envelope["responseContext"]["functionError"], "Unhandled");
    assert_eq!(envelope["sluice"]["source"]["kind"], "kinesis");
    eventually(
        Duration::from_secs(60),
        "every other record handled",
        || async {
            let handled: HashSet<u64> = handler.records().iter().map(|r| key_and_n(r).1).collect();
            (handled.len() == 30).then_some(())
        },
    )
    .await;
    // The shard moved past the poison record: it is in the dead letter, not in the stream's way.
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let config_path = sluice.dir.path().join("sluice.yaml");
    let env = moto_env(&moto);
    let dlq_command = |args: &[&str]| {
        let output = Command::new(sluice_binary())
            .arg("dlq")
            .arg(args[0])
            .arg("-c")
            .arg(&config_path)
            .args(&args[1..])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("sluice dlq");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let (status, peek) = dlq_command(&["peek", "--mapping", "payments"]);
    assert_eq!(status, Some(0), "{peek}");
    assert!(
        peek.contains(&format!("shardId-000000000000:{poison_sequence}")),
        "peek names the record by shard and sequence number: {peek}"
    );
    healed.store(true, Ordering::SeqCst);
    let before = handler.records().len();
    let (status, replay) = dlq_command(&["replay", "--mapping", "payments", "--keep"]);
    assert_eq!(status, Some(0), "{replay}");
    let replayed = handler.records()[before..].to_vec();
    assert_eq!(replayed.len(), 1, "{replay}");
    assert_eq!(key_and_n(&replayed[0]).1, 17);
    // --to-source writes the record back to the stream with its partition key.
    let (status, to_source) = dlq_command(&["replay", "--mapping", "payments", "--to-source"]);
    assert_eq!(status, Some(0), "{to_source}");
    let shard_iterator = kinesis
        .get_shard_iterator()
        .stream_name("payments")
        .shard_id("shardId-000000000000")
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(&poison_sequence)
        .send()
        .await
        .unwrap();
    let page = kinesis
        .get_records()
        .shard_iterator(shard_iterator.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    let last = page.records().last().expect("the replayed record");
    assert_eq!(last.partition_key(), Some("k2"));
    let data: Value = serde_json::from_slice(last.data().as_ref()).unwrap();
    assert_eq!(data, json!({"key": "k2", "n": 17}));
    assert!(
        receive_all(&sqs, &dlq, 30).await.is_empty(),
        "the replay deleted it"
    );
}

// semantics.md §2 and §13.4: a record older than max_record_age goes to on_failure as
// RecordAgeExceeded without an invocation and without a responseContext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_max_record_age_reach_on_failure_without_an_invocation() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    let sqs = moto.sqs().await;
    create_kinesis_stream(&kinesis, "clicks", 1).await;
    let dlq = create_queue(&sqs, "clicks-dlq", &[]).await;
    moto.shift_stream_clock(-120).await;
    for n in 0..3u64 {
        put_kinesis(&kinesis, "clicks", "old", &json!({"key": "old", "n": n})).await;
    }
    moto.shift_stream_clock(0).await;
    for n in 3..6u64 {
        put_kinesis(&kinesis, "clicks", "new", &json!({"key": "new", "n": n})).await;
    }
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let state = tempfile::tempdir().unwrap();
    let _sluice = Sluice::start(
        &config(
            &handler.url("/clicks"),
            state.path(),
            "",
            &format!(
                r#"
  - name: clicks
    target: handler
    source:
      kinesis: {{ stream_name: clicks, starting_position: trim_horizon, batch_size: 10 }}
    retry:
      max_record_age: 60s
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    let envelopes = eventually(Duration::from_secs(60), "the aged-out records", || async {
        let messages = receive_all(&sqs, &dlq, 30).await;
        let envelopes: Vec<Value> = messages
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
            .collect();
        let aged: u64 = envelopes
            .iter()
            .map(|e| e["KinesisBatchInfo"]["batchSize"].as_u64().unwrap())
            .sum();
        (aged == 3).then_some(envelopes)
    })
    .await;
    for envelope in &envelopes {
        assert_eq!(envelope["requestContext"]["condition"], "RecordAgeExceeded");
        assert!(envelope.get("responseContext").is_none(), "{envelope}");
    }
    eventually(
        Duration::from_secs(30),
        "the new records handled",
        || async { (handler.records().len() == 3).then_some(()) },
    )
    .await;
    let handled: Vec<u64> = handler.records().iter().map(|r| key_and_n(r).1).collect();
    assert_eq!(handled, [3, 4, 5], "old records never reached the handler");
}

// Issue 21 item 4: the DynamoDB lease table balances a stream's shards across instances, and a
// SIGKILLed instance's shards are taken over from their checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_shards_and_one_takes_over_after_a_sigkill() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    create_kinesis_stream(&kinesis, "shared", 4).await;
    // Records keep coming while the instances start and balance, so that neither can finish
    // the stream alone before the other takes its share.
    let writer = KeyedWriter::start(&kinesis, "shared", 40, Duration::from_millis(5));
    let handler =
        Handler::start(|_, _| Reply::json(json!({})).after(Duration::from_millis(30))).await;
    let mapping = r#"
  - name: shared
    target: handler
    source:
      kinesis: { stream_name: shared, starting_position: trim_horizon, batch_size: 10 }
"#;
    let top = "checkpoints: { dynamodb: { table: sluice-leases, lease_duration: 3s } }";
    let state_a = tempfile::tempdir().unwrap();
    let state_b = tempfile::tempdir().unwrap();
    let mut a = Some(Sluice::start(
        &config(&handler.url("/a"), state_a.path(), top, mapping),
        &moto_env(&moto),
    ));
    let mut b = Some(Sluice::start(
        &config(&handler.url("/b"), state_b.path(), top, mapping),
        &moto_env(&moto),
    ));
    // Balanced: each instance reads some shards, and together all four.
    eventually(
        Duration::from_secs(120),
        "both instances handling",
        || async {
            let received = handler.received();
            let shards = |path: &str| -> HashSet<String> {
                received
                    .iter()
                    .filter(|r| r.path == path)
                    .flat_map(|r| r.records())
                    .map(|r| shard_of(&r))
                    .collect()
            };
            let (on_a, on_b) = (shards("/a"), shards("/b"));
            (!on_a.is_empty() && !on_b.is_empty() && on_a.len() + on_b.len() >= 4).then_some(())
        },
    )
    .await;
    let dead = a.take().unwrap();
    dead.signal("KILL");
    let killed_at = Instant::now();
    drop(dead);
    // Writing goes on for a few seconds after the kill, then stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written = writer.stop().await;
    eventually(Duration::from_secs(240), "every record handled", || async {
        let seen: HashSet<u64> = handler.records().iter().map(|r| key_and_n(r).1).collect();
        (seen.len() as u64 == written).then_some(())
    })
    .await;
    let received = handler.received();
    assert!(
        received
            .iter()
            .filter(|r| r.path == "/a")
            .all(|r| r.at <= killed_at + Duration::from_millis(500)),
        "the killed instance handled nothing after its death (a request sent just before the \
         kill is stamped once its body is read)"
    );
    let survivor: Vec<Value> = received
        .iter()
        .filter(|r| r.path == "/b" && r.at > killed_at)
        .flat_map(Received::records)
        .collect();
    assert_in_order_per_key(&survivor, "the survivor");
    let survivor_shards: HashSet<String> = survivor.iter().map(shard_of).collect();
    assert_eq!(
        survivor_shards.len(),
        4,
        "the survivor reads every shard now"
    );
    let by_a: HashSet<u64> = received
        .iter()
        .filter(|r| r.path == "/a")
        .flat_map(Received::records)
        .map(|r| key_and_n(&r).1)
        .collect();
    let repeats = survivor
        .iter()
        .filter(|r| by_a.contains(&key_and_n(r).1))
        .count();
    // Per shard of the dead instance, at most the batch in flight and the last unstored
    // checkpoint repeat: two batches of 10 per shard, and it held at most 3 shards.
    assert!(
        repeats <= 60,
        "{repeats} records repeated after the takeover"
    );
    drop(b.take());
}

// `validate --connect` finds each Kinesis stream and names a missing one with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_names_a_missing_stream() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    create_kinesis_stream(&kinesis, "present", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    let mapping = |name: &str, stream: &str| {
        format!(
            "  - name: {name}\n    target: api\n    source:\n      kinesis: {{ stream_name: {stream}, starting_position: latest }}\n"
        )
    };
    std::fs::write(
        &path,
        format!(
            "version: 1\ntargets:\n  api:\n    http: {{ url: \"http://127.0.0.1:1/\" }}\nmappings:\n{}{}",
            mapping("good", "present"),
            mapping("bad", "absent")
        ),
    )
    .unwrap();
    let output = Command::new(sluice_binary())
        .args(["validate", "--connect", "-c"])
        .arg(&path)
        .envs(moto_env(&moto))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mappings[1].source.kinesis (bad)")
            && stderr.contains("the stream does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("(good)"), "{stderr}");
}

/// Puts one KPL aggregate of `users` (`(partition key, data)`); returns its sequence number.
async fn put_aggregate(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    users: &[(String, Value)],
) -> String {
    use sluice_sources::kinesis::kpl::{UserRecord, aggregate};
    let users: Vec<UserRecord> = users
        .iter()
        .map(|(key, data)| UserRecord {
            partition_key: key.clone(),
            explicit_hash_key: None,
            data: data.to_string().into_bytes(),
        })
        .collect();
    client
        .put_record()
        .stream_name(stream)
        .partition_key("aggregate")
        .data(aws_sdk_kinesis::primitives::Blob::new(aggregate(&users)))
        .send()
        .await
        .expect("PutRecord")
        .sequence_number()
        .to_owned()
}

// Issue 21 item 5: KPL aggregates are delivered as their user records (own partition key,
// subSequenceNumber); a partial batch response names one user record; a checkpoint inside an
// aggregate resumes after that user record across a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_arrive_as_user_records_and_resume_inside_an_aggregate() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    create_kinesis_stream(&kinesis, "kpl", 1).await;
    let keys = ["a", "b", "c"];
    let mut aggregates = Vec::new();
    for aggregate in 0..4u64 {
        let users: Vec<(String, Value)> = (0..5)
            .map(|i| {
                let n = aggregate * 5 + i;
                let key = keys[(n % 3) as usize].to_owned();
                (key.clone(), json!({"key": key, "n": n}))
            })
            .collect();
        aggregates.push(put_aggregate(&kinesis, "kpl", &users).await);
    }
    for n in 20..22u64 {
        put_kinesis(&kinesis, "kpl", "a", &json!({"key": "a", "n": n})).await;
    }
    let reported = Arc::new(AtomicBool::new(false));
    let hang = Arc::new(AtomicBool::new(true));
    let (report, hanging) = (reported.clone(), hang.clone());
    let handler = Handler::start(move |_, event| {
        let records = event["Records"].as_array().cloned().unwrap_or_default();
        let ns: Vec<u64> = records
            .iter()
            .map(|r| kinesis_data(r)["n"].as_u64().unwrap())
            .collect();
        if ns.contains(&14) && hanging.load(Ordering::SeqCst) {
            return Reply::json(json!({})).after(Duration::from_secs(120));
        }
        match records.iter().find(|r| kinesis_data(r)["n"] == 5) {
            Some(fifth) if !report.swap(true, Ordering::SeqCst) => {
                let id = format!(
                    "{}:{}",
                    fifth["kinesis"]["sequenceNumber"].as_str().unwrap(),
                    fifth["kinesis"]["subSequenceNumber"]
                );
                Reply::json(json!({"batchItemFailures": [{"itemIdentifier": id}]}))
            }
            _ => Reply::json(json!({"batchItemFailures": []})),
        }
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let text = config(
        &handler.url("/kpl"),
        state.path(),
        "",
        r#"
  - name: kpl
    target: handler
    report_batch_item_failures: true
    source:
      kinesis: { stream_name: kpl, starting_position: trim_horizon, batch_size: 7, deaggregate: true }
    retry:
      backoff: { initial: 10ms, max: 50ms }
"#,
    );
    let first = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(60),
        "the batch holding 14 in flight",
        || async {
            handler
                .received()
                .iter()
                .any(|r| r.records().iter().any(|x| kinesis_data(x)["n"] == 14))
                .then_some(())
        },
    )
    .await;
    // The checkpoint of the batch before is written beside this one's invocation.
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.signal("KILL");
    drop(first);
    let before = handler.received().len();
    let run1: Vec<Value> = handler.records();
    hang.store(false, Ordering::SeqCst);

    // Run 1: user records in order, each with its own key and sub-sequence number.
    let seven = run1.iter().find(|r| kinesis_data(r)["n"] == 7).unwrap();
    assert_eq!(seven["kinesis"]["sequenceNumber"], aggregates[1].as_str());
    assert_eq!(seven["kinesis"]["subSequenceNumber"], 2);
    assert_eq!(seven["kinesis"]["partitionKey"], "b");
    assert_eq!(
        seven["eventID"].as_str().unwrap(),
        format!("shardId-000000000000:{}:2", aggregates[1])
    );
    let ns: Vec<u64> = run1.iter().map(|r| key_and_n(r).1).collect();
    assert_eq!(
        &ns[..9],
        [0, 1, 2, 3, 4, 5, 6, 5, 6],
        "the reported user record 5 and the rest of its batch are retried, 0..4 are not"
    );

    let _second = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(60),
        "every user record handled",
        || async {
            let seen: HashSet<u64> = handler.records().iter().map(|r| key_and_n(r).1).collect();
            (seen.len() == 22).then_some(())
        },
    )
    .await;
    let run2: Vec<u64> = handler.received()[before..]
        .iter()
        .flat_map(Received::records)
        .map(|r| key_and_n(&r).1)
        .collect();
    assert_eq!(
        run2,
        (14..22).collect::<Vec<_>>(),
        "resumed after user record 13 (sub-sequence 3 of the third aggregate), inside it"
    );
}

// `latest` is one time, the mapping's first start, kept with the checkpoints: records written
// before it are never delivered, and records written while sluice is down before its first
// checkpoint are (a LATEST iterator taken again at the restart would skip them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_counts_from_the_first_start_across_a_restart_before_any_checkpoint() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    create_kinesis_stream(&kinesis, "late", 1).await;
    for n in 0..5u64 {
        put_kinesis(&kinesis, "late", "k", &json!({"key": "k", "n": n})).await;
    }
    // Older than the second of margin `latest` keeps before the first start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let state = tempfile::tempdir().unwrap();
    let text = config(
        &handler.url("/late"),
        state.path(),
        "",
        r#"
  - name: late
    target: handler
    source:
      kinesis: { stream_name: late, starting_position: latest }
"#,
    );
    let first = Sluice::start(&text, &moto_env(&moto));
    eventually(Duration::from_secs(60), "the shard read", || async {
        let started = first
            .metric("sluice_stream_events_total{mapping=\"late\",event=\"shard_started\"}")
            .await;
        (started >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal("KILL");
    drop(first);
    for n in 5..8u64 {
        put_kinesis(&kinesis, "late", "k", &json!({"key": "k", "n": n})).await;
    }
    let _second = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(60),
        "the records written while down",
        || async { (handler.records().len() >= 3).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered: Vec<u64> = handler.records().iter().map(|r| key_and_n(r).1).collect();
    assert_eq!(delivered, [5, 6, 7], "nothing from before the first start");
}

/// A Kinesis record's arrival time, in milliseconds since the Unix epoch.
fn arrival_ms(record: &Value) -> u64 {
    let seconds = record["kinesis"]["approximateArrivalTimestamp"]
        .as_f64()
        .expect("an arrival time");
    (seconds * 1000.0).round() as u64
}

fn data_key(record: &Value) -> String {
    kinesis_data(record)["key"]
        .as_str()
        .expect("key")
        .to_owned()
}

// semantics.md §8; issue 21 item 7: a per-key count over 3-second tumbling windows, with the
// instance SIGKILLed mid-window and started again. A filter drops one key in five, so skipped
// records sit between counted ones (their checkpoint moves without the state). The state is
// stored with the checkpoint (here in the DynamoDB lease table), so the restarted instance
// resumes the window with the state of exactly the records up to the checkpoint: every final
// invocation counts each record of its window once, although the batch in flight at the kill is
// delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_count_every_record_once_across_a_sigkill_mid_window() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    create_kinesis_stream(&kinesis, "clicks", 2).await;
    let writer = KeyedWriter::start(&kinesis, "clicks", 5, Duration::from_millis(15));
    let handler = Handler::start(|_, event| {
        Reply::json(count_in_window(event, data_key)).after(Duration::from_millis(40))
    })
    .await;
    let text = config(
        &handler.url("/clicks"),
        tempfile::tempdir().unwrap().path(),
        "checkpoints: { dynamodb: { table: sluice-leases, lease_duration: 3s } }",
        r#"
  - name: clicks
    target: handler
    report_batch_item_failures: true
    filters:
      - data: { key: [k0, k1, k2, k3] }
    source:
      kinesis: { stream_name: clicks, starting_position: trim_horizon, batch_size: 5, tumbling_window: 3s }
"#,
    );
    let first = Sluice::start(&text, &moto_env(&moto));
    // Mid-window: some windows closed already, and batches of the open ones are stored.
    eventually(Duration::from_secs(60), "a window closed", || async {
        let windowed = Windowed::of(&handler.received(), data_key);
        (windowed.finals.len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.signal("KILL");
    let killed_at = Instant::now();
    drop(first);
    let _second = Sluice::start(&text, &moto_env(&moto));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written = writer.stop().await;
    // Records of k4 are filtered out.
    let written = (0..written).filter(|n| n % 5 != 4).count();
    eventually(Duration::from_secs(90), "every window closed", || async {
        let windowed = Windowed::of(&handler.received(), data_key);
        (windowed.records == written && windowed.all_closed()).then_some(())
    })
    .await;
    let received = handler.received();
    Windowed::of(&received, data_key).assert_finals_exact();
    assert_records_in_their_windows(&received, Duration::from_secs(3), arrival_ms);
    // The restart resumed the windows open at the kill with their stored state: the first
    // invocation of such a window after the kill carries a state, not a fresh `{}`.
    let resumed = states_resumed_after(&received, killed_at);
    assert!(!resumed.is_empty(), "no window was open at the kill");
    for (window, state) in &resumed {
        assert_ne!(
            state,
            &json!({}),
            "{window:?} started afresh after the restart"
        );
    }
    let redelivered = received.iter().flat_map(Received::records).count() - written;
    assert!(redelivered <= 20, "{redelivered} records delivered twice");
}
