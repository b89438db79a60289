"""Stacked zoo MLPs trained by hand-written forward and backward passes: pure tensor code.

The vmapped ``functional_call`` and autograd make every step of a small MLP a chain of
separate kernels, each reading and writing the whole ``(students, rows, width)`` activation:
the bias added after the product, ReLU into fresh memory, its backward into fresh memory, the
softmax and its gradient in a dozen more. For students of a few thousand parameters that
traffic, not the products, is the step (issue 19: 32 GFLOP/s at 40 features on a CPU). Here
the bias rides in the product (``baddbmm``), ReLU and its backward run in place, and the loss
gradient is written out (cross-entropy's ``w·(softmax − onehot)``; KD's
``α·T/B·(softmax(z/T) − q)``): the same maths as ``stacked.cross_entropy`` and
``stacked.kd_divergence`` under autograd (tests/batched/test_mlp.py compares them).
"""

from __future__ import annotations

import torch
from torch import nn

from peerkd.batched.stacked import Params, SoftTargets, log_softmax


def mlp_linears(base: nn.Module) -> list[str] | None:
    """The names of a zoo MLP's linear layers (``nn.Flatten``, then ``nn.Linear`` with a bias and
    ``nn.ReLU`` alternating, ending in a linear layer), in order; None for any other model."""
    if not isinstance(base, nn.Sequential):
        return None
    children = list(base.named_children())
    flatten = children[0][1] if children else None
    if len(children) < 2 or type(flatten) is not nn.Flatten or (flatten.start_dim, flatten.end_dim) != (1, -1):
        return None
    body = children[1:]
    linear = [m for _, m in body[::2]]
    relu = [m for _, m in body[1::2]]
    if len(body) % 2 == 0 or not all(type(m) is nn.Linear and m.bias is not None for m in linear):
        return None
    if not all(type(m) is nn.ReLU for m in relu):
        return None
    return [name for name, _ in body[::2]]


def mlp_forward(params: Params, names: list[str], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every student's logits ``(S, R, C)`` on its rows ``x`` (``(S, R, ...)``), and each linear
    layer's input (kept for ``mlp_backward``). ``x`` may be one batch broadcast to every student
    (stride 0 along S): the first layer is then one product of that batch with every student's
    weights side by side, ``(R, F) @ (F, S·H)``, a tenth faster than S products of ``(R, F) @ (F, H)``
    (640 students, 40 features), and the next layers read its ``(R, S, H)`` result as ``(S, R, H)``."""
    h = x.flatten(2)
    inputs = []
    for i, name in enumerate(names):
        inputs.append(h)
        w, b = params[f"{name}.weight"], params[f"{name}.bias"]
        if i == 0 and h.stride(0) == 0 and len(h) > 1:
            wide = torch.addmm(b.reshape(-1), h[0], w.reshape(-1, w.shape[-1]).t())
            h = wide.view(h.shape[1], len(w), -1).transpose(0, 1)
        else:
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(names) - 1:
            h.relu_()
    return h, inputs


def mlp_backward(params: Params, names: list[str], inputs: list[torch.Tensor], dz: torch.Tensor) -> Params:
    """The gradient of every parameter from the logits' gradient ``dz`` (``(S, R, C)``) and the
    layers' inputs of ``mlp_forward``, each in its parameter's layout; ``dz`` may be overwritten."""
    grads = {}
    g = dz
    for i in reversed(range(len(names))):
        name, a = names[i], inputs[i]
        grads[f"{name}.weight"] = torch.bmm(g.transpose(1, 2), a)
        grads[f"{name}.bias"] = g.sum(dim=1)
        if i:
            g = torch.bmm(g, params[f"{name}.weight"])
            relu_backward_(g, a)
    return {n: grads[n] for n in params}


def relu_backward_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """ReLU's backward in place: ``grad`` zeroed where the ReLU's output ``out`` is not positive (autograd's
    own kernel, ``threshold_backward``, written into ``grad``: a third of the out-of-place call's time)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


def cross_entropy_grad(
    z: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``stacked.cross_entropy(z, labels, weight)`` ``(S,)`` and its gradient with respect to
    ``z`` (``(S, R, C)``): each row's ``w·(softmax − onehot(label))``, ``w = 1/R`` for a mean."""
    log_p = log_softmax(z)
    nll = -log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    w = torch.full_like(nll, 1.0 / nll.shape[-1]) if weight is None else weight
    loss = nll.mean(dim=-1) if weight is None else (nll * weight).sum(dim=-1)
    grad = log_p.exp_()
    grad.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(nll, -1.0).unsqueeze(-1))
    return loss, grad.mul_(w.unsqueeze(-1))


def kd_grad(
    z: torch.Tensor, soft: SoftTargets, temperature: float, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha * stacked.kd_divergence(z, soft, temperature)`` ``(S,)`` and its gradient with
    respect to ``z`` (``(S, R, C)``): ``α·T/R·(softmax(z/T) − q)`` per row, ``alpha`` ``(S,)``."""
    log_p = log_softmax(z / temperature)
    kl = soft.neg_entropy - (soft.probs * log_p).sum(dim=-1)
    loss = alpha * (kl.mean(dim=-1) * temperature**2)
    grad = log_p.exp_().sub_(soft.probs)
    return loss, grad.mul_((alpha * (temperature / z.shape[1])).reshape(-1, 1, 1))
