//! Compiles a WebAssembly text module to binary: how `transforms/build.sh`
//! makes `dist/positive.wasm` from `transforms/wat/positive.wat` without
//! needing wabt or wasm-tools installed.
//!
//! `cargo run -p conveyor-transform-sdk --example wat2wasm -- IN.wat OUT.wasm`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: wat2wasm IN.wat OUT.wasm");
        return ExitCode::from(2);
    };
    let wasm = match wat::parse_file(input) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("wat2wasm: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(output, wasm) {
        eprintln!("wat2wasm: {output}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
