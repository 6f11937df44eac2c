//! The durable queue of asynchronous invocations (Invoke API `Event`), in the state file.
//!
//! An event is stored, in a committed write, before the caller is told it was accepted, and
//! removed only once it succeeded or its destination record was stored; retries update it in
//! place. So an accepted event survives a crash and is handled after the restart.

use crate::checkpoint::CheckpointError;
use crate::checkpoint::embedded::StateFile;
use redb::{ReadableDatabase, TableDefinition};
use serde_json::{Value, json};

const EVENTS: TableDefinition<&str, &str> = TableDefinition::new("async_events");

/// One queued event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// Unique and ordered by arrival within a function.
    pub id: String,
    pub function: String,
    pub request_id: String,
    /// The event as the caller sent it.
    pub payload: String,
    pub queued_at_ms: u64,
    pub failed_attempts: u32,
    pub not_run: u32,
    /// Not to be invoked before this time (epoch milliseconds).
    pub not_before_ms: u64,
}

impl QueuedEvent {
    pub fn new(function: &str, request_id: &str, payload: String, now_ms: u64) -> Self {
        Self {
            id: format!("{function}\u{0}{now_ms:020}-{request_id}"),
            function: function.to_owned(),
            request_id: request_id.to_owned(),
            payload,
            queued_at_ms: now_ms,
            failed_attempts: 0,
            not_run: 0,
            not_before_ms: 0,
        }
    }

    fn to_stored(&self) -> String {
        json!({
            "function": self.function,
            "request_id": self.request_id,
            "payload": self.payload,
            "queued_at_ms": self.queued_at_ms,
            "failed_attempts": self.failed_attempts,
            "not_run": self.not_run,
            "not_before_ms": self.not_before_ms,
        })
        .to_string()
    }

    fn from_stored(id: &str, stored: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(stored).ok()?;
        Some(Self {
            id: id.to_owned(),
            function: value["function"].as_str()?.to_owned(),
            request_id: value["request_id"].as_str()?.to_owned(),
            payload: value["payload"].as_str()?.to_owned(),
            queued_at_ms: value["queued_at_ms"].as_u64()?,
            failed_attempts: value["failed_attempts"].as_u64()? as u32,
            not_run: value["not_run"].as_u64()? as u32,
            not_before_ms: value["not_before_ms"].as_u64()?,
        })
    }
}

#[derive(Clone)]
pub struct AsyncQueue {
    file: StateFile,
}

impl AsyncQueue {
    pub fn new(file: StateFile) -> Self {
        Self { file }
    }

    fn error(&self, message: impl ToString) -> CheckpointError {
        CheckpointError::Store {
            store: self.file.path().display().to_string(),
            message: message.to_string(),
        }
    }

    async fn write(&self, id: String, value: Option<String>) -> Result<(), CheckpointError> {
        let db = self.file.database();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let write = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = write.open_table(EVENTS).map_err(|e| e.to_string())?;
                match value {
                    Some(value) => {
                        table
                            .insert(id.as_str(), value.as_str())
                            .map_err(|e| e.to_string())?;
                    }
                    None => {
                        table.remove(id.as_str()).map_err(|e| e.to_string())?;
                    }
                }
            }
            write.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| self.error(e))?
        .map_err(|e| self.error(e))
    }

    /// Stores a new or updated event durably.
    pub async fn put(&self, event: &QueuedEvent) -> Result<(), CheckpointError> {
        self.write(event.id.clone(), Some(event.to_stored())).await
    }

    pub async fn remove(&self, id: &str) -> Result<(), CheckpointError> {
        self.write(id.to_owned(), None).await
    }

    /// Every queued event of `function`, oldest first.
    pub fn list(&self, function: &str) -> Result<Vec<QueuedEvent>, CheckpointError> {
        let db = self.file.database();
        let read = db.begin_read().map_err(|e| self.error(e))?;
        let table = match read.open_table(EVENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(self.error(error)),
        };
        let prefix = format!("{function}\u{0}");
        let mut events = Vec::new();
        for entry in table.range(prefix.as_str()..).map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            if !key.value().starts_with(&prefix) {
                break;
            }
            if let Some(event) = QueuedEvent::from_stored(key.value(), value.value()) {
                events.push(event);
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_survive_a_reopen_in_order_and_functions_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = AsyncQueue::new(StateFile::open(dir.path()).unwrap());
            let first = QueuedEvent::new("hello", "r1", "{\"n\":1}".into(), 1_000);
            let mut second = QueuedEvent::new("hello", "r2", "{\"n\":2}".into(), 2_000);
            queue.put(&first).await.unwrap();
            queue.put(&second).await.unwrap();
            queue
                .put(&QueuedEvent::new("other", "r3", "{}".into(), 500))
                .await
                .unwrap();
            second.failed_attempts = 1;
            second.not_before_ms = 62_000;
            queue.put(&second).await.unwrap();
            queue.remove(&first.id).await.unwrap();
        }
        let queue = AsyncQueue::new(StateFile::open(dir.path()).unwrap());
        let events = queue.list("hello").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].request_id, "r2");
        assert_eq!(events[0].failed_attempts, 1);
        assert_eq!(events[0].not_before_ms, 62_000);
        assert_eq!(queue.list("other").unwrap().len(), 1);
        assert!(queue.list("none").unwrap().is_empty());
    }
}
