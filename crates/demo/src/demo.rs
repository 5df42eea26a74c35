//! `conveyor-demo`: the whole system on one machine, in one command.
//!
//! Starts a hub (embedded broker, temporary store) and N real edge-agent
//! processes, each replaying the held-out test split of a public sensor
//! data set from `models/data/` through that data set's int8 edge model
//! (`models/<dataset>/edge.int8.json`), shows live progress, and on `--duration` or Ctrl-C stops the agents
//! (SIGTERM: they flush and say goodbye), waits for ingest to settle and
//! prints a summary: sent, received, lost, duplicated, latency, and the
//! predictions each device made and how many were right.
//!
//! The agents are this binary re-executed as `conveyor-demo agent run
//! ...`, which runs the edge-agent crate's own command line: `cargo run
//! --release -p conveyor-demo` then needs nothing else built.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use conveyor_shared::{BrokerUrl, FluvioUrl};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::fluvio_cluster;
use crate::update::{self, DeviceUpdate, UpdateSummary};

use cloud_hub::config::{BrokerConfig, HttpConfig, HubConfig, StoreConfig};
use cloud_hub::hub::Hub;
use cloud_hub::inference::{
    InferenceConfig as HubInferenceConfig, InferenceService, ServedModelConfig,
};
use edge_agent::config::AgentConfig;
use edge_agent::inference::InferenceConfig;
use edge_agent::ota::OtaConfig;
use edge_agent::sources::ReplayConfig;
use edge_agent::transform::{ChainEntry, TransformStageConfig};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of edge-agent processes to start.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Records per second each agent replays (0 = as fast as possible).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Run the agents without their pipelines: no WASM transform, no edge
    /// model (raw readings only).
    #[arg(long)]
    pub no_inference: bool,
    /// The cascade: an edge prediction less confident than this is
    /// escalated to the hub's model with its window.
    #[arg(long, default_value_t = 0.9)]
    pub escalate_below: f32,
    /// Do not escalate: the edge's answers are final.
    #[arg(long)]
    pub no_cascade: bool,
    /// Where the hub's models run: cpu, or cuda (a build with the `cuda`
    /// feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    pub device: cloud_hub::inference::Device,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// MQTT port of the embedded broker (a free one is used if taken or 0).
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// HTTP API port (a free one is used if taken or 0).
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Use this external broker instead of the embedded one.
    #[arg(long)]
    pub broker_url: Option<String>,
    /// The embedded broker serves MQTT over TLS (`mqtts://`, with the
    /// hub's own CA, which each agent pins as `uplink.ca_file`).
    #[arg(long, conflicts_with = "broker_url")]
    pub tls: bool,
    /// How the agents reach the hub: mqtt; fluvio (a local Fluvio
    /// cluster the demo starts: an SC and one SPU); or mixed (agents 1-2,
    /// 5-6, ... on Fluvio, the others on MQTT, against the one hub).
    #[arg(long, value_enum, default_value_t = Transport::Mqtt)]
    pub transport: Transport,
    /// Folder with Fluvio's cluster binaries (fluvio-run, fluvio) for
    /// --transport fluvio|mixed (default: ../shared/tools/fluvio beside
    /// the repository, or the PATH).
    #[arg(long, env = "CONVEYOR_FLUVIO_DIR")]
    pub fluvio_dir: Option<PathBuf>,
    /// Folder with the data sets (default: the repository's models/data).
    #[arg(long, env = "CONVEYOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Agents' batch size limit.
    #[arg(long, default_value_t = 200)]
    pub batch_max_records: usize,
    /// Agents' batch delay limit, milliseconds.
    #[arg(long, default_value_t = 20)]
    pub batch_max_delay_ms: u64,
    /// After this many seconds, push the smart watches' better model
    /// (basicmotions-edge 2.0.0) to the hub and deploy it to every watch
    /// over the air, while they stream.
    #[arg(long, default_value_t = 10.0)]
    pub update_after: f64,
    /// No over-the-air update: every agent keeps the model it started with.
    #[arg(long)]
    pub no_update: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Mqtt,
    Fluvio,
    Mixed,
}

