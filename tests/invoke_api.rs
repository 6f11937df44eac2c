//! End-to-end: Lambda's Invoke API in front of targets, called by the AWS SDK for Rust with an
//! endpoint override (semantics.md §5, §6). The first two tests run examples/local.yaml, which
//! needs no AWS at all.

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use serde_json::{Value, json};
use sluice_testkit::*;
use std::path::Path;
use std::time::Duration;

async fn lambda_client(endpoint: &str) -> aws_sdk_lambda::Client {
    aws_sdk_lambda::Client::new(&sdk_config(endpoint).await)
}

struct Local {
    sluice: Sluice,
    client: aws_sdk_lambda::Client,
    greeted: std::path::PathBuf,
}

/// Starts examples/local.yaml with its state in `state`.
async fn start_local(state: &Path, extra: &[(&str, &str)]) -> Local {
    let dir = tempfile::tempdir().unwrap();
    let greeted = state.join("greeted.log");
    let mut env: Vec<(String, String)> = vec![
        ("SLUICE_ADMIN".into(), "127.0.0.1:0".into()),
        ("SLUICE_INVOKE_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "SLUICE_STATE_DIR".into(),
            state.join("state").display().to_string(),
        ),
        ("PYTHON".into(), python().display().to_string()),
        (
            "GREETER".into(),
            workspace_root()
                .join("examples/greeter.py")
                .display()
                .to_string(),
        ),
        ("GREETED_LOG".into(), greeted.display().to_string()),
        ("RETRY_DELAY".into(), "200ms".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let sluice = Sluice::start_file(&workspace_root().join("examples/local.yaml"), dir, &env);
    let invoke = sluice.invoke_api().await;
    let client = lambda_client(&format!("http://{invoke}")).await;
    Local {
        sluice,
        client,
        greeted,
    }
}

fn greeted(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

// semantics.md §6: RequestResponse is one attempt; a function error is 200 with
// X-Amz-Function-Error and the error document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_sdk_invokes_functions_synchronously_and_asynchronously() {
    let state = tempfile::tempdir().unwrap();
    let local = start_local(state.path(), &[]).await;
    let ok = local
        .client
        .invoke()
        .function_name("hello")
        .payload(Blob::new(json!({"name": "Ada"}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status_code(), 200);
    assert_eq!(ok.function_error(), None);
    assert_eq!(ok.executed_version(), Some("$LATEST"));
    let body: Value = serde_json::from_slice(ok.payload().unwrap().as_ref()).unwrap();
    assert_eq!(body, json!({"greeting": "Hello, Ada!"}));

    let failed = local
        .client
        .invoke()
        .function_name("hello")
        .payload(Blob::new("{}"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status_code(), 200);
    assert_eq!(failed.function_error(), Some("Unhandled"));
    let error: Value = serde_json::from_slice(failed.payload().unwrap().as_ref()).unwrap();
    assert_eq!(error["errorType"], "MissingName");

    let missing = local
        .client
        .invoke()
        .function_name("nope")
        .payload(Blob::new("{}"))
        .send()
        .await
        .unwrap_err();
    assert!(
        missing
            .into_service_error()
            .is_resource_not_found_exception(),
        "unknown functions answer like Lambda"
    );

    let dry = local
        .client
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::DryRun)
        .payload(Blob::new("{}"))
        .send()
        .await
        .unwrap();
    assert_eq!(dry.status_code(), 204);

    let accepted = local
        .client
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(json!({"name": "Grace"}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status_code(), 202);
    eventually(Duration::from_secs(120), "the event handled", || async {
        greeted(&local.greeted)
            .contains(&"Grace".to_owned())
            .then_some(())
    })
    .await;
    drop(local.sluice);
}

// Issue "Invoke API": an Event accepted with 202 is stored first, so a SIGKILL right after the
// 202 loses nothing: after the restart it is handled exactly once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_before_a_sigkill_is_handled_after_the_restart() {
    let state = tempfile::tempdir().unwrap();
    let first = start_local(state.path(), &[("GREETER_DELAY", "2")]).await;
    let accepted = first
        .client
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(json!({"name": "Linus"}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status_code(), 202);
    first.sluice.signal("KILL");
    drop(first.sluice);

    let second = start_local(state.path(), &[]).await;
    eventually(
        Duration::from_secs(120),
        "the event handled after the restart",
        || async { second.sluice.logs().contains("event handled").then_some(()) },
    )
    .await;
    second.sluice.settled("hello", Duration::from_secs(1)).await;
    assert_eq!(
        second.sluice.logs().matches("event handled").count(),
        1,
        "handled exactly once after the restart"
    );
    let names = greeted(&second.greeted);
    assert!(names.iter().all(|n| n == "Linus") && !names.is_empty() && names.len() <= 2);
}

/// A `hello` function (examples/greeter.py, which fails without a name) with `async_policy` and
/// `on_failure` to the SQS queue `dlq`, with one `Event` call `{"nobody": true}` accepted.
struct FailingFunction {
    sluice: Sluice,
    _state: tempfile::TempDir,
}

async fn failing_function(moto: &Moto, dlq: &str, async_policy: &str) -> FailingFunction {
    let state = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
version: 1
state_dir: "{state}"
admin: {{ listen: "{{admin}}" }}
targets:
  greeter:
    command: {{ program: ["{python}", "{greeter}"], timeout: 10s }}
invoke_api:
  listen: "{{invoke}}"
  functions:
    hello:
      target: greeter
      async: {async_policy}
      on_failure:
        sqs: {{ queue_url: "{dlq}" }}
"#,
        state = state.path().display(),
        python = python().display(),
        greeter = workspace_root().join("examples/greeter.py").display(),
    );
    let sluice = Sluice::start(&config, &moto_env(moto));
    let invoke = sluice.invoke_api().await;
    let client = lambda_client(&format!("http://{invoke}")).await;
    let accepted = client
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(r#"{"nobody": true}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status_code(), 202);
    FailingFunction {
        sluice,
        _state: state,
    }
}

/// The first destination record in `dlq`.
async fn destination_record(sqs: &aws_sdk_sqs::Client, dlq: &str) -> Value {
    let dead = eventually(
        Duration::from_secs(120),
        "the destination record",
        || async {
            let messages = receive_all(sqs, dlq, 60).await;
            (!messages.is_empty()).then_some(messages)
        },
    )
    .await;
    serde_json::from_str(dead[0].body().unwrap()).unwrap()
}

// semantics.md §5 and §13.5 through the Invoke API: retries, then the destination record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_events_are_retried_then_sent_to_on_failure() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let dlq = create_queue(&sqs, "events-dlq", &[]).await;
    let _function =
        failing_function(&moto, &dlq, "{ max_retry_attempts: 1, delays: [200ms] }").await;
    let record = destination_record(&sqs, &dlq).await;
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(record["requestPayload"], json!({"nobody": true}));
    assert_eq!(record["responsePayload"]["errorType"], "MissingName");
    assert_eq!(record["sluice"]["source"]["kind"], "invoke");
}

// Issue 17: an Invoke API function's destination failing shows on /readyz as a mapping's failing
// acknowledgements do, and clears once a record is stored; the event is kept meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_function_destination_fails_readyz_until_a_record_is_stored() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    // The destination queue's URL, then the queue gone: stores fail until it is back.
    let dlq = create_queue(&sqs, "gone-dlq", &[]).await;
    sqs.delete_queue().queue_url(&dlq).send().await.unwrap();
    let function = failing_function(&moto, &dlq, "{ max_retry_attempts: 0 }").await;
    let sluice = &function.sluice;
    let failing = eventually(
        Duration::from_secs(60),
        "/readyz naming the destination",
        || async {
            let (status, body) = sluice.get("/readyz").await;
            let report: Value = serde_json::from_str(&body).ok()?;
            let entry = &report["functions"]["hello"];
            (status == 503 && entry["status"] == "failing").then(|| entry.clone())
        },
    )
    .await;
    let error = failing["acknowledgement_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("RetriesExhausted") && error.contains(dlq.as_str()),
        "{failing}"
    );
    create_queue(&sqs, "gone-dlq", &[]).await;
    let record = destination_record(&sqs, &dlq).await;
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    let ready = eventually(Duration::from_secs(30), "/readyz ready again", || async {
        let (status, body) = sluice.get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    let report: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(report["functions"]["hello"]["status"], "ready", "{report}");
}

/// An Invoke API with `hello` on an HTTP handler and `invoke_api.event_queue` on `queue`; its
/// state in a directory of its own, as a new ECS task's would be.
fn queued_config(handler_url: &str, queue: &str, dlq: &str, state: &Path) -> String {
    format!(
        r#"
version: 1
state_dir: "{state}"
shutdown_timeout: 2s
admin: {{ listen: "{{admin}}" }}
targets:
  handler:
    http: {{ url: "{handler_url}", timeout: 30s }}
invoke_api:
  listen: "{{invoke}}"
  event_queue: {{ sqs: {{ queue_url: "{queue}" }} }}
  functions:
    hello:
      target: handler
      async: {{ max_retry_attempts: 1, delays: [1s] }}
      on_failure:
        sqs: {{ queue_url: "{dlq}" }}
"#,
        state = state.display(),
    )
}

// Issue 20, item 8: with invoke_api.event_queue an accepted Event lives in SQS, not in the task.
// The task that accepted it is killed (SIGKILL) while the handler runs it; a new task with
// storage of its own (ECS replaced the task) handles it, with the request id the caller got, and
// a failing event still ends in on_failure after its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_in_the_sqs_event_queue_outlives_the_task_that_accepted_it() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(
        &sqs,
        "events",
        &[("VisibilityTimeout", "2"), ("MaximumMessageSize", "4096")],
    )
    .await;
    let dlq = create_queue(&sqs, "events-dlq", &[]).await;
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let handler = Handler::start({
        let slow = slow.clone();
        move |_, event| {
            if event["fail"] == true {
                return Reply::status(500, r#"{"errorType":"Refused","errorMessage":"no"}"#);
            }
            if slow.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::json(json!({})).after(Duration::from_secs(30))
            } else {
                Reply::json(json!({}))
            }
        }
    })
    .await;
    let first_state = tempfile::tempdir().unwrap();
    let first = Sluice::start(
        &queued_config(&handler.url("/hello"), &queue, &dlq, first_state.path()),
        &moto_env(&moto),
    );
    let client = lambda_client(&format!("http://{}", first.invoke_api().await)).await;
    let accepted = client
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(json!({"name": "Ada"}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status_code(), 202);
    let request_id = aws_sdk_lambda::operation::RequestId::request_id(&accepted)
        .expect("a request id")
        .to_owned();
    eventually(
        Duration::from_secs(60),
        "the first task running it",
        || async { (!handler.received().is_empty()).then_some(()) },
    )
    .await;
    first.signal("KILL");
    drop(first);
    drop(first_state);

    slow.store(false, std::sync::atomic::Ordering::SeqCst);
    let second_state = tempfile::tempdir().unwrap();
    let second = Sluice::start(
        &queued_config(&handler.url("/hello"), &queue, &dlq, second_state.path()),
        &moto_env(&moto),
    );
    eventually(
        Duration::from_secs(120),
        "the event handled by the new task",
        || async { second.logs().contains("event handled").then_some(()) },
    )
    .await;
    let calls = handler.received();
    assert!(calls.len() >= 2, "run by both tasks");
    for call in &calls {
        assert_eq!(call.event, json!({"name": "Ada"}));
        assert_eq!(
            call.headers["x-sluice-request-id"].to_str().unwrap(),
            request_id,
            "every attempt carries the caller's request id"
        );
    }
    eventually(Duration::from_secs(30), "the message deleted", || async {
        (queue_depth(&sqs, &queue).await == 0).then_some(())
    })
    .await;

    // A failing event: one retry after 1 s, then its record in on_failure; the message goes.
    let client = lambda_client(&format!("http://{}", second.invoke_api().await)).await;
    let accepted = client
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(json!({"fail": true}).to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status_code(), 202);
    let record = destination_record(&sqs, &dlq).await;
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(record["requestPayload"], json!({"fail": true}));
    assert_eq!(record["sluice"]["source"]["kind"], "invoke");
    eventually(
        Duration::from_secs(30),
        "the failed message deleted",
        || async { (queue_depth(&sqs, &queue).await == 0).then_some(()) },
    )
    .await;
    let (status, ready) = second.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        ready["mappings"]["invoke_api.event_queue"]["status"],
        "ready"
    );

    // Over the queue's MaximumMessageSize: refused with 413, not accepted and lost.
    let refused = client
        .invoke()
        .function_name("hello")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(json!({"big": "x".repeat(8192)}).to_string()))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(refused.is_request_too_large_exception(), "{refused:?}");
}
