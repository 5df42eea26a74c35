//! An artifact's manifest: what a model or a transform is made of, signed
//! by the hub, and what its id is.
//!
//! The id is the SHA-256 of the manifest's payload (the exact JSON text
//! that was signed), so an id names one set of files with one set of
//! digests, and the files are checked against the manifest, not against
//! a name.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::sign::{Envelope, KeyId, PublicKey, SecretKey, VerifyError};

/// The payload type manifests are signed as.
pub const MANIFEST_TYPE: &str = "application/vnd.conveyor.artifact-manifest+json";
/// Most files one artifact has (a model has two: metadata and ONNX).
pub const MAX_FILES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// An inference model: its metadata JSON and its ONNX file.
    Model,
    /// A WASM transform: its `.wasm` module.
    Transform,
}

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactFile {
    /// A plain file name (no directories): how the agent names it.
    pub name: String,
    /// SHA-256 of its bytes, 64 lowercase hex digits.
    pub sha256: String,
    pub size: u64,
}

/// What the running stage must offer for the artifact to fit, checked by
/// the agent before it applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// A model's input: channels per reading and readings per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_input: Option<ModelInput>,
    /// The transform ABI version a module was built for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform_abi: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInput {
    pub channels: usize,
    pub window: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactManifest {
    pub kind: ArtifactKind,
    pub name: String,
    pub version: String,
    pub files: Vec<ArtifactFile>,
    #[serde(default)]
    pub requires: Requires,
    /// When it was pushed, µs since the Unix epoch.
    pub created_at_us: i64,
}

/// The SHA-256 of a manifest's payload, hex: the artifact's id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArtifactId(String);

impl ArtifactId {
    pub fn of_payload(payload: &str) -> ArtifactId {
        ArtifactId(hex::encode(Sha256::digest(payload.as_bytes())))
    }

    /// An id as written in a desired state or a URL: 64 lowercase hex.
    pub fn parse(s: &str) -> Result<ArtifactId, ManifestError> {
        if is_sha256_hex(s) {
            Ok(ArtifactId(s.to_string()))
        } else {
            Err(ManifestError::Invalid {
                field: "id".into(),
                why: "must be 64 lowercase hex digits".into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("manifest field {field}: {why}")]
    Invalid { field: String, why: String },
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Names and versions: what a file name, a URL segment and a log line can
/// all carry.
fn is_plain_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

impl ArtifactManifest {
    /// Checks every field; names the first that is wrong.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field: &str, why: &str| {
            Err(ManifestError::Invalid {
                field: field.into(),
                why: why.into(),
            })
        };
        if !is_plain_name(&self.name, 64) {
            return invalid("name", "1-64 of A-Z a-z 0-9 . _ - +, not starting with .");
        }
        if !is_plain_name(&self.version, 64) {
            return invalid(
                "version",
                "1-64 of A-Z a-z 0-9 . _ - +, not starting with .",
            );
        }
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            return invalid("files", &format!("must list 1 to {MAX_FILES} files"));
        }
        for (i, f) in self.files.iter().enumerate() {
            if !is_plain_name(&f.name, 128) {
                return invalid(
                    &format!("files[{i}].name"),
                    "a plain file name, no directories",
                );
            }
            if !is_sha256_hex(&f.sha256) {
                return invalid(
                    &format!("files[{i}].sha256"),
                    "must be 64 lowercase hex digits",
                );
            }
            if self.files[..i].iter().any(|g| g.name == f.name) {
                return invalid(&format!("files[{i}].name"), "listed twice");
            }
        }
        Ok(())
    }

    /// The payload to sign: the manifest as JSON text.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("a manifest serialises")
    }

    pub fn from_payload(payload: &str) -> Result<Self, ManifestError> {
        let m: ArtifactManifest =
            serde_json::from_str(payload).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Signs the manifest: the envelope the hub stores and serves, and the
    /// artifact's id.
    pub fn sign(&self, key: &SecretKey) -> Result<SignedManifest, ManifestError> {
        self.validate()?;
        let payload = self.to_payload();
        let id = ArtifactId::of_payload(&payload);
        Ok(SignedManifest {
            envelope: Envelope::sign(MANIFEST_TYPE, payload, key),
            manifest: self.clone(),
            id,
            signed_by: key.public().id(),
        })
    }

    pub fn file(&self, name: &str) -> Option<&ArtifactFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// A transform's module: its one `.wasm` file.
    pub fn module_file(&self) -> Option<&ArtifactFile> {
        self.files.iter().find(|f| f.name.ends_with(".wasm"))
    }

    /// The hub's precompiled code of the module for `target`, if the hub
    /// made it.
    pub fn precompiled_file(&self, target: &str) -> Option<&ArtifactFile> {
        let module = self.module_file()?;
        self.file(&precompiled_file_name(&module.name, target))
    }
}

/// The extension of a module's precompiled code.
pub const PRECOMPILED_EXT: &str = ".cwasm";

/// Where the hub puts a module's code precompiled for one target, beside
/// the module: `<stem>.<target>.cwasm` (`filter.wasm` for aarch64 agents:
/// `filter.aarch64-unknown-linux-gnu.cwasm`). The agent looks for this
/// name beside the module it loads; a plain file name as long as the
/// module's name and the target are.
pub fn precompiled_file_name(module: &str, target: &str) -> String {
    let stem = module.strip_suffix(".wasm").unwrap_or(module);
    format!("{stem}.{target}{PRECOMPILED_EXT}")
}

/// Whether a manifest file is precompiled code (made by the hub, not
/// pushed).
pub fn is_precompiled(name: &str) -> bool {
    name.ends_with(PRECOMPILED_EXT)
}

/// A manifest whose signature was checked (or just made).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedManifest {
    pub envelope: Envelope,
    pub manifest: ArtifactManifest,
    pub id: ArtifactId,
    pub signed_by: KeyId,
}

