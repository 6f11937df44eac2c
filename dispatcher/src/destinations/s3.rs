//! An S3 bucket as an on-failure destination: one object per dead letter, holding the envelope
//! and, as Lambda's S3 destination does, the invocation event as `payload` (semantics.md §13.4).
//!
//! Keys follow Lambda's layout, with the mapping name where Lambda puts the mapping's UUID:
//! `<prefix>aws/lambda/<mapping>/<shard or queue>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>`.

use super::{Destination, DestinationError, Placement};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;

/// An S3 object could not be read or written; the cause (the SDK's error) is the source.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{operation} s3://{bucket}/{key} failed")]
    Call {
        operation: &'static str,
        bucket: String,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("s3://{bucket}/{key} is not UTF-8 text")]
    NotText { bucket: String, key: String },
}

impl ObjectError {
    fn call(
        operation: &'static str,
        bucket: &str,
        key: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ObjectError::Call {
            operation,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            source: Box::new(source),
        }
    }
}

/// The text of an S3 object.
pub async fn read_object_text(
    client: &Client,
    bucket: &str,
    key: &str,
) -> Result<String, ObjectError> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| ObjectError::call("GetObject", bucket, key, e))?;
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| ObjectError::call("reading the body of", bucket, key, e))?
        .into_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| ObjectError::NotText {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    })
}

/// Stores `body` as a JSON object at `bucket`/`key` (replacing what is there).
pub async fn put_json_object(
    client: &Client,
    bucket: &str,
    key: &str,
    body: String,
) -> Result<(), ObjectError> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .body(ByteStream::from(body.into_bytes()))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| ObjectError::call("PutObject", bucket, key, e))
}

pub struct S3Destination {
    client: Client,
    bucket: String,
    prefix: String,
    description: String,
}

impl S3Destination {
    pub fn new(client: Client, bucket: String, prefix: String) -> Self {
        let description = format!("s3://{bucket}/{prefix}");
        Self {
            client,
            bucket,
            prefix,
            description,
        }
    }

    /// The object key for a document stored at `now` (since the Unix epoch).
    pub fn key(&self, placement: &Placement<'_>, now: std::time::Duration, id: &str) -> String {
        let datetime = time::OffsetDateTime::UNIX_EPOCH + now;
        let day = time::macros::format_description!("[year]/[month]/[day]");
        let stamp =
            time::macros::format_description!("[year]-[month]-[day]T[hour].[minute].[second]");
        format!(
            "{}aws/lambda/{}/{}/{}/{}-{id}",
            self.prefix,
            placement.mapping,
            placement.key_part,
            datetime.format(&day).unwrap_or_default(),
            datetime.format(&stamp).unwrap_or_default(),
        )
    }
}

#[async_trait]
impl Destination for S3Destination {
    async fn store(
        &self,
        document: serde_json::Value,
        placement: &Placement<'_>,
    ) -> Result<(), DestinationError> {
        let id = uuid::Uuid::new_v4().to_string();
        let key = self.key(placement, super::envelope::now_since_epoch(), &id);
        put_json_object(&self.client, &self.bucket, &key, document.to_string())
            .await
            .map_err(|error| DestinationError::S3 {
                bucket: self.bucket.clone(),
                key,
                message: crate::error_chain(&error),
            })
    }

    fn keeps_payload(&self) -> bool {
        true
    }

    fn describe(&self) -> &str {
        &self.description
    }
}
