//! The DynamoDB lease store against moto: the fence, expiry, balancing and handoff of
//! `sluice_sources::checkpoint::dynamodb` (architecture.md "Running on more than one machine").

use sluice_sources::checkpoint::dynamodb::DynamoDbLeaseStore;
use sluice_sources::checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, OpenWindow, ShardSpec,
};
use sluice_testkit::*;
use std::time::Duration;

fn shards(ids: &[&str]) -> Vec<ShardSpec> {
    ids.iter()
        .map(|id| ShardSpec {
            id: id.to_string(),
            parents: Vec::new(),
        })
        .collect()
}

async fn store(moto: &Moto, owner: &str, lease: Duration) -> DynamoDbLeaseStore {
    DynamoDbLeaseStore::open(
        moto.dynamodb().await,
        "leases",
        "orders",
        "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/x",
        owner.to_owned(),
        lease,
    )
    .await
    .expect("open the lease store")
}

fn held(acquired: &sluice_sources::checkpoint::Acquired) -> Vec<String> {
    acquired.held.iter().map(|h| h.shard_id.clone()).collect()
}

#[tokio::test]
async fn an_instance_that_lost_its_lease_cannot_move_the_checkpoint() {
    let moto = Moto::start();
    let lease = Duration::from_millis(300);
    let a = store(&moto, "a", lease).await;
    let b = store(&moto, "b", lease).await;
    let listing = shards(&["s1"]);
    assert_eq!(held(&a.acquire(&listing).await.unwrap()), vec!["s1"]);
    a.checkpoint("s1", &Checkpoint::After("10".into()))
        .await
        .unwrap();
    // b sees a's lease, then sees it unrenewed for a lease duration, and takes it.
    assert!(held(&b.acquire(&listing).await.unwrap()).is_empty());
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let taken = b.acquire(&listing).await.unwrap();
    assert_eq!(held(&taken), vec!["s1"]);
    assert_eq!(
        taken.held[0].checkpoint,
        Some(Checkpoint::After("10".into())),
        "b continues from a's checkpoint"
    );
    let fenced = a.checkpoint("s1", &Checkpoint::After("20".into())).await;
    assert!(
        matches!(fenced, Err(CheckpointError::LeaseLost { .. })),
        "{fenced:?}"
    );
    // a learns it on its next sync, and does not take the shard back.
    assert!(held(&a.acquire(&listing).await.unwrap()).is_empty());
    b.checkpoint("s1", &Checkpoint::After("30".into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn shards_are_balanced_by_handoff_and_released_leases_are_taken_at_once() {
    let moto = Moto::start();
    let lease = Duration::from_secs(30);
    let a = store(&moto, "a", lease).await;
    let b = store(&moto, "b", lease).await;
    let listing = shards(&["s1", "s2", "s3", "s4"]);
    assert_eq!(held(&a.acquire(&listing).await.unwrap()).len(), 4);
    // b holds nothing and a holds more than its share: b asks for one lease.
    assert!(held(&b.acquire(&listing).await.unwrap()).is_empty());
    let asked = a.acquire(&listing).await.unwrap();
    assert_eq!(asked.handoff_requested.len(), 1);
    let handed = asked.handoff_requested[0].clone();
    a.release(&handed).await.unwrap();
    assert_eq!(
        held(&b.acquire(&listing).await.unwrap()),
        vec![handed.clone()]
    );
    // In the same sync b asked for one more, since a still holds more than its share.
    let asked = a.acquire(&listing).await.unwrap();
    assert_eq!(asked.handoff_requested.len(), 1);
    assert_ne!(asked.handoff_requested[0], handed);
    a.release(&asked.handoff_requested[0]).await.unwrap();
    assert_eq!(held(&b.acquire(&listing).await.unwrap()).len(), 2);
    assert_eq!(held(&a.acquire(&listing).await.unwrap()).len(), 2);
    let settled = b.acquire(&listing).await.unwrap();
    assert_eq!(held(&settled).len(), 2);
    assert!(
        a.acquire(&listing)
            .await
            .unwrap()
            .handoff_requested
            .is_empty()
    );
}

#[tokio::test]
async fn a_finished_parent_lets_its_children_be_leased() {
    let moto = Moto::start();
    let a = store(&moto, "a", Duration::from_secs(30)).await;
    let listing = vec![
        ShardSpec {
            id: "parent".into(),
            parents: Vec::new(),
        },
        ShardSpec {
            id: "child".into(),
            parents: vec!["parent".into()],
        },
    ];
    assert_eq!(held(&a.acquire(&listing).await.unwrap()), vec!["parent"]);
    a.checkpoint("parent", &Checkpoint::ShardEnd).await.unwrap();
    a.release("parent").await.unwrap();
    let acquired = a.acquire(&listing).await.unwrap();
    assert_eq!(held(&acquired), vec!["child"]);
    assert!(acquired.finished.contains("parent"));
}

// `latest` means one time for the mapping: the first instance's start, kept in the lease table
// beside the leases (and invisible to the lease scan).
#[tokio::test]
async fn every_instance_reads_the_mappings_first_start() {
    let moto = Moto::start();
    let a = store(&moto, "a", Duration::from_secs(30)).await;
    let b = store(&moto, "b", Duration::from_secs(30)).await;
    let t1 = Duration::from_millis(1_800_000_000_123);
    let t2 = t1 + Duration::from_secs(60);
    assert_eq!(a.first_started(t1).await.unwrap(), t1);
    assert_eq!(b.first_started(t2).await.unwrap(), t1);
    let listing = vec![ShardSpec {
        id: "s1".into(),
        parents: Vec::new(),
    }];
    assert_eq!(
        held(&a.acquire(&listing).await.unwrap()),
        vec!["s1"],
        "the first-start row is not a lease"
    );
}

// Issue 21 item 7: a tumbling window's state (up to 1 MiB, over DynamoDB's 400 KB item limit) is
// stored with the checkpoint in one fenced transaction: the next owner reads it back whole, an
// instance that lost the lease can write neither, and a checkpoint without a window clears it.
#[tokio::test]
async fn a_window_state_of_a_mebibyte_moves_with_the_checkpoint_and_the_lease() {
    let moto = Moto::start();
    let lease = Duration::from_millis(300);
    let a = store(&moto, "a", lease).await;
    let b = store(&moto, "b", lease).await;
    let listing = shards(&["s1"]);
    assert_eq!(held(&a.acquire(&listing).await.unwrap()), vec!["s1"]);
    assert_eq!(a.window("s1").await.unwrap(), (None, None));
    // Not all ASCII, so the chunks split inside characters and must be joined as bytes.
    let state = format!("{{\"keys\":\"{}\"}}", "é-ключ-".repeat(87_000));
    assert!(
        state.len() > 1000 * 1000 && state.len() <= 1024 * 1024,
        "{}",
        state.len()
    );
    let window = OpenWindow {
        start_ms: 1_800_000_000_000,
        end_ms: 1_800_000_030_000,
        state,
    };
    a.checkpoint_with("s1", &Checkpoint::After("10".into()), Some(&window))
        .await
        .unwrap();
    assert!(held(&b.acquire(&listing).await.unwrap()).is_empty());
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let taken = b.acquire(&listing).await.unwrap();
    assert_eq!(
        taken.held[0].checkpoint,
        Some(Checkpoint::After("10".into()))
    );
    let after = |n: &str| Some(Checkpoint::After(n.into()));
    assert_eq!(
        b.window("s1").await.unwrap(),
        (after("10"), Some(window.clone()))
    );
    let small = OpenWindow {
        state: r#"{"k":1}"#.into(),
        ..window.clone()
    };
    let fenced = a
        .checkpoint_with("s1", &Checkpoint::After("20".into()), Some(&small))
        .await;
    assert!(
        matches!(fenced, Err(CheckpointError::LeaseLost { .. })),
        "{fenced:?}"
    );
    assert_eq!(
        b.window("s1").await.unwrap(),
        (after("10"), Some(window)),
        "the fenced write changed nothing"
    );
    b.checkpoint_with("s1", &Checkpoint::After("30".into()), Some(&small))
        .await
        .unwrap();
    assert_eq!(b.window("s1").await.unwrap(), (after("30"), Some(small)));
    b.checkpoint("s1", &Checkpoint::After("31".into()))
        .await
        .unwrap();
    assert_eq!(b.window("s1").await.unwrap(), (after("31"), None));
}
