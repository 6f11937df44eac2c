//! Every file in `examples/` runs: each config validates, and the README's first command
//! (`scripts/demo`, which runs `examples/sqs-http.yaml` with `examples/handler.py` against moto)
//! succeeds end to end.

use sluice_testkit::*;
use std::process::Command;

#[test]
fn every_example_config_validates() {
    let examples = workspace_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let output = Command::new(sluice_binary())
            .args(["validate", "-c"])
            .arg(&path)
            .env(
                "ORDERS_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/123456789012/orders",
            )
            .env(
                "ORDERS_DLQ_URL",
                "https://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq",
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1, "no example configs found");
}

#[test]
fn the_readme_demo_runs_the_main_job_end_to_end() {
    let output = Command::new(workspace_root().join("scripts/demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "summary: 19 orders handled, 1 dead-lettered, orders queue empty, sluice exited 0"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("error: OrderRejected: cannot process order-99-poison"),
        "{stdout}"
    );
}
