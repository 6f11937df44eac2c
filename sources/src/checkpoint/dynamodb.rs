//! Shard leases in a DynamoDB table, shared by several sluice instances (architecture.md "Running
//! on more than one machine"), in the manner of the Kinesis Client Library.
//!
//! Table schema (created on demand, on-demand billing): partition key `lease_key` (S) =
//! `<mapping>#<shard id>`, and the attributes `mapping`, `shard_id`, `stream_arn`, `lease_owner`
//! (absent when free), `lease_counter` (N), `checkpoint` (a sequence number or `SHARD_END`),
//! `handoff_to` (an instance that asked for the lease) and `updated_at_ms`. A tumbling window
//! open at the checkpoint is `window_start_ms`, `window_end_ms` and `window_chunks` on the row,
//! its state in `window_chunks` rows `<lease_key>@window#<i>` (attribute `chunk`, binary; an
//! item holds at most 400 KB and a state up to 1 MiB), written with the checkpoint in one
//! transaction fenced like every lease write. Those rows, like `<mapping>@first-started`, have
//! no `mapping` attribute, so the lease scan passes them by.
//!
//! Guarantees:
//! - the holder renews each lease every sync (a quarter of the lease duration) by raising its
//!   counter, conditional on still owning it at the counter it knows;
//! - a lease whose counter has not moved for `lease_duration` of this instance's own clock is
//!   expired and may be taken; no clocks are compared between machines;
//! - taking, renewing, checkpointing and releasing are all conditional on the counter last seen,
//!   so of two instances racing for a lease exactly one wins, and one that lost a lease can no
//!   longer move its checkpoint;
//! - load is balanced: an instance holding fewer than its share (`ceil(shards / instances)`)
//!   takes free and expired leases first, then asks the busiest instance to hand one over; the
//!   holder finishes its batch, checkpoints and releases, so a shard is never processed by two
//!   instances at once for balancing.

use super::{
    Acquired, Checkpoint, CheckpointError, CheckpointStore, HeldShard, OpenWindow, ShardSpec,
    eligible_shards,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// One row of the lease table, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub shard_id: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: Option<Checkpoint>,
    pub handoff_to: Option<String>,
}

/// What one instance should do with the leases it sees.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeasePlan {
    /// Leases to take (free or expired), with the counter they were seen at.
    pub take: Vec<(String, u64)>,
    /// A lease to ask its busy owner for: shard, owner, counter.
    pub request: Option<(String, String, u64)>,
}

/// Decides which leases `me` takes among the `eligible` shards. `expired` says whether another
/// owner's lease has not been renewed for a lease duration.
pub fn plan_leases(
    me: &str,
    rows: &[LeaseRow],
    eligible: &HashSet<String>,
    expired: impl Fn(&LeaseRow) -> bool,
) -> LeasePlan {
    let rows: Vec<&LeaseRow> = rows
        .iter()
        .filter(|r| eligible.contains(&r.shard_id))
        .collect();
    let mut load: BTreeMap<&str, Vec<&LeaseRow>> = BTreeMap::new();
    load.insert(me, Vec::new());
    let mut free: Vec<&LeaseRow> = Vec::new();
    let mut stale: Vec<&LeaseRow> = Vec::new();
    for row in &rows {
        match row.owner.as_deref() {
            None => free.push(row),
            Some(owner) if owner != me && expired(row) => stale.push(row),
            Some(owner) => load.entry(owner).or_default().push(row),
        }
    }
    let instances = load.len();
    let target = rows.len().div_ceil(instances.max(1));
    let mine = load[me].len();
    let mut plan = LeasePlan::default();
    let mut wanted = target.saturating_sub(mine);
    for row in free.into_iter().chain(stale) {
        if wanted == 0 {
            break;
        }
        plan.take.push((row.shard_id.clone(), row.counter));
        wanted -= 1;
    }
    if wanted > 0 {
        // Ask the busiest instance for one lease, only when it holds more than its share, so two
        // instances with equal loads never trade shards back and forth.
        let busiest = load
            .iter()
            .filter(|(owner, _)| **owner != me)
            .max_by_key(|(owner, leases)| (leases.len(), std::cmp::Reverse(**owner)));
        if let Some((owner, leases)) = busiest
            && leases.len() > target
            && let Some(row) = leases.iter().find(|r| r.handoff_to.is_none())
        {
            plan.request = Some((row.shard_id.clone(), owner.to_string(), row.counter));
        }
    }
    plan
}

