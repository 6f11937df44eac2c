//! The one invoke path. Every call of a target — an SQS batch, an S3 notification's event, a
//! stream or Kafka batch, an Invoke API call or queued `Event`, a replayed batch — goes through
//! the same stack of tower layers around the target, outermost first:
//!
//! ```text
//!   Trace     a `tracing` span (mapping, target, request id) and the invocation's exported span,
//!             which gets the outcome
//!   Slot      a slot under the target's `max_concurrency` (or the one the caller already holds,
//!             so a poller can wait for room before it takes records), admitted by the target's
//!             circuit breaker, which hears every outcome, after its rate limit let the records go
//!   Measure   sluice_batches_invoked_total and sluice_invoke_duration_seconds (time in the
//!             target only, not the wait for a slot)
//!   Deadline  a backstop: a call still running `DEADLINE_GRACE` after the target's own longest
//!             call is abandoned as a timeout, so no target bug can hold a batch (or the drain)
//!   CatchPanic a panic anywhere in a target is a function error (`Runtime.Panic`), logged, and
//!             never takes the worker with it
//!   target    the `Target` itself: turns the call into an `Outcome`
//! ```
//!
//! Every layer always answers with an [`Outcome`] (the error type is `Infallible`): what a failed
//! call means for its records is the policies' decision, taken by the caller afterwards.

use crate::targets::{Invocation, SharedTarget, Target};
use crate::telemetry::MappingMetrics;
use futures_util::FutureExt;
use sluice_policies::{ErrorInfo, Outcome};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tracing::Instrument;

/// How long past the target's own longest call the deadline layer waits before it abandons a
/// call: targets time out by themselves, so this only fires on a target that does not.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(10);

pub use crate::targets::Slot;

/// One call through the stack.
pub struct Call {
    pub invocation: Invocation,
    /// A slot the caller already took; without one, the slot layer waits for one.
    pub slot: Option<Slot>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Outcome, Infallible>> + Send + 'static>>;

/// A target behind the whole layer stack, for one mapping (or function, or replay).
#[derive(Clone)]
pub struct Invoker {
    target: SharedTarget,
    metrics: MappingMetrics,
    service: BoxCloneSyncService<Call, Outcome, Infallible>,
}

impl Invoker {
    /// The stack around `target`, recording into `metrics`.
    pub fn new(target: SharedTarget, metrics: MappingMetrics) -> Self {
        let deadline = target.longest_call().saturating_add(DEADLINE_GRACE);
        let service = ServiceBuilder::new()
            .layer(TraceLayer {
                target: Arc::from(target.name.as_str()),
            })
            .layer(SlotLayer {
                target: target.clone(),
            })
            .layer(MeasureLayer {
                metrics: metrics.clone(),
            })
            .layer(DeadlineLayer { after: deadline })
            .layer(CatchPanicLayer)
            .service(TargetService(target.target.clone()));
        Self {
            target,
            metrics,
            service: BoxCloneSyncService::new(service),
        }
    }

    /// Invokes the target once, waiting for a slot first.
    pub async fn invoke(&self, invocation: Invocation) -> Outcome {
        self.call(Call {
            invocation,
            slot: None,
        })
        .await
    }

    /// Invokes the target once in a slot the caller already holds.
    pub async fn invoke_in(&self, slot: Slot, invocation: Invocation) -> Outcome {
        self.call(Call {
            invocation,
            slot: Some(slot),
        })
        .await
    }

    async fn call(&self, call: Call) -> Outcome {
        match self.service.clone().oneshot(call).await {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        }
    }

    /// The metrics the calls are recorded in (the mapping's or function's).
    pub fn metrics(&self) -> &MappingMetrics {
        &self.metrics
    }

    /// The target this invoker calls (for its slots and limits).
    pub fn target(&self) -> &SharedTarget {
        &self.target
    }
}

// === the target as a service ===

/// The innermost service: the target itself.
#[derive(Clone)]
pub struct TargetService(pub Arc<dyn Target>);

impl Service<Call> for TargetService {
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let target = self.0.clone();
        Box::pin(async move { Ok(target.invoke(&call.invocation).await) })
    }
}

// === trace ===

/// Opens a `tracing` span for the call and records the outcome on the invocation's exported
/// span.
#[derive(Clone)]
pub struct TraceLayer {
    target: Arc<str>,
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            target: self.target.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    target: Arc<str>,
}

impl<S> Service<Call> for Trace<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible, Future = BoxFuture>,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let span = tracing::info_span!(
            "invoke",
            mapping = %call.invocation.mapping,
            target = %self.target,
            request_id = %call.invocation.request_id,
        );
        let exported = call.invocation.span.clone();
        let inner = self.inner.call(call);
        Box::pin(
            async move {
                let outcome = inner.await?;
                exported.record(&outcome);
                Ok(outcome)
            }
            .instrument(span),
        )
    }
}

