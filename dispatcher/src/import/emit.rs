//! Writes a [`Plan`] as a sluice config: one target per function, one mapping per event source,
//! every setting the files give carried over, and a comment beside each value that needs a
//! variable or where sluice's default differs from Lambda's. The one place that knows how
//! Lambda's settings map onto sluice's keys.

use super::{
    AsyncConfig, Dest, Event, Format, Function, Plan, Settings, Source, Summary, Val, Vars, kebab,
};
use crate::runtime::schedule::expression::Schedule;
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::path::Path;

/// Column comments start at, when the value leaves room.
const COMMENT_COLUMN: usize = 44;

struct Writer {
    out: String,
    /// The output without its comments: what sluice reads, so what needs a value.
    values: String,
    vars: Vars,
    summary: Summary,
}

/// The name a function is deployed as (its first alias, sluice text), else its name in the
/// files.
fn deployed_name(function: &Function) -> Val {
    match function.aliases.first() {
        Some(alias) => Val::Expr(alias.clone()),
        None => Val::str(&function.name),
    }
}

/// Comment text on one line: names from the files (logical ids, event names) may hold line
/// breaks, which would otherwise end the comment and put the rest into the YAML.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Writer {
    fn line(&mut self, indent: usize, text: &str, comment: Option<&str>) {
        self.values.push_str(text);
        self.values.push('\n');
        let mut line = format!("{:indent$}{text}", "");
        if let Some(comment) = comment {
            let pad = COMMENT_COLUMN.saturating_sub(line.len()).max(2);
            line.push_str(&format!("{:pad$}# {}", "", one_line(comment)));
        }
        self.out.push_str(line.trim_end());
        self.out.push('\n');
    }

    fn comment(&mut self, indent: usize, text: &str) {
        self.out
            .push_str(&format!("{:indent$}# {}\n", "", one_line(text)));
    }

    /// A note for the summary and as a comment at `indent`.
    fn unsupported(&mut self, indent: usize, text: String) {
        self.comment(indent, &format!("no equivalent: {text}"));
        self.summary.unsupported.push(text);
    }
}

/// A string value, quoted.
fn quoted(val: &Val) -> String {
    match val.text() {
        Some(text) => serde_json::to_string(&text).expect("a string serializes"),
        None => flow(val),
    }
}

/// A JSON value as a YAML flow node (JSON is YAML): literal `${` escaped, variables kept.
fn json_flow(json: &Json) -> String {
    super::render_json(json)
}

fn flow(val: &Val) -> String {
    match val {
        Val::Lit(json) => json_flow(json),
        Val::Expr(text) => serde_json::to_string(text).expect("a string serializes"),
    }
}

/// A number value: the number, or one variable left unquoted so it expands to one. Anything
/// else is quoted (and refused by `validate`): text written bare could be more YAML.
fn number(val: &Val) -> String {
    match (val.as_i64(), val) {
        (Some(n), _) => n.to_string(),
        (None, Val::Expr(text)) if is_bare_var(val) => text.clone(),
        (None, other) => quoted(other),
    }
}

/// Seconds as a sluice duration.
fn seconds(val: &Val) -> String {
    match (val.as_i64(), val) {
        (Some(n), _) => format!("{n}s"),
        (None, Val::Expr(text)) => {
            serde_json::to_string(&format!("{text}s")).expect("a string serializes")
        }
        (None, other) => quoted(other),
    }
}

fn boolean(val: &Val) -> String {
    match (val.as_bool(), val) {
        (Some(b), _) => b.to_string(),
        (None, Val::Expr(text)) if is_bare_var(val) => text.clone(),
        (None, other) => quoted(other),
    }
}

/// Applies `f` to the text of `val`, keeping it literal when it was.
fn map_text(val: &Val, f: impl Fn(&str) -> Option<String>) -> Option<Val> {
    match val {
        Val::Lit(Json::String(s)) => f(s).map(Val::str),
        Val::Expr(text) => f(text).map(Val::Expr),
        _ => None,
    }
}

/// The fields of an ARN (`arn:partition:service:region:account:resource`).
fn arn_parts(text: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = text.splitn(6, ':');
    (parts.next()? == "arn").then_some(())?;
    let _partition = parts.next()?;
    let service = parts.next()?;
    let region = parts.next()?;
    let account = parts.next()?;
    let resource = parts.next()?;
    Some((service, region, account, resource))
}

fn arn_service(val: &Val) -> Option<String> {
    let text = val.text()?;
    arn_parts(&text).map(|(service, ..)| service.to_owned())
}

/// Whether the value is one variable and nothing else.
fn is_bare_var(val: &Val) -> bool {
    let Val::Expr(text) = val else {
        return false;
    };
    // `${NAME}`, or `${NAME:-default}` with a plain default (`${RC:-3}`): nothing in either
    // can end the scalar or start more YAML.
    text.strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .is_some_and(|inner| {
            let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && default
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        })
}

