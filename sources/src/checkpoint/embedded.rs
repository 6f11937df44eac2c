//! The single-instance checkpoint store: a redb file under `state_dir`.
//!
//! One file serves every mapping of a process (keys are `<mapping>#<shard>`). redb locks the file,
//! so a second sluice process pointed at the same `state_dir` is refused at start instead of
//! processing the same shards. Every checkpoint is a committed (durable) write transaction, run
//! off the async threads.

use super::{
    Acquired, Checkpoint, CheckpointError, CheckpointStore, HeldShard, OpenWindow, ShardSpec,
    eligible_shards,
};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CHECKPOINTS: TableDefinition<&str, &str> = TableDefinition::new("checkpoints");
/// The tumbling window open at a shard's checkpoint (JSON of [`OpenWindow`]), by the same key;
/// written in the checkpoint's transaction.
const WINDOWS: TableDefinition<&str, &str> = TableDefinition::new("windows");
/// When each mapping first started, in milliseconds since the Unix epoch.
const FIRST_STARTED: TableDefinition<&str, u64> = TableDefinition::new("first_started");
/// redb's page cache for the state file (redb's own default is 1 GiB): queued Event payloads
/// pass through it, and memory must not grow with the backlog.
const STATE_FILE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The open state file, shared by the mappings of one process.
#[derive(Clone)]
pub struct StateFile {
    db: Arc<Database>,
    path: PathBuf,
}

impl StateFile {
    /// Opens (or creates) `<state_dir>/checkpoints.redb`; a directory it creates is 0700 and the
    /// file is 0600 (queued `Event` payloads are not for other users of the machine).
    pub fn open(state_dir: &Path) -> Result<Self, CheckpointError> {
        let path = state_dir.join("checkpoints.redb");
        let store_error = |message: String| CheckpointError::Store {
            store: path.display().to_string(),
            message,
        };
        // The file holds queued Event payloads and checkpoints: only sluice's user may read it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| {
                store_error(format!(
                    "cannot create state_dir {}: {e}",
                    state_dir.display()
                ))
            })?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|file| file.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| store_error(format!("cannot create {}: {e}", path.display())))?;
        let recover = "if the file is damaged, stop sluice and move it aside: the queued Event invocations and stream checkpoints in it are lost (streams start again from their starting_position)";
        // redb panics on some damaged files: that is an error to report, not a crash.
        let opened = std::panic::catch_unwind(|| -> Result<Database, CheckpointError> {
            let db = Database::builder()
                .set_cache_size(STATE_FILE_CACHE_BYTES)
                .create(&path)
                .map_err(|error| match error {
                redb::DatabaseError::DatabaseAlreadyOpen => store_error(
                    "another sluice process is using this state_dir; give each process its own state_dir, or share shards between instances with checkpoints.dynamodb".into(),
                ),
                other => store_error(format!("{other}; {recover}")),
            })?;
            let write = db
                .begin_write()
                .map_err(|e| store_error(format!("{e}; {recover}")))?;
            write
                .open_table(CHECKPOINTS)
                .map_err(|e| store_error(format!("{e}; {recover}")))?;
            write
                .open_table(WINDOWS)
                .map_err(|e| store_error(format!("{e}; {recover}")))?;
            write
                .commit()
                .map_err(|e| store_error(format!("{e}; {recover}")))?;
            Ok(db)
        });
        let db = match opened {
            Ok(result) => result?,
            Err(panic) => {
                return Err(store_error(format!(
                    "the file could not be read ({}); {recover}",
                    crate::panic_message(&*panic)
                )));
            }
        };
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn database(&self) -> Arc<Database> {
        self.db.clone()
    }
}

/// One mapping's view of the state file.
pub struct EmbeddedStore {
    file: StateFile,
    mapping: String,
}

impl EmbeddedStore {
    pub fn new(file: StateFile, mapping: &str) -> Self {
        Self {
            file,
            mapping: mapping.to_owned(),
        }
    }

    fn error(&self, message: impl ToString) -> CheckpointError {
        CheckpointError::Store {
            store: self.describe(),
            message: message.to_string(),
        }
    }

    fn key(&self, shard_id: &str) -> String {
        format!("{}#{shard_id}", self.mapping)
    }