// === slot ===

/// Holds a slot under the target's concurrency limit for the whole call.
#[derive(Clone)]
pub struct SlotLayer {
    target: SharedTarget,
}

impl<S> Layer<S> for SlotLayer {
    type Service = SlotService<S>;
    fn layer(&self, inner: S) -> SlotService<S> {
        SlotService {
            inner,
            target: self.target.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SlotService<S> {
    inner: S,
    target: SharedTarget,
}

impl<S> Service<Call> for SlotService<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible, Future = BoxFuture>
        + Clone
        + Send
        + 'static,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> BoxFuture {
        // The inner service was made ready for this call; the clone waits for the slot.
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        let target = self.target.clone();
        Box::pin(async move {
            let mut slot = match call.slot.take() {
                Some(slot) => slot,
                None => target.permit_for(call.invocation.records).await,
            };
            slot.calling();
            let outcome = inner.call(call).await;
            if let Ok(outcome) = &outcome {
                target.record(outcome, &mut slot);
            }
            drop(slot);
            outcome
        })
    }
}

// === measure ===

/// Counts the call and records how long the target took.
#[derive(Clone)]
pub struct MeasureLayer {
    metrics: MappingMetrics,
}

impl<S> Layer<S> for MeasureLayer {
    type Service = Measure<S>;
    fn layer(&self, inner: S) -> Measure<S> {
        Measure {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Measure<S> {
    inner: S,
    metrics: MappingMetrics,
}

impl<S> Service<Call> for Measure<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible, Future = BoxFuture>,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let metrics = self.metrics.clone();
        metrics.batches_invoked.increment(1);
        let started = Instant::now();
        let inner = self.inner.call(call);
        Box::pin(async move {
            let outcome = inner.await;
            metrics
                .invoke_duration
                .record(started.elapsed().as_secs_f64());
            outcome
        })
    }
}

// === deadline ===

/// Abandons a call that outlives `after` as a timeout.
#[derive(Clone)]
pub struct DeadlineLayer {
    after: Duration,
}

impl DeadlineLayer {
    pub fn new(after: Duration) -> Self {
        Self { after }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            after: self.after,
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    after: Duration,
}

impl<S> Service<Call> for Deadline<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible, Future = BoxFuture>,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let after = self.after;
        let (mapping, request_id) = (
            call.invocation.mapping.clone(),
            call.invocation.request_id.clone(),
        );
        let inner = self.inner.call(call);
        Box::pin(async move {
            match tokio::time::timeout(after, inner).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::error!(%mapping, %request_id, after_ms = after.as_millis() as u64, "the target did not end the call by its own timeout; abandoned as a timeout");
                    Ok(Outcome::Timeout {
                        after_ms: after.as_millis() as u64,
                    })
                }
            }
        })
    }
}

// === catch panic ===

/// Turns a panic in the target into a function error.
#[derive(Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

