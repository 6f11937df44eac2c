//! Every file in `examples/` runs: each config validates, and the README's first command
//! (`scripts/demo`, which runs `examples/sqs-http.yaml` with `examples/handler.py` against moto)
//! succeeds end to end, `examples/dynamodb-http.yaml` runs against moto's DynamoDB Streams and
//! `examples/kafka-http.yaml` against librdkafka's mock cluster.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn every_example_config_validates() {
    let examples = workspace_root().join("examples");
    let mut checked = 0;
    let configs = std::fs::read_dir(&examples)
        .unwrap()
        .chain(std::fs::read_dir(examples.join("ecs")).unwrap())
        .map(|entry| entry.unwrap().path());
    for path in configs {
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let output = Command::new(sluice_binary())
            .args(["validate", "-c"])
            .arg(&path)
            .env(
                "ORDERS_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/123456789012/orders",
            )
            .env(
                "SLUICE_STATE_DIR",
                std::env::temp_dir().join("sluice-validate"),
            )
            .env("REGISTRY_PASSWORD", "example")
            .env(
                "ORDERS_DLQ_URL",
                "https://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq",
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1, "no example configs found");
}

#[test]
fn the_readme_demo_runs_the_main_job_end_to_end() {
    // The binary the tests built: `scripts/demo`'s own `cargo build -p sluice` would compile
    // the library again with other features (see `sluice_binary`).
    let output = Command::new(workspace_root().join("scripts/demo"))
        .env("SLUICE_BINARY", sluice_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "summary: 19 orders handled, 1 dead-lettered, orders queue empty, sluice exited 0"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("error: OrderRejected: cannot process order-99-poison"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamodb_example_handles_changes_and_sends_the_failing_one_to_s3() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    let s3 = moto.s3().await;
    create_stream_table(&dynamodb, "orders").await;
    s3.create_bucket()
        .bucket("order-failures")
        .send()
        .await
        .unwrap();
    for i in 0..20u64 {
        let extra: &[(&str, &str)] = if i == 13 {
            &[("status", "poison")]
        } else {
            &[]
        };
        put_item(&dynamodb, "orders", &format!("order-{i}"), i, extra).await;
    }
    let handler = Handler::start(|_, event| {
        let poisoned = event["Records"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["dynamodb"]["NewImage"]["status"]["S"] == "poison");
        if poisoned {
            Reply::status(
                500,
                r#"{"errorType":"OrderRejected","errorMessage":"poison"}"#,
            )
        } else {
            Reply::json(json!({"batchItemFailures": []}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto_env(&moto);
    env.extend([
        ("HANDLER_URL".to_owned(), handler.url("/changes")),
        ("SLUICE_ADMIN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "SLUICE_STATE_DIR".to_owned(),
            dir.path().join("state").display().to_string(),
        ),
        ("RETRY_INITIAL".to_owned(), "10ms".to_owned()),
    ]);
    let mut sluice = Sluice::start_file(
        &workspace_root().join("examples/dynamodb-http.yaml"),
        dir,
        &env,
    );
    let objects = eventually(
        Duration::from_secs(240),
        "the failing change in S3",
        || async {
            let objects = s3_objects(&s3, "order-failures").await;
            (!objects.is_empty()).then_some(objects)
        },
    )
    .await;
    assert_eq!(objects.len(), 1);
    let (key, envelope) = &objects[0];
    assert!(key.starts_with("sluice/aws/lambda/order-changes/"), "{key}");
    assert_eq!(
        envelope["sluice"]["records"][0]["dynamodb"]["Keys"]["id"]["S"],
        "order-13"
    );
    let handled = eventually(Duration::from_secs(120), "the other 19 handled", || async {
        let handled: std::collections::HashSet<String> = handler
            .received()
            .iter()
            .filter(|r| r.records().iter().all(|x| key_of(x) != "order-13"))
            .flat_map(|r| r.records())
            .map(|r| key_of(&r))
            .collect();
        (handled.len() == 19).then_some(handled)
    })
    .await;
    assert!(!handled.contains("order-13"));
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("sluice exits on SIGTERM");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinesis_example_handles_orders_and_sends_the_failing_one_to_the_queue() {
    let moto = Moto::start();
    let kinesis = moto.kinesis().await;
    let sqs = moto.sqs().await;
    create_kinesis_stream(&kinesis, "orders", 2).await;
    let failures = create_queue(&sqs, "order-failures", &[]).await;
    for i in 0..24u64 {
        let kind = if i % 4 == 0 { "audit" } else { "order" };
        let data = json!({"type": kind, "n": i});
        put_kinesis(&kinesis, "orders", &format!("customer-{}", i % 5), &data).await;
    }
    let handler = Handler::start(|_, event| {
        let poisoned = event["Records"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| kinesis_data(r)["n"] == 13);
        if poisoned {
            Reply::status(
                500,
                r#"{"errorType":"OrderRejected","errorMessage":"poison"}"#,
            )
        } else {
            Reply::json(json!({"batchItemFailures": []}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = moto_env(&moto);
    env.extend([
        ("HANDLER_URL".to_owned(), handler.url("/orders")),
        ("SLUICE_ADMIN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "SLUICE_STATE_DIR".to_owned(),
            dir.path().join("state").display().to_string(),
        ),
        ("RETRY_INITIAL".to_owned(), "10ms".to_owned()),
        ("FAILURES_QUEUE_URL".to_owned(), failures.clone()),
    ]);
    let mut sluice = Sluice::start_file(
        &workspace_root().join("examples/kinesis-http.yaml"),
        dir,
        &env,
    );
    let dead = eventually(
        Duration::from_secs(120),
        "the failing order queued",
        || async {
            let messages = receive_all(&sqs, &failures, 30).await;
            (!messages.is_empty()).then_some(messages)
        },
    )
    .await;
    assert_eq!(dead.len(), 1);
    let envelope: Value = serde_json::from_str(dead[0].body().unwrap()).unwrap();
    assert_eq!(envelope["KinesisBatchInfo"]["batchSize"], 1);
    assert_eq!(kinesis_data(&envelope["sluice"]["records"][0])["n"], 13);
    let wanted: std::collections::HashSet<u64> =
        (0..24).filter(|i| i % 4 != 0 && *i != 13).collect();
    eventually(
        Duration::from_secs(120),
        "the other orders handled",
        || async {
            let handled: std::collections::HashSet<u64> = handler
                .received()
                .iter()
                .filter(|r| r.records().iter().all(|x| kinesis_data(x)["n"] != 13))
                .flat_map(|r| r.records())
                .map(|r| kinesis_data(&r)["n"].as_u64().unwrap())
                .collect();
            (handled == wanted).then_some(())
        },
    )
    .await;
    assert!(
        handler
            .records()
            .iter()
            .all(|r| kinesis_data(r)["type"] == "order"),
        "the filter kept audits away"
    );
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("sluice exits on SIGTERM");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_example_handles_clicks_and_sends_the_failing_one_to_the_failure_topic() {
    let kafka = Kafka::start();
    let topic = Kafka::unique("clicks");
    let failed = Kafka::unique("clicks-failed");
    let group = Kafka::unique("sluice-clicks");
    kafka.create_topic(&topic, 3);
    kafka.create_topic(&failed, 1);
    let messages: Vec<(i32, Option<String>, String)> = (0..30)
        .map(|i| {
            let kind = if i % 3 == 0 { "view" } else { "click" };
            let value = json!({ "kind": kind, "n": i, "poison": i == 16 });
            (i % 3, Some(format!("user-{i}")), value.to_string())
        })
        .collect();
    let borrowed: Vec<(i32, Option<&str>, String)> = messages
        .iter()
        .map(|(p, k, v)| (*p, k.as_deref(), v.clone()))
        .collect();
    kafka.produce(&topic, &borrowed);
    let handler = Handler::start(|_, event| {
        if kafka_records(event)
            .iter()
            .any(|r| r["decoded"]["poison"] == true)
        {
            return Reply::status(500, r#"{"errorType":"BadClick","errorMessage":"poison"}"#);
        }
        Reply::json(json!({ "batchItemFailures": [] }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap().to_owned()),
        ("CLICKS_TOPIC", topic.clone()),
        ("CLICKS_FAILED_TOPIC", failed.clone()),
        ("CLICKS_GROUP", group.clone()),
        ("HANDLER_URL", handler.url("/clicks")),
        ("SLUICE_ADMIN", "127.0.0.1:0".to_owned()),
        (
            "SLUICE_STATE_DIR",
            dir.path().join("state").display().to_string(),
        ),
        ("RETRY_INITIAL", "10ms".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut sluice = Sluice::start_file(
        &workspace_root().join("examples/kafka-http.yaml"),
        dir,
        &env,
    );
    let ends = kafka.end_offsets(&topic, 3);
    eventually(
        Duration::from_secs(240),
        "offsets committed to the end",
        || {
            let committed = kafka.committed(&group, &topic, 3);
            let done = committed == ends;
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                done.then_some(())
            }
        },
    )
    .await;
    let handled: std::collections::BTreeSet<i64> = handler
        .received()
        .iter()
        .map(|r| kafka_records(&r.event))
        .filter(|records| records.iter().all(|r| r["decoded"]["poison"] == false))
        .flatten()
        .map(|r| r["decoded"]["n"].as_i64().unwrap())
        .collect();
    let clicks: std::collections::BTreeSet<i64> =
        (0..30).filter(|i| i % 3 != 0 && *i != 16).collect();
    assert_eq!(handled, clicks, "every click but the poison, no views");
    let dead = kafka.read_all(&failed, 1);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some(&b"user-16"[..]));
    assert_eq!(dead[0].json()["sluice"]["error"]["type"], "BadClick");
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("sluice exits on SIGTERM");
    assert!(status.success());
}

/// Every `sluice_…` name in a PromQL expression, without a histogram's `_bucket` suffix.
fn metric_names(expression: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expression;
    while let Some(start) = rest.find("sluice_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        names.push(name.strip_suffix("_bucket").unwrap_or(name).to_owned());
        rest = &tail[end..];
    }
    names
}

// Issue 20, item 7: the Grafana dashboard in examples/grafana asks only for series sluice
// exports (each is made by the code and listed in the README's metrics table), and covers what
// the issue asks of it: throughput, outcomes, backlog and lag, the concurrency limit, the
// breaker's state and dead letters.
#[test]
fn the_grafana_dashboard_asks_only_for_metrics_sluice_exports() {
    let root = workspace_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/grafana/sluice-dashboard.json")).unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut sources = String::new();
    let mut dirs = vec![root.join("dispatcher/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expression = target["expr"].as_str().unwrap();
            assert!(!expression.is_empty(), "{}", panel["title"]);
            used.extend(metric_names(expression));
        }
    }
    for name in &used {
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "{name} is not a metric the code makes"
        );
        assert!(
            readme.contains(&format!("| `{name}`")) || readme.contains(&format!("/ `{name}`")),
            "{name} is not in the README's metrics table"
        );
    }
    for wanted in [
        "sluice_records_received_total",
        "sluice_invocation_outcomes_total",
        "sluice_backlog_records",
        "sluice_kafka_consumer_lag",
        "sluice_stream_iterator_age_seconds",
        "sluice_target_concurrency_limit",
        "sluice_target_circuit_open",
        "sluice_records_dead_lettered_total",
        "sluice_desired_tasks",
        "sluice_esm_events_total",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
}
