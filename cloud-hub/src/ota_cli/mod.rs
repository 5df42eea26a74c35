//! `cloud-hub artifact ...` and `cloud-hub deploy`: clients of a running
//! hub's HTTP API. The hub holds its store exclusively, so these go
//! through it (as `kubectl` goes through an API server), and print what
//! the hub answers.
//!
//! - [`http`]: one request to the hub (hyper's client, already in the
//!   binary through axum), and the multipart form of a push.
//! - [`artifact`]: `push`, `list`, `show`.
//! - [`deploy`]: `deploy`, and `--wait`'s progress lines.
//! - [`device`]: `device tag`, the hub's own tags on a device.
//! - [`rollout`]: `rollout start | list | status | pause | resume | abort
//!   | rollback`.

pub mod artifact;
pub mod deploy;
pub mod device;
pub mod http;
pub mod rollout;

pub use artifact::{list, push, show};
pub use deploy::{deploy, DeployArgs};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The default `--hub`.
pub const DEFAULT_HUB: &str = "http://127.0.0.1:8080";

/// `--hub`, for every subcommand that talks to a running hub.
#[derive(Debug, clap::Args)]
pub struct HubArg {
    /// The hub's HTTP API (a hub with `[http] auth = "tokens"` also needs
    /// `CONVEYOR_TOKEN`: a token from `cloud-hub token create`; an
    /// `https://` hub needs `CONVEYOR_HUB_CA`: the CA its certificate is
    /// signed by, a hub's own being `<store>/tls/ca.pem`).
    #[arg(long, global = true, env = "CONVEYOR_HUB", default_value = DEFAULT_HUB)]
    pub hub: String,
}

/// `cloud-hub artifact ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ArtifactCommand {
    /// Push a model (its metadata .json; the ONNX file it names is sent
    /// with it) or a transform (.wasm): the hub checks it as the agent
    /// will, signs it and stores it.
    Push { file: PathBuf },
    /// List the registry.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one artifact, by name@version or id.
    Show { reference: String },
}

/// `cloud-hub deploy ...`.
#[derive(Debug, clap::Args)]
pub struct DeployCli {
    /// A device id (repeatable).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Devices whose agents report this tag, KEY=VALUE (repeatable: all
    /// must match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The stage's name (`name` in the agent's `[[stages]]`).
    #[arg(long)]
    stage: String,
    /// name@version (or id): one model, or transforms in chain order.
    #[arg(long = "artifact", required = true)]
    artifacts: Vec<String>,
    /// A transform's config in the chain, TRANSFORM=JSON (repeatable).
    #[arg(long = "config")]
    configs: Vec<String>,
    /// Wait until every device applied it (or failed), printing each phase.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 1).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The hub's HTTP API.
    #[arg(long, env = "CONVEYOR_HUB", default_value = DEFAULT_HUB)]
    hub: String,
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Runs `cloud-hub artifact ...`: 0 done, 1 failed (with the reason).
pub fn artifact(command: ArtifactCommand, hub: &str) -> ExitCode {
    let done = runtime().map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async move {
            match command {
                ArtifactCommand::Push { file } => push(hub, &file).await,
                ArtifactCommand::List { json } => list(hub, json).await,
                ArtifactCommand::Show { reference } => show(hub, &reference).await,
            }
        })
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloud-hub artifact: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cloud-hub deploy ...`: 0 deployed (and, with `--wait`, applied
/// everywhere), 1 failed or timed out, 2 a usage error.
pub fn deploy_command(a: DeployCli) -> ExitCode {
    if a.devices.is_empty() && a.tags.is_empty() {
        eprintln!("cloud-hub deploy: give --device ID or --tag KEY=VALUE");
        return ExitCode::from(2);
    }
    let args = DeployArgs {
        hub: &a.hub,
        devices: &a.devices,
        tags: &a.tags,
        stage: &a.stage,
        artifacts: &a.artifacts,
        configs: &a.configs,
        wait: a.wait,
        timeout: Duration::from_secs(a.timeout),
    };
    let done = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(deploy(args)));
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cloud-hub deploy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
