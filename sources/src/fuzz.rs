//! Fuzz properties of the sources' parsers of outside input: S3 notifications (raw, in an SNS
//! envelope, from EventBridge) and Kafka messages (keys, values and headers as arbitrary bytes).
//! Never a panic; every error says what was wrong; a Kafka record sluice builds carries the
//! message's bytes back unchanged.

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use crate::kafka::{KafkaCluster, MessageParts, TimestampKind, event};
use crate::s3::{Notification, decode_key, parse_notification};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;

use serde_json::Value;
use std::borrow::Cow;
use std::time::Duration;

fn check_notification(body: &str) {
    match parse_notification(body) {
        Ok(Notification::Records(records)) => {
            assert!(!records.is_empty());
            for record in &records {
                let key = record["s3"]["object"]["key"].as_str().expect("a key");
                decode_key(key);
            }
        }
        Ok(Notification::Test) => {}
        Err(error) => assert!(!error.to_string().trim().is_empty(), "{body}"),
    }
}

fn signed_to_bytes(values: &Value) -> Vec<u8> {
    values
        .as_array()
        .expect("header bytes")
        .iter()
        .map(|b| b.as_i64().expect("a byte") as i8 as u8)
        .collect()
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn damaged_notifications_parse_or_say_why(bytes in mutate::mutated("notification")) {
        check_notification(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_json_notifications_parse_or_say_why(value in mutate::json_value()) {
        check_notification(&value.to_string());
        // The same inside an SNS envelope.
        let sns = serde_json::json!({"Type": "Notification", "Message": value.to_string()});
        check_notification(&sns.to_string());
    }

    #[test]
    fn any_s3_key_decodes_without_panic(key in any::<String>()) {
        decode_key(&key);
    }

    #[test]
    fn kafka_messages_of_arbitrary_bytes_come_back_unchanged_in_the_event(
        topic in "[a-zA-Z0-9._-]{1,40}",
        partition in 0i32..1000,
        offset in 0i64..i64::MAX,
        timestamp in proptest::option::of(any::<i64>()),
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..512)),
        headers in proptest::collection::vec(
            (".{0,12}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32))), 0..6),
    ) {
        let parts = MessageParts {
            topic: &topic,
            partition,
            offset,
            timestamp: timestamp.map(|t| (t, TimestampKind::CreateTime)),
            key: key.as_deref(),
            value: value.as_deref(),
            headers: headers.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), v.as_deref())).collect(),
        };
        parts.filter_view();
        let record = parts.to_record(Duration::from_secs(1));
        let cluster = KafkaCluster { bootstrap_servers: "b:9092".into(), msk_cluster_arn: None };
        let body = event(&cluster, [&record]);
        let event: Value = serde_json::from_slice(&body).expect("the event is JSON");
        let name = format!("{topic}-{partition}");
        let json = &event["records"][&name][0];
        prop_assert_eq!(json["offset"].as_i64(), Some(offset));
        let decoded_value = json["value"].as_str().map(|v| BASE64.decode(v).expect("base64"));
        prop_assert_eq!(decoded_value.unwrap_or_default(), value.clone().unwrap_or_default());
        let decoded_key = json.get("key").and_then(Value::as_str).map(|k| BASE64.decode(k).expect("base64"));
        prop_assert_eq!(decoded_key, key.clone());
        let read_headers: Vec<(String, Vec<u8>)> = json["headers"].as_array().expect("headers").iter()
            .map(|h| {
                let (k, v) = h.as_object().expect("one header").iter().next().expect("a key");
                (k.clone(), signed_to_bytes(v))
            })
            .collect();
        let written: Vec<(String, Vec<u8>)> = headers.iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
        prop_assert_eq!(read_headers, written);
    }
}
