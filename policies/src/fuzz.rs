//! Fuzz properties of the policies' parsers of outside input: FilterCriteria patterns and
//! handler responses (`batchItemFailures` in every shape). Never a panic; every error says
//! what was wrong; a response built the way a handler builds it parses back to the same set.

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use crate::filter::Pattern;
use crate::response::{IdentifierKind, ItemIdentifier, parse_batch_item_failures};
use proptest::prelude::*;
use serde_json::{Value, json};

fn records() -> Vec<Value> {
    vec![
        json!({"body": {"price": 3, "kind": "c", "name": "abc"}, "messageId": "m-1"}),
        json!({"body": "plain", "eventName": "INSERT",
               "dynamodb": {"NewImage": {"status": {"S": "closed"}}}}),
        json!({"value": {"kind": "click", "n": [1, 2]}, "key": null}),
        json!([1, "x", null]),
    ]
}

fn check_pattern(pattern: &Value) {
    match Pattern::compile(pattern) {
        Ok(compiled) => {
            for record in records() {
                compiled.matches(&record);
            }
        }
        Err(error) => assert!(!error.to_string().trim().is_empty(), "{pattern}"),
    }
}

fn check_response(response: &Value) {
    for kind in [IdentifierKind::Text, IdentifierKind::KafkaOffset] {
        match parse_batch_item_failures(Some(response), kind, |_| true) {
            Ok(failures) => {
                for identifier in failures.keys() {
                    if let ItemIdentifier::Text(text) = identifier {
                        assert!(
                            !text.is_empty(),
                            "an empty identifier was accepted: {response}"
                        );
                    }
                }
            }
            Err(error) => assert!(!error.to_string().trim().is_empty()),
        }
        // Nothing is known: any failure named is an error, never a panic.
        let _ = parse_batch_item_failures(Some(response), kind, |_| false);
    }
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn damaged_filter_patterns_compile_or_say_why(bytes in mutate::mutated("filter")) {
        if let Ok(pattern) = serde_json::from_slice::<Value>(&bytes) {
            check_pattern(&pattern);
        }
    }

    #[test]
    fn arbitrary_json_patterns_compile_or_say_why(pattern in mutate::json_value()) {
        check_pattern(&pattern);
    }

    #[test]
    fn damaged_handler_responses_parse_or_fail_the_batch(bytes in mutate::mutated("response")) {
        if let Ok(response) = serde_json::from_slice::<Value>(&bytes) {
            check_response(&response);
        }
    }

    #[test]
    fn arbitrary_json_responses_parse_or_fail_the_batch(response in mutate::json_value()) {
        check_response(&response);
    }

    #[test]
    fn failures_reported_as_a_handler_writes_them_parse_back_to_the_same_set(
        ids in proptest::collection::btree_set(".{1,40}", 0..20),
        offsets in proptest::collection::btree_set(("[a-z.-]{1,20}-[0-9]{1,3}", any::<i64>()), 0..20),
    ) {
        let response = json!({"batchItemFailures": ids.iter()
            .map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()});
        let parsed = parse_batch_item_failures(Some(&response), IdentifierKind::Text, |_| true).unwrap();
        let expected: Vec<ItemIdentifier> = ids.iter().cloned().map(ItemIdentifier::Text).collect();
        prop_assert_eq!(parsed.keys().cloned().collect::<Vec<_>>(), expected);

        let response = json!({"batchItemFailures": offsets.iter()
            .map(|(p, o)| json!({"itemIdentifier": {"partition": p, "offset": o}})).collect::<Vec<_>>()});
        let parsed = parse_batch_item_failures(Some(&response), IdentifierKind::KafkaOffset, |_| true).unwrap();
        let expected: Vec<ItemIdentifier> = offsets.iter()
            .map(|(p, o)| ItemIdentifier::KafkaOffset { partition: p.clone(), offset: *o }).collect();
        prop_assert_eq!(parsed.keys().cloned().collect::<Vec<_>>(), expected);
    }
}