impl Transport {
    /// Whether agent `i` (from 0) streams over Fluvio.
    fn fluvio_for(self, i: usize) -> bool {
        match self {
            Transport::Mqtt => false,
            Transport::Fluvio => true,
            Transport::Mixed => i % 4 < 2,
        }
    }
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub agents: usize,
    pub broker: &'static str,
    pub transport: Transport,
    pub duration_s: f64,
    pub records_sent: u64,
    pub records_received: u64,
    pub records_dropped_by_agents: u64,
    pub records_left_in_agent_logs: u64,
    pub records_lost: u64,
    pub records_duplicated: u64,
    pub ingest_records_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub payloads_rejected: u64,
    pub agents_failed: usize,
    /// Edge predictions stored at the hub, and how many of those with a
    /// ground-truth label were right.
    pub predictions: u64,
    pub predictions_scored: u64,
    pub predictions_correct: u64,
    /// Final predictions (after the cascade), how many the hub's models
    /// made, and how many of the labelled ones were right.
    pub final_results: u64,
    pub final_by_hub: u64,
    pub final_scored: u64,
    pub final_correct: u64,
    pub devices: Vec<DeviceSummary>,
    /// The cascade's accuracy and uplink bytes on the whole test splits.
    pub cascade_report: Option<cloud_hub::cascade::report::CascadeReport>,
    /// The over-the-air update, if it ran.
    pub update: Option<UpdateSummary>,
}

#[derive(Debug, Serialize)]
pub struct DeviceSummary {
    pub device_id: String,
    pub stream: String,
    /// "mqtt" or "fluvio": how this agent reached the hub.
    pub transport: &'static str,
    /// Records the agent accepted into its durable log.
    pub sent: u64,
    /// Distinct records the hub stored.
    pub received: u64,
    /// Counted drops from the agent's full (or aged) log.
    pub dropped_by_agent: u64,
    /// Not delivered when the agent stopped; kept in its log for the next start.
    pub left_in_agent_log: u64,
    /// Sent, and neither received, counted as dropped, nor in the log.
    pub lost: u64,
    pub duplicated: u64,
    /// The edge model, `id@version` (empty without inference).
    pub model: String,
    pub predictions: u64,
    pub predictions_scored: u64,
    pub predictions_correct: u64,
    /// Final predictions published for the device (results topic).
    pub finals: cloud_hub::registry::FinalTally,
    /// What its classifier stage runs at the end, as the agent reports it.
    pub running: Option<String>,
    /// Seconds after the agents started when it reported running the
    /// update (the watches, with an update).
    pub updated_after_s: Option<f64>,
}

struct DemoAgent {
    transport: &'static str,
    device_id: String,
    stream: &'static str,
    /// The update reached it: seconds after start, or why it failed.
    updated: Option<Result<f64, String>>,
    child: Child,
    log: PathBuf,
    exit: Option<std::process::ExitStatus>,
}

/// `port` if it is free, else (or for 0) a free one chosen by the OS.
fn port_or_free(port: u16, what: &str) -> Result<u16> {
    if port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
        return Ok(port);
    }
    let free = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    if port != 0 {
        eprintln!("port {port} ({what}) is taken; using {free}");
    }
    Ok(free)
}

