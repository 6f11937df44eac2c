//! Lambda's DynamoDB event record (semantics.md §13.2), built from the SDK's stream record.
//!
//! Built as JSON directly rather than through `aws_lambda_events::dynamodb`: that crate's
//! `ApproximateCreationDateTime` mis-scales fractional seconds (dependencies.md trap 8) and wants
//! `serde_dynamo` items; the record here is the wire format Lambda hands to functions — attribute
//! values in DynamoDB JSON (`{"S": ..}`, binaries base64), the creation time in whole epoch seconds.

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record as StreamRecord};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// One attribute value in DynamoDB JSON.
pub fn attribute_json(value: &AttributeValue) -> Value {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": b64(b.as_ref()) }),
        AttributeValue::Ss(values) => json!({ "SS": values }),
        AttributeValue::Ns(values) => json!({ "NS": values }),
        AttributeValue::Bs(values) => {
            json!({ "BS": values.iter().map(|b| b64(b.as_ref())).collect::<Vec<_>>() })
        }
        AttributeValue::M(map) => json!({ "M": item_json(map) }),
        AttributeValue::L(list) => {
            json!({ "L": list.iter().map(attribute_json).collect::<Vec<_>>() })
        }
        AttributeValue::Null(is_null) => json!({ "NULL": is_null }),
        AttributeValue::Bool(flag) => json!({ "BOOL": flag }),
        // A type this SDK does not know yet: keep the record deliverable rather than drop it.
        _ => json!({ "NULL": true }),
    }
}

/// An item (keys, images) in DynamoDB JSON, keys sorted so equal items serialize equally.
pub fn item_json(item: &HashMap<String, AttributeValue>) -> Value {
    let mut keys: Vec<&String> = item.keys().collect();
    keys.sort();
    let mut map = Map::new();
    for key in keys {
        map.insert(key.clone(), attribute_json(&item[key]));
    }
    Value::Object(map)
}

/// The element Lambda puts in `Records` for this stream record.
pub fn lambda_record(record: &StreamRecord, stream_arn: &str, default_region: &str) -> Value {
    let mut dynamodb = Map::new();
    if let Some(change) = record.dynamodb() {
        if let Some(created) = change.approximate_creation_date_time() {
            // Whole seconds as a JSON float, as AWS sends it (semantics.md §13.2).
            dynamodb.insert(
                "ApproximateCreationDateTime".into(),
                json!(created.secs() as f64),
            );
        }
        if let Some(keys) = change.keys() {
            dynamodb.insert("Keys".into(), item_json(keys));
        }
        if let Some(image) = change.new_image() {
            dynamodb.insert("NewImage".into(), item_json(image));
        }
        if let Some(image) = change.old_image() {
            dynamodb.insert("OldImage".into(), item_json(image));
        }
        if let Some(sequence) = change.sequence_number() {
            dynamodb.insert("SequenceNumber".into(), json!(sequence));
        }
        if let Some(size) = change.size_bytes() {
            dynamodb.insert("SizeBytes".into(), json!(size));
        }
        if let Some(view) = change.stream_view_type() {
            dynamodb.insert("StreamViewType".into(), json!(view.as_str()));
        }
    }
    let mut event = Map::new();
    event.insert(
        "eventID".into(),
        json!(record.event_id().unwrap_or_default()),
    );
    event.insert(
        "eventName".into(),
        json!(record.event_name().map(|n| n.as_str()).unwrap_or_default()),
    );
    event.insert(
        "eventVersion".into(),
        json!(record.event_version().unwrap_or("1.1")),
    );
    event.insert(
        "eventSource".into(),
        json!(record.event_source().unwrap_or("aws:dynamodb")),
    );
    event.insert(
        "awsRegion".into(),
        json!(record.aws_region().unwrap_or(default_region)),
    );
    event.insert("dynamodb".into(), Value::Object(dynamodb));
    event.insert("eventSourceARN".into(), json!(stream_arn));
    if let Some(identity) = record.user_identity() {
        event.insert(
            "userIdentity".into(),
            json!({
                "type": identity.r#type().unwrap_or_default(),
                "principalId": identity.principal_id().unwrap_or_default(),
            }),
        );
    }
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::primitives::{Blob, DateTime};
    use aws_sdk_dynamodbstreams::types::{OperationType, StreamRecord as Change, StreamViewType};

    #[test]
    fn the_record_has_lambdas_shape() {
        let record = StreamRecord::builder()
            .event_id("7de3041dd709b024af6f29e4fa13d34c")
            .event_name(OperationType::Modify)
            .event_version("1.1")
            .event_source("aws:dynamodb")
            .aws_region("eu-west-1")
            .dynamodb(
                Change::builder()
                    .approximate_creation_date_time(DateTime::from_secs_f64(1_479_499_740.75))
                    .keys("Id", AttributeValue::N("101".into()))
                    .new_image("Id", AttributeValue::N("101".into()))
                    .new_image("Blob", AttributeValue::B(Blob::new(b"foobar".to_vec())))
                    .new_image(
                        "Tags",
                        AttributeValue::L(vec![
                            AttributeValue::S("a".into()),
                            AttributeValue::Bool(true),
                        ]),
                    )
                    .old_image("Id", AttributeValue::N("101".into()))
                    .sequence_number("111")
                    .size_bytes(26)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build(),
            )
            .build();
        let arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/t/stream/2024-01-01T00:00:00.000";
        let event = lambda_record(&record, arn, "us-east-1");
        assert_eq!(
            event,
            json!({
                "eventID": "7de3041dd709b024af6f29e4fa13d34c",
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "eu-west-1",
                "eventSourceARN": arn,
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_479_499_740.0,
                    "Keys": {"Id": {"N": "101"}},
                    "NewImage": {
                        "Blob": {"B": "Zm9vYmFy"},
                        "Id": {"N": "101"},
                        "Tags": {"L": [{"S": "a"}, {"BOOL": true}]}
                    },
                    "OldImage": {"Id": {"N": "101"}},
                    "SequenceNumber": "111",
                    "SizeBytes": 26,
                    "StreamViewType": "NEW_AND_OLD_IMAGES"
                }
            })
        );
        assert!(event["dynamodb"]["ApproximateCreationDateTime"].is_f64());
    }
}
