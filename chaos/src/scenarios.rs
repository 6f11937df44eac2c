//! The scenarios: each starts what it needs (moto, the mock Kafka cluster, a handler, sluice),
//! runs load while it injects its fault, waits for the records to drain, and reports figures
//! with the bounds they must keep.

use crate::daemon::Daemon;
use crate::handler::Handler;
use crate::ledger::{Ledger, Tally};
use crate::load::{self, Bodies};
use crate::proxy::{Fault, FaultProxy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_testkit::{Kafka, Moto, aws_env, create_queue, queue_depth};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub struct Settings {
    pub rounds: u32,
    pub seed: u64,
    pub quick: bool,
    pub sluice: PathBuf,
    pub work: PathBuf,
}

impl Settings {
    /// Records per second of steady load.
    fn rate(&self) -> u64 {
        100
    }

    /// Enough records to keep load running through every round (about 2 s per round).
    fn records(&self) -> u64 {
        self.rate() * 2 * u64::from(self.rounds.max(1)) + self.rate()
    }

    fn outage(&self) -> Duration {
        if self.quick {
            Duration::from_secs(4)
        } else {
            Duration::from_secs(15)
        }
    }

    /// An instance of sluice named `name` under this run's work directory.
    fn daemon(
        &self,
        name: &str,
        config: &str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Daemon> {
        Daemon::new(&self.sluice, &self.work, name, config, env)
    }

    fn rng(&self, scenario: &str) -> StdRng {
        // Each scenario has its own stream, so `--only` reproduces the same schedule.
        let salt = scenario
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        StdRng::seed_from_u64(self.seed ^ salt)
    }
}

/// The figures of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub name: &'static str,
    /// Faults injected (kills, membership changes, outage phases).
    pub faults: u32,
    pub tally: Tally,
    pub duplicate_bound: u64,
    pub bound_why: String,
    /// Order violations, where the source has an order.
    pub ordered: bool,
    /// Worst recovery, and what it is measured as.
    pub recovery: Option<Duration>,
    pub recovery_bound: Option<Duration>,
    pub recovery_what: &'static str,
    pub notes: Vec<String>,
    pub broken: Vec<String>,
}

impl Report {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    /// Checks every bound; what is broken is listed.
    fn check(mut self) -> Self {
        let t = &self.tally;
        if t.lost > 0 {
            self.broken.push(format!("{} records lost", t.lost));
        }
        if t.duplicated > self.duplicate_bound {
            self.broken.push(format!(
                "{} duplicates, over the bound of {}",
                t.duplicated, self.duplicate_bound
            ));
        }
        if self.ordered && t.order_violations > 0 {
            self.broken.push(format!(
                "{} records handled out of order",
                t.order_violations
            ));
        }
        if t.unknown > 0 {
            self.broken
                .push(format!("{} handled records were never sent", t.unknown));
        }
        if let (Some(recovery), Some(bound)) = (self.recovery, self.recovery_bound)
            && recovery > bound
        {
            self.broken.push(format!(
                "recovery took {:.1} s, over the bound of {:.1} s",
                recovery.as_secs_f64(),
                bound.as_secs_f64()
            ));
        }
        if t.sent == 0 {
            self.broken.push("no record was sent".into());
        }
        self
    }
}

pub const NAMES: &[&str] = &[
    "sqs-kill",
    "sqs-fifo-kill",
    "s3-kill",
    "invoke-event-kill",
    "dynamodb-kill",
    "dynamodb-leases-kill",
    "kafka-kill",
    "kafka-rebalance-storm",
    "aws-outage",
    "handler-outage",
    "dead-letter-outage",
];

pub async fn run(name: &str, settings: &Settings) -> anyhow::Result<Report> {
    match name {
        "sqs-kill" => sqs_kill(settings, false).await,
        "sqs-fifo-kill" => sqs_kill(settings, true).await,
        "s3-kill" => s3_kill(settings).await,
        "invoke-event-kill" => invoke_event_kill(settings).await,
        "dynamodb-kill" => dynamodb_kill(settings, false).await,
        "dynamodb-leases-kill" => dynamodb_kill(settings, true).await,
        "kafka-kill" => kafka_kill(settings).await,
        "kafka-rebalance-storm" => kafka_rebalance_storm(settings).await,
        "aws-outage" => aws_outage(settings).await,
        "handler-outage" => handler_outage(settings).await,
        "dead-letter-outage" => dead_letter_outage(settings).await,
        other => anyhow::bail!("no scenario named {other:?}; the scenarios are {NAMES:?}"),
    }
}

const HEADER: &str = r#"version: 1
state_dir: "{state}"
shutdown_timeout: 10s
admin: { listen: "{admin}", stall_after: 3s }
"#;

fn http_target(url: &str, extra: &str) -> String {
    format!(
        "targets:\n  fn:\n    http: {{ url: \"{url}\", timeout: 10s, max_concurrency: 16{extra} }}\n"
    )
}

/// Starts every instance and waits until each is ready.
async fn start_ready(daemons: &mut [Daemon]) -> anyhow::Result<()> {
    for daemon in daemons.iter_mut() {
        daemon.start()?;
    }
    for daemon in daemons.iter() {
        daemon.wait_ready(Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// How a kill scenario injects its faults and waits for the records.
struct Kills {
    rounds: u32,
    gap_seconds: std::ops::Range<f64>,
    drain: Duration,
    settle: Duration,
}

impl Kills {
    /// Kills 0.5–3.5 s apart, a minute to drain, then `settle`.
    fn quick(rounds: u32, settle: Duration) -> Self {
        Self {
            rounds,
            gap_seconds: 0.5..3.5,
            drain: Duration::from_secs(60),
            settle,
        }
    }
}

/// The shape every kill scenario shares: kills while `producer` runs, the records drained, the
/// instances stopped. The report has the faults, the tally and the worst recovery; the caller
/// adds its bounds.
async fn kill_phase(
    name: &'static str,
    daemons: &mut [Daemon],
    handler: &Handler,
    producer: tokio::task::JoinHandle<()>,
    kills: Kills,
    rng: &mut StdRng,
) -> anyhow::Result<(Report, Vec<Instant>)> {
    let instants = kill_rounds_apart(daemons, kills.rounds, rng, kills.gap_seconds).await?;
    producer.await?;
    drain(&handler.ledger, kills.drain, kills.settle).await;
    let mut report = Report::new(name);
    stop_all(daemons, &mut report);
    report.faults = instants.len() as u32;
    report.tally = handler.ledger.tally();
    report.recovery = worst_recovery(&handler.ledger, &instants);
    report.recovery_what = "kill → next first-time delivery";
    Ok((report, instants))
}

/// SIGKILLs one of `daemons` at random moments, `gap_seconds` apart, `rounds` times, restarting
/// it each time. Returns the kill instants.
async fn kill_rounds_apart(
    daemons: &mut [Daemon],
    rounds: u32,
    rng: &mut StdRng,
    gap_seconds: std::ops::Range<f64>,
) -> anyhow::Result<Vec<Instant>> {
    let mut kills = Vec::new();
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_secs_f64(
            rng.random_range(gap_seconds.clone()),
        ))
        .await;
        let which = rng.random_range(0..daemons.len());
        kills.push(Instant::now());
        daemons[which].kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
        daemons[which].start()?;
    }
    Ok(kills)
}

/// Waits until every sent record was handled, or `timeout`; then `settle` more, so that late
/// redeliveries (a killed instance's messages coming back after their visibility timeout) are
/// counted as the duplicates they are.
async fn drain(ledger: &Ledger, timeout: Duration, settle: Duration) {
    let deadline = Instant::now() + timeout;
    while ledger.missing() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(settle).await;
}

/// Long enough for a message a dead instance held to come back: twice the visibility timeout.
const QUEUE_SETTLE: Duration = Duration::from_secs(10);
/// Sources that deliver again at once (streams, Kafka, the Invoke API's state file).
const SETTLE: Duration = Duration::from_secs(2);

/// A queue that still holds messages at the end lost nothing yet, but broke the run.
async fn check_queue_empty(report: &mut Report, sqs: &aws_sdk_sqs::Client, queue_url: &str) {
    let depth = queue_depth(sqs, queue_url).await;
    report.notes.push(format!("queue left: {depth} messages"));
    if depth > 0 {
        report
            .broken
            .push(format!("{depth} messages still in the queue at the end"));
    }
}

/// The worst time from a kill to the next record handled for the first time.
fn worst_recovery(ledger: &Ledger, kills: &[Instant]) -> Option<Duration> {
    kills
        .iter()
        .filter_map(|kill| ledger.first_new_after(*kill).map(|t| t - *kill))
        .max()
}

/// Stops every daemon and breaks the run on a daemon that did not exit cleanly or that panicked
/// at any time (every scenario ends here).
fn stop_all(daemons: &mut [Daemon], report: &mut Report) {
    for daemon in daemons {
        if !daemon.terminate(Duration::from_secs(20)) {
            report
                .broken
                .push(format!("{} did not exit cleanly on SIGTERM", daemon.name));
        }
        let panics = daemon.panics();
        if let Some(first) = panics.first() {
            report.broken.push(format!(
                "{} panicked {} times; the first: {first}",
                daemon.name,
                panics.len()
            ));
        }
    }
}

// === SQS and FIFO ===

const SQS_BATCH: u64 = 10;
const SQS_CONCURRENCY: u64 = 4;
const SQS_VISIBILITY: &str = "4";

fn sqs_mapping(queue_url: &str, extra: &str) -> String {
    format!(
        "mappings:\n  - name: chaos\n    target: fn\n    source:\n      sqs: {{ queue_url: \"{queue_url}\", batch_size: {SQS_BATCH}, max_concurrency: {SQS_CONCURRENCY}, wait_time: 2s }}\n    report_batch_item_failures: true\n{extra}"
    )
}

async fn sqs_kill(settings: &Settings, fifo: bool) -> anyhow::Result<Report> {
    let name = if fifo { "sqs-fifo-kill" } else { "sqs-kill" };
    let mut rng = settings.rng(name);
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = if fifo { "chaos.fifo" } else { "chaos" };
    let queue_url = create_queue(&sqs, queue, &[("VisibilityTimeout", SQS_VISIBILITY)]).await;
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(20, Ordering::Relaxed);
    let path = if fifo { "/fifo" } else { "/sqs" };
    let config = format!(
        "{HEADER}{}{}",
        http_target(&handler.url(path), ""),
        sqs_mapping(&queue_url, "")
    );
    let mut daemons = vec![settings.daemon(name, &config, aws_env(&moto.endpoint()))?];
    start_ready(&mut daemons).await?;
    let bodies = if fifo {
        Bodies::Fifo { groups: 8 }
    } else {
        Bodies::Plain
    };
    let producer = load::sqs(
        sqs.clone(),
        queue_url.clone(),
        bodies,
        handler.ledger.clone(),
        settings.records(),
        settings.rate(),
    );
    let kills = Kills::quick(settings.rounds, QUEUE_SETTLE);
    let (mut report, kills) =
        kill_phase(name, &mut daemons, &handler, producer, kills, &mut rng).await?;
    // A poller takes its batch's slot before it receives, and a receive never asks for more
    // than the batch has room for: at most max_concurrency batches are out of the queue.
    report.duplicate_bound = kills.len() as u64 * SQS_CONCURRENCY * SQS_BATCH;
    report.bound_why = format!(
        "per kill, the messages received and not yet deleted: {SQS_CONCURRENCY} batches (max_concurrency) × {SQS_BATCH}"
    );
    report.ordered = fifo;
    report.recovery_bound = Some(Duration::from_secs(10));
    check_queue_empty(&mut report, &sqs, &queue_url).await;
    Ok(report.check())
}

// === S3 notifications ===

async fn s3_kill(settings: &Settings) -> anyhow::Result<Report> {
    let name = "s3-kill";
    let mut rng = settings.rng(name);
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue_url = create_queue(&sqs, "uploads", &[("VisibilityTimeout", SQS_VISIBILITY)]).await;
    let s3 = sluice_testkit::notifying_bucket(&moto, "uploads", &queue_url).await;
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(20, Ordering::Relaxed);
    let config = format!(
        "{HEADER}{}mappings:\n  - name: chaos\n    target: fn\n    source:\n      s3: {{ queue_url: \"{queue_url}\", max_concurrency: {SQS_CONCURRENCY}, wait_time: 2s }}\n",
        http_target(&handler.url("/s3"), "")
    );
    let mut daemons = vec![settings.daemon(name, &config, aws_env(&moto.endpoint()))?];
    start_ready(&mut daemons).await?;
    // S3 puts through moto are slower than SQS sends; half the rate keeps the schedule.
    let producer = load::s3(
        s3,
        "uploads".into(),
        handler.ledger.clone(),
        settings.records() / 2,
        settings.rate() / 2,
    );
    let kills = Kills::quick(settings.rounds, QUEUE_SETTLE);
    let (mut report, kills) =
        kill_phase(name, &mut daemons, &handler, producer, kills, &mut rng).await?;
    check_queue_empty(&mut report, &sqs, &queue_url).await;
    report.duplicate_bound = kills.len() as u64 * (SQS_CONCURRENCY + SQS_BATCH);
    report.bound_why = format!(
        "per kill, the notifications handled or received and not yet deleted: {SQS_CONCURRENCY} events in flight + one received batch of {SQS_BATCH}"
    );
    report.recovery_bound = Some(Duration::from_secs(10));
    Ok(report.check())
}

// === Invoke API Event ===

async fn invoke_event_kill(settings: &Settings) -> anyhow::Result<Report> {
    let name = "invoke-event-kill";
    let mut rng = settings.rng(name);
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(20, Ordering::Relaxed);
    let listen = format!("127.0.0.1:{}", crate::daemon::free_port()?);
    let config = format!(
        "{HEADER}{}invoke_api:\n  listen: \"{listen}\"\n  functions:\n    f: {{ target: fn }}\n",
        http_target(&handler.url("/event"), "")
    );
    let mut daemons = vec![settings.daemon(name, &config, aws_env("http://127.0.0.1:9"))?];
    start_ready(&mut daemons).await?;
    let url = format!("http://{listen}/2015-03-31/functions/f/invocations");
    let producer = load::invoke_events(
        url,
        handler.ledger.clone(),
        settings.records() / 2,
        settings.rate() / 2,
    );
    let kills = Kills::quick(settings.rounds, SETTLE);
    let (mut report, kills) =
        kill_phase(name, &mut daemons, &handler, producer, kills, &mut rng).await?;
    let concurrency = 16;
    report.duplicate_bound = kills.len() as u64 * concurrency;
    report.bound_why = format!(
        "per kill, the events running (at most the target's max_concurrency, {concurrency}); accepted (202) events only"
    );
    report.recovery_bound = Some(Duration::from_secs(10));
    Ok(report.check())
}

// === DynamoDB Streams ===

const STREAM_BATCH: u64 = 20;
const STREAM_LANES: u64 = 2;
const LEASE_DURATION_SECS: u64 = 3;

async fn dynamodb_kill(settings: &Settings, leases: bool) -> anyhow::Result<Report> {
    let name = if leases {
        "dynamodb-leases-kill"
    } else {
        "dynamodb-kill"
    };
    let mut rng = settings.rng(name);
    let moto = Moto::start();
    let dynamodb = moto.dynamodb().await;
    sluice_testkit::create_stream_table(&dynamodb, "orders").await;
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(20, Ordering::Relaxed);
    let checkpoints = if leases {
        format!(
            "checkpoints: {{ dynamodb: {{ table: chaos-leases, lease_duration: {LEASE_DURATION_SECS}s }} }}\n"
        )
    } else {
        String::new()
    };
    let config = format!(
        "{HEADER}{checkpoints}{}mappings:\n  - name: chaos\n    target: fn\n    source:\n      dynamodb_stream: {{ table: orders, starting_position: trim_horizon, batch_size: {STREAM_BATCH}, parallelization_factor: {STREAM_LANES}, discovery_interval: 1s }}\n    report_batch_item_failures: true\n",
        http_target(&handler.url("/ddb"), "")
    );
    let instances = if leases { 2 } else { 1 };
    let mut daemons = Vec::new();
    for i in 0..instances {
        let daemon = settings.daemon(&format!("{name}-{i}"), &config, aws_env(&moto.endpoint()))?;
        daemons.push(daemon);
    }
    start_ready(&mut daemons).await?;
    let producer = load::dynamodb(
        dynamodb,
        "orders".into(),
        16,
        handler.ledger.clone(),
        settings.records() / 2,
        settings.rate() / 2,
    );
    let kills = Kills::quick(settings.rounds, SETTLE);
    let (mut report, kills) =
        kill_phase(name, &mut daemons, &handler, producer, kills, &mut rng).await?;
    // moto gives a table's stream one shard.
    report.duplicate_bound = kills.len() as u64 * STREAM_LANES * STREAM_BATCH;
    report.bound_why = format!(
        "per kill, the batches past the stored checkpoint: {STREAM_LANES} lanes × {STREAM_BATCH} records (one shard)"
    );
    report.ordered = true;
    report.recovery_bound = Some(if leases {
        // A killed holder's lease is taken over after lease_duration plus two syncs.
        Duration::from_secs(LEASE_DURATION_SECS * 3 / 2 + 6)
    } else {
        Duration::from_secs(10)
    });
    Ok(report.check())
}

// === Kafka ===

const KAFKA_PARTITIONS: i32 = 4;
/// `session.timeout.ms` of the Kafka scenarios' members.
const KAFKA_SESSION_SECS: u64 = 6;
const KAFKA_BATCH: u64 = 20;

fn kafka_config(handler: &Handler, bootstrap: &str, topic: &str, group: &str) -> String {
    format!(
        "{HEADER}{}mappings:\n  - name: chaos\n    target: fn\n    source:\n      kafka:\n        bootstrap_servers: \"{bootstrap}\"\n        topics: [\"{topic}\"]\n        group_id: \"{group}\"\n        starting_position: trim_horizon\n        batch_size: {KAFKA_BATCH}\n        max_batching_window: 100ms\n        properties: {{ session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\" }}\n    report_batch_item_failures: true\n",
        http_target(&handler.url("/kafka"), "")
    )
}

async fn kafka_kill(settings: &Settings) -> anyhow::Result<Report> {
    let name = "kafka-kill";
    let mut rng = settings.rng(name);
    let kafka = Kafka::start();
    let topic = Kafka::unique("chaos");
    kafka.create_topic(&topic, KAFKA_PARTITIONS);
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(20, Ordering::Relaxed);
    let config = kafka_config(&handler, kafka.bootstrap(), &topic, &Kafka::unique("group"));
    let mut daemons = Vec::new();
    for i in 0..2 {
        let daemon = settings.daemon(&format!("{name}-{i}"), &config, Vec::new())?;
        daemons.push(daemon);
    }
    start_ready(&mut daemons).await?;
    // Kills 6–10 s apart: each member's death is recovered from (a session timeout and a
    // rebalance) before the next, so each recovery is measured on its own; membership changes
    // that overlap are the rebalance storm's part.
    let producer = load::kafka(
        kafka.bootstrap().to_owned(),
        topic.clone(),
        16,
        handler.ledger.clone(),
        settings.rate() * 8 * u64::from(settings.rounds.max(1)) + settings.rate(),
        settings.rate(),
    );
    let kills = Kills {
        rounds: settings.rounds,
        gap_seconds: 6.0..10.0,
        drain: Duration::from_secs(90),
        settle: SETTLE,
    };
    let (mut report, kills) =
        kill_phase(name, &mut daemons, &handler, producer, kills, &mut rng).await?;
    // Offsets are committed every 500 ms for what is done; a kill loses the commits of up to
    // one interval plus the batches in flight, on every partition the member held.
    let per_kill = KAFKA_PARTITIONS as u64 * KAFKA_BATCH + settings.rate();
    report.duplicate_bound = kills.len() as u64 * per_kill;
    report.bound_why = format!(
        "per kill, what was handled after the last commit: {KAFKA_PARTITIONS} partitions × {KAFKA_BATCH} in flight + {} records/s × 1 s (the 500 ms commit interval, the window and the handler)",
        settings.rate()
    );
    report.ordered = true;
    // The dead member is evicted at the session timeout (6 s); the restarted member's join
    // starts a second rebalance, which waits up to a session timeout for every member to rejoin.
    report.recovery_bound = Some(Duration::from_secs(25));
    Ok(report.check())
}

async fn kafka_rebalance_storm(settings: &Settings) -> anyhow::Result<Report> {
    let name = "kafka-rebalance-storm";
    let mut rng = settings.rng(name);
    let kafka = Kafka::start();
    let topic = Kafka::unique("storm");
    kafka.create_topic(&topic, KAFKA_PARTITIONS);
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(20, Ordering::Relaxed);
    let config = kafka_config(&handler, kafka.bootstrap(), &topic, &Kafka::unique("group"));
    let mut daemons = Vec::new();
    for i in 0..4 {
        daemons.push(settings.daemon(&format!("{name}-{i}"), &config, Vec::new())?);
    }
    start_ready(&mut daemons).await?;
    let changes = settings.rounds * 2;
    let records = settings.rate() * 3 * u64::from(changes) + settings.rate();
    let producer = load::kafka(
        kafka.bootstrap().to_owned(),
        topic.clone(),
        16,
        handler.ledger.clone(),
        records,
        settings.rate(),
    );
    // Members 1..=3 join and leave (SIGTERM) every 2–4 s; member 0 stays.
    for _ in 0..changes {
        tokio::time::sleep(Duration::from_secs_f64(rng.random_range(2.0..4.0))).await;
        let running: Vec<usize> = (1..4).filter(|i| daemons[*i].running()).collect();
        let stopped: Vec<usize> = (1..4).filter(|i| !daemons[*i].running()).collect();
        let leave = !running.is_empty() && (stopped.is_empty() || rng.random_bool(0.5));
        if leave {
            let which = running[rng.random_range(0..running.len())];
            if !daemons[which].terminate(Duration::from_secs(20)) {
                anyhow::bail!("member {which} did not leave cleanly on SIGTERM");
            }
        } else {
            let which = stopped[rng.random_range(0..stopped.len())];
            daemons[which].start()?;
        }
    }
    producer.await?;
    drain(&handler.ledger, Duration::from_secs(90), SETTLE).await;
    let mut report = Report::new(name);
    stop_all(&mut daemons, &mut report);
    report.faults = changes;
    report.tally = handler.ledger.tally();
    // librdkafka's mock cluster refuses commits while the group is joining (a real broker
    // accepts them from the current generation): a revocation's commit fails there, and what was
    // handled since the last accepted commit comes again — the batches in flight and, when a
    // change lands while the previous rebalance's backlog is being caught up, that backlog (up
    // to one rebalance, about a session timeout, of load).
    let per_change = KAFKA_PARTITIONS as u64 * KAFKA_BATCH + settings.rate() * KAFKA_SESSION_SECS;
    report.duplicate_bound = u64::from(changes) * per_change;
    report.bound_why = format!(
        "per membership change, what was handled after the last accepted commit: {KAFKA_PARTITIONS} × {KAFKA_BATCH} in flight + {} records/s × {KAFKA_SESSION_SECS} s (a rebalance's backlog). The mock cluster refuses the revocation's commit during a rebalance; a real broker accepts it",
        settings.rate()
    );
    report.ordered = true;
    report.notes.push(format!(
        "{} records over {changes} joins and leaves; duplicated for example {:?}",
        report.tally.sent,
        handler.ledger.duplicated_sample(5)
    ));
    Ok(report.check())
}

// === Outages ===

/// sluice reaches moto through a fault proxy that refuses, resets, stalls and slows connections,
/// each for a while; the load goes straight to moto.
async fn aws_outage(settings: &Settings) -> anyhow::Result<Report> {
    let name = "aws-outage";
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue_url = create_queue(&sqs, "chaos", &[("VisibilityTimeout", SQS_VISIBILITY)]).await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", moto.port).parse()?).await?;
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(20, Ordering::Relaxed);
    let config = format!(
        "{HEADER}{}{}",
        http_target(&handler.url("/sqs"), ""),
        sqs_mapping(&queue_url, "")
    );
    let mut daemon = settings.daemon(name, &config, aws_env(&proxy.url()))?;
    daemon.start()?;
    daemon.wait_ready(Duration::from_secs(30)).await?;
    let phases = [
        Fault::Refuse,
        Fault::Reset,
        Fault::Stall,
        Fault::Slow(Duration::from_millis(300)),
    ];
    let outage = settings.outage();
    let total = settings.rate() * (outage.as_secs() + 12) * phases.len() as u64;
    let producer = load::sqs(
        sqs.clone(),
        queue_url.clone(),
        Bodies::Plain,
        handler.ledger.clone(),
        total,
        settings.rate(),
    );
    let mut report = Report::new(name);
    let mut worst = Duration::ZERO;
    for fault in phases {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.set(fault);
        let started = Instant::now();
        let mut saw_unready = false;
        while started.elapsed() < outage {
            saw_unready |= daemon.readyz().await == 503;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        proxy.set(Fault::Pass);
        let healed = Instant::now();
        let ready = daemon.wait_ready(Duration::from_secs(120)).await;
        let recovery = healed.elapsed();
        worst = worst.max(recovery);
        let must_be_unready = !matches!(fault, Fault::Slow(_));
        // Refused and reset calls fail at once: the next poll comes within the poll retry
        // backoff (at most 5 s). A silent connection is given up at the 30 s attempt timeout.
        let bound = match fault {
            Fault::Stall => Duration::from_secs(45),
            _ => Duration::from_secs(7),
        };
        if recovery > bound {
            report.broken.push(format!(
                "/readyz took {:.1} s to be 200 after the {} phase, over {} s",
                recovery.as_secs_f64(),
                fault.name(),
                bound.as_secs()
            ));
        }
        report.notes.push(format!(
            "{}: /readyz {} during, 200 again {:.1} s after",
            fault.name(),
            if saw_unready { "503" } else { "stayed 200" },
            recovery.as_secs_f64()
        ));
        if must_be_unready && !saw_unready {
            report.broken.push(format!(
                "/readyz never said 503 during the {} phase",
                fault.name()
            ));
        }
        if ready.is_err() {
            report.broken.push(format!(
                "sluice did not become ready after the {} phase",
                fault.name()
            ));
        }
        if !daemon.running() {
            report
                .broken
                .push(format!("sluice exited during the {} phase", fault.name()));
            daemon.start()?;
        }
    }
    producer.await?;
    drain(&handler.ledger, Duration::from_secs(90), QUEUE_SETTLE).await;
    check_queue_empty(&mut report, &sqs, &queue_url).await;
    report.notes.push(format!(
        "{} new connections held silent during the stall (open ones went silent too)",
        proxy.stalled_connections()
    ));
    let mut daemons = [daemon];
    stop_all(&mut daemons, &mut report);
    report.faults = phases.len() as u32;
    report.tally = handler.ledger.tally();
    report.duplicate_bound = phases.len() as u64 * SQS_CONCURRENCY * SQS_BATCH;
    report.bound_why = format!(
        "per outage, the batches whose delete could not reach SQS: {SQS_CONCURRENCY} (max_concurrency) × {SQS_BATCH}"
    );
    report.recovery = Some(worst);
    report.recovery_what = "endpoint back → /readyz 200";
    // Per phase (checked above): 7 s after a refused or reset endpoint, 45 s after a stall (a
    // silent connection is abandoned at the 30 s attempt timeout, then the poll is retried).
    report.recovery_bound = Some(Duration::from_secs(45));
    Ok(report.check())
}

/// The handler is unreachable (refused), then overloaded (503), then unreachable again (its
/// connections time out); nothing may be dead-lettered for it.
async fn handler_outage(settings: &Settings) -> anyhow::Result<Report> {
    let name = "handler-outage";
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue_url = create_queue(&sqs, "chaos", &[("VisibilityTimeout", "2")]).await;
    let dlq_url = create_queue(&sqs, "chaos-dlq", &[]).await;
    let handler = Handler::start().await?;
    let proxy = FaultProxy::start(handler.addr).await?;
    let on_failure = format!(
        "    retry: {{ max_receive_count: 2 }}\n    on_failure: {{ sqs: {{ queue_url: \"{dlq_url}\" }} }}\n"
    );
    let config = format!(
        "{HEADER}targets:\n  fn:\n    http: {{ url: \"{}/sqs\", timeout: 2s, max_concurrency: 16 }}\n{}",
        proxy.url(),
        sqs_mapping(&queue_url, &on_failure)
    );
    let mut daemon = settings.daemon(name, &config, aws_env(&moto.endpoint()))?;
    daemon.start()?;
    daemon.wait_ready(Duration::from_secs(30)).await?;
    let outage = settings.outage().max(Duration::from_secs(6));
    let total = settings.rate() * (outage.as_secs() * 3 + 4);
    let producer = load::sqs(
        sqs.clone(),
        queue_url.clone(),
        Bodies::Plain,
        handler.ledger.clone(),
        total,
        settings.rate(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts_before = handler.ledger.attempts();
    proxy.set(Fault::Refuse);
    tokio::time::sleep(outage).await;
    proxy.set(Fault::Pass);
    handler.behaviour.unavailable.store(true, Ordering::Relaxed);
    tokio::time::sleep(outage).await;
    proxy.set(Fault::Blackhole);
    // The handler comes back only once the path is cut: a request already written to the
    // handler's socket when the blackhole began would otherwise be handled after the flip, its
    // answer lost with the cut connection, and the message delivered again (a duplicate the
    // scenario did not cause by killing anything).
    tokio::time::sleep(Duration::from_secs(1)).await;
    handler
        .behaviour
        .unavailable
        .store(false, Ordering::Relaxed);
    tokio::time::sleep(outage.saturating_sub(Duration::from_secs(1))).await;
    proxy.set(Fault::Pass);
    let back = Instant::now();
    producer.await?;
    drain(&handler.ledger, Duration::from_secs(90), QUEUE_SETTLE).await;
    let mut report = Report::new(name);
    check_queue_empty(&mut report, &sqs, &queue_url).await;
    let dead_letters = queue_depth(&sqs, &dlq_url).await;
    if dead_letters > 0 {
        report.broken.push(format!(
            "{dead_letters} messages were dead-lettered because the handler was down"
        ));
    }
    let mut daemons = [daemon];
    stop_all(&mut daemons, &mut report);
    report.faults = 3;
    report.tally = handler.ledger.tally();
    report.duplicate_bound = 0;
    report.bound_why = "none: nothing was handled during the outage, and no process died".into();
    report.recovery = handler.ledger.first_new_after(back).map(|t| t - back);
    report.recovery_what = "handler back → next first-time delivery";
    report.recovery_bound = Some(Duration::from_secs(10));
    report.notes.push(format!(
        "{dead_letters} dead letters; {} invocations reached the 503 phase's handler and after",
        handler.ledger.attempts() - attempts_before
    ));
    Ok(report.check())
}

/// The dead-letter bucket disappears for a while: failing records must wait in the queue,
/// and none may be deleted before its dead letter is stored.
async fn dead_letter_outage(settings: &Settings) -> anyhow::Result<Report> {
    let name = "dead-letter-outage";
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let s3 = moto.s3().await;
    let queue_url = create_queue(&sqs, "chaos", &[("VisibilityTimeout", "2")]).await;
    s3.create_bucket().bucket("dead").send().await?;
    let handler = Handler::start().await?;
    *handler.behaviour.poison_prefix.lock().unwrap() = Some("poison".into());
    let on_failure =
        "    retry: { max_receive_count: 2 }\n    on_failure: { s3: { bucket: dead } }\n";
    let config = format!(
        "{HEADER}{}{}",
        http_target(&handler.url("/sqs"), ""),
        sqs_mapping(&queue_url, on_failure)
    );
    let mut daemon = settings.daemon(name, &config, aws_env(&moto.endpoint()))?;
    daemon.start()?;
    daemon.wait_ready(Duration::from_secs(30)).await?;
    s3.delete_bucket().bucket("dead").send().await?;
    let every = 5;
    let total = settings.rate() * 6;
    let producer = load::sqs(
        sqs.clone(),
        queue_url.clone(),
        Bodies::Poison { every },
        handler.ledger.clone(),
        total,
        settings.rate(),
    );
    // While the bucket is gone, every poison record sent must still be in the queue.
    let outage = settings.outage().max(Duration::from_secs(8));
    let started = Instant::now();
    let mut report = Report::new(name);
    let mut lowest_margin = i64::MAX;
    while started.elapsed() < outage {
        let poison_sent = handler.ledger.dead_letters_owed().len() as u64;
        let depth = queue_depth(&sqs, &queue_url).await;
        lowest_margin = lowest_margin.min(depth as i64 - poison_sent as i64);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    producer.await?;
    // The proof that nothing was acknowledged before its dead letter was stored is the end
    // state: a poison message deleted during the outage could never have reached the bucket
    // (it was gone), so it would be missing there. The queue depth sampled meanwhile is only
    // a picture: SQS's (and moto's) message counts are approximate.
    s3.create_bucket().bucket("dead").send().await?;
    let healed = Instant::now();
    // The good records drain; then every poison record must reach the bucket.
    drain(&handler.ledger, Duration::from_secs(60), QUEUE_SETTLE).await;
    let poison = handler.ledger.dead_letters_owed();
    let mut stored = std::collections::BTreeMap::<String, u64>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored_after = None;
    while Instant::now() < deadline {
        stored.clear();
        for (_, envelope) in sluice_testkit::s3_objects(&s3, "dead").await {
            for record in envelope["sluice"]["records"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(body) = record["body"].as_str() {
                    *stored.entry(body.to_owned()).or_default() += 1;
                }
            }
        }
        if poison.iter().all(|p| stored.contains_key(p)) {
            stored_after = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let missing = poison.iter().filter(|p| !stored.contains_key(*p)).count();
    check_queue_empty(&mut report, &sqs, &queue_url).await;
    let mut daemons = [daemon];
    stop_all(&mut daemons, &mut report);
    report.faults = 1;
    let mut tally = handler.ledger.tally();
    tally.sent += poison.len() as u64;
    tally.handled += (poison.len() - missing) as u64;
    tally.lost += missing as u64;
    tally.duplicated += stored.values().map(|n| n - 1).sum::<u64>();
    report.tally = tally;
    report.duplicate_bound = 0;
    report.bound_why =
        "none: no process died, a dead letter is stored once (sent and handled include the dead letters)".into();
    report.recovery = stored_after;
    report.recovery_what = "bucket back → every dead letter stored";
    report.recovery_bound = Some(Duration::from_secs(30));
    report.notes.push(format!(
        "{} poison records, every one waiting in the queue until the bucket came back (lowest queue depth − poison records sent, sampled every 0.5 s, approximate counts: {lowest_margin})",
        poison.len()
    ));
    Ok(report.check())
}

/// A handle the soak uses to sample one daemon.
pub use crate::daemon::Footprint;

/// One hour (or `duration`) of steady SQS and Kafka traffic with 1 % failing and 1 % slow
/// invocations; samples sluice's footprint every 5 s.
pub async fn soak(settings: &Settings, duration: Duration) -> anyhow::Result<SoakReport> {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue_url = create_queue(&sqs, "soak", &[("VisibilityTimeout", "10")]).await;
    let kafka = Kafka::start();
    let topic = Kafka::unique("soak");
    kafka.create_topic(&topic, KAFKA_PARTITIONS);
    let handler = Handler::start().await?;
    handler.behaviour.latency_ms.store(5, Ordering::Relaxed);
    handler
        .behaviour
        .fail_per_mille
        .store(10, Ordering::Relaxed);
    handler
        .behaviour
        .slow_per_mille
        .store(10, Ordering::Relaxed);
    handler.behaviour.slow_ms.store(2_000, Ordering::Relaxed);
    let config = format!(
        "{HEADER}{}mappings:\n  - name: queue\n    target: fn\n    source:\n      sqs: {{ queue_url: \"{queue_url}\", batch_size: 10, max_concurrency: 4, wait_time: 2s }}\n    report_batch_item_failures: true\n  - name: stream\n    target: kafka\n    source:\n      kafka:\n        bootstrap_servers: \"{}\"\n        topics: [\"{topic}\"]\n        group_id: soak\n        starting_position: trim_horizon\n        batch_size: 20\n        max_batching_window: 100ms\n    report_batch_item_failures: true\n    retry: {{ backoff: {{ initial: 100ms, max: 1s }} }}\n",
        http_target(&handler.url("/sqs"), "")
            + &format!(
                "  kafka:\n    http: {{ url: \"{}\", timeout: 10s, max_concurrency: 16 }}\n",
                handler.url("/kafka")
            ),
        kafka.bootstrap()
    );
    let mut daemon = settings.daemon("soak", &config, aws_env(&moto.endpoint()))?;
    daemon.start()?;
    daemon.wait_ready(Duration::from_secs(30)).await?;
    let rate = 50;
    let total = rate * duration.as_secs();
    let sqs_load = load::sqs(
        sqs.clone(),
        queue_url.clone(),
        Bodies::Plain,
        handler.ledger.clone(),
        total,
        rate,
    );
    let kafka_load = load::kafka(
        kafka.bootstrap().to_owned(),
        topic,
        16,
        handler.ledger.clone(),
        total,
        rate,
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        let tasks =
            sluice_testkit::metric_sample(&daemon.metrics().await, "sluice_runtime_alive_tasks");
        if let Some(footprint) = daemon.footprint() {
            samples.push((started.elapsed(), footprint, tasks.unwrap_or(-1.0) as i64));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    sqs_load.await?;
    kafka_load.await?;
    drain(&handler.ledger, Duration::from_secs(90), SETTLE).await;
    let mut report = Report::new("soak");
    let mut daemons = [daemon];
    stop_all(&mut daemons, &mut report);
    report.tally = handler.ledger.tally();
    report.duplicate_bound = u64::MAX;
    Ok(SoakReport {
        duration,
        samples,
        report: report.check(),
        attempts: handler.ledger.attempts(),
    })
}

/// A measure's first value after warm-up, its highest and its last.
pub type Curve<T> = Option<(T, T, T)>;

pub struct SoakReport {
    pub duration: Duration,
    /// (time since start, footprint, tokio tasks alive)
    pub samples: Vec<(Duration, Footprint, i64)>,
    pub report: Report,
    pub attempts: u64,
}

impl SoakReport {
    /// The first sample after warm-up (a fifth of the run, at least 30 s), the highest after it,
    /// and the last.
    pub fn curve<T: Copy + Ord>(
        &self,
        value: impl Fn(&(Duration, Footprint, i64)) -> T,
    ) -> Curve<T> {
        let warm = (self.duration / 5).max(Duration::from_secs(30));
        let after: Vec<T> = self
            .samples
            .iter()
            .filter(|s| s.0 >= warm)
            .map(&value)
            .collect();
        Some((*after.first()?, *after.iter().max()?, *after.last()?))
    }

    /// Flat after warm-up: the end within 25 % (and a small absolute slack) of the start.
    pub fn check(&mut self) {
        let checks: [(&str, Curve<u64>, u64); 3] = [
            ("RSS (KiB)", self.curve(|s| s.1.rss_kib), 8 * 1024),
            ("open descriptors", self.curve(|s| s.1.fds), 16),
            ("threads", self.curve(|s| s.1.threads), 4),
        ];
        for (what, curve, slack) in checks {
            match curve {
                Some((start, _, end)) if end > start + start / 4 + slack => self
                    .report
                    .broken
                    .push(format!("{what} grew from {start} to {end} after warm-up")),
                None => self
                    .report
                    .broken
                    .push(format!("no {what} samples after warm-up")),
                _ => {}
            }
        }
        if let Some((start, _, end)) = self.curve(|s| s.2)
            && start >= 0
            && end > start + start / 4 + 16
        {
            self.report.broken.push(format!(
                "tokio tasks grew from {start} to {end} after warm-up"
            ));
        }
    }
}
