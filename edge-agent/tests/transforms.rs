//! WASM transforms through the agent's host: the example modules' outputs,
//! hostile modules contained with a clear error, the failure policy, the
//! compile cache and hot swap under load. The modules run in wasmtime
//! exactly as in the agent (same loader, limits, batching).

use std::path::{Path, PathBuf};

use conveyor_shared::control::StageStats;
use edge_agent::pipeline::{BuiltStage, StageConfig, StageContext};
use edge_agent::sources::Reading;
use edge_agent::transform::{dead_letter, TransformEngine, TransformStageConfig};

fn dist(name: &str) -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .join("../transforms/dist")
    .join(format!("{name}.wasm"))
}

/// A transform stage on stream `s` built from `toml` (its `chain` etc.).
fn stage(dir: &Path, toml: &str) -> Result<BuiltStage, String> {
    let config: StageConfig =
        toml::from_str(&format!("type = \"transform\"\nstream = \"s\"\n{toml}")).unwrap();
    config.validate("stages[0]").map_err(|e| e.to_string())?;
    config
        .build(0, "stages[0]", &StageContext::new(dir))
        .map_err(|e| e.to_string())
}

fn chain_of(path: &Path, config: &str) -> String {
    format!(
        "chain = [{{ wasm = {:?}, config = {config} }}]\n",
        path.display().to_string()
    )
}

fn reading(ts: i64, values: &[f64]) -> Reading {
    Reading {
        stream: "s".into(),
        ts_us: ts,
        values: values.to_vec(),
        ..Reading::default()
    }
}

fn run(built: &mut BuiltStage, inputs: Vec<Reading>) -> Vec<Reading> {
    let mut out = Vec::new();
    built.stage.process_batch(inputs, &mut out);
    out
}

fn refusal(r: Result<BuiltStage, String>) -> String {
    match r {
        Ok(_) => panic!("the stage was built"),
        Err(e) => e,
    }
}

fn stats(built: &BuiltStage) -> StageStats {
    built.monitor.snapshot()
}

// ---- the examples ----------------------------------------------------------

#[test]
fn scale_applies_affine_and_zscore_per_channel_and_tags_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = stage(
        dir.path(),
        &chain_of(&dist("scale"), "{ scale = [2.0, 10.0], offset = 1.0 }"),
    )
    .unwrap();
    let out = run(
        &mut s,
        vec![reading(1, &[1.0, 2.0]), reading(2, &[-1.0, 0.5])],
    );
    let values: Vec<_> = out.iter().map(|r| r.values.clone()).collect();
    assert_eq!(values, vec![vec![3.0, 21.0], vec![-1.0, 6.0]]);
    assert_eq!(out[0].ts_us, 1);
    let tag = &*out[0].transforms[0];
    assert!(tag.starts_with("scale@"), "{tag}");
    // A record with the wrong channel count is rejected, dead-lettered, and
    // its neighbours go on.
    let out = run(&mut s, vec![reading(3, &[1.0]), reading(4, &[0.0, 0.0])]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].values, vec![1.0, 1.0]);
    let letters = dead_letter::read_all(dir.path()).unwrap().letters;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].kind, "rejected");
    assert_eq!(letters[0].record.values, vec![1.0]);
    assert!(letters[0].reason.contains("2"), "{}", letters[0].reason);
    let t = &stats(&s).transforms[0];
    assert_eq!((t.records_in, t.records_out, t.rejected), (4, 3, 1));
    assert_eq!(t.state, "active");

    let mut z = stage(
        dir.path(),
        &chain_of(
            &dist("scale"),
            r#"{ mode = "zscore", mean = [1.0, 10.0], std = [2.0, 5.0], output_stream = "s.norm" }"#,
        ),
    )
    .unwrap();
    let out = run(&mut z, vec![reading(1, &[5.0, 0.0])]);
    assert_eq!(out[0].values, vec![2.0, -2.0]);
    assert_eq!(&*out[0].stream, "s.norm");
}

