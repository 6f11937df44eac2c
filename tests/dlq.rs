//! End-to-end: `sluice dlq peek` and `sluice dlq replay` (issue 8, architecture.md "CLI" and
//! "Dead-letter envelope") against moto and the Kafka mock cluster. Each test first lets the real
//! daemon dead-letter records with a failing handler, then heals the handler and works on what the
//! daemon left, as a user would.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// A handler that fails every invocation until `heal` is called.
struct Flaky {
    handler: Handler,
    healthy: Arc<AtomicBool>,
}

impl Flaky {
    async fn start() -> Self {
        let healthy = Arc::new(AtomicBool::new(false));
        let state = healthy.clone();
        let handler = Handler::start(move |_, _| {
            if state.load(Ordering::SeqCst) {
                Reply::json(json!(null))
            } else {
                Reply::status(
                    500,
                    r#"{"errorType":"DownstreamDown","errorMessage":"the database is down"}"#,
                )
            }
        })
        .await;
        Self { handler, healthy }
    }

    fn heal(&self) {
        self.healthy.store(true, Ordering::SeqCst);
    }

    /// Records handled successfully since `heal`.
    fn handled_after(&self, healed_at: Instant) -> Vec<Value> {
        self.handler
            .received()
            .iter()
            .filter(|r| r.at >= healed_at)
            .flat_map(|r| {
                let event = &r.event;
                match event["records"].as_object() {
                    Some(_) => kafka_records(event),
                    None => r.records(),
                }
            })
            .collect()
    }
}

fn config(handler_url: &str, top: &str, mapping: &str) -> String {
    TestConfig::new(handler_url)
        .shutdown_timeout("5s")
        .top(top)
        .mappings(mapping)
        .render()
}

/// The config the daemon ran with, for the dlq commands.
fn config_path(sluice: &Sluice) -> std::path::PathBuf {
    sluice.dir.path().join("sluice.yaml")
}

/// Stops the daemon (SIGTERM, drained) so only the dlq command touches what it left.
fn stop(mut sluice: Sluice) -> tempfile::TempDir {
    sluice.signal("TERM");
    assert!(
        sluice.wait_exit(Duration::from_secs(30)).is_some(),
        "sluice did not stop"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(config_path(&sluice), dir.path().join("sluice.yaml")).unwrap();
    dir
}

fn dlq_command(dir: &tempfile::TempDir, args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new(sluice_binary());
    command
        .arg("dlq")
        .arg(args[0])
        .arg("-c")
        .arg(dir.path().join("sluice.yaml"))
        .args(&args[1..])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    command
}

/// Runs `sluice dlq <args>` and returns its output (asserting nothing).
fn dlq(dir: &tempfile::TempDir, args: &[&str], env: &[(String, String)]) -> Output {
    dlq_command(dir, args, env)
        .output()
        .expect("running sluice dlq")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `peek --json`'s entries.
fn peek_json(dir: &tempfile::TempDir, mapping: &str, env: &[(String, String)]) -> Vec<Value> {
    let output = dlq(dir, &["peek", "--mapping", mapping, "--json"], env);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap_or_else(|e| panic!("peek --json printed no JSON ({e}): {}", text(&output)))
        .as_array()
        .cloned()
        .unwrap()
}

/// The dead letters of every kind of source, replayed the same way: peek shows all 20 without
/// consuming, `--dry-run` changes nothing, `--keep` replays and leaves them, a plain replay
/// handles all 20 and empties the store, and a second peek finds nothing.
async fn peek_dry_run_keep_replay(
    flaky: &Flaky,
    dir: &tempfile::TempDir,
    mapping: &str,
    env: &[(String, String)],
    ids: impl Fn(&Value) -> String,
) {
    let entries = peek_json(dir, mapping, env);
    assert_eq!(entries.len(), 20, "peek shows every dead letter");
    let mut expected: Vec<String> = entries
        .iter()
        .flat_map(|e| e["records"].as_array().cloned().unwrap())
        .map(|r| ids(&r))
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 20);
    for entry in &entries {
        assert_eq!(entry["error"]["type"], "DownstreamDown", "{entry}");
        assert_eq!(entry["replay_count"], 0);
    }
    // The table a person reads names the condition and the error.
    let table = dlq(dir, &["peek", "--mapping", mapping], env);
    let table_text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.status.success(), "{}", text(&table));
    assert!(table_text.contains("20 entries"), "{table_text}");
    assert!(table_text.contains("DownstreamDown"), "{table_text}");
    assert_eq!(
        peek_json(dir, mapping, env).len(),
        20,
        "peek consumed nothing"
    );

    flaky.heal();
    let healed_at = Instant::now();
    let dry = dlq(dir, &["replay", "--mapping", mapping, "--dry-run"], env);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would be replayed"),
        "{}",
        text(&dry)
    );
    assert!(
        flaky.handled_after(healed_at).is_empty(),
        "a dry run invoked the target"
    );
    assert_eq!(
        peek_json(dir, mapping, env).len(),
        20,
        "a dry run changed nothing"
    );

    let keep = dlq(dir, &["replay", "--mapping", mapping, "--keep"], env);
    assert!(keep.status.success(), "{}", text(&keep));
    assert_eq!(flaky.handled_after(healed_at).len(), 20);
    assert_eq!(
        peek_json(dir, mapping, env).len(),
        20,
        "--keep left the entries"
    );

    let replayed_at = Instant::now();
    let replay = dlq(dir, &["replay", "--mapping", mapping], env);
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains("20 succeeded, 0 failed"),
        "{}",
        text(&replay)
    );
    let mut handled: Vec<String> = flaky.handled_after(replayed_at).iter().map(&ids).collect();
    handled.sort();
    assert_eq!(handled, expected, "every dead-lettered record handled once");
    assert!(
        peek_json(dir, mapping, env).is_empty(),
        "the replay emptied the store"
    );
}

