//! The registry on real artifacts: the committed models and transforms.

use std::path::{Path, PathBuf};

use conveyor_shared::ota::{ArtifactKind, SecretKey};
use sha2::{Digest, Sha256};

use super::*;
use crate::ota::check::check;

fn repo() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("..")
}

fn key() -> SecretKey {
    SecretKey::from_seed([9; 32])
}

/// Stages `files` (name, bytes) as a push would.
fn stage(r: &ArtifactRegistry, files: &[(&str, Vec<u8>)]) -> (TempDir, Vec<StagedFile>) {
    let dir = r.staging().unwrap();
    let staged = files
        .iter()
        .map(|(name, bytes)| {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            StagedFile {
                name: name.to_string(),
                sha256: hex::encode(Sha256::digest(bytes)),
                size: bytes.len() as u64,
            }
        })
        .collect();
    (dir, staged)
}

fn push(
    r: &mut ArtifactRegistry,
    files: &[(&str, Vec<u8>)],
) -> Result<(SignedManifest, bool), PushError> {
    let (dir, staged) = stage(r, files);
    let checked = check(dir.path(), &staged)?;
    r.commit(dir.path(), &staged, checked, &key())
}

fn model_files() -> Vec<(&'static str, Vec<u8>)> {
    let dir = repo().join("models/basicmotions");
    vec![
        (
            "edge.int8.json",
            std::fs::read(dir.join("edge.int8.json")).unwrap(),
        ),
        (
            "edge.int8.onnx",
            std::fs::read(dir.join("edge.int8.onnx")).unwrap(),
        ),
    ]
}

fn wasm() -> Vec<(&'static str, Vec<u8>)> {
    let m = std::fs::read(repo().join("transforms/dist/scale.wasm")).unwrap();
    vec![("scale.wasm", m)]
}

fn open(dir: &Path) -> (ArtifactRegistry, Skipped) {
    ArtifactRegistry::open(dir, &key().public()).unwrap()
}

#[test]
fn a_model_and_a_transform_are_checked_signed_stored_and_found() {
    let store = tempfile::tempdir().unwrap();
    let (mut r, _) = open(store.path());
    let (m, new) = push(&mut r, &model_files()).unwrap();
    assert!(new);
    assert_eq!(m.manifest.kind, ArtifactKind::Model);
    let meta: conveyor_shared::ModelMetadata = serde_json::from_slice(&model_files()[0].1).unwrap();
    assert_eq!(
        (&m.manifest.name, &m.manifest.version),
        (&meta.id, &meta.version)
    );
    let input = m.manifest.requires.model_input.unwrap();
    assert_eq!((input.channels, input.window), (meta.channels, meta.window));
    assert_eq!(m.signed_by, key().public().id());

    let (t, _) = push(&mut r, &wasm()).unwrap();
    assert_eq!(t.manifest.kind, ArtifactKind::Transform);
    assert!(t.manifest.requires.transform_abi.is_some());

    let by_ref = format!("{}@{}", m.manifest.name, m.manifest.version);
    assert_eq!(r.find(&by_ref).unwrap().id, m.id);
    assert_eq!(r.find(m.id.as_str()).unwrap().id, m.id);
    assert!(r.find("nothing@1").is_none());
    assert_eq!(r.list().len(), 2);
    // What is served is what the agent verifies.
    let bytes = r.manifest_bytes(&m.id).unwrap().unwrap();
    let opened = SignedManifest::open(&bytes, &[key().public()]).unwrap();
    assert_eq!(opened.id, m.id);
    let (path, entry) = r.file(&m.id, "edge.int8.onnx").unwrap();
    assert_eq!(std::fs::read(path).unwrap(), model_files()[1].1);
    assert_eq!(entry.size, model_files()[1].1.len() as u64);
    assert!(r.file(&m.id, "other.onnx").is_none());
    // Staging leaves nothing behind.
    let incoming = store.path().join("artifacts/incoming");
    assert_eq!(std::fs::read_dir(incoming).unwrap().count(), 0);
}

#[test]
fn the_same_push_again_is_the_same_artifact_and_other_contents_conflict() {
    let store = tempfile::tempdir().unwrap();
    let (mut r, _) = open(store.path());
    let (first, _) = push(&mut r, &model_files()).unwrap();
    let (again, new) = push(&mut r, &model_files()).unwrap();
    assert!(!new);
    assert_eq!(again.id, first.id);
    // Same name and version, other metadata bytes (still a valid model).
    let mut files = model_files();
    let mut meta: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    meta["description"] = "changed".into();
    files[0].1 = serde_json::to_vec_pretty(&meta).unwrap();
    match push(&mut r, &files) {
        Err(e) => {
            assert_eq!((e.status, e.reason), (409, "conflict"));
            assert!(e.message.contains("already in the registry"), "{e}");
        }
        Ok(_) => panic!("a conflict was accepted"),
    }
    assert_eq!(r.list().len(), 1);
}

