//! End-to-end: what an operator on ECS reads of a running sluice — Lambda's event source mapping
//! metrics by name, in Prometheus and as CloudWatch Embedded Metric Format lines on stdout
//! (README "Lambda's metrics by name") — with the real `sluice` binary, moto's SQS and an HTTP
//! handler in the test.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// Lambda's counters, as sluice names them in `sluice_esm_events_total{metric}`.
const ESM_COUNTS: [&str; 7] = [
    "PolledEventCount",
    "FilteredOutEventCount",
    "InvokedEventCount",
    "FailedInvokeEventCount",
    "DroppedEventCount",
    "OnFailureDestinationDeliveredEventCount",
    "DeletedEventCount",
];

// Issue 20, item 5: 20 messages, 4 filtered out, one reported failed until max_receive_count 3
// sends it to on_failure. Each count has Lambda's meaning: polled 22 (the poison message three
// times), filtered 4, invoked 18 (16 once, the poison twice more), failed 3, delivered to the
// destination 1, dropped 0, deleted 20 (filtered, handled and dead-lettered alike). The EMF lines
// on stdout add up to the Prometheus counts, so the stop wrote what the last interval counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambdas_mapping_metrics_count_by_lambdas_rules_in_prometheus_and_emf_alike() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "esm", &[]).await;
    let dlq = create_queue(&sqs, "esm-dlq", &[]).await;
    let handler = Handler::start(|_, event| {
        let failures: Vec<Value> = event["Records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["body"].as_str().unwrap().contains("poison"))
            .map(|r| json!({ "itemIdentifier": r["messageId"] }))
            .collect();
        Reply::json(json!({ "batchItemFailures": failures }))
    })
    .await;
    let mut bodies: Vec<String> = (0..15)
        .map(|n| json!({"type": "order", "n": n}).to_string())
        .collect();
    bodies.extend((0..4).map(|n| json!({"type": "refund", "n": n}).to_string()));
    bodies.push(json!({"type": "order", "poison": true}).to_string());
    send_bodies(&sqs, &queue, &bodies, None).await;
    let config = TestConfig::new(&handler.url("/orders"))
        .top("metrics: { emf: { namespace: Shop/Sluice, interval: 2s } }\n")
        .mappings(&format!(
            r#"
  - name: esm
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 10, wait_time: 1s }}
    filters:
      - body: {{ type: [order] }}
    report_batch_item_failures: true
    retry:
      max_receive_count: 3
      backoff: {{ initial: 100ms, max: 300ms, jitter: false }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#
        ));
    let mut sluice = Sluice::start(&config.render(), &moto_env(&moto));
    eventually(Duration::from_secs(120), "one dead letter", || async {
        (queue_depth(&sqs, &dlq).await == 1 && queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;
    sluice.settled("esm", Duration::from_secs(3)).await;
    let (_, text) = sluice.get("/metrics").await;
    let prometheus: BTreeMap<&str, f64> = ESM_COUNTS
        .iter()
        .map(|&metric| {
            let series = format!(r#"sluice_esm_events_total{{mapping="esm",metric="{metric}"}}"#);
            (metric, metric_value(&text, &series))
        })
        .collect();
    let expected = BTreeMap::from([
        ("PolledEventCount", 22.0),
        ("FilteredOutEventCount", 4.0),
        ("InvokedEventCount", 18.0),
        ("FailedInvokeEventCount", 3.0),
        ("DroppedEventCount", 0.0),
        ("OnFailureDestinationDeliveredEventCount", 1.0),
        ("DeletedEventCount", 20.0),
    ]);
    assert_eq!(prometheus, expected, "{text}");

    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).is_some());
    let logs = sluice.logs();
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("_aws").is_some())
        .collect();
    assert!(lines.len() >= 2, "{logs}");
    let mut emf: BTreeMap<&str, f64> = ESM_COUNTS.iter().map(|&m| (m, 0.0)).collect();
    for line in &lines {
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Shop/Sluice");
        assert_eq!(directive["Dimensions"], json!([["EventSourceMapping"]]));
        assert_eq!(line["EventSourceMapping"], "esm");
        assert_eq!(line["FunctionName"], "handler");
        assert!(line["_aws"]["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        for declared in directive["Metrics"].as_array().unwrap() {
            let name = declared["Name"].as_str().unwrap();
            assert_eq!(declared["Unit"], "Count");
            if name == "Backlog" {
                // The queue's backlog, sampled for autoscaling, rides along (a gauge).
                continue;
            }
            *emf.get_mut(name).expect("only Lambda's names") += line[name].as_f64().unwrap();
        }
    }
    assert_eq!(emf, expected, "{logs}");
}

// Issue 20, item 4: a handler that finishes at most 5 records per 250 ms (one call at a time)
// and 600 messages waiting, with a 10 s target drain time. While the backlog is large, one task
// cannot drain it in time and sluice_desired_tasks says more are needed; it agrees with what
// waits and the throughput it shows (the README's formula); once the queue is empty it falls to
// 0. The same signals reach CloudWatch in the EMF line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_tasks_follow_the_backlog_and_the_measured_throughput() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "scaled", &[]).await;
    let handler =
        Handler::start(|_, _| Reply::json(json!({})).after(Duration::from_millis(250))).await;
    let bodies: Vec<String> = (0..600).map(|n| format!("job-{n}")).collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    let config = TestConfig::new(&handler.url("/jobs"))
        .target_options(", max_concurrency: 1")
        .top("metrics: { emf: { namespace: Shop/Sluice, interval: 1s } }\n")
        .mappings(&format!(
            r#"
  - name: scaled
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 5, wait_time: 1s }}
    autoscaling: {{ target_drain_time: 10s, sample_interval: 5s, throughput_window: 20s }}
"#
        ));
    let mut sluice = Sluice::start(&config.render(), &moto_env(&moto));
    let gauges = |text: &str| {
        (
            metric_value(text, r#"sluice_backlog_waiting_records{mapping="scaled"}"#),
            metric_value(text, r#"sluice_desired_tasks{mapping="scaled"}"#),
            metric_value(
                text,
                r#"sluice_task_throughput_records_per_second{mapping="scaled"}"#,
            ),
        )
    };
    let (waiting, desired, throughput) = eventually(
        Duration::from_secs(60),
        "more than one task wanted",
        || async {
            let (_, text) = sluice.get("/metrics").await;
            let (waiting, desired, throughput) = gauges(&text);
            (desired >= 2.0 && throughput > 0.0).then_some((waiting, desired, throughput))
        },
    )
    .await;
    assert!(waiting > 0.0 && waiting <= 600.0, "{waiting}");
    assert!(
        throughput <= 21.0,
        "the handler finishes at most 20 records/s: {throughput}"
    );
    let formula = waiting / (throughput * 10.0);
    assert!(
        (desired - formula).abs() < 1e-6 * formula,
        "desired {desired}, waiting {waiting}, throughput {throughput}"
    );
    eventually(
        Duration::from_secs(120),
        "the queue drained and nothing wanted",
        || async {
            let (_, text) = sluice.get("/metrics").await;
            let (waiting, desired, _) = gauges(&text);
            let backlog = metric_value(&text, r#"sluice_backlog_records{mapping="scaled"}"#);
            (backlog == 0.0 && waiting == 0.0 && desired == 0.0).then_some(())
        },
    )
    .await;
    assert_eq!(handler.deliveries_by_body().len(), 600);

    let wanted = |logs: &str| -> Vec<f64> {
        logs.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|line| line.get("DesiredTasks")?.as_f64())
            .collect()
    };
    // The gauge can reach 0 up to an EMF interval before a line carries it, and the line written
    // at shutdown has no DesiredTasks (the mapping has ended): wait for one before stopping.
    eventually(
        Duration::from_secs(10),
        "an EMF line wanting no task",
        || async { (wanted(&sluice.logs()).last() == Some(&0.0)).then_some(()) },
    )
    .await;
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).is_some());
    let wanted = wanted(&sluice.logs());
    assert!(wanted.iter().any(|&n| n >= 2.0), "{wanted:?}");
    assert_eq!(wanted.last(), Some(&0.0), "{wanted:?}");
}

