# Finds ONNX Runtime for the inference benchmarks; sourced (not run) by
# benches/inference.sh and benches/hub_inference.sh from the repository root.
#
# Sets `lib` to a libonnxruntime.so from the onnxruntime wheel: ORT_DYLIB_PATH
# if set; else the one in models/.venv if that venv has it; else a venv of our
# own (benches/.venv-ort, created on the first run with
# pip install onnxruntime==$ort_version). `lib` is empty when none could be
# had (the benchmarks then measure tract only). `ort_export` puts it in the
# environment as ORT_DYLIB_PATH (or unsets that): call it after building, so
# the build never sees it. Messages go to stderr, prefixed with the calling
# script's name.
ort_version=1.32.0
ort_who=$(basename "$0")

find_ort() { # venv -> path of libonnxruntime.so.* in it, or nothing
  { find "$1" -path '*/onnxruntime/capi/libonnxruntime.so*' -type f 2>/dev/null || true; } | sort | tail -n 1
}

lib="${ORT_DYLIB_PATH:-}"
if [ -z "$lib" ] && [ -d models/.venv ]; then
  lib=$(find_ort models/.venv)
  if [ -n "$lib" ]; then echo "$ort_who: ONNX Runtime from models/.venv: $lib" >&2; fi
fi
if [ -z "$lib" ]; then
  venv=benches/.venv-ort
  lib=$(find_ort "$venv")
  if [ -z "$lib" ]; then
    echo "$ort_who: creating $venv with onnxruntime==$ort_version" >&2
    if python3 -m venv "$venv" >&2 && "$venv/bin/pip" install --quiet "onnxruntime==$ort_version" >&2; then
      lib=$(find_ort "$venv")
    else
      echo "$ort_who: could not install onnxruntime; measuring tract only" >&2
    fi
  fi
  if [ -n "$lib" ]; then echo "$ort_who: ONNX Runtime from $venv: $lib" >&2; fi
fi

ort_export() { # through the environment, so every subcommand takes it
  if [ -n "$lib" ]; then export ORT_DYLIB_PATH="$lib"; else unset ORT_DYLIB_PATH; fi
}
