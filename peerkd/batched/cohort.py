"""A cohort: students of one architecture answering one kind of message together.

Each method is the batched twin of a per-client function in ``peerkd.student.training``
(``train_model``, ``distill_only``, ``evaluate``, ``predict_logits``): every student draws
its batches from ``plan_batches`` with its own per-round seed, exactly as on the
per-client path, and gathers them from the world's arrays by global index, so shards of
different sizes need no padding. Students with fewer steps stop early (masked updates).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from peerkd.batched.stacked import Params, cross_entropy, fit, kd_divergence, stacked_forward, student_rows
from peerkd.student.training import BatchPlan, class_mean_logits, plan_batches, round_seed
from peerkd.wire.protocol import RoundParams
from peerkd.world.build import World

EVAL_ROWS = 2048  # inputs per forward when predicting (predict_logits' batch size)


@dataclass(frozen=True)
class DeviceData:
    """A world's arrays on the compute device; private shards are index arrays into ``x``."""

    x: torch.Tensor
    y: torch.Tensor
    transfer: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    server_x: torch.Tensor

    @classmethod
    def of(cls, world: World, device: torch.device) -> DeviceData:
        """Copy ``world``'s inputs, labels, transfer set, test and server splits to ``device``."""
        d, sp = world.data, world.splits
        put = lambda a: torch.as_tensor(a).to(device)  # noqa: E731
        return cls(put(d.x), put(d.y), put(world.transfer_x), put(d.x[sp.test]), put(d.y[sp.test]), put(d.x[sp.server]))