/// Runs `sluice ctl ARGS` against `sluice`'s admin server; its exit code and printed JSON.
fn ctl(sluice: &Sluice, args: &[&str]) -> (i32, Value) {
    let output = std::process::Command::new(sluice_binary())
        .arg("ctl")
        .args(args)
        .arg("--address-file")
        .arg(sluice.address_file())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(printed.trim()).unwrap_or_else(
        |_| json!({ "stdout": printed, "stderr": String::from_utf8_lossy(&output.stderr) }),
    );
    (output.status.code().unwrap_or(-1), value)
}

// Issue 20, item 6: `sluice ctl pause` stops a mapping's receives (moto counts no ReceiveMessage
// while it is paused, and messages sent meanwhile wait in the queue), keeps /readyz ready with
// the mapping "paused", and `resume` lets it handle them, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_mapping_receives_nothing_until_resumed() {
    let moto = Moto::start_counting();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "paused", &[]).await;
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let config = TestConfig::new(&handler.url("/orders")).mappings(&format!(
        r#"
  - name: orders
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 10, wait_time: 1s }}
"#
    ));
    let sluice = Sluice::start(&config.render(), &moto_env(&moto));
    let first: Vec<String> = (0..10).map(|n| format!("before-{n}")).collect();
    send_bodies(&sqs, &queue, &first, None).await;
    eventually(
        Duration::from_secs(60),
        "the first messages handled",
        || async { (handler.deliveries_by_body().len() == 10).then_some(()) },
    )
    .await;

    let (code, answer) = ctl(&sluice, &["pause", "orders"]);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(
        answer,
        json!({"mapping": "orders", "paused": true, "changed": true})
    );
    let (code, answer) = ctl(&sluice, &["pause", "orders"]);
    assert_eq!((code, &answer["changed"]), (0, &json!(false)), "{answer}");
    // A receive open when the pause came finishes; then none is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let receives = moto.request_counts().await["ReceiveMessage"];
    let later: Vec<String> = (0..10).map(|n| format!("during-{n}")).collect();
    send_bodies(&sqs, &queue, &later, None).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(moto.request_counts().await["ReceiveMessage"], receives);
    assert_eq!(queue_depth(&sqs, &queue).await, 10);
    assert_eq!(handler.deliveries_by_body().len(), 10);
    let (status, ready) = sluice.get("/readyz").await;
    assert_eq!(status, 200, "paused is deliberate, not a failure: {ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["mappings"]["orders"]["status"], "paused");
    assert_eq!(
        sluice
            .metric(r#"sluice_mapping_paused{mapping="orders"}"#)
            .await,
        1.0
    );
    let (code, status) = ctl(&sluice, &["status"]);
    assert_eq!(code, 0);
    assert_eq!(status["mappings"]["orders"]["paused"], true);
    let (code, answer) = ctl(&sluice, &["pause", "no-such-mapping"]);
    assert_eq!(code, 2, "{answer}");

    let (code, answer) = ctl(&sluice, &["resume", "orders"]);
    assert_eq!((code, &answer["paused"]), (0, &json!(false)), "{answer}");
    eventually(
        Duration::from_secs(60),
        "the held-back messages handled",
        || async { (handler.deliveries_by_body().len() == 20).then_some(()) },
    )
    .await;
    assert!(handler.deliveries_by_body().values().all(|&n| n == 1));
    assert_eq!(
        sluice
            .metric(r#"sluice_mapping_paused{mapping="orders"}"#)
            .await,
        0.0
    );
}

/// The mappings of the reload test: `keep` on queue `a` always; the rest as the version says.
fn reload_config(handler_url: &str, queues: &BTreeMap<&str, String>, version: u32) -> String {
    let mapping = |name: &str, queue: &str, extra: &str| {
        format!(
            "\n  - name: {name}\n    target: handler\n    source:\n      sqs: {{ queue_url: \"{}\", batch_size: 10, wait_time: 1s }}\n{extra}",
            queues[queue]
        )
    };
    let mut mappings = mapping("keep", "a", "");
    if version == 1 {
        mappings.push_str(&mapping("change", "b", ""));
        mappings.push_str(&mapping("gone", "c", ""));
    } else {
        // Changed: only orders now; removed: gone; added: added.
        mappings.push_str(&mapping(
            "change",
            "b",
            "    filters:\n      - body: { type: [order] }\n",
        ));
        mappings.push_str(&mapping("added", "d", ""));
    }
    any_port(&TestConfig::new(handler_url).mappings(&mappings).render())
}

// Issue 20, item 6: SIGHUP reloads the config file. A file that does not validate is refused and
// changes nothing; a valid one leaves an unchanged mapping untouched (its slow batch in flight
// finishes once, it is not stopped, and its pause holds), drains and restarts a changed one with
// its new filter, drains a removed one (its queue is no longer read) and starts an added one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_changed_mappings_and_leaves_the_others_untouched() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let mut queues = BTreeMap::new();
    for name in ["a", "b", "c", "d"] {
        queues.insert(
            name,
            create_queue(&sqs, &format!("reload-{name}"), &[]).await,
        );
    }
    let handler = Handler::start(|_, event| {
        let slow = event["Records"][0]["body"]
            .as_str()
            .is_some_and(|body| body.contains("slow"));
        let reply = Reply::json(json!({}));
        if slow {
            reply.after(Duration::from_secs(4))
        } else {
            reply
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, reload_config(&handler.url("/e"), &queues, 1)).unwrap();
    let sluice = Sluice::start_file(&path, tempfile::tempdir().unwrap(), &moto_env(&moto));
    let order = |n: u32| json!({"type": "order", "n": n}).to_string();
    let refund = |n: u32| json!({"type": "refund", "n": n}).to_string();
    send_bodies(&sqs, &queues["b"], &[order(0), refund(0)], None).await;
    eventually(Duration::from_secs(60), "version 1 handles b", || async {
        (handler.deliveries_by_body().len() == 2).then_some(())
    })
    .await;

    // A file that does not validate: refused, nothing changes.
    std::fs::write(&path, "version: 1\ntargets: {}\nmappings: [ {name: x} ]\n").unwrap();
    sluice.signal("HUP");
    eventually(Duration::from_secs(30), "the refusal logged", || async {
        sluice
            .logs()
            .contains("config reload refused")
            .then_some(())
    })
    .await;
    send_bodies(&sqs, &queues["c"], &[order(1)], None).await;
    eventually(Duration::from_secs(60), "gone still runs", || async {
        (handler.deliveries_by_body().len() == 3).then_some(())
    })
    .await;

    // Version 2, while keep is paused and has a slow batch in flight.
    let (code, answer) = ctl(&sluice, &["pause", "keep"]);
    assert_eq!(code, 0, "{answer}");
    std::fs::write(&path, reload_config(&handler.url("/e"), &queues, 2)).unwrap();
    let (code, answer) = ctl(&sluice, &["resume", "keep"]);
    assert_eq!(code, 0, "{answer}");
    send_bodies(&sqs, &queues["a"], &["slow-keep".to_owned()], None).await;
    eventually(
        Duration::from_secs(30),
        "keep's slow batch in flight",
        || async {
            handler
                .received()
                .iter()
                .any(|r| r.records().iter().any(|rec| rec["body"] == "slow-keep"))
                .then_some(())
        },
    )
    .await;
    let (code, answer) = ctl(&sluice, &["pause", "keep"]);
    assert_eq!(code, 0, "{answer}");
    sluice.signal("HUP");
    eventually(Duration::from_secs(60), "the reload done", || async {
        sluice.logs().contains("config reloaded").then_some(())
    })
    .await;
    let logs = sluice.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("stopping for a config reload") && l.contains("\"keep\"")),
        "keep was stopped:\n{logs}"
    );
    let (_, status) = ctl(&sluice, &["status"]);
    let names: Vec<&String> = status["mappings"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["added", "change", "keep"], "{status}");
    assert_eq!(status["mappings"]["keep"]["paused"], true, "{status}");

    send_bodies(&sqs, &queues["b"], &[order(2), refund(2)], None).await;
    send_bodies(&sqs, &queues["c"], &[order(3)], None).await;
    send_bodies(&sqs, &queues["d"], &[order(4)], None).await;
    eventually(
        Duration::from_secs(60),
        "the new config at work",
        || async {
            let bodies = handler.deliveries_by_body();
            (bodies.contains_key(&order(2)) && bodies.contains_key(&order(4))).then_some(())
        },
    )
    .await;
    sluice.settled("change", Duration::from_secs(2)).await;
    let bodies = handler.deliveries_by_body();
    assert!(
        !bodies.contains_key(&refund(2)),
        "change filters refunds now"
    );
    assert!(!bodies.contains_key(&order(3)), "gone no longer reads c");
    assert_eq!(queue_depth(&sqs, &queues["c"]).await, 1);
    assert_eq!(
        queue_depth(&sqs, &queues["b"]).await,
        0,
        "the refund filtered and deleted"
    );
    assert_eq!(
        bodies.get("slow-keep"),
        Some(&1),
        "keep's batch finished once"
    );
    assert!(bodies.values().all(|&n| n == 1), "{bodies:?}");
}
