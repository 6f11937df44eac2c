//! `sluice dlq peek` and `sluice dlq replay`: the commands' edge (argument checks, the stores of
//! a mapping, printing, signals). Exit status: 0 success, 1 when anything failed or the replay
//! was interrupted, 2 bad usage or bad config.

use super::DlqError;
use super::kafka::KafkaStore;
use super::replay::{RateLimit, Replayed, Replayer, SourceWriter, passes};
use super::s3::S3Store;
use super::sqs::{Contents, SqsStore};
use super::{Entry, RecordKind, Store};
use crate::config::{Config, DestinationConfig, MappingConfig, SourceConfig};
use crate::runtime::invoker::Invoker;
use crate::telemetry::MappingMetrics;
use serde_json::{Value, json};
use sluice_policies::{ErrorInfo, FilterSet};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a peek holds SQS messages before it releases them.
const PEEK_HOLD: Duration = Duration::from_secs(60);
/// Entries a peek shows when `--limit` is not given.
pub const DEFAULT_PEEK_LIMIT: usize = 100;

pub struct PeekOptions {
    pub limit: usize,
    pub json: bool,
}

pub struct ReplayOptions {
    pub limit: Option<usize>,
    pub rate: Option<usize>,
    pub filter: Option<FilterSet>,
    pub dry_run: bool,
    pub keep: bool,
    pub to_source: bool,
}

/// Parses `--rate`: `N/s` or `N`, records per second.
pub fn parse_rate(text: &str) -> Result<usize, String> {
    let number = text.strip_suffix("/s").unwrap_or(text).trim();
    match number.parse::<usize>() {
        Ok(rate) if rate > 0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate; give records per second, such as 50/s"
        )),
    }
}

/// Parses `--filter`: one pattern in the mapping filter syntax (a JSON object).
pub fn parse_filter(text: &str) -> Result<FilterSet, String> {
    let pattern: Value = serde_json::from_str(text)
        .map_err(|e| format!("the filter is not JSON: {e}; give a pattern such as '{{\"body\": {{\"kind\": [\"order\"]}}}}'"))?;
    let compiled = sluice_policies::filter::Pattern::compile(&pattern)
        .map_err(|e| format!("the filter is not a valid pattern: {e}"))?;
    Ok(FilterSet::new(vec![compiled]))
}

/// The mapping called `name`, or an error listing the ones there are.
pub fn find_mapping<'a>(config: &'a Config, name: &str) -> Result<&'a MappingConfig, String> {
    config
        .mappings
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.mappings.iter().map(|m| m.name.as_str()).collect();
            format!(
                "{}: no mapping named {name:?}; the config has: {}",
                config.file.display(),
                names.join(", ")
            )
        })
}

struct Clients {
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    kinesis: aws_sdk_kinesis::Client,
    region: String,
}

async fn clients(config: &Config) -> Result<Clients, DlqError> {
    let sdk = crate::daemon::aws_config_for(&config.aws, config.needs_aws()).await?;
    Ok(Clients {
        sqs: aws_sdk_sqs::Client::new(&sdk),
        s3: crate::daemon::s3_client(&sdk),
        kinesis: aws_sdk_kinesis::Client::new(&sdk),
        region: sdk.region().map(|r| r.to_string()).unwrap_or_default(),
    })
}

/// The queue a source queue's redrive policy moves messages to, if it has one.
async fn redrive_queue(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<Option<String>, DlqError> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| {
            DlqError::store(
                queue_url,
                "GetQueueAttributes (RedrivePolicy)",
                aws_sdk_sqs::error::DisplayErrorContext(e),
            )
        })?;
    let Some(policy) = output
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
    else {
        return Ok(None);
    };
    let policy: Value = serde_json::from_str(policy).unwrap_or_default();
    let Some(arn) = policy["deadLetterTargetArn"].as_str() else {
        return Ok(None);
    };
    // arn:aws:sqs:<region>:<account>:<name>
    let parts: Vec<&str> = arn.split(':').collect();
    let (Some(account), Some(name)) = (parts.get(4), parts.get(5)) else {
        return Err(DlqError::NotAQueueArn {
            queue_url: queue_url.to_owned(),
            arn: arn.to_owned(),
        });
    };
    let url = client
        .get_queue_url()
        .queue_name(*name)
        .queue_owner_aws_account_id(*account)
        .send()
        .await
        .map_err(|e| {
            DlqError::store(
                arn,
                "GetQueueUrl (the dead-letter queue)",
                aws_sdk_sqs::error::DisplayErrorContext(e),
            )
        })?;
    Ok(url.queue_url().map(str::to_owned))
}

