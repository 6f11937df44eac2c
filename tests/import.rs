//! End-to-end: `sluice import` (issue 23 item 1) on templates modelled on the examples people
//! start from (SAM, CloudFormation JSON, Serverless Framework, Terraform): every setting carried
//! over field by field, every unresolvable value a variable the summary names, every result
//! accepted by `sluice validate` once those are set, and one imported SAM application run on
//! moto with its Python handler under awslambdaric.

use serde_json::{Value as Json, json};
use sluice_testkit::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/import").join(name)
}

struct Imported {
    yaml: String,
    config: Json,
    summary: String,
    /// Variables the summary asks for, in order.
    needs: Vec<String>,
}

fn run_import(args: &[&str]) -> Output {
    Command::new(sluice_binary())
        .arg("import")
        .args(args)
        .output()
        .unwrap()
}

fn import(path: &Path, extra: &[&str]) -> Imported {
    let mut args = vec![path.to_str().unwrap()];
    args.extend(extra);
    let output = run_import(&args);
    let summary = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{summary}");
    let yaml = String::from_utf8(output.stdout).unwrap();
    let config: Json = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let needs = summary
        .lines()
        .skip_while(|l| !l.starts_with("needs a value"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split(':').next().map(str::to_owned))
        .collect();
    Imported {
        yaml,
        config,
        summary,
        needs,
    }
}

/// A plausible, distinct value for each variable an import asks for.
fn values_for(needs: &[String], dir: &Path) -> Vec<(String, String)> {
    needs
        .iter()
        .map(|name| {
            let lower = name.to_ascii_lowercase().replace('_', "-");
            let value = match name.as_str() {
                "AWS_REGION" => "us-east-1".to_owned(),
                "AWS_ACCOUNT_ID" => "123456789012".to_owned(),
                n if n.ends_with("_URL") || n.ends_with("_ARN") => {
                    format!("https://sqs.us-east-1.amazonaws.com/123456789012/{lower}")
                }
                n if n.ends_with("BOOTSTRAP_SERVERS") || n.ends_with("BROKERS") => {
                    "b-1.example.com:9096".to_owned()
                }
                n if n.ends_with("ZONE") => "Europe/Paris".to_owned(),
                n if n.ends_with("_FILE") => {
                    let path = dir.join(&lower);
                    std::fs::write(&path, "pem").unwrap();
                    path.display().to_string()
                }
                _ => format!("value-{lower}"),
            };
            (name.clone(), value)
        })
        .collect()
}

/// `sluice validate` on the imported config with its variables set: must pass.
fn validates(imported: &Imported) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, &imported.yaml).unwrap();
    let env = values_for(&imported.needs, dir.path());
    let output = Command::new(sluice_binary())
        .args(["validate", "-c"])
        .arg(&path)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        imported.yaml
    );
}

fn mapping<'c>(config: &'c Json, name: &str) -> &'c Json {
    config["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no mapping {name} in {config:#}"))
}

#[test]
fn a_sam_template_with_queue_and_stream_events_is_carried_over_field_by_field() {
    let imported = import(&fixture("sam-streams.yaml"), &[]);
    let c = &imported.config;
    // Globals apply, a function's own environment merges over them; Timeout from Globals.
    let target = &c["targets"]["process-orders"]["lambda_runtime"];
    assert_eq!(
        target["command"],
        json!(["python3", "-m", "awslambdaric", "app.handler"])
    );
    assert_eq!(target["timeout"], "30s");
    assert_eq!(target["memory_size"], 512);
    assert_eq!(target["concurrency"], 20);
    assert_eq!(
        target["env"],
        json!({"LOG_LEVEL": "debug", "STAGE": "prod", "TABLE": "prod-orders"})
    );
    assert_eq!(
        c["targets"]["change-feed"]["lambda_runtime"]["command"],
        json!(["npx", "aws-lambda-ric", "index.handler"])
    );

    // SQS: the queue's ARN from its QueueName (a !Sub of a parameter default) turned into a URL;
    // the batch size from !If on a condition and !FindInMap; every setting carried over.
    let orders = mapping(c, "process-orders-orders-queue-event");
    let sqs = &orders["source"]["sqs"];
    assert_eq!(
        sqs["queue_url"],
        "https://sqs.${AWS_REGION}.amazonaws.com/${AWS_ACCOUNT_ID}/orders-prod"
    );
    assert_eq!(sqs["batch_size"], 50);
    assert_eq!(sqs["max_batching_window"], "5s");
    assert_eq!(sqs["max_concurrency"], 10);
    assert_eq!(orders["report_batch_item_failures"], true);
    assert_eq!(
        orders["filters"],
        json!([{"body": {"type": ["order"], "amount": [{"numeric": [">", 0]}]}}])
    );

    // DynamoDB: the stream of a table the template names becomes `table`.
    let changes = mapping(c, "change-feed-table-changes");
    let stream = &changes["source"]["dynamodb_stream"];
    assert_eq!(stream["table"], "prod-orders");
    assert_eq!(stream["starting_position"], "trim_horizon");
    assert_eq!(stream["batch_size"], 100);
    assert_eq!(changes["retry"]["max_retry_attempts"], 3);
    assert_eq!(changes["retry"]["bisect_on_error"], true);
    assert_eq!(
        changes["on_failure"]["sqs"]["queue_url"], "${STREAM_FAILURES_URL}",
        "a queue the stack names itself is a variable"
    );
    assert_eq!(
        changes["filters"],
        json!([{"eventName": ["INSERT", "MODIFY"]}])
    );

    // Kinesis: a bounded record age with no OnFailure needs a destination in sluice.
    let clicks = mapping(c, "change-feed-clicks");
    let kinesis = &clicks["source"]["kinesis"];
    assert_eq!(
        kinesis["stream_arn"],
        "arn:aws:kinesis:${AWS_REGION}:${AWS_ACCOUNT_ID}:stream/clicks"
    );
    assert_eq!(kinesis["tumbling_window"], "60s");
    assert_eq!(kinesis["starting_position"], "latest");
    assert_eq!(clicks["retry"]["max_record_age"], "3600s");
    assert_eq!(
        clicks["on_failure"]["sqs"]["queue_url"],
        "${CHANGE_FEED_CLICKS_FAILURE_QUEUE_URL}"
    );
    assert!(
        imported
            .yaml
            .contains("# no OnFailure destination sluice can write to"),
        "{}",
        imported.yaml
    );

    assert_eq!(
        imported.needs,
        [
            "AWS_REGION",
            "AWS_ACCOUNT_ID",
            "STREAM_FAILURES_URL",
            "CHANGE_FEED_CLICKS_FAILURE_QUEUE_URL"
        ]
    );
    assert!(
        imported
            .summary
            .contains("ChangeFeed event Api (Api): sluice has no Api source"),
        "{}",
        imported.summary
    );
    // Each line that needs a value says what to set.
    assert!(
        imported
            .yaml
            .contains("#   STREAM_FAILURES_URL: the URL of queue StreamFailures the stack creates")
    );
    validates(&imported);
}

