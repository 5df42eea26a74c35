//! The transform ABI's static checks (docs/transform-abi.md), on a
//! module's bytes and without a WASM runtime.
//!
//! A transform is a core WASM module that declares itself in a
//! `conveyor.transform` custom section, imports only `conveyor.emit` and
//! `conveyor.fail`, and exports a 32-bit `memory`, `conveyor_alloc`,
//! `conveyor_transform` and optionally `conveyor_init`, each with the
//! ABI's signature. The agent checks that before it runs a module (after
//! compiling it, which validates the code); the hub checks it before it
//! signs a module for agents to run, without linking wasmtime. Both use
//! this crate, so both say the same thing about the same module.

use serde::Deserialize;
use thiserror::Error;
use wasmparser::{ExternalKind, FuncType, Parser, Payload, TypeRef};

/// The custom section a module declares itself in.
pub const META_SECTION: &str = "conveyor.transform";
/// The ABI version this build speaks.
pub const ABI_VERSION: u32 = 1;

/// Why a module is not a transform.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AbiError {
    #[error("not a WebAssembly module: it starts with {0:02x?}, a module starts with 00 61 73 6d")]
    NotWasm(Vec<u8>),
    #[error(
        "this is a WebAssembly component; transforms are core modules (docs/transform-abi.md)"
    )]
    Component,
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    #[error(
        "no `{META_SECTION}` custom section: the module does not declare its name and version \
         (docs/transform-abi.md)"
    )]
    NoMeta,
    #[error("`{META_SECTION}` section: {0}")]
    BadMeta(String),
    #[error(
        "imports `{module}.{name}`: a transform may import only conveyor.emit and conveyor.fail \
         (no WASI, no other host functions)"
    )]
    ForbiddenImport { module: String, name: String },
    #[error("`{what}` has type {got}; the ABI says {want}")]
    WrongType {
        what: String,
        got: String,
        want: &'static str,
    },
    #[error("missing export `{0}` (docs/transform-abi.md)")]
    MissingExport(&'static str),
}

/// What a module says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TransformMeta {
    pub name: String,
    pub version: String,
    pub abi: u32,
}

impl TransformMeta {
    fn parse(bytes: &[u8]) -> Result<Self, AbiError> {
        let meta: TransformMeta =
            serde_json::from_slice(bytes).map_err(|e| AbiError::BadMeta(e.to_string()))?;
        let ok_name = |s: &str| {
            (1..=64).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        if !ok_name(&meta.name) {
            return Err(AbiError::BadMeta(format!(
                "name {:?} must be 1-64 characters of [A-Za-z0-9_.-]",
                meta.name
            )));
        }
        let ok_version = |s: &str| {
            (1..=64).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
        };
        if !ok_version(&meta.version) {
            return Err(AbiError::BadMeta(format!(
                "version {:?} must be 1-64 printable ASCII characters without spaces, quotes or \
                 backslashes",
                meta.version
            )));
        }
        if meta.abi != ABI_VERSION {
            return Err(AbiError::BadMeta(format!(
                "abi {} is not supported (this agent speaks abi {ABI_VERSION})",
                meta.abi
            )));
        }
        Ok(meta)
    }

    /// `name@version`, as records carry it.
    pub fn tag(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Finds and parses the `conveyor.transform` section, without compiling.
pub fn read_meta(bytes: &[u8]) -> Result<TransformMeta, AbiError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(AbiError::NotWasm(bytes[..bytes.len().min(8)].to_vec()));
    }
    // Bytes 4..8: version 1 and layer 0 for a core module.
    if bytes[6..8] != [0, 0] {
        return Err(AbiError::Component);
    }
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| AbiError::Invalid(e.to_string()))? {
            Payload::CustomSection(s) if s.name() == META_SECTION => {
                return TransformMeta::parse(s.data());
            }
            _ => {}
        }
    }
    Err(AbiError::NoMeta)
}

const EMIT: &str = "(i32, i32) -> ()";
const FAIL: &str = "(i32, i32, i32) -> ()";
const ALLOC: &str = "(i32) -> (i32)";
const TRANSFORM: &str = "(i32, i32, i32) -> (i32)";
const INIT: &str = "(i32, i32) -> (i32)";