#[test]
fn window_features_match_a_native_computation() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = stage(
        dir.path(),
        &chain_of(
            &dist("window-features"),
            "{ window = 8, sample_rate_hz = 8.0 }",
        ),
    )
    .unwrap();
    // Channel 0: a 2 Hz sine sampled at 8 Hz; channel 1: a constant.
    let inputs: Vec<Reading> = (0..16)
        .map(|i| {
            let x = (2.0 * std::f64::consts::PI * 2.0 * i as f64 / 8.0).sin();
            Reading {
                label: "walking".into(),
                ..reading(i, &[x, 3.0])
            }
        })
        .collect();
    let out = run(&mut s, inputs.clone());
    assert_eq!(out.len(), 2, "one record per full window (hop = window)");
    assert_eq!(&*out[0].stream, "s.features");
    assert_eq!(out[0].ts_us, 7);
    assert_eq!(out[0].label, "walking");
    assert_eq!(out[0].values.len(), 12, "6 features x 2 channels");
    let window: Vec<f64> = inputs[..8].iter().map(|r| r.values[0]).collect();
    let mean = window.iter().sum::<f64>() / 8.0;
    let std = (window.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 8.0).sqrt();
    let min = window.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = window.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let rms = (window.iter().map(|x| x * x).sum::<f64>() / 8.0).sqrt();
    let expect = [mean, std, min, max, rms, 2.0];
    for (got, want) in out[0].values[..6].iter().zip(expect) {
        assert!(
            (got - want).abs() < 1e-9,
            "{:?} vs {expect:?}",
            &out[0].values[..6]
        );
    }
    assert_eq!(&out[0].values[6..], &[3.0, 0.0, 3.0, 3.0, 3.0, 0.0]);
}

#[test]
fn threshold_keeps_records_inside_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = stage(
        dir.path(),
        &chain_of(
            &dist("threshold"),
            "{ channel = 1, above = 0.5, below = 2.0 }",
        ),
    )
    .unwrap();
    let out = run(
        &mut s,
        vec![
            reading(1, &[9.0, 1.0]),
            reading(2, &[9.0, 0.5]),
            reading(3, &[9.0, 2.5]),
            reading(4, &[9.0, 1.9]),
        ],
    );
    assert_eq!(out.iter().map(|r| r.ts_us).collect::<Vec<_>>(), vec![1, 4]);
    // A bound-less config is refused at build time, naming the field.
    let e = refusal(stage(
        dir.path(),
        &chain_of(&dist("threshold"), "{ channel = 0 }"),
    ));
    assert!(e.starts_with("stages[0].chain[0].config:"), "{e}");
}

#[test]
fn redact_pos_masks_cards_and_emails_and_never_passes_unparsed_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = stage(dir.path(), &chain_of(&dist("redact-pos"), "{}")).unwrap();
    let receipt = r#"{"store":"S-104","lane":3,"items":[{"sku":"8410076472069","qty":2,"price":1.25}],"tender":{"type":"card","pan":"4111 1111 1111 1111","holder_email":"jane.doe@example.com"},"customer":{"loyalty":5500000000000004},"note":"refund to 5105-1051-0510-5100, mail bob@shop.co.uk"}"#;
    let pos = |ts: i64, payload: &str| Reading {
        payload: payload.as_bytes().to_vec(),
        ..reading(ts, &[])
    };
    let out = run(
        &mut s,
        vec![pos(1, receipt), pos(2, "card 4111111111111111")],
    );
    assert_eq!(out.len(), 1, "the non-JSON payload must not pass");
    let text = String::from_utf8(out[0].payload.clone()).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["tender"]["pan"], "**** **** **** 1111");
    assert_eq!(doc["tender"]["holder_email"], "[redacted-email]");
    assert_eq!(doc["customer"]["loyalty"], "************0004");
    assert_eq!(
        doc["note"],
        "refund to ****-****-****-5100, mail [redacted-email]"
    );
    // Not card numbers (Luhn fails or too short): left alone.
    assert_eq!(doc["items"][0]["sku"], "8410076472069");
    assert_eq!(doc["lane"], 3);
    for secret in ["4111 1111 1111 1111", "jane.doe", "5105-1051", "bob@"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let letters = dead_letter::read_all(dir.path()).unwrap().letters;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.starts_with("payload is not JSON"),
        "{}",
        letters[0].reason
    );
}

#[test]
fn the_hand_written_wat_module_speaks_the_same_abi() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = stage(
        dir.path(),
        &format!("chain = [{{ wasm = {:?} }}]", dist("positive")),
    )
    .unwrap();
    let out = run(
        &mut s,
        vec![
            Reading {
                label: "a".into(),
                payload: b"xyz".to_vec(),
                ..reading(1, &[1.0, 2.0])
            },
            reading(2, &[-1.0]),
            reading(3, &[]),
            reading(4, &[0.5]),
        ],
    );
    assert_eq!(out.iter().map(|r| r.ts_us).collect::<Vec<_>>(), vec![1, 4]);
    assert_eq!(out[0].label, "a");
    assert_eq!(out[0].payload, b"xyz");
    assert_eq!(&*out[0].transforms[0], "wat-positive@1.0.0");
}