struct Seen {
    owner: Option<String>,
    counter: u64,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Shards held, with the counter this instance last wrote.
    held: HashMap<String, u64>,
    /// The last (owner, counter) seen per shard and since when, for expiry.
    seen: HashMap<String, Seen>,
}

pub struct DynamoDbLeaseStore {
    client: Client,
    table: String,
    mapping: String,
    stream_arn: String,
    owner: String,
    lease_duration: Duration,
    state: Mutex<State>,
}

fn now_ms() -> u64 {
    crate::now_since_epoch().as_millis() as u64
}

fn is_conditional_failure<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    error.code() == Some("ConditionalCheckFailedException")
}

/// Whether a transaction was cancelled because a condition failed (the lease moved on).
fn is_cancelled_by_condition<R>(
    error: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match error.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
            .cancellation_reasons()
            .iter()
            .any(|reason| reason.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

/// The bytes of window state one row holds: under DynamoDB's 400 KB item limit with room for
/// the key and attribute names.
const WINDOW_CHUNK_BYTES: usize = 350 * 1024;

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A lease table: where stream mappings with `checkpoints: dynamodb` keep leases and
/// checkpoints; opens one store per mapping.
#[derive(Clone)]
pub struct LeaseTable {
    pub client: Client,
    pub table: String,
}

impl LeaseTable {
    /// The store of `mapping`'s leases on `stream_arn`, held by `owner`.
    pub async fn open(
        &self,
        mapping: &str,
        stream_arn: &str,
        owner: String,
        lease_duration: Duration,
    ) -> Result<DynamoDbLeaseStore, CheckpointError> {
        DynamoDbLeaseStore::open(
            self.client.clone(),
            &self.table,
            mapping,
            stream_arn,
            owner,
            lease_duration,
        )
        .await
    }
}

impl DynamoDbLeaseStore {
    /// Opens the lease table, creating it when missing. `owner` names this instance.
    pub async fn open(
        client: Client,
        table: &str,
        mapping: &str,
        stream_arn: &str,
        owner: String,
        lease_duration: Duration,
    ) -> Result<Self, CheckpointError> {
        let store = Self {
            client,
            table: table.to_owned(),
            mapping: mapping.to_owned(),
            stream_arn: stream_arn.to_owned(),
            owner,
            lease_duration,
            state: Mutex::new(State::default()),
        };
        store.ensure_table().await?;
        Ok(store)
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn error(&self, operation: &str, message: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Store {
            store: self.describe(),
            message: format!("{operation}: {message}"),
        }
    }

    async fn ensure_table(&self) -> Result<(), CheckpointError> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {}
            Err(e) => return Err(self.error("DescribeTable", DisplayErrorContext(&e))),
        }
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("lease_key")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| self.error("CreateTable", e))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("lease_key")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| self.error("CreateTable", e))?,
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            // Another instance created it first.
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
            Err(e) => return Err(self.error("CreateTable", DisplayErrorContext(&e))),
        }
        for _ in 0..120 {
            let status = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| self.error("DescribeTable", DisplayErrorContext(&e)))?;
            if status
                .table()
                .and_then(|t| t.table_status())
                .map(|s| s.as_str())
                == Some("ACTIVE")
            {
                tracing::info!(table = %self.table, "lease table created");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(self.error(
            "CreateTable",
            "the table did not become ACTIVE within a minute",
        ))
    }

    fn key(&self, shard_id: &str) -> String {
        format!("{}#{shard_id}", self.mapping)
    }

    async fn scan(&self) -> Result<Vec<LeaseRow>, CheckpointError> {
        let mut rows = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let output = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("#m = :m")
                .expression_attribute_names("#m", "mapping")
                .expression_attribute_values(":m", s(&self.mapping))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.error("Scan", DisplayErrorContext(&e)))?;
            for item in output.items() {
                let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
                let Some(shard_id) = text("shard_id") else {
                    continue;
                };
                rows.push(LeaseRow {
                    shard_id,
                    owner: text("lease_owner"),
                    counter: item
                        .get("lease_counter")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    checkpoint: text("checkpoint").map(|c| Checkpoint::parse(&c)),
                    handoff_to: text("handoff_to"),
                });
            }
            match output.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        Ok(rows)
    }

    /// An update of `shard_id`'s lease that names the counter (`#c`, seen at `:c`), the owner
    /// (`#o`, this instance as `:me`) and the update time (`#u`, `:now`); every lease write is one,
    /// so every write can be fenced on the counter.
    fn fenced_update(
        &self,
        shard_id: &str,
        counter: u64,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("lease_key", s(&self.key(shard_id)))
            .expression_attribute_names("#c", "lease_counter")
            .expression_attribute_names("#o", "lease_owner")
            .expression_attribute_names("#u", "updated_at_ms")
            .expression_attribute_values(":c", n(counter))
            .expression_attribute_values(":me", s(&self.owner))
            .expression_attribute_values(":now", n(now_ms()))
    }

    fn window_chunk_key(&self, shard_id: &str, index: usize) -> String {
        format!("{}@window#{index}", self.key(shard_id))
    }

    /// Moves the checkpoint and stores `window` beside it in one transaction, fenced on the
    /// counter. `Err(None)`: the fence failed (the lease may be lost).
    async fn checkpoint_with_window(
        &self,
        shard_id: &str,
        counter: u64,
        checkpoint: &Checkpoint,
        window: &OpenWindow,
    ) -> Result<(), Option<CheckpointError>> {
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
        let build_error = |e: aws_sdk_dynamodb::error::BuildError| {
            Some(self.error("TransactWriteItems (checkpoint)", e))
        };
        let chunks: Vec<&[u8]> = window.state.as_bytes().chunks(WINDOW_CHUNK_BYTES).collect();
        let update = Update::builder()
            .table_name(&self.table)
            .key("lease_key", s(&self.key(shard_id)))
            .update_expression("SET #cp = :cp, #u = :now, #ws = :ws, #we = :we, #wn = :wn")
            .condition_expression("#o = :me AND #c = :c")
            .expression_attribute_names("#cp", "checkpoint")
            .expression_attribute_names("#u", "updated_at_ms")
            .expression_attribute_names("#o", "lease_owner")
            .expression_attribute_names("#c", "lease_counter")
            .expression_attribute_names("#ws", "window_start_ms")
            .expression_attribute_names("#we", "window_end_ms")
            .expression_attribute_names("#wn", "window_chunks")
            .expression_attribute_values(":cp", s(checkpoint.as_stored()))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":me", s(&self.owner))
            .expression_attribute_values(":c", n(counter))
            .expression_attribute_values(":ws", n(window.start_ms))
            .expression_attribute_values(":we", n(window.end_ms))
            .expression_attribute_values(":wn", n(chunks.len() as u64))
            .build()
            .map_err(build_error)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        for (index, chunk) in chunks.iter().enumerate() {
            let put = Put::builder()
                .table_name(&self.table)
                .item("lease_key", s(&self.window_chunk_key(shard_id, index)))
                .item(
                    "chunk",
                    AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(chunk.to_vec())),
                )
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_cancelled_by_condition(&e) => Err(None),
            Err(e) => Err(Some(
                self.error("TransactWriteItems (checkpoint)", DisplayErrorContext(&e)),
            )),
        }
    }

    /// Raises the counter of a held lease; `Ok(Some(handoff))` when renewed, `Ok(None)` when lost.
    async fn renew(&self, shard_id: &str, counter: u64) -> Result<Option<bool>, CheckpointError> {
        let mut conflicts = 0u32;
        let result = loop {
            let result = self
                .fenced_update(shard_id, counter)
                .update_expression("SET #c = :next, #u = :now")
                .condition_expression("#o = :me AND #c = :c")
                .expression_attribute_values(":next", n(counter + 1))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            // A checkpoint with a tumbling window is a transaction on the same row: a renewal
            // that meets one is refused, and tried again rather than failing the whole sync.
            match &result {
                Err(e) if e.code() == Some("TransactionConflictException") && conflicts < 5 => {
                    conflicts += 1;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(conflicts))).await;
                }
                _ => break result,
            }
        };
        match result {
            Ok(output) => Ok(Some(
                output
                    .attributes()
                    .and_then(|a| a.get("handoff_to"))
                    .is_some(),
            )),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(self.error("UpdateItem (renew)", DisplayErrorContext(&e))),
        }
    }

    /// Takes a lease seen at `counter`; true when this instance won it.
    async fn take(&self, shard_id: &str, counter: u64) -> Result<bool, CheckpointError> {
        let result = self
            .fenced_update(shard_id, counter)
            .update_expression("SET #o = :me, #c = :next, #u = :now REMOVE #h")
            .condition_expression("#c = :c")
            .expression_attribute_names("#h", "handoff_to")
            .expression_attribute_values(":next", n(counter + 1))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.error("UpdateItem (take)", DisplayErrorContext(&e))),
        }
    }

    /// Creates a free lease for a shard that has none yet.
    async fn create(&self, shard_id: &str) -> Result<(), CheckpointError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("lease_key", s(&self.key(shard_id)))
            .item("mapping", s(&self.mapping))
            .item("shard_id", s(shard_id))
            .item("stream_arn", s(&self.stream_arn))
            .item("lease_counter", n(0))
            .item("updated_at_ms", n(now_ms()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", "lease_key")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(self.error("PutItem (create lease)", DisplayErrorContext(&e))),
        }
    }

    async fn request_handoff(
        &self,
        shard_id: &str,
        owner: &str,
        counter: u64,
    ) -> Result<(), CheckpointError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("lease_key", s(&self.key(shard_id)))
            .update_expression("SET #h = :me")
            .condition_expression("#o = :owner AND #c = :c AND attribute_not_exists(#h)")
            .expression_attribute_names("#c", "lease_counter")
            .expression_attribute_names("#o", "lease_owner")
            .expression_attribute_names("#h", "handoff_to")
            .expression_attribute_values(":c", n(counter))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":me", s(&self.owner))
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(shard_id, from = owner, to = %self.owner, "lease handoff requested");
                Ok(())
            }
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(self.error("UpdateItem (handoff)", DisplayErrorContext(&e))),
        }
    }
}

