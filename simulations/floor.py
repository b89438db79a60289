"""The floor a round could reach: its FLOPs, counted, against the machine's GEMM rate, measured.

``round_flops`` counts (``torch.utils.flop_counter``) one training step of each architecture —
a private batch and a transfer batch, forward and backward, as ``train_model`` takes it, or the
private batch alone for a rule that does not distill on the transfer set — and one forward row,
then multiplies by what a round does (every client's steps, its test-set evaluation and, when it
distills, its transfer-set logits). That is the algorithm's work, the same for every engine; an
engine that skips repeated rows (the batched engine's whole-shard path) does less than this.
``gemm_rate`` is a dense fp32 matrix product's rate, in this process with its thread setting, on
the device given.
"""

from __future__ import annotations

import math
import time

import torch

GEMM_SIZE = 2048


def gemm_rate(device: torch.device | str = "cpu", seconds: float = 1.0) -> float:
    """GFLOP/s of ``GEMM_SIZE``² fp32 matrix products on ``device``, timed for about ``seconds``."""
    device = torch.device(device)
    a, b = (torch.randn(GEMM_SIZE, GEMM_SIZE, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    sync()
    return 2 * GEMM_SIZE**3 * n / (time.perf_counter() - t0) / 1e9


def model_flops(arch: str, world, batch_size: int) -> tuple[int, int, int]:
    """FLOPs of one distillation step of a student of ``arch`` (``batch_size`` private rows with CE
    and as many transfer rows with KD, forward and backward), of one CE step on the private rows
    alone, and of a forward pass on one input."""
    from torch.utils.flop_counter import FlopCounterMode

    from peerkd.student.losses import distillation_loss
    from peerkd.student.models import build_model

    model = build_model(arch, world.data.input_shape, world.num_classes, seed=0)
    take = torch.arange(batch_size) % len(world.data.x)
    x, y = torch.as_tensor(world.data.x[take.numpy()]), torch.as_tensor(world.data.y[take.numpy()])
    with FlopCounterMode(display=False) as step:
        out = model(x)
        pub = model(x)  # transfer inputs have the same shape
        distillation_loss(out, y, pub, pub.detach() + 1.0, 1.0, 4.0).backward()
    with FlopCounterMode(display=False) as private:
        torch.nn.functional.cross_entropy(model(x).flatten(0, -2), y.flatten()).backward()
    with FlopCounterMode(display=False) as row, torch.no_grad():
        model(x[:1])
    return step.get_total_flops(), private.get_total_flops(), row.get_total_flops()


def round_flops(spec, distill: bool = True) -> float:
    """FLOPs of one round after the first in ``spec``'s world. With ``distill`` (peer, the teacher
    rules, DS-FL, FedMD, WML), each client's ``epochs * ceil(max(shard, transfer set) / batch)``
    steps of private and transfer rows, plus a forward pass over the test split and the transfer
    set; without (local, FedAvg, FD, the prototype rules: clients train on their own rows), each
    client's ``epochs * ceil(shard / batch)`` private steps and the test split's forward pass
    (FD's per-class KD term and the class means are small and not counted)."""
    from peerkd.world.build import build_world

    world = build_world(spec.world)
    n_t, b = (len(world.transfer_x) if distill else 0), spec.batch_size
    rows = len(world.split("test")[1]) + n_t
    per_arch = {arch: model_flops(arch, world, b) for arch in set(spec.students)}
    total = 0
    for c in range(spec.world.num_clients):
        step, private, row = per_arch[spec.students[c % len(spec.students)]]
        steps = spec.epochs * math.ceil(max(len(world.private_index(c)), n_t) / b)
        total += steps * (step if distill else private) + rows * row
    return float(total)