/// Every place `mapping`'s dead letters are: its `on_failure` destination, and for queue
/// sources the queue the source's redrive policy moves messages to.
async fn open_stores(
    mapping: &MappingConfig,
    clients: &Clients,
    hold: Duration,
    commits: bool,
) -> Result<Vec<Box<dyn Store>>, DlqError> {
    let mut stores: Vec<Box<dyn Store>> = Vec::new();
    let fallback = RecordKind::of(&mapping.source);
    let mut envelope_queue = None;
    match &mapping.on_failure {
        Some(DestinationConfig::Sqs {
            queue_url,
            spill_bucket,
        }) => {
            envelope_queue = Some(queue_url.clone());
            stores.push(Box::new(
                SqsStore::open(
                    clients.sqs.clone(),
                    clients.s3.clone(),
                    queue_url,
                    spill_bucket.clone(),
                    Contents::Envelopes { fallback },
                    &mapping.name,
                    hold,
                )
                .await?,
            ));
        }
        Some(DestinationConfig::S3 { bucket, prefix }) => stores.push(Box::new(S3Store::new(
            clients.s3.clone(),
            bucket,
            prefix,
            &mapping.name,
            fallback,
        ))),
        Some(DestinationConfig::Kafka { topic }) => {
            let SourceConfig::Kafka(source) = &mapping.source else {
                return Err(DlqError::KafkaWithoutSource {
                    mapping: mapping.name.clone(),
                });
            };
            let (source, topic) = (source.clone(), topic.clone());
            let store =
                tokio::task::spawn_blocking(move || KafkaStore::open(&source, &topic, commits))
                    .await??;
            stores.push(Box::new(store));
        }
        None => {}
    }
    let source_queue = match &mapping.source {
        SourceConfig::Sqs(source) => Some((source.queue_url.as_str(), RecordKind::Sqs)),
        SourceConfig::S3(source) => Some((source.queue_url.as_str(), RecordKind::S3)),
        // No redrive queue: a stream's failures go only to the mapping's destination.
        SourceConfig::DynamodbStream(_)
        | SourceConfig::Kinesis(_)
        | SourceConfig::Kafka(_)
        | SourceConfig::Schedule(_) => None,
    };
    if let Some((queue_url, kind)) = source_queue
        && let Some(dead_letter_queue) = redrive_queue(&clients.sqs, queue_url).await?
        && envelope_queue.as_deref() != Some(dead_letter_queue.as_str())
    {
        let source = sluice_sources::sqs::SqsQueue::connect(clients.sqs.clone(), queue_url).await?;
        stores.push(Box::new(
            SqsStore::open(
                clients.sqs.clone(),
                clients.s3.clone(),
                &dead_letter_queue,
                None,
                Contents::Raw {
                    kind,
                    source_arn: sluice_sources::queue::Queue::description(&source)
                        .arn
                        .clone(),
                },
                &mapping.name,
                hold,
            )
            .await?,
        ));
    }
    if stores.is_empty() {
        return Err(DlqError::NoDeadLetters {
            mapping: mapping.name.clone(),
            queue: source_queue.is_some(),
        });
    }
    Ok(stores)
}

/// `text` with control characters (escape sequences, carriage returns, newlines) and bidi
/// overrides written as `\u{..}` escapes: dead letters hold untrusted text, and a terminal must
/// show it, not obey it.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn shorten(text: &str, width: usize) -> String {
    let text = &printable(text);
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// The table a person scans: one line per entry.
fn table(entries: &[Entry]) -> String {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|entry| {
            let error = match (&entry.unreadable, entry.error_type.as_str()) {
                (Some(reason), _) => format!("unreadable: {reason}"),
                (None, "") => entry.error_message.clone(),
                (None, kind) => format!("{kind}: {}", entry.error_message),
            };
            [
                printable(entry.at.as_deref().unwrap_or("-")),
                if entry.condition.is_empty() {
                    "-".into()
                } else {
                    printable(&entry.condition)
                },
                entry.attempts.to_string(),
                entry.replay_count.to_string(),
                shorten(&error, 48),
                shorten(&entry.record_ids().join(" "), 64),
            ]
        })
        .collect();
    let header = [
        "WHEN",
        "CONDITION",
        "ATTEMPTS",
        "REPLAYS",
        "ERROR",
        "RECORDS",
    ];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = line(&header.map(str::to_owned));
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}

