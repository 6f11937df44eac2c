//! A `kafka` source as written in the config file, checked with Lambda's limits and librdkafka's
//! rules, and built into the mapping's settings with its finished [`StreamPolicy`] (one per
//! partition, records named by partition and offset).

use crate::config::destinations::DestinationConfig;
use crate::config::duration::HumanDuration;
use crate::config::kind::{BuildSource, MappingParts, SourceRules};
use crate::config::stream::{self, RawStartingPosition, RawStreamRetry, StartingPosition};
use crate::config::validate::Validator;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_policies::{IdentifierKind, StreamPolicy};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How long a batch gathers when `max_batching_window` is not given (Lambda's Kafka default).
pub const DEFAULT_BATCHING_WINDOW: Duration = Duration::from_millis(500);
/// Bytes a partition may hold beyond its batches before it is paused, by default (16 MiB).
pub const DEFAULT_PARTITION_BUFFER_BYTES: u64 = 16 << 20;
pub const PARTITION_BUFFER_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1_024..=(1 << 30);

// `Some(constant)`: the schema shows the default, and an empty value still reads as it.
fn default_batch_size() -> Option<u32> {
    Some(stream::DEFAULT_BATCH_SIZE)
}
fn default_window() -> Option<HumanDuration> {
    Some(HumanDuration(DEFAULT_BATCHING_WINDOW))
}
fn default_partition_buffer_bytes() -> Option<u64> {
    Some(DEFAULT_PARTITION_BUFFER_BYTES)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaSource {
    /// Comma-separated host:port list of brokers.
    pub bootstrap_servers: String,
    /// Topics to read (one or more).
    pub topics: Vec<String>,
    /// Consumer group; its committed offsets win over starting_position, as in Lambda.
    pub group_id: String,
    /// trim_horizon (earliest), latest, or at_timestamp with starting_timestamp.
    pub starting_position: RawStartingPosition,
    /// RFC 3339 time or Unix seconds, for at_timestamp.
    #[serde(default)]
    pub starting_timestamp: Option<String>,
    /// Records per invocation, 1..=10000.
    #[serde(default = "default_batch_size")]
    pub batch_size: Option<u32>,
    /// How long to gather a batch, 0s..=300s.
    #[serde(default = "default_window")]
    pub max_batching_window: Option<HumanDuration>,
    /// librdkafka client properties (SASL, TLS, timeouts), such as security.protocol: SASL_SSL.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Bytes of records one partition may hold beyond its batches before sluice pauses it at the
    /// broker (a blocked partition holds at most this much): 1024..=1073741824.
    #[serde(default = "default_partition_buffer_bytes")]
    pub partition_buffer_bytes: Option<u64>,
    /// An MSK cluster's ARN: the event then says aws:kafka and carries eventSourceArn.
    #[serde(default)]
    pub msk_cluster_arn: Option<String>,
    /// How sluice authenticates to the brokers: sasl_scram {mechanism, username, password},
    /// msk_iam {region} (IAM, OAUTHBEARER from the default credential chain) or mtls
    /// {certificate, key, key_password} (PEM files). The failure topic's producer uses the same.
    #[serde(default)]
    pub auth: Option<RawKafkaAuth>,
    /// Decode keys and values written in the Confluent wire format (magic byte, schema id)
    /// with their schemas from a Confluent-compatible registry, before filtering and batching.
    #[serde(default)]
    pub schema_registry: Option<RawSchemaRegistry>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawKafkaAuth {
    SaslScram {
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        mechanism: ScramMechanism,
        username: String,
        /// Put it in the environment: password: ${KAFKA_PASSWORD}.
        password: String,
    },
    MskIam {
        /// The cluster's region; by default msk_cluster_arn's, else the AWS default (AWS_REGION).
        #[serde(default)]
        region: Option<String>,
    },
    Mtls {
        /// PEM file of the client certificate (chain).
        certificate: String,
        /// PEM file of its private key.
        key: String,
        #[serde(default)]
        key_password: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    Sha512,
}

/// How a mapping's Kafka clients authenticate; its librdkafka settings are already in the
/// source's `properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaAuth {
    SaslScram,
    /// OAUTHBEARER tokens signed for this region (`None`: the AWS default).
    MskIam {
        region: Option<String>,
    },
    Mtls,
}

/// librdkafka settings that `auth` sets: a property of these names is refused beside it.
const AUTH_PROPERTY_PREFIXES: &[&str] = &["sasl.", "enable.sasl.", "ssl.certificate.", "ssl.key."];

impl RawKafkaAuth {
    /// The librdkafka settings for this auth (without `security.protocol`), and the protocols
    /// it works with (the first is the default).
    fn properties(&self) -> (Vec<(String, String)>, &'static [&'static str]) {
        let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        match self {
            RawKafkaAuth::SaslScram {
                mechanism,
                username,
                password,
            } => {
                let mechanism = match mechanism {
                    ScramMechanism::Sha256 => "SCRAM-SHA-256",
                    ScramMechanism::Sha512 => "SCRAM-SHA-512",
                };
                (
                    set(&[
                        ("sasl.mechanism", mechanism),
                        ("sasl.username", username),
                        ("sasl.password", password),
                    ]),
                    &["SASL_SSL", "SASL_PLAINTEXT"],
                )
            }
            // MSK's IAM listeners are TLS only, and a token is a bearer credential.
            RawKafkaAuth::MskIam { .. } => {
                (set(&[("sasl.mechanism", "OAUTHBEARER")]), &["SASL_SSL"])
            }
            RawKafkaAuth::Mtls {
                certificate,
                key,
                key_password,
            } => {
                let mut properties = set(&[
                    ("ssl.certificate.location", certificate),
                    ("ssl.key.location", key),
                ]);
                if let Some(password) = key_password {
                    properties.push(("ssl.key.password".into(), password.clone()));
                }
                (properties, &["SSL"])
            }
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSchemaRegistry {
    /// The registry's base URL (Confluent, Redpanda, Apicurio's ccompat API), such as
    /// https://registry.example.com:8081 or http://apicurio:8080/apis/ccompat/v7.
    pub url: String,
    /// How sluice authenticates: basic (username, password), bearer (token) or mtls
    /// (certificate, key: PEM files); secrets belong in ${ENV_VARS}.
    #[serde(default)]
    pub auth: Option<RawRegistryAuth>,
    /// A PEM file of CA certificates to trust for the registry, beside the system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// Decode the record's key: { format: avro | protobuf | json_schema }.
    #[serde(default)]
    pub key: Option<RawAttribute>,
    /// Decode the record's value: { format: avro | protobuf | json_schema }.
    #[serde(default)]
    pub value: Option<RawAttribute>,
    /// JSON (default): a decoded key or value is delivered as base64 of its JSON; SOURCE: as
    /// its original bytes without the schema framing.
    #[serde(default)]
    pub event_record_format: Option<EventRecordFormat>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawRegistryAuth {
    Basic { username: String, password: String },
    Bearer { token: String },
    Mtls { certificate: String, key: String },
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAttribute {
    /// The format its schemas are in; a record whose schema is another format is dead-lettered.
    pub format: SchemaFormat,
}

/// The schema formats of a Confluent-compatible registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchemaFormat {
    #[serde(alias = "AVRO")]
    Avro,
    #[serde(alias = "PROTOBUF")]
    Protobuf,
    #[serde(alias = "JSON_SCHEMA", alias = "JSON", alias = "json")]
    JsonSchema,
}

impl SchemaFormat {
    /// The registry's `schemaType` (and Lambda's `dataFormat`).
    pub fn registry_name(self) -> &'static str {
        match self {
            SchemaFormat::Avro => "AVRO",
            SchemaFormat::Protobuf => "PROTOBUF",
            SchemaFormat::JsonSchema => "JSON",
        }
    }
}

/// How a decoded key or value reaches the target (Lambda's `EventRecordFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
pub enum EventRecordFormat {
    #[default]
    #[serde(rename = "JSON", alias = "json")]
    Json,
    #[serde(rename = "SOURCE", alias = "source")]
    Source,
}

/// How sluice authenticates to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    /// PEM files: the client certificate (chain) and its private key.
    Mtls {
        certificate: PathBuf,
        key: PathBuf,
    },
}

/// A mapping's schema registry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRegistryConfig {
    pub url: String,
    pub auth: RegistryAuth,
    pub ca: Option<PathBuf>,
    pub key: Option<SchemaFormat>,
    pub value: Option<SchemaFormat>,
    pub event_record_format: EventRecordFormat,
}

impl RawSchemaRegistry {
    fn build(self, v: &mut Validator, path: &str) -> SchemaRegistryConfig {
        let url = self.url.trim().to_owned();
        match reqwest::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
            _ => v.error(
                format!("{path}.url"),
                format!("{url:?} is not an http(s) URL; write the registry's base URL, such as https://registry.example.com:8081"),
            ),
        }
        if self.key.is_none() && self.value.is_none() {
            v.error(
                path.to_owned(),
                "decodes nothing: add value: { format: avro | protobuf | json_schema } (or key:)",
            );
        }
        let auth = match self.auth {
            None => RegistryAuth::None,
            Some(RawRegistryAuth::Basic { username, password }) => {
                if username.is_empty() {
                    v.error(format!("{path}.auth.basic.username"), "must not be empty");
                }
                RegistryAuth::Basic { username, password }
            }
            Some(RawRegistryAuth::Bearer { token }) => {
                if token.is_empty() {
                    v.error(
                        format!("{path}.auth.bearer.token"),
                        "must not be empty; set it from the environment, as token: ${REGISTRY_TOKEN}",
                    );
                }
                RegistryAuth::Bearer { token }
            }
            Some(RawRegistryAuth::Mtls { certificate, key }) => RegistryAuth::Mtls {
                certificate: PathBuf::from(certificate),
                key: PathBuf::from(key),
            },
        };
        SchemaRegistryConfig {
            url,
            auth,
            ca: self.ca.map(PathBuf::from),
            key: self.key.map(|k| k.format),
            value: self.value.map(|v| v.format),
            event_record_format: self.event_record_format.unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSourceConfig {
    pub bootstrap_servers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub starting_position: StartingPosition,
    pub batch_size: usize,
    pub max_batching_window: Duration,
    /// librdkafka properties, in file order.
    pub properties: Vec<(String, String)>,
    /// Bytes a partition may queue beyond its lane before it is paused.
    pub partition_buffer_bytes: usize,
    pub msk_cluster_arn: Option<String>,
    pub auth: Option<KafkaAuth>,
    pub schema_registry: Option<SchemaRegistryConfig>,
    pub policy: StreamPolicy,
}

impl KafkaSourceConfig {
    /// The OAUTHBEARER token source its clients need (MSK IAM), one per client.
    pub fn tokens(&self) -> sluice_sources::kafka::auth::Tokens {
        match &self.auth {
            Some(KafkaAuth::MskIam { region }) => Some(std::sync::Arc::new(
                super::auth::MskIamTokens::new(region.clone()),
            )),
            _ => None,
        }
    }

    /// The cluster as Lambda's Kafka event names it.
    pub fn cluster(&self) -> sluice_sources::kafka::KafkaCluster {
        sluice_sources::kafka::KafkaCluster {
            bootstrap_servers: self.bootstrap_servers.clone(),
            msk_cluster_arn: self.msk_cluster_arn.clone(),
        }
    }
}

impl BuildSource for RawKafkaSource {
    type Config = KafkaSourceConfig;
    type Retry = RawStreamRetry;

    fn build(self, v: &mut Validator, path: &str, mapping: MappingParts) -> KafkaSourceConfig {
        if self.bootstrap_servers.trim().is_empty() {
            v.error(
                format!("{path}.bootstrap_servers"),
                "must list at least one broker, as host:port[,host:port...]",
            );
        }
        if self.topics.is_empty() {
            v.error(format!("{path}.topics"), "must name at least one topic");
        }
        for (index, topic) in self.topics.iter().enumerate() {
            if topic.trim().is_empty() || topic.contains(char::is_whitespace) {
                v.error(
                    format!("{path}.topics[{index}]"),
                    format!("{topic:?} is not a topic name"),
                );
            }
        }
        if self.group_id.trim().is_empty() {
            v.error(format!("{path}.group_id"), "must not be empty");
        }
        let starting_position = stream::starting_position(
            v,
            path,
            &self.starting_position,
            self.starting_timestamp.as_deref(),
        );
        let (batch_size, window) = stream::batching(
            v,
            path,
            self.batch_size,
            self.max_batching_window,
            DEFAULT_BATCHING_WINDOW,
        );
        let partition_buffer_bytes = self
            .partition_buffer_bytes
            .unwrap_or(DEFAULT_PARTITION_BUFFER_BYTES);
        if !PARTITION_BUFFER_BYTES_RANGE.contains(&partition_buffer_bytes) {
            v.error(
                format!("{path}.partition_buffer_bytes"),
                format!("must be 1024..=1073741824 (got {partition_buffer_bytes})"),
            );
        }
        let partition_buffer_bytes = partition_buffer_bytes.clamp(
            *PARTITION_BUFFER_BYTES_RANGE.start(),
            *PARTITION_BUFFER_BYTES_RANGE.end(),
        ) as usize;
        for name in self.properties.keys() {
            if let Some(instead) = sluice_sources::kafka::reserved_property(name) {
                v.error(
                    format!("{path}.properties.{name}"),
                    format!("is set by sluice; {instead}"),
                );
            }
        }
        let mut properties: Vec<(String, String)> = self.properties.into_iter().collect();
        let auth = self.auth.map(|auth| {
            let (auth_properties, protocols) = auth.properties();
            for (name, _) in &properties {
                if AUTH_PROPERTY_PREFIXES.iter().any(|p| name.starts_with(p)) {
                    v.error(
                        format!("{path}.properties.{name}"),
                        format!("is set by {path}.auth; remove it here"),
                    );
                }
            }
            match properties.iter().find(|(name, _)| name == "security.protocol") {
                Some((_, protocol)) if !protocols.iter().any(|p| p.eq_ignore_ascii_case(protocol)) => {
                    v.error(
                        format!("{path}.properties.security.protocol"),
                        format!("{protocol:?} does not carry {path}.auth; use {} (or leave it out: {} by default)", protocols.join(" or "), protocols[0]),
                    );
                }
                Some(_) => {}
                None => properties.push(("security.protocol".into(), protocols[0].into())),
            }
            properties.extend(auth_properties);
            match auth {
                RawKafkaAuth::SaslScram { .. } => KafkaAuth::SaslScram,
                RawKafkaAuth::Mtls { .. } => KafkaAuth::Mtls,
                RawKafkaAuth::MskIam { region } => KafkaAuth::MskIam {
                    region: region.or_else(|| {
                        // arn:aws:kafka:<region>:<account>:cluster/...
                        self.msk_cluster_arn
                            .as_deref()
                            .and_then(|arn| arn.split(':').nth(3))
                            .filter(|region| !region.is_empty())
                            .map(str::to_owned)
                    }),
                },
            }
        });
        if let Some(arn) = &self.msk_cluster_arn
            && (!arn.starts_with("arn:") || !arn.contains(":kafka:"))
        {
            v.error(
                format!("{path}.msk_cluster_arn"),
                format!("{arn:?} is not an MSK cluster ARN; it looks like arn:aws:kafka:us-east-1:123456789012:cluster/name/uuid"),
            );
        }
        let schema_registry = self
            .schema_registry
            .map(|raw| raw.build(v, &format!("{path}.schema_registry")));
        let policy = stream::policy(
            v,
            stream::PolicyInputs {
                mapping_path: mapping.path,
                kind: "kafka",
                retry: mapping.retry,
                report_batch_item_failures: mapping.report_batch_item_failures,
                has_on_failure: mapping.on_failure.is_some(),
                identifier_kind: IdentifierKind::KafkaOffset,
            },
        );
        KafkaSourceConfig {
            bootstrap_servers: self.bootstrap_servers,
            topics: self.topics,
            group_id: self.group_id,
            starting_position,
            batch_size,
            max_batching_window: window,
            properties,
            partition_buffer_bytes,
            msk_cluster_arn: self.msk_cluster_arn,
            auth,
            schema_registry,
            policy,
        }
    }
}

impl SourceRules for KafkaSourceConfig {
    fn largest_record(&self) -> &'static str {
        "1 MB or more"
    }

    fn calls_aws(&self) -> bool {
        // MSK IAM tokens load their own credential chain and region (see `auth.rs`): the
        // daemon's AWS clients are not needed for them.
        false
    }

    fn replay_policy(&self, _has_on_failure: bool) -> StreamPolicy {
        self.policy.clone()
    }

    fn replay_batch_size(&self) -> usize {
        self.batch_size
    }

    fn check_destination(&self, v: &mut Validator, path: &str, destination: &DestinationConfig) {
        if let DestinationConfig::Kafka { topic } = destination
            && self.topics.contains(topic)
        {
            v.error(
                format!("{path}.kafka.topic"),
                format!("{topic:?} is a source topic of this mapping; dead letters would be consumed again (Lambda refuses this too); name another topic"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    fn kafka_source(config: &crate::config::Config) -> &KafkaSourceConfig {
        source_of!(config, Kafka)
    }

    #[test]
    fn a_kafka_mapping_builds_with_lambdas_defaults() {
        let config = parse_text(KAFKA).unwrap();
        let kafka = kafka_source(&config);
        assert_eq!(kafka.batch_size, 100);
        // semantics.md §1: Kafka's default window is 0.5 s.
        assert_eq!(kafka.max_batching_window, Duration::from_millis(500));
        assert_eq!(kafka.starting_position, StartingPosition::TrimHorizon);
        assert_eq!(kafka.policy.max_retry_attempts, None);
        assert_eq!(kafka.policy.identifier_kind, IdentifierKind::KafkaOffset);
        assert!(
            !config.needs_aws(),
            "a Kafka mapping without AWS destinations needs no AWS"
        );
        let with_sqs = format!(
            "{KAFKA}    retry: {{ max_retry_attempts: 2, bisect_on_error: true }}\n    on_failure: {{ sqs: {{ queue_url: \"http://localhost:4566/000000000000/dlq\" }} }}\n"
        );
        let config = parse_text(&with_sqs).unwrap();
        assert!(config.needs_aws());
        assert!(kafka_source(&config).policy.bisect_on_error);
    }

    #[test]
    fn a_failure_topic_must_not_be_a_source_topic() {
        let text = format!(
            "{KAFKA}    retry: {{ max_retry_attempts: 2 }}\n    on_failure: {{ kafka: {{ topic: clicks }} }}\n"
        );
        let error = parse_text(&text).unwrap_err().0.remove(0);
        assert_eq!(error.path, "mappings[0].on_failure.kafka.topic");
        assert!(error.message.contains("source topic"), "{}", error.message);
        let fine = text.replace("topic: clicks }", "topic: clicks-failed }");
        assert!(parse_text(&fine).is_ok());
    }

    #[test]
    fn an_msk_cluster_arn_must_be_a_kafka_arn() {
        let with = |arn: &str| {
            KAFKA.replace(
                "starting_position: trim_horizon",
                &format!("starting_position: trim_horizon\n        msk_cluster_arn: \"{arn}\""),
            )
        };
        let error = parse_text(&with("arn:aws:sqs:us-east-1:1:q"))
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!(error.path, "mappings[0].source.kafka.msk_cluster_arn");
        assert!(parse_text(&with("cluster/c/abc")).is_err());
        let config = parse_text(&with("arn:aws:kafka:us-east-1:1:cluster/c/abc")).unwrap();
        assert!(kafka_source(&config).msk_cluster_arn.is_some());
    }

    #[test]
    fn kafka_properties_sluice_owns_are_refused_at_their_key() {
        let text = KAFKA.replace(
            "starting_position: trim_horizon",
            "starting_position: trim_horizon\n        properties: { enable.auto.commit: \"true\", security.protocol: SASL_SSL }",
        );
        let errors = parse_text(&text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(
            errors.0[0].path,
            "mappings[0].source.kafka.properties.enable.auto.commit"
        );
        assert!(errors.0[0].position.is_some());
    }

    fn with_auth(auth: &str, properties: &str) -> String {
        KAFKA.replace(
            "starting_position: trim_horizon",
            &format!(
                "starting_position: trim_horizon\n        msk_cluster_arn: \"arn:aws:kafka:eu-west-1:1:cluster/c/abc\"\n        auth: {auth}\n        properties: {{ {properties} }}"
            ),
        )
    }

    #[test]
    fn kafka_auth_becomes_librdkafka_settings_that_the_failure_producer_shares() {
        let config = parse_text(&with_auth(
            "{ sasl_scram: { mechanism: SCRAM-SHA-512, username: app, password: pw } }",
            "ssl.ca.location: /ca.pem",
        ))
        .unwrap();
        let kafka = kafka_source(&config);
        assert_eq!(kafka.auth, Some(KafkaAuth::SaslScram));
        assert!(kafka.tokens().is_none());
        let producer =
            sluice_sources::kafka::producer_config(&kafka.bootstrap_servers, &kafka.properties);
        for (name, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "app"),
            ("sasl.password", "pw"),
            ("ssl.ca.location", "/ca.pem"),
        ] {
            assert_eq!(producer.get(name), Some(value), "{name}");
        }

        let config = parse_text(&with_auth("{ msk_iam: {} }", "")).unwrap();
        let kafka = kafka_source(&config);
        assert_eq!(
            kafka.auth,
            Some(KafkaAuth::MskIam {
                region: Some("eu-west-1".into())
            }),
            "the region comes from the cluster ARN"
        );
        assert!(kafka.tokens().is_some());
        assert!(
            !config.needs_aws(),
            "MSK IAM tokens load their own credential chain: no region is required of the daemon"
        );
        let consumer = sluice_sources::kafka::consumer_config(
            &kafka.bootstrap_servers,
            "g",
            sluice_sources::kafka::StartPosition::Latest,
            &kafka.properties,
        );
        assert_eq!(consumer.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));

        let config = parse_text(&with_auth(
            "{ mtls: { certificate: /c.pem, key: /k.pem, key_password: kp } }",
            "",
        ))
        .unwrap();
        let kafka = kafka_source(&config);
        let properties: std::collections::HashMap<_, _> =
            kafka.properties.iter().cloned().collect();
        assert_eq!(properties["security.protocol"], "SSL");
        assert_eq!(properties["ssl.certificate.location"], "/c.pem");
        assert_eq!(properties["ssl.key.location"], "/k.pem");
        assert_eq!(properties["ssl.key.password"], "kp");
    }

    #[test]
    fn kafka_auth_refuses_properties_that_contradict_it() {
        let errors = parse_text(&with_auth(
            "{ sasl_scram: { mechanism: SCRAM-SHA-256, username: a, password: b } }",
            "sasl.username: other, security.protocol: SSL",
        ))
        .unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "mappings[0].source.kafka.properties.sasl.username",
                "mappings[0].source.kafka.properties.security.protocol"
            ],
            "{errors}"
        );
        // A plaintext SASL listener (inside a VPC, a test cluster) is allowed.
        let config = parse_text(&with_auth(
            "{ sasl_scram: { mechanism: SCRAM-SHA-256, username: a, password: b } }",
            "security.protocol: SASL_PLAINTEXT",
        ))
        .unwrap();
        let protocols: Vec<&str> = kafka_source(&config)
            .properties
            .iter()
            .filter(|(name, _)| name == "security.protocol")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(protocols, ["SASL_PLAINTEXT"]);
        // MSK IAM: TLS only, and librdkafka's own unsecured JWTs would shadow the tokens.
        let errors = parse_text(&with_auth(
            "{ msk_iam: {} }",
            "security.protocol: SASL_PLAINTEXT, enable.sasl.oauthbearer.unsecure.jwt: \"true\"",
        ))
        .unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "mappings[0].source.kafka.properties.security.protocol",
                "mappings[0].source.kafka.properties.enable.sasl.oauthbearer.unsecure.jwt"
            ],
            "{errors}"
        );
        let unknown = parse_text(&with_auth("{ kerberos: {} }", "")).unwrap_err();
        assert!(unknown.to_string().contains("kerberos"), "{unknown}");
    }

    #[test]
    fn kafka_source_settings_are_checked_at_their_keys() {
        let text = KAFKA
            .replace("topics: [clicks]", "topics: []")
            .replace(
                "starting_position: trim_horizon",
                "starting_position: at_timestamp\n        batch_size: 20000\n        max_batching_window: 301s",
            );
        let errors = parse_text(&text).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "mappings[0].source.kafka.topics",
                "mappings[0].source.kafka.starting_position",
                "mappings[0].source.kafka.batch_size",
                "mappings[0].source.kafka.max_batching_window",
            ]
        );
        let at = KAFKA.replace(
            "starting_position: trim_horizon",
            "starting_position: at_timestamp\n        starting_timestamp: \"2026-01-01T00:00:00Z\"",
        );
        let config = parse_text(&at).unwrap();
        assert_eq!(
            kafka_source(&config).starting_position,
            StartingPosition::AtTimestamp(Duration::from_secs(1_767_225_600))
        );
    }
}
