//! S3 event notifications delivered through SQS: the three shapes people deploy, told apart.
//!
//! [`parse_notification`] reads an SQS message body as
//! - a raw S3 notification (`{"Records": [...]}`), or the `s3:TestEvent` S3 sends after every
//!   notification configuration change;
//! - the same wrapped in an SNS `Notification` envelope (`Message` holds it as a string);
//! - an EventBridge `Object Created` / `Object Deleted` event, turned into the record S3 would
//!   have sent (key form-URL-encoded, as S3 writes it).
//!
//! Records are kept as JSON and passed on unchanged: fields such as `userIdentity` may be
//! missing (moto omits them), and keys stay form-URL-encoded as S3 sent them. [`S3Filter`] matches
//! event names (with `*` wildcards) and the prefix and suffix of the decoded key.

use serde_json::{Value, json};

/// What one SQS message from a bucket's notifications holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// `s3:TestEvent`: delete without an invocation.
    Test,
    /// S3 event records, each the element Lambda's S3 event has in `Records`.
    Records(Vec<Value>),
}

/// Why a message body is not an S3 event notification; the dead letter's reason.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("the message body is not JSON; expected an S3 event notification")]
    NotJson(#[source] serde_json::Error),
    #[error("the notification has no records")]
    NoRecords,
    #[error("Records[{0}] has no s3.object.key")]
    NoKey(usize),
    #[error("an SNS envelope without a Message")]
    NoSnsMessage,
    #[error("the SNS Message is not JSON")]
    SnsNotJson(#[source] serde_json::Error),
    #[error(
        "the message is neither an S3 notification, an SNS envelope of one, nor an EventBridge S3 event"
    )]
    Unrecognized,
    #[error("the EventBridge event has no {0}")]
    EventBridgeWithout(&'static str),
    #[error("EventBridge detail-type {0:?} is not an S3 object event")]
    NotAnObjectEvent(String),
}

/// Reads a message body; the error says what the body was, for the dead letter.
pub fn parse_notification(body: &str) -> Result<Notification, NotificationError> {
    let value: Value = serde_json::from_str(body).map_err(NotificationError::NotJson)?;
    from_value(&value, 0)
}

fn from_value(value: &Value, depth: u8) -> Result<Notification, NotificationError> {
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Notification::Test);
    }
    if let Some(records) = value.get("Records").and_then(Value::as_array) {
        if records.is_empty() {
            return Err(NotificationError::NoRecords);
        }
        if let Some(bad) = records
            .iter()
            .position(|r| r["s3"]["object"]["key"].as_str().is_none())
        {
            return Err(NotificationError::NoKey(bad));
        }
        return Ok(Notification::Records(records.clone()));
    }
    if value.get("Type").and_then(Value::as_str) == Some("Notification") && depth == 0 {
        let message = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or(NotificationError::NoSnsMessage)?;
        let inner: Value = serde_json::from_str(message).map_err(NotificationError::SnsNotJson)?;
        return from_value(&inner, 1);
    }
    if value.get("source").and_then(Value::as_str) == Some("aws.s3")
        && value.get("detail-type").is_some()
    {
        return from_eventbridge(value).map(|record| Notification::Records(vec![record]));
    }
    Err(NotificationError::Unrecognized)
}

/// Form-URL encoding as S3 writes keys in notifications: space as `+`, reserved bytes as `%XX`.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b'*' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Decodes a key from a notification: `+` is a space, then percent-decoding.
pub fn decode_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn from_eventbridge(event: &Value) -> Result<Value, NotificationError> {
    let detail = &event["detail"];
    let bucket = detail["bucket"]["name"]
        .as_str()
        .ok_or(NotificationError::EventBridgeWithout("detail.bucket.name"))?;
    let key = detail["object"]["key"]
        .as_str()
        .ok_or(NotificationError::EventBridgeWithout("detail.object.key"))?;
    let region = event["region"].as_str().unwrap_or_default();
    let event_name = match (event["detail-type"].as_str(), detail["reason"].as_str()) {
        (Some("Object Created"), Some("PutObject")) => "ObjectCreated:Put",
        (Some("Object Created"), Some("CopyObject")) => "ObjectCreated:Copy",
        (Some("Object Created"), Some("CompleteMultipartUpload")) => {
            "ObjectCreated:CompleteMultipartUpload"
        }
        (Some("Object Created"), _) => "ObjectCreated:Put",
        (Some("Object Deleted"), _) => "ObjectRemoved:Delete",
        (Some(other), _) => {
            return Err(NotificationError::NotAnObjectEvent(other.to_owned()));
        }
        (None, _) => return Err(NotificationError::EventBridgeWithout("detail-type")),
    };
    let mut object = json!({ "key": encode_key(key) });
    for (from, to) in [
        ("size", "size"),
        ("etag", "eTag"),
        ("version-id", "versionId"),
        ("sequencer", "sequencer"),
    ] {
        if let Some(value) = detail["object"].get(from) {
            object[to] = value.clone();
        }
    }
    Ok(json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": event["time"],
        "eventName": event_name,
        "userIdentity": { "principalId": detail["requester"].as_str().unwrap_or_default() },
        "requestParameters": { "sourceIPAddress": detail["source-ip-address"].as_str().unwrap_or_default() },
        "responseElements": {
            "x-amz-request-id": detail["request-id"].as_str().unwrap_or_default(),
            "x-amz-id-2": "",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "eventbridge",
            "bucket": {
                "name": bucket,
                "ownerIdentity": { "principalId": "" },
                "arn": format!("arn:aws:s3:::{bucket}"),
            },
            "object": object,
        },
    }))
}

