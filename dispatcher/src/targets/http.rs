//! The `http` target: POST the event to a URL over a pooled keep-alive client.
//!
//! Classification (architecture.md "Targets", semantics.md §6): 2xx is a normal return whose body
//! is the function's response, unless it carries `X-Amz-Function-Error`; 5xx and other non-2xx
//! statuses are function errors; 429 is a throttle; a connection that cannot be made is an
//! unavailable target; no complete answer within the timeout is a timeout. Responses larger than
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

impl HttpTarget {
    pub fn new(config: &HttpTargetConfig) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5).min(config.timeout))
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

fn classify_transport_error(error: &reqwest::Error, timeout: Duration, url: &Url) -> Outcome {
    if error.is_timeout() {
        return Outcome::Timeout {
            after_ms: timeout.as_millis() as u64,
        };
    }
    // The message reaches callers (Invoke API answers, dead-letter envelopes): the URL's query
    // and credentials (tokens, often) are left out.
    let message = redacted(&error_chain(error), url);
    if error.is_connect() {
        return Outcome::Unavailable { message };
    }
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
        let request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header("x-sluice-request-id", &invocation.request_id)
            .header("x-sluice-mapping", &invocation.mapping)
            .header(
                "x-sluice-deadline-ms",
                deadline_ms(self.timeout).to_string(),
            )
            .header("traceparent", &invocation.traceparent)
            .body(invocation.payload.clone());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => return classify_transport_error(&error, self.timeout, &self.url),
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
}
