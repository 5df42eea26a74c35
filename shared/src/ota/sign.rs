//! Signing and verifying what the hub sends for agents to run: ed25519
//! keys, and the envelope a signed document travels in.
//!
//! The envelope has the shape of DSSE (the Dead Simple Signing Envelope of
//! in-toto and Sigstore): a payload type, the payload, and signatures over
//! `"DSSEv1" SP len(type) SP type SP len(payload) SP payload` (the
//! pre-authentication encoding, PAE). Signing the type with the payload
//! means a signature made for one kind of document (an artifact manifest)
//! can never be passed off as another (a desired state). Our payloads are
//! JSON, so the payload is carried as a JSON string instead of base64:
//! the envelope stays readable on `mosquitto_sub`, and the signed bytes are
//! exactly the string's UTF-8 bytes.
//!
//! Verification uses `verify_strict` (no small-order keys, no malleable
//! signatures), and a signature counts only if its key is one the verifier
//! trusts: more than one may be, so a key can be rotated.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The longest envelope accepted, bytes: desired states and manifests are
/// a few KiB; anything near this is not one.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;

/// A public key's id: the first 8 bytes of its SHA-256, hex. Says which key
/// signed, so a verifier with several keys tries the right one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key an agent trusts, written `ed25519:<64 hex digits>` (in
/// `agent.toml`, and as `cloud-hub keys` prints it).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn id(&self) -> KeyId {
        KeyId(hex::encode(&Sha256::digest(self.0.as_bytes())[..8]))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0.as_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("a public key is written ed25519:<64 hex digits>, got {0:?}")]
    PublicFormat(String),
    #[error("not a valid ed25519 public key: {0}")]
    PublicInvalid(String),
    #[error("a secret key file holds one line, conveyor-ed25519-secret-v1 <64 hex digits>")]
    SecretFormat,
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = s
            .trim()
            .strip_prefix("ed25519:")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| KeyError::PublicFormat(s.chars().take(80).collect()))?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError::PublicInvalid(e.to_string()))?;
        if key.is_weak() {
            return Err(KeyError::PublicInvalid("a weak (small-order) key".into()));
        }
        Ok(PublicKey(key))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The hub's signing key. Made from 32 random bytes (the caller's CSPRNG);
/// its file form is one line, `conveyor-ed25519-secret-v1 <hex>`.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

const SECRET_PREFIX: &str = "conveyor-ed25519-secret-v1 ";

impl SecretKey {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The file form (keep it private: whoever has it can sign).
    pub fn to_file_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let seed = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(KeyError::SecretFormat)?;
        Ok(SecretKey::from_seed(seed))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    pub keyid: KeyId,
    /// 64 bytes, hex.
    pub sig: String,
}

