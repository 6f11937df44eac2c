//! End-to-end: the real `sluice` binary, moto's DynamoDB Streams, and an HTTP handler in the test,
//! checking Lambda's stream semantics (semantics.md §2, §12, §13.2, §13.4, §13.6) as a user sees
//! them. moto has one shard per table and never splits it; shard lineage is covered by the unit
//! tests of `sluice_sources::checkpoint` over scripted listings.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn config(handler_url: &str, state_dir: &std::path::Path, top: &str, mapping: &str) -> String {
    TestConfig::new(handler_url)
        .state_dir(state_dir)
        .top(top)
        .mappings(mapping)
        .render()
}

/// Writes `count` changes over `keys` keys, round by round: put, put, put, put, delete, ... so the
/// stream holds INSERT, MODIFY and REMOVE records. Keys are written in parallel groups; each key's
/// changes stay in order.
async fn write_changes(moto: &Moto, table: &str, count: usize, keys: usize) {
    let client = moto.dynamodb().await;
    let mut writers = tokio::task::JoinSet::new();
    let groups = 8.min(keys);
    for group in 0..groups {
        let client = client.clone();
        let table = table.to_owned();
        writers.spawn(async move {
            for round in 0..count.div_ceil(keys) {
                for key in (group..keys).step_by(groups) {
                    if round * keys + key >= count {
                        continue;
                    }
                    let id = format!("k{key}");
                    if round % 5 == 4 {
                        delete_item(&client, &table, &id).await;
                    } else {
                        put_item(&client, &table, &id, round as u64, &[]).await;
                    }
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
}

/// Every change the table's stream holds, as Lambda's records. Tests count these rather than the
/// puts they made: on a loaded machine a put can fail (its task's panic is not awaited) or be
/// applied twice by an SDK retry after a timed-out response.
async fn stream_records(moto: &Moto, table: &str) -> Vec<Value> {
    use sluice_sources::dynamodb_streams::{DynamoDbStream, IteratorStart};
    let config = sdk_config(&moto.endpoint()).await;
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let stream = DynamoDbStream::resolve(streams, &moto.dynamodb().await, Some(table), None)
        .await
        .expect("the table's stream");
    let mut records = Vec::new();
    for shard in stream.list_shards().await.expect("shards") {
        let mut iterator = stream
            .iterator(&shard.id, &IteratorStart::TrimHorizon)
            .await
            .expect("an iterator");
        loop {
            let page = stream
                .read(&shard.id, &iterator, 1000)
                .await
                .expect("records");
            if page.records.is_empty() {
                break;
            }
            records.extend(
                page.records
                    .iter()
                    .map(|r| serde_json::from_str::<Value>(r.event.get()).expect("a record")),
            );
            match page.next_iterator {
                Some(next) => iterator = next,
                None => break,
            }
        }
    }
    let distinct: HashSet<u128> = records.iter().map(sequence_of).collect();
    assert_eq!(
        distinct.len(),
        records.len(),
        "the stream numbered two records alike (the moto launcher serializes stream writes)"
    );
    records
}

/// Per key, the sequence numbers of `records` in delivery order must increase.
fn assert_in_order_per_key(records: &[Value], what: &str) {
    let mut last: HashMap<String, u128> = HashMap::new();
    for record in records {
        let key = key_of(record);
        let sequence = sequence_of(record);
        if let Some(previous) = last.insert(key.clone(), sequence) {
            assert!(
                previous < sequence,
                "{what}: key {key} went from {previous} back to {sequence}"
            );
        }
    }
}

// semantics.md §2 "in order per shard", §13.2 record shape; issue: SIGKILL halfway loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_changes_arrive_in_order_per_key_and_survive_a_sigkill() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    let stream_arn = create_stream_table(&dynamodb, "orders").await;
    write_changes(&moto, "orders", 2000, 100).await;
    let handler =
        Handler::start(|_, _| Reply::json(json!({})).after(Duration::from_millis(15))).await;
    let state = tempfile::tempdir().unwrap();
    let text = config(
        &handler.url("/changes"),
        state.path(),
        "",
        r#"
  - name: changes
    target: handler
    source:
      dynamodb_stream: { table: orders, starting_position: trim_horizon, batch_size: 50 }
"#,
    );
    let first = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(240),
        "half of the changes handled",
        || async { (handler.records().len() >= 1000).then_some(()) },
    )
    .await;
    first.signal("KILL");
    let killed_at = Instant::now();
    drop(first);
    let before_kill = handler.received().len();

    let second = Sluice::start(&text, &moto_env(&moto));
    let written = stream_records(&moto, "orders").await.len();
    assert!(written >= 1980, "only {written} changes reached the stream");
    let delivered = eventually(Duration::from_secs(240), "every change handled", || async {
        let sequences: HashSet<u128> = handler.records().iter().map(sequence_of).collect();
        (sequences.len() == written).then_some(sequences)
    })
    .await;
    assert_eq!(delivered.len(), written);

    let received = handler.received();
    let run1: Vec<Value> = received[..before_kill]
        .iter()
        .filter(|r| r.at <= killed_at)
        .flat_map(Received::records)
        .collect();
    let run2: Vec<Value> = received[before_kill..]
        .iter()
        .flat_map(Received::records)
        .collect();
    assert_in_order_per_key(&run1, "first run");
    assert_in_order_per_key(&run2, "after the restart");
    let seen_first: HashSet<u128> = run1.iter().map(sequence_of).collect();
    let repeats = run2
        .iter()
        .filter(|r| seen_first.contains(&sequence_of(r)))
        .count();
    assert!(
        repeats <= 50,
        "only the batch in flight at the kill may repeat; {repeats} records did"
    );

    // The event is Lambda's DynamoDB event.
    let names: HashSet<String> = run1
        .iter()
        .chain(&run2)
        .map(|r| r["eventName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        HashSet::from(["INSERT".into(), "MODIFY".into(), "REMOVE".into()])
    );
    let modify = run1
        .iter()
        .find(|r| r["eventName"] == "MODIFY")
        .expect("a MODIFY record");
    assert_eq!(modify["eventSource"], "aws:dynamodb");
    assert_eq!(modify["eventSourceARN"], stream_arn.as_str());
    assert_eq!(modify["awsRegion"], "us-east-1");
    assert!(modify["eventID"].as_str().is_some_and(|id| !id.is_empty()));
    let change = &modify["dynamodb"];
    assert_eq!(change["StreamViewType"], "NEW_AND_OLD_IMAGES");
    assert!(change["Keys"]["id"]["S"].is_string());
    assert!(change["NewImage"]["v"]["N"].is_string());
    assert!(change["OldImage"]["v"]["N"].is_string());
    assert!(change["SizeBytes"].is_u64());
    let created = change["ApproximateCreationDateTime"].as_f64().unwrap();
    assert_eq!(created.fract(), 0.0, "whole seconds, as AWS sends them");
    let insert = run1.iter().find(|r| r["eventName"] == "INSERT").unwrap();
    assert!(insert["dynamodb"].get("OldImage").is_none());
    drop(second);
}

// Hardening issue, item 24 (semantics.md §12, README "What happens to a change"): with several
// lanes the shard's one checkpoint trails the oldest batch in flight, so a SIGKILL repeats every
// lane's in-flight batch and what finished behind the oldest of them — never anything older.
// Checkpoint writes are not awaited, so the batches of the last 600 ms before the kill count as
// possibly in flight too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_lanes_a_sigkill_repeats_only_records_from_the_oldest_batch_in_flight_on() {
    let moto = Moto::start();
    create_stream_table(&moto.dynamodb().await, "lanes").await;
    write_changes(&moto, "lanes", 1000, 50).await;
    let handler =
        Handler::start(|_, _| Reply::json(json!({})).after(Duration::from_millis(30))).await;
    let state = tempfile::tempdir().unwrap();
    let text = config(
        &handler.url("/changes"),
        state.path(),
        "",
        r#"
  - name: lanes
    target: handler
    source:
      dynamodb_stream: { table: lanes, starting_position: trim_horizon, batch_size: 10, parallelization_factor: 2 }
"#,
    );
    let first = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(240),
        "half of the changes handled",
        || async { (handler.records().len() >= 500).then_some(()) },
    )
    .await;
    first.signal("KILL");
    let killed_at = Instant::now();
    drop(first);
    let run1 = handler.received();
    let completed: HashSet<u128> = handler
        .completed()
        .iter()
        .filter_map(|r| r.records().first().map(sequence_of))
        .collect();
    // The oldest record any batch possibly in flight at the kill started with.
    let oldest_in_flight = run1
        .iter()
        .filter(|r| {
            let first = r.records().first().map(sequence_of);
            killed_at.duration_since(r.at) < Duration::from_millis(600)
                || first.is_some_and(|first| !completed.contains(&first))
        })
        .filter_map(|r| r.records().first().map(sequence_of))
        .min()
        .expect("batches were in flight");
    let seen_first: HashSet<u128> = run1
        .iter()
        .flat_map(Received::records)
        .map(|r| sequence_of(&r))
        .collect();

    let _second = Sluice::start(&text, &moto_env(&moto));
    let written = stream_records(&moto, "lanes").await.len();
    eventually(Duration::from_secs(240), "every change handled", || async {
        let sequences: HashSet<u128> = handler.records().iter().map(sequence_of).collect();
        (sequences.len() == written).then_some(())
    })
    .await;
    let run2: Vec<Value> = handler.received()[run1.len()..]
        .iter()
        .flat_map(Received::records)
        .collect();
    assert_in_order_per_key(&run2, "after the restart");
    let repeated: Vec<u128> = run2
        .iter()
        .map(sequence_of)
        .filter(|sequence| seen_first.contains(sequence))
        .collect();
    let too_old: Vec<&u128> = repeated.iter().filter(|s| **s < oldest_in_flight).collect();
    assert!(
        too_old.is_empty(),
        "records older than the oldest batch in flight ({oldest_in_flight}) were repeated: {too_old:?}"
    );
    eprintln!(
        "{} records repeated after the kill, all from sequence {oldest_in_flight} on",
        repeated.len()
    );
}

// semantics.md §12 "Bisect": one poison record costs one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_record_among_a_thousand_is_dead_lettered_alone_with_bisect() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    let sqs = moto.sqs().await;
    create_stream_table(&dynamodb, "items").await;
    let dlq = create_queue(&sqs, "items-dlq", &[]).await;
    for round in 0..10u64 {
        let mut writers = tokio::task::JoinSet::new();
        for key in 0..100 {
            let client = dynamodb.clone();
            writers.spawn(async move {
                let poison = if round == 4 && key == 37 {
                    vec![("poison", "yes")]
                } else {
                    vec![]
                };
                put_item(&client, "items", &format!("k{key}"), round, &poison).await;
            });
        }
        while writers.join_next().await.is_some() {}
    }
    let handler = Handler::start(|_, event| {
        let poisoned = event["Records"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["dynamodb"]["NewImage"]["poison"]["S"] == "yes");
        if poisoned {
            Reply::status(
                500,
                r#"{"errorType":"PoisonError","errorMessage":"cannot handle"}"#,
            )
        } else {
            Reply::json(json!(null))
        }
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &config(
            &handler.url("/items"),
            state.path(),
            "",
            &format!(
                r#"
  - name: items
    target: handler
    source:
      dynamodb_stream: {{ table: items, starting_position: trim_horizon, batch_size: 100 }}
    retry:
      max_retry_attempts: 2
      bisect_on_error: true
      backoff: {{ initial: 10ms, max: 50ms }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    let handled = |handler: &Handler| -> Vec<Value> {
        handler
            .received()
            .iter()
            .filter(|r| {
                !r.records()
                    .iter()
                    .any(|x| x["dynamodb"]["NewImage"]["poison"]["S"] == "yes")
            })
            .flat_map(Received::records)
            .collect()
    };
    let in_stream = stream_records(&moto, "items").await;
    let written = in_stream.len();
    assert!(written >= 990, "only {written} changes reached the stream");
    // A retried put can put the poison in the stream twice; each copy is dead-lettered alone.
    let poisons = in_stream
        .iter()
        .filter(|r| r["dynamodb"]["NewImage"]["poison"]["S"] == "yes")
        .count();
    assert!(poisons >= 1, "the poison change reached the stream");
    eventually(
        Duration::from_secs(240),
        "every change but the poison handled",
        || async {
            let sequences: HashSet<u128> = handled(&handler).iter().map(sequence_of).collect();
            (sequences.len() == written - poisons).then_some(())
        },
    )
    .await;
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while dead.len() < poisons {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the dead letters"
        );
        dead.extend(receive_all(&sqs, &dlq, 60).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sluice.settled("items", Duration::from_secs(1)).await;
    let more = receive_all(&sqs, &dlq, 60).await;
    assert_eq!(
        dead.len() + more.len(),
        poisons,
        "one dead letter per poison"
    );
    let envelope: Value = serde_json::from_str(dead[0].body().unwrap()).unwrap();
    assert_eq!(
        envelope["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    assert!(
        envelope["requestContext"]["approximateInvokeCount"]
            .as_u64()
            .unwrap()
            >= 3
    );
    assert_eq!(envelope["responseContext"]["functionError"], "Unhandled");
    let info = &envelope["DDBStreamBatchInfo"];
    assert_eq!(info["batchSize"], 1);
    assert_eq!(info["startSequenceNumber"], info["endSequenceNumber"]);
    let records = envelope["sluice"]["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["dynamodb"]["NewImage"]["poison"]["S"], "yes");
    assert_eq!(
        info["startSequenceNumber"],
        records[0]["dynamodb"]["SequenceNumber"]
    );
    assert_eq!(envelope["sluice"]["error"]["type"], "PoisonError");

    let handled = handled(&handler);
    assert_in_order_per_key(&handled, "handled records");
    assert_eq!(
        sluice
            .metric(r#"sluice_records_dead_lettered_total{mapping="items",condition="RetryAttemptsExhausted"}"#)
            .await,
        poisons as f64
    );
}

// semantics.md §13.6: with a partial response, records before the reported one are never
// delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_before_a_reported_failure_are_never_delivered_again() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    create_stream_table(&dynamodb, "partial").await;
    for i in 0..30 {
        put_item(&dynamodb, "partial", &format!("r{i}"), 0, &[]).await;
    }
    let reports = Arc::new(AtomicUsize::new(0));
    let counter = reports.clone();
    let handler = Handler::start(move |_, event| {
        let failing = event["Records"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| key_of(r) == "r5");
        match failing {
            Some(record) if counter.fetch_add(1, Ordering::SeqCst) < 2 => Reply::json(json!({
                "batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]
            })),
            _ => Reply::json(json!({"batchItemFailures": []})),
        }
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let _sluice = Sluice::start(
        &config(
            &handler.url("/partial"),
            state.path(),
            "",
            r#"
  - name: partial
    target: handler
    source:
      # A window, so batches are cut at 10 records and not wherever the lane caught up with
      # the reader (with no window the batch holding r5 may reach into r10..r14).
      dynamodb_stream: { table: partial, starting_position: trim_horizon, batch_size: 10, max_batching_window: 1s }
    report_batch_item_failures: true
    retry:
      backoff: { initial: 10ms, max: 50ms }
"#,
        ),
        &moto_env(&moto),
    );
    eventually(
        Duration::from_secs(240),
        "all 30 records handled",
        || async {
            let keys: HashSet<String> = handler.records().iter().map(key_of).collect();
            (keys.len() == 30 && reports.load(Ordering::SeqCst) >= 3).then_some(())
        },
    )
    .await;
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for record in handler.records() {
        *deliveries.entry(key_of(&record)).or_default() += 1;
    }
    for i in 0..5 {
        assert_eq!(
            deliveries[&format!("r{i}")],
            1,
            "r{i} came before the failure"
        );
    }
    assert_eq!(deliveries["r5"], 3, "reported twice, then handled");
    let with_r5: Vec<Vec<String>> = handler
        .received()
        .iter()
        .map(|r| r.records().iter().map(key_of).collect())
        .filter(|keys: &Vec<String>| keys.contains(&"r5".to_owned()))
        .collect();
    assert_eq!(with_r5.len(), 3, "{with_r5:?}");
    // Wherever the batch holding r5 was cut, its retries are exactly its rest from r5 on
    // (semantics.md §13.6): nothing before r5 and nothing from another batch comes again.
    let at = with_r5[0].iter().position(|k| k == "r5").unwrap();
    let rest = with_r5[0][at..].to_vec();
    assert_eq!(
        with_r5[1], rest,
        "the retry is the rest of r5's batch, from r5"
    );
    assert_eq!(with_r5[2], rest, "and nothing else is pulled in");
    for i in 0..30 {
        let key = format!("r{i}");
        let want = if rest.contains(&key) { 3 } else { 1 };
        assert_eq!(deliveries[&key], want, "{key}; calls: {with_r5:?}");
    }
}

// semantics.md §13.6 "Record age": stale records go to the destination without an invocation;
// §13.4: no responseContext, S3 objects carry the event as `payload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_max_record_age_reach_s3_without_an_invocation() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    let s3 = moto.s3().await;
    s3.create_bucket().bucket("failures").send().await.unwrap();
    let stream_arn = create_stream_table(&dynamodb, "aged").await;
    moto.shift_stream_clock(-120).await;
    for i in 0..3 {
        put_item(&dynamodb, "aged", &format!("old{i}"), 0, &[]).await;
    }
    moto.shift_stream_clock(0).await;
    for i in 0..2 {
        put_item(&dynamodb, "aged", &format!("new{i}"), 0, &[]).await;
    }
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let state = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &config(
            &handler.url("/aged"),
            state.path(),
            "",
            r#"
  - name: aged
    target: handler
    source:
      dynamodb_stream: { table: aged, starting_position: trim_horizon, batch_size: 10 }
    retry: { max_record_age: 60s }
    on_failure:
      s3: { bucket: failures, prefix: dead/ }
"#,
        ),
        &moto_env(&moto),
    );
    eventually(
        Duration::from_secs(120),
        "the dead letter in S3",
        || async {
            let objects = s3_objects(&s3, "failures").await;
            (!objects.is_empty()).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "the fresh records handled",
        || async { (handler.records().len() >= 2).then_some(()) },
    )
    .await;
    sluice.settled("aged", Duration::from_secs(1)).await;
    let handled: Vec<String> = handler.records().iter().map(key_of).collect();
    assert_eq!(handled, vec!["new0", "new1"]);
    // Read again once settled: exactly one dead letter, not one more late.
    let objects = s3_objects(&s3, "failures").await;
    assert_eq!(objects.len(), 1);
    let (key, envelope) = &objects[0];
    assert!(
        key.starts_with("dead/aws/lambda/aged/shardId-"),
        "Lambda's key layout under the prefix: {key}"
    );
    assert_eq!(envelope["requestContext"]["condition"], "RecordAgeExceeded");
    assert_eq!(envelope["requestContext"]["approximateInvokeCount"], 1);
    assert!(envelope.get("responseContext").is_none());
    assert_eq!(envelope["DDBStreamBatchInfo"]["batchSize"], 3);
    assert_eq!(
        envelope["DDBStreamBatchInfo"]["streamArn"],
        stream_arn.as_str()
    );
    let payload: Vec<String> = envelope["payload"]["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(key_of)
        .collect();
    assert_eq!(payload, vec!["old0", "old1", "old2"]);
    assert_eq!(envelope["sluice"]["records"].as_array().unwrap().len(), 3);
}

// architecture.md "Running on more than one machine": leases in a DynamoDB table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_over_the_shard_within_two_lease_durations_of_a_sigkill() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    create_stream_table(&dynamodb, "shared").await;
    write_changes(&moto, "shared", 200, 20).await;
    let handler =
        Handler::start(|_, _| Reply::json(json!({})).after(Duration::from_millis(40))).await;
    let mapping = r#"
  - name: shared
    target: handler
    source:
      dynamodb_stream: { table: shared, starting_position: trim_horizon, batch_size: 10 }
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
    let owner = eventually(
        Duration::from_secs(120),
        "one instance handling",
        || async {
            let received = handler.received();
            let count = |path: &str| received.iter().filter(|r| r.path == path).count();
            match (count("/a"), count("/b")) {
                (x, y) if x > 0 && y > 0 => {
                    panic!("both instances handled the shard at once: /a {x}, /b {y}")
                }
                (n, 0) if n >= 5 => Some("/a"),
                (0, n) if n >= 5 => Some("/b"),
                _ => None,
            }
        },
    )
    .await;
    let (dead, survivor_path) = if owner == "/a" {
        (a.take().unwrap(), "/b")
    } else {
        (b.take().unwrap(), "/a")
    };
    dead.signal("KILL");
    let killed_at = Instant::now();
    drop(dead);
    write_changes(&moto, "shared", 100, 20).await;
    let written = stream_records(&moto, "shared").await.len();
    assert!(written >= 297, "only {written} changes reached the stream");
    let took_over_at = eventually(
        Duration::from_secs(120),
        "the survivor taking over",
        || async {
            handler
                .received()
                .iter()
                .find(|r| r.path == survivor_path)
                .map(|r| r.at)
        },
    )
    .await;
    let takeover = took_over_at.duration_since(killed_at);
    eprintln!("takeover after {takeover:?} with a 3s lease");
    assert!(
        takeover <= Duration::from_secs(6),
        "took {takeover:?}; the lease is 3s"
    );
    eventually(Duration::from_secs(240), "every change handled", || async {
        let sequences: HashSet<u128> = handler.records().iter().map(sequence_of).collect();
        (sequences.len() == written).then_some(())
    })
    .await;
    let received = handler.received();
    assert!(
        received
            .iter()
            .filter(|r| r.path == owner)
            .all(|r| r.at <= killed_at),
        "the killed instance handled nothing after its death"
    );
    let by_owner: HashSet<u128> = received
        .iter()
        .filter(|r| r.path == owner)
        .flat_map(Received::records)
        .map(|r| sequence_of(&r))
        .collect();
    let survivor: Vec<Value> = received
        .iter()
        .filter(|r| r.path == survivor_path)
        .flat_map(Received::records)
        .collect();
    assert_in_order_per_key(&survivor, "the survivor");
    let repeats = survivor
        .iter()
        .filter(|r| by_owner.contains(&sequence_of(r)))
        .count();
    // The checkpoint of a batch is written beside the next batch's invocation, so a SIGKILL can
    // lose at most the last stored checkpoint write and the batch in flight: two batches of 10.
    assert!(
        repeats <= 20,
        "the survivor continued from the checkpoint; {repeats} records repeated"
    );
}

// architecture.md "CLI": `validate --connect` also finds the stream of every stream mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_names_a_table_without_a_stream() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    create_stream_table(&dynamodb, "streamed").await;
    dynamodb
        .create_table()
        .table_name("plain")
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    let mapping = |name: &str, table: &str| {
        format!(
            "  - name: {name}\n    target: api\n    source:\n      dynamodb_stream: {{ table: {table}, starting_position: latest }}\n"
        )
    };
    std::fs::write(
        &path,
        format!(
            "version: 1\ntargets:\n  api:\n    http: {{ url: \"http://127.0.0.1:1/\" }}\nmappings:\n{}{}",
            mapping("good", "streamed"),
            mapping("bad", "plain")
        ),
    )
    .unwrap();
    let output = std::process::Command::new(sluice_binary())
        .args(["validate", "--connect", "-c"])
        .arg(&path)
        .envs(moto_env(&moto))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mappings[1].source.dynamodb_stream (bad)")
            && stderr.contains("the table has no stream"),
        "{stderr}"
    );
    assert!(!stderr.contains("(good)"), "{stderr}");
}

// Prompt stops: a shard waiting out a long retry delay does not hold up SIGTERM; the batch is
// not checkpointed, so it is delivered again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_retry_delay_exits_promptly_and_redelivers_after_restart() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    create_stream_table(&dynamodb, "stubborn").await;
    put_item(&dynamodb, "stubborn", "k1", 0, &[]).await;
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail = failing.clone();
    let handler = Handler::start(move |_, _| {
        if fail.load(Ordering::SeqCst) {
            Reply::status(500, "down")
        } else {
            Reply::json(json!({}))
        }
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let text = config(
        &handler.url("/stubborn"),
        state.path(),
        "",
        r#"
  - name: stubborn
    target: handler
    source:
      dynamodb_stream: { table: stubborn, starting_position: trim_horizon }
    retry:
      backoff: { initial: 60s, max: 60s, jitter: false }
"#,
    );
    let mut first = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(120),
        "the first failed attempt",
        || async { (handler.completed().len() == 1).then_some(()) },
    )
    .await;
    let stopping = Instant::now();
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .expect("sluice exits during the retry delay");
    assert!(status.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "took {:?}",
        stopping.elapsed()
    );
    failing.store(false, Ordering::SeqCst);
    let _second = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(120),
        "the record delivered again",
        || async { (handler.completed().len() == 2).then_some(()) },
    )
    .await;
    assert_eq!(key_of(&handler.records()[1]), "k1");
}

// semantics.md §8; issue 21 item 7: tumbling windows on DynamoDB Streams, a per-key count over
// 2-second windows (by each change's ApproximateCreationDateTime, whole seconds), with the
// instance SIGKILLed mid-window and started again on the same state_dir: the window's state is
// stored with the checkpoint in the state file, so every final invocation counts each change of
// its window once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_count_every_change_once_across_a_sigkill_mid_window() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    create_stream_table(&dynamodb, "carts").await;
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (dynamodb, writing) = (dynamodb.clone(), writing.clone());
        tokio::spawn(async move {
            let mut version = 0u64;
            while writing.load(Ordering::SeqCst) {
                put_item(
                    &dynamodb,
                    "carts",
                    &format!("k{}", version % 4),
                    version,
                    &[],
                )
                .await;
                version += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let handler = Handler::start(|_, event| {
        Reply::json(count_in_window(event, key_of)).after(Duration::from_millis(40))
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let text = config(
        &handler.url("/carts"),
        state.path(),
        "",
        r#"
  - name: carts
    target: handler
    source:
      dynamodb_stream: { table: carts, starting_position: trim_horizon, batch_size: 5, tumbling_window: 2s }
"#,
    );
    let first = Sluice::start(&text, &moto_env(&moto));
    eventually(Duration::from_secs(60), "a window closed", || async {
        let windowed = Windowed::of(&handler.received(), key_of);
        (!windowed.finals.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    first.signal("KILL");
    let killed_at = Instant::now();
    drop(first);
    let _second = Sluice::start(&text, &moto_env(&moto));
    tokio::time::sleep(Duration::from_secs(2)).await;
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    let written = stream_records(&moto, "carts").await.len();
    eventually(Duration::from_secs(90), "every window closed", || async {
        let windowed = Windowed::of(&handler.received(), key_of);
        (windowed.records == written && windowed.all_closed()).then_some(())
    })
    .await;
    let received = handler.received();
    Windowed::of(&received, key_of).assert_finals_exact();
    assert_records_in_their_windows(&received, Duration::from_secs(2), |record| {
        let seconds = record["dynamodb"]["ApproximateCreationDateTime"]
            .as_f64()
            .expect("a creation time");
        (seconds * 1000.0) as u64
    });
    let resumed = states_resumed_after(&received, killed_at);
    assert!(!resumed.is_empty(), "no window was open at the kill");
    for (window, state) in &resumed {
        assert_ne!(
            state,
            &json!({}),
            "{window:?} started afresh after the restart"
        );
    }
}
