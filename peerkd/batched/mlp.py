"""Stacked zoo MLPs trained by hand-written forward and backward passes: pure tensor code.

The vmapped ``functional_call`` and autograd make every step of a small MLP a chain of
separate kernels, each reading and writing the whole ``(students, rows, width)`` activation:
the bias added after the product, ReLU into fresh memory, its backward into fresh memory, the
softmax and its gradient in a dozen more. For students of a few thousand parameters that
traffic, not the products, is the step (issue 19: 32 GFLOP/s at 40 features on a CPU). Here
the bias rides in the product (``baddbmm``), ReLU and its backward run in place, and the loss
gradient is written out (cross-entropy's ``w·(softmax − onehot)``; KD's
``α·T/B·(softmax(z/T) − q)``), on logits laid out class-major, ``(S, C, R)``, so that its
reductions over a few classes run along rows: the same maths as ``stacked.cross_entropy`` and
``stacked.kd_divergence`` under autograd (tests/batched/test_mlp.py compares them).
"""

from __future__ import annotations

import torch
from torch import nn

from peerkd.batched.stacked import Params, SoftTargets


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


def pack(params: Params, names: list[str]) -> Params:
    """``params`` in the layout the written-out passes train in: the first layer's weight transposed,
    with its bias as one more row, ``(S, F + 1, H)`` under the layer's name; the other layers as they
    are. Inputs then carry a column of ones (``with_ones``), so that the bias rides in the product and
    its gradient in the weight's, and a product reads the weight as stored: at 640 students, 74 rows
    and 40 features 0.93 ms against 1.44 for ``baddbmm`` on the transposed weight, and no ``(S, R, H)``
    sum for the bias's gradient. Adam is elementwise: stepping the packed tensor is stepping both."""
    first = names[0]
    w, b = params[f"{first}.weight"], params[f"{first}.bias"]
    rest = {k: v for k, v in params.items() if k not in (f"{first}.weight", f"{first}.bias")}
    return {first: torch.cat([w.transpose(1, 2), b.unsqueeze(1)], dim=1)} | rest


def unpack(packed: Params, names: list[str], keys: list[str]) -> Params:
    """``pack``'s inverse, in the order of ``keys`` (the parameters' names)."""
    first = packed[names[0]]
    out = {f"{names[0]}.weight": first[:, :-1].transpose(1, 2).contiguous(), f"{names[0]}.bias": first[:, -1].clone()}
    return {k: out[k] if k in out else packed[k] for k in keys}


def with_ones(x: torch.Tensor, lead: int = 2) -> torch.Tensor:
    """``x`` with its first ``lead`` axes kept, the rest flattened (the MLP's ``nn.Flatten``), and a
    column of ones appended: the inputs of a packed first layer (``pack``)."""
    flat = x.flatten(lead)
    return torch.cat([flat, flat.new_ones((*flat.shape[:-1], 1))], dim=-1)


def wide(params: Params, names: list[str]) -> torch.Tensor:
    """Every student's first layer side by side, ``(F + 1, S·H)``, bias last, from unpacked ``params``:
    one product with a batch of inputs seen by all (``with_ones(x, 1)``) gives every student's
    hidden layer (``mlp_forward``'s ``shared``)."""
    w, b = params[f"{names[0]}.weight"], params[f"{names[0]}.bias"]
    return torch.cat([w.reshape(-1, w.shape[-1]).t(), b.reshape(1, -1)])


def tall(params: Params, names: list[str]) -> torch.Tensor:
    """Every student's first layer stacked, ``(S·H, F + 1)``, bias last, from unpacked ``params`` (a free
    view of the weight's own layout, with the bias as one more column): one product with a batch of
    inputs seen by all, transposed, ``(F + 1, R)`` (``with_ones(x, 1).t()``), gives every student's hidden layer
    feature-major, ``(S, H, R)`` (``shared_forward``)."""
    w, b = params[f"{names[0]}.weight"], params[f"{names[0]}.bias"]
    return torch.cat([w, b.unsqueeze(2)], dim=2).reshape(-1, w.shape[2] + 1)


