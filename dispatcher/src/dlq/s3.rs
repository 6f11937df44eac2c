//! Dead letters in S3: one object per envelope under `<prefix>aws/lambda/<mapping>/`, read in
//! key order (shard or queue, then time). Objects are only read; a replay deletes an object after
//! its records succeeded, or overwrites it with what is left.

use super::{DlqError, Entry, Handle, RecordKind, Store};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use serde_json::Value;
use std::collections::VecDeque;

pub(crate) struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    description: String,
    fallback: RecordKind,
    keys: Option<VecDeque<String>>,
}

impl S3Store {
    pub(crate) fn new(
        client: Client,
        bucket: &str,
        prefix: &str,
        mapping: &str,
        fallback: RecordKind,
    ) -> Self {
        let prefix = format!("{prefix}aws/lambda/{mapping}/");
        Self {
            description: format!("s3://{bucket}/{prefix}"),
            client,
            bucket: bucket.to_owned(),
            prefix,
            fallback,
            keys: None,
        }
    }

    fn failed(&self, operation: &'static str, message: impl ToString) -> DlqError {
        DlqError::store(&self.description, operation, message)
    }

    /// Every key under the prefix, listed once at the first read: objects written during the
    /// run (rewrites, new dead letters) wait for the next run.
    async fn list(&self) -> Result<VecDeque<String>, DlqError> {
        let mut keys = VecDeque::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failed("ListObjectsV2", DisplayErrorContext(&e)))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    async fn read(&self, key: &str) -> Entry {
        let handle = Handle::S3 {
            key: key.to_owned(),
        };
        let text = crate::destinations::s3::read_object_text(&self.client, &self.bucket, key)
            .await
            .map_err(|e| crate::error_chain(&e))
            .and_then(|text| {
                serde_json::from_str::<Value>(&text).map_err(|e| format!("not JSON: {e}"))
            });
        match text {
            Ok(envelope) => Entry::from_envelope(key.to_owned(), envelope, self.fallback, handle),
            Err(error) => Entry::unreadable(
                key.to_owned(),
                self.fallback,
                format!("s3://{}/{key} cannot be read: {error}", self.bucket),
                handle,
            ),
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> &str {
        &self.description
    }

    async fn next(&mut self, max: usize) -> Result<Vec<Entry>, DlqError> {
        if self.keys.is_none() {
            self.keys = Some(self.list().await?);
        }
        let mut taken = Vec::new();
        while taken.len() < max
            && let Some(key) = self.keys.as_mut().and_then(VecDeque::pop_front)
        {
            taken.push(key);
        }
        let mut entries = Vec::with_capacity(taken.len());
        for key in taken {
            entries.push(self.read(&key).await);
        }
        Ok(entries)
    }

    async fn release(&mut self, _entries: &[Entry]) -> Result<(), DlqError> {
        Ok(())
    }

    async fn delete(&mut self, entry: &Entry) -> Result<(), DlqError> {
        let Handle::S3 { key } = &entry.handle else {
            return Ok(());
        };
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failed("DeleteObject", DisplayErrorContext(&e)))
    }

    async fn replace(&mut self, entry: &Entry, envelope: Value) -> Result<(), DlqError> {
        let Handle::S3 { key } = &entry.handle else {
            return Ok(());
        };
        crate::destinations::s3::put_json_object(
            &self.client,
            &self.bucket,
            key,
            envelope.to_string(),
        )
        .await
        .map_err(|e| self.failed("PutObject", crate::error_chain(&e)))
    }
}