#[test]
fn a_chain_applies_in_order_and_records_carry_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "chain = [{{ wasm = {:?}, config = {{ scale = 2.0 }} }}, {{ wasm = {:?}, config = {{ above = 3.0 }} }}]",
        dist("scale"),
        dist("threshold")
    );
    let mut s = stage(dir.path(), &toml).unwrap();
    let out = run(&mut s, vec![reading(1, &[1.0]), reading(2, &[2.0])]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].values, vec![4.0]);
    let tags: Vec<&str> = out[0].transforms.iter().map(|t| &**t).collect();
    assert_eq!(tags.len(), 2);
    assert!(
        tags[0].starts_with("scale@") && tags[1].starts_with("threshold@"),
        "{tags:?}"
    );
    // Other streams pass by untouched.
    let other = Reading {
        stream: "t".into(),
        ..reading(9, &[1.0])
    };
    assert_eq!(run(&mut s, vec![other.clone()]), vec![other]);
}

// ---- hostile modules ---------------------------------------------------------

/// A module that speaks the ABI with `body` as `conveyor_transform`'s body
/// (params: 0 = ptr, 1 = len, 2 = count), written to `dir/<name>.wasm`.
fn hostile(dir: &Path, name: &str, body: &str) -> PathBuf {
    module(
        dir,
        name,
        "1.0.0",
        &format!(r#"(func (export "conveyor_transform") (param i32 i32 i32) (result i32) {body})"#),
    )
}

fn module(dir: &Path, name: &str, version: &str, funcs: &str) -> PathBuf {
    let wat = format!(
        r#"(module
          (@custom "conveyor.transform" "{{\"name\":\"{name}\",\"version\":\"{version}\",\"abi\":1}}")
          (import "conveyor" "emit" (func $emit (param i32 i32)))
          (import "conveyor" "fail" (func $fail (param i32 i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "broken on purpose")
          (func (export "conveyor_alloc") (param i32) (result i32) i32.const 1024)
          {funcs})"#
    );
    let path = dir.join(format!("{name}-{version}.wasm"));
    std::fs::write(&path, wat::parse_str(&wat).unwrap()).unwrap();
    path
}

/// Re-emits its one input (batch_size = 1), but traps on a negative value.
const TRAP_ON_NEGATIVE: &str = r#"
    (if (f64.lt (f64.load offset=24 (local.get 0)) (f64.const 0)) (then unreachable))
    (call $emit (local.get 0) (local.get 1))
    i32.const 0"#;

fn one_per_call(path: &Path, extra: &str) -> String {
    format!("batch_size = 1\n{extra}\n{}", chain_of(path, "{}"))
}

/// Runs `path` on a good record, a poisoned one, and a good one: the
/// poisoned one is dead-lettered with `kind`, the good ones go on.
fn contained(dir: &Path, path: &Path, kind: &str, extra: &str) -> String {
    let mut s = stage(dir, &one_per_call(path, extra)).unwrap();
    let out = run(
        &mut s,
        vec![reading(1, &[1.0]), reading(2, &[-1.0]), reading(3, &[2.0])],
    );
    assert_eq!(out.iter().map(|r| r.ts_us).collect::<Vec<_>>(), vec![1, 3]);
    let letters = dead_letter::read_all(dir).unwrap().letters;
    let l = letters.last().unwrap();
    assert_eq!((l.kind.as_str(), l.record.source_ts_us), (kind, 2), "{l:?}");
    let t = &stats(&s).transforms[0];
    assert_eq!(t.failures.get(kind), Some(&1), "{t:?}");
    assert_eq!(t.state, "active");
    l.reason.clone()
}

#[test]
fn a_trap_dead_letters_the_record_and_the_next_records_run_on_a_fresh_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = hostile(dir.path(), "trap", TRAP_ON_NEGATIVE);
    let reason = contained(dir.path(), &path, "trap", "");
    assert!(reason.contains("unreachable"), "{reason}");
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "(if (f64.lt (f64.load offset=24 (local.get 0)) (f64.const 0)) (then (loop $l (br $l)))) {}",
        "(call $emit (local.get 0) (local.get 1)) i32.const 0"
    );
    let path = hostile(dir.path(), "loop", &body);
    let reason = contained(
        dir.path(),
        &path,
        "out_of_fuel",
        "fuel_per_record = 1000000",
    );
    assert!(reason.contains("fuel"), "{reason}");
}

