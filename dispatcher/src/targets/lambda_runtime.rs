//! The `lambda_runtime` target: unmodified Lambda functions as a warm pool of worker processes
//! that speak the Lambda Runtime API (`2018-06-01`) to sluice.
//!
//! Each worker gets its own loopback Runtime API endpoint (`AWS_LAMBDA_RUNTIME_API`) and the
//! environment a runtime interface client expects (`_HANDLER`, `AWS_LAMBDA_FUNCTION_NAME`,
//! `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `AWS_LAMBDA_FUNCTION_VERSION`, `AWS_REGION`, ...). Guarantees:
//!
//! - one invocation per idle worker: a worker's `GET /runtime/invocation/next` takes the next
//!   queued invocation, with the `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`,
//!   `-Invoked-Function-Arn` and `-Trace-Id` headers;
//! - `POST .../{id}/response` is a normal return (bodies over 6 MB are refused with 413 and are a
//!   `Function.ResponseSizeTooLarge` error); `POST .../{id}/error` is a function error with the
//!   runtime's `errorType` / `errorMessage`;
//! - at the target's `timeout` the worker's process group is killed and replaced, and the
//!   invocation is a timeout (`Sandbox.Timedout`); a worker that exits mid-invocation is replaced
//!   and the invocation is a function error (`Runtime.ExitError`);
//! - `POST /runtime/init/error`, an exit before the first `next`, or no `next` within
//!   `init_timeout` is an init failure: logged with the error, counted, and the worker restarted
//!   with backoff (100 ms doubling to 30 s);
//! - an invocation that no worker takes within the timeout (every worker failing to start) is an
//!   unavailable target, so it does not use up retry attempts;
//! - init (cold start) durations go to `sluice_lambda_init_duration_seconds{target}`, the time
//!   sluice adds around the function's own run to `sluice_lambda_invoke_overhead_seconds{target}`,
//!   workers that finished init to `sluice_lambda_workers_ready{target}`, and replacements to
//!   `sluice_lambda_worker_restarts_total{target, reason}`.

use super::command::kill_group;
use super::{Invocation, Target, error_from_body, returned};
use crate::config::LambdaRuntimeTargetConfig;
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sluice_policies::{ErrorInfo, Outcome};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Lambda's synchronous response limit.
const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// One invocation waiting for a worker.
struct Job {
    request_id: String,
    payload: bytes::Bytes,
    traceparent: String,
    deadline: SystemTime,
    reply: oneshot::Sender<Outcome>,
    queued_at: Instant,
}

/// The invocation a worker is running.
struct InFlight {
    request_id: String,
    reply: oneshot::Sender<Outcome>,
    deadline: Instant,
    queued_at: Instant,
    delivered_at: Instant,
}

enum WorkerEvent {
    NextRequested,
    InitError(ErrorInfo),
}

struct WorkerState {
    function_arn: String,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    in_flight: Mutex<Option<InFlight>>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    stop: CancellationToken,
    target: String,
}

pub struct LambdaRuntimeTarget {
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
    stop: CancellationToken,
}

impl LambdaRuntimeTarget {
    /// Starts the pool: `concurrency` workers, each supervised and replaced when it dies.
    pub fn start(name: &str, config: &LambdaRuntimeTargetConfig, region: &str) -> Self {
        let (sender, receiver) = mpsc::channel::<Job>(config.concurrency);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let stop = CancellationToken::new();
        let function_name = config
            .function_name
            .clone()
            .unwrap_or_else(|| name.to_owned());
        for index in 0..config.concurrency {
            let supervisor = Supervisor {
                target: name.to_owned(),
                index,
                config: config.clone(),
                function_name: function_name.clone(),
                region: region.to_owned(),
                jobs: receiver.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(supervisor.run());
        }
        Self {
            jobs: sender,
            timeout: config.timeout,
            stop,
        }
    }
}

impl Drop for LambdaRuntimeTarget {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Target for LambdaRuntimeTarget {
    async fn invoke(&self, invocation: &Invocation) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            request_id: invocation.request_id.clone(),
            payload: invocation.payload.clone(),
            traceparent: invocation.traceparent.clone(),
            deadline: SystemTime::now() + self.timeout,
            reply,
            queued_at: Instant::now(),
        };
        if self.jobs.send(job).await.is_err() {
            return Outcome::Unavailable {
                message: "the worker pool is stopped".into(),
            };
        }
        // The worker enforces the timeout once it has the invocation; this bounds the wait for a
        // worker plus the run, with a margin for the kill.
        match tokio::time::timeout(self.timeout * 2 + Duration::from_secs(5), outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Unavailable {
                message: "no worker took the invocation (the pool stopped)".into(),
            },
            Err(_) => Outcome::Unavailable {
                message: "no worker was ready to take the invocation; see the worker init errors in the log".into(),
            },
        }
    }
}