#[async_trait]
impl CheckpointStore for DynamoDbLeaseStore {
    fn describe(&self) -> String {
        format!("dynamodb table {}", self.table)
    }

    async fn acquire(&self, shards: &[ShardSpec]) -> Result<Acquired, CheckpointError> {
        let mut state = self.state.lock().await;
        let mut handoff_requested = Vec::new();
        let held: Vec<(String, u64)> = state.held.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (shard_id, counter) in held {
            match self.renew(&shard_id, counter).await? {
                Some(handoff) => {
                    state.held.insert(shard_id.clone(), counter + 1);
                    if handoff {
                        handoff_requested.push(shard_id);
                    }
                }
                None => {
                    tracing::warn!(shard_id, "lease lost to another instance");
                    state.held.remove(&shard_id);
                }
            }
        }

        let mut rows = self.scan().await?;
        let finished: HashSet<String> = rows
            .iter()
            .filter(|r| r.checkpoint == Some(Checkpoint::ShardEnd))
            .map(|r| r.shard_id.clone())
            .collect();
        let eligible: HashSet<String> = eligible_shards(shards, &finished).into_iter().collect();
        let known: HashSet<String> = rows.iter().map(|r| r.shard_id.clone()).collect();
        let mut created = false;
        for shard in eligible.iter().filter(|s| !known.contains(*s)) {
            self.create(shard).await?;
            created = true;
        }
        if created {
            rows = self.scan().await?;
        }

        let now = Instant::now();
        for row in &rows {
            let changed = state
                .seen
                .get(&row.shard_id)
                .is_none_or(|seen| seen.owner != row.owner || seen.counter != row.counter);
            if changed {
                state.seen.insert(
                    row.shard_id.clone(),
                    Seen {
                        owner: row.owner.clone(),
                        counter: row.counter,
                        since: now,
                    },
                );
            }
        }
        // A row this instance holds may show an older counter if a renewal raced the scan.
        for row in rows.iter_mut() {
            if let Some(counter) = state.held.get(&row.shard_id) {
                row.owner = Some(self.owner.clone());
                row.counter = *counter;
            }
        }
        let plan = plan_leases(&self.owner, &rows, &eligible, |row| {
            state
                .seen
                .get(&row.shard_id)
                .is_some_and(|seen| now.duration_since(seen.since) >= self.lease_duration)
        });
        for (shard_id, counter) in plan.take {
            if self.take(&shard_id, counter).await? {
                tracing::info!(shard_id, owner = %self.owner, "lease taken");
                state.held.insert(shard_id, counter + 1);
            }
        }
        if let Some((shard_id, owner, counter)) = plan.request {
            self.request_handoff(&shard_id, &owner, counter).await?;
        }

        let checkpoints: HashMap<&str, Option<Checkpoint>> = rows
            .iter()
            .map(|r| (r.shard_id.as_str(), r.checkpoint.clone()))
            .collect();
        let mut held: Vec<HeldShard> = state
            .held
            .keys()
            .filter(|shard| eligible.contains(*shard))
            .map(|shard| HeldShard {
                shard_id: shard.clone(),
                checkpoint: checkpoints.get(shard.as_str()).cloned().flatten(),
            })
            .collect();
        held.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        Ok(Acquired {
            held,
            handoff_requested,
            finished,
        })
    }