#[test]
fn a_memory_bomb_is_stopped_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let body = "(if (f64.lt (f64.load offset=24 (local.get 0)) (f64.const 0)) \
                (then (loop $l (drop (memory.grow (i32.const 16))) (br $l)))) \
                (call $emit (local.get 0) (local.get 1)) i32.const 0";
    let path = hostile(dir.path(), "bomb", body);
    let reason = contained(dir.path(), &path, "memory_limit", "memory_limit_mb = 4");
    assert!(reason.contains("limit of 4194304"), "{reason}");
}

#[test]
fn an_output_flood_hits_the_output_cap() {
    let dir = tempfile::tempdir().unwrap();
    let body = "(if (f64.lt (f64.load offset=24 (local.get 0)) (f64.const 0)) \
                (then (loop $l (call $emit (local.get 0) (local.get 1)) (br $l)))) \
                (call $emit (local.get 0) (local.get 1)) i32.const 0";
    let path = hostile(dir.path(), "flood", body);
    let reason = contained(dir.path(), &path, "output_cap", "max_output_bytes = 4096");
    assert!(reason.contains("max_output_bytes (4096"), "{reason}");
}

#[test]
fn malformed_output_and_a_non_zero_return_are_failures_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let body = "(if (f64.lt (f64.load offset=24 (local.get 0)) (f64.const 0)) \
                (then (call $emit (i32.const 16) (i32.const 5)))) \
                (call $emit (local.get 0) (local.get 1)) i32.const 0";
    let path = hostile(dir.path(), "garbage", body);
    let reason = contained(dir.path(), &path, "malformed_output", "");
    assert!(reason.contains("malformed"), "{reason}");

    let dir = tempfile::tempdir().unwrap();
    let body = "(if (f64.lt (f64.load offset=24 (local.get 0)) (f64.const 0)) \
                (then (call $fail (i32.const -1) (i32.const 16) (i32.const 17)) (return (i32.const 1)))) \
                (call $emit (local.get 0) (local.get 1)) i32.const 0";
    let path = hostile(dir.path(), "refuses", body);
    let reason = contained(dir.path(), &path, "returned_error", "");
    assert_eq!(reason, "broken on purpose");
}

