//! Fuzz properties of the dispatcher's parsers of outside input: the config loader (YAML text
//! with `${VAR}` expansion → validated config) and the dead-letter envelope reader. Never a
//! panic; every config error names the file and says what is wrong; every seed loads unchanged;
//! an envelope sluice wrote reads back as the same records. (The Invoke API and Runtime API are
//! fuzzed over the wire in `tests/fuzz_http.rs`.)

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use crate::config;
use crate::destinations::envelope::{DeadLetter, EnvelopeSource};
use crate::dlq::{Entry, Handle, RecordKind};
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_policies::{DeadLetterCondition, ErrorInfo};
use std::collections::HashMap;
use std::time::Duration;

/// The variables the seeds use without a default, so an unchanged seed validates; then
/// `values` over them.
fn environment(values: &[(String, String)]) -> HashMap<String, String> {
    let mut environment: HashMap<String, String> = [
        (
            "ORDERS_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/orders",
        ),
        (
            "ORDERS_DLQ_URL",
            "https://sqs.us-east-1.amazonaws.com/1/orders-dlq",
        ),
        ("KAFKA_USER", "user"),
        ("KAFKA_PASSWORD", "password"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    environment.extend(values.iter().cloned());
    environment
}

#[test]
fn every_config_seed_loads_unchanged() {
    for (index, seed) in mutate::seeds("config").iter().enumerate() {
        let text = String::from_utf8(seed.clone()).expect("a UTF-8 seed");
        if let Err(errors) = config::parse("seed.yaml", &text, environment(&[])) {
            panic!("config seed {index} does not load: {errors}");
        }
    }
}

fn check_config(text: &str, environment: HashMap<String, String>) {
    match config::parse("fuzz.yaml", text, environment) {
        Ok(config) => {
            config.warnings();
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a message");
            for error in &errors.0 {
                assert_eq!(error.file, "fuzz.yaml");
                assert!(!error.message.trim().is_empty(), "{error:?}");
            }
            let rendered = errors.to_string();
            assert!(rendered.contains("fuzz.yaml"), "{rendered}");
        }
    }
}

fn handle() -> Handle {
    Handle::S3 { key: "k".into() }
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn damaged_configs_load_or_say_where_and_why(bytes in mutate::mutated("config")) {
        check_config(&String::from_utf8_lossy(&bytes), environment(&[]));
    }

    #[test]
    fn any_environment_value_expands_into_a_config_or_a_clear_error(
        bytes in mutate::mutated("config"),
        values in proptest::collection::vec(
            (prop_oneof![Just("AWS_REGION"), Just("TOKEN"), Just("QUEUE_URL"), Just("HANDLER_URL"),
                         Just("ORDERS_QUEUE_URL"), Just("SLUICE_ADMIN"), Just("RETRY_INITIAL")]
                .prop_map(str::to_owned),
             prop_oneof![".{0,40}", Just("\n- x: 1\n".to_owned()), Just("${A}".to_owned()),
                         Just("'\"".to_owned()), Just("|\n  y".to_owned())]),
            0..5),
    ) {
        check_config(&String::from_utf8_lossy(&bytes), environment(&values));
    }

    #[test]
    fn an_envelope_sluice_wrote_reads_back_as_the_same_records(
        bodies in proptest::collection::vec(".{0,64}", 1..5),
        message in ".{0,64}",
        attempts in 1u32..100,
        kind in 0usize..3,
    ) {
        let records: Vec<Value> = bodies.iter().enumerate().map(|(i, body)| match kind {
            0 => json!({"messageId": format!("m-{i}"), "body": body}),
            1 => json!({"eventID": format!("e-{i}"), "dynamodb": {"SequenceNumber": format!("{}", 100 + i), "NewImage": {"b": {"S": body}}}}),
            _ => json!({"topic": "t", "partition": 0, "offset": i, "value": body}),
        }).collect();
        let source = match kind {
            0 => EnvelopeSource::Sqs { queue_url: "https://q/1/orders".into(), queue_arn: "arn:q".into(),
                                       message_ids: (0..bodies.len()).map(|i| format!("m-{i}")).collect() },
            1 => EnvelopeSource::DynamodbStream { stream_arn: "arn:s".into(), shard_id: "shard-1".into(),
                                                  sequence_numbers: (0..bodies.len()).map(|i| format!("{}", 100 + i)).collect(),
                                                  first_arrival: Duration::from_secs(1), last_arrival: Duration::from_secs(2) },
            _ => EnvelopeSource::Kafka { cluster: sluice_sources::kafka::KafkaCluster { bootstrap_servers: "b:9092".into(), msk_cluster_arn: None },
                                         topic: "t".into(), partition: 0, offsets: (0..bodies.len() as i64).collect(),
                                         first_timestamp: 1, last_timestamp: 2 },
        };
        let fallback = [RecordKind::Sqs, RecordKind::DynamodbStream, RecordKind::Kafka][kind];
        let letter = DeadLetter {
            mapping: "m".into(), target: "t".into(), region: "us-east-1".into(),
            condition: DeadLetterCondition::RetryAttemptsExhausted, attempts,
            error: ErrorInfo::new("Bad", &message), function_error: Some("Unhandled".into()),
            source, records: records.clone(),
            first_attempt_at: Duration::from_secs(1), last_attempt_at: Duration::from_secs(2),
        };
        // Through bytes, as it travels.
        let written = serde_json::to_vec(&letter.to_json("req-1")).unwrap();
        let read: Value = serde_json::from_slice(&written).unwrap();
        let entry = Entry::from_envelope("id".into(), read, RecordKind::Sqs, handle());
        prop_assert_eq!(&entry.records, &records);
        prop_assert_eq!(entry.kind, fallback);
        prop_assert_eq!(entry.attempts, u64::from(attempts));
        prop_assert_eq!(&entry.error_type, "Bad");
        let expected = ErrorInfo::new("Bad", &message);
        prop_assert_eq!(&entry.error_message, &expected.message);
        prop_assert!(entry.unreadable.is_none());
    }

    #[test]
    fn any_json_reads_as_an_entry_or_an_unreadable_one(value in mutate::json_value()) {
        let entry = Entry::from_envelope("id".into(), value, RecordKind::Sqs, handle());
        entry.record_ids();
        entry.to_json();
        if entry.records.is_empty() {
            prop_assert!(entry.unreadable.is_some());
        }
    }
}
