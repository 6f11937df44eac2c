//! Kafka keys and values in the Confluent schema-registry wire format, decoded before they are
//! filtered and batched (`source.kafka.schema_registry`).
//!
//! Guarantees:
//! - a key or value configured for decoding is read as magic byte 0, a 4-byte big-endian schema
//!   id, for Protobuf the message-index path (zigzag varints; a lone 0 is the first message),
//!   then the payload; a record without a key or value (a tombstone) passes unchanged;
//! - a schema is fetched once per id and kept for the mapping's life (a registry never changes
//!   what an id means); lanes asking for the same new id wait for one fetch;
//! - `JSON`: the decoded key or value is delivered as base64 of its JSON text; `SOURCE`: as its
//!   payload without the framing. Either way `keySchemaMetadata` / `valueSchemaMetadata`
//!   ({dataFormat, schemaId}) are added, and the mapping's filters see the decoded JSON;
//! - a record that cannot be decoded — no framing, an id the registry does not have, a schema
//!   of another format than configured or that does not parse, bytes the schema does not read —
//!   is [`Decoded::Unusable`] with a `SchemaRegistryError` naming the topic, partition, offset
//!   and what to do; it never blocks its partition;
//! - a registry that cannot answer (unreachable, a timeout, 5xx, 401/403, 429) is
//!   [`Decoded::Retry`]: records are never dead-lettered because the registry is down or the
//!   credentials are wrong; the lane retries them in order;
//! - every registry answer is read within [`REQUEST_TIMEOUT`] and at most [`MAX_SCHEMA_BYTES`];
//!   references are followed at most [`MAX_REFERENCE_DEPTH`] deep and [`MAX_REFERENCES`] in all;
//!   an Avro datum may ask for at most [`MAX_AVRO_ALLOCATION`] bytes at once.
//!
//! JSON Schema values are parsed as JSON, not validated against their schema (the producer's
//! serializer validated them).

use super::config::{EventRecordFormat, RegistryAuth, SchemaFormat, SchemaRegistryConfig};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_policies::ErrorInfo;
use sluice_sources::Record;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one registry request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest registry answer read (a schema with its metadata).
pub const MAX_SCHEMA_BYTES: usize = 4 << 20;
/// How deep references may nest.
pub const MAX_REFERENCE_DEPTH: usize = 16;
/// How many references one schema may pull in, all levels together.
pub const MAX_REFERENCES: usize = 256;
/// The most an Avro datum may make the decoder allocate at once (a hostile length prefix is an
/// error, not an allocation). Kafka messages are 1 MB by default.
pub const MAX_AVRO_ALLOCATION: usize = 8 << 20;
/// The error type of records that cannot be decoded.
pub const ERROR_TYPE: &str = "SchemaRegistryError";

/// Why a schema could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not answer now; asking again later may work.
    #[error("the schema registry at {url} could not be asked: {reason}")]
    Unavailable { url: String, reason: String },
    /// The registry answered, and no retry will change its answer.
    #[error("{0}")]
    Refused(String),
}

/// A schema as the registry stores it.
#[derive(Debug, Deserialize)]
struct Registered {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Debug, Clone, Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

/// A parsed schema, ready to decode payloads.
#[derive(Debug)]
pub enum Schema {
    Avro {
        schema: apache_avro::Schema,
        /// The named schemas its references brought.
        named: Vec<apache_avro::Schema>,
    },
    Protobuf(prost_reflect::FileDescriptor),
    Json,
}

impl Schema {
    fn format(&self) -> SchemaFormat {
        match self {
            Schema::Avro { .. } => SchemaFormat::Avro,
            Schema::Protobuf(_) => SchemaFormat::Protobuf,
            Schema::Json => SchemaFormat::JsonSchema,
        }
    }

