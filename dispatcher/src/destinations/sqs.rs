//! An SQS queue as an on-failure destination: the envelope is the message body.

use super::{Destination, DestinationError, Placement};
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
    async fn store(
        &self,
        document: serde_json::Value,
        placement: &Placement<'_>,
    ) -> Result<(), DestinationError> {
        let (group_hint, dedup_hint) = (placement.group_hint, placement.dedup_hint);
        let body = document.to_string();
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