// Issue 8; semantics.md §12 "SQS dead-lettering" and "On-failure records": an SQS source's
// envelopes (max_receive_count) carry the full records, so they replay from their queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_dead_letters_are_peeked_and_replayed_from_their_queue() {
    let moto = Moto::start();
    let flaky = Flaky::start().await;
    let (dir, dead) = twenty_sqs_dead_letters(&moto, &flaky).await;
    peek_dry_run_keep_replay(&flaky, &dir, "jobs", &moto_env(&moto), |r| {
        r["body"].as_str().unwrap().to_owned()
    })
    .await;
    assert_eq!(queue_depth(&moto.sqs().await, &dead).await, 0);
}

// Issue 8; semantics.md §2 on-failure and §13.4: a stream's envelopes in S3 (with the event as
// `payload`) hold the records themselves, so they replay after the stream's retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_dead_letters_in_s3_are_peeked_and_replayed() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    let s3 = moto.s3().await;
    s3.create_bucket().bucket("dead").send().await.unwrap();
    create_stream_table(&dynamodb, "items").await;
    for key in 0..20 {
        put_item(&dynamodb, "items", &format!("k{key}"), 1, &[]).await;
    }
    let flaky = Flaky::start().await;
    let state = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            &format!("state_dir: {}", state.path().display()),
            r#"
  - name: items
    target: handler
    source:
      dynamodb_stream: { table: items, starting_position: trim_horizon, batch_size: 1 }
    retry: { max_retry_attempts: 0 }
    on_failure:
      s3: { bucket: dead }
"#,
        ),
        &moto_env(&moto),
    );
    eventually(WAIT, "20 dead letters", || async {
        (s3_objects(&s3, "dead").await.len() >= 20).then_some(())
    })
    .await;
    let dir = stop(sluice);
    peek_dry_run_keep_replay(&flaky, &dir, "items", &moto_env(&moto), |r| {
        r["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned()
    })
    .await;
    assert!(s3_objects(&s3, "dead").await.is_empty());
}

