"""Reading UEA/UCR `.ts` files and the fixed per-channel normalisation.

The Rust edge agent replicates `normalise` exactly, so keep it trivial:
    x_norm[c][t] = (x[c][t] - mean[c]) / std[c]
with mean/std per channel over the whole TRAINING split (all series, all
time steps), computed in float64 and stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Split:
    x: np.ndarray  # float32, (N, C, W), raw values as written in the file
    y_text: list[str]  # class label of each series, exactly as written


def read_ts(path: Path) -> Split:
    """Parse a `.ts` file: `#`/`@` headers, then one series a line after `@data`.

    Channels are separated by `:`, values by `,`; the last `:` field is the label.
    """
    series: list[list[list[float]]] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.strip()
            if not line:
                continue
            if not in_data:
                if line.lower().startswith("@data"):
                    in_data = True
                continue
            if line.startswith("#"):
                continue
            fields = line.split(":")
            labels.append(fields[-1].strip())
            series.append([[float(v) for v in ch.split(",")] for ch in fields[:-1]])
    if not series:
        raise ValueError(f"{path}: no series after @data")
    lengths = {len(ch) for s in series for ch in s}
    chans = {len(s) for s in series}
    if len(lengths) != 1 or len(chans) != 1:
        raise ValueError(f"{path}: unequal lengths {sorted(lengths)} / channels {sorted(chans)}")
    return Split(np.asarray(series, dtype=np.float32), labels)


@dataclass
class Normalisation:
    mean: np.ndarray  # float32, (C,)
    std: np.ndarray  # float32, (C,)

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normalisation":
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=(0, 2))
        std = x64.std(axis=(0, 2))
        std = np.where(std < 1e-8, 1.0, std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 arithmetic, as the Rust side does it."""
        x = x.astype(np.float32)
        return ((x - self.mean[None, :, None]) / self.std[None, :, None]).astype(np.float32)

    def to_json(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


@dataclass
class Dataset:
    name: str  # as in the folder / file names, e.g. "BasicMotions"
    labels: list[str]  # sorted unique TRAIN labels
    norm: Normalisation
    x_train: np.ndarray  # normalised float32 (N, C, W)
    y_train: np.ndarray  # int64 class indices
    x_test: np.ndarray
    y_test: np.ndarray
    y_test_text: list[str]

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def window(self) -> int:
        return int(self.x_train.shape[2])


def load_dataset(data_dir: Path, name: str) -> Dataset:
    train = read_ts(data_dir / name / f"{name}_TRAIN.ts")
    test = read_ts(data_dir / name / f"{name}_TEST.ts")
    labels = sorted(set(train.y_text))
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted(set(test.y_text) - set(labels))
    if unknown:
        raise ValueError(f"{name}: TEST labels not in TRAIN: {unknown}")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValueError(f"{name}: TRAIN {train.x.shape} vs TEST {test.x.shape}")
    norm = Normalisation.fit(train.x)
    return Dataset(
        name=name,
        labels=labels,
        norm=norm,
        x_train=norm.apply(train.x),
        y_train=np.asarray([index[v] for v in train.y_text], dtype=np.int64),
        x_test=norm.apply(test.x),
        y_test=np.asarray([index[v] for v in test.y_text], dtype=np.int64),
        y_test_text=list(test.y_text),
    )
