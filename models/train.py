#!/usr/bin/env python3
"""Train, export, quantise and document the Conveyor demo models.

    models/.venv/bin/python models/train.py [--datasets BasicMotions ACSF1]

For each data set under models/data/ this trains an edge CNN and a hub CNN on
the TRAIN split, exports both to ONNX (opset 17, fp32), quantises the edge
model to int8 (ONNX Runtime static quantisation, QDQ format, Softmax kept in
fp32), evaluates every file with ONNX Runtime on the TEST split and writes
metadata, reference cases and model cards next to the models. A plan's
`variants` are later versions of its edge model (same id and input, retrained
with their own recipe and seed), written int8-only to <slug>/<folder>/; a
variant with `shuffle_labels` is a test fixture that predicts wrong on purpose
(trained on the training labels shuffled). The layout and schema are read by
the Rust runtime: see README.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from toolchain import cards  # noqa: E402
from toolchain.data import Dataset, load_dataset  # noqa: E402
from toolchain.export import (  # noqa: E402
    export_fp32,
    op_histogram,
    opset_of,
    quantize_qdq,
    run_batch1,
    session,
    sha256,
)
from toolchain.fit import TrainConfig, predict, train  # noqa: E402
from toolchain.nets import ConvSpec as C  # noqa: E402
from toolchain.nets import Net, NetSpec, count_params  # noqa: E402

SEED = 0
THREADS = 1
VERSION = "1.0.0"
N_REFERENCE = 8


@dataclass(frozen=True)
class Recipe:
    spec: NetSpec
    cfg: TrainConfig


@dataclass(frozen=True)
class EdgeVariant:
    """A later version of a data set's edge model: same id, input, labels and normalisation,
    retrained with its own recipe and seed; shipped as int8 only, in <slug>/<folder>/."""

    folder: str  # output subfolder, e.g. "v2"
    version: str  # e.g. "2.0.0"; the metadata says "<version>-int8"
    seed: int
    edge: Recipe
    why: str  # the model card's "what changed and why" (markdown)
    # A TEST FIXTURE, not a model: the training labels are permuted among the training
    # windows (numpy default_rng(seed)) so that the model learns nothing real, yet it loads
    # and passes every static check like a real candidate. Its card says so at the top.
    shuffle_labels: bool = False


@dataclass(frozen=True)
class DatasetPlan:
    name: str  # folder and file stem under data/
    slug: str  # output folder and id prefix
    blurb: str
    edge: Recipe
    hub: Recipe
    variants: tuple[EdgeVariant, ...] = ()


PLANS = [
    DatasetPlan(
        name="BasicMotions",
        slug="basicmotions",
        blurb=(
            "Recognise what a person wearing a smart watch is doing (badminton, running, standing,\n"
            "walking) from 10 s of 3-D accelerometer + 3-D gyroscope readings at 10 Hz."
        ),
        edge=Recipe(
            NetSpec((C(16, 5, 2), C(32, 5, 2), C(32, 3, 1))),
            TrainConfig(epochs=100, lr=3e-3, max_shift=0.1, scale=0.1, noise=0.05),
        ),
        hub=Recipe(
            NetSpec((C(64, 7, 1), C(128, 5, 1, 2), C(128, 5, 1, 2), C(128, 3, 1)), dropout=0.2),
            TrainConfig(epochs=100, lr=3e-3, max_shift=0.1, scale=0.1, noise=0.05),
        ),
        variants=(
            EdgeVariant(
                folder="v2",
                version="2.0.0",
                seed=1,
                edge=Recipe(
                    NetSpec((C(16, 5, 2), C(32, 5, 2), C(32, 3, 1))),
                    TrainConfig(epochs=200, lr=3e-3, max_shift=0.2, scale=0.2, noise=0.1, mixup=0.2),
                ),
                why=(
                    "Why: the main known limit of 1.0.0 is other sensors and placements (gain and noise\n"
                    "differences). 2.0.0 keeps the architecture, so the size and the cost on the device stay\n"
                    "the same, and is retrained from another seed with twice the epochs, twice the time\n"
                    "shift, amplitude scaling and noise, and mixup, to be more tolerant of such differences.\n"
                    "The recipe was chosen by 4-fold cross-validation on the TRAINING split (the test split\n"
                    "was not used): both recipes score 1.000 on the held-out folds as recorded; with every\n"
                    "channel's gain of the held-out windows perturbed by up to +/-50% and Gaussian noise\n"
                    "(sigma 0.6, normalised units) added, this recipe scores 0.890 and the 1.0.0 recipe\n"
                    "0.757 (mean over seeds 1 and 2, 10 draws per fold). That probe is synthetic and each\n"
                    "fold has 10 windows: it is indicative only. On the test split 1.0.0 is already at\n"
                    "1.0000, so the test split cannot show a gain."
                ),
            ),
            EdgeVariant(
                folder="bad-shuffled",
                version="2.1.0",
                seed=2,
                shuffle_labels=True,
                edge=Recipe(
                    NetSpec((C(16, 5, 2), C(32, 5, 2), C(32, 3, 1))),
                    TrainConfig(epochs=100, lr=3e-3, max_shift=0.1, scale=0.1, noise=0.05),
                ),
                why=(
                    "What for: the fleet-rollout tests. A candidate that loads, has the right id, input,\n"
                    "output, labels and normalisation, a matching sha256 and a plain QDQ graph passes every\n"
                    "static check of the agent; only its predictions are wrong. A staged rollout must stop it\n"
                    "at the first wave with its runtime gates -- shadow agreement with the running model,\n"
                    "agreement with the hub (teacher) model, accuracy on labelled windows -- and roll back\n"
                    "automatically. The recipe is 1.0.0's (architecture, epochs, augmentation), from another\n"
                    "seed, on the same training windows, but each window's label was replaced by another\n"
                    "window's (a fixed permutation of the 40 training labels, so each class still has 10):\n"
                    "it fits those labels, not the activities. Never deploy it outside a test."
                ),
            ),
        ),
    ),
    DatasetPlan(
        name="ACSF1",
        slug="acsf1",
        blurb=(
            "Recognise which household appliance (10 types) a smart plug is powering from a\n"
            "1460-sample power-consumption signature, z-normalised per series."
        ),
        edge=Recipe(
            NetSpec((C(8, 9, 1, 4), C(16, 7, 1, 4), C(32, 5, 1, 2), C(32, 5, 1))),
            TrainConfig(epochs=500, lr=3e-3, max_shift=0.1, scale=0.1, noise=0.0),
        ),
        hub=Recipe(
            NetSpec((C(32, 9, 1, 4), C(64, 7, 1, 2), C(128, 5, 1, 2), C(128, 3, 1)), dropout=0.2),
            TrainConfig(epochs=500, lr=3e-3, max_shift=0.1, scale=0.1, noise=0.0),
        ),
    ),
]

# Tried in order when quantising an edge model; the first one whose predictions
# agree best with the fp32 model on the TRAINING windows wins (the test split is
# never used to choose).
QUANT_VARIANTS = [
    dict(name="per-channel weights, uint8 activations", per_channel=True, activation_type=QuantType.QUInt8, exclude_first=False),
    dict(name="per-channel weights, int8 activations", per_channel=True, activation_type=QuantType.QInt8, exclude_first=False),
    dict(name="per-channel weights, uint8 activations, first Conv kept fp32", per_channel=True, activation_type=QuantType.QUInt8, exclude_first=True),
]


def log(msg: str) -> None:
    print(msg, flush=True)


def version_of(mod) -> str:
    return mod.__version__.split("+")[0]


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())


def check_probs(path: Path, probs: np.ndarray) -> None:
    s = probs.sum(axis=1)
    if not np.all(np.abs(s - 1.0) < 1e-3):
        raise RuntimeError(f"{path.name}: probabilities do not sum to 1 ({s.min()}..{s.max()})")
    if np.any(probs < 0) or np.any(probs > 1 + 1e-6) or not np.all(np.isfinite(probs)):
        raise RuntimeError(f"{path.name}: probabilities out of [0, 1]")
    if np.all(probs.max(axis=1) >= 1.0 - 1e-7):
        raise RuntimeError(f"{path.name}: every output is a one-hot 1.0 (saturated/quantised softmax?)")


def onnx_params(path: Path) -> int:
    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer))


def metadata(
    *, ds: Dataset, plan: DatasetPlan, role: str, precision: str, path: Path, batch, acc: float,
    acc_fp32: float, recipe: Recipe, params: int, version: str = VERSION, seed: int = SEED,
) -> dict:
    return {
        "schema": 1,
        "id": f"{plan.slug}-{role}",
        "version": f"{version}-{precision}",
        "dataset": ds.name,
        "model_file": path.name,
        "model_sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        "precision": precision,
        "input": {"name": "window", "dtype": "float32", "shape": [batch, ds.channels, ds.window], "layout": "NCW"},
        "output": {"name": "probabilities", "dtype": "float32", "shape": [batch, len(ds.labels)]},
        "channels": ds.channels,
        "window": ds.window,
        "stride": ds.window,
        "labels": ds.labels,
        "normalization": ds.norm.to_json(),
        "metrics": {
            "test_windows": int(len(ds.y_test)),
            "test_accuracy": acc,
            "test_accuracy_fp32": acc_fp32,
            "evaluated_with": f"onnxruntime {ort.__version__}",
        },
        "trained": {
            "framework": f"torch {version_of(torch)}",
            "epochs": recipe.cfg.epochs,
            "seed": seed,
            "train_windows": int(len(ds.y_train)),
            "params": params,
        },
    }


def reference(path: Path, ds: Dataset, input_shape: list[int]) -> None:
    s = session(path)
    out_dir = path.parent / "reference"
    out_dir.mkdir(exist_ok=True)
    cases = []
    for i in range(min(N_REFERENCE, len(ds.x_test))):
        x = ds.x_test[i : i + 1]
        y = s.run(["probabilities"], {"window": x})[0][0]
        cases.append(
            {
                "index": i,
                "label": ds.y_test_text[i],
                "input": [cards.f32(v) for v in x.reshape(-1)],
                "output": [cards.f32(v) for v in y],
            }
        )
    cards.write_reference(out_dir / f"{path.stem}.json", path.name, ort.__version__, input_shape, cases)


@dataclass
class Edge:
    """An edge model as built: its fp32 and int8 files and their test results."""

    fp32: Path
    int8: Path
    p32: np.ndarray  # test probabilities, fp32
    p8: np.ndarray  # test probabilities, int8
    acc32: float
    acc8: float
    params: int
    agree: float  # int8 vs fp32 argmax agreement on the training windows
    variant: dict  # the QUANT_VARIANTS entry chosen
    excluded: list[str]  # nodes kept fp32


def build_edge(ds: Dataset, slug: str, tag: str, recipe: Recipe, seed: int, edge_fp32: Path, edge_int8: Path) -> Edge:
    """Train, export, quantise and evaluate one edge model."""
    k = len(ds.labels)
    log(f"-- {slug}/{tag}: training {recipe.spec.describe()} (seed {seed})")
    t = time.time()
    edge = train(ds.x_train, ds.y_train, k, recipe.spec, recipe.cfg, seed, log_every=50, tag=tag, threads=THREADS)
    log(f"   trained in {time.time() - t:.1f}s; torch test accuracy {float((predict(edge, ds.x_test) == ds.y_test).mean()):.4f}")
    export_fp32(edge, edge_fp32, ds.channels, ds.window, dynamic_batch=False)
    p_edge32 = run_batch1(edge_fp32, ds.x_test)
    check_probs(edge_fp32, p_edge32)
    with torch.no_grad():
        edge.with_softmax = True
        p_torch = edge(torch.from_numpy(ds.x_test)).numpy()
        edge.with_softmax = False
    log(f"   fp32 ONNX vs torch max |diff| {np.abs(p_torch - p_edge32).max():.2e}")
    acc_edge32 = accuracy(p_edge32, ds.y_test)
    edge_params = count_params(edge)
    assert edge_params == onnx_params(edge_fp32), (edge_params, onnx_params(edge_fp32))

    # int8: choose the quantisation variant on the TRAINING windows only
    train_ref = run_batch1(edge_fp32, ds.x_train).argmax(axis=1)
    first_conv = next(n.name for n in onnx.load(str(edge_fp32)).graph.node if n.op_type == "Conv")
    best = None
    for v in QUANT_VARIANTS:
        tmp = edge_int8.parent / "edge.int8.candidate.onnx"
        excluded = quantize_qdq(
            edge_fp32, tmp, ds.x_train, per_channel=v["per_channel"], activation_type=v["activation_type"],
            extra_exclude=(first_conv,) if v["exclude_first"] else (),
        )
        agree = float((run_batch1(tmp, ds.x_train).argmax(axis=1) == train_ref).mean())
        log(f"   int8 variant '{v['name']}': agrees with fp32 on {agree:.4f} of training windows")
        if best is None or agree > best[0]:
            best = (agree, v, excluded)
            tmp.replace(edge_int8)
        else:
            tmp.unlink()
        if agree == 1.0:
            break
    agree, variant, excluded = best
    p_edge8 = run_batch1(edge_int8, ds.x_test)
    check_probs(edge_int8, p_edge8)
    acc_edge8 = accuracy(p_edge8, ds.y_test)
    log(f"   {tag} test accuracy fp32 {acc_edge32:.4f}, int8 {acc_edge8:.4f} ({variant['name']})")
    for p in (edge_fp32, edge_int8):
        if opset_of(p) != 17:
            raise RuntimeError(f"{p}: opset {opset_of(p)}")
    return Edge(edge_fp32, edge_int8, p_edge32, p_edge8, acc_edge32, acc_edge8, edge_params, agree, variant, excluded)


def quant_notes(ds: Dataset, e: Edge, source: str) -> str:
    return (
        "ONNX Runtime "
        f"{ort.__version__} static quantisation of {source}: `quant_pre_process`, then\n"
        "`quantize_static` in **QDQ** format (QuantizeLinear/DequantizeLinear pairs around standard ops;\n"
        "no QOperator or Microsoft-domain ops), int8 symmetric weights, MinMax calibration over the\n"
        f"{len(ds.x_train)} normalised TRAINING windows (batch 1). Variant: {e.variant['name']}.\n"
        f"Nodes kept in fp32: {', '.join('`' + x + '`' for x in e.excluded)} -- the Softmax is never quantised,\n"
        "so the output is plain fp32 probabilities (a quantised Softmax is mis-evaluated by some engines).\n"
        f"The variant was chosen on the training windows: int8 and fp32 argmax agree on {e.agree:.4f} of them.\n"
        f"Ops: {', '.join(f'{a} x{b}' for a, b in op_histogram(e.int8).items())}."
    )


def table_row(m: dict, file: str) -> dict:
    return dict(file=file, params=m["trained"]["params"], size=m["size_bytes"],
                fp32=m["metrics"]["test_accuracy_fp32"], acc=m["metrics"]["test_accuracy"], n=m["metrics"]["test_windows"])


def shuffled_labels(y: np.ndarray, seed: int) -> np.ndarray:
    """The training labels permuted among the windows (the class counts stay the same)."""
    return np.random.default_rng(seed).permutation(y)


def build_variant(ds: Dataset, plan: DatasetPlan, var: EdgeVariant, out: Path, base: dict, base_p8: np.ndarray) -> dict:
    """Build a later version of the edge model (int8 only) into out/<folder>/; `base` is 1.0.0's int8 metadata,
    `base_p8` its test probabilities."""
    k = len(ds.labels)
    vdir = out / var.folder
    vdir.mkdir(parents=True, exist_ok=True)
    edge_int8 = vdir / "edge.int8.onnx"
    train_ds = ds
    kept = len(ds.y_train)
    if var.shuffle_labels:
        train_ds = replace(ds, y_train=shuffled_labels(ds.y_train, var.seed))
        kept = int((train_ds.y_train == ds.y_train).sum())
        log(f"   {var.folder}: training labels shuffled (seed {var.seed}); {kept} of {len(ds.y_train)} still true by chance")
    with tempfile.TemporaryDirectory() as tmp:  # its fp32 original is built but not shipped
        e = build_edge(train_ds, plan.slug, f"edge {var.folder}", var.edge, var.seed, Path(tmp) / "edge.fp32.onnx", edge_int8)
        ops32 = op_histogram(e.fp32)
    meta = metadata(ds=ds, plan=plan, role="edge", precision="int8", path=edge_int8, batch=1, acc=e.acc8,
                    acc_fp32=e.acc32, recipe=var.edge, params=e.params, version=var.version, seed=var.seed)
    cards.write_json(vdir / "edge.int8.json", meta)
    reference(edge_int8, ds, [1, ds.channels, ds.window])

    def convs(spec: NetSpec) -> str:
        return "-".join(str(b.out_channels) for b in spec.blocks)

    def aug(cfg: TrainConfig) -> str:
        return f"{cfg.max_shift} / {cfg.scale} / {cfg.noise} / {cfg.mixup or 'off'}"

    rows = [
        ("architecture (Conv channels)", convs(plan.edge.spec), convs(var.edge.spec)),
        ("seed", base["trained"]["seed"], var.seed),
        ("epochs", base["trained"]["epochs"], var.edge.cfg.epochs),
        ("augmentation: time shift / scaling / noise / mixup", aug(plan.edge.cfg), aug(var.edge.cfg)),
        ("parameters", base["trained"]["params"], e.params),
        ("int8 file size (bytes)", base["size_bytes"], meta["size_bytes"]),
        ("test accuracy, fp32", f"{base['metrics']['test_accuracy_fp32']:.4f}", f"{e.acc32:.4f}"),
        ("test accuracy, int8", f"{base['metrics']['test_accuracy']:.4f}", f"{e.acc8:.4f}"),
    ]
    agree_base = float((e.p8.argmax(axis=1) == base_p8.argmax(axis=1)).mean())
    n_test = len(ds.y_test)
    notice: list[str] = []
    if var.shuffle_labels:
        rows.insert(1, ("training labels", "true", f"shuffled (seed {var.seed})"))
        rows.append((f"argmax agreement with {base['version']}, test split", "1.0000", f"{agree_base:.4f}"))
        notice = [
            "**TEST FIXTURE -- this model predicts wrong on purpose.** It was trained on SHUFFLED labels\n"
            f"(the {len(ds.y_train)} training labels permuted among the windows, seed {var.seed}; {kept} of them kept their\n"
            "true label by chance), so it has learnt nothing real. It exists for the fleet-rollout tests:\n"
            "it loads and passes every static check, and the rollout gates (shadow agreement, teacher\n"
            "agreement, accuracy) must stop it at the first wave and roll it back. Do not deploy it.",
            "",
            f"Measured on the {n_test} test windows (ONNX Runtime): test accuracy **{e.acc8:.4f}** (int8, this file)\n"
            f"and {e.acc32:.4f} (its fp32 original), against {base['metrics']['test_accuracy']:.4f} for `{base['version']}`;\n"
            f"chance is {1 / k:.4f}. Its argmax agrees with `{base['version']}` on {agree_base:.4f} of the test windows.",
            "",
        ]
    intro = (
        f"Not a retrained model: the same id, input, labels and normalisation as `{base['version']}`\n"
        f"(`../{base['model_file']}`), so it looks like a drop-in update, but its weights were fitted to\n"
        "shuffled labels."
        if var.shuffle_labels
        else f"Retrained, not just re-quantised: the same id, input, labels and normalisation as\n"
        f"`{base['version']}` (`../{base['model_file']}`), so it is a drop-in update; new weights from a\n"
        "different training recipe."
    )
    changes = "\n".join([
        *notice,
        f"## Changes from {base['version']}",
        "",
        intro,
        "",
        f"| | {base['version']} | {meta['version']} |",
        "| --- | ---: | ---: |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        var.why,
    ])
    cm = lambda p: cards.confusion_md(cards.confusion(ds.y_test, p.argmax(axis=1), k), ds.labels)  # noqa: E731
    title = f"{ds.name} edge model {var.folder} (int8, QDQ)"
    blurb = plan.blurb
    if var.shuffle_labels:
        title += " -- TEST FIXTURE, predicts wrong on purpose"
        blurb = (
            "None outside tests: a bad candidate for the rollout gates. It takes the input and returns the\n"
            f"output of the {ds.name} edge model, but its answers are unrelated to the true class."
        )
    (vdir / "edge.int8.md").write_text(
        cards.model_card(
            title=title, meta=meta, other_meta=None,
            arch=var.edge.spec.describe(), ops=ops32, train_cfg=var.edge.cfg.to_json(),
            confusion_tables=[("fp32 original (not shipped)", cm(e.p32)), ("edge.int8.onnx", cm(e.p8))],
            quant_notes=quant_notes(ds, e, "its fp32 export (built by `train.py` in a temporary folder, not shipped)"),
            dataset_blurb=blurb, threads=THREADS, changes=changes,
        ),
        encoding="utf-8",
    )
    log(f"   {plan.slug}/{var.folder}: {meta['id']} {meta['version']}, {meta['size_bytes']} bytes")
    return table_row(meta, f"{plan.slug}/{var.folder}/{edge_int8.name}")


def build(plan: DatasetPlan, data_dir: Path, out_root: Path) -> list[dict]:
    t0 = time.time()
    ds = load_dataset(data_dir, plan.name)
    k = len(ds.labels)
    out = out_root / plan.slug
    out.mkdir(parents=True, exist_ok=True)
    log(f"== {ds.name}: train {ds.x_train.shape}, test {ds.x_test.shape}, {k} classes {ds.labels}")
    log(f"   normalisation mean={ds.norm.mean.tolist()} std={ds.norm.std.tolist()}")

    # ---------------- edge ----------------
    e = build_edge(ds, plan.slug, "edge", plan.edge, SEED, out / "edge.fp32.onnx", out / "edge.int8.onnx")
    edge_fp32, edge_int8, p_edge32, p_edge8 = e.fp32, e.int8, e.p32, e.p8
    acc_edge32, acc_edge8, edge_params = e.acc32, e.acc8, e.params

    # ---------------- hub ----------------
    log(f"-- {plan.slug}/hub: training {plan.hub.spec.describe()}")
    t = time.time()
    hub = train(ds.x_train, ds.y_train, k, plan.hub.spec, plan.hub.cfg, SEED, log_every=50, tag="hub", threads=THREADS)
    log(f"   trained in {time.time() - t:.1f}s")
    hub_fp32 = out / "hub.fp32.onnx"
    export_fp32(hub, hub_fp32, ds.channels, ds.window, dynamic_batch=True)
    p_hub = run_batch1(hub_fp32, ds.x_test)
    check_probs(hub_fp32, p_hub)
    p_hub_batched = session(hub_fp32).run(["probabilities"], {"window": ds.x_test})[0]
    log(f"   hub batch-{len(ds.x_test)} vs batch-1 max |diff| {np.abs(p_hub_batched - p_hub).max():.2e}")
    acc_hub = accuracy(p_hub, ds.y_test)
    hub_params = count_params(hub)
    assert hub_params == onnx_params(hub_fp32)
    log(f"   hub test accuracy {acc_hub:.4f}")

    # ---------------- metadata, references, cards ----------------
    m_edge32 = metadata(ds=ds, plan=plan, role="edge", precision="fp32", path=edge_fp32, batch=1,
                        acc=acc_edge32, acc_fp32=acc_edge32, recipe=plan.edge, params=edge_params)
    m_edge8 = metadata(ds=ds, plan=plan, role="edge", precision="int8", path=edge_int8, batch=1,
                       acc=acc_edge8, acc_fp32=acc_edge32, recipe=plan.edge, params=edge_params)
    m_hub = metadata(ds=ds, plan=plan, role="hub", precision="fp32", path=hub_fp32, batch=-1,
                     acc=acc_hub, acc_fp32=acc_hub, recipe=plan.hub, params=hub_params)
    for path, meta in ((edge_fp32, m_edge32), (edge_int8, m_edge8), (hub_fp32, m_hub)):
        cards.write_json(out / f"{path.stem}.json", meta)
        reference(path, ds, [1, ds.channels, ds.window])

    cm = lambda p: cards.confusion_md(cards.confusion(ds.y_test, p.argmax(axis=1), k), ds.labels)  # noqa: E731
    (out / "edge.int8.md").write_text(
        cards.model_card(
            title=f"{ds.name} edge model (int8, QDQ)", meta=m_edge8, other_meta=m_edge32,
            arch=plan.edge.spec.describe(), ops=op_histogram(edge_fp32), train_cfg=plan.edge.cfg.to_json(),
            confusion_tables=[("edge.fp32.onnx", cm(p_edge32)), ("edge.int8.onnx", cm(p_edge8))],
            quant_notes=quant_notes(ds, e, "`edge.fp32.onnx`"), dataset_blurb=plan.blurb, threads=THREADS,
        ),
        encoding="utf-8",
    )
    (out / "hub.fp32.md").write_text(
        cards.model_card(
            title=f"{ds.name} hub model (fp32)", meta=m_hub, other_meta=None,
            arch=plan.hub.spec.describe(), ops=op_histogram(hub_fp32), train_cfg=plan.hub.cfg.to_json(),
            confusion_tables=[("hub.fp32.onnx", cm(p_hub))], quant_notes=None,
            dataset_blurb=plan.blurb, threads=THREADS,
        ),
        encoding="utf-8",
    )
    for p in (edge_fp32, edge_int8, hub_fp32):
        if opset_of(p) != 17:
            raise RuntimeError(f"{p}: opset {opset_of(p)}")
    rows = [table_row(m, f"{plan.slug}/{m['model_file']}") for m in (m_edge32, m_edge8, m_hub)]
    for var in plan.variants:
        rows.append(build_variant(ds, plan, var, out, m_edge8, p_edge8))
    log(f"== {ds.name} done in {time.time() - t0:.1f}s")
    return rows


def latency_us(path: Path, x: np.ndarray, reps: int = 200) -> float:
    s = session(path)
    x1 = x[:1]
    for _ in range(10):
        s.run(None, {"window": x1})
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, {"window": x1})
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)


def results_table(rows: list[dict]) -> str:
    lines = [
        "| model | params | size (bytes) | test acc. fp32 | test acc. this file | test windows |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| `{r['file']}` | {r['params']} | {r['size']} | {r['fp32']:.4f} | {r['acc']:.4f} | {r['n']} |")
    return "\n".join(lines)


def update_readme(table: str) -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        return
    text = readme.read_text(encoding="utf-8")
    new = re.sub(
        r"(<!-- results:start -->\n).*?(\n<!-- results:end -->)",
        lambda m: m.group(1) + table + m.group(2),
        text,
        flags=re.S,
    )
    if new != text:
        readme.write_text(new, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=[p.name for p in PLANS], help="data set names (default: all)")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path, default=ROOT)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test of the pipeline: 3 epochs per model; needs --out (not the real models)")
    args = ap.parse_args()
    if args.quick and args.out.resolve() == ROOT:
        ap.error("--quick needs --out DIR, away from the real models")
    unknown = set(args.datasets) - {p.name for p in PLANS}
    if unknown:
        ap.error(f"unknown data sets {sorted(unknown)}")
    log(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    t0 = time.time()
    rows: list[dict] = []
    for plan in PLANS:
        if plan.name in args.datasets:
            if args.quick:
                quick = lambda r: replace(r, cfg=replace(r.cfg, epochs=3))  # noqa: E731
                plan = replace(plan, edge=quick(plan.edge), hub=quick(plan.hub),
                               variants=tuple(replace(v, edge=quick(v.edge)) for v in plan.variants))
            rows += build(plan, args.data, args.out)
    table = results_table(rows)
    if set(args.datasets) == {p.name for p in PLANS} and args.out.resolve() == ROOT:
        update_readme(table)
    log("")
    log(f"Summary (ONNX Runtime {ort.__version__}, test split), built in {time.time() - t0:.0f}s:")
    log(table)
    log("")
    log("ORT CPU latency, batch 1, 1 thread (median, this machine, indicative):")
    for r in rows:
        plan = next(p for p in PLANS if p.slug == r["file"].split("/")[0])
        ds_x = load_dataset(args.data, plan.name).x_test
        log(f"  {r['file']}: {latency_us(args.out / r['file'], ds_x):.0f} us")


if __name__ == "__main__":
    main()
