//! The target triple this crate is built for, as a constant: the name an
//! agent looks for among the hub's precompiled files.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=CONVEYOR_WASM_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
