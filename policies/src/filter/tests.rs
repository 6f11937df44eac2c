//! The conformance table of semantics.md §7: one row per operator and edge case.

use super::*;
use serde_json::json;

fn matches(pattern: Value, record: Value) -> bool {
    Pattern::compile(&pattern)
        .unwrap_or_else(|e| panic!("{pattern} does not compile: {e}"))
        .matches(&record)
}

#[test]
fn conformance_table() {
    let rows: Vec<(&str, Value, Value, bool)> = vec![
        ("exact string", json!({"a": ["x"]}), json!({"a": "x"}), true),
        (
            "exact string, other value",
            json!({"a": ["x"]}),
            json!({"a": "y"}),
            false,
        ),
        (
            "a list is OR",
            json!({"a": ["x", "y"]}),
            json!({"a": "y"}),
            true,
        ),
        ("exact number", json!({"a": [300]}), json!({"a": 300}), true),
        (
            "numbers as written: 300 is not 300.0",
            json!({"a": [300]}),
            json!({"a": 300.0}),
            false,
        ),
        (
            "a number never equals a string",
            json!({"a": [5]}),
            json!({"a": "5"}),
            false,
        ),
        (
            "exact boolean",
            json!({"a": [true]}),
            json!({"a": true}),
            true,
        ),
        (
            "null matches null",
            json!({"a": [null]}),
            json!({"a": null}),
            true,
        ),
        (
            "null does not match a missing field",
            json!({"a": [null]}),
            json!({}),
            false,
        ),
        (
            "empty string matches empty string",
            json!({"a": [""]}),
            json!({"a": ""}),
            true,
        ),
        (
            "empty string is not null",
            json!({"a": [""]}),
            json!({"a": null}),
            false,
        ),
        (
            "missing field never matches a value",
            json!({"a": ["x"]}),
            json!({"b": "x"}),
            false,
        ),
        (
            "anything-but value",
            json!({"a": [{"anything-but": "x"}]}),
            json!({"a": "y"}),
            true,
        ),
        (
            "anything-but value, excluded",
            json!({"a": [{"anything-but": "x"}]}),
            json!({"a": "x"}),
            false,
        ),
        (
            "anything-but list",
            json!({"a": [{"anything-but": ["x", "y"]}]}),
            json!({"a": "y"}),
            false,
        ),
        (
            "anything-but number",
            json!({"a": [{"anything-but": 5}]}),
            json!({"a": 6}),
            true,
        ),
        (
            "anything-but on a missing field",
            json!({"a": [{"anything-but": "x"}]}),
            json!({}),
            false,
        ),
        (
            "numeric =",
            json!({"a": [{"numeric": ["=", 300]}]}),
            json!({"a": 300}),
            true,
        ),
        (
            "numeric compares as numbers: 300.0",
            json!({"a": [{"numeric": ["=", 300]}]}),
            json!({"a": 300.0}),
            true,
        ),
        (
            "numeric <",
            json!({"a": [{"numeric": ["<", 10]}]}),
            json!({"a": 9.5}),
            true,
        ),
        (
            "numeric < at the bound",
            json!({"a": [{"numeric": ["<", 10]}]}),
            json!({"a": 10}),
            false,
        ),
        (
            "numeric <=",
            json!({"a": [{"numeric": ["<=", 10]}]}),
            json!({"a": 10}),
            true,
        ),
        (
            "numeric >",
            json!({"a": [{"numeric": [">", 0]}]}),
            json!({"a": -1}),
            false,
        ),
        (
            "numeric >=",
            json!({"a": [{"numeric": [">=", 0]}]}),
            json!({"a": 0}),
            true,
        ),
        (
            "numeric range inside",
            json!({"a": [{"numeric": [">", 0, "<=", 5]}]}),
            json!({"a": 5}),
            true,
        ),
        (
            "numeric range outside",
            json!({"a": [{"numeric": [">", 0, "<=", 5]}]}),
            json!({"a": 0}),
            false,
        ),
        (
            "numeric never matches a string",
            json!({"a": [{"numeric": [">", 0]}]}),
            json!({"a": "7"}),
            false,
        ),
        (
            "exists true",
            json!({"a": [{"exists": true}]}),
            json!({"a": "x"}),
            true,
        ),
        (
            "exists true on null",
            json!({"a": [{"exists": true}]}),
            json!({"a": null}),
            true,
        ),
        (
            "exists true, missing",
            json!({"a": [{"exists": true}]}),
            json!({}),
            false,
        ),
        (
            "exists false, missing",
            json!({"a": [{"exists": false}]}),
            json!({}),
            true,
        ),
        (
            "exists false, present",
            json!({"a": [{"exists": false}]}),
            json!({"a": 1}),
            false,
        ),
        // semantics.md §7 (EventBridge `exists` operator): `exists` looks at leaves, and an
        // object is not one. Recorded on AWS: `{"dynamodb": {"NewImage": {"presentKey":
        // [{"exists": false}]}}}` matches an item whose presentKey is `{"S": "presentValue"}`.
        (
            "exists false matches a field holding an object (a DynamoDB typed wrapper)",
            json!({"dynamodb": {"NewImage": {"presentKey": [{"exists": false}]}}}),
            json!({"dynamodb": {"NewImage": {"presentKey": {"S": "presentValue"}}}}),
            true,
        ),
        (
            "exists true does not match a field holding an object",
            json!({"dynamodb": {"NewImage": {"presentKey": [{"exists": true}]}}}),
            json!({"dynamodb": {"NewImage": {"presentKey": {"S": "presentValue"}}}}),
            false,
        ),
        (
            "exists true matches the leaf inside the typed wrapper",
            json!({"dynamodb": {"NewImage": {"presentKey": {"S": [{"exists": true}]}}}}),
            json!({"dynamodb": {"NewImage": {"presentKey": {"S": "presentValue"}}}}),
            true,
        ),
        (
            "exists false matches an array of objects only",
            json!({"a": [{"exists": false}]}),
            json!({"a": [{"b": 1}]}),
            true,
        ),
        (
            "exists true matches an array holding a leaf",
            json!({"a": [{"exists": true}]}),
            json!({"a": [{"b": 1}, 2]}),
            true,
        ),
        (
            "exists false under a missing object",
            json!({"a": {"b": [{"exists": false}]}}),
            json!({}),
            true,
        ),
        (
            "prefix",
            json!({"a": [{"prefix": "ord"}]}),
            json!({"a": "order-1"}),
            true,
        ),
        (
            "prefix is case-sensitive",
            json!({"a": [{"prefix": "ORD"}]}),
            json!({"a": "order-1"}),
            false,
        ),
        (
            "prefix ignoring case",
            json!({"a": [{"prefix": {"equals-ignore-case": "ORD"}}]}),
            json!({"a": "order-1"}),
            true,
        ),
        (
            "suffix",
            json!({"a": [{"suffix": ".png"}]}),
            json!({"a": "cat.png"}),
            true,
        ),
        (
            "suffix ignoring case",
            json!({"a": [{"suffix": {"equals-ignore-case": ".PNG"}}]}),
            json!({"a": "cat.png"}),
            true,
        ),
        (
            "prefix never matches a number",
            json!({"a": [{"prefix": "1"}]}),
            json!({"a": 12}),
            false,
        ),
        (
            "equals-ignore-case",
            json!({"a": [{"equals-ignore-case": "ORDER"}]}),
            json!({"a": "Order"}),
            true,
        ),
        (
            "equals-ignore-case, other",
            json!({"a": [{"equals-ignore-case": "ORDER"}]}),
            json!({"a": "Orders"}),
            false,
        ),
        (
            "an array in the record matches any element",
            json!({"a": ["x"]}),
            json!({"a": ["w", "x"]}),
            true,
        ),
        (
            "an array in the record, no element",
            json!({"a": ["x"]}),
            json!({"a": ["w"]}),
            false,
        ),
        (
            "numeric over an array",
            json!({"a": [{"numeric": [">", 10]}]}),
            json!({"a": [1, 20]}),
            true,
        ),
        (
            "nested objects",
            json!({"a": {"b": {"c": ["x"]}}}),
            json!({"a": {"b": {"c": "x"}}}),
            true,
        ),
        (
            "nested objects, other value",
            json!({"a": {"b": {"c": ["x"]}}}),
            json!({"a": {"b": {"c": "y"}}}),
            false,
        ),
        (
            "nested pattern over an array of objects",
            json!({"a": {"b": ["x"]}}),
            json!({"a": [{"b": "y"}, {"b": "x"}]}),
            true,
        ),
        (
            "fields are AND'ed",
            json!({"a": ["x"], "b": ["y"]}),
            json!({"a": "x", "b": "z"}),
            false,
        ),
        (
            "fields are AND'ed, all hold",
            json!({"a": ["x"], "b": ["y"]}),
            json!({"a": "x", "b": "y"}),
            true,
        ),
        (
            "$or, first",
            json!({"$or": [{"a": ["x"]}, {"b": ["y"]}]}),
            json!({"a": "x"}),
            true,
        ),
        (
            "$or, second",
            json!({"$or": [{"a": ["x"]}, {"b": ["y"]}]}),
            json!({"b": "y"}),
            true,
        ),
        (
            "$or, neither",
            json!({"$or": [{"a": ["x"]}, {"b": ["y"]}]}),
            json!({"a": "y"}),
            false,
        ),
        (
            "$or with a sibling field",
            json!({"c": ["z"], "$or": [{"a": ["x"]}, {"b": ["y"]}]}),
            json!({"a": "x", "c": "w"}),
            false,
        ),
        (
            "$or nested",
            json!({"d": {"$or": [{"a": ["x"]}, {"b": ["y"]}]}}),
            json!({"d": {"b": "y"}}),
            true,
        ),
        (
            "DynamoDB: equality needs the type level",
            json!({"dynamodb": {"NewImage": {"s": {"S": ["ok"]}}}}),
            json!({"dynamodb": {"NewImage": {"s": {"S": "ok"}}}}),
            true,
        ),
        (
            "DynamoDB: numeric never matches N (a string)",
            json!({"dynamodb": {"NewImage": {"n": {"N": [{"numeric": [">", 1]}]}}}}),
            json!({"dynamodb": {"NewImage": {"n": {"N": "5"}}}}),
            false,
        ),
    ];
    for (name, pattern, record, expected) in rows {
        assert_eq!(
            matches(pattern.clone(), record.clone()),
            expected,
            "{name}: {pattern} against {record}"
        );
    }
}