struct Supervisor {
    target: String,
    index: usize,
    config: LambdaRuntimeTargetConfig,
    function_name: String,
    region: String,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    stop: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let mut restart_delay = Duration::from_millis(100);
        while !self.stop.is_cancelled() {
            let initialized = self.run_once().await;
            if self.stop.is_cancelled() {
                break;
            }
            if initialized {
                restart_delay = Duration::from_millis(100);
                continue;
            }
            metrics::counter!("sluice_lambda_worker_restarts_total", "target" => self.target.clone(), "reason" => "init_failed").increment(1);
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(restart_delay) => {}
            }
            restart_delay = (restart_delay * 2).min(MAX_RESTART_DELAY);
        }
    }

    /// Runs one worker process until it dies or is killed; true when it finished its init.
    async fn run_once(&self) -> bool {
        let (events, mut event_receiver) = mpsc::unbounded_channel();
        let worker_stop = self.stop.child_token();
        let state = Arc::new(WorkerState {
            function_arn: format!(
                "arn:aws:lambda:{}:000000000000:function:{}",
                self.region, self.function_name
            ),
            jobs: self.jobs.clone(),
            in_flight: Mutex::new(None),
            events,
            stop: worker_stop.clone(),
            target: self.target.clone(),
        });
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(target_name = %self.target, %error, "cannot open the runtime API listener");
                return false;
            }
        };
        let api = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let server = tokio::spawn({
            let stop = worker_stop.clone();
            let app = runtime_api(state.clone());
            async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            }
        });
        let mut child = match self.spawn(&api) {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(target_name = %self.target, worker = self.index, program = ?self.config.command, %error, "cannot start the worker");
                worker_stop.cancel();
                let _ = server.await;
                return false;
            }
        };
        let pid = child.id();
        if let Some(stderr) = child.stderr.take() {
            self.forward_output(stderr);
        }
        if let Some(stdout) = child.stdout.take() {
            self.forward_output(stdout);
        }
        let started = Instant::now();
        let mut initialized = false;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        // Set once sluice killed the worker, so its exit is not counted a second time.
        let mut killed = false;
        let mut kill = |reason: &str| {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            killed = true;
            metrics::counter!("sluice_lambda_worker_restarts_total", "target" => self.target.clone(), "reason" => reason.to_owned()).increment(1);
        };
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    if let Some(pid) = pid {
                        kill_group(pid);
                    }
                    break;
                }
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    if let Some(in_flight) = state.in_flight.lock().expect("in-flight lock").take() {
                        tracing::warn!(target_name = %self.target, worker = self.index, request_id = %in_flight.request_id, %status, "worker exited during an invocation; replacing it");
                        let _ = in_flight.reply.send(Outcome::FunctionError(ErrorInfo::new(
                            "Runtime.ExitError",
                            format!("the worker exited during the invocation ({status})"),
                        )));
                        metrics::counter!("sluice_lambda_worker_restarts_total", "target" => self.target.clone(), "reason" => "exited").increment(1);
                    } else if killed {
                        tracing::debug!(target_name = %self.target, worker = self.index, %status, "killed worker exited");
                    } else if initialized {
                        tracing::warn!(target_name = %self.target, worker = self.index, %status, "worker exited; replacing it");
                        metrics::counter!("sluice_lambda_worker_restarts_total", "target" => self.target.clone(), "reason" => "exited").increment(1);
                    } else {
                        tracing::error!(target_name = %self.target, worker = self.index, %status, "worker exited before its init finished; restarting with backoff");
                    }
                    break;
                }
                Some(event) = event_receiver.recv() => match event {
                    WorkerEvent::NextRequested if !initialized => {
                        initialized = true;
                        let init = started.elapsed();
                        metrics::histogram!("sluice_lambda_init_duration_seconds", "target" => self.target.clone()).record(init.as_secs_f64());
                        metrics::gauge!("sluice_lambda_workers_ready", "target" => self.target.clone()).increment(1.0);
                        tracing::info!(target_name = %self.target, worker = self.index, init_ms = init.as_millis() as u64, "worker ready");
                    }
                    WorkerEvent::NextRequested => {}
                    WorkerEvent::InitError(error) => {
                        tracing::error!(target_name = %self.target, worker = self.index, error_type = %error.error_type, error = %error.message, "worker init failed; restarting with backoff");
                        kill("init_error");
                    }
                },
                _ = tick.tick() => {
                    let timed_out = {
                        let mut in_flight = state.in_flight.lock().expect("in-flight lock");
                        match in_flight.as_ref() {
                            Some(current) if Instant::now() >= current.deadline => in_flight.take(),
                            _ => None,
                        }
                    };
                    if let Some(in_flight) = timed_out {
                        tracing::warn!(target_name = %self.target, worker = self.index, request_id = %in_flight.request_id, timeout_ms = self.config.timeout.as_millis() as u64, "invocation timed out; killing and replacing the worker");
                        kill("timeout");
                        let _ = in_flight.reply.send(Outcome::Timeout {
                            after_ms: in_flight.delivered_at.elapsed().as_millis() as u64,
                        });
                    } else if !initialized && started.elapsed() >= self.config.init_timeout {
                        tracing::error!(target_name = %self.target, worker = self.index, init_timeout_ms = self.config.init_timeout.as_millis() as u64, "worker did not ask for an invocation within init_timeout; restarting it");
                        kill("init_timeout");
                    }
                }
            }
        }
        if initialized {
            metrics::gauge!("sluice_lambda_workers_ready", "target" => self.target.clone())
                .decrement(1.0);
        }
        worker_stop.cancel();
        let _ = child.wait().await;
        let _ = server.await;
        initialized
    }

    /// Logs each line a worker writes, with the target and worker it came from.
    fn forward_output(&self, output: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let target = self.target.clone();
        let worker = self.index;
        tokio::spawn(async move {
            let mut lines = BufReader::new(output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "sluice::handler", target_name = %target, worker, %line, "worker output");
            }
        });
    }

    fn spawn(&self, api: &str) -> std::io::Result<tokio::process::Child> {
        let program = &self.config.command;
        let mut command = tokio::process::Command::new(&program[0]);
        let task_root = self
            .config
            .working_dir
            .clone()
            .or_else(|| {
                std::env::current_dir()
                    .ok()
                    .map(|d| d.display().to_string())
            })
            .unwrap_or_default();
        command
            .args(&program[1..])
            .env("AWS_LAMBDA_RUNTIME_API", api)
            .env(
                "_HANDLER",
                self.config.handler.as_deref().unwrap_or("handler"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.function_name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.config.memory_size.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.function_name),
            )
            .env(
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("sluice/{}/{}", std::process::id(), self.index),
            )
            .env("AWS_REGION", &self.region)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_sluice")
            .env("LAMBDA_TASK_ROOT", &task_root)
            .envs(
                self.config
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.config.working_dir {
            command.current_dir(dir);
        }
        command.spawn()
    }
}

