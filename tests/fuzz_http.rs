//! Fuzzing over the wire: damaged HTTP requests (fuzz/corpus/invoke-api, fuzz/corpus/runtime-api
//! mutated by fuzz/mutate.rs) sent to the real sluice binary's Invoke API and to a worker's
//! Runtime API (replayed from inside the worker, fuzz/runtime_worker.py, since only a worker's
//! own processes may reach it). Properties: every answer is an HTTP answer and none is a server
//! error; sluice keeps running and both APIs still work afterwards.

#[path = "../fuzz/mutate.rs"]
mod mutate;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use sluice_testkit::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `count` damaged requests from `target`'s seeds, the same every run for one seed.
fn damaged(target: &str, count: usize, seed: u8) -> Vec<Vec<u8>> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    );
    let strategy = mutate::mutated(target);
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

/// Sends one raw request on a fresh connection; the status line of the answer, if one came.
async fn exchange(address: &str, request: &[u8]) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(request).await.ok()?;
    let mut data = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                data.extend_from_slice(&buffer[..n]);
                if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            _ => break,
        }
    }
    (!data.is_empty()).then(|| {
        String::from_utf8_lossy(data.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned()
    })
}

fn status_of(line: &str) -> u16 {
    assert!(
        line.starts_with("HTTP/1.1 "),
        "not an HTTP answer: {line:?}"
    );
    line[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("no status in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_requests_to_the_invoke_api_and_the_runtime_api_never_break_them() {
    let cases = (mutate::cases() as usize).min(2_000);
    let handler = Handler::start(|_, event| Reply::json(event.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let requests_path = dir.path().join("requests.bin");
    let results_path = dir.path().join("results.json");
    let mut framed = Vec::new();
    for request in damaged("runtime-api", cases, 7) {
        framed.extend_from_slice(&(request.len() as u32).to_be_bytes());
        framed.extend_from_slice(&request);
    }
    std::fs::write(&requests_path, framed).unwrap();
    let worker = workspace_root().join("fuzz/runtime_worker.py");
    let config = format!(
        r#"version: 1
state_dir: "{state}"
admin: {{ listen: "{{admin}}" }}
targets:
  web: {{ http: {{ url: "{url}", timeout: 5s }} }}
  rt:
    lambda_runtime:
      command: ["{python}", "{worker}"]
      init_timeout: 5m
      timeout: 10s
      env: {{ FUZZ_REQUESTS: "{requests}", FUZZ_RESULTS: "{results}" }}
invoke_api:
  listen: "{{invoke}}"
  functions:
    f: {{ target: web }}
    rt: {{ target: rt }}
"#,
        state = dir.path().join("state").display(),
        url = handler.url("/f"),
        python = python().display(),
        worker = worker.display(),
        requests = requests_path.display(),
        results = results_path.display(),
    );
    let sluice = Sluice::start(&config, &[]);
    let invoke = sluice.invoke_api().await;

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for request in damaged("invoke-api", cases, 3) {
        if let Some(line) = exchange(&invoke, &request).await {
            let status = status_of(&line);
            assert!(
                status < 500,
                "{line} for {:?}\n{}",
                String::from_utf8_lossy(&request),
                sluice.logs()
            );
            *statuses.entry(status).or_default() += 1;
        }
    }
    eprintln!("invoke API answers: {statuses:?}");

    // The worker replays its requests before its first `next`; an invocation waits for that.
    let client = reqwest::Client::new();
    let invoked = client
        .post(format!(
            "http://{invoke}/2015-03-31/functions/rt/invocations"
        ))
        .body(json!({"after": "fuzz"}).to_string())
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("the runtime function answers after the fuzz");
    assert_eq!(invoked.status(), 200, "{}", sluice.logs());
    let echoed: Value = invoked.json().await.unwrap();
    assert_eq!(echoed, json!({"after": "fuzz"}));
    let results: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&results_path).unwrap()).unwrap();
    let mut runtime_statuses = std::collections::BTreeMap::<String, usize>::new();
    for line in &results {
        let kind = if line.starts_with("HTTP/") {
            let status = status_of(line);
            assert!(
                status < 500,
                "the Runtime API answered {line}\n{}",
                sluice.logs()
            );
            status.to_string()
        } else {
            line.clone()
        };
        *runtime_statuses.entry(kind).or_default() += 1;
    }
    eprintln!("runtime API answers: {runtime_statuses:?}");

    let plain = client
        .post(format!(
            "http://{invoke}/2015-03-31/functions/f/invocations"
        ))
        .body("{\"still\":\"works\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let (ready, _) = sluice.get("/readyz").await;
    assert_eq!(ready, 200, "{}", sluice.logs());
}
