//! Support for sluice's end-to-end tests: a moto server, an HTTP handler, the real `sluice`
//! binary, and helpers to wait for what they do.
//!
//! moto is started through `moto_launcher.py` (beside this file), which patches moto 5.2.5 before
//! it serves: `Queue.pending_message_groups` counts only invisible messages (moto otherwise lets a
//! FIFO group's later messages overtake a timed-out earlier one), a FIFO group's messages are
//! receivable only in order, concurrent receives cannot hand out the same message twice, and slow
//! paths are replaced (see the launcher's docstring). Each test starts its own moto on a free port and
//! creates its own queues, so tests run in parallel without sharing state.
//!
//! Kafka: [`Kafka::start`] runs librdkafka's in-process mock cluster (a real Kafka protocol server
//! on loopback), or uses the broker in `KAFKA_BOOTSTRAP_SERVERS` when that is set; topic and group
//! names are unique per test either way.

mod kafka;
pub use kafka::*;
mod schema_registry;
pub use schema_registry::{SchemaRegistry, registered};

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python that has moto installed: `SLUICE_TEST_PYTHON`, else `.venv/bin/python`.
pub fn python() -> PathBuf {
    std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"))
}

/// The config most end-to-end tests start from: one HTTP target `handler`, the admin server on a
/// free port (see [`any_port`]), a short drain, and the mappings under test. Each test adds what
/// it is about; the template lives here only.
#[derive(Debug, Clone)]
pub struct TestConfig {
    handler_url: String,
    target_options: String,
    shutdown_timeout: String,
    state_dir: Option<PathBuf>,
    top: String,
    mappings: String,
}

impl TestConfig {
    /// `handler` posts to `handler_url` with a 30 s timeout; the drain is 10 s.
    pub fn new(handler_url: &str) -> Self {
        Self {
            handler_url: handler_url.to_owned(),
            target_options: String::new(),
            shutdown_timeout: "10s".into(),
            state_dir: None,
            top: String::new(),
            mappings: String::new(),
        }
    }

    pub fn shutdown_timeout(mut self, duration: &str) -> Self {
        self.shutdown_timeout = duration.to_owned();
        self
    }

    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_owned());
        self
    }

    /// More top-level keys, as YAML lines.
    pub fn top(mut self, yaml: &str) -> Self {
        self.top.push_str(yaml);
        self
    }

    /// More keys of the `handler` target, inside its braces: `", max_concurrency: 1"`.
    pub fn target_options(mut self, yaml: &str) -> Self {
        self.target_options.push_str(yaml);
        self
    }

    /// Mapping list entries (`  - name: ...`), as YAML lines.
    pub fn mappings(mut self, yaml: &str) -> Self {
        self.mappings.push_str(yaml);
        self
    }

    pub fn render(&self) -> String {
        let state_dir = self
            .state_dir
            .as_ref()
            .map(|dir| format!("state_dir: \"{}\"\n", dir.display()))
            .unwrap_or_default();
        format!(
            "\nversion: 1\nshutdown_timeout: {shutdown}\n{state_dir}admin: {{ listen: \"{{admin}}\" }}\n{top}\ntargets:\n  handler:\n    http: {{ url: \"{url}\", timeout: 30s{options} }}\nmappings:\n{mappings}\n",
            shutdown = self.shutdown_timeout,
            top = self.top,
            url = self.handler_url,
            options = self.target_options,
            mappings = self.mappings,
        )
    }
}

/// `config` with its `{admin}` and `{invoke}` listeners on port 0: sluice picks free ports and
/// reports them ([`Sluice::admin`], [`Sluice::invoke_api`]).
pub fn any_port(config: &str) -> String {
    config
        .replace("{admin}", "127.0.0.1:0")
        .replace("{invoke}", "127.0.0.1:0")
}

// === impl Moto ===

