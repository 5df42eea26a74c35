//! `conveyor-demo`: a hub and several real edge agents on this machine, in
//! one command (`cargo run --release -p conveyor-demo`).
//!
//! It is its own package so that the hub does not depend on the edge
//! agent: this binary links both (the hub as a library, the agents as this
//! same binary re-executed with the hidden `agent` subcommand), and the
//! `cloud-hub` binary links neither the WASM runtime nor the agent's log.

mod demo;
mod die_with_parent;
mod fluvio_cluster;
mod update;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use demo::DemoArgs;

/// Conveyor demo: starts a hub and several real edge agents replaying
/// public sensor data, shows live progress and prints a summary.
#[derive(Debug, Parser)]
#[command(
    name = "conveyor-demo",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    demo: DemoArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the edge agent built into this binary (how the demo starts its
    /// agents); takes the same arguments as `edge-agent`.
    #[command(hide = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = match conveyor_process::parse_or_exit_code(Cli::try_parse()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(Command::Agent { args }) = cli.command {
        let argv = std::iter::once(OsString::from("edge-agent")).chain(args);
        return edge_agent::cli::main_with_args(argv);
    }
    let args = cli.demo;
    conveyor_process::init_tracing("warn,rumqttd=off");
    let json = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    match runtime.block_on(demo::run(args)) {
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
            eprintln!("conveyor-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
