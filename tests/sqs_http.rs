//! End-to-end: the real `sluice` binary, moto's SQS, and an HTTP handler in the test, checking
//! Lambda's SQS event source mapping semantics (semantics.md §3, §12, §13.1) as a user sees them.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn config(handler_url: &str, mapping: &str) -> String {
    format!(
        r#"
version: 1
shutdown_timeout: 10s
admin: {{ listen: "{{admin}}" }}
targets:
  handler:
    http: {{ url: "{handler_url}", timeout: 30s }}
mappings:
{mapping}
"#
    )
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
    let sluice = Sluice::start(
        &config(
            &handler.url("/events"),
            &format!(
                r#"
  - name: bulk
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 10, max_concurrency: 4 }}
"#
            ),
        ),
        &moto_env(&moto),
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
    assert!(record["eventSourceARN"].as_str().unwrap().ends_with(":bulk"));
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