/// A queue URL for a queue ARN (or the URL itself).
fn queue_url(val: &Val, vars: &mut Vars) -> Val {
    if let Some(url) = map_text(val, |text| {
        let (service, region, account, name) = arn_parts(text)?;
        let suffix = if text.starts_with("arn:aws-cn:") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        (service == "sqs").then(|| format!("https://sqs.{region}.{suffix}/{account}/{name}"))
    }) {
        return url;
    }
    if is_bare_var(val) {
        vars.clarify(
            val,
            "as a queue URL: https://sqs.<region>.amazonaws.com/<account>/<name>",
        );
    }
    val.clone()
}

/// A bucket name for a bucket ARN (or the name itself).
fn bucket_name(val: &Val) -> Val {
    map_text(val, |text| {
        let (_, bucket) = text.strip_prefix("arn:")?.split_once(":s3:::")?;
        Some(bucket.to_owned())
    })
    .unwrap_or_else(|| val.clone())
}

enum DestOut {
    Sqs(Val),
    S3(Val),
    Kafka(Val),
    Unsupported(String),
}

fn destination(dest: &Dest, vars: &mut Vars) -> DestOut {
    let kind = dest
        .kind
        .clone()
        .map(|k| k.to_ascii_uppercase())
        .or_else(|| arn_service(&dest.arn).map(|s| s.to_ascii_uppercase()))
        .or_else(|| {
            let text = dest.arn.text()?;
            if text.starts_with("https://sqs.") {
                Some("SQS".into())
            } else {
                text.strip_prefix("kafka://").map(|_| "KAFKA".into())
            }
        });
    match kind.as_deref() {
        Some("SQS") | None => DestOut::Sqs(queue_url(&dest.arn, vars)),
        Some("S3") => DestOut::S3(bucket_name(&dest.arn)),
        Some("KAFKA") => DestOut::Kafka(
            map_text(&dest.arn, |t| t.strip_prefix("kafka://").map(str::to_owned))
                .unwrap_or_else(|| dest.arn.clone()),
        ),
        Some(other) => DestOut::Unsupported(format!(
            "{}: a {} destination ({}); sluice sends to SQS, S3 or (for Kafka) a topic",
            dest.origin,
            match other {
                "LAMBDA" => "Lambda",
                "EVENTS" | "EVENTBRIDGE" => "EventBridge",
                "SNS" => "SNS",
                _ => other,
            },
            dest.arn.text().unwrap_or_default()
        )),
    }
}

/// Writes `key: {sqs: ...}` for a destination, or notes why it cannot.
fn write_dest(
    w: &mut Writer,
    indent: usize,
    key: &str,
    dest: &Dest,
    comment: Option<&str>,
) -> bool {
    let (kind, field, value) = match destination(dest, &mut w.vars) {
        DestOut::Sqs(url) => ("sqs", "queue_url", url),
        DestOut::S3(bucket) => ("s3", "bucket", bucket),
        DestOut::Kafka(topic) => ("kafka", "topic", topic),
        DestOut::Unsupported(text) => {
            w.unsupported(indent, text);
            return false;
        }
    };
    w.line(
        indent,
        &format!("{key}: {{ {kind}: {{ {field}: {} }} }}", quoted(&value)),
        comment,
    );
    true
}

/// The command that runs a function's runtime interface client, for its runtime.
fn runtime_command(runtime: &str, handler: &str) -> Option<(Vec<String>, &'static str)> {
    let words = |ws: &[&str]| ws.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    let with_handler = |mut ws: Vec<String>| {
        ws.push(handler.to_owned());
        ws
    };
    if runtime.starts_with("python") {
        Some((
            with_handler(words(&["python3", "-m", "awslambdaric"])),
            "pip install awslambdaric",
        ))
    } else if runtime.starts_with("nodejs") {
        Some((
            with_handler(words(&["npx", "aws-lambda-ric"])),
            "npm install aws-lambda-ric",
        ))
    } else if runtime.starts_with("ruby") {
        Some((
            with_handler(words(&["aws_lambda_ric"])),
            "gem install aws_lambda_ric",
        ))
    } else if runtime.starts_with("java") {
        Some((
            with_handler(words(&[
                "java",
                "-cp",
                "./*:./lib/*",
                "com.amazonaws.services.lambda.runtime.api.client.AWSLambda",
            ])),
            "add com.amazonaws:aws-lambda-java-runtime-interface-client to the class path",
        ))
    } else if runtime.starts_with("provided") || runtime == "go1.x" {
        Some((words(&["./bootstrap"]), "the function's own bootstrap"))
    } else {
        None
    }
}