/// `sluice dlq peek`.
pub async fn peek(
    config: &Config,
    mapping: &MappingConfig,
    options: &PeekOptions,
) -> Result<(), DlqError> {
    let clients = clients(config).await?;
    let mut stores = open_stores(mapping, &clients, PEEK_HOLD, false).await?;
    let mut shown = 0usize;
    let mut documents = Vec::new();
    for store in &mut stores {
        let mut entries = Vec::new();
        while shown + entries.len() < options.limit {
            let batch = store
                .next((options.limit - shown - entries.len()).min(10))
                .await?;
            if batch.is_empty() {
                break;
            }
            entries.extend(batch);
        }
        store.finish().await?;
        shown += entries.len();
        if options.json {
            documents.extend(entries.iter().map(|entry| {
                let mut document = entry.to_json();
                document["store"] = json!(store.describe());
                document
            }));
        } else {
            let more = if shown >= options.limit {
                " (the --limit is reached; there may be more)"
            } else {
                ""
            };
            println!("{}: {} entries{more}", store.describe(), entries.len());
            if !entries.is_empty() {
                println!("{}", table(&entries));
            }
        }
    }
    if options.json {
        // A Value always renders.
        println!("{:#}", Value::Array(documents));
    }
    Ok(())
}

/// What a replay did: `entries` replayed (or, in a dry run, that would be), the rest in records.
/// An unreadable entry counts as one skipped record.
#[derive(Debug, Default)]
pub struct Summary {
    pub entries: usize,
    pub replayed: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub interrupted: bool,
}

impl Summary {
    pub fn line(&self, dry_run: bool) -> String {
        if dry_run {
            return format!(
                "dry run: {} records in {} entries would be replayed, {} skipped; nothing was changed",
                self.replayed, self.entries, self.skipped
            );
        }
        let mut line = format!(
            "replayed {} records from {} entries: {} succeeded, {} failed, {} skipped",
            self.replayed, self.entries, self.succeeded, self.failed, self.skipped
        );
        if self.interrupted {
            line.push_str("; interrupted: entries not replayed yet were left in place");
        }
        line
    }
}

