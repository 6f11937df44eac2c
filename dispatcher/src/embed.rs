//! Embedding sluice in a Rust program (the portable-function pattern): register a handler for
//! each `in_process` target of the config, then run the dispatcher in your own process.
//!
//! ```no_run
//! use serde_json::{Value, json};
//! use sluice::embed::{Context, HandlerError, Sluice, handler_fn};
//!
//! # async fn example() -> anyhow::Result<()> {
//! Sluice::from_config_file("sluice.yaml")?
//!     .handler("orders", handler_fn(|event: Value, _context: Context| async move {
//!         let records = event["Records"].as_array().cloned().unwrap_or_default();
//!         if records.is_empty() {
//!             return Err(HandlerError::new("EmptyBatch", "no records"));
//!         }
//!         Ok(json!({ "batchItemFailures": [] }))
//!     }))
//!     .run_until_signal()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! A handler gets exactly the event Lambda would pass (`{"Records": [...]}`) and answers as a
//! Lambda function does: `Ok(response)` is a normal return (read for `batchItemFailures` when the
//! mapping asks), `Err(HandlerError)` a function error. A panic is a function error
//! (`Runtime.Panic`), never a crash of the dispatcher; a handler still running at the target's
//! `timeout` is abandoned and counts as a timeout.

use crate::config::{Config, ConfigErrors};
pub use crate::targets::in_process::{Context, Handler, HandlerError, handler_fn};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The dispatcher with its in-process handlers.
pub struct Sluice {
    config: Config,
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    options: crate::daemon::RunOptions,
}

impl Sluice {
    /// Loads and validates a config file (the same contract as `sluice run -c`).
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        Ok(Self::from_config(crate::config::load(path.as_ref())?))
    }

    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            handlers: BTreeMap::new(),
            options: crate::daemon::RunOptions {
                // As `sluice run` reads it, so that one environment serves both.
                address_file: std::env::var_os("SLUICE_ADDRESS_FILE").map(Into::into),
                // An embedding program owns its process's signals.
                reload: None,
            },
        }
    }

    /// Writes the addresses the servers listen on to `path` once they do (see
    /// [`crate::daemon::RunOptions::address_file`]); by default `SLUICE_ADDRESS_FILE`.
    pub fn address_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.options.address_file = Some(path.into());
        self
    }

    /// Registers the handler of the `in_process` target named `target`.
    pub fn handler(mut self, target: &str, handler: impl Handler) -> Self {
        self.handlers.insert(target.to_owned(), Arc::new(handler));
        self
    }

    /// Runs every enabled mapping until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), crate::daemon::RunError> {
        let metrics = match crate::telemetry::init_metrics() {
            Ok(handle) => handle,
            // The program installed its own recorder; /metrics then shows nothing of sluice's.
            Err(_) => metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
        };
        crate::daemon::run_with_handlers(
            self.config,
            metrics,
            shutdown,
            self.handlers,
            self.options,
        )
        .await
    }

    /// Runs until SIGTERM or SIGINT, then drains.
    pub async fn run_until_signal(self) -> Result<(), crate::daemon::RunError> {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut terminate), Ok(mut interrupt)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                tracing::info!("stopping: no new polls, draining in-flight batches");
                on_signal.cancel();
            }
        });
        self.run(shutdown).await
    }
}
