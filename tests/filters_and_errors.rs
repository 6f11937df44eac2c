//! End-to-end: event filtering (semantics.md §7) and error classes (issue "Event filtering and
//! error classes") with the real binary against moto.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::time::Duration;

fn config(handler_url: &str, state_dir: &std::path::Path, targets: &str, mapping: &str) -> String {
    TestConfig::new(handler_url)
        .state_dir(state_dir)
        .target_options(targets)
        .mappings(mapping)
        .render()
}

// semantics.md §7: SQS filters on the body, JSON or text; what no pattern matches is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_sqs_messages_are_deleted_without_an_invocation() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "filtered", &[]).await;
    let mut bodies: Vec<String> = (0..4)
        .map(|i| json!({"type": "order", "n": i}).to_string())
        .collect();
    bodies.extend((0..3).map(|i| json!({"type": "refund", "n": i}).to_string()));
    bodies.extend(["order as plain text".to_owned(), "12345".to_owned()]);
    send_bodies(&sqs, &queue, &bodies, None).await;
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let state = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &config(
            &handler.url("/orders"),
            state.path(),
            "",
            &format!(
                r#"
  - name: filtered
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", wait_time: 1s }}
    filters:
      - body: {{ type: [order] }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    eventually(
        Duration::from_secs(120),
        "the queue to be empty",
        || async { (queue_depth(&sqs, &queue).await == 0).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "5 records counted as filtered",
        || async {
            (sluice
                .metric(r#"sluice_records_filtered_total{mapping="filtered"}"#)
                .await
                == 5.0)
                .then_some(())
        },
    )
    .await;
    let handled: Vec<Value> = handler
        .records()
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(handled.len(), 4, "{handled:?}");
    assert!(handled.iter().all(|body| body["type"] == "order"));
}

// semantics.md §7 "Streams": the iterator moves past filtered records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_stream_records_advance_the_checkpoint() {
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    create_stream_table(&dynamodb, "tasks").await;
    for i in 0..5 {
        put_item(
            &dynamodb,
            "tasks",
            &format!("keep{i}"),
            0,
            &[("status", "keep")],
        )
        .await;
    }
    for i in 0..5 {
        put_item(
            &dynamodb,
            "tasks",
            &format!("drop{i}"),
            0,
            &[("status", "drop")],
        )
        .await;
    }
    let handler = Handler::start(|_, _| Reply::json(json!({}))).await;
    let state = tempfile::tempdir().unwrap();
    let text = config(
        &handler.url("/tasks"),
        state.path(),
        "",
        r#"
  - name: tasks
    target: handler
    source:
      dynamodb_stream: { table: tasks, starting_position: trim_horizon }
    filters:
      - dynamodb: { NewImage: { status: { S: [keep] } } }
"#,
    );
    let mut first = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(120),
        "5 handled and 5 filtered",
        || async {
            let filtered = first
                .metric(r#"sluice_records_filtered_total{mapping="tasks"}"#)
                .await;
            (handler.records().len() == 5 && filtered == 5.0).then_some(())
        },
    )
    .await;
    assert!(
        handler
            .records()
            .iter()
            .all(|r| key_of(r).starts_with("keep"))
    );
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(30)).unwrap().success());

    put_item(&dynamodb, "tasks", "keep-late", 0, &[("status", "keep")]).await;
    let second = Sluice::start(&text, &moto_env(&moto));
    eventually(
        Duration::from_secs(120),
        "the late record handled",
        || async { (handler.records().len() == 6).then_some(()) },
    )
    .await;
    second.settled("tasks", Duration::from_secs(1)).await;
    assert_eq!(
        second
            .metric(r#"sluice_records_filtered_total{mapping="tasks"}"#)
            .await,
        0.0,
        "the restart resumed after the filtered records, so it did not read them again"
    );
    assert_eq!(key_of(&handler.records()[5]), "keep-late");
}

// Error classes: a listed errorType, or a status the HTTP target lists, is dead-lettered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_errors_are_dead_lettered_on_the_first_receive() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "work", &[("VisibilityTimeout", "1")]).await;
    let dlq = create_queue(&sqs, "work-dlq", &[]).await;
    send_bodies(
        &sqs,
        &queue,
        &[
            "fine".to_owned(),
            "invalid".to_owned(),
            "unprocessable".to_owned(),
        ],
        None,
    )
    .await;
    let handler =
        Handler::start(
            |_, event| match event["Records"][0]["body"].as_str().unwrap_or_default() {
                "invalid" => Reply::status(
                    500,
                    r#"{"errorType":"ValidationError","errorMessage":"no sku"}"#,
                ),
                "unprocessable" => Reply::status(422, "missing field"),
                _ => Reply::json(json!({})),
            },
        )
        .await;
    let state = tempfile::tempdir().unwrap();
    let _sluice = Sluice::start(
        &config(
            &handler.url("/work"),
            state.path(),
            ", non_retryable_statuses: [422]",
            &format!(
                r#"
  - name: work
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 1, wait_time: 1s }}
    retry:
      non_retryable_errors: [ValidationError]
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#
            ),
        ),
        &moto_env(&moto),
    );
    let dead = eventually(Duration::from_secs(120), "two dead letters", || async {
        let messages = receive_all(&sqs, &dlq, 60).await;
        (messages.len() == 2).then_some(messages)
    })
    .await;
    eventually(
        Duration::from_secs(120),
        "the queue to be empty",
        || async { (queue_depth(&sqs, &queue).await == 0).then_some(()) },
    )
    .await;
    let mut errors: Vec<(String, String, u64)> = dead
        .iter()
        .map(|m| {
            let envelope: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            assert_eq!(envelope["requestContext"]["condition"], "NonRetryableError");
            (
                envelope["sluice"]["records"][0]["body"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                envelope["sluice"]["error"]["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                envelope["requestContext"]["approximateInvokeCount"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        vec![
            ("invalid".to_owned(), "ValidationError".to_owned(), 1),
            ("unprocessable".to_owned(), "HTTP 422".to_owned(), 1),
        ]
    );
    let deliveries = handler.deliveries_by_body();
    assert_eq!(deliveries["invalid"], 1, "never retried");
    assert_eq!(deliveries["unprocessable"], 1, "never retried");
}