fn signature(ty: &FuncType) -> String {
    let list = |types: &[wasmparser::ValType]| {
        types
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(ty.params()), list(ty.results()))
}

/// What an import or export is, as the checks need it.
#[derive(Debug, Clone, PartialEq)]
enum Extern {
    Func(String),
    Memory { memory64: bool, shared: bool },
    Other(&'static str),
}

impl Extern {
    fn expect_func(&self, what: String, want: &'static str) -> Result<(), AbiError> {
        let got = match self {
            Extern::Func(sig) => sig.clone(),
            Extern::Memory { .. } => "memory".into(),
            Extern::Other(kind) => (*kind).into(),
        };
        if got == want {
            Ok(())
        } else {
            Err(AbiError::WrongType { what, got, want })
        }
    }
}

/// The module's function types, functions, memories, imports and
/// exports, as far as the ABI looks at them.
#[derive(Default)]
struct Shape {
    types: Vec<Option<String>>,
    funcs: Vec<u32>,
    memories: Vec<(bool, bool)>,
    imports: Vec<(String, String, Extern)>,
    exports: Vec<(String, ExternalKind, u32)>,
}

impl Shape {
    fn read(bytes: &[u8]) -> Result<Shape, AbiError> {
        let invalid = |e: wasmparser::BinaryReaderError| AbiError::Invalid(e.to_string());
        let mut shape = Shape::default();
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(invalid)? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group.map_err(invalid)?.into_types() {
                            shape.types.push(match &sub.composite_type.inner {
                                wasmparser::CompositeInnerType::Func(f) => Some(signature(f)),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.map_err(invalid)?;
                        let ty = match import.ty {
                            TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                                shape.funcs.push(t);
                                shape.func_type(t)
                            }
                            TypeRef::Memory(m) => {
                                shape.memories.push((m.memory64, m.shared));
                                Extern::Memory {
                                    memory64: m.memory64,
                                    shared: m.shared,
                                }
                            }
                            TypeRef::Table(_) => Extern::Other("table"),
                            TypeRef::Global(_) => Extern::Other("global"),
                            TypeRef::Tag(_) => Extern::Other("tag"),
                        };
                        shape
                            .imports
                            .push((import.module.into(), import.name.into(), ty));
                    }
                }
                Payload::FunctionSection(reader) => {
                    for t in reader {
                        shape.funcs.push(t.map_err(invalid)?);
                    }
                }
                Payload::MemorySection(reader) => {
                    for m in reader {
                        let m = m.map_err(invalid)?;
                        shape.memories.push((m.memory64, m.shared));
                    }
                }
                Payload::ExportSection(reader) => {
                    for e in reader {
                        let e = e.map_err(invalid)?;
                        shape.exports.push((e.name.into(), e.kind, e.index));
                    }
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    fn func_type(&self, t: u32) -> Extern {
        match self.types.get(t as usize) {
            Some(Some(sig)) => Extern::Func(sig.clone()),
            _ => Extern::Other("a type that is not a function"),
        }
    }

    fn export(&self, name: &str) -> Option<Extern> {
        let (_, kind, index) = self.exports.iter().find(|(n, _, _)| n == name)?;
        Some(match kind {
            ExternalKind::Func | ExternalKind::FuncExact => match self.funcs.get(*index as usize) {
                Some(&t) => self.func_type(t),
                None => Extern::Other("a function that does not exist"),
            },
            ExternalKind::Memory => match self.memories.get(*index as usize) {
                Some(&(memory64, shared)) => Extern::Memory { memory64, shared },
                None => Extern::Other("a memory that does not exist"),
            },
            ExternalKind::Table => Extern::Other("table"),
            ExternalKind::Global => Extern::Other("global"),
            ExternalKind::Tag => Extern::Other("tag"),
        })
    }
}

/// Checks imports and exports against the ABI; says whether the module
/// has `conveyor_init`. (It does not validate the code: compiling does.)
pub fn check_abi(bytes: &[u8]) -> Result<bool, AbiError> {
    let shape = Shape::read(bytes)?;
    for (module, name, ty) in &shape.imports {
        let want = match (module.as_str(), name.as_str()) {
            ("conveyor", "emit") => EMIT,
            ("conveyor", "fail") => FAIL,
            (m, n) => {
                return Err(AbiError::ForbiddenImport {
                    module: m.to_string(),
                    name: n.to_string(),
                })
            }
        };
        ty.expect_func(format!("import conveyor.{name}"), want)?;
    }
    match shape.export("memory") {
        Some(Extern::Memory {
            memory64: false,
            shared: false,
        }) => {}
        Some(_) => {
            return Err(AbiError::WrongType {
                what: "export memory".into(),
                got: "something else".into(),
                want: "a 32-bit linear memory",
            })
        }
        None => return Err(AbiError::MissingExport("memory")),
    }
    for (name, want) in [("conveyor_alloc", ALLOC), ("conveyor_transform", TRANSFORM)] {
        let ty = shape.export(name).ok_or(AbiError::MissingExport(name))?;
        ty.expect_func(format!("export {name}"), want)?;
    }
    match shape.export("conveyor_init") {
        Some(ty) => ty
            .expect_func("export conveyor_init".into(), INIT)
            .map(|()| true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str =
        r#"(@custom "conveyor.transform" "{\"name\":\"t\",\"version\":\"1\",\"abi\":1}")"#;

    fn module(body: &str) -> Vec<u8> {
        wat::parse_str(format!("(module {META} {body})")).unwrap()
    }

    const GOOD: &str = r#"
        (import "conveyor" "emit" (func (param i32 i32)))
        (memory (export "memory") 1)
        (func (export "conveyor_alloc") (param i32) (result i32) i32.const 0)
        (func (export "conveyor_transform") (param i32 i32 i32) (result i32) i32.const 0)"#;

    #[test]
    fn a_module_that_speaks_the_abi_passes() {
        let bytes = module(GOOD);
        assert_eq!(read_meta(&bytes).unwrap().tag(), "t@1");
        assert_eq!(check_abi(&bytes), Ok(false));
        let with_init = module(&format!(
            "{GOOD} (func (export \"conveyor_init\") (param i32 i32) (result i32) i32.const 0)"
        ));
        assert_eq!(check_abi(&with_init), Ok(true));
    }

    #[test]
    fn each_way_to_miss_the_abi_is_named() {
        let wasi = module(&format!(
            "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32))) {GOOD}"
        ));
        assert!(matches!(
            check_abi(&wasi),
            Err(AbiError::ForbiddenImport { .. })
        ));
        let bad_emit = module(&GOOD.replace("(param i32 i32)))", "(param i64)))"));
        assert_eq!(
            check_abi(&bad_emit).unwrap_err().to_string(),
            "`import conveyor.emit` has type (i64) -> (); the ABI says (i32, i32) -> ()"
        );
        let no_memory = module(&GOOD.replace("(memory (export \"memory\") 1)", "(memory 1)"));
        assert_eq!(
            check_abi(&no_memory),
            Err(AbiError::MissingExport("memory"))
        );
        let mem64 = module(&GOOD.replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") i64 1)",
        ));
        assert!(matches!(check_abi(&mem64), Err(AbiError::WrongType { .. })));
        let global = module(&GOOD.replace(
            "(func (export \"conveyor_alloc\") (param i32) (result i32) i32.const 0)",
            "(global (export \"conveyor_alloc\") i32 (i32.const 0))",
        ));
        assert_eq!(
            check_abi(&global).unwrap_err().to_string(),
            "`export conveyor_alloc` has type global; the ABI says (i32) -> (i32)"
        );
        assert!(matches!(
            read_meta(b"\0asm\x0d\0\x01\0"),
            Err(AbiError::Component)
        ));
        assert!(matches!(
            read_meta(b"hello world"),
            Err(AbiError::NotWasm(_))
        ));
        let no_meta = wat::parse_str(format!("(module {GOOD})")).unwrap();
        assert_eq!(read_meta(&no_meta), Err(AbiError::NoMeta));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for n in 0..64u8 {
            let mut bytes = module(GOOD);
            let i = (n as usize * 7) % bytes.len();
            bytes[i] ^= 0x5a;
            let _ = read_meta(&bytes);
            let _ = check_abi(&bytes);
        }
        assert!(check_abi(b"\0asm\x01\0\0\0\x01\xff").is_err());
    }
}