    /// The payload (after the schema id) as JSON, and the bytes `SOURCE` delivers.
    pub fn decode<'a>(&self, payload: &'a [u8]) -> Result<(Value, &'a [u8]), String> {
        match self {
            Schema::Avro { schema, named } => {
                let mut reader = payload;
                let value = apache_avro::from_avro_datum_schemata(
                    schema,
                    named.iter().collect(),
                    &mut reader,
                    None,
                )
                .map_err(|e| format!("the Avro datum does not read with its schema: {e}"))?;
                if !reader.is_empty() {
                    return Err(format!(
                        "the Avro datum leaves {} bytes unread: it was written with another schema",
                        reader.len()
                    ));
                }
                let json = Value::try_from(value)
                    .map_err(|e| format!("the Avro value has no JSON form: {e}"))?;
                Ok((json, payload))
            }
            Schema::Protobuf(file) => {
                let (indexes, message) = message_indexes(payload)?;
                let descriptor = message_at(file, &indexes)?;
                let decoded = prost_reflect::DynamicMessage::decode(descriptor.clone(), message)
                    .map_err(|e| {
                        format!(
                            "the bytes are not a {} message: {e}",
                            descriptor.full_name()
                        )
                    })?;
                let json = serde_json::to_value(&decoded)
                    .map_err(|e| format!("the Protobuf message has no JSON form: {e}"))?;
                Ok((json, message))
            }
            Schema::Json => {
                let json = serde_json::from_slice(payload)
                    .map_err(|e| format!("the payload is not JSON: {e}"))?;
                Ok((json, payload))
            }
        }
    }
}

/// The schema id and what follows it, or why the bytes are not in the wire format.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [first, ..] if *first != 0 => Err(format!(
            "the first byte is 0x{first:02x}, not the wire format's magic byte 0: the producer did not use a schema-registry serializer"
        )),
        _ => Err(format!(
            "{} bytes are too few for the wire format (magic byte 0 and a 4-byte schema id)",
            bytes.len()
        )),
    }
}

/// Protobuf's message-index path and the message after it.
fn message_indexes(payload: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let mut rest = payload;
    let count = zigzag_varint(&mut rest)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if count < 0 || count as usize > rest.len() {
        return Err(format!("the message-index count {count} is not possible"));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let index = zigzag_varint(&mut rest)?;
        indexes.push(usize::try_from(index).map_err(|_| format!("message index {index}"))?);
    }
    Ok((indexes, rest))
}

fn zigzag_varint(bytes: &mut &[u8]) -> Result<i64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = bytes.split_first() else {
            return Err("the message-index path ends early".into());
        };
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err("a message index is longer than a varint".into())
}

/// The message an index path names: the top-level message, then nested ones.
fn message_at(
    file: &prost_reflect::FileDescriptor,
    indexes: &[usize],
) -> Result<prost_reflect::MessageDescriptor, String> {
    let missing = || format!("the schema has no message at index path {indexes:?}");
    let (first, nested) = indexes.split_first().ok_or_else(missing)?;
    let mut message = file.messages().nth(*first).ok_or_else(missing)?;
    for index in nested {
        let child = message.child_messages().nth(*index);
        message = child.ok_or_else(missing)?;
    }
    Ok(message)
}

/// A Confluent-compatible registry's schemas, fetched by id and kept.
pub struct Registry {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: RegistryAuth,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
    /// One fetch at a time: lanes meeting the same new id wait for the first to fetch it.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Why the registry client could not be built (a certificate file, a URL).
#[derive(Debug, thiserror::Error)]
pub enum RegistrySetupError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} is not usable PEM: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: reqwest::Error,
    },
    #[error("the schema registry URL {0:?} is not a URL")]
    Url(String),
    #[error("cannot build the schema registry's HTTP client")]
    Client(#[source] reqwest::Error),
}

