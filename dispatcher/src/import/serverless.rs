//! A Serverless Framework `serverless.yml` read into a [`Plan`].
//!
//! Variables are resolved where the file can say them: `${self:...}` from the file,
//! `${sls:stage}`/`${opt:stage}` from `provider.stage` (the framework's default `dev`),
//! `${env:NAME}` kept as sluice's own `${NAME}` (so it is read when sluice loads the config),
//! fallbacks (`${opt:stage, 'dev'}`), nested variables; `${aws:region}` and `${aws:accountId}`
//! become `${AWS_REGION}` and `${AWS_ACCOUNT_ID}`; anything else (`${ssm:...}`, `${cf:...}`,
//! files) becomes a variable the summary names. CloudFormation intrinsics (`!GetAtt Queue.Arn`)
//! resolve against `resources.Resources` as in a template. Where the framework's defaults differ
//! from Lambda's (stream batch size 10 and `TRIM_HORIZON`, timeout 6 s, 1024 MB), the framework's
//! are written, since that is what the deployment ran with.

use super::cloudformation::{self, Template};
use super::{AsyncConfig, Dest, Event, Function, ImportError, Plan, Settings, Source, Val, Vars};
use serde_json::{Map, Value as Json};
use std::path::Path;

/// Marks, inside resolved strings, a sluice variable: `\u{1}NAME\u{2}`.
const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';
/// How deep `${self:...}` may refer onward.
const MAX_DEPTH: usize = 10;
/// How many variables one file may resolve in all: references that fan out (each value naming
/// the next several times) would otherwise take exponential time.
const MAX_RESOLUTIONS: usize = 100_000;

pub(super) fn read(path: &Path, text: &str) -> Result<Plan, ImportError> {
    let root = cloudformation::parse(path, text)?;
    let mut resolver = Resolver {
        root: &root,
        vars: Vars::default(),
        resolutions: 0,
    };
    let resolved = resolver.walk(&root, 0);
    if resolver.resolutions > MAX_RESOLUTIONS {
        return Err(ImportError::Content {
            path: path.to_owned(),
            message: format!(
                "its variables refer to each other more than {MAX_RESOLUTIONS} times; look for ${{self:...}} values that name each other"
            ),
        });
    }
    let vars = resolver.vars;
    let empty = Map::new();
    let resources = resolved
        .pointer("/resources/Resources")
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let mut t = Template::new(
        resources,
        &empty,
        &empty,
        &empty,
        resolved
            .pointer("/provider/region")
            .and_then(Json::as_str)
            .map(Val::str),
        Plan {
            vars,
            ..Plan::default()
        },
    );
    let provider = resolved.get("provider").cloned().unwrap_or(Json::Null);
    // As sluice text (a stage from `${env:STAGE}` stays that variable): they make the
    // deployed function names, `<service>-<stage>-<key>`.
    let as_text = |value: Option<&Json>, default: &str| {
        value
            .cloned()
            .map(super::from_json)
            .and_then(|v| v.text())
            .unwrap_or_else(|| default.to_owned())
    };
    let service = as_text(
        resolved.get("service").map(|s| s.get("name").unwrap_or(s)),
        "service",
    );
    let stage = as_text(provider.get("stage"), "dev");
    let Some(functions) = resolved.get("functions").and_then(Json::as_object) else {
        return Err(ImportError::Content {
            path: path.to_owned(),
            message: "no functions".into(),
        });
    };
    for (key, definition) in functions {
        let function = read_function(&mut t, &provider, &service, &stage, key, definition);
        t.plan.functions.push(function);
    }
    // Mappings, invoke configs and rules written as CloudFormation under resources.Resources.
    t.read_resources(&Map::new());
    Ok(t.plan)
}

struct Resolver<'a> {
    root: &'a Json,
    vars: Vars,
    /// Variables resolved so far (see [`MAX_RESOLUTIONS`]).
    resolutions: usize,
}

