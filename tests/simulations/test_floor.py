"""The bench's floor: FLOPs counted against hand-computed values, and the table's columns from them."""

import math

import pytest

from peerkd.round.spec import RunSpec
from peerkd.world.build import WorldSpec, build_world
from simulations.bench import _row, write_bench
from simulations.floor import gemm_rate, model_flops, round_flops


@pytest.fixture(scope="module")
def digits():
    return WorldSpec(dataset="digits", num_clients=3, seed=0)


def test_model_flops_of_an_mlp_are_its_matrix_products(digits):
    # Prepare: mlp64 on 64 features, 10 classes: a forward row is 2 * (64*64 + 64*10) = 9,472 FLOPs.
    # A step runs 32 private and 32 transfer rows forward (64 * 9,472), the weight gradients of both
    # layers backward (64 * 9,472 again) and the input gradient of the second layer (2 * 64 * 64 * 10).
    # A CE step alone: the 32 private rows, forward and backward.
    step, private = 64 * 9_472 * 2 + 2 * 64 * 64 * 10, 32 * 9_472 * 2 + 2 * 32 * 64 * 10
    # Execute / Assert
    assert model_flops("mlp64", build_world(digits), 32) == (step, private, 9_472) == (1_294_336, 647_168, 9_472)


def test_round_flops_sum_every_clients_steps_and_forward_passes(digits):
    # Prepare: each client's steps per epoch follow the larger of its shard and the transfer set
    world, spec = build_world(digits), RunSpec(world=digits, rounds=1, epochs=2, batch_size=32, students=("mlp64",))
    n_t, rows = len(world.transfer_x), len(world.split("test")[1]) + len(world.transfer_x)
    steps = sum(2 * math.ceil(max(len(world.private_index(c)), n_t) / 32) for c in range(3))
    # Execute / Assert
    assert round_flops(spec) == steps * 1_294_336 + 3 * rows * 9_472


def test_a_round_without_distillation_counts_private_steps_and_the_test_split(digits):
    # Prepare: local, FedAvg, FD: steps over the shard alone, no transfer-set logits
    world, spec = build_world(digits), RunSpec(world=digits, rounds=1, epochs=2, batch_size=32, students=("mlp64",))
    steps = sum(2 * math.ceil(len(world.private_index(c)) / 32) for c in range(3))
    # Execute / Assert
    assert round_flops(spec, distill=False) == steps * 647_168 + 3 * len(world.split("test")[1]) * 9_472


def test_gemm_rate_is_measured():
    assert gemm_rate("cpu", seconds=0.05) > 0.1  # GFLOP/s; any CPU does far more


def test_bench_rows_put_the_round_against_the_floor(tmp_path):
    # Prepare: a variant's results with 2-s rounds of 100 GFLOP on a 250 GFLOP/s machine
    timed = (("plan", 0.1), ("compute", 1.5), ("io", 0.4), ("checkpoint_cpu", 0.3))
    sections = {f"time_{s}_s": [v, v] for s, v in timed}
    res = {"round_s": [3.0, 2.0, 2.0], "wall_s": 9.0, "peak_rss_mb": 1.0, "peak_gpu_mb": None, "acc_mean": 0.5,
           "device": "cpu", "gemm_gflops": 250.0, "sections": sections}  # fmt: skip
    # Execute
    row = _row(10, "batched", res, [], 100e9)
    write_bench(tmp_path, [row])
    # Assert: 100 GFLOP / 2 s = 50 GFLOP/s = 20 % of the GEMM rate; the time table by section
    assert (row["gflops"], row["pct_of_gemm"], row["time_compute_s"]) == (50.0, 20.0, 1.5)
    text = (tmp_path / "bench.md").read_text()
    assert "| 10 | batched | 9.0 | 3.00 | 2.00 |" in text and "| 100.0 | 50.0 | 250 | 20 |" in text
    assert "| 10 | batched | 2.00 | 0.10 | 1.50 |" in text
    assert "| 0.40 | 0.00 | 0.40 | 0.30 |" in text  # io, wait, other, then the checkpoint writer's CPU beside the round
