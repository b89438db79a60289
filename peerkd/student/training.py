"""Training and evaluation of one model on arrays. No I/O, no Flower: callers own both."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peerkd.student.batches import plan_cohort
from peerkd.student.dpsgd import DPSGD, clip_sum, gaussian, per_example_grads, row_bounds
from peerkd.student.losses import as_rows, distillation_loss, kd_loss
from peerkd.student.prototypes import prototype_loss, with_features


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
    transfer_seed: int | None = None,
    transfer_x: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    alpha: float = 0.0,
    temperature: float = 1.0,
    device: torch.device | None = None,
    sample_targets: np.ndarray | None = None,
    dp: DPSGD | None = None,
) -> float:
    """Train with Adam on CE over ``(x, y)``, plus α·T²·KL toward ``targets`` on ``transfer_x``.

    Each step pairs a private batch with a transfer batch. An epoch is one pass over the
    larger of the two sets; the smaller one is cycled, so a tiny private shard still sees
    the whole transfer set each epoch.

    With ``sample_targets`` (``(N, C)``, aligned with ``x``; rows of NaN mean "no target") the KD
    term is taken on the private batch itself instead (federated distillation's per-class targets).
    ``seed`` orders the private batches, ``transfer_seed`` (default ``seed``) the transfer batches.
    With ``dp`` the private term is DP-SGD's (``peerkd.student.dpsgd``; not with ``sample_targets``).
    Returns the mean training loss over the last epoch."""
    device = device or torch.device("cpu")
    model.to(device).train()
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    distill = targets is not None and transfer_x is not None and alpha > 0 and len(transfer_x) > 0
    if distill:
        pt, tt = torch.as_tensor(transfer_x, device=device), per_input(targets, len(transfer_x), device)
    st = torch.as_tensor(sample_targets, device=device) if sample_targets is not None and alpha > 0 else None
    plan = plan_batches(len(x), len(transfer_x) if distill else 0, batch_size, epochs, seed, transfer_seed)
    transfer = (pt, tt) if distill else None
    if dp is None:
        return _fit(model, plan, lr, _step_loss(model, plan, (xt, yt), transfer, st, alpha, temperature))
    if st is not None:
        raise ValueError("DP-SGD takes no per-sample targets: FD releases its shard's class means")
    transfer_term = lambda k: alpha * kd_loss(model(pt[bj := plan.transfer[k].to(device)]), tt[bj], temperature)  # noqa: E731
    return _fit_private(model, plan, lr, dp, (xt, yt), transfer_term if distill else None)


def _step_loss(model: nn.Module, plan: BatchPlan, private, transfer, sample_targets, alpha: float, temperature: float):
    """``loss_at(k)``: ``train_model``'s loss at step k: CE on the private batch, plus α·KD on the
    transfer batch toward ``transfer``'s targets, or on the private batch toward ``sample_targets``."""
    xt, yt = private
    device = xt.device

    def loss_at(k: int) -> torch.Tensor:
        bi = plan.private[k].to(device)
        out_priv = model(xt[bi])
        out_pub = tgt = None
        if plan.transfer is not None:
            bj = plan.transfer[k].to(device)
            out_pub, tgt = model(transfer[0][bj]), transfer[1][bj]
        elif sample_targets is not None:
            tgt = sample_targets[bi]
            has = torch.isfinite(tgt).all(dim=1)
            out_pub, tgt = out_priv[has], tgt[has]
        return distillation_loss(out_priv, yt[bi], out_pub, tgt, alpha, temperature)

    return loss_at


def train_prototypes(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    prototypes: tuple[np.ndarray, np.ndarray, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    alpha: float,
    device: torch.device | None = None,
) -> float:
    """Train with Adam on CE + α·``prototype_loss`` (FedProto's client objective): each private
    row's embedding, projected into the shared space, pulled toward its class prototype.
    ``prototypes`` is the ``(C, D)`` table, its ``(C,)`` valid mask and the ``(width, D)``
    projection. Batches as ``train_model``'s without a transfer set; returns the last epoch's mean loss."""
    device = device or torch.device("cpu")
    model.to(device).train()
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    table, valid, proj = (torch.as_tensor(a, device=device) for a in prototypes)
    plan = plan_batches(len(x), 0, batch_size, epochs, seed)

    def loss_at(k: int) -> torch.Tensor:
        bi = plan.private[k].to(device)
        feats, out = with_features(model, lambda: model(xt[bi]))
        labels = yt[bi].reshape(-1)
        loss = F.cross_entropy(as_rows(out), labels)
        return loss + alpha * prototype_loss(as_rows(feats) @ proj, table[labels], valid[labels].float())

    return _fit(model, plan, lr, loss_at)


@torch.no_grad()
def predict_embeddings(
    model: nn.Module, x: np.ndarray, proj: torch.Tensor, device: torch.device | None = None, batch_size: int = 2048
) -> np.ndarray:
    """Projected embeddings of ``model`` on ``x``, float32 ``(N, D)`` (text: ``(N·L, D)``)."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    xt, proj = torch.as_tensor(x), proj.to(device)
    outs = []
    for i in range(0, len(x), batch_size):
        batch = xt[i : i + batch_size].to(device)
        outs.append((as_rows(with_features(model, functools.partial(model, batch))[0]) @ proj).float().cpu())
    return torch.cat(outs).numpy()


def distill_only(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    temperature: float,
    device: torch.device | None = None,
) -> float:
    """Fit ``model`` to ``targets`` on unlabelled ``x`` with T²·KL alone (digest phases, FedDF
    fusion); return the mean KD loss over the last epoch. Batches as ``train_model``'s."""
    device = device or torch.device("cpu")
    model.to(device).train()
    xt, tt = torch.as_tensor(x, device=device), per_input(targets, len(x), device)
    plan = plan_batches(len(x), 0, batch_size, epochs, seed)

    def loss_at(k: int) -> torch.Tensor:
        bi = plan.private[k].to(device)
        return kd_loss(model(xt[bi]), tt[bi], temperature)

    return _fit(model, plan, lr, loss_at)


def per_input(targets: np.ndarray, n: int, device: torch.device) -> torch.Tensor:
    """``(P, C)`` target rows grouped by input, ``(n, P/n, C)``, so that a batch of inputs picks its
    rows (text: a window's ``L`` positions; otherwise one row each)."""
    t = torch.as_tensor(targets, device=device)
    return t.reshape(n, -1, t.shape[-1])


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


def _fit(model: nn.Module, plan: BatchPlan, lr: float, loss_at) -> float:
    """Adam (fresh, as every call of the per-client path starts one) over the plan's steps;
    ``loss_at(k)`` is step k's loss. Returns the mean loss of the last epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return plan.last_epoch_mean([_step(opt, loss_at(k)) for k in range(len(plan.private))])


def _fit_private(model: nn.Module, plan: BatchPlan, lr: float, dp: DPSGD, private, public_at) -> float:
    """``_fit`` with DP-SGD's private gradient: per-example gradients (``torch.func``), clipped,
    summed, noised and divided by the batch size, plus the gradient of ``public_at(k)``, the
    transfer-set term (``public_at`` None: none). Returns the mean loss of the last epoch."""
    x, y = private
    params = dict(model.named_parameters())
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    per_row = per_example_grads(model)
    key = torch.tensor([dp.key], dtype=torch.int64)
    losses = []
    for k in range(len(plan.private)):
        bi = plan.private[k].to(x.device)
        grads, rows = per_row({n: p.detach() for n, p in params.items()}, x[bi], y[bi])
        private = clip_sum(grads, row_bounds(bi, dp.clip))
        noise = gaussian(key, k, shapes)
        opt.zero_grad(set_to_none=True)
        public = public_at(k) if public_at is not None else None
        if public is not None:
            public.backward()
        for n, p in params.items():
            g = (private[n] + dp.noise * dp.clip * noise[n][0].to(p.device)) / len(bi)
            p.grad = g if p.grad is None else p.grad + g
        opt.step()
        losses.append(float(rows.mean()) + (0.0 if public is None else float(public.detach())))
    return plan.last_epoch_mean(losses)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step on ``loss``; returns its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def warm_up() -> None:
    """Pay the per-process start-up of training now: building the first optimiser imports
    ``torch._dynamo`` (sympy and friends), ~5 s on a loaded 2-core machine. The server's
    warm-up round trip asks for this, so the first round's timeout measures training alone."""
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])


