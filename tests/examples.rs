//! Every file in `examples/` runs: each config validates, and the README's first command
//! (`scripts/demo`, which runs `examples/sqs-http.yaml` with `examples/handler.py` against moto)
//! succeeds end to end, and `examples/dynamodb-http.yaml` runs against moto's DynamoDB Streams.

use serde_json::json;
use sluice_testkit::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn every_example_config_validates() {
    let examples = workspace_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
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
    let output = Command::new(workspace_root().join("scripts/demo"))
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
            Reply {
                status: 500,
                ..Reply::ok(r#"{"errorType":"OrderRejected","errorMessage":"poison"}"#)
            }
        } else {
            Reply::json(json!({"batchItemFailures": []}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut env = moto_env(&moto);
    env.extend([
        ("HANDLER_URL".to_owned(), handler.url("/changes")),
        ("SLUICE_ADMIN".to_owned(), admin.clone()),
        (
            "SLUICE_STATE_DIR".to_owned(),
            dir.path().join("state").display().to_string(),
        ),
        ("RETRY_INITIAL".to_owned(), "10ms".to_owned()),
    ]);
    let mut sluice = Sluice::start_file(
        &workspace_root().join("examples/dynamodb-http.yaml"),
        admin.parse().unwrap(),
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
