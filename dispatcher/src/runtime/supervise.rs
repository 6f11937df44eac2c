//! Keeps long-lived workers (a mapping's poller, an Invoke API function's async worker) running.
//!
//! Guarantees: a worker that panics, or returns before shutdown, is logged with its cause,
//! reported through `on_death` (which turns `/readyz` to 503 naming it), counted in
//! `sluice_worker_restarts_total{worker}`, and started again after a backoff (1 s doubling to
//! 60 s, back to 1 s once an incarnation has run for 5 minutes). Each incarnation gets its own
//! child of the shutdown token, cancelled when it dies, so tasks a dead incarnation left behind
//! stop instead of running beside the next one. Nothing stops silently.

pub(crate) use sluice_sources::panic_message;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// An incarnation that lived this long was healthy: the next death starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(300);

/// Runs `start(token)` until `shutdown`, restarting it whenever it panics or returns early.
/// `worker` names it in logs and metrics (`mapping orders`, `function hello`).
pub(crate) async fn supervise<F, Fut>(
    worker: String,
    shutdown: CancellationToken,
    on_death: impl Fn(&str) + Send,
    mut start: F,
) where
    F: FnMut(CancellationToken) -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        let incarnation = shutdown.child_token();
        let started = Instant::now();
        // Aborted with this supervisor (a reload that gave up on a drain): an incarnation never
        // outlives the task that watches it.
        let result =
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(start(incarnation.clone())))
                .await;
        incarnation.cancel();
        let cause = match result {
            Ok(()) if shutdown.is_cancelled() => return,
            Ok(()) => "it stopped on its own".to_owned(),
            Err(error) if error.is_panic() => {
                format!("it panicked: {}", panic_message(&*error.into_panic()))
            }
            Err(error) => format!("it was cancelled: {error}"),
        };
        if shutdown.is_cancelled() {
            tracing::error!(worker = %worker, cause = %cause, "worker died during the drain");
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            delay = FIRST_RESTART_DELAY;
        }
        let message = format!(
            "the worker died ({cause}); restarting it in {}s",
            delay.as_secs()
        );
        tracing::error!(worker = %worker, cause = %cause, restart_in_ms = delay.as_millis() as u64, "worker died; restarting it");
        metrics::counter!("sluice_worker_restarts_total", "worker" => worker.clone()).increment(1);
        on_death(&message);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_reported_and_restarted_until_shutdown() {
        let starts = Arc::new(AtomicU32::new(0));
        let deaths = Arc::new(Mutex::new(Vec::<String>::new()));
        let shutdown = CancellationToken::new();
        let supervisor = tokio::spawn({
            let starts = starts.clone();
            let deaths = deaths.clone();
            let shutdown = shutdown.clone();
            supervise(
                "mapping test".into(),
                shutdown,
                move |message| deaths.lock().unwrap().push(message.to_owned()),
                move |token: CancellationToken| {
                    let run = starts.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match run {
                            0 => panic!("header key is not UTF-8"),
                            1 => {}
                            _ => token.cancelled().await,
                        }
                    }
                },
            )
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        let deaths = deaths.lock().unwrap().clone();
        assert_eq!(deaths.len(), 2, "{deaths:?}");
        assert!(
            deaths[0].contains("panicked: header key is not UTF-8"),
            "{deaths:?}"
        );
        assert!(deaths[1].contains("stopped on its own"), "{deaths:?}");
        shutdown.cancel();
        supervisor.await.unwrap();
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "no restart after shutdown"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_incarnations_token_is_cancelled() {
        let shutdown = CancellationToken::new();
        let left_behind = Arc::new(Mutex::new(Vec::<CancellationToken>::new()));
        let supervisor = tokio::spawn({
            let left_behind = left_behind.clone();
            let shutdown = shutdown.clone();
            supervise(
                "mapping test".into(),
                shutdown,
                |_| {},
                move |token| {
                    left_behind.lock().unwrap().push(token);
                    async {}
                },
            )
        });
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let tokens = left_behind.lock().unwrap().clone();
        assert!(tokens.len() >= 2);
        assert!(tokens[0].is_cancelled());
        shutdown.cancel();
        supervisor.await.unwrap();
    }
}
