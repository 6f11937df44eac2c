use super::*;

fn parts<'a>(
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
) -> MessageParts<'a> {
    MessageParts {
        topic,
        partition,
        offset,
        timestamp: Some((1_700_000_000_123, TimestampKind::CreateTime)),
        key,
        value,
        headers: vec![
            ("trace".into(), Some(&[104, 255][..])),
            ("empty".into(), None),
        ],
    }
}

#[test]
fn a_record_is_lambdas_kafka_record() {
    let record = parts("clicks", 3, 42, Some(b"k1"), Some(b"{\"a\":1}")).to_record(Duration::ZERO);
    let json: Value = serde_json::from_str(record.event.get()).unwrap();
    assert_eq!(
        json,
        json!({
            "topic": "clicks",
            "partition": 3,
            "offset": 42,
            "timestamp": 1_700_000_000_123_i64,
            "timestampType": "CREATE_TIME",
            "key": "azE=",
            "value": "eyJhIjoxfQ==",
            // Lambda writes header values as Java's signed bytes.
            "headers": [{"trace": [104, -1]}, {"empty": []}],
        })
    );
    assert_eq!(record.id(), "42");
    assert_eq!(record.ordering_key.as_deref(), Some("clicks-3"));
    assert_eq!(record.arrived_at, Duration::from_millis(1_700_000_000_123));
}

#[test]
fn a_message_without_key_or_timestamp_leaves_the_key_out() {
    let mut message = parts("t", 0, 7, None, Some(b"x"));
    message.timestamp = None;
    let record = message.to_record(Duration::from_secs(5));
    let json: Value = serde_json::from_str(record.event.get()).unwrap();
    assert!(json.get("key").is_none());
    assert_eq!(json["timestampType"], "NO_TIMESTAMP_TYPE");
    assert_eq!(record.arrived_at, Duration::from_secs(5));
}

#[test]
fn the_event_groups_records_by_partition_in_order() {
    let cluster = KafkaCluster {
        bootstrap_servers: "b1:9092,b2:9092".into(),
        msk_cluster_arn: None,
    };
    let records = [
        parts("t", 1, 10, None, Some(b"a")).to_record(Duration::ZERO),
        parts("t", 0, 4, None, Some(b"b")).to_record(Duration::ZERO),
        parts("t", 1, 11, None, Some(b"c")).to_record(Duration::ZERO),
    ];
    let event: Value = serde_json::from_slice(&event(&cluster, &records)).unwrap();
    assert_eq!(event["eventSource"], "SelfManagedKafka");
    assert!(event.get("eventSourceArn").is_none());
    assert_eq!(event["bootstrapServers"], "b1:9092,b2:9092");
    let offsets = |name: &str| -> Vec<i64> {
        event["records"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["offset"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(offsets("t-1"), vec![10, 11]);
    assert_eq!(offsets("t-0"), vec![4]);
    let keys: Vec<&String> = event["records"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2);
    // Dead-lettered records, already parsed, make the same event (replay sends it).
    let parsed: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_str(r.event.get()).unwrap())
        .collect();
    assert_eq!(event_value(&cluster, &parsed), event);
}

#[test]
fn an_msk_event_names_the_cluster() {
    let cluster = KafkaCluster {
        bootstrap_servers: "b:9098".into(),
        msk_cluster_arn: Some("arn:aws:kafka:us-east-1:123456789012:cluster/c/abc".into()),
    };
    let event: Value = serde_json::from_slice(&event(&cluster, [])).unwrap();
    assert_eq!(event["eventSource"], "aws:kafka");
    assert_eq!(
        event["eventSourceArn"],
        "arn:aws:kafka:us-east-1:123456789012:cluster/c/abc"
    );
    assert_eq!(event["records"], json!({}));
}

#[test]
fn filters_see_a_json_value_decoded_and_never_a_non_json_value() {
    let message = parts("t", 0, 1, Some(b"k"), Some(b"{\"kind\":\"click\"}"));
    let view = message.filter_view();
    assert_eq!(view["value"], json!({"kind": "click"}));
    // Every other field is the record's own.
    let mut record: Value =
        serde_json::from_str(message.to_record(Duration::ZERO).event.get()).unwrap();
    let mut rest = view.clone();
    record.as_object_mut().unwrap().remove("value");
    rest.as_object_mut().unwrap().remove("value");
    assert_eq!(rest, record);
    let view = parts("t", 0, 2, None, Some(b"plain words")).filter_view();
    assert!(view.get("value").is_none());
    assert_eq!(view["topic"], "t");
}

#[test]
fn a_dead_lettered_record_is_filtered_as_its_message_was() {
    for value in [&b"{\"kind\":\"click\"}"[..], b"plain words"] {
        let message = parts("t", 0, 1, Some(b"k"), Some(value));
        let record: Value =
            serde_json::from_str(message.to_record(Duration::ZERO).event.get()).unwrap();
        assert_eq!(record_filter_view(&record), message.filter_view());
    }
}

#[test]
fn a_committed_offset_wins_over_the_starting_position() {
    for position in [
        StartPosition::TrimHorizon,
        StartPosition::Latest,
        StartPosition::AtTimestamp(1_000),
    ] {
        assert_eq!(
            start_offset(Some(17), position, Some(3)),
            StartOffset::Committed(17)
        );
    }
}

#[test]
fn without_a_commit_the_starting_position_decides() {
    assert_eq!(
        start_offset(None, StartPosition::TrimHorizon, None),
        StartOffset::Beginning
    );
    assert_eq!(
        start_offset(Some(-1001), StartPosition::Latest, None),
        StartOffset::End
    );
}

/// semantics.md §4: AT_TIMESTAMP starts at the first offset at or after the time; a broker that
/// has nothing that new (or cannot look it up: librdkafka's mock cluster answers -1) starts at
/// the end.
#[test]
fn at_timestamp_starts_at_the_offset_for_the_time_or_the_end() {
    let at = StartPosition::AtTimestamp(1_700_000_000_000);
    assert_eq!(start_offset(None, at, Some(120)), StartOffset::At(120));
    assert_eq!(start_offset(None, at, Some(0)), StartOffset::At(0));
    assert_eq!(start_offset(None, at, Some(-1)), StartOffset::End);
    assert_eq!(start_offset(None, at, None), StartOffset::End);
}

#[test]
fn settings_sluice_owns_cannot_be_overridden() {
    for name in [
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "bootstrap.servers",
    ] {
        assert!(reserved_property(name).is_some(), "{name}");
    }
    assert!(reserved_property("security.protocol").is_none());
    let config = consumer_config(
        "b:9092",
        "g",
        StartPosition::TrimHorizon,
        &[("session.timeout.ms".into(), "6000".into())],
    );
    assert_eq!(config.get("enable.auto.commit"), Some("false"));
    assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
    assert_eq!(config.get("session.timeout.ms"), Some("6000"));
}

#[test]
fn the_failure_producer_takes_only_connection_properties() {
    let config = producer_config(
        "b:9092",
        &[
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
            ("session.timeout.ms".into(), "6000".into()),
        ],
    );
    assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    assert_eq!(config.get("session.timeout.ms"), None);
}