    async fn checkpoint_with(
        &self,
        shard_id: &str,
        checkpoint: &Checkpoint,
        window: Option<&OpenWindow>,
    ) -> Result<(), CheckpointError> {
        let state = self.state.lock().await;
        let Some(counter) = state.held.get(shard_id).copied() else {
            return Err(CheckpointError::LeaseLost {
                shard_id: shard_id.to_owned(),
            });
        };
        drop(state);
        let conditional_failure = match window {
            None => {
                let result = self
                    .fenced_update(shard_id, counter)
                    .update_expression("SET #cp = :cp, #u = :now REMOVE #ws, #we, #wn")
                    .condition_expression("#o = :me AND #c = :c")
                    .expression_attribute_names("#cp", "checkpoint")
                    .expression_attribute_names("#ws", "window_start_ms")
                    .expression_attribute_names("#we", "window_end_ms")
                    .expression_attribute_names("#wn", "window_chunks")
                    .expression_attribute_values(":cp", s(checkpoint.as_stored()))
                    .return_values(ReturnValue::UpdatedOld)
                    .send()
                    .await;
                match result {
                    Ok(output) => {
                        // A window closed: its state rows go too (the lease scan reads every
                        // row of the table). Unreferenced now, so a failure here only wastes.
                        let chunks = output
                            .attributes()
                            .and_then(|old| old.get("window_chunks"))
                            .and_then(|v| v.as_n().ok())
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        for index in 0..chunks {
                            let deleted = self
                                .client
                                .delete_item()
                                .table_name(&self.table)
                                .key("lease_key", s(&self.window_chunk_key(shard_id, index)))
                                .send()
                                .await;
                            if let Err(error) = deleted {
                                tracing::debug!(shard_id, index, error = %DisplayErrorContext(&error), "deleting a window state row failed; it stays unused");
                            }
                        }
                        return Ok(());
                    }
                    Err(e) if is_conditional_failure(&e) => true,
                    Err(e) => {
                        return Err(self.error("UpdateItem (checkpoint)", DisplayErrorContext(&e)));
                    }
                }
            }
            Some(window) => {
                match self
                    .checkpoint_with_window(shard_id, counter, checkpoint, window)
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(None) => true,
                    Err(Some(error)) => return Err(error),
                }
            }
        };
        debug_assert!(conditional_failure);
        // A renewal may have raised the counter meanwhile: check against the fresh one.
        let state = self.state.lock().await;
        if state
            .held
            .get(shard_id)
            .is_some_and(|fresh| *fresh != counter)
        {
            drop(state);
            return Box::pin(self.checkpoint_with(shard_id, checkpoint, window)).await;
        }
        Err(CheckpointError::LeaseLost {
            shard_id: shard_id.to_owned(),
        })
    }

    async fn window(
        &self,
        shard_id: &str,
    ) -> Result<(Option<Checkpoint>, Option<OpenWindow>), CheckpointError> {
        use aws_sdk_dynamodb::types::{Get, TransactGetItem};
        type Item = HashMap<String, AttributeValue>;
        let text = |item: &Item, name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let number = |item: &Item, name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let get = |key: String| {
            Get::builder()
                .table_name(&self.table)
                .key("lease_key", s(&key))
                .build()
                .map_err(|e| self.error("TransactGetItems (window)", e))
        };
        // The row says how many chunk rows there are; the row and its chunks are then read in
        // one transaction, so a write between the two reads is seen (and read again).
        let mut chunks = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .key("lease_key", s(&self.key(shard_id)))
            .send()
            .await
            .map_err(|e| self.error("GetItem (window)", DisplayErrorContext(&e)))?
            .item()
            .and_then(|row| number(row, "window_chunks"))
            .unwrap_or(0);
        for _ in 0..5 {
            let mut items = vec![
                TransactGetItem::builder()
                    .get(get(self.key(shard_id))?)
                    .build(),
            ];
            for index in 0..chunks {
                let key = self.window_chunk_key(shard_id, index as usize);
                items.push(TransactGetItem::builder().get(get(key)?).build());
            }
            let read = self
                .client
                .transact_get_items()
                .set_transact_items(Some(items))
                .send()
                .await
                .map_err(|e| self.error("TransactGetItems (window)", DisplayErrorContext(&e)))?;
            let responses = read.responses();
            let Some(row) = responses.first().and_then(|r| r.item()) else {
                return Ok((None, None));
            };
            let checkpoint = text(row, "checkpoint").map(|c| Checkpoint::parse(&c));
            let (Some(start_ms), Some(end_ms), Some(stored_chunks)) = (
                number(row, "window_start_ms"),
                number(row, "window_end_ms"),
                number(row, "window_chunks"),
            ) else {
                return Ok((checkpoint, None));
            };
            if stored_chunks != chunks {
                chunks = stored_chunks;
                continue;
            }
            let mut state = Vec::new();
            for (index, response) in responses[1..].iter().enumerate() {
                let Some(bytes) = response
                    .item()
                    .and_then(|item| item.get("chunk"))
                    .and_then(|v| v.as_b().ok())
                else {
                    return Err(self.error(
                        "TransactGetItems (window)",
                        format!("part {index} of shard {shard_id}'s window state is missing"),
                    ));
                };
                state.extend_from_slice(bytes.as_ref());
            }
            let state = String::from_utf8(state).map_err(|e| {
                self.error(
                    "TransactGetItems (window)",
                    format!("shard {shard_id}'s window state is not UTF-8: {e}"),
                )
            })?;
            return Ok((
                checkpoint,
                Some(OpenWindow {
                    start_ms,
                    end_ms,
                    state,
                }),
            ));
        }
        Err(self.error(
            "TransactGetItems (window)",
            format!("shard {shard_id}'s window kept changing while it was read"),
        ))
    }

    async fn release(&self, shard_id: &str) -> Result<(), CheckpointError> {
        let mut state = self.state.lock().await;
        let Some(counter) = state.held.remove(shard_id) else {
            return Ok(());
        };
        let result = self
            .fenced_update(shard_id, counter)
            .update_expression("SET #c = :next, #u = :now REMOVE #o")
            .condition_expression("#o = :me AND #c = :c")
            .expression_attribute_values(":next", n(counter + 1))
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(shard_id, owner = %self.owner, "lease released");
                Ok(())
            }
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(self.error("UpdateItem (release)", DisplayErrorContext(&e))),
        }
    }

    async fn first_started(&self, now: Duration) -> Result<Duration, CheckpointError> {
        // One row per mapping, `<mapping>@first-started`, without a `shard_id`: the lease scan
        // passes over it. `if_not_exists` keeps the first writer's time for every instance.
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("lease_key", s(&format!("{}@first-started", self.mapping)))
            .update_expression("SET #m = :m, #f = if_not_exists(#f, :now)")
            .expression_attribute_names("#m", "mapping")
            .expression_attribute_names("#f", "first_started_ms")
            .expression_attribute_values(":m", s(&self.mapping))
            .expression_attribute_values(
                ":now",
                n(u64::try_from(now.as_millis()).unwrap_or(u64::MAX)),
            )
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| self.error("UpdateItem (first started)", DisplayErrorContext(&e)))?;
        let stored = output
            .attributes()
            .and_then(|item| item.get("first_started_ms"))
            .and_then(|value| value.as_n().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| {
                self.error("UpdateItem (first started)", "no first_started_ms returned")
            })?;
        Ok(Duration::from_millis(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(shard: &str, owner: Option<&str>, counter: u64) -> LeaseRow {
        LeaseRow {
            shard_id: shard.into(),
            owner: owner.map(Into::into),
            counter,
            checkpoint: None,
            handoff_to: None,
        }
    }

    fn all(rows: &[LeaseRow]) -> HashSet<String> {
        rows.iter().map(|r| r.shard_id.clone()).collect()
    }

    #[test]
    fn a_lone_instance_takes_every_free_lease() {
        let rows = vec![row("a", None, 0), row("b", None, 0), row("c", None, 3)];
        let plan = plan_leases("me", &rows, &all(&rows), |_| false);
        assert_eq!(
            plan.take,
            vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 3)]
        );
        assert_eq!(plan.request, None);
    }

    #[test]
    fn a_new_instance_takes_its_share_and_asks_the_busiest_for_more() {
        let rows = vec![
            row("a", Some("old"), 5),
            row("b", Some("old"), 5),
            row("c", Some("old"), 5),
            row("d", Some("old"), 5),
        ];
        let plan = plan_leases("me", &rows, &all(&rows), |_| false);
        assert!(plan.take.is_empty());
        assert_eq!(plan.request, Some(("a".into(), "old".into(), 5)));
    }

    #[test]
    fn balanced_instances_do_not_trade() {
        let rows = vec![
            row("a", Some("x"), 1),
            row("b", Some("me"), 1),
            row("c", Some("x"), 1),
        ];
        let plan = plan_leases("me", &rows, &all(&rows), |_| false);
        assert_eq!(plan, LeasePlan::default(), "2 vs 1 of 3 is balanced");
    }

    #[test]
    fn expired_leases_are_taken_after_free_ones() {
        let rows = vec![row("a", Some("dead"), 9), row("b", None, 0)];
        let plan = plan_leases("me", &rows, &all(&rows), |r| {
            r.owner.as_deref() == Some("dead")
        });
        assert_eq!(plan.take, vec![("b".into(), 0), ("a".into(), 9)]);
    }

    #[test]
    fn ineligible_shards_are_left_alone() {
        let rows = vec![row("parent", None, 0), row("child", None, 0)];
        let eligible: HashSet<String> = ["parent".to_string()].into();
        let plan = plan_leases("me", &rows, &eligible, |_| false);
        assert_eq!(plan.take, vec![("parent".into(), 0)]);
    }
}
