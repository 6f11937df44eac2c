//! An ordinary Lambda function built on the `lambda_runtime` crate — nothing in it knows about
//! sluice. sluice's `lambda_runtime` target runs it as a pool of warm workers (see
//! `examples/lambda-runtime.yaml`); deployed to Lambda as `bootstrap`, it runs there unchanged.
//!
//! For SQS events it reports orders whose body contains "poison" in `batchItemFailures`. Two
//! bodies exercise the worker pool: "...-sleep" sleeps past any sensible timeout and "...-crash"
//! exits the process, each only the first time it is seen when `ONCE_DIR` names a directory (a
//! marker file per body), so the retry succeeds.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}

/// True the first time `body` is seen (always true without `ONCE_DIR`).
fn first_time(body: &str) -> bool {
    match std::env::var("ONCE_DIR") {
        Ok(dir) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(std::path::Path::new(&dir).join(body))
            .is_ok(),
        Err(_) => true,
    }
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, _context) = event.into_parts();
    let records = payload["Records"].as_array().cloned().unwrap_or_default();
    let mut failures = Vec::new();
    for record in &records {
        let body = record["body"].as_str().unwrap_or_default();
        if body.ends_with("-sleep") && first_time(body) {
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        if body.ends_with("-crash") && first_time(body) {
            eprintln!("crashing on {body}");
            std::process::exit(17);
        }
        if body.contains("poison") {
            failures.push(json!({
                "itemIdentifier": record["messageId"],
                "errorType": "OrderRejected",
                "errorMessage": format!("cannot process {body}"),
            }));
        }
    }
    Ok(json!({ "batchItemFailures": failures }))
}
