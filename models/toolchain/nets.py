"""The two model families: a compact edge CNN and a wider hub CNN.

Both are plain 1-D CNNs over NCW windows that export to a handful of ONNX
ops: Conv (BatchNorm folded in at export), Relu, MaxPool (hub only),
GlobalAveragePool, Flatten, Gemm and Softmax.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    out_channels: int
    kernel: int
    stride: int = 1
    pool: int = 1  # MaxPool1d kernel=stride after the activation; 1 = none


@dataclass(frozen=True)
class NetSpec:
    blocks: tuple[ConvSpec, ...]
    dropout: float = 0.0  # before the classifier, training only

    def describe(self) -> str:
        parts = []
        for b in self.blocks:
            s = f"Conv1d({b.out_channels}, k={b.kernel}, s={b.stride})+BN+ReLU"
            if b.pool > 1:
                s += f"+MaxPool({b.pool})"
            parts.append(s)
        parts += ["GlobalAveragePool", "Linear", "Softmax"]
        return " -> ".join(parts)

    def to_json(self) -> dict:
        return asdict(self)


class Net(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, spec: NetSpec):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for b in spec.blocks:
            layers += [
                nn.Conv1d(c, b.out_channels, b.kernel, stride=b.stride, padding=b.kernel // 2, bias=False),
                nn.BatchNorm1d(b.out_channels),
                nn.ReLU(),
            ]
            if b.pool > 1:
                layers.append(nn.MaxPool1d(b.pool, stride=b.pool))
            c = b.out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(c, n_classes)
        self.with_softmax = False  # True only for export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        x = self.classifier(self.dropout(x))
        return torch.softmax(x, dim=1) if self.with_softmax else x


def count_params(model: nn.Module, folded: bool = True) -> int:
    """Parameters as exported: BatchNorm folded into the preceding Conv (weight + bias)."""
    if not folded:
        return sum(p.numel() for p in model.parameters())
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            n += m.weight.numel() + m.out_channels  # folded BN gives every conv a bias
        elif isinstance(m, nn.Linear):
            n += m.weight.numel() + m.bias.numel()
    return n
