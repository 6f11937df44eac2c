//! Targets: where batches are delivered. A target turns one invocation into an [`Outcome`]; it
//! never retries and never decides what happens to records (that is the policies' job).

pub mod http;

use crate::config::TargetConfig;
use async_trait::async_trait;
use sluice_policies::Outcome;
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
}

impl Invocation {
    pub fn new(mapping: &str, payload: Vec<u8>) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().to_string(),
            mapping: mapping.to_owned(),
            payload: payload.into(),
            traceparent: new_traceparent(),
        }
    }
}

/// A fresh W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
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

pub fn build(config: &TargetConfig) -> anyhow::Result<Arc<dyn Target>> {
    match config {
        TargetConfig::Http(http) => Ok(Arc::new(http::HttpTarget::new(http)?)),
    }
}