    /// Every checkpoint of this mapping, by shard.
    fn read_all(&self) -> Result<HashMap<String, Checkpoint>, CheckpointError> {
        let read = self.file.db.begin_read().map_err(|e| self.error(e))?;
        let table = read.open_table(CHECKPOINTS).map_err(|e| self.error(e))?;
        let prefix = format!("{}#", self.mapping);
        let mut checkpoints = HashMap::new();
        for entry in table.range(prefix.as_str()..).map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            let Some(shard) = key.value().strip_prefix(&prefix) else {
                break;
            };
            checkpoints.insert(shard.to_owned(), Checkpoint::parse(value.value()));
        }
        Ok(checkpoints)
    }
}

#[async_trait]
impl CheckpointStore for EmbeddedStore {
    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }

    async fn acquire(&self, shards: &[ShardSpec]) -> Result<Acquired, CheckpointError> {
        let checkpoints = self.read_all()?;
        let finished: HashSet<String> = checkpoints
            .iter()
            .filter(|(_, c)| **c == Checkpoint::ShardEnd)
            .map(|(shard, _)| shard.clone())
            .collect();
        let held = eligible_shards(shards, &finished)
            .into_iter()
            .map(|shard_id| HeldShard {
                checkpoint: checkpoints.get(&shard_id).cloned(),
                shard_id,
            })
            .collect();
        Ok(Acquired {
            held,
            handoff_requested: Vec::new(),
            finished,
        })
    }

    async fn checkpoint_with(
        &self,
        shard_id: &str,
        checkpoint: &Checkpoint,
        window: Option<&OpenWindow>,
    ) -> Result<(), CheckpointError> {
        let db = self.file.db.clone();
        let key = self.key(shard_id);
        let value = checkpoint.as_stored().to_owned();
        let window = window
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| self.error(e))?;
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let write = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = write.open_table(CHECKPOINTS).map_err(|e| e.to_string())?;
                table
                    .insert(key.as_str(), value.as_str())
                    .map_err(|e| e.to_string())?;
                let mut windows = write.open_table(WINDOWS).map_err(|e| e.to_string())?;
                match &window {
                    Some(window) => windows.insert(key.as_str(), window.as_str()).map(drop),
                    None => windows.remove(key.as_str()).map(drop),
                }
                .map_err(|e| e.to_string())?;
            }
            write.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| self.error(e))?
        .map_err(|e| self.error(e))
    }

    async fn window(
        &self,
        shard_id: &str,
    ) -> Result<(Option<Checkpoint>, Option<OpenWindow>), CheckpointError> {
        // One read transaction: the window and the checkpoint it was written with.
        let read = self.file.db.begin_read().map_err(|e| self.error(e))?;
        let key = self.key(shard_id);
        let checkpoints = read.open_table(CHECKPOINTS).map_err(|e| self.error(e))?;
        let checkpoint = checkpoints
            .get(key.as_str())
            .map_err(|e| self.error(e))?
            .map(|stored| Checkpoint::parse(stored.value()));
        let windows = read.open_table(WINDOWS).map_err(|e| self.error(e))?;
        let Some(stored) = windows.get(key.as_str()).map_err(|e| self.error(e))? else {
            return Ok((checkpoint, None));
        };
        let window = serde_json::from_str(stored.value()).map_err(|e| {
            self.error(format!(
                "the stored window of shard {shard_id} is not readable: {e}"
            ))
        })?;
        Ok((checkpoint, Some(window)))
    }

    async fn release(&self, _shard_id: &str) -> Result<(), CheckpointError> {
        Ok(())
    }

    async fn first_started(
        &self,
        now: std::time::Duration,
    ) -> Result<std::time::Duration, CheckpointError> {
        let db = self.file.db.clone();
        let mapping = self.mapping.clone();
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let stored = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let write = db.begin_write().map_err(|e| e.to_string())?;
            let stored = {
                let mut table = write.open_table(FIRST_STARTED).map_err(|e| e.to_string())?;
                let existing = table
                    .get(mapping.as_str())
                    .map_err(|e| e.to_string())?
                    .map(|v| v.value());
                match existing {
                    Some(stored) => stored,
                    None => {
                        table
                            .insert(mapping.as_str(), now_ms)
                            .map_err(|e| e.to_string())?;
                        now_ms
                    }
                }
            };
            write.commit().map_err(|e| e.to_string())?;
            Ok(stored)
        })
        .await
        .map_err(|e| self.error(e))?
        .map_err(|e| self.error(e))?;
        Ok(std::time::Duration::from_millis(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, parent: Option<&str>) -> ShardSpec {
        ShardSpec {
            id: id.into(),
            parents: parent.into_iter().map(Into::into).collect(),
        }
    }

    #[test]
    fn the_state_dir_and_file_are_private_to_sluices_user() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let file = StateFile::open(&state_dir).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        assert_eq!(mode(file.path()), 0o600);
        drop(file);
        // A file left world-readable by an older version is narrowed on the next open.
        std::fs::set_permissions(
            state_dir.join("checkpoints.redb"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let file = StateFile::open(&state_dir).unwrap();
        assert_eq!(mode(file.path()), 0o600);
    }

    #[tokio::test]
    async fn the_first_start_is_kept_across_reopens_per_mapping() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let t1 = Duration::from_millis(1_800_000_000_123);
        let t2 = t1 + Duration::from_secs(3600);
        {
            let file = StateFile::open(dir.path()).unwrap();
            let orders = EmbeddedStore::new(file.clone(), "orders");
            assert_eq!(orders.first_started(t1).await.unwrap(), t1);
            assert_eq!(orders.first_started(t2).await.unwrap(), t1);
            let other = EmbeddedStore::new(file, "other");
            assert_eq!(other.first_started(t2).await.unwrap(), t2);
        }
        let file = StateFile::open(dir.path()).unwrap();
        let orders = EmbeddedStore::new(file, "orders");
        assert_eq!(
            orders.first_started(t2).await.unwrap(),
            t1,
            "after a reopen"
        );
    }

    #[tokio::test]
    async fn checkpoints_survive_a_reopen_and_mappings_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let shards = [spec("a", None), spec("b", Some("a"))];
        {
            let file = StateFile::open(dir.path()).unwrap();
            let orders = EmbeddedStore::new(file.clone(), "orders");
            let acquired = orders.acquire(&shards).await.unwrap();
            assert_eq!(
                acquired.held,
                vec![HeldShard {
                    shard_id: "a".into(),
                    checkpoint: None
                }]
            );
            orders
                .checkpoint("a", &Checkpoint::After("17".into()))
                .await
                .unwrap();
            orders.checkpoint("a", &Checkpoint::ShardEnd).await.unwrap();
            let other = EmbeddedStore::new(file, "other");
            other
                .checkpoint("a", &Checkpoint::After("3".into()))
                .await
                .unwrap();
        }
        let file = StateFile::open(dir.path()).unwrap();
        let acquired = EmbeddedStore::new(file.clone(), "orders")
            .acquire(&shards)
            .await
            .unwrap();
        assert_eq!(acquired.held.len(), 1);
        assert_eq!(acquired.held[0].shard_id, "b", "the parent is finished");
        let other = EmbeddedStore::new(file, "other")
            .acquire(&shards)
            .await
            .unwrap();
        assert_eq!(
            other.held[0].checkpoint,
            Some(Checkpoint::After("3".into()))
        );
    }

    #[tokio::test]
    async fn a_window_is_stored_with_its_checkpoint_and_cleared_by_the_next_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let window = OpenWindow {
            start_ms: 1_800_000_000_000,
            end_ms: 1_800_000_030_000,
            state: r#"{"blue":3}"#.into(),
        };
        {
            let file = StateFile::open(dir.path()).unwrap();
            let orders = EmbeddedStore::new(file.clone(), "orders");
            assert_eq!(orders.window("a").await.unwrap(), (None, None));
            orders
                .checkpoint_with("a", &Checkpoint::After("17".into()), Some(&window))
                .await
                .unwrap();
            // Another mapping's shard of the same name has its own.
            let other = EmbeddedStore::new(file, "other");
            assert_eq!(other.window("a").await.unwrap(), (None, None));
        }
        let file = StateFile::open(dir.path()).unwrap();
        let orders = EmbeddedStore::new(file, "orders");
        assert_eq!(
            orders.window("a").await.unwrap(),
            (Some(Checkpoint::After("17".into())), Some(window)),
            "after a reopen"
        );
        orders
            .checkpoint("a", &Checkpoint::After("18".into()))
            .await
            .unwrap();
        assert_eq!(
            orders.window("a").await.unwrap(),
            (Some(Checkpoint::After("18".into())), None)
        );
    }

    #[test]
    fn a_second_opener_of_the_state_dir_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateFile::open(dir.path()).unwrap();
        let Err(error) = StateFile::open(dir.path()) else {
            panic!("a second open must fail");
        };
        assert!(
            error.to_string().contains("another sluice process"),
            "{error}"
        );
    }
}
