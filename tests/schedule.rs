//! The `schedule` source end to end: the real binary fires `at` ticks (second precision, so the
//! tests need not wait for whole minutes) with EventBridge's Scheduled Event or a constant
//! input, retries a failing tick under the asynchronous policy and dead-letters it, fires a tick
//! left running by a killed instance again under the same event id, catches up missed ticks only
//! when asked, and with the DynamoDB lease table fires each tick on one instance only.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `at(...)` for `seconds` from now, in UTC (whole seconds), and that time in RFC 3339.
fn at_in(seconds: u64) -> (String, String) {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    let output = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{at}"), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .expect("date");
    let local = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    (format!("at({local})"), format!("{local}Z"))
}

fn config(handler_url: &str, state_dir: &std::path::Path, top: &str, mappings: &str) -> String {
    TestConfig::new(handler_url)
        .state_dir(state_dir)
        .top(top)
        .mappings(mappings)
        .render()
}

fn calls(handler: &Handler, path: &str) -> Vec<Value> {
    handler
        .received()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| r.event)
        .collect()
}

// Issue 23 item 2: a tick is EventBridge's Scheduled Event (or the constant input); a failing
// tick is retried after the policy's delay and then dead-lettered with its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_fire_on_time_and_a_failing_tick_is_retried_then_dead_lettered() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let dlq = create_queue(&sqs, "ticks-dlq", &[]).await;
    let handler = Handler::start(|path, _| {
        if path == "/failing" {
            Reply::status(
                500,
                json!({"errorType": "JobFailed", "errorMessage": "no"}).to_string(),
            )
        } else {
            Reply::ok("")
        }
    })
    .await;
    let (at, time) = at_in(6);
    let state = tempfile::tempdir().unwrap();
    let mappings = format!(
        r#"  - name: nightly
    target: handler
    source:
      schedule: {{ expression: "{at}" }}
  - name: failing
    target: failing
    source:
      schedule: {{ expression: "{at}", input: {{ job: compact, tables: [a, b] }} }}
    retry: {{ max_retry_attempts: 1, delays: [1s] }}
    on_failure: {{ sqs: {{ queue_url: "{dlq}" }} }}
"#
    );
    let top = format!(
        "targets:\n  failing:\n    http: {{ url: \"{}\" }}\n",
        handler.url("/failing")
    );
    let text = config(&handler.url("/nightly"), state.path(), "", &mappings).replacen(
        "targets:\n",
        &top,
        1,
    );
    let sluice = Sluice::start(&text, &moto_env(&moto));
    let dead = eventually(
        Duration::from_secs(60),
        "the failing tick's dead letter",
        || async {
            let messages = receive_all(&sqs, &dlq, 30).await;
            (!messages.is_empty()).then_some(messages)
        },
    )
    .await;
    let nightly = calls(&handler, "/nightly");
    assert_eq!(nightly.len(), 1, "an at() schedule fires once: {nightly:?}");
    let event = &nightly[0];
    assert_eq!(event["detail-type"], "Scheduled Event");
    assert_eq!(event["source"], "aws.events");
    assert_eq!(event["time"], time);
    assert_eq!(event["detail"], json!({}));
    assert!(
        event["resources"][0]
            .as_str()
            .unwrap()
            .ends_with(":rule/nightly"),
        "{event}"
    );
    assert_eq!(event["id"].as_str().unwrap().len(), 36, "a UUID: {event}");

    let failing = calls(&handler, "/failing");
    assert_eq!(
        failing.len(),
        2,
        "the first attempt and one retry: {failing:?}"
    );
    assert!(
        failing
            .iter()
            .all(|e| *e == json!({"job": "compact", "tables": ["a", "b"]}))
    );
    assert_eq!(dead.len(), 1);
    let envelope: Value = serde_json::from_str(dead[0].body().unwrap()).unwrap();
    assert_eq!(envelope["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(envelope["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(envelope["requestPayload"]["job"], "compact");
    assert_eq!(envelope["responsePayload"]["errorType"], "JobFailed");
    assert_eq!(envelope["sluice"]["source"]["kind"], "schedule");
    sluice.settled("nightly", Duration::from_secs(2)).await;
    assert_eq!(calls(&handler, "/nightly").len(), 1, "nothing more fires");
}

// A tick whose retry was pending when its instance was killed is fired again, under the same
// event id, by the next start; a tick missed while nothing ran fires only with catch_up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_left_running_is_fired_again_and_missed_ticks_fire_only_with_catch_up() {
    let handler = Handler::start(|path, _| {
        // The retried tick always fails (its retry waits 5 minutes); the others succeed.
        if path == "/retried" {
            Reply::status(500, json!({"errorType": "Busy"}).to_string())
        } else {
            Reply::ok("")
        }
    })
    .await;
    let (soon, _) = at_in(5);
    let (later, later_time) = at_in(10);
    let state = tempfile::tempdir().unwrap();
    let mappings = format!(
        r#"  - name: retried
    target: handler
    source:
      schedule: {{ expression: "{soon}" }}
    retry: {{ max_retry_attempts: 2, delays: [5m] }}
  - name: caught
    target: caught
    source:
      schedule: {{ expression: "{later}", catch_up: true }}
  - name: skipped
    target: skipped
    source:
      schedule: {{ expression: "{later}" }}
"#
    );
    let targets = format!(
        "targets:\n  caught:\n    http: {{ url: \"{}\" }}\n  skipped:\n    http: {{ url: \"{}\" }}\n",
        handler.url("/caught"),
        handler.url("/skipped")
    );
    let text = config(&handler.url("/retried"), state.path(), "", &mappings).replacen(
        "targets:\n",
        &targets,
        1,
    );
    let first = Sluice::start(&text, &[]);
    eventually(
        Duration::from_secs(30),
        "the first attempt of the retried tick",
        || async { (!calls(&handler, "/retried").is_empty()).then_some(()) },
    )
    .await;
    // Its retry waits 5 minutes; the instance dies meanwhile, before the later tick.
    first.signal("KILL");
    drop(first);
    let first_id = calls(&handler, "/retried")[0]["id"].clone();
    // Past the later tick, a new instance on the same state.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        calls(&handler, "/caught").is_empty(),
        "the later tick came while nothing ran"
    );
    let second = Sluice::start(&text, &[]);
    eventually(
        Duration::from_secs(30),
        "the retried tick and the caught-up one",
        || async {
            (calls(&handler, "/retried").len() >= 2 && !calls(&handler, "/caught").is_empty())
                .then_some(())
        },
    )
    .await;
    second.settled("skipped", Duration::from_secs(2)).await;
    let retried = calls(&handler, "/retried");
    assert_eq!(retried.len(), 2, "{retried:?}");
    assert_eq!(retried[1]["id"], first_id, "the same event, fired again");
    let caught = calls(&handler, "/caught");
    assert_eq!(caught.len(), 1);
    assert_eq!(caught[0]["time"], later_time);
    assert!(
        calls(&handler, "/skipped").is_empty(),
        "without catch_up a tick missed while nothing ran is skipped"
    );
    let logs = second.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"skipped\"") && l.contains("were skipped")),
        "the skipped mapping ran and said so:\n{logs}"
    );
}

