;; positive.wat: a Conveyor transform written by hand, to show that the ABI
;; (docs/transform-abi.md) is small enough to implement without an SDK.
;;
;; It keeps the records whose first value is > 0.0 and drops the others
;; (records with no values, and NaN, are dropped too). Kept records are
;; re-emitted byte for byte straight from the input buffer: no copy.
;;
;; Build: cargo run -p conveyor-transform-sdk --example wat2wasm -- \
;;          transforms/wat/positive.wat transforms/dist/positive.wasm
;; (transforms/build.sh does it.)
(module
  ;; Who we are. The host reads this custom section before running anything;
  ;; `name@version` is stamped on every record we touch.
  (@custom "conveyor.transform" "{\"name\":\"wat-positive\",\"version\":\"1.0.0\",\"abi\":1}")

  ;; The only two functions a transform may import, both from "conveyor".
  ;; emit(ptr, len): one output record, encoded, at ptr. The host copies it.
  (import "conveyor" "emit" (func $emit (param i32 i32)))
  ;; fail(index, ptr, len): reject input record `index` with a UTF-8 reason;
  ;; index -1 explains a non-zero return of conveyor_transform.
  (import "conveyor" "fail" (func $fail (param i32 i32 i32)))

  ;; Linear memory, exported as "memory": the host writes input batches into
  ;; it and reads emitted records from it. One 64 KiB page to start.
  (memory (export "memory") 1)

  ;; Our one failure reason, at address 16 (24 bytes).
  (data (i32.const 16) "input batch is malformed")

  ;; The input buffer always starts here (8-aligned, after the data above).
  (global $buffer i32 (i32.const 1024))

  ;; conveyor_alloc(size) -> ptr: a buffer of at least `size` bytes,
  ;; 8-aligned, valid until the next call. We have a single buffer at 1024
  ;; and grow memory until it fits; 0 means "cannot".
  (func (export "conveyor_alloc") (param $size i32) (result i32)
    (local $need i64) ;; bytes of memory needed, in i64 so it cannot wrap
    (local $pages i32)
    (local.set $need
      (i64.add (i64.extend_i32_u (global.get $buffer)) (i64.extend_i32_u (local.get $size))))
    ;; A wasm32 memory has at most 4 GiB.
    (if (i64.gt_u (local.get $need) (i64.const 0x1_0000_0000))
      (then (return (i32.const 0))))
    ;; pages = ceil(need / 65536)
    (local.set $pages
      (i32.wrap_i64 (i64.shr_u (i64.add (local.get $need) (i64.const 0xffff)) (i64.const 16))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        ;; memory.grow returns -1 when the host's memory limit says no.
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.get $buffer))

  ;; conveyor_transform(ptr, len, count) -> 0 on success.
  ;;
  ;; The batch holds `count` records back to back, each starting at an
  ;; 8-aligned offset (the host pads with zeros). One record:
  ;;   0  i64 ts_us        8  u32 n_values    12 u32 stream_len
  ;;   16 u32 label_len    20 u32 payload_len 24 f64 x n_values, then the
  ;;   stream, label and payload bytes.
  ;; Its size is 24 + 8*n_values + stream_len + label_len + payload_len.
  (func (export "conveyor_transform") (param $ptr i32) (param $len i32) (param $count i32) (result i32)
    (local $at i64)   ;; where the current record starts
    (local $end i64)  ;; one past the batch
    (local $size i64) ;; the current record's encoded size
    (local $i i32)
    (local.set $at (i64.extend_i32_u (local.get $ptr)))
    (local.set $end (i64.add (local.get $at) (i64.extend_i32_u (local.get $len))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        ;; Round up to the next multiple of 8: records are 8-aligned.
        (local.set $at (i64.and (i64.add (local.get $at) (i64.const 7)) (i64.const -8)))
        ;; The 24-byte header must be inside the batch...
        (br_if $done (i64.gt_u (i64.add (local.get $at) (i64.const 24)) (local.get $end)))
        (local.set $size
          (i64.add
            (i64.add (i64.const 24)
              (i64.shl (i64.load32_u offset=8 (i32.wrap_i64 (local.get $at))) (i64.const 3)))
            (i64.add
              (i64.load32_u offset=12 (i32.wrap_i64 (local.get $at)))
              (i64.add
                (i64.load32_u offset=16 (i32.wrap_i64 (local.get $at)))
                (i64.load32_u offset=20 (i32.wrap_i64 (local.get $at)))))))
        ;; ...and so must the whole record.
        (br_if $done (i64.gt_u (i64.add (local.get $at) (local.get $size)) (local.get $end)))
        ;; Keep it if n_values > 0 and values[0] > 0.0 (false for NaN). Two
        ;; nested ifs, not i32.and: WASM evaluates both operands, and
        ;; values[0] of a record without values may lie past the memory.
        (if (i32.ne (i32.load offset=8 (i32.wrap_i64 (local.get $at))) (i32.const 0))
          (then
            (if (f64.gt (f64.load offset=24 (i32.wrap_i64 (local.get $at))) (f64.const 0))
              (then
                ;; Re-emit the input bytes unchanged, straight from the buffer.
                (call $emit (i32.wrap_i64 (local.get $at)) (i32.wrap_i64 (local.get $size)))))))
        (local.set $at (i64.add (local.get $at) (local.get $size)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    ;; Stopped before `count` records: the batch is shorter than it claims.
    ;; Say why, and fail the call (the host then retries record by record).
    (if (i32.lt_u (local.get $i) (local.get $count))
      (then
        (call $fail (i32.const -1) (i32.const 16) (i32.const 24))
        (return (i32.const 1))))
    (i32.const 0))
)
