//! `sluice import`: turns the event sources a Lambda deployment already describes (a SAM or
//! CloudFormation template, a `serverless.yml`, Terraform files) into a sluice config.
//!
//! Every format is read into one model in Lambda's own vocabulary ([`Plan`]: functions, their
//! asynchronous invocation settings and their event sources with the settings of
//! `CreateEventSourceMapping`), and one writer ([`emit`]) turns that model into sluice's YAML. So
//! a Lambda default that differs from sluice's is noted in one place, whatever the format.
//!
//! Guarantees:
//! - Nothing is guessed silently. A value the files cannot say (a queue the stack names itself,
//!   a parameter without a default, a secret) becomes `${VAR}` with a comment naming what to set,
//!   and is listed under "needs a value"; a setting sluice has no equivalent for is commented in
//!   the output and listed under "no equivalent".
//! - The output is a config `sluice validate` accepts once its variables are set (tested for
//!   every fixture in `tests/import.rs`).
//! - Reading is pure: no AWS call, no file but the ones named.

mod cloudformation;
mod emit;
mod serverless;
mod terraform;

use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The largest file `sluice import` reads (each of a Terraform directory's files).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The formats `sluice import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A SAM template (`Transform: AWS::Serverless-2016-10-31`), YAML or JSON.
    Sam,
    /// A CloudFormation template, YAML or JSON.
    Cloudformation,
    /// A Serverless Framework `serverless.yml`.
    Serverless,
    /// Terraform: one `.tf` file, or a directory of them.
    Terraform,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Sam => "SAM",
            Format::Cloudformation => "CloudFormation",
            Format::Serverless => "Serverless Framework",
            Format::Terraform => "Terraform",
        })
    }
}

/// Why an import could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path}: cannot tell the format (no Resources, no functions, no .tf file); pass --format sam|cloudformation|serverless|terraform"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: {message}")]
    Content { path: PathBuf, message: String },
}

/// What an import produced: the config text and the summary for stderr.
#[derive(Debug)]
pub struct Imported {
    pub format: Format,
    pub yaml: String,
    pub summary: Summary,
}

/// What the summary on stderr lists.
#[derive(Debug, Default)]
pub struct Summary {
    /// One line per target and mapping written.
    pub imported: Vec<String>,
    /// Variables the output reads, with what to set each to.
    pub needs: Vec<(String, String)>,
    /// Settings and event sources with no equivalent in sluice.
    pub unsupported: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "imported:")?;
        for line in &self.imported {
            writeln!(f, "  {line}")?;
        }
        if !self.needs.is_empty() {
            writeln!(
                f,
                "needs a value (set these in the environment before `sluice validate`):"
            )?;
            for (name, what) in &self.needs {
                writeln!(f, "  {name}: {what}")?;
            }
        }
        if !self.unsupported.is_empty() {
            writeln!(
                f,
                "no equivalent in sluice, or guessed (left out or commented in the output; check these):"
            )?;
            for line in &self.unsupported {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// Reads `path` (a file, or a directory of `.tf` files) and writes the sluice config.
/// `function` keeps only the function of that name (logical id, function name or key).
pub fn import(
    path: &Path,
    format: Option<Format>,
    function: Option<&str>,
) -> Result<Imported, ImportError> {
    let read = |path: &Path| {
        use std::io::Read;
        let error = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        // Read one byte past the bound, so a larger file is refused rather than read whole.
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(error)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(error)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(ImportError::Content {
                path: path.to_owned(),
                message: format!(
                    "is larger than {MAX_FILE_BYTES} bytes; templates are far smaller (CloudFormation's own limit is 1 MB)"
                ),
            });
        }
        Ok(text)
    };
    let format = match format {
        Some(format) => format,
        None => detect(path, &read)?,
    };
    let mut plan = match format {
        Format::Terraform => {
            let mut files = Vec::new();
            if path.is_dir() {
                let entries = std::fs::read_dir(path).map_err(|source| ImportError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let mut names: Vec<PathBuf> = entries
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "tf"))
                    .collect();
                names.sort();
                for name in names {
                    let text = read(&name)?;
                    files.push((name, text));
                }
            } else {
                files.push((path.to_owned(), read(path)?));
            }
            terraform::read(&files)?
        }
        Format::Sam | Format::Cloudformation => cloudformation::read(path, &read(path)?)?,
        Format::Serverless => serverless::read(path, &read(path)?)?,
    };
    // Code paths in the files are relative to the file's directory.
    let base = path.parent().unwrap_or(Path::new(""));
    for function in &mut plan.functions {
        if let Some(dir) = &function.code_dir {
            let joined = base.join(dir);
            let joined = joined.to_string_lossy();
            function.code_dir = Some(if joined.is_empty() {
                ".".to_owned()
            } else {
                joined.trim_end_matches('/').to_owned()
            });
        }
    }
    if let Some(wanted) = function {
        plan.functions
            .retain(|f| f.name == wanted || f.aliases.iter().any(|a| a == wanted));
        if plan.functions.is_empty() {
            return Err(ImportError::Content {
                path: path.to_owned(),
                message: format!("no function named {wanted:?}"),
            });
        }
    }
    if plan.functions.is_empty() {
        return Err(ImportError::Content {
            path: path.to_owned(),
            message: "no Lambda function found".into(),
        });
    }
    let (yaml, summary) = emit::write(plan, path, format);
    Ok(Imported {
        format,
        yaml,
        summary,
    })
}