impl Registry {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, RegistrySetupError> {
        // Set once for the process; later calls keep the first value.
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| RegistrySetupError::File {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3));
        if let Some(ca) = &config.ca {
            let certificates = reqwest::Certificate::from_pem_bundle(&read("the CA file", ca)?)
                .map_err(|source| RegistrySetupError::Pem {
                    what: "the CA file",
                    path: ca.display().to_string(),
                    source,
                })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let RegistryAuth::Mtls { certificate, key } = &config.auth {
            let mut pem = read("the client certificate", certificate)?;
            pem.push(b'\n');
            pem.extend(read("the client key", key)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|source| RegistrySetupError::Pem {
                    what: "the client certificate and key",
                    path: format!("{} + {}", certificate.display(), key.display()),
                    source,
                })?;
            builder = builder.identity(identity);
        }
        let mut url = reqwest::Url::parse(&config.url)
            .map_err(|_| RegistrySetupError::Url(config.url.clone()))?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(Self {
            client: builder.build().map_err(RegistrySetupError::Client)?,
            url,
            auth: config.auth.clone(),
            schemas: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn cached(&self, id: u32) -> Option<Arc<Schema>> {
        self.schemas.lock().expect("schema cache").get(&id).cloned()
    }

    /// The schema with this id, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(schema) = self.cached(id) {
            return Ok(schema);
        }
        let _one = self.fetching.lock().await;
        if let Some(schema) = self.cached(id) {
            return Ok(schema);
        }
        let root: Registered = self.get(&["schemas", "ids", &id.to_string()]).await?;
        let references = self.references(&root).await?;
        let schema = Arc::new(parse(id, &root, &references)?);
        self.schemas
            .lock()
            .expect("schema cache")
            .insert(id, schema.clone());
        Ok(schema)
    }

    /// Every schema `root` references, at any depth, as (import name, schema).
    async fn references(
        &self,
        root: &Registered,
    ) -> Result<Vec<(String, Registered)>, RegistryError> {
        let mut pending: Vec<(Reference, usize)> =
            root.references.iter().map(|r| (r.clone(), 1)).collect();
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        while let Some((reference, depth)) = pending.pop() {
            if !seen.insert((reference.subject.clone(), reference.version)) {
                continue;
            }
            if depth > MAX_REFERENCE_DEPTH || found.len() >= MAX_REFERENCES {
                return Err(RegistryError::Refused(format!(
                    "the schema's references go deeper than {MAX_REFERENCE_DEPTH} or number more than {MAX_REFERENCES}"
                )));
            }
            let version = if reference.version < 0 {
                "latest".to_owned()
            } else {
                reference.version.to_string()
            };
            let schema: Registered = self
                .get(&["subjects", &reference.subject, "versions", &version])
                .await?;
            pending.extend(schema.references.iter().map(|r| (r.clone(), depth + 1)));
            found.push((reference.name, schema));
        }
        Ok(found)
    }

    /// GET a registry path (segments are escaped), its JSON answer read within the bounds.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, RegistryError> {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        let shown = url.as_str().to_owned();
        let unavailable = |reason: String| RegistryError::Unavailable {
            url: shown.clone(),
            reason,
        };
        let mut request = self.client.get(url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        request = match &self.auth {
            RegistryAuth::Basic { username, password } => {
                request.basic_auth(username, Some(password))
            }
            RegistryAuth::Bearer { token } => request.bearer_auth(token),
            RegistryAuth::None | RegistryAuth::Mtls { .. } => request,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| unavailable(crate::error_chain(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(crate::error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_SCHEMA_BYTES {
                return Err(RegistryError::Refused(format!(
                    "{shown} answered more than {MAX_SCHEMA_BYTES} bytes; a schema that large is not read"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        let excerpt: String = text.chars().take(300).collect();
        match status.as_u16() {
            200..=299 => serde_json::from_slice(&body).map_err(|e| {
                RegistryError::Refused(format!(
                    "{shown} answered {status} with a body that is not a registered schema ({e}): {excerpt}"
                ))
            }),
            404 => Err(RegistryError::Refused(format!(
                "{shown} answered 404 ({excerpt}): the registry does not have it; the producer used another registry, or the schema was deleted"
            ))),
            401 | 403 => Err(unavailable(format!(
                "{status}: the registry refused sluice's credentials ({excerpt}); check schema_registry.auth"
            ))),
            400..=499 if status.as_u16() != 408 && status.as_u16() != 429 => {
                Err(RegistryError::Refused(format!("{shown} answered {status}: {excerpt}")))
            }
            _ => Err(unavailable(format!("{status}: {excerpt}"))),
        }
    }
}

/// Parses a fetched schema with its references.
fn parse(
    id: u32,
    root: &Registered,
    references: &[(String, Registered)],
) -> Result<Schema, RegistryError> {
    let kind = root.schema_type.as_deref().unwrap_or("AVRO");
    let refused = |e: String| RegistryError::Refused(format!("schema {id} ({kind}) {e}"));
    match kind {
        "AVRO" => {
            let (schema, named) = apache_avro::Schema::parse_str_with_list(
                &root.schema,
                references.iter().map(|(_, r)| r.schema.as_str()),
            )
            .map_err(|e| refused(format!("does not parse: {e}")))?;
            Ok(Schema::Avro { schema, named })
        }
        "PROTOBUF" => {
            let main = format!("sluice-registry-schema-{id}.proto");
            let mut files: HashMap<String, String> = references
                .iter()
                .map(|(name, r)| (name.clone(), r.schema.clone()))
                .collect();
            files.insert(main.clone(), root.schema.clone());
            let mut resolver = protox::file::ChainFileResolver::new();
            resolver.add(Sources(files));
            resolver.add(protox::file::GoogleFileResolver::new());
            let mut compiler = protox::Compiler::with_file_resolver(resolver);
            compiler
                .include_imports(true)
                .open_file(&main)
                .map_err(|e| refused(format!("does not compile: {e}")))?;
            compiler
                .descriptor_pool()
                .get_file_by_name(&main)
                .map(Schema::Protobuf)
                .ok_or_else(|| refused("compiled to nothing".into()))
        }
        "JSON" => Ok(Schema::Json),
        other => Err(RegistryError::Refused(format!(
            "schema {id} has type {other:?}, which sluice does not decode"
        ))),
    }
}

/// `.proto` sources by import name.
struct Sources(HashMap<String, String>);

impl protox::file::FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        match self.0.get(name) {
            Some(source) => protox::file::File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// A record after decoding.
#[derive(Debug)]
pub enum Decoded {
    /// Decoded (or nothing to decode), with the view the mapping's filters see.
    Ready(Record, Value),
    /// It can never be decoded: dead-letter it with this error.
    Unusable(Record, ErrorInfo),
    /// The registry cannot answer now: try again later.
    Retry(Record, String),
}

/// Decodes a mapping's records with its registry.
#[derive(Debug)]
pub struct Decoder {
    registry: Registry,
    key: Option<SchemaFormat>,
    value: Option<SchemaFormat>,
    format: EventRecordFormat,
}

impl Decoder {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, RegistrySetupError> {
        Ok(Self {
            registry: Registry::new(config)?,
            key: config.key,
            value: config.value,
            format: config.event_record_format,
        })
    }

    /// The record with its configured key and value decoded.
    pub async fn decode(&self, record: Record) -> Decoded {
        let mut event: Map<String, Value> = match serde_json::from_str(record.event.get()) {
            Ok(event) => event,
            Err(error) => {
                let info = ErrorInfo::new(ERROR_TYPE, format!("the record is not JSON: {error}"));
                return Decoded::Unusable(record, info);
            }
        };
        let mut view = sluice_sources::kafka::record_filter_view(&Value::Object(event.clone()));
        for (field, format) in [("key", self.key), ("value", self.value)] {
            let Some(format) = format else { continue };
            let Some(encoded) = event.get(field).and_then(Value::as_str) else {
                continue;
            };
            let where_ = || {
                format!(
                    "topic {} partition {} offset {}: the {field}",
                    event["topic"].as_str().unwrap_or_default(),
                    event["partition"],
                    event["offset"]
                )
            };
            let bytes = match BASE64.decode(encoded) {
                Ok(bytes) => bytes,
                Err(error) => {
                    let info = ErrorInfo::new(ERROR_TYPE, format!("{}: {error}", where_()));
                    return Decoded::Unusable(record, info);
                }
            };
            match self.decode_field(&bytes, format).await {
                Ok((id, json, source)) => {
                    let delivered = match self.format {
                        EventRecordFormat::Json => BASE64.encode(json.to_string()),
                        EventRecordFormat::Source => BASE64.encode(source),
                    };
                    event.insert(field.into(), Value::String(delivered));
                    event.insert(
                        format!("{field}SchemaMetadata"),
                        json!({"dataFormat": format.registry_name(), "schemaId": id.to_string()}),
                    );
                    if let Some(view) = view.as_object_mut() {
                        view.insert(field.into(), json);
                    }
                }
                Err(FieldError::Unavailable(reason)) => {
                    return Decoded::Retry(record, format!("{}: {reason}", where_()));
                }
                Err(FieldError::Unusable(reason)) => {
                    let info = ErrorInfo::new(ERROR_TYPE, format!("{} {reason}", where_()));
                    return Decoded::Unusable(record, info);
                }
            }
        }
        let raw = serde_json::value::to_raw_value(&Value::Object(event))
            .expect("a JSON object serializes");
        Decoded::Ready(record.with_event(raw), view)
    }

    /// The schema id, the JSON and the source bytes of one framed key or value.
    async fn decode_field(
        &self,
        bytes: &[u8],
        format: SchemaFormat,
    ) -> Result<(u32, Value, Vec<u8>), FieldError> {
        let (id, payload) = split_frame(bytes).map_err(|e| {
            FieldError::Unusable(format!("is not in the schema-registry wire format: {e}"))
        })?;
        let schema = match self.registry.schema(id).await {
            Ok(schema) => schema,
            Err(RegistryError::Unavailable { url, reason }) => {
                return Err(FieldError::Unavailable(format!(
                    "its schema {id} could not be fetched from {url}: {reason}"
                )));
            }
            Err(RegistryError::Refused(reason)) => {
                return Err(FieldError::Unusable(format!(
                    "names schema {id}, which cannot be used: {reason}"
                )));
            }
        };
        if schema.format() != format {
            return Err(FieldError::Unusable(format!(
                "names schema {id}, a {} schema; the mapping decodes {} (schema_registry's format)",
                schema.format().registry_name(),
                format.registry_name()
            )));
        }
        let (json, source) = schema
            .decode(payload)
            .map_err(|e| FieldError::Unusable(format!("does not decode with schema {id}: {e}")))?;
        Ok((id, json, source.to_vec()))
    }
}

enum FieldError {
    Unavailable(String),
    Unusable(String),
}

#[cfg(test)]
mod tests {
    //! The wire format and the three decoders, against schemas parsed as the registry would
    //! answer them and payloads written by the same crates' encoders.
    use super::*;

    fn registered(kind: Option<&str>, schema: &str) -> Registered {
        Registered {
            schema: schema.into(),
            schema_type: kind.map(Into::into),
            references: Vec::new(),
        }
    }

    const PROTO: &str = r#"
        syntax = "proto3";
        package shop;
        import "money.proto";
        message Header { string id = 1; }
        message Order {
          string id = 1;
          shop.Money total = 2;
          message Line { string sku = 1; int32 quantity = 2; }
          repeated Line lines = 3;
        }
    "#;
    const MONEY: &str = r#"
        syntax = "proto3";
        package shop;
        message Money { string currency = 1; int64 cents = 2; }
    "#;

    fn proto_schema() -> Schema {
        let references = vec![(
            "money.proto".to_owned(),
            registered(Some("PROTOBUF"), MONEY),
        )];
        parse(7, &registered(Some("PROTOBUF"), PROTO), &references).unwrap()
    }

    #[test]
    fn the_frame_is_magic_byte_zero_and_a_big_endian_id() {
        assert_eq!(split_frame(&[0, 0, 0, 1, 2, 9]).unwrap(), (258, &[9u8][..]));
        assert!(split_frame(b"{\"a\":1}").unwrap_err().contains("0x7b"));
        assert!(split_frame(&[0, 0, 1]).unwrap_err().contains("too few"));
    }

    #[test]
    fn message_indexes_are_zigzag_varints_and_a_lone_zero_is_the_first_message() {
        assert_eq!(
            message_indexes(&[0, 0xAA]).unwrap(),
            (vec![0], &[0xAAu8][..])
        );
        // Count 2 (zigzag 4), then 1 (2) and 0 (0).
        assert_eq!(
            message_indexes(&[4, 2, 0, 7]).unwrap(),
            (vec![1, 0], &[7u8][..])
        );
        assert!(message_indexes(&[4, 2]).is_err(), "a path cut short");
        assert!(message_indexes(&[3]).is_err(), "a negative count");
    }

    #[test]
    fn an_avro_datum_decodes_to_plain_json_with_named_references() {
        let money = r#"{"type":"record","name":"Money","namespace":"shop","fields":[{"name":"currency","type":"string"},{"name":"cents","type":"long"}]}"#;
        let order = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"total","type":"shop.Money"},{"name":"note","type":["null","string"]}]}"#;
        let references = vec![("shop.Money".to_owned(), registered(None, money))];
        let schema = parse(1, &registered(None, order), &references).unwrap();
        let Schema::Avro {
            schema: avro,
            named,
        } = &schema
        else {
            panic!("{schema:?}")
        };
        use apache_avro::types::Value as Avro;
        let value = Avro::Record(vec![
            ("id".into(), Avro::String("o-1".into())),
            (
                "total".into(),
                Avro::Record(vec![
                    ("currency".into(), Avro::String("EUR".into())),
                    ("cents".into(), Avro::Long(1250)),
                ]),
            ),
            (
                "note".into(),
                Avro::Union(1, Box::new(Avro::String("gift".into()))),
            ),
        ]);
        let bytes =
            apache_avro::to_avro_datum_schemata(avro, named.iter().collect(), value).unwrap();
        let (json, source) = schema.decode(&bytes).unwrap();
        assert_eq!(
            json,
            json!({"id": "o-1", "total": {"currency": "EUR", "cents": 1250}, "note": "gift"})
        );
        assert_eq!(source, &bytes[..]);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(schema.decode(&longer).unwrap_err().contains("unread"));
        assert!(schema.decode(&bytes[..3]).is_err(), "a datum cut short");
    }

    #[test]
    fn a_protobuf_message_is_chosen_by_its_index_path_and_written_as_proto3_json() {
        let schema = proto_schema();
        let Schema::Protobuf(file) = &schema else {
            panic!("{schema:?}")
        };
        let order = file.messages().nth(1).unwrap();
        let line = order.child_messages().next().unwrap();
        let mut message = prost_reflect::DynamicMessage::new(line.clone());
        message.set_field_by_name("sku", prost_reflect::Value::String("A-1".into()));
        message.set_field_by_name("quantity", prost_reflect::Value::I32(3));
        let encoded = prost_reflect::prost::Message::encode_to_vec(&message);
        // Path [1, 0]: Order's first nested message.
        let mut payload = vec![4, 2, 0];
        payload.extend(&encoded);
        let (json, source) = schema.decode(&payload).unwrap();
        assert_eq!(json, json!({"sku": "A-1", "quantity": 3}));
        assert_eq!(source, &encoded[..], "SOURCE leaves out the index path");
        let mut order_message = prost_reflect::DynamicMessage::new(order.clone());
        order_message.set_field_by_name("id", prost_reflect::Value::String("o-1".into()));
        let mut total = prost_reflect::DynamicMessage::new(
            file.parent_pool()
                .get_message_by_name("shop.Money")
                .unwrap(),
        );
        total.set_field_by_name("cents", prost_reflect::Value::I64(1250));
        order_message.set_field_by_name("total", prost_reflect::Value::Message(total));
        let mut payload = vec![2, 2];
        payload.extend(prost_reflect::prost::Message::encode_to_vec(&order_message));
        let (json, _) = schema.decode(&payload).unwrap();
        assert_eq!(json, json!({"id": "o-1", "total": {"cents": "1250"}}));
        assert!(schema.decode(&[2, 8]).unwrap_err().contains("index path"));
        assert!(schema.decode(&[0, 0xff, 0xff]).is_err(), "not a Header");
    }

    #[test]
    fn schemas_that_cannot_be_used_are_refused_for_good() {
        let bad_avro = parse(1, &registered(None, "{\"type\":\"record\"}"), &[]).unwrap_err();
        assert!(matches!(bad_avro, RegistryError::Refused(_)), "{bad_avro}");
        let missing_import = parse(2, &registered(Some("PROTOBUF"), PROTO), &[]).unwrap_err();
        assert!(
            missing_import.to_string().contains("does not compile"),
            "{missing_import}"
        );
        let xml = parse(3, &registered(Some("XML"), "<a/>"), &[]).unwrap_err();
        assert!(xml.to_string().contains("\"XML\""), "{xml}");
        let json_schema =
            parse(4, &registered(Some("JSON"), "{\"type\":\"object\"}"), &[]).unwrap();
        assert_eq!(
            json_schema.decode(b"{\"a\":[1]}").unwrap().0,
            json!({"a": [1]})
        );
        assert!(json_schema.decode(b"{\"a\"").is_err());
    }

    #[test]
    fn a_hostile_avro_length_is_an_error_not_an_allocation() {
        apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
        let schema = parse(1, &registered(None, "\"string\""), &[]).unwrap();
        // A string claiming 2^40 bytes (zigzag varint), followed by nothing.
        let mut claim = Vec::new();
        let mut n: u64 = (1u64 << 40) << 1;
        while n >= 0x80 {
            claim.push((n as u8) | 0x80);
            n >>= 7;
        }
        claim.push(n as u8);
        assert!(schema.decode(&claim).is_err());
    }
}