/// A moto server process; killed on drop.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts moto counting requests per SQS action (see [`Moto::request_counts`]).
    pub fn start_counting() -> Self {
        Self::launch(0, true)
    }

    /// Starts moto recording the IAM action of every call sluice makes (see
    /// [`Moto::sluice_actions`]).
    pub fn start_recording_actions() -> Self {
        Self::launch_with(0, &["--record-actions"])
    }

    /// Starts moto on `port` (0 = any free port).
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, false)
    }

    fn launch(port: u16, count_requests: bool) -> Self {
        let flags: &[&str] = if count_requests {
            &["--count-requests"]
        } else {
            &[]
        };
        Self::launch_with(port, flags)
    }

    fn launch_with(port: u16, flags: &[&str]) -> Self {
        let python = python();
        assert!(
            python.exists(),
            "no Python with moto at {}; run scripts/test (it creates .venv) or set SLUICE_TEST_PYTHON",
            python.display()
        );
        let mut child = Command::new(&python)
            .arg(workspace_root().join("tests/support/moto_launcher.py"))
            .args(["--port", &port.to_string()])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let stdout = child.stdout.take().expect("moto stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading moto's first line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("moto did not start: {line:?}"));
        Self {
            child: Some(child),
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The IAM actions of the AWS calls sluice made (only with [`Moto::start_recording_actions`]).
    pub async fn sluice_actions(&self) -> std::collections::BTreeSet<String> {
        let url = format!("{}/_sluice/actions", self.endpoint());
        let report: Value = reqwest::get(&url)
            .await
            .expect("recorded actions")
            .json()
            .await
            .expect("recorded actions as JSON");
        report["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    }

    /// Requests per SQS action since start (only with [`Moto::start_counting`]).
    pub async fn request_counts(&self) -> std::collections::HashMap<String, u64> {
        let url = format!("{}/_sluice/requests", self.endpoint());
        let report: Value = reqwest::get(&url)
            .await
            .expect("request counts")
            .json()
            .await
            .expect("request counts as JSON");
        report["counts"]
            .as_object()
            .map(|counts| {
                counts
                    .iter()
                    .map(|(action, n)| (action.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        sqs_client(&self.endpoint()).await
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&sdk_config(&self.endpoint()).await)
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let config = sdk_config(&self.endpoint()).await;
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        )
    }

    pub async fn kinesis(&self) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::new(&sdk_config(&self.endpoint()).await)
    }

    /// Stamps DynamoDB and Kinesis stream records written from now on as `offset_seconds` away from now
    /// (the launcher's test control; negative makes them old).
    pub async fn shift_stream_clock(&self, offset_seconds: i64) {
        let url = format!(
            "{}/_sluice/stream-clock?offset_seconds={offset_seconds}",
            self.endpoint()
        );
        let response = reqwest::Client::new()
            .put(&url)
            .send()
            .await
            .expect("stream clock");
        assert!(response.status().is_success());
    }
}

/// AWS settings for a local endpoint (moto, sluice's Invoke API): us-east-1, test credentials.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

// === DynamoDB ===

/// Creates a table keyed by `id` (a string) with a NEW_AND_OLD_IMAGES stream; returns the
/// stream's ARN.
pub async fn create_stream_table(client: &aws_sdk_dynamodb::Client, name: &str) -> String {
    use aws_sdk_dynamodb::types::*;
    let output = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
    output
        .table_description()
        .and_then(|t| t.latest_stream_arn())
        .expect("stream arn")
        .to_owned()
}

/// Puts an item `{id, v, ...extra}`.
pub async fn put_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &str,
    version: u64,
    extra: &[(&str, &str)],
) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut request = client
        .put_item()
        .table_name(table)
        .item("id", AttributeValue::S(id.into()))
        .item("v", AttributeValue::N(version.to_string()));
    for (name, value) in extra {
        request = request.item(*name, AttributeValue::S((*value).into()));
    }
    request.send().await.expect("put item");
}

pub async fn delete_item(client: &aws_sdk_dynamodb::Client, table: &str, id: &str) {
    use aws_sdk_dynamodb::types::AttributeValue;
    client
        .delete_item()
        .table_name(table)
        .key("id", AttributeValue::S(id.into()))
        .send()
        .await
        .expect("delete item");
}

/// The sequence number of a DynamoDB stream record, as a number for ordering (moto's sequence
/// numbers fit in u128).
pub fn sequence_of(record: &Value) -> u128 {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a sequence number")
}

/// The `id` key of a DynamoDB stream record.
pub fn key_of(record: &Value) -> String {
    record["dynamodb"]["Keys"]["id"]["S"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Writes `{"key": "k<n % keys>", "n": n}` to a Kinesis stream under partition key
/// `k<n % keys>`, one record every `pause`, until stopped.
pub struct KeyedWriter {
    writing: Arc<std::sync::atomic::AtomicBool>,
    written: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyedWriter {
    pub fn start(
        kinesis: &aws_sdk_kinesis::Client,
        stream: &str,
        keys: u64,
        pause: Duration,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (kinesis, stream) = (kinesis.clone(), stream.to_owned());
            let (writing, written) = (writing.clone(), written.clone());
            tokio::spawn(async move {
                while writing.load(Ordering::SeqCst) {
                    let n = written.load(Ordering::SeqCst);
                    let key = format!("k{}", n % keys);
                    let data = serde_json::json!({"key": key, "n": n});
                    put_kinesis(&kinesis, &stream, &key, &data).await;
                    written.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pause).await;
                }
            })
        };
        KeyedWriter {
            writing,
            written,
            task,
        }
    }

    /// Stops writing; how many records were written.
    pub async fn stop(self) -> u64 {
        self.writing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("the writer");
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// === Tumbling windows ===

/// A window as a handler sees it: the event's `shardId` and `window.start` (ms since the epoch).
pub type WindowId = (String, u64);

/// A time in an event (`2020-12-09T07:04:00Z`), in milliseconds since the Unix epoch.
pub fn epoch_ms(iso: &Value) -> u64 {
    let at = humantime::parse_rfc3339(iso.as_str().expect("a time")).expect("RFC 3339");
    at.duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

pub fn window_of(event: &Value) -> WindowId {
    (
        event["shardId"].as_str().expect("a shardId").to_owned(),
        epoch_ms(&event["window"]["start"]),
    )
}

/// Lambda's tumbling-window aggregation: the event's `state` with each record counted under
/// `key(record)`; the final invocation answers `{}`.
pub fn count_in_window(event: &Value, key: impl Fn(&Value) -> String) -> Value {
    if event["isFinalInvokeForWindow"] == serde_json::json!(true) {
        return serde_json::json!({});
    }
    let mut state = event["state"].as_object().cloned().unwrap_or_default();
    for record in event["Records"].as_array().expect("Records") {
        let key = key(record);
        let count = state.get(&key).and_then(Value::as_u64).unwrap_or(0);
        state.insert(key, serde_json::json!(count + 1));
    }
    serde_json::json!({"state": state, "batchItemFailures": []})
}

/// What a handler counting with [`count_in_window`] was sent.
pub struct Windowed {
    /// Distinct records delivered (by `eventID`).
    pub records: usize,
    /// Per window, per key, the distinct records first delivered in it.
    pub counts: std::collections::BTreeMap<WindowId, std::collections::BTreeMap<String, u64>>,
    /// Per window, the `state` of each final invocation.
    pub finals: std::collections::BTreeMap<WindowId, Vec<Value>>,
}

impl Windowed {
    pub fn of(received: &[Received], key: impl Fn(&Value) -> String) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut windowed = Windowed {
            records: 0,
            counts: Default::default(),
            finals: Default::default(),
        };
        for request in received {
            let window = window_of(&request.event);
            if request.event["isFinalInvokeForWindow"] == serde_json::json!(true) {
                let state = request.event["state"].clone();
                windowed.finals.entry(window).or_default().push(state);
                continue;
            }
            for record in request.records() {
                let id = record["eventID"].as_str().expect("an eventID").to_owned();
                if seen.insert(id) {
                    *windowed
                        .counts
                        .entry(window.clone())
                        .or_default()
                        .entry(key(&record))
                        .or_default() += 1;
                }
            }
        }
        windowed.records = seen.len();
        windowed
    }

    /// Every window with records had its final invocation.
    pub fn all_closed(&self) -> bool {
        self.counts.keys().all(|w| self.finals.contains_key(w))
    }

    /// Every final invocation's state counts each record of its window once.
    pub fn assert_finals_exact(&self) {
        for (window, states) in &self.finals {
            let want = self.counts.get(window).cloned().unwrap_or_default();
            for state in states {
                let got: std::collections::BTreeMap<String, u64> =
                    serde_json::from_value(state.clone()).expect("a state of counts");
                assert_eq!(got, want, "the final state of {window:?}");
            }
        }
    }
}

/// Every record was delivered in the window of its arrival (`arrival_ms`), and every window is
/// `length` long and aligned to multiples of it.
pub fn assert_records_in_their_windows(
    received: &[Received],
    length: Duration,
    arrival_ms: impl Fn(&Value) -> u64,
) {
    let length = length.as_millis() as u64;
    for request in received {
        let (start, end) = (
            epoch_ms(&request.event["window"]["start"]),
            epoch_ms(&request.event["window"]["end"]),
        );
        assert_eq!((end - start, start % length), (length, 0));
        for record in request.records() {
            let arrived = arrival_ms(&record);
            assert!(
                (start..end).contains(&arrived),
                "{record} in {start}..{end}"
            );
        }
    }
}

/// The first invocation after `at` of each window that had invocations before it: its `state`.
pub fn states_resumed_after(
    received: &[Received],
    at: Instant,
) -> std::collections::BTreeMap<WindowId, Value> {
    let before: std::collections::HashSet<WindowId> = received
        .iter()
        .filter(|r| r.at < at && r.event["isFinalInvokeForWindow"] == serde_json::json!(false))
        .map(|r| window_of(&r.event))
        .collect();
    let mut resumed = std::collections::BTreeMap::new();
    for request in received.iter().filter(|r| r.at > at) {
        let window = window_of(&request.event);
        if before.contains(&window) && !resumed.contains_key(&window) {
            resumed.insert(window, request.event["state"].clone());
        }
    }
    resumed
}

// === S3 ===

/// Every object in `bucket`, parsed as JSON, with its key.
pub async fn s3_objects(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<(String, Value)> {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects");
    let mut objects = Vec::new();
    for object in listed.contents() {
        let key = object.key().unwrap_or_default().to_owned();
        let body = client
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .expect("get object")
            .body
            .collect()
            .await
            .expect("object body")
            .into_bytes();
        objects.push((key, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    }
    objects
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bucket that notifies `queue` of every created object.
pub async fn notifying_bucket(moto: &Moto, bucket: &str, queue_url: &str) -> aws_sdk_s3::Client {
    let s3 = moto.s3().await;
    let sqs = moto.sqs().await;
    s3.create_bucket().bucket(bucket).send().await.unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .queue_configurations(
                    aws_sdk_s3::types::QueueConfiguration::builder()
                        .queue_arn(arn)
                        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    s3
}

pub async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config(endpoint).await)
}

/// Creates a queue with the given attributes (e.g. `("VisibilityTimeout", "2")`); returns its URL.
pub async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(&str, &str)],
) -> String {
    let mut request = client.create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        request = request.attributes(QueueAttributeName::FifoQueue, "true");
    }
    for (key, value) in attributes {
        request = request.attributes(QueueAttributeName::from(*key), *value);
    }
    request
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue url")
        .to_owned()
}

/// Sends bodies in batches of ten; FIFO queues get `group_of(body)` as the message group.
pub async fn send_bodies(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    bodies: &[String],
    group_of: Option<&dyn Fn(&str) -> String>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in bodies.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(index, body)| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(format!("e{index}"))
                    .message_body(body);
                if let Some(group_of) = group_of {
                    entry = entry
                        .message_group_id(group_of(body))
                        .message_deduplication_id(
                            body.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
                        );
                }
                entry.build().expect("entry")
            })
            .collect::<Vec<_>>();
        let output = client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send batch");
        assert!(output.failed().is_empty(), "{:?}", output.failed());
        let mut sent: Vec<_> = output.successful().to_vec();
        sent.sort_by_key(|e| e.id()[1..].parse::<usize>().unwrap_or(0));
        ids.extend(sent.iter().map(|e| e.message_id().to_owned()));
    }
    ids
}

/// Visible + in-flight + delayed messages of a queue.
pub async fn queue_depth(client: &aws_sdk_sqs::Client, queue_url: &str) -> u64 {
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let attributes = output.attributes().cloned().unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        QueueAttributeName::ApproximateNumberOfMessagesDelayed,
    ]
    .iter()
    .map(|name| {
        attributes
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// Receives every message visible right now (without waiting), leaving them in flight for `hold`.
pub async fn receive_all(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    hold_seconds: i32,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut messages = Vec::new();
    loop {
        let output = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .visibility_timeout(hold_seconds)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        if output.messages().is_empty() {
            return messages;
        }
        messages.extend(output.messages().iter().cloned());
    }
}

// === impl Handler ===

/// What the test handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn json(value: Value) -> Self {
        Self::ok(value.to_string())
    }

    /// Answers with `status` (a function error for 5xx) and `body`.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            ..Self::ok(body)
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request the handler received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub event: Value,
    pub at: Instant,
}

impl Received {
    pub fn records(&self) -> Vec<Value> {
        self.event["Records"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

type Behaviour = dyn Fn(&str, &Value) -> Reply + Send + Sync;
type Log = Arc<Mutex<Vec<Received>>>;
type HandlerState = (Arc<Behaviour>, Log, Log);

async fn handle_request(
    axum::extract::State((behaviour, received, completed)): axum::extract::State<HandlerState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::http::Response<axum::body::Body> {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request = Received {
        path: uri.path().to_owned(),
        headers,
        event,
        at: Instant::now(),
    };
    received.lock().unwrap().push(request.clone());
    let reply = behaviour(&request.path, &request.event);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    completed.lock().unwrap().push(request);
    let mut response =
        axum::http::Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    response.body(axum::body::Body::from(reply.body)).unwrap()
}

/// An HTTP server standing in for a Lambda function; records every request.
pub struct Handler {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    completed: Arc<Mutex<Vec<Received>>>,
}

impl Handler {
    pub async fn start(behaviour: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) -> Self {
        let behaviour: Arc<Behaviour> = Arc::new(behaviour);
        let received = Arc::new(Mutex::new(Vec::new()));
        let completed = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = (behaviour, received.clone(), completed.clone());
        let app = axum::Router::new()
            .fallback(handle_request)
            .with_state(state);
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self {
            addr,
            received,
            completed,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests whose response has been sent.
    pub fn completed(&self) -> Vec<Received> {
        self.completed.lock().unwrap().clone()
    }

    /// Every record delivered so far, in delivery order.
    pub fn records(&self) -> Vec<Value> {
        self.received().iter().flat_map(Received::records).collect()
    }

    /// How many times each body was delivered.
    pub fn deliveries_by_body(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for record in self.records() {
            *counts
                .entry(record["body"].as_str().unwrap_or_default().to_owned())
                .or_insert(0) += 1;
        }
        counts
    }
}

// === impl Sluice ===

/// The `sluice` binary the end-to-end tests run: the root package's `sluice-under-test`, which
/// cargo builds together with the package's integration tests (so it is always fresh and links
/// the library the tests built). Built here only when missing, for a run from another package.
pub fn sluice_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    let root = workspace_root();
    let binary = target_dir().join("debug/sluice-under-test");
    BUILD.call_once(|| {
        if binary.exists() {
            return;
        }
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "sluice-e2e",
                "--bin",
                "sluice-under-test",
                "--features",
                "e2e",
            ])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building sluice failed");
    });
    binary
}

/// The `bootstrap` of `examples/lambda-rust` (a Lambda function on the `lambda_runtime` crate).
pub fn lambda_bootstrap() -> PathBuf {
    build_as_scripts_test_does();
    target_dir().join("debug/bootstrap")
}

/// An example program of the root package (`examples/<name>.rs`).
pub fn example_binary(name: &str) -> PathBuf {
    build_as_scripts_test_does();
    target_dir().join("debug/examples").join(name)
}

/// The features scripts/test builds and tests the workspace with.
pub const TEST_FEATURES: &str = "sluice-e2e/e2e,sluice/e2e";

/// Builds the example and the Lambda bootstrap the tests run, once per test process, resolving
/// features as scripts/test does (the whole workspace, [`TEST_FEATURES`], a target that needs
/// dev-dependencies), so that after its build this only finds them fresh. Building one package
/// alone (`-p sluice-example-lambda`, `--example in_process`) resolves features for that package
/// only: it compiled the sluice library and the example's dependencies again, inside a test's
/// time (39 s and 60 s on two cores). Only these two targets are built: `sluice-under-test`
/// and the other packages' targets are left as the developer's own `cargo test` built them.
fn build_as_scripts_test_does() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--features",
                TEST_FEATURES,
                "--example",
                "in_process",
                "--bin",
                "bootstrap",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the workspace failed");
    });
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A running `sluice run` process with its config in a temporary directory; killed on drop.
///
/// Its servers listen on port 0 (`{admin}` and `{invoke}` in a config become `127.0.0.1:0`), and
/// their addresses are read from the address file sluice writes once they listen, so parallel
/// tests never race for a port.
pub struct Sluice {
    child: Mutex<Child>,
    pub dir: tempfile::TempDir,
    log_path: PathBuf,
    address_file: PathBuf,
    addresses: std::sync::OnceLock<Value>,
}

/// How long sluice may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment that points the AWS SDK at moto with dummy credentials.
pub fn moto_env(moto: &Moto) -> Vec<(String, String)> {
    aws_env(&moto.endpoint())
}

/// Environment that points the AWS SDK at `endpoint` (moto, or a proxy in front of it) with
/// dummy credentials.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ENDPOINT_URL".into(), endpoint.to_owned()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

impl Sluice {
    /// Writes `config` (where `{admin}` and `{invoke}` become `127.0.0.1:0`) and starts sluice.
    pub fn start(config: &str, env: &[(String, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("sluice.yaml");
        std::fs::File::create(&config_path)
            .and_then(|mut f| f.write_all(any_port(config).as_bytes()))
            .expect("writing config");
        Self::start_file(&config_path, dir, env)
    }

    pub fn start_file(
        config_path: &Path,
        dir: tempfile::TempDir,
        env: &[(String, String)],
    ) -> Self {
        let mut command = Command::new(sluice_binary());
        command.args(["run", "-c"]).arg(config_path);
        Self::start_command(command, dir, env)
    }

    /// Starts a program that runs sluice (the binary, or an example embedding it); it reports
    /// its addresses through `SLUICE_ADDRESS_FILE`.
    pub fn start_command(
        mut command: Command,
        dir: tempfile::TempDir,
        env: &[(String, String)],
    ) -> Self {
        let address_file = dir.path().join("addresses.json");
        command.env("SLUICE_ADDRESS_FILE", &address_file);
        let log_path = dir.path().join("sluice.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = command
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info,sluice=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting sluice");
        Self {
            child: Mutex::new(child),
            dir,
            log_path,
            address_file,
            addresses: std::sync::OnceLock::new(),
        }
    }

    /// The file sluice writes its addresses to (for `sluice health --address-file`).
    pub fn address_file(&self) -> &Path {
        &self.address_file
    }

    /// The addresses sluice reported, waiting until it listens; `None` if it exited or did not
    /// listen within a minute.
    pub async fn addresses(&self) -> Option<&Value> {
        if let Some(addresses) = self.addresses.get() {
            return Some(addresses);
        }
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while Instant::now() < deadline {
            let read = std::fs::read_to_string(&self.address_file)
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok());
            if let Some(addresses) = read {
                return Some(self.addresses.get_or_init(|| addresses));
            }
            if self.exited() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The admin server's address; panics (with the log) if sluice never listened.
    pub async fn admin(&self) -> SocketAddr {
        self.address("admin").await.parse().expect("an address")
    }

    /// The Invoke API's address (host:port); panics (with the log) if it never listened.
    pub async fn invoke_api(&self) -> String {
        self.address("invoke_api").await
    }

    async fn address(&self, server: &str) -> String {
        match self.addresses().await.and_then(|a| a[server].as_str()) {
            Some(address) => address.to_owned(),
            None => panic!(
                "sluice did not report a {server} address\n---- sluice log ----\n{}",
                self.logs()
            ),
        }
    }

    fn exited(&self) -> bool {
        !matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.get_mut().unwrap().try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GETs `path` from the admin server; `(0, "")` when it cannot be reached.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let Some(admin) = self
            .addresses()
            .await
            .and_then(|a| a["admin"].as_str().map(str::to_owned))
        else {
            return (0, String::new());
        };
        let url = format!("http://{admin}{path}");
        match reqwest::get(&url).await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// The value of one Prometheus sample, e.g. `sluice_records_received_total{mapping="m"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_value(&text, series)
    }
}

/// The counters that move when a mapping does anything with a record.
const ACTIVITY: [&str; 6] = [
    "sluice_records_received_total",
    "sluice_batches_invoked_total",
    "sluice_records_acknowledged_total",
    "sluice_records_retried_total",
    "sluice_records_dead_lettered_total",
    "sluice_records_filtered_total",
];

/// The sum of every sample of `name` labelled `mapping="..."` (over its other labels).
pub fn metric_of_mapping(text: &str, name: &str, mapping: &str) -> f64 {
    let label = format!("mapping=\"{mapping}\"");
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

impl Sluice {
    /// Waits until `mapping` (or Invoke API function) is quiet: no record in flight (queue
    /// sources), no invocation running (every kind: invocations started minus finished), and
    /// nothing it counts (records received, batches invoked, records acknowledged, retried,
    /// dead-lettered, filtered) changed for `window`. A negative assertion after it sees
    /// everything sluice does with what it has read, instead of hoping a fixed sleep was long
    /// enough; `window` must outlast the longest pause between a mapping's steps (a retry's
    /// backoff). Panics if sluice cannot be asked, or after two minutes.
    pub async fn settled(&self, mapping: &str, window: Duration) {
        let snapshot = || async {
            let (status, text) = self.get("/metrics").await;
            assert_eq!(
                status,
                200,
                "settled({mapping}): /metrics did not answer\n---- sluice log ----\n{}",
                self.logs()
            );
            let running = metric_of_mapping(&text, "sluice_batches_invoked_total", mapping)
                - metric_of_mapping(&text, "sluice_invoke_duration_seconds_count", mapping);
            let in_flight = metric_of_mapping(&text, "sluice_in_flight_records", mapping) + running;
            let counts: Vec<f64> = ACTIVITY
                .iter()
                .map(|name| metric_of_mapping(&text, name, mapping))
                .collect();
            (in_flight, counts)
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut in_flight, mut counts) = snapshot().await;
        let mut quiet_since = Instant::now();
        loop {
            if in_flight == 0.0 && quiet_since.elapsed() >= window {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mapping {mapping} did not settle: {in_flight} records in flight, counts {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (now_in_flight, now_counts) = snapshot().await;
            if now_counts != counts || now_in_flight != 0.0 {
                quiet_since = Instant::now();
            }
            (in_flight, counts) = (now_in_flight, now_counts);
        }
    }
}

/// Reads one sample from Prometheus text; 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric_sample(text, series).unwrap_or(0.0)
}

/// Reads one sample from Prometheus text; `None` when the series is absent.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- sluice log ----\n{}", self.logs());
        }
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a Kinesis stream with `shards` shards; returns its ARN.
pub async fn create_kinesis_stream(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    shards: i32,
) -> String {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
    client
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
        .expect("DescribeStreamSummary")
        .stream_description_summary()
        .expect("a summary")
        .stream_arn()
        .to_owned()
}

/// Puts one record whose data is `data` as JSON; returns its shard and sequence number.
pub async fn put_kinesis(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    partition_key: &str,
    data: &Value,
) -> (String, String) {
    let output = client
        .put_record()
        .stream_name(stream)
        .partition_key(partition_key)
        .data(aws_sdk_kinesis::primitives::Blob::new(data.to_string()))
        .send()
        .await
        .expect("PutRecord");
    (
        output.shard_id().to_owned(),
        output.sequence_number().to_owned(),
    )
}

/// The JSON a Kinesis record of Lambda's event carries in its base64 `data`.
pub fn kinesis_data(record: &Value) -> Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(record["kinesis"]["data"].as_str().expect("kinesis.data"))
        .expect("base64 data");
    serde_json::from_slice(&bytes).expect("JSON data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_config_is_a_config_sluice_loads_with_each_part_where_it_belongs() {
        let state = tempfile::tempdir().unwrap();
        let text = TestConfig::new("http://127.0.0.1:1/h")
            .shutdown_timeout("5s")
            .state_dir(state.path())
            .top("max_filters_per_mapping: 7\n")
            .target_options(", max_concurrency: 2")
            .mappings("  - name: m\n    target: handler\n    source:\n      sqs: { queue_url: \"http://127.0.0.1:1/1/q\" }\n")
            .render();
        let config = sluice::config::parse("t.yaml", &any_port(&text), Default::default())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.state_dir, state.path());
        assert_eq!(config.admin.listen.port(), 0);
        assert_eq!(config.targets["handler"].max_concurrency(), 2);
        assert_eq!(config.mappings[0].name, "m");
    }
}
