//! End-to-end: flow control between sluice and its target — the circuit breaker for a target that
//! goes away, adaptive concurrency for one whose capacity changes (README "Circuit breaker",
//! "Adaptive concurrency") — with the real `sluice` binary, moto's SQS or librdkafka's mock
//! cluster, and an HTTP handler in the test.

use serde_json::{Value, json};
use sluice_testkit::*;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The handler answers 503 (a service with no healthy instance behind its load balancer) while
/// `down` is set; otherwise it succeeds and notes the bodies it handled in `handled`.
async fn switchable_handler(
    down: Arc<AtomicBool>,
    handled: Arc<Mutex<HashSet<String>>>,
) -> Handler {
    Handler::start(move |_, event| {
        if down.load(Ordering::SeqCst) {
            return Reply::status(503, "no healthy upstream");
        }
        let bodies = event["Records"].as_array().into_iter().flatten();
        handled
            .lock()
            .unwrap()
            .extend(bodies.filter_map(|record| record["body"].as_str().map(str::to_owned)));
        Reply::json(json!({}))
    })
    .await
}

// Issue 20, item 2: a 30 s outage of the handler under load. With the breaker open, pollers stop
// receiving, so the queue's own redrive policy (maxReceiveCount 5) sends nothing to its
// dead-letter queue, only a few probe receives reach SQS, and every message is handled once the
// handler is back. Without the breaker the same outage costs a receive per poller per second
// (wait_time 1s) and redrives messages every 5 s visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_circuit_stops_receives_and_dead_letters_nothing() {
    let moto = Moto::start_counting();
    let sqs = moto.sqs().await;
    let dlq = create_queue(&sqs, "outage-dlq", &[]).await;
    let redrive = json!({
        "deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:outage-dlq",
        "maxReceiveCount": "5",
    })
    .to_string();
    let queue = create_queue(
        &sqs,
        "outage",
        &[("VisibilityTimeout", "5"), ("RedrivePolicy", &redrive)],
    )
    .await;
    let down = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let handler = switchable_handler(down.clone(), handled.clone()).await;
    let config = TestConfig::new(&handler.url("/events"))
        .target_options(
            ", circuit_breaker: { consecutive_failures: 3, open_for: 5s, max_open_for: 60s }",
        )
        .mappings(&format!(
            r#"
  - name: orders
    target: handler
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 5, wait_time: 1s, max_concurrency: 2 }}
"#
        ))
        .render();
    let sluice = Sluice::start(&config, &moto_env(&moto));

    let mut sent: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    send_bodies(&sqs, &queue, &sent, None).await;
    let missing = |sent: &[String]| {
        let handled = handled.lock().unwrap();
        sent.iter().filter(|body| !handled.contains(*body)).count()
    };
    eventually(
        Duration::from_secs(30),
        "the first messages handled",
        || {
            let done = missing(&sent) == 0;
            async move { done.then_some(()) }
        },
    )
    .await;

    // The outage: 30 s of 503s while messages keep arriving.
    down.store(true, Ordering::SeqCst);
    let outage_started = Instant::now();
    let mut receives_at_open = None;
    let mut saw_open = false;
    let mut batch = 0;
    while outage_started.elapsed() < Duration::from_secs(30) {
        let bodies: Vec<String> = (0..2).map(|i| format!("during-{batch}-{i}")).collect();
        batch += 1;
        send_bodies(&sqs, &queue, &bodies, None).await;
        sent.extend(bodies);
        if receives_at_open.is_none()
            && sluice
                .metric("sluice_target_circuit_open{target=\"handler\"}")
                .await
                == 1.0
        {
            receives_at_open = Some((
                moto.request_counts().await["ReceiveMessage"],
                outage_started.elapsed(),
            ));
            let (status, body) = sluice.get("/readyz").await;
            let readiness: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                readiness["targets"]["handler"]["circuit"], "open",
                "{readiness}"
            );
            assert_eq!(
                status, 200,
                "an open circuit is not a reason to replace the task: {readiness}"
            );
            saw_open = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let receives_at_end = moto.request_counts().await["ReceiveMessage"];
    assert!(saw_open, "the circuit opened during the outage");
    let (receives_at_open, opened_after) = receives_at_open.unwrap();
    let receives_while_open = receives_at_end - receives_at_open;
    eprintln!(
        "circuit opened {:.1} s into the outage; ReceiveMessage while open: {receives_while_open}",
        opened_after.as_secs_f64()
    );
    // Probes at about 5 s and 15 s after opening, each after at most one receive per poller.
    assert!(
        receives_while_open <= 8,
        "{receives_while_open} receives while the circuit was open"
    );

    // Back up: the next probe closes the circuit and everything is handled.
    down.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(90),
        "every message handled after the outage",
        || {
            let done = missing(&sent) == 0;
            async move { done.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        sluice
            .metric("sluice_target_circuit_open{target=\"handler\"}")
            .await,
        0.0
    );
    sluice.settled("orders", Duration::from_secs(3)).await;
    assert_eq!(queue_depth(&sqs, &dlq).await, 0, "nothing was redriven");
    assert_eq!(queue_depth(&sqs, &queue).await, 0, "every message deleted");
    let logs = sluice.logs();
    assert!(logs.contains("circuit open"), "{logs}");
    assert!(logs.contains("circuit closed"), "{logs}");
}

/// A mapping of `topic` (from its start, in batches of `batch_size`, no window) into the
/// `handler` target, with `extra` mapping keys.
fn kafka_mapping(kafka: &Kafka, name: &str, topic: &str, batch_size: usize, extra: &str) -> String {
    format!(
        r#"
  - name: {name}
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: trim_horizon
        batch_size: {batch_size}
        max_batching_window: 0s
{extra}"#,
        bootstrap = kafka.bootstrap(),
        group = Kafka::unique("sluice"),
    )
}

/// A handler with room for `capacity` calls at a time, each taking `CALL`; a call beyond that is
/// refused at once with 429, as a service sheds load. Counts what it accepted and refused.
struct Capacity {
    capacity: AtomicUsize,
    running: Mutex<VecDeque<Instant>>,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    /// The most calls running at once since it was last reset.
    most: AtomicUsize,
}

const CALL: Duration = Duration::from_millis(200);

impl Capacity {
    fn answer(&self) -> Reply {
        let mut running = self.running.lock().unwrap();
        let now = Instant::now();
        while running
            .front()
            .is_some_and(|started| now - *started >= CALL)
        {
            running.pop_front();
        }
        if running.len() >= self.capacity.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Reply::status(429, "over capacity");
        }
        running.push_back(now);
        self.most.fetch_max(running.len(), Ordering::SeqCst);
        self.accepted.fetch_add(1, Ordering::SeqCst);
        Reply::json(json!({})).after(CALL)
    }
}