#[test]
fn modules_that_break_the_abi_are_refused_at_load_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refused = |path: &Path| refusal(stage(d, &chain_of(path, "{}")));
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let meta = r#"(@custom "conveyor.transform" "{\"name\":\"x\",\"version\":\"1\",\"abi\":1}")"#;
    let alloc = r#"(func (export "conveyor_alloc") (param i32) (result i32) i32.const 1024)"#;
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("text.wasm", b"hello, not wasm at all"), "not a WebAssembly module"),
        (d.join("missing.wasm"), "cannot read"),
        (
            write("truncated.wasm", &std::fs::read(dist("scale")).unwrap()[..5000]),
            "invalid WebAssembly",
        ),
        (
            write("component.wasm", b"\0asm\x0d\0\x01\0"),
            "WebAssembly component",
        ),
        (
            write("nometa.wasm", &wat::parse_str(format!(r#"(module (memory (export "memory") 1) {alloc})"#)).unwrap()),
            "no `conveyor.transform` custom section",
        ),
        (
            write("abi2.wasm", &wat::parse_str(r#"(module (@custom "conveyor.transform" "{\"name\":\"x\",\"version\":\"1\",\"abi\":2}"))"#).unwrap()),
            "abi 2 is not supported",
        ),
        (
            write("noexport.wasm", &wat::parse_str(format!(r#"(module {meta} (memory (export "memory") 1) {alloc})"#)).unwrap()),
            "missing export `conveyor_transform`",
        ),
        (
            write("wrongtype.wasm", &wat::parse_str(format!(
                r#"(module {meta} (memory (export "memory") 1) {alloc} (func (export "conveyor_transform") (param i32) (result i32) i32.const 0))"#
            )).unwrap()),
            "`export conveyor_transform` has type (i32) -> (i32); the ABI says (i32, i32, i32) -> (i32)",
        ),
        (
            write("wasi.wasm", &wat::parse_str(format!(
                r#"(module {meta} (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) (memory (export "memory") 1) {alloc} (func (export "conveyor_transform") (param i32 i32 i32) (result i32) i32.const 0))"#
            )).unwrap()),
            "imports `wasi_snapshot_preview1.fd_write`",
        ),
        (
            write("start.wasm", &wat::parse_str(format!(
                r#"(module {meta} (import "conveyor" "emit" (func $emit (param i32 i32))) (memory (export "memory") 1) {alloc} (func (export "conveyor_transform") (param i32 i32 i32) (result i32) i32.const 0) (func $start (call $emit (i32.const 0) (i32.const 0))) (start $start))"#
            )).unwrap()),
            "called during instantiation",
        ),
        (
            write("start.wasm", &wat::parse_str(format!(
                r#"(module {meta} (import "conveyor" "emit" (func $emit (param i32 i32))) (memory (export "memory") 1) {alloc} (func (export "conveyor_transform") (param i32 i32 i32) (result i32) i32.const 0) (func $start (call $emit (i32.const 0) (i32.const 0))) (start $start))"#
            )).unwrap()),
            "called during instantiation",
        ),
        (
            write("hugemem.wasm", &wat::parse_str(format!(
                r#"(module {meta} (memory (export "memory") 1000) {alloc} (func (export "conveyor_transform") (param i32 i32 i32) (result i32) i32.const 0))"#
            )).unwrap()),
            "past the limit",
        ),
    ];
    for (path, want) in cases {
        let e = refused(&path);
        assert!(e.starts_with("stages[0].chain[0]."), "{e}");
        assert!(e.contains(want), "{}: want {want:?} in {e}", path.display());
    }
}

// ---- failure policy ------------------------------------------------------------

fn poisoned(n: usize) -> Vec<Reading> {
    (0..n as i64).map(|i| reading(i, &[-1.0])).collect()
}

#[test]
fn repeated_failures_disable_the_transform_and_pass_lets_records_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = hostile(dir.path(), "trap", TRAP_ON_NEGATIVE);
    let mut s = stage(
        dir.path(),
        &one_per_call(&path, "max_consecutive_failures = 3"),
    )
    .unwrap();
    let out = run(&mut s, poisoned(5));
    // Three failures dead-lettered, then disabled: the other two pass untouched.
    assert_eq!(out.iter().map(|r| r.ts_us).collect::<Vec<_>>(), vec![3, 4]);
    assert!(out.iter().all(|r| r.transforms.is_empty()));
    let t = &stats(&s).transforms[0];
    assert_eq!(t.state, "disabled");
    assert!(
        t.disabled_reason.contains("3 consecutive failures"),
        "{}",
        t.disabled_reason
    );
    assert_eq!((t.dead_lettered, t.passed_disabled), (3, 2));
    // Good records now pass by untouched too.
    let out = run(&mut s, vec![reading(10, &[1.0])]);
    assert!(out[0].transforms.is_empty());
}

#[test]
fn the_drop_policy_sends_records_to_the_dead_letter_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = hostile(dir.path(), "trap", TRAP_ON_NEGATIVE);
    let mut s = stage(
        dir.path(),
        &one_per_call(
            &path,
            "max_consecutive_failures = 2\non_disabled = \"drop\"",
        ),
    )
    .unwrap();
    assert!(run(&mut s, poisoned(2)).is_empty());
    assert!(run(&mut s, vec![reading(7, &[1.0])]).is_empty());
    let letters = dead_letter::read_all(dir.path()).unwrap().letters;
    let kinds: Vec<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds, vec!["trap", "trap", "disabled"]);
    assert!(letters[2]
        .reason
        .starts_with("transform disabled: 2 consecutive failures"));
}

#[test]
fn a_success_resets_the_failure_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = hostile(dir.path(), "trap", TRAP_ON_NEGATIVE);
    let mut s = stage(
        dir.path(),
        &one_per_call(&path, "max_consecutive_failures = 2"),
    )
    .unwrap();
    for i in 0..5 {
        run(&mut s, vec![reading(i, &[-1.0]), reading(i, &[1.0])]);
    }
    assert_eq!(stats(&s).transforms[0].state, "active");
}

// ---- compile cache -----------------------------------------------------------------

#[test]
fn compiled_modules_are_cached_by_content_and_a_damaged_cache_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let load = || {
        TransformEngine::new(Some(cache.clone()))
            .unwrap()
            .load(&dist("window-features"))
            .unwrap()
    };
    let first = load();
    assert!(!first.from_cache);
    let second = load();
    assert!(second.from_cache, "a restart loads the compiled form");
    assert_eq!(first.sha256, second.sha256);
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(&first.sha256));
    // Flip a byte of the compiled code: ignored, compiled again, rewritten.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    assert!(!load().from_cache);
    assert!(load().from_cache);
}

