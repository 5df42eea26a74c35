//! The modules in `transforms/dist` and the hand-written WAT speak the ABI
//! (docs/transform-abi.md): metadata section, exports, only the two
//! `conveyor` imports, no start function.

mod common;

use common::{assert_abi_surface, repo_root, RUST_TRANSFORMS};

#[test]
fn dist_modules_have_the_abi_surface() {
    let dist = repo_root().join("transforms/dist");
    for name in RUST_TRANSFORMS {
        let file = format!("{name}.wasm");
        let wasm = std::fs::read(dist.join(&file))
            .unwrap_or_else(|e| panic!("{file}: {e}; run transforms/build.sh"));
        let s = assert_abi_surface(&file, &wasm, name, true);
        assert_eq!(
            s.meta[0],
            format!(
                r#"{{"name":"{name}","version":"{}","abi":1}}"#,
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(s.imports.contains_key("conveyor.emit"), "{file}");
        assert!(s.imports.contains_key("conveyor.fail"), "{file}");
    }
}

#[test]
fn positive_wat_parses_and_has_the_abi_surface() {
    let wat = repo_root().join("transforms/wat/positive.wat");
    let wasm = wat::parse_file(&wat).expect("positive.wat parses");
    let s = assert_abi_surface("positive.wat", &wasm, "wat-positive", false);
    assert_eq!(
        s.meta[0],
        r#"{"name":"wat-positive","version":"1.0.0","abi":1}"#
    );
    assert!(!s.exports.contains_key("conveyor_init"));
    let committed = std::fs::read(repo_root().join("transforms/dist/positive.wasm")).unwrap();
    assert!(
        committed == wasm,
        "transforms/dist/positive.wasm is not positive.wat compiled: run transforms/build.sh and commit transforms/dist"
    );
}
