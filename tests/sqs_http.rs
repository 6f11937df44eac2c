//! End-to-end: the real `sluice` binary, moto's SQS, and an HTTP handler in the test, checking
//! Lambda's SQS event source mapping semantics (semantics.md §3, §12, §13.1) as a user sees them.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn config(handler_url: &str, mapping: &str) -> String {
    TestConfig::new(handler_url).mappings(mapping).render()
}

/// Starts sluice against `moto` with one target, `handler`, and the given mapping YAML.
fn start_sluice(moto: &Moto, handler_url: &str, mapping: &str) -> Sluice {
    Sluice::start(&config(handler_url, mapping), &moto_env(moto))
}

// semantics.md §3: success deletes the batch; §13.1: the event is Lambda's SQS event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_are_each_handled_and_deleted() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "bulk", &[]).await;
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let bodies: Vec<String> = (0..1000).map(|i| format!("message-{i}")).collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    let sluice = start_sluice(
        &moto,
        &handler.url("/events"),
        &format!(
            r#"
  - name: bulk
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 10, max_concurrency: 4 }}
"#
        ),
    );

    eventually(Duration::from_secs(120), "all messages handled", || async {
        (handler.deliveries_by_body().len() == 1000).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the queue to be empty", || async {
        (queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;

    let deliveries = handler.deliveries_by_body();
    for body in &bodies {
        assert_eq!(deliveries.get(body), Some(&1), "{body} delivered once");
    }
    assert!(handler.received().iter().all(|r| r.records().len() <= 10));
    let record = &handler.records()[0];
    for key in [
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    ] {
        assert!(record.get(key).is_some(), "record has {key}: {record}");
    }
    assert_eq!(record["eventSource"], "aws:sqs");
    assert_eq!(record["awsRegion"], "us-east-1");
    assert!(
        record["eventSourceARN"]
            .as_str()
            .unwrap()
            .ends_with(":bulk")
    );
    assert_eq!(record["attributes"]["ApproximateReceiveCount"], "1");
    let request = &handler.received()[0];
    for header in ["x-sluice-request-id", "x-sluice-deadline-ms", "traceparent"] {
        assert!(request.headers.contains_key(header), "{header}");
    }
    assert_eq!(request.headers["x-sluice-mapping"], "bulk");
    let received = sluice
        .metric(r#"sluice_records_received_total{mapping="bulk"}"#)
        .await;
    assert_eq!(received, 1000.0);
    assert_eq!(
        sluice
            .metric(r#"sluice_records_acknowledged_total{mapping="bulk"}"#)
            .await,
        1000.0
    );
}

// semantics.md §3 "Partial batch" and §12 "SQS dead-lettering": only the listed messages stay;
// at max_receive_count they go to on_failure in the envelope, with the handler's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_failures_are_retried_then_dead_lettered_with_the_handler_error() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "orders", &[("VisibilityTimeout", "30")]).await;
    let dlq = create_queue(&sqs, "orders-dlq", &[]).await;
    let failing: HashSet<String> = ["order-3", "order-11", "order-17"]
        .into_iter()
        .map(String::from)
        .collect();
    let failing_in_handler = failing.clone();
    let handler = Handler::start(move |_, event| {
        let failures: Vec<Value> = event["Records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| failing_in_handler.contains(r["body"].as_str().unwrap()))
            .map(|r| {
                json!({
                    "itemIdentifier": r["messageId"],
                    "errorType": "OrderRejected",
                    "errorMessage": format!("cannot ship {}", r["body"].as_str().unwrap()),
                })
            })
            .collect();
        Reply::json(json!({ "batchItemFailures": failures }))
    })
    .await;
    let bodies: Vec<String> = (0..20).map(|i| format!("order-{i}")).collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    let sluice = start_sluice(
        &moto,
        &handler.url("/orders"),
        &format!(
            r#"
  - name: orders
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 10, wait_time: 1s }}
    report_batch_item_failures: true
    retry:
      max_receive_count: 3
      backoff: {{ initial: 100ms, max: 300ms, jitter: false }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#
        ),
    );

    eventually(Duration::from_secs(60), "3 dead letters", || async {
        let depth = queue_depth(&sqs, &dlq).await;
        (depth == 3).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the source queue to be empty",
        || async { (queue_depth(&sqs, &queue).await == 0).then_some(()) },
    )
    .await;

    let deliveries = handler.deliveries_by_body();
    for body in &bodies {
        let expected = if failing.contains(body) { 3 } else { 1 };
        assert_eq!(deliveries.get(body), Some(&expected), "{body}");
    }
    let mut dead_bodies = HashSet::new();
    for message in receive_all(&sqs, &dlq, 60).await {
        let envelope: Value = serde_json::from_str(message.body().unwrap()).unwrap();
        assert_eq!(envelope["version"], "1.0");
        assert_eq!(
            envelope["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
        assert_eq!(envelope["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(envelope["responseContext"]["functionError"], Value::Null);
        let sluice_part = &envelope["sluice"];
        assert_eq!(sluice_part["mapping"], "orders");
        assert_eq!(sluice_part["source"]["kind"], "sqs");
        assert_eq!(sluice_part["error"]["type"], "OrderRejected");
        let body = sluice_part["records"][0]["body"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            sluice_part["error"]["message"],
            format!("cannot ship {body}")
        );
        assert_eq!(
            sluice_part["records"][0]["messageId"],
            sluice_part["source"]["message_ids"][0]
        );
        dead_bodies.insert(body);
    }
    assert_eq!(dead_bodies, failing);
    assert_eq!(
        sluice
            .metric(r#"sluice_records_dead_lettered_total{mapping="orders",condition="RetryAttemptsExhausted"}"#)
            .await,
        3.0
    );
}

// semantics.md §3 "Partial batch" / §13.6: invalid partial responses fail the whole batch;
// `{}`, `null`, an empty body and `{"batchItemFailures":[]}` succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_shapes_decide_between_success_and_whole_batch_failure() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let cases: Vec<(&str, &str, bool)> = vec![
        (
            "unknown-id",
            r#"{"batchItemFailures":[{"itemIdentifier":"no-such-id"}]}"#,
            false,
        ),
        (
            "empty-id",
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            false,
        ),
        (
            "null-id",
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            false,
        ),
        ("wrong-key", r#"{"foo":1}"#, false),
        ("not-json", "this is not json", false),
        ("empty-object", "{}", true),
        ("null-response", "null", true),
        ("empty-body", "", true),
        ("empty-list", r#"{"batchItemFailures":[]}"#, true),
    ];
    let responses: HashMap<String, String> = cases
        .iter()
        .map(|(name, body, _)| (format!("/{name}"), body.to_string()))
        .collect();
    let handler = Handler::start(move |path, _| Reply::ok(responses[path].clone())).await;
    let mut mappings = String::new();
    let mut targets = String::new();
    let mut queues = Vec::new();
    for (name, _, _) in &cases {
        let queue = create_queue(&sqs, name, &[("VisibilityTimeout", "1")]).await;
        send_bodies(
            &sqs,
            &queue,
            &[format!("{name}-a"), format!("{name}-b")],
            None,
        )
        .await;
        targets.push_str(&format!(
            "  {name}:\n    http: {{ url: \"{}\" }}\n",
            handler.url(&format!("/{name}"))
        ));
        mappings.push_str(&format!(
            "  - name: {name}\n    target: {name}\n    report_batch_item_failures: true\n    source:\n      sqs: {{ queue_url: \"{queue}\", max_batching_window: 1s, wait_time: 1s }}\n"
        ));
        queues.push(queue);
    }
    let config = format!(
        "version: 1\nadmin: {{ listen: \"{{admin}}\" }}\ntargets:\n{targets}mappings:\n{mappings}"
    );
    let _sluice = Sluice::start(&config, &moto_env(&moto));

    // Failing shapes: the whole batch (both messages) comes back after the 1 s visibility timeout.
    eventually(
        Duration::from_secs(30),
        "failing batches to be redelivered",
        || async {
            let deliveries = handler.deliveries_by_body();
            cases
                .iter()
                .filter(|(_, _, succeeds)| !succeeds)
                .all(|(name, _, _)| {
                    deliveries.get(&format!("{name}-a")).copied().unwrap_or(0) >= 2
                        && deliveries.get(&format!("{name}-b")).copied().unwrap_or(0) >= 2
                })
                .then_some(())
        },
    )
    .await;
    for ((name, _, succeeds), queue) in cases.iter().zip(&queues) {
        if *succeeds {
            eventually(
                Duration::from_secs(10),
                "successful queue to be empty",
                || async { (queue_depth(&sqs, queue).await == 0).then_some(()) },
            )
            .await;
            let deliveries = handler.deliveries_by_body();
            assert_eq!(deliveries.get(&format!("{name}-a")), Some(&1), "{name}");
            assert_eq!(deliveries.get(&format!("{name}-b")), Some(&1), "{name}");
        } else {
            assert_eq!(
                queue_depth(&sqs, queue).await,
                2,
                "{name} keeps both messages"
            );
        }
    }
}

fn bodies_of(handler: &Handler, group: &str) -> Vec<String> {
    handler
        .records()
        .iter()
        .map(|r| r["body"].as_str().unwrap().to_owned())
        .filter(|b| b.starts_with(group))
        .collect()
}

// semantics.md §3 "FIFO": order within a group; a failure returns it and every later message of
// its group; other groups carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_stay_in_order_and_a_failure_holds_back_only_its_group() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "events.fifo", &[("VisibilityTimeout", "30")]).await;
    let failures_left = Arc::new(AtomicUsize::new(2));
    let failures_in_handler = failures_left.clone();
    let handler = Handler::start(move |_, event| {
        let records = event["Records"].as_array().unwrap();
        let poisoned = records.iter().find(|r| r["body"] == "B-04");
        if let Some(record) = poisoned
            && failures_in_handler
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Reply::json(
                json!({"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}),
            );
        }
        Reply::json(json!({"batchItemFailures": []}))
    })
    .await;
    let mut bodies = Vec::new();
    for index in 0..20 {
        for group in ["A", "B", "C"] {
            bodies.push(format!("{group}-{index:02}"));
        }
    }
    let group_of = |body: &str| body[..1].to_owned();
    send_bodies(&sqs, &queue, &bodies, Some(&group_of)).await;
    let _sluice = start_sluice(
        &moto,
        &handler.url("/events"),
        &format!(
            r#"
  - name: events
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 10, max_concurrency: 3, wait_time: 1s }}
    report_batch_item_failures: true
    retry:
      backoff: {{ initial: 100ms, max: 100ms, jitter: false }}
"#
        ),
    );

    eventually(Duration::from_secs(60), "the queue to drain", || async {
        (queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(failures_left.load(Ordering::SeqCst), 0, "B-04 failed twice");
    let expected = |group: &str, from: usize| -> Vec<String> {
        (from..20).map(|i| format!("{group}-{i:02}")).collect()
    };
    assert_eq!(bodies_of(&handler, "A"), expected("A", 0));
    assert_eq!(bodies_of(&handler, "C"), expected("C", 0));
    let group_b = bodies_of(&handler, "B");
    let last_retry = group_b.iter().rposition(|b| b == "B-04").unwrap();
    assert_eq!(
        group_b[last_retry..].to_vec(),
        expected("B", 4),
        "{group_b:?}"
    );
    assert_eq!(
        group_b.iter().filter(|b| *b == "B-04").count(),
        3,
        "{group_b:?}"
    );
    let before: Vec<&String> = group_b[..last_retry]
        .iter()
        .filter(|b| b.as_str() < "B-04")
        .collect();
    assert_eq!(before, vec!["B-00", "B-01", "B-02", "B-03"]);
}

// semantics.md §12 "Visibility heartbeat": a handler slower than the visibility timeout does not
// cause a duplicate delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_three_visibility_timeouts_sees_its_message_once() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "slow", &[("VisibilityTimeout", "2")]).await;
    let handler = Handler::start(|_, _| Reply::ok("").after(Duration::from_secs(7))).await;
    send_bodies(&sqs, &queue, &["slow-work".to_owned()], None).await;
    let sluice = start_sluice(
        &moto,
        &handler.url("/slow"),
        &format!(
            r#"
  - name: slow
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", max_concurrency: 4, wait_time: 1s }}
"#
        ),
    );
    eventually(
        Duration::from_secs(30),
        "the slow batch to complete",
        || async { (handler.completed().len() == 1).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the message to be deleted",
        || async { (queue_depth(&sqs, &queue).await == 0).then_some(()) },
    )
    .await;
    // Deleted, nothing in flight, nothing moving: a redelivery could no longer come.
    sluice.settled("slow", Duration::from_secs(1)).await;
    assert_eq!(handler.deliveries_by_body().get("slow-work"), Some(&1));
}

// architecture.md "Operating on ECS": SIGTERM stops polling, lets in-flight batches finish,
// returns unstarted messages at once and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_batches_and_returns_unstarted_messages() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "drain", &[("VisibilityTimeout", "60")]).await;
    let handler = Handler::start(|_, _| Reply::ok("{}").after(Duration::from_secs(3))).await;
    let first: Vec<String> = (0..5).map(|i| format!("first-{i}")).collect();
    send_bodies(&sqs, &queue, &first, None).await;
    let mut sluice = start_sluice(
        &moto,
        &handler.url("/drain"),
        &format!(
            r#"
  - name: drain
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 5, max_batching_window: 30s, max_concurrency: 2 }}
"#
        ),
    );
    eventually(
        Duration::from_secs(20),
        "the first batch to start",
        || async { (handler.received().len() == 1).then_some(()) },
    )
    .await;
    send_bodies(
        &sqs,
        &queue,
        &["late-0".to_owned(), "late-1".to_owned()],
        None,
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "sluice to hold the late messages",
        || async {
            let received = sluice
                .metric(r#"sluice_records_received_total{mapping="drain"}"#)
                .await;
            (received == 7.0).then_some(())
        },
    )
    .await;
    assert!(
        handler.completed().is_empty(),
        "the first batch is still running"
    );

    let stopped_at = Instant::now();
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("sluice exits within shutdown_timeout");
    assert!(status.success(), "exit status {status:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    assert_eq!(handler.completed().len(), 1, "the in-flight batch finished");
    assert_eq!(
        handler.received().len(),
        1,
        "the late messages never started"
    );

    let visible = receive_all(&sqs, &queue, 60).await;
    let mut bodies: Vec<&str> = visible.iter().map(|m| m.body().unwrap()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec!["late-0", "late-1"],
        "only the unstarted messages remain, visible at once"
    );
    assert!(
        sluice
            .logs()
            .contains("returned unstarted messages to the queue")
    );
}

// architecture.md "Configuration": errors name file:line:column and the key path; exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_exit_2_naming_file_line_column_and_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let misspelt = dir.path().join("misspelt.yaml");
    std::fs::write(
        &misspelt,
        "version: 1\ntargets:\n  api:\n    http: { url: \"http://127.0.0.1:1/\" }\nmappings:\n  - name: m\n    target: api\n    source:\n      sqs:\n        queue_url: http://127.0.0.1:1/1/q\n        batch_sise: 10\n",
    )
    .unwrap();
    let fifo = dir.path().join("fifo.yaml");
    std::fs::write(
        &fifo,
        "version: 1\ntargets:\n  api:\n    http: { url: \"http://127.0.0.1:1/\" }\nmappings:\n  - name: m\n    target: api\n    source:\n      sqs:\n        queue_url: http://127.0.0.1:1/1/q.fifo\n        batch_size: 20\n",
    )
    .unwrap();
    let cases = [
        (
            &misspelt,
            format!(
                "{}:11:9: mappings[0].source.sqs.batch_sise: unknown field `batch_sise`",
                misspelt.display()
            ),
        ),
        (
            &fifo,
            format!(
                "{}:11:21: mappings[0].source.sqs.batch_size: must be 1..=10 for FIFO queues (got 20)",
                fifo.display()
            ),
        ),
    ];
    for (path, expected) in &cases {
        for command in ["validate", "run"] {
            let output = std::process::Command::new(sluice_binary())
                .args([command, "-c"])
                .arg(path)
                .output()
                .unwrap();
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command} {}",
                path.display()
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains(expected.as_str()), "{command}: {stderr}");
        }
    }
}

// /readyz follows the source's health; /metrics counts what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_source_and_metrics_match_the_traffic() {
    let mut moto = Moto::start();
    let port = moto.port;
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "watched", &[]).await;
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let bodies: Vec<String> = (0..25).map(|i| format!("m-{i}")).collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    let sluice = start_sluice(
        &moto,
        &handler.url("/watched"),
        &format!(
            r#"
  - name: watched
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", wait_time: 1s }}
"#
        ),
    );
    eventually(Duration::from_secs(20), "ready", || async {
        (sluice.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(sluice.get("/healthz").await.0, 200);
    eventually(Duration::from_secs(20), "25 messages handled", || async {
        (handler.deliveries_by_body().len() == 25 && queue_depth(&sqs, &queue).await == 0)
            .then_some(())
    })
    .await;
    let invocations = handler.received().len() as f64;
    let metric = |name: &str| format!(r#"{name}{{mapping="watched"}}"#);
    assert_eq!(
        sluice
            .metric(&metric("sluice_records_received_total"))
            .await,
        25.0
    );
    assert_eq!(
        sluice
            .metric(&metric("sluice_records_acknowledged_total"))
            .await,
        25.0
    );
    assert_eq!(
        sluice.metric(&metric("sluice_batches_invoked_total")).await,
        invocations
    );
    assert_eq!(
        sluice
            .metric(r#"sluice_invocation_outcomes_total{mapping="watched",outcome="success"}"#)
            .await,
        invocations
    );
    assert_eq!(
        sluice.metric(&metric("sluice_in_flight_records")).await,
        0.0
    );
    assert_eq!(
        sluice
            .metric(&metric("sluice_invoke_duration_seconds_count"))
            .await,
        invocations
    );

    moto.stop();
    let body = eventually(
        Duration::from_secs(30),
        "not ready while moto is down",
        || async {
            let (status, body) = sluice.get("/readyz").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["mappings"]["watched"]["status"], "failing");
    assert!(
        report["mappings"]["watched"]["last_error"]
            .as_str()
            .unwrap()
            .contains("ReceiveMessage")
    );

    let moto = Moto::start_on(port);
    create_queue(&moto.sqs().await, "watched", &[]).await;
    eventually(
        Duration::from_secs(30),
        "ready again once moto is back",
        || async { (sluice.get("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    assert!(sluice.metric(&metric("sluice_poll_errors_total")).await >= 1.0);
}

// architecture.md "Targets" and semantics.md §6: how HTTP answers are classified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_are_classified_as_lambda_outcomes() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let handler = Handler::start(|path, _| match path {
        "/function-error" => Reply {
            status: 200,
            headers: vec![("X-Amz-Function-Error".into(), "Unhandled".into())],
            body: r#"{"errorType":"KeyError","errorMessage":"sku"}"#.into(),
            delay: Duration::ZERO,
        },
        "/server-error" => Reply {
            status: 500,
            headers: vec![],
            body: "broken".into(),
            delay: Duration::ZERO,
        },
        "/overloaded" => Reply {
            status: 503,
            headers: vec![],
            body: "overloaded".into(),
            delay: Duration::ZERO,
        },
        "/throttled" => Reply {
            status: 429,
            headers: vec![],
            body: "slow down".into(),
            delay: Duration::ZERO,
        },
        "/slow" => Reply::ok("{}").after(Duration::from_secs(3)),
        _ => Reply::ok("{}"),
    })
    .await;
    let cases = [
        (
            "function-error",
            handler.url("/function-error"),
            "function_error",
        ),
        (
            "server-error",
            handler.url("/server-error"),
            "function_error",
        ),
        ("throttled", handler.url("/throttled"), "throttled"),
        ("overloaded", handler.url("/overloaded"), "unavailable"),
        ("slow", handler.url("/slow"), "timeout"),
        (
            "unavailable",
            // Port 1 (tcpmux): privileged and unused, so the connection is refused.
            "http://127.0.0.1:1/".to_owned(),
            "unavailable",
        ),
    ];
    let mut targets = String::new();
    let mut mappings = String::new();
    for (name, url, _) in &cases {
        let queue = create_queue(&sqs, name, &[("VisibilityTimeout", "30")]).await;
        send_bodies(&sqs, &queue, &[format!("{name}-1")], None).await;
        targets.push_str(&format!(
            "  {name}:\n    http: {{ url: \"{url}\", timeout: 500ms }}\n"
        ));
        mappings.push_str(&format!(
            "  - name: {name}\n    target: {name}\n    source:\n      sqs: {{ queue_url: \"{queue}\", wait_time: 1s }}\n"
        ));
    }
    let config = format!(
        "version: 1\nadmin: {{ listen: \"{{admin}}\" }}\ntargets:\n{targets}mappings:\n{mappings}"
    );
    let sluice = Sluice::start(&config, &moto_env(&moto));
    for (name, _, outcome) in &cases {
        let series =
            format!(r#"sluice_invocation_outcomes_total{{mapping="{name}",outcome="{outcome}"}}"#);
        eventually(Duration::from_secs(20), &series, || async {
            (sluice.metric(&series).await >= 1.0).then_some(())
        })
        .await;
        let acknowledged = format!(r#"sluice_records_acknowledged_total{{mapping="{name}"}}"#);
        assert_eq!(
            sluice.metric(&acknowledged).await,
            0.0,
            "{name} deletes nothing"
        );
    }
    let logs = sluice.logs();
    assert!(
        logs.contains(r#""error_type":"KeyError""#),
        "the handler's error type is logged"
    );
}

// semantics.md §1 and §3 "Polling and batching": batches larger than one receive are filled by
// several receives within the batching window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_ten_are_filled_by_several_receives() {
    let moto = Moto::start_counting();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "large-batches", &[]).await;
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let bodies: Vec<String> = (0..60).map(|i| format!("item-{i}")).collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    let _sluice = start_sluice(
        &moto,
        &handler.url("/large"),
        &format!(
            r#"
  - name: large
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 25, max_batching_window: 2s, max_concurrency: 1 }}
"#
        ),
    );
    eventually(
        Duration::from_secs(30),
        "all 60 handled and deleted",
        || async {
            (handler.deliveries_by_body().len() == 60 && queue_depth(&sqs, &queue).await == 0)
                .then_some(())
        },
    )
    .await;
    let sizes: Vec<usize> = handler
        .received()
        .iter()
        .map(|r| r.records().len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 25), "{sizes:?}");
    assert!(
        sizes.iter().any(|&n| n > 10),
        "some batch spans receives: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<usize>(), 60);
    // The end of a window is waited out, not filled with back-to-back short polls.
    let receives = moto.request_counts().await["ReceiveMessage"];
    assert!(
        receives <= 20,
        "{receives} receives for 60 messages in batches of 25"
    );
}

// architecture.md "CLI": `validate --connect` checks that every queue and bucket exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_names_the_queue_that_does_not_exist() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "present", &[]).await;
    let missing = queue.replace("present", "absent");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\ntargets:\n  api:\n    http: {{ url: \"http://127.0.0.1:1/\" }}\nmappings:\n  - name: m\n    target: api\n    source:\n      sqs: {{ queue_url: \"{queue}\" }}\n    retry: {{ max_receive_count: 3 }}\n    on_failure:\n      sqs: {{ queue_url: \"{missing}\", spill_bucket: no-such-bucket }}\n"
        ),
    )
    .unwrap();
    let run = |connect: bool| {
        let mut command = std::process::Command::new(sluice_binary());
        command.args(["validate", "-c"]).arg(&path);
        if connect {
            command.arg("--connect");
        }
        command.envs(moto_env(&moto)).output().unwrap()
    };
    assert!(run(false).status.success());
    let output = run(true);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mappings[0].on_failure.sqs.queue_url (m)") && stderr.contains("absent"),
        "{stderr}"
    );
    assert!(!stderr.contains("source.sqs.queue_url"), "{stderr}");
    assert!(
        stderr.contains("mappings[0].on_failure.sqs.spill_bucket (m): bucket no-such-bucket"),
        "{stderr}"
    );
}

// semantics.md §13.1: message attributes appear with lower-camel keys; FIFO attributes are added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_attributes_and_fifo_attributes_reach_the_handler_as_lambda_shapes_them() {
    use aws_sdk_sqs::primitives::Blob;
    use aws_sdk_sqs::types::MessageAttributeValue;
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "shaped.fifo", &[]).await;
    let handler = Handler::start(|_, _| Reply::ok("")).await;
    sqs.send_message()
        .queue_url(&queue)
        .message_body(r#"{"order":1}"#)
        .message_group_id("customer-7")
        .message_deduplication_id("dedup-1")
        .message_attributes(
            "tenant",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("acme")
                .build()
                .unwrap(),
        )
        .message_attributes(
            "checksum",
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(Blob::new(b"foobar".to_vec()))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let _sluice = start_sluice(
        &moto,
        &handler.url("/shaped"),
        &format!(
            "  - name: shaped\n    target: handler\n    source:\n      sqs: {{ queue_url: \"{queue}\", wait_time: 1s }}\n"
        ),
    );
    let record = eventually(Duration::from_secs(20), "the record", || async {
        handler.records().first().cloned()
    })
    .await;
    assert_eq!(
        record["body"], r#"{"order":1}"#,
        "the body is the string as sent"
    );
    let tenant = &record["messageAttributes"]["tenant"];
    assert_eq!(tenant["stringValue"], "acme");
    assert_eq!(tenant["dataType"], "String");
    assert_eq!(tenant["stringListValues"], json!([]));
    assert_eq!(tenant["binaryListValues"], json!([]));
    assert_eq!(
        record["messageAttributes"]["checksum"]["binaryValue"],
        "Zm9vYmFy"
    );
    assert!(record["md5OfMessageAttributes"].is_string());
    let attributes = &record["attributes"];
    assert_eq!(attributes["MessageGroupId"], "customer-7");
    assert_eq!(attributes["MessageDeduplicationId"], "dedup-1");
    for key in [
        "SequenceNumber",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    ] {
        assert!(attributes[key].is_string(), "{key}: {attributes}");
    }
    eventually(Duration::from_secs(10), "deleted", || async {
        (queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;
}

// "Bad input never loses a record": when the on-failure destination cannot take a dead letter,
// the message stays in the source queue and is dead-lettered once the destination works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_stored_keeps_the_message_in_the_source_queue() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "payments", &[("VisibilityTimeout", "30")]).await;
    let missing_dlq = queue.replace("payments", "payments-dlq");
    let handler = Handler::start(|_, _| {
        Reply::status(
            500,
            r#"{"errorType":"LedgerDown","errorMessage":"ledger unavailable"}"#,
        )
    })
    .await;
    send_bodies(&sqs, &queue, &["payment-1".to_owned()], None).await;
    let sluice = start_sluice(
        &moto,
        &handler.url("/payments"),
        &format!(
            r#"
  - name: payments
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", wait_time: 1s }}
    retry:
      max_receive_count: 2
      backoff: {{ initial: 100ms, max: 200ms, jitter: false }}
    on_failure:
      sqs: {{ queue_url: "{missing_dlq}" }}
"#
        ),
    );
    eventually(
        Duration::from_secs(20),
        "a failed dead-letter send",
        || async {
            sluice
                .logs()
                .contains("dead-lettering failed")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        queue_depth(&sqs, &queue).await,
        1,
        "the message is still in the source queue"
    );

    create_queue(&sqs, "payments-dlq", &[]).await;
    eventually(
        Duration::from_secs(60),
        "the dead letter once the queue exists",
        || async {
            (queue_depth(&sqs, &missing_dlq).await == 1 && queue_depth(&sqs, &queue).await == 0)
                .then_some(())
        },
    )
    .await;
    let dead = receive_all(&sqs, &missing_dlq, 60).await;
    let envelope: Value = serde_json::from_str(dead[0].body().unwrap()).unwrap();
    assert_eq!(envelope["sluice"]["error"]["type"], "LedgerDown");
    assert_eq!(envelope["responseContext"]["functionError"], "Unhandled");
    assert_eq!(envelope["sluice"]["records"][0]["body"], "payment-1");
}

/// Sends an SQS Extended Client pointer to `s3://payloads/<key>` (declaring `size`), as the Java
/// and Python clients send it; `sns` wraps it in an SNS notification (raw delivery off).
async fn send_pointer(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    key: &str,
    size: usize,
    sns: bool,
    group: Option<&str>,
) {
    use aws_sdk_sqs::types::MessageAttributeValue;
    let pointer = json!([
        "software.amazon.payloadoffloading.PayloadS3Pointer",
        {"s3BucketName": "payloads", "s3Key": key}
    ])
    .to_string();
    let mut request = sqs.send_message().queue_url(queue);
    request = if sns {
        request.message_body(
            json!({
                "Type": "Notification",
                "MessageId": format!("sns-{key}"),
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:big",
                "Message": pointer,
                "MessageAttributes": {"ExtendedPayloadSize": {"Type": "Number", "Value": size.to_string()}},
            })
            .to_string(),
        )
    } else {
        request.message_body(pointer).message_attributes(
            "ExtendedPayloadSize",
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(size.to_string())
                .build()
                .unwrap(),
        )
    };
    if let Some(group) = group {
        request = request
            .message_group_id(group)
            .message_deduplication_id(format!("dedup-{key}"));
    }
    request.send().await.unwrap();
}

// Issue 22 item 2: with `large_payloads`, the handler gets the body the SQS (or SNS) Extended
// Client stored in S3 instead of the pointer, filters see it too, a missing object goes to
// on_failure as PayloadNotFound without an invocation, and with delete_after_success an object
// is deleted once its message was handled and deleted (never before). FIFO order holds. The
// filters match only the fetched bodies (a pointer starts with `[`), so the one they drop shows
// they saw them. All five messages come in one receive: the missing object's message is taken
// out, and the group's messages behind it go back and come again once it is gone, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_client_pointers_are_resolved_before_the_handler_sees_them() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let s3 = moto.s3().await;
    s3.create_bucket().bucket("payloads").send().await.unwrap();
    let big = |tag: &str, size: usize| format!("{tag}:{}", "y".repeat(size));
    let bodies = [
        ("k1", big("direct", 2_000_000)),
        ("k2", big("sns", 300_000)),
        ("k3", big("skipped", 10)),
    ];
    for (key, body) in &bodies {
        s3.put_object()
            .bucket("payloads")
            .key(*key)
            .body(aws_sdk_s3::primitives::ByteStream::from(
                body.clone().into_bytes(),
            ))
            .send()
            .await
            .unwrap();
    }
    let queue = create_queue(&sqs, "big.fifo", &[("FifoQueue", "true")]).await;
    let dead = create_queue(&sqs, "big-dead", &[]).await;
    send_pointer(&sqs, &queue, "k1", bodies[0].1.len(), false, Some("g")).await;
    send_pointer(&sqs, &queue, "gone", 5, false, Some("g")).await;
    send_pointer(&sqs, &queue, "k2", bodies[1].1.len(), true, Some("g")).await;
    send_pointer(&sqs, &queue, "k3", bodies[2].1.len(), false, Some("g")).await;
    sqs.send_message()
        .queue_url(&queue)
        .message_body("plain")
        .message_group_id("g")
        .message_deduplication_id("plain")
        .send()
        .await
        .unwrap();
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let _sluice = start_sluice(
        &moto,
        &handler.url("/big"),
        &format!(
            r#"
  - name: big
    target: handler
    source:
      sqs:
        queue_url: "{queue}"
        batch_size: 10
        # moto's long poll does not wake when a FIFO group unlocks.
        wait_time: 1s
        large_payloads: {{ resolve: true, delete_after_success: true }}
    filters:
      - body: {{ Type: [Notification] }}
      - body: [{{ prefix: "direct:" }}, plain]
    retry: {{ max_receive_count: 3 }}
    on_failure:
      sqs: {{ queue_url: "{dead}" }}
"#
        ),
    );
    let seen = eventually(
        Duration::from_secs(60),
        "three messages handled",
        || async {
            let bodies: Vec<String> = handler
                .records()
                .iter()
                .map(|r| r["body"].as_str().unwrap().to_owned())
                .collect();
            (bodies.len() >= 3).then_some(bodies)
        },
    )
    .await;
    assert_eq!(seen.len(), 3, "the filtered one is not invoked");
    assert_eq!(seen[0], bodies[0].1, "the direct pointer's body, whole");
    let notification: Value = serde_json::from_str(&seen[1]).unwrap();
    assert_eq!(notification["Type"], "Notification");
    assert_eq!(
        notification["Message"], bodies[1].1,
        "the SNS message's body"
    );
    assert!(
        notification["MessageAttributes"]
            .get("ExtendedPayloadSize")
            .is_none()
    );
    assert_eq!(seen[2], "plain");
    let first = &handler.records()[0];
    assert!(
        first["messageAttributes"]
            .get("ExtendedPayloadSize")
            .is_none(),
        "{}",
        first["messageAttributes"]
    );
    // The missing object's message was dead-lettered without an invocation.
    let dead_letters = eventually(Duration::from_secs(30), "the dead letter", || async {
        let messages = receive_all(&sqs, &dead, 60).await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    let envelope: Value = serde_json::from_str(dead_letters[0].body().unwrap()).unwrap();
    assert_eq!(
        envelope["sluice"]["error"]["type"], "PayloadNotFound",
        "{envelope}"
    );
    assert!(
        envelope["sluice"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("s3://payloads/gone")
    );
    // Handled (and filtered) messages' objects are deleted once the messages are.
    eventually(Duration::from_secs(30), "the objects deleted", || async {
        (s3_objects(&s3, "payloads").await.is_empty()).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the queue empty", || async {
        (queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(handler.records().len(), 3, "nothing more was invoked");
}