// Issue 8; semantics.md §5: S3 events whose asynchronous retries ran out, replayed from SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_event_dead_letters_are_peeked_and_replayed() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "uploads", &[]).await;
    let dead = create_queue(&sqs, "uploads-dead", &[]).await;
    let s3 = notifying_bucket(&moto, "uploads", &queue).await;
    let flaky = Flaky::start().await;
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: uploads
    target: handler
    source:
      s3: {{ queue_url: "{queue}" }}
    retry: {{ max_retry_attempts: 0 }}
    on_failure:
      sqs: {{ queue_url: "{dead}" }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    for i in 0..20 {
        s3.put_object()
            .bucket("uploads")
            .key(format!("in/{i}.csv"))
            .body(b"a,b\n".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    eventually(WAIT, "20 dead letters", || async {
        (queue_depth(&sqs, &dead).await == 20).then_some(())
    })
    .await;
    let dir = stop(sluice);
    peek_dry_run_keep_replay(&flaky, &dir, "uploads", &moto_env(&moto), |r| {
        r["s3"]["object"]["key"].as_str().unwrap().to_owned()
    })
    .await;
}

// Issue 8; semantics.md §4: a Kafka failure topic holds one message per record; replay commits
// the dead-letter group's offsets only for what it finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_failure_topic_dead_letters_are_peeked_and_replayed() {
    let kafka = Kafka::start();
    let topic = Kafka::unique("clicks");
    let failures = Kafka::unique("clicks-failures");
    kafka.create_topic(&topic, 2);
    kafka.create_topic(&failures, 2);
    let group = Kafka::unique("sluice");
    let messages: Vec<(i32, Option<&str>, String)> = (0..20)
        .map(|i| (i % 2, Some("user-7"), json!({ "n": i }).to_string()))
        .collect();
    kafka.produce(&topic, &messages);
    let flaky = Flaky::start().await;
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: clicks
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: trim_horizon
        batch_size: 5
    retry: {{ max_retry_attempts: 0, backoff: {{ initial: 10ms, max: 50ms }} }}
    on_failure:
      kafka: {{ topic: {failures} }}
"#,
                bootstrap = kafka.bootstrap()
            ),
        ),
        &[],
    );
    eventually(WAIT, "20 messages on the failure topic", || async {
        (kafka.end_offsets(&failures, 2).iter().sum::<i64>() >= 20).then_some(())
    })
    .await;
    let dir = stop(sluice);
    peek_dry_run_keep_replay(&flaky, &dir, "clicks", &[], |r| {
        format!("{}@{}", r["partition"], r["offset"])
    })
    .await;
    // An empty partition has nothing to commit (-1).
    let committed: Vec<i64> = kafka
        .committed(&format!("{group}-dlq"), &failures, 2)
        .into_iter()
        .map(|offset| offset.max(0))
        .collect();
    assert_eq!(
        committed,
        kafka.end_offsets(&failures, 2),
        "the dead-letter group committed everything it replayed"
    );
}

/// A source queue whose 20 messages the daemon dead-letters into `dead` (one envelope each).
async fn twenty_sqs_dead_letters(moto: &Moto, flaky: &Flaky) -> (tempfile::TempDir, String) {
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "jobs", &[]).await;
    let dead = create_queue(&sqs, "jobs-dead", &[]).await;
    let bodies: Vec<String> = (0..20).map(|i| format!("job-{i}")).collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: jobs
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 10 }}
    retry: {{ max_receive_count: 1 }}
    on_failure:
      sqs: {{ queue_url: "{dead}" }}
"#
            ),
        ),
        &moto_env(moto),
    );
    eventually(WAIT, "20 dead letters", || async {
        (queue_depth(&sqs, &dead).await == 20).then_some(())
    })
    .await;
    (stop(sluice), dead)
}

// Issue 8: `--rate 4/s`: the handler never sees more than 4 records in any second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_never_exceeds_its_rate_in_any_second() {
    let moto = Moto::start();
    let flaky = Flaky::start().await;
    let (dir, dead) = twenty_sqs_dead_letters(&moto, &flaky).await;
    flaky.heal();
    let healed_at = Instant::now();
    let output = dlq(
        &dir,
        &["replay", "--mapping", "jobs", "--rate", "4/s"],
        &moto_env(&moto),
    );
    assert!(output.status.success(), "{}", text(&output));
    let arrivals: Vec<(Instant, usize)> = flaky
        .handler
        .received()
        .iter()
        .filter(|r| r.at >= healed_at)
        .map(|r| (r.at, r.records().len()))
        .collect();
    assert_eq!(arrivals.iter().map(|(_, n)| n).sum::<usize>(), 20);
    for (start, _) in &arrivals {
        let in_second: usize = arrivals
            .iter()
            .filter(|(at, _)| *at >= *start && at.duration_since(*start) < Duration::from_secs(1))
            .map(|(_, n)| n)
            .sum();
        assert!(in_second <= 4, "{in_second} records within one second");
    }
    let span = arrivals.last().unwrap().0.duration_since(arrivals[0].0);
    assert!(
        span >= Duration::from_secs(4),
        "20 records at 4/s took {span:?}"
    );
    assert_eq!(queue_depth(&moto.sqs().await, &dead).await, 0);
}

