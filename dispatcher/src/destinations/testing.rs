//! A destination that keeps what it stores in memory, for unit tests of the runtime. With an
//! observer, each stored document is kept with what the observer saw at that moment (the queue's
//! acknowledgements so far, the records finished so far), so a test can check what happened
//! before a dead letter was stored. `fail_next(n)` makes the next `n` stores fail.

use super::{Destination, DestinationError, Placement};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Mutex;

type Observer = Box<dyn Fn() -> Value + Send + Sync>;

/// One stored document and what the observer saw when it was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub document: Value,
    pub observed: Value,
}

/// See the module docs.
#[derive(Default)]
pub struct MemoryDestination {
    stored: Mutex<Vec<Stored>>,
    observer: Mutex<Option<Observer>>,
    failures_left: Mutex<usize>,
}

impl MemoryDestination {
    /// Calls `observer` at each store and keeps its answer with the document.
    pub fn observe(&self, observer: impl Fn() -> Value + Send + Sync + 'static) {
        *self.observer.lock().unwrap() = Some(Box::new(observer));
    }

    /// The next `count` stores fail.
    pub fn fail_next(&self, count: usize) {
        *self.failures_left.lock().unwrap() = count;
    }

    /// Everything stored so far, in order.
    pub fn stored(&self) -> Vec<Stored> {
        self.stored.lock().unwrap().clone()
    }
}

#[async_trait]
impl Destination for MemoryDestination {
    async fn store(&self, document: Value, _: &Placement<'_>) -> Result<(), DestinationError> {
        {
            let mut failures_left = self.failures_left.lock().unwrap();
            if *failures_left > 0 {
                *failures_left -= 1;
                return Err(DestinationError::Sqs {
                    queue_url: "memory://destination".into(),
                    message: "a failure the test asked for".into(),
                });
            }
        }
        let observed = self
            .observer
            .lock()
            .unwrap()
            .as_ref()
            .map_or(Value::Null, |observe| observe());
        self.stored
            .lock()
            .unwrap()
            .push(Stored { document, observed });
        Ok(())
    }

    fn describe(&self) -> &str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn placement() -> Placement<'static> {
        Placement {
            mapping: "m",
            key_part: "k",
            group_hint: "g",
            dedup_hint: "d",
        }
    }

    #[tokio::test]
    async fn keeps_documents_in_order_with_what_the_observer_saw() {
        let destination = MemoryDestination::default();
        let counter = Arc::new(AtomicU64::new(0));
        let seen = counter.clone();
        destination.observe(move || json!(seen.load(Ordering::SeqCst)));
        destination
            .store(json!({"n": 1}), &placement())
            .await
            .unwrap();
        counter.store(5, Ordering::SeqCst);
        destination
            .store(json!({"n": 2}), &placement())
            .await
            .unwrap();
        assert_eq!(
            destination.stored(),
            [
                Stored {
                    document: json!({"n": 1}),
                    observed: json!(0)
                },
                Stored {
                    document: json!({"n": 2}),
                    observed: json!(5)
                },
            ]
        );
    }

    #[tokio::test]
    async fn fails_as_many_stores_as_asked_then_stores_again() {
        let destination = MemoryDestination::default();
        destination.fail_next(2);
        assert!(destination.store(json!(1), &placement()).await.is_err());
        assert!(destination.store(json!(2), &placement()).await.is_err());
        destination.store(json!(3), &placement()).await.unwrap();
        let stored = destination.stored();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].document, json!(3));
        assert_eq!(stored[0].observed, Value::Null);
    }
}
