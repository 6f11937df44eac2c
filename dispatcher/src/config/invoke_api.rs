//! Lambda's Invoke API as written and as built: where it listens, who may call it, how much
//! `Event` work it queues, and the functions it serves (each a target with an asynchronous
//! policy and destinations).

use super::async_policy;
use super::destinations::RawDestination;
use super::destinations::{self, DestinationConfig};
use super::raw::RawInvokeApi;
use super::targets::TargetConfig;
use super::validate::Validator;
use sluice_policies::AsyncPolicy;
use std::collections::BTreeMap;
use std::net::SocketAddr;

pub const DEFAULT_INVOKE_API_LISTEN: &str = "127.0.0.1:9001";
/// The name of the Invoke API's event queue worker on `/readyz` and `sluice ctl`: no mapping may
/// take it.
pub const EVENT_QUEUE_WORKER: &str = "invoke_api.event_queue";
pub const DEFAULT_MAX_QUEUED_EVENTS: u64 = 10_000;
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct InvokeApiConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub max_queued_events: u64,
    pub max_queued_bytes: u64,
    pub functions: BTreeMap<String, FunctionConfig>,
    /// `event_queue.sqs.queue_url`: accepted `Event` invocations wait in this queue instead of
    /// the state file.
    pub event_queue: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionConfig {
    pub target: String,
    pub policy: AsyncPolicy,
    pub on_failure: Option<DestinationConfig>,
    pub on_success: Option<DestinationConfig>,
}

pub fn build(
    v: &mut Validator,
    raw: RawInvokeApi,
    targets: &BTreeMap<String, TargetConfig>,
) -> InvokeApiConfig {
    let listen_text = raw
        .listen
        .unwrap_or_else(|| DEFAULT_INVOKE_API_LISTEN.to_owned());
    let listen: SocketAddr = listen_text.parse().unwrap_or_else(|_| {
        v.error(
            "invoke_api.listen",
            format!(
                "{listen_text:?} is not an address; write it as host:port, e.g. 127.0.0.1:9001"
            ),
        );
        DEFAULT_INVOKE_API_LISTEN
            .parse()
            .expect("default address parses")
    });
    let token = raw.token;
    if token.as_ref().is_some_and(|t| t.trim().is_empty()) {
        v.error(
            "invoke_api.token",
            "is empty or whitespace, which would let anyone in; set a long random secret, or remove the key to serve loopback without a token",
        );
    }
    if !listen.ip().is_loopback() && token.is_none() {
        v.error(
            "invoke_api.listen",
            "is not a loopback address, so anyone who reaches it could invoke your functions; set invoke_api.token",
        );
    }
    let max_queued_events = raw.max_queued_events.unwrap_or(DEFAULT_MAX_QUEUED_EVENTS);
    if !(1..=1_000_000).contains(&max_queued_events) {
        v.error(
            "invoke_api.max_queued_events",
            format!("must be 1..=1000000 (got {max_queued_events})"),
        );
    }
    let max_queued_bytes = raw.max_queued_bytes.unwrap_or(DEFAULT_MAX_QUEUED_BYTES);
    if !((1 << 20)..=100 << 30).contains(&max_queued_bytes) {
        v.error(
            "invoke_api.max_queued_bytes",
            format!("must be 1048576 (1 MiB) ..= 107374182400 (100 GiB) (got {max_queued_bytes})"),
        );
    }
    let mut functions = BTreeMap::new();
    for (name, function) in raw.functions {
        let path = format!("invoke_api.functions.{name}");
        if !targets.contains_key(&function.target) {
            let known: Vec<&str> = targets.keys().map(String::as_str).collect();
            v.error(
                format!("{path}.target"),
                format!(
                    "no target named {:?}; defined targets: [{}]",
                    function.target,
                    known.join(", ")
                ),
            );
        }
        let policy = async_policy::policy(
            v,
            &format!("{path}.async"),
            function.async_policy.unwrap_or_default(),
        );
        let mut destination = |key: &str, raw: Option<RawDestination>| {
            let at = format!("{path}.{key}");
            raw.map(|raw| {
                let built = destinations::build(v, &at, raw);
                // A function has no Kafka cluster to write a topic on.
                destinations::refuse_kafka(v, &at, &built);
                built
            })
        };
        let on_failure = destination("on_failure", function.on_failure);
        let on_success = destination("on_success", function.on_success);
        functions.insert(
            name,
            FunctionConfig {
                target: function.target,
                policy,
                on_failure,
                on_success,
            },
        );
    }
    let event_queue = raw.event_queue.map(|queue| {
        let url = queue.sqs.queue_url;
        if reqwest::Url::parse(&url).is_err() {
            v.error(
                "invoke_api.event_queue.sqs.queue_url",
                format!("{url:?} is not a URL; give the queue's URL, such as https://sqs.us-east-1.amazonaws.com/123456789012/events"),
            );
        } else if url.ends_with(".fifo") {
            v.error(
                "invoke_api.event_queue.sqs.queue_url",
                "is a FIFO queue; use a standard queue (events of a function run in parallel, as Lambda runs them, and a FIFO queue would hold each behind the one before)",
            );
        }
        url
    });
    InvokeApiConfig {
        listen,
        token,
        max_queued_events,
        max_queued_bytes,
        functions,
        event_queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn the_invoke_api_needs_a_token_off_loopback_and_known_targets() {
        let local = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
invoke_api:
  functions:
    hello: { target: api, async: { max_retry_attempts: 1, delays: [10s] } }
"#;
        let config = parse_text(local).unwrap();
        let api = config.invoke_api.as_ref().unwrap();
        assert_eq!(api.listen.to_string(), DEFAULT_INVOKE_API_LISTEN);
        assert_eq!(api.functions["hello"].policy.max_retry_attempts, 1);
        assert!(!config.needs_aws(), "no mapping and no destination: no AWS");
        let open = local.replace("invoke_api:\n", "invoke_api:\n  listen: 0.0.0.0:9001\n");
        assert!(
            parse_text(&open)
                .unwrap_err()
                .to_string()
                .contains("set invoke_api.token")
        );
        for empty in ["\"\"", "\"  \""] {
            let blank = local.replace("invoke_api:\n", &format!("invoke_api:\n  token: {empty}\n"));
            assert!(
                parse_text(&blank)
                    .unwrap_err()
                    .to_string()
                    .contains("invoke_api.token: is empty or whitespace"),
                "{empty}"
            );
        }
        let unknown = local.replace("target: api,", "target: nope,");
        assert!(
            parse_text(&unknown)
                .unwrap_err()
                .to_string()
                .contains("invoke_api.functions.hello.target: no target named")
        );
    }
}
