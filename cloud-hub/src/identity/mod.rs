//! Who may talk to the hub: devices, each with a secret it presents at
//! MQTT connect, and people and programs, each with an API token of a
//! role. Both are kept hashed (SHA-256 of a 256-bit random secret: a
//! slow password hash buys nothing against secrets nobody chose) in one
//! file, `<store>/identity.json` (mode 0600), which `cloud-hub device
//! add|revoke` and `cloud-hub token create|revoke` change and a running
//! hub reads again within a second ([`live`]): a revoked device is cut
//! off, a revoked token refused.
//!
//! - [`config`]: `[broker] auth`, `[broker.limits]`, `[http] auth`,
//!   `insecure`;
//! - [`change`]: adding and revoking devices and tokens, one path for
//!   the CLI and the admin API;
//! - [`file`]: the file, its lock and its atomic rewrite;
//! - [`secret`]: making and hashing secrets;
//! - [`live`]: the hub's copy, and the broker gate's authenticator.

pub mod change;
pub mod config;
pub mod file;
pub mod live;
pub mod secret;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an API token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also deploy, tag, push artifacts, run rollouts.
    Operator,
    /// Also devices, keys and tokens.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// SHA-256 of its secret, hex.
    pub secret_sha256: String,
    pub created_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_us: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub role: Role,
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    pub created_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_us: Option<i64>,
}

/// Everything `identity.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identities {
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceIdentity>,
    /// By the token's name.
    #[serde(default)]
    pub tokens: BTreeMap<String, ApiToken>,
}

impl Identities {
    /// The device `username`'s secret checked against `password`.
    pub fn device(
        &self,
        username: &str,
        password: &str,
    ) -> Result<conveyor_shared::DeviceId, conveyor_transport::mqtt::gate::AuthRefused> {
        use conveyor_transport::mqtt::gate::AuthRefused;
        let d = self.devices.get(username).ok_or(AuthRefused::Unknown)?;
        if !secret::matches(password, &d.secret_sha256) {
            return Err(AuthRefused::Wrong);
        }
        if d.revoked_us.is_some() {
            return Err(AuthRefused::Revoked);
        }
        conveyor_shared::DeviceId::new(username).map_err(|_| AuthRefused::Unknown)
    }

    /// The token `bearer` is, by name, if it is a live one.
    pub fn token(&self, bearer: &str) -> Option<(&str, Role)> {
        self.token_by_hash(&secret::hash(bearer))
    }

    /// The live token whose SHA-256 is `hash`.
    pub fn token_by_hash(&self, hash: &str) -> Option<(&str, Role)> {
        self.tokens
            .iter()
            .find(|(_, t)| t.revoked_us.is_none() && secret::same(&t.token_sha256, hash))
            .map(|(name, t)| (name.as_str(), t.role))
    }

    /// The live device whose secret's SHA-256 is `hash` (a device showing
    /// its secret to the HTTP API, without its id).
    pub fn device_by_hash(&self, hash: &str) -> Option<&str> {
        self.devices
            .iter()
            .find(|(_, d)| d.revoked_us.is_none() && secret::same(&d.secret_sha256, hash))
            .map(|(id, _)| id.as_str())
    }

    /// Devices revoked in `self` that were not in `before`.
    pub fn newly_revoked(&self, before: &Identities) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(id, d)| {
                d.revoked_us.is_some()
                    && before
                        .devices
                        .get(*id)
                        .is_none_or(|b| b.revoked_us.is_none())
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_transport::mqtt::gate::AuthRefused;

    #[test]
    fn a_device_is_its_secret_and_a_revoked_one_is_refused() {
        let s = secret::new("cvd");
        let mut ids = Identities::default();
        ids.devices.insert(
            "store-1".into(),
            DeviceIdentity {
                secret_sha256: secret::hash(&s),
                created_us: 1,
                revoked_us: None,
            },
        );
        assert_eq!(ids.device("store-1", &s).unwrap().as_str(), "store-1");
        assert_eq!(ids.device("store-1", "guess"), Err(AuthRefused::Wrong));
        assert_eq!(ids.device("store-2", &s), Err(AuthRefused::Unknown));
        let before = ids.clone();
        ids.devices.get_mut("store-1").unwrap().revoked_us = Some(2);
        assert_eq!(ids.device("store-1", &s), Err(AuthRefused::Revoked));
        assert_eq!(ids.newly_revoked(&before), vec!["store-1".to_string()]);
        assert!(ids.newly_revoked(&ids).is_empty());
    }

    #[test]
    fn a_token_is_found_by_its_hash_and_a_revoked_one_is_not() {
        let t = secret::new("cvt");
        let mut ids = Identities::default();
        ids.tokens.insert(
            "ops".into(),
            ApiToken {
                role: Role::Operator,
                token_sha256: secret::hash(&t),
                created_us: 1,
                revoked_us: None,
            },
        );
        assert_eq!(ids.token(&t), Some(("ops", Role::Operator)));
        assert_eq!(ids.token("cvt_nope"), None);
        ids.tokens.get_mut("ops").unwrap().revoked_us = Some(3);
        assert_eq!(ids.token(&t), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
