//! End-to-end: what running on ECS needs from the binary (issue 9): `sluice health` as the
//! container health check, the config fetched from `s3://bucket/key`, and stops that do not wait
//! out idle long polls.

use sluice_testkit::*;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// A config polling `queue_url` with `wait_time`-second long polls. Readiness comes with the
/// first finished receive, so tests that only need a ready daemon use 1 s polls; 20 s (SQS's
/// longest) is for the stop test, whose point is that open long polls do not delay a stop.
fn sqs_config(queue_url: &str, admin: &str, wait_time: u32) -> String {
    format!(
        r#"version: 1
shutdown_timeout: 10s
admin: {{ listen: "{admin}" }}
targets:
  handler:
    http: {{ url: "http://127.0.0.1:9/", timeout: 5s }}
mappings:
  - name: orders
    target: handler
    source:
      sqs: {{ queue_url: "{queue_url}", wait_time: {wait_time}s }}
"#
    )
}

fn health(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String) {
    let output = Command::new(sluice_binary())
        .arg("health")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

// Issue 9: `sluice health` exits 0 when /readyz says ready, 1 when it does not or nothing answers;
// it finds the admin address in the config (-c or SLUICE_CONFIG), a wildcard listener over
// loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_only_while_the_local_sluice_is_ready() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "orders", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, sqs_config(&queue, "0.0.0.0:0", 1)).unwrap();
    let address_file = dir.path().join("addresses.json");
    let address_file_text = address_file.display().to_string();

    let (code, output) = health(&["--address-file", &address_file_text], &[]);
    assert_eq!(code, Some(1), "nothing runs yet: {output}");

    let mut sluice = Sluice::start_file(&path, dir, &moto_env(&moto));
    let port = sluice.admin().await.port();
    assert_ne!(
        port, 0,
        "port 0 asks for a free port; the bound one is reported"
    );
    // The address file (a config with port 0): as a flag, and as SLUICE_ADDRESS_FILE beside a
    // config whose port says nothing.
    eventually(WAIT, "sluice health to pass", || {
        let (code, _) = health(&["--address-file", &address_file_text], &[]);
        async move { (code == Some(0)).then_some(()) }
    })
    .await;
    let (code, output) = health(
        &["-c", &path.display().to_string()],
        &[("SLUICE_ADDRESS_FILE".into(), address_file_text.clone())],
    );
    assert_eq!(
        code,
        Some(0),
        "port 0 in the config: the reported port: {output}"
    );
    let (code, output) = health(&["-c", &path.display().to_string()], &[]);
    assert_eq!(code, Some(2), "port 0 and no address file: {output}");
    assert!(output.contains("--address-file"), "{output}");
    // A config that names the port: its wildcard listener is reached over loopback.
    let named = tempfile::tempdir().unwrap();
    let named_path = named.path().join("sluice.yaml");
    std::fs::write(
        &named_path,
        sqs_config(&queue, &format!("0.0.0.0:{port}"), 1),
    )
    .unwrap();
    let path_text = named_path.display().to_string();
    eventually(WAIT, "sluice health to pass with the config", || {
        let (code, _) = health(&[], &[("SLUICE_CONFIG".into(), path_text.clone())]);
        async move { (code == Some(0)).then_some(()) }
    })
    .await;
    let (code, output) = health(&["--admin", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(code, Some(0), "{output}");
    // SLUICE_ADMIN as the config's listen address (a wildcard) works for the check too.
    let (code, output) = health(&[], &[("SLUICE_ADMIN".into(), format!("0.0.0.0:{port}"))]);
    assert_eq!(code, Some(0), "{output}");

    // The queue goes away: the mapping cannot poll and stops being ready.
    sqs.delete_queue().queue_url(&queue).send().await.unwrap();
    let output = eventually(WAIT, "sluice health to fail", || {
        let (code, output) = health(&["-c", &path_text], &[]);
        async move { (code == Some(1)).then_some(output) }
    })
    .await;
    assert!(output.contains("not ready (503"), "{output}");
    assert!(
        output.contains("orders"),
        "the report names the mapping: {output}"
    );
    sluice.signal("TERM");
    sluice.wait_exit(Duration::from_secs(30)).expect("exit");
    assert!(
        !address_file.exists(),
        "the address file goes with the process"
    );
}

// Issue 9: `-c s3://bucket/key` fetches the config at start, for run, validate and health;
// errors name the S3 location with line and column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_can_live_in_s3() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let s3 = moto.s3().await;
    let queue = create_queue(&sqs, "orders", &[]).await;
    s3.create_bucket().bucket("configs").send().await.unwrap();
    s3.put_object()
        .bucket("configs")
        .key("prod/sluice.yaml")
        .body(sqs_config(&queue, "127.0.0.1:0", 1).into_bytes().into())
        .send()
        .await
        .unwrap();
    s3.put_object()
        .bucket("configs")
        .key("prod/broken.yaml")
        .body(
            "version: 1\ntargets: {}\nmappings:\n  - name: x\n    target: nope\n"
                .as_bytes()
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let env = moto_env(&moto);
    let validate = |location: &str| {
        Command::new(sluice_binary())
            .args(["validate", "-c", location])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    };
    let ok = validate("s3://configs/prod/sluice.yaml");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("s3://configs/prod/sluice.yaml: ok"));
    let broken = validate("s3://configs/prod/broken.yaml");
    assert_eq!(broken.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        stderr.contains("s3://configs/prod/broken.yaml:4:5"),
        "{stderr}"
    );
    let missing = validate("s3://configs/prod/absent.yaml");
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("s3:GetObject"),
        "says what to check"
    );

    let mut run = Command::new(sluice_binary());
    run.arg("run");
    let mut run_env = env.clone();
    run_env.push((
        "SLUICE_CONFIG".into(),
        "s3://configs/prod/sluice.yaml".into(),
    ));
    let mut sluice = Sluice::start_command(run, tempfile::tempdir().unwrap(), &run_env);
    // health reads its config from S3 too: one that names the port sluice picked.
    let admin = sluice.admin().await.to_string();
    s3.put_object()
        .bucket("configs")
        .key("prod/health.yaml")
        .body(sqs_config(&queue, &admin, 1).into_bytes().into())
        .send()
        .await
        .unwrap();
    let mut health_env = env.clone();
    health_env.push((
        "SLUICE_CONFIG".into(),
        "s3://configs/prod/health.yaml".into(),
    ));
    eventually(WAIT, "the S3-configured sluice to be ready", || {
        let (code, _) = health(&[], &health_env);
        async move { (code == Some(0)).then_some(()) }
    })
    .await;
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).unwrap().success());
}

