//! Kafka for the end-to-end tests: librdkafka's mock cluster in this process (it speaks the
//! Kafka protocol over TCP, consumer groups and commits included), or a real broker named by
//! `KAFKA_BOOTSTRAP_SERVERS`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A message to produce: partition, key and value as bytes.
pub type ByteMessage = (i32, Option<Vec<u8>>, Vec<u8>);

pub struct Kafka {
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    bootstrap: String,
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct KafkaMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl KafkaMessage {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.value).unwrap_or(Value::Null)
    }
}

impl Kafka {
    /// The broker in `KAFKA_BOOTSTRAP_SERVERS`, or a fresh one-broker mock cluster.
    pub fn start() -> Self {
        match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            Ok(bootstrap) if !bootstrap.is_empty() => Self {
                _mock: None,
                bootstrap,
            },
            _ => {
                let mock = MockCluster::new(1).expect("starting librdkafka's mock cluster");
                let bootstrap = mock.bootstrap_servers();
                Self {
                    _mock: Some(mock),
                    bootstrap,
                }
            }
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A name no other test (or earlier run against a real broker) uses.
    pub fn unique(prefix: &str) -> String {
        format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        )
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        match &self._mock {
            Some(mock) => mock
                .create_topic(name, partitions, 1)
                .expect("creating a mock topic"),
            None => {
                let admin: AdminClient<_> = self.config().create().expect("admin client");
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let results = runtime
                    .block_on(admin.create_topics([&topic], &AdminOptions::new()))
                    .expect("create_topics");
                for result in results {
                    result.expect("topic created");
                }
                // Wait until the metadata shows every partition.
                let consumer: BaseConsumer = self.config().create().unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let metadata = consumer
                        .fetch_metadata(Some(name), Duration::from_secs(5))
                        .ok();
                    let ready = metadata.is_some_and(|m| {
                        m.topics()
                            .first()
                            .is_some_and(|t| t.partitions().len() == partitions as usize)
                    });
                    if ready {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Produces `(partition, key, value)` messages in order and waits until all are acknowledged.
    pub fn produce(&self, topic: &str, messages: &[(i32, Option<&str>, String)]) {
        self.produce_with_headers(topic, messages, &[]);
    }

    /// [`Kafka::produce`] for keys and values that are bytes (a schema-registry framing).
    pub fn produce_bytes(&self, topic: &str, messages: &[ByteMessage]) {
        self.produce_with_headers(topic, messages, &[]);
    }

    pub fn produce_with_headers<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        topic: &str,
        messages: &[(i32, Option<K>, V)],
        headers: &[(&str, &[u8])],
    ) {
        let producer: BaseProducer = self
            .config()
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        for (partition, key, value) in messages {
            let mut owned = OwnedHeaders::new();
            for (name, bytes) in headers {
                owned = owned.insert(Header {
                    key: name,
                    value: Some(*bytes),
                });
            }
            loop {
                let mut record = BaseRecord::to(topic)
                    .partition(*partition)
                    .payload(value.as_ref())
                    .headers(owned.clone());
                if let Some(key) = key {
                    record = record.key(key.as_ref());
                }
                match producer.send(record) {
                    Ok(()) => break,
                    Err((error, _)) => {
                        // The local queue is full: let deliveries drain, then retry.
                        assert!(
                            matches!(
                                error.rdkafka_error_code(),
                                Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                            ),
                            "producing failed: {error}"
                        );
                        producer.poll(Duration::from_millis(50));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("every message acknowledged");
    }

    /// Produces one message to partition 0 with one header whose key is the raw bytes `key`
    /// (rdkafka's Rust API only writes UTF-8 keys; a producer in another language may write
    /// anything, so the header is added through librdkafka's C API).
    pub fn produce_with_raw_header_key(&self, topic: &str, value: &str, key: &[u8], header: &[u8]) {
        let producer: BaseProducer = self.config().create().expect("producer");
        let headers = OwnedHeaders::new();
        // SAFETY: `as_borrowed` is a view of the native header list `headers` owns (rdkafka
        // builds it by casting that pointer), which is alive for the call; the sizes are the
        // slices' lengths.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_header_add(
                headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders
                    as *mut rdkafka::bindings::rd_kafka_headers_t,
                key.as_ptr().cast(),
                key.len() as isize,
                header.as_ptr().cast(),
                header.len() as isize,
            )
        };
        assert_eq!(
            error,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        let record: BaseRecord<'_, (), str> = BaseRecord::to(topic)
            .partition(0)
            .payload(value)
            .headers(headers);
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer
            .flush(Duration::from_secs(60))
            .expect("the message acknowledged");
    }

    /// The high watermark of each partition `0..partitions`.
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.config().create().unwrap();
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    /// The group's committed offset of each partition (-1 when none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.config().set("group.id", group).create().unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        // Owned at once: a list from `committed` alive at the consumer's drop hangs it.
        let committed: Vec<i64> = match consumer.committed_offsets(list, Duration::from_secs(10)) {
            Ok(list) => (0..partitions)
                .map(
                    |p| match list.find_partition(topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(offset)) => offset,
                        _ => -1,
                    },
                )
                .collect(),
            Err(_) => vec![-1; partitions as usize],
        };
        committed
    }

    /// Every message in `topic` (partitions `0..partitions`), read from the beginning.
    pub fn read_all(&self, topic: &str, partitions: i32) -> Vec<KafkaMessage> {
        let ends = self.end_offsets(topic, partitions);
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", Kafka::unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let total: i64 = ends.iter().sum();
        let mut messages = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (messages.len() as i64) < total && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                messages.push(KafkaMessage {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().unwrap_or_default().to_vec(),
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        messages
    }
}

/// The records of a Lambda Kafka event, in the order they appear, with `decoded` holding the
/// value parsed as JSON (or as text).
pub fn kafka_records(event: &Value) -> Vec<Value> {
    let mut records = Vec::new();
    if let Some(partitions) = event["records"].as_object() {
        for list in partitions.values() {
            for record in list.as_array().into_iter().flatten() {
                let mut record = record.clone();
                let bytes = record["value"]
                    .as_str()
                    .and_then(|v| BASE64.decode(v).ok())
                    .unwrap_or_default();
                record["decoded"] = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
                records.push(record);
            }
        }
    }
    records
}

/// Header values of a Lambda Kafka record, as bytes (Lambda writes them as signed bytes).
pub fn kafka_header(record: &Value, name: &str) -> Option<Vec<u8>> {
    record["headers"].as_array()?.iter().find_map(|header| {
        header[name].as_array().map(|bytes| {
            bytes
                .iter()
                .map(|b| b.as_i64().unwrap_or(0) as u8)
                .collect()
        })
    })
}
