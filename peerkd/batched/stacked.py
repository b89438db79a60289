"""Many students of one architecture as one batched computation: pure tensor code.

Parameters of S students are stacked along a leading axis (``torch.func.stack_module_state``)
and one ``vmap`` of ``functional_call`` runs all of them. The losses reduce the last two
axes (batch rows, classes), so the same function serves one student ``(B, C)`` or S
students ``(S, B, C)``; they use ``log_softmax`` and sums because ``F.kl_div`` has no vmap
batching rule. Adam is torch's own, run on the stacked tensors: within one training call all
students start together and a student that has finished stops for good, so the students
that step share a step count, and a stacked tensor is one Adam parameter to torch; the
finished students' rows are simply left out of the update.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.adam import adam as torch_adam

Params = dict[str, torch.Tensor]  # name -> (S, *shape): one row per student

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS = 1e-8
SOFT_BLOCK = 1 << 18  # numbers per block when softening targets on a CPU (1 MB of float32: cache-sized)


def stack_students(models: list[nn.Module]) -> tuple[nn.Module, Params]:
    """A weightless copy of the architecture (on the meta device) and the stacked parameters.

    Raises ValueError for models with buffers (the zoo's students have none; batch-norm
    statistics would need stacking too).
    """
    params, buffers = stack_module_state(models)
    if buffers:
        raise ValueError(f"students with buffers are not supported: {sorted(buffers)}")
    return copy.deepcopy(models[0]).to("meta"), {k: v.detach() for k, v in params.items()}


def stacked_forward(base: nn.Module, shared_input: bool = False) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """``f(params, x)``: every student's logits. ``x`` is ``(S, B, ...)`` (one batch per
    student) or, with ``shared_input``, ``(B, ...)`` seen by all; the result is ``(S, B, C)``."""

    def one(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, params, (x,))

    return vmap(one, in_dims=(0, None if shared_input else 0))


def student_rows(z: torch.Tensor) -> torch.Tensor:
    """Stacked outputs as rows of one prediction each: ``(S, B, C)`` as is, text ``(S, B, L, V)``
    as ``(S, B·L, V)``; labels ``(S, B, L)`` as ``(S, B·L)`` (``peerkd.student.losses.as_rows``, stacked)."""
    return z.flatten(1, -2) if z.dim() > 2 and z.is_floating_point() else z.flatten(1)


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    """``F.log_softmax(z, -1)`` written out: on rows of few classes (``(S, B, 10)``) about twice as
    fast, forward and backward, as torch's kernel, which vectorises along the class axis. The
    shift by the (detached) row maximum changes no value and no gradient."""
    shifted = z - z.detach().amax(dim=-1, keepdim=True)
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the batch axis: ``(..., B, C)``, ``(..., B)`` -> ``(...)``; with
    ``weight`` (``(..., B)``) the weighted sum instead (weights of a mean: 1/B each)."""
    nll = -log_softmax(logits).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return nll.mean(dim=-1) if weight is None else (nll * weight).sum(dim=-1)


