//! End-to-end: the foundation's SQS partial-failure scenario with every target kind (architecture.md
//! "Targets"): 20 orders, three of them poisoned; the handler reports the poisoned ones in
//! `batchItemFailures`; each is delivered 3 times, then dead-lettered with the handler's error,
//! and everything else is handled once and deleted.

use serde_json::Value;
use sluice_testkit::*;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

const POISONED: [&str; 3] = ["order-3-poison", "order-11-poison", "order-17-poison"];

struct Scenario {
    moto: Moto,
    sqs: aws_sdk_sqs::Client,
    queue: String,
    dlq: String,
}

async fn scenario() -> Scenario {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "orders", &[("VisibilityTimeout", "30")]).await;
    let dlq = create_queue(&sqs, "orders-dlq", &[]).await;
    let bodies: Vec<String> = (0..20)
        .map(|i| {
            let body = format!("order-{i}-poison");
            if POISONED.contains(&body.as_str()) {
                body
            } else {
                format!("order-{i}")
            }
        })
        .collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    Scenario {
        moto,
        sqs,
        queue,
        dlq,
    }
}

const MAPPING: &str = r#"
  - name: orders
    target: orders
    source:
      sqs: { queue_url: "${ORDERS_QUEUE_URL}", batch_size: 10, wait_time: 1s }
    report_batch_item_failures: true
    retry:
      max_receive_count: 3
      backoff: { initial: 100ms, max: 300ms, jitter: false }
    on_failure:
      sqs: { queue_url: "${ORDERS_DLQ_URL}" }
"#;