/// A transform pushed again is the same artifact even when the code the
/// hub compiled from it differs (another compiler release): the module is
/// its identity, and what the hub made of it stays as first signed.
#[test]
fn a_transform_pushed_again_is_the_same_artifact_whatever_its_precompiled_code() {
    let store = tempfile::tempdir().unwrap();
    let (mut r, _) = open(store.path());
    let commit = |r: &mut ArtifactRegistry, code: &[u8]| {
        let (dir, mut staged) = stage(r, &wasm());
        let checked = check(dir.path(), &staged).unwrap();
        let name = "scale.x86_64-unknown-linux-gnu.cwasm";
        std::fs::write(dir.path().join(name), code).unwrap();
        staged.push(StagedFile {
            name: name.into(),
            sha256: hex::encode(Sha256::digest(code)),
            size: code.len() as u64,
        });
        r.commit(dir.path(), &staged, checked, &key()).unwrap()
    };
    let (first, new) = commit(&mut r, b"code one");
    assert!(new);
    assert!(first
        .manifest
        .precompiled_file("x86_64-unknown-linux-gnu")
        .is_some());
    let (again, new) = commit(&mut r, b"code two");
    assert!(!new);
    assert_eq!(again.id, first.id);
    assert_eq!(r.list().len(), 1);
}

#[test]
fn a_tampered_or_invalid_artifact_is_refused_with_the_checkers_reason() {
    let store = tempfile::tempdir().unwrap();
    let (mut r, _) = open(store.path());
    let mut tampered = model_files();
    let mid = tampered[1].1.len() / 2;
    tampered[1].1[mid] ^= 0xff;
    let e = push(&mut r, &tampered).unwrap_err();
    assert_eq!((e.status, e.reason), (422, "bad_model"));
    assert!(e.message.contains("sha256"), "{e}");
    assert!(
        !e.message.contains("incoming"),
        "names files, not the staging dir: {e}"
    );

    let mut renamed = model_files();
    renamed[1].0 = "other.onnx";
    let e = push(&mut r, &renamed).unwrap_err();
    assert!(e.message.contains("model_file"), "{e}");

    let mut bad_wasm = wasm();
    bad_wasm[0].1.truncate(20);
    let e = push(&mut r, &bad_wasm).unwrap_err();
    assert_eq!((e.status, e.reason), (422, "bad_module"));
    assert!(e.message.contains("transform checks"), "{e}");

    let e = push(&mut r, &[("notes.txt", b"hi".to_vec())]).unwrap_err();
    assert_eq!(e.reason, "bad_files");
    let e = push(&mut r, &[("..wasm", b"x".to_vec())]).unwrap_err();
    assert_eq!(e.reason, "bad_name");
    assert!(r.is_empty());
}

#[test]
fn the_index_is_rebuilt_at_open_and_a_bad_manifest_is_skipped() {
    let store = tempfile::tempdir().unwrap();
    let (m, t) = {
        let (mut r, _) = open(store.path());
        (
            push(&mut r, &model_files()).unwrap().0,
            push(&mut r, &wasm()).unwrap().0,
        )
    };
    let (r, skipped) = open(store.path());
    assert_eq!(skipped, Skipped::default());
    assert_eq!(r.list().len(), 2);
    assert_eq!(r.find(m.id.as_str()).unwrap().manifest, m.manifest);

    // A corrupted manifest, one signed by another key, and a temp file a
    // crash left: the first two are skipped and counted, never fatal.
    let manifests = store.path().join("artifacts/manifests");
    let path = manifests.join(format!("{}.json", m.id));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let mut other = t.manifest.clone();
    other.version = "forged".into();
    let forged = other.sign(&SecretKey::from_seed([1; 32])).unwrap();
    std::fs::write(
        manifests.join(format!("{}.json", forged.id)),
        forged.envelope.encode(),
    )
    .unwrap();
    std::fs::write(manifests.join(".tmp-1-2-3"), b"half").unwrap();
    let (r, skipped) = open(store.path());
    assert_eq!(skipped.manifests, 2);
    assert_eq!(r.list().len(), 1);
    assert!(r.find(t.id.as_str()).is_some());

    // A manifest whose blob is gone is skipped too.
    let blob = &t.manifest.files[0].sha256;
    std::fs::remove_file(store.path().join("artifacts/blobs").join(blob)).unwrap();
    let (r, skipped) = open(store.path());
    assert_eq!((r.len(), skipped.manifests), (0, 3));
}
