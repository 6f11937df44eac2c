//! Benchmark programs for `scripts/bench`: the raw loops sluice is held against (SQS, Kafka,
//! DynamoDB Streams) live in `src/bin/`, the dispatcher-core micro-benchmarks in `benches/`.
//! What the raw loops share is here; none of it is sluice's code.

use std::time::Duration;

/// POSTs `event` to the handler until it answers with a success (at least once: a raw loop marks
/// its batch done only after this returns), 100 ms between tries, 30 s per try.
pub async fn post_until_answered(http: &reqwest::Client, handler_url: &str, event: Vec<u8>) {
    // Bytes: each try shares the one buffer.
    let event = bytes::Bytes::from(event);
    loop {
        let sent = http
            .post(handler_url)
            .header("content-type", "application/json")
            .body(event.clone())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
