//! What [`export_transform!`](crate::export_transform) expands to call. Not
//! a public API: it may change with any release.
//!
//! The metadata is built in const context so that it can sit in a
//! `#[link_section]` static (the host reads it without running any code);
//! the ABI's rules for `name` and `version` are checked there too, so a bad
//! name is a compile error rather than a module the agent refuses.

const PREFIX: &[u8] = br#"{"name":""#;
const MIDDLE: &[u8] = br#"","version":""#;
const SUFFIX: &[u8] = br#"","abi":1}"#;

/// Length of the `conveyor.transform` section for `name` and `version`.
/// Panics (at compile time, in the macro) if either breaks the ABI's rules.
pub const fn meta_len(name: &str, version: &str) -> usize {
    check_name(name);
    check_version(version);
    PREFIX.len() + name.len() + MIDDLE.len() + version.len() + SUFFIX.len()
}

/// The `conveyor.transform` section: `{"name":"..","version":"..","abi":1}`.
pub const fn meta<const N: usize>(name: &str, version: &str) -> [u8; N] {
    assert!(N == meta_len(name, version), "meta: wrong length");
    let mut out = [0u8; N];
    let mut at = 0;
    at = copy(&mut out, at, PREFIX);
    at = copy(&mut out, at, name.as_bytes());
    at = copy(&mut out, at, MIDDLE);
    at = copy(&mut out, at, version.as_bytes());
    copy(&mut out, at, SUFFIX);
    out
}

const fn copy<const N: usize>(out: &mut [u8; N], mut at: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        out[at] = bytes[i];
        at += 1;
        i += 1;
    }
    at
}

const fn check_name(name: &str) {
    let b = name.as_bytes();
    assert!(
        !b.is_empty() && b.len() <= 64,
        "transform name must be 1-64 characters"
    );
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        assert!(
            c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-',
            "transform name may only use [A-Za-z0-9_.-]"
        );
        i += 1;
    }
}

const fn check_version(version: &str) {
    let b = version.as_bytes();
    assert!(
        !b.is_empty() && b.len() <= 64,
        "transform version must be 1-64 characters"
    );
    let mut i = 0;
    while i < b.len() {
        // No spaces (the ABI), and nothing that would need escaping in JSON.
        let c = b[i];
        assert!(
            c > b' ' && c != b'"' && c != b'\\' && c != 0x7f,
            "transform version may not contain spaces, quotes, backslashes or control characters"
        );
        i += 1;
    }
}

#[cfg(target_arch = "wasm32")]
pub use guest::*;

/// The exports' bodies. A WASM instance is single-threaded, and the host
/// never re-enters the guest while an export runs (the imports call no
/// guest code), so plain cells with no locking are sound here.
#[cfg(target_arch = "wasm32")]
mod guest {
    use crate::{Output, Sink, Transform};
    use alloc::vec::Vec;
    use core::cell::UnsafeCell;

    #[link(wasm_import_module = "conveyor")]
    extern "C" {
        #[link_name = "emit"]
        fn conveyor_emit(ptr: i32, len: i32);
        #[link_name = "fail"]
        fn conveyor_fail(index: i32, ptr: i32, len: i32);
    }

    /// A global for a single-threaded WASM instance.
    pub struct Slot<T>(UnsafeCell<T>);

    // SAFETY: wasm32-unknown-unknown instances run one thread, and the
    // exports below never hold two references into a slot at once.
    unsafe impl<T> Sync for Slot<T> {}

    impl<T> Slot<T> {
        pub const fn new(value: T) -> Self {
            Slot(UnsafeCell::new(value))
        }

        /// SAFETY: no other reference into this slot may be alive.
        #[allow(clippy::mut_from_ref)]
        unsafe fn get(&self) -> &mut T {
            &mut *self.0.get()
        }
    }

    /// The state of one transform instance.
    pub struct State<T> {
        transform: Option<T>,
        /// `conveyor_init` refused the config: no `{}` fallback then.
        init_failed: bool,
        output: Output,
    }

    impl<T> Default for State<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<T> State<T> {
        pub const fn new() -> Self {
            State {
                transform: None,
                init_failed: false,
                output: Output {
                    buf: Vec::new(),
                    ends: Vec::new(),
                },
            }
        }
    }

    /// The buffer `conveyor_alloc` hands out: one, grown as needed, made of
    /// u64s so that it is 8-aligned.
    static INPUT: Slot<Vec<u64>> = Slot::new(Vec::new());

    struct Host;

    impl Sink for Host {
        fn emit(&mut self, record: &[u8]) {
            unsafe { conveyor_emit(record.as_ptr() as i32, record.len() as i32) }
        }
        fn fail(&mut self, index: usize, reason: &str) {
            fail(index as i32, reason)
        }
    }

    fn fail(index: i32, reason: &str) {
        unsafe { conveyor_fail(index, reason.as_ptr() as i32, reason.len() as i32) }
    }

    pub fn alloc(size: i32) -> i32 {
        if size < 0 {
            return 0;
        }
        // SAFETY: single-threaded; the host calls no other export meanwhile.
        let buf = unsafe { INPUT.get() };
        let words = (size as usize).div_ceil(8).max(1);
        if buf.len() < words {
            if buf.try_reserve_exact(words - buf.len()).is_err() {
                return 0;
            }
            buf.resize(words, 0);
        }
        buf.as_mut_ptr() as i32
    }