/// A signed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub payload_type: String,
    /// The signed document, exactly as signed (JSON text).
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("malformed signed document: {0}")]
    Malformed(String),
    #[error("signed document is {0} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("expected a signed {expected}, got a {found}")]
    WrongType { expected: String, found: String },
    #[error("not signed")]
    Unsigned,
    #[error("signed by key {0}, which this agent does not trust")]
    UnknownKey(KeyId),
    #[error(
        "the signature by key {0} does not match the document (tampered, or signed by another key)"
    )]
    BadSignature(KeyId),
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(
        format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Signs `payload` (JSON text) as a document of `payload_type`.
    pub fn sign(payload_type: &str, payload: String, key: &SecretKey) -> Envelope {
        let sig = key.0.sign(&pae(payload_type, payload.as_bytes()));
        Envelope {
            payload_type: payload_type.into(),
            payload,
            signatures: vec![EnvelopeSignature {
                keyid: key.public().id(),
                sig: hex::encode(sig.to_bytes()),
            }],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, VerifyError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(VerifyError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed(e.to_string()))
    }

    /// The payload, if it is a `payload_type` document and one signature
    /// is a good one by a `trusted` key; which key signed it.
    pub fn verify(
        &self,
        payload_type: &str,
        trusted: &[PublicKey],
    ) -> Result<(&str, KeyId), VerifyError> {
        if self.payload_type != payload_type {
            return Err(VerifyError::WrongType {
                expected: payload_type.into(),
                found: self.payload_type.chars().take(80).collect(),
            });
        }
        let mut first_error = None;
        for s in &self.signatures {
            let Some(key) = trusted.iter().find(|k| k.id() == s.keyid) else {
                first_error.get_or_insert(VerifyError::UnknownKey(s.keyid.clone()));
                continue;
            };
            let sig = hex::decode(&s.sig)
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| ed25519_dalek::Signature::from_bytes(&b));
            let good = sig.is_some_and(|sig| {
                key.0
                    .verify_strict(&pae(&self.payload_type, self.payload.as_bytes()), &sig)
                    .is_ok()
            });
            if good {
                return Ok((&self.payload, s.keyid.clone()));
            }
            // A bad signature by a trusted key says more than an unknown key.
            first_error = Some(VerifyError::BadSignature(s.keyid.clone()));
        }
        Err(first_error.unwrap_or(VerifyError::Unsigned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    #[test]
    fn signs_and_verifies_with_a_trusted_key_only() {
        let (hub, other) = (key(1), key(2));
        let env = Envelope::sign("t", r#"{"a":1}"#.into(), &hub);
        let decoded = Envelope::decode(&env.encode()).unwrap();
        assert_eq!(decoded, env);
        let (payload, by) = decoded
            .verify("t", &[other.public(), hub.public()])
            .unwrap();
        assert_eq!((payload, by), (r#"{"a":1}"#, hub.public().id()));
        assert_eq!(
            decoded.verify("t", &[other.public()]),
            Err(VerifyError::UnknownKey(hub.public().id()))
        );
        assert!(matches!(
            decoded.verify("u", &[hub.public()]),
            Err(VerifyError::WrongType { .. })
        ));
    }

    #[test]
    fn a_changed_payload_or_a_signature_by_another_key_is_refused() {
        let (hub, other) = (key(1), key(2));
        let mut env = Envelope::sign("t", r#"{"a":1}"#.into(), &hub);
        env.payload = r#"{"a":2}"#.into();
        assert_eq!(
            env.verify("t", &[hub.public()]),
            Err(VerifyError::BadSignature(hub.public().id()))
        );
        // Another key's signature under the hub's key id.
        let mut forged = Envelope::sign("t", r#"{"a":1}"#.into(), &other);
        forged.signatures[0].keyid = hub.public().id();
        assert_eq!(
            forged.verify("t", &[hub.public()]),
            Err(VerifyError::BadSignature(hub.public().id()))
        );
        let mut unsigned = Envelope::sign("t", "{}".into(), &hub);
        unsigned.signatures.clear();
        assert_eq!(
            unsigned.verify("t", &[hub.public()]),
            Err(VerifyError::Unsigned)
        );
    }

    #[test]
    fn the_type_is_signed_too() {
        let hub = key(1);
        let mut env = Envelope::sign("manifest", "{}".into(), &hub);
        env.payload_type = "desired".into();
        assert_eq!(
            env.verify("desired", &[hub.public()]),
            Err(VerifyError::BadSignature(hub.public().id()))
        );
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let k = key(7);
        let public: PublicKey = k.public().to_string().parse().unwrap();
        assert_eq!(public, k.public());
        assert!(public.to_string().starts_with("ed25519:"));
        let again = SecretKey::from_file_text(&k.to_file_text()).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(public.id().as_str().len(), 16);
        for bad in [
            "",
            "ed25519:",
            "ed25519:zz",
            "rsa:00",
            &format!("ed25519:{}", "00".repeat(31)),
        ] {
            assert!(
                matches!(bad.parse::<PublicKey>(), Err(KeyError::PublicFormat(_))),
                "{bad}"
            );
        }
        // The identity point is a small-order key: refused.
        let weak = format!("ed25519:01{}", "00".repeat(31));
        assert!(matches!(
            weak.parse::<PublicKey>(),
            Err(KeyError::PublicInvalid(_))
        ));
        assert_eq!(
            SecretKey::from_file_text("nope").err(),
            Some(KeyError::SecretFormat)
        );
    }

    #[test]
    fn an_oversized_envelope_is_refused_before_parsing() {
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(
            Envelope::decode(&big),
            Err(VerifyError::TooLarge(MAX_ENVELOPE_BYTES + 1))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(env) = Envelope::decode(&bytes) {
                let _ = env.verify(&env.payload_type.clone(), &[key(1).public()]);
            }
        }

        #[test]
        fn any_flipped_byte_of_a_signed_payload_is_caught(
            payload in "[ -~]{1,200}",
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let hub = key(1);
            let env = Envelope::sign("t", payload.clone(), &hub);
            let mut bytes = payload.into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(changed) = String::from_utf8(bytes) {
                let tampered = Envelope { payload: changed, ..env };
                prop_assert!(tampered.verify("t", &[hub.public()]).is_err());
            }
        }
    }
}
