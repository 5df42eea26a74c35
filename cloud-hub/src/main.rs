//! The `cloud-hub` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloud_hub::cascade::report::ReportArgs;
use cloud_hub::config::{ConfigErrors, HubConfig};
use cloud_hub::demo::{self, DemoArgs};
use cloud_hub::hub::Hub;
use cloud_hub::inference::{Device, InferenceService};

use edge_agent::cli::EXIT_CONFIG;

/// Conveyor hub: MQTT ingest, storage, HTTP API and the demo.
#[derive(Debug, Parser)]
#[command(name = "cloud-hub", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (embedded broker unless the config names an external one).
    Serve {
        /// Path to hub.toml (default: built-in defaults on 127.0.0.1).
        #[arg(short, long, env = "CONVEYOR_HUB_CONFIG")]
        config: Option<PathBuf>,
        /// Where the hub's models run (overrides `[inference] device`):
        /// cpu, or cuda (needs a build with `--features cuda` and a GPU).
        #[arg(long)]
        device: Option<Device>,
    },
    /// Validate a hub config file (and load its models) and exit.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// As for `serve`.
        #[arg(long)]
        device: Option<Device>,
    },
    /// Accuracy and uplink bytes of edge-only, hub-only and the cascade at
    /// several thresholds, on the held-out test data.
    CascadeReport(ReportArgs),
    /// Start a hub and several real edge agents replaying public sensor data.
    Demo(DemoArgs),
    /// Run the edge agent built into this binary (used by `demo`); takes
    /// the same arguments as `edge-agent`.
    #[command(hide = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn load_config(path: Option<&PathBuf>, device: Option<Device>) -> Result<HubConfig, ExitCode> {
    let loaded = match path {
        Some(p) => HubConfig::load(p),
        None => Ok(HubConfig::default()),
    };
    let mut config = loaded.map_err(|e| {
        e.eprint("cloud-hub: invalid config: ");
        ExitCode::from(EXIT_CONFIG)
    })?;
    if let Some(d) = device {
        config.inference.device = d;
    }
    Ok(config)
}

/// Loads the configured models: every check before any port is bound.
/// Prints every model that does not load, as config errors.
fn load_models(config: &HubConfig) -> Result<InferenceService, ExitCode> {
    InferenceService::start(&config.inference, Default::default()).map_err(|e| {
        ConfigErrors::from(e).eprint("cloud-hub: invalid config: ");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

fn main() -> ExitCode {
    let cli = match edge_agent::cli::parse_or_exit_code(Cli::try_parse()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Check { config, device } => {
            match load_config(Some(&config), device).and_then(|c| load_models(&c)) {
                Ok(models) => {
                    println!(
                        "{}: ok ({} models on {})",
                        config.display(),
                        models.model_ids().len(),
                        models.device()
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::CascadeReport(args) => match cloud_hub::cascade::report::run(&args) {
            Ok(report) => {
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("report serialises")
                    );
                } else {
                    cloud_hub::cascade::report::print_table(&report);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cloud-hub cascade-report: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, device } => {
            let config = match load_config(config.as_ref(), device) {
                Ok(c) => c,
                Err(code) => return code,
            };
            edge_agent::cli::init_tracing("info,rumqttd=off");
            let models = match load_models(&config) {
                Ok(m) => m,
                Err(code) => return code,
            };
            runtime().block_on(async move {
                let hub = match Hub::start(&config, models).await {
                    Ok(hub) => hub,
                    Err(e) => {
                        tracing::error!("cannot start the hub: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!(
                    "cloud-hub: HTTP API on http://{}, MQTT on {}",
                    hub.http_addr, hub.state.device_url
                );
                edge_agent::signal::shutdown_signal().await;
                tracing::info!("shutting down");
                hub.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Command::Demo(args) => {
            edge_agent::cli::init_tracing("warn,rumqttd=off");
            let json = args.json;
            match runtime().block_on(demo::run(args)) {
                Ok(summary) => {
                    demo::print_summary(&summary);
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&summary).expect("summary serialises")
                        );
                    }
                    if summary.agents_failed > 0 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("cloud-hub demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Agent { args } => {
            let argv = std::iter::once(std::ffi::OsString::from("edge-agent")).chain(args);
            edge_agent::cli::main_with_args(argv)
        }
    }
}