pub(super) fn write(plan: Plan, path: &Path, format: Format) -> (String, Summary) {
    let Plan {
        functions,
        vars,
        unsupported,
    } = plan;
    let mut w = Writer {
        out: String::new(),
        values: String::new(),
        vars,
        summary: Summary {
            unsupported,
            ..Summary::default()
        },
    };
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let mut body = Writer {
        out: String::new(),
        values: String::new(),
        vars: std::mem::take(&mut w.vars),
        summary: std::mem::take(&mut w.summary),
    };
    let mut target_names = BTreeSet::new();
    let mut mapping_names = BTreeSet::new();
    let mut targets = Vec::new();
    for function in &functions {
        let name = unique(&mut target_names, kebab(&function.name));
        targets.push(name);
    }
    body.line(0, "targets:", None);
    for (function, target) in functions.iter().zip(&targets) {
        write_target(&mut body, function, target);
    }
    body.line(0, "mappings:", None);
    let mut mappings = 0;
    for (function, target) in functions.iter().zip(&targets) {
        for event in &function.events {
            let name = unique(
                &mut mapping_names,
                format!("{target}-{}", kebab(&event.name)),
            );
            write_mapping(&mut body, function, target, event, &name);
            mappings += 1;
        }
    }
    if mappings == 0 {
        body.out.truncate(body.out.len() - "mappings:\n".len());
    }
    // Functions without event sources are served through the Invoke API, with their
    // asynchronous settings.
    // So are functions whose asynchronous settings no mapping uses (only queue and stream
    // events): those settings are for asynchronous invocations, which the Invoke API takes.
    let unmapped: Vec<_> = functions
        .iter()
        .zip(&targets)
        .filter(|(f, _)| {
            let invoke = &f.invoke;
            let has_async = invoke.max_event_age.is_some()
                || invoke.max_retries.is_some()
                || invoke.on_failure.is_some()
                || invoke.on_success.is_some()
                || f.dead_letter.is_some();
            let async_events = f
                .events
                .iter()
                .any(|e| matches!(e.source, Source::S3 { .. } | Source::Schedule { .. }));
            // A function with no reserved concurrency was never invoked on Lambda.
            let throttled = f
                .reserved_concurrency
                .as_ref()
                .is_some_and(|r| r.as_i64() == Some(0));
            !throttled && (f.events.is_empty() || (has_async && !async_events))
        })
        .collect();
    if !unmapped.is_empty() {
        body.line(0, "invoke_api:", None);
        body.line(2, "functions:", None);
        let mut keys = BTreeSet::new();
        for (function, target) in unmapped {
            let deployed = deployed_name(function).text().unwrap_or_default();
            // Two functions deployed under one name (other regions, other providers): each
            // keeps a key of its own.
            let name = unique(&mut keys, deployed.clone());
            if name != deployed {
                body.summary.unsupported.push(format!(
                    "{}: another function is deployed as {deployed}; this one is served as invoke_api.functions.{name}",
                    function.origin
                ));
            }
            body.line(
                4,
                &format!("{}:", quoted(&Val::Expr(name.clone()))),
                Some(if function.events.is_empty() {
                    "no event source in the files: invoked through the Invoke API"
                } else {
                    "its asynchronous settings, for Event invocations through the Invoke API"
                }),
            );
            body.line(6, &format!("target: {target}"), None);
            write_async_settings(&mut body, function, 6, "async");
            body.summary.imported.push(format!(
                "function {} -> invoke_api.functions.{name}",
                function.name
            ));
        }
    }
    body.summary.unsupported.dedup();
    let mut seen = BTreeSet::new();
    body.summary
        .unsupported
        .retain(|line| seen.insert(line.clone()));

    w.comment(
        0,
        &format!("Written by `sluice import` from {file} ({format})."),
    );
    // Only what the output reads: a value resolved on the way and then not used (a stream ARN
    // replaced by its table's name) needs nothing.
    let mut needs = body.vars.into_list();
    needs.retain(|(name, _)| {
        let reference = format!("${{{name}}}");
        body.values
            .match_indices(&reference)
            .any(|(i, _)| !body.values[..i].ends_with('$'))
    });
    if needs.is_empty() {
        w.comment(0, "Every value came from the files.");
    } else {
        w.comment(
            0,
            "Set these in the environment; sluice expands ${VAR} when it loads:",
        );
        for (name, what) in &needs {
            w.comment(0, &format!("  {name}: {what}"));
        }
    }
    w.line(0, "version: 1", None);
    w.out.push_str(&body.out);
    let mut summary = body.summary;
    summary.needs = needs;
    (w.out, summary)
}

fn unique(taken: &mut BTreeSet<String>, name: String) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    candidate
}

