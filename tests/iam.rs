//! The least-privilege IAM policies in `examples/ecs/` hold exactly the actions sluice calls
//! (issue 9). Each test runs one source kind through everything it does against moto — the
//! config fetched from S3, polling, acknowledging, retrying, dead-lettering — while moto records
//! the IAM action of every call whose User-Agent says `app/sluice` (the test's own calls are not
//! counted). The recorded set must equal the policy's.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(240);

fn policy_actions(file: &str) -> BTreeSet<String> {
    let path = workspace_root().join("examples/ecs").join(file);
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|statement| statement["Action"].as_array().unwrap().clone())
        .map(|action| action.as_str().unwrap().to_owned())
        .collect()
}

/// Stores `config` in S3 and starts sluice with `SLUICE_CONFIG=s3://configs/sluice.yaml`.
async fn start_from_s3(moto: &Moto, config: &str, extra_env: &[(String, String)]) -> Sluice {
    let s3 = moto.s3().await;
    s3.create_bucket().bucket("configs").send().await.unwrap();
    s3.put_object()
        .bucket("configs")
        .key("sluice.yaml")
        .body(any_port(config).into_bytes().into())
        .send()
        .await
        .unwrap();
    let mut env = moto_env(moto);
    env.push(("SLUICE_CONFIG".into(), "s3://configs/sluice.yaml".into()));
    env.extend(extra_env.iter().cloned());
    let mut command = std::process::Command::new(sluice_binary());
    command.arg("run");
    Sluice::start_command(command, tempfile::tempdir().unwrap(), &env)
}

