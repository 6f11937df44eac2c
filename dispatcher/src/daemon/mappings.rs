//! The running mappings and their targets, and what a config reload (`SIGHUP`) does to them.
//!
//! Guarantees of [`MappingSet::reload`]:
//! - the new config is the one `sluice validate` would accept; a file that does not parse or
//!   validate changes nothing (the caller logs why);
//! - a mapping whose config and target are unchanged keeps running untouched: same worker, same
//!   in-flight batches, same leases and partitions;
//! - a changed mapping (its own keys, its destinations, or its target's) drains for at most
//!   `shutdown_timeout`, exactly as at a stop, and only then starts again with the new config,
//!   so two incarnations never read the same queue, shard or partition at once;
//! - a removed (or newly disabled) mapping drains the same way and is gone from `/readyz`,
//!   `/mappings` and the EMF lines after its last one; an added mapping starts;
//! - a changed target is built anew; mappings on unchanged targets keep theirs, with its circuit
//!   breaker state and adaptive limit. Invoke API functions keep the targets they started with;
//! - what cannot change while running (admin server, AWS settings, checkpoints, state
//!   directory, Invoke API, metrics, traces, shutdown timeout) is reported and left as it was.

use super::RunError;
use crate::config::{Config, DestinationConfig, MappingConfig, SourceConfig, TargetConfig};
use crate::health::Health;
use crate::runtime::mapping::{Mapping, SourceClients, StartMapping};
use crate::runtime::{dynamodb_stream, kafka, kinesis, s3, schedule, sqs, supervise};
use crate::targets::{self, SharedTarget};
use crate::telemetry::MappingMetrics;
use crate::telemetry::esm::{EmfMapping, EmfRegistry};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything a target is built from: two targets with equal specs are the same target.
#[derive(Debug, Clone, PartialEq)]
struct TargetSpec {
    target: TargetConfig,
    breaker: Option<sluice_policies::BreakerSettings>,
    adaptive: Option<sluice_policies::AdaptiveSettings>,
    rate_limit: Option<(f64, u32)>,
}

fn target_specs(config: &Config) -> BTreeMap<String, TargetSpec> {
    config
        .targets
        .iter()
        .map(|(name, target)| {
            let spec = TargetSpec {
                target: target.clone(),
                breaker: config.circuit_breakers.get(name).copied(),
                adaptive: config.adaptive_concurrency.get(name).copied(),
                rate_limit: config.rate_limits.get(name).copied(),
            };
            (name.clone(), spec)
        })
        .collect()
}

/// The built targets, by name.
pub(super) struct Targets {
    specs: BTreeMap<String, TargetSpec>,
    built: BTreeMap<String, SharedTarget>,
    handlers: BTreeMap<String, Arc<dyn crate::targets::in_process::Handler>>,
    region: String,
    health: Health,
}

impl Targets {
    pub(super) fn build(
        config: &Config,
        handlers: BTreeMap<String, Arc<dyn crate::targets::in_process::Handler>>,
        region: &str,
        health: &Health,
    ) -> Result<Self, RunError> {
        let mut targets = Self {
            specs: BTreeMap::new(),
            built: BTreeMap::new(),
            handlers,
            region: region.to_owned(),
            health: health.clone(),
        };
        for (name, spec) in target_specs(config) {
            let built = targets.build_one(&name, &spec)?;
            targets.built.insert(name.clone(), built);
            targets.specs.insert(name, spec);
        }
        Ok(targets)
    }

    fn build_one(&self, name: &str, spec: &TargetSpec) -> Result<SharedTarget, RunError> {
        let mut built = targets::build(
            name,
            &spec.target,
            &self.handlers,
            &self.region,
            Some(&self.health),
        )?;
        if let Some(settings) = spec.breaker {
            built = built.with_circuit_breaker(settings, Some(self.health.clone()));
        }
        if let Some(settings) = spec.adaptive {
            built = built.with_adaptive_concurrency(settings);
        }
        if let Some((records_per_second, burst)) = spec.rate_limit {
            built = built.with_rate_limit(records_per_second, burst);
        }
        Ok(built)
    }

    pub(super) fn get(&self, name: &str) -> Option<SharedTarget> {
        self.built.get(name).cloned()
    }

