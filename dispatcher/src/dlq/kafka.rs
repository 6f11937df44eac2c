//! Dead letters on a Kafka failure topic: one message per record (Lambda's topic destination
//! layout). Read with the consumer group `<source group_id>-dlq`, from its committed offsets (or
//! the beginning) up to the end offsets seen when the store opened.
//!
//! A message counts as removed when its offset is committed; offsets are committed only up to
//! the first message that is not done, so nothing left behind is skipped by a later run. Commits
//! go out before each read and at the end (also after an interrupt): a replay killed in between
//! replays its last entries again, it never skips one. A message that must stay while later ones
//! are done is written again at the end of the topic.

use super::{DlqError, Entry, Handle, RecordKind, Store};
use crate::destinations::kafka::KafkaDestination;
use crate::runtime::kafka::config::KafkaSourceConfig;
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;
use sluice_sources::kafka::auth::ClientAuth;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may wait for messages it knows exist before giving up on them.
const STALL: Duration = Duration::from_secs(30);

struct Partition {
    /// The next offset to read.
    position: i64,
    /// The end offset when the store opened.
    end: i64,
    /// Where the group's committed offset is.
    committed: i64,
    /// Offsets read and not yet committed, and whether each is done.
    read: BTreeMap<i64, bool>,
}

pub(crate) struct KafkaStore {
    consumer: BaseConsumer<ClientAuth>,
    /// Writes entries that stay, or what is left of them, at the end of the topic.
    writer: KafkaDestination,
    topic: String,
    description: String,
    partitions: HashMap<i32, Partition>,
    /// Commits are made only by a replay; a peek never moves the group.
    commits: bool,
}

