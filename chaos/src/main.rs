//! `scripts/chaos`: sluice under SIGKILLs, outages, rebalances and a soak, against moto and
//! librdkafka's mock cluster, with the figures written as a Markdown table.
//!
//! Every scenario asserts its bounds (nothing lost, duplicates under a bound stated with its
//! reason, order kept where the source has one, recovery in time); the run exits 1 when one is
//! broken, after writing the table.

mod daemon;
mod handler;
mod ledger;
mod load;
mod proxy;
mod scenarios;

use clap::Parser;
use scenarios::{NAMES, Report, Settings};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Fault injection and soak for sluice; writes a Markdown table of the figures")]
struct Args {
    /// The sluice binary to run.
    #[arg(long)]
    sluice: PathBuf,
    /// Faults per scenario (kills, membership changes).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Seed of the random schedule (kill moments, which instance).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only this scenario (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Short outages and load: the version scripts/test runs.
    #[arg(long)]
    quick: bool,
    /// Also run the soak for this long (`5m`, `1h`); 0 skips it.
    #[arg(long, default_value = "0s", value_parser = humantime_duration)]
    soak: Duration,
    /// Where the table goes.
    #[arg(long, default_value = "bench/reliability.md")]
    out: PathBuf,
    /// What the table says about the binary (release, debug).
    #[arg(long, default_value = "release")]
    profile: String,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text}"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("not a duration: {text} (use s, m or h)")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for name in &args.only {
        anyhow::ensure!(
            NAMES.contains(&name.as_str()) || name == "soak",
            "no scenario named {name:?}; the scenarios are {NAMES:?} and soak"
        );
    }
    let work = tempfile::Builder::new().prefix("sluice-chaos").tempdir()?;
    let settings = Settings {
        rounds: args.rounds,
        seed: args.seed,
        quick: args.quick,
        sluice: std::fs::canonicalize(&args.sluice)?,
        work: work.path().to_owned(),
    };
    let started = Instant::now();
    let mut reports = Vec::new();
    for name in NAMES {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let t = Instant::now();
        eprintln!("chaos: {name} ...");
        let report = match scenarios::run(name, &settings).await {
            Ok(report) => report,
            Err(error) => Report {
                name,
                broken: vec![format!("the scenario failed to run: {error:#}")],
                ..Report::default()
            },
        };
        eprintln!(
            "chaos: {name}: sent {} handled {} lost {} duplicated {} (bound {}) in {:.0} s{}",
            report.tally.sent,
            report.tally.handled,
            report.tally.lost,
            report.tally.duplicated,
            report.duplicate_bound,
            t.elapsed().as_secs_f64(),
            if report.broken.is_empty() {
                String::new()
            } else {
                format!(" — BROKEN: {}", report.broken.join("; "))
            }
        );
        reports.push(report);
    }
    let soak = if !args.soak.is_zero()
        && (args.only.is_empty() || args.only.iter().any(|o| o == "soak"))
    {
        eprintln!("chaos: soak for {:?} ...", args.soak);
        let mut soak = scenarios::soak(&settings, args.soak).await?;
        soak.check();
        Some(soak)
    } else {
        None
    };
    let table = render(&args, &reports, soak.as_ref(), started.elapsed());
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &table)?;
    println!("{table}");
    let broken: Vec<String> = reports
        .iter()
        .chain(soak.as_ref().map(|s| &s.report))
        .flat_map(|r| r.broken.iter().map(move |b| format!("{}: {b}", r.name)))
        .collect();
    if !broken.is_empty() {
        // The logs of every instance stay for a look.
        let kept = work.keep();
        eprintln!("chaos: logs and state kept in {}", kept.display());
        eprintln!(
            "chaos: {} bounds broken:\n  {}",
            broken.len(),
            broken.join("\n  ")
        );
        std::process::exit(1);
    }
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(String::new(), |kb| format!(", {} GiB", kb / 1024 / 1024));
    format!("{cpu}, {cores} cores{memory}, {}", std::env::consts::ARCH)
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn render(
    args: &Args,
    reports: &[Report],
    soak: Option<&scenarios::SoakReport>,
    took: Duration,
) -> String {
    let date = time::OffsetDateTime::now_utc().date();
    let mut out = String::new();
    let _ = writeln!(out, "# Reliability figures\n");
    let _ = writeln!(
        out,
        "Written by `scripts/chaos` ({}). Run on {date}, {}; {} binary; seed {}, {} rounds{}; {:.0} s in all.\n",
        if args.quick {
            "--quick"
        } else {
            "the full suite"
        },
        machine(),
        args.profile,
        args.seed,
        args.rounds,
        if args.only.is_empty() {
            String::new()
        } else {
            format!(", only {}", args.only.join(", "))
        },
        took.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Lost = accepted by the source and never handled. Duplicated = handlings beyond the first. \
         Order = records of one key (FIFO group, DynamoDB item, Kafka key) handled for the first time \
         out of order. See the README's \"Guarantees\" for what each figure promises.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | faults | sent | handled | lost | duplicated | duplicate bound | order | recovery (worst) | result |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|---|---|");
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | ≤ {}: {} | {} | {} | {} |",
            r.name,
            r.faults,
            r.tally.sent,
            r.tally.handled,
            r.tally.lost,
            r.tally.duplicated,
            r.duplicate_bound,
            r.bound_why,
            if r.ordered {
                format!("{} out of order", r.tally.order_violations)
            } else {
                "–".into()
            },
            if r.recovery_what.is_empty() {
                "–".into()
            } else {
                format!(
                    "{} ({}; bound {})",
                    seconds(r.recovery),
                    r.recovery_what,
                    seconds(r.recovery_bound)
                )
            },
            if r.broken.is_empty() {
                "ok".into()
            } else {
                format!("**broken**: {}", r.broken.join("; "))
            }
        );
    }
    let notes: Vec<String> = reports
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("- {}: {n}", r.name)))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\n{}", notes.join("\n"));
    }
    if let Some(soak) = soak {
        let _ = writeln!(
            out,
            "\n## Soak\n\n{:.0} min of SQS and Kafka at 50 records/s each; the handler fails 1 % of records and takes 2 s more for 1 % of invocations. {} invocations; sent {}, handled {}, lost {}, duplicated {}. Sampled every 5 s; start = first sample after warm-up (a fifth of the run, at least 30 s).\n",
            soak.duration.as_secs_f64() / 60.0,
            soak.attempts,
            soak.report.tally.sent,
            soak.report.tally.handled,
            soak.report.tally.lost,
            soak.report.tally.duplicated,
        );
        let _ = writeln!(out, "| measure | start | max | end |\n|---|---:|---:|---:|");
        let rows: [(&str, scenarios::Curve<i64>); 4] = [
            ("RSS (MiB)", soak.curve(|s| s.1.rss_kib as i64 / 1024)),
            ("open descriptors", soak.curve(|s| s.1.fds as i64)),
            ("threads", soak.curve(|s| s.1.threads as i64)),
            ("tokio tasks", soak.curve(|s| s.2)),
        ];
        for (what, curve) in rows {
            if let Some((start, max, end)) = curve {
                let _ = writeln!(out, "| {what} | {start} | {max} | {end} |");
            }
        }
        let _ = writeln!(
            out,
            "\nResult: {}",
            if soak.report.broken.is_empty() {
                "flat, nothing lost".to_owned()
            } else {
                format!("**broken**: {}", soak.report.broken.join("; "))
            }
        );
    }
    out
}
