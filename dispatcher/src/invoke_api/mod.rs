//! Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`) in front of targets, so
//! unmodified AWS clients (an SDK with an endpoint override, `aws lambda invoke --endpoint-url`)
//! can call handlers synchronously and asynchronously (semantics.md §5, §6).
//!
//! - `RequestResponse` (default): one attempt, no retry; the handler's whole response is the body
//!   (up to 6 MB); a function error or timeout answers 200 with `X-Amz-Function-Error: Unhandled`
//!   and the error document; when the target has no free slot within [`SYNC_SLOT_WAIT`] (1 s),
//!   or throttles, the answer is 429 `TooManyRequestsException`, as Lambda answers when
//!   concurrency is exhausted; the body is read only once a slot is held, so waiting callers hold
//!   no payloads; requests over 6 MB are refused with 413 `RequestTooLargeException`;
//! - `Event`: the event (at most 1 MB) is committed to the durable queue in the state file (or,
//!   with `event_queue`, sent to its SQS queue: see [`event_queue`]) before 202 is answered, then handled under the function's async policy (retries with delays,
//!   `RetriesExhausted` / `EventAgeExceeded` to `on_failure`, `Success` to `on_success`); it
//!   survives a restart. The queue is bounded (`max_queued_events`, `max_queued_bytes`; beyond
//!   them 429 `TooManyRequestsException`); payloads stay on disk until their event runs, and at
//!   most the target's `max_concurrency` events run at once. An event is claimed from the
//!   in-memory schedule before it runs, so one process never runs it twice at once. Every attempt
//!   carries the request id the caller got with the 202;
//! - when the state file fails, the function reports it on `/readyz`; while it cannot be read
//!   (or its stored events are not yet read at start, after a 2 s wait), new `Event` calls are
//!   refused with 500 `ServiceException` instead of accepted into a queue that would not run; a
//!   failed write refuses only the event it could not store;
//! - `DryRun`: 204 once the function exists;
//! - unknown functions and qualifiers other than `$LATEST` answer 404 `ResourceNotFoundException`;
//! - with a token, a request must carry it as `Authorization: Bearer <token>` or as the access key
//!   id of its AWS signature (so AWS clients work with `AWS_ACCESS_KEY_ID=<token>`), else 403; the
//!   comparison takes the same time whatever the token's content.

pub mod event_queue;

use crate::config::{FunctionConfig, InvokeApiConfig};
use crate::destinations::envelope::now_since_epoch;
use crate::destinations::{AsyncRecord, Destination, EnvelopeSource, Placement};
use crate::health::{Health, MappingHealthHandle};
use crate::http_server::constant_time_eq;
use crate::http_server::{BodyError, read_body};
use crate::runtime::async_exec::{self, Completion, EventStore};
use crate::runtime::invoker::{Invoker, Slot};
use crate::targets::{Invocation, SharedTarget};
use crate::telemetry::MappingMetrics;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_policies::{AsyncAttempt, AsyncPolicy, ErrorInfo, Outcome};
use sluice_sources::async_queue::{AsyncQueue, EventMeta};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Lambda's limit for synchronous payloads.
const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// Lambda's limit for asynchronous payloads.
const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// How long a synchronous call waits for a free slot on its target before 429.
pub const SYNC_SLOT_WAIT: Duration = Duration::from_secs(1);
/// How long an event waits before it is tried again after the state file failed it.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// The end of an event whose destination record is still to be stored.
#[derive(Clone)]
struct Finishing {
    condition: Completion,
    invoke_count: u32,
    response: Result<Option<Value>, ErrorInfo>,
}

/// What kind of state file call failed; a failed read is worse (queued events cannot run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StoreFailure {
    Write,
    Read,
}

/// The worst state file failure since calls last worked.
#[derive(Default)]
struct StoreFailures(Mutex<Option<StoreFailure>>);

impl StoreFailures {
    /// Notes a failure; true when it is the first since calls worked.
    fn failed(&self, kind: StoreFailure) -> bool {
        let mut failing = self.0.lock().expect("store lock");
        let first = failing.is_none();
        *failing = Some(failing.map_or(kind, |worst| worst.max(kind)));
        first
    }

    /// Notes that a call of `kind` worked: a read clears any failure, a write only a failed
    /// write. True when this cleared one.
    fn worked(&self, kind: StoreFailure) -> bool {
        let mut failing = self.0.lock().expect("store lock");
        let cleared = failing.is_some_and(|failure| failure <= kind);
        if cleared {
            *failing = None;
        }
        cleared
    }

