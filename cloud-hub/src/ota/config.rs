//! `[ota]` in hub.toml: where the signing key is, and how large an
//! artifact may be. Every field has a default, so a hub without the
//! section signs with `<store.path>/signing.key`, made on first start.

use std::path::{Path, PathBuf};

use conveyor_shared::config_file::ConfigError;
use serde::Deserialize;

/// The largest `max_artifact_bytes` accepted: a push is held on disk
/// while it is checked, and an agent downloads it whole.
pub const MAX_ARTIFACT_BYTES_LIMIT: u64 = 16 << 30;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaConfig {
    /// The ed25519 key artifacts and desired states are signed with
    /// (default `<store.path>/signing.key`, made on first start). Relative
    /// to the config file.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Largest artifact (all its files together) a push may carry, bytes.
    #[serde(default = "default_max_artifact_bytes")]
    pub max_artifact_bytes: u64,
}

fn default_max_artifact_bytes() -> u64 {
    256 << 20
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            signing_key: None,
            max_artifact_bytes: default_max_artifact_bytes(),
        }
    }
}

impl OtaConfig {
    /// The key file, given the store's directory.
    pub fn key_path(&self, store_dir: &Path) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| store_dir.join("signing.key"))
    }

    /// Adds the section's problems to `found`.
    pub fn validate(&self, found: &mut Vec<ConfigError>) {
        if self.max_artifact_bytes == 0 || self.max_artifact_bytes > MAX_ARTIFACT_BYTES_LIMIT {
            found.push(ConfigError::invalid(
                "ota.max_artifact_bytes",
                format!("must be between 1 and {MAX_ARTIFACT_BYTES_LIMIT} (16 GiB)"),
            ));
        }
        if self
            .signing_key
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            found.push(ConfigError::invalid(
                "ota.signing_key",
                "must not be empty (leave it out for <store.path>/signing.key)",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::HubConfig;

    #[test]
    fn defaults_and_errors_name_the_field() {
        let c = HubConfig::from_toml("").unwrap();
        assert_eq!(c.ota.max_artifact_bytes, 256 << 20);
        assert_eq!(
            c.ota.key_path(std::path::Path::new("/data")),
            std::path::Path::new("/data/signing.key")
        );
        let c =
            HubConfig::from_toml("[ota]\nsigning_key = \"k\"\nmax_artifact_bytes = 10\n").unwrap();
        assert_eq!(c.ota.max_artifact_bytes, 10);
        let e = HubConfig::from_toml("[ota]\nmax_artifact_bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ota.max_artifact_bytes"), "{e}");
        let e = HubConfig::from_toml("[ota]\nsigning_key = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ota.signing_key"), "{e}");
        let e = HubConfig::from_toml("[ota]\nkey = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `key`"), "{e}");
    }
}