// Issue 8: SIGINT in the middle of a replay loses nothing: what was replayed is gone, the rest
// is back in the queue at once (not held until the visibility timeout), and the exit is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_replay_leaves_every_entry_not_yet_replayed() {
    let moto = Moto::start();
    let flaky = Flaky::start().await;
    let (dir, dead) = twenty_sqs_dead_letters(&moto, &flaky).await;
    flaky.heal();
    let healed_at = Instant::now();
    let env = moto_env(&moto);
    let child = dlq_command(
        &dir,
        &["replay", "--mapping", "jobs", "--rate", "2/s"],
        &env,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    eventually(WAIT, "a few records replayed", || async {
        (flaky.handled_after(healed_at).len() >= 3).then_some(())
    })
    .await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("interrupted"),
        "{}",
        text(&output)
    );
    let handled: std::collections::HashSet<String> = flaky
        .handled_after(healed_at)
        .iter()
        .map(|r| r["body"].as_str().unwrap().to_owned())
        .collect();
    assert!(handled.len() < 20, "the replay was not interrupted");
    let sqs = moto.sqs().await;
    assert_eq!(
        queue_depth(&sqs, &dead).await as usize,
        20 - handled.len(),
        "every entry not replayed is visible again, and only those"
    );
    let left: std::collections::HashSet<String> = peek_json(&dir, "jobs", &env)
        .iter()
        .flat_map(|e| e["records"].as_array().cloned().unwrap())
        .map(|r| r["body"].as_str().unwrap().to_owned())
        .collect();
    assert!(left.is_disjoint(&handled));
    assert_eq!(left.len() + handled.len(), 20);
}

// Issue 8: what fails again stays, with its replay count raised and the new error; a filter
// replays only matching records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_fail_again_stay_with_their_replay_count_raised() {
    let moto = Moto::start();
    let flaky = Flaky::start().await;
    let (dir, _dead) = twenty_sqs_dead_letters(&moto, &flaky).await;
    let env = moto_env(&moto);
    // Still failing: every entry stays, counted once more.
    let output = dlq(&dir, &["replay", "--mapping", "jobs"], &env);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0 succeeded, 20 failed"),
        "{}",
        text(&output)
    );
    let entries = peek_json(&dir, "jobs", &env);
    assert_eq!(entries.len(), 20);
    assert!(
        entries.iter().all(|e| e["replay_count"] == 1),
        "{entries:?}"
    );
    // Healed, but only job-3 and job-4 are chosen.
    flaky.heal();
    let healed_at = Instant::now();
    let output = dlq(
        &dir,
        &[
            "replay",
            "--mapping",
            "jobs",
            "--filter",
            r#"{"body": ["job-3", "job-4"]}"#,
        ],
        &env,
    );
    assert!(output.status.success(), "{}", text(&output));
    let mut handled: Vec<String> = flaky
        .handled_after(healed_at)
        .iter()
        .map(|r| r["body"].as_str().unwrap().to_owned())
        .collect();
    handled.sort();
    assert_eq!(handled, ["job-3", "job-4"]);
    assert_eq!(peek_json(&dir, "jobs", &env).len(), 18);
    // --limit stops after that many entries; the rest stay.
    let limited_at = Instant::now();
    let output = dlq(&dir, &["replay", "--mapping", "jobs", "--limit", "5"], &env);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(flaky.handled_after(limited_at).len(), 5);
    assert_eq!(peek_json(&dir, "jobs", &env).len(), 13);
}

