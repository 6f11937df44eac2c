//! Targets: where batches are delivered. A target turns one invocation into an [`Outcome`]; it
//! never retries and never decides what happens to records (that is the policies' job).

pub mod adaptive;
pub mod breaker;
pub mod command;
pub mod http;
pub mod in_process;
pub mod lambda_runtime;
pub mod output;
mod peer;
pub mod rate;
#[cfg(test)]
pub mod testing;

use crate::config::TargetConfig;
use async_trait::async_trait;
use serde_json::Value;
use sluice_policies::{ErrorInfo, Outcome};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One call of a target with one event.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    pub mapping: String,
    /// The event document, exactly as Lambda would receive it (cheap to clone into a request).
    pub payload: bytes::Bytes,
    /// W3C trace context for this invocation.
    pub traceparent: String,
    /// The exported span, when traces are exported.
    pub span: crate::traces::InvocationSpan,
    /// Records the event carries (1 for an event that is not a batch), for rate limits.
    pub records: u32,
}

impl Invocation {
    /// An invocation that starts a new trace.
    pub fn new(mapping: &str, payload: impl Into<bytes::Bytes>) -> Self {
        Self::continuing(mapping, payload.into(), None, new_request_id())
    }

    /// An attempt of an asynchronous event: every attempt of one event carries the event's own
    /// request id, as Lambda's retries of an asynchronous invocation do.
    pub fn attempt_of(
        mapping: &str,
        payload: impl Into<bytes::Bytes>,
        request_id: &str,
        parent: Option<&sluice_sources::trace::TraceContext>,
    ) -> Self {
        Self::continuing(mapping, payload.into(), parent, request_id.to_owned())
    }

    /// An invocation of `records`' batch: it continues the trace of the first record that
    /// carries one (a batch is one span; Lambda's X-Ray integration does the same), or starts a
    /// new trace.
    pub fn for_records<'a>(
        mapping: &str,
        payload: Vec<u8>,
        records: impl IntoIterator<Item = &'a sluice_sources::Record>,
    ) -> Self {
        let mut count = 0u32;
        let mut parent = None;
        for record in records {
            count = count.saturating_add(1);
            parent = parent.or(record.trace.as_ref());
        }
        let mut invocation = Self::continuing(mapping, payload.into(), parent, new_request_id());
        invocation.records = count.max(1);
        invocation
    }

    fn continuing(
        mapping: &str,
        payload: bytes::Bytes,
        parent: Option<&sluice_sources::trace::TraceContext>,
        request_id: String,
    ) -> Self {
        let (span, traceparent) =
            crate::traces::InvocationSpan::start(mapping, &request_id, parent);
        Self {
            request_id,
            mapping: mapping.to_owned(),
            payload,
            traceparent,
            span,
            records: 1,
        }
    }
}

/// A fresh request id (a v4 UUID).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A request id derived from `parts`: the same parts give the same id, in this process and the
/// next (used where an event has no stored id of its own, such as one record of an S3
/// notification, so that its retries share one id).
pub fn stable_request_id(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, parts.join("\u{0}").as_bytes()).to_string()
}

/// Milliseconds since the Unix epoch at `now + after`.
pub fn deadline_ms(after: Duration) -> u128 {
    (SystemTime::now() + after)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// Invokes the handler once. Never panics and never returns an error: every failure is an
    /// [`Outcome`].
    async fn invoke(&self, invocation: &Invocation) -> Outcome;
}

/// The longest call of a target built without a config: Lambda's longest function timeout.
const MAX_CALL: Duration = Duration::from_secs(15 * 60);

/// A slot under a target's concurrency limit; the call runs while it is held. It carries the
/// right to probe the target when its circuit breaker chose this call as the probe.
pub struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    probe: Option<breaker::Probe>,
    /// The adaptive limit the slot counts against, and when the call started.
    adaptive: Option<(Arc<adaptive::AdaptiveConcurrency>, tokio::time::Instant)>,
}

impl Slot {
    /// The call starts now: its latency, for the adaptive limit, counts from here (not from when
    /// the slot was taken, which may come before a request body is read).
    pub fn calling(&mut self) {
        if let Some((_, started)) = &mut self.adaptive {
            *started = tokio::time::Instant::now();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Some(permit), Some((adaptive, _))) = (self.permit.take(), &self.adaptive) {
            adaptive.release(permit);
        }
    }
}