    fn current(&self) -> Option<StoreFailure> {
        *self.0.lock().expect("store lock")
    }
}

/// The bound on queued `Event` invocations, shared by every function of the API.
pub struct Backlog {
    max_events: u64,
    max_bytes: u64,
    /// (events, bytes) queued now.
    queued: Mutex<(u64, u64)>,
}

impl Backlog {
    pub fn new(max_events: u64, max_bytes: u64) -> Self {
        Self {
            max_events,
            max_bytes,
            queued: Mutex::new((0, 0)),
        }
    }

    /// Counts an event of `bytes` in, unless that would pass a bound.
    fn try_reserve(&self, bytes: u64) -> bool {
        let mut queued = self.queued.lock().expect("backlog lock");
        if queued.0 + 1 > self.max_events || queued.1 + bytes > self.max_bytes {
            return false;
        }
        *queued = (queued.0 + 1, queued.1 + bytes);
        true
    }

    /// Counts an event that was already stored (found at start), bounds or not.
    fn add(&self, bytes: u64) {
        let mut queued = self.queued.lock().expect("backlog lock");
        *queued = (queued.0 + 1, queued.1 + bytes);
    }

    fn release(&self, bytes: u64) {
        let mut queued = self.queued.lock().expect("backlog lock");
        *queued = (queued.0.saturating_sub(1), queued.1.saturating_sub(bytes));
    }

    fn queued(&self) -> (u64, u64) {
        *self.queued.lock().expect("backlog lock")
    }
}

/// The events of one function waiting to run, by due time. Only events in here can be claimed;
/// a claimed event is back in here only once its attempt is over.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(u64, String)>,
    events: HashMap<String, EventMeta>,
    /// Whether the stored index has been read into the schedule.
    loaded: bool,
}

impl Schedule {
    fn insert(&mut self, meta: EventMeta) {
        self.due.insert((meta.not_before_ms, meta.id.clone()));
        self.events.insert(meta.id.clone(), meta);
    }

    /// Takes the first event due at `now`, or says when the next one is due.
    fn claim(&mut self, now: u64) -> Result<EventMeta, Option<u64>> {
        match self.due.first() {
            Some((due, _)) if *due <= now => {
                let (_, id) = self.due.pop_first().expect("a first entry");
                Ok(self.events.remove(&id).expect("scheduled events are known"))
            }
            Some((due, _)) => Err(Some(*due)),
            None => Err(None),
        }
    }
}

/// One function callers can invoke.
pub struct Function {
    pub name: String,
    /// The function's target behind the invoke layers; its metrics carry the function's name
    /// in the `mapping` label.
    pub invoker: Invoker,
    pub policy: AsyncPolicy,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub on_success: Option<Arc<dyn Destination>>,
    region: String,
    queue: AsyncQueue,
    backlog: Arc<Backlog>,
    schedule: Mutex<Schedule>,
    wake: Notify,
    /// The function's `/readyz` entry (under `functions`): failing while the state file fails or
    /// the async worker is not running (both must be well for it to clear), or while a
    /// destination record cannot be stored.
    health: MappingHealthHandle,
    /// The async worker has read the queued events and runs.
    worker_running: std::sync::atomic::AtomicBool,
    /// Set while the state file fails reads (or writes) of this function's events; new events
    /// are refused while reads fail, since they could not be run.
    store_failing: StoreFailures,
    /// Set once the stored index is in the schedule.
    loaded: Notify,
    /// Events whose attempts are over but whose destination record could not be stored yet:
    /// their retry stores the record again without invoking the handler again.
    finishing: Mutex<HashMap<String, Finishing>>,
    /// At most this many events run at once.
    workers: usize,
    /// With `invoke_api.event_queue`: where accepted events go instead of the state file.
    event_sender: Option<Arc<event_queue::EventSender>>,
}

