"""Deterministic CPU training loop with light time-series augmentation."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .nets import Net, NetSpec


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.05
    # augmentation (applied to the normalised windows, training only)
    max_shift: float = 0.1  # random circular shift, fraction of the window
    scale: float = 0.1  # per-window amplitude factor in [1-scale, 1+scale]
    noise: float = 0.05  # additive Gaussian noise (in normalised units)
    mixup: float = 0.0  # Beta(a, a) mixup; 0 = off

    def to_json(self) -> dict:
        return asdict(self)


def seed_everything(seed: int, threads: int = 1) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # subnormal floats make some CPU kernels 5-50x slower; flushing them is harmless here
    torch.set_flush_denormal(True)


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    n, _, w = x.shape
    if cfg.max_shift > 0:
        m = max(1, int(round(cfg.max_shift * w)))
        shifts = torch.randint(-m, m + 1, (n,), generator=gen)
        idx = (torch.arange(w)[None, :] - shifts[:, None]) % w
        x = torch.gather(x, 2, idx[:, None, :].expand_as(x))
    if cfg.scale > 0:
        f = 1.0 + cfg.scale * (2 * torch.rand((n, 1, 1), generator=gen) - 1)
        x = x * f
    if cfg.noise > 0:
        x = x + cfg.noise * torch.randn(x.shape, generator=gen)
    return x


def train(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    spec: NetSpec,
    cfg: TrainConfig,
    seed: int,
    log_every: int = 0,
    tag: str = "",
    threads: int = 1,
) -> Net:
    seed_everything(seed, threads)
    gen = torch.Generator().manual_seed(seed)
    model = Net(x.shape[1], n_classes, spec)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            b = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb = augment(xt[b], cfg, gen)
            yb = yt[b]
            if cfg.mixup > 0:
                lam = float(np.random.beta(cfg.mixup, cfg.mixup))
                p = torch.randperm(len(b), generator=gen)
                xb = lam * xb + (1 - lam) * xb[p]
                out = model(xb)
                loss = lam * loss_fn(out, yb) + (1 - lam) * loss_fn(out, yb[p])
            else:
                loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        if log_every and ((epoch + 1) % log_every == 0 or epoch + 1 == cfg.epochs):
            print(f"    [{tag}] epoch {epoch + 1:4d}/{cfg.epochs}  loss {total / len(x):.4f}", flush=True)
    model.eval()
    return model


@torch.no_grad()
def predict(model: Net, x: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(outs).argmax(axis=1)
