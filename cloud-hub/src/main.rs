//! The `cloud-hub` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloud_hub::cascade::report::ReportArgs;
use cloud_hub::config::{ConfigErrors, HubConfig};
use cloud_hub::hub::Hub;
use cloud_hub::inference::{Device, InferenceService};
use cloud_hub::store::redb::Checked;
use cloud_hub::store::StoreError;
use conveyor_process::EXIT_CONFIG;

/// Conveyor hub: MQTT ingest, storage, HTTP API, inference.
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
    /// Work on the hub's store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The hub's signing key, for the artifacts and desired states it
    /// sends to agents.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The artifact registry of a running hub: push (checked and signed by
    /// the hub), list, show.
    Artifact {
        #[command(subcommand)]
        command: cloud_hub::ota_cli::ArtifactCommand,
        #[command(flatten)]
        hub: cloud_hub::ota_cli::HubArg,
    },
    /// Compile a transform (.wasm) for agents built without the WASM
    /// compiler, offline: the code for each target is written beside the
    /// module as <stem>.<target>.cwasm, where such an agent looks for it.
    /// (`artifact push` does this for every agent target by itself.)
    Precompile {
        /// The module.
        module: PathBuf,
        /// A target triple (repeatable; default: every agent target,
        /// x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Write the code here instead of beside the module.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Set what a stage runs on devices (by id or by tag): the hub signs
    /// and publishes their new desired state; agents verify, download,
    /// apply and report.
    Deploy(cloud_hub::ota_cli::DeployCli),
    /// Devices: their identities (`device add|list|revoke`, in the hub's
    /// store) and the hub's tags on them (`device tag ID KEY=VALUE ...`:
    /// deploys and rollouts select by tags, the agent's and the hub's).
    Device {
        #[command(subcommand)]
        command: cloud_hub::ota_cli::device::DeviceCommand,
        #[command(flatten)]
        hub: cloud_hub::ota_cli::HubArg,
    },
    /// The hub's own CA, which issues the certificate of its TLS listeners
    /// (`[broker] tls`, `[http] tls`) and which agents pin.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// API tokens with a role (viewer, operator, admin), in the hub's store.
    Token {
        #[command(subcommand)]
        command: cloud_hub::identity_cli::TokenCommand,
    },
    /// Fleet rollouts: a model or transform given to a stage on many
    /// devices in waves, soaked and gated, rolled back by itself when a
    /// gate fails or too many devices do.
    Rollout {
        #[command(subcommand)]
        command: cloud_hub::ota_cli::rollout::RolloutCommand,
        #[command(flatten)]
        hub: cloud_hub::ota_cli::HubArg,
    },
    /// The demo moved to its own binary; this only says where (any
    /// arguments are ignored).
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Check the store file for damage, repairing what can be repaired
    /// (stop the hub first: the store must not be open). Exits 0 if the
    /// store is sound or was repaired, 1 if it is damaged beyond repair or
    /// cannot be checked.
    Check {
        /// The hub config whose `store.path` to check.
        #[arg(short, long, required_unless_present = "path", conflicts_with = "path")]
        config: Option<PathBuf>,
        /// The store directory to check (the one holding `hub.redb`).
        #[arg(long)]
        path: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new ed25519 signing key (a file of mode 0600, never
    /// overwritten) and print its public key, which agents are given to
    /// trust.
    Generate {
        /// Where to write the key.
        #[arg(long, default_value = "hub-signing.key")]
        out: PathBuf,
    },
    /// Print the public key and key id of a signing key.
    Show {
        #[arg(long, default_value = "hub-signing.key")]
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Make the hub's CA in its store (`<store>/tls/ca.pem`, and `ca.key`
    /// of mode 0600) if there is none, and print where its certificate is:
    /// agents pin that file (`uplink.ca_file`). `serve` makes it too, the
    /// first time a listener has `tls = true`.
    Init {
        #[command(flatten)]
        store: cloud_hub::identity_cli::StoreArg,
    },
}

fn tls(command: TlsCommand) -> ExitCode {
    let TlsCommand::Init { store } = command;
    let made = store
        .dir()
        .and_then(|dir| cloud_hub::tls::init_ca(&dir).map_err(Into::into));
    match made {
        Ok((path, made)) => {
            println!("{}", path.display());
            eprintln!(
                "cloud-hub: {} the hub's CA; agents pin {} (uplink.ca_file)",
                if made { "made" } else { "kept" },
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cloud-hub tls: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cloud-hub keys ...`.
fn keys(command: KeysCommand) -> ExitCode {
    let shown = match command {
        KeysCommand::Generate { out } => cloud_hub::keys::generate(&out).inspect(|_| {
            eprintln!(
                "cloud-hub: wrote a new signing key to {} (keep it private: whoever has it can sign)",
                out.display()
            );
        }),
        KeysCommand::Show { key } => cloud_hub::keys::load(&key).map(|k| k.public()),
    };
    match shown {
        Ok(public) => {
            println!("{public}");
            eprintln!("key id {}", public.id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cloud-hub keys: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cloud-hub store check`.
fn store_check(config: Option<PathBuf>, path: Option<PathBuf>) -> ExitCode {
    let dir = match (config, path) {
        (_, Some(p)) => p,
        (Some(c), None) => match load_config(Some(&c), None) {
            Ok(config) => config.store.path,
            Err(code) => return code,
        },
        // clap requires one of them.
        (None, None) => return ExitCode::from(EXIT_CONFIG),
    };
    // The engine may panic on a damaged file; the check catches that and
    // reports it as damage, so the default panic message would only be
    // noise before the verdict.
    std::panic::set_hook(Box::new(|_| {}));
    let shown = dir.display();
    match cloud_hub::store::redb::check(&dir) {
        Ok(Checked::Ok) => {
            println!("{shown}: ok (the store passed its integrity check)");
            ExitCode::SUCCESS
        }
        Ok(Checked::Repaired) => {
            println!(
                "{shown}: repaired (the store failed its integrity check and was repaired; \
                 writes after its last sound commit may be gone, and the agents re-send \
                 only what they still hold)"
            );
            ExitCode::SUCCESS
        }
        Err(StoreError::Damaged { found, .. }) => {
            eprintln!(
                "{shown}: corrupt: {found}. It cannot be repaired: move {shown} aside \
                 (keep it for inspection) and start the hub on an empty store"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cloud-hub store check: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `cloud-hub demo` says, and its exit code (a usage error, as clap's own).
const DEMO_MOVED: &str =
    "cloud-hub: the demo is its own binary now: run `cargo run --release -p conveyor-demo` (same options)";
const EXIT_DEMO_MOVED: u8 = 2;

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
    // The TLS files named (or the hub's CA, where there is one) must load:
    // a config error, before any port is bound.
    if let Err(e) = cloud_hub::tls::check(&config) {
        eprintln!("cloud-hub: invalid config: {e}");
        return Err(ExitCode::from(EXIT_CONFIG));
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

/// `check` with `[fluvio]`: the cluster must answer; its topics are
/// listed (the hub makes those that are missing when it starts).
fn check_fluvio(c: &HubConfig) -> ExitCode {
    let Some(f) = &c.fluvio else {
        return ExitCode::SUCCESS;
    };
    match conveyor_transport::check_fluvio(&f.url, &[&f.records, &f.downlink]) {
        Ok(lines) => {
            lines.iter().for_each(|l| println!("{l}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cloud-hub check: fluvio.url: {e}");
            ExitCode::from(conveyor_process::EXIT_UNAVAILABLE)
        }
    }
}

fn main() -> ExitCode {
    let cli = match conveyor_process::parse_or_exit_code(Cli::try_parse()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Check { config, device } => {
            let checked = load_config(Some(&config), device).and_then(|c| {
                let key = c.ota.key_path(&c.store.path);
                // A missing key is made by `serve`; one that is there must load.
                if key.exists() {
                    if let Err(e) = cloud_hub::keys::load(&key) {
                        eprintln!("cloud-hub: invalid config: ota.signing_key: {e}");
                        return Err(ExitCode::from(EXIT_CONFIG));
                    }
                }
                let models = load_models(&c)?;
                Ok((c, models))
            });
            match checked {
                Ok((c, models)) => {
                    println!(
                        "{}: ok ({} models on {})",
                        config.display(),
                        models.model_ids().len(),
                        models.device()
                    );
                    check_fluvio(&c)
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
            conveyor_process::init_tracing("info,rumqttd=off");
            // The signing key is config: a bad one stops the hub before any
            // port is bound; a missing one is made.
            let key_path = config.ota.key_path(&config.store.path);
            match cloud_hub::ota::load_or_make_key(&key_path) {
                Ok((key, made)) => {
                    if made.is_some() {
                        tracing::info!(key = %key_path.display(), "made a new signing key");
                    }
                    println!(
                        "cloud-hub: agents trust {} (key id {})",
                        key.public(),
                        key.public().id()
                    );
                }
                Err(e) => {
                    eprintln!("cloud-hub: invalid config: ota.signing_key: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
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
                    "cloud-hub: HTTP API on {}://{}, MQTT on {}",
                    if config.http.tls { "https" } else { "http" },
                    hub.http_addr,
                    hub.state.device_url
                );
                conveyor_process::shutdown_signal().await;
                tracing::info!("shutting down");
                hub.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Command::Store {
            command: StoreCommand::Check { config, path },
        } => store_check(config, path),
        Command::Keys { command } => keys(command),
        Command::Tls { command } => tls(command),
        Command::Artifact { command, hub } => cloud_hub::ota_cli::artifact(command, &hub.hub),
        Command::Precompile {
            module,
            targets,
            out_dir,
        } => {
            match cloud_hub::ota::precompile::precompile_file(&module, &targets, out_dir.as_deref())
            {
                Ok(written) => {
                    for (path, size) in written {
                        println!("wrote {} ({size} bytes)", path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cloud-hub precompile: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Deploy(args) => cloud_hub::ota_cli::deploy_command(args),
        Command::Device { command, hub } => cloud_hub::ota_cli::device::run(command, &hub.hub),
        Command::Rollout { command, hub } => cloud_hub::ota_cli::rollout::run(command, &hub.hub),
        Command::Token { command } => match cloud_hub::identity_cli::token(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cloud-hub token: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { .. } => {
            eprintln!("{DEMO_MOVED}");
            ExitCode::from(EXIT_DEMO_MOVED)
        }
    }
}
