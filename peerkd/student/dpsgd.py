"""Example-level differential privacy for a student's training: DP-SGD (Abadi et al. 2016).

At each step, every example of the private batch contributes its own gradient, clipped to L2
norm ``clip``; the clipped gradients are summed, Gaussian noise of standard deviation
``noise · clip`` is added, and the sum is divided by the batch size. This is Opacus's
``DPOptimizer`` on a batch of fixed size (``tests/student/test_dpsgd.py`` checks the two agree).
An example that a batch holds m times (a shard smaller than a batch is cycled) has each of its
copies clipped to ``clip / m``: its whole contribution is then clipped once.

The transfer-set term is added without clipping or noise. It reads public inputs and targets
that the other clients released, and those releases are themselves post-processing of DP
models. Adam then steps on the noisy gradient, which is post-processing too. Everything the
student releases afterwards is a function of the model alone: its logits and probabilities on
shared inputs, its weights. Those need no further noise. Two exceptions: FD releases per-class
means of the private shard, and the oracle pools raw data. Both are refused.

Accounting (``dpsgd_epsilon``, Google's ``dp-accounting``, RDP at integer orders): each step is
a Gaussian mechanism subsampled at rate ``q = min(1, B / N)``, composed over the steps the run
plans for the client. The batches are shuffled passes, not Poisson samples. Accounting them as
Poisson is the convention of Opacus and TF Privacy, but it is not a proof for shuffling
(Chua et al. 2024). The noise is drawn from a counter-based hash of (client, round, step,
element). Both engines draw the same numbers; the hash is not a cryptographic generator.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from peerkd.errors import ConfigError
from peerkd.student.batches import MASK32, item_keys, mul32, pass_keys
from peerkd.wire import protocol as P
from peerkd.wire.protocol import RoundParams

NOISE_STREAM = 0x6A09E667  # key stream of the gradient noise: apart from batch orders
# RDP orders: integers only (exact, no series to converge), sparse (a calibration takes ~0.3 s; all of
# 2..256 give the same noise at ε = 8 and 0.7 % less at ε = 1, sampling rate 0.5, 800 steps)
ORDERS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 384, 512)
MAX_NOISE = 1e3  # a budget that needs more noise than this is refused as unreachable
NORM_EPS = 1e-6  # Opacus's clip factor: clip / (norm + 1e-6)


@dataclass(frozen=True)
class DPSGD:
    """One client's DP-SGD settings for one training call: the per-example ``clip``, the noise
    multiplier ``noise``, the noise ``key`` (the client's seed this round), its sampling ``rate``
    and the ``steps`` its budget was calibrated for."""

    clip: float
    noise: float
    key: int
    rate: float
    steps: int


def steps_planned(n_private: int, n_transfer: int, batch_size: int, epochs: int, rounds: int) -> int:
    """The private steps a client may take in a run: every round, ``epochs`` passes over the larger
    of its shard and the transfer set (``n_transfer`` 0 for rules whose training pairs with none)."""
    return rounds * epochs * math.ceil(max(n_private, n_transfer, 1) / batch_size)


def sample_rate(n_private: int, batch_size: int) -> float:
    """The chance that one private example is in one step's batch, ``min(1, B / N)``."""
    return min(1.0, batch_size / max(n_private, 1))


def dpsgd_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    """ε at ``delta`` after ``steps`` Gaussian steps of multiplier ``noise``, each subsampled at ``rate``.

    ``dpsgd_epsilon(4.0, 0.01, 10_000, 1e-5)`` is about 1.04 (Abadi et al. report 1.26 with the
    moments accountant; RDP's conversion is tighter)."""
    if steps <= 0:
        return 0.0
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    accountant = rdp.RdpAccountant(list(ORDERS))
    event = dp_event.GaussianDpEvent(noise)
    accountant.compose(event if rate >= 1.0 else dp_event.PoissonSampledDpEvent(rate, event), int(steps))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=4096)
def dpsgd_noise(epsilon: float, delta: float, rate: float, steps: int) -> float:
    """The smallest noise multiplier (to 0.1 %) whose ``steps`` subsampled steps compose to at most
    (ε, δ). ConfigError naming ``privacy.epsilon`` when even ``MAX_NOISE`` cannot meet it."""
    if dpsgd_epsilon(MAX_NOISE, rate, steps, delta) > epsilon:
        raise ConfigError(
            "privacy.epsilon",
            f"{epsilon:g} cannot be met over {steps} DP-SGD steps at sampling rate {rate:.3g} and delta {delta:g}",
            "a larger privacy.epsilon or privacy.delta, fewer rounds or epochs, or a larger shard",
        )
    lo, hi = math.log(0.05), math.log(MAX_NOISE)
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if dpsgd_epsilon(math.exp(mid), rate, steps, delta) > epsilon else (lo, mid)
    return math.exp(hi)