    /// The targets of `config`, built but not yet in use: unchanged ones kept, changed and new
    /// ones built, so that a target that fails to build refuses the reload before anything
    /// stopped. A target an Invoke API function uses cannot change while running (the function
    /// keeps the one it started with): its old settings are put back into `config`, and its
    /// name is returned in the second list.
    fn stage(&self, config: &mut Config) -> Result<(StagedTargets, Vec<String>), RunError> {
        let in_use_by_functions: Vec<&String> = config
            .invoke_api
            .iter()
            .flat_map(|api| api.functions.values().map(|f| &f.target))
            .collect();
        let mut kept = Vec::new();
        for name in in_use_by_functions {
            if let Some(old) = self.specs.get(name)
                && target_specs(config).get(name) != Some(old)
            {
                config.targets.insert(name.clone(), old.target.clone());
                put_back(&mut config.circuit_breakers, name, old.breaker);
                put_back(&mut config.adaptive_concurrency, name, old.adaptive);
                put_back(&mut config.rate_limits, name, old.rate_limit);
                kept.push(name.clone());
            }
        }
        let specs = target_specs(config);
        let mut rebuilt = BTreeMap::new();
        for (name, spec) in &specs {
            if self.specs.get(name) != Some(spec) {
                rebuilt.insert(name.clone(), self.build_one(name, spec)?);
            }
        }
        Ok((StagedTargets { specs, rebuilt }, kept))
    }

    /// Puts staged targets in use; the names whose target changed or went away, whose circuit
    /// and problems on `/readyz` were those of the old target and are cleared.
    fn commit(&mut self, staged: StagedTargets) -> Vec<String> {
        let mut replaced: Vec<String> = staged.rebuilt.keys().cloned().collect();
        replaced.extend(
            self.specs
                .keys()
                .filter(|name| !staged.specs.contains_key(*name))
                .cloned(),
        );
        for name in &replaced {
            self.health.set_circuit(name, None);
            self.health
                .set_problem(crate::health::Component::Target, name, None);
        }
        self.built.retain(|name, _| staged.specs.contains_key(name));
        self.built.extend(staged.rebuilt);
        self.specs = staged.specs;
        replaced
    }
}

fn put_back<T>(settings: &mut BTreeMap<String, T>, name: &str, old: Option<T>) {
    match old {
        Some(old) => {
            settings.insert(name.to_owned(), old);
        }
        None => {
            settings.remove(name);
        }
    }
}

/// Targets a reload built, not yet in use.
struct StagedTargets {
    specs: BTreeMap<String, TargetSpec>,
    rebuilt: BTreeMap<String, SharedTarget>,
}

impl StagedTargets {
    /// The target `name` will be once committed.
    fn get(&self, name: &str, current: &Targets) -> Option<SharedTarget> {
        self.rebuilt.get(name).cloned().or_else(|| {
            self.specs
                .contains_key(name)
                .then(|| current.get(name))
                .flatten()
        })
    }
}

/// What starting a mapping needs, the same for every mapping.
pub(super) struct StartContext {
    pub health: Health,
    pub source_clients: SourceClients,
    pub sqs_client: aws_sdk_sqs::Client,
    pub s3_client: aws_sdk_s3::Client,
    /// The daemon's stop: every mapping's own stop is a child of it.
    pub shutdown: CancellationToken,
    pub shutdown_timeout: Duration,
    /// The EMF writer's mappings; `None` without `metrics.emf`.
    pub emf: Option<EmfRegistry>,
}

/// A mapping ready to start: what could fail is built.
struct Prepared {
    config: MappingConfig,
    target: SharedTarget,
    on_failure: Option<Arc<dyn crate::destinations::Destination>>,
    on_success: Option<Arc<dyn crate::destinations::Destination>>,
}