// Issue 20, item 1: a Kafka backlog on 24 partitions into a handler whose capacity goes 4 -> 16
// -> 4. The adaptive limit follows it up and back down, and the handler's 429s stay rare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_follows_a_capacity_that_changes_and_429s_stay_rare() {
    let kafka = Kafka::start();
    let topic = Kafka::unique("adaptive");
    kafka.create_topic(&topic, 24);
    let records: Vec<(i32, Option<&str>, String)> = (0..24 * 600)
        .map(|i| (i % 24, None, json!({ "n": i }).to_string()))
        .collect();
    kafka.produce(&topic, &records);
    let capacity = Arc::new(Capacity {
        capacity: AtomicUsize::new(4),
        running: Mutex::new(VecDeque::new()),
        accepted: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let handler = {
        let capacity = capacity.clone();
        Handler::start(move |_, _| capacity.answer()).await
    };
    let config = TestConfig::new(&handler.url("/events"))
        .target_options(", max_concurrency: 64, adaptive_concurrency: { min: 1, max: 64 }")
        .mappings(&kafka_mapping(
            &kafka,
            "clicks",
            &topic,
            5,
            "    retry:\n      backoff: { initial: 50ms, max: 200ms }\n",
        ))
        .render();
    let sluice = Sluice::start(&config, &[]);
    eventually(Duration::from_secs(60), "the first calls", || {
        let started = capacity.accepted.load(Ordering::SeqCst) > 0;
        async move { started.then_some(()) }
    })
    .await;

    let limit = || sluice.metric("sluice_target_concurrency_limit{target=\"handler\"}");
    // Each phase lasts 12 s; the limit is read over its last 6 s, once the limit had time to move.
    let mut phases = Vec::new();
    for capacity_now in [4usize, 16, 4] {
        capacity.capacity.store(capacity_now, Ordering::SeqCst);
        let (accepted, refused) = (
            capacity.accepted.load(Ordering::SeqCst),
            capacity.refused.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        capacity.most.store(0, Ordering::SeqCst);
        let mut samples = Vec::new();
        for _ in 0..12 {
            samples.push(limit().await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        let accepted = capacity.accepted.load(Ordering::SeqCst) - accepted;
        let refused = capacity.refused.load(Ordering::SeqCst) - refused;
        let most = capacity.most.load(Ordering::SeqCst);
        eprintln!(
            "capacity {capacity_now}: limit median {median} (samples {samples:?}); {accepted} calls accepted, {refused} refused; at most {most} running at once"
        );
        phases.push((capacity_now, median, accepted, refused, most));
    }
    let (_, low, ..) = phases[0];
    let (_, high, _, _, most_high) = phases[1];
    let (_, low_again, ..) = phases[2];
    assert!(
        (2.0..=8.0).contains(&low),
        "capacity 4: limit {low}; {phases:?}"
    );
    assert!(high >= 11.0, "capacity 16: limit {high}; {phases:?}");
    // The handler saw the concurrency the limit allowed, not only the gauge moving.
    assert!(
        most_high >= 11,
        "capacity 16: at most {most_high} calls ran at once; {phases:?}"
    );
    assert!(
        (2.0..=8.0).contains(&low_again),
        "capacity 4 again: limit {low_again}; {phases:?}"
    );
    let accepted: usize = phases.iter().map(|p| p.2).sum();
    let refused: usize = phases.iter().map(|p| p.3).sum();
    assert!(
        refused * 20 < accepted,
        "429s are rare: {refused} refused against {accepted} accepted; {phases:?}"
    );
}

// Issue 20, item 3: a target's rate limit paces every mapping that uses it. 300 Kafka records on
// two topics (two mappings sharing the target) at 60 records per second with a burst of 30:
// they take at least 4.5 s, and no second sees more than rate + burst + one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_paces_the_records_of_every_mapping_using_the_target() {
    let kafka = Kafka::start();
    let topics = [Kafka::unique("paced-a"), Kafka::unique("paced-b")];
    for topic in &topics {
        kafka.create_topic(topic, 3);
        let records: Vec<(i32, Option<&str>, String)> = (0..150)
            .map(|i| (i % 3, None, json!({ "n": i }).to_string()))
            .collect();
        kafka.produce(topic, &records);
    }
    let arrivals = Arc::new(Mutex::new(Vec::<(Instant, usize)>::new()));
    let handler = {
        let arrivals = arrivals.clone();
        Handler::start(move |_, event| {
            let records = kafka_records(event).len();
            arrivals.lock().unwrap().push((Instant::now(), records));
            Reply::json(json!({}))
        })
        .await
    };
    let config = TestConfig::new(&handler.url("/events"))
        .target_options(", rate_limit: { records_per_second: 60, burst: 30 }")
        .mappings(
            &(kafka_mapping(&kafka, "a", &topics[0], 10, "")
                + &kafka_mapping(&kafka, "b", &topics[1], 10, "")),
        )
        .render();
    let _sluice = Sluice::start(&config, &[]);
    eventually(Duration::from_secs(60), "all 300 records handled", || {
        let handled: usize = arrivals.lock().unwrap().iter().map(|(_, n)| n).sum();
        async move { (handled >= 300).then_some(()) }
    })
    .await;
    let arrivals = arrivals.lock().unwrap().clone();
    let (first, last) = (arrivals[0].0, arrivals[arrivals.len() - 1].0);
    let took = last - first;
    let busiest = arrivals
        .iter()
        .map(|(start, _)| {
            arrivals
                .iter()
                .filter(|(at, _)| *at >= *start && *at < *start + Duration::from_secs(1))
                .map(|(_, n)| n)
                .sum::<usize>()
        })
        .max()
        .unwrap();
    eprintln!(
        "300 records in {:.2} s; the busiest second had {busiest}",
        took.as_secs_f64()
    );
    assert!(took >= Duration::from_millis(4_400), "took {took:?}");
    assert!(busiest <= 60 + 30 + 10, "{busiest} records in one second");
}