fn write_target(w: &mut Writer, function: &Function, target: &str) {
    let runtime = function.runtime.as_ref().and_then(Val::text);
    let handler = function.handler.as_ref().and_then(Val::text);
    let command = match (&runtime, &handler) {
        (Some(runtime), handler) => {
            runtime_command(runtime, handler.as_deref().unwrap_or("handler"))
        }
        _ => None,
    };
    w.line(2, &format!("{target}:"), Some(&function.origin));
    match command {
        Some((command, install)) => {
            let words: Vec<String> = command
                .iter()
                .map(|word| serde_json::to_string(word).expect("a string serializes"))
                .collect();
            w.line(4, "lambda_runtime:", None);
            w.line(
                6,
                &format!("command: [{}]", words.join(", ")),
                Some(&format!(
                    "{}; {install}",
                    runtime.as_deref().unwrap_or_default()
                )),
            );
            if let Some(handler) = &function.handler {
                w.line(6, &format!("handler: {}", quoted(handler)), None);
            }
            w.line(
                6,
                &format!("function_name: {}", quoted(&deployed_name(function))),
                None,
            );
            if let Some(dir) = &function.code_dir {
                w.line(
                    6,
                    &format!("working_dir: {}", quoted(&Val::str(dir))),
                    Some("the function's code, as a path from where `sluice import` ran"),
                );
            }
            write_timeout(w, function);
            if let Some(memory) = &function.memory {
                w.line(6, &format!("memory_size: {}", number(memory)), None);
            }
            match &function.reserved_concurrency {
                Some(reserved) if reserved.as_i64().is_some_and(|n| n > 1_000) => w.line(
                    6,
                    "concurrency: 1000",
                    Some(&format!(
                        "ReservedConcurrentExecutions is {}; sluice keeps at most 1,000 workers per target",
                        number(reserved)
                    )),
                ),
                Some(reserved) if reserved.as_i64().is_some_and(|n| n >= 1) => w.line(
                    6,
                    &format!("concurrency: {}", number(reserved)),
                    Some("ReservedConcurrentExecutions"),
                ),
                Some(reserved) if reserved.as_i64() == Some(0) => w.line(
                    6,
                    "concurrency: 1",
                    Some("ReservedConcurrentExecutions is 0: the function is throttled, and its mappings are written disabled"),
                ),
                Some(reserved @ Val::Expr(_)) if is_bare_var(reserved) => w.line(
                    6,
                    &format!("concurrency: {}", number(reserved)),
                    Some("ReservedConcurrentExecutions (1..=1000)"),
                ),
                _ => w.line(
                    6,
                    "concurrency: 5",
                    Some("Lambda runs as many copies as events need; sluice keeps this many warm workers (its default is 1)"),
                ),
            }
            write_env(w, function);
            w.summary.imported.push(format!(
                "function {} ({}) -> target {target} (lambda_runtime: {})",
                function.name,
                function.origin,
                command.join(" ")
            ));
        }
        None => {
            let url = w.vars.need(
                &format!("{target}_URL"),
                format!(
                    "the URL of an HTTP server running function {} (sluice POSTs each event to it)",
                    function.name
                ),
            );
            let why = match &runtime {
                Some(runtime) => {
                    format!("no runtime interface client command is known for {runtime}")
                }
                None => {
                    "the files name no Runtime (a container image, or a runtime left to a default)"
                        .to_owned()
                }
            };
            w.line(4, "http:", Some(&why));
            w.line(6, &format!("url: {}", quoted(&url)), None);
            write_timeout(w, function);
            w.summary.imported.push(format!(
                "function {} ({}) -> target {target} (http placeholder: {why})",
                function.name, function.origin
            ));
        }
    }
}

fn write_timeout(w: &mut Writer, function: &Function) {
    match &function.timeout {
        Some(timeout) => w.line(
            6,
            &format!("timeout: {}", seconds(timeout)),
            Some("Timeout"),
        ),
        None => w.line(
            6,
            &format!("timeout: {}s", function.default_timeout),
            Some("Lambda's default Timeout; sluice's own default is 30s"),
        ),
    }
}

fn write_env(w: &mut Writer, function: &Function) {
    if function.env.is_empty() {
        return;
    }
    w.line(6, "env:", None);
    for (key, value) in &function.env {
        let value = match value {
            Val::Lit(Json::String(_)) | Val::Expr(_) => quoted(value),
            Val::Lit(other) => serde_json::to_string(&other.to_string()).expect("serializes"),
        };
        w.line(
            8,
            &format!(
                "{}: {value}",
                serde_json::to_string(key).expect("serializes")
            ),
            None,
        );
    }
}

/// A starting timestamp: Unix seconds (CloudFormation's is a Double: its fraction is dropped,
/// sluice reads whole seconds) or RFC 3339, quoted.
fn timestamp_text(val: &Val) -> String {
    match val {
        Val::Lit(Json::Number(n)) => {
            let seconds = n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64));
            quoted(&Val::str(
                seconds.map(|s| s.to_string()).unwrap_or_default(),
            ))
        }
        other => quoted(other),
    }
}

/// Lambda's names for starting positions, as sluice writes them.
fn starting_position(val: &Val) -> String {
    match val.as_str().map(str::to_ascii_uppercase).as_deref() {
        Some("TRIM_HORIZON") => "trim_horizon".into(),
        Some("LATEST") => "latest".into(),
        Some("AT_TIMESTAMP") => "at_timestamp".into(),
        _ => quoted(val),
    }
}