def per_example_grads(module: torch.nn.Module):
    """``g(params, x, y)``: each example's gradient and loss for ``module`` run with ``params``: ``x``
    ``(B, ...)`` and ``y`` ``(B, ...)`` in, ``({name: (B, *shape)}, (B,))`` out. An example's loss is its
    cross-entropy (text: the mean over its positions). ``vmap`` it again for stacked students."""

    def example_loss(params: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, params, (xi[None],))
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), yi.reshape(-1))

    return vmap(grad_and_value(example_loss), in_dims=(None, 0, 0))


def row_bounds(batch: torch.Tensor, clip: float) -> torch.Tensor:
    """Each row's clip bound, ``clip / m`` for an example the batch holds m times: ``(..., B)`` indices
    in, ``(..., B)`` bounds out. ``row_bounds([4, 7, 4], 1.0)`` is ``[0.5, 1.0, 0.5]``."""
    copies = (batch[..., :, None] == batch[..., None, :]).sum(dim=-1)
    return clip / copies.to(torch.float32)


def clip_sum(grads: dict[str, torch.Tensor], bounds: torch.Tensor) -> dict[str, torch.Tensor]:
    """The sum over rows of per-row gradients, each scaled down to its L2 norm bound.

    ``grads`` are ``(..., B, *shape)`` by name and ``bounds`` is ``(..., B)``. A row's norm is taken over
    all of its tensors together. The result is ``(..., *shape)``."""
    lead = bounds.dim()
    norms = torch.stack([g.flatten(lead).pow(2).sum(dim=-1) for g in grads.values()]).sum(dim=0).sqrt()
    factor = (bounds / (norms + NORM_EPS)).clamp(max=1.0)
    return {n: (g * factor.reshape(*factor.shape, *[1] * (g.dim() - lead))).sum(dim=lead - 1) for n, g in grads.items()}


def gaussian(keys: torch.Tensor, step: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Standard normal noise ``(S, *shape)`` for each name in ``shapes``, a pure function of each key
    (``(S,)`` int64), the step and the element: the same numbers on every engine and device.

    Two 32-bit hashes per element, through Box–Muller in float64; the tails stop at 6.7 standard
    deviations."""
    out = {}
    base = pass_keys(keys, NOISE_STREAM, torch.tensor(step & MASK32, device=keys.device), torch.zeros_like(keys))
    for j, (name, shape) in enumerate(shapes.items()):
        key = (base ^ mul32(torch.full_like(keys, j), 0x9E3779B9))[:, None]
        items = torch.arange(2 * math.prod(shape), device=keys.device, dtype=torch.int64)[None, :]
        u = (item_keys(key, items).double() + 0.5) / 2.0**32  # (S, 2n) in (0, 1)
        z = torch.sqrt(-2.0 * torch.log(u[:, 0::2])) * torch.cos(2.0 * math.pi * u[:, 1::2])
        out[name] = z.float().reshape(len(keys), *shape)
    return out


def client_dpsgd(params: RoundParams, n_private: int, n_transfer: int, key: int) -> DPSGD | None:
    """This message's DP-SGD settings for a client with ``n_private`` examples, or None when the run
    has no example-level budget. ``n_transfer`` is the transfer inputs its training pairs with
    (0 unless the rule distills on the transfer set); the noise is calibrated once per
    (budget, rate, planned steps) in this process."""
    if params.dpsgd_epsilon <= 0:
        return None
    steps = steps_planned(n_private, n_transfer, params.batch_size, params.epochs, max(params.dp_rounds, 1))
    rate = sample_rate(n_private, params.batch_size)
    noise = dpsgd_noise(params.dpsgd_epsilon, params.dp_delta, rate, steps)
    return DPSGD(params.dp_clip, noise, key, rate, steps)


def dp_metrics(dp: DPSGD | None, params: RoundParams, n_private: int, n_transfer: int) -> dict[str, float]:
    """What a reply reports of its DP-SGD training, for the server's accounting: the steps it took
    (one round of ``steps_planned``; ``n_transfer`` 0 unless it distilled on the transfer set), their
    noise multiplier and sampling rate. Empty without DP-SGD."""
    if dp is None:
        return {}
    steps = steps_planned(n_private, n_transfer, params.batch_size, params.epochs, 1)
    return {P.METRIC_DP_STEPS: steps, P.METRIC_DP_NOISE: dp.noise, P.METRIC_DP_RATE: dp.rate}