// With the lease table, one instance holds the schedule: a tick fires once, not once per
// instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lease_table_one_instance_fires_each_tick() {
    let moto = Moto::start();
    let handler = Handler::start(|_, _| Reply::ok("")).await;
    let (at, _) = at_in(8);
    let (after_kill, _) = at_in(16);
    let mappings = format!(
        r#"  - name: report
    target: handler
    source:
      schedule: {{ expression: "{at}" }}
  - name: later
    target: later
    source:
      schedule: {{ expression: "{after_kill}" }}
"#
    );
    let top = "checkpoints: { dynamodb: { table: sluice-leases, lease_duration: 3s } }";
    let later_target = |instance: &str| {
        format!(
            "targets:\n  later:\n    http: {{ url: \"{}\" }}\n",
            handler.url(&format!("/later-{instance}"))
        )
    };
    let state_a = tempfile::tempdir().unwrap();
    let state_b = tempfile::tempdir().unwrap();
    let a = Sluice::start(
        &config(&handler.url("/a"), state_a.path(), top, &mappings).replacen(
            "targets:\n",
            &later_target("a"),
            1,
        ),
        &moto_env(&moto),
    );
    let b = Sluice::start(
        &config(&handler.url("/b"), state_b.path(), top, &mappings).replacen(
            "targets:\n",
            &later_target("b"),
            1,
        ),
        &moto_env(&moto),
    );
    eventually(Duration::from_secs(60), "the tick", || async {
        (!handler.received().is_empty()).then_some(())
    })
    .await;
    a.settled("report", Duration::from_secs(3)).await;
    b.settled("report", Duration::from_secs(1)).await;
    let paths = |handler: &Handler| -> Vec<String> {
        handler.received().iter().map(|r| r.path.clone()).collect()
    };
    assert_eq!(
        paths(&handler).len(),
        1,
        "one instance fired: {:?}",
        paths(&handler)
    );
    // The holder of `later` dies before its tick; the other instance fires it.
    let holds_later = |sluice: &Sluice| {
        sluice
            .logs()
            .lines()
            .any(|l| l.contains("holding the schedule") && l.contains("later"))
    };
    let (holder, survivor, survivor_path) = if holds_later(&a) {
        (a, b, "/later-b")
    } else {
        (b, a, "/later-a")
    };
    holder.signal("KILL");
    drop(holder);
    eventually(Duration::from_secs(60), "the later tick", || async {
        (paths(&handler).len() >= 2).then_some(())
    })
    .await;
    survivor.settled("later", Duration::from_secs(2)).await;
    let fired = paths(&handler);
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[1], survivor_path, "{fired:?}");
}
