//! Reading a module's ABI surface with `wasmparser`, for the tests that
//! check built modules against docs/transform-abi.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wasmparser::{ExternalKind, FuncType, Parser, Payload, TypeRef, ValType};

/// What the host looks at when it loads a module.
#[derive(Debug, Default)]
pub struct Surface {
    /// Contents of the `conveyor.transform` custom sections.
    pub meta: Vec<String>,
    /// `module.name` -> function type, or `None` for a non-function import.
    pub imports: BTreeMap<String, Option<FuncType>>,
    /// Export name -> function type (`None` for other kinds) and kind.
    pub exports: BTreeMap<String, (ExternalKind, Option<FuncType>)>,
    pub has_start: bool,
}

pub fn surface(wasm: &[u8]) -> Surface {
    let mut s = Surface::default();
    let mut types: Vec<FuncType> = Vec::new();
    let mut funcs: Vec<u32> = Vec::new(); // type index of each function, imports first
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.expect("valid module") {
            Payload::TypeSection(r) => {
                for ty in r.into_iter_err_on_gc_types() {
                    types.push(ty.unwrap());
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.unwrap();
                    let ty = match imp.ty {
                        TypeRef::Func(t) => {
                            funcs.push(t);
                            Some(types[t as usize].clone())
                        }
                        _ => None,
                    };
                    s.imports.insert(format!("{}.{}", imp.module, imp.name), ty);
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    funcs.push(t.unwrap());
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.unwrap();
                    let ty = (e.kind == ExternalKind::Func)
                        .then(|| types[funcs[e.index as usize] as usize].clone());
                    s.exports.insert(e.name.to_string(), (e.kind, ty));
                }
            }
            Payload::StartSection { .. } => s.has_start = true,
            Payload::CustomSection(c) if c.name() == "conveyor.transform" => {
                s.meta.push(String::from_utf8(c.data().to_vec()).unwrap());
            }
            _ => {}
        }
    }
    s
}

pub fn func(params: &[ValType], results: &[ValType]) -> Option<FuncType> {
    Some(FuncType::new(
        params.iter().copied(),
        results.iter().copied(),
    ))
}

/// Checks `wasm` against the ABI's exports and imports; `with_init`: whether
/// it must export `conveyor_init`.
pub fn assert_abi_surface(file: &str, wasm: &[u8], name: &str, with_init: bool) -> Surface {
    use ValType::I32;
    let s = surface(wasm);
    let expected_meta = format!(r#""name":"{name}","#);
    assert_eq!(s.meta.len(), 1, "{file}: one conveyor.transform section");
    assert!(s.meta[0].contains(&expected_meta), "{file}: {}", s.meta[0]);
    assert!(s.meta[0].contains(r#""abi":1"#), "{file}: {}", s.meta[0]);
    assert!(!s.has_start, "{file}: no start function");
    for (import, ty) in &s.imports {
        match import.as_str() {
            "conveyor.emit" => assert_eq!(*ty, func(&[I32, I32], &[]), "{file}: {import}"),
            "conveyor.fail" => assert_eq!(*ty, func(&[I32, I32, I32], &[]), "{file}: {import}"),
            other => panic!("{file}: imports {other}; only conveyor.emit/fail are allowed"),
        }
    }
    assert_eq!(
        s.exports.get("memory").map(|e| e.0),
        Some(ExternalKind::Memory),
        "{file}"
    );
    let export = |n: &str| s.exports.get(n).and_then(|e| e.1.clone());
    assert_eq!(export("conveyor_alloc"), func(&[I32], &[I32]), "{file}");
    assert_eq!(
        export("conveyor_transform"),
        func(&[I32, I32, I32], &[I32]),
        "{file}"
    );
    if with_init {
        assert_eq!(export("conveyor_init"), func(&[I32, I32], &[I32]), "{file}");
    }
    s
}

pub fn repo_root() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .join("../..")
    .canonicalize()
    .unwrap()
}

/// The Rust examples in `transforms/dist`: file stem = transform name.
pub const RUST_TRANSFORMS: [&str; 5] = [
    "passthrough",
    "scale",
    "window-features",
    "threshold",
    "redact-pos",
];