#[test]
fn a_sam_template_with_kafka_s3_and_schedule_events_is_carried_over() {
    let imported = import(&fixture("sam-kafka-s3-schedule.yaml"), &[]);
    let c = &imported.config;
    let java = &c["targets"]["kafka-consumer"]["lambda_runtime"];
    assert_eq!(java["command"][0], "java");
    assert_eq!(
        java["command"].as_array().unwrap().last().unwrap(),
        "com.acme.Consumer::handleRequest"
    );
    assert_eq!(
        java["timeout"], "3s",
        "Lambda's default timeout, not sluice's"
    );
    assert_eq!(
        c["targets"]["thumbnails"]["lambda_runtime"]["command"],
        json!(["./bootstrap"])
    );

    let msk = mapping(c, "kafka-consumer-orders");
    let kafka = &msk["source"]["kafka"];
    assert_eq!(
        kafka["bootstrap_servers"],
        "${ORDERS_CLUSTER_BOOTSTRAP_SERVERS}"
    );
    assert_eq!(kafka["topics"], json!(["orders"]));
    assert_eq!(kafka["group_id"], "orders-consumer");
    assert_eq!(kafka["starting_position"], "trim_horizon");
    assert_eq!(kafka["batch_size"], 500);
    assert_eq!(kafka["max_batching_window"], "1s");
    assert!(
        kafka["msk_cluster_arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kafka:us-east-1:123456789012:cluster/orders-cluster/")
    );
    assert_eq!(kafka["auth"]["sasl_scram"]["mechanism"], "SCRAM-SHA-512");
    assert_eq!(
        kafka["auth"]["sasl_scram"]["password"],
        "${AMAZON_MSK_ORDERS_AB_CD_EF_PASSWORD}"
    );

    let legacy = &mapping(c, "kafka-consumer-legacy")["source"]["kafka"];
    assert_eq!(
        legacy["bootstrap_servers"],
        "b-1.legacy:9096,b-2.legacy:9096"
    );
    assert_eq!(legacy["properties"]["sasl.mechanism"], "PLAIN");
    assert_eq!(legacy["group_id"], "kafka-consumer-legacy");

    // S3: the bucket invoked Lambda itself; sluice needs the queue it notifies.
    let upload = mapping(c, "thumbnails-upload");
    let s3 = &upload["source"]["s3"];
    assert_eq!(s3["queue_url"], "${ACME_UPLOADS_NOTIFICATIONS_QUEUE_URL}");
    assert_eq!(s3["events"], json!(["s3:ObjectCreated:*"]));
    assert_eq!(s3["prefix"], "incoming/");
    assert_eq!(s3["suffix"], ".jpg");
    assert_eq!(upload["retry"]["max_retry_attempts"], 1);
    assert_eq!(upload["retry"]["max_event_age"], "3600s");
    assert_eq!(
        upload["on_failure"]["sqs"]["queue_url"],
        "${FAILURE_QUEUE_ARN}"
    );
    assert!(upload.get("on_success").is_none(), "SNS has no equivalent");
    assert!(imported.summary.contains("a SNS destination"));

    // Schedules: the input's literal `${` survives sluice's expansion; the DLQ is on_failure.
    let nightly = mapping(c, "reports-nightly");
    assert_eq!(
        nightly["source"]["schedule"]["expression"],
        "cron(0 2 * * ? *)"
    );
    assert_eq!(
        nightly["source"]["schedule"]["input"],
        json!({"job": "nightly", "since": "$${yesterday}"})
    );
    assert_eq!(
        nightly["on_failure"]["sqs"]["queue_url"],
        "https://sqs.us-east-1.amazonaws.com/123456789012/reports-dlq"
    );
    let hourly = mapping(c, "reports-hourly");
    assert_eq!(hourly["enabled"], false);
    assert_eq!(hourly["source"]["schedule"]["timezone"], "Europe/Paris");
    assert!(imported.summary.contains("RetryPolicy is EventBridge's"));
    // A parameter named for an ARN, used as a queue URL, says so.
    assert!(
        imported
            .summary
            .contains("FAILURE_QUEUE_ARN: template parameter FailureQueueArn (as a queue URL"),
        "{}",
        imported.summary
    );
    validates(&imported);
}