/// A built target with its concurrency limit and circuit breaker, shared by the mappings that
/// use it.
#[derive(Clone)]
pub struct SharedTarget {
    pub name: String,
    pub target: Arc<dyn Target>,
    permits: Arc<tokio::sync::Semaphore>,
    max_concurrency: usize,
    longest_call: Duration,
    breaker: Option<Arc<breaker::CircuitBreaker>>,
    adaptive: Option<Arc<adaptive::AdaptiveConcurrency>>,
    rate: Option<Arc<rate::RateLimit>>,
}

impl SharedTarget {
    pub fn new(name: &str, target: Arc<dyn Target>, max_concurrency: usize) -> Self {
        Self {
            name: name.to_owned(),
            target,
            permits: Arc::new(tokio::sync::Semaphore::new(max_concurrency.max(1))),
            max_concurrency: max_concurrency.max(1),
            longest_call: MAX_CALL,
            breaker: None,
            adaptive: None,
            rate: None,
        }
    }

    /// The longest one call may take by the target's own timeouts (see
    /// [`crate::config::TargetConfig::longest_call`]).
    pub fn with_longest_call(mut self, longest_call: Duration) -> Self {
        self.longest_call = longest_call;
        self
    }

    /// Puts the target behind a circuit breaker (see [`breaker`]).
    pub fn with_circuit_breaker(
        mut self,
        settings: sluice_policies::BreakerSettings,
        health: Option<crate::health::Health>,
    ) -> Self {
        self.breaker = Some(breaker::CircuitBreaker::new(&self.name, settings, health));
        self
    }

    /// Lets the target's limit move between `settings.min` and `settings.max` with how it
    /// answers (see [`adaptive`]), instead of the fixed `max_concurrency`.
    pub fn with_adaptive_concurrency(
        mut self,
        settings: sluice_policies::AdaptiveSettings,
    ) -> Self {
        let adaptive = adaptive::AdaptiveConcurrency::new(&self.name, settings);
        self.permits = adaptive.semaphore();
        self.max_concurrency = settings.max.max(1);
        self.adaptive = Some(adaptive);
        self
    }

    /// Paces the records sent to the target (see [`rate`]), shared by every mapping using it.
    pub fn with_rate_limit(mut self, records_per_second: f64, burst: u32) -> Self {
        self.rate = Some(rate::RateLimit::new(&self.name, records_per_second, burst));
        self
    }

    pub fn longest_call(&self) -> Duration {
        self.longest_call
    }

    /// How many invocations may run at once.
    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// Waits until the circuit breaker admits a call and there is room under the target's
    /// limit; hold the slot while invoking and give it to [`SharedTarget::record`] after (a slot
    /// dropped without a record, by a caller that gave up, tells the breaker and the adaptive
    /// limit nothing).
    pub async fn permit(&self) -> Slot {
        self.permit_for(1).await
    }

    /// [`SharedTarget::permit`] for a call carrying `records` records: the target's rate limit
    /// lets them go first (in arrival order), then the slot, then the breaker. Waiting for tokens
    /// before the slot keeps a paced call from holding a slot, and from having been admitted by a
    /// breaker that opened while it waited.
    pub async fn permit_for(&self, records: u32) -> Slot {
        loop {
            if let Some(rate) = &self.rate {
                rate.acquire(records).await;
            }
            // The slot first, then the breaker's word without waiting: a caller that queued for
            // a slot while the breaker was closed must not call a target that opened meanwhile,
            // and a probe must not queue behind such callers.
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the target's semaphore is never closed");
            let probe = match &self.breaker {
                None => None,
                Some(breaker) => match breaker.try_admit() {
                    breaker::Admitted::Call => None,
                    breaker::Admitted::Probe(probe) => Some(probe),
                    breaker::Admitted::Wait => {
                        drop(permit);
                        if let Some(rate) = &self.rate {
                            rate.refund(records);
                        }
                        breaker.callable().await;
                        continue;
                    }
                },
            };
            let adaptive = self.adaptive.as_ref().map(|adaptive| {
                adaptive.started();
                (adaptive.clone(), tokio::time::Instant::now())
            });
            return Slot {
                permit: Some(permit),
                probe,
                adaptive,
            };
        }
    }