impl Function {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        config: &FunctionConfig,
        target: SharedTarget,
        queue: AsyncQueue,
        backlog: Arc<Backlog>,
        on_failure: Option<Arc<dyn Destination>>,
        on_success: Option<Arc<dyn Destination>>,
        region: &str,
        health: Health,
        event_sender: Option<Arc<event_queue::EventSender>>,
    ) -> Self {
        let workers = target.max_concurrency();
        Self {
            name: name.to_owned(),
            region: region.to_owned(),
            invoker: Invoker::new(target, MappingMetrics::function(name)),
            policy: config.policy.clone(),
            on_failure,
            on_success,
            queue,
            backlog,
            schedule: Mutex::new(Schedule::default()),
            wake: Notify::new(),
            health: health.register_function(name),
            worker_running: std::sync::atomic::AtomicBool::new(false),
            store_failing: StoreFailures::default(),
            loaded: Notify::new(),
            finishing: Mutex::new(HashMap::new()),
            workers,
            event_sender,
        }
    }

    /// Notes that the state file failed a call: the log says how to recover, `/readyz` names the
    /// function, and new events are refused until a call succeeds.
    fn store_failed(&self, kind: StoreFailure, what: &str, error: &dyn std::fmt::Display) {
        let path = self.queue.describe();
        let problem = format!(
            "the state file {path} failed while {what}: {error}. If this persists, stop sluice and move {path} aside; the queued Event invocations and stream checkpoints in it are then lost (streams start again from their starting_position)"
        );
        if self.store_failing.failed(kind) {
            tracing::error!(function = %self.name, state_file = %path, %error, what, "the state file failed; refusing new Event invocations while it cannot be read. If this persists, stop sluice and move the file aside (its queued events and checkpoints are lost)");
        }
        self.health.poll_failed(&problem);
    }

    /// Clears the entry's failure once the state file works and the async worker runs.
    fn settle_health(&self) {
        let running = self
            .worker_running
            .load(std::sync::atomic::Ordering::Acquire);
        if running && self.failure().is_none() {
            self.health.poll_succeeded();
        }
    }

    /// The async worker died (`Some(why)`) or runs again (`None`).
    fn worker_state(&self, died: Option<&str>) {
        self.worker_running
            .store(died.is_none(), std::sync::atomic::Ordering::Release);
        match died {
            Some(message) => self
                .health
                .restarting(&format!("the async worker died: {message}")),
            None => self.settle_health(),
        }
    }

    fn failure(&self) -> Option<StoreFailure> {
        self.store_failing.current()
    }

    /// A store call of `kind` worked: a read clears any failure, a write only a write failure.
    fn store_worked(&self, kind: StoreFailure) {
        if self.store_failing.worked(kind) {
            tracing::info!(function = %self.name, "the state file works again");
            self.settle_health();
        }
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().expect("schedule lock")
    }

    /// Puts an event back into the schedule after an attempt.
    fn reschedule(&self, meta: EventMeta) {
        self.schedule().insert(meta);
        self.wake.notify_one();
    }

    /// Forgets a finished event.
    fn finished(&self, meta: &EventMeta) {
        self.finishing
            .lock()
            .expect("finishing lock")
            .remove(&meta.id);
        self.backlog.release(meta.payload_bytes);
        self.wake.notify_one();
    }
}

struct ApiState {
    functions: BTreeMap<String, Arc<Function>>,
    token: Option<String>,
    region: String,
}

fn now_ms() -> u64 {
    now_since_epoch().as_millis() as u64
}

fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        [
            ("Content-Type", "application/json"),
            ("x-amzn-ErrorType", error_type),
        ],
        json!({ "Type": "User", "message": message, "Message": message }).to_string(),
    )
        .into_response()
}

/// The access key id of an AWS SigV4 `Authorization` header.
fn signature_key_id(authorization: &str) -> Option<&str> {
    let credential = authorization.split("Credential=").nth(1)?;
    credential.split('/').next()
}

fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let Some(authorization) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let bearer = authorization.strip_prefix("Bearer ").unwrap_or_default();
    let key_id = signature_key_id(authorization).unwrap_or_default();
    // Both are compared, in constant time, so the answer's timing tells nothing of the token.
    constant_time_eq(bearer.as_bytes(), token.as_bytes())
        | constant_time_eq(key_id.as_bytes(), token.as_bytes())
}

/// The event queue's consumer, for [`serve`]: how to open the queue and send retries to it, the
/// `/readyz` registry, and how long its events may drain.
pub struct EventQueueConsumer {
    pub queues: Arc<dyn sluice_sources::QueueOpener>,
    pub sender: Arc<event_queue::EventSender>,
    pub health: Health,
    pub drain: Duration,
}