// ---- hot swap ----------------------------------------------------------------------

/// A pass-through module of the given version (re-emits each record).
fn tagger(dir: &Path, version: &str) -> PathBuf {
    module(
        dir,
        "tagger",
        version,
        &format!(
            r#"(func (export "conveyor_transform") (param i32 i32 i32) (result i32) {TRAP_ON_NEGATIVE})"#
        ),
    )
}

#[test]
fn a_hot_swap_under_load_loses_no_record_and_runs_each_on_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = tagger(dir.path(), "1");
    let v2 = tagger(dir.path(), "2");
    let toml = |p: &Path| {
        format!(
            "type = \"transform\"\nstream = \"s\"\nbatch_size = 1\n{}",
            chain_of(p, "{}")
        )
    };
    let config: TransformStageConfig = toml::from_str::<StageConfig>(&toml(&v1))
        .map(|c| match c {
            StageConfig::Transform(t) => t,
            _ => unreachable!(),
        })
        .unwrap();
    let ctx = StageContext::new(dir.path());
    let built = StageConfig::Transform(config.clone())
        .build(0, "stages[0]", &ctx)
        .unwrap();
    let slot = match &built.control {
        edge_agent::pipeline::StageControl::Transforms(s) => s.clone(),
        _ => unreachable!(),
    };
    let mut stage = built.stage;
    // The pipeline thread: batches of 50 until 100 batches after it first
    // sees the new version (so the swap lands while records flow).
    let worker = std::thread::spawn(move || {
        let (mut out, mut sent) = (Vec::new(), 0);
        let mut seen_v2_at = None;
        for b in 0..200_000i64 {
            let batch = (0..50).map(|i| reading(b * 50 + i, &[1.0])).collect();
            stage.process_batch(batch, &mut out);
            sent += 50;
            if seen_v2_at.is_none()
                && out
                    .last()
                    .is_some_and(|r: &Reading| &*r.transforms[0] == "tagger@2")
            {
                seen_v2_at = Some(b);
            }
            if seen_v2_at.is_some_and(|s| b >= s + 100) {
                break;
            }
        }
        (out, sent)
    });
    // Meanwhile: same name and version with other bytes is refused; v2 is taken.
    let clash = module(
        dir.path(),
        "tagger",
        "1",
        r#"(func (export "conveyor_transform") (param i32 i32 i32) (result i32) i32.const 0)"#,
    );
    let v1_other = dir.path().join("tagger-1-other.wasm");
    std::fs::rename(&clash, &v1_other).unwrap();
    let refused = slot
        .replace(
            &TransformStageConfig {
                chain: vec![edge_agent::transform::ChainEntry {
                    wasm: v1_other,
                    config: Default::default(),
                }],
                ..config.clone()
            },
            "stages[0]",
        )
        .unwrap_err()
        .to_string();
    assert!(refused.contains("needs a new version"), "{refused}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let tags = slot
        .replace(
            &TransformStageConfig {
                chain: vec![edge_agent::transform::ChainEntry {
                    wasm: v2,
                    config: Default::default(),
                }],
                ..config
            },
            "stages[0]",
        )
        .unwrap();
    assert_eq!(tags, Some(vec!["tagger@2".to_string()]));
    let (out, sent) = worker.join().unwrap();
    assert_eq!(out.len(), sent, "no record lost or doubled");
    assert!(
        out.iter().enumerate().all(|(i, r)| r.ts_us == i as i64),
        "in order"
    );
    let versions: Vec<&str> = out.iter().map(|r| &*r.transforms[0]).collect();
    assert!(versions
        .iter()
        .all(|v| *v == "tagger@1" || *v == "tagger@2"));
    let switch = versions.iter().position(|v| *v == "tagger@2");
    let switch = switch.expect("the swap happened while records flowed");
    assert!(
        switch > 0 && switch % 50 == 0,
        "swapped between batches: {switch}"
    );
    assert!(versions[switch..].iter().all(|v| *v == "tagger@2"));
}