/// Guesses the format from the file name and its top-level keys.
fn detect(
    path: &Path,
    read: &dyn Fn(&Path) -> Result<String, ImportError>,
) -> Result<Format, ImportError> {
    if path.is_dir() || path.extension().is_some_and(|e| e == "tf") {
        return Ok(Format::Terraform);
    }
    let text = read(path)?;
    let top_keys: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with([' ', '\t', '#', '-']) && line.contains(':'))
        .filter_map(|line| line.split(':').next())
        .map(|key| key.trim().trim_matches('"'))
        .collect();
    let has = |key: &str| top_keys.contains(&key) || text.contains(&format!("\"{key}\""));
    if text.contains("AWS::Serverless") {
        Ok(Format::Sam)
    } else if has("Resources") || has("AWSTemplateFormatVersion") {
        Ok(Format::Cloudformation)
    } else if has("functions") || has("service") {
        Ok(Format::Serverless)
    } else {
        Err(ImportError::UnknownFormat {
            path: path.to_owned(),
        })
    }
}

/// A value as it goes into the output: a literal from the files, or text for sluice to expand
/// (`${NAME}` of a variable listed in the summary; a literal `${` in it is written `$${`).
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Lit(Json),
    Expr(String),
}

impl Val {
    pub fn str(text: impl Into<String>) -> Val {
        Val::Lit(Json::String(text.into()))
    }

    /// The value as sluice text: literals with `${` escaped.
    pub fn text(&self) -> Option<String> {
        match self {
            Val::Lit(Json::String(s)) => Some(escape(s)),
            Val::Lit(Json::Number(n)) => Some(n.to_string()),
            Val::Lit(Json::Bool(b)) => Some(b.to_string()),
            Val::Lit(_) => None,
            Val::Expr(s) => Some(s.clone()),
        }
    }