/// Which records of a notification a mapping handles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Filter {
    /// `s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete`, ...; empty = every event.
    pub events: Vec<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
}

impl S3Filter {
    pub fn matches(&self, record: &Value) -> bool {
        let name = format!("s3:{}", record["eventName"].as_str().unwrap_or_default());
        let event_ok = self.events.is_empty()
            || self
                .events
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(stem) => name.starts_with(stem),
                    None => name == *pattern,
                });
        if !event_ok {
            return false;
        }
        let key = decode_key(record["s3"]["object"]["key"].as_str().unwrap_or_default());
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.suffix.as_deref().is_none_or(|s| key.ends_with(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(key: &str, event: &str) -> String {
        json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": event,
            "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 3}}
        }]})
        .to_string()
    }

    #[test]
    fn the_three_shapes_and_the_test_event_are_told_apart() {
        let body = raw("photos/a+b.jpg", "ObjectCreated:Put");
        let Notification::Records(records) = parse_notification(&body).unwrap() else {
            panic!()
        };
        assert_eq!(records[0]["s3"]["object"]["key"], "photos/a+b.jpg");
        let sns = json!({"Type": "Notification", "MessageId": "m", "Message": body}).to_string();
        assert_eq!(
            parse_notification(&sns).unwrap(),
            parse_notification(&body).unwrap()
        );
        let test =
            json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}).to_string();
        assert_eq!(parse_notification(&test).unwrap(), Notification::Test);
        let eventbridge = json!({
            "version": "0", "detail-type": "Object Created", "source": "aws.s3",
            "time": "2024-05-01T12:00:00Z", "region": "eu-west-1",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "a b/ü.txt", "size": 5, "etag": "e"}, "reason": "PutObject"}
        })
        .to_string();
        let Notification::Records(records) = parse_notification(&eventbridge).unwrap() else {
            panic!()
        };
        assert_eq!(records[0]["eventName"], "ObjectCreated:Put");
        assert_eq!(records[0]["s3"]["object"]["key"], "a+b/%C3%BC.txt");
        assert_eq!(records[0]["s3"]["object"]["eTag"], "e");
        assert_eq!(records[0]["awsRegion"], "eu-west-1");
        assert!(parse_notification("not json").is_err());
        assert!(parse_notification(r#"{"hello": 1}"#).is_err());
    }

    #[test]
    fn keys_decode_with_form_url_rules() {
        assert_eq!(decode_key("a+b%2Bc%2Fd"), "a b+c/d");
        assert_eq!(decode_key("%C3%BCber"), "über");
        assert_eq!(decode_key("100%"), "100%");
        for key in ["plain.txt", "with space/and+plus", "ünï cödé/✓.png", "%41"] {
            assert_eq!(decode_key(&encode_key(key)), key);
        }
    }

    #[test]
    fn filters_match_event_wildcards_and_the_decoded_key() {
        let filter = S3Filter {
            events: vec!["s3:ObjectCreated:*".into()],
            prefix: Some("incoming/".into()),
            suffix: Some(" 1.jpg".into()),
        };
        let record = |key: &str, event: &str| {
            let Notification::Records(r) = parse_notification(&raw(key, event)).unwrap() else {
                panic!()
            };
            r[0].clone()
        };
        assert!(filter.matches(&record("incoming/photo+1.jpg", "ObjectCreated:Put")));
        assert!(!filter.matches(&record("incoming/photo+1.jpg", "ObjectRemoved:Delete")));
        assert!(!filter.matches(&record("other/photo+1.jpg", "ObjectCreated:Put")));
        assert!(!filter.matches(&record("incoming/photo+2.jpg", "ObjectCreated:Put")));
        assert!(S3Filter::default().matches(&record("x", "ObjectRemoved:Delete")));
    }
}
