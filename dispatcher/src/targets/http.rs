//! The `http` target: POST the event to a URL over a pooled keep-alive client.
//!
//! Classification (architecture.md "Targets", semantics.md §6): 2xx is a normal return whose body
//! is the function's response, unless it carries `X-Amz-Function-Error`; 5xx and other non-2xx
//! statuses are function errors, except 503 (a service restarting or shedding load: the handler
//! did not run) which means an unavailable target, as a connection that cannot be made (refused,
//! or not established within the connect timeout) does; 502 and 504 stay function errors, since
//! a gateway answers them also when the handler ran and crashed or ran too long;
//! 429 is a throttle; no complete answer within the timeout is a timeout. Responses larger than
//! Lambda's 6 MB synchronous limit are function errors (`Function.ResponseSizeTooLarge`). A status
//! listed in `non_retryable_statuses` is a function error marked as not worth retrying.

use super::{Invocation, Target, body_prefix, deadline_ms, error_from_body, returned};
use crate::config::HttpTargetConfig;
use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sluice_policies::{ErrorInfo, Outcome};
use std::time::{Duration, Instant};

/// Lambda's synchronous response limit.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

pub struct HttpTarget {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
    non_retryable_statuses: Vec<u16>,
}

/// Why an HTTP target could not be built (config validation refuses these first).
#[derive(Debug, thiserror::Error)]
pub enum HttpTargetError {
    #[error("header {name:?} is not a valid HTTP header name and value")]
    Header {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot build the HTTP client")]
    Client(#[from] reqwest::Error),
}

impl HttpTarget {
    pub fn new(config: &HttpTargetConfig) -> Result<Self, HttpTargetError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let header =
                |source: Box<dyn std::error::Error + Send + Sync>| HttpTargetError::Header {
                    name: name.clone(),
                    source,
                };
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| header(e.into()))?,
                HeaderValue::from_str(value).map_err(|e| header(e.into()))?,
            );
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            // Shorter than the invocation timeout, so a connection that cannot be made ends as
            // a connect error (unavailable) and never races the invocation's own timeout.
            .connect_timeout(connect_timeout(config.timeout))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A redirect would turn the POST into a GET and lose the event.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            url: config.url.clone(),
            timeout: config.timeout,
            non_retryable_statuses: config.non_retryable_statuses.clone(),
        })
    }

    async fn read_body(response: &mut reqwest::Response, url: &Url) -> Result<Vec<u8>, Outcome> {
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(Outcome::FunctionError(ErrorInfo::new(
                            "Function.ResponseSizeTooLarge",
                            format!("response is larger than {MAX_RESPONSE_BYTES} bytes"),
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(error) => {
                    return Err(classify_transport_error(&error, Duration::ZERO, url));
                }
            }
        }
    }
}

/// A request that failed this soon after it was sent, with the connection closed before any
/// answer, met a pooled connection the other side had closed while idle: the handler never saw
/// it. Later, the handler may have run and crashed, and the failure is its own.
const STALE_CONNECTION_WINDOW: Duration = Duration::from_millis(100);

/// Whether the request failed because the connection closed before any answer came.
fn closed_before_answer(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            return hyper_error.is_incomplete_message();
        }
        source = cause.source();
    }
    false
}

/// How long a connection to the handler may take to establish: half the invocation timeout, at
/// most 5 s.
pub fn connect_timeout(timeout: Duration) -> Duration {
    Duration::from_secs(5).min(timeout / 2)
}

/// Statuses that say the handler is not there (a service restarting or shedding load) rather
/// than that it failed: retried without using an attempt, never dead-lettered for it, unless the
/// response carries `X-Amz-Function-Error`.
pub const UNAVAILABLE_STATUSES: [u16; 1] = [503];

fn classify_transport_error(error: &reqwest::Error, timeout: Duration, url: &Url) -> Outcome {
    // A connection that was never made is an unreachable handler, even when it is the connect
    // timeout that ran out (a host that drops SYNs): the invocation never started.
    if error.is_connect() {
        return Outcome::Unavailable {
            message: redacted(&error_chain(error), url),
        };
    }
    if error.is_timeout() {
        return Outcome::Timeout {
            after_ms: timeout.as_millis() as u64,
        };
    }
    // The message reaches callers (Invoke API answers, dead-letter envelopes): the URL's query
    // and credentials (tokens, often) are left out.
    let message = redacted(&error_chain(error), url);
    Outcome::FunctionError(ErrorInfo::new("Sluice.TargetRequestFailed", message))
}