/// Serves the Invoke API until `stop`; the functions' async workers (and the event queue's, with
/// `event_queue`) run under `tracker`, each supervised (a panic is logged, shown on `/readyz` and
/// the worker restarted).
pub async fn serve(
    config: &InvokeApiConfig,
    functions: BTreeMap<String, Arc<Function>>,
    region: String,
    stop: CancellationToken,
    tracker: TaskTracker,
    consumer: Option<EventQueueConsumer>,
) -> Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr), crate::http_server::ListenError> {
    if let (Some(queue_url), Some(consumer)) = (&config.event_queue, consumer) {
        let health = consumer.health.register(event_queue::WORKER_NAME);
        let on_death = {
            let health = health.clone();
            move |message: &str| health.restarting(message)
        };
        let (queue_url, functions) = (queue_url.clone(), functions.clone());
        tracker.spawn(crate::runtime::supervise(
            event_queue::WORKER_NAME.to_owned(),
            stop.clone(),
            on_death,
            move |token| {
                event_queue::run(
                    queue_url.clone(),
                    consumer.queues.clone(),
                    consumer.sender.clone(),
                    functions.clone(),
                    health.clone(),
                    consumer.drain,
                    token,
                )
            },
        ));
    }
    for function in functions.values() {
        let worker = function.clone();
        let on_death = {
            let function = function.clone();
            move |message: &str| function.worker_state(Some(message))
        };
        tracker.spawn(crate::runtime::supervise(
            format!("function {}", function.name),
            stop.clone(),
            on_death,
            move |token| run_async_worker(worker.clone(), token),
        ));
    }
    let state = Arc::new(ApiState {
        functions,
        token: config.token.clone(),
        region,
    });
    let app = axum::Router::new()
        .route(
            "/2015-03-31/functions/{name}/invocations",
            axum::routing::post(invoke),
        )
        .with_state(state);
    let listener = crate::http_server::bind("invoke_api", config.listen).await?;
    let bound = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(address = %bound, "invoke API listening");
    Ok((
        crate::http_server::spawn("invoke_api", listener, app, stop),
        bound,
    ))
}

async fn invoke(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&state, &headers) {
        return error_response(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "the request does not carry the invoke API token",
        );
    }
    // Callers may name a function by its ARN, as AWS clients allow.
    let short = name.rsplit(':').next().unwrap_or(&name).to_owned();
    let qualifier = query.get("Qualifier").map(String::as_str);
    let arn = format!(
        "arn:aws:lambda:{}:000000000000:function:{short}",
        state.region
    );
    let Some(function) = state.functions.get(&short).cloned() else {
        return error_response(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {arn}"),
        );
    };
    if qualifier.is_some_and(|q| q != "$LATEST") {
        return error_response(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!(
                "Function not found: {arn}:{}",
                qualifier.unwrap_or_default()
            ),
        );
    }
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_owned();
    let limit = match kind.as_str() {
        "Event" => MAX_ASYNC_PAYLOAD,
        "RequestResponse" | "DryRun" => MAX_SYNC_PAYLOAD,
        other => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("X-Amz-Invocation-Type {other:?} is not RequestResponse, Event or DryRun"),
            );
        }
    };
    // A synchronous call takes its slot before its body is read: callers waiting for room hold
    // no payloads, and the wait is bounded.
    let permit = if kind == "RequestResponse" {
        // A synchronous caller learns of an open circuit at once rather than after the slot wait.
        if let Some(reason) = function.invoker.target().circuit_open() {
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                &format!("{reason}; retry with backoff"),
            );
        }
        match tokio::time::timeout(SYNC_SLOT_WAIT, function.invoker.target().permit()).await {
            Ok(permit) => Some(permit),
            Err(_) => {
                let target = function.invoker.target();
                let message = match target.circuit_open() {
                    Some(reason) => format!("{reason}; retry with backoff"),
                    None if target.rate_limited() => format!(
                        "Rate Exceeded: target {} is at its rate_limit; retry with backoff",
                        target.name
                    ),
                    None => format!(
                        "Rate Exceeded: every slot of target {} is busy (max_concurrency {}); retry with backoff",
                        target.name,
                        target.max_concurrency()
                    ),
                };
                return error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequestsException",
                    &message,
                );
            }
        }
    } else {
        None
    };
    let payload = match read_body(body, limit).await {
        Ok(payload) => payload,
        Err(BodyError::TooLarge) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                &format!(
                    "Request must be smaller than {limit} bytes for the InvokeFunction operation"
                ),
            );
        }
        Err(BodyError::TimedOut) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                "the request body did not arrive in time",
            );
        }
        Err(BodyError::Broken) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "the request body could not be read",
            );
        }
    };
    let payload = if payload.is_empty() {
        bytes::Bytes::from_static(b"{}")
    } else {
        payload
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    }
    match (kind.as_str(), permit) {
        ("Event", _) => enqueue(&function, payload).await,
        ("RequestResponse", Some(slot)) => invoke_sync(&function, payload, slot).await,
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn invoke_sync(function: &Function, payload: bytes::Bytes, slot: Slot) -> Response {
    let invocation = Invocation::new(&function.name, payload);
    let outcome = function.invoker.invoke_in(slot, invocation.clone()).await;
    let request_id = invocation.request_id.as_str();
    let respond = |function_error: Option<&str>, body: Body| {
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .header("X-Amz-Executed-Version", "$LATEST")
            .header("x-amzn-RequestId", request_id);
        if let Some(kind) = function_error {
            response = response.header("X-Amz-Function-Error", kind);
        }
        response
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    };
    match outcome {
        Outcome::Returned { response } => respond(
            None,
            Body::from(response.map_or_else(|| "null".to_owned(), |value| value.to_string())),
        ),
        // The handler's whole answer, as Lambda returns a function's output unchanged.
        Outcome::ReturnedNonJson { body } => respond(None, Body::from(body)),
        Outcome::Throttled { message } => error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &message,
        ),
        Outcome::Unavailable { message } => {
            error_response(StatusCode::BAD_GATEWAY, "ServiceException", &message)
        }
        failed => {
            let error = failed.error().expect("a failed outcome has an error");
            respond(
                Some("Unhandled"),
                Body::from(
                    json!({
                        "errorMessage": error.message,
                        "errorType": error.error_type,
                        "requestId": request_id,
                        "stackTrace": [],
                    })
                    .to_string(),
                ),
            )
        }
    }
}