fn write_mapping(w: &mut Writer, function: &Function, target: &str, event: &Event, name: &str) {
    let s = &event.settings;
    w.line(2, &format!("- name: {name}"), Some(&event.origin));
    w.line(4, &format!("target: {target}"), None);
    let throttled = function
        .reserved_concurrency
        .as_ref()
        .is_some_and(|r| r.as_i64() == Some(0));
    let disabled_because = s
        .disabled_because
        .clone()
        .or_else(|| schedule_never_fires(event));
    if let Some(reason) = &disabled_because {
        w.line(4, "enabled: false", Some("see below"));
        w.comment(4, reason);
        w.summary.unsupported.push(reason.clone());
    } else if throttled {
        w.line(
            4,
            "enabled: false",
            Some("ReservedConcurrentExecutions is 0: Lambda never invoked the function"),
        );
    } else if let Some(enabled) = &s.enabled
        && enabled.as_bool() != Some(true)
    {
        w.line(
            4,
            &format!("enabled: {}", boolean(enabled)),
            Some(if enabled.as_bool() == Some(false) {
                "disabled in the files"
            } else {
                "Enabled"
            }),
        );
    }
    w.line(4, "source:", None);
    let kind = match &event.source {
        Source::Sqs { queue } => {
            write_sqs(w, s, queue);
            "sqs"
        }
        Source::DynamoDb { stream, table } => {
            w.line(6, "dynamodb_stream:", None);
            match (table, stream) {
                (Some(table), _) => w.line(8, &format!("table: {}", quoted(table)), None),
                (None, Some(stream)) => {
                    if is_bare_var(stream) {
                        w.vars.clarify(stream, "the table's stream ARN");
                    }
                    w.line(8, &format!("stream_arn: {}", quoted(stream)), None)
                }
                (None, None) => {
                    let arn = w.vars.need(
                        &format!("{name}_stream_arn"),
                        format!("the DynamoDB stream ARN that {} reads", event.origin),
                    );
                    w.line(8, &format!("stream_arn: {}", quoted(&arn)), None)
                }
            }
            write_stream_settings(w, s);
            "dynamodb_stream"
        }
        Source::Kinesis { stream, consumer } => {
            w.line(6, "kinesis:", None);
            let text = stream.text().unwrap_or_default();
            let (stream, from_arn) = match text.split_once("/consumer/") {
                Some((stream_part, consumer_part)) => {
                    let stream = map_text(stream, |_| Some(stream_part.to_owned()))
                        .unwrap_or_else(|| stream.clone());
                    let name = consumer_part.split(':').next().unwrap_or(consumer_part);
                    (stream, Some(Val::str(name)))
                }
                None => (stream.clone(), None),
            };
            if text.starts_with("arn:") || is_bare_var(&stream) || matches!(stream, Val::Expr(_)) {
                w.line(8, &format!("stream_arn: {}", quoted(&stream)), None);
            } else {
                w.line(8, &format!("stream_name: {}", quoted(&stream)), None);
            }
            let consumer = consumer.clone().or(from_arn);
            if let Some(consumer) = consumer {
                let name = map_text(&consumer, |t| {
                    t.split("/consumer/")
                        .nth(1)
                        .map(|c| c.split(':').next().unwrap_or(c).to_owned())
                })
                .unwrap_or(consumer);
                w.line(
                    8,
                    &format!("consumer: {{ name: {} }}", quoted(&name)),
                    Some("enhanced fan-out"),
                );
            }
            write_stream_settings(w, s);
            "kinesis"
        }
        Source::Msk { cluster, topics } => {
            let cluster_name = cluster
                .text()
                .and_then(|t| t.split('/').nth(1).map(str::to_owned))
                .unwrap_or_else(|| event.name.clone());
            let bootstrap = w.vars.need(
                &format!("{cluster_name}_bootstrap_servers"),
                format!(
                    "the bootstrap brokers of MSK cluster {} (aws kafka get-bootstrap-brokers --cluster-arn ...)",
                    cluster.text().unwrap_or_default()
                ),
            );
            write_kafka(w, s, &bootstrap, topics, Some(cluster), name);
            "kafka"
        }
        Source::Kafka { bootstrap, topics } => {
            write_kafka(w, s, bootstrap, topics, None, name);
            "kafka"
        }
        Source::S3 {
            bucket,
            events,
            prefix,
            suffix,
        } => {
            let bucket_text = bucket_name(bucket).text().unwrap_or_default();
            let queue = w.vars.need(
                &format!("{}_notifications_queue_url", kebab(&bucket_text)),
                format!(
                    "the URL of an SQS queue that bucket {bucket_text} notifies of its events: Lambda was invoked by the bucket, sluice reads its notifications from a queue (add a queue configuration to the bucket's notifications)"
                ),
            );
            w.line(6, "s3:", None);
            w.line(8, &format!("queue_url: {}", quoted(&queue)), None);
            if !events.is_empty() {
                let list: Vec<String> = events.iter().map(quoted).collect();
                w.line(8, &format!("events: [{}]", list.join(", ")), None);
            }
            if let Some(prefix) = prefix {
                w.line(8, &format!("prefix: {}", quoted(prefix)), None);
            }
            if let Some(suffix) = suffix {
                w.line(8, &format!("suffix: {}", quoted(suffix)), None);
            }
            "s3"
        }
        Source::Schedule {
            expression,
            timezone,
            input,
        } => {
            w.line(6, "schedule:", None);
            w.line(8, &format!("expression: {}", quoted(expression)), None);
            if let Some(timezone) = timezone {
                w.line(8, &format!("timezone: {}", quoted(timezone)), None);
            }
            if let Some(input) = input {
                w.line(8, &format!("input: {}", json_flow(input)), None);
            }
            "schedule"
        }
    };
    if s.report_batch_item_failures {
        w.line(
            4,
            "report_batch_item_failures: true",
            Some("FunctionResponseTypes: [ReportBatchItemFailures]"),
        );
    }
    if !s.filters.is_empty() {
        w.line(4, "filters:", Some("FilterCriteria"));
        for filter in &s.filters {
            w.line(6, &format!("- {}", json_flow(filter)), None);
        }
    }
    match kind {
        "s3" | "schedule" => write_async_policy(w, function, kind),
        "sqs" => {}
        _ => write_stream_retry(w, s, name, &event.origin),
    }
    w.summary
        .imported
        .push(format!("{} -> mapping {name} ({kind})", event.origin));
}