impl SignedManifest {
    /// Decodes an envelope and checks that a trusted key signed a valid
    /// manifest in it.
    pub fn open(bytes: &[u8], trusted: &[PublicKey]) -> Result<SignedManifest, ManifestError> {
        let envelope = Envelope::decode(bytes)?;
        let (payload, signed_by) = envelope.verify(MANIFEST_TYPE, trusted)?;
        let manifest = ArtifactManifest::from_payload(payload)?;
        let id = ArtifactId::of_payload(payload);
        Ok(SignedManifest {
            manifest,
            id,
            signed_by,
            envelope,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn model_manifest() -> ArtifactManifest {
        ArtifactManifest {
            kind: ArtifactKind::Model,
            name: "basicmotions-edge".into(),
            version: "2".into(),
            files: vec![
                ArtifactFile {
                    name: "edge.int8.json".into(),
                    sha256: "a".repeat(64),
                    size: 900,
                },
                ArtifactFile {
                    name: "edge.int8.onnx".into(),
                    sha256: "b".repeat(64),
                    size: 40_000,
                },
            ],
            requires: Requires {
                model_input: Some(ModelInput {
                    channels: 6,
                    window: 100,
                }),
                transform_abi: None,
            },
            created_at_us: 1,
        }
    }

    #[test]
    fn a_transform_s_precompiled_code_is_found_by_target_and_its_name_is_valid() {
        let file = |name: &str| ArtifactFile {
            name: name.into(),
            sha256: "c".repeat(64),
            size: 10,
        };
        let target = "aarch64-unknown-linux-gnu";
        let name = precompiled_file_name("filter.wasm", target);
        assert_eq!(name, "filter.aarch64-unknown-linux-gnu.cwasm");
        assert!(is_precompiled(&name) && !is_precompiled("filter.wasm"));
        let m = ArtifactManifest {
            kind: ArtifactKind::Transform,
            name: "filter".into(),
            version: "1".into(),
            files: vec![file("filter.wasm"), file(&name)],
            requires: Requires::default(),
            created_at_us: 1,
        };
        m.validate().unwrap();
        assert_eq!(m.module_file().unwrap().name, "filter.wasm");
        assert_eq!(m.precompiled_file(target).unwrap().name, name);
        assert!(m.precompiled_file("x86_64-unknown-linux-gnu").is_none());
    }

    #[test]
    fn a_signed_manifest_opens_with_its_id_and_signer() {
        let key = SecretKey::from_seed([3; 32]);
        let signed = model_manifest().sign(&key).unwrap();
        let opened = SignedManifest::open(&signed.envelope.encode(), &[key.public()]).unwrap();
        assert_eq!(opened, signed);
        assert_eq!(opened.id, ArtifactId::of_payload(&signed.envelope.payload));
        assert_eq!(opened.signed_by, key.public().id());
        assert!(ArtifactId::parse(opened.id.as_str()).is_ok());
        assert_eq!(opened.manifest.file("edge.int8.onnx").unwrap().size, 40_000);
    }

    #[test]
    fn every_field_is_checked_and_named() {
        type Spoil = fn(&mut ArtifactManifest);
        let cases: [(Spoil, &str); 6] = [
            (|m| m.name = "../etc".into(), "name"),
            (|m| m.version.clear(), "version"),
            (|m| m.files.clear(), "files"),
            (|m| m.files[0].name = "dir/file".into(), "files[0].name"),
            (|m| m.files[1].sha256 = "B".repeat(64), "files[1].sha256"),
            (
                |m| m.files[1].name = m.files[0].name.clone(),
                "files[1].name",
            ),
        ];
        for (spoil, field) in cases {
            let mut m = model_manifest();
            spoil(&mut m);
            match m.validate() {
                Err(ManifestError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
            assert!(
                m.sign(&SecretKey::from_seed([3; 32])).is_err(),
                "never signed"
            );
        }
    }

    #[test]
    fn a_manifest_signed_by_an_untrusted_key_is_refused() {
        let signed = model_manifest()
            .sign(&SecretKey::from_seed([3; 32]))
            .unwrap();
        let trusted = [SecretKey::from_seed([4; 32]).public()];
        assert!(matches!(
            SignedManifest::open(&signed.envelope.encode(), &trusted),
            Err(ManifestError::Verify(VerifyError::UnknownKey(_)))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SignedManifest::open(&bytes, &[SecretKey::from_seed([3; 32]).public()]);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = ArtifactManifest::from_payload(s);
            }
        }
    }
}
