//! The wire types of over-the-air updates (hub -> agent): signed artifact
//! manifests and signed desired states.
//!
//! - [`sign`]: ed25519 keys and the DSSE-shaped envelope every signed
//!   document travels in (the payload type is signed with the payload).
//! - [`manifest`]: what an artifact (a model, a transform) is made of; its
//!   id is the digest of the signed manifest.
//! - [`desired`]: what the hub wants a device to run, per stage, with a
//!   generation that only grows (rollback protection).
//! - [`state`]: the agent's report of what it runs and how the last
//!   change went.
//!
//! Only verification runs on the agent; signing is the hub's. Every
//! decoder returns an error naming what was wrong and never panics
//! (property-tested on garbage).

pub mod desired;
pub mod manifest;
pub mod sign;
pub mod state;

pub use desired::{
    ArtifactRef, ChainLink, DesiredError, DesiredState, Opened, StageTarget, DESIRED_TYPE,
};
pub use manifest::{
    is_precompiled, precompiled_file_name, ArtifactFile, ArtifactId, ArtifactKind,
    ArtifactManifest, ManifestError, ModelInput, Requires, SignedManifest, MANIFEST_TYPE,
    PRECOMPILED_EXT,
};
pub use sign::{Envelope, KeyError, KeyId, PublicKey, SecretKey, VerifyError};
pub use state::{
    bounded_reason, AgentState, Change, Phase, RunningArtifact, StageRunning, StageState,
};
