//! SAM and CloudFormation templates (YAML with the short-form intrinsics `!Ref`, `!GetAtt`,
//! `!Sub`, ..., or JSON) read into a [`Plan`].
//!
//! Intrinsics are resolved as far as the template allows: parameters to their defaults,
//! `Ref`/`Fn::GetAtt` of resources in the template to the names and ARNs their properties give
//! (with `${AWS_REGION}` and `${AWS_ACCOUNT_ID}` for the pseudo parameters), `Fn::Sub`,
//! `Fn::Join`, `Fn::Select`, `Fn::FindInMap`, and `Fn::If` on conditions decidable from the
//! defaults. Anything else becomes a variable the summary names. `Globals.Function` applies to
//! every `AWS::Serverless::Function`.

use super::{AsyncConfig, Dest, Event, Function, ImportError, Plan, Settings, Source, Val, Vars};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json, json};
use serde_saphyr::Tagged;
use std::collections::BTreeMap;
use std::path::Path;

/// How many references deep a value may be resolved: a reference that loops (a parameter whose
/// default refers to itself, a queue named after its own name) ends here as a variable.
const MAX_DEPTH: usize = 64;
/// How many intrinsics one template may resolve in all: references that fan out (a default of
/// `!Sub "${A}-${A}"` naming another such) would otherwise take exponential time.
const MAX_RESOLUTIONS: usize = 100_000;

/// Whether the stack creates a resource, by its `Condition` decided from parameter defaults.
enum Created {
    Yes,
    No,
    /// The condition depends on something the defaults do not say.
    Unknown(String),
}

/// A YAML node with its tag kept at every depth (serde's untagged enums would drop tags).
enum Node {
    Json(Json),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
    Tagged(String, Box<Node>),
}

struct NodeVisitor;