impl Resolver<'_> {
    /// The tree with every string's variables resolved; strings that hold sluice variables
    /// become markers (`EXPR_KEY`) for the template resolver.
    fn walk(&mut self, value: &Json, depth: usize) -> Json {
        match value {
            Json::String(text) => mark_all(self.string(text, depth)),
            Json::Array(items) => Json::Array(items.iter().map(|i| self.walk(i, depth)).collect()),
            Json::Object(object) => Json::Object(
                object
                    .iter()
                    .map(|(k, v)| (k.clone(), self.walk(v, depth)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Resolves the variables of one string, innermost first. A string that is one variable
    /// takes that variable's value, whatever its type.
    fn string(&mut self, text: &str, depth: usize) -> Json {
        let mut current = text.to_owned();
        for _ in 0..64 {
            let Some((start, end)) = innermost(&current) else {
                break;
            };
            let inner = current[start + 2..end].to_owned();
            let value = self.variable(&inner, depth);
            if start == 0 && end == current.len() - 1 && !value.is_string() {
                return value;
            }
            let replacement = match value {
                Json::String(s) => s,
                Json::Null => String::new(),
                other => other.to_string(),
            };
            current.replace_range(start..=end, &replacement);
        }
        Json::String(current)
    }

    fn variable(&mut self, inner: &str, depth: usize) -> Json {
        self.resolutions += 1;
        if self.resolutions > MAX_RESOLUTIONS {
            return Json::Null;
        }
        let (primary, fallback) = split_fallback(inner);
        if let Some(name) = primary.trim().strip_prefix("env:") {
            // Read when sluice loads the config, as the framework read it at deploy time; a
            // literal fallback becomes sluice's own `${NAME:-fallback}`.
            let name = name.trim();
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return var_text(&self.vars.need(
                    if name.is_empty() { "env" } else { name },
                    format!(
                        "the value of ${{env:{name}}} in serverless.yml (not a valid variable name)"
                    ),
                ));
            }
            let literal = fallback.map(|f| literal_or_variable(f.trim(), self, depth));
            return match literal {
                Some(Json::String(text)) if !text.contains(OPEN) => {
                    Json::String(format!("{OPEN}{name}:-{text}{CLOSE}"))
                }
                Some(Json::Number(n)) => Json::String(format!("{OPEN}{name}:-{n}{CLOSE}")),
                Some(Json::Bool(b)) => Json::String(format!("{OPEN}{name}:-{b}{CLOSE}")),
                _ => {
                    self.vars.named(
                        name,
                        format!("environment variable {name}, which serverless.yml reads"),
                    );
                    Json::String(format!("{OPEN}{name}{CLOSE}"))
                }
            };
        }
        if let Some(value) = self.source(primary.trim(), depth) {
            return value;
        }
        match fallback {
            Some(fallback) => literal_or_variable(fallback.trim(), self, depth),
            None => {
                let name = primary.trim();
                let hint = name.rsplit(':').next().unwrap_or(name);
                var_text(
                    &self
                        .vars
                        .need(hint, format!("the value of ${{{name}}} in serverless.yml")),
                )
            }
        }
    }

    /// One variable's value, or `None` when its source cannot say.
    fn source(&mut self, name: &str, depth: usize) -> Option<Json> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let (kind, rest) = name.split_once(':').unwrap_or(("self", name));
        match kind {
            // `${}` and `${self:}` would be the whole file: nothing a setting can hold.
            "self" if rest.trim().is_empty() => None,
            "self" => {
                let pointer = format!("/{}", rest.replace('.', "/"));
                let found = if rest.is_empty() {
                    self.root.clone()
                } else {
                    self.root.pointer(&pointer)?.clone()
                };
                Some(self.plain(&found, depth + 1))
            }
            // The stage the file deploys to: provider.stage (itself often
            // `${opt:stage, 'dev'}`), else the framework's `dev`. `opt:` are command-line
            // options, which an import does not have: their fallbacks apply.
            "sls" if rest == "stage" => Some(
                self.root
                    .pointer("/provider/stage")
                    .map(|s| self.plain(&s.clone(), depth + 1))
                    .unwrap_or_else(|| Json::String("dev".into())),
            ),
            "aws" if rest == "region" => Some(
                self.root
                    .pointer("/provider/region")
                    .map(|s| self.plain(&s.clone(), depth + 1))
                    .unwrap_or_else(|| var_text(&self.vars.region())),
            ),
            "aws" if rest == "accountId" => Some(var_text(&self.vars.account())),
            _ => None,
        }
    }

    /// A value found by `${self:...}`, its own variables resolved (no markers: they are made
    /// once, at the top).
    fn plain(&mut self, value: &Json, depth: usize) -> Json {
        match value {
            Json::String(text) => self.string(text, depth),
            Json::Array(items) => Json::Array(items.iter().map(|i| self.plain(i, depth)).collect()),
            Json::Object(object) => Json::Object(
                object
                    .iter()
                    .map(|(k, v)| (k.clone(), self.plain(v, depth)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// `${NAME}` of a needed variable, as marked text.
fn var_text(val: &Val) -> Json {
    match val {
        Val::Expr(text) => Json::String(
            text.trim_start_matches("${")
                .trim_end_matches('}')
                .to_owned(),
        )
        .as_str()
        .map(|name| Json::String(format!("{OPEN}{name}{CLOSE}")))
        .expect("a string"),
        Val::Lit(json) => json.clone(),
    }
}

/// A fallback: a quoted literal, a number, or another variable.
fn literal_or_variable(text: &str, resolver: &mut Resolver<'_>, depth: usize) -> Json {
    // A fallback that was itself a variable is resolved already (innermost first).
    if text.contains(OPEN) {
        return Json::String(text.to_owned());
    }
    let unquoted = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')));
    if let Some(literal) = unquoted {
        return Json::String(literal.to_owned());
    }
    if let Ok(number) = text.parse::<i64>() {
        return number.into();
    }
    match text {
        "true" => Json::Bool(true),
        "false" => Json::Bool(false),
        "null" => Json::Null,
        other => resolver.variable(other, depth),
    }
}

/// The innermost `${...}`: its start and the index of its `}`. Linear: the first `}` that
/// follows a `${` closes the last `${` before it.
fn innermost(text: &str) -> Option<(usize, usize)> {
    let first_open = text.find("${")?;
    let close = first_open + text[first_open..].find('}')?;
    let start = text[..close].rfind("${")?;
    Some((start, close))
}

/// `opt:stage, 'dev'` → (`opt:stage`, `'dev'`), at the first comma outside quotes.
fn split_fallback(inner: &str) -> (&str, Option<&str>) {
    let mut quote = None;
    for (i, c) in inner.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            (',', None) => return (&inner[..i], Some(&inner[i + 1..])),
            _ => {}
        }
    }
    (inner, None)
}

/// Every string of a resolved value (a `${self:...}` may bring an object) marked as
/// [`to_marked`] does.
fn mark_all(value: Json) -> Json {
    match value {
        Json::String(_) => to_marked(value),
        Json::Array(items) => Json::Array(items.into_iter().map(mark_all).collect()),
        Json::Object(object) => {
            Json::Object(object.into_iter().map(|(k, v)| (k, mark_all(v))).collect())
        }
        other => other,
    }
}

/// A resolved string: literal, or a marker (`EXPR_KEY`) when it holds a sluice variable.
fn to_marked(value: Json) -> Json {
    match value {
        Json::String(text) if text.contains(OPEN) => {
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(start) = rest.find(OPEN) {
                out.push_str(&super::escape(&rest[..start]));
                let after = &rest[start + OPEN.len_utf8()..];
                let end = after.find(CLOSE).unwrap_or(after.len());
                out.push_str(&format!("${{{}}}", &after[..end]));
                rest = after.get(end + CLOSE.len_utf8()..).unwrap_or("");
            }
            out.push_str(&super::escape(rest));
            let mut object = Map::new();
            object.insert(super::EXPR_KEY.into(), Json::String(out));
            Json::Object(object)
        }
        other => other,
    }
}

fn get<'j>(value: &'j Json, key: &str) -> Option<&'j Json> {
    value.get(key).filter(|v| !v.is_null())
}

fn read_function(
    t: &mut Template<'_>,
    provider: &Json,
    service: &str,
    stage: &str,
    key: &str,
    definition: &Json,
) -> Function {
    let origin = format!("serverless.yml function {key}");
    let field = |t: &mut Template<'_>, name: &str, provider_name: &str| {
        get(definition, name)
            .or_else(|| get(provider, provider_name))
            .and_then(|v| t.resolve(v, &format!("{key}_{name}")))
    };
    // The framework's logical id for the function: mappings under resources.Resources use it.
    let logical = {
        let mut chars = key.chars();
        let first = chars
            .next()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        format!("{first}{}LambdaFunction", chars.as_str())
            .replace('-', "Dash")
            .replace('_', "Underscore")
    };
    let mut function = Function {
        name: key.to_owned(),
        aliases: vec![
            format!("{service}-{stage}-{}", super::escape(key)),
            super::escape(&logical),
        ],
        origin: origin.clone(),
        default_timeout: 6,
        // Handlers are paths from the service's directory.
        code_dir: Some(String::new()),
        ..Function::default()
    };
    // `name:` is the deployed function's name: first, since function_name is the first alias.
    if let Some(name) = get(definition, "name")
        .and_then(|v| t.resolve(v, key))
        .and_then(|v| v.text())
    {
        function.aliases.insert(0, name);
    }
    if get(definition, "image").is_none() {
        function.runtime = field(t, "runtime", "runtime");
    }
    function.handler = field(t, "handler", "handler");
    function.timeout = field(t, "timeout", "timeout");
    function.memory = field(t, "memorySize", "memorySize").or(Some(Val::Lit(1024.into())));
    function.reserved_concurrency = field(t, "reservedConcurrency", "reservedConcurrency");
    let mut env = Map::new();
    for source in [get(provider, "environment"), get(definition, "environment")]
        .into_iter()
        .flatten()
    {
        if let Some(object) = source.as_object() {
            env.extend(object.clone());
        }
    }
    for (name, value) in &env {
        if let Some(value) = t.resolve(value, name) {
            function.env.push((name.clone(), value));
        }
    }
    let destination = |t: &mut Template<'_>, value: &Json, which: &str| {
        let (arn, kind) = match value.get("arn") {
            Some(arn) => (arn, get(value, "type").and_then(Json::as_str)),
            None => (value, None),
        };
        let arn = t.resolve(arn, &format!("{key}_{which}"))?;
        // A bare name is a function of the service: Lambda destinations.
        let kind = kind.map(str::to_owned).or_else(|| {
            arn.as_str()
                .filter(|a| !a.starts_with("arn:"))
                .map(|_| "Lambda".to_owned())
        });
        Some(Dest {
            arn,
            kind,
            origin: format!("{origin} destinations.{which}"),
        })
    };
    function.invoke = AsyncConfig {
        max_event_age: get(definition, "maximumEventAge").and_then(|v| t.resolve(v, "age")),
        max_retries: get(definition, "maximumRetryAttempts").and_then(|v| t.resolve(v, "retries")),
        on_success: definition
            .pointer("/destinations/onSuccess")
            .and_then(|d| destination(t, d, "onSuccess")),
        on_failure: definition
            .pointer("/destinations/onFailure")
            .and_then(|d| destination(t, d, "onFailure")),
    };
    if let Some(dlq) = get(definition, "onError").and_then(|v| t.resolve(v, "dlq")) {
        function.dead_letter = Some(Dest {
            arn: dlq,
            kind: None,
            origin: format!("{origin} onError"),
        });
    }
    if let Some(events) = get(definition, "events").filter(|e| !e.is_array()) {
        t.plan.unsupported.push(format!(
            "{origin}: events is not a list ({}); none imported",
            super::render_json(events)
        ));
    }
    if let Some(events) = get(definition, "events").and_then(Json::as_array) {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for event in events {
            let Some((kind, body)) = event.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let n = counts.entry(kind.clone()).or_default();
            *n += 1;
            let name = format!("{kind}-{n}");
            let origin = format!("{origin} events[{kind} #{n}]");
            function
                .events
                .extend(read_event(t, key, kind, body, &name, &origin));
        }
    }
    function
}

fn settings(t: &mut Template<'_>, body: &Json, origin: &str) -> Settings {
    let field = |t: &mut Template<'_>, key: &str| {
        get(body, key).and_then(|v| t.resolve(v, &format!("{origin}_{key}")))
    };
    let mut s = Settings {
        enabled: field(t, "enabled"),
        batch_size: field(t, "batchSize"),
        window: field(t, "maximumBatchingWindow").or_else(|| field(t, "batchWindow")),
        max_concurrency: field(t, "maximumConcurrency"),
        starting_position: field(t, "startingPosition"),
        starting_timestamp: field(t, "startingPositionTimestamp"),
        parallelization: field(t, "parallelizationFactor"),
        max_retries: field(t, "maximumRetryAttempts"),
        max_record_age: field(t, "maximumRecordAgeInSeconds"),
        bisect: field(t, "bisectBatchOnFunctionError"),
        tumbling_window: field(t, "tumblingWindowInSeconds"),
        group_id: field(t, "consumerGroupId"),
        ..Settings::default()
    };
    s.report_batch_item_failures = get(body, "functionResponseType")
        .and_then(|v| t.resolve(v, "response_type"))
        .is_some_and(|v| v.as_str() == Some("ReportBatchItemFailures"));
    if let Some(patterns) = get(body, "filterPatterns").and_then(Json::as_array) {
        for pattern in patterns {
            let pattern = match pattern {
                Json::Object(_) => Some(super::from_json(pattern.clone())),
                other => t.resolve(other, "filter"),
            };
            s.add_pattern(pattern, origin);
        }
    }
    if let Some(on_failure) = body.pointer("/destinations/onFailure") {
        let (arn, kind) = match on_failure.get("arn") {
            Some(arn) => (arn, get(on_failure, "type").and_then(Json::as_str)),
            None => (on_failure, None),
        };
        s.on_failure = t
            .resolve(arn, &format!("{origin}_on_failure"))
            .map(|arn| Dest {
                arn,
                kind: kind.map(str::to_owned),
                origin: format!("{origin} destinations.onFailure"),
            });
    }
    s
}

/// A serverless event's ARN: `arn: ...` in its object form, or the event itself.
fn arn_of(body: &Json) -> &Json {
    body.get("arn").unwrap_or(body)
}

fn read_event(
    t: &mut Template<'_>,
    function: &str,
    kind: &str,
    body: &Json,
    name: &str,
    origin: &str,
) -> Vec<Event> {
    let hint = format!("{function}_{name}");
    let event = |source, settings| Event {
        name: name.to_owned(),
        origin: origin.to_owned(),
        source,
        settings,
    };
    match kind {
        "sqs" => {
            let Some(queue) = t.resolve(arn_of(body), &format!("{hint}_queue_url")) else {
                return Vec::new();
            };
            let s = settings(t, body, origin);
            vec![event(Source::Sqs { queue }, s)]
        }
        "stream" => {
            let arn_json = arn_of(body).clone();
            let Some(arn) = t.resolve(&arn_json, &format!("{hint}_stream_arn")) else {
                return Vec::new();
            };
            let declared = get(body, "type").and_then(Json::as_str).map(str::to_owned);
            let referenced = arn_json
                .get("Fn::GetAtt")
                .and_then(|p| p.get(0))
                .and_then(Json::as_str)
                .and_then(|logical| t.resources.get(logical))
                .and_then(|r| r.get("Type"))
                .and_then(Json::as_str)
                .map(|kind| {
                    if kind.contains("DynamoDB") {
                        "dynamodb".to_owned()
                    } else {
                        "kinesis".to_owned()
                    }
                });
            let service = declared.or(referenced).or_else(|| {
                arn.text()
                    .and_then(|a| a.split(':').nth(2).map(str::to_owned))
            });
            let mut s = settings(t, body, origin);
            if s.batch_size.is_none() {
                s.batch_size = Some(Val::Lit(10.into()));
                s.notes.insert(
                    "batch_size",
                    "the Serverless Framework's default; Lambda's is 100".into(),
                );
            }
            if s.starting_position.is_none() {
                s.starting_position = Some(Val::str("TRIM_HORIZON"));
                s.notes.insert(
                    "starting_position",
                    "the Serverless Framework's default".into(),
                );
            }
            let source = match service.as_deref() {
                Some("dynamodb") => Source::DynamoDb {
                    stream: Some(arn),
                    table: None,
                },
                Some("kinesis") => {
                    let consumer = match get(body, "consumer") {
                        Some(Json::Bool(true)) => Some(Val::str(format!("{function}-{name}"))),
                        Some(other) => t.resolve(other, "consumer"),
                        None => None,
                    };
                    Source::Kinesis {
                        stream: arn,
                        consumer,
                    }
                }
                _ => {
                    t.plan.unsupported.push(format!(
                        "{origin}: cannot tell whether the stream is DynamoDB or Kinesis; add type: dynamodb|kinesis"
                    ));
                    return Vec::new();
                }
            };
            vec![event(source, s)]
        }
        "s3" => {
            let (bucket, body) = match body {
                Json::Object(_) => (get(body, "bucket"), body.clone()),
                other => (Some(other), Json::Null),
            };
            let Some(bucket) = bucket.and_then(|b| t.resolve(b, &format!("{hint}_bucket"))) else {
                return Vec::new();
            };
            let events = get(&body, "event")
                .map(|e| t.list(e, "event"))
                .unwrap_or_else(|| vec![Val::str("s3:ObjectCreated:*")]);
            let (mut prefix, mut suffix) = (None, None);
            if let Some(rules) = get(&body, "rules").and_then(Json::as_array) {
                for rule in rules {
                    if let Some(p) = get(rule, "prefix") {
                        prefix = t.resolve(p, "prefix");
                    }
                    if let Some(s) = get(rule, "suffix") {
                        suffix = t.resolve(s, "suffix");
                    }
                }
            }
            vec![event(
                Source::S3 {
                    bucket,
                    events,
                    prefix,
                    suffix,
                },
                Settings::default(),
            )]
        }
        "msk" => {
            let Some(cluster) = t.resolve(arn_of(body), &format!("{hint}_cluster_arn")) else {
                return Vec::new();
            };
            let topics = get(body, "topic")
                .map(|v| t.list(v, "topic"))
                .unwrap_or_default();
            let mut s = settings(t, body, origin);
            if let Some(secret) = get(body, "saslScram512").and_then(|v| t.resolve(v, "secret")) {
                s.access.push(("SASL_SCRAM_512_AUTH".into(), secret));
            }
            default_trim_horizon(&mut s);
            vec![event(Source::Msk { cluster, topics }, s)]
        }
        "kafka" => {
            let servers = get(body, "bootstrapServers")
                .map(|v| t.list(v, &format!("{hint}_bootstrap_servers")))
                .unwrap_or_default();
            let mut parts = Vec::new();
            for (i, server) in servers.into_iter().enumerate() {
                if i > 0 {
                    parts.push(Val::str(","));
                }
                parts.push(server);
            }
            let bootstrap = Val::concat(&parts).unwrap_or_else(|| Val::str(""));
            let topics = get(body, "topic")
                .map(|v| t.list(v, "topic"))
                .unwrap_or_default();
            let mut s = settings(t, body, origin);
            if let Some(access) = get(body, "accessConfigurations").and_then(Json::as_object) {
                for (key, value) in access {
                    let kind = match key.as_str() {
                        "saslPlainAuth" => "BASIC_AUTH",
                        "saslScram256Auth" => "SASL_SCRAM_256_AUTH",
                        "saslScram512Auth" => "SASL_SCRAM_512_AUTH",
                        "clientCertificateTlsAuth" => "CLIENT_CERTIFICATE_TLS_AUTH",
                        "serverRootCaCertificate" => "SERVER_ROOT_CA_CERTIFICATE",
                        "vpcSubnet" | "vpcSecurityGroup" => "VPC_SUBNET",
                        other => {
                            t.plan
                                .unsupported
                                .push(format!("{origin}: accessConfigurations.{other}"));
                            continue;
                        }
                    };
                    for uri in t.list(value, "secret") {
                        s.access.push((kind.to_owned(), uri));
                    }
                }
            }
            default_trim_horizon(&mut s);
            vec![event(Source::Kafka { bootstrap, topics }, s)]
        }
        "schedule" => {
            let (rates, body) = match body {
                Json::Object(_) => (
                    get(body, "rate")
                        .map(|r| t.list(r, "rate"))
                        .unwrap_or_default(),
                    body.clone(),
                ),
                other => (t.list(other, "rate"), Json::Null),
            };
            let mut s = Settings::default();
            if let Some(enabled) = get(&body, "enabled").and_then(|v| t.resolve(v, "enabled")) {
                s.enabled = Some(enabled);
            }
            let input = get(&body, "input")
                .and_then(|input| super::json_input(super::from_json(input.clone())));
            for key in ["inputPath", "inputTransformer"] {
                if get(&body, key).is_some() {
                    t.plan.unsupported.push(format!(
                        "{origin}: {key} (shapes the Scheduled Event; use input, or shape it in the handler)"
                    ));
                }
            }
            let timezone = get(&body, "timezone").and_then(|v| t.resolve(v, "timezone"));
            let count = rates.len();
            rates
                .into_iter()
                .enumerate()
                .map(|(i, expression)| Event {
                    name: if count > 1 {
                        format!("{name}-{}", i + 1)
                    } else {
                        name.to_owned()
                    },
                    origin: origin.to_owned(),
                    source: Source::Schedule {
                        expression,
                        timezone: timezone.clone(),
                        input: input.clone(),
                    },
                    settings: Settings {
                        enabled: s.enabled.clone(),
                        ..Settings::default()
                    },
                })
                .collect()
        }
        other => {
            t.plan.unsupported.push(format!(
                "{origin}: sluice has no {other} source (an HTTP caller can call the target directly or through the Invoke API)"
            ));
            Vec::new()
        }
    }
}

fn default_trim_horizon(s: &mut Settings) {
    if s.starting_position.is_none() {
        s.starting_position = Some(Val::str("TRIM_HORIZON"));
        s.notes.insert(
            "starting_position",
            "the Serverless Framework's default".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolve(root: Json, text: &str) -> (Json, Vec<(String, String)>) {
        let mut resolver = Resolver {
            root: &root,
            vars: Vars::default(),
            resolutions: 0,
        };
        let out = resolver.walk(&Json::String(text.into()), 0);
        (out, resolver.vars.into_list())
    }

    #[test]
    fn variables_resolve_innermost_first_with_fallbacks() {
        let root = json!({
            "service": "orders",
            "provider": {"stage": "prod"},
            "custom": {"batch": {"prod": 25}, "queue": "orders-${sls:stage}"}
        });
        assert_eq!(
            resolve(root.clone(), "${self:custom.batch.${sls:stage}}").0,
            json!(25)
        );
        // Command-line options are not there at import: their fallbacks apply.
        assert_eq!(resolve(root.clone(), "${opt:stage, 'dev'}").0, json!("dev"));
        assert_eq!(
            resolve(root.clone(), "q-${self:custom.queue}").0,
            json!("q-orders-prod")
        );
        assert_eq!(
            resolve(root.clone(), "${ssm:/x, 'fallback'}").0,
            json!("fallback")
        );
        assert_eq!(
            resolve(root.clone(), "${env:TOKEN}-${aws:accountId}").0,
            json!({super::super::EXPR_KEY: "${TOKEN}-${AWS_ACCOUNT_ID}"})
        );
        assert_eq!(
            resolve(root.clone(), "${env:LEVEL, 'info'}").0,
            json!({super::super::EXPR_KEY: "${LEVEL:-info}"})
        );
        let (value, needs) = resolve(root, "${ssm:/orders/url}");
        assert_eq!(value, json!({super::super::EXPR_KEY: "${ORDERS_URL}"}));
        assert!(needs[0].1.contains("ssm:/orders/url"));
    }

    #[test]
    fn a_self_reference_loop_ends() {
        let root = json!({"custom": {"a": "${self:custom.b}", "b": "${self:custom.a}"}});
        let (value, _) = resolve(root, "${self:custom.a}");
        assert!(value.get(super::super::EXPR_KEY).is_some(), "{value}");
    }
}
