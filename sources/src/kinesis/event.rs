//! Lambda's Kinesis event record (semantics.md §13.3), and the view Lambda filters it on
//! (semantics.md §7, "Data keys").
//!
//! Written as JSON text: the record is the wire format Lambda hands to functions — `data`
//! base64, the arrival time a JSON number of epoch seconds with three decimals, `eventID` the
//! shard and sequence number. The tests read it back as `aws_lambda_events`' `KinesisEvent`.

use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;

/// What one Kinesis record carries, as GetRecords returns it.
#[derive(Debug, Clone, Copy)]
pub struct KinesisRecordParts<'a> {
    pub shard_id: &'a str,
    pub sequence_number: &'a str,
    /// The user record's index in a KPL aggregate, when the record was one
    /// ([`super::kpl`]): `subSequenceNumber` in the record, and the tail of its `eventID`.
    pub sub_sequence_number: Option<u64>,
    pub partition_key: &'a str,
    pub data: &'a [u8],
    /// Since the Unix epoch.
    pub arrived_at: Duration,
    /// `KMS` when the record was encrypted at rest; absent otherwise.
    pub encryption_type: Option<&'a str>,
}

/// Where the records come from, named in every record.
#[derive(Debug, Clone, Copy)]
pub struct KinesisOrigin<'a> {
    pub stream_arn: &'a str,
    pub region: &'a str,
    /// Lambda puts the function's execution role here; sluice the configured
    /// `invoke_identity_arn`, and leaves the field out without one.
    pub invoke_identity_arn: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KinesisData<'a> {
    kinesis_schema_version: &'static str,
    partition_key: &'a str,
    sequence_number: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_sequence_number: Option<u64>,
    data: String,
    approximate_arrival_timestamp: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_type: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KinesisEventRecord<'a> {
    kinesis: KinesisData<'a>,
    event_source: &'static str,
    event_version: &'static str,
    #[serde(rename = "eventID")]
    event_id: String,
    event_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoke_identity_arn: Option<&'a str>,
    aws_region: &'a str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
}

/// The element Lambda puts in `Records` for this Kinesis record, as JSON text.
///
/// The arrival time is epoch seconds with exactly three decimals (`1545084650.250`), as Lambda
/// writes it: milliseconds, never a float's rounding (`1545084650.2499999`). Rust handlers on
/// `aws_lambda_events` 1.2 read its whole seconds right and mis-scale the rest, on Lambda too
/// (dependencies.md trap 8).
pub fn lambda_record(record: &KinesisRecordParts<'_>, origin: &KinesisOrigin<'_>) -> String {
    let millis = record.arrived_at.as_millis();
    let timestamp = RawValue::from_string(format!("{}.{:03}", millis / 1000, millis % 1000))
        .expect("digits, a point and digits are a JSON number");
    let event = KinesisEventRecord {
        kinesis: KinesisData {
            kinesis_schema_version: "1.0",
            partition_key: record.partition_key,
            sequence_number: record.sequence_number,
            sub_sequence_number: record.sub_sequence_number,
            data: base64::engine::general_purpose::STANDARD.encode(record.data),
            approximate_arrival_timestamp: timestamp,
            encryption_type: record.encryption_type,
        },
        event_source: "aws:kinesis",
        event_version: "1.0",
        event_id: match record.sub_sequence_number {
            None => format!("{}:{}", record.shard_id, record.sequence_number),
            Some(sub) => format!("{}:{}:{sub}", record.shard_id, record.sequence_number),
        },
        event_name: "aws:kinesis:record",
        invoke_identity_arn: origin.invoke_identity_arn,
        aws_region: origin.region,
        event_source_arn: origin.stream_arn,
    };
    serde_json::to_string(&event).expect("the record serializes")
}

/// The record Lambda filters a Kinesis record as: the `kinesis` object, its `data` decoded and
/// parsed when it is JSON; and whether it was. A pattern on `data` as JSON then never matches
/// data that is not JSON (the record is filtered out), as Lambda does.
pub fn filter_view(record: &Value) -> (Value, bool) {
    let mut view = record["kinesis"].clone();
    let parsed = record["kinesis"]["data"]
        .as_str()
        .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter(|value| value.is_object() || value.is_array());
    match parsed {
        Some(data) if view.is_object() => {
            view["data"] = data;
            (view, true)
        }
        _ => (view, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts<'a>(data: &'a [u8]) -> KinesisRecordParts<'a> {
        KinesisRecordParts {
            shard_id: "shardId-000000000006",
            sequence_number: "49590338271490256608559692538361571095921575989136588898",
            sub_sequence_number: None,
            partition_key: "1",
            data,
            arrived_at: Duration::from_millis(1_545_084_650_987),
            encryption_type: None,
        }
    }

    const ORIGIN: KinesisOrigin<'static> = KinesisOrigin {
        stream_arn: "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
        region: "us-east-2",
        invoke_identity_arn: Some("arn:aws:iam::123456789012:role/lambda-role"),
    };

    #[test]
    fn the_record_has_lambdas_shape() {
        let text = lambda_record(&parts(b"Hello, this is a test."), &ORIGIN);
        assert!(
            text.contains(r#""approximateArrivalTimestamp":1545084650.987"#),
            "{text}"
        );
        let record: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            record,
            json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "1",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                    "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
                    "approximateArrivalTimestamp": 1545084650.987
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
                "awsRegion": "us-east-2",
                "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream"
            })
        );
    }

    #[test]
    fn filters_see_json_data_parsed_and_other_data_as_it_is() {
        let json_record: Value =
            serde_json::from_str(&lambda_record(&parts(br#"{"temperature": 101}"#), &ORIGIN))
                .unwrap();
        let (view, is_json) = filter_view(&json_record);
        assert!(is_json);
        assert_eq!(view["data"], json!({"temperature": 101}));
        assert_eq!(view["partitionKey"], "1");
        let text_record: Value =
            serde_json::from_str(&lambda_record(&parts(b"plain text"), &ORIGIN)).unwrap();
        let (view, is_json) = filter_view(&text_record);
        assert!(!is_json);
        assert_eq!(view["data"], "cGxhaW4gdGV4dA==");
    }

    #[test]
    fn the_arrival_time_always_has_three_decimals() {
        let mut record = parts(b"x");
        record.arrived_at = Duration::from_millis(1_765_000_000_050);
        let text = lambda_record(&record, &ORIGIN);
        assert!(
            text.contains(r#""approximateArrivalTimestamp":1765000000.050"#),
            "{text}"
        );
    }
}