struct Running {
    config: MappingConfig,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// The running mappings.
pub(super) struct MappingSet {
    context: StartContext,
    running: BTreeMap<String, Running>,
    /// One per mapping name, kept while the name runs: a changed mapping counts on.
    metrics: BTreeMap<String, MappingMetrics>,
    /// Workers of removed mappings, draining.
    draining: Vec<JoinHandle<()>>,
}

impl MappingSet {
    pub(super) fn new(context: StartContext) -> Self {
        Self {
            context,
            running: BTreeMap::new(),
            metrics: BTreeMap::new(),
            draining: Vec::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.running.len()
    }

    /// Starts every enabled mapping of `config`.
    pub(super) fn start_all(&mut self, config: &Config, targets: &Targets) -> Result<(), RunError> {
        for mapping in config.mappings.iter().filter(|m| m.enabled) {
            let target = targets.get(&mapping.target);
            let prepared = self.prepare(mapping, target)?;
            self.launch(prepared)?;
        }
        Ok(())
    }

    /// Builds what a mapping needs that can fail (its target's lookup, its destinations), so a
    /// reload can refuse before it stops anything.
    fn prepare(
        &self,
        mapping: &MappingConfig,
        target: Option<SharedTarget>,
    ) -> Result<Prepared, RunError> {
        let context = &self.context;
        let target = target.ok_or_else(|| RunError::UnknownTarget {
            owner: format!("mapping {}", mapping.name),
            target: mapping.target.clone(),
        })?;
        let destination = |key: &'static str, destination: &Option<DestinationConfig>| {
            destination
                .as_ref()
                .map(|d| {
                    crate::destinations::build(
                        d,
                        Some(&mapping.source),
                        &context.sqs_client,
                        &context.s3_client,
                    )
                })
                .transpose()
                .map_err(|source| RunError::Destination {
                    owner: format!("mapping {}", mapping.name),
                    key,
                    source,
                })
        };
        Ok(Prepared {
            on_failure: destination("on_failure", &mapping.on_failure)?,
            on_success: destination("on_success", &mapping.on_success)?,
            config: mapping.clone(),
            target,
        })
    }

    /// Starts a prepared mapping under its supervisor.
    fn launch(&mut self, prepared: Prepared) -> Result<(), RunError> {
        let Prepared {
            config: mapping,
            target,
            on_failure,
            on_success,
        } = prepared;
        let context = &self.context;
        let health = context.health.register(&mapping.name);
        health.calls_target(&mapping.target);
        // Every mapping runs under a supervisor: a panic or an early return is logged, shown on
        // /readyz and restarted with backoff.
        let on_death = {
            let health = health.clone();
            move |message: &str| health.restarting(message)
        };
        let metrics = self
            .metrics
            .entry(mapping.name.clone())
            .or_insert_with(|| MappingMetrics::new(&mapping.name))
            .clone();
        if let (Some(emf), Some(counts)) = (&context.emf, metrics.esm()) {
            emf.insert(EmfMapping {
                name: mapping.name.clone(),
                target: mapping.target.clone(),
                deletes: matches!(mapping.source, SourceConfig::Sqs(_) | SourceConfig::S3(_)),
                counts,
            });
        }
        let worker = Mapping {
            config: mapping.clone(),
            target,
            on_failure,
            on_success,
            health: health.clone(),
            metrics,
            shutdown_timeout: context.shutdown_timeout,
        };
        let clients = &context.source_clients;
        // One line per source kind.
        let start: Result<StartMapping, _> = match &mapping.source {
            SourceConfig::Sqs(source) => Ok(sqs::start(source, worker, clients)),
            SourceConfig::S3(source) => Ok(s3::start(source, worker, clients)),
            SourceConfig::DynamodbStream(source) => dynamodb_stream::start(source, worker, clients),
            SourceConfig::Kinesis(source) => kinesis::start(source, worker, clients),
            SourceConfig::Kafka(source) => Ok(kafka::start(source, worker, clients)),
            SourceConfig::Schedule(source) => schedule::start(source, worker, clients),
        };
        let start = match start {
            Ok(start) => start,
            Err(error) => {
                // Not silent: the mapping is on /readyz, failing, with the reason.
                health.poll_failed(&crate::error_chain(&error));
                return Err(error.into());
            }
        };
        let stop = context.shutdown.child_token();
        let handle = tokio::spawn(supervise(
            format!("mapping {}", mapping.name),
            stop.clone(),
            on_death,
            start,
        ));
        self.running.insert(
            mapping.name.clone(),
            Running {
                config: mapping,
                stop,
                handle,
            },
        );
        Ok(())
    }

