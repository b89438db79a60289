"""Every node's student between messages: the batched engine's ``context.state``.

Weights are kept stacked per architecture on their ``home`` device: the compute device, or host
memory when the fleet's weights would not fit there (a GPU box with 100,000 students), in which
case each chunk's weights stream to the device for its call and back. A student appears, on
its first message, built exactly as the ClientApp builds it
(``build_model(arch, ..., seed=world seed * 1000 + client)``); a training handler writes
its weights back. Optimiser state is never kept: the per-client path creates a fresh
Adam in every training call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from peerkd.batched.stacked import Params, stack_students
from peerkd.student.models import MLP_WIDTHS, build_model, stacked_mlp
from peerkd.world.build import World


class StudentStore:
    """Stacked weights per architecture, one row per client."""

    def __init__(self, device: torch.device, home: torch.device | None = None):
        self.device = device  # where students are trained
        self.home = device if home is None else home  # where their weights stay between calls
        self._weights: dict[str, Params] = {}
        self._rows: dict[str, dict[int, int]] = {}  # arch -> client -> row
        self._used: dict[str, int] = {}  # arch -> rows taken; the stacks have room for more
        self._arch: dict[int, str] = {}  # client -> the architecture its student has now
        self._bases: dict[tuple, nn.Module] = {}
        self.sent: dict[int, np.ndarray] = {}  # client -> the logits it sent last (kept for peer_sum)

    def base(self, arch: str, world: World) -> nn.Module:
        """The weightless (meta-device) module of ``arch`` for ``world``'s inputs and classes."""
        key = (arch, tuple(world.data.input_shape), world.num_classes)
        if key not in self._bases:
            self._bases[key] = build_model(arch, world.data.input_shape, world.num_classes, seed=0).to("meta")
        return self._bases[key]

    def load(self, arch: str, world: World, clients: list[int]) -> Params:
        """A copy of ``clients``' stacked weights (``(S, ...)``), creating students seen for the
        first time, or whose architecture changed, as the ClientApp would."""
        new = [c for c in clients if self._arch.get(c) != arch]
        if new:
            self._add(arch, world, new)
        rows = torch.as_tensor(np.array([self._rows[arch][c] for c in clients]), device=self.home)
        return {k: v.index_select(0, rows).to(self.device) for k, v in self._weights[arch].items()}

    def save(self, arch: str, clients: list[int], weights: Params) -> None:
        """Keep ``weights`` (rows in ``clients`` order) as these clients' students."""
        rows = torch.as_tensor(np.array([self._rows[arch][c] for c in clients]), device=self.home)
        for k, v in self._weights[arch].items():
            v.index_copy_(0, rows, weights[k].to(self.home, v.dtype))

    def _add(self, arch: str, world: World, clients: list[int]) -> None:
        seed = world.spec.seed
        shape, classes, seeds = world.data.input_shape, world.num_classes, [seed * 1000 + c for c in clients]
        if arch in MLP_WIDTHS:  # drawn into their rows: the same weights, no module per student
            params = {k: v.to(self.home) for k, v in stacked_mlp(arch, shape, classes, seeds).items()}
        else:
            models = [build_model(arch, shape, classes, seed=s) for s in seeds]
            params = {k: v.to(self.home) for k, v in stack_students(models)[1].items()}
        rows = self._rows.setdefault(arch, {})
        start, old = self._used.get(arch, 0), self._weights.get(arch)
        if old is None:
            self._weights[arch] = params
        else:
            self._weights[arch] = grown = _with_room(old, start, start + len(clients))
            for k, v in params.items():
                grown[k][start : start + len(clients)] = v
        self._used[arch] = start + len(clients)
        for i, c in enumerate(clients):
            rows[c] = start + i  # a client that comes back to an architecture starts afresh
            self._arch[c] = arch

    def snapshot(self, copy: bool = True) -> dict[str, Any]:
        """Every student and the logits each sent last, on CPU, stacked (tensors, lists and dicts
        only: a checkpoint's data): ``{"archs": {arch: {"clients": [c, ...], "weights": {name:
        (S, ...)}}}, "sent": {"clients": [c, ...], "logits": (S, P, C) or None}}``. Without ``copy``,
        weights kept in host memory in clients' order are views of the live stacks (for a caller that
        copies them before the students train again, as a checkpoint does: no fresh 130 MB a round
        at 10,000 students)."""
        archs = {}
        for arch, rows in self._rows.items():
            clients = sorted(c for c in rows if self._arch.get(c) == arch)  # a client gone to another arch: not here
            if clients:
                at = [rows[c] for c in clients]
                if not copy and self.home.type == "cpu" and at == list(range(len(at))):
                    weights = {k: v[: len(at)] for k, v in self._weights[arch].items()}
                else:
                    idx = torch.as_tensor(at, device=self.home)
                    weights = {k: v.index_select(0, idx).cpu() for k, v in self._weights[arch].items()}
                archs[arch] = {"clients": clients, "weights": weights}
        sent = sorted(self.sent)
        logits = torch.from_numpy(np.stack([self.sent[c] for c in sent])) if sent else None
        return {"archs": archs, "sent": {"clients": sent, "logits": logits}}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace every student, and the logits each sent, by those of ``snapshot`` (from ``snapshot``).

        Raises ValueError if an architecture's stacked weights and clients disagree in number.
        """
        self._weights, self._rows, self._arch, self._used = {}, {}, {}, {}
        for arch, saved in snapshot["archs"].items():
            clients, weights = saved["clients"], saved["weights"]
            if any(len(v) != len(clients) for v in weights.values()):
                raise ValueError(f"students.{arch}: {len(clients)} clients, but weights of another number")
            self._weights[arch] = {k: v.to(self.home) for k, v in weights.items()}
            self._rows[arch] = {c: i for i, c in enumerate(clients)}
            self._used[arch] = len(clients)
            self._arch.update({c: arch for c in clients})
        sent = snapshot["sent"]
        self.sent = {c: sent["logits"][i].numpy() for i, c in enumerate(sent["clients"])}


def _with_room(stacks: Params, used: int, needed: int) -> Params:
    """``stacks`` (their first ``used`` rows taken) with room for ``needed`` rows: as they are when
    they have it, else moved into stacks twice as large. Students arrive a chunk at a time; growing
    by a chunk each time copied every earlier row again (O(n²): 1.1 GB of copies for 10,000 mlp64
    students in chunks of 640, far more at 100,000)."""
    if len(next(iter(stacks.values()))) >= needed:
        return stacks
    grown = {}
    for k, v in stacks.items():
        grown[k] = v.new_empty((max(needed, 2 * len(v)), *v.shape[1:]))
        grown[k][:used] = v[:used]
    return grown