def feature_major(base: nn.Module, names: list[str]) -> bool:
    """Whether ``shared_forward`` (``tall``) beats ``mlp_forward``'s ``wide`` product for a zoo MLP
    ``base`` (its linear layers ``names``) predicting on inputs seen by all: when its first layer is
    narrow, at most twice its hidden width.

    Then the next layers read each student's hidden layer ``(H, R)`` contiguous, not as a view across
    all students, and the products take a block of twice the inputs (``EVAL_CELLS_TALL``). Measured on
    2 cores, per 2,000 test inputs: 640 students of 40 features (hidden 64) 64 -> 47–51 ms; 320 of 64
    (hidden 128) 77 -> 69; 235 of 128: 39 -> 37 (not taken); 41 of 784 (MNIST): 14.3 -> 15.5, slower."""
    first = base.get_submodule(names[0])
    return first.in_features + 1 <= 2 * first.out_features


def shared_forward(
    params: Params, names: list[str], x_t: torch.Tensor, first: torch.Tensor, space: dict[str, torch.Tensor] | None
) -> torch.Tensor:
    """Every student's class-major logits ``(S, C, R)`` on ``R`` inputs seen by all, ``x_t`` ``(F + 1, R)``
    (``with_ones(x, 1).t()``, a view will do), from unpacked ``params`` and their first layer ``tall``:
    activations feature-major, ``(S, width, R)``, each layer ``W @ h + b`` with the weight as stored.
    With ``space`` (``buffer``) every result is written into its buffers: they hold it until the next call."""
    students, rows = len(params[f"{names[0]}.weight"]), x_t.shape[1]
    h = torch.mm(first, x_t, out=buffer(space, "t0", (len(first), rows), x_t)).view(students, -1, rows)
    for name in names[1:]:
        h.relu_()
        w, b = params[f"{name}.weight"], params[f"{name}.bias"]
        h = torch.baddbmm(b.unsqueeze(2), w, h, out=buffer(space, f"t{name}", (students, w.shape[1], rows), h))
    return h


