//! The `in_process` target: a Rust handler registered by a program that embeds sluice
//! ([`crate::embed`]), run on the dispatcher's runtime. A handler gets exactly the event Lambda
//! would pass and answers as a Lambda function does: `Ok(response)` is a normal return,
//! `Err(HandlerError)` a function error. A panic is a function error (`Runtime.Panic`), never a
//! crash of the dispatcher; a handler still running at the target's `timeout` is abandoned and
//! counts as a timeout.

use crate::config::InProcessTargetConfig;
use crate::targets::{Invocation, Target};
use async_trait::async_trait;
use serde_json::Value;
use sluice_policies::{ErrorInfo, Outcome};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A function error, as a Lambda function reports one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub error_type: String,
    pub message: String,
}

impl HandlerError {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for HandlerError {}

/// What a handler knows about its invocation.
#[derive(Debug, Clone)]
pub struct Context {
    pub request_id: String,
    pub mapping: String,
    /// When the target's timeout runs out.
    pub deadline: SystemTime,
    /// W3C trace context of the invocation.
    pub traceparent: String,
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, event: Value, context: Context) -> Result<Value, HandlerError>;
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Value, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    async fn handle(&self, event: Value, context: Context) -> Result<Value, HandlerError> {
        (self.0)(event, context).await
    }
}

/// A handler from an async closure.
pub fn handler_fn<F, Fut>(f: F) -> impl Handler
where
    F: Fn(Value, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

/// An `in_process` target: the registered handler, run on the dispatcher's runtime.
pub struct InProcessTarget {
    handler: Arc<dyn Handler>,
    timeout: Duration,
}

impl InProcessTarget {
    pub fn new(handler: Arc<dyn Handler>, config: &InProcessTargetConfig) -> Self {
        Self {
            handler,
            timeout: config.timeout,
        }
    }
}

#[async_trait]
impl Target for InProcessTarget {
    async fn invoke(&self, invocation: &Invocation) -> Outcome {
        let event: Value = match serde_json::from_slice(&invocation.payload) {
            Ok(event) => event,
            Err(error) => {
                return Outcome::FunctionError(ErrorInfo::new(
                    "Runtime.InvalidEvent",
                    format!("the event is not JSON: {error}"),
                ));
            }
        };
        let context = Context {
            request_id: invocation.request_id.clone(),
            mapping: invocation.mapping.clone(),
            deadline: SystemTime::now() + self.timeout,
            traceparent: invocation.traceparent.clone(),
        };
        let handler = self.handler.clone();
        // Its own task, so a panic is caught and a timeout can abandon it.
        let mut task = tokio::spawn(async move { handler.handle(event, context).await });
        match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(Ok(Ok(response))) => Outcome::Returned {
                response: Some(response),
            },
            Ok(Ok(Err(error))) => {
                Outcome::FunctionError(ErrorInfo::new(error.error_type, error.message))
            }
            Ok(Err(join_error)) => {
                let message = match join_error.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "the handler panicked".into()),
                    Err(_) => "the handler was cancelled".into(),
                };
                Outcome::FunctionError(ErrorInfo::new("Runtime.Panic", message))
            }
            Err(_) => {
                task.abort();
                Outcome::Timeout {
                    after_ms: self.timeout.as_millis() as u64,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(handler: impl Handler, timeout: Duration) -> InProcessTarget {
        InProcessTarget::new(
            Arc::new(handler),
            &InProcessTargetConfig {
                timeout,
                max_concurrency: 1,
            },
        )
    }

    fn invocation() -> Invocation {
        Invocation::new("m", br#"{"Records":[{"body":"x"}]}"#.to_vec())
    }

    #[tokio::test]
    async fn returns_errors_panics_and_timeouts_become_lambda_outcomes() {
        let echo = target(
            handler_fn(
                |event: Value, _| async move { Ok(json!({"got": event["Records"][0]["body"]})) },
            ),
            Duration::from_secs(1),
        );
        assert_eq!(
            echo.invoke(&invocation()).await,
            Outcome::Returned {
                response: Some(json!({"got": "x"}))
            }
        );
        let failing = target(
            handler_fn(|_, _| async { Err(HandlerError::new("ValueError", "bad")) }),
            Duration::from_secs(1),
        );
        assert_eq!(
            failing.invoke(&invocation()).await,
            Outcome::FunctionError(ErrorInfo::new("ValueError", "bad"))
        );
        let panicking = target(
            handler_fn(|_, _| async {
                if true {
                    panic!("index out of bounds");
                }
                Ok(Value::Null)
            }),
            Duration::from_secs(1),
        );
        assert_eq!(
            panicking.invoke(&invocation()).await,
            Outcome::FunctionError(ErrorInfo::new("Runtime.Panic", "index out of bounds"))
        );
        let slow = target(
            handler_fn(|_, _| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(Value::Null)
            }),
            Duration::from_millis(50),
        );
        assert!(matches!(
            slow.invoke(&invocation()).await,
            Outcome::Timeout { .. }
        ));
    }
}
