"""The transfer set: the unlabelled inputs students distill on.

Kinds (as studied in "What Makes a Good Dataset for Knowledge Distillation?"):
``public`` — the world's own public split (in-distribution, the default); ``imbalanced`` — the
public split with a long-tailed class mix; ``noise`` — Gaussian noise matched to the private
pool's mean and std; or another built-in dataset (``digits``, ``mnist5k``, ``mnist1d``)
resized to the world's input shape. Labels never reach the clients in any case.
"""

from __future__ import annotations

import numpy as np

from peerkd.errors import ConfigError
from peerkd.world.data import BUILTIN_DATASETS, Dataset, Splits, load_dataset

TRANSFER_KINDS = ("public", "imbalanced", "noise", *BUILTIN_DATASETS)
IMBALANCE_RATIO = 0.1  # the rarest class keeps 10% of its samples, the commonest all
# Text worlds distill on at most this many public windows unless data.transfer_size says otherwise: on real
# English text (128-window shards) 256 gave peers perplexity 13.2 where the whole 720-window split gave 16.0,
# worse than local-only (14.8): an epoch spans the larger set, so a big transfer set cycles a small shard
# many times a round (docs/text-defaults.md).
TEXT_TRANSFER = 256


def make_transfer_set(kind: str, data: Dataset, splits: Splits, size: int, rng: np.random.Generator) -> np.ndarray:
    """Inputs of the transfer set, ``(size or default, *data.input_shape)`` float32.

    Parameters
    ----------
    kind : str
        One of ``TRANSFER_KINDS``.
    data, splits : Dataset, Splits
        The world's data and splits (the pool gives the noise statistics).
    size : int
        Number of inputs; 0 takes the public split's size (all of it for ``public``; text: at most
        ``TEXT_TRANSFER`` windows of it).
    rng : np.random.Generator
        Source of every random choice.
    """
    if kind not in TRANSFER_KINDS:
        raise ConfigError("data.transfer", f"unknown value {kind!r}", TRANSFER_KINDS)
    if data.text and kind != "public":
        raise ConfigError("data.transfer", f"text worlds distill on public text only, not {kind!r}", "public")
    if kind in ("public", "imbalanced"):
        idx = splits.public if kind == "public" else long_tail(data.y[splits.public], splits.public, rng)
        if data.text and size == 0:
            size = min(TEXT_TRANSFER, len(idx))
        return _take(data.x[idx], size, rng, kind)
    n = size or len(splits.public)
    if n <= 0:
        raise ConfigError(
            "data.transfer_size", f"transfer={kind} with an empty public split needs a size", "an integer > 0"
        )
    pool = data.x[splits.pool]
    if kind == "noise":
        mean, std = pool.mean(axis=0), pool.std(axis=0) + 1e-6
        return (mean + std * rng.standard_normal((n, *data.input_shape))).astype(np.float32)
    other = load_dataset(kind)
    x = resize_inputs(other.x, data.input_shape)
    x = (x - x.mean()) / (x.std() + 1e-6) * pool.std() + pool.mean()
    return _take(x, n, rng, kind)


def long_tail(labels: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Subset of ``idx`` where the k-th class (in a seeded random order) keeps a share
    ρ^(k/(C−1)) of its samples, ρ = IMBALANCE_RATIO."""
    classes = rng.permutation(np.unique(labels))
    keep = []
    for k, c in enumerate(classes):
        members = idx[labels == c]
        share = IMBALANCE_RATIO ** (k / max(len(classes) - 1, 1))
        keep.append(rng.choice(members, max(1, round(share * len(members))), replace=False))
    return np.sort(np.concatenate(keep))


def resize_inputs(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize inputs to ``shape``: images bilinearly (channels averaged and repeated),
    anything else as a flattened signal, linearly."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(x, dtype=torch.float32)
    if t.dim() == 4 and len(shape) == 3:
        t = F.interpolate(t.mean(dim=1, keepdim=True), size=shape[1:], mode="bilinear", align_corners=False)
        return t.repeat(1, shape[0], 1, 1).numpy()
    flat = t.reshape(len(t), 1, -1)
    d = int(np.prod(shape))
    return F.interpolate(flat, size=d, mode="linear", align_corners=False).reshape(len(t), *shape).numpy()


def _take(x: np.ndarray, size: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    if size <= 0 or size == len(x):
        return x
    if size > len(x):
        raise ConfigError(
            "data.transfer_size", f"{size} asked, but transfer={kind} has only {len(x)} inputs", f"≤ {len(x)}"
        )
    return x[np.sort(rng.choice(len(x), size, replace=False))]