def hits_and_nll(logits: torch.Tensor, labels: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's hit (``argmax == label``, ties to the first maximum as ``argmax``) and its
    cross-entropy ``logsumexp − z[label]``: logits ``(..., B, C)`` (or class-major ``(S, C, B)``
    with ``dim=1``) and labels ``(..., B)`` -> two ``(..., B)``. ``logits`` are overwritten.

    ``max`` with its index costs 0.84–0.94 ms on 640 students × 102 rows × 10 classes (2 cores),
    ``amax`` 0.05 class-major: a label hits when its logit, less the maximum, is 0 and every other
    class's is below 0 (the best of the others: ``amax`` with the label's entry set to −inf for the
    while, in place; a fresh array of the logits' size, such as their signs, cost as much as ``max``
    in a long run, its pages faulted in). Only a block with a label tied for the maximum (or NaN
    logits) takes ``argmax``. 1.5 ms in all before, 0.4 now."""
    index = labels.unsqueeze(dim)
    shifted = logits.sub_(logits.amax(dim=dim, keepdim=True))
    picked = shifted.gather(dim, index)  # z[label] − max: 0 at a maximum
    others = shifted.scatter_(dim, index, float("-inf")).amax(dim=dim)
    shifted.scatter_(dim, index, picked)
    picked = picked.squeeze(dim)
    hits = (picked == 0) & (others < 0)
    if bool((~(picked < 0) & ~(others < 0)).any()):  # a tie for the label, or NaN: argmax decides
        hits = shifted.argmax(dim=dim) == labels  # the shift keeps the order (inf − inf: NaN, argmax's maximum)
    return hits, shifted.exp_().sum(dim=dim).log_().sub_(picked)


def _soften(
    t: torch.Tensor, temperature: float, probs: torch.Tensor, neg_entropy: torch.Tensor, scratch: torch.Tensor
) -> None:
    """``SoftTargets.of`` for one block: ``softmax(t/T)`` into ``probs``, ``Σ p·log p`` into ``neg_entropy``;
    the shifted rows in ``scratch`` (``t``'s shape), written over: memory the block before has written, in
    cache (a fresh 1 MB block a time took longer than the whole arrays at once, its pages faulted in)."""
    shifted = torch.sub(t, t.amax(dim=-1, keepdim=True), out=scratch).div_(temperature)
    torch.exp(shifted, out=probs)
    total = probs.sum(dim=-1, keepdim=True)
    probs.div_(total)
    torch.sub(shifted.mul_(probs).sum(dim=-1), total.log().squeeze(-1), out=neg_entropy)  # Σ p·log p, Σ p = 1


@dataclass(frozen=True)
class SoftTargets:
    """Targets at a temperature, as KD uses them: probabilities ``softmax(t/T)`` and each row's
    ``Σ p log p``; computed once for a training call's targets, then indexed per batch."""

    probs: torch.Tensor  # (..., C)
    neg_entropy: torch.Tensor  # (...)

    @classmethod
    def of(cls, target: torch.Tensor, temperature: float) -> SoftTargets:
        """``target``'s rows softened at ``temperature``: ``(t − max t)/T`` (the shift before the
        division; the same as shifting ``t/T`` up to rounding, equal for a power-of-two T), its
        exponentials normalised, and ``Σ p·log p`` from the shifted rows. On a CPU the work goes block
        by block of the first axis (``SOFT_BLOCK`` numbers, cache-sized): only the probabilities are a
        fresh array of the targets' size, and every pass reads what the one before wrote from cache.
        At 640 students × 1,000 inputs (25 MB arrays, 2 cores) that was 19–20 against 26–36 ms for whole
        arrays (and 43–49 ms for four of them: a fresh array's pages are faulted in by its first pass).

        The arrays are contiguous in ``target``'s axis order even when it is a view: the softened
        targets of ``targets.transpose(0, 1)`` are laid out input by input with no copy after."""
        t = target.detach()
        probs = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        neg_entropy = torch.empty(t.shape[:-1], dtype=t.dtype, device=t.device)
        whole = t.dim() < 2 or t.device.type != "cpu"  # one row of classes, or a GPU: one pass
        rows = max(1, len(t) if whole else SOFT_BLOCK // max(math.prod(t.shape[1:]), 1))
        scratch = torch.empty((min(rows, len(t)), *t.shape[1:]), dtype=t.dtype, device=t.device)
        for i in range(0, len(t), rows):
            b = slice(i, i + rows)
            _soften(t[b], temperature, probs[b], neg_entropy[b], scratch[: len(t) - i])
        return cls(probs, neg_entropy)

    def __getitem__(self, index) -> SoftTargets:
        return SoftTargets(self.probs[index], self.neg_entropy[index])

    def swapped(self) -> SoftTargets:
        """The first two axes swapped (students and inputs), as views."""
        return SoftTargets(self.probs.transpose(0, 1), self.neg_entropy.transpose(0, 1))

    def rows(self) -> SoftTargets:
        """As rows of one prediction each (``student_rows``)."""
        return SoftTargets(student_rows(self.probs), self.neg_entropy.flatten(1))


def kd_divergence(
    student: torch.Tensor, target: torch.Tensor | SoftTargets, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """T²·KL(softmax(target/T) ‖ softmax(student/T)) averaged over the batch rows:
    ``(..., B, C)`` -> ``(...)``; ``peerkd.student.losses.kd_loss`` for stacked students.
    ``target``: logits, or ``SoftTargets`` already at ``temperature``.

    With ``valid`` (``(..., B)``, bool, or float row weights) the mean is over valid rows only
    (weighted). With none valid the value is NaN and the gradient zero, as ``kd_loss`` on an
    empty batch gives.
    """
    soft = target if isinstance(target, SoftTargets) else SoftTargets.of(target, temperature)
    kl = soft.neg_entropy - (soft.probs * log_softmax(student / temperature)).sum(dim=-1)  # (..., B)
    if valid is None:
        return kl.mean(dim=-1) * temperature**2
    valid = valid.to(kl.dtype)
    n = valid.sum(dim=-1)
    mean = (kl * valid).sum(dim=-1) / n.clamp(min=1e-30)
    return torch.where(n > 0, mean, torch.full_like(mean, float("nan"))) * temperature**2


@dataclass
class AdamState:
    """Stacked Adam moments and each student's step count (fresh per training call, like
    the per-client path's ``torch.optim.Adam``)."""

    exp_avg: Params
    exp_avg_sq: Params
    step: torch.Tensor  # (S,) int64, on the CPU (read without a device sync)


def adam_init(params: Params) -> AdamState:
    """Zero moments and zero steps for ``params``."""
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    step = torch.zeros(next(iter(params.values())).shape[0], dtype=torch.int64)
    return AdamState(zeros, {k: v.clone() for k, v in zeros.items()}, step)


def adam_step(params: Params, grads: Params, state: AdamState, lr: float, active: torch.Tensor | None = None) -> None:
    """One Adam step (torch.optim.Adam's defaults), in place, for every student, or only for
    those where ``active`` (``(S,)`` bool) holds: the others keep their parameters, moments
    and step count. The students that step must share a step count (in ``fit`` they do:
    all start together and a student that stops never resumes)."""
    if active is None:
        return _adam_update(params, grads, state, lr)
    rows = active.nonzero().squeeze(1)
    take = lambda d: {k: v.index_select(0, rows) for k, v in d.items()}  # noqa: E731
    p, sub = (
        take(params),
        AdamState(take(state.exp_avg), take(state.exp_avg_sq), state.step.index_select(0, rows.cpu())),
    )
    _adam_update(p, take(grads), sub, lr)
    for full, part in ((params, p), (state.exp_avg, sub.exp_avg), (state.exp_avg_sq, sub.exp_avg_sq)):
        for k, v in full.items():
            v.index_copy_(0, rows, part[k])
    state.step.index_copy_(0, rows.cpu(), sub.step)


def _adam_update(params: Params, grads: Params, state: AdamState, lr: float) -> None:
    """Every student steps, in place, through ``torch.optim.adam.adam`` with the students'
    shared step count.

    The fused kernel: one pass per tensor, ~4× the single-tensor path on CPU for 100 mlp64
    students (its rounding differs from the per-client path's by ~1e-7 after 30 steps). It
    misreads non-contiguous gradients, and vmap's weight gradients are transposed views,
    hence ``contiguous()``.
    """
    step = int(state.step[0]) if len(state.step) else 0
    names = list(params)
    torch_adam(
        [params[k] for k in names],
        [grads[k].contiguous() for k in names],
        [state.exp_avg[k] for k in names],
        [state.exp_avg_sq[k] for k in names],
        [],
        [torch.tensor(float(step), device=params[k].device) for k in names],
        fused=True,
        amsgrad=False,
        beta1=BETAS[0],
        beta2=BETAS[1],
        lr=lr,
        weight_decay=0.0,
        eps=EPS,
        maximize=False,
    )
    state.step += 1


def fit(
    params: Params,
    loss_at: Callable[[Params, int], torch.Tensor] | None,
    n_steps: torch.Tensor,
    lr: float,
    grads_at: Callable[[Params, int], tuple[torch.Tensor, Params]] | None = None,
) -> tuple[Params, torch.Tensor, AdamState]:
    """Train stacked students with a fresh Adam: student s takes its first ``n_steps[s]`` steps.

    Parameters
    ----------
    params : Params
        Stacked parameters ``(S, ...)``.
    loss_at : Callable[[Params, int], torch.Tensor]
        Every student's loss ``(S,)`` at step ``k`` (students are independent, so the
        gradient of their sum is each one's own gradient).
    n_steps : torch.Tensor
        ``(S,)`` steps per student; a student past its last step is left unchanged.
    lr : float
        Adam's learning rate.
    grads_at : Callable[[Params, int], tuple[torch.Tensor, Params]] | None
        Instead of ``loss_at``: the losses and the gradients themselves (DP-SGD's).

    Returns
    -------
    tuple[Params, torch.Tensor, AdamState]
        The trained parameters, the ``(K, S)`` step losses (K = max steps) and Adam's state.
    """
    params = {k: v.detach().clone() for k, v in params.items()}  # updated in place below
    state = adam_init(params)
    losses, flipped = [], set()
    every = int(n_steps.min()) if len(n_steps) else 0  # steps all students take: no mask needed
    for k in range(int(n_steps.max()) if len(n_steps) else 0):
        live = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        if grads_at is not None:  # gradients in the parameters' own layout: none is flipped
            loss, grads = grads_at(live, k)
        else:
            loss = loss_at({n: _flip(t) if n in flipped else t for n, t in live.items()}, k)
            grads = dict(zip(live, torch.autograd.grad(loss.sum(), list(live.values()))))
        adam_step(params, grads, state, lr, None if k < every else k < n_steps)
        losses.append(loss.detach())
        if k == 0 and grads_at is None:
            flipped = {n for n, g in grads.items() if not g.is_contiguous() and _flip(g).is_contiguous()}
            _relayout(params, state, flipped)
    _relayout(params, state, flipped)
    hist = torch.stack(losses) if losses else torch.zeros((0, len(n_steps)))
    return params, hist, state


def _flip(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(-1, -2)


def _relayout(params: Params, state: AdamState, names: set[str]) -> None:
    """Store ``names`` (and their Adam moments) transposed in their last two axes, or back.

    vmap's gradient of a linear weight is a transposed view; kept in that layout, the weights'
    gradients arrive contiguous and Adam's fused kernel takes them without a copy per step.
    """
    for d in (params, state.exp_avg, state.exp_avg_sq):
        for n in names:
            d[n] = _flip(d[n]).contiguous()
