//! The floor for an SQS drain: N tasks that each receive 10 messages, POST them to the handler in
//! one request, and delete them with one DeleteMessageBatch, until killed (as every contender of
//! `scripts/bench` is, once the queue is drained).
//!
//! Usage: sqs-raw-loop QUEUE_URL HANDLER_URL CONCURRENCY
//! (AWS_ENDPOINT_URL, AWS_REGION and credentials from the environment.)

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use std::time::Duration;

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<std::convert::Infallible>>) {
    for task in tasks {
        let _ = task.await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, queue_url, handler_url, concurrency] = &args[..] else {
        eprintln!("usage: sqs-raw-loop QUEUE_URL HANDLER_URL CONCURRENCY");
        std::process::exit(2);
    };
    let concurrency: usize = concurrency.parse().expect("concurrency is a number");
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (sqs, http) = (sqs.clone(), http.clone());
        let (queue_url, handler_url) = (queue_url.clone(), handler_url.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let received = sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(20)
                    .send()
                    .await
                    .expect("receive");
                let messages = received.messages();
                if messages.is_empty() {
                    continue;
                }
                let bodies: Vec<String> = messages
                    .iter()
                    .map(|m| format!("{{\"body\":{:?}}}", m.body().unwrap_or_default()))
                    .collect();
                let event = format!("{{\"Records\":[{}]}}", bodies.join(","));
                http.post(&handler_url)
                    .header("content-type", "application/json")
                    .body(event)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("handler");
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(index, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(index.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .expect("entry")
                    })
                    .collect();
                sqs.delete_message_batch()
                    .queue_url(&queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("delete");
            }
        }));
    }
    // The tasks never finish: the harness kills this process once the queue is drained.
    futures_join(tasks).await;
}
