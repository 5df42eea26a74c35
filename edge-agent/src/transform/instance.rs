//! One running transform: a wasmtime store holding one instance of a
//! module, the host functions it may call, and the limits every call runs
//! under.
//!
//! A call either succeeds as a whole (its outputs and its rejected records
//! are returned) or fails as a whole (nothing it emitted is kept, and the
//! instance must be replaced: after a trap its memory may be half-written).
//! What to do with a failure is the chain's business, not this module's.

use std::sync::Arc;

use conveyor_transform_sdk::wire;
use thiserror::Error;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, Store, Trap, TypedFunc};

use super::codec::{encode_batch, StreamNames};
use super::module::{TransformEngine, TransformModule};
use crate::sources::Reading;

/// Fuel for `conveyor_alloc` and the call's own overhead, on top of the
/// per-record budget.
const CALL_BASE_FUEL: u64 = 1_000_000;
/// Fuel for instantiation (start function) and `conveyor_init`.
const INIT_FUEL: u64 = 100_000_000;
/// Table elements a module may have (function pointers).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The hard limits of every call (docs/transform-abi.md, "Failures and limits").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub fuel_per_record: u64,
    pub memory_bytes: usize,
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_record: 10_000_000,
            memory_bytes: 16 << 20,
            max_output_bytes: 1 << 20,
        }
    }
}

/// What went wrong in a failed call, as counters and dead letters name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    OutOfFuel,
    MemoryLimit,
    OutputCap,
    MalformedOutput,
    Trap,
    ReturnedError,
    BadAlloc,
    /// The instance could not be made again (instantiate or init failed).
    Instantiate,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::OutputCap => "output_cap",
            FailureKind::MalformedOutput => "malformed_output",
            FailureKind::Trap => "trap",
            FailureKind::ReturnedError => "returned_error",
            FailureKind::BadAlloc => "bad_alloc",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

/// A failed call (or instantiation).
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{}: {message}", kind.as_str())]
pub struct CallFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// Errors the host raises inside a call; they trap the guest.
#[derive(Debug, Error)]
enum HostTrap {
    #[error("linear memory would grow to {desired} bytes, past the limit of {limit}")]
    MemoryLimit { desired: usize, limit: usize },
    #[error("table would grow to {0} elements, past the limit of {MAX_TABLE_ELEMENTS}")]
    TableLimit(usize),
    #[error("the call's outputs passed max_output_bytes ({limit} bytes)")]
    OutputCap { limit: usize },
    #[error("emitted record {index} is malformed: {error}")]
    Malformed {
        index: usize,
        error: wire::WireError,
    },
    #[error("conveyor.{func} was given {ptr:#x}+{len}, outside linear memory")]
    OutOfBounds {
        func: &'static str,
        ptr: u32,
        len: u32,
    },
    #[error("conveyor.emit/fail called during instantiation (from a start function)")]
    NotReady,
    #[error("conveyor.fail was given record index {index}, but the call has {count} records")]
    BadIndex { index: i32, count: usize },
}

/// The host side of one store: limits, and what the current call produced.
struct HostState {
    limits: Limits,
    memory: Option<Memory>,
    peak_memory: usize,
    count: usize,
    outputs: Vec<Reading>,
    output_bytes: usize,
    rejected: Vec<(usize, String)>,
    call_error: Option<String>,
    streams: StreamNames,
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            return Err(HostTrap::MemoryLimit {
                desired,
                limit: self.limits.memory_bytes,
            }
            .into());
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(HostTrap::TableLimit(desired).into());
        }
        Ok(true)
    }
}

fn guest_bytes<'a>(
    memory: &'a [u8],
    func: &'static str,
    ptr: i32,
    len: i32,
) -> Result<&'a [u8], HostTrap> {
    let (p, l) = (ptr as u32, len as u32);
    memory
        .get(p as usize..(p as usize).saturating_add(l as usize))
        .filter(|_| len >= 0)
        .ok_or(HostTrap::OutOfBounds {
            func,
            ptr: p,
            len: l,
        })
}

