"""Device check (not a test) for the batched engine's tensor code on one GPU.

Runs where Flower is not installed (the GPU image lacks it): it loads only the engine's
pure-tensor modules (``peerkd.batched.stacked`` and ``.cohort``), not the Grid. Two parts,
each stopping itself well within the device budget:

1. parity on CUDA: a cohort of 3 students trained with CE + KD, a digest phase and FD
   per-class targets, against ``train_model``/``distill_only`` per student on CUDA;
2. scale: N ∈ {1,000, 10,000} mlp64 students on a generated 28×28 world (30 private
   samples each, 500 transfer inputs, 1,000 test inputs), three peer-like rounds (CE alone,
   then CE + KD toward the mean of last round's logits), in memory-sized chunks.

    python3 benchmarks/batched_gpu_check.py [--out DIR] [--sizes 1000,10000]

Writes ``batched_gpu_check.json`` to ``--out`` (default ``$OUT`` or ``.``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Import the engine's tensor modules without peerkd/batched/__init__.py (which imports Flower).
_pkg = types.ModuleType("peerkd.batched")
_pkg.__path__ = [str(REPO / "peerkd" / "batched")]
sys.modules["peerkd.batched"] = _pkg

import numpy as np  # noqa: E402
import torch  # noqa: E402

from peerkd.batched.cohort import EVAL_ROWS, Cohort, DeviceData  # noqa: E402
from peerkd.batched.memory import auto_chunk  # noqa: E402
from peerkd.batched.stacked import stack_students  # noqa: E402
from peerkd.models import build_model  # noqa: E402
from peerkd.protocol import RoundParams  # noqa: E402
from peerkd.training import distill_only, round_seed, train_model  # noqa: E402
from peerkd.world import WorldSpec, build_world  # noqa: E402

DEVICE = torch.device("cuda")  # --device cpu: a dry run


def generated_world(clients: int, tmp: Path):
    """A 28×28, 10-class world: 30 private samples per client, 1,000 test, 600 public (500 transfer), 400 server."""
    rows = 30 * clients + 2000
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, rows)
    centers = rng.normal(size=(10, 1, 28, 28)).astype(np.float32)
    x = (centers[y] + rng.normal(size=(rows, 1, 28, 28)).astype(np.float32)).astype(np.float32)
    path = tmp / f"gen{clients}.npz"
    np.savez(path, x=x, y=y)
    spec = WorldSpec(
        dataset="file",
        data_path=str(path),
        num_clients=clients,
        partition="iid",
        test_frac=1000 / rows,
        public_frac=600 / rows,
        server_frac=400 / rows,
        transfer_size=500,
        seed=0,
    )
    return build_world(spec)


def parity(world) -> dict:
    """Max |batched - per-client| on the device after CE+KD (2 epochs) + digest, and after FD."""
    params = RoundParams(
        round=2, students=("mlp64",), epochs=2, lr=1e-3, batch_size=32, alpha=0.5, temperature=4.0, digest_epochs=1
    )
    base = build_model("mlp64", world.data.input_shape, world.num_classes, seed=0).to("meta")
    c = Cohort(world, DeviceData.of(world, DEVICE), params, base, [0, 1, 2])
    rng = np.random.default_rng(0)
    targets = [rng.normal(size=(len(world.transfer_x), 10)).astype(np.float32) if i != 1 else None for i in range(3)]
    models = [build_model("mlp64", world.data.input_shape, 10, seed=1000 + i).to(DEVICE) for i in range(3)]
    w, losses = c.train(stack_students(models)[1], targets=targets)
    w = c.digest(w, targets)
    ref = []
    for i, m in enumerate(models):
        seed = round_seed(0, i, 2)
        ref.append(
            train_model(
                m,
                *world.private(i),
                epochs=2,
                lr=1e-3,
                batch_size=32,
                seed=seed,
                transfer_x=world.transfer_x,
                targets=targets[i],
                alpha=0.5,
                temperature=4.0,
                device=DEVICE,
            )
        )
        if targets[i] is not None:
            distill_only(
                m,
                world.transfer_x,
                targets[i],
                epochs=1,
                lr=1e-3,
                batch_size=32,
                seed=seed,
                temperature=4.0,
                device=DEVICE,
            )
    dp = max(float((w[n][i] - p.detach()).abs().max()) for i, m in enumerate(models) for n, p in m.named_parameters())
    return {"max_param_diff": dp, "max_loss_diff": max(abs(a - b) for a, b in zip(losses, ref))}


def scale(clients: int, tmp: Path, deadline: float) -> dict:
    """Three peer-like rounds for ``clients`` mlp64 students; seconds per round and peak GPU memory."""
    t0 = time.perf_counter()
    world = generated_world(clients, tmp)
    data = DeviceData.of(world, DEVICE)
    base = build_model("mlp64", world.data.input_shape, 10, seed=0)
    chunk = auto_chunk(base, world.data.input_shape, 64, min(EVAL_ROWS, 1000), clients, DEVICE)
    models = [build_model("mlp64", world.data.input_shape, 10, seed=c) for c in range(clients)]
    weights = {k: v.to(DEVICE) for k, v in stack_students(models)[1].items()}
    setup_s, rounds, target = time.perf_counter() - t0, [], None
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for rnd in range(1, 4):
        if time.perf_counter() > deadline:
            break
        t = time.perf_counter()
        params = RoundParams(
            round=rnd, students=("mlp64",), epochs=2, lr=1e-3, batch_size=32, alpha=1.0, temperature=4.0
        )
        logits = []
        for start in range(0, clients, chunk):
            ids = list(range(start, min(start + chunk, clients)))
            c = Cohort(world, data, params, base.to("meta"), ids)
            w = {k: v[start : start + len(ids)] for k, v in weights.items()}
            w, _ = c.train(w, targets=None if target is None else [target] * len(ids))
            for k in weights:
                weights[k][start : start + len(ids)] = w[k]
            c.evaluate(w)
            logits.append(c.logits(w, data.transfer))
        target = np.concatenate(logits).mean(axis=0).astype(np.float32)
        rounds.append(time.perf_counter() - t)
    return {
        "clients": clients,
        "chunk": chunk,
        "setup_s": setup_s,
        "round_s": rounds,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if DEVICE.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    deadline = time.perf_counter() + args.budget_s
    report = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["parity"] = parity(generated_world(3, Path(tmp)))
        print(json.dumps(report), flush=True)
        report["scale"] = []
        for n in (int(s) for s in args.sizes.split(",")):
            if time.perf_counter() > deadline:
                break
            report["scale"].append(scale(n, Path(tmp), deadline))
            print(json.dumps(report["scale"][-1]), flush=True)
    Path(args.out, "batched_gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
