//! Terraform files (HCL) read into a [`Plan`]: `aws_lambda_function`,
//! `aws_lambda_event_source_mapping`, `aws_lambda_function_event_invoke_config`,
//! `aws_s3_bucket_notification` (its `lambda_function` blocks; its `queue` blocks are noted on
//! the mapping that reads the queue), and schedules
//! (`aws_cloudwatch_event_rule` with its `aws_cloudwatch_event_target`, `aws_scheduler_schedule`).
//!
//! Expressions are evaluated as far as the files allow: literals, string templates,
//! `var.*` (to their defaults), `local.*`, `jsonencode(...)`, and references to resources in the
//! same files (`aws_sqs_queue.orders.arn` from the queue's `name`, with `${AWS_REGION}` and
//! `${AWS_ACCOUNT_ID}` unless the `aws` provider names its region). Anything else (`data.*`,
//! `module.*`, conditionals, loops) becomes a variable the summary names.

use super::{
    AsyncConfig, Dest, Event, Function, ImportError, Plan, Settings, Source, Val, from_json,
    render_json, to_json,
};
use hcl::expr::{Expression, TraversalOperator};
use hcl::template::Element;
use hcl::{Block, Body, ObjectKey};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How deep locals may refer to locals.
const MAX_DEPTH: usize = 16;
/// How many expressions the files may evaluate in all: locals that each name the next
/// several times would otherwise take exponential time.
const MAX_EVALUATIONS: usize = 200_000;

#[derive(Default)]
struct Files {
    variables: BTreeMap<String, Option<Expression>>,
    locals: BTreeMap<String, Expression>,
    /// (type, name) → body, in file order.
    resources: Vec<((String, String), Body)>,
    region: Option<String>,
    plan: Plan,
    /// Expressions evaluated so far (see [`MAX_EVALUATIONS`]).
    evaluations: usize,
    /// Bucket notifications to queues: (queue ARN, what the bucket sends, origin), noted on the
    /// mappings that read those queues once every resource is read.
    queue_notifications: Vec<(Val, String, String)>,
}

/// Where an expression naming a function leads (see [`Files::named_function`]).
enum Named {
    /// A function of these files.
    Known(usize),
    /// A function these files do not define, by its name.
    Unknown(String),
    /// Nothing the files can say.
    Nothing,
}

pub(super) fn read(files: &[(PathBuf, String)]) -> Result<Plan, ImportError> {
    let mut tf = Files::default();
    for (path, text) in files {
        let body = hcl::parse(text).map_err(|error| ImportError::Parse {
            path: path.clone(),
            message: error.to_string(),
        })?;
        tf.add(&body);
    }
    tf.read_resources();
    tf.note_queue_notifications();
    if tf.evaluations > MAX_EVALUATIONS {
        return Err(ImportError::Content {
            path: files.first().map(|(p, _)| p.clone()).unwrap_or_default(),
            message: format!(
                "its expressions expand to more than {MAX_EVALUATIONS} values; look for locals that name each other several times"
            ),
        });
    }
    Ok(tf.plan)
}

fn attr<'b>(body: &'b Body, key: &str) -> Option<&'b Expression> {
    body.attributes()
        .find(|a| a.key.as_str() == key)
        .map(|a| &a.expr)
        .filter(|e| !matches!(e, Expression::Null))
}

fn blocks<'b>(body: &'b Body, identifier: &'b str) -> impl Iterator<Item = &'b Block> + 'b {
    body.blocks()
        .filter(move |b| b.identifier.as_str() == identifier)
}

fn text_of(expression: &Expression) -> String {
    hcl::format::to_string(expression).unwrap_or_else(|_| "an expression".into())
}

