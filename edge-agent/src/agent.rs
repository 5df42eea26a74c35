//! Assembles a running agent from its config: sources -> pipeline ->
//! uplink, wired by bounded channels. The pipeline, when it has stages,
//! runs on a thread of its own: a model call is CPU work that must not
//! hold up the uplink's event handling.
//!
//! `Agent::build` does everything that can fail because of the config
//! (parsing recordings, building stages, opening the state dir) without
//! binding a port or connecting anywhere, so `check` and `run` share it
//! and `run` fails fast, before any network I/O, on a bad config.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::{AgentConfig, ConfigError, ConfigErrors};
use crate::log::{DurableLog, LogError};
use crate::ota::{OtaShared, Reconciler};
use crate::pipeline::{Pipeline, StageConfig, StageContext, StageHandle, StageStorage};
use crate::reload::Reloader;
use crate::sources::{Reading, Source, SourceContext, SourceCounters, SourceOutput};
use crate::uplink::{Uplink, UplinkError, UplinkOta, UplinkSummary};

/// Readings buffered between the sources and the uplink.
const PIPELINE_CAPACITY: usize = 4096;
/// Readings the pipeline thread takes per wake-up.
const PIPELINE_CHUNK: usize = 256;

pub struct Agent {
    /// The running config: `agent.toml` with the hub's applied updates
    /// laid over it.
    config: AgentConfig,
    sources: Vec<Box<dyn Source>>,
    pipeline: Pipeline,
    stages: Vec<StageHandle>,
    storage: StageStorage,
    reloader: Reloader,
    /// Over-the-air updates (`[ota]`).
    ota: Option<Arc<OtaShared>>,
    /// The device's secret (`uplink.password_file`).
    secret: Option<String>,
    /// The CA the hub is checked against (`uplink.ca_file`).
    tls: Option<conveyor_transport::tls::ClientTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
}

impl Agent {
    /// Builds every source and stage of a validated config. Reports every
    /// one that cannot be built (a file that does not load, a model that
    /// does not fit its source), not just the first.
    pub fn build(config: AgentConfig) -> Result<Self, ConfigErrors> {
        let ota = crate::ota::shared_for(&config);
        let Some(shared) = ota else {
            return Self::build_effective(config, None);
        };
        let effective = shared.effective(&config);
        if effective == config {
            return Self::build_effective(config, Some(shared));
        }
        match Self::build_effective(effective, Some(shared.clone())) {
            Ok(agent) => Ok(agent),
            Err(e) => {
                // What the hub applied does not build any more: run the
                // file, and let the hub's desired state bring it back.
                tracing::error!(
                    "the artifacts the hub applied do not build, running agent.toml's: {e}"
                );
                shared.forget_applied();
                Self::build_effective(config, Some(shared))
            }
        }
    }