/// Why a literal cron is kept disabled: no date matches it from now on (its years are over, a
/// day that does not exist). EventBridge keeps such a rule and never fires it; enabled, sluice
/// refuses it (`validate` says it never fires).
fn schedule_never_fires(event: &Event) -> Option<String> {
    let Source::Schedule {
        expression,
        timezone,
        ..
    } = &event.source
    else {
        return None;
    };
    let expression = expression.as_str()?.trim();
    // A zone the files leave to a variable: a cron no date matches from now on matches none in
    // any zone (UTC stands in, give or take the day at either end of its years).
    let timezone = timezone.as_ref().and_then(Val::as_str);
    let schedule = Schedule::parse(expression, timezone)
        .or_else(|_| Schedule::parse(expression, None))
        .ok()?;
    schedule
        .cron_is_over(jiff::Timestamp::now())
        .then(|| {
            format!(
                "{}: {expression} never fires again (no date matches it from now on); kept disabled, as EventBridge keeps the rule",
                event.origin
            )
        })
}

fn write_sqs(w: &mut Writer, s: &Settings, queue: &Val) {
    let url = queue_url(queue, &mut w.vars);
    w.line(6, "sqs:", None);
    w.line(
        8,
        &format!("queue_url: {}", quoted(&url)),
        Some("the queue's RedrivePolicy still dead-letters after its maxReceiveCount"),
    );
    if let Some(note) = s.notes.get("queue") {
        w.comment(8, note);
    }
    write_batching(w, s);
    match &s.max_concurrency {
        Some(max) => w.line(
            8,
            &format!("max_concurrency: {}", number(max)),
            Some("ScalingConfig.MaximumConcurrency"),
        ),
        None => w.line(
            8,
            "max_concurrency: 5",
            Some("Lambda scales an SQS mapping to 1,250 concurrent batches; sluice runs this many (its default)"),
        ),
    }
}

/// Batch size and window, as every kind of mapping has them.
fn write_batching(w: &mut Writer, s: &Settings) {
    if let Some(batch) = &s.batch_size {
        w.line(
            8,
            &format!("batch_size: {}", number(batch)),
            s.notes.get("batch_size").map(String::as_str),
        );
    }
    if let Some(window) = &s.window {
        w.line(
            8,
            &format!("max_batching_window: {}", seconds(window)),
            None,
        );
    }
}

/// A stream's or topic's starting position and batching (shared by streams and Kafka).
fn write_position_and_batching(w: &mut Writer, s: &Settings) {
    match &s.starting_position {
        Some(position) => w.line(
            8,
            &format!("starting_position: {}", starting_position(position)),
            s.notes.get("starting_position").map(String::as_str),
        ),
        None => w.line(
            8,
            "starting_position: latest",
            Some("StartingPosition is required by Lambda; the files gave none"),
        ),
    }
    if let Some(timestamp) = &s.starting_timestamp {
        w.line(
            8,
            &format!("starting_timestamp: {}", timestamp_text(timestamp)),
            None,
        );
    }
    write_batching(w, s);
}

fn write_stream_settings(w: &mut Writer, s: &Settings) {
    write_position_and_batching(w, s);
    if let Some(factor) = &s.parallelization {
        w.line(
            8,
            &format!("parallelization_factor: {}", number(factor)),
            None,
        );
    }
    if let Some(window) = &s.tumbling_window
        && window.as_i64() != Some(0)
    {
        let parallel = s
            .parallelization
            .as_ref()
            .is_some_and(|f| f.as_i64() != Some(1));
        if parallel {
            // sluice keeps one window state per shard (semantics.md, tumbling windows).
            w.unsupported(
                8,
                format!(
                    "tumbling window of {} with parallelization_factor {}: sluice keeps window state per shard and needs factor 1; the window is left out",
                    seconds(window),
                    number(s.parallelization.as_ref().expect("checked"))
                ),
            );
        } else {
            w.line(8, &format!("tumbling_window: {}", seconds(window)), None);
        }
    }
}

