//! The consumer against librdkafka's mock cluster (real protocol, consumer groups and commits).

use super::*;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use serde_json::json;
use sluice_policies::Pattern;
use std::collections::BTreeMap;

/// Generous: the mock cluster's group joins take a few seconds.
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    _mock: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl Cluster {
    fn new(topic: &str, partitions: i32) -> Self {
        let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
        mock.create_topic(topic, partitions, 1).expect("topic");
        let bootstrap = mock.bootstrap_servers();
        Self {
            _mock: mock,
            bootstrap,
        }
    }

    /// Produces `(partition, value)` messages in order, acknowledged before it returns.
    fn produce(&self, topic: &str, messages: &[(i32, String)]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("producer");
        for (partition, value) in messages {
            producer
                .send(
                    BaseRecord::<(), str>::to(topic)
                        .partition(*partition)
                        .payload(value),
                )
                .expect("queued");
        }
        producer.flush(WAIT).expect("flushed");
    }

    fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .create()
            .expect("reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        let committed = reader.committed_offsets(list, WAIT).expect("committed");
        let offsets = offsets_of(&committed);
        (0..partitions)
            .map(|p| offsets.get(&(topic.to_owned(), p)).copied())
            .collect()
    }

    fn settings(&self, topic: &str, group: &str) -> ConsumerSettings {
        ConsumerSettings {
            name: "clicks".into(),
            bootstrap_servers: self.bootstrap.clone(),
            group_id: group.into(),
            topics: vec![topic.into()],
            properties: vec![],
            position: StartPosition::TrimHorizon,
            filters: FilterSet::default(),
            release_timeout: Duration::from_secs(10),
            paused: Arc::default(),
            tokens: None,
        }
    }
}

fn numbered(partition: i32, range: std::ops::Range<i64>) -> Vec<(i32, String)> {
    range
        .map(|n| (partition, json!({"n": n, "keep": n % 2 == 0}).to_string()))
        .collect()
}

async fn next(events: &mut mpsc::Receiver<ConsumerEvent>) -> Option<ConsumerEvent> {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
}

/// What a test saw: the controls of assigned partitions and the offsets delivered per partition.
#[derive(Default)]
struct Seen {
    controls: BTreeMap<i32, Arc<PartitionControl>>,
    starts: BTreeMap<i32, StartOffset>,
    offsets: BTreeMap<i32, Vec<i64>>,
    filtered: Vec<(i32, i64)>,
    committed: usize,
}

impl Seen {
    /// Takes in one event; a revoke is returned for the test to answer.
    fn take(&mut self, event: ConsumerEvent) -> Option<Revoked> {
        match event {
            ConsumerEvent::Assigned(assigned) => {
                for partition in assigned {
                    self.starts.insert(partition.partition.1, partition.start);
                    self.controls
                        .insert(partition.partition.1, partition.control);
                }
            }
            ConsumerEvent::Polled(polled) => {
                assert!(!polled.is_empty() && polled.len() <= MAX_POLLED);
                for record in polled {
                    let partition = record.partition.1;
                    assert!(
                        self.controls.contains_key(&partition),
                        "a record of partition {partition} before its assignment"
                    );
                    match record.record {
                        Some(r) => assert_eq!(r.id(), record.offset.to_string()),
                        None => self.filtered.push((partition, record.offset)),
                    }
                    self.offsets
                        .entry(partition)
                        .or_default()
                        .push(record.offset);
                }
            }
            ConsumerEvent::Revoked(revoked) => return Some(revoked),
            ConsumerEvent::Committed => self.committed += 1,
            ConsumerEvent::Healthy | ConsumerEvent::Lag(_) => {}
            ConsumerEvent::Failed(reason) | ConsumerEvent::CommitFailed(reason) => {
                panic!("unexpected failure: {reason}")
            }
        }
        None
    }