impl KafkaStore {
    /// Opens the failure topic `topic` on the cluster of `source`.
    pub(crate) fn open(
        source: &KafkaSourceConfig,
        topic: &str,
        commits: bool,
    ) -> Result<Self, DlqError> {
        let description = format!("kafka://{topic}");
        let failed = |operation, error: rdkafka::error::KafkaError| {
            DlqError::store(&description, operation, error)
        };
        let group = format!("{}-dlq", source.group_id);
        let tokens = source.tokens();
        let consumer: BaseConsumer<ClientAuth> = sluice_sources::kafka::consumer_config(
            &source.bootstrap_servers,
            &group,
            sluice_sources::kafka::StartPosition::TrimHorizon,
            &source.properties,
        )
        .create_with_context(ClientAuth {
            tokens: tokens.clone(),
        })
        .map_err(|e| failed("creating the consumer", e))?;
        sluice_sources::kafka::auth::answer_token_request(&consumer);
        let writer = KafkaDestination::new(
            &source.bootstrap_servers,
            &source.properties,
            &tokens,
            topic,
        )?;
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| failed("reading the topic's metadata", e))?;
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            return Err(DlqError::store(
                &description,
                "reading the topic's metadata",
                "the topic does not exist or has no partitions",
            ));
        }
        let mut wanted = TopicPartitionList::new();
        for id in &ids {
            wanted.add_partition(topic, *id);
        }
        let committed = consumer
            .committed_offsets(wanted, TIMEOUT)
            .map_err(|e| failed("reading the committed offsets", e))?;
        let mut partitions = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for id in ids {
            let (low, high) = consumer
                .fetch_watermarks(topic, id, TIMEOUT)
                .map_err(|e| failed("reading the end offsets", e))?;
            let stored = committed
                .find_partition(topic, id)
                .and_then(|p| p.offset().to_raw())
                .filter(|offset| *offset >= 0);
            let start = stored.unwrap_or(low).max(low);
            if start < high {
                assignment
                    .add_partition_offset(topic, id, Offset::Offset(start))
                    .map_err(|e| failed("assigning the partitions", e))?;
            }
            partitions.insert(
                id,
                Partition {
                    position: start,
                    end: high,
                    committed: start,
                    read: BTreeMap::new(),
                },
            );
        }
        consumer
            .assign(&assignment)
            .map_err(|e| failed("assigning the partitions", e))?;
        Ok(Self {
            consumer,
            writer,
            topic: topic.to_owned(),
            description,
            partitions,
            commits,
        })
    }

    async fn produce(&self, key: Option<&[u8]>, value: &[u8]) -> Result<(), DlqError> {
        Ok(self.writer.produce(key, value).await?)
    }

    fn remaining(&self) -> bool {
        self.partitions.values().any(|p| p.position < p.end)
    }

    /// Marks an entry done; the group's offset moves over it once everything before it is done.
    fn mark_done(&mut self, entry: &Entry) {
        let Handle::Kafka {
            partition, offset, ..
        } = &entry.handle
        else {
            return;
        };
        if let Some(state) = self.partitions.get_mut(partition) {
            state.read.insert(*offset, true);
        }
    }

    /// Commits, per partition, past every done entry with nothing undone before it.
    fn commit(&mut self) -> Result<(), DlqError> {
        if !self.commits {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        let mut moved = Vec::new();
        for (partition, state) in &mut self.partitions {
            let mut next = state.committed;
            while let Some(entry) = state.read.first_entry() {
                if !*entry.get() {
                    break;
                }
                next = *entry.key() + 1;
                entry.remove();
            }
            if next > state.committed {
                offsets
                    .add_partition_offset(&self.topic, *partition, Offset::Offset(next))
                    .map_err(|e| DlqError::store(&self.description, "committing", e))?;
                moved.push((*partition, next));
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        self.consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|e| DlqError::store(&self.description, "committing", e))?;
        for (partition, next) in moved {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.committed = next;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for KafkaStore {
    fn describe(&self) -> &str {
        &self.description
    }

    async fn next(&mut self, max: usize) -> Result<Vec<Entry>, DlqError> {
        self.commit()?;
        let mut entries = Vec::new();
        let mut last_message = Instant::now();
        while entries.len() < max && self.remaining() {
            let polled = tokio::task::block_in_place(|| {
                self.consumer.poll(Duration::from_millis(200)).map(|m| {
                    m.map(|m| {
                        (
                            m.partition(),
                            m.offset(),
                            m.key().map(<[u8]>::to_vec),
                            m.payload().map(<[u8]>::to_vec),
                        )
                    })
                })
            });
            let (partition, offset, key, payload) = match polled {
                None => {
                    if last_message.elapsed() > STALL {
                        tracing::warn!(topic = %self.topic, "no messages for 30 s although the end offsets say more exist; stopping the read");
                        for state in self.partitions.values_mut() {
                            state.position = state.end;
                        }
                    }
                    continue;
                }
                Some(Err(error)) => {
                    return Err(DlqError::store(&self.description, "reading", error));
                }
                Some(Ok(parts)) => parts,
            };
            last_message = Instant::now();
            let Some(state) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if offset >= state.end || offset < state.position {
                continue;
            }
            state.position = offset + 1;
            state.read.insert(offset, false);
            let id = format!("{}-{partition}@{offset}", self.topic);
            let handle = Handle::Kafka {
                partition,
                offset,
                key,
                payload: payload.clone(),
            };
            let entry = match payload
                .as_deref()
                .map(serde_json::from_slice::<Value>)
                .transpose()
            {
                Ok(Some(envelope)) if envelope.is_object() => {
                    Entry::from_envelope(id, envelope, RecordKind::Kafka, handle)
                }
                _ => Entry::unreadable(
                    id,
                    RecordKind::Kafka,
                    "the message is not a dead-letter envelope".to_owned(),
                    handle,
                ),
            };
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn release(&mut self, _entries: &[Entry]) -> Result<(), DlqError> {
        Ok(())
    }

    async fn delete(&mut self, entry: &Entry) -> Result<(), DlqError> {
        self.mark_done(entry);
        Ok(())
    }

    async fn replace(&mut self, entry: &Entry, envelope: Value) -> Result<(), DlqError> {
        let key = match &entry.handle {
            Handle::Kafka { key, .. } => key.clone(),
            _ => None,
        };
        self.produce(key.as_deref(), envelope.to_string().as_bytes())
            .await?;
        self.mark_done(entry);
        Ok(())
    }

    async fn keep(&mut self, entry: &Entry) -> Result<(), DlqError> {
        // Offsets are committed in order: an entry that stays while later ones are done is
        // written again at the end, or the next run would skip it.
        if !self.commits {
            return Ok(());
        }
        let Handle::Kafka { key, payload, .. } = &entry.handle else {
            return Ok(());
        };
        self.produce(key.as_deref(), payload.as_deref().unwrap_or_default())
            .await?;
        self.mark_done(entry);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), DlqError> {
        self.commit()
    }
}