@dataclass
class Cohort:
    """Students ``clients`` (one architecture, ``base``) of ``world`` under one request's settings."""

    world: World
    data: DeviceData
    params: RoundParams
    base: nn.Module  # weightless (meta) copy of the architecture
    clients: list[int]

    @cached_property
    def forward(self):
        return stacked_forward(self.base)

    @cached_property
    def private(self) -> list[np.ndarray]:
        """Each student's private shard as global indices into the world's data."""
        return [self.world.private_index(c) for c in self.clients]

    @property
    def seeds(self) -> list[int]:
        return [round_seed(self.world.spec.seed, c, self.params.round) for c in self.clients]

    @property
    def device(self) -> torch.device:
        return self.data.x.device

    def train(self, w: Params, targets: list | None = None, classes: list | None = None) -> tuple[Params, list[float]]:
        """``train_model`` for every student: CE, plus KD toward ``targets[i]`` (transfer set)
        or toward ``classes[i]`` (FD's (table, valid) per-class targets). Returns the new
        weights and each student's mean loss over its last epoch."""
        p, n_transfer = self.params, len(self.world.transfer_x)
        on = [t is not None and p.alpha > 0 and n_transfer > 0 for t in (targets or [None] * len(self.clients))]
        plans = [
            plan_batches(len(ix), n_transfer if d else 0, p.batch_size, p.epochs, s)
            for ix, d, s in zip(self.private, on, self.seeds)
        ]
        priv, pub, n_steps = stack_plans(plans, self.private, self.device)
        if any(on):
            kd = self._transfer_kd(targets, on, pub)
        elif classes is not None and p.alpha > 0 and any(c is not None for c in classes):
            kd = self._class_kd(classes)
        else:
            kd = None

        def loss_at(live: Params, k: int) -> torch.Tensor:
            bi = priv[k]
            out = student_rows(self.forward(live, self.data.x[bi]))
            loss = cross_entropy(out, student_rows(self.data.y[bi]))
            return loss if kd is None else loss + kd(live, k, bi, out)

        w, hist, _ = fit(w, loss_at, n_steps, p.lr)
        return w, last_epoch_means(plans, hist)

    def digest(self, w: Params, targets: list) -> Params:
        """``distill_only`` on the transfer set toward ``targets[i]`` for every student that
        has targets (``digest_epochs`` epochs); the others are left unchanged."""
        p, n_transfer = self.params, len(self.world.transfer_x)
        on = [t is not None and p.digest_epochs > 0 for t in targets]
        if not any(on):
            return w
        plans = [
            plan_batches(n_transfer, 0, p.batch_size, p.digest_epochs, s) if d else None for d, s in zip(on, self.seeds)
        ]
        pub, _, n_steps = stack_plans(plans, None, self.device)
        tt, rows = self._targets(targets), self._rows

        def loss_at(live: Params, k: int) -> torch.Tensor:
            bj = pub[k]
            out = student_rows(self.forward(live, self.data.transfer[bj]))
            return kd_divergence(out, student_rows(tt[rows, bj]), p.temperature)

        return fit(w, loss_at, n_steps, p.lr)[0]

    def _transfer_kd(self, targets: list, on: list[bool], pub: torch.Tensor):
        """α·KD toward each student's transfer-set targets on its transfer batch (0 without)."""
        tt, rows, p = self._targets(targets), self._rows, self.params
        weight = torch.tensor([p.alpha if d else 0.0 for d in on], device=self.device)

        def term(live: Params, k: int, bi: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            bj = pub[k]
            out = student_rows(self.forward(live, self.data.transfer[bj]))
            return weight * kd_divergence(out, student_rows(tt[rows, bj]), p.temperature)

        return term

    def _class_kd(self, classes: list):
        """α·KD toward the per-class target of each private sample's label, over the samples
        whose class has a valid target (FD); students without targets get 0."""
        c, p, rows = self.world.num_classes, self.params, self._rows
        tables = torch.stack([torch.as_tensor(t[0]) if t is not None else torch.zeros(c, c) for t in classes]).to(
            self.device
        )
        valid = torch.stack(
            [torch.as_tensor(t[1]) if t is not None else torch.ones(c, dtype=torch.bool) for t in classes]
        ).to(self.device)
        weight = torch.tensor([p.alpha if t is not None else 0.0 for t in classes], device=self.device)

        def term(live: Params, k: int, bi: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            labels = self.data.y[bi]
            return weight * kd_divergence(out, tables[rows, labels], p.temperature, valid[rows, labels])

        return term

    def _targets(self, targets: list) -> torch.Tensor:
        """``(S, N, P/N, C)`` transfer-set targets grouped by input (text: a window's positions); zeros
        for students without."""
        shape = (self.world.transfer_rows, self.world.num_classes)
        stacked = torch.stack([torch.as_tensor(t) if t is not None else torch.zeros(shape) for t in targets])
        return stacked.reshape(len(targets), len(self.world.transfer_x), -1, shape[1]).to(self.device)

    @cached_property
    def _rows(self) -> torch.Tensor:
        return torch.arange(len(self.clients), device=self.device)[:, None]

    def logits(self, w: Params, x: torch.Tensor) -> np.ndarray:
        """Every student's float32 logits on the shared inputs ``x``: ``(S, N, C)``, text ``(S, N·L, V)``
        (``predict_logits``)."""
        if len(x) == 0:
            return np.zeros((len(self.clients), 0, 0), dtype=np.float32)  # as predict_logits on no inputs
        return self._predict(w, x).cpu().numpy()

    @torch.no_grad()
    def _predict(self, w: Params, x: torch.Tensor) -> torch.Tensor:
        shared = stacked_forward(self.base, shared_input=True)
        z = torch.cat([shared(w, x[i : i + EVAL_ROWS]).float() for i in range(0, len(x), EVAL_ROWS)], dim=1)
        return student_rows(z)

    def evaluate(self, w: Params) -> list[tuple[float, float]]:
        """Each student's accuracy and mean CE on the test split (``evaluate``'s maths, on the device)."""
        z = self._predict(w, self.data.test_x)
        y = self.data.test_y.reshape(-1).expand(len(z), -1)
        acc, loss = (z.argmax(dim=-1) == y).float().mean(dim=-1), cross_entropy(z, y)
        return list(zip(acc.tolist(), loss.tolist()))

    @torch.no_grad()
    def class_means(self, w: Params) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each student's per-class mean logits and label counts on its private shard (FD)."""
        n = [len(ix) for ix in self.private]
        padded = torch.as_tensor(np.stack([np.resize(ix, max(n)) for ix in self.private])).to(
            self.device
        )  # repeats: real inputs
        z = torch.cat(
            [
                self.forward(w, self.data.x[padded[:, i : i + EVAL_ROWS]]).float().cpu()
                for i in range(0, max(n), EVAL_ROWS)
            ],
            dim=1,
        ).numpy()
        y = self.world.data.y
        return [class_mean_logits(z[s, : n[s]], y[ix], self.world.num_classes) for s, ix in enumerate(self.private)]


def stack_plans(plans: list[BatchPlan | None], to_global: list[np.ndarray] | None, device: torch.device):
    """Students' plans as ``(K, S, B)`` index tensors (private mapped to global indices by
    ``to_global``; transfer as is, or None when no plan has one) and ``(S,)`` step counts.
    Steps past a student's end hold index 0: computed, never applied."""
    n_steps = [0 if pl is None else len(pl.private) for pl in plans]
    b = next(pl.private.shape[1] for pl in plans if pl is not None)
    priv = np.zeros((max(n_steps), len(plans), b), dtype=np.int64)
    pub = np.zeros_like(priv) if any(pl is not None and pl.transfer is not None for pl in plans) else None
    for s, pl in enumerate(plans):
        if pl is None:
            continue
        local = pl.private.numpy()
        priv[: n_steps[s], s] = local if to_global is None else to_global[s][local]
        if pub is not None and pl.transfer is not None:
            pub[: n_steps[s], s] = pl.transfer.numpy()
    put = lambda a: None if a is None else torch.as_tensor(a).to(device)  # noqa: E731
    return put(priv), put(pub), torch.tensor(n_steps, device=device)


def last_epoch_means(plans: list[BatchPlan], hist: torch.Tensor) -> list[float]:
    """Each student's mean step loss over its last epoch, summed as ``train_model`` sums."""
    h = hist.double().cpu().numpy()
    return [pl.last_epoch_mean(h[: len(pl.private), s].tolist()) for s, pl in enumerate(plans)]
