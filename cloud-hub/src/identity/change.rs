//! Adding and revoking devices and API tokens: each a locked
//! read-modify-write of `identity.json`, the same for `cloud-hub device
//! add` on the store and `POST /api/v1/identities/...` on a running hub.

use std::path::Path;

use conveyor_shared::time::now_us;
use conveyor_shared::DeviceId;

use super::file::{self, IdentityError};
use super::{secret, ApiToken, DeviceIdentity, Role};

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("device {0} exists: ask for a new secret (rotate; the old one stops working)")]
    DeviceExists(String),
    #[error("no device {0:?}")]
    NoDevice(String),
    #[error("a token named {0:?} exists: revoke it first, or pick another name")]
    TokenExists(String),
    #[error("no token named {0:?}")]
    NoToken(String),
    #[error("token name {0:?}: 1-64 letters, digits, '-', '_', '.' or '@'")]
    BadTokenName(String),
    #[error(transparent)]
    File(#[from] IdentityError),
}

/// Adds `device` (or, with `rotate`, gives it a new secret, which also
/// lifts a revocation): its secret, shown this once.
pub fn add_device(path: &Path, device: &DeviceId, rotate: bool) -> Result<String, ChangeError> {
    let s = secret::new("cvd");
    file::update(path, |ids| {
        if ids.devices.contains_key(device.as_str()) && !rotate {
            return Err(ChangeError::DeviceExists(device.to_string()));
        }
        ids.devices.insert(
            device.to_string(),
            DeviceIdentity {
                secret_sha256: secret::hash(&s),
                created_us: now_us(),
                revoked_us: None,
            },
        );
        Ok(())
    })?;
    Ok(s)
}

/// Revokes `device` (again is no error; the first time stays).
pub fn revoke_device(path: &Path, device: &str) -> Result<(), ChangeError> {
    file::update(path, |ids| {
        let d = ids
            .devices
            .get_mut(device)
            .ok_or_else(|| ChangeError::NoDevice(device.to_string()))?;
        d.revoked_us.get_or_insert(now_us());
        Ok(())
    })
}

fn token_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Makes a token named `name` of `role` (a revoked one of that name is
/// replaced): the token, shown this once.
pub fn create_token(path: &Path, name: &str, role: Role) -> Result<String, ChangeError> {
    if !token_name_ok(name) {
        return Err(ChangeError::BadTokenName(name.chars().take(80).collect()));
    }
    let t = secret::new("cvt");
    file::update(path, |ids| {
        if ids.tokens.get(name).is_some_and(|t| t.revoked_us.is_none()) {
            return Err(ChangeError::TokenExists(name.to_string()));
        }
        ids.tokens.insert(
            name.to_string(),
            ApiToken {
                role,
                token_sha256: secret::hash(&t),
                created_us: now_us(),
                revoked_us: None,
            },
        );
        Ok(())
    })?;
    Ok(t)
}

pub fn revoke_token(path: &Path, name: &str) -> Result<(), ChangeError> {
    file::update(path, |ids| {
        let t = ids
            .tokens
            .get_mut(name)
            .ok_or_else(|| ChangeError::NoToken(name.to_string()))?;
        t.revoked_us.get_or_insert(now_us());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_tokens_are_added_once_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let p = file::path(dir.path());
        let d = DeviceId::new("d").unwrap();
        let s1 = add_device(&p, &d, false).unwrap();
        assert!(matches!(
            add_device(&p, &d, false),
            Err(ChangeError::DeviceExists(_))
        ));
        revoke_device(&p, "d").unwrap();
        assert!(file::read(&p).unwrap().device("d", &s1).is_err());
        let s2 = add_device(&p, &d, true).unwrap();
        assert!(
            file::read(&p).unwrap().device("d", &s2).is_ok(),
            "rotated: back in"
        );
        assert!(matches!(
            revoke_device(&p, "e"),
            Err(ChangeError::NoDevice(_))
        ));

        let t = create_token(&p, "ops", Role::Operator).unwrap();
        assert!(matches!(
            create_token(&p, "ops", Role::Viewer),
            Err(ChangeError::TokenExists(_))
        ));
        assert!(matches!(
            create_token(&p, "no spaces", Role::Viewer),
            Err(ChangeError::BadTokenName(_))
        ));
        assert_eq!(
            file::read(&p).unwrap().token(&t),
            Some(("ops", Role::Operator))
        );
        revoke_token(&p, "ops").unwrap();
        assert_eq!(file::read(&p).unwrap().token(&t), None);
        // A revoked name can be made again.
        create_token(&p, "ops", Role::Viewer).unwrap();
    }
}
