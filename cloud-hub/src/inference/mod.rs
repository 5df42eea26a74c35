//! Hub inference: the heavier models, served to many devices at once.
//!
//! [`config`] is `[inference]` in `hub.toml`; [`backend`] loads a model
//! for a device (tract on the CPU, tract-cuda on a GPU with the `cuda`
//! feature) behind one trait; [`batcher`] is the dynamic batching policy
//! as plain data; [`service`] runs each model behind its batcher and a
//! pool of workers; [`stats`] holds its counters. The cascade (edge
//! predictions escalated to these models, and the results going back out)
//! is in `crate::cascade`.

pub mod backend;
pub mod batcher;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod service;
pub mod stats;

pub use backend::Device;
pub use config::{InferenceConfig, ServedModelConfig};
pub use service::{InferError, InferenceService, ModelView, StartError};