// Issue 9 "prompt stops": ECS sends SIGTERM on every deploy; an idle daemon with every source
// kind (open 20 s long polls on SQS and S3 queues, a DynamoDB shard reader, a Kafka group member)
// exits within a second or two instead of waiting the polls out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_stops_within_two_seconds() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let dynamodb = moto.dynamodb().await;
    let queue = create_queue(&sqs, "idle", &[]).await;
    let uploads = create_queue(&sqs, "idle-uploads", &[]).await;
    create_stream_table(&dynamodb, "idle").await;
    let kafka = Kafka::start();
    let topic = Kafka::unique("idle");
    kafka.create_topic(&topic, 2);
    let state = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{base}  - name: uploads
    target: handler
    source:
      s3: {{ queue_url: "{uploads}", wait_time: 20s }}
  - name: changes
    target: handler
    source:
      dynamodb_stream: {{ table: idle, starting_position: latest }}
  - name: clicks
    target: handler
    source:
      kafka:
        bootstrap_servers: "{bootstrap}"
        topics: [{topic}]
        group_id: {group}
        starting_position: latest
state_dir: "{state}"
"#,
        base = sqs_config(&queue, "127.0.0.1:0", 20),
        bootstrap = kafka.bootstrap(),
        group = Kafka::unique("sluice"),
        state = state.path().display(),
    );
    let mut sluice = Sluice::start(&config, &moto_env(&moto));
    // Every source at rest in its wait: the group's partitions assigned and the shard held; the
    // queues' first 20 s long polls are open from the start (waiting for readiness would wait
    // one of them out).
    eventually(WAIT, "the group settled and the shard held", || async {
        let (_, text) = sluice.get("/metrics").await;
        let partitions = metric_of_mapping(&text, "sluice_kafka_partitions_assigned", "clicks");
        let shards = metric_of_mapping(&text, "sluice_stream_shards_held", "changes");
        (partitions == 2.0 && shards >= 1.0).then_some(())
    })
    .await;
    let stopping = Instant::now();
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("sluice exits");
    let took = stopping.elapsed();
    assert!(status.success());
    assert!(took < Duration::from_secs(2), "the stop took {took:?}");
}

