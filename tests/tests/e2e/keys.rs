//! `cloud-hub keys`: the hub's signing key from the command line.

use std::process::Command;

use conveyor_e2e::*;

fn hub(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(hub_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_prints_the_public_key_show_reads_it_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (code, public, err) = hub(&["keys", "generate"], dir.path());
    assert_eq!(code, Some(0), "{err}");
    let public = public.trim().to_string();
    assert!(
        public.starts_with("ed25519:") && public.len() == 8 + 64,
        "{public}"
    );
    assert!(
        err.contains("hub-signing.key") && err.contains("key id"),
        "{err}"
    );
    let key = dir.path().join("hub-signing.key");
    let before = std::fs::read(&key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private");
    }

    let (code, _, err) = hub(&["keys", "generate"], dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("exists") && err.contains("never overwritten"),
        "{err}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), before, "untouched");

    let (code, shown, err) = hub(&["keys", "show"], dir.path());
    assert_eq!((code, shown.trim()), (Some(0), public.as_str()), "{err}");

    std::fs::write(dir.path().join("bad.key"), "not a key\n").unwrap();
    let (code, _, err) = hub(&["keys", "show", "--key", "bad.key"], dir.path());
    assert_eq!(code, Some(1));
    assert!(
        err.contains("bad.key") && err.contains("conveyor-ed25519-secret-v1"),
        "{err}"
    );
}