    /// Waits until a call could start (the breaker admits calls and the limit has room), without
    /// taking a slot or the probe.
    pub async fn wait_for_room(&self) {
        if let Some(rate) = &self.rate {
            // Nothing is received for records that could not be sent yet.
            rate.wait_until_available().await;
        }
        if let Some(breaker) = &self.breaker {
            breaker.callable().await;
        }
        drop(
            self.permits
                .acquire()
                .await
                .expect("the target's semaphore is never closed"),
        );
    }

    /// Whether an invocation could start now without waiting.
    pub fn is_saturated(&self) -> bool {
        self.permits.available_permits() == 0
            || self.breaker.as_ref().is_some_and(|b| b.would_wait())
            || self.rate_limited()
    }

    /// Whether the target's rate limit holds records back now.
    pub fn rate_limited(&self) -> bool {
        self.rate.as_ref().is_some_and(|r| r.would_wait())
    }

    /// Why the circuit breaker holds calls back now, if a call would have to wait for it (once
    /// a probe may go, a caller gets to be the probe).
    pub fn circuit_open(&self) -> Option<String> {
        self.breaker
            .as_ref()
            .filter(|b| b.would_wait())
            .and_then(|b| b.open_reason())
    }

    /// Tells the circuit breaker how a call made in `slot` ended.
    pub fn record(&self, outcome: &Outcome, slot: &mut Slot) {
        if let Some(breaker) = &self.breaker {
            breaker.record(outcome, slot.probe.take());
        }
        if let Some((adaptive, started)) = &slot.adaptive {
            adaptive.ended(started.elapsed(), outcome);
        }
    }
}

/// Why a target could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("target {name}")]
    Http {
        name: String,
        #[source]
        source: http::HttpTargetError,
    },
    #[error(
        "target {name} is in_process: it runs a Rust handler that a program embedding sluice registers with Sluice::handler(\"{name}\", ...) (see examples/in_process.rs), and none was registered; the sluice binary has no handlers, so it cannot run such a target"
    )]
    NoHandler { name: String },
}

/// Builds a target; `handlers` holds the handlers registered for `in_process` targets.
pub fn build(
    name: &str,
    config: &TargetConfig,
    handlers: &std::collections::BTreeMap<String, Arc<dyn in_process::Handler>>,
    region: &str,
    health: Option<&crate::health::Health>,
) -> Result<SharedTarget, BuildError> {
    let target: Arc<dyn Target> =
        match config {
            TargetConfig::Http(http) => Arc::new(http::HttpTarget::new(http).map_err(
                |source| BuildError::Http {
                    name: name.to_owned(),
                    source,
                },
            )?),
            TargetConfig::Command(command) => Arc::new(command::CommandTarget::new(name, command)),
            TargetConfig::InProcess(in_process) => {
                let Some(handler) = handlers.get(name) else {
                    return Err(BuildError::NoHandler {
                        name: name.to_owned(),
                    });
                };
                Arc::new(in_process::InProcessTarget::new(
                    handler.clone(),
                    in_process,
                ))
            }
            TargetConfig::LambdaRuntime(pool) => Arc::new(
                lambda_runtime::LambdaRuntimeTarget::start(name, pool, region, health.cloned()),
            ),
        };
    Ok(SharedTarget::new(name, target, config.max_concurrency())
        .with_longest_call(config.longest_call()))
}

/// A Lambda-style error document (`{"errorType", "errorMessage"}`) or, failing that, the body's
/// first kilobyte under `default_type`.
pub fn error_from_body(body: &[u8], default_type: &str) -> ErrorInfo {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error_type = field("errorType").unwrap_or_else(|| default_type.to_owned());
    let message = field("errorMessage").unwrap_or_else(|| body_prefix(body));
    ErrorInfo::new(error_type, message)
}

/// The first kilobyte of a body, as text, for messages.
pub fn body_prefix(body: &[u8]) -> String {
    sluice_policies::outcome::text_prefix(body)
}

/// A normal return with this body: empty is no response; JSON is parsed as `serde_json::Value`
/// (AWS accepts `{}`, `null`, `""`); anything else is a non-JSON response.
pub fn returned(body: &[u8]) -> Outcome {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Outcome::Returned { response: None };
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => Outcome::Returned {
            response: Some(value),
        },
        Err(_) => Outcome::ReturnedNonJson {
            body: body.to_vec(),
        },
    }
}
