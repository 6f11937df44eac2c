//! Optional OTLP trace export: one `invoke` span per invocation (kind consumer), a child of the
//! trace the batch's record carried, exported over OTLP/HTTP (protobuf) in batches. The span's
//! context is the `traceparent` the target receives, so the handler's own spans nest under it.
//!
//! Without `traces.otlp_endpoint` nothing is exported and invocations still carry a
//! `traceparent` (continued from the record, or new).

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sluice_policies::Outcome;
use sluice_sources::trace::TraceContext;
use std::sync::{Arc, Mutex, OnceLock};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceInitError {
    #[error("cannot build the OTLP exporter for traces.otlp_endpoint")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("trace export was already started")]
    AlreadyStarted,
}

/// Starts exporting to `endpoint` (the collector's base URL, such as http://127.0.0.1:4318).
pub fn init(endpoint: &str, service_name: &str) -> Result<(), TraceInitError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    PROVIDER
        .set(provider)
        .map_err(|_| TraceInitError::AlreadyStarted)?;
    tracing::info!(%endpoint, service_name, "exporting traces over OTLP");
    Ok(())
}

/// Exports what is buffered and stops; called once sluice has drained.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        tracing::warn!(%error, "flushing traces failed");
    }
}

/// The span of one invocation; ends when the last clone of its invocation is dropped.
#[derive(Clone, Default)]
pub struct InvocationSpan(Option<Arc<Mutex<opentelemetry_sdk::trace::Span>>>);

impl std::fmt::Debug for InvocationSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "InvocationSpan(exported)"
        } else {
            "InvocationSpan(none)"
        })
    }
}

impl InvocationSpan {
    /// Starts the span of an invocation and returns it with the `traceparent` to send.
    pub fn start(mapping: &str, request_id: &str, parent: Option<&TraceContext>) -> (Self, String) {
        let fallback = || match parent {
            Some(parent) => parent.child(&new_span_id()),
            None => new_traceparent(),
        };
        let Some(provider) = PROVIDER.get() else {
            return (Self(None), fallback());
        };
        let tracer = provider.tracer("sluice");
        let context = parent
            .and_then(|parent| {
                let trace_id = TraceId::from_hex(&parent.trace_id).ok()?;
                let span_id = SpanId::from_hex(&parent.parent_id).ok()?;
                let flags = if parent.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                Some(Context::new().with_remote_span_context(SpanContext::new(
                    trace_id,
                    span_id,
                    flags,
                    true,
                    TraceState::default(),
                )))
            })
            .unwrap_or_default();
        let span = tracer
            .span_builder("invoke")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("sluice.mapping", mapping.to_owned()),
                KeyValue::new("faas.invocation_id", request_id.to_owned()),
            ])
            .start_with_context(&tracer, &context);
        let span_context = span.span_context().clone();
        if !span_context.is_valid() {
            return (Self(None), fallback());
        }
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        );
        (Self(Some(Arc::new(Mutex::new(span)))), traceparent)
    }

    /// Notes how the invocation ended.
    pub fn record(&self, outcome: &Outcome) {
        let Some(span) = &self.0 else { return };
        let mut span = span.lock().expect("span lock");
        span.set_attribute(KeyValue::new("sluice.outcome", outcome.kind()));
        if !matches!(
            outcome,
            Outcome::Returned { .. } | Outcome::ReturnedNonJson { .. }
        ) {
            span.set_status(Status::error(outcome.kind()));
        }
    }
}

/// A fresh span id: 16 hex digits.
pub fn new_span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// A fresh W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", new_span_id())
}
