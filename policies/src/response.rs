//! Parsing a handler's response the way Lambda parses it when `ReportBatchItemFailures` is on.
//!
//! Shared by every source (semantics.md §2 "ReportBatchItemFailures", §3 "Partial batch", §4
//! "Partial response"). The response is taken as a `serde_json::Value` because AWS accepts shapes
//! that typed response structs reject (`{}`, `null`, `""`).
//!
//! - success, no failures: an empty body, `null`, `""`, `[]`, `{}`, `{"batchItemFailures": null}`
//!   and `{"batchItemFailures": []}`;
//! - partial failure: a non-empty list whose every `itemIdentifier` names a record of the batch;
//!   an entry may also carry `errorType` / `errorMessage` (a sluice extension; AWS ignores extra
//!   keys), which then travel with the record into its dead-letter envelope;
//! - whole-batch failure ([`ResponseError`]): anything else, including an identifier that is empty,
//!   null, unknown or under the wrong key, an object without `batchItemFailures`, and a non-empty
//!   array or any other scalar.

use crate::outcome::ErrorInfo;
use serde_json::Value;
use std::collections::BTreeMap;

/// The identity a handler uses to name a failed record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ItemIdentifier {
    /// SQS message id, DynamoDB/Kinesis sequence number.
    Text(String),
    /// Kafka: `{"partition": "<topic>-<n>", "offset": <n>}`.
    KafkaOffset { partition: String, offset: i64 },
}

/// Which identifier shape the source expects in `itemIdentifier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierKind {
    Text,
    KafkaOffset,
}