def round_seed(world_seed: int, client: int, server_round: int) -> int:
    """The seed of ``client``'s batch order in ``server_round`` (both engines draw the same batches)."""
    return world_seed * 1_000_003 + client * 1_009 + server_round


def shared_transfer_seed(world_seed: int, server_round: int) -> int:
    """The seed of the transfer-set batch order in ``server_round``, shared by every client (its
    key stream differs from any client's private order: ``peerkd.student.batches``)."""
    return round_seed(world_seed, 0, server_round)


@dataclass(frozen=True)
class BatchPlan:
    """Every step's batch indices of one training call, drawn before it starts.

    ``private[k]`` (and ``transfer[k]`` when distilling on the transfer set) index the
    batches of step ``k``; there are ``epochs * steps_per_epoch`` steps.
    """

    steps_per_epoch: int
    private: torch.Tensor  # (steps, batch_size) int64
    transfer: torch.Tensor | None  # (steps, batch_size) int64, or None without transfer-set KD

    def last_epoch_mean(self, losses: list[float]) -> float:
        """Mean of the last epoch's step losses (0.0 without steps), summed in step order."""
        if not losses or not self.steps_per_epoch:
            return 0.0
        return sum(losses[-self.steps_per_epoch :]) / self.steps_per_epoch


def plan_batches(
    n: int, n_transfer: int, batch_size: int, epochs: int, seed: int, transfer_seed: int | None = None
) -> BatchPlan:
    """Batches of ``epochs`` epochs over ``n`` private samples, paired with batches over
    ``n_transfer`` transfer inputs (0: none): ``peerkd.student.batches.plan_cohort`` for one student.

    An epoch is one pass over the larger of the two sets; the smaller is cycled. The private
    order follows ``seed``, the transfer order ``transfer_seed`` (default ``seed``; the clients
    of a round share ``shared_transfer_seed(world seed, round)``), so a plan is a pure function of its
    arguments and the same whether drawn alone or with a cohort.
    """
    tseed = seed if transfer_seed is None else transfer_seed
    plan = plan_cohort(torch.tensor([n]), n_transfer, batch_size, epochs, torch.tensor([seed]), tseed)
    private = plan.private[:, 0] if n else torch.zeros((len(plan.private), 0), dtype=torch.int64)
    return BatchPlan(int(plan.steps_per_epoch[0]), private, plan.transfer)


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: np.ndarray, device: torch.device | None = None, batch_size: int = 2048
) -> np.ndarray:
    """Logits of ``model`` on ``x`` as a float32 ``(N, C)`` array (text: ``(N·L, V)``, one row per position)."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    xt = torch.as_tensor(x)
    outs = [as_rows(model(xt[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | None = None) -> tuple[float, float]:
    """Accuracy in [0, 1] and mean cross-entropy of ``model`` on ``(x, y)``."""
    return score_logits(predict_logits(model, x, device), y)


def score_logits(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy in [0, 1] and mean cross-entropy of ``(N, C)`` logits against labels ``y`` (text:
    ``(N·L, V)`` against ``(N, L)`` next tokens: next-token accuracy, nats per token)."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(y).reshape(-1)
    acc = float((logits.argmax(dim=1) == labels).float().mean())
    return acc, float(F.cross_entropy(logits, labels))