#[test]
fn a_cloudformation_json_template_with_mappings_and_invoke_config_is_carried_over() {
    let imported = import(&fixture("cloudformation.json"), &[]);
    let c = &imported.config;
    let worker = &c["targets"]["worker"]["lambda_runtime"];
    assert_eq!(worker["function_name"], "billing-worker");
    assert_eq!(worker["memory_size"], 1024);
    assert_eq!(worker["env"]["REGION"], "${AWS_REGION}");

    let invoices = mapping(c, "worker-invoices-mapping");
    assert_eq!(invoices["enabled"], false);
    assert_eq!(
        invoices["source"]["sqs"]["queue_url"],
        "https://sqs.eu-west-1.amazonaws.com/111122223333/invoices.fifo"
    );
    // A mapping naming its function by name (not !Ref) finds it.
    let ledger = mapping(c, "worker-ledger-mapping");
    assert_eq!(ledger["target"], "worker");
    let kinesis = &ledger["source"]["kinesis"];
    assert_eq!(
        kinesis["stream_arn"],
        "arn:aws:kinesis:eu-west-1:111122223333:stream/ledger"
    );
    assert_eq!(kinesis["consumer"]["name"], "billing");
    assert_eq!(kinesis["starting_position"], "at_timestamp");
    assert_eq!(kinesis["starting_timestamp"], "1700000000");
    assert_eq!(ledger["retry"]["max_retry_attempts"], 10);
    assert_eq!(ledger["on_failure"]["s3"]["bucket"], "ledger-failures");
    assert!(
        imported
            .summary
            .contains("LedgerMapping: ProvisionedPollerConfig")
    );

    // An AWS::Events::Rule schedule targeting the function, with the invoke config's policy.
    let schedule = mapping(c, "worker-every-five-minutes");
    assert_eq!(
        schedule["source"]["schedule"]["expression"],
        "rate(5 minutes)"
    );
    assert_eq!(
        schedule["source"]["schedule"]["input"],
        json!({"task": "reconcile"})
    );
    assert_eq!(schedule["retry"]["max_retry_attempts"], 0);
    assert_eq!(schedule["retry"]["max_event_age"], "600s");
    assert_eq!(
        schedule["on_failure"]["sqs"]["queue_url"],
        "https://sqs.eu-west-1.amazonaws.com/111122223333/billing-async-failures"
    );
    validates(&imported);
}

#[test]
fn a_serverless_service_is_carried_over_with_its_variables_resolved() {
    let imported = import(&fixture("serverless.yml"), &[]);
    let c = &imported.config;
    let worker = &c["targets"]["worker"]["lambda_runtime"];
    assert_eq!(worker["function_name"], "checkout-staging-worker");
    assert_eq!(worker["timeout"], "20s");
    assert_eq!(worker["memory_size"], 256, "provider.memorySize");
    assert_eq!(
        worker["env"],
        json!({"SERVICE": "checkout", "API_TOKEN": "${API_TOKEN}", "PAYMENTS_URL": "${CHECKOUT_PAYMENTS_URL}"})
    );
    assert_eq!(
        c["targets"]["cron"]["lambda_runtime"]["timeout"], "6s",
        "the framework's default timeout"
    );

    // ${self:custom.batch.${sls:stage}} with the stage from ${opt:stage, 'staging'}.
    let sqs = mapping(c, "worker-sqs-1");
    assert_eq!(
        sqs["source"]["sqs"]["queue_url"],
        "https://sqs.eu-central-1.amazonaws.com/${AWS_ACCOUNT_ID}/checkout-jobs-staging"
    );
    assert_eq!(sqs["source"]["sqs"]["batch_size"], 5);
    assert_eq!(sqs["source"]["sqs"]["max_batching_window"], "10s");
    assert_eq!(sqs["source"]["sqs"]["max_concurrency"], 4);
    assert_eq!(sqs["filters"], json!([{"body": {"kind": ["job"]}}]));

    let carts = mapping(c, "streams-stream-1");
    let stream = &carts["source"]["dynamodb_stream"];
    assert_eq!(
        stream["stream_arn"],
        "arn:aws:dynamodb:eu-central-1:${AWS_ACCOUNT_ID}:table/carts/stream/2024-01-01T00:00:00.000"
    );
    assert_eq!(stream["batch_size"], 10, "the framework's default");
    assert_eq!(stream["starting_position"], "trim_horizon");
    assert_eq!(carts["retry"]["max_retry_attempts"], 2);
    let events = mapping(c, "streams-stream-2");
    assert_eq!(events["source"]["kinesis"]["parallelization_factor"], 4);
    assert_eq!(
        events["source"]["kinesis"]["consumer"]["name"],
        "streams-stream-2"
    );
    assert_eq!(events["retry"]["bisect_on_error"], true);

    // A list of rates is one mapping each; a disabled schedule stays disabled.
    assert_eq!(
        mapping(c, "cron-schedule-1")["source"]["schedule"]["expression"],
        "rate(10 minutes)"
    );
    let weekday = mapping(c, "cron-schedule-2-1");
    assert_eq!(weekday["enabled"], false);
    assert_eq!(
        weekday["source"]["schedule"]["input"],
        json!({"report": "weekly"})
    );
    assert_eq!(
        mapping(c, "cron-schedule-2-2")["source"]["schedule"]["expression"],
        "cron(0 12 ? * SAT *)"
    );
    assert_eq!(weekday["retry"]["max_retry_attempts"], 1);

    let uploads = &mapping(c, "uploads-s3-1")["source"]["s3"];
    assert_eq!(uploads["events"], json!(["s3:ObjectCreated:Put"]));
    assert_eq!(uploads["prefix"], "receipts/");
    assert_eq!(uploads["suffix"], ".pdf");

    let refunds = &mapping(c, "kafka-kafka-1")["source"]["kafka"];
    assert_eq!(refunds["group_id"], "refunds-staging");
    assert_eq!(refunds["auth"]["sasl_scram"]["mechanism"], "SCRAM-SHA-256");
    let payments = &mapping(c, "kafka-msk-1")["source"]["kafka"];
    assert_eq!(payments["auth"], json!({"msk_iam": {}}));

    assert!(imported.needs.contains(&"API_TOKEN".to_owned()));
    assert!(imported.needs.contains(&"CHECKOUT_PAYMENTS_URL".to_owned()));
    assert!(imported.summary.contains("no http source"));
    validates(&imported);
}

