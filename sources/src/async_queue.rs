//! The durable queue of asynchronous invocations (Invoke API `Event`), in the state file.
//!
//! An event is stored, in a committed write, before the caller is told it was accepted, and
//! removed only once it succeeded or its destination record was stored; retries update it in
//! place. So an accepted event survives a crash and is handled after the restart.
//!
//! What is kept where, so that memory does not grow with the backlog: the index table holds each
//! event's small description ([`EventMeta`]: ids, times, attempts, payload size), the payload
//! table holds the payloads. [`AsyncQueue::index`] reads the index only; a payload is read with
//! [`AsyncQueue::payload`] when its event runs. Every call runs off the async threads, and a
//! storage error or a panic inside the store (a corrupt file) comes back as a
//! [`CheckpointError`], never as a panic of the caller.

use crate::checkpoint::CheckpointError;
use crate::checkpoint::embedded::StateFile;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};

/// Versions before the index kept description and payload in one JSON document here; they are
/// moved to the two tables below when the queue is opened.
const LEGACY_EVENTS: TableDefinition<&str, &str> = TableDefinition::new("async_events");
const INDEX: TableDefinition<&str, &str> = TableDefinition::new("async_index");
const PAYLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("async_payloads");

/// One queued event, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// Unique and ordered by arrival within a function.
    pub id: String,
    pub function: String,
    /// The id the caller got with its 202; every attempt of the event carries it.
    pub request_id: String,
    pub payload_bytes: u64,
    pub queued_at_ms: u64,
    pub failed_attempts: u32,
    pub not_run: u32,
    /// Not to be invoked before this time (epoch milliseconds).
    pub not_before_ms: u64,
}

impl EventMeta {
    pub fn new(function: &str, request_id: &str, payload_bytes: u64, now_ms: u64) -> Self {
        Self {
            id: format!("{function}\u{0}{now_ms:020}-{request_id}"),
            function: function.to_owned(),
            request_id: request_id.to_owned(),
            payload_bytes,
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
            "payload_bytes": self.payload_bytes,
            "queued_at_ms": self.queued_at_ms,
            "failed_attempts": self.failed_attempts,
            "not_run": self.not_run,
            "not_before_ms": self.not_before_ms,
        })
        .to_string()
    }

    fn from_stored(id: &str, stored: &Value) -> Option<Self> {
        Some(Self {
            id: id.to_owned(),
            function: stored["function"].as_str()?.to_owned(),
            request_id: stored["request_id"].as_str()?.to_owned(),
            payload_bytes: stored["payload_bytes"].as_u64().unwrap_or_else(|| {
                stored["payload"]
                    .as_str()
                    .map_or(0, |payload| payload.len() as u64)
            }),
            queued_at_ms: stored["queued_at_ms"].as_u64()?,
            failed_attempts: u32::try_from(stored["failed_attempts"].as_u64()?).ok()?,
            not_run: u32::try_from(stored["not_run"].as_u64()?).ok()?,
            not_before_ms: stored["not_before_ms"].as_u64()?,
        })
    }
}

#[derive(Clone)]
pub struct AsyncQueue {
    file: StateFile,
}

type StoreResult<T> = Result<T, String>;

impl AsyncQueue {
    /// Opens the queue in `file`, moving events stored by older versions into the index.
    pub fn open(file: StateFile) -> Result<Self, CheckpointError> {
        let queue = Self { file };
        let db = queue.file.database();
        catch(|| {
            let write = db.begin_write().map_err(|e| e.to_string())?;
            {
                let legacy = write.open_table(LEGACY_EVENTS).map_err(|e| e.to_string())?;
                let mut index = write.open_table(INDEX).map_err(|e| e.to_string())?;
                let mut payloads = write.open_table(PAYLOADS).map_err(|e| e.to_string())?;
                let mut moved = Vec::new();
                for entry in legacy.iter().map_err(|e| e.to_string())? {
                    let (key, value) = entry.map_err(|e| e.to_string())?;
                    let stored: Value = serde_json::from_str(value.value()).unwrap_or_default();
                    if let Some(meta) = EventMeta::from_stored(key.value(), &stored) {
                        let payload = stored["payload"].as_str().unwrap_or("{}").to_owned();
                        moved.push((meta, payload));
                    }
                }
                for (meta, payload) in &moved {
                    index
                        .insert(meta.id.as_str(), meta.to_stored().as_str())
                        .map_err(|e| e.to_string())?;
                    payloads
                        .insert(meta.id.as_str(), payload.as_bytes())
                        .map_err(|e| e.to_string())?;
                }
                drop(legacy);
            }
            write
                .delete_table(LEGACY_EVENTS)
                .map_err(|e| e.to_string())?;
            write.commit().map_err(|e| e.to_string())
        })
        .map_err(|e| queue.error(e))?;
        Ok(queue)
    }

    pub fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn error(&self, message: impl ToString) -> CheckpointError {
        CheckpointError::Store {
            store: self.describe(),
            message: message.to_string(),
        }
    }