impl Scenario {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = moto_env(&self.moto);
        env.push(("ORDERS_QUEUE_URL".into(), self.queue.clone()));
        env.push(("ORDERS_DLQ_URL".into(), self.dlq.clone()));
        env
    }

    /// Waits for the outcome every target kind must produce; returns the dead letters' bodies.
    async fn assert_outcome(&self, sluice: &Sluice) {
        eventually(Duration::from_secs(240), "3 dead letters", || async {
            (queue_depth(&self.sqs, &self.dlq).await == 3).then_some(())
        })
        .await;
        eventually(
            Duration::from_secs(120),
            "the source queue empty",
            || async { (queue_depth(&self.sqs, &self.queue).await == 0).then_some(()) },
        )
        .await;
        let mut dead = HashSet::new();
        for message in receive_all(&self.sqs, &self.dlq, 60).await {
            let envelope: Value = serde_json::from_str(message.body().unwrap()).unwrap();
            assert_eq!(
                envelope["requestContext"]["condition"],
                "RetryAttemptsExhausted"
            );
            assert_eq!(envelope["requestContext"]["approximateInvokeCount"], 3);
            assert_eq!(envelope["sluice"]["error"]["type"], "OrderRejected");
            let body = envelope["sluice"]["records"][0]["body"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(
                envelope["sluice"]["error"]["message"],
                format!("cannot process {body}")
            );
            dead.insert(body);
        }
        let expected: HashSet<String> = POISONED.iter().map(|s| s.to_string()).collect();
        assert_eq!(dead, expected);
        // A delete that moto refuses (it sometimes calls a fresh receipt handle invalid under
        // load) means one more delivery, and so one more acknowledgement, by design.
        let failed_deletes = sluice
            .logs()
            .matches("delete failed; the message will be delivered again")
            .count();
        assert_eq!(
            sluice
                .metric(r#"sluice_records_acknowledged_total{mapping="orders"}"#)
                .await,
            17.0 + failed_deletes as f64
        );
    }
}

fn deliveries(log: &std::path::Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_failure_scenario_passes_with_a_command_target() {
    let scenario = scenario().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("deliveries.log");
    let handler = workspace_root().join("examples/command_handler.py");
    let config = format!(
        r#"
version: 1
shutdown_timeout: 10s
admin: {{ listen: "{{admin}}" }}
targets:
  orders:
    command:
      program: [python3, "{handler}"]
      timeout: 10s
      env: {{ DELIVERY_LOG: "{log}" }}
      max_concurrency: 4
mappings:
{MAPPING}"#,
        handler = handler.display(),
        log = log.display(),
    );
    let sluice = Sluice::start(&config, &scenario.env());
    scenario.assert_outcome(&sluice).await;
    let counts = deliveries(&log);
    assert_eq!(counts.len(), 20, "{counts:?}");
    for (body, count) in &counts {
        let expected = if POISONED.contains(&body.as_str()) {
            3
        } else {
            1
        };
        assert_eq!(*count, expected, "{body}");
    }
    assert!(
        sluice.logs().contains("rejecting order-3-poison"),
        "stderr lines are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_failure_scenario_passes_with_an_in_process_handler() {
    let scenario = scenario().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = scenario.env();
    env.push(("SLUICE_ADMIN".into(), "127.0.0.1:0".into()));
    env.push(("WAIT_TIME".into(), "1s".into()));
    env.push(("RETRY_INITIAL".into(), "100ms".into()));
    let mut command = Command::new(example_binary("in_process"));
    command.arg(workspace_root().join("examples/in-process.yaml"));
    let mut sluice = Sluice::start_command(command, dir, &env);
    scenario.assert_outcome(&sluice).await;
    assert!(sluice.logs().contains("orders handled"));
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sluice_binary_refuses_an_in_process_target_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(sluice_binary())
        .args(["run", "-c"])
        .arg(workspace_root().join("examples/in-process.yaml"))
        .env("ORDERS_QUEUE_URL", "http://127.0.0.1:1/1/orders")
        .env("ORDERS_DLQ_URL", "http://127.0.0.1:1/1/dlq")
        .env("SLUICE_ADMIN", "127.0.0.1:0")
        .env("AWS_REGION", "us-east-1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("target orders is in_process"), "{stderr}");
}

fn lambda_config(command: &str, working_dir: &str, once_dir: &std::path::Path) -> String {
    format!(
        r#"
version: 1
shutdown_timeout: 10s
admin: {{ listen: "{{admin}}" }}
targets:
  orders:
    lambda_runtime:
      command: {command}
      working_dir: "{working_dir}"
      handler: app.handler
      concurrency: 2
      timeout: 3s
      init_timeout: 20s
      env: {{ ONCE_DIR: "{once}" }}
mappings:
{MAPPING}"#,
        once = once_dir.display()
    )
}

// Runs examples/lambda-runtime.yaml as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_failure_scenario_passes_with_a_rust_lambda_function() {
    let scenario = scenario().await;
    let once = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = scenario.env();
    env.extend([
        ("SLUICE_ADMIN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "BOOTSTRAP".to_owned(),
            lambda_bootstrap().display().to_string(),
        ),
        ("ONCE_DIR".to_owned(), once.path().display().to_string()),
        ("WAIT_TIME".to_owned(), "1s".to_owned()),
        ("RETRY_INITIAL".to_owned(), "100ms".to_owned()),
    ]);
    let mut sluice = Sluice::start_file(
        &workspace_root().join("examples/lambda-runtime.yaml"),
        dir,
        &env,
    );
    scenario.assert_outcome(&sluice).await;
    let init = sluice
        .metric(r#"sluice_lambda_init_duration_seconds_count{target="orders"}"#)
        .await;
    assert!(init >= 4.0, "one cold start per worker: {init}");
    assert!(
        sluice
            .metric(r#"sluice_lambda_invoke_overhead_seconds_count{target="orders"}"#)
            .await
            >= 1.0
    );
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("sluice and its workers stop on SIGTERM");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_failure_scenario_passes_with_python_awslambdaric() {
    let scenario = scenario().await;
    let once = tempfile::tempdir().unwrap();
    let config = lambda_config(
        &format!(
            "[\"{}\", \"-m\", \"awslambdaric\", \"app.handler\"]",
            python().display()
        ),
        &workspace_root()
            .join("examples/lambda-python")
            .display()
            .to_string(),
        once.path(),
    );
    let sluice = Sluice::start(&config, &scenario.env());
    scenario.assert_outcome(&sluice).await;
}

// Issue "Handlers": a worker that sleeps past its timeout, or exits mid-invocation, is replaced;
// the batch is retried per policy and the pool returns to full size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_and_crashed_workers_are_replaced_and_their_batches_retried() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "work", &[("VisibilityTimeout", "30")]).await;
    let once = tempfile::tempdir().unwrap();
    send_bodies(
        &sqs,
        &queue,
        &[
            "job-1-sleep".to_owned(),
            "job-2-crash".to_owned(),
            "job-3".to_owned(),
        ],
        None,
    )
    .await;
    let config = format!(
        r#"
version: 1
shutdown_timeout: 10s
admin: {{ listen: "{{admin}}" }}
targets:
  work:
    lambda_runtime:
      command: ["{bootstrap}"]
      concurrency: 2
      timeout: 2s
      env: {{ ONCE_DIR: "{once}" }}
mappings:
  - name: work
    target: work
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 1, wait_time: 1s }}
    retry:
      backoff: {{ initial: 100ms, max: 200ms, jitter: false }}
"#,
        bootstrap = lambda_bootstrap().display(),
        once = once.path().display(),
    );
    let sluice = Sluice::start(&config, &moto_env(&moto));
    eventually(Duration::from_secs(240), "every job handled", || async {
        (queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;
    let restarts = |reason: &'static str| {
        let sluice = &sluice;
        async move {
            sluice
                .metric(&format!(
                    r#"sluice_lambda_worker_restarts_total{{target="work",reason="{reason}"}}"#
                ))
                .await
        }
    };
    assert_eq!(restarts("timeout").await, 1.0);
    assert_eq!(restarts("exited").await, 1.0);
    eventually(
        Duration::from_secs(120),
        "the pool back at full size",
        || async {
            (sluice
                .metric(r#"sluice_lambda_workers_ready{target="work"}"#)
                .await
                == 2.0)
                .then_some(())
        },
    )
    .await;
    let outcomes = |outcome: &'static str| {
        let sluice = &sluice;
        async move {
            sluice
                .metric(&format!(
                    r#"sluice_invocation_outcomes_total{{mapping="work",outcome="{outcome}"}}"#
                ))
                .await
        }
    };
    assert_eq!(outcomes("timeout").await, 1.0);
    assert_eq!(outcomes("function_error").await, 1.0, "the crash");
    assert_eq!(outcomes("success").await, 3.0);
    let logs = sluice.logs();
    assert!(logs.contains("invocation timed out; killing and replacing the worker"));
    assert!(logs.contains("worker exited during an invocation; replacing it"));
}

// Issue "Handlers", concurrency: a target's limit is shared by the mappings using it, and sources
// stop receiving while it is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_sharing_a_target_never_exceed_its_concurrency() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let first = create_queue(&sqs, "first", &[]).await;
    let second = create_queue(&sqs, "second", &[]).await;
    let bodies: Vec<String> = (0..6).map(|i| format!("job-{i}")).collect();
    send_bodies(&sqs, &first, &bodies, None).await;
    send_bodies(&sqs, &second, &bodies, None).await;
    let handler =
        Handler::start(|_, _| Reply::json(serde_json::json!({})).after(Duration::from_millis(200)))
            .await;
    let mapping = |name: &str, queue: &str| {
        format!(
            "  - name: {name}\n    target: shared\n    source:\n      sqs: {{ queue_url: \"{queue}\", batch_size: 1, max_concurrency: 5, pollers: 1, wait_time: 1s }}\n"
        )
    };
    let config = format!(
        "version: 1\nadmin: {{ listen: \"{{admin}}\" }}\ntargets:\n  shared:\n    http: {{ url: \"{}\", max_concurrency: 1 }}\nmappings:\n{}{}",
        handler.url("/shared"),
        mapping("first", &first),
        mapping("second", &second)
    );
    let _sluice = Sluice::start(&config, &moto_env(&moto));
    let mut most_in_flight = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while handler.completed().len() < 12 {
        assert!(std::time::Instant::now() < deadline, "not all jobs handled");
        let mut hidden = 0;
        for queue in [&first, &second] {
            let attributes = sqs
                .get_queue_attributes()
                .queue_url(queue)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                )
                .send()
                .await
                .unwrap();
            hidden += attributes
                .attributes()
                .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0);
        }
        most_in_flight = most_in_flight.max(hidden);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut starts: Vec<std::time::Instant> = handler.received().iter().map(|r| r.at).collect();
    starts.sort();
    for pair in starts.windows(2) {
        assert!(
            pair[1].duration_since(pair[0]) >= Duration::from_millis(180),
            "two invocations overlapped on a target limited to 1"
        );
    }
    // One invocation, plus a message whose delete has not landed yet, plus one more when a
    // handoff from one mapping to the other falls between the two queues' reads (they are read
    // one after the other, so one slot can be counted in both): without the target's limit the
    // two mappings (max_concurrency 5 each) would hold up to 10.
    assert!(
        most_in_flight <= 3,
        "sources received {most_in_flight} messages at once for a target limited to 1"
    );
}

// Issue "Handlers": init failures are reported and restarts back off; invocations meanwhile are
// an unavailable target, which uses no retry attempt. awslambdaric itself reports the missing
// handler to /runtime/init/error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_fails_its_init_is_reported_and_restarted_with_backoff() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "broken", &[("VisibilityTimeout", "30")]).await;
    send_bodies(&sqs, &queue, &["job".to_owned()], None).await;
    let config = format!(
        r#"
version: 1
shutdown_timeout: 2s
admin: {{ listen: "{{admin}}" }}
targets:
  broken:
    lambda_runtime:
      command: ["{python}", "-m", "awslambdaric", "app.no_such_handler"]
      working_dir: "{dir}"
      timeout: 1s
mappings:
  - name: broken
    target: broken
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 1, wait_time: 1s }}
    retry:
      max_receive_count: 1
      backoff: {{ initial: 100ms, max: 200ms }}
    on_failure:
      sqs: {{ queue_url: "{queue}-dlq" }}
"#,
        python = python().display(),
        dir = workspace_root().join("examples/lambda-python").display(),
    );
    let sluice = Sluice::start(&config, &moto_env(&moto));
    eventually(
        Duration::from_secs(120),
        "init failures counted",
        || async {
            let failures = sluice
                .metric(
                    r#"sluice_lambda_worker_restarts_total{target="broken",reason="init_error"}"#,
                )
                .await;
            (failures >= 2.0).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "an unavailable outcome",
        || async {
            let unavailable = sluice
                .metric(
                    r#"sluice_invocation_outcomes_total{mapping="broken",outcome="unavailable"}"#,
                )
                .await;
            (unavailable >= 1.0).then_some(())
        },
    )
    .await;
    assert!(
        sluice
            .logs()
            .contains("worker init failed; restarting with backoff")
    );
    assert!(
        sluice.logs().contains("no_such_handler"),
        "the init error is in the log"
    );
    assert_eq!(
        sluice
            .metric(r#"sluice_records_dead_lettered_total{mapping="broken",condition="RetryAttemptsExhausted"}"#)
            .await,
        0.0,
        "the handler never ran, so no attempt was used"
    );
}