#[test]
fn terraform_files_are_carried_over_with_references_resolved() {
    let imported = import(&fixture("terraform"), &[]);
    let c = &imported.config;
    let processor = &c["targets"]["processor"]["lambda_runtime"];
    assert_eq!(processor["function_name"], "shop-prod-processor");
    assert_eq!(processor["timeout"], "45s");
    assert_eq!(
        processor["env"]["QUEUE_URL"],
        "https://sqs.us-west-2.amazonaws.com/${AWS_ACCOUNT_ID}/shop-prod-orders",
        "the provider's region"
    );
    // A container-image function has no runtime to run here: an HTTP placeholder.
    assert_eq!(c["targets"]["container"]["http"]["url"], "${CONTAINER_URL}");

    let orders = mapping(c, "processor-orders");
    assert_eq!(orders["source"]["sqs"]["batch_size"], 100);
    assert_eq!(orders["source"]["sqs"]["max_batching_window"], "2s");
    assert_eq!(orders["source"]["sqs"]["max_concurrency"], 20);
    assert_eq!(orders["report_batch_item_failures"], true);
    assert_eq!(orders["filters"], json!([{"body": {"status": ["paid"]}}]));

    let carts = mapping(c, "processor-carts");
    assert_eq!(
        carts["source"]["dynamodb_stream"]["table"],
        "shop-prod-carts"
    );
    assert_eq!(
        carts["source"]["dynamodb_stream"]["parallelization_factor"],
        2
    );
    assert_eq!(carts["retry"]["max_retry_attempts"], 5);
    assert_eq!(
        carts["on_failure"]["sqs"]["queue_url"],
        "https://sqs.us-west-2.amazonaws.com/${AWS_ACCOUNT_ID}/shop-prod-failures"
    );

    let kafka = &mapping(c, "container-kafka")["source"]["kafka"];
    assert_eq!(kafka["bootstrap_servers"], "${KAFKA_BROKERS}");
    assert_eq!(kafka["group_id"], "clicks-prod");
    assert_eq!(kafka["topics"], json!(["clicks"]));

    let invoices = mapping(c, "processor-invoices-1");
    assert_eq!(invoices["source"]["s3"]["prefix"], "pdf/");
    assert_eq!(invoices["retry"]["max_event_age"], "900s");
    let hourly = mapping(c, "processor-hourly");
    assert_eq!(hourly["source"]["schedule"]["expression"], "rate(1 hour)");
    assert_eq!(
        hourly["source"]["schedule"]["input"],
        json!({"job": "compact"})
    );

    assert!(
        !imported.needs.iter().any(|n| n.contains("STREAM_ARN")),
        "a stream replaced by its table's name needs nothing: {:?}",
        imported.needs
    );
    assert!(
        imported
            .summary
            .contains("KAFKA_BROKERS: Terraform variable kafka_brokers")
    );
    validates(&imported);
}

