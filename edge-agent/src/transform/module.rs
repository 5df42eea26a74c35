//! Loading a transform module: read the file, check it is a core WASM
//! module that declares itself and speaks the ABI (docs/transform-abi.md),
//! and compile it once.
//!
//! Compiling with Cranelift costs hundreds of milliseconds for a typical
//! guest, so the compiled form is cached on disk under the SHA-256 of the
//! module's bytes and a hash of the engine's settings: a restart, or the
//! same module in another chain, loads it in milliseconds. Everything a
//! module can get wrong is found here, before any of its code runs.
//!
//! An agent built without the `compiler` feature has no Cranelift: it
//! loads the code the hub precompiled for its target, which sits beside
//! the module (`<stem>.<target>.cwasm`: OTA downloads it with the module),
//! and refuses a module without it, naming the file it looked for.

use std::fs;
#[cfg(feature = "compiler")]
use std::hash::{Hash, Hasher};
#[cfg(feature = "compiler")]
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
#[cfg(feature = "compiler")]
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::{Engine, Module};

pub use conveyor_wasm_abi::{read_meta, AbiError, TransformMeta};

/// Whether this agent carries the WASM compiler (the `compiler` feature):
/// without it, it runs only code the hub precompiled for its target.
pub const HAS_COMPILER: bool = cfg!(feature = "compiler");

/// Why a module was refused.
#[derive(Debug, Error)]
pub enum ModuleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// It is not a transform (the ABI's checks, shared with the hub).
    #[error(transparent)]
    Abi(#[from] AbiError),
    #[error("compiling: {0}")]
    Compile(String),
    /// An agent without a compiler was given a module without code
    /// precompiled for it.
    #[error(
        "this agent is built without the WASM compiler and runs only code the hub precompiled for \
         {target}; {} is not there (deploy the transform through the hub, which precompiles it, \
         run `cloud-hub precompile` on the module, or build the agent with the `compiler` feature)",
        expected.display()
    )]
    NotPrecompiled {
        target: &'static str,
        expected: PathBuf,
    },
    /// Precompiled code that this agent's wasmtime cannot load (another
    /// wasmtime release, target or setting), in wasmtime's words.
    #[error("the precompiled code {} cannot be loaded: {why}", path.display())]
    Precompiled { path: PathBuf, why: String },
}

/// A checked, compiled module.
pub struct TransformModule {
    pub meta: TransformMeta,
    /// Hex SHA-256 of the `.wasm` bytes.
    pub sha256: String,
    pub path: PathBuf,
    pub module: Module,
    /// Whether it exports `conveyor_init`.
    pub has_init: bool,
    /// How it was obtained: compiled now, or loaded from the cache (or,
    /// without a compiler, the hub's precompiled code).
    pub from_cache: bool,
    pub load_time: Duration,
}

impl std::fmt::Debug for TransformModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformModule")
            .field("meta", &self.meta)
            .field("sha256", &self.sha256)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The wasmtime engine every transform of the agent runs in, and the
/// cache of compiled modules.
#[derive(Clone)]
pub struct TransformEngine {
    engine: Engine,
    /// Without a compiler there is nothing to cache: the hub's code is
    /// loaded from beside the module.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    cache_dir: Option<PathBuf>,
    /// Compiled modules that could not be written to the cache (a full or
    /// read-only disk): counted, reported in heartbeats, never fatal.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    cache_write_errors: Arc<AtomicU64>,
}

