//! Invocation overhead by target kind (run by `scripts/bench --targets`): the same no-op handler
//! behind the `http` target (an axum server in this process) and the `lambda_runtime` target (the
//! `lambda_runtime`-crate function of examples/lambda-rust as one warm worker), invoked one at a
//! time with a one-record SQS event. Prints a markdown table of latency percentiles.
//!
//! Usage: target-overhead <path to bootstrap> [invocations]

use sluice::config::{HttpTargetConfig, LambdaRuntimeTargetConfig};
use sluice::targets::http::HttpTarget;
use sluice::targets::lambda_runtime::LambdaRuntimeTarget;
use sluice::targets::{Invocation, Target};
use sluice_policies::Outcome;
use std::time::{Duration, Instant};

const EVENT: &str = r#"{"Records":[{"messageId":"m-1","body":"order-1","eventSource":"aws:sqs"}]}"#;

async fn measure(target: &dyn Target, invocations: usize) -> Vec<Duration> {
    for _ in 0..50 {
        target
            .invoke(&Invocation::new("bench", EVENT.as_bytes().to_vec()))
            .await;
    }
    let mut samples = Vec::with_capacity(invocations);
    for _ in 0..invocations {
        let invocation = Invocation::new("bench", EVENT.as_bytes().to_vec());
        let started = Instant::now();
        let outcome = target.invoke(&invocation).await;
        samples.push(started.elapsed());
        assert!(matches!(outcome, Outcome::Returned { .. }), "{outcome:?}");
    }
    samples.sort();
    samples
}

fn percentile(samples: &[Duration], p: f64) -> f64 {
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1_000_000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: target-overhead <bootstrap> [invocations]"))?;
    let invocations: usize = args.next().map_or(Ok(2000), |n| n.parse())?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async { r#"{"batchItemFailures":[]}"# });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = HttpTarget::new(&HttpTargetConfig {
        url: format!("http://{address}/").parse()?,
        timeout: Duration::from_secs(10),
        headers: Vec::new(),
        non_retryable_statuses: Vec::new(),
        max_concurrency: 1,
    })?;
    let lambda = LambdaRuntimeTarget::start(
        "bench",
        &LambdaRuntimeTargetConfig {
            command: vec![bootstrap],
            concurrency: 1,
            timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(10),
            handler: None,
            function_name: None,
            memory_size: 128,
            env: Vec::new(),
            inherit_env: true,
            working_dir: None,
        },
        "us-east-1",
        None,
    );

    let rows = [
        (
            "http (axum no-op handler)",
            measure(&http, invocations).await,
        ),
        (
            "lambda_runtime (lambda_runtime crate, 1 warm worker)",
            measure(&lambda, invocations).await,
        ),
    ];
    println!(
        "\n## Invocation overhead by target ({invocations} sequential invocations, no-op handler, one-record event)\n"
    );
    println!("| target | p50 µs | p90 µs | p99 µs | invocations / s |");
    println!("|---|---:|---:|---:|---:|");
    for (name, samples) in &rows {
        let total: f64 = samples.iter().map(Duration::as_secs_f64).sum();
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            percentile(samples, 0.5),
            percentile(samples, 0.9),
            percentile(samples, 0.99),
            samples.len() as f64 / total
        );
    }
    Ok(())
}