    fn count(&self) -> usize {
        self.offsets.values().map(Vec::len).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_in_order_after_their_assignment_and_what_is_done_is_committed() {
    let cluster = Cluster::new("clicks", 2);
    let mut messages = numbered(0, 0..10);
    messages.extend(numbered(1, 0..10));
    cluster.produce("clicks", &messages);
    let (consumer, mut events) = KafkaConsumer::start(cluster.settings("clicks", "g1")).unwrap();
    let mut seen = Seen::default();
    while seen.count() < 20 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none(), "no revoke while running");
    }
    for partition in 0..2 {
        assert_eq!(seen.offsets[&partition], (0..10).collect::<Vec<_>>());
        assert_eq!(seen.starts[&partition], StartOffset::Beginning);
    }
    // Half done: committed within a commit interval or two.
    for control in seen.controls.values() {
        control.done_until(5);
    }
    while seen.committed == 0 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    let committed = cluster.committed("g1", "clicks", 2);
    assert_eq!(committed, vec![Some(5), Some(5)]);

    // The stop releases both partitions; what is done when the owner answers is committed.
    consumer.stop();
    let revoked = loop {
        let event = next(&mut events).await.expect("a revoke before the end");
        if let Some(revoked) = seen.take(event) {
            break revoked;
        }
    };
    assert!(!revoked.lost);
    let mut partitions = revoked.partitions.clone();
    partitions.sort();
    assert_eq!(
        partitions,
        vec![("clicks".to_owned(), 0), ("clicks".to_owned(), 1)]
    );
    for control in seen.controls.values() {
        control.done_until(10);
    }
    revoked.released();
    while let Some(event) = next(&mut events).await {
        assert!(seen.take(event).is_none());
    }
    tokio::task::spawn_blocking(move || consumer.join())
        .await
        .unwrap()
        .expect("the thread ends without a panic");
    assert_eq!(
        cluster.committed("g1", "clicks", 2),
        vec![Some(10), Some(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_out_record_arrives_without_its_record_in_its_place() {
    let cluster = Cluster::new("clicks", 1);
    cluster.produce("clicks", &numbered(0, 0..6));
    let mut settings = cluster.settings("clicks", "g2");
    settings.filters = FilterSet::new(vec![
        Pattern::compile(&json!({"value": {"keep": [true]}})).unwrap(),
    ]);
    let (consumer, mut events) = KafkaConsumer::start(settings).unwrap();
    let mut seen = Seen::default();
    while seen.count() < 6 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    assert_eq!(seen.offsets[&0], (0..6).collect::<Vec<_>>());
    assert_eq!(seen.filtered, vec![(0, 1), (0, 3), (0, 5)]);
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_delivers_nothing_until_resumed_and_then_each_record_once() {
    let cluster = Cluster::new("clicks", 1);
    cluster.produce("clicks", &numbered(0, 0..5));
    let (consumer, mut events) = KafkaConsumer::start(cluster.settings("clicks", "g3")).unwrap();
    let mut seen = Seen::default();
    while seen.count() < 5 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    seen.controls[&0].pause(true);
    // The thread applies it within a poll (100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.produce("clicks", &numbered(0, 5..10));
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(event) = tokio::time::timeout_at(quiet_until, events.recv()).await {
        assert!(seen.take(event.expect("the consumer runs")).is_none());
        assert_eq!(seen.count(), 5, "a paused partition delivered a record");
    }
    seen.controls[&0].pause(false);
    while seen.count() < 10 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    // A fetch repeated after the pause is not delivered twice.
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(event) = tokio::time::timeout_at(quiet_until, events.recv()).await {
        assert!(seen.take(event.expect("the consumer runs")).is_none());
    }
    assert_eq!(seen.offsets[&0], (0..10).collect::<Vec<_>>());
    drop(consumer);
}

// Issue 20, item 6: a paused mapping pauses every partition at the broker, whatever their
// owners ask, and a resume lets each held-back record through once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_mapping_pauses_every_partition_until_resumed() {
    let cluster = Cluster::new("views", 2);
    cluster.produce("views", &numbered(0, 0..3));
    cluster.produce("views", &numbered(1, 0..3));
    let settings = cluster.settings("views", "g-pause");
    let paused = settings.paused.clone();
    let (consumer, mut events) = KafkaConsumer::start(settings).unwrap();
    let mut seen = Seen::default();
    while seen.count() < 6 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    paused.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.produce("views", &numbered(0, 3..6));
    cluster.produce("views", &numbered(1, 3..6));
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(event) = tokio::time::timeout_at(quiet_until, events.recv()).await {
        assert!(seen.take(event.expect("the consumer runs")).is_none());
        assert_eq!(seen.count(), 6, "a paused mapping delivered a record");
    }
    paused.store(false, Ordering::Release);
    while seen.count() < 12 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    assert_eq!(seen.offsets[&0], (0..6).collect::<Vec<_>>());
    assert_eq!(seen.offsets[&1], (0..6).collect::<Vec<_>>());
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_goes_away_what_it_reported_done_is_committed_and_the_thread_ends() {
    let cluster = Cluster::new("clicks", 1);
    cluster.produce("clicks", &numbered(0, 0..8));
    let (consumer, mut events) = KafkaConsumer::start(cluster.settings("clicks", "g4")).unwrap();
    let mut seen = Seen::default();
    while seen.count() < 8 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    seen.controls[&0].done_until(3);
    drop(events);
    // Not stopped: the thread notices nobody listens at its next event.
    tokio::task::spawn_blocking(move || consumer.join())
        .await
        .unwrap()
        .expect("the thread ends without a panic");
    assert_eq!(cluster.committed("g4", "clicks", 1), vec![Some(3)]);
}

// Review of the consumer move: a pause is the application's, and librdkafka keeps it for the
// partition's next assignment; a partition paused when it was revoked must deliver again when it
// comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_when_revoked_delivers_again_when_it_comes_back() {
    let cluster = Cluster::new("clicks", 1);
    cluster.produce("clicks", &numbered(0, 0..3));
    let mut settings = cluster.settings("clicks", "g5");
    settings.properties = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
    ];
    let (first, mut events) = KafkaConsumer::start(settings).unwrap();
    let mut seen = Seen::default();
    while seen.count() < 3 {
        let event = next(&mut events).await.expect("the consumer runs");
        assert!(seen.take(event).is_none());
    }
    let paused = seen.controls[&0].clone();
    paused.done_until(3);
    paused.pause(true);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A second member joins: the rebalance takes the partition from the first. (Short sessions:
    // the mock cluster's rebalance waits out a member's session otherwise, 45 s by default.)
    let mut settings = cluster.settings("clicks", "g5");
    settings.properties = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
    ];
    let (second, mut second_events) = KafkaConsumer::start(settings).unwrap();
    let (second_assigned, mut second_got_it) = tokio::sync::watch::channel(false);
    let second_task = tokio::spawn(async move {
        while let Some(event) = second_events.recv().await {
            match event {
                ConsumerEvent::Assigned(_) => {
                    let _ = second_assigned.send(true);
                }
                ConsumerEvent::Revoked(revoked) => revoked.released(),
                _ => {}
            }
        }
    });
    let revoked = loop {
        let event = next(&mut events).await.expect("the consumer runs");
        if let Some(revoked) = seen.take(event) {
            break revoked;
        }
    };
    assert!(!revoked.lost);
    revoked.released();
    // The partition comes back: at once, or once the second member leaves.
    let mut second_stopped = false;
    let back = loop {
        tokio::select! {
            event = next(&mut events) => {
                match event.expect("the consumer runs") {
                    ConsumerEvent::Assigned(assigned) => break assigned,
                    ConsumerEvent::Revoked(revoked) => revoked.released(),
                    _ => {}
                }
            }
            changed = second_got_it.changed(), if !second_stopped => {
                if changed.is_ok() && *second_got_it.borrow() {
                    second_stopped = true;
                    second.stop();
                }
            }
        }
    };
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].start, StartOffset::Committed(3));
    assert!(!back[0].control.pause_wanted());
    cluster.produce("clicks", &numbered(0, 3..6));
    let mut offsets = std::collections::BTreeSet::new();
    let delivered = tokio::time::timeout(WAIT, async {
        while offsets.len() < 3 {
            match next(&mut events).await.expect("the consumer runs") {
                ConsumerEvent::Polled(polled) => offsets.extend(polled.iter().map(|p| p.offset)),
                // The second member's leave can reach the mock cluster's group after the
                // partition came back, and an eager rebalance takes it once more; it comes
                // back again, and what matters is that it is not left paused.
                ConsumerEvent::Revoked(revoked) => revoked.released(),
                ConsumerEvent::Assigned(assigned) => {
                    assert!(assigned.iter().all(|a| !a.control.pause_wanted()));
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "the partition delivered nothing after it came back"
    );
    assert_eq!(
        offsets.into_iter().collect::<Vec<_>>(),
        vec![3, 4, 5],
        "the partition delivers again after its pause"
    );
    second.stop();
    drop(events);
    tokio::task::spawn_blocking(move || {
        first.join().expect("no panic");
        second.join().expect("no panic");
    })
    .await
    .unwrap();
    second_task.await.unwrap();
}

// The bound on what one event carries (and so on what reaches the owner after it asks for a
// pause): at most MAX_POLLED records, and at most MAX_POLLED_BYTES plus the record that crossed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_event_holds_at_most_its_record_and_byte_bounds() {
    let cluster = Cluster::new("clicks", 2);
    let small: Vec<(i32, String)> = (0..600).map(|n| (0, format!("{{\"n\":{n}}}"))).collect();
    let large: Vec<(i32, String)> = (0..12)
        .map(|n| {
            (
                1,
                format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(200_000)),
            )
        })
        .collect();
    cluster.produce("clicks", &small);
    cluster.produce("clicks", &large);
    let (consumer, mut events) = KafkaConsumer::start(cluster.settings("clicks", "g6")).unwrap();
    let (mut small_seen, mut large_seen) = (0, 0);
    let (mut most_records, mut most_large_in_one) = (0, 0);
    let mut largest_record = 0;
    while small_seen < 600 || large_seen < 12 {
        match next(&mut events).await.expect("the consumer runs") {
            ConsumerEvent::Polled(polled) => {
                assert!(
                    polled.len() <= MAX_POLLED,
                    "{} records in one event",
                    polled.len()
                );
                most_records = most_records.max(polled.len());
                let sizes: Vec<usize> = polled
                    .iter()
                    .map(|p| p.record.as_ref().map_or(0, |r| r.size_bytes))
                    .collect();
                let biggest = sizes.iter().copied().max().unwrap_or(0);
                largest_record = largest_record.max(biggest);
                let bytes: usize = sizes.iter().sum();
                assert!(
                    bytes < MAX_POLLED_BYTES + biggest,
                    "{bytes} bytes in one event"
                );
                let large_here = polled.iter().filter(|p| p.partition.1 == 1).count();
                most_large_in_one = most_large_in_one.max(large_here);
                large_seen += large_here;
                small_seen += polled.len() - large_here;
            }
            ConsumerEvent::Revoked(revoked) => panic!("revoked: {:?}", revoked.partitions),
            _ => {}
        }
    }
    assert_eq!(most_records, MAX_POLLED, "600 queued records fill an event");
    assert!(largest_record > 200_000);
    assert!(
        most_large_in_one > 1 && most_large_in_one <= MAX_POLLED_BYTES / 200_000 + 1,
        "{most_large_in_one} large records in one event"
    );
    drop(consumer);
}