impl TransformEngine {
    /// `cache_dir` = `None` compiles every time (the `transform test` tool).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, ModuleError> {
        let engine = conveyor_wasm_engine::engine().map_err(ModuleError::Compile)?;
        Ok(TransformEngine {
            engine,
            cache_dir,
            cache_write_errors: Arc::default(),
        })
    }

    /// Counts cache write errors into `counter` (shared with whoever
    /// reports them).
    pub fn counting_cache_errors(mut self, counter: Arc<AtomicU64>) -> Self {
        self.cache_write_errors = counter;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, checks and compiles (or loads the cached compilation of) the
    /// module at `path`.
    pub fn load(&self, path: &Path) -> Result<TransformModule, ModuleError> {
        let bytes = fs::read(path).map_err(|source| ModuleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(path, &bytes)
    }

    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<TransformModule, ModuleError> {
        let started = Instant::now();
        let meta = read_meta(bytes)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        #[cfg(feature = "compiler")]
        let (module, from_cache) = self.compile_cached(bytes, &sha256)?;
        #[cfg(not(feature = "compiler"))]
        let (module, from_cache) = (self.load_precompiled(path)?, true);
        // After compiling (which validates the code), so an invalid module
        // is reported as such rather than by its imports.
        let has_init = conveyor_wasm_abi::check_abi(bytes)?;
        Ok(TransformModule {
            meta,
            sha256,
            path: path.to_path_buf(),
            module,
            has_init,
            from_cache,
            load_time: started.elapsed(),
        })
    }

    /// The hub's code for this agent's target, beside the module.
    #[cfg(not(feature = "compiler"))]
    fn load_precompiled(&self, module: &Path) -> Result<Module, ModuleError> {
        let target = conveyor_wasm_engine::HOST_TARGET;
        let name = module.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let path = module.with_file_name(conveyor_shared::ota::precompiled_file_name(name, target));
        if !path.is_file() {
            return Err(ModuleError::NotPrecompiled {
                target,
                expected: path,
            });
        }
        // SAFETY: the code sits beside the module it was made from: from
        // OTA, its digest is in the manifest the hub signed with the
        // module's; in a local config, it is as trusted as the config.
        // wasmtime checks its version, target and settings, and maps the
        // file instead of copying it.
        unsafe { Module::deserialize_file(&self.engine, &path) }.map_err(|e| {
            ModuleError::Precompiled {
                path,
                why: format!("{e:#}"),
            }
        })
    }

    #[cfg(feature = "compiler")]
    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        // SHA-256 rather than std's DefaultHasher, whose output may change
        // between Rust releases (every module would then compile again).
        let mut h = Sha256Hasher(Sha256::new());
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", h.finish())))
    }

    #[cfg(feature = "compiler")]
    fn compile_cached(&self, bytes: &[u8], sha256: &str) -> Result<(Module, bool), ModuleError> {
        let cache = self.cache_path(sha256);
        if let Some(path) = &cache {
            if let Some(module) = self.load_cached(path) {
                return Ok((module, true));
            }
        }
        let compiled = self
            .engine
            .precompile_module(bytes)
            .map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        if let Some(path) = &cache {
            if let Err(e) = store_cached(path, &compiled) {
                let n = self.cache_write_errors.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(path = %path.display(), errors = n, "cannot cache the compiled transform (it is compiled again next start): {e}");
            }
        }
        // SAFETY: `compiled` was produced by this engine a moment ago.
        let module = unsafe { Module::deserialize(&self.engine, &compiled) }
            .map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
        Ok((module, false))
    }

    /// A cache file is a SHA-256 of the compiled code followed by the code;
    /// a file that does not match (torn write, disk error) is ignored.
    #[cfg(feature = "compiler")]
    fn load_cached(&self, path: &Path) -> Option<Module> {
        let file = fs::read(path).ok()?;
        if file.len() < 32 || Sha256::digest(&file[32..])[..] != file[..32] {
            tracing::warn!(path = %path.display(), "ignoring a damaged transform cache file");
            return None;
        }
        // SAFETY: the file is in the agent's own data directory (as trusted
        // as its binary), written by `store_cached` from this engine's
        // output, and its checksum matches; wasmtime itself refuses code
        // from another version or configuration.
        match unsafe { Module::deserialize(&self.engine, &file[32..]) } {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring a stale transform cache file: {e}");
                None
            }
        }
    }
}

/// A `Hasher` over SHA-256: a stable hash of wasmtime's engine settings.
#[cfg(feature = "compiler")]
struct Sha256Hasher(Sha256);

#[cfg(feature = "compiler")]
impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

#[cfg(feature = "compiler")]
fn store_cached(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in a directory");
    fs::create_dir_all(dir)?;
    // Written aside and renamed: a reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&Sha256::digest(compiled))?;
        file.write_all(compiled)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // A half-written file on a full disk would keep the space.
        let _ = fs::remove_file(&tmp);
    }
    written
}