/// Why a response fails the whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the response is not JSON: {body_prefix:?}")]
    NotJson { body_prefix: String },
    #[error("the response has no batchItemFailures key (keys: {keys})")]
    MissingBatchItemFailures { keys: String },
    #[error("batchItemFailures must be a list, got {found}")]
    NotAList { found: &'static str },
    #[error("batchItemFailures[{index}] has no itemIdentifier")]
    MissingIdentifier { index: usize },
    #[error("batchItemFailures[{index}].itemIdentifier is empty or null")]
    EmptyIdentifier { index: usize },
    #[error("batchItemFailures[{index}].itemIdentifier has the wrong shape: {found}")]
    MalformedIdentifier { index: usize, found: String },
    #[error("batchItemFailures[{index}].itemIdentifier {identifier} is not in the batch")]
    UnknownIdentifier { index: usize, identifier: String },
    #[error("the response is a {found}, not an object with batchItemFailures")]
    UnexpectedShape { found: &'static str },
}

impl ResponseError {
    /// The error type recorded when this response fails a batch.
    pub const ERROR_TYPE: &'static str = "InvalidBatchItemFailures";
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// The failed records of a partial response, each with the error its entry described, if any.
pub type ItemFailures = BTreeMap<ItemIdentifier, Option<ErrorInfo>>;

/// Parses a response into the failed item identifiers (empty = the batch succeeded).
///
/// `is_known` says whether an identifier names a record of the invoked batch.
pub fn parse_batch_item_failures(
    response: Option<&Value>,
    kind: IdentifierKind,
    is_known: impl Fn(&ItemIdentifier) -> bool,
) -> Result<ItemFailures, ResponseError> {
    let Some(response) = response else {
        return Ok(ItemFailures::new());
    };
    let object = match response {
        Value::Null => return Ok(ItemFailures::new()),
        Value::String(text) if text.is_empty() => return Ok(ItemFailures::new()),
        Value::Array(items) if items.is_empty() => return Ok(ItemFailures::new()),
        Value::Object(object) => object,
        other => {
            return Err(ResponseError::UnexpectedShape {
                found: json_type_name(other),
            });
        }
    };
    if object.is_empty() {
        return Ok(ItemFailures::new());
    }
    let Some(failures) = object.get("batchItemFailures") else {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        return Err(ResponseError::MissingBatchItemFailures {
            keys: keys.join(", "),
        });
    };
    let entries = match failures {
        Value::Null => return Ok(ItemFailures::new()),
        Value::Array(entries) => entries,
        other => {
            return Err(ResponseError::NotAList {
                found: json_type_name(other),
            });
        }
    };
    let mut failed = ItemFailures::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(fields) = entry.as_object() else {
            return Err(ResponseError::MissingIdentifier { index });
        };
        let Some(raw_identifier) = fields.get("itemIdentifier") else {
            return Err(ResponseError::MissingIdentifier { index });
        };
        let text = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
        let error = match (text("errorType"), text("errorMessage")) {
            (None, None) => None,
            (error_type, message) => Some(ErrorInfo::new(
                error_type.unwrap_or_else(|| "BatchItemFailure".to_owned()),
                message.unwrap_or_default(),
            )),
        };
        let identifier = parse_identifier(index, raw_identifier, kind)?;
        if !is_known(&identifier) {
            return Err(ResponseError::UnknownIdentifier {
                index,
                identifier: display_identifier(&identifier),
            });
        }
        failed.insert(identifier, error);
    }
    Ok(failed)
}

fn parse_identifier(
    index: usize,
    raw: &Value,
    kind: IdentifierKind,
) -> Result<ItemIdentifier, ResponseError> {
    match (kind, raw) {
        (_, Value::Null) => Err(ResponseError::EmptyIdentifier { index }),
        (IdentifierKind::Text, Value::String(text)) if text.is_empty() => {
            Err(ResponseError::EmptyIdentifier { index })
        }
        (IdentifierKind::Text, Value::String(text)) => Ok(ItemIdentifier::Text(text.clone())),
        // Sequence numbers written as JSON numbers are still the same identity.
        (IdentifierKind::Text, Value::Number(number)) => {
            Ok(ItemIdentifier::Text(number.to_string()))
        }
        (IdentifierKind::KafkaOffset, Value::Object(fields)) => {
            let partition = fields.get("partition").and_then(Value::as_str);
            let offset = fields.get("offset").and_then(|offset| {
                offset
                    .as_i64()
                    .or_else(|| offset.as_str().and_then(|s| s.parse().ok()))
            });
            match (partition, offset) {
                (Some(partition), Some(offset)) if !partition.is_empty() => {
                    Ok(ItemIdentifier::KafkaOffset {
                        partition: partition.to_owned(),
                        offset,
                    })
                }
                _ => Err(ResponseError::MalformedIdentifier {
                    index,
                    found: raw.to_string(),
                }),
            }
        }
        (_, other) => Err(ResponseError::MalformedIdentifier {
            index,
            found: other.to_string(),
        }),
    }
}

fn display_identifier(identifier: &ItemIdentifier) -> String {
    match identifier {
        ItemIdentifier::Text(text) => format!("{text:?}"),
        ItemIdentifier::KafkaOffset { partition, offset } => format!("{partition}@{offset}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_text(response: Option<Value>, known: &[&str]) -> Result<Vec<String>, ResponseError> {
        parse_batch_item_failures(response.as_ref(), IdentifierKind::Text, |id| match id {
            ItemIdentifier::Text(text) => known.contains(&text.as_str()),
            ItemIdentifier::KafkaOffset { .. } => false,
        })
        .map(|set| {
            set.into_keys()
                .map(|id| match id {
                    ItemIdentifier::Text(text) => text,
                    ItemIdentifier::KafkaOffset { .. } => unreachable!(),
                })
                .collect()
        })
    }

    // semantics.md §2 and §3: every documented and observed success shape.
    #[test]
    fn success_shapes_report_no_failures() {
        for response in [
            None,
            Some(json!(null)),
            Some(json!("")),
            Some(json!([])),
            Some(json!({})),
            Some(json!({"batchItemFailures": null})),
            Some(json!({"batchItemFailures": []})),
        ] {
            assert_eq!(
                parse_text(response.clone(), &["a"]),
                Ok(vec![]),
                "{response:?}"
            );
        }
    }

    #[test]
    fn listed_known_identifiers_are_the_failures() {
        let response = json!({"batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "a"}, {"itemIdentifier": "b"}]});
        assert_eq!(
            parse_text(Some(response), &["a", "b", "c"]),
            Ok(vec!["a".into(), "b".into()])
        );
    }

    // semantics.md §3 "Whole-batch failure": every documented and observed invalid shape.
    #[test]
    fn invalid_shapes_fail_the_whole_batch() {
        let cases = [
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"batchItemFailures": [{"itemIdentifier": "unknown"}]}),
            json!({"batchItemFailures": [{"foo": "a"}]}),
            json!({"batchItemFailures": ["a"]}),
            json!({"batchItemFailures": "a"}),
            json!({"foo": 1}),
            json!([{"foo": "notvalid"}]),
            json!(123),
            json!(true),
            json!("not a response"),
        ];
        for response in cases {
            assert!(
                parse_text(Some(response.clone()), &["a"]).is_err(),
                "{response} should fail the batch"
            );
        }
    }

    #[test]
    fn unknown_identifier_error_names_the_identifier_and_index() {
        let error = parse_text(
            Some(json!({"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "zz"}]})),
            &["a"],
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "batchItemFailures[1].itemIdentifier \"zz\" is not in the batch"
        );
    }

    #[test]
    fn entries_may_carry_the_error_of_their_record() {
        let response = json!({"batchItemFailures": [
            {"itemIdentifier": "a", "errorType": "ValueError", "errorMessage": "bad total"},
            {"itemIdentifier": "b"}
        ]});
        let parsed =
            parse_batch_item_failures(Some(&response), IdentifierKind::Text, |_| true).unwrap();
        assert_eq!(
            parsed[&ItemIdentifier::Text("a".into())],
            Some(ErrorInfo::new("ValueError", "bad total"))
        );
        assert_eq!(parsed[&ItemIdentifier::Text("b".into())], None);
    }

    #[test]
    fn kafka_identifiers_are_partition_and_offset() {
        let response =
            json!({"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": 7}}]});
        let parsed =
            parse_batch_item_failures(Some(&response), IdentifierKind::KafkaOffset, |_| true)
                .unwrap();
        assert_eq!(
            parsed.into_keys().collect::<Vec<_>>(),
            vec![ItemIdentifier::KafkaOffset {
                partition: "t-0".into(),
                offset: 7
            }]
        );
        let wrong = json!({"batchItemFailures": [{"itemIdentifier": "t-0"}]});
        assert!(
            parse_batch_item_failures(Some(&wrong), IdentifierKind::KafkaOffset, |_| true).is_err()
        );
    }
}