/// `type.name.attribute` of a resource reference.
fn reference(expression: &Expression) -> Option<(String, String, String)> {
    let Expression::Traversal(traversal) = expression else {
        return None;
    };
    let Expression::Variable(root) = &traversal.expr else {
        return None;
    };
    // `aws_lambda_function.f["a"].arn` is read as `aws_lambda_function.f.arn`: one instance of
    // a resource with count or for_each stands for all (the summary says so).
    let names: Vec<&str> = traversal
        .operators
        .iter()
        .filter(|op| {
            !matches!(
                op,
                TraversalOperator::Index(_) | TraversalOperator::LegacyIndex(_)
            )
        })
        .map(|op| match op {
            TraversalOperator::GetAttr(ident) => Some(ident.as_str()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    match names.as_slice() {
        [kind, name, attribute] if root.as_str() == "data" => Some((
            format!("data.{kind}"),
            (*name).to_owned(),
            (*attribute).to_owned(),
        )),
        [name, attribute] => Some((
            root.to_string(),
            (*name).to_owned(),
            (*attribute).to_owned(),
        )),
        [name] => Some((root.to_string(), (*name).to_owned(), String::new())),
        _ => None,
    }
}

impl Files {
    /// Takes in one file's variables, locals, resources and default provider region.
    fn add(&mut self, body: &Body) {
        for block in body.blocks() {
            let labels: Vec<&str> = block.labels.iter().map(|l| l.as_str()).collect();
            match (block.identifier.as_str(), labels.as_slice()) {
                ("variable", [name]) => {
                    self.variables
                        .insert((*name).to_owned(), attr(&block.body, "default").cloned());
                }
                ("locals", []) => {
                    for attribute in block.body.attributes() {
                        self.locals
                            .insert(attribute.key.to_string(), attribute.expr.clone());
                    }
                }
                ("resource", [kind, name]) => self
                    .resources
                    .push((((*kind).to_owned(), (*name).to_owned()), block.body.clone())),
                // The default provider's region (an aliased provider serves other resources).
                ("provider", ["aws"]) if attr(&block.body, "alias").is_none() => {
                    if let Some(Expression::String(region)) = attr(&block.body, "region") {
                        self.region = Some(region.clone());
                    }
                }
                _ => {}
            }
        }
    }

    fn resource(&self, kind: &str, name: &str) -> Option<&Body> {
        self.resources
            .iter()
            .find(|((k, n), _)| k == kind && n == name)
            .map(|(_, body)| body)
    }

    fn unresolved(&mut self, hint: &str, what: String) -> Option<Val> {
        Some(self.plan.vars.need(hint, what))
    }

    fn region(&mut self) -> Val {
        match &self.region {
            Some(region) => Val::str(region),
            None => self.plan.vars.region(),
        }
    }

    /// Evaluates an expression; `None` for null.
    fn eval(&mut self, expression: &Expression, hint: &str, depth: usize) -> Option<Val> {
        self.evaluations += 1;
        if depth > MAX_DEPTH || self.evaluations > MAX_EVALUATIONS {
            return self.unresolved(hint, format!("the value of {}", text_of(expression)));
        }
        match expression {
            Expression::Null => None,
            Expression::Bool(b) => Some(Val::Lit(Json::Bool(*b))),
            Expression::Number(n) => Some(Val::Lit(
                n.as_i64()
                    .map(Json::from)
                    .or_else(|| {
                        n.as_f64()
                            .and_then(serde_json::Number::from_f64)
                            .map(Json::Number)
                    })
                    .unwrap_or(Json::Null),
            )),
            Expression::String(s) => Some(Val::str(s)),
            Expression::Parenthesis(inner) => self.eval(inner, hint, depth + 1),
            Expression::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    if let Some(val) = self.eval(item, hint, depth + 1) {
                        out.push(to_json(val));
                    }
                }
                Some(Val::Lit(Json::Array(out)))
            }
            Expression::Object(object) => {
                let mut out = Map::new();
                for (key, value) in object {
                    let key = match key {
                        ObjectKey::Identifier(ident) => ident.to_string(),
                        // A key only the deployment knows: the object is a value to set.
                        ObjectKey::Expression(e) => match self.eval(e, hint, depth + 1) {
                            Some(Val::Lit(Json::String(s))) => s,
                            _ => {
                                return self.unresolved(
                                    hint,
                                    format!("the value of {}", text_of(expression)),
                                );
                            }
                        },
                        other => format!("{other:?}"),
                    };
                    if let Some(val) = self.eval(value, &key, depth + 1) {
                        out.insert(key, to_json(val));
                    }
                }
                Some(Val::Lit(Json::Object(out)))
            }
            Expression::TemplateExpr(template) => {
                let Ok(parsed) = hcl::template::Template::from_expr(template) else {
                    return self.unresolved(hint, format!("the value of {}", text_of(expression)));
                };
                let mut parts = Vec::new();
                for element in parsed.elements() {
                    match element {
                        Element::Literal(text) => parts.push(Val::str(text)),
                        Element::Interpolation(interpolation) => {
                            parts.push(self.eval(&interpolation.expr, hint, depth + 1)?)
                        }
                        Element::Directive(_) => {
                            return self
                                .unresolved(hint, format!("the value of {}", text_of(expression)));
                        }
                    }
                }
                Val::concat(&parts)
            }
            Expression::FuncCall(call) => {
                let name = call.name.name.as_str();
                match (name, call.args.as_slice()) {
                    // JSON text; values with variables stay variables inside it.
                    ("jsonencode", [argument]) => match self.eval(argument, hint, depth + 1)? {
                        Val::Lit(json) if !render_json(&json).contains("${") => {
                            Some(Val::str(json.to_string()))
                        }
                        val => Some(Val::Expr(render_json(&to_json(val)))),
                    },
                    ("tostring" | "tonumber" | "tobool", [argument]) => {
                        self.eval(argument, hint, depth + 1)
                    }
                    _ => self.unresolved(hint, format!("the value of {}", text_of(expression))),
                }
            }
            Expression::Traversal(_) => match reference(expression) {
                Some((root, name, attribute)) => {
                    self.traverse(&root, &name, &attribute, expression, depth)
                }
                None => self.unresolved(hint, format!("the value of {}", text_of(expression))),
            },
            _ => self.unresolved(hint, format!("the value of {}", text_of(expression))),
        }
    }

    fn traverse(
        &mut self,
        root: &str,
        name: &str,
        attribute: &str,
        expression: &Expression,
        depth: usize,
    ) -> Option<Val> {
        match root {
            "var" => match self.variables.get(name).cloned() {
                Some(Some(default)) => self.eval(&default, name, depth + 1),
                _ => self.unresolved(name, format!("Terraform variable {name}")),
            },
            "local" => match self.locals.get(name).cloned() {
                Some(value) => self.eval(&value, name, depth + 1),
                None => self.unresolved(name, format!("the value of local.{name}")),
            },
            kind if kind.starts_with("aws_") => {
                self.resource_attribute(kind, name, attribute, depth)
            }
            _ => self.unresolved(
                &format!("{name}_{attribute}"),
                format!("the value of {}", text_of(expression)),
            ),
        }
    }

    /// An attribute of a resource in the files, from its name arguments.
    fn resource_attribute(
        &mut self,
        kind: &str,
        name: &str,
        attribute: &str,
        depth: usize,
    ) -> Option<Val> {
        let name_key = match kind {
            "aws_sqs_queue"
            | "aws_kinesis_stream"
            | "aws_dynamodb_table"
            | "aws_sns_topic"
            | "aws_kinesis_stream_consumer"
            | "aws_msk_cluster" => "name",
            "aws_s3_bucket" => "bucket",
            "aws_lambda_function" => "function_name",
            "aws_cloudwatch_event_rule" => "name",
            _ => "",
        };
        let literal_name = self
            .resource(kind, name)
            .and_then(|body| attr(body, name_key))
            .cloned();
        // Through `depth`: a name that refers to itself ends as a variable, not a stack overflow.
        let resolved = match literal_name {
            Some(expression) => self.eval(&expression, name, depth + 1),
            None => None,
        };
        let what = format!("{attribute} of {kind}.{name}");
        let Some(resource_name) = resolved else {
            let hint = match (kind, attribute) {
                ("aws_sqs_queue", _) => format!("{name}_queue_url"),
                _ => format!("{name}_{attribute}"),
            };
            let what = match kind {
                "aws_sqs_queue" => format!("the URL of queue {kind}.{name}"),
                "aws_msk_cluster" if attribute.starts_with("bootstrap") => {
                    format!("the bootstrap brokers of MSK cluster {kind}.{name}")
                }
                _ => what,
            };
            return self.unresolved(&hint, what);
        };
        let arn = |this: &mut Self, service: &str, prefix: &str| {
            let region = this.region();
            let account = this.plan.vars.account();
            super::arn(service, region, account, prefix, resource_name.clone())
        };
        match (kind, attribute) {
            ("aws_sqs_queue", "arn") => arn(self, "sqs", ""),
            ("aws_sqs_queue", "url" | "id") => {
                let region = self.region();
                let account = self.plan.vars.account();
                Val::concat(&[
                    Val::str("https://sqs."),
                    region,
                    Val::str(".amazonaws.com/"),
                    account,
                    Val::str("/"),
                    resource_name.clone(),
                ])
            }
            ("aws_kinesis_stream", "arn" | "id") => arn(self, "kinesis", "stream/"),
            ("aws_dynamodb_table", "arn") => arn(self, "dynamodb", "table/"),
            ("aws_sns_topic", "arn" | "id") => arn(self, "sns", ""),
            ("aws_lambda_function", "arn" | "qualified_arn") => arn(self, "lambda", "function:"),
            ("aws_s3_bucket", "arn") => Val::concat(&[Val::str("arn:aws:s3:::"), resource_name]),
            (_, "name" | "id" | "bucket" | "function_name") => Some(resource_name),
            _ => self.unresolved(&format!("{name}_{attribute}"), what),
        }
    }

    fn field(&mut self, body: &Body, key: &str, hint: &str) -> Option<Val> {
        let expression = attr(body, key)?.clone();
        self.eval(&expression, &format!("{hint}_{key}"), 0)
    }

    fn list(&mut self, body: &Body, key: &str, hint: &str) -> Vec<Val> {
        match self.field(body, key, hint) {
            Some(Val::Lit(Json::Array(items))) => items.into_iter().map(from_json).collect(),
            Some(other) => vec![other],
            None => Vec::new(),
        }
    }

    /// The function a `function_name` argument refers to, or a placeholder.
    fn function_for(&mut self, body: &Body, origin: &str) -> usize {
        let named = match attr(body, "function_name").cloned() {
            Some(expression) => self.named_function(&expression, origin, true),
            None => Named::Nothing,
        };
        match named {
            Named::Known(i) => i,
            Named::Unknown(name) => self.plan.placeholder(&name, origin, "these files"),
            Named::Nothing => {
                self.plan.functions.push(Function {
                    name: "function".into(),
                    origin: format!("the function of {origin}"),
                    default_timeout: 3,
                    ..Function::default()
                });
                self.plan.functions.len() - 1
            }
        }
    }

    /// The function of these files an ARN expression refers to, if any.
    fn referenced_function(&mut self, expression: &Expression, origin: &str) -> Option<usize> {
        match self.named_function(expression, origin, true) {
            Named::Known(i) => Some(i),
            Named::Unknown(_) | Named::Nothing => None,
        }
    }

    /// Where an expression naming a function (its name or ARN) leads:
    /// `aws_lambda_function.f.*`, an `aws_lambda_alias` of these files followed to its function
    /// when `follow_alias` (once: an alias of an alias is not valid in Lambda, and a loop of them
    /// must end; noted, since Lambda ran the alias's version), or the name the expression
    /// evaluates to.
    fn named_function(
        &mut self,
        expression: &Expression,
        origin: &str,
        follow_alias: bool,
    ) -> Named {
        let position = |this: &Self, name: &str| {
            this.plan
                .functions
                .iter()
                .position(|f| f.name == name || f.aliases.iter().any(|a| a == name))
        };
        match reference(expression) {
            Some((kind, name, _)) if kind == "aws_lambda_function" => {
                if let Some(i) = position(self, &name) {
                    return Named::Known(i);
                }
            }
            Some((kind, alias, _)) if kind == "aws_lambda_alias" && follow_alias => {
                let function_name = self
                    .resource(&kind, &alias)
                    .and_then(|body| attr(body, "function_name"))
                    .cloned();
                if let Some(function_name) = function_name {
                    let named = self.named_function(&function_name, origin, false);
                    if let Named::Known(i) = named {
                        let function = self.plan.functions[i].name.clone();
                        self.plan.unsupported.push(format!(
                            "{origin}: Lambda invokes alias {alias}, the version it points to; sluice runs function {function} as these files build it"
                        ));
                    }
                    return named;
                }
            }
            _ => {}
        }
        let Some(text) = self.eval(expression, "function", 0).and_then(|v| v.text()) else {
            return Named::Nothing;
        };
        // A function's name, or the name in its (qualified) ARN.
        let name = text
            .split(":function:")
            .nth(1)
            .map(|rest| rest.split(':').next().unwrap_or(rest).to_owned())
            .unwrap_or(text);
        match position(self, &name) {
            Some(i) => Named::Known(i),
            None => Named::Unknown(name),
        }
    }

    fn read_resources(&mut self) {
        let resources = self.resources.clone();
        for ((kind, name), body) in &resources {
            if kind == "aws_lambda_function" {
                let function = self.function(name, body);
                self.plan.functions.push(function);
            }
        }
        for ((kind, name), body) in &resources {
            let origin = format!("{kind}.{name}");
            let relevant = kind.starts_with("aws_lambda_")
                || kind == "aws_s3_bucket_notification"
                || kind == "aws_cloudwatch_event_target"
                || kind == "aws_scheduler_schedule";
            // `count = 0` creates nothing; a count only the deployment knows may create
            // nothing either: its events are written disabled.
            let mut undecided = None;
            if relevant && let Some(count) = attr(body, "count").cloned() {
                match self.eval(&count, &format!("{name}_count"), 0) {
                    Some(n) if n.as_i64() == Some(0) => {
                        self.plan
                            .unsupported
                            .push(format!("{origin}: count is 0; left out"));
                        continue;
                    }
                    Some(n) if n.as_i64() == Some(1) => {}
                    Some(n) if n.as_i64().is_some() => self.plan.unsupported.push(format!(
                        "{origin}: count is {}; one instance is written, repeat it for each",
                        n.text().unwrap_or_default()
                    )),
                    _ => {
                        undecided = Some(format!(
                            "{origin}: count is decided at deployment ({}); enable it if the deployment creates it",
                            text_of(&count)
                        ))
                    }
                }
            }
            if relevant && attr(body, "for_each").is_some() {
                self.plan.unsupported.push(format!(
                    "{origin}: for_each is not expanded; one instance is written, repeat it for each"
                ));
            }
            let before: Vec<usize> = self.plan.functions.iter().map(|f| f.events.len()).collect();
            self.read_resource(kind, name, body, &origin);
            if let Some(why) = undecided {
                for (i, function) in self.plan.functions.iter_mut().enumerate() {
                    let from = before.get(i).copied().unwrap_or(0);
                    for event in function.events.iter_mut().skip(from) {
                        event.settings.disabled_because = Some(why.clone());
                    }
                }
            }
        }
    }

    /// One resource that may add events or asynchronous settings.
    fn read_resource(&mut self, kind: &str, name: &str, body: &Body, origin: &str) {
        let origin = origin.to_owned();
        {
            match kind {
                "aws_lambda_event_source_mapping" => {
                    let i = self.function_for(body, &origin);
                    if let Some(event) = self.mapping(name, body, &origin) {
                        self.plan.functions[i].events.push(event);
                    }
                }
                "aws_lambda_function_event_invoke_config" => {
                    let i = self.function_for(body, &origin);
                    let dest = |this: &mut Self, which: &str| {
                        let block = blocks(body, "destination_config")
                            .next()
                            .and_then(|d| blocks(&d.body, which).next())?;
                        let arn = this.field(&block.body, "destination", which)?;
                        Some(Dest {
                            arn,
                            kind: None,
                            origin: format!("{origin} destination_config.{which}"),
                        })
                    };
                    let config = AsyncConfig {
                        on_success: dest(self, "on_success"),
                        on_failure: dest(self, "on_failure"),
                        max_event_age: self.field(body, "maximum_event_age_in_seconds", name),
                        max_retries: self.field(body, "maximum_retry_attempts", name),
                    };
                    self.plan.functions[i].invoke = config;
                }
                "aws_s3_bucket_notification" => self.notification(name, body, &origin),
                "aws_cloudwatch_event_target" => self.event_target(name, body, &origin),
                "aws_scheduler_schedule" => self.scheduler(name, body, &origin),
                _ => {}
            }
        }
    }

    fn function(&mut self, name: &str, body: &Body) -> Function {
        let mut function = Function {
            name: name.to_owned(),
            origin: format!("aws_lambda_function.{name}"),
            default_timeout: 3,
            ..Function::default()
        };
        if let Some(alias) = self
            .field(body, "function_name", name)
            .and_then(|v| v.text())
        {
            function.aliases.push(alias);
        }
        let image = self
            .field(body, "package_type", name)
            .and_then(|v| v.text())
            == Some("Image".into());
        if !image {
            function.runtime = self.field(body, "runtime", name);
        }
        function.handler = self.field(body, "handler", name);
        function.timeout = self.field(body, "timeout", name);
        function.memory = self.field(body, "memory_size", name);
        function.reserved_concurrency = self
            .field(body, "reserved_concurrent_executions", name)
            .filter(|v| v.as_i64() != Some(-1));
        if let Some(environment) = blocks(body, "environment").next()
            && let Some(Val::Lit(Json::Object(variables))) =
                self.field(&environment.body, "variables", name)
        {
            for (key, value) in variables {
                function.env.push((key, from_json(value)));
            }
        }
        if let Some(dlq) = blocks(body, "dead_letter_config").next() {
            function.dead_letter = self.field(&dlq.body, "target_arn", name).map(|arn| Dest {
                arn,
                kind: None,
                origin: format!("aws_lambda_function.{name} dead_letter_config"),
            });
        }
        function
    }

    fn mapping(&mut self, name: &str, body: &Body, origin: &str) -> Option<Event> {
        let mut s = Settings {
            enabled: self.field(body, "enabled", name),
            batch_size: self.field(body, "batch_size", name),
            window: self.field(body, "maximum_batching_window_in_seconds", name),
            starting_position: self.field(body, "starting_position", name),
            starting_timestamp: self.field(body, "starting_position_timestamp", name),
            parallelization: self.field(body, "parallelization_factor", name),
            max_retries: self.field(body, "maximum_retry_attempts", name),
            max_record_age: self.field(body, "maximum_record_age_in_seconds", name),
            bisect: self.field(body, "bisect_batch_on_function_error", name),
            tumbling_window: self.field(body, "tumbling_window_in_seconds", name),
            ..Settings::default()
        };
        s.report_batch_item_failures = self
            .list(body, "function_response_types", name)
            .iter()
            .any(|t| t.as_str() == Some("ReportBatchItemFailures"));
        if let Some(scaling) = blocks(body, "scaling_config").next() {
            s.max_concurrency = self.field(&scaling.body, "maximum_concurrency", name);
        }
        for criteria in blocks(body, "filter_criteria") {
            for filter in blocks(&criteria.body, "filter") {
                let pattern = self.field(&filter.body, "pattern", name);
                s.add_pattern(pattern, origin);
            }
            if blocks(&criteria.body, "dynamic").next().is_some() {
                s.disabled_because = Some(format!(
                    "{origin}: filter_criteria has dynamic filter blocks, which are not evaluated; add the patterns to filters, then enable the mapping"
                ));
            }
        }
        if let Some(on_failure) = blocks(body, "destination_config")
            .next()
            .and_then(|d| blocks(&d.body, "on_failure").next())
        {
            s.on_failure = self
                .field(&on_failure.body, "destination_arn", name)
                .map(|arn| Dest {
                    arn,
                    kind: None,
                    origin: format!("{origin} destination_config.on_failure"),
                });
        }
        for config in [
            "amazon_managed_kafka_event_source_config",
            "self_managed_kafka_event_source_config",
        ] {
            if let Some(block) = blocks(body, config).next() {
                s.group_id = self.field(&block.body, "consumer_group_id", name);
            }
        }
        for access in blocks(body, "source_access_configuration") {
            let kind = self
                .field(&access.body, "type", name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if let Some(uri) = self.field(&access.body, "uri", name) {
                s.access.push((kind, uri));
            }
        }
        for config in [
            "amazon_managed_kafka_event_source_config",
            "self_managed_kafka_event_source_config",
        ] {
            if blocks(body, config)
                .any(|b| blocks(&b.body, "schema_registry_config").next().is_some())
            {
                self.plan.unsupported.push(format!(
                    "{origin}: {config}.schema_registry_config (write source.kafka.schema_registry by hand: see \"Schema registries\")"
                ));
            }
        }
        for known_unsupported in [
            "provisioned_poller_config",
            "document_db_event_source_config",
            "metrics_config",
        ] {
            if blocks(body, known_unsupported).next().is_some() {
                self.plan
                    .unsupported
                    .push(format!("{origin}: {known_unsupported}"));
            }
        }
        // A block generated by `dynamic` (filters, scaling, destinations) is not evaluated:
        // enabled without it, the mapping could do what Lambda did not.
        let dynamic: Vec<String> = blocks(body, "dynamic")
            .filter_map(|b| b.labels.first().map(|l| l.as_str().to_owned()))
            .collect();
        if !dynamic.is_empty() {
            s.disabled_because = Some(format!(
                "{origin}: dynamic {} blocks are not evaluated; write them out, then enable the mapping",
                dynamic.join(", ")
            ));
        }
        let topics = self.list(body, "topics", name);
        if let Some(source) = blocks(body, "self_managed_event_source").next() {
            let bootstrap = match self.field(&source.body, "endpoints", name) {
                Some(Val::Lit(Json::Object(endpoints))) => endpoints
                    .get("KAFKA_BOOTSTRAP_SERVERS")
                    .cloned()
                    .map(from_json),
                _ => None,
            }
            .unwrap_or_else(|| {
                self.plan.vars.need(
                    &format!("{name}_bootstrap_servers"),
                    format!("the Kafka bootstrap servers of {origin}"),
                )
            });
            return Some(Event {
                name: name.to_owned(),
                origin: origin.to_owned(),
                source: Source::Kafka { bootstrap, topics },
                settings: s,
            });
        }
        let arn_expression = attr(body, "event_source_arn")?.clone();
        let referenced = reference(&arn_expression);
        // An enhanced fan-out consumer in these files: its stream, and its name.
        if let Some((kind, consumer, _)) = &referenced
            && kind == "aws_kinesis_stream_consumer"
            && let Some(consumer_body) = self.resource(kind, consumer).cloned()
            && let Some(stream) = self.field(&consumer_body, "stream_arn", consumer)
        {
            let consumer = self.field(&consumer_body, "name", consumer);
            return Some(Event {
                name: name.to_owned(),
                origin: origin.to_owned(),
                source: Source::Kinesis { stream, consumer },
                settings: s,
            });
        }
        let arn = self.eval(&arn_expression, &format!("{name}_source_arn"), 0)?;
        let service = match referenced
            .as_ref()
            .map(|(k, _, _)| k.trim_start_matches("data."))
        {
            Some("aws_sqs_queue") => Some("sqs".to_owned()),
            Some("aws_dynamodb_table") => Some("dynamodb".to_owned()),
            Some("aws_kinesis_stream" | "aws_kinesis_stream_consumer") => {
                Some("kinesis".to_owned())
            }
            Some("aws_msk_cluster") => Some("kafka".to_owned()),
            _ => arn
                .text()
                .and_then(|t| t.split(':').nth(2).map(str::to_owned))
                .filter(|s| !s.contains("${")),
        };
        // An ARN from a variable: its kind from its name and the settings given.
        let service = service.or_else(|| {
            let named = text_of(&arn_expression);
            let kind = super::infer_kind(
                &named,
                s.starting_position.is_some(),
                !topics.is_empty(),
            );
            self.plan.unsupported.push(format!(
                "{origin}: the kind of {named} is not in these files; read as {kind} (from its name and settings)"
            ));
            Some(kind.to_owned())
        });
        let source = match service.as_deref() {
            Some("sqs") => Source::Sqs { queue: arn },
            Some("dynamodb") => {
                let table = match &referenced {
                    Some((kind, table, attribute))
                        if kind == "aws_dynamodb_table" && attribute == "stream_arn" =>
                    {
                        let body = self.resource(kind, table).cloned();
                        body.and_then(|b| self.field(&b, "name", table))
                            .filter(|v| matches!(v, Val::Lit(_)))
                    }
                    _ => None,
                };
                Source::DynamoDb {
                    stream: table.is_none().then_some(arn),
                    table,
                }
            }
            Some("kinesis") => Source::Kinesis {
                stream: arn,
                consumer: None,
            },
            Some("kafka") => Source::Msk {
                cluster: arn,
                topics,
            },
            other => {
                self.plan.unsupported.push(format!(
                    "{origin}: an event source sluice does not read ({})",
                    other.unwrap_or("unknown")
                ));
                return None;
            }
        };
        Some(Event {
            name: name.to_owned(),
            origin: origin.to_owned(),
            source,
            settings: s,
        })
    }

    /// `lambda_function` blocks of a bucket notification: S3 events to those functions.
    fn notification(&mut self, name: &str, body: &Body, origin: &str) {
        let Some(bucket) = self.field(body, "bucket", name) else {
            return;
        };
        for (n, block) in blocks(body, "lambda_function").enumerate() {
            let Some(target) = attr(&block.body, "lambda_function_arn").cloned() else {
                continue;
            };
            let Some(i) = self.referenced_function(&target, origin) else {
                self.plan.unsupported.push(format!(
                    "{origin}: lambda_function {} is not a function of these files",
                    text_of(&target)
                ));
                continue;
            };
            let events = self.list(&block.body, "events", name);
            let prefix = self.field(&block.body, "filter_prefix", name);
            let suffix = self.field(&block.body, "filter_suffix", name);
            self.plan.functions[i].events.push(Event {
                name: format!("{name}-{}", n + 1),
                origin: format!("{origin} lambda_function[{n}]"),
                source: Source::S3 {
                    bucket: bucket.clone(),
                    events,
                    prefix,
                    suffix,
                },
                settings: Settings::default(),
            });
        }
        for (n, block) in blocks(body, "queue").enumerate() {
            let Some(queue) = self.field(&block.body, "queue_arn", name) else {
                continue;
            };
            let mut what: Vec<String> = self
                .list(&block.body, "events", name)
                .iter()
                .filter_map(Val::text)
                .collect();
            for (key, label) in [("filter_prefix", "prefix"), ("filter_suffix", "suffix")] {
                if let Some(value) = self.field(&block.body, key, name).and_then(|v| v.text()) {
                    what.push(format!("{label} {value}"));
                }
            }
            self.queue_notifications.push((
                queue,
                format!(
                    "bucket {} sends {} here",
                    bucket.text().unwrap_or_default(),
                    what.join(", ")
                ),
                format!("{origin} queue[{n}]"),
            ));
        }
    }

    /// Notes each bucket notification to a queue on the SQS mappings that read that queue: the
    /// function gets SQS messages whose bodies are S3 events, as Lambda gave them (sluice's `s3`
    /// source would give it the S3 events themselves, a change to the handler).
    fn note_queue_notifications(&mut self) {
        for (queue, what, origin) in std::mem::take(&mut self.queue_notifications) {
            let mut read = false;
            for event in self
                .plan
                .functions
                .iter_mut()
                .flat_map(|f| f.events.iter_mut())
            {
                if let Source::Sqs { queue: read_queue } = &event.source
                    && *read_queue == queue
                {
                    let note = format!(
                        "{what} ({origin}): the function gets SQS messages whose bodies are S3 events, as from Lambda; an s3 source would give it the S3 events themselves"
                    );
                    // Several buckets (or prefixes) may send to one queue: each is noted.
                    event
                        .settings
                        .notes
                        .entry("queue")
                        .and_modify(|notes| {
                            notes.push_str("; ");
                            notes.push_str(&note);
                        })
                        .or_insert(note);
                    read = true;
                }
            }
            if !read {
                self.plan.unsupported.push(format!(
                    "{origin}: notifications to queue {}, which no event source mapping in these files reads; nothing is imported for them",
                    queue.text().unwrap_or_default()
                ));
            }
        }
    }

    /// A CloudWatch Events target that is a function, on a rule with a schedule.
    fn event_target(&mut self, name: &str, body: &Body, origin: &str) {
        let Some(rule) = attr(body, "rule").and_then(reference) else {
            return;
        };
        let Some(rule_body) = self.resource("aws_cloudwatch_event_rule", &rule.1).cloned() else {
            return;
        };
        let Some(expression) = self.field(&rule_body, "schedule_expression", &rule.1) else {
            return;
        };
        let Some(i) = self.target_function(body, origin) else {
            return;
        };
        let settings = self.schedule_state(&rule_body, name, origin);
        if blocks(body, "input_transformer").next().is_some() || attr(body, "input_path").is_some()
        {
            self.plan.unsupported.push(format!(
                "{origin}: input_transformer/input_path (shapes the Scheduled Event; use input, or shape it in the handler)"
            ));
        }
        let input = self.input(body, name);
        self.plan.functions[i].events.push(Event {
            name: rule.1.clone(),
            origin: format!("aws_cloudwatch_event_rule.{} via {origin}", rule.1),
            source: Source::Schedule {
                expression,
                timezone: None,
                input,
            },
            settings,
        });
    }

    fn scheduler(&mut self, name: &str, body: &Body, origin: &str) {
        let Some(target) = blocks(body, "target").next().map(|b| b.body.clone()) else {
            return;
        };
        let Some(i) = self.target_function(&target, origin) else {
            return;
        };
        let Some(expression) = self.field(body, "schedule_expression", name) else {
            return;
        };
        let timezone = self.field(body, "schedule_expression_timezone", name);
        let settings = self.schedule_state(body, name, origin);
        for key in ["start_date", "end_date"] {
            if attr(body, key).is_some() {
                self.plan.unsupported.push(format!(
                    "{origin}: {key}; the schedule fires at its times, always"
                ));
            }
        }
        if let Some(window) = blocks(body, "flexible_time_window").next()
            && self
                .field(&window.body, "mode", name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .as_deref()
                != Some("OFF")
        {
            self.plan.unsupported.push(format!(
                "{origin}: flexible_time_window; the schedule fires at its exact times"
            ));
        }
        for key in ["retry_policy", "dead_letter_config"] {
            if blocks(&target, key).next().is_some() {
                self.plan.unsupported.push(format!(
                    "{origin}: target.{key} is EventBridge's, for delivering to Lambda; sluice invokes the target itself, and failures follow the function's asynchronous policy"
                ));
            }
        }
        let input = self.input(&target, name);
        self.plan.functions[i].events.push(Event {
            name: name.to_owned(),
            origin: origin.to_owned(),
            source: Source::Schedule {
                expression,
                timezone,
                input,
            },
            settings,
        });
    }

    fn target_function(&mut self, body: &Body, origin: &str) -> Option<usize> {
        let arn = attr(body, "arn")?.clone();
        self.referenced_function(&arn, origin)
    }

    fn input(&mut self, body: &Body, name: &str) -> Option<Json> {
        super::json_input(self.field(body, "input", name)?)
    }

    /// A schedule's state: disabled, or decided at deployment (then written disabled, with
    /// why), from `state` (`"ENABLED"`/`"DISABLED"`) and `is_enabled`.
    fn schedule_state(&mut self, body: &Body, name: &str, origin: &str) -> Settings {
        let mut settings = Settings::default();
        let state = self.field(body, "state", name);
        let enabled = self.field(body, "is_enabled", name);
        let literal_off = state.as_ref().and_then(Val::as_str) == Some("DISABLED")
            || enabled.as_ref().and_then(Val::as_bool) == Some(false);
        if literal_off {
            settings.enabled = Some(Val::Lit(Json::Bool(false)));
        } else if let Some(undecided) = [state, enabled]
            .into_iter()
            .flatten()
            .find(|v| matches!(v, Val::Expr(_)))
        {
            settings.disabled_because = Some(format!(
                "{origin}: its state is decided at deployment ({}); enable the mapping if it is enabled",
                undecided.text().unwrap_or_default()
            ));
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn expression(text: &str) -> Expression {
        Expression::from_str(text).unwrap()
    }

    fn files(text: &str) -> Files {
        let mut tf = Files::default();
        tf.add(&hcl::parse(text).unwrap());
        tf
    }

    #[test]
    fn references_resolve_to_names_arns_and_variables() {
        let mut tf = files(
            r#"
variable "env" { default = "prod" }
variable "secret" {}
resource "aws_sqs_queue" "orders" { name = "orders-${var.env}" }
resource "aws_sqs_queue" "anonymous" {}
"#,
        );
        let mut eval = |text: &str| tf.eval(&expression(text), "hint", 0);
        assert_eq!(
            eval("aws_sqs_queue.orders.arn"),
            Some(Val::Expr(
                "arn:aws:sqs:${AWS_REGION}:${AWS_ACCOUNT_ID}:orders-prod".into()
            ))
        );
        assert_eq!(
            eval("aws_sqs_queue.anonymous.url"),
            Some(Val::Expr("${ANONYMOUS_QUEUE_URL}".into()))
        );
        assert_eq!(eval("var.secret"), Some(Val::Expr("${SECRET}".into())));
        assert_eq!(
            eval(r#"jsonencode({ body = { type = ["order"] } })"#),
            Some(Val::str(r#"{"body":{"type":["order"]}}"#))
        );
        assert_eq!(
            eval("data.aws_caller_identity.me.account_id"),
            Some(Val::Expr("${ME_ACCOUNT_ID}".into()))
        );
    }
}