fn untag(tagged: Tagged<Node>) -> Node {
    match tagged.1 {
        Some(tag) if tag.starts_with('!') && !tag.starts_with("!!") => {
            Node::Tagged(tag, Box::new(tagged.0))
        }
        _ => tagged.0,
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Json(Json::Null))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Json(Json::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Json(Json::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Json(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Json(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Json(
            serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Json(Json::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Json(Json::String(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Tagged<Node>>()? {
            items.push(untag(item));
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Tagged<Node>>()? {
            entries.push((key, untag(value)));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// The node as CloudFormation's JSON form: `!Ref x` → `{"Ref": "x"}`, `!GetAtt a.b` →
/// `{"Fn::GetAtt": ["a", "b"]}`, `!Sub ...` → `{"Fn::Sub": ...}`.
fn to_json(node: Node) -> Json {
    match node {
        Node::Json(json) => json,
        Node::Seq(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Node::Map(entries) => Json::Object(
            entries
                .into_iter()
                .map(|(key, value)| (key, to_json(value)))
                .collect(),
        ),
        Node::Tagged(tag, inner) => {
            let name = &tag[1..];
            let inner = to_json(*inner);
            match name {
                "Ref" => json!({ "Ref": inner }),
                "Condition" => json!({ "Condition": inner }),
                "GetAtt" => match inner {
                    Json::String(text) => {
                        let (resource, attribute) =
                            text.split_once('.').unwrap_or((text.as_str(), ""));
                        json!({ "Fn::GetAtt": [resource, attribute] })
                    }
                    other => json!({ "Fn::GetAtt": other }),
                },
                _ => {
                    let mut object = Map::new();
                    object.insert(format!("Fn::{name}"), inner);
                    Json::Object(object)
                }
            }
        }
    }
}

/// Parses a template, YAML or JSON.
pub(super) fn parse(path: &Path, text: &str) -> Result<Json, ImportError> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|error| ImportError::Parse {
            path: path.to_owned(),
            message: format!("line {} column {}: {error}", error.line(), error.column()),
        });
    }
    let node: Tagged<Node> = serde_saphyr::from_str(text).map_err(|error| ImportError::Parse {
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    Ok(to_json(untag(node)))
}

pub(super) fn read(path: &Path, text: &str) -> Result<Plan, ImportError> {
    let template = parse(path, text)?;
    let empty = Map::new();
    let section = |name: &str| template.get(name).and_then(Json::as_object);
    let Some(resources) = section("Resources") else {
        return Err(ImportError::Content {
            path: path.to_owned(),
            message: "the template has no Resources".into(),
        });
    };
    let mut cfn = Template::new(
        resources,
        section("Parameters").unwrap_or(&empty),
        section("Mappings").unwrap_or(&empty),
        section("Conditions").unwrap_or(&empty),
        None,
        Plan::default(),
    );
    let globals = template
        .pointer("/Globals/Function")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    cfn.read_resources(&globals);
    if cfn.resolutions > MAX_RESOLUTIONS {
        return Err(ImportError::Content {
            path: path.to_owned(),
            message: format!(
                "its references expand to more than {MAX_RESOLUTIONS} values; look for parameters or conditions that name each other several times"
            ),
        });
    }
    Ok(cfn.plan)
}

/// A template being read.
pub(super) struct Template<'a> {
    pub resources: &'a Map<String, Json>,
    pub parameters: &'a Map<String, Json>,
    pub mappings: &'a Map<String, Json>,
    pub conditions: &'a Map<String, Json>,
    /// `AWS::Region` when the files name it (a Serverless Framework `provider.region`).
    pub region: Option<Val>,
    pub plan: Plan,
    /// References being resolved now (see [`MAX_DEPTH`]).
    pub depth: usize,
    /// Conditions decided so far: each is decided once, however often it is used.
    pub decided: BTreeMap<String, Option<bool>>,
    /// Intrinsics resolved so far (see [`MAX_RESOLUTIONS`]).
    pub resolutions: usize,
}

impl<'a> Template<'a> {
    /// A template's sections, nothing read yet.
    pub fn new(
        resources: &'a Map<String, Json>,
        parameters: &'a Map<String, Json>,
        mappings: &'a Map<String, Json>,
        conditions: &'a Map<String, Json>,
        region: Option<Val>,
        plan: Plan,
    ) -> Self {
        Template {
            resources,
            parameters,
            mappings,
            conditions,
            region,
            plan,
            depth: 0,
            decided: BTreeMap::new(),
            resolutions: 0,
        }
    }
}

/// The keys of `CreateEventSourceMapping` (and SAM's event properties) this import carries over
/// or knows to need nothing; any other key is reported as having no equivalent.
const KNOWN_ESM_KEYS: &[&str] = &[
    "Queue",
    "Stream",
    "EventSourceArn",
    "FunctionName",
    "BatchSize",
    "MaximumBatchingWindowInSeconds",
    "Enabled",
    "FilterCriteria",
    "FunctionResponseTypes",
    "ScalingConfig",
    "StartingPosition",
    "StartingPositionTimestamp",
    "ParallelizationFactor",
    "MaximumRetryAttempts",
    "MaximumRecordAgeInSeconds",
    "BisectBatchOnFunctionError",
    "TumblingWindowInSeconds",
    "DestinationConfig",
    "Topics",
    "ConsumerGroupId",
    "AmazonManagedKafkaEventSourceConfig",
    "SelfManagedKafkaEventSourceConfig",
    "SelfManagedEventSource",
    "KafkaBootstrapServers",
    "SourceAccessConfigurations",
    "KmsKeyArn",
    "Tags",
];

fn prop<'j>(props: &'j Json, key: &str) -> Option<&'j Json> {
    props.get(key).filter(|v| !v.is_null())
}

impl Template<'_> {
    fn vars(&mut self) -> &mut Vars {
        &mut self.plan.vars
    }

    fn note(&mut self, text: String) {
        self.plan.unsupported.push(text);
    }

    fn resource(&self, logical: &str) -> Option<(&str, &Json)> {
        let resource = self.resources.get(logical)?;
        let kind = resource.get("Type")?.as_str()?;
        Some((kind, resource.get("Properties").unwrap_or(&Json::Null)))
    }

    /// The literal name a resource's properties give it.
    fn resource_name(&mut self, logical: &str, key: &str) -> Option<Val> {
        let (_, props) = self.resource(logical)?;
        let value = props.get(key)?.clone();
        self.resolve(&value, logical)
    }

    /// Resolves a value; `None` for `AWS::NoValue` or null. `hint` names the variable an
    /// unresolvable value becomes.
    pub fn resolve(&mut self, value: &Json, hint: &str) -> Option<Val> {
        match value {
            Json::Null => None,
            Json::Object(object) if object.len() == 1 => {
                let (key, argument) = object.iter().next().expect("one entry");
                if key == super::EXPR_KEY {
                    // Text the Serverless resolver made, holding sluice variables.
                    return argument.as_str().map(|text| Val::Expr(text.to_owned()));
                }
                if key == "Ref" || key.starts_with("Fn::") {
                    self.resolutions += 1;
                    if self.resolutions > MAX_RESOLUTIONS {
                        return self.unresolved(
                            "unresolved",
                            format!("values past the first {MAX_RESOLUTIONS} references"),
                        );
                    }
                    if self.depth >= MAX_DEPTH {
                        self.note(format!(
                            "{value} refers to itself through other references; it is a variable"
                        ));
                        return self.unresolved(
                            hint,
                            format!("the value of {value}, which refers to itself"),
                        );
                    }
                    self.depth += 1;
                    let resolved = self.intrinsic(key, argument, hint);
                    self.depth -= 1;
                    // Only AWS::NoValue (directly or through Fn::If) means "no value"; an
                    // intrinsic that could not be evaluated (an index out of range, a
                    // malformed argument) is a value to set, never a silent default.
                    let no_value = argument.as_str() == Some("AWS::NoValue") || key == "Fn::If";
                    match resolved {
                        None if !no_value => {
                            self.unresolved(hint, format!("the value of {key} {argument}"))
                        }
                        other => other,
                    }
                } else {
                    Some(Val::Lit(value.clone()))
                }
            }
            other => Some(Val::Lit(other.clone())),
        }
    }

    /// A list value (`Topics`, `Events`), each element resolved; a single value is a list of one.
    pub fn list(&mut self, value: &Json, hint: &str) -> Vec<Val> {
        match value {
            Json::Array(items) => items
                .iter()
                .filter_map(|item| self.resolve(item, hint))
                .collect(),
            other => match self.resolve(other, hint) {
                Some(Val::Lit(Json::Array(items))) => items.into_iter().map(Val::Lit).collect(),
                Some(val) => vec![val],
                None => Vec::new(),
            },
        }
    }

    fn unresolved(&mut self, hint: &str, what: String) -> Option<Val> {
        Some(self.vars().need(hint, what))
    }

    fn intrinsic(&mut self, name: &str, argument: &Json, hint: &str) -> Option<Val> {
        match name {
            "Ref" => {
                let target = argument.as_str()?;
                self.reference(target, hint)
            }
            "Fn::GetAtt" => {
                let (resource, attribute) = match argument {
                    Json::Array(parts) => (
                        parts.first()?.as_str()?.to_owned(),
                        parts
                            .get(1)
                            .and_then(Json::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    Json::String(text) => {
                        let (r, a) = text.split_once('.').unwrap_or((text, ""));
                        (r.to_owned(), a.to_owned())
                    }
                    _ => {
                        return self
                            .unresolved(hint, format!("the value of Fn::GetAtt {argument}"));
                    }
                };
                self.attribute(&resource, &attribute)
            }
            "Fn::Sub" => {
                let (text, locals) = match argument {
                    Json::String(text) => (text.clone(), Map::new()),
                    Json::Array(parts) => (
                        parts.first()?.as_str()?.to_owned(),
                        parts
                            .get(1)
                            .and_then(Json::as_object)
                            .cloned()
                            .unwrap_or_default(),
                    ),
                    _ => return self.unresolved(hint, format!("the value of Fn::Sub {argument}")),
                };
                self.sub(&text, &locals, hint)
            }
            "Fn::Join" => {
                let parts = argument.as_array()?;
                let delimiter = parts.first()?.as_str().unwrap_or_default().to_owned();
                let items = self.list(parts.get(1)?, hint);
                let mut joined = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    if i > 0 {
                        joined.push(Val::str(&delimiter));
                    }
                    joined.push(item);
                }
                Val::concat(&joined)
            }
            "Fn::Select" => {
                let parts = argument.as_array()?;
                let index = self.resolve(parts.first()?, hint)?.as_i64()?;
                let items = self.list(parts.get(1)?, hint);
                items.into_iter().nth(usize::try_from(index).ok()?)
            }
            "Fn::FindInMap" => {
                let parts = argument.as_array()?;
                let mut keys = Vec::new();
                for part in parts.iter().take(3) {
                    match self.resolve(part, hint) {
                        Some(Val::Lit(Json::String(key))) => keys.push(key),
                        _ => {
                            return self.unresolved(
                                hint,
                                format!("the value of Fn::FindInMap {argument}"),
                            );
                        }
                    }
                }
                let found = self
                    .mappings
                    .get(keys.first()?)
                    .and_then(|m| m.get(keys.get(1)?))
                    .and_then(|m| m.get(keys.get(2)?))
                    .cloned();
                match found {
                    Some(value) => self.resolve(&value, hint),
                    None => self.unresolved(hint, format!("the value of Fn::FindInMap {argument}")),
                }
            }
            "Fn::If" => {
                let parts = argument.as_array()?;
                let condition = parts.first()?.as_str()?.to_owned();
                match self.condition(&condition, 0) {
                    Some(true) => self.resolve(parts.get(1)?, hint),
                    Some(false) => self.resolve(parts.get(2)?, hint),
                    None => self.unresolved(
                        hint,
                        format!("the value of Fn::If on condition {condition}"),
                    ),
                }
            }
            "Fn::ImportValue" => {
                let export = self
                    .resolve(argument, hint)
                    .and_then(|v| v.text())
                    .unwrap_or_default();
                self.unresolved(
                    &export.replace("${", ""),
                    format!("the value of the stack export {export}"),
                )
            }
            other => self.unresolved(hint, format!("the value of {other} {argument}")),
        }
    }

    /// Decides a condition from parameter defaults (`Fn::Equals`, `Fn::Not`, `Fn::And`,
    /// `Fn::Or`, `Condition`); `None` when it depends on something unknown.
    fn condition(&mut self, name: &str, depth: usize) -> Option<bool> {
        if let Some(decided) = self.decided.get(name) {
            return *decided;
        }
        // Undecided while it is being decided: a condition that loops is undecidable.
        self.decided.insert(name.to_owned(), None);
        let expression = self.conditions.get(name)?.clone();
        let decided = self.decide(&expression, depth + 1);
        self.decided.insert(name.to_owned(), decided);
        decided
    }

    fn decide(&mut self, expression: &Json, depth: usize) -> Option<bool> {
        if depth > 16 {
            return None;
        }
        let object = expression.as_object()?;
        let (key, argument) = object.iter().next()?;
        let items = argument.as_array();
        match key.as_str() {
            "Fn::Equals" => {
                let items = items?;
                let a = self.resolve(items.first()?, "condition")?;
                let b = self.resolve(items.get(1)?, "condition")?;
                match (a, b) {
                    (Val::Lit(a), Val::Lit(b)) => Some(a == b),
                    _ => None,
                }
            }
            "Fn::Not" => Some(!self.decide(items?.first()?, depth + 1)?),
            "Fn::And" => {
                let mut all = true;
                for item in items? {
                    all &= self.decide(item, depth + 1)?;
                }
                Some(all)
            }
            "Fn::Or" => {
                let mut any = false;
                for item in items? {
                    any |= self.decide(item, depth + 1)?;
                }
                Some(any)
            }
            "Condition" => self.condition(argument.as_str()?, depth),
            _ => None,
        }
    }

    fn sub(&mut self, text: &str, locals: &Map<String, Json>, hint: &str) -> Option<Val> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            parts.push(Val::str(&rest[..start]));
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                parts.push(Val::str(&rest[start..]));
                rest = "";
                break;
            };
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                parts.push(Val::str(format!("${{{literal}}}")));
            } else if let Some(local) = locals.get(name) {
                let local = local.clone();
                parts.push(self.resolve(&local, name)?);
            } else if let Some((resource, attribute)) = name.split_once('.') {
                parts.push(self.attribute(resource, attribute)?);
            } else {
                parts.push(self.reference(name, hint)?);
            }
            rest = &after[end + 1..];
        }
        parts.push(Val::str(rest));
        Val::concat(&parts)
    }

    /// `Ref name`: a pseudo parameter, a parameter, or a resource.
    fn reference(&mut self, name: &str, hint: &str) -> Option<Val> {
        match name {
            "AWS::Region" => {
                return Some(match &self.region {
                    Some(region) => region.clone(),
                    None => self.vars().region(),
                });
            }
            "AWS::AccountId" => return Some(self.vars().account()),
            "AWS::Partition" => return Some(Val::str("aws")),
            "AWS::URLSuffix" => return Some(Val::str("amazonaws.com")),
            "AWS::NoValue" => return None,
            "AWS::StackName" => {
                return self.unresolved("STACK_NAME", "the name the stack was deployed as".into());
            }
            _ => {}
        }
        if let Some(parameter) = self.parameters.get(name) {
            if let Some(default) = parameter.get("Default") {
                let default = default.clone();
                return self.resolve(&default, name);
            }
            let description = parameter
                .get("Description")
                .and_then(Json::as_str)
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return self.unresolved(name, format!("template parameter {name}{description}"));
        }
        let Some((kind, _)) = self.resource(name) else {
            return self.unresolved(hint, format!("the value of Ref {name}"));
        };
        let kind = kind.to_owned();
        match kind.as_str() {
            "AWS::SQS::Queue" => self.queue(name, "url"),
            "AWS::DynamoDB::Table" => self.resource_name(name, "TableName").or_else(|| {
                self.unresolved(
                    &format!("{name}_table"),
                    format!("the name of table {name} the stack creates"),
                )
            }),
            "AWS::Kinesis::Stream" => self.resource_name(name, "Name").or_else(|| {
                self.unresolved(
                    &format!("{name}_stream"),
                    format!("the name of stream {name} the stack creates"),
                )
            }),
            "AWS::S3::Bucket" => self.resource_name(name, "BucketName").or_else(|| {
                self.unresolved(
                    &format!("{name}_bucket"),
                    format!("the name of bucket {name} the stack creates"),
                )
            }),
            "AWS::SNS::Topic" => self.arn_of(name, "TopicName", "sns", ""),
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => self
                .resource_name(name, "FunctionName")
                .or_else(|| Some(Val::str(name))),
            _ => self.unresolved(
                &format!("{name}_ref"),
                format!("the value of Ref {name} ({kind}) the stack creates"),
            ),
        }
    }

    /// A queue's URL (`url`), ARN or name.
    fn queue(&mut self, logical: &str, form: &str) -> Option<Val> {
        match self.resource_name(logical, "QueueName") {
            Some(name) => {
                let region = self.reference("AWS::Region", "region")?;
                let account = self.vars().account();
                match form {
                    "url" => Val::concat(&[
                        Val::str("https://sqs."),
                        region,
                        Val::str(".amazonaws.com/"),
                        account,
                        Val::str("/"),
                        name,
                    ]),
                    "arn" => super::arn("sqs", region, account, "", name),
                    _ => Some(name),
                }
            }
            None if form == "name" => self.unresolved(
                &format!("{logical}_name"),
                format!("the name of queue {logical} the stack creates"),
            ),
            None => self.unresolved(
                &format!("{logical}_url"),
                format!("the URL of queue {logical} the stack creates"),
            ),
        }
    }

    /// `arn:aws:<service>:${AWS_REGION}:${AWS_ACCOUNT_ID}:<prefix><name>` from a name property.
    fn arn_of(&mut self, logical: &str, key: &str, service: &str, prefix: &str) -> Option<Val> {
        match self.resource_name(logical, key) {
            Some(name) => {
                let region = self.reference("AWS::Region", "region")?;
                let account = self.vars().account();
                super::arn(service, region, account, prefix, name)
            }
            None => self.unresolved(
                &format!("{logical}_arn"),
                format!("the ARN of {logical} the stack creates"),
            ),
        }
    }

    /// `Fn::GetAtt resource.attribute`.
    fn attribute(&mut self, logical: &str, attribute: &str) -> Option<Val> {
        let Some((kind, _)) = self.resource(logical) else {
            return self.unresolved(
                &format!("{logical}_{attribute}"),
                format!("the value of Fn::GetAtt {logical}.{attribute}"),
            );
        };
        let kind = kind.to_owned();
        match (kind.as_str(), attribute) {
            ("AWS::SQS::Queue", "Arn") => self.queue(logical, "arn"),
            ("AWS::SQS::Queue", "QueueUrl") => self.queue(logical, "url"),
            ("AWS::SQS::Queue", "QueueName") => self.queue(logical, "name"),
            ("AWS::DynamoDB::Table", "Arn") => {
                self.arn_of(logical, "TableName", "dynamodb", "table/")
            }
            ("AWS::Kinesis::Stream", "Arn") => self.arn_of(logical, "Name", "kinesis", "stream/"),
            ("AWS::SNS::Topic", "TopicArn") => self.arn_of(logical, "TopicName", "sns", ""),
            ("AWS::S3::Bucket", "Arn") => match self.resource_name(logical, "BucketName") {
                Some(name) => Val::concat(&[Val::str("arn:aws:s3:::"), name]),
                None => self.unresolved(
                    &format!("{logical}_bucket"),
                    format!("the name of bucket {logical} the stack creates"),
                ),
            },
            ("AWS::Serverless::Function" | "AWS::Lambda::Function", "Arn") => {
                let name = self.reference(logical, logical)?;
                let region = self.reference("AWS::Region", "region")?;
                let account = self.vars().account();
                super::arn("lambda", region, account, "function:", name)
            }
            _ => self.unresolved(
                &format!("{logical}_{attribute}"),
                format!("{attribute} of {logical} ({kind}) the stack creates"),
            ),
        }
    }

    /// The logical id of a function a value refers to (`!Ref Fn`, `!GetAtt Fn.Arn`, its name).
    fn function_of(&mut self, value: &Json) -> Option<usize> {
        let logical = match value {
            Json::Object(o) => match (o.get("Ref"), o.get("Fn::GetAtt")) {
                (Some(Json::String(r)), _) => Some(r.clone()),
                (_, Some(Json::Array(parts))) => {
                    parts.first().and_then(Json::as_str).map(str::to_owned)
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(logical) = logical
            && let Some(i) = self
                .plan
                .functions
                .iter()
                .position(|f| f.name == logical || f.aliases.contains(&logical))
        {
            return Some(i);
        }
        let text = self.resolve(value, "function")?.text()?;
        let name = text
            .strip_prefix("arn:")
            .and_then(|_| text.split(":function:").nth(1))
            .map(|rest| rest.split(':').next().unwrap_or(rest))
            .unwrap_or(&text)
            .to_owned();
        self.plan
            .functions
            .iter()
            .position(|f| f.name == name || f.aliases.contains(&name))
    }

    /// The function an `AWS::Lambda::*` resource names, or a placeholder for one the template
    /// does not define.
    fn function_for(&mut self, value: Option<&Json>, origin: &str) -> usize {
        if let Some(value) = value
            && let Some(i) = self.function_of(value)
        {
            return i;
        }
        let name = value
            .and_then(|v| self.resolve(v, "function"))
            .and_then(|v| v.text())
            .unwrap_or_else(|| "function".into());
        let name = name.rsplit(':').next().unwrap_or(&name).to_owned();
        self.plan.placeholder(&name, origin, "the template")
    }

    pub(super) fn read_resources(&mut self, globals: &Map<String, Json>) {
        let resources = self.resources;
        // Functions first, so mappings and invoke configs anywhere in the file find them.
        for (logical, resource) in resources {
            let kind = resource
                .get("Type")
                .and_then(Json::as_str)
                .unwrap_or_default();
            let mut props = resource
                .get("Properties")
                .and_then(Json::as_object)
                .cloned()
                .unwrap_or_default();
            if !matches!(kind, "AWS::Serverless::Function" | "AWS::Lambda::Function") {
                continue;
            }
            match self.created(logical, resource) {
                Created::No => continue,
                Created::Unknown(why) => {
                    self.note(format!("{kind} {logical}: {why}; imported as if it is"))
                }
                Created::Yes => {}
            }
            match kind {
                "AWS::Serverless::Function" => {
                    merge_globals(&mut props, globals);
                    let function = self.function(logical, kind, &Json::Object(props), true);
                    self.plan.functions.push(function);
                }
                "AWS::Lambda::Function" => {
                    let function = self.function(logical, kind, &Json::Object(props), false);
                    self.plan.functions.push(function);
                }
                _ => {}
            }
        }
        for (logical, resource) in resources {
            let kind = resource
                .get("Type")
                .and_then(Json::as_str)
                .unwrap_or_default();
            let props = resource.get("Properties").cloned().unwrap_or(Json::Null);
            let created = self.created(logical, resource);
            if matches!(created, Created::No) {
                continue;
            }
            let before: Vec<usize> = self.plan.functions.iter().map(|f| f.events.len()).collect();
            match kind {
                "AWS::Lambda::EventSourceMapping" => {
                    let origin = format!("AWS::Lambda::EventSourceMapping {logical}");
                    let i = self.function_for(prop(&props, "FunctionName"), &origin);
                    if let Some(event) = self.mapping_event(logical, &props, &origin) {
                        self.plan.functions[i].events.push(event);
                    }
                }
                "AWS::Lambda::EventInvokeConfig" => {
                    let origin = format!("AWS::Lambda::EventInvokeConfig {logical}");
                    let i = self.function_for(prop(&props, "FunctionName"), &origin);
                    let config = self.invoke_config(&props, &origin);
                    self.plan.functions[i].invoke = config;
                }
                "AWS::Events::Rule" => self.rule(logical, &props),
                "AWS::Scheduler::Schedule" => self.scheduler(logical, &props),
                "AWS::SNS::Subscription" => self.subscription(logical, &props),
                _ => {}
            }
            // Events of a resource the stack may not create: written disabled, with why.
            if let Created::Unknown(why) = created {
                for (i, function) in self.plan.functions.iter_mut().enumerate() {
                    let from = before.get(i).copied().unwrap_or(0);
                    for event in function.events.iter_mut().skip(from) {
                        event.settings.disabled_because = Some(format!(
                            "{}: {why}; enable it if the stack creates it",
                            event.origin
                        ));
                    }
                }
            }
        }
    }

    /// Whether the stack creates `resource`, from its `Condition`.
    fn created(&mut self, logical: &str, resource: &Json) -> Created {
        let Some(condition) = resource.get("Condition").and_then(Json::as_str) else {
            return Created::Yes;
        };
        match self.condition(condition, 0) {
            Some(true) => Created::Yes,
            Some(false) => {
                self.note(format!(
                    "{logical}: not created with the parameters' defaults (condition {condition} is false); left out"
                ));
                Created::No
            }
            None => Created::Unknown(format!(
                "created only when condition {condition} holds, which the parameters' defaults do not decide"
            )),
        }
    }

    fn function(&mut self, logical: &str, kind: &str, props: &Json, sam: bool) -> Function {
        let origin = format!("{kind} {logical}");
        let mut function = Function {
            name: logical.to_owned(),
            origin: origin.clone(),
            default_timeout: 3,
            ..Function::default()
        };
        // The name mappings may use for it, literal or not (`!Sub "fn-${Env}"`).
        if let Some(name) = prop(props, "FunctionName")
            .and_then(|v| self.resolve(v, logical))
            .and_then(|v| v.text())
        {
            function.aliases.push(name);
        }
        let field = |this: &mut Self, key: &str| {
            prop(props, key).and_then(|v| this.resolve(v, &format!("{logical}_{key}")))
        };
        function.runtime = field(self, "Runtime");
        function.handler = field(self, "Handler");
        function.timeout = field(self, "Timeout");
        function.memory = field(self, "MemorySize");
        function.reserved_concurrency = field(self, "ReservedConcurrentExecutions");
        if let Some(variables) = props
            .pointer("/Environment/Variables")
            .and_then(Json::as_object)
        {
            for (key, value) in variables {
                if let Some(value) = self.resolve(value, key) {
                    function.env.push((key.clone(), value));
                }
            }
        }
        if sam {
            // A local CodeUri is where the handler's module lives (not an S3 location or a
            // CodeUri object, which name a package).
            function.code_dir = prop(props, "CodeUri")
                .and_then(Json::as_str)
                .filter(|uri| !uri.starts_with("s3://"))
                .map(str::to_owned);
            if let Some(config) = prop(props, "EventInvokeConfig") {
                function.invoke =
                    self.invoke_config(config, &format!("{origin} EventInvokeConfig"));
            }
            if let Some(dlq) = prop(props, "DeadLetterQueue") {
                function.dead_letter = prop(dlq, "TargetArn")
                    .and_then(|arn| self.resolve(arn, &format!("{logical}_dlq")))
                    .map(|arn| Dest {
                        arn,
                        kind: prop(dlq, "Type").and_then(Json::as_str).map(str::to_owned),
                        origin: format!("{origin} DeadLetterQueue"),
                    });
            }
            if let Some(events) = prop(props, "Events").and_then(Json::as_object) {
                for (name, event) in events {
                    if let Some(event) = self.sam_event(logical, name, event) {
                        function.events.push(event);
                    }
                }
            }
        } else if let Some(arn) = props.pointer("/DeadLetterConfig/TargetArn") {
            function.dead_letter = self
                .resolve(arn, &format!("{logical}_dlq"))
                .map(|arn| Dest {
                    arn,
                    kind: None,
                    origin: format!("{origin} DeadLetterConfig"),
                });
        }
        function
    }

    fn invoke_config(&mut self, config: &Json, origin: &str) -> AsyncConfig {
        let dest = |this: &mut Self, which: &str| {
            let d = config.pointer(&format!("/DestinationConfig/{which}"))?;
            let kind = prop(d, "Type").and_then(Json::as_str).map(str::to_owned);
            let arn = match prop(d, "Destination") {
                Some(arn) => this.resolve(arn, &format!("{origin} {which}"))?,
                // SAM creates a queue or topic for a destination without an ARN.
                None => this.vars().need(
                    &format!(
                        "{}_{which}_destination",
                        origin.split(' ').nth(1).unwrap_or("function")
                    ),
                    format!("the {which} destination SAM creates for {origin}"),
                ),
            };
            Some(Dest {
                arn,
                kind,
                origin: format!("{origin} DestinationConfig.{which}"),
            })
        };
        AsyncConfig {
            on_success: dest(self, "OnSuccess"),
            on_failure: dest(self, "OnFailure"),
            max_event_age: prop(config, "MaximumEventAgeInSeconds")
                .and_then(|v| self.resolve(v, "max_event_age")),
            max_retries: prop(config, "MaximumRetryAttempts")
                .and_then(|v| self.resolve(v, "max_retry_attempts")),
        }
    }

    /// The settings of a mapping or SAM event, from the properties both share.
    fn settings(&mut self, props: &Json, origin: &str) -> Settings {
        let field = |this: &mut Self, key: &str| {
            prop(props, key).and_then(|v| this.resolve(v, &format!("{origin}_{key}")))
        };
        let mut s = Settings {
            enabled: field(self, "Enabled"),
            batch_size: field(self, "BatchSize"),
            window: field(self, "MaximumBatchingWindowInSeconds"),
            starting_position: field(self, "StartingPosition"),
            starting_timestamp: field(self, "StartingPositionTimestamp"),
            parallelization: field(self, "ParallelizationFactor"),
            max_retries: field(self, "MaximumRetryAttempts"),
            max_record_age: field(self, "MaximumRecordAgeInSeconds"),
            bisect: field(self, "BisectBatchOnFunctionError"),
            tumbling_window: field(self, "TumblingWindowInSeconds"),
            ..Settings::default()
        };
        s.max_concurrency = props
            .pointer("/ScalingConfig/MaximumConcurrency")
            .and_then(|v| self.resolve(v, "max_concurrency"));
        s.report_batch_item_failures = prop(props, "FunctionResponseTypes")
            .map(|v| self.list(v, "response_types"))
            .is_some_and(|types| {
                types
                    .iter()
                    .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
            });
        if let Some(filters) = props
            .pointer("/FilterCriteria/Filters")
            .and_then(Json::as_array)
        {
            for filter in filters {
                let pattern = prop(filter, "Pattern").and_then(|p| self.resolve(p, "filter"));
                s.add_pattern(pattern, origin);
            }
        }
        if let Some(d) = props.pointer("/DestinationConfig/OnFailure") {
            s.on_failure = prop(d, "Destination")
                .and_then(|arn| self.resolve(arn, &format!("{origin}_on_failure")))
                .map(|arn| Dest {
                    arn,
                    kind: prop(d, "Type").and_then(Json::as_str).map(str::to_owned),
                    origin: format!("{origin} DestinationConfig.OnFailure"),
                });
        }
        s.group_id = prop(props, "ConsumerGroupId")
            .or_else(|| props.pointer("/AmazonManagedKafkaEventSourceConfig/ConsumerGroupId"))
            .or_else(|| props.pointer("/SelfManagedKafkaEventSourceConfig/ConsumerGroupId"))
            .cloned()
            .and_then(|v| self.resolve(&v, "group_id"));
        if let Some(access) = prop(props, "SourceAccessConfigurations").and_then(Json::as_array) {
            for item in access {
                let kind = prop(item, "Type")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some(uri) = prop(item, "URI").and_then(|u| self.resolve(u, "secret")) {
                    s.access.push((kind, uri));
                }
            }
        }
        if let Some(object) = props.as_object() {
            for key in object.keys() {
                if !KNOWN_ESM_KEYS.contains(&key.as_str()) {
                    self.note(format!("{origin}: {key}"));
                }
            }
        }
        for config in [
            "AmazonManagedKafkaEventSourceConfig",
            "SelfManagedKafkaEventSourceConfig",
        ] {
            if props
                .pointer(&format!("/{config}/SchemaRegistryConfig"))
                .is_some()
            {
                self.note(format!(
                    "{origin}: {config}.SchemaRegistryConfig (write source.kafka.schema_registry by hand: see \"Schema registries\")"
                ));
            }
        }
        s
    }

    /// A kind of event source for an `AWS::Lambda::EventSourceMapping`: from the resource its
    /// ARN refers to, else from the ARN's service.
    fn mapping_event(&mut self, logical: &str, props: &Json, origin: &str) -> Option<Event> {
        let settings = self.settings(props, origin);
        let topics = prop(props, "Topics")
            .map(|t| self.list(t, "topic"))
            .unwrap_or_default();
        if let Some(servers) =
            props.pointer("/SelfManagedEventSource/Endpoints/KafkaBootstrapServers")
        {
            let servers = self.list(servers, &format!("{logical}_bootstrap_servers"));
            let bootstrap = join_servers(&servers);
            return Some(Event {
                name: logical.to_owned(),
                origin: origin.to_owned(),
                source: Source::Kafka { bootstrap, topics },
                settings,
            });
        }
        let arn_json = prop(props, "EventSourceArn")?.clone();
        if let Some((stream, consumer)) = self.kinesis_consumer(&arn_json) {
            return Some(Event {
                name: logical.to_owned(),
                origin: origin.to_owned(),
                source: Source::Kinesis {
                    stream,
                    consumer: Some(consumer),
                },
                settings,
            });
        }
        let referenced = referenced_type(&arn_json, self.resources);
        let arn = self.resolve(&arn_json, &format!("{logical}_source_arn"))?;
        let service = referenced.map(str::to_owned).or_else(|| {
            arn.text()
                .and_then(|t| t.split(':').nth(2).map(str::to_owned))
                .filter(|s| !s.contains("${"))
        });
        // An ARN from a parameter: its kind from its name and the settings given.
        let service = service.or_else(|| {
            let name = arn_json
                .get("Ref")
                .or_else(|| arn_json.get("Fn::ImportValue"))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_else(|| logical.to_owned());
            let kind = super::infer_kind(
                &name,
                settings.starting_position.is_some(),
                !topics.is_empty(),
            );
            self.note(format!(
                "{origin}: the kind of {arn_json} is not in the template; read as {kind} (from its name and settings)"
            ));
            Some(kind.to_owned())
        });
        let table = self.table_of_stream(&arn_json);
        let source = match service.as_deref() {
            Some("AWS::SQS::Queue" | "sqs") => Source::Sqs { queue: arn },
            Some("AWS::DynamoDB::Table" | "dynamodb") => Source::DynamoDb {
                stream: Some(arn),
                table,
            },
            Some("AWS::Kinesis::Stream" | "AWS::Kinesis::StreamConsumer" | "kinesis") => {
                Source::Kinesis {
                    stream: arn,
                    consumer: None,
                }
            }
            Some("AWS::MSK::Cluster" | "kafka") => Source::Msk {
                cluster: arn,
                topics,
            },
            other => {
                self.note(format!(
                    "{origin}: an event source sluice does not read ({})",
                    other.unwrap_or("unknown")
                ));
                return None;
            }
        };
        Some(Event {
            name: logical.to_owned(),
            origin: origin.to_owned(),
            source,
            settings,
        })
    }

    /// The stream and consumer name of `!GetAtt Consumer.ConsumerARN` (or `!Ref Consumer`) of an
    /// `AWS::Kinesis::StreamConsumer` in the template.
    fn kinesis_consumer(&mut self, value: &Json) -> Option<(Val, Val)> {
        let logical = match (value.get("Ref"), value.get("Fn::GetAtt")) {
            (Some(Json::String(r)), _) => r.clone(),
            (_, Some(Json::Array(parts))) => parts.first()?.as_str()?.to_owned(),
            _ => return None,
        };
        let (kind, props) = self.resource(&logical)?;
        (kind == "AWS::Kinesis::StreamConsumer").then_some(())?;
        let props = props.clone();
        let stream = self.resolve(prop(&props, "StreamARN")?, &format!("{logical}_stream_arn"))?;
        let name = self.resolve(prop(&props, "ConsumerName")?, &format!("{logical}_name"))?;
        Some((stream, name))
    }

    /// The table name for `!GetAtt Table.StreamArn` of a table the template names.
    fn table_of_stream(&mut self, value: &Json) -> Option<Val> {
        let parts = value.get("Fn::GetAtt")?.as_array()?;
        let logical = parts.first()?.as_str()?;
        (parts.get(1)?.as_str()? == "StreamArn").then_some(())?;
        let (kind, props) = self.resource(logical)?;
        (kind == "AWS::DynamoDB::Table" && props.get("TableName").is_some()).then_some(())?;
        self.resource_name(logical, "TableName")
    }

    fn sam_event(&mut self, function: &str, name: &str, event: &Json) -> Option<Event> {
        let kind = event.get("Type").and_then(Json::as_str).unwrap_or_default();
        let props = event.get("Properties").cloned().unwrap_or(Json::Null);
        let origin = format!("{function} event {name} ({kind})");
        let hint = format!("{function}_{name}");
        let source = match kind {
            "SQS" => {
                let queue = self.resolve(prop(&props, "Queue")?, &format!("{hint}_queue_url"))?;
                Source::Sqs { queue }
            }
            "DynamoDB" => {
                let stream_json = prop(&props, "Stream")?.clone();
                let table = self.table_of_stream(&stream_json);
                let stream = match table {
                    Some(_) => None,
                    None => self.resolve(&stream_json, &format!("{hint}_stream_arn")),
                };
                Source::DynamoDb { stream, table }
            }
            "Kinesis" => {
                let stream_json = prop(&props, "Stream")?.clone();
                match self.kinesis_consumer(&stream_json) {
                    Some((stream, consumer)) => Source::Kinesis {
                        stream,
                        consumer: Some(consumer),
                    },
                    None => Source::Kinesis {
                        stream: self.resolve(&stream_json, &format!("{hint}_stream_arn"))?,
                        consumer: None,
                    },
                }
            }
            "MSK" => Source::Msk {
                cluster: self.resolve(prop(&props, "Stream")?, &format!("{hint}_cluster_arn"))?,
                topics: prop(&props, "Topics")
                    .map(|t| self.list(t, "topic"))
                    .unwrap_or_default(),
            },
            "SelfManagedKafka" => {
                let servers = prop(&props, "KafkaBootstrapServers")
                    .map(|s| self.list(s, &format!("{hint}_bootstrap_servers")))
                    .unwrap_or_default();
                Source::Kafka {
                    bootstrap: join_servers(&servers),
                    topics: prop(&props, "Topics")
                        .map(|t| self.list(t, "topic"))
                        .unwrap_or_default(),
                }
            }
            "S3" => {
                let bucket = self.resolve(prop(&props, "Bucket")?, &format!("{hint}_bucket"))?;
                let events = prop(&props, "Events")
                    .map(|e| self.list(e, "events"))
                    .unwrap_or_default();
                let (mut prefix, mut suffix) = (None, None);
                if let Some(rules) = props
                    .pointer("/Filter/S3Key/Rules")
                    .and_then(Json::as_array)
                {
                    for rule in rules {
                        let value = prop(rule, "Value").and_then(|v| self.resolve(v, "key_filter"));
                        match prop(rule, "Name")
                            .and_then(Json::as_str)
                            .map(str::to_ascii_lowercase)
                            .as_deref()
                        {
                            Some("prefix") => prefix = value,
                            Some("suffix") => suffix = value,
                            _ => {}
                        }
                    }
                }
                return Some(Event {
                    name: name.to_owned(),
                    origin,
                    source: Source::S3 {
                        bucket,
                        events,
                        prefix,
                        suffix,
                    },
                    settings: Settings::default(),
                });
            }
            "Schedule" | "ScheduleV2" => return self.schedule_event(name, kind, &props, origin),
            _ => {
                self.note(format!(
                    "{origin}: sluice has no {kind} source (an HTTP caller can call the target directly or through the Invoke API)"
                ));
                return None;
            }
        };
        let settings = self.settings(&props, &origin);
        Some(Event {
            name: name.to_owned(),
            origin,
            source,
            settings,
        })
    }

    fn schedule_event(
        &mut self,
        name: &str,
        kind: &str,
        props: &Json,
        origin: String,
    ) -> Option<Event> {
        let expression_key = if kind == "Schedule" {
            "Schedule"
        } else {
            "ScheduleExpression"
        };
        let expression = self.resolve(prop(props, expression_key)?, &format!("{name}_schedule"))?;
        let timezone =
            prop(props, "ScheduleExpressionTimezone").and_then(|v| self.resolve(v, "timezone"));
        let input = prop(props, "Input")
            .and_then(|v| self.resolve(v, "input"))
            .and_then(super::json_input);
        let mut settings = Settings::default();
        // Resolved first: `State: !Ref ScheduleState`, `Enabled: !If [...]`.
        let state = prop(props, "State").and_then(|v| self.resolve(v, &format!("{name}_state")));
        let enabled =
            prop(props, "Enabled").and_then(|v| self.resolve(v, &format!("{name}_enabled")));
        match (&state, &enabled) {
            (Some(Val::Lit(Json::String(s))), _) if s == "DISABLED" => {
                settings.enabled = Some(Val::Lit(Json::Bool(false)));
            }
            (_, Some(e)) if e.as_bool() == Some(false) => {
                settings.enabled = Some(Val::Lit(Json::Bool(false)));
            }
            (Some(Val::Expr(_)), _) => {
                settings.disabled_because = Some(format!(
                    "{origin}: State is decided at deployment ({}); enable the mapping if it is ENABLED",
                    state.as_ref().and_then(Val::text).unwrap_or_default()
                ));
            }
            (_, Some(e @ Val::Expr(_))) => settings.enabled = Some(e.clone()),
            _ => {}
        }
        for key in ["RetryPolicy", "DeadLetterConfig"] {
            if prop(props, key).is_some() {
                self.note(format!(
                    "{origin}: {key} is EventBridge's, for delivering to Lambda; sluice invokes the target itself, and failures follow the function's asynchronous policy"
                ));
            }
        }
        for key in ["FlexibleTimeWindow", "StartDate", "EndDate"] {
            if let Some(value) = prop(props, key)
                && value.pointer("/Mode").and_then(Json::as_str) != Some("OFF")
            {
                self.note(format!(
                    "{origin}: {key}; the schedule fires at its exact times, always"
                ));
            }
        }
        Some(Event {
            name: name.to_owned(),
            origin,
            source: Source::Schedule {
                expression,
                timezone,
                input,
            },
            settings,
        })
    }

    /// An `AWS::Events::Rule` with a schedule whose targets are functions of the template.
    fn rule(&mut self, logical: &str, props: &Json) {
        let Some(targets) = prop(props, "Targets").and_then(Json::as_array) else {
            return;
        };
        let Some(expression) = prop(props, "ScheduleExpression").cloned() else {
            if targets
                .iter()
                .any(|t| prop(t, "Arn").is_some_and(|arn| self.function_of(arn).is_some()))
            {
                self.note(format!(
                    "AWS::Events::Rule {logical}: an event pattern rule; sluice has no EventBridge source"
                ));
            }
            return;
        };
        for target in targets {
            let Some(i) = prop(target, "Arn").and_then(|arn| self.function_of(arn)) else {
                continue;
            };
            for key in ["InputTransformer", "InputPath"] {
                if prop(target, key).is_some() {
                    self.note(format!(
                        "AWS::Events::Rule {logical}: {key} (shapes the Scheduled Event; use Input, or shape it in the handler)"
                    ));
                }
            }
            let mut schedule = Map::new();
            schedule.insert("Schedule".into(), expression.clone());
            for (from, to) in [("Input", "Input"), ("State", "State")] {
                if let Some(value) = prop(target, from).or_else(|| prop(props, from)) {
                    schedule.insert(to.into(), value.clone());
                }
            }
            let origin = format!("AWS::Events::Rule {logical}");
            if let Some(event) =
                self.schedule_event(logical, "Schedule", &Json::Object(schedule), origin)
            {
                self.plan.functions[i].events.push(event);
            }
        }
    }
}

impl Template<'_> {
    /// An `AWS::Scheduler::Schedule` whose target is a function of the template.
    fn scheduler(&mut self, logical: &str, props: &Json) {
        let Some(target) = prop(props, "Target") else {
            return;
        };
        let Some(i) = prop(target, "Arn").and_then(|arn| self.function_of(arn)) else {
            return;
        };
        let mut schedule = props.as_object().cloned().unwrap_or_default();
        schedule.remove("Target");
        for key in ["Input", "RetryPolicy", "DeadLetterConfig"] {
            if let Some(value) = prop(target, key) {
                schedule.insert(key.into(), value.clone());
            }
        }
        let origin = format!("AWS::Scheduler::Schedule {logical}");
        if let Some(event) =
            self.schedule_event(logical, "ScheduleV2", &Json::Object(schedule), origin)
        {
            self.plan.functions[i].events.push(event);
        }
    }

    /// An SNS subscription of a function: no SNS source in sluice.
    fn subscription(&mut self, logical: &str, props: &Json) {
        let to_function = prop(props, "Protocol").and_then(Json::as_str) == Some("lambda")
            && prop(props, "Endpoint").is_some_and(|e| self.function_of(e).is_some());
        if to_function {
            self.note(format!(
                "AWS::SNS::Subscription {logical}: sluice has no SNS source (subscribe an SQS queue to the topic and read it with an sqs mapping)"
            ));
        }
    }
}

/// Kafka bootstrap servers as one `host:port,...` value.
fn join_servers(servers: &[Val]) -> Val {
    let mut parts = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        if i > 0 {
            parts.push(Val::str(","));
        }
        parts.push(server.clone());
    }
    Val::concat(&parts).unwrap_or_else(|| Val::str(""))
}

/// The resource type a `Ref`/`Fn::GetAtt` points at.
fn referenced_type<'a>(value: &Json, resources: &'a Map<String, Json>) -> Option<&'a str> {
    let logical = match (value.get("Ref"), value.get("Fn::GetAtt")) {
        (Some(Json::String(r)), _) => r.as_str(),
        (_, Some(Json::Array(parts))) => parts.first()?.as_str()?,
        (_, Some(Json::String(text))) => text.split('.').next()?,
        _ => return None,
    };
    resources.get(logical)?.get("Type")?.as_str()
}

/// `Globals.Function` under a function's own properties (which win; environment variables merge).
fn merge_globals(props: &mut Map<String, Json>, globals: &Map<String, Json>) {
    for (key, value) in globals {
        match (props.get_mut(key), value) {
            (None, _) => {
                props.insert(key.clone(), value.clone());
            }
            (Some(Json::Object(own)), Json::Object(global)) => {
                for (k, v) in global {
                    match (own.get_mut(k), v) {
                        (Some(Json::Object(own_inner)), Json::Object(global_inner)) => {
                            for (ik, iv) in global_inner {
                                own_inner.entry(ik.clone()).or_insert_with(|| iv.clone());
                            }
                        }
                        (None, _) => {
                            own.insert(k.clone(), v.clone());
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_intrinsics_keep_their_tags_at_every_depth() {
        let yaml = "a: !Ref Foo\nb: !GetAtt Q.Arn\nc: !Sub\n  - 'x-${A}'\n  - { A: !Ref B }\nd: [1, !Join ['', [a, !Ref b]]]\n";
        let json = parse(Path::new("t.yaml"), yaml).unwrap();
        assert_eq!(json["a"], json!({"Ref": "Foo"}));
        assert_eq!(json["b"], json!({"Fn::GetAtt": ["Q", "Arn"]}));
        assert_eq!(
            json["c"],
            json!({"Fn::Sub": ["x-${A}", {"A": {"Ref": "B"}}]})
        );
        assert_eq!(json["d"][1], json!({"Fn::Join": ["", ["a", {"Ref": "b"}]]}));
    }

    #[test]
    fn intrinsics_resolve_from_the_template_or_become_variables() {
        let template = json!({
            "Parameters": {
                "Stage": {"Type": "String", "Default": "prod"},
                "Secret": {"Type": "String", "Description": "the SASL secret"}
            },
            "Conditions": {"IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}},
            "Mappings": {"Sizes": {"prod": {"Batch": 50}}},
            "Resources": {
                "Orders": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Fn::Sub": "orders-${Stage}"}}},
                "Anonymous": {"Type": "AWS::SQS::Queue"}
            }
        });
        let empty = Map::new();
        let mut t = Template::new(
            template["Resources"].as_object().unwrap(),
            template["Parameters"].as_object().unwrap(),
            template["Mappings"].as_object().unwrap(),
            template["Conditions"].as_object().unwrap_or(&empty),
            None,
            Plan::default(),
        );
        let r = |t: &mut Template, v: Json| t.resolve(&v, "hint");
        assert_eq!(
            r(&mut t, json!({"Fn::GetAtt": ["Orders", "Arn"]})),
            Some(Val::Expr(
                "arn:aws:sqs:${AWS_REGION}:${AWS_ACCOUNT_ID}:orders-prod".into()
            ))
        );
        assert_eq!(
            r(&mut t, json!({"Ref": "Anonymous"})),
            Some(Val::Expr("${ANONYMOUS_URL}".into()))
        );
        assert_eq!(
            r(&mut t, json!({"Ref": "Secret"})),
            Some(Val::Expr("${SECRET}".into()))
        );
        assert_eq!(
            r(
                &mut t,
                json!({"Fn::If": ["IsProd", {"Fn::FindInMap": ["Sizes", {"Ref": "Stage"}, "Batch"]}, 1]})
            ),
            Some(Val::Lit(json!(50)))
        );
        assert_eq!(r(&mut t, json!({"Ref": "AWS::NoValue"})), None);
        assert_eq!(
            r(&mut t, json!({"Fn::Sub": "${!Literal}-${AWS::Partition}"})),
            Some(Val::str("${Literal}-aws"))
        );
        let needs = t.plan.vars.into_list();
        assert!(
            needs
                .iter()
                .any(|(n, w)| n == "SECRET" && w.contains("the SASL secret"))
        );
    }
}