#[test]
fn invalid_patterns_are_refused_with_their_place() {
    let rows: Vec<(Value, &str, &str)> = vec![
        (json!(["x"]), "", "an object of fields"),
        (json!({"a": "x"}), "a", "written as a list"),
        (json!({"a": []}), "a", "empty list"),
        (json!({"a": {}}), "a", "empty object"),
        (
            json!({"a": [{"wildcard": "x*"}]}),
            "a[0].wildcard",
            "not supported",
        ),
        (
            json!({"a": [{"cidr": "10.0.0.0/8"}]}),
            "a[0].cidr",
            "not supported",
        ),
        (
            json!({"a": [{"anything-but": {"prefix": "x"}}]}),
            "a[0].anything-but",
            "not supported",
        ),
        (
            json!({"a": [{"numeric": [">"]}]}),
            "a[0].numeric",
            "one or two comparisons",
        ),
        (
            json!({"a": [{"numeric": ["~", 1]}]}),
            "a[0].numeric",
            "not a comparison",
        ),
        (
            json!({"a": [{"numeric": ["<", 5, ">", 1]}]}),
            "a[0].numeric",
            "lower bound then an upper bound",
        ),
        (
            json!({"a": [{"numeric": [">", "1"]}]}),
            "a[0].numeric",
            "not a number",
        ),
        (
            json!({"a": [{"exists": "yes"}]}),
            "a[0].exists",
            "true or false",
        ),
        (
            json!({"a": [{"prefix": 1}]}),
            "a[0].prefix",
            "takes a string",
        ),
        (
            json!({"a": [{"shout": "x"}]}),
            "a[0].shout",
            "unknown operator",
        ),
        (
            json!({"a": [{"prefix": "x", "suffix": "y"}]}),
            "a[0]",
            "exactly one operator",
        ),
        (json!({"$or": [{"a": ["x"]}]}), "$or", "at least two"),
        (
            json!({"b": {"$or": [{"a": ["x"]}, {"a": [{"nope": 1}]}]}}),
            "b.$or[1].a[0].nope",
            "unknown operator",
        ),
    ];
    for (pattern, path, message) in rows {
        let error = Pattern::compile(&pattern).expect_err(&pattern.to_string());
        assert_eq!(error.path, path, "{pattern}: {error}");
        assert!(error.message.contains(message), "{pattern}: {error}");
    }
}