fn find_data_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    let candidates = match arg {
        Some(dir) => vec![dir],
        None => vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/data"),
            PathBuf::from("models/data"),
        ],
    };
    for dir in &candidates {
        if dir.join("BasicMotions/BasicMotions_TEST.ts").is_file()
            && dir.join("ACSF1/ACSF1_TEST.ts").is_file()
        {
            return Ok(dir.canonicalize()?);
        }
    }
    bail!(
        "data sets not found in {}; pass --data-dir pointing at the repository's models/data",
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

/// Agent i replays the smart watch (even i) or the smart plug (odd i),
/// from the test split the models never saw in training.
fn agent_config(
    i: usize,
    args: &DemoArgs,
    data: &Path,
    // The uplink's URL (the hub's MQTT, or the Fluvio cluster), and the CA
    // the hub's certificate is checked against (MQTT over TLS).
    (uplink, ca_file): (&str, Option<&Path>),
    state_dir: &Path,
    ota: Option<&OtaConfig>,
    secret_file: impl Fn(&str) -> Option<PathBuf>,
) -> (String, &'static str, String) {
    let (kind, stream, file, sample_rate_hz, model, hz, hub_model, dataset) = if i % 2 == 0 {
        (
            "watch",
            "motion",
            data.join("BasicMotions/BasicMotions_TEST.ts"),
            Some(10.0),
            data.join("../basicmotions/edge.int8.json"),
            10.0,
            "basicmotions-hub",
            "basicmotions",
        )
    } else {
        (
            "plug",
            "power",
            data.join("ACSF1/ACSF1_TEST.ts"),
            None,
            data.join("../acsf1/edge.int8.json"),
            0.1,
            "acsf1-hub",
            "acsf1",
        )
    };
    let device = format!("demo-{kind}-{}", i + 1);
    let mut config = AgentConfig::for_device(&device)
        .data_dir(state_dir.join(&device))
        .uplink(uplink)
        .uplink_with(|u| {
            u.batch_max_records = args.batch_max_records;
            u.batch_max_delay_ms = args.batch_max_delay_ms;
            u.heartbeat_secs = 1.0;
            u.password_file = secret_file(&device);
            u.ca_file = ca_file.map(Path::to_path_buf);
        })
        .source(ReplayConfig {
            rate: Some(args.rate),
            sample_rate_hz,
            looping: true,
            ..ReplayConfig::new(stream, file)
        });
    // The hub deploys by this tag (the watches' better model).
    config
        .tags
        .insert(update::TAG.0.to_string(), dataset.to_string());
    config.ota = ota.cloned();
    if !args.no_inference {
        // A WASM transform adds per-window features (on
        // `<stream>.features`) and passes the readings on to the model;
        // raw readings travel too, so the demo shows every stream.
        let features = ChainEntry::new(transforms_dir(data).join("window-features.wasm"))
            .with("window", 100)
            .with("sample_rate_hz", hz)
            .with("passthrough", true);
        let (escalate_below, escalate_to) = if args.no_cascade {
            (None, None)
        } else {
            (Some(args.escalate_below), Some(hub_model.to_string()))
        };
        config = config
            .stage(TransformStageConfig {
                name: Some(format!("{stream}-features")),
                ..TransformStageConfig::new(stream, vec![features])
            })
            .stage(InferenceConfig {
                name: Some(format!("{stream}-classifier")),
                stream: Some(stream.to_string()),
                forward_readings: true,
                escalate_below,
                escalate_to,
                ..InferenceConfig::new(model)
            });
    }
    (device, stream, config.to_toml())
}

/// The built example transforms, beside the models in the repository.
fn transforms_dir(data: &Path) -> PathBuf {
    data.join("../../transforms/dist")
}

fn spawn_agent(config: &Path, log: &Path) -> Result<Child> {
    let exe = std::env::current_exe().context("locating the conveyor-demo binary")?;
    let log_file = std::fs::File::create(log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true);
    crate::die_with_parent::die_with_parent(cmd.as_std_mut());
    Ok(cmd.spawn()?)
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// How long a stopping demo waits for watches still applying the update.
const UPDATE_GRACE: Duration = Duration::from_secs(30);

/// Reads each watch's report: prints a line when one applies the update
/// or refuses it, and returns what the watches run now.
fn follow_update(
    agents: &mut [DemoAgent],
    state: &cloud_hub::ingest::HubState,
    deployed: Option<&UpdateSummary>,
    started: Instant,
    tty: bool,
) -> Vec<String> {
    let mut running = Vec::new();
    for a in agents.iter_mut().filter(|a| a.stream == "motion") {
        let g = deployed.and_then(|u| u.generations.get(&a.device_id).copied());
        let (now, phase) = update::report(state, &a.device_id, update::STAGE, g);
        running.extend(now.clone());
        if a.updated.is_some() {
            continue;
        }
        let deployed_at = deployed.map_or(0.0, |u| u.deployed_after_s);
        match phase {
            DeviceUpdate::Pending => {}
            DeviceUpdate::Applied => {
                let at = started.elapsed().as_secs_f64();
                say(
                    tty,
                    &format!(
                        "OTA: {} runs {} now ({:.1} s after the deploy)",
                        a.device_id,
                        now.unwrap_or_default(),
                        at - deployed_at
                    ),
                );
                a.updated = Some(Ok(at));
            }
            DeviceUpdate::Failed(reason) => {
                say(
                    tty,
                    &format!("OTA: {} refused the update: {reason}", a.device_id),
                );
                a.updated = Some(Err(reason));
            }
        }
    }
    running
}

/// One event line; on a terminal, below the live progress line.
fn say(tty: bool, line: &str) {
    if tty {
        eprint!("\r\x1b[K");
    }
    eprintln!("{line}");
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn run(args: DemoArgs) -> Result<Summary> {
    if args.agents == 0 || args.agents > 1000 {
        bail!("--agents must be between 1 and 1000, got {}", args.agents);
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!(
            "--rate must be >= 0 (0 = as fast as possible), got {}",
            args.rate
        );
    }
    if !(args.update_after.is_finite() && args.update_after >= 0.0) {
        bail!(
            "--update-after must be a number of seconds >= 0, got {}",
            args.update_after
        );
    }
    let data = find_data_dir(args.data_dir.clone())?;
    if !args.no_inference && !args.no_update {
        let v2 = update::model_file(&data.join(".."));
        if !v2.is_file() {
            bail!(
                "the update's model {} is not there; run without the update with --no-update",
                v2.display()
            );
        }
    }
    if !args.no_inference {
        for m in ["basicmotions/edge.int8.json", "acsf1/edge.int8.json"] {
            if !data.join("..").join(m).is_file() {
                bail!(
                    "edge model {m} not found beside the data sets ({}); run without models with --no-inference",
                    data.join("..").display()
                );
            }
        }
        let features = transforms_dir(&data).join("window-features.wasm");
        if !features.is_file() {
            bail!(
                "transform {} not found; run without a pipeline with --no-inference",
                features.display()
            );
        }
    }
    let work = tempfile::Builder::new()
        .prefix("conveyor-demo-")
        .tempdir()?;
    let cluster = if args.transport == Transport::Mqtt {
        None
    } else {
        let tools = fluvio_cluster::find_tools(args.fluvio_dir.as_deref())?;
        let dir = work.path().join("fluvio");
        eprintln!(
            "Conveyor demo: starting a local Fluvio cluster ({})",
            tools.display()
        );
        // On this (the main) thread, nothing else running yet: the SC and
        // SPU die with the thread that started them (PR_SET_PDEATHSIG), so
        // not on a blocking-pool thread that ends when idle.
        let cluster = fluvio_cluster::LocalCluster::start(&tools, &dir)
            .context("starting the local Fluvio cluster")?;
        Some(cluster)
    };
    let fluvio = cluster
        .as_ref()
        .map(|c| {
            FluvioUrl::parse(&c.url)
                .map(cloud_hub::fluvio::FluvioConfig::new)
                .map_err(|e| anyhow::anyhow!("the local cluster's url {}: {e}", c.url))
        })
        .transpose()?;
    let broker = match &args.broker_url {
        Some(url) => BrokerConfig::external(
            BrokerUrl::parse(url).map_err(|e| anyhow::anyhow!("--broker-url: {e}"))?,
            // A session of its own: a persistent session left by an
            // earlier demo would replay that demo's backlog into this one.
            &format!("conveyor-demo-hub-{}", std::process::id()),
        ),
        None => BrokerConfig {
            tls: args.tls,
            ..BrokerConfig::embedded(SocketAddr::from((
                [127, 0, 0, 1],
                port_or_free(args.mqtt_port, "MQTT")?,
            )))
        },
    };
    let inference = if args.no_inference {
        HubInferenceConfig::default()
    } else {
        HubInferenceConfig {
            device: args.device,
            models: ["basicmotions", "acsf1"]
                .iter()
                .map(|ds| ServedModelConfig::new(data.join(format!("../{ds}/hub.fp32.json"))))
                .collect(),
        }
    };
    let config = HubConfig {
        broker,
        http: HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port_or_free(args.http_port, "HTTP")?)),
            auth: cloud_hub::identity::config::HttpAuth::None,
            tls: false,
        },
        store: StoreConfig {
            path: work.path().join("hub-store"),
            ..Default::default()
        },
        inference,
        ota: Default::default(),
        tls: Default::default(),
        fluvio,
        insecure: false,
    };
    let embedded = args.broker_url.is_none();
    let service = InferenceService::start(&config.inference, Default::default())
        .context("loading the hub's models")?;
    let hub = Hub::start(&config, service).await?;
    let state = hub.state.clone();
    eprintln!("Conveyor demo: hub running");
    eprintln!(
        "  dashboard http://{}/  (open it in a browser)",
        hub.http_addr
    );
    eprintln!("  API       http://{}/api/v1/devices", hub.http_addr);
    eprintln!("  metrics   http://{}/metrics", hub.http_addr);
    eprintln!(
        "  results   http://{}/api/v1/results/stream (live), MQTT conveyor/v1/+/down/results",
        hub.http_addr
    );
    eprintln!(
        "  MQTT      {} ({} broker)",
        state.device_url, state.broker_mode
    );
    if let Some(c) = &cluster {
        eprintln!("  Fluvio    {} (local cluster: an SC and one SPU)", c.url);
    }

    let hub_url = format!("http://{}", hub.http_addr);
    let update = !args.no_update && !args.no_inference;
    let ota = update.then(|| OtaConfig::new(vec![state.ota.public_key()], &hub_url));
    // The hub made its CA at start; the agents pin it.
    let ca_file = args
        .tls
        .then(|| cloud_hub::tls::ca_cert_path(&config.store.path));
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let on_fluvio = cluster.as_ref().filter(|_| args.transport.fluvio_for(i));
        let uplink = match on_fluvio {
            // Plain TCP: Fluvio's TLS is not built (docs/security.md).
            Some(c) => (c.url.as_str(), None),
            None => (state.device_url.as_str(), ca_file.as_deref()),
        };
        let (device_id, stream, toml) = agent_config(
            i,
            &args,
            &data,
            uplink,
            &work.path().join("agents"),
            ota.as_ref(),
            // The embedded broker asks each device for its secret: the demo
            // provisions its own agents, as `cloud-hub device add` would.
            |device| {
                let id = conveyor_shared::DeviceId::new(device).ok()?;
                (embedded && on_fluvio.is_none()).then(|| {
                    let secret = cloud_hub::identity::change::add_device(
                        &cloud_hub::identity::file::path(&config.store.path),
                        &id,
                        true,
                    )
                    .expect("the demo's store is writable");
                    let path = work.path().join(format!("{device}.secret"));
                    std::fs::write(&path, secret).expect("the demo's directory is writable");
                    path
                })
            },
        );
        let config_path = work.path().join(format!("{device_id}.toml"));
        std::fs::write(&config_path, toml)?;
        let log = work.path().join(format!("{device_id}.log"));
        let child = spawn_agent(&config_path, &log)?;
        agents.push(DemoAgent {
            transport: if on_fluvio.is_some() {
                "fluvio"
            } else {
                "mqtt"
            },
            device_id,
            stream,
            updated: None,
            child,
            log,
            exit: None,
        });
    }
    eprintln!(
        "  started {} edge agents replaying the test splits of BasicMotions (smart watch) and ACSF1 (smart plug) at {} records/s each{}{}",
        args.agents,
        if args.rate == 0.0 { "max".to_string() } else { args.rate.to_string() },
        if args.no_inference {
            ""
        } else {
            ", each through its int8 edge model"
        },
        match args.duration {
            Some(d) => format!("; stopping after {d} s"),
            None => "; Ctrl-C stops".to_string(),
        }
    );
    if update {
        eprintln!(
            "  after {} s the hub deploys a better watch model (basicmotions-edge 2.0.0) to every watch over the air",
            args.update_after
        );
    }
    let models = data.join("..");
    let mut deployed: Option<UpdateSummary> = None;

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + Duration::from_secs_f64(d));
    let tty = std::io::stderr().is_terminal();
    let mut last_count = 0u64;
    let mut last_print = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => { eprintln!(); eprintln!("Ctrl-C: stopping agents"); break; }
        }
        for a in agents.iter_mut().filter(|a| a.exit.is_none()) {
            if let Ok(Some(status)) = a.child.try_wait() {
                a.exit = Some(status);
                eprintln!(
                    "\nagent {} exited early ({status}); its log ends:\n{}",
                    a.device_id,
                    tail(&a.log, 10)
                );
            }
        }
        // The deploy selects the watches by the tag their agents report:
        // it waits until every watch has reported (or gives up waiting
        // after UPDATE_GRACE and deploys to those that have).
        let due = started.elapsed().as_secs_f64() >= args.update_after;
        let all_reported = || {
            let ota = state.ota.devices();
            agents.iter().filter(|a| a.stream == "motion").all(|a| {
                ota.devices
                    .get(&a.device_id)
                    .and_then(|d| d.report())
                    .is_some()
            })
        };
        let waited_enough =
            started.elapsed().as_secs_f64() >= args.update_after + UPDATE_GRACE.as_secs_f64();
        if update && deployed.is_none() && due && (waited_enough || all_reported()) {
            let after = started.elapsed().as_secs_f64();
            match update::push_and_deploy(&hub_url, &update::model_file(&models), after).await {
                Ok(u) => {
                    say(
                        tty,
                        &format!(
                            "OTA: pushed {} (id {}), desired state published to {} watches",
                            u.artifact,
                            u.artifact_id,
                            u.generations.len()
                        ),
                    );
                    deployed = Some(u);
                }
                Err(e) => {
                    say(
                        tty,
                        &format!("OTA: the update failed: {e:#}; the agents keep their model"),
                    );
                    // Once: the demo goes on without it.
                    deployed = Some(UpdateSummary::failed_to_start(after, format!("{e:#}")));
                }
            }
        }
        let running = if update {
            follow_update(&mut agents, &state, deployed.as_ref(), started, tty)
        } else {
            Vec::new()
        };
        let stats = cloud_hub::api::stats_of(&state);
        let now_count = stats.records_received;
        let devices = state.registry().list(conveyor_shared::time::now_us());
        let tally = prediction_totals(&devices);
        let by_hub: u64 = devices.iter().map(|d| d.entry.finals.by_hub).sum();
        let line = format!(
            "[{:>5.0}s] devices online {}/{} | {:>7} rec/s | stored {} | predictions {} ({}), {} decided by the hub | duplicates {} | rejected {} | p50 {:.1} ms",
            started.elapsed().as_secs_f64(),
            stats.devices_online,
            args.agents,
            now_count - last_count,
            now_count,
            tally.predictions,
            tally.accuracy_text(),
            by_hub,
            stats.records_duplicate,
            stats.payloads_rejected,
            stats.latency.p50_us as f64 / 1000.0,
        );
        let line = if running.is_empty() {
            line
        } else {
            format!(
                "{line} | watches run {}",
                update::distribution(running.iter().map(String::as_str))
            )
        };
        last_count = now_count;
        if tty {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("{line}");
            last_print = Instant::now();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || agents.iter().all(|a| a.exit.is_some())
        {
            if tty {
                eprintln!();
            }
            break;
        }
    }
    let run_time = started.elapsed().as_secs_f64();

    // An update in flight is seen through before the agents stop, so the
    // summary says how it ended for every watch.
    if let Some(u) = deployed.as_ref().filter(|u| !u.generations.is_empty()) {
        let pending = |agents: &[DemoAgent]| {
            agents
                .iter()
                .filter(|a| {
                    a.updated.is_none()
                        && a.exit.is_none()
                        && u.generations.contains_key(&a.device_id)
                })
                .count()
        };
        let waiting = Instant::now();
        if pending(&agents) > 0 {
            say(
                tty,
                &format!(
                    "OTA: waiting up to {} s for {} watches to report the update",
                    UPDATE_GRACE.as_secs(),
                    pending(&agents)
                ),
            );
        }
        while pending(&agents) > 0 && waiting.elapsed() < UPDATE_GRACE {
            tokio::time::sleep(Duration::from_millis(250)).await;
            follow_update(&mut agents, &state, Some(u), started, tty);
        }
    }

    // Stop the agents: they drain, flush, publish a final heartbeat with
    // their totals and an offline status, then exit.
    for a in &agents {
        if a.exit.is_none() {
            terminate(&a.child);
        }
    }
    for a in agents.iter_mut().filter(|a| a.exit.is_none()) {
        match tokio::time::timeout(Duration::from_secs(10), a.child.wait()).await {
            Ok(Ok(status)) => a.exit = Some(status),
            _ => {
                eprintln!("agent {} did not stop within 10 s; killing it", a.device_id);
                let _ = a.child.kill().await;
                a.exit = a.child.wait().await.ok();
            }
        }
    }
    // Let ingest and the hub's models catch up with what is in flight.
    let progress = || {
        (
            cloud_hub::api::stats_of(&state).records_received,
            state.metrics.results_published.get(),
        )
    };
    let settle = Instant::now();
    let mut stable_since = Instant::now();
    let mut last = progress();
    while settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = progress();
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }

    let stats = cloud_hub::api::stats_of(&state);
    let registry = state.registry().list(conveyor_shared::time::now_us());
    let devices: Vec<DeviceSummary> = agents
        .iter()
        .map(|a| {
            let entry = registry.iter().find(|v| v.entry.device_id == a.device_id);
            let hb = entry
                .and_then(|v| v.entry.last_heartbeat.clone())
                .unwrap_or_default();
            let sent = hb.records_produced;
            let received = entry.map_or(0, |v| v.entry.records);
            let dropped = hb.log_dropped_full + hb.log_dropped_age;
            let tally = entry
                .map(|v| prediction_totals(std::slice::from_ref(v)))
                .unwrap_or_default();
            DeviceSummary {
                transport: a.transport,
                device_id: a.device_id.clone(),
                stream: a.stream.to_string(),
                sent,
                received,
                dropped_by_agent: dropped,
                left_in_agent_log: hb.log_records,
                lost: sent.saturating_sub(received + dropped + hb.log_records),
                duplicated: entry.map_or(0, |v| v.entry.duplicates),
                model: tally.models.join(", "),
                predictions: tally.predictions,
                predictions_scored: tally.scored,
                predictions_correct: tally.correct,
                finals: entry.map(|v| v.entry.finals.clone()).unwrap_or_default(),
                running: update::report(
                    &state,
                    &a.device_id,
                    &format!("{}-classifier", a.stream),
                    None,
                )
                .0,
                updated_after_s: a.updated.clone().and_then(Result::ok),
            }
        })
        .collect();
    let agents_failed = agents
        .iter()
        .filter(|a| !a.exit.is_some_and(|s| s.success()))
        .count();
    for a in agents
        .iter()
        .filter(|a| !a.exit.is_some_and(|s| s.success()))
    {
        eprintln!(
            "agent {} failed ({:?}); its log ends:\n{}",
            a.device_id,
            a.exit,
            tail(&a.log, 10)
        );
    }
    let summary = Summary {
        agents: args.agents,
        broker: state.broker_mode,
        transport: args.transport,
        duration_s: run_time,
        records_sent: devices.iter().map(|d| d.sent).sum(),
        records_received: devices.iter().map(|d| d.received).sum(),
        records_dropped_by_agents: devices.iter().map(|d| d.dropped_by_agent).sum(),
        records_left_in_agent_logs: devices.iter().map(|d| d.left_in_agent_log).sum(),
        records_lost: devices.iter().map(|d| d.lost).sum(),
        records_duplicated: devices.iter().map(|d| d.duplicated).sum(),
        ingest_records_per_sec: stats.records_received as f64 / run_time,
        latency_p50_ms: stats.latency.p50_us as f64 / 1000.0,
        latency_p99_ms: stats.latency.p99_us as f64 / 1000.0,
        payloads_rejected: stats.payloads_rejected,
        agents_failed,
        predictions: devices.iter().map(|d| d.predictions).sum(),
        predictions_scored: devices.iter().map(|d| d.predictions_scored).sum(),
        predictions_correct: devices.iter().map(|d| d.predictions_correct).sum(),
        final_results: devices.iter().map(|d| d.finals.results).sum(),
        final_by_hub: devices.iter().map(|d| d.finals.by_hub).sum(),
        final_scored: devices.iter().map(|d| d.finals.scored).sum(),
        final_correct: devices.iter().map(|d| d.finals.correct).sum(),
        update: deployed.map(|mut u| {
            u.applied = agents
                .iter()
                .filter(|a| matches!(a.updated, Some(Ok(_))))
                .count();
            u.failed
                .extend(agents.iter().filter_map(|a| match &a.updated {
                    Some(Err(reason)) => Some((a.device_id.clone(), reason.clone())),
                    _ => None,
                }));
            u
        }),
        devices,
        cascade_report: None,
    };
    hub.shutdown().await;
    drop(cluster);
    let mut summary = summary;
    if !args.no_inference {
        let thresholds = cloud_hub::cascade::report::DEFAULT_THRESHOLDS;
        match cloud_hub::cascade::report::evaluate(&data.join(".."), &data, &thresholds) {
            Ok(report) => summary.cascade_report = Some(report),
            Err(e) => eprintln!("cascade report: {e:#}"),
        }
    }
    Ok(summary)
}