    /// Runs `work` on the blocking pool; a panic inside it (redb on a corrupt file) is an error.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::Database) -> StoreResult<T> + Send + 'static,
    ) -> Result<T, CheckpointError> {
        let db = self.file.database();
        tokio::task::spawn_blocking(move || catch(|| work(&db)))
            .await
            .map_err(|e| self.error(e))?
            .map_err(|e| self.error(e))
    }

    /// Runs `work` in one committed write transaction, off the async threads.
    async fn write(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    ) -> Result<(), CheckpointError> {
        self.blocking(move |db| {
            let write = db.begin_write().map_err(|e| e.to_string())?;
            work(&write).map_err(|e| e.to_string())?;
            write.commit().map_err(|e| e.to_string())
        })
        .await
    }

    /// Stores a new event and its payload durably, in one transaction.
    pub async fn insert(
        &self,
        meta: &EventMeta,
        payload: bytes::Bytes,
    ) -> Result<(), CheckpointError> {
        let (id, stored) = (meta.id.clone(), meta.to_stored());
        self.write(move |write| {
            write
                .open_table(INDEX)?
                .insert(id.as_str(), stored.as_str())?;
            write
                .open_table(PAYLOADS)?
                .insert(id.as_str(), payload.as_ref())?;
            Ok(())
        })
        .await
    }

    /// Stores an event's new attempt counts and time; its payload is untouched.
    pub async fn update(&self, meta: &EventMeta) -> Result<(), CheckpointError> {
        let (id, stored) = (meta.id.clone(), meta.to_stored());
        self.write(move |write| {
            write
                .open_table(INDEX)?
                .insert(id.as_str(), stored.as_str())?;
            Ok(())
        })
        .await
    }

    pub async fn remove(&self, id: &str) -> Result<(), CheckpointError> {
        let id = id.to_owned();
        self.write(move |write| {
            write.open_table(INDEX)?.remove(id.as_str())?;
            write.open_table(PAYLOADS)?.remove(id.as_str())?;
            Ok(())
        })
        .await
    }

    /// The payload of event `id`, or `None` when it is not stored.
    pub async fn payload(&self, id: &str) -> Result<Option<bytes::Bytes>, CheckpointError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let read = db.begin_read().map_err(|e| e.to_string())?;
            let payloads = read.open_table(PAYLOADS).map_err(|e| e.to_string())?;
            let payload = payloads.get(id.as_str()).map_err(|e| e.to_string())?;
            Ok(payload.map(|p| bytes::Bytes::copy_from_slice(p.value())))
        })
        .await
    }

    /// The description of every queued event of `function`, oldest first; no payload is read.
    pub async fn index(&self, function: &str) -> Result<Vec<EventMeta>, CheckpointError> {
        let prefix = format!("{function}\u{0}");
        self.blocking(move |db| {
            let read = db.begin_read().map_err(|e| e.to_string())?;
            let index = read.open_table(INDEX).map_err(|e| e.to_string())?;
            let mut events = Vec::new();
            for entry in index.range(prefix.as_str()..).map_err(|e| e.to_string())? {
                let (key, value) = entry.map_err(|e| e.to_string())?;
                if !key.value().starts_with(&prefix) {
                    break;
                }
                let stored: Value = serde_json::from_str(value.value()).unwrap_or_default();
                match EventMeta::from_stored(key.value(), &stored) {
                    Some(meta) => events.push(meta),
                    None => tracing::error!(event = %key.value().replace('\u{0}', "/"), "a queued event's description is unreadable; it is skipped"),
                }
            }
            Ok(events)
        })
        .await
    }
}

/// Runs `work`, turning a panic into an error.
fn catch<T>(work: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        Err(format!(
            "the store panicked: {}",
            crate::panic_message(&*panic)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_survive_a_reopen_in_order_and_functions_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (first, mut second) = (
            EventMeta::new("hello", "r1", 7, 1_000),
            EventMeta::new("hello", "r2", 7, 2_000),
        );
        {
            let queue = AsyncQueue::open(StateFile::open(dir.path()).unwrap()).unwrap();
            queue.insert(&first, "{\"n\":1}".into()).await.unwrap();
            queue.insert(&second, "{\"n\":2}".into()).await.unwrap();
            queue
                .insert(&EventMeta::new("other", "r3", 2, 500), "{}".into())
                .await
                .unwrap();
            second.failed_attempts = 1;
            second.not_before_ms = 62_000;
            queue.update(&second).await.unwrap();
            queue.remove(&first.id).await.unwrap();
        }
        let queue = AsyncQueue::open(StateFile::open(dir.path()).unwrap()).unwrap();
        let events = queue.index("hello").await.unwrap();
        assert_eq!(events, [second.clone()]);
        assert_eq!(
            queue.payload(&second.id).await.unwrap().as_deref(),
            Some(&b"{\"n\":2}"[..])
        );
        assert_eq!(queue.payload(&first.id).await.unwrap(), None);
        assert_eq!(queue.index("other").await.unwrap().len(), 1);
        assert!(queue.index("none").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn events_stored_by_older_versions_are_moved_into_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(dir.path()).unwrap();
        let db = file.database();
        let write = db.begin_write().unwrap();
        {
            let mut legacy = write.open_table(LEGACY_EVENTS).unwrap();
            let stored = json!({
                "function": "hello", "request_id": "r1", "payload": "{\"n\":1}",
                "queued_at_ms": 5, "failed_attempts": 1, "not_run": 0, "not_before_ms": 9,
            })
            .to_string();
            legacy
                .insert("hello\u{0}00000000000000000005-r1", stored.as_str())
                .unwrap();
        }
        write.commit().unwrap();
        let queue = AsyncQueue::open(file).unwrap();
        let events = queue.index("hello").await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].request_id, "r1");
        assert_eq!(events[0].payload_bytes, 7);
        assert_eq!(events[0].failed_attempts, 1);
        assert_eq!(
            queue.payload(&events[0].id).await.unwrap().as_deref(),
            Some(&b"{\"n\":1}"[..])
        );
    }

    #[test]
    fn a_panic_inside_the_store_is_an_error() {
        let result: StoreResult<()> = catch(|| panic!("corrupt page"));
        assert_eq!(result, Err("the store panicked: corrupt page".into()));
    }
}
