//! Assembles a running agent from its config: sources -> pipeline ->
//! uplink, wired by one bounded channel.
//!
//! `Agent::build` does everything that can fail because of the config
//! (parsing recordings, building stages, opening the state dir) without
//! binding a port or connecting anywhere, so `check` and `run` share it
//! and `run` fails fast, before any network I/O, on a bad config.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::{AgentConfig, ConfigError};
use crate::log::{DurableLog, LogError};
use crate::pipeline::Pipeline;
use crate::sources::{Source, SourceContext, SourceCounters, SourceOutput};
use crate::uplink::{Uplink, UplinkError, UplinkSummary};

/// Readings buffered between the sources and the uplink.
const PIPELINE_CAPACITY: usize = 4096;

pub struct Agent {
    config: AgentConfig,
    sources: Vec<Box<dyn Source>>,
    pipeline: Pipeline,
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
    pub fn build(config: AgentConfig) -> Result<Self, ConfigError> {
        let ctx = SourceContext {
            device_id: config.device_id.clone(),
        };
        let sources = config
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| s.build(&format!("sources[{i}]"), &ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let pipeline = Pipeline::build(&config.stages)?;
        Ok(Agent {
            config,
            sources,
            pipeline,
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Runs until every source has finished or `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<UplinkSummary, AgentError> {
        let Agent {
            config,
            sources,
            pipeline,
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
        tracing::info!(
            device = %config.device_id,
            sources = counters.len(),
            hub = %config.uplink.url,
            "edge agent running"
        );
        let uplink = Uplink {
            config: config.uplink.clone(),
            device: config.device_id.clone(),
            pipeline,
            log,
            sources: counters,
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
