//! Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`) in front of targets, so
//! unmodified AWS clients (an SDK with an endpoint override, `aws lambda invoke --endpoint-url`)
//! can call handlers synchronously and asynchronously (semantics.md §5, §6).
//!
//! - `RequestResponse` (default): one attempt, no retry; the handler's response is the body; a
//!   function error or timeout answers 200 with `X-Amz-Function-Error: Unhandled` and the error
//!   document; a throttle answers 429 `TooManyRequestsException`; requests over 6 MB are refused
//!   with 413 `RequestTooLargeException`, as Lambda refuses them;
//! - `Event`: the event (at most 1 MB) is committed to the durable queue in the state file before
//!   202 is answered, then handled under the function's async policy (retries with delays,
//!   `RetriesExhausted` / `EventAgeExceeded` to `on_failure`, `Success` to `on_success`); it
//!   survives a restart;
//! - `DryRun`: 204 once the function exists;
//! - unknown functions and qualifiers other than `$LATEST` answer 404 `ResourceNotFoundException`;
//! - with a token, a request must carry it as `Authorization: Bearer <token>` or as the access key
//!   id of its AWS signature (so AWS clients work with `AWS_ACCESS_KEY_ID=<token>`), else 403.

use crate::config::{FunctionConfig, InvokeApiConfig};
use crate::destinations::envelope::now_since_epoch;
use crate::destinations::{AsyncRecord, Destination, EnvelopeSource, Placement};
use crate::targets::{Invocation, SharedTarget};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_policies::{AsyncAttempt, AsyncDecision, AsyncPolicy, ErrorInfo, Outcome};
use sluice_sources::async_queue::{AsyncQueue, QueuedEvent};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Lambda's limit for synchronous payloads.
const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// Lambda's limit for asynchronous payloads.
const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;

/// One function callers can invoke.
pub struct Function {
    pub name: String,
    pub target: SharedTarget,
    pub policy: AsyncPolicy,
    pub on_failure: Option<Arc<dyn Destination>>,
    pub on_success: Option<Arc<dyn Destination>>,
    region: String,
    queue: AsyncQueue,
    wake: Notify,
    in_flight: Mutex<HashSet<String>>,
}

impl Function {
    pub fn new(
        name: &str,
        config: &FunctionConfig,
        target: SharedTarget,
        queue: AsyncQueue,
        on_failure: Option<Arc<dyn Destination>>,
        on_success: Option<Arc<dyn Destination>>,
        region: &str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            region: region.to_owned(),
            target,
            policy: config.policy.clone(),
            on_failure,
            on_success,
            queue,
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
        }
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
    authorization.strip_prefix("Bearer ") == Some(token.as_str())
        || signature_key_id(authorization) == Some(token.as_str())
}

/// Serves the Invoke API until `stop`; runs one async worker per function.
pub async fn serve(
    config: &InvokeApiConfig,
    functions: BTreeMap<String, Arc<Function>>,
    region: String,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    for function in functions.values() {
        tracker.spawn(run_async_worker(function.clone(), stop.clone()));
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
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on invoke_api.listen {}: {e}", config.listen)
        })?;
    tracing::info!(listen = %config.listen, "invoke API listening");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    }))
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
    let limit = if kind == "Event" {
        MAX_ASYNC_PAYLOAD
    } else {
        MAX_SYNC_PAYLOAD
    };
    let payload = match axum::body::to_bytes(body, limit).await {
        Ok(payload) => payload,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                &format!(
                    "Request must be smaller than {limit} bytes for the InvokeFunction operation"
                ),
            );
        }
    };
    let payload = if payload.is_empty() {
        bytes::Bytes::from_static(b"{}")
    } else {
        payload
    };
    if serde_json::from_slice::<Value>(&payload).is_err() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    }
    match kind.as_str() {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => enqueue(&function, payload).await,
        "RequestResponse" => invoke_sync(&function, payload).await,
        other => error_response(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("X-Amz-Invocation-Type {other:?} is not RequestResponse, Event or DryRun"),
        ),
    }
}

async fn invoke_sync(function: &Function, payload: bytes::Bytes) -> Response {
    let invocation = Invocation::new(&function.name, payload.to_vec());
    let permit = function.target.permit().await;
    let outcome = function.target.invoke(&invocation).await;
    drop(permit);
    let request_id = invocation.request_id.as_str();
    let respond = |function_error: Option<&str>, body: String| {
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .header("X-Amz-Executed-Version", "$LATEST")
            .header("x-amzn-RequestId", request_id);
        if let Some(kind) = function_error {
            response = response.header("X-Amz-Function-Error", kind);
        }
        response
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    };
    match outcome {
        Outcome::Returned { response } => respond(
            None,
            response.map_or_else(|| "null".to_owned(), |value| value.to_string()),
        ),
        Outcome::ReturnedNonJson { body_prefix } => respond(None, json!(body_prefix).to_string()),
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
                json!({
                    "errorMessage": error.message,
                    "errorType": error.error_type,
                    "requestId": request_id,
                    "stackTrace": [],
                })
                .to_string(),
            )
        }
    }
}

async fn enqueue(function: &Function, payload: bytes::Bytes) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let event = QueuedEvent::new(
        &function.name,
        &request_id,
        String::from_utf8_lossy(&payload).into_owned(),
        now_ms(),
    );
    if let Err(error) = function.queue.put(&event).await {
        tracing::error!(function = %function.name, %error, "cannot store the event; refusing it");
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "the event could not be stored durably; try again",
        );
    }
    function.wake.notify_one();
    (
        StatusCode::ACCEPTED,
        [("x-amzn-RequestId", request_id.as_str())],
        "",
    )
        .into_response()
}