/// An `Event` invocation into the SQS event queue: 202 once SQS has it.
async fn enqueue_to_queue(
    function: &Function,
    sender: &event_queue::EventSender,
    payload: bytes::Bytes,
) -> Response {
    // A queue message is text; Lambda takes only JSON (which is) as a payload anyway.
    let Ok(text) = std::str::from_utf8(&payload) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json: the payload is not UTF-8 text",
        );
    };
    let request_id = crate::targets::new_request_id();
    match sender.send(&function.name, &request_id, text).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            [("x-amzn-RequestId", request_id.as_str())],
            "",
        )
            .into_response(),
        Err(error @ event_queue::SendError::TooLarge { .. }) => {
            tracing::warn!(function = %function.name, %error, "an Event invocation is over the event queue's message size");
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                "the event is larger than the event queue's MaximumMessageSize (with about 200 bytes of attributes)",
            )
        }
        Err(error @ event_queue::SendError::InvalidContent { .. }) => {
            tracing::warn!(function = %function.name, %error, "an Event invocation holds characters SQS cannot carry");
            error_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "the event holds characters an SQS message cannot carry (such as U+FFFE, U+FFFF or control characters)",
            )
        }
        Err(error) => {
            tracing::error!(function = %function.name, %error, "the event queue refused an Event invocation; the caller gets 500");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "the event could not be queued; try again",
            )
        }
    }
}

async fn enqueue(function: &Arc<Function>, payload: bytes::Bytes) -> Response {
    if let Some(sender) = &function.event_sender {
        return enqueue_to_queue(function, sender, payload).await;
    }
    if !wait_until_loaded(function).await || function.failure() == Some(StoreFailure::Read) {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "the state file that queues Event invocations is failing; the event was not accepted, try again later",
        );
    }
    let bytes = payload.len() as u64;
    if !function.backlog.try_reserve(bytes) {
        let (events, queued_bytes) = function.backlog.queued();
        tracing::warn!(function = %function.name, queued_events = events, queued_bytes, "the Event queue is full; refusing the event with 429");
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &format!(
                "Rate Exceeded: {events} events ({queued_bytes} bytes) are queued, the most invoke_api.max_queued_events / max_queued_bytes allow; retry with backoff"
            ),
        );
    }
    let request_id = crate::targets::new_request_id();
    let meta = EventMeta::new(&function.name, &request_id, bytes, now_ms());
    // Stored and scheduled in a task of its own: a caller that disconnects mid-write must not
    // leave a stored event out of the schedule (or its room in the backlog taken).
    let stored = tokio::spawn({
        let function = function.clone();
        async move {
            match function.queue.insert(&meta, payload).await {
                Ok(()) => {
                    function.store_worked(StoreFailure::Write);
                    function.reschedule(meta);
                    true
                }
                Err(error) => {
                    function.backlog.release(bytes);
                    function.store_failed(StoreFailure::Write, "storing an event", &error);
                    false
                }
            }
        }
    })
    .await
    .unwrap_or(false);
    if !stored {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "the event could not be stored durably; try again",
        );
    }
    (
        StatusCode::ACCEPTED,
        [("x-amzn-RequestId", request_id.as_str())],
        "",
    )
        .into_response()
}

