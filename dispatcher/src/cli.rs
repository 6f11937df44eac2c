//! The command line (architecture.md "CLI"). Exit status: 0 success, 1 runtime failure, 2 bad
//! usage or bad config.

use crate::config;
use crate::telemetry::{self, LogFormat};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "AWS Lambda event source mapping semantics for any service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every enabled mapping until SIGTERM/SIGINT, then drain.
    Run {
        /// The config file: a path, or s3://bucket/key (fetched once at start).
        #[arg(short = 'c', long = "config", env = "SLUICE_CONFIG")]
        config: String,
        /// Log format: auto (JSON when stdout is not a terminal), json or text.
        #[arg(long, value_enum, default_value = "auto")]
        log_format: LogFormat,
        /// Once the admin (and Invoke API) servers listen, write their addresses to this file as
        /// JSON ({"admin": "127.0.0.1:9797", "invoke_api": ...}); with port 0 in the config, this
        /// is how to find them. Removed at exit.
        #[arg(long, env = "SLUICE_ADDRESS_FILE")]
        address_file: Option<std::path::PathBuf>,
    },
    /// Check a config file and report every problem with its file:line:column and key path.
    Validate {
        /// The config file: a path, or s3://bucket/key.
        #[arg(short = 'c', long = "config", env = "SLUICE_CONFIG")]
        config: String,
        /// Also check that every source (queue, stream, topic) and on_failure destination (queue,
        /// topic, bucket, spill bucket) exists and is reachable.
        #[arg(long)]
        connect: bool,
    },
    /// Exit 0 when the local sluice reports ready on its admin endpoint (/readyz), 1 otherwise:
    /// a container health check.
    Health {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Control the mappings of a running sluice through its admin server: pause one (it stops
    /// receiving; work in flight finishes), resume it, or show each mapping's status.
    Ctl {
        #[command(subcommand)]
        action: CtlAction,
        #[command(flatten)]
        admin: AdminArgs,
        /// admin.token, needed when the admin server is asked from another host.
        #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Dead letters of a mapping: look at them, or re-drive them.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the JSON Schema of the config file.
    Schema,
    /// Write a sluice config from the event sources a Lambda deployment describes: a SAM or
    /// CloudFormation template, a serverless.yml, or Terraform files. What needs a value and
    /// what has no equivalent is listed on stderr.
    Import {
        /// The template, serverless.yml, .tf file, or directory of .tf files.
        file: PathBuf,
        /// The format, when the file does not say.
        #[arg(long, value_enum)]
        format: Option<crate::import::Format>,
        /// Import only this function (logical id, function name or key).
        #[arg(long)]
        function: Option<String>,
        /// Write the config here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

/// How a command finds the running sluice's admin server.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The config file of the running sluice (it names the admin address).
    #[arg(short = 'c', long = "config", env = "SLUICE_CONFIG", global = true)]
    config: Option<String>,
    /// The admin address to ask instead of reading the config, such as 127.0.0.1:9797.
    #[arg(long, env = "SLUICE_ADMIN", global = true)]
    admin: Option<String>,
    /// The address file the running sluice writes (`run --address-file`): read when the
    /// admin address asked for (--admin, or the config's) has port 0, or none is given.
    #[arg(long, env = "SLUICE_ADDRESS_FILE", global = true)]
    address_file: Option<std::path::PathBuf>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, global = true)]
    timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Stop receiving for a mapping; what it holds finishes, positions stay.
    Pause {
        /// The mapping's name.
        mapping: String,
    },
    /// Receive again for a paused mapping.
    Resume {
        /// The mapping's name.
        mapping: String,
    },
    /// Each mapping's status and whether it is paused (JSON).
    Status,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show a mapping's dead letters without consuming them: its on_failure destination, and
    /// the dead-letter queue of its source queue's redrive policy.
    Peek {
        #[arg(short = 'c', long = "config", env = "SLUICE_CONFIG")]
        config: String,
        /// The mapping's name.
        #[arg(long)]
        mapping: String,
        /// Show at most this many entries.
        #[arg(long, default_value_t = crate::dlq::command::DEFAULT_PEEK_LIMIT)]
        limit: usize,
        /// Print JSON (every entry with its records) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-drive a mapping's dead letters through its target under its policy; an entry is
    /// removed only after its records succeed, and what fails again stays with its replay count
    /// raised.
    Replay {
        #[arg(short = 'c', long = "config", env = "SLUICE_CONFIG")]
        config: String,
        /// The mapping's name.
        #[arg(long)]
        mapping: String,
        /// Replay at most this many entries.
        #[arg(long)]
        limit: Option<usize>,
        /// At most this many records per second, such as 50/s.
        #[arg(long, value_parser = crate::dlq::command::parse_rate)]
        rate: Option<usize>,
        /// Replay only records matching this pattern (the mapping filter syntax, JSON).
        #[arg(long, value_parser = crate::dlq::command::parse_filter)]
        filter: Option<sluice_policies::FilterSet>,
        /// Print what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave the entries in place after replaying them.
        #[arg(long)]
        keep: bool,
        /// Send the records back to the mapping's source (queue or topic) instead of invoking
        /// the target.
        #[arg(long)]
        to_source: bool,
    },
}

pub const EXIT_RUNTIME_FAILURE: u8 = 1;
pub const EXIT_BAD_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config::json_schema()).expect("schema serializes")
            );
            ExitCode::SUCCESS
        }
        Command::Dlq { command } => dlq(command),
        Command::Import {
            file,
            format,
            function,
            output,
        } => import(&file, format, function.as_deref(), output.as_deref()),
        Command::Health { admin } => match admin_address(&admin, "health") {
            Ok((address, _)) => ask_ready(&address, admin.timeout),
            Err(exit) => exit,
        },
        Command::Ctl {
            action,
            admin,
            token,
        } => match admin_address(&admin, "ctl") {
            Ok((address, loaded)) => {
                // The config names the token too, when it is the way to the admin server (read
                // once: the address may already have come from it).
                let token = token.or_else(|| match loaded {
                    Some(config) => config.admin.token,
                    None => load_config(admin.config.as_deref()?).ok()?.admin.token,
                });
                ctl(&address, action, token.as_deref(), admin.timeout)
            }
            Err(exit) => exit,
        },
        Command::Validate {
            config: path,
            connect,
        } => match load_config(&path) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("warning: {warning}");
                }
                for warning in config.task_state_warnings(config::on_ecs()) {
                    eprintln!("warning: {warning}");
                }
                if connect && let Err(problems) = check_connections(&config) {
                    eprintln!("{problems}");
                    return ExitCode::from(EXIT_RUNTIME_FAILURE);
                }
                println!(
                    "{}: ok ({} targets, {} mappings{})",
                    path,
                    config.targets.len(),
                    config.mappings.len(),
                    if connect {
                        ", every queue, stream, topic and bucket reachable"
                    } else {
                        ""
                    }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Run {
            config: path,
            log_format,
            address_file,
        } => {
            ignore_hangups_until_reloads_are_heard();
            let config = match load_config(&path) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            telemetry::init_logging(log_format);
            // SIGHUP reads the same location again (README "Live control").
            let location = path.clone();
            let reload =
                crate::daemon::ConfigLoader(std::sync::Arc::new(move || load_config(&location)));
            let options = crate::daemon::RunOptions {
                address_file,
                reload: Some(reload),
            };
            match run(config, options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "sluice failed");
                    eprintln!("{}", report("sluice", error.as_ref()));
                    ExitCode::from(EXIT_RUNTIME_FAILURE)
                }
            }
        }
    }
}