#[derive(Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> Service<Call> for CatchPanic<S>
where
    S: Service<Call, Response = Outcome, Error = Infallible, Future = BoxFuture>,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        let (mapping, request_id) = (
            call.invocation.mapping.clone(),
            call.invocation.request_id.clone(),
        );
        // A panic while building the call counts as much as one while running it.
        let inner =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(call)));
        Box::pin(async move {
            let result = match inner {
                Ok(future) => std::panic::AssertUnwindSafe(future).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            match result {
                Ok(outcome) => outcome,
                Err(panic) => {
                    let message = super::supervise::panic_message(&*panic);
                    tracing::error!(%mapping, %request_id, panic = %message, "the target panicked; the call counts as a function error");
                    Ok(Outcome::FunctionError(ErrorInfo::new(
                        "Runtime.Panic",
                        message,
                    )))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::testing::ScriptedTarget;

    fn invocation() -> Invocation {
        Invocation::new("m", b"{}".to_vec())
    }

    fn invoker(target: Arc<ScriptedTarget>, max_concurrency: usize) -> Invoker {
        Invoker::new(
            SharedTarget::new("t", target, max_concurrency),
            MappingMetrics::new("m"),
        )
    }

    #[tokio::test]
    async fn the_target_answer_comes_back_unchanged() {
        let target = Arc::new(ScriptedTarget::default());
        target.push(Outcome::Returned { response: None });
        target.push(Outcome::FunctionError(ErrorInfo::new("E", "boom")));
        let invoker = invoker(target.clone(), 1);
        assert_eq!(
            invoker.invoke(invocation()).await,
            Outcome::Returned { response: None }
        );
        assert_eq!(
            invoker.invoke(invocation()).await,
            Outcome::FunctionError(ErrorInfo::new("E", "boom"))
        );
        assert_eq!(target.calls(), 2);
    }

    #[tokio::test]
    async fn a_panicking_target_is_a_function_error_and_the_slot_comes_back() {
        let target = Arc::new(ScriptedTarget::default());
        target.push_panic("bug in a target");
        target.push(Outcome::Returned { response: None });
        let invoker = invoker(target.clone(), 1);
        let outcome = invoker.invoke(invocation()).await;
        let Outcome::FunctionError(error) = outcome else {
            panic!("not a function error: {outcome:?}");
        };
        assert_eq!(error.error_type, "Runtime.Panic");
        assert!(error.message.contains("bug in a target"), "{error:?}");
        // The only slot was released by the panicking call.
        assert!(!invoker.target().is_saturated());
        assert_eq!(
            invoker.invoke(invocation()).await,
            Outcome::Returned { response: None }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_target_longest_call_is_abandoned_as_a_timeout() {
        let target = Arc::new(ScriptedTarget::default());
        target.push_hang();
        let shared =
            SharedTarget::new("t", target.clone(), 1).with_longest_call(Duration::from_secs(30));
        let invoker = Invoker::new(shared, MappingMetrics::new("m"));
        let started = tokio::time::Instant::now();
        let outcome = invoker.invoke(invocation()).await;
        assert_eq!(
            outcome,
            Outcome::Timeout {
                after_ms: (Duration::from_secs(30) + DEADLINE_GRACE).as_millis() as u64
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30) + DEADLINE_GRACE);
        assert!(!invoker.target().is_saturated(), "the slot is released");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_wait_for_a_slot_and_never_exceed_max_concurrency() {
        let target = Arc::new(ScriptedTarget::default());
        for _ in 0..6 {
            target.push_after(Duration::from_secs(1), Outcome::Returned { response: None });
        }
        let invoker = invoker(target.clone(), 2);
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let invoker = invoker.clone();
                tokio::spawn(async move { invoker.invoke(invocation()).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(target.most_at_once(), 2);
        // Three rounds of two one-second calls.
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_slot_the_caller_holds_is_used_instead_of_a_second_one() {
        let target = Arc::new(ScriptedTarget::default());
        target.push(Outcome::Returned { response: None });
        let invoker = invoker(target.clone(), 1);
        let slot = invoker.target().permit().await;
        // With max_concurrency 1, waiting for another slot would never end.
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            invoker.invoke_in(slot, invocation()),
        )
        .await
        .expect("the held slot is used");
        assert_eq!(outcome, Outcome::Returned { response: None });
        assert!(!invoker.target().is_saturated());
    }

    #[tokio::test]
    async fn each_layer_alone_passes_answers_through() {
        let target = Arc::new(ScriptedTarget::default());
        target.push(Outcome::Unavailable {
            message: "down".into(),
        });
        let mut service = ServiceBuilder::new()
            .layer(CatchPanicLayer)
            .layer(DeadlineLayer::new(Duration::from_secs(5)))
            .service(TargetService(target.clone()));
        let outcome = service
            .ready()
            .await
            .unwrap()
            .call(Call {
                invocation: invocation(),
                slot: None,
            })
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Unavailable {
                message: "down".into()
            }
        );
    }

    // Review of the circuit breaker: callers that queued for the target's only slot while the
    // breaker was closed must not call the target once it opened; one probe goes after
    // `open_for`, and its success lets them all through.
    #[tokio::test(start_paused = true)]
    async fn callers_queued_for_a_slot_do_not_call_a_target_whose_circuit_opened() {
        let target = Arc::new(ScriptedTarget::answering(|_| Outcome::Returned {
            response: None,
        }));
        target.push_after(
            Duration::from_millis(100),
            Outcome::Unavailable {
                message: "connection refused".into(),
            },
        );
        target.push(Outcome::Unavailable {
            message: "connection refused".into(),
        });
        let shared = SharedTarget::new("t", target.clone(), 1).with_circuit_breaker(
            sluice_policies::BreakerSettings {
                consecutive_failures: 1,
                failure_ratio: None,
                open_for: Duration::from_secs(5),
                max_open_for: Duration::from_secs(60),
            },
            None,
        );
        let invoker = Invoker::new(shared, MappingMetrics::new("m"));
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let invoker = invoker.clone();
                tokio::spawn(async move { invoker.invoke(invocation()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            target.calls(),
            1,
            "only the call that found the target down"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(target.calls(), 2, "then one probe, which fails");
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(target.calls(), 2, "the wait doubled to 10 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        for call in calls {
            call.await.unwrap();
        }
        // Five callers, five calls: the first, a failed probe, a probe that succeeded, two more.
        assert_eq!(
            target.calls(),
            5,
            "the second probe succeeded and the rest went through"
        );
    }
}