/// Whether the function's stored events are in its schedule, waiting up to 2 s for the first
/// read at start: an event accepted before that could not be run.
async fn wait_until_loaded(function: &Function) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let loaded = function.loaded.notified();
        if function.schedule().loaded {
            return true;
        }
        if tokio::time::timeout_at(deadline, loaded).await.is_err() {
            return function.schedule().loaded;
        }
    }
}

/// Reads the stored index into the schedule, retrying (with the failure on `/readyz`) until it
/// can, or until `stop`.
async fn load_schedule(function: &Function, stop: &CancellationToken) -> bool {
    let mut failures = 0u32;
    loop {
        if function.schedule().loaded {
            return true;
        }
        match function.queue.index(&function.name).await {
            Ok(stored) => {
                let mut schedule = function.schedule();
                if !schedule.loaded {
                    for meta in stored {
                        function.backlog.add(meta.payload_bytes);
                        schedule.insert(meta);
                    }
                    schedule.loaded = true;
                }
                drop(schedule);
                function.loaded.notify_waiters();
                function.store_worked(StoreFailure::Read);
                return true;
            }
            Err(error) => {
                failures += 1;
                function.store_failed(StoreFailure::Read, "reading the queued events", &error);
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(crate::runtime::retry_delay(failures)) => {}
                }
            }
        }
    }
}

/// Runs a function's queued events as they come due, at most `workers` at once, until `stop`.
async fn run_async_worker(function: Arc<Function>, stop: CancellationToken) {
    if !load_schedule(&function, &stop).await {
        return;
    }
    // The events are read (and a worker that died before is running again).
    function.worker_state(None);
    let slots = Arc::new(tokio::sync::Semaphore::new(function.workers));
    let tracker = TaskTracker::new();
    loop {
        // A slot first: an event is claimed only when it can start at once.
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the slots are never closed"),
        };
        let now = now_ms();
        let claimed = function.schedule().claim(now);
        match claimed {
            Ok(meta) => {
                let function = function.clone();
                tracker.spawn(async move {
                    // Its own task, so that a panic comes back here instead of losing the event.
                    let attempt = tokio::spawn({
                        let (function, meta) = (function.clone(), meta.clone());
                        async move { handle_event(&function, meta).await }
                    });
                    if let Err(error) = attempt.await {
                        let cause = if error.is_panic() {
                            crate::runtime::panic_message(&*error.into_panic())
                        } else {
                            error.to_string()
                        };
                        tracing::error!(function = %function.name, request_id = %meta.request_id, %cause, "handling an event panicked; it is tried again later");
                        let mut meta = meta;
                        meta.not_before_ms = now_ms() + STORE_RETRY.as_millis() as u64;
                        function.reschedule(meta);
                    }
                    drop(slot);
                });
            }
            Err(next_due) => {
                drop(slot);
                let pause = next_due.map_or(Duration::from_secs(60), |due| {
                    Duration::from_millis(due.saturating_sub(now))
                });
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = function.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn handle_event(function: &Function, mut meta: EventMeta) {
    let payload = match function.queue.payload(&meta.id).await {
        Ok(Some(payload)) => {
            function.store_worked(StoreFailure::Read);
            payload
        }
        Ok(None) => {
            tracing::error!(function = %function.name, request_id = %meta.request_id, "a queued event has no stored payload; dropping it");
            let _ = function.queue.remove(&meta.id).await;
            function.finished(&meta);
            return;
        }
        Err(error) => {
            function.store_failed(StoreFailure::Read, "reading an event's payload", &error);
            meta.not_before_ms = now_ms() + STORE_RETRY.as_millis() as u64;
            function.reschedule(meta);
            return;
        }
    };
    let attempt = AsyncAttempt {
        queued_at: Duration::from_millis(meta.queued_at_ms),
        failed_attempts: meta.failed_attempts,
        not_run: meta.not_run,
    };
    let request_payload = || serde_json::from_slice::<Value>(&payload).unwrap_or(Value::Null);
    // Looked at, not taken: it goes only once the record is stored (a panic in between must not
    // make the handler run again).
    let finishing = function
        .finishing
        .lock()
        .expect("finishing lock")
        .get(&meta.id)
        .cloned();
    if let Some(end) = finishing {
        // The handler already ran: only the destination record is still to be stored.
        finish(
            function,
            meta,
            end.condition,
            end.invoke_count,
            request_payload(),
            end.response,
        )
        .await;
        return;
    }
    let invocation =
        Invocation::attempt_of(&function.name, payload.clone(), &meta.request_id, None);
    let subject = meta.request_id.clone();
    let mut store = QueuedEvent {
        function,
        meta: Some(meta),
        payload: &payload,
    };
    async_exec::run(
        async_exec::Attempt {
            invoker: &function.invoker,
            policy: &function.policy,
            subject: &subject,
            attempt,
            invocation,
        },
        &mut store,
    )
    .await;
}

/// A queued `Event` invocation as the async executor's store: the durable local queue.
struct QueuedEvent<'a> {
    function: &'a Function,
    /// Taken by the first reschedule or completion.
    meta: Option<EventMeta>,
    /// The request payload, parsed for the destination record only when the event completes.
    payload: &'a [u8],
}

#[async_trait::async_trait]
impl EventStore for QueuedEvent<'_> {
    async fn reschedule(&mut self, delay: Duration, failed_attempts: u32, not_run: u32) {
        let Some(mut meta) = self.meta.take() else {
            return;
        };
        let function = self.function;
        meta.failed_attempts = failed_attempts;
        meta.not_run = not_run;
        meta.not_before_ms = now_ms() + delay.as_millis() as u64;
        if let Err(error) = function.queue.update(&meta).await {
            // The retry still happens in this process; after a restart the attempt counts
            // are those stored last.
            function.store_failed(StoreFailure::Write, "storing a retry", &error);
        }
        function.reschedule(meta);
    }

    async fn complete(
        &mut self,
        completion: Completion,
        invoke_count: u32,
        response: Result<Option<Value>, ErrorInfo>,
    ) {
        let Some(meta) = self.meta.take() else {
            return;
        };
        if completion == Completion::Success {
            tracing::info!(function = %self.function.name, request_id = %meta.request_id, attempts = invoke_count, "event handled");
        }
        finish(
            self.function,
            meta,
            completion,
            invoke_count,
            serde_json::from_slice(self.payload).unwrap_or(Value::Null),
            response,
        )
        .await;
    }
}

/// How an event ended, for its destination record.
struct Ending<'a> {
    request_id: &'a str,
    completion: Completion,
    invoke_count: u32,
    payload: Value,
    response: Result<Option<Value>, ErrorInfo>,
    first_attempt_at: Duration,
}