/// `message` without `url`'s query and credentials, however the URL was written into it.
fn redacted(message: &str, url: &Url) -> String {
    let mut message = message.to_owned();
    if let Some(query) = url.query().filter(|q| !q.is_empty()) {
        message = message.replace(&format!("?{query}"), "?(query hidden)");
    }
    if let Some(password) = url.password() {
        message = message.replace(&format!(":{password}@"), ":(hidden)@");
    }
    message
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads Lambda's error shape (`errorType`, `errorMessage`) from a body, with fallbacks.
#[async_trait]
impl Target for HttpTarget {
    async fn invoke(&self, invocation: &Invocation) -> Outcome {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let deadline_header = deadline_ms(self.timeout).to_string();
        let mut retried = false;
        let mut response = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = self
                .client
                .post(self.url.clone())
                .timeout(remaining)
                .header(CONTENT_TYPE, "application/json")
                .header("x-sluice-request-id", &invocation.request_id)
                .header("x-sluice-mapping", &invocation.mapping)
                .header("x-sluice-deadline-ms", &deadline_header)
                .header("traceparent", &invocation.traceparent)
                .body(invocation.payload.clone());
            let sent_at = Instant::now();
            match request.send().await {
                Ok(response) => break response,
                // A pooled connection the handler's side closed while it was idle (the handler
                // restarted, a proxy dropped it) fails the request at once, before any answer:
                // it is sent once more, on a fresh connection, which decides.
                Err(error)
                    if !retried
                        && closed_before_answer(&error)
                        && sent_at.elapsed() < STALE_CONNECTION_WINDOW
                        && Instant::now() < deadline =>
                {
                    retried = true;
                    tracing::debug!(url = %redacted(self.url.as_str(), &self.url), error = %error_chain(&error), "the connection was closed before an answer; sending the request again on a fresh one");
                }
                Err(error) => return classify_transport_error(&error, self.timeout, &self.url),
            }
        };
        let status = response.status();
        let function_error = response
            .headers()
            .get("x-amz-function-error")
            .map(|v| v.to_str().unwrap_or("Unhandled").to_owned());
        let body = match Self::read_body(&mut response, &self.url).await {
            Ok(body) => body,
            Err(Outcome::Timeout { .. }) => {
                return Outcome::Timeout {
                    after_ms: started.elapsed().as_millis() as u64,
                };
            }
            Err(outcome) => return outcome,
        };
        if status.as_u16() == 429 {
            return Outcome::Throttled {
                message: format!("HTTP 429: {}", body_prefix(&body)),
            };
        }
        if let Some(function_error) = function_error {
            return Outcome::FunctionError(error_from_body(&body, &function_error));
        }
        if UNAVAILABLE_STATUSES.contains(&status.as_u16()) {
            return Outcome::Unavailable {
                message: format!("HTTP {}: {}", status.as_u16(), body_prefix(&body)),
            };
        }
        if !status.is_success() {
            let default_type = format!("HTTP {}", status.as_u16());
            let error = error_from_body(&body, &default_type);
            if self.non_retryable_statuses.contains(&status.as_u16()) {
                return Outcome::FunctionError(error.marked_non_retryable());
            }
            return Outcome::FunctionError(error);
        }
        returned(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lambda_error_bodies_give_type_and_message() {
        let error = error_from_body(
            br#"{"errorType":"ValueError","errorMessage":"bad order"}"#,
            "Unhandled",
        );
        assert_eq!(error, ErrorInfo::new("ValueError", "bad order"));
        let plain = error_from_body(b"internal failure\n", "HTTP 500");
        assert_eq!(plain, ErrorInfo::new("HTTP 500", "internal failure"));
    }

    // Hardening issue, item 15: a failed call's message reached callers with the target URL's
    // query string (often a token) in it.
    #[tokio::test]
    async fn transport_errors_do_not_echo_the_urls_query_or_credentials() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url: Url = format!("http://user:pw@127.0.0.1:{port}/hook?token=s3cret")
            .parse()
            .unwrap();
        let target = HttpTarget::new(&HttpTargetConfig {
            url: url.clone(),
            timeout: Duration::from_secs(2),
            headers: Vec::new(),
            non_retryable_statuses: Vec::new(),
            max_concurrency: 1,
        })
        .unwrap();
        let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
        let Outcome::Unavailable { message } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            !message.contains("s3cret") && !message.contains("pw"),
            "{message}"
        );
        assert!(message.contains("/hook"), "{message}");
    }

    fn target_for(url: &str, timeout: Duration) -> HttpTarget {
        HttpTarget::new(&HttpTargetConfig {
            url: url.parse().unwrap(),
            timeout,
            headers: Vec::new(),
            non_retryable_statuses: Vec::new(),
            max_concurrency: 1,
        })
        .unwrap()
    }

    /// A server answering every request with `status` (and the function-error header if asked).
    async fn answering(status: u16, function_error: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let header = if function_error {
                        "X-Amz-Function-Error: Unhandled\r\n"
                    } else {
                        ""
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\n{header}Content-Length: 4\r\nConnection: close\r\n\r\nbusy"
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/")
    }

    // Reliability issue: a handler outage answered by a load balancer (502/504) or a restarting
    // service (503) was a function error, so SQS messages were dead-lettered for it.
    #[tokio::test]
    async fn service_unavailable_is_an_unavailable_target_not_a_function_error() {
        for status in UNAVAILABLE_STATUSES {
            let target = target_for(&answering(status, false).await, Duration::from_secs(2));
            let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
            assert!(
                matches!(&outcome, Outcome::Unavailable { message } if message.contains(&status.to_string())),
                "{status}: {outcome:?}"
            );
        }
        // 502 and 504 come from gateways also when the handler ran and crashed or ran too long.
        for status in [500, 502, 504] {
            let target = target_for(&answering(status, false).await, Duration::from_secs(2));
            let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
            assert!(
                matches!(outcome, Outcome::FunctionError(_)),
                "{status}: {outcome:?}"
            );
        }
        // The handler itself saying it failed wins over the status.
        let target = target_for(&answering(503, true).await, Duration::from_secs(2));
        let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
        assert!(matches!(outcome, Outcome::FunctionError(_)), "{outcome:?}");
    }

    // Reliability issue: a connection that timed out while connecting (a host dropping SYNs)
    // was an invocation timeout, a function error.
    #[tokio::test]
    async fn a_connection_that_cannot_be_established_in_time_is_an_unavailable_target() {
        // A listener nobody accepts from, its queue filled: further SYNs are dropped.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(stream)) = tokio::time::timeout(
                Duration::from_millis(300),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                held.push(stream);
            }
        }
        let target = target_for(&format!("http://{addr}/"), Duration::from_secs(1));
        let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
        assert!(
            matches!(outcome, Outcome::Unavailable { .. }),
            "{outcome:?}"
        );
        drop(listener);
    }

    /// A server that reads each request and closes the connection without an answer (after
    /// `delay`), for the first `hang_ups` connections, then answers `{}`; counts connections.
    async fn hanging_up(
        hang_ups: usize,
        delay: Duration,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    tokio::time::sleep(delay).await;
                    if n >= hang_ups {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                            .await;
                    }
                });
            }
        });
        (format!("http://{addr}/"), connections)
    }

    // Reliability issue: when a handler restarted, requests on the pooled connections it had
    // closed failed as function errors, and SQS messages were dead-lettered for an outage.
    #[tokio::test]
    async fn a_request_on_a_connection_closed_at_once_without_an_answer_is_sent_again_once() {
        use std::sync::atomic::Ordering;
        let (url, connections) = hanging_up(1, Duration::ZERO).await;
        let target = target_for(&url, Duration::from_secs(2));
        let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
        assert!(matches!(outcome, Outcome::Returned { .. }), "{outcome:?}");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        // Once only: a handler that drops every request at once is a failure.
        let (url, connections) = hanging_up(usize::MAX, Duration::ZERO).await;
        let target = target_for(&url, Duration::from_secs(2));
        let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
        assert!(matches!(outcome, Outcome::FunctionError(_)), "{outcome:?}");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    // Review of the reliability change: a handler that worked on the request and then crashed
    // must not run it again within the same attempt.
    #[tokio::test]
    async fn a_connection_closed_after_the_handler_worked_is_a_failure_not_a_retry() {
        use std::sync::atomic::Ordering;
        let (url, connections) = hanging_up(1, Duration::from_millis(300)).await;
        let target = target_for(&url, Duration::from_secs(2));
        let outcome = target.invoke(&Invocation::new("m", b"{}".to_vec())).await;
        assert!(matches!(outcome, Outcome::FunctionError(_)), "{outcome:?}");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }
}