async fn assert_policy_matches(moto: &Moto, policy: &str) {
    let allowed = policy_actions(policy);
    // Some calls come on their own schedule (lease syncs, checkpoint writes): wait until every
    // allowed action was called, or two minutes, then compare.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut called = moto.sluice_actions().await;
    while !allowed.is_subset(&called) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        called = moto.sluice_actions().await;
    }
    // Then until nothing new is called for a few lease syncs (1 s apart at most), so that a
    // call outside the policy made on its own schedule has time to show.
    let mut stable_since = std::time::Instant::now();
    while stable_since.elapsed() < Duration::from_secs(3) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = moto.sluice_actions().await;
        if now != called {
            called = now;
            stable_since = std::time::Instant::now();
        }
    }
    let missing: Vec<&String> = called.difference(&allowed).collect();
    let unused: Vec<&String> = allowed.difference(&called).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "{policy}: sluice called {missing:?} which the policy lacks; the policy allows {unused:?} which sluice never called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_policy_allows_exactly_what_an_sqs_mapping_calls() {
    let moto = Moto::start_recording_actions();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "orders", &[("VisibilityTimeout", "2")]).await;
    let dlq = create_queue(&sqs, "orders-dlq", &[]).await;
    // A body the SQS Extended Client stored in S3: fetched, and deleted after success.
    let s3 = moto.s3().await;
    s3.create_bucket()
        .bucket("order-payloads")
        .send()
        .await
        .unwrap();
    s3.put_object()
        .bucket("order-payloads")
        .key("big-order")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"a big order",
        ))
        .send()
        .await
        .unwrap();
    let handler = Handler::start(|_, event| {
        let body = event["Records"][0]["body"].as_str().unwrap_or_default();
        match body {
            "bad" => Reply::status(500, r#"{"errorType":"Bad","errorMessage":"bad"}"#),
            // Outlasts the 2 s visibility timeout: the heartbeat extends it.
            "slow" => Reply::ok("{}").after(Duration::from_secs(4)),
            _ => Reply::ok("{}"),
        }
    })
    .await;
    let config = format!(
        r#"version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  app:
    http: {{ url: "{url}" }}
mappings:
  - name: orders
    target: app
    source:
      sqs:
        queue_url: "{queue}"
        batch_size: 1
        wait_time: 1s
        large_payloads: {{ delete_after_success: true }}
    retry: {{ max_receive_count: 1 }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#,
        url = handler.url("/")
    );
    let _sluice = start_from_s3(&moto, &config, &[]).await;
    let pointer = r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"order-payloads","s3Key":"big-order"}]"#;
    send_bodies(
        &sqs,
        &queue,
        &["ok".into(), "slow".into(), "bad".into(), pointer.into()],
        None,
    )
    .await;
    eventually(WAIT, "the dead letter and an empty queue", || async {
        let done = queue_depth(&sqs, &dlq).await == 1
            && queue_depth(&sqs, &queue).await == 0
            && s3_objects(&s3, "order-payloads").await.is_empty();
        done.then_some(())
    })
    .await;
    assert_policy_matches(&moto, "iam-sqs.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamodb_stream_policy_allows_exactly_what_a_stream_mapping_calls() {
    let moto = Moto::start_recording_actions();
    let dynamodb = moto.dynamodb().await;
    let s3 = moto.s3().await;
    create_stream_table(&dynamodb, "orders").await;
    s3.create_bucket()
        .bucket("order-failures")
        .send()
        .await
        .unwrap();
    for i in 0..5u64 {
        let extra: &[(&str, &str)] = if i == 3 { &[("status", "poison")] } else { &[] };
        put_item(&dynamodb, "orders", &format!("order-{i}"), i, extra).await;
    }
    let handler = Handler::start(|_, event| {
        let poisoned = event["Records"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["dynamodb"]["NewImage"]["status"]["S"] == "poison");
        if poisoned {
            Reply::status(500, "{}")
        } else {
            Reply::json(json!({}))
        }
    })
    .await;
    let config = format!(
        r#"version: 1
admin: {{ listen: "{{admin}}" }}
checkpoints: {{ dynamodb: {{ table: sluice-leases, lease_duration: 3s }} }}
targets:
  app:
    http: {{ url: "{url}" }}
mappings:
  - name: changes
    target: app
    source:
      dynamodb_stream: {{ table: orders, starting_position: trim_horizon, batch_size: 10 }}
    retry:
      max_retry_attempts: 0
      bisect_on_error: true
      backoff: {{ initial: 10ms, max: 50ms }}
    on_failure:
      s3: {{ bucket: order-failures, prefix: sluice/ }}
"#,
        url = handler.url("/")
    );
    let _sluice = start_from_s3(&moto, &config, &[]).await;
    eventually(WAIT, "the dead letter in S3", || async {
        (!s3_objects(&s3, "order-failures").await.is_empty()).then_some(())
    })
    .await;
    assert_policy_matches(&moto, "iam-dynamodb-stream.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinesis_policy_allows_exactly_what_a_kinesis_mapping_calls() {
    let moto = Moto::start_recording_actions();
    let kinesis = moto.kinesis().await;
    let sqs = moto.sqs().await;
    create_kinesis_stream(&kinesis, "orders", 2).await;
    let dlq = create_queue(&sqs, "order-failures", &[]).await;
    for i in 0..6u64 {
        let data = json!({"n": i, "poison": i == 3});
        put_kinesis(&kinesis, "orders", &format!("order-{i}"), &data).await;
    }
    let handler = Handler::start(|_, event| {
        let poisoned = event["Records"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| kinesis_data(r)["poison"] == true);
        if poisoned {
            Reply::status(500, "{}")
        } else {
            Reply::json(json!({}))
        }
    })
    .await;
    let config = format!(
        r#"version: 1
admin: {{ listen: "{{admin}}" }}
checkpoints: {{ dynamodb: {{ table: sluice-leases, lease_duration: 3s }} }}
targets:
  app:
    http: {{ url: "{url}" }}
mappings:
  - name: orders
    target: app
    source:
      kinesis: {{ stream_name: orders, starting_position: trim_horizon, batch_size: 10 }}
    retry:
      max_retry_attempts: 0
      bisect_on_error: true
      backoff: {{ initial: 10ms, max: 50ms }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#,
        url = handler.url("/")
    );
    let _sluice = start_from_s3(&moto, &config, &[]).await;
    eventually(WAIT, "the dead letter", || async {
        (queue_depth(&sqs, &dlq).await == 1).then_some(())
    })
    .await;
    assert_policy_matches(&moto, "iam-kinesis.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_notifications_policy_allows_exactly_what_an_s3_mapping_calls() {
    let moto = Moto::start_recording_actions();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "uploads-notifications", &[]).await;
    let dlq = create_queue(&sqs, "uploads-dlq", &[]).await;
    let s3 = notifying_bucket(&moto, "uploads", &queue).await;
    s3.create_bucket()
        .bucket("upload-results")
        .send()
        .await
        .unwrap();
    for key in ["good.jpg", "bad.jpg"] {
        s3.put_object()
            .bucket("uploads")
            .key(key)
            .body(b"data".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let handler = Handler::start(|_, event| {
        if event["Records"][0]["s3"]["object"]["key"] == "bad.jpg" {
            Reply::status(500, r#"{"errorType":"Bad","errorMessage":"bad"}"#)
        } else {
            Reply::json(json!({ "ok": true }))
        }
    })
    .await;
    let config = format!(
        r#"version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  app:
    http: {{ url: "{url}" }}
mappings:
  - name: uploads
    target: app
    source:
      s3: {{ queue_url: "{queue}", wait_time: 1s }}
    retry: {{ max_retry_attempts: 1, delays: [1s] }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
    on_success:
      s3: {{ bucket: upload-results, prefix: sluice/ }}
"#,
        url = handler.url("/")
    );
    let _sluice = start_from_s3(&moto, &config, &[]).await;
    eventually(
        WAIT,
        "the failure in the DLQ and the success in S3",
        || async {
            let done = queue_depth(&sqs, &dlq).await == 1
                && !s3_objects(&s3, "upload-results").await.is_empty();
            done.then_some(())
        },
    )
    .await;
    assert_policy_matches(&moto, "iam-s3-notifications.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_policy_allows_exactly_what_a_kafka_mapping_calls() {
    let moto = Moto::start_recording_actions();
    let sqs = moto.sqs().await;
    let dlq = create_queue(&sqs, "clicks-dlq", &[]).await;
    let kafka = Kafka::start();
    let topic = Kafka::unique("clicks");
    kafka.create_topic(&topic, 1);
    kafka.produce(&topic, &[(0, None, json!({ "n": 1 }).to_string())]);
    let handler = Handler::start(|_, _| Reply::status(500, "{}")).await;
    let config = format!(
        r#"version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  app:
    http: {{ url: "{url}" }}
mappings:
  - name: clicks
    target: app
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: trim_horizon
    retry: {{ max_retry_attempts: 0 }}
    on_failure:
      sqs: {{ queue_url: "{dlq}" }}
"#,
        url = handler.url("/"),
        bootstrap = kafka.bootstrap(),
        group = Kafka::unique("sluice"),
    );
    let _sluice = start_from_s3(&moto, &config, &[]).await;
    eventually(WAIT, "the dead letter in SQS", || async {
        (queue_depth(&sqs, &dlq).await == 1).then_some(())
    })
    .await;
    assert_policy_matches(&moto, "iam-kafka.json").await;
}