#[test]
fn function_selection_output_file_and_bad_input_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("only.yaml");
    let output = run_import(&[
        fixture("sam-streams.yaml").to_str().unwrap(),
        "--function",
        "ChangeFeed",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let config: Json = serde_saphyr::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(config["targets"].as_object().unwrap().len(), 1);
    assert_eq!(config["mappings"].as_array().unwrap().len(), 2);

    let missing = run_import(&[
        fixture("sam-streams.yaml").to_str().unwrap(),
        "--function",
        "Nope",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no function named \"Nope\""));

    let broken = dir.path().join("template.yaml");
    std::fs::write(&broken, "Resources:\n  Fn:\n    Type: [unclosed\n").unwrap();
    let output = run_import(&[broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("template.yaml"), "{stderr}");
    assert!(
        stderr.contains("line 3") || stderr.contains(":3:"),
        "{stderr}"
    );

    let unknown = dir.path().join("notes.yaml");
    std::fs::write(&unknown, "hello: world\n").unwrap();
    let output = run_import(&[unknown.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--format"));
}

// The move itself: a SAM application (template, Python code beside it) imported and run
// unchanged on moto. Its SQS mapping keeps Lambda's semantics: filtered messages are deleted
// without an invocation, a reported item failure is retried and then dead-lettered by the
// queue's own redrive policy, the rest is handled once, by the function's own handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_sam_application_runs_its_python_handler_on_its_queue() {
    let moto = Moto::start();
    let sqs = moto.sqs().await;
    let dlq = create_queue(&sqs, "imported-orders-dlq", &[]).await;
    let redrive = json!({
        "deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:imported-orders-dlq",
        "maxReceiveCount": "2"
    })
    .to_string();
    let queue = create_queue(
        &sqs,
        "imported-orders",
        // Failed messages come back after the visibility timeout, as on Lambda: short here.
        &[("RedrivePolicy", &redrive), ("VisibilityTimeout", "2")],
    )
    .await;

    let imported = import(&fixture("sam-python/template.yaml"), &[]);
    assert_eq!(imported.needs, ["OUT_DIR", "AWS_REGION", "AWS_ACCOUNT_ID"]);
    let out = tempfile::tempdir().unwrap();
    // The imported config as written, with a free admin port for the test.
    let config = format!("{}admin: {{ listen: \"127.0.0.1:0\" }}\n", imported.yaml);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, config).unwrap();
    let venv_bin = python().parent().unwrap().to_path_buf();
    let mut env = moto_env(&moto);
    env.push(("OUT_DIR".into(), out.path().display().to_string()));
    env.push(("AWS_ACCOUNT_ID".into(), "123456789012".into()));
    env.push((
        "PATH".into(),
        format!(
            "{}:{}",
            venv_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    ));
    let bodies: Vec<String> = (0..6)
        .map(|i| json!({"type": "order", "id": format!("order-{i}")}).to_string())
        .chain([
            json!({"type": "order", "id": "bad", "fail": true}).to_string(),
            json!({"type": "refund", "id": "refund-1"}).to_string(),
        ])
        .collect();
    send_bodies(&sqs, &queue, &bodies, None).await;
    let mut sluice = Sluice::start_file(&path, dir, &env);

    eventually(
        Duration::from_secs(120),
        "the failing order dead-lettered",
        || async {
            (queue_depth(&sqs, &dlq).await == 1 && queue_depth(&sqs, &queue).await == 0)
                .then_some(())
        },
    )
    .await;
    let mut handled: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    handled.sort();
    assert_eq!(
        handled,
        (0..6).map(|i| format!("order-{i}")).collect::<Vec<_>>(),
        "every order handled once; the refund filtered out, the failing order not written"
    );
    let function_name = std::fs::read_to_string(out.path().join("order-0")).unwrap();
    assert_eq!(
        function_name, "OrderHandler",
        "the Lambda context the handler sees"
    );
    let dead = sqs.receive_message().queue_url(&dlq).send().await.unwrap();
    assert!(dead.messages()[0].body().unwrap().contains("\"bad\""));
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).unwrap().success());
}

// README "Moving from Lambda": every line of each worked example is a line of what the command
// writes for its fixture, so the README cannot drift from the import.
#[test]
fn the_readme_examples_are_what_the_import_writes() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let marker = "<!-- import-output: ";
    let mut checked = 0;
    for (i, _) in readme.match_indices(marker) {
        let rest = &readme[i + marker.len()..];
        let (path, rest) = rest.split_once(" -->").unwrap();
        let block = rest
            .split_once("```yaml\n")
            .and_then(|(_, b)| b.split_once("```"))
            .map(|(b, _)| b)
            .unwrap();
        let output = Command::new(sluice_binary())
            .current_dir(workspace_root())
            .args(["import", path])
            .output()
            .unwrap();
        assert!(output.status.success(), "{path}");
        let written = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = written.lines().map(str::trim_end).collect();
        for line in block.lines() {
            assert!(
                lines.contains(&line.trim_end()),
                "README line for {path} is not in the output:\n{line}\n--- output:\n{written}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "one worked example per format");
}

/// Imports `text` written as `name` in a fresh directory: (exit code, stdout, stderr).
fn import_text(name: &str, text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    let target = if name.ends_with(".tf") {
        dir.path().to_path_buf()
    } else {
        path
    };
    let output = run_import(&[target.to_str().unwrap()]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// Review of the import: references that loop (a queue named after its own name, a parameter
// defaulting to itself, a Terraform name naming itself) overflowed the stack; variables that
// fan out, conditions that fan out and `${${${…` took exponential or quadratic time. Each now
// ends: as a variable the summary names, or as an error naming the file.
#[test]
fn hostile_templates_end_as_variables_or_errors_never_crashes() {
    let sqs_function = |queue: &str| {
        format!(
            "  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Runtime: python3.12\n      Handler: app.handler\n      Events:\n        Q:\n          Type: SQS\n          Properties:\n            Queue: {queue}\n"
        )
    };
    let self_named = format!(
        "Transform: AWS::Serverless-2016-10-31\nResources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      QueueName: !GetAtt Q.QueueName\n{}",
        sqs_function("!GetAtt Q.Arn")
    );
    let (code, out, err) = import_text("template.yaml", &self_named);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("amazonaws.com/${AWS_ACCOUNT_ID}/${Q}\""),
        "{out}"
    );
    assert!(err.contains("refers to itself"), "{err}");

    let param_loop = format!(
        "Transform: AWS::Serverless-2016-10-31\nParameters:\n  P:\n    Type: String\n    Default: !Ref P\nResources:\n{}",
        sqs_function("!Ref P")
    );
    let (code, _, err) = import_text("template.yaml", &param_loop);
    assert_eq!(code, Some(0), "{err}");

    let tf_loop = r#"
resource "aws_sqs_queue" "a" { name = aws_sqs_queue.b.name }
resource "aws_sqs_queue" "b" { name = aws_sqs_queue.a.name }
resource "aws_lambda_function" "f" {
  function_name = "f"
  runtime       = "python3.12"
  handler       = "app.handler"
}
resource "aws_lambda_event_source_mapping" "m" {
  event_source_arn = aws_sqs_queue.a.arn
  function_name    = aws_lambda_function.f.arn
}
"#;
    let (code, out, err) = import_text("main.tf", tf_loop);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("queue_url:"), "{out}");

    // Fan-out: eight values each naming the next four times, in a loop.
    let mut custom =
        String::from("service: s\nprovider: { name: aws, runtime: nodejs20.x }\ncustom:\n");
    for i in 0..8 {
        let next = (i + 1) % 8;
        custom.push_str(&format!(
            "  v{i}: \"${{self:custom.v{next}}}${{self:custom.v{next}}}${{self:custom.v{next}}}${{self:custom.v{next}}}\"\n"
        ));
    }
    custom.push_str("functions:\n  f:\n    handler: h.h\n    environment: { X: \"${self:custom.v0} ${self:} ${}\" }\n");
    let (code, _, err) = import_text("serverless.yml", &custom);
    assert!(code == Some(0) || code == Some(2), "{err}");
    if code == Some(2) {
        assert!(err.contains("serverless.yml"), "{err}");
    }

    // `${${${…x` a hundred thousand deep: linear, whatever it resolves to.
    let deep = format!(
        "service: s\nprovider: {{ name: aws, runtime: nodejs20.x }}\nfunctions:\n  f:\n    handler: h.h\n    environment: {{ X: \"{}x\" }}\n",
        "${".repeat(100_000)
    );
    let (code, _, err) = import_text("serverless.yml", &deep);
    assert!(code == Some(0) || code == Some(2), "{err}");

    // Conditions that each name ten others, seven levels down: each decided once.
    let mut conditions = String::from("Conditions:\n  C0: !Equals [a, a]\n");
    for level in 1..8 {
        let refs: Vec<String> = (0..10)
            .map(|_| format!("!Condition C{}", level - 1))
            .collect();
        conditions.push_str(&format!("  C{level}: !Or [{}]\n", refs.join(", ")));
    }
    let template = format!(
        "Transform: AWS::Serverless-2016-10-31\n{conditions}Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Runtime: python3.12\n      Handler: app.handler\n      Timeout: !If [C7, 9, 3]\n"
    );
    let (code, out, err) = import_text("template.yaml", &template);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("timeout: 9s"), "{out}");
}

// Review of the import: values holding variables were written bare where numbers go, so a
// `!Sub` with a line break added keys (a whole target); an ARN from a parameter lost its
// mapping; a Terraform filter with a variable matched the variable's literal name; an object
// from `${self:}` kept internal markers; a parameter named Home became ${HOME}, set by every
// shell.
#[test]
fn values_with_variables_cannot_inject_yaml_or_be_lost() {
    let injection = "Transform: AWS::Serverless-2016-10-31\nParameters:\n  P: { Type: String }\n  Home: { Type: String }\n  QueueArn: { Type: String }\nResources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      Runtime: python3.12\n      Handler: app.handler\n      MemorySize: !Sub \"${P}\\n  evil:\\n    http: {url: 'http://attacker'}\"\n      Environment: { Variables: { H: !Ref Home } }\n  M:\n    Type: AWS::Lambda::EventSourceMapping\n    Properties:\n      FunctionName: !Ref F\n      EventSourceArn: !Ref QueueArn\n      BatchSize: 7\n";
    let (code, out, err) = import_text("template.yaml", injection);
    assert_eq!(code, Some(0), "{err}");
    let config: Json = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(config["targets"].as_object().unwrap().len(), 1, "{out}");
    assert!(config["targets"].get("evil").is_none());
    assert_eq!(
        config["targets"]["f"]["lambda_runtime"]["env"]["H"],
        "${HOME_VALUE}"
    );
    let mapping = &config["mappings"][0];
    assert_eq!(mapping["source"]["sqs"]["queue_url"], "${QUEUE_ARN}");
    assert_eq!(mapping["source"]["sqs"]["batch_size"], 7);
    assert!(err.contains("read as sqs"), "{err}");

    let tf = r#"
variable "kind" {}
resource "aws_lambda_function" "f" {
  function_name = "f"
  runtime       = "python3.12"
  handler       = "app.handler"
  environment { variables = { LITERAL = "literal $${HOME}", MIXED = "$${HOME}-${var.kind}" } }
}
resource "aws_lambda_event_source_mapping" "m" {
  event_source_arn = "arn:aws:sqs:us-east-1:123456789012:q"
  function_name    = aws_lambda_function.f.arn
  filter_criteria {
    filter { pattern = jsonencode({ body = { type = [var.kind] } }) }
  }
}
"#;
    let (code, out, err) = import_text("main.tf", tf);
    assert_eq!(code, Some(0), "{err}");
    let config: Json = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(
        config["mappings"][0]["filters"],
        json!([{"body": {"type": ["${KIND}"]}}]),
        "{out}"
    );
    let env = &config["targets"]["f"]["lambda_runtime"]["env"];
    assert_eq!(
        env["LITERAL"], "literal $${HOME}",
        "sluice reads it as the literal ${{HOME}}"
    );
    assert_eq!(env["MIXED"], "$${HOME}-${KIND}");

    let serverless = "service: s\nprovider: { name: aws, runtime: nodejs20.x }\ncustom:\n  q: { arn: 'arn:aws:sqs:eu-west-1:${aws:accountId}:orders' }\nfunctions:\n  f:\n    handler: h.h\n    events:\n      - sqs: ${self:custom.q}\n";
    let (code, out, err) = import_text("serverless.yml", serverless);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains('\u{1}') && !out.contains("\\u0001"), "{out}");
    assert!(
        out.contains("https://sqs.eu-west-1.amazonaws.com/${AWS_ACCOUNT_ID}/orders"),
        "{out}"
    );
    assert!(err.contains("AWS_ACCOUNT_ID"), "{err}");

    // Asynchronous settings of a function whose only event is a queue are for Event
    // invocations: the function is served through the Invoke API with them.
    let queue_only = "Transform: AWS::Serverless-2016-10-31\nResources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: orders\n      Runtime: python3.12\n      Handler: app.handler\n      EventInvokeConfig: { MaximumRetryAttempts: 1, MaximumEventAgeInSeconds: 120 }\n      Events:\n        Q: { Type: SQS, Properties: { Queue: 'arn:aws:sqs:us-east-1:123456789012:q' } }\n";
    let (code, out, err) = import_text("template.yaml", queue_only);
    assert_eq!(code, Some(0), "{err}");
    let config: Json = serde_saphyr::from_str(&out).unwrap();
    let function = &config["invoke_api"]["functions"]["orders"];
    assert_eq!(function["target"], "f");
    assert_eq!(
        function["async"],
        json!({"max_retry_attempts": 1, "max_event_age": "120s"})
    );
    assert_eq!(config["mappings"].as_array().unwrap().len(), 1);
}

// Second review of the import: resources the stack may not create, schedules disabled through
// an intrinsic, Terraform blocks made by `dynamic`, a schedule input or function name holding a
// variable, fan-out through parameters, a stream consumer in Terraform, a template's own JSON
// posing as a variable, and a Serverless boolean fallback.
#[test]
fn what_lambda_never_ran_is_not_run_and_variables_survive_everywhere() {
    let template = r#"Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: { Type: String, Default: dev }
  Flag: { Type: String }
  ScheduleState: { Type: String, Default: DISABLED }
  LiveState: { Type: String }
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
  Flagged: !Equals [!Ref Flag, "yes"]
Resources:
  F:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: !Sub "${Stage}-api"
      Runtime: python3.12
      Handler: app.handler
      Events:
        Off:
          Type: ScheduleV2
          Properties: { ScheduleExpression: rate(1 hour), State: !Ref ScheduleState }
        Maybe:
          Type: ScheduleV2
          Properties: { ScheduleExpression: rate(2 hours), State: !Ref LiveState }
        WithInput:
          Type: Schedule
          Properties:
            Schedule: rate(3 hours)
            Input: !Sub '{"stage": "${Flag}", "note": "{\"sluice::expr\": 1}"}'
  ProdOnly:
    Type: AWS::Lambda::EventSourceMapping
    Condition: IsProd
    Properties: { FunctionName: !Ref F, EventSourceArn: "arn:aws:sqs:us-east-1:123456789012:prod" }
  FlaggedOnly:
    Type: AWS::Lambda::EventSourceMapping
    Condition: Flagged
    Properties: { FunctionName: !Ref F, EventSourceArn: "arn:aws:sqs:us-east-1:123456789012:flagged" }
  Posing:
    Type: AWS::Events::Rule
    Properties:
      ScheduleExpression: rate(4 hours)
      Targets: [{ Id: f, Arn: !GetAtt F.Arn, Input: '{"sluice::expr": "${HOME}"}' }]
"#;
    let (code, out, err) = import_text("template.yaml", template);
    assert_eq!(code, Some(0), "{err}");
    let config: Json = serde_saphyr::from_str(&out).unwrap();
    let names: Vec<&str> = config["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"f-prod-only"),
        "condition false: {names:?}"
    );
    assert_eq!(mapping(&config, "f-flagged-only")["enabled"], false);
    assert_eq!(
        mapping(&config, "f-off")["enabled"],
        false,
        "State from a default"
    );
    assert_eq!(
        mapping(&config, "f-maybe")["enabled"],
        false,
        "State only the deployment knows"
    );
    assert!(out.contains("State is decided at deployment"), "{out}");
    assert_eq!(
        mapping(&config, "f-with-input")["source"]["schedule"]["input"],
        json!({"stage": "${FLAG}", "note": "{\"sluice::expr\": 1}"})
    );
    assert_eq!(
        mapping(&config, "f-posing")["source"]["schedule"]["input"],
        json!({"sluice::expr": "$${HOME}"}),
        "a template's JSON cannot read sluice's environment"
    );
    assert_eq!(
        config["targets"]["f"]["lambda_runtime"]["function_name"],
        "dev-api"
    );

    // Parameters whose defaults name each other twice over: an error, quickly.
    let fan_out = "Parameters:\n  A: { Type: String, Default: !Ref B }\n  B: { Type: String, Default: !Sub '${A}-${A}' }\nResources:\n  F:\n    Type: AWS::Lambda::Function\n    Properties: { Runtime: python3.12, Handler: a.b, FunctionName: !Ref A }\n";
    let (code, _, err) = import_text("template.yaml", fan_out);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("template.yaml") && err.contains("expand"),
        "{err}"
    );

    let tf = r#"
variable "enabled" {}
resource "aws_lambda_function" "f" {
  function_name = "f"
  runtime       = "python3.12"
  handler       = "app.handler"
}
resource "aws_kinesis_stream_consumer" "fan" {
  name       = "fan"
  stream_arn = "arn:aws:kinesis:us-east-1:123456789012:stream/events"
}
resource "aws_lambda_event_source_mapping" "k" {
  event_source_arn  = aws_kinesis_stream_consumer.fan.arn
  function_name     = aws_lambda_function.f.arn
  starting_position = "LATEST"
}
resource "aws_lambda_event_source_mapping" "none" {
  count            = 0
  event_source_arn = "arn:aws:sqs:us-east-1:123456789012:none"
  function_name    = aws_lambda_function.f.arn
}
resource "aws_lambda_event_source_mapping" "maybe" {
  count            = var.enabled ? 1 : 0
  event_source_arn = "arn:aws:sqs:us-east-1:123456789012:maybe"
  function_name    = aws_lambda_function.f.arn
}
resource "aws_lambda_event_source_mapping" "dyn" {
  event_source_arn = "arn:aws:sqs:us-east-1:123456789012:dyn"
  function_name    = aws_lambda_function.f.arn
  dynamic "filter_criteria" {
    for_each = [1]
    content {
      filter { pattern = jsonencode({ body = { a = [1] } }) }
    }
  }
}
"#;
    let (code, out, err) = import_text("main.tf", tf);
    assert_eq!(code, Some(0), "{err}");
    let config: Json = serde_saphyr::from_str(&out).unwrap();
    let kinesis = &mapping(&config, "f-k")["source"]["kinesis"];
    assert_eq!(
        kinesis["stream_arn"],
        "arn:aws:kinesis:us-east-1:123456789012:stream/events"
    );
    assert_eq!(kinesis["consumer"]["name"], "fan");
    assert!(!out.contains("f-none"), "count = 0 creates nothing: {out}");
    assert_eq!(mapping(&config, "f-maybe")["enabled"], false);
    assert_eq!(mapping(&config, "f-dyn")["enabled"], false);
    assert!(err.contains("dynamic filter_criteria"), "{err}");

    let serverless = "service: s\nprovider: { name: aws, runtime: nodejs20.x }\nfunctions:\n  f:\n    handler: h.h\n    events:\n      - sqs: { arn: 'arn:aws:sqs:us-east-1:123456789012:q', enabled: '${env:ENABLED, true}' }\n";
    let (code, out, err) = import_text("serverless.yml", serverless);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("enabled: ${ENABLED:-true}"), "{out}");
    assert!(!out.contains("\\u0000"), "{out}");
}