fn shutdown_timeout_seconds(config: &str) -> u64 {
    let line = config
        .lines()
        .find(|l| l.starts_with("shutdown_timeout:"))
        .expect("the config sets shutdown_timeout");
    let value = line
        .trim_start_matches("shutdown_timeout:")
        .split('#')
        .next()
        .unwrap()
        .trim();
    value
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{value:?} is not whole seconds"))
}

// Issue 9: the task definition matches the config it runs (health check through `sluice
// health`, stopTimeout above shutdown_timeout so a drain is never cut off by SIGKILL, the config
// location in the environment, JSON logs to CloudWatch), and the ECS example config runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecs_example_runs_and_its_task_definition_matches_it() {
    let root = workspace_root().join("examples/ecs");
    let config_text = std::fs::read_to_string(root.join("sluice.yaml")).unwrap();
    let task: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("task-definition.json")).unwrap())
            .unwrap();
    let container = task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sluice")
        .expect("a sluice container");
    assert_eq!(
        container["healthCheck"]["command"],
        serde_json::json!(["CMD", "sluice", "health"])
    );
    let stop_timeout = container["stopTimeout"].as_u64().unwrap();
    let shutdown_timeout = shutdown_timeout_seconds(&config_text);
    assert!(
        stop_timeout >= shutdown_timeout + 5 && stop_timeout <= 120,
        "stopTimeout {stop_timeout}s must exceed shutdown_timeout {shutdown_timeout}s (ECS allows at most 120)"
    );
    let environment = container["environment"].as_array().unwrap();
    assert!(environment.iter().any(|e| e["name"] == "SLUICE_CONFIG"));
    let admin_env = environment
        .iter()
        .find(|e| e["name"] == "SLUICE_ADMIN")
        .expect("SLUICE_ADMIN, so the health check needs no config fetch");
    let port = container["portMappings"][0]["containerPort"]
        .as_u64()
        .unwrap();
    assert!(
        admin_env["value"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}"))
    );
    assert_eq!(container["logConfiguration"]["logDriver"], "awslogs");

    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "orders", &[]).await;
    let dlq = create_queue(&sqs, "orders-dlq", &[]).await;
    let handler =
        Handler::start(|_, _| Reply::json(serde_json::json!({ "batchItemFailures": [] }))).await;
    let state = tempfile::tempdir().unwrap();
    let mut env = moto_env(&moto);
    env.extend([
        ("ORDERS_QUEUE_URL".to_owned(), queue.clone()),
        ("ORDERS_DLQ_URL".to_owned(), dlq),
        ("HANDLER_URL".to_owned(), handler.url("/events")),
        ("SLUICE_ADMIN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "SLUICE_STATE_DIR".to_owned(),
            state.path().display().to_string(),
        ),
    ]);
    let config_path = root.join("sluice.yaml");
    let mut sluice = Sluice::start_file(&config_path, tempfile::tempdir().unwrap(), &env);
    let bodies: Vec<String> = (0..5).map(|i| format!("order-{i}")).collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    eventually(WAIT, "five orders handled", || {
        let count = handler.records().len();
        async move { (count >= 5).then_some(()) }
    })
    .await;
    let config_location = config_path.display().to_string();
    // The environment's SLUICE_ADMIN has port 0 here, so the check finds the port in the address
    // file (in the ECS example the task sets a real port and needs no file).
    env.push((
        "SLUICE_ADDRESS_FILE".to_owned(),
        sluice.address_file().display().to_string(),
    ));
    let (code, output) = health(&["-c", &config_location], &env);
    assert_eq!(code, Some(0), "{output}");
    let stopping = Instant::now();
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(stop_timeout))
        .expect("stops within stopTimeout");
    assert!(status.success());
    assert!(stopping.elapsed() < Duration::from_secs(stop_timeout));
}