/// Stores the destination record of an event that ended (when its function has a destination
/// for how it ended); false when it could not be stored: the event stays, and only the record is
/// stored again. Wherever the event was queued, this is how it ends.
async fn store_ending(function: &Function, ending: Ending<'_>) -> bool {
    let Ending {
        request_id,
        completion,
        invoke_count,
        payload,
        response,
        first_attempt_at,
    } = ending;
    let condition = completion.as_str();
    let destination = match completion {
        Completion::Success => function.on_success.as_ref(),
        Completion::Failed(_) => function.on_failure.as_ref(),
    };
    if let Some(destination) = destination {
        let record = AsyncRecord {
            mapping: function.name.clone(),
            target: function.name.clone(),
            region: function.region.clone(),
            condition,
            invoke_count,
            request_id: request_id.to_owned(),
            request_payload: payload,
            response,
            source: EnvelopeSource::Invoke {
                function: function.name.clone(),
                request_id: request_id.to_owned(),
            },
            first_attempt_at,
            last_attempt_at: now_since_epoch(),
        };
        let placement = Placement {
            mapping: &function.name,
            key_part: "invoke",
            group_hint: &function.name,
            dedup_hint: request_id,
        };
        let call = function.health.aws_call();
        let stored = destination.store(record.to_json(), &placement).await;
        drop(call);
        if let Err(error) = stored {
            tracing::error!(function = %function.name, %request_id, condition, %error, "storing the destination record failed; the event stays queued and only the record is stored again");
            function.health.ack_failed(&format!(
                "storing a {condition} record in {} failed: {error}; the event stays queued and its record is stored again",
                destination.describe()
            ));
            return false;
        }
        function.health.ack_succeeded();
        if completion != Completion::Success {
            function.invoker.metrics().dead_lettered(condition, 1);
        }
    } else if completion != Completion::Success {
        tracing::error!(function = %function.name, %request_id, condition, "event discarded: it ran out of retries and the function has no on_failure destination");
        function.invoker.metrics().discarded(condition, 1);
    }
    if completion != Completion::Success {
        tracing::warn!(function = %function.name, %request_id, condition, attempts = invoke_count, "event gave up");
    }
    true
}