    /// The literal string, when the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Lit(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A literal number (or a string holding one, as CloudFormation parameters are).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Lit(Json::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Val::Lit(Json::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A literal boolean (or `"true"`/`"false"`).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Lit(Json::Bool(b)) => Some(*b),
            Val::Lit(Json::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// Concatenates values as text (`Fn::Join`, `Fn::Sub`, HCL templates); `None` when a part
    /// is not text (an object).
    pub fn concat(parts: &[Val]) -> Option<Val> {
        if parts.iter().all(|p| matches!(p, Val::Lit(_))) {
            let mut out = String::new();
            for part in parts {
                match part {
                    Val::Lit(Json::String(s)) => out.push_str(s),
                    Val::Lit(Json::Number(n)) => out.push_str(&n.to_string()),
                    Val::Lit(Json::Bool(b)) => out.push_str(&b.to_string()),
                    _ => return None,
                }
            }
            return Some(Val::str(out));
        }
        let mut out = String::new();
        for part in parts {
            out.push_str(&part.text()?);
        }
        Some(Val::Expr(out))
    }
}

/// `arn:aws:<service>:<region>:<account>:<prefix><name>`, from parts the files may or may
/// not give literally.
pub fn arn(service: &str, region: Val, account: Val, prefix: &str, name: Val) -> Option<Val> {
    Val::concat(&[
        Val::str(format!("arn:aws:{service}:")),
        region,
        Val::str(":"),
        account,
        Val::str(format!(":{prefix}")),
        name,
    ])
}

/// `${` in literal text, escaped for sluice's variable expansion.
pub fn escape(text: &str) -> String {
    text.replace("${", "$${")
}

/// Inside JSON values (filter patterns, objects, lists), a string holding sluice variables is
/// `{EXPR_KEY: text}`, so it is written unescaped where a literal string is escaped. The key
/// holds NUL characters, which no template's own JSON has: a user's object cannot pose as one.
pub const EXPR_KEY: &str = "\u{0}sluice-expr\u{0}";

/// The JSON form of a value: literals as they are, text with variables as a marker.
pub fn to_json(val: Val) -> Json {
    match val {
        Val::Lit(json) => json,
        Val::Expr(text) => {
            let mut object = serde_json::Map::new();
            object.insert(EXPR_KEY.into(), Json::String(text));
            Json::Object(object)
        }
    }
}

/// The value of a JSON element: a marker is text with variables.
pub fn from_json(json: Json) -> Val {
    match json {
        Json::Object(object) if object.len() == 1 && object.contains_key(EXPR_KEY) => {
            match object.get(EXPR_KEY) {
                Some(Json::String(text)) => Val::Expr(text.clone()),
                _ => Val::Lit(Json::Object(object)),
            }
        }
        other => Val::Lit(other),
    }
}

/// A JSON value as YAML flow text (JSON is YAML): literal strings with `${` escaped, markers
/// written as the text they hold.
pub fn render_json(json: &Json) -> String {
    match json {
        Json::String(s) => serde_json::to_string(&escape(s)).expect("a string serializes"),
        Json::Array(items) => {
            let items: Vec<String> = items.iter().map(render_json).collect();
            format!("[{}]", items.join(","))
        }
        Json::Object(object) => {
            if let Val::Expr(text) = from_json(json.clone()) {
                return serde_json::to_string(&text).expect("a string serializes");
            }
            let entries: Vec<String> = object
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(&escape(k)).expect("a string serializes"),
                        render_json(v)
                    )
                })
                .collect();
            format!("{{{}}}", entries.join(","))
        }
        other => other.to_string(),
    }
}

/// A pattern in JSON text that may hold sluice variables (`{"type": ["${KIND}"]}`, from a
/// `!Sub` or a Terraform template): strings with variables become markers, `$${` goes back to
/// a literal `${`.
pub fn parse_expr_pattern(text: &str) -> Option<Json> {
    parse_expr_json(text).filter(Json::is_object)
}

/// Whether sluice text holds a variable (a `${` that is not the escape `$${`).
fn has_var(text: &str) -> bool {
    text.match_indices("${")
        .any(|(i, _)| i == 0 || !text[..i].ends_with('$'))
}

/// JSON text that may hold sluice variables in its strings (a schedule's input from a `!Sub`):
/// strings with variables become markers, `$${` a literal `${`. `None` when it is not JSON, or
/// when a variable is in an object key, which a marker cannot stand for.
pub fn parse_expr_json(text: &str) -> Option<Json> {
    fn mark(json: Json) -> Option<Json> {
        Some(match json {
            Json::String(s) if has_var(&s) => to_json(Val::Expr(s)),
            Json::String(s) => Json::String(s.replace("$${", "${")),
            Json::Array(items) => Json::Array(items.into_iter().map(mark).collect::<Option<_>>()?),
            Json::Object(object) => {
                let mut out = serde_json::Map::new();
                for (key, value) in object {
                    if has_var(&key) {
                        return None;
                    }
                    out.insert(key.replace("$${", "${"), mark(value)?);
                }
                Json::Object(out)
            }
            other => other,
        })
    }
    mark(serde_json::from_str(text).ok()?)
}

