//! sluice embedded in a Rust program: the `orders` target of `examples/in-process.yaml` is the
//! `handle` function below, run in this process — the same function could be a Lambda handler.
//!
//! Run it (the queues come from the environment, as in the config):
//!   cargo run --example in_process -- examples/in-process.yaml
//! tests/targets.rs runs it against moto.

use serde_json::{Value, json};
use sluice::embed::{Context, HandlerError, Sluice, handler_fn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice::telemetry::init_logging(sluice::telemetry::LogFormat::Auto);
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/in-process.yaml".into());
    Sluice::from_config_file(&path)?
        .handler("orders", handler_fn(handle))
        .run_until_signal()
        .await?;
    Ok(())
}

/// Accepts every order except those whose body contains "poison", which it reports in
/// `batchItemFailures` with a reason, as a Lambda function with ReportBatchItemFailures does.
async fn handle(event: Value, context: Context) -> Result<Value, HandlerError> {
    let records = event["Records"]
        .as_array()
        .ok_or_else(|| HandlerError::new("InvalidEvent", "the event has no Records"))?;
    let failures: Vec<Value> = records
        .iter()
        .filter(|record| record["body"].as_str().unwrap_or_default().contains("poison"))
        .map(|record| {
            json!({
                "itemIdentifier": record["messageId"],
                "errorType": "OrderRejected",
                "errorMessage": format!("cannot process {}", record["body"].as_str().unwrap_or_default()),
            })
        })
        .collect();
    tracing::info!(request_id = %context.request_id, records = records.len(), failed = failures.len(), "orders handled");
    Ok(json!({ "batchItemFailures": failures }))
}