    /// Applies a reloaded config (see the module docs). Returns a line per change made. Every
    /// changed target and mapping is built before anything stops: a failure refuses the reload
    /// whole. A stop that comes meanwhile ends it at once; what drains is left to the daemon's
    /// drain.
    pub(super) async fn reload(
        &mut self,
        old: &Config,
        new: &mut Config,
        targets: &mut Targets,
    ) -> Result<Vec<String>, RunError> {
        let shutdown = self.context.shutdown.clone();
        let mut report = Vec::new();
        let (staged, kept) = targets.stage(new)?;
        for name in kept {
            report.push(format!(
                "target {name} kept as it was: an invoke_api function uses it (restart to change it)"
            ));
        }
        let wanted: BTreeMap<String, MappingConfig> = new
            .mappings
            .iter()
            .filter(|m| m.enabled)
            .map(|m| (m.name.clone(), m.clone()))
            .collect();
        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        for (name, mapping) in &wanted {
            let changed = match self.running.get(name) {
                None => true,
                Some(running) => {
                    running.config != *mapping || staged.rebuilt.contains_key(&mapping.target)
                }
            };
            if changed {
                let target = staged.get(&mapping.target, targets);
                to_start.push(self.prepare(mapping, target)?);
                if self.running.contains_key(name) {
                    to_stop.push((name.clone(), true));
                }
            }
        }
        for name in self.running.keys() {
            if !wanted.contains_key(name) {
                to_stop.push((name.clone(), false));
            }
        }
        for name in targets.commit(staged) {
            if old.targets.contains_key(&name) && new.targets.contains_key(&name) {
                report.push(format!("target {name} rebuilt"));
            }
        }
        // Stop: removed and changed mappings drain, all at once and under one deadline, before
        // anything starts, so two incarnations never read the same source.
        let mut drains = Vec::new();
        for (name, restart) in to_stop {
            let running = self.running.remove(&name).expect("listed above");
            running.stop.cancel();
            tracing::info!(mapping = %name, restart, "mapping stopping for a config reload; draining");
            if !restart {
                report.push(format!("mapping {name} removed"));
            }
            drains.push((name, restart, running.handle));
        }
        // The worker's own drain is bounded by shutdown_timeout; a margin for its teardown.
        let deadline =
            tokio::time::Instant::now() + self.context.shutdown_timeout + Duration::from_secs(5);
        let mut drains = drains.into_iter();
        while let Some((name, restart, mut handle)) = drains.next() {
            tokio::select! {
                _ = &mut handle => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(mapping = %name, "mapping did not finish draining in time; its unfinished work is delivered again");
                    // Aborting the supervisor aborts the incarnation it watches.
                    handle.abort();
                }
                _ = shutdown.cancelled() => {
                    self.draining.push(handle);
                    self.draining.extend(drains.map(|(_, _, handle)| handle));
                    return Ok(report);
                }
            }
            if !restart {
                self.context.health.unregister(&name);
                if let Some(emf) = &self.context.emf {
                    emf.retire(&name);
                }
                self.metrics.remove(&name);
            }
        }
        for prepared in to_start {
            let name = prepared.config.name.clone();
            let restarted = old.mappings.iter().any(|m| m.name == name && m.enabled);
            match self.launch(prepared) {
                Ok(()) if restarted => {
                    report.push(format!("mapping {name} restarted with its new config"))
                }
                Ok(()) => report.push(format!("mapping {name} added")),
                // On /readyz as failing; the others start regardless.
                Err(error) => {
                    tracing::error!(mapping = %name, error = %crate::error_chain(&error), "mapping could not start after the reload");
                    report.push(format!("mapping {name} failed to start"));
                }
            }
        }
        Ok(report)
    }

    /// Stops every mapping (the daemon's stop has been cancelled) and waits for them to drain.
    pub(super) async fn drained(&mut self) {
        let running = std::mem::take(&mut self.running);
        for (name, running) in running {
            if let Err(error) = running.handle.await {
                tracing::error!(mapping = %name, %error, "a mapping worker failed");
            }
        }
        for handle in self.draining.drain(..) {
            let _ = handle.await;
        }
    }
}

/// Keeps in `new` the running value of every key a reload cannot change while sluice runs;
/// returns the keys whose value in the file differed.
pub(super) fn keep_fixed(running: &Config, new: &mut Config) -> Vec<&'static str> {
    fn keep<T: PartialEq + Clone>(
        key: &'static str,
        running: &T,
        new: &mut T,
        changed: &mut Vec<&'static str>,
    ) {
        if running != new {
            changed.push(key);
            *new = running.clone();
        }
    }
    let mut changed = Vec::new();
    keep("admin", &running.admin, &mut new.admin, &mut changed);
    keep("aws", &running.aws, &mut new.aws, &mut changed);
    keep(
        "checkpoints",
        &running.checkpoints,
        &mut new.checkpoints,
        &mut changed,
    );
    keep(
        "state_dir",
        &running.state_dir,
        &mut new.state_dir,
        &mut changed,
    );
    keep(
        "invoke_api",
        &running.invoke_api,
        &mut new.invoke_api,
        &mut changed,
    );
    keep("metrics", &running.emf, &mut new.emf, &mut changed);
    keep("traces", &running.traces, &mut new.traces, &mut changed);
    keep(
        "shutdown_timeout",
        &running.shutdown_timeout,
        &mut new.shutdown_timeout,
        &mut changed,
    );
    changed
}
