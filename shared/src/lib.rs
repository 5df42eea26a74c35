//! Conveyor's wire protocol and the types both ends share.
//!
//! Everything that crosses the network between an edge agent and the hub is
//! defined here and only here: the MQTT topic layout ([`topics`]), the binary
//! record batches ([`records`]) and final predictions ([`results`]), schema in
//! `shared/proto/conveyor.proto`, and
//! the JSON control messages ([`control`]), and the signed documents of
//! over-the-air updates ([`ota`]). Neither binary defines its own
//! wire types; that keeps the two ends from drifting apart.
//!
//! Decoding never panics: every decoder returns a [`WireError`] naming what
//! was wrong, so a bad payload costs a counter and a log line, not a process.

pub mod broker_url;
pub mod config_file;
pub mod control;
pub mod model_meta;
pub mod ota;
pub mod records;
pub mod results;
pub mod time;
pub mod topics;
pub mod uplink_url;

pub use broker_url::BrokerUrl;
pub use config_file::{ConfigError, ConfigErrors};
pub use model_meta::ModelMetadata;
pub use records::{Escalation, Prediction, Record, RecordBatch, WireError, WIRE_VERSION};
pub use results::{Decider, FinalPrediction, ResultBatch};
pub use topics::{DeviceId, Topic};
pub use uplink_url::{FluvioUrl, UplinkUrl};