/// Edge predictions over some devices.
#[derive(Debug, Default)]
struct PredictionTotals {
    models: Vec<String>,
    predictions: u64,
    scored: u64,
    correct: u64,
}

impl PredictionTotals {
    fn accuracy_text(&self) -> String {
        if self.scored == 0 {
            "no labelled windows yet".into()
        } else {
            format!(
                "{:.1}% right",
                100.0 * self.correct as f64 / self.scored as f64
            )
        }
    }
}

fn prediction_totals(devices: &[cloud_hub::registry::DeviceView]) -> PredictionTotals {
    let mut t = PredictionTotals::default();
    for (model, tally) in devices.iter().flat_map(|d| &d.entry.predictions) {
        t.models.push(model.clone());
        t.predictions += tally.predictions;
        t.scored += tally.scored;
        t.correct += tally.correct;
    }
    t
}

pub fn print_summary(s: &Summary) {
    eprintln!(
        "Summary: {} agents, {:.1} s: sent {}, received {}, dropped by agents {}, left in agent logs {}, lost {}, duplicated {}; {:.0} records/s; latency p50 {:.1} ms, p99 {:.1} ms",
        s.agents,
        s.duration_s,
        s.records_sent,
        s.records_received,
        s.records_dropped_by_agents,
        s.records_left_in_agent_logs,
        s.records_lost,
        s.records_duplicated,
        s.ingest_records_per_sec,
        s.latency_p50_ms,
        s.latency_p99_ms
    );
    if s.transport != Transport::Mqtt {
        let over = |t: &str| s.devices.iter().filter(|d| d.transport == t).count();
        eprintln!(
            "  {} agents streamed over Fluvio, {} over MQTT, to the one hub",
            over("fluvio"),
            over("mqtt")
        );
    }
    for d in s.devices.iter().filter(|d| d.predictions > 0) {
        eprintln!(
            "  {}: {} edge predictions by {}, {}/{} right on labelled test windows; \
             final: {} results, {} decided by the hub model{}, {}/{} right",
            d.device_id,
            d.predictions,
            d.model,
            d.predictions_correct,
            d.predictions_scored,
            d.finals.results,
            d.finals.by_hub,
            if d.finals.hub_errors > 0 {
                format!(" ({} hub errors)", d.finals.hub_errors)
            } else {
                String::new()
            },
            d.finals.correct,
            d.finals.scored,
        );
    }
    if let Some(u) = &s.update {
        let switched: Vec<String> = s
            .devices
            .iter()
            .filter_map(|d| Some(format!("{} at {:.1} s", d.device_id, d.updated_after_s?)))
            .collect();
        eprintln!(
            "Over the air: {} deployed at {:.1} s to {} watches; {} switched ({}){}; records lost across the switch: {}",
            u.artifact,
            u.deployed_after_s,
            u.generations.len(),
            u.applied,
            if switched.is_empty() { "none".to_string() } else { switched.join(", ") },
            if u.failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {:?}", u.failed)
            },
            s.records_lost,
        );
    }
    if let Some(report) = &s.cascade_report {
        eprintln!();
        eprintln!("Cascade on the whole held-out test splits (`cloud-hub cascade-report`):");
        eprint!("{}", cloud_hub::cascade::report::render_table(report));
    }
}