    /// The bytes `ptr..ptr+len`, which must lie in the `conveyor_alloc`
    /// buffer (the ABI says they do; checking it is cheap and turns a host
    /// bug into a clear reason instead of a read of random memory).
    fn input<'a>(ptr: i32, len: i32) -> Result<&'a [u8], &'static str> {
        // SAFETY: single-threaded; the buffer is not resized until the next
        // `conveyor_alloc`, which cannot happen while an export runs.
        let buf = unsafe { INPUT.get() };
        let base = buf.as_ptr() as usize;
        let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
        if len == 0 {
            return Ok(&[]);
        }
        if ptr < base || ptr - base + len > buf.len() * 8 {
            return Err("input is not inside the buffer conveyor_alloc returned");
        }
        // SAFETY: in bounds of the initialised buffer, checked above.
        Ok(unsafe { core::slice::from_raw_parts(ptr as *const u8, len) })
    }

    pub fn init<T: Transform>(state: &Slot<State<T>>, ptr: i32, len: i32) -> i32 {
        // SAFETY: single-threaded; exports do not nest.
        let state = unsafe { state.get() };
        let result = input(ptr, len)
            .map_err(alloc::string::ToString::to_string)
            .and_then(crate::init::<T>);
        match result {
            Ok(t) => {
                state.transform = Some(t);
                state.init_failed = false;
                0
            }
            Err(reason) => {
                state.transform = None;
                state.init_failed = true;
                fail(-1, &reason);
                1
            }
        }
    }

    pub fn transform<T: Transform>(state: &Slot<State<T>>, ptr: i32, len: i32, count: i32) -> i32 {
        // SAFETY: single-threaded; exports do not nest.
        let state = unsafe { state.get() };
        if state.init_failed {
            fail(-1, "conveyor_init failed; the transform has no state");
            return 1;
        }
        if state.transform.is_none() {
            // The host calls conveyor_init first; should it not, the
            // config is `{}`, as for a stage without one.
            match crate::init::<T>(b"{}") {
                Ok(t) => state.transform = Some(t),
                Err(reason) => {
                    fail(-1, &reason);
                    return 1;
                }
            }
        }
        let Some(transform) = state.transform.as_mut() else {
            return 1;
        };
        let bytes = match input(ptr, len) {
            Ok(b) => b,
            Err(reason) => {
                fail(-1, reason);
                return 1;
            }
        };
        let count = count.max(0) as usize;
        match crate::run_batch(transform, &mut state.output, bytes, count, &mut Host) {
            Ok(()) => 0,
            Err(reason) => {
                fail(-1, &reason);
                1
            }
        }
    }
}

/// Generates a transform module's ABI surface for `Type` (which implements
/// [`Transform`](crate::Transform)): the `conveyor.transform` custom section
/// and the exports `conveyor_alloc`, `conveyor_init` and
/// `conveyor_transform`.
///
/// ```ignore
/// export_transform!(MyTransform, name = "my-transform", version = env!("CARGO_PKG_VERSION"));
/// ```
///
/// A name or version the ABI would refuse is a compile error:
///
/// ```compile_fail
/// # use conveyor_transform_sdk::{export_transform, wire::RecordRef, Output, Transform};
/// # struct T;
/// # impl Transform for T {
/// #     type Config = conveyor_transform_sdk::serde::de::IgnoredAny;
/// #     fn init(_: Self::Config) -> Result<Self, String> { Ok(T) }
/// #     fn process(&mut self, _: usize, _: RecordRef<'_>, _: &mut Output) -> Result<(), String> { Ok(()) }
/// # }
/// export_transform!(T, name = "no spaces please", version = "1.0.0");
/// ```
///
/// The exports exist only when building for `wasm32`; natively the macro
/// only checks `name` and `version` (at compile time), so any number of
/// transform crates can be linked into one test or benchmark binary.
#[macro_export]
macro_rules! export_transform {
    ($ty:ty, name = $name:expr, version = $version:expr $(,)?) => {
        const _: () = {
            const NAME: &str = $name;
            const VERSION: &str = $version;
            const META_LEN: usize = $crate::__private::meta_len(NAME, VERSION);

            #[cfg(target_arch = "wasm32")]
            #[link_section = "conveyor.transform"]
            #[used]
            static META: [u8; META_LEN] = $crate::__private::meta::<META_LEN>(NAME, VERSION);

            #[cfg(target_arch = "wasm32")]
            static STATE: $crate::__private::Slot<$crate::__private::State<$ty>> =
                $crate::__private::Slot::new($crate::__private::State::new());

            #[cfg(target_arch = "wasm32")]
            #[no_mangle]
            extern "C" fn conveyor_alloc(size: i32) -> i32 {
                $crate::__private::alloc(size)
            }

            #[cfg(target_arch = "wasm32")]
            #[no_mangle]
            extern "C" fn conveyor_init(ptr: i32, len: i32) -> i32 {
                $crate::__private::init(&STATE, ptr, len)
            }

            #[cfg(target_arch = "wasm32")]
            #[no_mangle]
            extern "C" fn conveyor_transform(ptr: i32, len: i32, count: i32) -> i32 {
                $crate::__private::transform(&STATE, ptr, len, count)
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_the_abi_json() {
        const N: usize = meta_len("scale", "1.0.0");
        let m = meta::<N>("scale", "1.0.0");
        assert_eq!(&m[..], br#"{"name":"scale","version":"1.0.0","abi":1}"#);
    }
}