/// A value meant as JSON (a schedule's `Input`): a literal's JSON text parsed (a string that
/// is not JSON stays a string), text with variables parsed with them kept.
pub fn json_input(val: Val) -> Option<Json> {
    match val {
        Val::Lit(Json::String(text)) => {
            Some(serde_json::from_str(&text).unwrap_or(Json::String(text)))
        }
        Val::Lit(other) => Some(other),
        Val::Expr(text) => parse_expr_json(&text).or(Some(to_json(Val::Expr(text)))),
    }
}

/// The variables an import needs, each with what to set it to.
#[derive(Debug, Default)]
pub struct Vars {
    /// Name → what it holds, in the order first needed.
    list: Vec<(String, String)>,
}

impl Vars {
    /// `${NAME}` for a value the files cannot say. The name comes from `hint` (upper snake
    /// case); the same `what` asked twice gets the same variable.
    pub fn need(&mut self, hint: &str, what: impl Into<String>) -> Val {
        let what = what.into();
        if let Some((name, _)) = self.list.iter().find(|(_, w)| *w == what) {
            return Val::Expr(format!("${{{name}}}"));
        }
        let mut base = env_name(hint);
        // A name the environment of every process has would pass unset (HOME from a
        // parameter named Home): such names get a suffix.
        if RESERVED_NAMES.contains(&base.as_str()) {
            base.push_str("_VALUE");
        }
        let mut name = base.clone();
        let mut n = 2;
        while self.list.iter().any(|(taken, _)| *taken == name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.list.push((name.clone(), what));
        Val::Expr(format!("${{{name}}}"))
    }

    /// `${name}` for an environment variable the files already read by that name.
    pub fn named(&mut self, name: &str, what: impl Into<String>) -> Val {
        if !self.list.iter().any(|(taken, _)| taken == name) {
            self.list.push((name.to_owned(), what.into()));
        }
        Val::Expr(format!("${{{name}}}"))
    }

    /// AWS_REGION, the region the deployment ran in.
    pub fn region(&mut self) -> Val {
        self.need(
            "AWS_REGION",
            "the AWS region the resources are in (ECS sets it for the task)",
        )
    }

    /// AWS_ACCOUNT_ID, the account the resources are in.
    pub fn account(&mut self) -> Val {
        self.need("AWS_ACCOUNT_ID", "the AWS account id the resources are in")
    }

    pub fn into_list(self) -> Vec<(String, String)> {
        self.list
    }

    /// Adds to what a variable that `val` consists of must hold (a queue URL rather than the
    /// ARN a parameter was named for).
    pub fn clarify(&mut self, val: &Val, more: &str) {
        if let Val::Expr(text) = val
            && let Some(name) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}'))
            && let Some((_, what)) = self.list.iter_mut().find(|(n, _)| n == name)
            && !what.contains(more)
        {
            what.push_str(&format!(" ({more})"));
        }
    }
}

/// Environment variables a shell or container already sets.
const RESERVED_NAMES: &[&str] = &[
    "HOME", "USER", "PATH", "PWD", "SHELL", "LANG", "TERM", "HOSTNAME", "TMPDIR", "LOGNAME",
    "OLDPWD", "SHLVL", "TZ", "MAIL", "UID", "EDITOR",
];

/// `OrdersQueue` / `orders-queue` / `orders.queue` → `ORDERS_QUEUE`.
pub fn env_name(hint: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in hint.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && previous_lower && !out.ends_with('_') {
                out.push('_');
            }
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_uppercase());
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            previous_lower = false;
        }
    }
    let out = out.trim_matches('_').to_owned();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("V_{out}")
    } else {
        out
    }
}

/// `ProcessOrders` / `process_orders` → `process-orders`: names for targets and mappings.
pub fn kebab(name: &str) -> String {
    env_name(name).to_ascii_lowercase().replace('_', "-")
}

/// What the files say, in Lambda's vocabulary.
#[derive(Debug, Default)]
pub struct Plan {
    pub functions: Vec<Function>,
    pub vars: Vars,
    /// Settings with no equivalent, found while reading.
    pub unsupported: Vec<String>,
}

impl Plan {
    /// A function that `origin` names but the files do not define: its target is a
    /// placeholder, and the summary says so. Returns its index.
    pub fn placeholder(&mut self, name: &str, origin: &str, files: &str) -> usize {
        self.unsupported.push(format!(
            "{origin}: function {name} is not defined in {files}; its target is a placeholder"
        ));
        self.functions.push(Function {
            name: name.to_owned(),
            origin: format!("function {name}, not in {files}"),
            default_timeout: 3,
            ..Function::default()
        });
        self.functions.len() - 1
    }
}

