//! Lambda's event filtering (FilterCriteria, EventBridge pattern syntax; semantics.md §7).
//!
//! A [`FilterSet`] is up to a configurable number of patterns, OR'ed; the fields inside one pattern
//! are AND'ed. [`Pattern::compile`] refuses what Lambda refuses (unknown operators, `wildcard`,
//! `anything-but` with `prefix`/`suffix`/`equals-ignore-case`, empty matcher lists, malformed
//! `numeric`), naming the place inside the pattern. Matching:
//!
//! - a list of values matches when any matches; values compare exactly as written (a string never
//!   equals a number, and `300` does not equal `300.0`);
//! - `numeric` compares as numbers (`["=", 300]` matches `300.0`) and never matches a string;
//! - a field missing from the record matches only `{"exists": false}`; `null` matches only an
//!   explicit null; `exists` looks at leaf values only, so a field holding an object (a DynamoDB
//!   typed wrapper such as `{"S": "v"}`) does not exist for it (as on AWS);
//! - when the record holds an array, a matcher matches when any element matches;
//! - nested pattern objects descend into nested record objects; `$or` holds sub-patterns of which
//!   one must match.
//!
//! [`sqs_filter_view`] and the stream helpers say which part of a record Lambda filters on.

use serde_json::{Map, Value};
use std::fmt;