fn runtime_api(state: Arc<WorkerState>) -> axum::Router {
    axum::Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(respond),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(report_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(state)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("Content-Type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    json_response(
        status,
        serde_json::json!({ "errorType": error_type, "errorMessage": message }),
    )
}

fn accepted() -> Response {
    json_response(StatusCode::ACCEPTED, serde_json::json!({"status": "OK"}))
}

/// X-Ray's trace header form of the invocation's W3C trace context.
fn trace_id(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    match parts.as_slice() {
        [_, trace, parent, flags] if trace.len() == 32 => format!(
            "Root=1-{}-{};Parent={parent};Sampled={}",
            &trace[..8],
            &trace[8..],
            if flags.ends_with('1') { 1 } else { 0 }
        ),
        _ => String::new(),
    }
}

async fn next(State(state): State<Arc<WorkerState>>) -> Response {
    let _ = state.events.send(WorkerEvent::NextRequested);
    if let Some(abandoned) = state.in_flight.lock().expect("in-flight lock").take() {
        // The runtime asked for more work without answering: the invocation failed.
        let _ = abandoned.reply.send(Outcome::FunctionError(ErrorInfo::new(
            "Runtime.InvalidResponse",
            "the runtime asked for the next invocation without answering this one",
        )));
    }
    let job = {
        let mut jobs = state.jobs.lock().await;
        tokio::select! {
            _ = state.stop.cancelled() => None,
            job = jobs.recv() => job,
        }
    };
    let Some(job) = job else {
        return api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "sluice is stopping",
        );
    };
    let deadline_ms = job
        .deadline
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let remaining = job
        .deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let now = Instant::now();
    *state.in_flight.lock().expect("in-flight lock") = Some(InFlight {
        request_id: job.request_id.clone(),
        reply: job.reply,
        deadline: now + remaining,
        queued_at: job.queued_at,
        delivered_at: now,
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &job.request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", &state.function_arn)
        .header("Lambda-Runtime-Trace-Id", trace_id(&job.traceparent))
        .body(Body::from(job.payload))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Takes the in-flight invocation `id`, if it is the one this worker runs.
fn take_in_flight(state: &WorkerState, id: &str) -> Option<InFlight> {
    let mut in_flight = state.in_flight.lock().expect("in-flight lock");
    if in_flight.as_ref().is_some_and(|f| f.request_id == id) {
        in_flight.take()
    } else {
        None
    }
}

fn finish(state: &WorkerState, in_flight: InFlight, outcome: Outcome) {
    let total = in_flight.queued_at.elapsed();
    let function = in_flight.delivered_at.elapsed();
    metrics::histogram!("sluice_lambda_invoke_overhead_seconds", "target" => state.target.clone())
        .record(total.saturating_sub(function).as_secs_f64());
    let _ = in_flight.reply.send(outcome);
}

async fn read_limited(body: Body) -> Result<bytes::Bytes, ()> {
    axum::body::to_bytes(body, MAX_RESPONSE_BYTES)
        .await
        .map_err(|_| ())
}

async fn respond(
    State(state): State<Arc<WorkerState>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let Some(in_flight) = take_in_flight(&state, &id) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "no invocation with this request id is running on this worker",
        );
    };
    match read_limited(body).await {
        Ok(bytes) => {
            finish(&state, in_flight, returned(&bytes));
            accepted()
        }
        Err(()) => {
            finish(
                &state,
                in_flight,
                Outcome::FunctionError(ErrorInfo::new(
                    "Function.ResponseSizeTooLarge",
                    format!("the response is larger than {MAX_RESPONSE_BYTES} bytes"),
                )),
            );
            api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "the response is larger than 6 MB",
            )
        }
    }
}

async fn report_error(
    State(state): State<Arc<WorkerState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(in_flight) = take_in_flight(&state, &id) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "no invocation with this request id is running on this worker",
        );
    };
    let default_type = headers
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unhandled")
        .to_owned();
    let bytes = read_limited(body).await.unwrap_or_default();
    let error = error_from_body(&bytes, &default_type);
    finish(&state, in_flight, Outcome::FunctionError(error));
    accepted()
}

async fn init_error(
    State(state): State<Arc<WorkerState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let default_type = headers
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Runtime.InitError")
        .to_owned();
    let bytes = read_limited(body).await.unwrap_or_default();
    let _ = state.events.send(WorkerEvent::InitError(error_from_body(
        &bytes,
        &default_type,
    )));
    accepted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_the_xray_form_of_the_traceparent() {
        assert_eq!(
            trace_id("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"),
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        );
        assert_eq!(trace_id("garbage"), "");
    }
}
