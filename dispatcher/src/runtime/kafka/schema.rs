//! Kafka keys and values in the Confluent schema-registry wire format, decoded before they are
//! filtered and batched (`source.kafka.schema_registry`).
//!
//! Guarantees:
//! - a key or value configured for decoding is read as magic byte 0, a 4-byte big-endian schema
//!   id, for Protobuf the message-index path (zigzag varints; a lone 0 is the first message),
//!   then the payload; a record without a key or value (a tombstone) passes unchanged;
//! - a schema is fetched once per id and kept (a registry never changes what an id means), at
//!   most [`MAX_SCHEMAS_KEPT`] schemas and [`MAX_SCHEMA_CACHE_BYTES`] of their registry text per
//!   mapping: beyond either, the least recently used is dropped and fetched again when met;
//!   one fetch per id is in flight, the lanes needing it wait for it;
//! - `JSON`: the decoded key or value is delivered as base64 of its JSON text; `SOURCE`: as its
//!   payload without the framing. Either way `keySchemaMetadata` / `valueSchemaMetadata`
//!   ({dataFormat, schemaId}) are added, and the mapping's filters see the decoded JSON; the
//!   record as read stays beside it ([`Record::source_element`]) for dead letters;
//! - a record that cannot be decoded — no framing, an id the registry says it does not have
//!   (its own 40403, for [`MISSING_GRACE`] in a row), a schema of another format than
//!   configured or that does not parse, bytes the schema does not read — is
//!   [`Decoded::Unusable`] with a `SchemaRegistryError` naming the topic, partition, offset and
//!   what to do; it never blocks its partition beyond that grace. Refused ids are remembered for
//!   [`REFUSAL_TTL`] (at most [`MAX_REFUSALS_KEPT`]);
//! - any other failure to get a schema (unreachable, a timeout, a 404 that is not the
//!   registry's, 401/403, 429, 5xx, a 2xx that is not a schema) is [`Decoded::Retry`]: records
//!   are never dead-lettered because the registry is down, misaddressed or refuses the
//!   credentials; the lane retries them in order;
//! - every registry answer is read within [`REQUEST_TIMEOUT`] and at most [`MAX_SCHEMA_BYTES`],
//!   a schema with its references within [`FETCH_DEADLINE`] and [`MAX_FETCH_BYTES`]; references
//!   are followed at most [`MAX_REFERENCE_DEPTH`] deep and [`MAX_REFERENCES`] in all;
//! - Avro schemas that could exhaust the decoder are refused: recursive types, and arrays or
//!   maps of items that take no bytes; a length prefix may not ask for more than
//!   [`MAX_AVRO_ALLOCATION`] at once; a datum that ends early is an error (apache-avro 0.21
//!   would read a string cut short as null).
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
/// The most one schema and its references may add up to.
pub const MAX_FETCH_BYTES: usize = 16 << 20;
/// How long fetching one schema with its references may take in all.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(60);
/// How long a "no such schema" answer is taken for a lagging registry and retried before the
/// record is dead-lettered.
pub const MISSING_GRACE: Duration = Duration::from_secs(20);
/// How long an id the registry does not have is answered from memory.
pub const REFUSAL_TTL: Duration = Duration::from_secs(300);
/// How many refused ids are remembered (a producer writing garbage ids costs one request each
/// beyond that).
pub const MAX_REFUSALS_KEPT: usize = 4096;
/// How many parsed schemas a mapping keeps (topics written with many schema versions).
pub const MAX_SCHEMAS_KEPT: usize = 1024;
/// How much registry text (schemas with their references) the kept schemas may add up to; the
/// parsed forms are about as large.
pub const MAX_SCHEMA_CACHE_BYTES: usize = 64 << 20;
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
    /// The registry says it has no such schema. Within [`MISSING_GRACE`] of the first such
    /// answer for an id this is [`RegistryError::Unavailable`] (a follower registry may not
    /// have caught up with a schema registered a moment ago), then [`RegistryError::Refused`].
    #[error("{0}")]
    Missing(String),
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
                let mut reader = Guarded {
                    rest: payload,
                    short: false,
                };
                let value = apache_avro::from_avro_datum_schemata(
                    schema,
                    named.iter().collect(),
                    &mut reader,
                    None,
                )
                .map_err(|e| format!("the Avro datum does not read with its schema: {e}"))?;
                // apache-avro 0.21 reads a string cut short as null instead of failing.
                if reader.short {
                    return Err("the Avro datum ends before its schema does".into());
                }
                if !reader.rest.is_empty() {
                    return Err(format!(
                        "the Avro datum leaves {} bytes unread: it was written with another schema",
                        reader.rest.len()
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

/// A datum being read, which remembers whether a read ever wanted more than was left.
struct Guarded<'a> {
    rest: &'a [u8],
    short: bool,
}

impl std::io::Read for Guarded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.short = true;
            return Ok(0);
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// Refuses Avro schemas whose data could exhaust the decoder: a recursive type (nesting as deep
/// as the bytes allow overflows the stack), or an array or map of items that take no bytes (a
/// few bytes of block counts make millions of items).
fn check_avro(schema: &apache_avro::Schema, named: &[apache_avro::Schema]) -> Result<(), String> {
    use apache_avro::Schema as S;
    fn collect<'a>(schema: &'a S, names: &mut HashMap<String, &'a S>) {
        match schema {
            S::Record(record) if names.insert(record.name.fullname(None), schema).is_none() => {
                for field in &record.fields {
                    collect(&field.schema, names);
                }
            }
            S::Enum(e) => {
                names.insert(e.name.fullname(None), schema);
            }
            S::Fixed(f) => {
                names.insert(f.name.fullname(None), schema);
            }
            S::Array(array) => collect(&array.items, names),
            S::Map(map) => collect(&map.types, names),
            S::Union(union) => union.variants().iter().for_each(|v| collect(v, names)),
            _ => {}
        }
    }
    fn zero_width(schema: &S, names: &HashMap<String, &S>, depth: usize) -> bool {
        match schema {
            S::Null => true,
            S::Fixed(f) => f.size == 0,
            S::Record(record) => record
                .fields
                .iter()
                .all(|field| zero_width(&field.schema, names, depth + 1)),
            S::Ref { name } if depth < 64 => names
                .get(&name.fullname(None))
                .is_some_and(|s| zero_width(s, names, depth + 1)),
            _ => false,
        }
    }
    fn walk<'a>(
        schema: &'a S,
        names: &HashMap<String, &'a S>,
        open: &mut Vec<String>,
    ) -> Result<(), String> {
        match schema {
            S::Record(record) => {
                let name = record.name.fullname(None);
                if open.contains(&name) {
                    return Err(format!(
                        "is recursive ({name} contains itself), which sluice does not decode: nesting as deep as the bytes allow would exhaust the decoder"
                    ));
                }
                open.push(name);
                for field in &record.fields {
                    walk(&field.schema, names, open)?;
                }
                open.pop();
            }
            S::Ref { name } => {
                let name = name.fullname(None);
                if open.contains(&name) {
                    return Err(format!(
                        "is recursive ({name} contains itself), which sluice does not decode: nesting as deep as the bytes allow would exhaust the decoder"
                    ));
                }
                if let Some(target) = names.get(&name) {
                    walk(target, names, open)?;
                }
            }
            S::Array(array) => {
                if zero_width(&array.items, names, 0) {
                    return Err("has an array of items that take no bytes, which sluice does not decode (a few bytes could make millions of items)".into());
                }
                walk(&array.items, names, open)?;
            }
            S::Map(map) => {
                if zero_width(&map.types, names, 0) {
                    return Err("has a map of values that take no bytes, which sluice does not decode (a few bytes could make millions of entries)".into());
                }
                walk(&map.types, names, open)?;
            }
            S::Union(union) => {
                for variant in union.variants() {
                    walk(variant, names, open)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut names = HashMap::new();
    for schema in named.iter().chain(std::iter::once(schema)) {
        collect(schema, &mut names);
    }
    walk(schema, &names, &mut Vec::new())
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

/// Parsed schemas by id, within [`MAX_SCHEMAS_KEPT`] and [`MAX_SCHEMA_CACHE_BYTES`]; the least
/// recently used goes first.
#[derive(Default)]
struct SchemaCache {
    /// id → (schema, registry bytes, last use).
    kept: HashMap<u32, (Arc<Schema>, usize, u64)>,
    bytes: usize,
    clock: u64,
}

impl SchemaCache {
    fn get(&mut self, id: u32) -> Option<Arc<Schema>> {
        self.clock += 1;
        let (schema, _, used) = self.kept.get_mut(&id)?;
        *used = self.clock;
        Some(schema.clone())
    }

    fn insert(&mut self, id: u32, schema: Arc<Schema>, bytes: usize) {
        self.clock += 1;
        if let Some((_, old, _)) = self.kept.insert(id, (schema, bytes, self.clock)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        // The one just kept stays, even alone over the byte bound (a fetch is bounded below it).
        while self.kept.len() > 1
            && (self.kept.len() > MAX_SCHEMAS_KEPT || self.bytes > MAX_SCHEMA_CACHE_BYTES)
        {
            let oldest = self
                .kept
                .iter()
                .filter(|(kept, _)| **kept != id)
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(kept, _)| *kept);
            let Some(oldest) = oldest else { break };
            if let Some((_, dropped, _)) = self.kept.remove(&oldest) {
                self.bytes -= dropped;
            }
        }
    }
}

/// A Confluent-compatible registry's schemas, fetched by id and kept.
pub struct Registry {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: RegistryAuth,
    schemas: Mutex<SchemaCache>,
    /// Ids the registry refused, and when: asked again only after [`REFUSAL_TTL`].
    refused: Mutex<HashMap<u32, (std::time::Instant, String)>>,
    /// When the registry first said it has no such id (see [`MISSING_GRACE`]).
    missing_since: Mutex<HashMap<u32, std::time::Instant>>,
    /// One fetch per id at a time: lanes meeting the same new id wait for the first.
    fetching: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
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
            schemas: Mutex::default(),
            refused: Mutex::default(),
            missing_since: Mutex::default(),
            fetching: Mutex::default(),
        })
    }

    fn cached(&self, id: u32) -> Option<Result<Arc<Schema>, RegistryError>> {
        if let Some(schema) = self.schemas.lock().expect("schema cache").get(id) {
            return Some(Ok(schema));
        }
        let mut refused = self.refused.lock().expect("refusal cache");
        match refused.get(&id) {
            Some((at, reason)) if at.elapsed() < REFUSAL_TTL => {
                Some(Err(RegistryError::Refused(reason.clone())))
            }
            Some(_) => {
                refused.remove(&id);
                None
            }
            None => None,
        }
    }

    /// The schema with this id, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(cached) = self.cached(id) {
            return cached;
        }
        let lock = self
            .fetching
            .lock()
            .expect("fetch locks")
            .entry(id)
            .or_default()
            .clone();
        let fetched = {
            let _one = lock.lock().await;
            match self.cached(id) {
                Some(cached) => cached,
                None => {
                    let fetched = match tokio::time::timeout(FETCH_DEADLINE, self.fetch(id)).await {
                        Ok(fetched) => fetched,
                        Err(_) => Err(RegistryError::Unavailable {
                            url: self.shown(&self.url),
                            reason: format!(
                                "schema {id} and its references took longer than {FETCH_DEADLINE:?}"
                            ),
                        }),
                    };
                    match &fetched {
                        Ok((schema, bytes)) => {
                            self.schemas.lock().expect("schema cache").insert(
                                id,
                                schema.clone(),
                                *bytes,
                            );
                        }
                        Err(RegistryError::Refused(reason)) => {
                            self.remember_refusal(id, reason.clone());
                        }
                        Err(RegistryError::Unavailable { .. }) => {}
                        Err(RegistryError::Missing(_)) => {}
                    }
                    self.missing_for_good(id, fetched.map(|(schema, _)| schema))
                }
            }
        };
        self.fetching.lock().expect("fetch locks").remove(&id);
        fetched
    }

    fn remember_refusal(&self, id: u32, reason: String) {
        let mut refused = self.refused.lock().expect("refusal cache");
        if refused.len() >= MAX_REFUSALS_KEPT {
            refused.retain(|_, (at, _)| at.elapsed() < REFUSAL_TTL);
        }
        if refused.len() < MAX_REFUSALS_KEPT {
            refused.insert(id, (std::time::Instant::now(), reason));
        }
    }

    /// A "no such schema" answer for `id` is retried for [`MISSING_GRACE`] after the first,
    /// then refused (and remembered as refused).
    fn missing_for_good(
        &self,
        id: u32,
        fetched: Result<Arc<Schema>, RegistryError>,
    ) -> Result<Arc<Schema>, RegistryError> {
        let Err(RegistryError::Missing(reason)) = fetched else {
            self.missing_since.lock().expect("missing ids").remove(&id);
            return fetched;
        };
        let first = {
            let mut since = self.missing_since.lock().expect("missing ids");
            if since.len() >= MAX_REFUSALS_KEPT {
                since.retain(|_, at| at.elapsed() < MISSING_GRACE);
            }
            *since.entry(id).or_insert_with(std::time::Instant::now)
        };
        if first.elapsed() < MISSING_GRACE {
            return Err(RegistryError::Unavailable {
                url: self.shown(&self.url),
                reason: format!(
                    "{reason} (asked again for up to {MISSING_GRACE:?}, in case the registry has not caught up yet)"
                ),
            });
        }
        self.missing_since.lock().expect("missing ids").remove(&id);
        self.remember_refusal(id, reason.clone());
        Err(RegistryError::Refused(reason))
    }

    /// Fetches schema `id` with its references and parses it (off the async threads: compiling
    /// a `.proto` can take a while); with the bytes its registry answers took.
    async fn fetch(&self, id: u32) -> Result<(Arc<Schema>, usize), RegistryError> {
        let mut budget = MAX_FETCH_BYTES;
        let root: Registered = self
            .get(
                &["schemas", "ids", &id.to_string()],
                IDS_MISSING,
                &mut budget,
            )
            .await?;
        let references = self.references(&root, &mut budget).await?;
        let bytes = MAX_FETCH_BYTES - budget;
        tokio::task::spawn_blocking(move || parse(id, &root, &references).map(Arc::new))
            .await
            .map_err(|e| RegistryError::Refused(format!("parsing schema {id} failed: {e}")))?
            .map(|schema| (schema, bytes))
    }

    /// Every schema `root` references, at any depth, as (import name, schema).
    async fn references(
        &self,
        root: &Registered,
        budget: &mut usize,
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
                .get(
                    &["subjects", &reference.subject, "versions", &version],
                    SUBJECT_MISSING,
                    budget,
                )
                .await?;
            pending.extend(schema.references.iter().map(|r| (r.clone(), depth + 1)));
            found.push((reference.name, schema));
        }
        Ok(found)
    }

    /// Asks the registry which schema types it knows (`GET /schemas/types`, which Confluent,
    /// Redpanda and Apicurio's ccompat API serve): `validate --connect`'s check that the URL
    /// and the credentials work.
    pub async fn check(&self) -> Result<(), String> {
        let mut budget = MAX_SCHEMA_BYTES;
        match self
            .get::<Vec<String>>(&["schemas", "types"], &[], &mut budget)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// `url` without its credentials, for messages.
    fn shown(&self, url: &reqwest::Url) -> String {
        let mut shown = url.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        shown.to_string()
    }

    /// GET a registry path (segments are escaped), its JSON answer read within the bounds;
    /// `missing` are the registry error codes that mean "no such schema" on this path.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
        missing: &[u32],
        budget: &mut usize,
    ) -> Result<T, RegistryError> {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        let shown = self.shown(&url);
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
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(crate::error_chain(&e)))?
        {
            if body.len() + chunk.len() > (*budget).min(MAX_SCHEMA_BYTES) {
                return Err(RegistryError::Refused(format!(
                    "{shown} answered more than {} bytes (at most {MAX_SCHEMA_BYTES} per answer and {MAX_FETCH_BYTES} per schema with its references are read)",
                    (*budget).min(MAX_SCHEMA_BYTES)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        *budget -= body.len();
        match classify(status, &body, missing) {
            Answer::Schema => serde_json::from_slice(&body).map_err(|e| {
                unavailable(format!(
                    "{status} with a body that is not a registered schema ({e}): {}; is schema_registry.url the registry's base URL?",
                    excerpt(&body)
                ))
            }),
            Answer::Missing => Err(RegistryError::Missing(format!(
                "{shown} answered {status} ({}): the registry does not have it; the producer used another registry, or the schema was deleted",
                excerpt(&body)
            ))),
            Answer::Failed(reason) => Err(unavailable(reason)),
        }
    }
}

/// Registry error codes for an unknown schema id.
const IDS_MISSING: &[u32] = &[40403];
/// Registry error codes for an unknown subject or version (a reference).
const SUBJECT_MISSING: &[u32] = &[40401, 40402];

/// What a registry answer means.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A 2xx: the body should be the schema.
    Schema,
    /// The registry says it has no such schema (its own error code): no retry will change it.
    Missing,
    /// Anything else — a 404 without the registry's code (a wrong URL, a proxy), 401/403, 429,
    /// 5xx — may change: asked again later, nothing is dead-lettered for it.
    Failed(String),
}

fn classify(status: u16, body: &[u8], missing: &[u32]) -> Answer {
    if (200..300).contains(&status) {
        return Answer::Schema;
    }
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|error| error["error_code"].as_u64());
    if status == 404 && code.is_some_and(|code| missing.iter().any(|&m| u64::from(m) == code)) {
        return Answer::Missing;
    }
    let hint = match status {
        401 | 403 => "; the registry refused sluice's credentials: check schema_registry.auth",
        404 => "; not the registry's own answer: is schema_registry.url the registry's base URL?",
        _ => "",
    };
    Answer::Failed(format!("{status}: {}{hint}", excerpt(body)))
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(300).collect()
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
            check_avro(&schema, &named).map_err(refused)?;
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
    /// Decoded (or nothing to decode), with the view the mapping's filters see (null when
    /// no view was asked for).
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

    /// The record with its configured key and value decoded; the filter view is built only
    /// when `filtered` (the mapping has filters): it copies the whole event.
    pub async fn decode(&self, record: Record, filtered: bool) -> Decoded {
        let mut event: Map<String, Value> = match serde_json::from_str(record.event.get()) {
            Ok(event) => event,
            Err(error) => {
                let info = ErrorInfo::new(ERROR_TYPE, format!("the record is not JSON: {error}"));
                return Decoded::Unusable(record, info);
            }
        };
        let mut view = if filtered {
            sluice_sources::kafka::record_filter_view(&Value::Object(event.clone()))
        } else {
            Value::Null
        };
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
        Decoded::Ready(record.decoded(raw), view)
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
            Err(RegistryError::Refused(reason) | RegistryError::Missing(reason)) => {
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

    /// Review: the parsed schemas were kept by id without a bound; a topic written with many
    /// schema versions (or ids a hostile producer points at) grew them for the mapping's life.
    #[test]
    fn the_schema_cache_keeps_its_count_and_byte_bounds_dropping_the_least_recently_used() {
        let schema = Arc::new(Schema::Json);
        let mut cache = SchemaCache::default();
        for id in 0..MAX_SCHEMAS_KEPT as u32 {
            cache.insert(id, schema.clone(), 10);
        }
        assert!(cache.get(0).is_some(), "used: now the most recent");
        cache.insert(5_000, schema.clone(), 10);
        assert_eq!(cache.kept.len(), MAX_SCHEMAS_KEPT);
        assert!(cache.get(0).is_some(), "recently used, kept");
        assert!(cache.get(1).is_none(), "the least recently used went");
        assert_eq!(cache.bytes, MAX_SCHEMAS_KEPT * 10);
        // Bytes: one large schema pushes out as many older ones as it needs.
        cache.insert(6_000, schema.clone(), MAX_SCHEMA_CACHE_BYTES - 100);
        assert!(cache.bytes <= MAX_SCHEMA_CACHE_BYTES, "{}", cache.bytes);
        assert!(cache.get(6_000).is_some());
        assert_eq!(cache.kept.len(), 11, "the large one and ten of 10 bytes");
        // One alone over the bound is still kept (it was just fetched and is in use).
        cache.insert(7_000, schema.clone(), MAX_SCHEMA_CACHE_BYTES + 1);
        assert_eq!(cache.kept.len(), 1);
        assert_eq!(cache.bytes, MAX_SCHEMA_CACHE_BYTES + 1);
        // Inserting an id again replaces it and its bytes.
        cache.insert(7_000, schema, 5);
        assert_eq!((cache.kept.len(), cache.bytes), (1, 5));
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
        // A string claiming 64 MiB (zigzag varint), followed by nothing: under apache-avro's
        // own 512 MiB default, over sluice's 8 MiB.
        let mut claim = Vec::new();
        let mut n: u64 = (64u64 << 20) << 1;
        while n >= 0x80 {
            claim.push((n as u8) | 0x80);
            n >>= 7;
        }
        claim.push(n as u8);
        let error = schema.decode(&claim).unwrap_err();
        assert!(error.contains("allocat"), "{error}");
    }

    #[test]
    fn an_avro_datum_cut_inside_its_last_string_is_an_error_not_a_null() {
        let record = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#;
        let schema = parse(1, &registered(None, record), &[]).unwrap();
        // a = 1, b = "hello" (length 5, zigzag 10), cut after "he".
        let whole = [2, 10, b'h', b'e', b'l', b'l', b'o'];
        assert_eq!(
            schema.decode(&whole).unwrap().0,
            json!({"a": 1, "b": "hello"})
        );
        let error = schema.decode(&whole[..4]).unwrap_err();
        assert!(error.contains("ends before"), "{error}");
    }

    #[test]
    fn avro_schemas_that_could_exhaust_the_decoder_are_refused() {
        let list = r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","Node"]}]}"#;
        let error = parse(1, &registered(None, list), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("recursive"), "{error}");
        let nulls = r#"{"type":"array","items":"null"}"#;
        let error = parse(2, &registered(None, nulls), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("take no bytes"), "{error}");
        let empty = r#"{"type":"map","values":{"type":"record","name":"E","fields":[]}}"#;
        assert!(parse(3, &registered(None, empty), &[]).is_err());
        // The same type used twice side by side is not recursion.
        let twice = r#"{"type":"record","name":"P","fields":[{"name":"a","type":{"type":"record","name":"Q","fields":[{"name":"x","type":"long"}]}},{"name":"b","type":"Q"},{"name":"c","type":{"type":"array","items":"Q"}}]}"#;
        parse(4, &registered(None, twice), &[]).unwrap();
    }

    #[test]
    fn only_the_registrys_own_not_found_codes_mean_a_schema_is_missing() {
        let error = |code: u32| json!({"error_code": code, "message": "m"}).to_string();
        assert_eq!(classify(200, b"{}", IDS_MISSING), Answer::Schema);
        assert_eq!(
            classify(404, error(40403).as_bytes(), IDS_MISSING),
            Answer::Missing
        );
        assert_eq!(
            classify(404, error(40401).as_bytes(), SUBJECT_MISSING),
            Answer::Missing
        );
        // A reference's subject code is not an id's, and the other way round.
        assert!(matches!(
            classify(404, error(40401).as_bytes(), IDS_MISSING),
            Answer::Failed(_)
        ));
        let wrong_url = classify(404, b"<html>Not Found</html>", IDS_MISSING);
        assert!(
            matches!(&wrong_url, Answer::Failed(reason) if reason.contains("base URL")),
            "{wrong_url:?}"
        );
        for status in [401, 403, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, b"", IDS_MISSING), Answer::Failed(_)),
                "{status}"
            );
        }
        let refused = classify(401, b"", IDS_MISSING);
        assert!(matches!(&refused, Answer::Failed(r) if r.contains("credentials")));
    }
}
