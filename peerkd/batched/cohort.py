"""A cohort: students of one architecture answering one kind of message together.

Each method is the batched twin of a per-client function in ``peerkd.student.training``
(``train_model``, ``distill_only``, ``evaluate``, ``predict_logits``): the cohort's batch
orders come from one ``plan_cohort`` call and equal each student's ``plan_batches`` on the
per-client path (its own private order, the round's shared transfer order). Private batches
are gathered from the world's arrays by global index, or, for shards of at most
``SHARD_ROWS`` batches, run as whole shards with per-step row counts. Students with fewer
steps stop early (masked updates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from peerkd.batched.mlp import (
    feature_major,
    mlp_forward,
    mlp_linears,
    mlp_step,
    one_hot,
    pack,
    shared_forward,
    tall,
    unpack,
    wide,
    with_ones,
)
from peerkd.batched.stacked import (
    Params,
    SoftTargets,
    cross_entropy,
    fit,
    hits_and_nll,
    kd_divergence,
    stacked_forward,
    student_rows,
)
from peerkd.clock import section
from peerkd.student.batches import CohortPlan, plan_cohort
from peerkd.student.dpsgd import DPSGD, client_dpsgd, clip_sum, gaussian, per_example_grads, row_bounds
from peerkd.student.prototypes import prototype_loss, with_features
from peerkd.student.training import round_seed, shared_transfer_seed
from peerkd.wire.protocol import RoundParams
from peerkd.wire.rows import read_tensor, stack_rows
from peerkd.world.build import World

EVAL_ROWS = 2048  # inputs per forward when predicting (predict_logits' batch size)
EVAL_CELLS = 65536  # students × inputs per forward when predicting on a CPU: activations that stay in cache
EVAL_CELLS_TALL = 2 * EVAL_CELLS  # the same for feature-major zoo MLPs (``mlp.feature_major``): measured best
SHARD_ROWS = 1.5  # run whole shards (no per-step gather) up to this many batches' rows


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
    # Where the students' transfer-set logits go: their rows of one array for the whole group of
    # requests, so that a rule stacks the round's replies without a copy (``stack_rows``).
    transfer_out: np.ndarray | None = None

    @cached_property
    def forward(self):
        return stacked_forward(self.base)

    @cached_property
    def _shared(self):
        """``f(params, x)``: every student's logits on one batch ``x`` seen by all."""
        return stacked_forward(self.base, shared_input=True)

    @cached_property
    def private(self) -> list[np.ndarray]:
        """Each student's private shard as global indices into the world's data."""
        return [self.world.private_index(c) for c in self.clients]

    @cached_property
    def sizes(self) -> torch.Tensor:
        """``(S,)`` private samples per student."""
        return torch.tensor([len(ix) for ix in self.private], device=self.device)

    @property
    def seeds(self) -> torch.Tensor:
        """``(S,)`` each student's private batch-order seed this round."""
        seeds = [round_seed(self.world.spec.seed, c, self.params.round) for c in self.clients]
        return torch.tensor(seeds, device=self.device)

    @property
    def transfer_seed(self) -> int:
        return shared_transfer_seed(self.world.spec.seed, self.params.round)

    @property
    def device(self) -> torch.device:
        return self.data.x.device

    def train(
        self,
        w: Params,
        targets: list | None = None,
        classes: list | None = None,
        dp: list[DPSGD] | None = None,
        proj: torch.Tensor | None = None,
    ) -> tuple[Params, list[float]]:
        """``train_model`` for every student: CE, plus KD toward ``targets[i]`` (transfer set)
        or toward ``classes[i]`` (FD's (table, valid) per-class targets; with ``proj``, the
        prototype rules' embeddings table instead: ``train_prototypes``); with ``dp`` (one per
        student) the private term is DP-SGD's. Returns the new weights and each student's
        mean loss over its last epoch."""
        p, n_transfer = self.params, len(self.world.transfer_x)
        on = [t is not None and p.alpha > 0 and n_transfer > 0 for t in (targets or [None] * len(self.clients))]
        with section("plan"):
            distill = torch.tensor(on, device=self.device)
            n_t = n_transfer if any(on) else 0
            plan = plan_cohort(self.sizes, n_t, p.batch_size, p.epochs, self.seeds, self.transfer_seed, distill)
            x_t = with_ones(self.data.transfer, 1) if self.linears is not None and dp is None else None  # packed MLP's
            transfer = self._transfer_inputs(targets, plan.transfer, x_t) if any(on) else None
            alpha = torch.tensor([p.alpha if d else 0.0 for d in on], device=self.device)
        if dp is not None:
            if classes is not None:
                raise ValueError("DP-SGD takes no per-class targets: FD releases its shard's class means")
            w, hist, _ = fit(w, None, plan.steps, p.lr, grads_at=self._private_grads(plan, transfer, alpha, dp))
            return w, last_epoch_means(plan, hist)
        with section("plan"):
            private = self._private_inputs(plan.private)
        with_classes = transfer is None and classes is not None and p.alpha > 0 and any(c is not None for c in classes)
        class_kd = self._class_kd(classes) if with_classes and proj is None else None
        protos = self._proto_term(classes, proj) if with_classes and proj is not None else None
        if self.linears is not None and class_kd is None and protos is None:
            grads_at = self._mlp_grads(private, transfer, alpha, first_read(plan))
            packed, hist, _ = fit(pack(w, self.linears), None, plan.steps, p.lr, grads_at)
            return unpack(packed, self.linears, list(w)), last_epoch_means(plan, hist)
        loss_at = self._loss_at(private, transfer, plan.shared, alpha, class_kd, protos)
        w, hist, _ = fit(w, loss_at, plan.steps, p.lr)
        return w, last_epoch_means(plan, hist)

    def _loss_at(self, private, transfer, shared: bool, alpha: torch.Tensor, class_kd, protos):
        """``f(live, k)``: every student's ``train`` loss at step k, for autograd: CE on the private
        rows, plus α·KD on the transfer rows (``transfer``; ``shared``: one batch for all), or FD's
        per-class term (``class_kd``), or the prototype rules' (``protos``)."""
        temperature = self.params.temperature

        def loss_at(live: Params, k: int) -> torch.Tensor:
            x, labels, weight = private(k)
            if protos is not None:
                feats, out = self.features(live, x)
                loss = cross_entropy(student_rows(out), labels, weight)
                return loss + protos(student_rows(feats), labels, weight)
            if transfer is None:
                out = student_rows(self.forward(live, x))
                loss = cross_entropy(out, labels, weight)
                return loss if class_kd is None else loss + class_kd(out, labels, weight)
            xt, target = transfer(k)
            xt = xt.expand(x.shape[0], *xt.shape) if shared else xt
            both = self.forward(live, torch.cat([x, xt], dim=1))  # one pass: one weight gradient, none to add
            loss = cross_entropy(student_rows(both[:, : x.shape[1]]), labels, weight)
            return loss + alpha * kd_divergence(student_rows(both[:, x.shape[1] :]), target, temperature)

        return loss_at

    @cached_property
    def linears(self) -> list[str] | None:
        """The linear layers of a zoo MLP (``mlp_linears``), trained by written-out gradients; else None."""
        return mlp_linears(self.base)

    def _mlp_grads(self, private, transfer, alpha: torch.Tensor, from_step: int = 0):
        """``g(live, k)``: ``train``'s loss at step k (zeros before ``from_step``: steps whose loss
        nobody reads, ``first_read``) and its gradient, written out for a zoo MLP
        (``peerkd.batched.mlp``: the same maths as autograd on ``loss_at``, in fewer passes over the
        activations), on packed weights (``pack``). A step's rows are written into one batch with a
        column of ones (``with_ones``), the private rows first, then the transfer rows; when the
        private rows are each student's whole shard (the same inputs every step), they are written
        once and only the transfer rows per step. Products write into buffers kept between steps
        (``mlp.buffer``): each step's gradients are spent by Adam before the next step."""
        names, temperature, batch, space = self.linears, self.params.temperature, {}, {}

        def inputs(x: torch.Tensor, xt: torch.Tensor | None) -> torch.Tensor:
            if "buffer" not in batch:
                rows = x.shape[1] + (0 if xt is None else xt.shape[-2])
                batch["buffer"] = x.new_ones((x.shape[0], rows, math.prod(x.shape[2:]) + 1))
            if batch.get("private") is not x:
                batch["private"] = x
                batch["buffer"][:, : x.shape[1], :-1] = x.flatten(2)
            if xt is not None:
                batch["buffer"][:, x.shape[1] :] = xt
            return batch["buffer"]

        def onehot(labels: torch.Tensor) -> torch.Tensor:
            if batch.get("labels") is not labels:  # the same labels every step when the shards are whole
                batch["labels"], batch["onehot"] = labels, one_hot(labels, self.world.num_classes)
            return batch["onehot"]

        @torch.no_grad()
        def grads_at(live: Params, k: int) -> tuple[torch.Tensor, Params]:
            x, labels, weight = private(k)
            xt, target = transfer(k) if transfer is not None else (None, None)
            soft = None if target is None else class_major(target)
            with_loss = k >= from_step
            return mlp_step(
                live, names, inputs(x, xt), onehot(labels), weight, soft, temperature, alpha, space, with_loss
            )

        return grads_at

    def _private_grads(self, plan: CohortPlan, transfer, alpha: torch.Tensor, dp: list[DPSGD]):
        """``g(live, k)``: every student's loss at step k and DP-SGD's gradient (``train_model``'s
        ``_fit_private``, stacked): per-example gradients of the private batch by a nested vmap,
        clipped (``row_bounds``), summed, noised from each student's key, divided by the batch
        size; plus the autograd gradient of the transfer-set term."""
        x, y, temperature = self.data.x, self.data.y, self.params.temperature
        batches, shared = plan.private, plan.shared
        to_global = self._global_index(batches)
        clip = dp[0].clip
        std = torch.tensor([d.noise * d.clip for d in dp], device=self.device)
        keys = torch.tensor([d.key for d in dp], dtype=torch.int64)
        per_row = vmap(per_example_grads(self.base))  # students, then their examples

        def grads_at(live: Params, k: int) -> tuple[torch.Tensor, Params]:
            g, rows = per_row({n: t.detach() for n, t in live.items()}, x[to_global[k]], y[to_global[k]])
            private = clip_sum(g, row_bounds(batches[k], clip))
            noise = gaussian(keys, k, {n: tuple(t.shape[1:]) for n, t in live.items()})
            size = batches.shape[-1]
            grads = {n: (private[n] + std.reshape(-1, *[1] * (t.dim() - 1)) * noise[n].to(t.device)) / size
                     for n, t in live.items()}  # fmt: skip
            loss = rows.mean(dim=-1)
            if transfer is not None:
                xt, target = transfer(k)
                out_t = self._shared(live, xt) if shared else self.forward(live, xt)
                public = alpha * kd_divergence(student_rows(out_t), target, temperature)
                for n, extra in zip(live, torch.autograd.grad(public.sum(), list(live.values()))):
                    grads[n] = grads[n] + extra
                loss = loss + public.detach()
            return loss, grads

        return grads_at

    def dpsgd(self, pairs: bool) -> list[DPSGD] | None:
        """Each student's DP-SGD settings for this request (``client_dpsgd``), or None without an
        example-level budget; ``pairs``: the rule's training pairs with the transfer set."""
        if self.params.dpsgd_epsilon <= 0:
            return None
        n_t = len(self.world.transfer_x) if pairs else 0
        return [client_dpsgd(self.params, len(ix), n_t, int(k)) for ix, k in zip(self.private, self.seeds.tolist())]

    def _private_inputs(self, batches: torch.Tensor):
        """``f(k)``: every student's private inputs at step k, their labels (as rows) and row
        weights (None: a plain mean). When every shard has at most ``SHARD_ROWS`` batches of
        samples (many students with a few samples each), the inputs are each student's whole
        shard and a step's batch becomes counts over the shard's rows: the same loss and
        gradient as the batch itself (the zoo's models treat rows independently), without
        gathering a ``(S, B, ...)`` copy of the inputs per step or computing repeated rows."""
        x, y = self.data.x, self.data.y
        n_max = int(self.sizes.max()) if len(self.sizes) else 0
        if n_max == 0 or n_max > SHARD_ROWS * self.params.batch_size:
            to_global = self._global_index(batches)
            return lambda k: (x[to_global[k]], student_rows(y[to_global[k]]), None)
        shard = self._padded_shards(n_max)
        xs, ys = x[shard], student_rows(y[shard])
        counts = torch.zeros((*batches.shape[:2], n_max), device=self.device)
        counts.scatter_add_(2, batches, torch.ones(batches.shape, device=self.device))
        per_input = ys.shape[1] // n_max  # text: a window's positions
        weights = (counts / (batches.shape[2] * per_input)).repeat_interleave(per_input, dim=2)
        return lambda k: (xs, ys, weights[k])

    def _transfer_inputs(self, targets: list, batches: torch.Tensor, x: torch.Tensor | None = None):
        """``f(k)``: the transfer inputs at step k, ``(B, ...)`` when every student takes the same
        batch (the plan shares its order; expand it, never copy it per student) else ``(S, B, ...)``,
        and every student's soft targets on them (as rows); the inputs are rows of ``x`` (default
        the transfer set; the packed MLP's ``with_ones`` of it)."""
        x, stack, temperature = self.data.transfer if x is None else x, self._targets(targets), self.params.temperature
        if batches.dim() == 2:  # (K, B): one batch for all; targets softened input-major, so a step's are one block
            by_input = SoftTargets.of(stack.transpose(0, 1), temperature)
            return lambda k: (x[batches[k]], by_input[batches[k]].swapped().rows())
        soft, rows = SoftTargets.of(stack, temperature), self._rows
        return lambda k: (x[batches[k]], soft[rows, batches[k]].rows())

    def _global_index(self, batches: torch.Tensor) -> torch.Tensor:
        """``(K, S, B)`` indices into each student's shard as indices into the world's arrays."""
        n_max = int(self.sizes.max())
        return (
            self._padded_shards(n_max)
            .gather(1, batches.permute(1, 0, 2).reshape(len(self.clients), -1))
            .reshape(batches.shape[1], batches.shape[0], -1)
            .permute(1, 0, 2)
        )

    def _padded_shards(self, n_max: int) -> torch.Tensor:
        """``(S, n_max)`` each student's global indices, padded by repeating them (real inputs)."""
        return torch.as_tensor(np.stack([np.resize(ix, n_max) for ix in self.private])).to(self.device)

    def digest(self, w: Params, targets: list) -> Params:
        """``distill_only`` on the transfer set toward ``targets[i]`` for every student that
        has targets (``digest_epochs`` epochs, in the round's shared transfer order); the others
        are left unchanged."""
        p, n_transfer = self.params, len(self.world.transfer_x)
        on = [t is not None and p.digest_epochs > 0 for t in targets]
        if not any(on):
            return w
        one = torch.tensor([n_transfer], device=self.device)
        seed = torch.tensor([self.transfer_seed], device=self.device)
        order = plan_cohort(one, 0, p.batch_size, p.digest_epochs, seed, self.transfer_seed).private[:, 0]  # (K, B)
        n_steps = torch.tensor([len(order) if d else 0 for d in on], device=self.device)
        by_input = SoftTargets.of(self._targets(targets).transpose(0, 1), p.temperature)  # input-major
        if self.linears is not None:
            ones, x_t = torch.ones(len(self.clients), device=self.device), with_ones(self.data.transfer, 1)
            space: dict[str, torch.Tensor] = {}

            @torch.no_grad()
            def grads_at(live: Params, k: int) -> tuple[torch.Tensor, Params]:
                bj = order[k]
                x, soft = x_t[bj].expand(len(self.clients), -1, -1), class_major(by_input[bj].swapped().rows())
                return mlp_step(live, self.linears, x, None, None, soft, p.temperature, ones, space)

            return unpack(fit(pack(w, self.linears), None, n_steps, p.lr, grads_at)[0], self.linears, list(w))

        def loss_at(live: Params, k: int) -> torch.Tensor:
            bj = order[k]
            out = student_rows(self._shared(live, self.data.transfer[bj]))
            return kd_divergence(out, by_input[bj].swapped().rows(), p.temperature)

        return fit(w, loss_at, n_steps, p.lr)[0]

    def _class_kd(self, classes: list):
        """α·KD toward the per-class target of each private sample's label, over the samples
        whose class has a valid target (FD); students without targets get 0."""
        p, rows = self.params, self._rows
        tables, valid, weight = self._class_tables(classes, self.world.num_classes)

        def term(out: torch.Tensor, labels: torch.Tensor, rows_w: torch.Tensor | None) -> torch.Tensor:
            ok = valid[rows, labels] if rows_w is None else valid[rows, labels] * rows_w
            return weight * kd_divergence(out, tables[rows, labels], p.temperature, ok)

        return term

    def _proto_term(self, classes: list, proj: torch.Tensor):
        """α·``prototype_loss`` of each private row's projected embedding toward its class's
        prototype, over the rows whose class has one (FedProto, FedTGP); 0 for students without."""
        rows, proj = self._rows, proj.to(self.device)
        tables, valid, weight = self._class_tables(classes, proj.shape[1])

        def term(feats: torch.Tensor, labels: torch.Tensor, rows_w: torch.Tensor | None) -> torch.Tensor:
            has = valid[rows, labels].float() if rows_w is None else valid[rows, labels] * rows_w
            return weight * prototype_loss(feats @ proj, tables[rows, labels], has)

        return term

    def _class_tables(self, classes: list, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each student's ``(C, width)`` per-class targets and ``(C,)`` valid mask (FD, prototypes),
        stacked on the device, and its α; zeros, all valid and α = 0 for a student without targets."""
        c = self.world.num_classes
        tables = stacked([None if t is None else t[0] for t in classes], np.zeros((c, width), np.float32))
        valid = stacked([None if t is None else t[1] for t in classes], np.ones(c, bool))
        weight = torch.tensor([self.params.alpha if t is not None else 0.0 for t in classes], device=self.device)
        return tables.to(self.device), valid.to(self.device), weight

    @cached_property
    def features(self):
        """``f(params, x)``: every student's (embeddings, logits) on its batch (``with_features``, stacked)."""
        base = self.base

        def one(params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return with_features(base, lambda: functional_call(base, params, (x,)))

        return vmap(one)

    def _targets(self, targets: list) -> torch.Tensor:
        """``(S, N, P/N, C)`` transfer-set targets grouped by input (text: a window's positions); zeros
        for students without."""
        shape = (self.world.transfer_rows, self.world.num_classes)
        rows = stacked(targets, np.zeros(shape, np.float32))
        return rows.reshape(len(targets), len(self.world.transfer_x), -1, shape[1]).to(self.device)

    @cached_property
    def _rows(self) -> torch.Tensor:
        return torch.arange(len(self.clients), device=self.device)[:, None]

    def logits(self, w: Params, x: torch.Tensor, out: np.ndarray | None = None) -> np.ndarray:
        """Every student's float32 logits on the shared inputs ``x``: ``(S, N, C)``, text ``(S, N·L, V)``
        (``predict_logits``); written into ``out`` (that shape) and returned as it, when given."""
        if len(x) == 0:
            return np.zeros((len(self.clients), 0, 0), dtype=np.float32)  # as predict_logits on no inputs
        if out is None:
            return self._predict(w, x).cpu().numpy()
        if self.device.type == "cpu":
            self._predict(w, x, into=torch.from_numpy(out))
        else:
            torch.from_numpy(out).copy_(self._predict(w, x))
        return out

    def transfer_logits(self, w: Params) -> np.ndarray:
        """``logits`` on the transfer set, into ``transfer_out`` when the grid gave one."""
        return self.logits(w, self.data.transfer, self.transfer_out)

    @cached_property
    def _tall(self) -> bool:
        """Whether predictions go feature-major (``mlp.feature_major``): a zoo MLP with a narrow first layer."""
        if self.linears is None:
            return False
        return feature_major(self.base, self.linears)

    @property
    def _eval_step(self) -> int:
        """Inputs per forward when predicting: on a CPU ``EVAL_CELLS`` students × inputs (cache-sized;
        ``EVAL_CELLS_TALL`` feature-major), at most ``EVAL_ROWS``; on a GPU ``EVAL_ROWS``, which the chunk's
        size was planned for (``memory.auto_chunk``): a CPU's cell count would cut 10,000 students' 2,100
        test inputs into 350 forwards of 6 inputs, each a vmapped call of a few tiny kernels."""
        if self.device.type != "cpu":
            return EVAL_ROWS
        cells = EVAL_CELLS_TALL if self._tall else EVAL_CELLS
        return max(1, min(EVAL_ROWS, cells // max(len(self.clients), 1)))

    def _on_shared(self, w: Params, class_major: bool = False):
        """``f(x)``: every student's logits on the inputs ``x`` seen by all (``(S, B, C)``; a zoo MLP's
        ``(S, C, B)`` with ``class_major``). A zoo MLP's by ``mlp_forward`` (the first layer one product
        of ``x`` with every student's weights side by side, ``wide``, laid out once per call; ReLU in
        place: 0.10 against vmap's 0.17 s for 640 students' 3,100 test and transfer inputs at 40 features
        on 2 cores), or feature-major by ``shared_forward`` when its first layer is narrow (``_tall``);
        any other model's by vmap. A zoo MLP's logits are written into the same buffers every call
        (``mlp.buffer``): read them before the next."""
        if self.linears is None:
            return lambda x: self._shared(w, x)
        space: dict[str, torch.Tensor] = {}
        if self._tall:
            first = tall(w, self.linears)
            on = lambda x: shared_forward(w, self.linears, with_ones(x, 1).t(), first, space)  # noqa: E731
            return on if class_major else lambda x: on(x).transpose(1, 2)
        first = wide(w, self.linears)
        return lambda x: mlp_forward(w, self.linears, with_ones(x, 1), first, space, class_major)[0]

    @torch.no_grad()
    def _predict(self, w: Params, x: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of ``logits``, block by block (``_eval_step``) into ``into`` or a new tensor."""
        step, on, out = self._eval_step, self._on_shared(w), None
        for i in range(0, len(x), step):
            part = on(x[i : i + step])
            if out is None:
                shape = (len(self.clients), len(x), *part.shape[2:])
                out = part.new_empty(shape, dtype=torch.float32) if into is None else into.view(shape)
            out[:, i : i + part.shape[1]] = part
        return into if into is not None else student_rows(out)

    @torch.no_grad()
    def evaluate(self, w: Params) -> list[tuple[float, float]]:
        """Each student's accuracy and mean CE on the test split (``evaluate``'s maths, on the device),
        block by block of inputs: each block's correct predictions and loss are summed at once, so
        the ``(S, N, C)`` logits of the whole split are never held (at 10,000 students and 2,100
        test inputs they were 840 MB a round, written and read again: a fifth of a round on a CPU).
        The accuracy is the float32 count over rows, as ``score_logits``'s mean gives it. A zoo MLP's
        logits come class-major (``hits_and_nll``'s reductions then run along rows: at 640 students
        and 40 features a block's scoring fell from 1.5 to 0.4 ms, a chunk's evaluation from 112 to 94 ms)."""
        x, y, step, cm = self.data.test_x, self.data.test_y, self._eval_step, self.linears is not None
        on = self._on_shared(w, class_major=cm)
        correct = torch.zeros(len(self.clients), dtype=torch.int64, device=self.device)
        loss = torch.zeros(len(self.clients), dtype=torch.float64, device=self.device)
        for i in range(0, len(x), step):
            z = on(x[i : i + step]) if cm else student_rows(on(x[i : i + step]).float())
            labels = y[i : i + step].reshape(-1).expand(len(z), -1)
            hits, nll = hits_and_nll(z, labels, dim=1 if cm else -1)
            correct += hits.sum(dim=-1)
            loss += nll.sum(dim=-1).double()
        rows = y.numel()
        acc = correct.to(torch.float32) / rows
        return list(zip(acc.tolist(), (loss / rows).float().tolist()))

    @torch.no_grad()
    def class_means(self, w: Params, proj: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every student's per-class mean logits (FD; with ``proj``: projected embeddings, the
        prototype rules) and label counts on its private shard (text: per next token), ``(S, C, W)``
        and ``(S, C)`` float32: ``class_mean_logits`` for all students at once (float64 sums by
        label, 0 with count 0 for an absent class), not once per student."""
        n_max, per_input = int(self.sizes.max()), self.world.data.positions
        padded = self._padded_shards(n_max)

        def rows(x: torch.Tensor) -> torch.Tensor:
            if proj is None:
                return student_rows(self.forward(w, x))
            return student_rows(self.features(w, x)[0]) @ proj.to(self.device)

        z = torch.cat([rows(self.data.x[padded[:, i : i + EVAL_ROWS]]) for i in range(0, n_max, EVAL_ROWS)], dim=1)
        labels = student_rows(self.data.y[padded])  # (S, rows), the padding's past each shard's own
        real = (torch.arange(labels.shape[1], device=self.device)[None, :] < self.sizes[:, None] * per_input).double()
        c = self.world.num_classes
        counts = torch.zeros((len(labels), c), dtype=torch.float64, device=self.device).scatter_add_(1, labels, real)
        sums = torch.zeros((len(labels), c, z.shape[-1]), dtype=torch.float64, device=self.device)
        sums.scatter_add_(1, labels[..., None].expand(-1, -1, z.shape[-1]), z.double() * real[..., None])
        means = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], 0.0)
        return means.float().cpu().numpy(), counts.float().cpu().numpy()


def class_major(soft: SoftTargets) -> SoftTargets:
    """Soft targets ``(S, R, C)`` as ``train_grad`` reads them: probabilities ``(S, C, R)``, a view."""
    return SoftTargets(soft.probs.transpose(1, 2), soft.neg_entropy)


def stacked(arrays: list[np.ndarray | None], missing: np.ndarray) -> torch.Tensor:
    """``arrays`` stacked into one tensor, ``missing`` where an entry is None, for reading only:
    received rows of one array (a rule's stacked targets, in the cohort's order) are viewed, not
    copied (``peerkd.wire.rows.stack_rows``)."""
    return read_tensor(stack_rows([missing if a is None else a for a in arrays]))


def first_read(plan: CohortPlan) -> int:
    """The first step whose loss ``last_epoch_means`` reads: the earliest start of a student's last epoch."""
    return int((plan.steps - plan.steps_per_epoch).min()) if len(plan.steps) else 0


def last_epoch_means(plan: CohortPlan, hist: torch.Tensor) -> list[float]:
    """Each student's mean step loss over its last epoch (``BatchPlan.last_epoch_mean``, stacked)."""
    h = hist.double().cpu()
    k = torch.arange(len(h))[:, None]
    steps, spe = plan.steps.cpu()[None, :], plan.steps_per_epoch.cpu()[None, :]
    last = (k < steps) & (k >= steps - spe)
    return ((h * last).sum(dim=0) / spe[0].clamp(min=1)).tolist()