// Re-read of the import: a file was read whole whatever its size. Over 16 MiB it is refused
// with the file's name, before it is read past the bound.
#[test]
fn a_file_over_the_size_bound_is_refused() {
    let big = format!("Resources: {{}}\n#{}\n", "x".repeat(16 * 1024 * 1024));
    let (code, _, err) = import_text("template.yaml", &big);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("template.yaml") && err.contains("larger than"),
        "{err}"
    );
}

// issue 23's "Left": a cron whose years are over (EventBridge keeps such a rule; it never fires)
// made the import's output fail `validate`. It is written disabled, with the reason; a schedule
// that fires stays enabled.
#[test]
fn a_schedule_whose_years_are_over_is_kept_disabled_and_validates() {
    let template = "Transform: AWS::Serverless-2016-10-31\nParameters:\n  Zone:\n    Type: String\nResources:\n  Report:\n    Type: AWS::Serverless::Function\n    Properties:\n      Runtime: python3.12\n      Handler: app.handler\n      Events:\n        Launch:\n          Type: Schedule\n          Properties:\n            Schedule: cron(0 12 1 6 ? 2019-2020)\n        Hourly:\n          Type: ScheduleV2\n          Properties:\n            ScheduleExpression: rate(1 hour)\n        Zoned:\n          Type: ScheduleV2\n          Properties:\n            ScheduleExpression: cron(0 9 ? * MON 2021)\n            ScheduleExpressionTimezone: !Ref Zone\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("template.yaml");
    std::fs::write(&path, template).unwrap();
    let imported = import(&path, &[]);
    let past = mapping(&imported.config, "report-launch");
    assert_eq!(past["enabled"], false, "{}", imported.yaml);
    assert_eq!(
        past["source"]["schedule"]["expression"],
        "cron(0 12 1 6 ? 2019-2020)"
    );
    assert!(
        imported
            .yaml
            .contains("never fires again (no date matches it from now on)"),
        "{}",
        imported.yaml
    );
    assert!(
        imported.summary.contains("never fires again"),
        "{}",
        imported.summary
    );
    let zoned = mapping(&imported.config, "report-zoned");
    assert_eq!(
        zoned["enabled"], false,
        "a zone left to a variable does not hide a cron that is over: {}",
        imported.yaml
    );
    let hourly = mapping(&imported.config, "report-hourly");
    assert!(hourly.get("enabled").is_none(), "{}", imported.yaml);
    validates(&imported);
}