fn write_kafka(
    w: &mut Writer,
    s: &Settings,
    bootstrap: &Val,
    topics: &[Val],
    cluster: Option<&Val>,
    mapping: &str,
) {
    w.line(6, "kafka:", None);
    w.line(
        8,
        &format!("bootstrap_servers: {}", quoted(bootstrap)),
        None,
    );
    let list: Vec<String> = topics.iter().map(quoted).collect();
    w.line(8, &format!("topics: [{}]", list.join(", ")), None);
    match &s.group_id {
        Some(group) => w.line(8, &format!("group_id: {}", quoted(group)), Some("ConsumerGroupId")),
        None => w.line(
            8,
            &format!("group_id: {mapping}"),
            Some("Lambda's group was the mapping's UUID: set that to go on from its committed offsets"),
        ),
    }
    write_position_and_batching(w, s);
    if let Some(cluster) = cluster {
        w.line(8, &format!("msk_cluster_arn: {}", quoted(cluster)), None);
    }
    let mut properties: Vec<(String, Val, Option<String>)> = Vec::new();
    let mut auth: Option<String> = None;
    for (kind, uri) in &s.access {
        let secret = uri.text().unwrap_or_default();
        let secret_name = secret.rsplit(':').next().unwrap_or(&secret).to_owned();
        match kind.as_str() {
            "SASL_SCRAM_512_AUTH" | "SASL_SCRAM_256_AUTH" => {
                let mechanism = if kind.contains("512") {
                    "SCRAM-SHA-512"
                } else {
                    "SCRAM-SHA-256"
                };
                let user = w.vars.need(
                    &format!("{secret_name}_username"),
                    format!("the username in Secrets Manager secret {secret}"),
                );
                let password = w.vars.need(
                    &format!("{secret_name}_password"),
                    format!("the password in Secrets Manager secret {secret}"),
                );
                auth = Some(format!(
                    "auth: {{ sasl_scram: {{ mechanism: {mechanism}, username: {}, password: {} }} }}",
                    quoted(&user),
                    quoted(&password)
                ));
            }
            "BASIC_AUTH" => {
                let user = w.vars.need(
                    &format!("{secret_name}_username"),
                    format!("the username in Secrets Manager secret {secret}"),
                );
                let password = w.vars.need(
                    &format!("{secret_name}_password"),
                    format!("the password in Secrets Manager secret {secret}"),
                );
                properties.push(("security.protocol".into(), Val::str("SASL_SSL"), None));
                properties.push((
                    "sasl.mechanism".into(),
                    Val::str("PLAIN"),
                    Some("BASIC_AUTH is SASL/PLAIN".into()),
                ));
                properties.push(("sasl.username".into(), user, None));
                properties.push(("sasl.password".into(), password, None));
            }
            "CLIENT_CERTIFICATE_TLS_AUTH" => {
                let certificate = w.vars.need(
                    &format!("{secret_name}_certificate_file"),
                    format!("a PEM file holding the certificate chain in Secrets Manager secret {secret}"),
                );
                let key = w.vars.need(
                    &format!("{secret_name}_key_file"),
                    format!(
                        "a PEM file holding the private key in Secrets Manager secret {secret}"
                    ),
                );
                auth = Some(format!(
                    "auth: {{ mtls: {{ certificate: {}, key: {} }} }}",
                    quoted(&certificate),
                    quoted(&key)
                ));
            }
            "SERVER_ROOT_CA_CERTIFICATE" => {
                let ca = w.vars.need(
                    &format!("{secret_name}_ca_file"),
                    format!(
                        "a PEM file holding the brokers' root CA in Secrets Manager secret {secret}"
                    ),
                );
                properties.push(("ssl.ca.location".into(), ca, None));
            }
            "VPC_SUBNET" | "VPC_SECURITY_GROUP" => {}
            other => w.unsupported(
                8,
                format!("{mapping}: source access configuration {other} ({secret})"),
            ),
        }
    }
    match auth {
        Some(auth) => w.line(8, &auth, Some("SourceAccessConfigurations")),
        None if cluster.is_some() && properties.is_empty() => w.line(
            8,
            "auth: { msk_iam: {} }",
            Some("no SASL secret: Lambda used IAM (drop this for an unauthenticated listener)"),
        ),
        None => {}
    }
    if !properties.is_empty() {
        w.line(8, "properties:", None);
        for (key, value, comment) in properties {
            w.line(
                10,
                &format!("{key}: {}", quoted(&value)),
                comment.as_deref(),
            );
        }
    }
}

fn write_stream_retry(w: &mut Writer, s: &Settings, mapping: &str, origin: &str) {
    let retries = s.max_retries.as_ref().filter(|v| v.as_i64() != Some(-1));
    let age = s.max_record_age.as_ref().filter(|v| v.as_i64() != Some(-1));
    let bisect = s.bisect.as_ref().filter(|v| v.as_bool() != Some(false));
    if retries.is_some() || age.is_some() || bisect.is_some() {
        w.line(4, "retry:", None);
        if let Some(retries) = retries {
            w.line(6, &format!("max_retry_attempts: {}", number(retries)), None);
        }
        if let Some(age) = age {
            w.line(6, &format!("max_record_age: {}", seconds(age)), None);
        }
        if let Some(bisect) = bisect {
            w.line(6, &format!("bisect_on_error: {}", boolean(bisect)), None);
        }
    }
    let written = match &s.on_failure {
        Some(dest) => write_dest(
            w,
            4,
            "on_failure",
            dest,
            Some("DestinationConfig.OnFailure"),
        ),
        None => false,
    };
    if !written && (retries.is_some() || age.is_some()) {
        // Lambda drops what exhausts its retries when no destination is set; sluice wants
        // somewhere to put it.
        let queue = w.vars.need(
            &format!("{mapping}_failure_queue_url"),
            format!(
                "the URL of a queue for records of {origin} that exhaust their retries: Lambda discarded them (no OnFailure destination sluice can write to), sluice needs a destination when retries are bounded"
            ),
        );
        w.line(
            4,
            &format!("on_failure: {{ sqs: {{ queue_url: {} }} }}", quoted(&queue)),
            Some("no OnFailure destination sluice can write to"),
        );
    }
}

