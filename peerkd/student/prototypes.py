"""Class prototypes: the other light currency of heterogeneous federated learning (FedProto,
Tan et al. AAAI 2022; FedTGP, Zhang et al. AAAI 2024). Tensor in, tensor out; no I/O.

A student's *embedding* of an input is what its linear head reads (the penultimate features;
text: at every position). Students of different widths share one prototype space of
``dim`` through a fixed projection ``projection(width, dim)``: the identity when the widths
agree, else a seeded matrix with orthonormal rows or columns (norms kept), the same for every
student of that width on every engine. It is not trained (FedTGP's clients train a linear
layer of their own there; ours keeps the zoo's models unchanged): the prototype term trains
the features through it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def head_of(model: nn.Module) -> nn.Linear:
    """The model's head: its last registered ``nn.Linear`` (every zoo model registers it last)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear head")
    return linears[-1]


def embedding_width(model: nn.Module) -> int:
    return head_of(model).in_features


def with_features(model: nn.Module, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, output)`` of ``run()``, a forward pass of ``model`` (or a functional call of
    it): features are the input its head received. Works inside ``vmap``: both come back from
    the same call."""
    seen: list[torch.Tensor] = []
    handle = head_of(model).register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        out = run()
    finally:
        handle.remove()
    return seen[-1], out


def projection(width: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(width, dim)`` map of a width's features into the shared prototype space: the identity
    when ``width == dim``, else orthonormal columns (``width >= dim``) or rows, drawn from a seed
    of the two sizes alone (every student of one width, on every engine, gets the same)."""
    if width == dim:
        return torch.eye(width, device=device)
    gen = torch.Generator().manual_seed(7919 * width + dim)
    q, _ = torch.linalg.qr(torch.randn(max(width, dim), min(width, dim), generator=gen))
    return (q if width >= dim else q.T).to(device)


def prototype_loss(embedded: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each row's embedding to its class prototype, over the rows that
    have one: ``(..., R, D)``, ``(..., R, D)``, ``(..., R)`` row weights (0: no prototype; 1
    each for a plain mean) -> ``(...)`` (0 when no row has one).

    FedProto's client term (``nn.MSELoss`` on prototypes: mean over rows and dimensions):
    ``prototype_loss([[1., 1.], [0., 0.]], [[0., 1.], [5., 5.]], [1., 0.]) == 0.5``.
    """
    w = weight.to(embedded.dtype)
    sq = ((embedded - targets) ** 2).mean(dim=-1)
    return (sq * w).sum(dim=-1) / w.sum(dim=-1).clamp(min=1e-12)


def weighted_prototypes(means: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FedProto's aggregation: per class, the count-weighted mean of the clients' prototypes.
    ``(n, C, D)``, ``(n, C)`` -> ``(C, D)`` and a ``(C,)`` mask of the classes some client holds.

    ``weighted_prototypes([[[0., 0.]], [[3., 6.]]], [[1.], [2.]])`` is ``([[2., 4.]], [True])``.
    """
    total = counts.sum(dim=0)
    protos = (means * counts[..., None]).sum(dim=0) / total.clamp(min=1e-12)[:, None]
    return torch.where(total[:, None] > 0, protos, torch.zeros_like(protos)), total > 0