// Issue 8: mistakes are refused before anything is read, with what to do (exit 2); a mapping
// with nowhere to look says so (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_is_refused_with_a_reason() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.yaml"),
        config(
            "http://127.0.0.1:9/",
            &format!("state_dir: {}", dir.path().display()),
            r#"
  - name: items
    target: handler
    source:
      dynamodb_stream: { table: items, starting_position: trim_horizon }
"#,
        )
        .replace("{admin}", "127.0.0.1:0"),
    )
    .unwrap();
    let env = moto_env(&moto);
    let unknown = dlq(&dir, &["peek", "--mapping", "nope"], &env);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("the config has: items"),
        "{}",
        text(&unknown)
    );
    let to_source = dlq(&dir, &["replay", "--mapping", "items", "--to-source"], &env);
    assert_eq!(to_source.status.code(), Some(2), "{}", text(&to_source));
    assert!(
        text(&to_source).contains("DynamoDB stream"),
        "{}",
        text(&to_source)
    );
    let filter = dlq(
        &dir,
        &["replay", "--mapping", "items", "--filter", "{nope"],
        &env,
    );
    assert_eq!(filter.status.code(), Some(2), "{}", text(&filter));
    assert!(text(&filter).contains("not JSON"), "{}", text(&filter));
    let rate = dlq(
        &dir,
        &["replay", "--mapping", "items", "--rate", "fast"],
        &env,
    );
    assert_eq!(rate.status.code(), Some(2), "{}", text(&rate));
    let nowhere = dlq(&dir, &["peek", "--mapping", "items"], &env);
    assert_eq!(nowhere.status.code(), Some(1), "{}", text(&nowhere));
    assert!(
        text(&nowhere).contains("has no on_failure destination"),
        "{}",
        text(&nowhere)
    );
}

// Issue 8: `--to-source` for Kafka writes each record back to its topic and partition with its
// key, value and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dead_letters_go_back_to_their_partition_with_key_value_and_headers() {
    let kafka = Kafka::start();
    let topic = Kafka::unique("events");
    let failures = Kafka::unique("events-failures");
    kafka.create_topic(&topic, 3);
    kafka.create_topic(&failures, 1);
    let group = Kafka::unique("sluice");
    let messages: Vec<(i32, Option<&str>, String)> = (0..6)
        .map(|i| (i % 3, Some("k"), format!("value-{i}")))
        .collect();
    kafka.produce_with_headers(&topic, &messages, &[("origin", b"web")]);
    let flaky = Flaky::start().await;
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: events
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: trim_horizon
    retry: {{ max_retry_attempts: 0 }}
    on_failure:
      kafka: {{ topic: {failures} }}
"#,
                bootstrap = kafka.bootstrap()
            ),
        ),
        &[],
    );
    eventually(WAIT, "6 messages on the failure topic", || async {
        (kafka.end_offsets(&failures, 1)[0] >= 6).then_some(())
    })
    .await;
    let dir = stop(sluice);
    let before = kafka.end_offsets(&topic, 3);
    let invoked_before = flaky.handler.received().len();
    let output = dlq(&dir, &["replay", "--mapping", "events", "--to-source"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        flaky.handler.received().len(),
        invoked_before,
        "--to-source invoked the target"
    );
    let after = kafka.end_offsets(&topic, 3);
    assert_eq!(
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        [2, 2, 2],
        "each record went back to its own partition"
    );
    let again: Vec<KafkaMessage> = kafka
        .read_all(&topic, 3)
        .into_iter()
        .filter(|m| m.offset >= before[m.partition as usize])
        .collect();
    assert_eq!(again.len(), 6);
    for message in &again {
        assert_eq!(message.key.as_deref(), Some(&b"k"[..]));
        assert!(message.value.starts_with(b"value-"));
        assert_eq!(message.headers, [("origin".to_owned(), b"web".to_vec())]);
    }
    assert!(peek_json(&dir, "events", &[]).is_empty());
}