fn host_emit(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    // A start function runs before the host has the memory: refuse, do
    // not panic.
    let memory = caller.data().memory.ok_or(HostTrap::NotReady)?;
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let bytes = guest_bytes(mem, "emit", ptr, len)?;
    state.output_bytes += bytes.len();
    if state.output_bytes > state.limits.max_output_bytes {
        return Err(HostTrap::OutputCap {
            limit: state.limits.max_output_bytes,
        }
        .into());
    }
    let index = state.outputs.len();
    let record = wire::decode(bytes)
        .and_then(|r| wire::check_finite(&r).map(|()| r))
        .map_err(|error| HostTrap::Malformed { index, error })?;
    let reading = state.streams.reading(&record);
    state.outputs.push(reading);
    Ok(())
}

fn host_fail(
    mut caller: Caller<'_, HostState>,
    index: i32,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<()> {
    // A start function runs before the host has the memory: refuse, do
    // not panic.
    let memory = caller.data().memory.ok_or(HostTrap::NotReady)?;
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let bytes = guest_bytes(mem, "fail", ptr, len)?;
    // A reason is for people: cap it, and accept any bytes.
    let reason = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).into_owned();
    if index == -1 {
        state.call_error = Some(reason);
    } else if index < 0 || index as usize >= state.count {
        return Err(HostTrap::BadIndex {
            index,
            count: state.count,
        }
        .into());
    } else if !state.rejected.iter().any(|(i, _)| *i == index as usize) {
        state.rejected.push((index as usize, reason));
    }
    Ok(())
}

/// The linker every transform store uses: the ABI's two imports.
fn linker(engine: &TransformEngine) -> Linker<HostState> {
    let mut linker = Linker::new(engine.engine());
    linker
        .func_wrap("conveyor", "emit", host_emit)
        .expect("emit is defined once");
    linker
        .func_wrap("conveyor", "fail", host_fail)
        .expect("fail is defined once");
    linker
}

/// What a successful call produced.
#[derive(Debug, Default)]
pub struct CallOutput {
    pub outputs: Vec<Reading>,
    /// Input records (by index in the call) the guest rejected, and why.
    pub rejected: Vec<(usize, String)>,
    pub fuel_used: u64,
    pub output_bytes: usize,
}

/// A live instance of a module.
pub struct TransformInstance {
    module: Arc<TransformModule>,
    store: Store<HostState>,
    alloc: TypedFunc<i32, i32>,
    transform: TypedFunc<(i32, i32, i32), i32>,
    buf: Vec<u8>,
}