/// A Lambda function and what invokes it.
#[derive(Debug, Default)]
pub struct Function {
    /// The name it is known by in the files (logical id, function key, resource name).
    pub name: String,
    /// Other names that select it with `--function` (its FunctionName).
    pub aliases: Vec<String>,
    /// Where it was found, for comments: `AWS::Serverless::Function ProcessOrders`.
    pub origin: String,
    pub runtime: Option<Val>,
    pub handler: Option<Val>,
    /// Seconds.
    pub timeout: Option<Val>,
    /// Lambda's default timeout when the files give none (3 s; the Serverless Framework's 6 s).
    pub default_timeout: i64,
    pub memory: Option<Val>,
    pub env: Vec<(String, Val)>,
    /// The directory holding the function's code (SAM `CodeUri`, the Serverless service's
    /// directory), as a path from where `sluice import` ran.
    pub code_dir: Option<String>,
    pub reserved_concurrency: Option<Val>,
    pub invoke: AsyncConfig,
    /// The function's dead-letter queue (`DeadLetterQueue`, `DeadLetterConfig`).
    pub dead_letter: Option<Dest>,
    pub events: Vec<Event>,
}

/// Asynchronous invocation settings (`EventInvokeConfig`).
#[derive(Debug, Default)]
pub struct AsyncConfig {
    pub max_event_age: Option<Val>,
    pub max_retries: Option<Val>,
    pub on_success: Option<Dest>,
    pub on_failure: Option<Dest>,
}

/// A destination: an ARN (or a queue URL), with the type the files name when they do.
#[derive(Clone, Debug)]
pub struct Dest {
    pub arn: Val,
    /// `SQS`, `SNS`, `S3`, `Lambda`, `EventBridge`, as a template's `Type` says.
    pub kind: Option<String>,
    /// Where it was found, for messages.
    pub origin: String,
}

/// One event source of a function.
#[derive(Debug)]
pub struct Event {
    /// The event's name in the files (the SAM event key, `sqs-1` for a Serverless list item).
    pub name: String,
    /// Where it was found, for comments and the summary.
    pub origin: String,
    pub source: Source,
    pub settings: Settings,
}

/// What an event reads.
#[derive(Debug)]
pub enum Source {
    /// A queue ARN or URL.
    Sqs {
        queue: Val,
    },
    DynamoDb {
        stream: Option<Val>,
        table: Option<Val>,
    },
    Kinesis {
        stream: Val,
        consumer: Option<Val>,
    },
    Msk {
        cluster: Val,
        topics: Vec<Val>,
    },
    Kafka {
        bootstrap: Val,
        topics: Vec<Val>,
    },
    /// Lambda invoked by the bucket itself; sluice needs the bucket to notify a queue.
    S3 {
        bucket: Val,
        events: Vec<Val>,
        prefix: Option<Val>,
        suffix: Option<Val>,
    },
    Schedule {
        expression: Val,
        timezone: Option<Val>,
        input: Option<Json>,
    },
}

/// The settings of `CreateEventSourceMapping` (and of a schedule), as far as the files give them.
#[derive(Debug, Default)]
pub struct Settings {
    pub enabled: Option<Val>,
    pub batch_size: Option<Val>,
    /// Seconds.
    pub window: Option<Val>,
    pub max_concurrency: Option<Val>,
    pub starting_position: Option<Val>,
    pub starting_timestamp: Option<Val>,
    pub parallelization: Option<Val>,
    pub max_retries: Option<Val>,
    /// Seconds.
    pub max_record_age: Option<Val>,
    pub bisect: Option<Val>,
    /// Seconds.
    pub tumbling_window: Option<Val>,
    pub report_batch_item_failures: bool,
    /// FilterCriteria patterns, as JSON.
    pub filters: Vec<Json>,
    pub on_failure: Option<Dest>,
    pub group_id: Option<Val>,
    /// `SourceAccessConfigurations`: (type, uri).
    pub access: Vec<(String, Val)>,
    /// Defaults the format applies where Lambda's differ (the Serverless Framework's batch size
    /// of 10 for streams): noted beside the value.
    pub notes: BTreeMap<&'static str, String>,
    /// Why the mapping is written disabled although the files enable it (a filter that could
    /// not be carried over: enabled, it would invoke with records Lambda filtered out).
    pub disabled_because: Option<String>,
}