// Issue 9: `scripts/package` builds the image's file set (the Dockerfile copies exactly it); the
// binary in it runs, and every shared library it needs comes from the runtime image's packages.
#[test]
fn the_package_holds_what_the_image_needs() {
    let root = workspace_root();
    let out = tempfile::tempdir().unwrap();
    // The binary the tests built: packaging it checks the layout and its libraries without a
    // second build of the crate with other features.
    let status = Command::new(root.join("scripts/package"))
        .arg("--binary")
        .arg(sluice_binary())
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let binary = out.path().join("rootfs/usr/local/bin/sluice");
    for dir in ["rootfs/etc/sluice", "rootfs/var/lib/sluice"] {
        assert!(out.path().join(dir).is_dir(), "{dir}");
    }
    let validate = Command::new(&binary)
        .args(["validate", "-c"])
        .arg(root.join("examples/ecs/sluice.yaml"))
        .env(
            "ORDERS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/orders",
        )
        .env(
            "ORDERS_DLQ_URL",
            "https://sqs.us-east-1.amazonaws.com/1/orders-dlq",
        )
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );

    // Shared libraries → the Debian packages that ship them; each must be in the image.
    let packages: Vec<String> = std::fs::read_to_string(out.path().join("runtime-packages.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // debian:bookworm-slim itself has the C library and libgcc.
    let in_base = ["libc6", "libgcc-s1"];
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let libraries: Vec<&str> = ldd
        .lines()
        .filter_map(|line| line.split("=>").nth(1))
        .filter_map(|target| target.split_whitespace().next())
        .collect();
    assert!(libraries.len() >= 3, "{ldd}");
    for library in libraries {
        // Merged /usr: dpkg may record a library under /lib or /usr/lib, by its link name or the
        // file it links to; ask for each spelling.
        let real = std::fs::canonicalize(library)
            .unwrap()
            .display()
            .to_string();
        let candidates = [
            library.to_owned(),
            real.clone(),
            real.replacen("/usr/lib/", "/lib/", 1),
            library.replacen("/lib/", "/usr/lib/", 1),
        ];
        let owner = candidates
            .iter()
            .map(|path| Command::new("dpkg").args(["-S", path]).output().unwrap())
            .find(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let package = owner
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        assert!(
            packages.contains(&package) || in_base.contains(&package.as_str()),
            "{library} comes from {package:?}, which the runtime image does not install (docker/runtime-packages.txt)"
        );
    }

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for needed in [
        "RUN scripts/package --out /out",
        "COPY --from=build /out/rootfs/ /",
        "docker/runtime-packages.txt",
        "USER 10001",
        "CMD [\"sluice\", \"health\"]",
    ] {
        assert!(
            dockerfile.contains(needed),
            "the Dockerfile lacks {needed:?}"
        );
    }
    assert!(packages.iter().any(|p| p == "ca-certificates"));
}

/// The trace id of a `traceparent` header value.
fn trace_id(received: &Received) -> String {
    let value = received
        .headers
        .get("traceparent")
        .expect("a traceparent header")
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    parts[1].to_owned()
}

// Issue 9 "traces": the invocation continues the trace the producer attached: SQS's
// AWSTraceHeader (X-Ray), a `traceparent` message attribute, a Kafka `traceparent` header; a
// record without one starts a new trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_continue_the_trace_of_their_record() {
    use aws_sdk_sqs::types::{
        MessageAttributeValue, MessageSystemAttributeNameForSends, MessageSystemAttributeValue,
    };
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "traced", &[]).await;
    let handler = Handler::start(|_, _| Reply::ok("{}")).await;
    let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    sqs.send_message()
        .queue_url(&queue)
        .message_body("from-xray")
        .message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            MessageSystemAttributeValue::builder()
                .data_type("String")
                .string_value(xray)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&queue)
        .message_body("from-w3c")
        .message_attributes(
            "traceparent",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    send_bodies(&sqs, &queue, &["untraced".into()], None).await;
    let _sluice = Sluice::start(
        &format!(
            r#"version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  app:
    http: {{ url: "{}" }}
mappings:
  - name: traced
    target: app
    source:
      sqs: {{ queue_url: "{queue}", batch_size: 1, wait_time: 1s }}
"#,
            handler.url("/")
        ),
        &moto_env(&moto),
    );
    let received = eventually(WAIT, "three invocations", || {
        let received = handler.received();
        async move { (received.len() >= 3).then_some(received) }
    })
    .await;
    let by_body = |body: &str| {
        received
            .iter()
            .find(|r| r.records()[0]["body"] == body)
            .unwrap_or_else(|| panic!("{body} delivered"))
    };
    assert_eq!(
        trace_id(by_body("from-xray")),
        "5759e988bd862e3fe1be46a994272793"
    );
    let w3c = by_body("from-w3c");
    assert_eq!(trace_id(w3c), "4bf92f3577b34da6a3ce929d0e0e4736");
    let span = w3c.headers["traceparent"]
        .to_str()
        .unwrap()
        .split('-')
        .nth(2)
        .unwrap()
        .to_owned();
    assert_ne!(span, "00f067aa0ba902b7", "the invocation is a child span");
    let fresh = trace_id(by_body("untraced"));
    assert!(
        fresh != "5759e988bd862e3fe1be46a994272793" && fresh != "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    let kafka = Kafka::start();
    let topic = Kafka::unique("traced");
    kafka.create_topic(&topic, 1);
    kafka.produce_with_headers(
        &topic,
        &[(0, None::<&str>, "{}".to_owned())],
        &[(
            "traceparent",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    );
    let kafka_handler = Handler::start(|_, _| Reply::ok("{}")).await;
    let _kafka_sluice = Sluice::start(
        &format!(
            r#"version: 1
admin: {{ listen: "{{admin}}" }}
targets:
  app:
    http: {{ url: "{}" }}
mappings:
  - name: traced
    target: app
    source:
      kafka:
        bootstrap_servers: "{}"
        topics: [{topic}]
        group_id: {}
        starting_position: trim_horizon
"#,
            kafka_handler.url("/"),
            kafka.bootstrap(),
            Kafka::unique("sluice")
        ),
        &[],
    );
    let received = eventually(WAIT, "the Kafka invocation", || {
        let received = kafka_handler.received();
        async move { (!received.is_empty()).then_some(received) }
    })
    .await;
    assert_eq!(trace_id(&received[0]), "0af7651916cd43dd8448eb211c80319c");
}

// Issue 9 "traces": with `traces.otlp_endpoint`, each invocation is exported as an `invoke` span
// over OTLP/HTTP: a child of the record's trace, and the parent of what the handler does (its
// span id is the one in the handler's traceparent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_spans_are_exported_over_otlp() {
    use aws_sdk_sqs::types::MessageAttributeValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
    let received = exports.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                received
                    .lock()
                    .unwrap()
                    .push(ExportTraceServiceRequest::decode(body).expect("OTLP protobuf"));
                ""
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let queue = create_queue(&sqs, "spans", &[]).await;
    sqs.send_message()
        .queue_url(&queue)
        .message_body("traced")
        .message_attributes(
            "traceparent",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let handler = Handler::start(|_, _| Reply::ok("{}")).await;
    let mut sluice = Sluice::start(
        &format!(
            r#"version: 1
admin: {{ listen: "{{admin}}" }}
traces: {{ otlp_endpoint: "http://{collector}", service_name: orders-sluice }}
targets:
  app:
    http: {{ url: "{}" }}
mappings:
  - name: spans
    target: app
    source:
      sqs: {{ queue_url: "{queue}", wait_time: 1s }}
"#,
            handler.url("/")
        ),
        &moto_env(&moto),
    );
    let invocation = eventually(WAIT, "the invocation", || {
        let received = handler.received();
        async move { received.first().cloned() }
    })
    .await;
    let traceparent = invocation.headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let span_id = traceparent.split('-').nth(2).unwrap().to_owned();
    // Stopping flushes the exporter.
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).unwrap().success());
    let exports = exports.lock().unwrap();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (resource, span) = exports
        .iter()
        .flat_map(|export| &export.resource_spans)
        .flat_map(|rs| {
            rs.scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(move |span| (rs.resource.clone(), span.clone()))
        })
        .find(|(_, span)| hex(&span.span_id) == span_id)
        .unwrap_or_else(|| panic!("no exported span {span_id}: {exports:?}"));
    assert_eq!(span.name, "invoke");
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    let service = resource
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .map(|kv| format!("{:?}", kv.value))
        .unwrap_or_default();
    assert!(service.contains("orders-sluice"), "{service}");
    assert!(
        span.attributes
            .iter()
            .any(|kv| kv.key == "sluice.outcome" && format!("{:?}", kv.value).contains("returned"))
    );
}

// Issue 20, item 4: the example target-tracking policy follows the metric the ECS example config
// makes sluice write: DesiredTasks, in the EMF namespace, for the example's mapping; and it
// scales the service the scalable target registers.
#[test]
fn the_autoscaling_policy_tracks_what_the_ecs_example_writes() {
    let root = workspace_root().join("examples/ecs");
    let text = std::fs::read_to_string(root.join("sluice.yaml")).unwrap();
    let environment = [
        (
            "ORDERS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/orders",
        ),
        (
            "ORDERS_DLQ_URL",
            "https://sqs.us-east-1.amazonaws.com/1/orders-dlq",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = sluice::config::parse("sluice.yaml", &text, environment).unwrap();
    let namespace = config.emf.expect("the example writes EMF").namespace;
    let mapping = &config.mappings[0];
    assert!(mapping.autoscaling.target_drain_time.is_some());
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap()
    };
    let policy = read("autoscaling-policy.json");
    let target = read("scalable-target.json");
    for key in ["ServiceNamespace", "ResourceId", "ScalableDimension"] {
        assert_eq!(policy[key], target[key], "{key}");
    }
    assert_eq!(policy["PolicyType"], "TargetTrackingScaling");
    let tracking = &policy["TargetTrackingScalingPolicyConfiguration"];
    assert_eq!(tracking["TargetValue"], 1.0);
    let metrics = tracking["CustomizedMetricSpecification"]["Metrics"]
        .as_array()
        .unwrap();
    let desired = metrics.iter().find(|m| m["Id"] == "desired").unwrap();
    let metric = &desired["MetricStat"]["Metric"];
    assert_eq!(metric["Namespace"], namespace.as_str());
    assert_eq!(metric["MetricName"], "DesiredTasks");
    assert_eq!(
        metric["Dimensions"],
        serde_json::json!([{ "Name": "EventSourceMapping", "Value": mapping.name }])
    );
    // Exactly one series feeds the policy: the ratio of wanted to running tasks.
    let returned: Vec<&serde_json::Value> =
        metrics.iter().filter(|m| m["ReturnData"] == true).collect();
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0]["Expression"], "desired / running");
}