/// Sends the destination record (when there is a destination) and removes the event; a record
/// that cannot be stored keeps the event queued, retried a little later.
async fn finish(
    function: &Function,
    mut meta: EventMeta,
    completion: Completion,
    invoke_count: u32,
    payload: Value,
    response: Result<Option<Value>, ErrorInfo>,
) {
    let ending = Ending {
        request_id: &meta.request_id,
        completion,
        invoke_count,
        payload,
        response: response.clone(),
        first_attempt_at: Duration::from_millis(meta.queued_at_ms),
    };
    if !store_ending(function, ending).await {
        function.finishing.lock().expect("finishing lock").insert(
            meta.id.clone(),
            Finishing {
                condition: completion,
                invoke_count,
                response,
            },
        );
        meta.not_before_ms = now_ms() + STORE_RETRY.as_millis() as u64;
        function.reschedule(meta);
        return;
    }
    match function.queue.remove(&meta.id).await {
        Ok(()) => function.store_worked(StoreFailure::Write),
        Err(error) => {
            tracing::error!(function = %function.name, request_id = %meta.request_id, %error, "cannot remove the handled event; it is handled again after a restart");
            function.store_failed(StoreFailure::Write, "removing a handled event", &error);
        }
    }
    function.finished(&meta);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(token: Option<&str>) -> ApiState {
        ApiState {
            functions: BTreeMap::new(),
            token: token.map(str::to_owned),
            region: "us-east-1".into(),
        }
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", authorization.parse().unwrap());
        headers
    }

    #[test]
    fn the_token_is_accepted_as_a_bearer_token_or_as_the_signing_key_id() {
        let guarded = state(Some("s3cret"));
        assert!(authorized(&guarded, &headers("Bearer s3cret")));
        assert!(authorized(
            &guarded,
            &headers(
                "AWS4-HMAC-SHA256 Credential=s3cret/20261129/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=abc"
            )
        ));
        assert!(!authorized(&guarded, &headers("Bearer wrong")));
        assert!(!authorized(
            &guarded,
            &headers(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261129/us-east-1/lambda/aws4_request"
            )
        ));
        assert!(!authorized(&guarded, &HeaderMap::new()));
        assert!(!authorized(&guarded, &headers("Bearer s3cre")));
        assert!(!authorized(&guarded, &headers("Bearer s3cretx")));
        assert!(authorized(&state(None), &HeaderMap::new()));
    }

    // A failure used to be recorded under a lock that `failure()` took again: the first state
    // file error deadlocked the caller.
    #[test]
    fn store_failures_keep_the_worst_and_clear_by_kind() {
        let failures = StoreFailures::default();
        assert!(failures.failed(StoreFailure::Write));
        assert!(!failures.failed(StoreFailure::Read), "not the first");
        assert_eq!(failures.current(), Some(StoreFailure::Read));
        assert!(
            !failures.worked(StoreFailure::Write),
            "a write does not clear a read failure"
        );
        assert!(failures.worked(StoreFailure::Read));
        assert_eq!(failures.current(), None);
        assert!(failures.failed(StoreFailure::Write));
        assert!(failures.worked(StoreFailure::Write));
    }

    // Review of issue 17: the function's /readyz entry has one failure state for three causes;
    // the state file working again must not clear a dead worker, nor a worker that runs again a
    // failing state file.
    #[tokio::test]
    async fn the_function_entry_clears_only_when_the_state_file_works_and_the_worker_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = sluice_sources::checkpoint::embedded::StateFile::open(dir.path()).unwrap();
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(60));
        let config = FunctionConfig {
            target: "t".into(),
            policy: AsyncPolicy::lambda_defaults(),
            on_failure: None,
            on_success: None,
        };
        let function = Function::new(
            "hello",
            &config,
            SharedTarget::new(
                "t",
                Arc::new(crate::targets::testing::ScriptedTarget::default()),
                1,
            ),
            AsyncQueue::open(file).unwrap(),
            Arc::new(Backlog::new(10, 1 << 20)),
            None,
            None,
            "us-east-1",
            health.clone(),
            None,
        );
        let status = || health.readiness().1["functions"]["hello"]["status"].clone();
        assert_eq!(status(), "starting");
        function.worker_state(None);
        assert_eq!(status(), "ready");
        function.worker_state(Some("it panicked: boom"));
        function.store_failed(StoreFailure::Write, "queueing an event", &"disk full");
        function.store_worked(StoreFailure::Write);
        assert_eq!(status(), "failing", "the worker is still dead");
        function.store_failed(StoreFailure::Read, "reading the queued events", &"corrupt");
        function.worker_state(None);
        assert_eq!(status(), "failing", "the state file still fails");
        function.store_worked(StoreFailure::Read);
        assert_eq!(status(), "ready");
        assert_eq!(health.readiness().1["functions"]["hello"]["restarts"], 1);
    }
}
