//! An SQS queue as an on-failure destination: the envelope is the message body.

use super::{DeadLetter, Destination, DestinationError};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;

pub struct SqsDestination {
    client: Client,
    queue_url: String,
    fifo: bool,
}

impl SqsDestination {
    pub fn new(client: Client, queue_url: String) -> Self {
        let fifo = queue_url.ends_with(".fifo");
        Self {
            client,
            queue_url,
            fifo,
        }
    }
}

#[async_trait]
impl Destination for SqsDestination {
    async fn send(
        &self,
        dead_letter: &DeadLetter,
        group_hint: &str,
        dedup_hint: &str,
    ) -> Result<(), DestinationError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let body = dead_letter.to_json(&request_id).to_string();
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body);
        if self.fifo {
            // Deduplication ids allow at most 128 characters.
            let dedup: String = dedup_hint.chars().take(128).collect();
            request = request
                .message_group_id(group_hint)
                .message_deduplication_id(dedup);
        }
        request
            .send()
            .await
            .map(|_| ())
            .map_err(|error| DestinationError::Sqs {
                queue_url: self.queue_url.clone(),
                message: DisplayErrorContext(&error).to_string(),
            })
    }

    fn describe(&self) -> &str {
        &self.queue_url
    }
}