// issue 23's "Left": an event source mapping on an `aws_lambda_alias` got a placeholder target;
// the alias is followed to its function (with a note: Lambda runs the alias's version), and an
// alias naming itself ends.
#[test]
fn a_terraform_mapping_on_an_alias_targets_the_aliased_function() {
    let text = r#"
resource "aws_lambda_function" "worker" {
  function_name = "worker"
  runtime       = "python3.12"
  handler       = "app.handler"
  filename      = "worker.zip"
  role          = "arn:aws:iam::123456789012:role/worker"
}
resource "aws_lambda_alias" "live" {
  name             = "live"
  function_name    = aws_lambda_function.worker.function_name
  function_version = "3"
}
resource "aws_lambda_alias" "loop" {
  name          = "loop"
  function_name = aws_lambda_alias.loop.arn
}
resource "aws_sqs_queue" "jobs" { name = "jobs" }
resource "aws_lambda_event_source_mapping" "jobs" {
  event_source_arn = aws_sqs_queue.jobs.arn
  function_name    = aws_lambda_alias.live.arn
}
resource "aws_lambda_event_source_mapping" "looped" {
  event_source_arn = aws_sqs_queue.jobs.arn
  function_name    = aws_lambda_alias.loop.arn
}
resource "aws_cloudwatch_event_rule" "hourly" {
  schedule_expression = "rate(1 hour)"
}
resource "aws_cloudwatch_event_target" "hourly" {
  rule = aws_cloudwatch_event_rule.hourly.name
  arn  = aws_lambda_alias.live.arn
}
"#;
    let (code, yaml, summary) = import_text("main.tf", text);
    assert_eq!(code, Some(0), "{summary}");
    let config: Json = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let jobs = mapping(&config, "worker-jobs");
    assert_eq!(jobs["target"], "worker", "{yaml}");
    assert!(
        config["targets"]["worker"]["lambda_runtime"]["command"]
            .to_string()
            .contains("awslambdaric"),
        "{yaml}"
    );
    assert!(
        summary.contains("alias live") && summary.contains("sluice runs function worker"),
        "{summary}"
    );
    let hourly = config["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["source"]["schedule"].is_object())
        .unwrap_or_else(|| panic!("the schedule on the alias: {yaml}"));
    assert_eq!(hourly["target"], "worker", "{yaml}");
    assert_eq!(
        config["mappings"].as_array().unwrap().len(),
        3,
        "the looped alias still gives its mapping: {yaml}"
    );
    assert!(
        !summary.contains("alias loop"),
        "a placeholder is not said to be the alias's function: {summary}"
    );
}

// issue 23 names "aws_s3_bucket_notification with its queue": a bucket notifying a queue that a
// mapping reads is noted on that mapping (the function gets SQS messages carrying S3 events, as
// in Lambda); one notifying a queue nothing here reads is listed as not imported.
#[test]
fn a_terraform_bucket_notification_to_a_queue_is_noted_on_the_mapping_reading_it() {
    let text = r#"
resource "aws_lambda_function" "thumbs" {
  function_name = "thumbs"
  runtime       = "nodejs20.x"
  handler       = "index.handler"
  filename      = "thumbs.zip"
  role          = "arn:aws:iam::123456789012:role/thumbs"
}
resource "aws_sqs_queue" "uploads" { name = "uploads" }
resource "aws_sqs_queue" "audit" { name = "audit" }
resource "aws_s3_bucket_notification" "photos" {
  bucket = "photos"
  queue {
    queue_arn     = aws_sqs_queue.uploads.arn
    events        = ["s3:ObjectCreated:*"]
    filter_suffix = ".jpg"
  }
  queue {
    queue_arn = aws_sqs_queue.audit.arn
    events    = ["s3:ObjectRemoved:*"]
  }
}
resource "aws_s3_bucket_notification" "scans" {
  bucket = "scans"
  queue {
    queue_arn     = aws_sqs_queue.uploads.arn
    events        = ["s3:ObjectCreated:Put"]
    filter_prefix = "incoming/"
  }
}
resource "aws_lambda_event_source_mapping" "uploads" {
  event_source_arn = aws_sqs_queue.uploads.arn
  function_name    = aws_lambda_function.thumbs.arn
  batch_size       = 5
}
"#;
    let (code, yaml, summary) = import_text("main.tf", text);
    assert_eq!(code, Some(0), "{summary}");
    let config: Json = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let uploads = mapping(&config, "thumbs-uploads");
    assert!(uploads["source"]["sqs"].is_object(), "{yaml}");
    assert_eq!(uploads["source"]["sqs"]["batch_size"], 5);
    assert!(
        yaml.contains("# bucket photos sends s3:ObjectCreated:*, suffix .jpg here"),
        "{yaml}"
    );
    assert!(
        yaml.contains("bucket scans sends s3:ObjectCreated:Put, prefix incoming/ here"),
        "both buckets sending to the queue are noted: {yaml}"
    );
    assert!(
        summary.contains("queue[1]") && summary.contains("which no event source mapping"),
        "{summary}"
    );
    assert_eq!(config["mappings"].as_array().unwrap().len(), 1, "{yaml}");
}