// Issue 8: a 1 MB record dead-lettered to SQS goes through the S3 spill (the queue holds a
// pointer) and replays byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_record_spills_to_s3_and_replays_byte_identical() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let s3 = moto.s3().await;
    s3.create_bucket().bucket("spill").send().await.unwrap();
    // A queue of SQS's old 256 KiB limit (new queues take 1 MiB).
    let dead = create_queue(&sqs, "big-dead", &[("MaximumMessageSize", "262144")]).await;
    let kafka = Kafka::start();
    let topic = Kafka::unique("big");
    kafka.create_topic(&topic, 1);
    // 750,000 bytes of text: base64 in the record makes it 1 MB.
    let value: String = (0..750_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    kafka.produce(&topic, &[(0, Some("big-key"), value.clone())]);
    let flaky = Flaky::start().await;
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: big
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: trim_horizon
    retry: {{ max_retry_attempts: 0 }}
    on_failure:
      sqs: {{ queue_url: "{dead}", spill_bucket: spill }}
"#,
                bootstrap = kafka.bootstrap(),
                group = Kafka::unique("sluice"),
            ),
        ),
        &moto_env(&moto),
    );
    eventually(WAIT, "the dead letter", || async {
        (queue_depth(&sqs, &dead).await == 1).then_some(())
    })
    .await;
    let dir = stop(sluice);
    let spilled = s3_objects(&s3, "spill").await;
    assert_eq!(spilled.len(), 1, "the envelope went to the spill bucket");
    assert!(spilled[0].0.starts_with("sluice-spill/big/"));
    let env = moto_env(&moto);
    let entries = peek_json(&dir, "big", &env);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["records"][0]["key"], "YmlnLWtleQ==");

    flaky.heal();
    let healed_at = Instant::now();
    let output = dlq(&dir, &["replay", "--mapping", "big"], &env);
    assert!(output.status.success(), "{}", text(&output));
    let handled = flaky.handled_after(healed_at);
    assert_eq!(handled.len(), 1);
    use base64::Engine;
    let replayed = base64::engine::general_purpose::STANDARD
        .decode(handled[0]["value"].as_str().unwrap())
        .unwrap();
    assert!(replayed == value.as_bytes(), "the replayed value differs");
    assert_eq!(queue_depth(&sqs, &dead).await, 0);
    assert!(
        s3_objects(&s3, "spill").await.is_empty(),
        "the spilled object was removed"
    );
}

// Issue 8; semantics.md §3 "Redrive": SQS moves the original message itself to the DLQ; those raw
// messages are read too, and `--to-source` sends them back with their attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_queue_messages_go_back_to_the_source_with_their_attributes() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let dead = create_queue(&sqs, "raw-dead", &[]).await;
    let dead_arn = sqs
        .get_queue_attributes()
        .queue_url(&dead)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    // moto moves a message when a receive brings its count to maxReceiveCount (AWS: beyond it),
    // so 2 here means one failed delivery before the move, as AWS does with 1.
    let redrive = json!({ "deadLetterTargetArn": dead_arn, "maxReceiveCount": 2 }).to_string();
    let queue = create_queue(
        &sqs,
        "raw",
        &[
            ("RedrivePolicy", redrive.as_str()),
            ("VisibilityTimeout", "1"),
        ],
    )
    .await;
    for i in 0..3 {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(format!("raw-{i}"))
            .message_attributes(
                "tenant",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("acme")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let flaky = Flaky::start().await;
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: raw
    target: handler
    source:
      sqs: {{ queue_url: "{queue}" }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    eventually(WAIT, "the redrive policy moving 3 messages", || async {
        (queue_depth(&sqs, &dead).await == 3).then_some(())
    })
    .await;
    let dir = stop(sluice);
    let env = moto_env(&moto);
    let entries = peek_json(&dir, "raw", &env);
    assert_eq!(entries.len(), 3);
    assert!(
        entries
            .iter()
            .all(|e| e["raw"] == true && e["condition"] == "RedrivePolicy")
    );
    let output = dlq(&dir, &["replay", "--mapping", "raw", "--to-source"], &env);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(queue_depth(&sqs, &dead).await, 0);
    let back = eventually(WAIT, "the messages back in the source queue", || async {
        let back = receive_all(&sqs, &queue, 30).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        (!back.is_empty()).then_some(back)
    })
    .await;
    let mut bodies: Vec<&str> = back.iter().map(|m| m.body().unwrap()).collect();
    bodies.sort();
    assert_eq!(bodies, ["raw-0", "raw-1", "raw-2"]);
    for message in &back {
        let attributes = message.message_attributes().unwrap();
        assert_eq!(attributes["tenant"].string_value(), Some("acme"));
    }
}

// Issue 8: a message in the dead-letter queue that is not an envelope is shown as unreadable and
// skipped by a replay: it stays, and the rest is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_envelope_is_shown_and_left_alone() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "mixed", &[]).await;
    let dead = create_queue(&sqs, "mixed-dead", &[]).await;
    let envelope = json!({
        "version": "1.0",
        "timestamp": "2026-12-01T10:00:00.000Z",
        "requestContext": { "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 2 },
        "sluice": {
            "mapping": "mixed",
            "source": { "kind": "sqs" },
            "records": [{ "messageId": "m-1", "body": "hello", "attributes": {}, "messageAttributes": {} }],
            "error": { "type": "Boom", "message": "failed" },
            "replay_count": 0
        }
    });
    send_bodies(
        &sqs,
        &dead,
        &[envelope.to_string(), "written by hand".to_owned()],
        None,
    )
    .await;
    let flaky = Flaky::start().await;
    flaky.heal();
    let healed_at = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.yaml"),
        config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: mixed
    target: handler
    source:
      sqs: {{ queue_url: "{queue}" }}
    retry: {{ max_receive_count: 2 }}
    on_failure:
      sqs: {{ queue_url: "{dead}" }}
"#
            ),
        )
        .replace("{admin}", "127.0.0.1:0"),
    )
    .unwrap();
    let env = moto_env(&moto);
    let entries = peek_json(&dir, "mixed", &env);
    assert_eq!(entries.len(), 2);
    let unreadable: Vec<&Value> = entries
        .iter()
        .filter(|e| e["unreadable"].is_string())
        .collect();
    assert_eq!(unreadable.len(), 1, "{entries:?}");
    assert!(
        unreadable[0]["unreadable"]
            .as_str()
            .unwrap()
            .contains("not a dead-letter envelope")
    );
    let output = dlq(&dir, &["replay", "--mapping", "mixed"], &env);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 succeeded, 0 failed, 1 skipped"),
        "{}",
        text(&output)
    );
    let handled = flaky.handled_after(healed_at);
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0]["body"], "hello");
    let left = receive_all(&sqs, &dead, 30).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body(), Some("written by hand"));
}

