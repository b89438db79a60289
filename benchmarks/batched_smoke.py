"""Smoke benchmark (not a test): `peer` batched vs a plain loop calling ``train_model`` per client.

Both train the same students on the same batches (same seeds): the loop is the per-client
path without Flower or Ray — per round, each client distills toward the leave-one-out mean
of the others' last logits, then predicts on the transfer set and is evaluated.

    .venv/bin/python benchmarks/batched_smoke.py --clients 100 --rounds 3

Each engine runs in a process of its own (its own peak RSS; the loop with one torch thread,
as peerkd's client actors use for tiny models, the batched engine with ``--threads``,
default torch's own choice).
Prints one JSON line per engine: wall seconds (world build excluded), per-round seconds,
final acc_mean, peak RSS; then the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from peerkd.batched import run_batched
from peerkd.models import build_model
from peerkd.server_app import RunSpec
from peerkd.training import evaluate, predict_logits, round_seed, train_model
from peerkd.world import WorldSpec, build_world
from strategies import build_strategy
from strategies.aggregation import peer_targets


def plain_loop(spec: RunSpec, alpha: float, temperature: float) -> dict:
    """`peer` as a single-process loop over clients; the same maths as the ClientApp's."""
    world = build_world(spec.world)
    n, arch = spec.world.num_clients, spec.students
    models = [
        build_model(arch[c % len(arch)], world.data.input_shape, world.num_classes, seed=spec.world.seed * 1000 + c)
        for c in range(n)
    ]
    logits: dict[int, np.ndarray] = {}
    rounds, t0 = [], time.perf_counter()
    for rnd in range(1, spec.rounds + 1):
        t = time.perf_counter()
        targets = peer_targets(logits, list(range(n)))
        accs = []
        for c, m in enumerate(models):
            train_model(
                m,
                *world.private(c),
                epochs=spec.epochs,
                lr=spec.lr,
                batch_size=spec.batch_size,
                seed=round_seed(spec.world.seed, c, rnd),
                transfer_x=world.transfer_x,
                targets=targets[c],
                alpha=alpha,
                temperature=temperature,
            )
            logits[c] = predict_logits(m, world.transfer_x)
            accs.append(evaluate(m, *world.split("test"))[0])
        rounds.append(time.perf_counter() - t)
    return {"engine": "loop", "wall_s": time.perf_counter() - t0, "round_s": rounds, "acc_mean": float(np.mean(accs))}


def batched(spec: RunSpec, device: str, chunk: int) -> dict:
    """`peer` through the ServerApp's round loop on the batched engine."""
    out = tempfile.mkdtemp(prefix="peerkd-bench-")
    summary = run_batched(spec, build_strategy("peer"), out, {"rule": "peer"}, device=device, chunk=chunk)
    rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    return {
        "engine": "batched",
        "wall_s": summary["wall_s"],
        "round_s": [r["round_s"] for r in rows if r["type"] == "round"],
        "acc_mean": summary["acc_mean"],
        "device": summary["device"],
        "peak_gpu_mb": summary["peak_gpu_mb"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument(
        "--partition", default="iid", help="iid: Dirichlet(0.3) cannot give 100 mnist5k clients 10 samples each"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the batched engine (0: torch's default)")
    ap.add_argument("--engines", default="batched,loop", help="comma-separated: batched, loop")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # one engine, in this process
    args = ap.parse_args()
    if args.only:
        return run_engine(args)
    results = []
    for engine in args.engines.split(","):
        argv = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("engines", "only")] + [f"--only={engine}"]
        out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) == 2:
        print(
            json.dumps(
                {
                    f"{results[0]['engine']}_over_{results[1]['engine']}": round(
                        results[0]["wall_s"] / results[1]["wall_s"], 3
                    ),
                    "acc_diff": round(abs(results[0]["acc_mean"] - results[1]["acc_mean"]), 5),
                }
            )
        )


def run_engine(args: argparse.Namespace) -> None:
    """Run ``args.only`` and print its JSON line."""
    spec = RunSpec(
        world=WorldSpec(dataset=args.dataset, num_clients=args.clients, partition=args.partition, seed=0),
        rounds=args.rounds,
    )
    t = time.perf_counter()
    build_world(spec.world)
    world_s = time.perf_counter() - t
    if args.only == "loop":
        torch.set_num_threads(1)  # tiny models: one thread, as peerkd's client actors
        rule = build_strategy("peer")
        r = plain_loop(spec, rule.alpha, rule.temperature)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        r = batched(spec, args.device, args.chunk)
    r.update(
        world_s=world_s,
        clients=args.clients,
        threads=torch.get_num_threads(),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print(
        json.dumps(
            {
                k: (round(v, 3) if isinstance(v, float) else [round(x, 2) for x in v] if isinstance(v, list) else v)
                for k, v in r.items()
            }
        )
    )


if __name__ == "__main__":
    main()
