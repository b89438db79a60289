"""FedTGP: Zhang et al. AAAI 2024, "FedTGP: Trainable Global Prototypes with Adaptive-Margin-Enhanced
Contrastive Learning for Data and Model Heterogeneity in Federated Learning".

Clients act as in FedProto (class-mean embeddings and counts up; CE + α·‖embedding − prototype‖²).
The server does not average: it *trains* the global prototypes, one learnable vector per class
passed through a shared two-layer MLP, so that every client prototype of class c lies nearer
P_c than any other class's, by a margin: the loss on a client prototype p of class c is
cross-entropy over classes of −(‖P_k − p‖ + δ·[k = c]) (``tgp_loss``). The margin adapts: δ is
the largest distance between two classes' count-weighted mean prototypes, capped at
``margin_cap`` (τ), so prototypes separate as far as the clients' own do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peerkd.errors import check_range
from peerkd.round.contract import ServerContext
from peerkd.student.prototypes import weighted_prototypes
from strategies.fedproto import FedProto


def tgp_loss(global_protos: torch.Tensor, client_protos: torch.Tensor, labels: torch.Tensor, margin: float):
    """FedTGP's adaptive-margin contrastive loss: mean over client prototypes ``(n, D)`` of class
    ``labels`` ``(n,)`` of CE over classes of the logits −(‖P_k − p‖ + margin·[k = label]),
    ``global_protos`` ``(C, D)``. With margin 0 and P = [[0], [2]], p = [0] of class 0:
    −log(e⁰ / (e⁰ + e⁻²)) = log(1 + e⁻²) ≈ 0.1269."""
    dist = torch.cdist(client_protos, global_protos)  # (n, C)
    return F.cross_entropy(-(dist + margin * F.one_hot(labels, len(global_protos))), labels)


def adaptive_margin(means: torch.Tensor, valid: torch.Tensor, cap: float) -> float:
    """δ = min(largest distance between two held classes' mean prototypes, ``cap``) (0 with < 2 classes)."""
    held = means[valid]
    if len(held) < 2:
        return 0.0
    return float(min(torch.cdist(held, held).max().item(), cap))


class PrototypeGenerator(nn.Module):
    """One learnable vector per class through a shared MLP (D -> D -> D, ReLU): FedTGP's TGP."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.codes = nn.Parameter(torch.randn(num_classes, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.codes)


class FedTGP(FedProto):
    """FedProto's clients; global prototypes trained at the server with an adaptive margin."""

    name = "fedtgp"

    def __init__(
        self, alpha: float = 1.0, proto_dim: int = 0, server_epochs: int = 100, server_lr: float = 0.01,
        margin_cap: float = 100.0,
    ):  # fmt: skip
        super().__init__(alpha, proto_dim)
        self.server_epochs = int(check_range("strategy.server_epochs", server_epochs, 1, 100_000))
        self.server_lr = check_range("strategy.server_lr", server_lr, 0.0, 10.0, low_open=True)
        self.margin_cap = check_range("strategy.margin_cap", margin_cap, 0.0)

    def setup(self, ctx: ServerContext) -> dict[str, float]:
        out = super().setup(ctx)
        self.generator = self._generator(ctx, self.dim)
        self.trained = False
        self.margin = 0.0
        return out

    def resume(self, ctx: ServerContext) -> None:
        """The generator module built again (its weights come from the checkpoint)."""
        super().resume(ctx)
        self.generator = self._generator(ctx, self.prototype_width(ctx.students, ctx.world.data))

    @staticmethod
    def _generator(ctx: ServerContext, dim: int) -> PrototypeGenerator:
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            return PrototypeGenerator(ctx.world.num_classes, dim)

    def _collect(self, means: dict[int, np.ndarray], counts: dict[int, np.ndarray]) -> dict[str, Any]:
        super()._collect(means, counts)
        if not self.means:
            return {}
        nodes = sorted(self.means)
        means = torch.as_tensor(np.stack([self.means[n] for n in nodes]), dtype=torch.float32)  # (n, C, D)
        counts = torch.as_tensor(np.stack([self.counts[n] for n in nodes]), dtype=torch.float32)
        centres, valid = weighted_prototypes(means, counts)
        self.margin = adaptive_margin(centres, valid, self.margin_cap)
        held = counts > 0
        protos, labels = means[held], held.nonzero()[:, 1]
        opt = torch.optim.Adam(self.generator.parameters(), lr=self.server_lr)
        self.generator.train()
        for _ in range(self.server_epochs):
            opt.zero_grad(set_to_none=True)
            loss = tgp_loss(self.generator(), protos, labels, self.margin)
            loss.backward()
            opt.step()
        self.trained = True
        return {"tgp_loss": float(loss.detach()), "tgp_margin": self.margin}

    def global_prototypes(self) -> np.ndarray | None:
        if not self.trained:
            return None
        with torch.no_grad():
            return self.generator().numpy().astype(np.float32)