impl TransformInstance {
    /// Instantiates `module` and gives it its config (JSON object text).
    pub fn new(
        engine: &TransformEngine,
        module: Arc<TransformModule>,
        limits: Limits,
        config_json: &str,
    ) -> Result<Self, CallFailure> {
        let failed = |message: String| CallFailure {
            kind: FailureKind::Instantiate,
            message,
        };
        let mut store = Store::new(
            engine.engine(),
            HostState {
                limits,
                memory: None,
                peak_memory: 0,
                count: 0,
                outputs: Vec::new(),
                output_bytes: 0,
                rejected: Vec::new(),
                call_error: None,
                streams: StreamNames::default(),
            },
        );
        store.limiter(|s| s);
        store.set_fuel(INIT_FUEL).expect("fuel is enabled");
        let instance = linker(engine)
            .instantiate(&mut store, &module.module)
            .map_err(|e| failed(describe(&e)))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| failed("no memory export".into()))?;
        store.data_mut().memory = Some(memory);
        let alloc = instance
            .get_typed_func(&mut store, "conveyor_alloc")
            .map_err(|e| failed(describe(&e)))?;
        let transform = instance
            .get_typed_func(&mut store, "conveyor_transform")
            .map_err(|e| failed(describe(&e)))?;
        let mut this = TransformInstance {
            module,
            store,
            alloc,
            transform,
            buf: Vec::new(),
        };
        if this.module.has_init {
            let init: TypedFunc<(i32, i32), i32> = instance
                .get_typed_func(&mut this.store, "conveyor_init")
                .map_err(|e| failed(describe(&e)))?;
            let (ptr, len) = this
                .write_input(config_json.as_bytes())
                .map_err(|f| failed(f.message))?;
            let status = init
                .call(&mut this.store, (ptr, len))
                .map_err(|e| failed(format!("conveyor_init: {}", describe(&e))))?;
            if status != 0 {
                let reason = this.store.data_mut().call_error.take();
                return Err(failed(format!(
                    "the transform refused its config: {}",
                    reason.unwrap_or_else(|| format!("conveyor_init returned {status}"))
                )));
            }
        }
        Ok(this)
    }

    pub fn module(&self) -> &Arc<TransformModule> {
        &self.module
    }

    /// Highest linear memory size seen, bytes.
    pub fn peak_memory(&self) -> usize {
        self.store.data().peak_memory
    }

    /// Copies `bytes` into a buffer from `conveyor_alloc`.
    fn write_input(&mut self, bytes: &[u8]) -> Result<(i32, i32), CallFailure> {
        let len = i32::try_from(bytes.len()).map_err(|_| CallFailure {
            kind: FailureKind::BadAlloc,
            message: format!("input of {} bytes is too large", bytes.len()),
        })?;
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|e| classify(&e, None))?;
        let memory = self.store.data().memory.expect("set at instantiation");
        let fits = ptr != 0
            && (ptr as u32 as usize)
                .checked_add(bytes.len())
                .is_some_and(|end| end <= memory.data_size(&self.store));
        if !fits {
            return Err(CallFailure {
                kind: FailureKind::BadAlloc,
                message: format!(
                    "conveyor_alloc({len}) returned {:#x}, not a buffer inside linear memory",
                    ptr as u32
                ),
            });
        }
        memory.data_mut(&mut self.store)[ptr as u32 as usize..][..bytes.len()]
            .copy_from_slice(bytes);
        Ok((ptr, len))
    }

    /// Runs one call over `inputs`. After an `Err` the instance must not
    /// be used again.
    pub fn call(&mut self, inputs: &[Reading]) -> Result<CallOutput, CallFailure> {
        let mut buf = std::mem::take(&mut self.buf);
        encode_batch(inputs, &mut buf);
        let fuel = self
            .store
            .data()
            .limits
            .fuel_per_record
            .saturating_mul(inputs.len() as u64)
            .saturating_add(CALL_BASE_FUEL);
        self.store.set_fuel(fuel).expect("fuel is enabled");
        {
            let state = self.store.data_mut();
            state.count = inputs.len();
            state.outputs.clear();
            state.output_bytes = 0;
            state.rejected.clear();
            state.call_error = None;
        }
        let written = self.write_input(&buf);
        self.buf = buf;
        let (ptr, len) = written?;
        let result = self
            .transform
            .call(&mut self.store, (ptr, len, inputs.len() as i32));
        let fuel_used = fuel - self.store.get_fuel().unwrap_or(0);
        let state = self.store.data_mut();
        match result {
            Ok(0) => Ok(CallOutput {
                outputs: std::mem::take(&mut state.outputs),
                rejected: std::mem::take(&mut state.rejected),
                fuel_used,
                output_bytes: state.output_bytes,
            }),
            Ok(status) => Err(CallFailure {
                kind: FailureKind::ReturnedError,
                message: state
                    .call_error
                    .take()
                    .unwrap_or_else(|| format!("conveyor_transform returned {status}")),
            }),
            Err(e) => Err(classify(&e, Some(fuel))),
        }
    }
}

/// Names a trap or host error.
fn classify(e: &wasmtime::Error, fuel: Option<u64>) -> CallFailure {
    let (kind, message) = if let Some(h) = e.downcast_ref::<HostTrap>() {
        let kind = match h {
            HostTrap::MemoryLimit { .. } | HostTrap::TableLimit(_) => FailureKind::MemoryLimit,
            HostTrap::OutputCap { .. } => FailureKind::OutputCap,
            HostTrap::Malformed { .. }
            | HostTrap::OutOfBounds { .. }
            | HostTrap::BadIndex { .. }
            | HostTrap::NotReady => FailureKind::MalformedOutput,
        };
        (kind, h.to_string())
    } else if let Some(t) = e.downcast_ref::<Trap>() {
        match t {
            Trap::OutOfFuel => (
                FailureKind::OutOfFuel,
                match fuel {
                    Some(f) => format!(
                        "ran out of fuel ({f} units): an endless loop, or raise fuel_per_record"
                    ),
                    None => "ran out of fuel".to_string(),
                },
            ),
            other => (FailureKind::Trap, format!("trap: {other}")),
        }
    } else {
        (FailureKind::Trap, describe(e))
    };
    CallFailure { kind, message }
}

fn describe(e: &wasmtime::Error) -> String {
    if let Some(h) = e.downcast_ref::<HostTrap>() {
        return h.to_string();
    }
    if let Some(t) = e.downcast_ref::<Trap>() {
        return format!("trap: {t}");
    }
    format!("{e:#}")
}