// Issue 22 item 1: SQS raised its message limit to 1 MiB (August 2025). An envelope is sized by
// the destination queue's own MaximumMessageSize: a 600 KB envelope goes straight into a 1 MiB
// queue (it spilled at a fixed 256 KB before); when the queue's limit is lowered under a running
// sluice, SQS refuses the next send as too long, the limit is read again and the envelope goes
// through the spill bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_sized_by_the_destination_queues_maximum_message_size() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let s3 = moto.s3().await;
    s3.create_bucket().bucket("spill").send().await.unwrap();
    let wide = [("MaximumMessageSize", "1048576")];
    let queue = create_queue(&sqs, "wide-jobs", &wide).await;
    let dead = create_queue(&sqs, "wide-dead", &wide).await;
    let flaky = Flaky::start().await;
    let body = |n: u32| format!("{n}:{}", "x".repeat(300_000));
    send_bodies(&sqs, &queue, &[body(1)], None).await;
    let sluice = Sluice::start(
        &config(
            &flaky.handler.url("/"),
            "",
            &format!(
                r#"
  - name: wide
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 1 }}
    retry: {{ max_receive_count: 1 }}
    on_failure:
      sqs: {{ queue_url: "{dead}", spill_bucket: spill }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    let first = eventually(WAIT, "the first dead letter", || async {
        let messages = receive_all(&sqs, &dead, 60).await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    let envelope = first[0].body().unwrap();
    assert!(
        envelope.len() > 262_144 && envelope.starts_with('{'),
        "a {} byte envelope, sent whole",
        envelope.len()
    );
    assert!(s3_objects(&s3, "spill").await.is_empty());

    // The queue's limit goes down to 64 KiB while sluice runs.
    sqs.set_queue_attributes()
        .queue_url(&dead)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            "65536",
        )
        .send()
        .await
        .unwrap();
    send_bodies(&sqs, &queue, &[body(2)], None).await;
    let spilled = eventually(WAIT, "the second dead letter, spilled", || async {
        let objects = s3_objects(&s3, "spill").await;
        (!objects.is_empty()).then_some(objects)
    })
    .await;
    assert_eq!(spilled.len(), 1);
    let pointer = eventually(WAIT, "its pointer in the queue", || async {
        let messages = receive_all(&sqs, &dead, 60).await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    let pointer_body = pointer[0].body().unwrap();
    assert!(
        pointer_body.contains("software.amazon.payloadoffloading.PayloadS3Pointer"),
        "{pointer_body}"
    );
    assert!(
        spilled[0].1["sluice"]["records"][0]["body"]
            .as_str()
            .is_some_and(|b| b.starts_with("2:")),
        "the spilled envelope holds the second record"
    );
    drop(stop(sluice));
}