/// Handles a function's queued events as they come due, until `stop`.
async fn run_async_worker(function: Arc<Function>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let now = now_ms();
        let events = match function.queue.list(&function.name) {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(function = %function.name, %error, "cannot read the async queue");
                Vec::new()
            }
        };
        let mut next_due: Option<u64> = None;
        for event in events {
            if event.not_before_ms > now {
                next_due =
                    Some(next_due.map_or(event.not_before_ms, |n| n.min(event.not_before_ms)));
                continue;
            }
            if !function
                .in_flight
                .lock()
                .expect("in-flight lock")
                .insert(event.id.clone())
            {
                continue;
            }
            let function = function.clone();
            tracker.spawn(async move {
                let id = event.id.clone();
                handle_event(&function, event).await;
                function
                    .in_flight
                    .lock()
                    .expect("in-flight lock")
                    .remove(&id);
                function.wake.notify_one();
            });
        }
        let pause = next_due.map_or(Duration::from_secs(1), |due| {
            Duration::from_millis(due.saturating_sub(now)).min(Duration::from_secs(1))
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = function.wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn handle_event(function: &Function, mut event: QueuedEvent) {
    let attempt = AsyncAttempt {
        queued_at: Duration::from_millis(event.queued_at_ms),
        failed_attempts: event.failed_attempts,
        not_run: event.not_run,
    };
    let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    if function.policy.expired(&attempt, now_since_epoch()) {
        let error = ErrorInfo::new(
            "EventAgeExceeded",
            format!(
                "the event is older than max_event_age ({:?})",
                function.policy.max_event_age
            ),
        );
        finish(
            function,
            &event,
            "EventAgeExceeded",
            event.failed_attempts,
            payload,
            Err(error),
            &event.request_id,
        )
        .await;
        return;
    }
    let invocation = Invocation::new(&function.name, event.payload.clone().into_bytes());
    let permit = function.target.permit().await;
    let outcome = function.target.invoke(&invocation).await;
    drop(permit);
    match function
        .policy
        .decide(&attempt, &outcome, now_since_epoch(), rand::random::<f64>())
    {
        AsyncDecision::Succeeded => {
            tracing::info!(function = %function.name, request_id = %event.request_id, attempts = event.failed_attempts + 1, "event handled");
            let response = match outcome {
                Outcome::Returned { response } => response,
                _ => None,
            };
            finish(
                function,
                &event,
                "Success",
                event.failed_attempts + 1,
                payload,
                Ok(response),
                &invocation.request_id,
            )
            .await;
        }
        AsyncDecision::Retry {
            delay,
            failed_attempts,
            not_run,
            error,
        } => {
            tracing::warn!(function = %function.name, request_id = %event.request_id, error_type = %error.error_type, error = %error.message, retry_in_ms = delay.as_millis() as u64, "event failed; retrying");
            event.failed_attempts = failed_attempts;
            event.not_run = not_run;
            event.not_before_ms = now_ms() + delay.as_millis() as u64;
            if let Err(error) = function.queue.put(&event).await {
                tracing::error!(function = %function.name, %error, "cannot store the retry; the event is retried at once");
            }
        }
        AsyncDecision::DeadLetter {
            condition,
            invoke_count,
            error,
        } => {
            finish(
                function,
                &event,
                condition.as_str(),
                invoke_count,
                payload,
                Err(error),
                &invocation.request_id,
            )
            .await;
        }
    }
}

/// Sends the destination record (when there is a destination) and removes the event; a record
/// that cannot be stored keeps the event queued, retried a little later.
async fn finish(
    function: &Function,
    event: &QueuedEvent,
    condition: &'static str,
    invoke_count: u32,
    payload: Value,
    response: Result<Option<Value>, ErrorInfo>,
    request_id: &str,
) {
    let destination = if condition == "Success" {
        function.on_success.as_ref()
    } else {
        function.on_failure.as_ref()
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
                request_id: event.request_id.clone(),
            },
            first_attempt_at: Duration::from_millis(event.queued_at_ms),
            last_attempt_at: now_since_epoch(),
        };
        let placement = Placement {
            mapping: &function.name,
            key_part: "invoke",
            group_hint: &function.name,
            dedup_hint: &event.request_id,
        };
        if let Err(error) = destination.store(record.to_json(), &placement).await {
            tracing::error!(function = %function.name, request_id = %event.request_id, condition, %error, "storing the destination record failed; the event stays queued");
            let mut retry = event.clone();
            retry.not_before_ms = now_ms() + 5_000;
            let _ = function.queue.put(&retry).await;
            return;
        }
    } else if condition != "Success" {
        tracing::error!(function = %function.name, request_id = %event.request_id, condition, "event discarded: it ran out of retries and the function has no on_failure destination");
    }
    if condition != "Success" {
        tracing::warn!(function = %function.name, request_id = %event.request_id, condition, attempts = invoke_count, "event gave up");
    }
    if let Err(error) = function.queue.remove(&event.id).await {
        tracing::error!(function = %function.name, %error, "cannot remove the handled event; it may be handled again");
    }
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
        assert!(authorized(&state(None), &HeaderMap::new()));
    }
}