impl Settings {
    /// Adds a FilterCriteria pattern (a literal, or JSON text holding variables). A pattern
    /// that cannot be carried over disables the mapping, with the reason: enabled without it,
    /// the mapping would invoke with records Lambda filtered out.
    pub fn add_pattern(&mut self, pattern: Option<Val>, origin: &str) {
        let parsed = match &pattern {
            Some(Val::Lit(Json::String(text))) => serde_json::from_str::<Json>(text)
                .ok()
                .filter(Json::is_object),
            Some(Val::Lit(object @ Json::Object(_))) => Some(object.clone()),
            Some(Val::Expr(text)) => parse_expr_pattern(text),
            _ => None,
        };
        match parsed {
            Some(pattern) => self.filters.push(pattern),
            None => {
                let shown = pattern
                    .as_ref()
                    .and_then(Val::text)
                    .unwrap_or_else(|| "a pattern that is not literal JSON".into());
                self.disabled_because = Some(format!(
                    "{origin}: the filter pattern {shown} could not be carried over; add it to filters, then enable the mapping"
                ));
            }
        }
    }
}

/// The kind of an event source whose ARN the files do not give (a parameter, a variable): from
/// the name it goes by, else from the settings only some kinds have (`Topics` for Kafka, a
/// starting position for streams; SQS has neither).
pub fn infer_kind(name: &str, has_starting_position: bool, has_topics: bool) -> &'static str {
    let name = name.to_ascii_lowercase();
    if has_topics || name.contains("kafka") || name.contains("msk") {
        "kafka"
    } else if name.contains("dynamo") || name.contains("table") {
        "dynamodb"
    } else if name.contains("kinesis") || (has_starting_position && !name.contains("queue")) {
        "kinesis"
    } else {
        "sqs"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_variables_and_mappings() {
        assert_eq!(env_name("OrdersQueue"), "ORDERS_QUEUE");
        assert_eq!(env_name("orders-queue.url"), "ORDERS_QUEUE_URL");
        assert_eq!(env_name("AWS::Region"), "AWS_REGION");
        assert_eq!(env_name("9lives"), "V_9LIVES");
        assert_eq!(kebab("ProcessOrders"), "process-orders");
        assert_eq!(kebab("process_orders"), "process-orders");
    }

    #[test]
    fn a_variable_is_named_once_per_meaning() {
        let mut vars = Vars::default();
        let a = vars.need("queue", "the orders queue");
        let b = vars.need("queue", "the refunds queue");
        let again = vars.need("other", "the orders queue");
        assert_eq!(a, Val::Expr("${QUEUE}".into()));
        assert_eq!(b, Val::Expr("${QUEUE_2}".into()));
        assert_eq!(again, a);
    }

    #[test]
    fn literal_dollar_braces_are_escaped_for_sluice() {
        assert_eq!(Val::str("a ${b}").text().unwrap(), "a $${b}");
        let joined = Val::concat(&[Val::str("x-${y}-"), Val::Expr("${REGION}".into())]).unwrap();
        assert_eq!(joined, Val::Expr("x-$${y}-${REGION}".into()));
    }

    #[test]
    fn variables_inside_json_stay_variables_and_literals_stay_literal() {
        let pattern = parse_expr_pattern(r#"{"type": ["${KIND}", "a$${b}"], "n": [1]}"#).unwrap();
        let rendered = render_json(&pattern);
        assert_eq!(
            serde_json::from_str::<Json>(&rendered).unwrap(),
            serde_json::json!({"type": ["${KIND}", "a$${b}"], "n": [1]})
        );
        assert_eq!(
            from_json(pattern["type"][0].clone()),
            Val::Expr("${KIND}".into())
        );
        assert_eq!(pattern["type"][1], "a${b}");
        let mut vars = Vars::default();
        assert_eq!(
            vars.need("Home", "a parameter"),
            Val::Expr("${HOME_VALUE}".into())
        );
    }
}