/// One pattern, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    /// Field name → what it must match; all must hold.
    fields: Vec<(String, Condition)>,
    /// Each entry: one of its patterns must hold.
    ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Nested(Node),
    /// Any of these matchers.
    Any(Vec<Matcher>),
}

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Exact(Value),
    AnythingBut(Vec<Value>),
    Numeric(Vec<(Comparison, f64)>),
    Exists(bool),
    Prefix { text: String, ignore_case: bool },
    Suffix { text: String, ignore_case: bool },
    EqualsIgnoreCase(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Comparison {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Why a pattern was refused, and where inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// Dotted path inside the pattern, such as `body.price[0].numeric`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for PatternError {}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn error(path: &str, message: impl Into<String>) -> PatternError {
    PatternError {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl Pattern {
    /// Compiles a pattern given as a JSON object.
    pub fn compile(pattern: &Value) -> Result<Self, PatternError> {
        let Value::Object(object) = pattern else {
            return Err(error(
                "",
                "a filter pattern is an object of fields, such as {\"body\": {\"type\": [\"order\"]}}",
            ));
        };
        Ok(Self {
            root: compile_node(object, "")?,
        })
    }

    /// Whether `record` matches.
    pub fn matches(&self, record: &Value) -> bool {
        node_matches(&self.root, record)
    }

    /// The pattern's condition on `field` at the top level: `Some(true)` when it is an object
    /// pattern (JSON), `Some(false)` when it is a list of matchers (plain text), `None` when the
    /// pattern does not name the field.
    pub fn field_is_json(&self, field: &str) -> Option<bool> {
        self.root
            .fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, condition)| matches!(condition, Condition::Nested(_)))
    }
}

fn compile_node(object: &Map<String, Value>, path: &str) -> Result<Node, PatternError> {
    if object.is_empty() {
        return Err(error(
            path,
            "an empty object matches nothing; name at least one field",
        ));
    }
    let mut node = Node {
        fields: Vec::new(),
        ors: Vec::new(),
    };
    for (key, value) in object {
        let here = join(path, key);
        if key == "$or" {
            let Value::Array(alternatives) = value else {
                return Err(error(&here, "$or takes a list of patterns"));
            };
            if alternatives.len() < 2 {
                return Err(error(&here, "$or needs at least two patterns"));
            }
            let mut compiled = Vec::new();
            for (index, alternative) in alternatives.iter().enumerate() {
                let at = format!("{here}[{index}]");
                let Value::Object(alternative) = alternative else {
                    return Err(error(&at, "each $or entry is a pattern object"));
                };
                compiled.push(compile_node(alternative, &at)?);
            }
            node.ors.push(compiled);
            continue;
        }
        let condition = match value {
            Value::Object(nested) => Condition::Nested(compile_node(nested, &here)?),
            Value::Array(matchers) => {
                if matchers.is_empty() {
                    return Err(error(
                        &here,
                        "an empty list matches nothing; give at least one value",
                    ));
                }
                let compiled = matchers
                    .iter()
                    .enumerate()
                    .map(|(index, m)| compile_matcher(m, &format!("{here}[{index}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Condition::Any(compiled)
            }
            _ => {
                return Err(error(
                    &here,
                    format!("values are written as a list, such as [{value}]"),
                ));
            }
        };
        node.fields.push((key.clone(), condition));
    }
    Ok(node)
}

fn compile_matcher(value: &Value, path: &str) -> Result<Matcher, PatternError> {
    let Value::Object(operator) = value else {
        return match value {
            Value::Array(_) => Err(error(path, "lists cannot be nested in a matcher list")),
            scalar => Ok(Matcher::Exact(scalar.clone())),
        };
    };
    if operator.len() != 1 {
        return Err(error(path, "a matcher object holds exactly one operator"));
    }
    let (name, argument) = operator.iter().next().expect("one entry");
    let here = join(path, name);
    match name.as_str() {
        "anything-but" => match argument {
            Value::Array(values) if !values.is_empty() => {
                if values.iter().any(|v| v.is_object() || v.is_array()) {
                    return Err(error(&here, "anything-but takes values, not operators"));
                }
                Ok(Matcher::AnythingBut(values.clone()))
            }
            Value::Array(_) => Err(error(&here, "anything-but needs at least one value")),
            Value::Object(_) => Err(error(
                &here,
                "anything-but with prefix, suffix or equals-ignore-case is not supported by Lambda filters",
            )),
            scalar => Ok(Matcher::AnythingBut(vec![scalar.clone()])),
        },
        "numeric" => compile_numeric(argument, &here),
        "exists" => match argument {
            Value::Bool(exists) => Ok(Matcher::Exists(*exists)),
            _ => Err(error(&here, "exists takes true or false")),
        },
        "prefix" | "suffix" => {
            let (text, ignore_case) = match argument {
                Value::String(text) => (text.clone(), false),
                Value::Object(inner) if inner.len() == 1 => match inner.get("equals-ignore-case") {
                    Some(Value::String(text)) => (text.clone(), true),
                    _ => {
                        return Err(error(
                            &here,
                            format!("{name} takes a string, or {{\"equals-ignore-case\": string}}"),
                        ));
                    }
                },
                _ => return Err(error(&here, format!("{name} takes a string"))),
            };
            Ok(if name == "prefix" {
                Matcher::Prefix { text, ignore_case }
            } else {
                Matcher::Suffix { text, ignore_case }
            })
        }
        "equals-ignore-case" => match argument {
            Value::String(text) => Ok(Matcher::EqualsIgnoreCase(text.clone())),
            _ => Err(error(&here, "equals-ignore-case takes a string")),
        },
        "wildcard" | "cidr" => Err(error(
            &here,
            format!("{name} is not supported by Lambda event filtering"),
        )),
        other => Err(error(
            &here,
            format!(
                "unknown operator {other:?}; use anything-but, numeric, exists, prefix, suffix or equals-ignore-case"
            ),
        )),
    }
}

fn compile_numeric(argument: &Value, path: &str) -> Result<Matcher, PatternError> {
    let Value::Array(items) = argument else {
        return Err(error(
            path,
            "numeric takes a list such as [\">\", 0, \"<=\", 5]",
        ));
    };
    if items.is_empty() || items.len() % 2 != 0 || items.len() > 4 {
        return Err(error(
            path,
            "numeric takes one or two comparisons: [\">\", 0] or [\">\", 0, \"<=\", 5]",
        ));
    }
    let mut comparisons = Vec::new();
    for pair in items.chunks(2) {
        let comparison = match pair[0].as_str() {
            Some("=") => Comparison::Eq,
            Some("<") => Comparison::Lt,
            Some("<=") => Comparison::Le,
            Some(">") => Comparison::Gt,
            Some(">=") => Comparison::Ge,
            _ => {
                return Err(error(
                    path,
                    format!("{} is not a comparison; use =, <, <=, > or >=", pair[0]),
                ));
            }
        };
        let Some(bound) = pair[1].as_f64() else {
            return Err(error(path, format!("{} is not a number", pair[1])));
        };
        comparisons.push((comparison, bound));
    }
    if comparisons.len() == 2 {
        let lower = matches!(comparisons[0].0, Comparison::Gt | Comparison::Ge);
        let upper = matches!(comparisons[1].0, Comparison::Lt | Comparison::Le);
        if !lower || !upper || comparisons[0].1 > comparisons[1].1 {
            return Err(error(
                path,
                "a numeric range is a lower bound then an upper bound, such as [\">\", 0, \"<=\", 5]",
            ));
        }
    }
    if comparisons.len() == 1 && comparisons[0].0 == Comparison::Eq {
        return Ok(Matcher::Numeric(comparisons));
    }
    if comparisons.iter().any(|(c, _)| *c == Comparison::Eq) && comparisons.len() > 1 {
        return Err(error(path, "= cannot be part of a range"));
    }
    Ok(Matcher::Numeric(comparisons))
}

fn node_matches(node: &Node, record: &Value) -> bool {
    node.fields.iter().all(|(name, condition)| {
        let field = record.as_object().and_then(|o| o.get(name));
        condition_matches(condition, field)
    }) && node
        .ors
        .iter()
        .all(|alternatives| alternatives.iter().any(|n| node_matches(n, record)))
}

fn condition_matches(condition: &Condition, field: Option<&Value>) -> bool {
    match condition {
        Condition::Nested(node) => match field {
            Some(Value::Array(items)) => items.iter().any(|item| node_matches(node, item)),
            Some(value) => node_matches(node, value),
            // A nested pattern over a missing object still matches `exists: false` leaves.
            None => node_matches(node, &Value::Null),
        },
        Condition::Any(matchers) => matchers.iter().any(|m| matcher_matches(m, field)),
    }
}

fn matcher_matches(matcher: &Matcher, field: Option<&Value>) -> bool {
    match (matcher, field) {
        (Matcher::Exists(exists), field) => has_leaf(field) == *exists,
        (_, None) => false,
        (_, Some(Value::Array(items))) => items.iter().any(|item| scalar_matches(matcher, item)),
        (_, Some(value)) => scalar_matches(matcher, value),
    }
}

/// Whether `field` holds a leaf value. EventBridge's `exists` looks at leaves only: an object is
/// not a leaf, so `{"exists": false}` matches a field that holds an object (on AWS, an item whose
/// `presentKey` is `{"S": "v"}` matches `"presentKey": [{"exists": false}]`), and an array holds
/// a leaf when one of its elements is one.
fn has_leaf(field: Option<&Value>) -> bool {
    match field {
        None | Some(Value::Object(_)) => false,
        Some(Value::Array(items)) => items.iter().any(|item| has_leaf(Some(item))),
        Some(_) => true,
    }
}

fn exact(pattern: &Value, value: &Value) -> bool {
    match (pattern, value) {
        // As written: 300 and 300.0 differ, as do 5 and "5".
        (Value::Number(a), Value::Number(b)) => {
            a.is_f64() == b.is_f64() && a.as_f64() == b.as_f64()
        }
        (a, b) => a == b,
    }
}

fn scalar_matches(matcher: &Matcher, value: &Value) -> bool {
    match matcher {
        Matcher::Exact(expected) => exact(expected, value),
        Matcher::AnythingBut(excluded) => !excluded.iter().any(|e| exact(e, value)),
        Matcher::Numeric(comparisons) => match value.as_f64() {
            Some(number) if value.is_number() => comparisons.iter().all(|(c, bound)| match c {
                Comparison::Eq => number == *bound,
                Comparison::Lt => number < *bound,
                Comparison::Le => number <= *bound,
                Comparison::Gt => number > *bound,
                Comparison::Ge => number >= *bound,
            }),
            _ => false,
        },
        Matcher::Exists(_) => unreachable!("exists is decided on the field"),
        Matcher::Prefix { text, ignore_case } => value.as_str().is_some_and(|s| {
            if *ignore_case {
                s.to_lowercase().starts_with(&text.to_lowercase())
            } else {
                s.starts_with(text.as_str())
            }
        }),
        Matcher::Suffix { text, ignore_case } => value.as_str().is_some_and(|s| {
            if *ignore_case {
                s.to_lowercase().ends_with(&text.to_lowercase())
            } else {
                s.ends_with(text.as_str())
            }
        }),
        Matcher::EqualsIgnoreCase(text) => value
            .as_str()
            .is_some_and(|s| s.to_lowercase() == text.to_lowercase()),
    }
}

/// A mapping's filters: a record passes when any pattern matches; no patterns pass everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterSet {
    patterns: Vec<Pattern>,
}

impl FilterSet {
    pub fn new(patterns: Vec<Pattern>) -> Self {
        Self { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a stream or Kafka record (already in its filter view) passes.
    pub fn passes(&self, view: &Value) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(view))
    }

    /// Whether an SQS record passes, with Lambda's rule for the body's format: a pattern whose
    /// `body` is JSON (an object pattern) never matches a plain-text body and the other way round;
    /// a pattern without `body` filters on the other fields only.
    pub fn passes_sqs(&self, record: &Value) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let (view, body_is_json) = sqs_filter_view(record);
        self.passes_by_format(&view, "body", body_is_json)
    }

    /// Whether a record's filter view passes when its data field (SQS `body`, Kinesis `data`)
    /// may or may not be JSON: a pattern whose `field` is JSON (an object pattern) never matches
    /// data that is not, and a plain-text pattern never matches JSON data; a pattern without
    /// `field` filters on the other fields only.
    pub fn passes_by_format(&self, view: &Value, field: &str, field_is_json: bool) -> bool {
        self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|pattern| match pattern.field_is_json(field) {
                    Some(pattern_json) if pattern_json != field_is_json => false,
                    _ => pattern.matches(view),
                })
    }
}

/// The record Lambda filters an SQS message as: the record with `body` parsed when it is a JSON
/// object; and whether it was.
pub fn sqs_filter_view(record: &Value) -> (Value, bool) {
    let mut view = record.clone();
    let parsed = record["body"]
        .as_str()
        .and_then(|body| serde_json::from_str::<Value>(body).ok())
        .filter(Value::is_object);
    match parsed {
        Some(body) => {
            view["body"] = body;
            (view, true)
        }
        None => (view, false),
    }
}

#[cfg(test)]
mod tests;
