//! End-to-end: S3 event notifications through SQS with the asynchronous invocation policy
//! (semantics.md §5, §12, §13.5), the real binary against moto's S3 and SQS.

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from_static(b"data"))
        .send()
        .await
        .unwrap();
}

fn key_of(event: &Value) -> String {
    sluice_sources::s3::decode_key(event["Records"][0]["s3"]["object"]["key"].as_str().unwrap())
}

// semantics.md §5; issue "S3 notification mappings": awkward keys, filters on decoded keys, and
// the test event never reaching the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_objects_with_awkward_keys_are_each_one_invocation_of_lambdas_s3_event() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "uploads", &[]).await;
    let s3 = notifying_bucket(&moto, "uploads", &queue).await;
    let wanted: Vec<String> = (0..50)
        .map(|i| format!("incoming/photo {i} +plus ü✓.txt"))
        .collect();
    for key in &wanted {
        put(&s3, "uploads", key).await;
    }
    for i in 0..5 {
        put(&s3, "uploads", &format!("other/photo {i}.txt")).await;
        put(&s3, "uploads", &format!("incoming/photo {i}.bin")).await;
    }
    let handler = Handler::start(|_, _| Reply::json(json!({"thumbnail": "ok"}))).await;
    let sluice = Sluice::start(
        &format!(
            r#"
version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  thumbnailer:
    http: {{ url: "{}" }}
mappings:
  - name: uploads
    target: thumbnailer
    source:
      s3:
        queue_url: "{queue}"
        events: ["s3:ObjectCreated:*"]
        prefix: incoming/
        suffix: ".txt"
        wait_time: 1s
    filters:
      - eventName: [{{ prefix: "ObjectCreated:" }}]
        s3: {{ object: {{ size: [{{ numeric: [">", 0] }}] }} }}
"#,
            handler.url("/thumbnail")
        ),
        &moto_env(&moto),
    );
    eventually(Duration::from_secs(240), "the queue drained", || async {
        (handler.received().len() >= 50 && queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;
    sluice.settled("uploads", Duration::from_secs(1)).await;
    let events: Vec<Value> = handler.received().iter().map(|r| r.event.clone()).collect();
    assert_eq!(
        events.len(),
        50,
        "one invocation per object, none for the test event"
    );
    let mut keys: Vec<String> = events.iter().map(key_of).collect();
    keys.sort();
    let mut expected = wanted.clone();
    expected.sort();
    assert_eq!(keys, expected, "keys decode to exactly what was put");
    for event in &events {
        let records = event["Records"].as_array().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["eventSource"], "aws:s3");
        assert!(
            records[0]["eventName"]
                .as_str()
                .unwrap()
                .starts_with("ObjectCreated:")
        );
        assert_eq!(records[0]["s3"]["bucket"]["name"], "uploads");
        let raw = records[0]["s3"]["object"]["key"].as_str().unwrap();
        assert!(
            !raw.contains(' '),
            "the key stays form-URL-encoded as S3 sent it: {raw}"
        );
    }
    assert!(
        sluice
            .metric(r#"sluice_records_filtered_total{mapping="uploads"}"#)
            .await
            >= 11.0,
        "the test event and 10 filtered objects"
    );
}

// semantics.md §5 and §13.5: 1 + max_retry_attempts invocations with the configured delays, then
// the async destination record with the original requestPayload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_gets_each_event_three_times_then_the_dlq_gets_it() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "failing", &[]).await;
    let dlq = create_queue(&sqs, "failing-dlq", &[]).await;
    let receipts = create_queue(&sqs, "receipts", &[]).await;
    let s3 = notifying_bucket(&moto, "failing", &queue).await;
    for key in ["a.txt", "b c.txt", "ok.txt"] {
        put(&s3, "failing", key).await;
    }
    let handler = Handler::start(|_, event| {
        if event["Records"][0]["s3"]["object"]["key"] == "ok.txt" {
            Reply::json(json!({"done": true}))
        } else {
            Reply::status(
                500,
                r#"{"errorType":"ImageError","errorMessage":"cannot decode"}"#,
            )
        }
    })
    .await;
    let _sluice = Sluice::start(
        &format!(
            r#"
version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  thumbnailer:
    http: {{ url: "{}" }}
mappings:
  - name: failing
    target: thumbnailer
    source:
      s3: {{ queue_url: "{queue}", wait_time: 1s }}
    retry:
      max_retry_attempts: 2
      delays: [300ms, 1500ms]
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
    on_success:
      sqs: {{ queue_url: "{receipts}" }}
"#,
            handler.url("/thumbnail")
        ),
        &moto_env(&moto),
    );
    eventually(Duration::from_secs(240), "two dead letters", || async {
        let depth = queue_depth(&sqs, &dlq).await;
        (depth == 2).then_some(())
    })
    .await;
    let mut by_key: HashMap<String, Vec<Instant>> = HashMap::new();
    // Hardening issue, item 22: every attempt of one event carries one request id, the id of
    // its destination record too.
    let mut ids_by_key: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for request in handler.received() {
        by_key
            .entry(key_of(&request.event))
            .or_default()
            .push(request.at);
        ids_by_key
            .entry(key_of(&request.event))
            .or_default()
            .insert(
                request.headers["x-sluice-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
    }
    for (key, ids) in &ids_by_key {
        assert_eq!(
            ids.len(),
            1,
            "{key}: one request id across attempts: {ids:?}"
        );
    }
    for key in ["a.txt", "b c.txt"] {
        let times = &by_key[key];
        assert_eq!(times.len(), 3, "{key}: 1 + max_retry_attempts invocations");
        assert!(
            times[1] - times[0] >= Duration::from_millis(300),
            "{key}: first delay"
        );
        assert!(
            times[2] - times[1] >= Duration::from_millis(1500),
            "{key}: second delay"
        );
    }
    assert_eq!(by_key["ok.txt"].len(), 1);
    for message in receive_all(&sqs, &dlq, 60).await {
        let record: Value = serde_json::from_str(message.body().unwrap()).unwrap();
        assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
        assert!(
            record["requestContext"]["functionArn"]
                .as_str()
                .unwrap()
                .ends_with(":function:thumbnailer:$LATEST")
        );
        assert_eq!(record["responseContext"]["functionError"], "Unhandled");
        assert_eq!(record["responsePayload"]["errorType"], "ImageError");
        assert_eq!(
            record["responsePayload"]["requestId"],
            record["requestContext"]["requestId"]
        );
        let key = key_of(&record["requestPayload"]);
        assert!(key == "a.txt" || key == "b c.txt", "{key}");
        assert!(
            ids_by_key[&key].contains(record["requestContext"]["requestId"].as_str().unwrap()),
            "{key}: the destination record carries the attempts' request id"
        );
        assert_eq!(record["sluice"]["error"]["type"], "ImageError");
    }
    let successes = receive_all(&sqs, &receipts, 60).await;
    assert_eq!(successes.len(), 1);
    let success: Value = serde_json::from_str(successes[0].body().unwrap()).unwrap();
    assert_eq!(success["requestContext"]["condition"], "Success");
    assert_eq!(success["responsePayload"], json!({"done": true}));
    assert!(success["responseContext"].get("functionError").is_none());
    eventually(
        Duration::from_secs(120),
        "the source queue empty",
        || async { (queue_depth(&sqs, &queue).await == 0).then_some(()) },
    )
    .await;
}

// semantics.md §13.6 "Async": when the next retry would land past max_event_age, stop early with
// EventAgeExceeded and the real number of attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_would_outlive_max_event_age_gets_event_age_exceeded() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "aging", &[]).await;
    let dlq = create_queue(&sqs, "aging-dlq", &[]).await;
    let s3 = notifying_bucket(&moto, "aging", &queue).await;
    put(&s3, "aging", "slow.txt").await;
    let handler = Handler::start(|_, _| Reply::status(500, "down")).await;
    let _sluice = Sluice::start(
        &format!(
            r#"
version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  thumbnailer:
    http: {{ url: "{}" }}
mappings:
  - name: aging
    target: thumbnailer
    source:
      s3: {{ queue_url: "{queue}", wait_time: 1s }}
    retry:
      max_retry_attempts: 2
      max_event_age: 60s
      delays: [300ms, 2m]
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#,
            handler.url("/thumbnail")
        ),
        &moto_env(&moto),
    );
    let dead = eventually(Duration::from_secs(120), "the dead letter", || async {
        let messages = receive_all(&sqs, &dlq, 60).await;
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    let record: Value = serde_json::from_str(dead[0].body().unwrap()).unwrap();
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(
        handler.received().len(),
        2,
        "the 2-minute retry would pass the 60s age"
    );
}