/// `sluice dlq replay`.
pub async fn replay(
    config: &Config,
    mapping: &MappingConfig,
    options: ReplayOptions,
    interrupted: CancellationToken,
) -> Result<Summary, DlqError> {
    let clients = clients(config).await?;
    let commits = !options.dry_run && !options.keep;
    let mut stores = open_stores(mapping, &clients, super::HOLD, commits).await?;
    let cluster = match &mapping.source {
        SourceConfig::Kafka(source) => Some(source.cluster()),
        _ => None,
    };
    let writer = if options.to_source {
        Some(match &mapping.source {
            SourceConfig::Sqs(source) => SourceWriter::Sqs {
                client: clients.sqs.clone(),
                queue_url: source.queue_url.clone(),
                fifo: source.fifo || source.queue_url.ends_with(".fifo"),
            },
            SourceConfig::S3(source) => SourceWriter::Sqs {
                client: clients.sqs.clone(),
                queue_url: source.queue_url.clone(),
                fifo: source.queue_url.ends_with(".fifo"),
            },
            SourceConfig::Kafka(source) => SourceWriter::Kafka {
                producer: sluice_sources::kafka::producer_config(
                    &source.bootstrap_servers,
                    &source.properties,
                )
                .create_with_context(sluice_sources::kafka::auth::ClientAuth {
                    tokens: source.tokens(),
                })
                .map_err(DlqError::Producer)?,
            },
            SourceConfig::Kinesis(source) => SourceWriter::Kinesis {
                client: clients.kinesis.clone(),
                stream_name: source.stream_name.clone(),
                stream_arn: source.stream_arn.clone(),
            },
            SourceConfig::DynamodbStream(_) => {
                return Err(DlqError::NotWritable {
                    kind: "dynamodb_stream",
                });
            }
            SourceConfig::Schedule(_) => {
                return Err(DlqError::NotWritable { kind: "schedule" });
            }
        })
    } else {
        None
    };
    let target_config =
        config
            .targets
            .get(&mapping.target)
            .ok_or_else(|| DlqError::UnknownTarget {
                mapping: mapping.name.clone(),
                target: mapping.target.clone(),
            })?;
    let replayer = Replayer {
        mapping: mapping.name.clone(),
        invoker: Invoker::new(
            crate::targets::build(
                &mapping.target,
                target_config,
                &BTreeMap::new(),
                &clients.region,
                None,
            )?,
            MappingMetrics::new(&mapping.name),
        ),
        policy: super::replay::replay_policy(mapping),
        batch_size: super::replay::batch_size(mapping),
        cluster,
        rate: options.rate.map(RateLimit::new),
    };
    let bar = if std::io::stderr().is_terminal() && !options.dry_run {
        let bar = match options.limit {
            Some(limit) => indicatif::ProgressBar::new(limit as u64),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos} entries {wide_msg} [{elapsed}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut run = Run {
        limit: options.limit.unwrap_or(usize::MAX),
        options,
        replayer,
        writer,
        summary: Summary::default(),
        bar,
    };
    for store in &mut stores {
        let result = run.store(store.as_mut(), &interrupted).await;
        // Held messages are released and finished Kafka entries committed even after an error.
        let finished = store.finish().await;
        result?;
        finished?;
    }
    run.bar.finish_and_clear();
    run.summary.interrupted = interrupted.is_cancelled();
    Ok(run.summary)
}

/// One replay's settings and progress.
struct Run {
    options: ReplayOptions,
    limit: usize,
    replayer: Replayer,
    writer: Option<SourceWriter>,
    summary: Summary,
    bar: indicatif::ProgressBar,
}

impl Run {
    /// Replays the entries of one store until it runs dry, the limit, or an interrupt.
    async fn store(
        &mut self,
        store: &mut dyn Store,
        interrupted: &CancellationToken,
    ) -> Result<(), DlqError> {
        while self.summary.entries < self.limit && !interrupted.is_cancelled() {
            let batch = store
                .next((self.limit - self.summary.entries).min(10))
                .await?;
            if batch.is_empty() {
                break;
            }
            for (index, entry) in batch.iter().enumerate() {
                if interrupted.is_cancelled() || self.summary.entries >= self.limit {
                    store.release(&batch[index..]).await?;
                    return Ok(());
                }
                store.refresh().await?;
                self.entry(store, entry).await?;
                self.bar.inc(1);
                self.bar.set_message(format!(
                    "{} succeeded, {} failed, {} skipped",
                    self.summary.succeeded, self.summary.failed, self.summary.skipped
                ));
            }
        }
        Ok(())
    }
}

impl Run {
    /// Replays one entry, then deletes it, writes back what is left of it, or leaves it.
    async fn entry(&mut self, store: &mut dyn Store, entry: &Entry) -> Result<(), DlqError> {
        let summary = &mut self.summary;
        if let Some(reason) = &entry.unreadable {
            summary.skipped += entry.records.len().max(1);
            tracing::warn!(store = store.describe(), entry = %entry.id, reason = %reason, "entry skipped: it cannot be replayed; it stays");
            store.keep(entry).await?;
            return Ok(());
        }
        // Per record: whether it stays in the entry after this replay.
        let mut stays: Vec<bool> = entry
            .records
            .iter()
            .map(|record| {
                self.options
                    .filter
                    .as_ref()
                    .is_some_and(|filter| !passes(filter, entry.kind, record))
            })
            .collect();
        let chosen: Vec<usize> = (0..stays.len()).filter(|&i| !stays[i]).collect();
        summary.skipped += stays.len() - chosen.len();
        if chosen.is_empty() {
            store.keep(entry).await?;
            return Ok(());
        }
        summary.entries += 1;
        summary.replayed += chosen.len();
        let records: Vec<Value> = chosen.iter().map(|&i| entry.records[i].clone()).collect();
        if self.options.dry_run {
            let ids: Vec<String> = records.iter().map(|r| entry.kind.identity(r)).collect();
            println!(
                "would replay {} from {}: {} records ({})",
                entry.id,
                store.describe(),
                records.len(),
                ids.join(" ")
            );
            store.keep(entry).await?;
            return Ok(());
        }
        let Replayed { failed, error } = match &self.writer {
            Some(writer) => writer.send(entry.kind, &records).await,
            None => self.replayer.replay(entry.kind, &records).await,
        };
        summary.failed += failed.len();
        summary.succeeded += records.len() - failed.len();
        if self.options.keep {
            store.keep(entry).await?;
            return Ok(());
        }
        for &index in &failed {
            stays[chosen[index]] = true;
        }
        let left: Vec<Value> = (0..stays.len())
            .filter(|&i| stays[i])
            .map(|i| entry.records[i].clone())
            .collect();
        if left.is_empty() {
            store.delete(entry).await?;
        } else {
            let failure = (!failed.is_empty()).then(|| {
                error.unwrap_or_else(|| ErrorInfo::new("ReplayFailed", "the replay failed"))
            });
            store
                .replace(entry, entry.rewritten(left, failure.as_ref()))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::{Handle, RecordKind};

    #[test]
    fn peek_escapes_control_characters_from_dead_letters() {
        let mut entry = Entry::unreadable(
            "m1".into(),
            RecordKind::Sqs,
            "no".into(),
            Handle::S3 { key: "k".into() },
        );
        entry.unreadable = None;
        entry.error_type = "Boom\u{1b}[2J".into();
        entry.error_message = "line\r\nnext\u{7}\u{202e}gnp.exe".into();
        entry.condition = "Retry\u{1b}]0;owned\u{7}".into();
        let rendered = table(&[entry]);
        assert!(
            !rendered
                .chars()
                .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')),
            "{rendered:?}"
        );
        assert_eq!(rendered.lines().count(), 2, "{rendered}");
        assert!(rendered.contains("Boom\\u{1b}[2J"), "{rendered}");
        assert!(
            rendered.contains("Retry\\u{1b}]0;owned\\u{7}"),
            "{rendered}"
        );
    }
}
