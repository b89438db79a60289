"""Training and evaluation of one model on arrays. No I/O, no Flower: callers own both."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peerkd.losses import distillation_loss


def pick_device(prefer: str = "auto") -> torch.device:
    """``cuda`` when asked for or (``auto``) when this process was given a GPU, else ``cpu``."""
    if prefer == "cpu" or (prefer == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def train_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    transfer_x: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    alpha: float = 0.0,
    temperature: float = 1.0,
    device: torch.device | None = None,
    sample_targets: np.ndarray | None = None,
) -> float:
    """Train with Adam on CE over ``(x, y)``, plus α·T²·KL toward ``targets`` on ``transfer_x``.

    Each step pairs a private batch with a transfer batch. An epoch is one pass over the
    larger of the two sets; the smaller one is cycled, so a tiny private shard still sees
    the whole transfer set each epoch.

    With ``sample_targets`` (``(N, C)``, aligned with ``x``; rows of NaN mean "no target")
    the KD term is taken on the private batch itself instead (federated distillation's
    per-class targets).

    Returns
    -------
    float
        Mean training loss over the last epoch.
    """
    device = device or torch.device("cpu")
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    distill = targets is not None and transfer_x is not None and alpha > 0 and len(transfer_x) > 0
    if distill:
        pt, tt = torch.as_tensor(transfer_x, device=device), torch.as_tensor(targets, device=device)
    st = torch.as_tensor(sample_targets, device=device) if sample_targets is not None and alpha > 0 else None
    n_steps = math.ceil(max(len(x), len(transfer_x) if distill else 0) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    last = 0.0
    for _ in range(epochs):
        priv = _cycled_batches(len(x), batch_size, n_steps, gen)
        pub = _cycled_batches(len(transfer_x), batch_size, n_steps, gen) if distill else None
        total = 0.0
        for step in range(n_steps):
            bi = priv[step].to(device)
            out_priv = model(xt[bi])
            out_pub = tgt = None
            if pub is not None:
                bj = pub[step].to(device)
                out_pub, tgt = model(pt[bj]), tt[bj]
            elif st is not None:
                tgt = st[bi]
                has = torch.isfinite(tgt).all(dim=1)
                out_pub, tgt = out_priv[has], tgt[has]
            total += _step(opt, distillation_loss(out_priv, yt[bi], out_pub, tgt, alpha, temperature))
        last = total / n_steps
    return last


def distill_only(
    model: nn.Module, x: np.ndarray, targets: np.ndarray, *, epochs: int, lr: float, batch_size: int,
    seed: int, temperature: float, device: torch.device | None = None,
) -> float:
    """Fit ``model`` to ``targets`` on unlabelled ``x`` with T²·KL alone (digest phases, FedDF fusion).

    Returns
    -------
    float
        Mean KD loss over the last epoch.
    """
    from peerkd.losses import kd_loss

    device = device or torch.device("cpu")
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    xt, tt = torch.as_tensor(x, device=device), torch.as_tensor(targets, device=device)
    n_steps = math.ceil(len(x) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    last = 0.0
    for _ in range(epochs):
        total = 0.0
        for bi in _cycled_batches(len(x), batch_size, n_steps, gen):
            bi = bi.to(device)
            total += _step(opt, kd_loss(model(xt[bi]), tt[bi], temperature))
        last = total / n_steps
    return last


def class_mean_logits(logits: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean of ``logits`` over samples of each label, and the label counts.

    ``class_mean_logits([[1, 0], [3, 2], [5, 5]], [0, 0, 1], 2)`` is ``([[2, 1], [5, 5]], [2, 1])``.
    Rows of absent classes are 0 with count 0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    counts = np.bincount(y, minlength=num_classes)
    sums = np.zeros((num_classes, logits.shape[1]))
    np.add.at(sums, y, logits)
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    return means.astype(np.float32), counts.astype(np.float32)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step on ``loss``; returns its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _cycled_batches(n: int, batch_size: int, n_steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``n_steps`` index batches over ``0..n-1``, reshuffling each time the data runs out."""
    reps = math.ceil(n_steps * batch_size / n) if n else 0
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(max(reps, 1))])
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n_steps)]


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, device: torch.device | None = None, batch_size: int = 2048) -> np.ndarray:
    """Logits of ``model`` on ``x`` as a float32 ``(N, C)`` array."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    xt = torch.as_tensor(x)
    outs = [model(xt[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | None = None) -> tuple[float, float]:
    """Accuracy in [0, 1] and mean cross-entropy of ``model`` on ``(x, y)``."""
    logits = torch.as_tensor(predict_logits(model, x, device))
    labels = torch.as_tensor(y)
    acc = float((logits.argmax(dim=1) == labels).float().mean())
    return acc, float(F.cross_entropy(logits, labels))
