"""Metadata JSON, reference JSON and markdown model cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def f32(v) -> float:
    """A float32 value as the exact double it stands for (round-trips through f32)."""
    return float(np.float32(v))


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_reference(path: Path, model_file: str, ort_version: str, input_shape: list[int], cases: list[dict]) -> None:
    """One case per line so the file stays diffable without blowing up in size."""
    head = {"model_file": model_file, "onnxruntime": ort_version, "input_shape": input_shape}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "cases": [')
    for i, c in enumerate(cases):
        sep = "," if i + 1 < len(cases) else ""
        lines.append("    " + json.dumps(c, separators=(",", ":")) + sep)
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # must stay valid JSON
    path.write_text(text, encoding="utf-8")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        m[t, p] += 1
    return m


def confusion_md(m: np.ndarray, labels: list[str]) -> str:
    head = "| true \\ predicted | " + " | ".join(labels) + " |"
    sep = "| --- |" + " ---: |" * len(labels)
    rows = [f"| {lab} | " + " | ".join(str(int(v)) for v in m[i]) + " |" for i, lab in enumerate(labels)]
    return "\n".join([head, sep, *rows])


def fmt_floats(vs) -> str:
    return ", ".join(f"{v:.6g}" for v in vs)


def augmentation_text(cfg: dict) -> str:
    parts = []
    if cfg.get("max_shift"):
        parts.append(f"random circular time shift of up to {cfg['max_shift']:.0%} of the window")
    if cfg.get("scale"):
        parts.append(f"random amplitude scaling by 1 +/- {cfg['scale']}")
    if cfg.get("noise"):
        parts.append(f"additive Gaussian noise (sigma {cfg['noise']})")
    if cfg.get("mixup"):
        parts.append(f"mixup (Beta({cfg['mixup']}, {cfg['mixup']}))")
    if not parts:
        return "No augmentation."
    return "Augmentation (training only, on the normalised windows): " + "; ".join(parts) + "."


def model_card(
    *,
    title: str,
    meta: dict,
    other_meta: dict | None,
    arch: str,
    ops: dict[str, int],
    train_cfg: dict,
    confusion_tables: list[tuple[str, str]],
    quant_notes: str | None,
    dataset_blurb: str,
    threads: int,
    changes: str | None = None,
) -> str:
    """`changes`: a later version's "what changed and why" section (markdown), after the first line."""
    inp, out = meta["input"], meta["output"]
    norm = meta["normalization"]
    m = meta["metrics"]
    t = meta["trained"]
    files = [meta] + ([other_meta] if other_meta else [])
    lines = [
        f"# {title}",
        "",
        f"`{meta['id']}` version `{meta['version']}`, file `{meta['model_file']}`"
        + (f" (and its fp32 original `{other_meta['model_file']}`)" if other_meta else "")
        + ".",
        "",
        *([changes, ""] if changes else []),
        "## Intended use",
        "",
        dataset_blurb,
        "One window is one whole series of the data set; the model returns one probability per class.",
        "It is a demo model for the Conveyor edge-to-cloud streaming runtime, trained on a tiny public",
        "benchmark: it is not validated for any real-world decision.",
        "",
        "## Data set",
        "",
        f"`{meta['dataset']}` from the UEA/UCR time-series classification archive; files, provenance and",
        "citations: [../data/README.md](../data/README.md).",
        f"Training split: {t['train_windows']} series; test split: {m['test_windows']} series.",
        "",
        "## Input and output",
        "",
        "| | name | dtype | shape | layout |",
        "| --- | --- | --- | --- | --- |",
        f"| input | `{inp['name']}` | {inp['dtype']} | `{inp['shape']}` | {inp['layout']} (batch, channel, time) |",
        f"| output | `{out['name']}` | {out['dtype']} | `{out['shape']}` | softmax already applied |",
        "",
        f"Channels: {meta['channels']}; window: {meta['window']} samples; stride: {meta['stride']}",
        "(each series is exactly one window).",
        "",
        "Labels (index = position, the sorted class labels of the TRAIN file):",
        "",
        *[f"{i}. `{lab}`" for i, lab in enumerate(meta["labels"])],
        "",
        "## Preprocessing",
        "",
        "Nothing but a fixed per-channel normalisation, done outside the model, in float32:",
        "",
        "    x_norm[c][t] = (x[c][t] - mean[c]) / std[c]",
        "",
        "with mean and (population) standard deviation per channel over the whole TRAINING split",
        "(all series, all time steps):",
        "",
        f"- mean: `[{fmt_floats(norm['mean'])}]`",
        f"- std: `[{fmt_floats(norm['std'])}]`",
        "",
        "The exact float32 values are in the metadata JSON (`normalization`).",
        "",
        "## Architecture",
        "",
        arch,
        "",
        f"Parameters (BatchNorm folded into the convolutions, as exported): {t['params']}.",
        "ONNX opset 17, ops: " + ", ".join(f"{k} x{v}" for k, v in ops.items()) + ".",
        "",
        "## Training",
        "",
        f"PyTorch ({t['framework']}), CPU, {threads} thread{'s' if threads != 1 else ''}, seed {t['seed']}, {t['epochs']} epochs, AdamW with a",
        "one-cycle learning-rate schedule, cross-entropy with label smoothing, on all training series",
        "(no validation split: the recipe was chosen by cross-validation on the training split).",
        augmentation_text(train_cfg),
        "",
        "```json",
        json.dumps(train_cfg, indent=2),
        "```",
        "",
    ]
    if quant_notes:
        lines += ["## Quantisation", "", quant_notes, ""]
    lines += [
        "## Accuracy (test split, ONNX Runtime, argmax of the probabilities)",
        "",
        "| file | precision | test accuracy | windows |",
        "| --- | --- | ---: | ---: |",
    ]
    for f in files:
        lines.append(
            f"| `{f['model_file']}` | {f['precision']} | {f['metrics']['test_accuracy']:.4f} | {f['metrics']['test_windows']} |"
        )
    lines.append("")
    lines.append(f"Evaluated with {m['evaluated_with']} (CPU execution provider, batch 1).")
    lines.append("")
    for name, table in confusion_tables:
        lines += [f"Confusion matrix, `{name}`:", "", table, ""]
    lines += [
        "## Files",
        "",
        "| file | size (bytes) | sha256 |",
        "| --- | ---: | --- |",
    ]
    for f in files:
        lines.append(f"| `{f['model_file']}` | {f['size_bytes']} | `{f['model_sha256']}` |")
    lines += [
        "",
        "Metadata: the `.json` of the same name; ONNX Runtime reference inputs/outputs for parity",
        "tests: `reference/<name>.json` (the first 8 test series, normalised).",
        "",
        "## Known limits",
        "",
        f"- Tiny test split ({m['test_windows']} windows): one window is {100 / m['test_windows']:.1f} accuracy points;",
        "  the numbers are indicative only.",
        "- Trained and tested on one public benchmark recorded by few people/devices; expect lower",
        "  accuracy on other sensors, placements, sampling rates or appliances.",
        "- The model sees a whole series as one window; other window lengths are not supported.",
        "- Inputs must be normalised exactly as above; raw values give meaningless outputs.",
        "",
        "## Reproduce",
        "",
        "From the repository root: `models/build.sh` (creates `models/.venv`, installs the pinned",
        "`models/requirements.txt`, trains, exports, quantises, evaluates and rewrites these files).",
        "",
    ]
    return "\n".join(lines)