def buffer(
    space: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor | None:
    """``space[name]``, made anew when it lacks ``shape`` or ``like``'s dtype and device; None without a
    ``space`` (the product then allocates its own). A step's products written into the same memory every
    step, not into fresh memory: at 640 students fresh ``(S, R, H)`` results made a chunk's training
    5–7 % slower on a CPU (each one's pages first touched inside the product)."""
    if space is None:
        return None
    t = space.get(name)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        t = space[name] = like.new_empty(shape)
    return t


def mlp_forward(
    params: Params,
    names: list[str],
    x: torch.Tensor,
    shared: torch.Tensor | None = None,
    space: dict[str, torch.Tensor] | None = None,
    class_major: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every student's logits ``(S, R, C)`` on its rows ``x`` (``(S, R, F + 1)``, ``with_ones``) and
    each linear layer's input (kept for ``mlp_backward``); ``params`` packed (``pack``). With
    ``shared`` (``wide``'s layout, the first layer of unpacked ``params``), ``x`` is ``(R, F + 1)``,
    one batch seen by every student: the first layer is then one product ``(R, F + 1) @ (F + 1, S·H)``,
    a tenth faster than S products (640 students, 40 features), and the next layers read its
    ``(R, S, H)`` result as ``(S, R, H)``. ``x`` may also be one batch broadcast to every student
    (stride 0 along S): the packed weight is then laid side by side for the product. With ``space``
    (``buffer``) every result is written into its buffers: they hold it until the next call. With
    ``class_major`` the logits come as ``(S, C, R)`` (``train_grad``'s layout; ``mlp_backward`` takes
    their gradient transposed back, as a view)."""
    students = len(next(iter(params.values())))
    if shared is None and x.stride(0) == 0 and students > 1:
        first = params[names[0]]
        shared, x = first.transpose(0, 1).reshape(first.shape[1], -1), x[0]
    inputs = [x]
    if shared is not None:
        wide_h = torch.mm(x, shared, out=buffer(space, "h0", (len(x), shared.shape[1]), x))
        h = wide_h.view(len(x), students, -1).transpose(0, 1)
    else:
        first = params[names[0]]
        h = torch.bmm(x, first, out=buffer(space, "h0", (students, x.shape[1], first.shape[2]), x))
    for i, name in enumerate(names[1:], start=1):
        h.relu_()
        inputs.append(h)
        w, b = params[f"{name}.weight"], params[f"{name}.bias"]
        if class_major and i == len(names) - 1:  # (S, C, H) @ (S, H, R): the weight as stored
            out = buffer(space, f"h{i}", (students, w.shape[1], h.shape[1]), h)
            return torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2), out=out), inputs
        out = buffer(space, f"h{i}", (students, h.shape[1], w.shape[1]), h)
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2), out=out)
    return (h.transpose(1, 2).contiguous() if class_major else h), inputs  # class-major: one layer only


def mlp_backward(
    params: Params,
    names: list[str],
    inputs: list[torch.Tensor],
    dz: torch.Tensor,
    space: dict[str, torch.Tensor] | None = None,
) -> Params:
    """The gradient of every packed parameter (``pack``) from the logits' gradient ``dz``
    (``(S, R, C)``, or a transposed view of class-major ``(S, C, R)``: the products take either) and
    the layers' inputs of ``mlp_forward``, each in its parameter's layout; ``dz`` may be overwritten.
    With ``space`` (``buffer``) the gradients are written into its buffers: they hold them until the
    next call."""
    grads = {}
    g = dz
    for i in reversed(range(1, len(names))):
        name, a = names[i], inputs[i]
        w = params[f"{name}.weight"]
        grads[f"{name}.weight"] = torch.bmm(g.transpose(1, 2), a, out=buffer(space, f"d{name}.weight", w.shape, g))
        grads[f"{name}.bias"] = torch.sum(g, dim=1, out=buffer(space, f"d{name}.bias", (len(g), g.shape[2]), g))
        g = torch.bmm(g, w, out=buffer(space, f"g{i}", (*g.shape[:2], w.shape[2]), g))
        relu_backward_(g, a)
    x, first = inputs[0], params[names[0]]
    x = x.expand(len(g), *x.shape) if x.dim() == 2 else x
    grads[names[0]] = torch.bmm(x.transpose(1, 2), g, out=buffer(space, f"d{names[0]}", first.shape, g))
    return {n: grads[n] for n in params}


def mlp_step(
    params: Params,
    names: list[str],
    x: torch.Tensor,
    onehot: torch.Tensor | None,
    weight: torch.Tensor | None,
    soft: SoftTargets | None,
    temperature: float,
    alpha: torch.Tensor | None,
    space: dict[str, torch.Tensor],
    with_loss: bool = True,
) -> tuple[torch.Tensor, Params]:
    """One written-out training step on the rows ``x`` (``mlp_forward``'s): the loss ``(S,)`` of
    ``train_grad`` (its ``onehot``, ``weight``, ``soft``, ``temperature``, ``alpha``, ``with_loss``) and
    every packed parameter's gradient, by class-major logits; the products and the logits' gradient are
    written into ``space``'s buffers (``buffer``), which hold them until the next call."""
    z, acts = mlp_forward(params, names, x, space=space, class_major=True)
    dz = buffer(space, "dz", tuple(z.shape), z)
    loss, dz = train_grad(z, onehot, weight, soft, temperature, alpha, out=dz, with_loss=with_loss)
    return loss, mlp_backward(params, names, acts, dz.transpose(1, 2), space)


def relu_backward_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """ReLU's backward in place: ``grad`` zeroed where the ReLU's output ``out`` is not positive (autograd's
    own kernel, ``threshold_backward``, written into ``grad``: a third of the out-of-place call's time)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


def train_grad(
    z: torch.Tensor,
    onehot: torch.Tensor | None,
    weight: torch.Tensor | None,
    soft: SoftTargets | None,
    temperature: float,
    alpha: torch.Tensor | None,
    out: torch.Tensor | None = None,
    with_loss: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training step's loss ``(S,)`` and its gradient with respect to the class-major logits ``z``
    ``(S, C, R)`` (``mlp_forward``'s ``class_major``): cross-entropy on the first ``n`` rows, whose
    labels are ``onehot`` ``(S, C, n)``, weighted by ``weight`` ``(S, n)`` (a mean, 1/n each, without),
    plus ``alpha`` ``(S,)`` times KD at ``temperature`` on the other rows toward ``soft`` (probabilities
    ``(S, C, R − n)``, a view will do; without, ``n = R``). The maths of ``stacked.cross_entropy`` and
    ``alpha * stacked.kd_divergence`` under autograd: ``w·(softmax(z) − onehot)`` and
    ``α·T/B·(softmax(z/T) − q)`` per row, with ``Σ q·log p = Σ q·shifted − log(total)`` (a target's
    probabilities sum to 1).

    One softmax serves both terms (the transfer rows divided by T first), and its reductions over
    the few classes run along contiguous rows: at 640 students × 74 rows × 10 classes 1.1 ms
    against 1.6 ms for the two terms over ``(S, R, C)`` logits, whose reductions run ten entries at
    a time. Without ``with_loss`` the loss is zeros and its terms are not computed (the gradient
    needs none of them): a third of the call at 640 students × 66 rows, for steps whose loss nobody
    reads. ``z`` is overwritten; the gradient is written into ``out`` (``z``'s shape) when given."""
    n = z.shape[2] - (0 if soft is None else soft.probs.shape[2])
    if n < z.shape[2] and temperature != 1:
        z[:, :, n:].mul_(1.0 / temperature)
    z.sub_(z.amax(dim=1, keepdim=True))
    grad = torch.empty_like(z) if out is None else out
    dots = _target_dots(z, onehot, soft, n, grad) if with_loss else None
    grad = torch.exp(z, out=grad)
    total = grad.sum(dim=1, keepdim=True)
    grad.div_(total)
    w = (torch.full_like(total[:, 0, :n], 1.0 / n) if weight is None else weight) if n else None
    loss = z.new_zeros(len(z))
    if dots is not None:
        loss = _step_loss(dots, total.log().squeeze(1), w, soft, temperature, alpha)
    if n:
        grad[:, :, :n].sub_(onehot).mul_(w.unsqueeze(1))
    if soft is not None:
        grad[:, :, n:].sub_(soft.probs).mul_((alpha * (temperature / soft.probs.shape[2])).reshape(-1, 1, 1))
    return loss, grad


def _target_dots(
    z: torch.Tensor, onehot: torch.Tensor | None, soft: SoftTargets | None, n: int, scratch: torch.Tensor
) -> torch.Tensor:
    """Each row's ``Σ target·shifted logit`` ``(S, R)``, the products written into ``scratch``."""
    if n:
        torch.mul(onehot, z[:, :, :n], out=scratch[:, :, :n])
    if soft is not None:
        torch.mul(soft.probs, z[:, :, n:], out=scratch[:, :, n:])
    return scratch.sum(dim=1)


def _step_loss(
    dots: torch.Tensor,
    log_total: torch.Tensor,
    weight: torch.Tensor | None,
    soft: SoftTargets | None,
    temperature: float,
    alpha: torch.Tensor | None,
) -> torch.Tensor:
    """``train_grad``'s loss ``(S,)`` from each row's target dot product and log-normaliser ``(S, R)``:
    the weighted cross-entropy of the first ``weight.shape[1]`` rows plus α·T²·KL of the others."""
    n = 0 if weight is None else weight.shape[1]
    loss = dots.new_zeros(len(dots))
    if n:
        loss = ((log_total[:, :n] - dots[:, :n]) * weight).sum(dim=-1)
    if soft is not None:
        kl = soft.neg_entropy - (dots[:, n:] - log_total[:, n:])
        loss = loss + alpha * (kl.mean(dim=-1) * temperature**2)
    return loss


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(S, R)`` labels as ``(S, classes, R)`` float one-hots, class-major (``train_grad``'s ``onehot``)."""
    out = labels.new_zeros((len(labels), classes, labels.shape[1]), dtype=torch.float32)
    return out.scatter_(1, labels.unsqueeze(1), 1.0)