#[test]
fn sqs_bodies_are_filtered_as_json_or_as_text_by_lambdas_format_rule() {
    let json_pattern = FilterSet::new(vec![
        Pattern::compile(&json!({"body": {"type": ["order"]}})).unwrap(),
    ]);
    let text_pattern = FilterSet::new(vec![
        Pattern::compile(&json!({"body": [{"prefix": "order"}]})).unwrap(),
    ]);
    let no_body = FilterSet::new(vec![
        Pattern::compile(&json!({"attributes": {"ApproximateReceiveCount": ["1"]}})).unwrap(),
    ]);
    let json_body =
        json!({"body": "{\"type\":\"order\"}", "attributes": {"ApproximateReceiveCount": "1"}});
    let text_body = json!({"body": "order 42", "attributes": {"ApproximateReceiveCount": "1"}});
    assert!(json_pattern.passes_sqs(&json_body));
    assert!(
        !json_pattern.passes_sqs(&text_body),
        "format mismatch drops"
    );
    assert!(text_pattern.passes_sqs(&text_body));
    assert!(
        !text_pattern.passes_sqs(&json_body),
        "format mismatch drops"
    );
    assert!(no_body.passes_sqs(&json_body) && no_body.passes_sqs(&text_body));
    assert!(
        FilterSet::default().passes_sqs(&text_body),
        "no filters pass everything"
    );
}

#[test]
fn patterns_are_ored() {
    let filters = FilterSet::new(vec![
        Pattern::compile(&json!({"a": ["x"]})).unwrap(),
        Pattern::compile(&json!({"b": ["y"]})).unwrap(),
    ]);
    assert!(filters.passes(&json!({"b": "y"})));
    assert!(!filters.passes(&json!({"a": "y"})));
}