fn write_async_policy(w: &mut Writer, function: &Function, kind: &str) {
    write_async_settings(w, function, 4, "retry");
    if kind == "schedule" {
        w.comment(
            4,
            "failures follow the function's asynchronous policy, as Lambda's do once EventBridge has delivered the event",
        );
    }
}

/// A function's asynchronous settings at `indent`: its retries under `retry_key` (a mapping's
/// `retry`, an Invoke API function's `async`), then its destinations.
fn write_async_settings(w: &mut Writer, function: &Function, indent: usize, retry_key: &str) {
    let AsyncConfig {
        max_event_age,
        max_retries,
        on_success,
        on_failure,
    } = &function.invoke;
    if max_event_age.is_some() || max_retries.is_some() {
        w.line(indent, &format!("{retry_key}:"), Some("EventInvokeConfig"));
        if let Some(retries) = max_retries {
            w.line(
                indent + 2,
                &format!("max_retry_attempts: {}", number(retries)),
                None,
            );
        }
        if let Some(age) = max_event_age {
            w.line(
                indent + 2,
                &format!("max_event_age: {}", seconds(age)),
                None,
            );
        }
    }
    match (on_failure, &function.dead_letter) {
        (Some(dest), dlq) => {
            write_dest(
                w,
                indent,
                "on_failure",
                dest,
                Some("EventInvokeConfig OnFailure"),
            );
            if let Some(dlq) = dlq {
                w.unsupported(
                    indent,
                    format!(
                        "{}: a dead-letter queue beside an OnFailure destination ({}); sluice sends failures to on_failure only",
                        dlq.origin,
                        dlq.arn.text().unwrap_or_default()
                    ),
                );
            }
        }
        (None, Some(dlq)) => {
            write_dest(
                w,
                indent,
                "on_failure",
                dlq,
                Some(
                    "the function's DeadLetterQueue: sluice writes its failure record there, the event inside",
                ),
            );
        }
        (None, None) => {}
    }
    if let Some(dest) = on_success {
        write_dest(
            w,
            indent,
            "on_success",
            dest,
            Some("EventInvokeConfig OnSuccess"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_arns_become_urls_literal_or_not() {
        let mut vars = Vars::default();
        assert_eq!(
            queue_url(
                &Val::str("arn:aws:sqs:eu-west-1:123456789012:orders"),
                &mut vars
            ),
            Val::str("https://sqs.eu-west-1.amazonaws.com/123456789012/orders")
        );
        assert_eq!(
            queue_url(
                &Val::Expr("arn:aws:sqs:${AWS_REGION}:${AWS_ACCOUNT_ID}:orders".into()),
                &mut vars
            ),
            Val::Expr("https://sqs.${AWS_REGION}.amazonaws.com/${AWS_ACCOUNT_ID}/orders".into())
        );
        let param = vars.need("QueueArn", "template parameter QueueArn");
        assert_eq!(queue_url(&param, &mut vars), param);
        assert!(vars.into_list()[0].1.contains("as a queue URL"));
    }

    #[test]
    fn destinations_by_type_or_arn() {
        let mut vars = Vars::default();
        let dest = |arn: &str, kind: Option<&str>| Dest {
            arn: Val::str(arn),
            kind: kind.map(str::to_owned),
            origin: "test".into(),
        };
        assert!(matches!(
            destination(&dest("arn:aws:s3:::failures", None), &mut vars),
            DestOut::S3(Val::Lit(Json::String(b))) if b == "failures"
        ));
        assert!(matches!(
            destination(&dest("arn:aws:sns:us-east-1:1:topic", None), &mut vars),
            DestOut::Unsupported(_)
        ));
        assert!(matches!(
            destination(&dest("arn:aws:sqs:us-east-1:1:dlq", Some("SQS")), &mut vars),
            DestOut::Sqs(_)
        ));
    }

    #[test]
    fn runtimes_map_to_their_interface_clients() {
        assert_eq!(
            runtime_command("python3.12", "app.handler").unwrap().0,
            ["python3", "-m", "awslambdaric", "app.handler"]
        );
        assert_eq!(
            runtime_command("nodejs20.x", "index.handler").unwrap().0,
            ["npx", "aws-lambda-ric", "index.handler"]
        );
        assert_eq!(
            runtime_command("provided.al2023", "x").unwrap().0,
            ["./bootstrap"]
        );
        assert!(runtime_command("dotnet8", "x").is_none());
    }
}