    fn build_effective(
        config: AgentConfig,
        ota: Option<Arc<OtaShared>>,
    ) -> Result<Self, ConfigErrors> {
        let ctx = SourceContext {
            device_id: config.device_id.clone(),
        };
        let mut found = Vec::new();
        let mut sources = Vec::new();
        for (i, s) in config.sources.iter().enumerate() {
            match s.build(&format!("sources[{i}]"), &ctx) {
                Ok(source) => sources.push(source),
                Err(e) => found.push(e),
            }
        }
        let secret = match config.uplink.secret() {
            Ok(s) => s,
            Err(e) => {
                found.push(e);
                None
            }
        };
        let tls = match config.uplink.tls() {
            Ok(t) => t,
            Err(e) => {
                found.push(e);
                None
            }
        };
        let ctx = StageContext::new(&config.data_dir);
        let storage = ctx.storage();
        let built = Pipeline::build(&config.stages, &ctx);
        let (pipeline, stages) = match built {
            Ok(built) if found.is_empty() => built,
            // The sources' problems and the stages' together; whether the
            // stages fit the sources needs both built.
            other => {
                ConfigErrors::gather(other.map(|_| ()), &mut found);
                return Err(ConfigErrors::Invalid(found));
            }
        };
        check_stage_inputs(&config, &sources, &stages)?;
        Ok(Agent {
            reloader: Reloader::new(config.clone(), stages.clone()),
            config,
            sources,
            pipeline,
            stages,
            storage,
            ota,
            secret,
            tls,
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The built stages (their running models, counters).
    pub fn stages(&self) -> &[StageHandle] {
        &self.stages
    }

    /// A handle that applies a changed config to this agent while it runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The OTA state shared with the SIGHUP reload (`None` without `[ota]`).
    pub fn ota(&self) -> Option<Arc<OtaShared>> {
        self.ota.clone()
    }

    /// Runs until every source has finished or `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<UplinkSummary, AgentError> {
        let Agent {
            config,
            sources,
            pipeline,
            stages,
            storage,
            reloader,
            ota,
            secret,
            tls,
        } = self;
        let log = DurableLog::open(&config.data_dir.join("log"), config.log.clone())?;
        if log.stats().records > 0 {
            tracing::info!(
                records = log.stats().records,
                "resuming with records not yet acknowledged by the hub"
            );
        }
        let (tx, rx) = mpsc::channel(PIPELINE_CAPACITY);
        let mut counters = Vec::new();
        let mut tasks = Vec::new();
        for (source, cfg) in sources.into_iter().zip(&config.sources) {
            let c = Arc::new(SourceCounters::default());
            counters.push((cfg.name().to_string(), c.clone()));
            let out = SourceOutput::new(cfg.name(), cfg.stream(), tx.clone(), c);
            tasks.push(tokio::spawn(source.run(out, shutdown.clone())));
        }
        // Only the sources hold senders now: when the last one finishes,
        // the uplink sees the channel close and shuts down.
        drop(tx);
        let rx = if pipeline.is_empty() {
            rx
        } else {
            spawn_pipeline(pipeline, rx)
        };
        tracing::info!(
            device = %config.device_id,
            sources = counters.len(),
            hub = %config.uplink.url,
            "edge agent running"
        );
        let ota = ota.map(|shared| {
            let (reconciler, state) = Reconciler::new(shared, reloader, stages.clone());
            let (desired, inbox) = mpsc::unbounded_channel();
            tokio::spawn(reconciler.run(inbox));
            UplinkOta { desired, state }
        });
        let uplink = Uplink {
            ota,
            config: config.uplink.clone(),
            device: config.device_id.clone(),
            stages: stages.iter().map(|s| s.monitor.clone()).collect(),
            log,
            sources: counters,
            storage,
            secret,
            tls,
        };
        let summary = uplink.run(rx, shutdown).await?;
        for task in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => tracing::error!("source task panicked: {e}"),
            }
        }
        Ok(summary)
    }
}

/// Runs the pipeline on its own thread between the sources' channel and a
/// new one to the uplink. It ends when the sources' channel closes (every
/// source finished) or the uplink is gone.
fn spawn_pipeline(
    mut pipeline: Pipeline,
    mut rx: mpsc::Receiver<Reading>,
) -> mpsc::Receiver<Reading> {
    let (tx, out_rx) = mpsc::channel(PIPELINE_CAPACITY);
    let spawned = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let mut chunk = Vec::with_capacity(PIPELINE_CHUNK);
            let mut out = Vec::new();
            while rx.blocking_recv_many(&mut chunk, PIPELINE_CHUNK) > 0 {
                pipeline.process_batch(std::mem::take(&mut chunk), &mut out);
                for reading in out.drain(..) {
                    if tx.blocking_send(reading).is_err() {
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread the channel closes at once and the agent
        // stops with its log intact; nothing is lost.
        tracing::error!("cannot start the pipeline thread: {e}");
    }
    out_rx
}

/// Refuses a config whose inference stages would read a source of another
/// shape, where the source knows its shape (replayed files do); names
/// every such stage.
fn check_stage_inputs(
    config: &AgentConfig,
    sources: &[Box<dyn Source>],
    stages: &[StageHandle],
) -> Result<(), ConfigErrors> {
    let mut found = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let (StageConfig::Inference(c), Some(slot)) = (&stage.config, stage.model_slot()) else {
            continue;
        };
        let model = slot.current();
        let meta = model.meta();
        for (source, source_config) in sources.iter().zip(&config.sources) {
            let stream = source_config.stream();
            if c.stream.as_deref().is_some_and(|s| s != stream) {
                continue;
            }
            if let Some(channels) = source.channels() {
                if channels != meta.channels {
                    found.push(ConfigError::invalid(
                        format!("stages[{i}].model"),
                        format!(
                            "model {}@{} takes {} channels per reading but source {:?} (stream {:?}) gives {}",
                            meta.id,
                            meta.version,
                            meta.channels,
                            source_config.name(),
                            stream,
                            channels
                        ),
                    ));
                }
            }
        }
    }
    ConfigErrors::check(found)
}
