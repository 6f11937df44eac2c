//! The floor for an SQS drain: what a careful hand-written poller does to deliver Lambda's SQS
//! event to an HTTP handler. N tasks that each receive up to 10 messages (with every system and
//! message attribute, as sluice asks, since Lambda's event carries them), POST the Lambda-shaped
//! event (`{"Records":[…]}`, each element the `aws_lambda_events` SQS message with ARN and
//! region) in one request, and delete them with one DeleteMessageBatch, until killed (as every
//! contender of `scripts/bench` is, once the queue is drained). The queue's ARN is looked up once
//! before the loop, as any poller that fills `eventSourceARN` must.
//!
//! Usage: sqs-raw-loop QUEUE_URL HANDLER_URL CONCURRENCY
//! (AWS_ENDPOINT_URL, AWS_REGION and credentials from the environment.)

use aws_lambda_events::sqs::{SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use std::time::Duration;

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<std::convert::Infallible>>) {
    for task in tasks {
        let _ = task.await;
    }
}

fn event_of(message: &aws_sdk_sqs::types::Message, arn: &str, region: &str) -> SqsMessage {
    let mut event = SqsMessage::default();
    event.message_id = message.message_id().map(str::to_owned);
    event.receipt_handle = message.receipt_handle().map(str::to_owned);
    event.body = message.body().map(str::to_owned);
    event.md5_of_body = message.md5_of_body().map(str::to_owned);
    event.md5_of_message_attributes = message.md5_of_message_attributes().map(str::to_owned);
    event.attributes = message
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    event.message_attributes = message
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(name, value)| {
                    let mut attribute = SqsMessageAttribute::default();
                    attribute.string_value = value.string_value().map(str::to_owned);
                    attribute.data_type = Some(value.data_type().to_owned());
                    (name.clone(), attribute)
                })
                .collect()
        })
        .unwrap_or_default();
    event.event_source = Some("aws:sqs".to_owned());
    event.event_source_arn = Some(arn.to_owned());
    event.aws_region = Some(region.to_owned());
    event
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
    let region = config.region().map(|r| r.to_string()).unwrap_or_default();
    let sqs = aws_sdk_sqs::Client::new(&config);
    let arn = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (sqs, http) = (sqs.clone(), http.clone());
        let (queue_url, handler_url) = (queue_url.clone(), handler_url.clone());
        let (arn, region) = (arn.clone(), region.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let received = sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(20)
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .message_attribute_names("All")
                    .send()
                    .await
                    .expect("receive");
                let messages = received.messages();
                if messages.is_empty() {
                    continue;
                }
                let records: Vec<SqsMessage> = messages
                    .iter()
                    .map(|m| event_of(m, &arn, &region))
                    .collect();
                let event = serde_json::to_vec(&serde_json::json!({ "Records": records }))
                    .expect("an SQS event serializes");
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
