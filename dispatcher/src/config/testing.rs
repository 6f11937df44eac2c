//! Config documents the config tests start from, one per source kind, and the parser they
//! run through.

use super::{Config, ConfigErrors};
use std::collections::HashMap;

/// An sqs mapping.
pub const BASE: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: orders
    target: api
    source:
      sqs:
        queue_url: "${QUEUE_URL:-http://127.0.0.1:5000/123456789012/orders}"
        batch_size: 10
"#;

/// A kafka mapping.
pub const KAFKA: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: clicks
    target: api
    source:
      kafka:
        bootstrap_servers: "b1:9092,b2:9092"
        topics: [clicks]
        group_id: sluice-clicks
        starting_position: trim_horizon
"#;

/// A dynamodb_stream mapping.
pub const STREAM: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: changes
    target: api
    source:
      dynamodb_stream:
        table: orders
        starting_position: trim_horizon
"#;

/// A kinesis mapping.
pub const KINESIS: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: orders-stream
    target: api
    source:
      kinesis:
        stream_name: orders
        starting_position: trim_horizon
"#;

/// An s3 mapping.
pub const S3: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: uploads
    target: api
    source:
      s3: { queue_url: "http://127.0.0.1:5000/123456789012/uploads", events: ["s3:ObjectCreated:*"] }
"#;

pub const SCHEDULE: &str = r#"
version: 1
targets:
  api:
    http: { url: "http://127.0.0.1:8080/events" }
mappings:
  - name: nightly
    target: api
    source:
      schedule: { expression: "cron(0 2 * * ? *)", timezone: Europe/Paris }
"#;

pub fn parse_text(text: &str) -> Result<Config, ConfigErrors> {
    super::parse("sluice.yaml", text, HashMap::new())
}

/// The first mapping's source, which `kind` must match.
macro_rules! source_of {
    ($config:expr, $kind:ident) => {
        match &$config.mappings[0].source {
            $crate::config::SourceConfig::$kind(source) => source,
            other => panic!("not a {} source: {other:?}", stringify!($kind)),
        }
    };
}
pub(crate) use source_of;