/// `sluice import`: the config on stdout (or `-o`), the summary on stderr.
fn import(
    file: &std::path::Path,
    format: Option<crate::import::Format>,
    function: Option<&str>,
    output: Option<&std::path::Path>,
) -> ExitCode {
    let imported = match crate::import::import(file, format, function) {
        Ok(imported) => imported,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    match output {
        Some(path) => {
            if let Err(error) = std::fs::write(path, &imported.yaml) {
                eprintln!("error: writing {}: {error}", path.display());
                return ExitCode::from(EXIT_RUNTIME_FAILURE);
            }
            eprintln!("wrote {} ({} input)", path.display(), imported.format);
        }
        None => print!("{}", imported.yaml),
    }
    eprint!("{}", imported.summary);
    ExitCode::SUCCESS
}

/// Reads the config from a path or from `s3://bucket/key` (with the standard AWS credential
/// chain, region and `AWS_ENDPOINT_URL`); errors name the location as their file.
pub fn load_config(location: &str) -> Result<config::Config, config::ConfigErrors> {
    let Some(object) = location.strip_prefix("s3://") else {
        return config::load(std::path::Path::new(location));
    };
    let unreadable = |message: String| {
        config::ConfigErrors(vec![config::ConfigError {
            file: location.to_owned(),
            position: None,
            path: String::new(),
            message,
        }])
    };
    let Some((bucket, key)) = object
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
    else {
        return Err(unreadable(
            "an S3 config location is s3://bucket/key".to_owned(),
        ));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreadable(e.to_string()))?;
    let text = runtime
        .block_on(async {
            // Before the config is read, region and endpoint come from the environment.
            let sdk_config =
                crate::daemon::aws_config_for(&config::AwsSettings::default(), true)
                    .await
                    .map_err(|e| e.to_string())?;
            crate::destinations::s3::read_object_text(&crate::daemon::s3_client(&sdk_config), bucket, key)
                .await
                .map_err(|e| crate::error_chain(&e))
        })
        .map_err(|error| {
            unreadable(format!(
                "cannot read the config from S3: {error}; check the bucket and key, the task's permission s3:GetObject on it, and AWS_REGION"
            ))
        })?;
    let mut parsed = config::parse(location, &text, std::env::vars().collect())?;
    parsed.file = PathBuf::from(location);
    Ok(parsed)
}

/// `sluice dlq peek` and `sluice dlq replay`.
fn dlq(command: DlqCommand) -> ExitCode {
    use crate::dlq::command as dlq;
    let (location, name) = match &command {
        DlqCommand::Peek {
            config, mapping, ..
        }
        | DlqCommand::Replay {
            config, mapping, ..
        } => (config.clone(), mapping.clone()),
    };
    let config = match load_config(&location) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let mapping = match dlq::find_mapping(&config, &name) {
        Ok(mapping) => mapping.clone(),
        Err(error) => {
            eprintln!("sluice dlq: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let DlqCommand::Replay {
        to_source: true, ..
    } = &command
        && let Some(what) = match mapping.source {
            config::SourceConfig::DynamodbStream(_) => Some("a DynamoDB stream"),
            config::SourceConfig::Schedule(_) => Some("a schedule"),
            _ => None,
        }
    {
        eprintln!(
            "sluice dlq: --to-source cannot write to {what} (mapping {name}); replay through the target instead"
        );
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    telemetry::init_command_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sluice dlq: {error}");
            return ExitCode::from(EXIT_RUNTIME_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match command {
            DlqCommand::Peek { limit, json, .. } => {
                dlq::peek(&config, &mapping, &dlq::PeekOptions { limit, json })
                    .await
                    .map(|()| true)
            }
            DlqCommand::Replay {
                limit,
                rate,
                filter,
                dry_run,
                keep,
                to_source,
                ..
            } => {
                let interrupted = CancellationToken::new();
                tokio::spawn(stop_on_signal(interrupted.clone()));
                let summary = dlq::replay(
                    &config,
                    &mapping,
                    dlq::ReplayOptions {
                        limit,
                        rate,
                        filter,
                        dry_run,
                        keep,
                        to_source,
                    },
                    interrupted,
                )
                .await?;
                println!("{}", summary.line(dry_run));
                Ok(summary.failed == 0 && !summary.interrupted)
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_RUNTIME_FAILURE),
        Err(error) => {
            eprintln!("{}", report("sluice dlq", &error));
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

/// The admin address a running sluice wrote to its address file; `None` while there is no file
/// (not started yet, or stopped), so the caller falls back to the config.
fn reported_admin(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let addresses: serde_json::Value = serde_json::from_str(&text).ok()?;
    addresses["admin"].as_str().map(str::to_owned)
}

/// An error for a person: what failed on the first line, each cause below it (as ripgrep
/// prints them), so nothing of the chain is lost and no line repeats another.
fn report(program: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{program}: {error}");
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(&format!("\n  caused by: {error}"));
        cause = error.source();
    }
    text
}

/// `sluice health`: asks the local admin endpoint whether sluice is ready.
/// The admin server's address (host:port) from `--admin`, the config or the address file, with
/// the config when it was read for it; the exit status to end with when it cannot be found.
fn admin_address(
    args: &AdminArgs,
    command: &str,
) -> Result<(String, Option<config::Config>), ExitCode> {
    let (config_location, admin, address_file) = (
        args.config.as_deref(),
        args.admin.as_deref(),
        args.address_file.as_deref(),
    );
    // A wildcard listener is reached over loopback.
    let reachable = |listen: std::net::SocketAddr| {
        if listen.ip().is_unspecified() {
            format!("127.0.0.1:{}", listen.port())
        } else {
            listen.to_string()
        }
    };
    let mut loaded = None;
    // The address asked for: --admin (SLUICE_ADMIN), else the config's admin.listen.
    let asked: Option<std::net::SocketAddr> = match (admin, config_location) {
        (Some(admin), _) => match admin.parse() {
            Ok(address) => Some(address),
            // A host name: asked as written.
            Err(_) => return Ok((admin.to_owned(), None)),
        },
        (None, Some(location)) => match load_config(location) {
            Ok(config) => {
                let listen = config.admin.listen;
                loaded = Some(config);
                Some(listen)
            }
            Err(errors) => {
                eprintln!("{errors}");
                return Err(ExitCode::from(EXIT_RUNTIME_FAILURE));
            }
        },
        (None, None) => None,
    };
    // A port asked for is where sluice listens; port 0 (or nothing asked) is found in the
    // address file the running sluice writes.
    match (asked, address_file) {
        (Some(asked), _) if asked.port() != 0 => Ok((reachable(asked), loaded)),
        (_, Some(path)) => match reported_admin(path) {
            Some(reported) => Ok((reported, loaded)),
            None => {
                // Not written yet, or removed at exit: nothing to ask (so, for health, not ready).
                let prefix = if command == "health" {
                    "not ready"
                } else {
                    "sluice ctl"
                };
                println!(
                    "{prefix}: no address in {}; is sluice running?",
                    path.display()
                );
                Err(ExitCode::from(EXIT_RUNTIME_FAILURE))
            }
        },
        (Some(_), None) => {
            eprintln!(
                "sluice {command}: the admin address has port 0, so sluice picks the port; give --address-file (or SLUICE_ADDRESS_FILE), the file sluice run writes it to"
            );
            Err(ExitCode::from(EXIT_BAD_CONFIG))
        }
        (None, None) => {
            eprintln!(
                "sluice {command}: give -c (or SLUICE_CONFIG), --admin (or SLUICE_ADMIN) or --address-file (or SLUICE_ADDRESS_FILE)"
            );
            Err(ExitCode::from(EXIT_BAD_CONFIG))
        }
    }
}

/// `sluice ctl`: one request to the admin server; prints its JSON answer. Exit 0 when it was
/// done, 1 when sluice could not be reached or failed, 2 when it refused (an unknown mapping, a
/// missing or wrong token).
fn ctl(
    address: &str,
    action: CtlAction,
    token: Option<&str>,
    timeout: std::time::Duration,
) -> ExitCode {
    let (method, segments) = match &action {
        CtlAction::Pause { mapping } => (reqwest::Method::POST, vec!["mappings", mapping, "pause"]),
        CtlAction::Resume { mapping } => {
            (reqwest::Method::POST, vec!["mappings", mapping, "resume"])
        }
        CtlAction::Status => (reqwest::Method::GET, vec!["mappings"]),
    };
    let mut url = match reqwest::Url::parse(&format!("http://{address}/")) {
        Ok(url) => url,
        Err(error) => {
            eprintln!("sluice ctl: {address:?} is not an address: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // Each name is one path segment, escaped as the URL rules say.
    if let Ok(mut path) = url.path_segments_mut() {
        path.clear().extend(segments);
    }
    let answer = ask_admin(timeout, |client| {
        let request = client
            .request(method, url.clone())
            .header(crate::admin::CONTROL_HEADER, "1");
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) if status.is_client_error() => {
            eprintln!(
                "sluice ctl: {url} refused the request ({status}): {}",
                body.trim()
            );
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Ok((status, body)) => {
            eprintln!("sluice ctl: {url} failed ({status}): {}", body.trim());
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
        Err(error) => {
            eprintln!("sluice ctl: cannot reach {url}: {error}; is sluice running?");
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

/// Sends the one request `build` makes to the admin server (a command's own small runtime,
/// `timeout` for the whole exchange); its status and body.
fn ask_admin(
    timeout: std::time::Duration,
    build: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let response = build(&client).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Ok((status, body))
    })
}

/// Asks `address`'s /readyz; exit 0 when ready.
fn ask_ready(address: &str, timeout: std::time::Duration) -> ExitCode {
    let url = format!("http://{address}/readyz");
    let answer = ask_admin(timeout, |client| client.get(&url));
    match answer {
        Ok((status, _)) if status.is_success() => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("not ready ({status}): {}", body.trim());
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
        Err(error) => {
            println!("not ready: {url}: {error}");
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

/// `validate --connect`: looks up every queue the config names; lists every one that fails.
fn check_connections(config: &config::Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let sdk_config = crate::daemon::aws_config_for(&config.aws, config.needs_aws())
            .await
            .map_err(|e| e.to_string())?;
        let client = aws_sdk_sqs::Client::new(&sdk_config);
        let dynamodb_streams = sluice_sources::dynamodb_streams::DynamoDbStreams {
            streams: aws_sdk_dynamodbstreams::Client::new(&sdk_config),
            tables: aws_sdk_dynamodb::Client::new(&sdk_config),
        };
        let kinesis = sluice_sources::kinesis::Kinesis {
            client: aws_sdk_kinesis::Client::new(&sdk_config),
        };
        let s3 = crate::daemon::s3_client(&sdk_config);
        let mut problems = Vec::new();
        for (index, mapping) in config.mappings.iter().enumerate() {
            let mut queues = Vec::new();
            let mut stream = None;
            match &mapping.source {
                config::SourceConfig::Sqs(source) => {
                    queues.push(("source.sqs.queue_url", source.queue_url.clone()));
                }
                config::SourceConfig::S3(source) => {
                    queues.push(("source.s3.queue_url", source.queue_url.clone()));
                }
                config::SourceConfig::Kafka(source) => {
                    let mut topics = source.topics.clone();
                    if let Some(config::DestinationConfig::Kafka { topic }) = &mapping.on_failure {
                        topics.push(topic.clone());
                    }
                    if let Some(registry) = &source.schema_registry {
                        let checked = match crate::runtime::kafka::schema::Registry::new(registry) {
                            Ok(client) => client.check().await,
                            Err(error) => Err(crate::error_chain(&error)),
                        };
                        if let Err(error) = checked {
                            problems.push(format!(
                                "{}: mappings[{index}].source.kafka.schema_registry ({}): {error}",
                                config.file.display(),
                                mapping.name
                            ));
                        }
                    }
                    let source = source.clone();
                    let checked = tokio::task::spawn_blocking(move || {
                        sluice_sources::kafka::check_topics(
                            &source.bootstrap_servers,
                            &source.properties,
                            &source.tokens(),
                            &topics,
                            std::time::Duration::from_secs(10),
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    if let Err(error) = checked {
                        problems.push(format!(
                            "{}: mappings[{index}].source.kafka ({}): {error}",
                            config.file.display(),
                            mapping.name
                        ));
                    }
                }
                config::SourceConfig::DynamodbStream(source) => {
                    stream = Some(
                        dynamodb_streams.opener(source.table.clone(), source.stream_arn.clone()),
                    );
                }
                // A schedule reads nothing: its expression was checked with the config.
                config::SourceConfig::Schedule(_) => {}
                config::SourceConfig::Kinesis(source) => {
                    // The consumer is registered at the first start, not by a check.
                    stream = Some(kinesis.opener(
                        source.stream_name.clone(),
                        source.stream_arn.clone(),
                        None,
                        false,
                        None,
                    ));
                }
            }
            // A stream is reachable when it is found and its shards can be listed.
            if let Some(open) = stream {
                let listed = match open().await {
                    Ok(stream) => stream.list_shards().await.map(|_| ()),
                    Err(error) => Err(error),
                };
                if let Err(error) = listed {
                    problems.push(format!(
                        "{}: mappings[{index}].source.{} ({}): {error}",
                        config.file.display(),
                        mapping.source.kind(),
                        mapping.name
                    ));
                }
            }
            let mut buckets = Vec::new();
            match &mapping.on_failure {
                Some(config::DestinationConfig::Sqs {
                    queue_url,
                    spill_bucket,
                }) => {
                    queues.push(("on_failure.sqs.queue_url", queue_url.clone()));
                    if let Some(bucket) = spill_bucket {
                        buckets.push(("on_failure.sqs.spill_bucket", bucket.clone()));
                    }
                }
                Some(config::DestinationConfig::S3 { bucket, .. }) => {
                    buckets.push(("on_failure.s3.bucket", bucket.clone()));
                }
                _ => {}
            }
            for (key, bucket) in buckets {
                if let Err(error) = s3.head_bucket().bucket(&bucket).send().await {
                    problems.push(format!(
                        "{}: mappings[{index}].{key} ({}): bucket {bucket} is not reachable: {}",
                        config.file.display(),
                        mapping.name,
                        aws_sdk_s3::error::DisplayErrorContext(error)
                    ));
                }
            }
            for (key, queue_url) in queues {
                if let Err(error) =
                    sluice_sources::sqs::SqsQueue::connect(client.clone(), &queue_url).await
                {
                    problems.push(format!(
                        "{}: mappings[{index}].{key} ({}): {error}",
                        config.file.display(),
                        mapping.name
                    ));
                }
            }
        }
        if let Some(queue_url) = config
            .invoke_api
            .as_ref()
            .and_then(|api| api.event_queue.as_ref())
            && let Err(error) =
                sluice_sources::sqs::SqsQueue::connect(client.clone(), queue_url).await
        {
            problems.push(format!(
                "{}: invoke_api.event_queue.sqs.queue_url: {error}",
                config.file.display()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    })
}

fn run(config: config::Config, options: crate::daemon::RunOptions) -> anyhow::Result<()> {
    // The exporter's blocking HTTP client must be made and dropped outside the async runtime.
    if let Some(traces) = &config.traces {
        crate::traces::init(&traces.otlp_endpoint, &traces.service_name)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let metrics = telemetry::init_metrics().context("installing the metrics recorder")?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        tracing::info!(config = %config.file.display(), version = env!("CARGO_PKG_VERSION"), "sluice starting");
        crate::daemon::run(config, metrics, shutdown, options)
            .await
            .map_err(anyhow::Error::from)
    });
    drop(runtime);
    crate::traces::shutdown();
    result
}

/// SIGHUP's default ends the process: one that arrives while sluice starts (the config loads,
/// clients connect, mappings start) would kill it without a drain. It is ignored until the daemon
/// listens for it (and then reloads the config).
fn ignore_hangups_until_reloads_are_heard() {
    // SAFETY: setting a signal's disposition to SIG_IGN runs no handler code; tokio's signal
    // handling replaces the disposition when it installs its own.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT; a second one exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for round in 0..2 {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        if round == 0 {
            tracing::info!(
                signal = name,
                "stopping: no new polls, draining in-flight batches"
            );
            shutdown.cancel();
        } else {
            tracing::warn!(
                signal = name,
                "second stop signal; exiting without finishing the drain"
            );
            std::process::exit(i32::from(EXIT_RUNTIME_FAILURE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("starting a server")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_report_names_each_cause_on_its_own_line() {
        let error = anyhow::Error::from(Outer(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "address in use",
        )))
        .context("running");
        assert_eq!(
            report("sluice", error.as_ref()),
            "sluice: running\n  caused by: starting a server\n  caused by: address in use"
        );
    }
}
