//! The `edge-agent` command line. Kept in the library so that
//! `conveyor-demo` can run the very same agent as a child process of its
//! own binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use conveyor_process::{init_tracing, parse_or_exit_code, EXIT_CONFIG, EXIT_UNAVAILABLE};

use crate::agent::Agent;
use crate::config::AgentConfig;

/// Conveyor edge agent: reads sensors, runs the pipeline, streams records to the hub.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until every source has finished, or SIGINT/SIGTERM.
    /// SIGHUP re-reads the config and swaps changed models between windows.
    Run {
        /// Path to agent.toml.
        #[arg(short, long, env = "CONVEYOR_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file (including replay files, models and WASM
    /// transforms) and exit.
    Check {
        /// Path to agent.toml.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Work with WASM transforms.
    #[command(subcommand)]
    Transform(TransformCommand),
    /// List the records transforms failed on (the dead-letter store).
    DeadLetters {
        /// Path to agent.toml (its data_dir holds the store).
        #[arg(short, long, env = "CONVEYOR_AGENT_CONFIG")]
        config: PathBuf,
        /// Print the full dead letters as JSON Lines instead of a summary.
        #[arg(long)]
        json: bool,
        /// Show only the last N.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
}

#[derive(Debug, Subcommand)]
enum TransformCommand {
    /// Run a module over sample records (JSON Lines); print the output
    /// records on stdout and what happened (fuel, memory, failures) on
    /// stderr. Exits 1 if the transform failed on any record.
    Test(crate::transform::test_tool::TestArgs),
}

/// The one path `check` and `run` share: parse, validate every field,
/// build every component. Prints every problem (one per line, each naming
/// its field) and gives exit code 64 if there is any.
fn load(config: &Path) -> Result<Agent, ExitCode> {
    let built = AgentConfig::load(config).and_then(Agent::build);
    built.map_err(|e| {
        e.eprint("edge-agent: invalid config: ");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Parses `args` (including the program name) and runs the command.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match parse_or_exit_code(Cli::try_parse_from(args)) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Transform(TransformCommand::Test(args)) => {
            match crate::transform::test_tool::run(&args) {
                Ok(report) => {
                    crate::transform::test_tool::print_outputs(&report.outputs);
                    eprint!("{}", report.summary);
                    if report.failed > 0 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("edge-agent transform test: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::DeadLetters { config, json, last } => dead_letters(&config, json, last),
        Command::Check { config } => match load(&config) {
            Ok(agent) => {
                let c = agent.config();
                println!(
                    "{}: ok (device {}, {} source(s), {} stage(s), hub {})",
                    config.display(),
                    c.device_id,
                    c.sources.len(),
                    c.stages.len(),
                    c.uplink.url
                );
                for (i, stage) in agent.stages().iter().enumerate() {
                    if let Some(slot) = stage.chain_slot() {
                        for link in slot.current().links {
                            println!(
                                "  stages[{i}] {}: transform {} (sha256 {})",
                                stage.config.name(i),
                                link.tag,
                                &link.sha256[..12]
                            );
                        }
                    }
                    if let Some(slot) = stage.model_slot() {
                        let model = slot.current();
                        let m = model.meta();
                        println!(
                            "  stages[{i}] {}: model {}@{} ({}, {} channels x {} readings, stride {}, {} labels)",
                            stage.config.name(i),
                            m.id,
                            m.version,
                            m.precision,
                            m.channels,
                            m.window,
                            m.stride,
                            m.labels.len()
                        );
                    }
                }
                // A Fluvio uplink: the cluster must answer (the agent
                // retries forever at run time; `check` says it now).
                if let conveyor_shared::UplinkUrl::Fluvio(url) = &c.uplink.url {
                    let f = &c.uplink.fluvio;
                    match conveyor_transport::check_fluvio(url, &[&f.records, &f.downlink]) {
                        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                        Err(e) => {
                            eprintln!("edge-agent check: uplink.url: {e}");
                            return ExitCode::from(EXIT_UNAVAILABLE);
                        }
                    }
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let agent = match load(&config) {
                Ok(agent) => agent,
                Err(code) => return code,
            };
            init_tracing("info");
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("edge-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    conveyor_process::shutdown_signal().await;
                    tracing::info!("signal received; draining and shutting down");
                    let _ = stop_tx.send(true);
                });
                tokio::spawn(reload_on_hangup(
                    config.clone(),
                    agent.reloader(),
                    agent.ota(),
                ));
                match agent.run(stop_rx).await {
                    Ok(summary) => {
                        tracing::info!(
                            acked = summary.records_acked,
                            left_in_log = summary.log_records,
                            next_seq = summary.next_seq,
                            "edge agent stopped"
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        tracing::error!("edge agent failed: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// On every SIGHUP: re-reads the config file and applies what can be
/// applied while running (new models); says what needs a restart. With
/// `[ota]`, the stages the hub set keep the hub's artifacts (laid over the
/// file the same way as at start-up).
async fn reload_on_hangup(
    path: PathBuf,
    reloader: crate::reload::Reloader,
    ota: Option<std::sync::Arc<crate::ota::OtaShared>>,
) {
    let mut hangups = match conveyor_process::signal::hangups() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("config reload on SIGHUP is unavailable: {e}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        let new = match AgentConfig::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("config reload refused, keeping the running config: {e}");
                continue;
            }
        };
        let new = match &ota {
            Some(shared) => {
                *shared.base.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
                shared.effective(&new)
            }
            None => new,
        };
        let reloader = reloader.clone();
        let report = match tokio::task::spawn_blocking(move || reloader.apply(new)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("config reload failed: {e}");
                continue;
            }
        };
        for s in &report.swapped {
            tracing::info!(
                "reload: ready, swapping at the next window (model) or batch (transforms): {s}"
            );
        }
        for r in &report.refused {
            tracing::error!("reload refused, the running model or chain stays: {r}");
        }
        for f in &report.needs_restart {
            tracing::warn!("reload: {f} changed; this takes effect after a restart");
        }
        if report.swapped.is_empty() && report.refused.is_empty() && report.needs_restart.is_empty()
        {
            tracing::info!("reload: nothing changed");
        }
    }
}

/// `edge-agent dead-letters`: a summary by transform and kind, then the
/// last few (or all of them as JSON Lines).
fn dead_letters(config: &Path, json: bool, last: usize) -> ExitCode {
    let config = match AgentConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            e.eprint("edge-agent: invalid config: ");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let read = match crate::transform::dead_letter::read_all(&config.data_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "edge-agent: cannot read the dead letters in {}: {e}",
                config.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let shown = &read.letters[read.letters.len().saturating_sub(last)..];
    if json {
        for l in shown {
            println!("{}", serde_json::to_string(l).expect("serialises"));
        }
        return ExitCode::SUCCESS;
    }
    let mut by_kind = std::collections::BTreeMap::<(&str, &str, &str), usize>::new();
    for l in &read.letters {
        *by_kind
            .entry((l.stage.as_str(), l.transform.as_str(), l.kind.as_str()))
            .or_default() += 1;
    }
    println!(
        "{} dead letter(s) in {}{}",
        read.letters.len(),
        config.data_dir.display(),
        if read.skipped > 0 {
            format!(" ({} unreadable line(s) skipped)", read.skipped)
        } else {
            String::new()
        }
    );
    for ((stage, transform, kind), n) in &by_kind {
        println!("  {n:>8}  {stage}  {transform}  {kind}");
    }
    if !shown.is_empty() {
        println!("last {}:", shown.len());
    }
    for l in shown {
        println!(
            "  stream {} ts_us {}  {} {}: {}",
            l.record.stream, l.record.source_ts_us, l.transform, l.kind, l.reason
        );
    }
    ExitCode::SUCCESS
}
