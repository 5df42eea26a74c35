"""ONNX export (legacy TorchScript exporter, opset 17) and QDQ int8 quantisation."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from .nets import Net

OPSET = 17
INPUT_NAME = "window"
OUTPUT_NAME = "probabilities"
# ops a QOperator-free, Microsoft-domain-free model may contain
ALLOWED_OPS = {
    "Conv", "Relu", "MaxPool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape",
    "Gemm", "MatMul", "Add", "Softmax", "QuantizeLinear", "DequantizeLinear",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_fp32(model: Net, path: Path, channels: int, window: int, dynamic_batch: bool) -> None:
    model.eval()
    model.with_softmax = True
    try:
        dummy = torch.zeros(1, channels, window, dtype=torch.float32)
        kwargs = {}
        if dynamic_batch:
            kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
            **kwargs,
        )
    finally:
        model.with_softmax = False
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    check_ops(m, path)


def strip_unused_opsets(m: onnx.ModelProto) -> None:
    """The ORT tools declare every domain they know (com.microsoft, ...); keep only the used ones."""
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used or (o.domain == "ai.onnx" and "" in used)]
    del m.opset_import[:]
    m.opset_import.extend(keep)


def check_ops(m: onnx.ModelProto, path: Path) -> None:
    ops = {n.op_type for n in m.graph.node}
    domains = {n.domain for n in m.graph.node} - {"", "ai.onnx"}
    bad = ops - ALLOWED_OPS
    if bad or domains:
        raise RuntimeError(f"{path}: unexpected ops {sorted(bad)} / domains {sorted(domains)}")
    if "BatchNormalization" in ops:
        raise RuntimeError(f"{path}: BatchNormalization was not folded")


class WindowReader(CalibrationDataReader):
    """Feeds the normalised training windows one at a time (batch 1)."""

    def __init__(self, x: np.ndarray):
        self._x = x
        self._i = 0

    def get_next(self):
        if self._i >= len(self._x):
            return None
        item = {INPUT_NAME: self._x[self._i : self._i + 1].astype(np.float32)}
        self._i += 1
        return item

    def rewind(self) -> None:
        self._i = 0


def quantize_qdq(
    fp32_path: Path,
    out_path: Path,
    calib_x: np.ndarray,
    per_channel: bool = True,
    activation_type: QuantType = QuantType.QUInt8,
    extra_exclude: tuple[str, ...] = (),
) -> list[str]:
    """Static int8 quantisation in QDQ format; Softmax stays fp32. Returns the excluded nodes."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_optimization=False)
        m = onnx.load(str(pre))
        exclude = [n.name for n in m.graph.node if n.op_type == "Softmax"] + list(extra_exclude)
        if not any(n.op_type == "Softmax" for n in m.graph.node):
            raise RuntimeError("no Softmax node to exclude")
        quantize_static(
            str(pre),
            str(out_path),
            WindowReader(calib_x),
            quant_format=QuantFormat.QDQ,
            activation_type=activation_type,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )
    q = onnx.load(str(out_path))
    strip_unused_opsets(q)
    onnx.save(q, str(out_path))
    q = onnx.load(str(out_path))
    onnx.checker.check_model(q, full_check=True)
    check_ops(q, out_path)
    # the contract with the Rust engine: Softmax is fed and produces plain fp32
    producers = {o: n for n in q.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in q.graph.node:
        if n.op_type == "Softmax":
            if any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], [])):
                raise RuntimeError("Softmax output is quantised")
            if n.output[0] != OUTPUT_NAME:
                raise RuntimeError("Softmax is not the graph output")
    return exclude


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_batch1(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities for every window, fed one at a time (batch 1) as the edge does."""
    s = session(path)
    return np.concatenate([s.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + 1]})[0] for i in range(len(x))])


def op_histogram(path: Path) -> dict[str, int]:
    m = onnx.load(str(path))
    h: dict[str, int] = {}
    for n in m.graph.node:
        h[n.op_type] = h.get(n.op_type, 0) + 1
    return dict(sorted(h.items()))


def opset_of(path: Path) -> int:
    m = onnx.load(str(path))
    return max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
