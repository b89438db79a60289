"""The batched engine gives the per-client path's numbers: stacked maths against torch's
own, cohorts against ``train_model``/``distill_only``, and whole runs against Flower's
engine for every rule (tiny digits world: 3 clients, 2 rounds)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from peerkd import clock
from peerkd.batched import BatchedGrid, run_batched
from peerkd.batched.cohort import EVAL_CELLS, EVAL_CELLS_TALL, EVAL_ROWS, Cohort, DeviceData
from peerkd.batched.stacked import (
    adam_init,
    adam_step,
    cross_entropy,
    fit,
    kd_divergence,
    stack_students,
    stacked_forward,
)
from peerkd.batched.store import StudentStore
from peerkd.env import QUIET_ENV
from peerkd.hooks.privacy import PrivacySpec
from peerkd.hooks.standard import standard_hooks
from peerkd.round.loop import run_federation
from peerkd.round.results import RunWriter, read_jsonl
from peerkd.round.spec import RunSpec
from peerkd.student.losses import distillation_loss
from peerkd.student.models import MLP_WIDTHS, build_model, stacked_mlp
from peerkd.student.training import distill_only, evaluate, predict_logits, shared_transfer_seed
from peerkd.wire import protocol as P
from peerkd.wire.codec import HeldArray, decode_logits
from peerkd.wire.protocol import RoundParams
from peerkd.wire.rows import stack_rows
from peerkd.world.build import WorldSpec, build_world
from strategies import RULES, build_strategy, rule_settings

ARCHS = ["mlp32", "mlp64", "mlp128", "cnn"]
TOL = dict(rtol=1e-5, atol=1e-5)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def world():
    """Digits, 3 clients of 64 samples (2 steps an epoch), 96 transfer inputs (3 steps)."""
    return build_world(WorldSpec(dataset="digits", num_clients=3, seed=0, samples_per_client=64, transfer_size=96))


@pytest.fixture(scope="module")
def tiny_world():
    """Digits, 3 clients of 5 samples: every shard fits in one batch (the cohort runs whole shards)."""
    return build_world(WorldSpec(dataset="digits", num_clients=3, seed=0, samples_per_client=5, transfer_size=96))


@pytest.fixture(params=["batches", "shards"])
def any_world(request, world, tiny_world):
    """Both ways a cohort runs private data: gathered batches, and whole shards with counts."""
    return world if request.param == "batches" else tiny_world


def world_tol(world) -> dict:
    """Whole shards sum a batch's repeated rows as counts, in another order than the batch's
    rows: weights then agree to ~1e-5 absolute after a round (measured 1.05e-5 at most)."""
    return TOL if world.spec.samples_per_client > 32 else dict(rtol=1e-5, atol=5e-5)


def students(world, arch, n=3):
    return [build_model(arch, world.data.input_shape, world.num_classes, seed=1000 + c) for c in range(n)]


def assert_rows_equal(stacked, models, **tol):
    """Row i of every stacked parameter equals model i's parameter of that name."""
    for i, m in enumerate(models):
        for name, p in m.named_parameters():
            np.testing.assert_allclose(
                stacked[name][i].numpy(), p.detach().numpy(), **(tol or TOL), err_msg=f"{name}[{i}]"
            )


@pytest.mark.parametrize("arch", ARCHS)
def test_one_stacked_step_equals_a_per_client_step(arch, world):
    # Prepare: each of 3 students gets its own private batch, transfer batch and targets.
    models = students(world, arch)
    base, params = stack_students(models)
    g = torch.Generator().manual_seed(0)
    xi, yi = (
        torch.as_tensor(world.data.x[:48]).view(3, 16, *world.data.input_shape),
        torch.as_tensor(world.data.y[:48]).view(3, 16),
    )
    xt = torch.as_tensor(world.transfer_x[:48]).view(3, 16, *world.data.input_shape)
    tgt = torch.randn(3, 16, world.num_classes, generator=g)
    # Execute: per client, torch's Adam on distillation_loss; stacked, one vmapped step.
    ref_losses, opts = [], []
    for i, m in enumerate(models):
        opts.append(torch.optim.Adam(m.parameters(), lr=1e-3))
        loss = distillation_loss(m(xi[i]), yi[i], m(xt[i]), tgt[i], 0.5, 4.0)
        loss.backward()
        opts[-1].step()
        ref_losses.append(float(loss.detach()))
    forward = stacked_forward(base)
    live = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = cross_entropy(forward(live, xi), yi) + 0.5 * kd_divergence(forward(live, xt), tgt, 4.0)
    grads = dict(zip(live, torch.autograd.grad(loss.sum(), list(live.values()))))
    new, state = {k: v.clone() for k, v in params.items()}, adam_init(params)
    adam_step(new, grads, state, 1e-3)
    # Assert: parameters, both Adam moments, step counts and losses.
    assert_rows_equal(new, models)
    np.testing.assert_allclose(loss.detach().numpy(), ref_losses, **TOL)
    for i, (m, opt) in enumerate(zip(models, opts)):
        for name, p in m.named_parameters():
            np.testing.assert_allclose(state.exp_avg[name][i].numpy(), opt.state[p]["exp_avg"].numpy(), **TOL)
            np.testing.assert_allclose(
                state.exp_avg_sq[name][i].numpy(), opt.state[p]["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-10
            )
    assert state.step.tolist() == [1, 1, 1]


@pytest.mark.parametrize("name", sorted(MLP_WIDTHS))
def test_stacked_mlp_draws_the_students_build_model_builds(name):
    shape, seeds = (1, 6, 5), [0, 1, 7, 1000 + 3, 2**31 - 1]
    state = torch.default_generator.get_state()
    stacked = stacked_mlp(name, shape, 4, seeds)
    assert torch.equal(torch.default_generator.get_state(), state)  # the global generator is left as it was
    for i, seed in enumerate(seeds):
        built = build_model(name, shape, 4, seed=seed).state_dict()
        assert list(built) == list(stacked)
        for k, v in built.items():
            assert torch.equal(stacked[k][i], v), (name, seed, k)


def test_store_creates_mlp_and_cnn_students_as_the_clientapp_does(world):
    store = StudentStore(torch.device("cpu"))
    for arch in ("mlp64", "cnn"):  # digits: (1, 8, 8) images
        weights = store.load(arch, world, [2, 0])
        for row, client in enumerate([2, 0]):
            built = build_model(arch, world.data.input_shape, world.num_classes, seed=world.spec.seed * 1000 + client)
            for k, v in built.state_dict().items():
                assert torch.equal(weights[k][row], v), (arch, client, k)


@pytest.mark.parametrize("arch", ["mlp32", "cnn"])
def test_fit_holds_finished_students_still(arch, world):
    # Prepare: students take 5, 2 and 0 CE steps on batches of their own.
    models = students(world, arch)
    base, params = stack_students(models)
    n_steps = torch.tensor([5, 2, 0])
    x = torch.as_tensor(world.data.x[: 5 * 3 * 8]).view(5, 3, 8, *world.data.input_shape)
    y = torch.as_tensor(world.data.y[: 5 * 3 * 8]).view(5, 3, 8)
    forward = stacked_forward(base)
    # Execute
    new, hist, state = fit(params, lambda w, k: cross_entropy(forward(w, x[k]), y[k]), n_steps, 1e-3)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    for i, (m, opt) in enumerate(zip(models, opts)):
        for k in range(int(n_steps[i])):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x[k, i]), y[k, i])
            loss.backward()
            opt.step()
            assert float(hist[k, i]) == pytest.approx(float(loss.detach()), rel=1e-5)
    # Assert: each student moved exactly its own steps; moments and counts match torch's Adam.
    assert_rows_equal(new, models)
    assert state.step.tolist() == [5, 2, 0]
    for i, (m, opt) in enumerate(zip(models, opts)):
        for name, p in m.named_parameters():
            ref = opt.state[p]["exp_avg_sq"].numpy() if p in opt.state else np.zeros(p.shape)
            # float32 sums in another order (vmapped vs one model): entries far below the tensor's
            # largest differ in their last bits relative to it, not to themselves (torch 2.14.1 put
            # one element 2.3e-5 off at rtol 1e-5, atol 1e-10), hence an atol scaled to the tensor.
            scale = float(np.abs(ref).max()) if ref.size else 0.0
            np.testing.assert_allclose(state.exp_avg_sq[name][i].numpy(), ref, rtol=1e-5, atol=1e-6 * scale + 1e-12)


def cohort(world, arch, **params):
    settings = dict(
        round=2, students=(arch,), epochs=2, lr=1e-3, batch_size=32, alpha=0.5, temperature=4.0, digest_epochs=1
    )
    base = build_model(arch, world.data.input_shape, world.num_classes, seed=0).to("meta")
    return Cohort(world, DeviceData.of(world, CPU), RoundParams(**{**settings, **params}), base, [0, 1, 2])


@pytest.mark.parametrize("arch", ARCHS)
def test_cohort_trains_as_train_model_and_distill_only(arch, any_world, train_alone):
    # Prepare: client 1 has no targets this round, so it takes fewer steps (its shard's).
    world = any_world
    c = cohort(world, arch)
    rng = np.random.default_rng(0)
    targets = [rng.normal(size=(len(world.transfer_x), 10)).astype(np.float32) if i != 1 else None for i in range(3)]
    models = students(world, arch)
    # Execute: CE + KD (train.distill), then a digest phase (distill_only), per client and batched.
    w, losses = c.train(stack_students(models)[1], targets=targets)
    w = c.digest(w, targets)
    ref = train_alone(
        world,
        models,
        2,
        targets,
        epochs=2,
        lr=1e-3,
        batch_size=32,
        transfer_x=world.transfer_x,
        alpha=0.5,
        temperature=4.0,
    )
    for i, m in enumerate(models):
        if targets[i] is not None:
            distill_only(
                m,
                world.transfer_x,
                targets[i],
                epochs=c.params.digest_epochs,
                lr=1e-3,
                batch_size=32,
                seed=shared_transfer_seed(0, 2),
                temperature=4.0,
            )
    # Assert
    np.testing.assert_allclose(losses, ref, **TOL)
    assert_rows_equal(w, models, **world_tol(world))


@pytest.mark.parametrize("cells", [3 * 7, 1 << 16])  # blocks of 7 test inputs (the last one short), or one block
@pytest.mark.parametrize("arch", ["mlp64", "mlp64-wide", "cnn"])  # feature-major (64 features), side by side, vmap
def test_cohort_evaluates_block_by_block_as_evaluate(arch, cells, world, monkeypatch):
    arch = layout(arch, monkeypatch)
    monkeypatch.setattr("peerkd.batched.cohort.EVAL_CELLS", cells)
    monkeypatch.setattr("peerkd.batched.cohort.EVAL_CELLS_TALL", cells)
    models, c = students(world, arch), cohort(world, arch)
    test_x, test_y = world.split("test")
    scores = c.evaluate(stack_students(models)[1])
    for (acc, loss), m in zip(scores, models):
        ref_acc, ref_loss = evaluate(m, test_x, test_y)
        assert acc == ref_acc  # the same count over the same rows, in float32
        assert loss == pytest.approx(ref_loss, rel=1e-5)


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("arch", ["mlp64", "mlp64-wide", "cnn"])
def test_cohort_predicts_block_by_block_as_each_student_does(arch, into, world, monkeypatch):
    # Prepare: blocks of 7 transfer inputs (96 = 13 blocks and a short one), each written into the
    # same buffers (a zoo MLP's): a block must be read before the next overwrites it.
    arch = layout(arch, monkeypatch)
    monkeypatch.setattr("peerkd.batched.cohort.EVAL_CELLS", 3 * 7)
    monkeypatch.setattr("peerkd.batched.cohort.EVAL_CELLS_TALL", 3 * 7)
    models, c = students(world, arch), cohort(world, arch)
    x = world.transfer_x
    out = np.full((3, len(x), world.num_classes), np.nan, dtype=np.float32) if into else None
    # Execute
    got = c.logits(stack_students(models)[1], c.data.transfer, out)
    # Assert
    assert got.shape == (3, len(x), world.num_classes) and (out is None or got is out)
    for i, m in enumerate(models):
        np.testing.assert_allclose(got[i], predict_logits(m, x), rtol=1e-5, atol=1e-5, err_msg=f"student {i}")


def layout(arch: str, monkeypatch) -> str:
    """``arch`` without its ``-wide`` suffix, which turns off feature-major predictions (``mlp.feature_major``)."""
    if arch.endswith("-wide"):
        monkeypatch.setattr("peerkd.batched.cohort.feature_major", lambda base, names: False)
    return arch.removesuffix("-wide")


def test_predictions_are_cache_sized_on_a_cpu_and_whole_on_a_gpu(world, monkeypatch):
    c = cohort(world, "mlp64")
    assert c._tall and c._eval_step == min(EVAL_ROWS, EVAL_CELLS_TALL // 3)  # 64 features, hidden 64: feature-major
    assert cohort(world, "cnn")._eval_step == min(EVAL_ROWS, EVAL_CELLS // 3)
    monkeypatch.setattr("peerkd.batched.cohort.feature_major", lambda base, names: False)
    assert cohort(world, "mlp64")._eval_step == min(EVAL_ROWS, EVAL_CELLS // 3)
    on_gpu = dataclasses.replace(c, data=DeviceData(*(t.to("meta") for t in dataclasses.astuple(c.data))))
    assert on_gpu.device.type == "meta" and on_gpu._eval_step == EVAL_ROWS  # planned for by auto_chunk


def test_fd_class_targets_match_the_per_client_nan_rows(any_world, train_alone):
    # Prepare: per-class targets valid for all classes, for two classes only, and for none
    # (every batch then has no KD rows: the per-client loss is NaN, its gradient CE's alone).
    world = any_world
    c, models = cohort(world, "mlp32"), students(world, "mlp32")
    rng = np.random.default_rng(1)
    tables = [rng.normal(size=(10, 10)).astype(np.float32) for _ in range(3)]
    valid = [np.ones(10, bool), np.isin(np.arange(10), [0, 1]), np.zeros(10, bool)]
    # Execute
    w, losses = c.train(stack_students(models)[1], classes=list(zip(tables, valid)))
    # the per-client path: each sample's row of its client's table, NaN for an invalid class
    per_sample = [
        np.where(valid[i][:, None], tables[i], np.nan).astype(np.float32)[world.private(i)[1]] for i in range(3)
    ]
    ref = train_alone(
        world, models, 2, sample_targets=per_sample, epochs=2, lr=1e-3, batch_size=32, alpha=0.5, temperature=4.0
    )
    # Assert
    assert np.isnan(ref[2]) and not np.isnan(ref[0])
    np.testing.assert_allclose(losses, ref, equal_nan=True, **TOL)
    assert_rows_equal(w, models, **world_tol(world))


def tiny_spec(students=("mlp32",), **world):
    return RunSpec(
        world=WorldSpec(dataset="digits", num_clients=3, seed=0, **world), rounds=2, epochs=1, students=students
    )


def test_chunks_of_one_student_give_what_one_chunk_gives(tmp_path):
    # Execute: peer with heterogeneous students, every student alone with its weights kept in
    # host memory between calls (streamed to the device per chunk), then all together.
    spec, grids = tiny_spec(("mlp32", "cnn"), samples_per_client=64, transfer_size=96), {}
    for chunk in (1, 0):
        grids[chunk] = BatchedGrid(3, device="cpu", chunk=chunk, store="host" if chunk else "device")
        run_federation(
            grids[chunk], spec, build_strategy("peer"), RunWriter(tmp_path / str(chunk), {}), standard_hooks(spec)
        )
    # Assert: the same students at the end.
    for arch in ("mlp32", "cnn"):
        clients = [0, 2] if arch == "mlp32" else [1]
        one, all_ = (grids[k].store.load(arch, build_world(spec.world), clients) for k in (1, 0))
        for name in one:
            np.testing.assert_allclose(one[name].numpy(), all_[name].numpy(), rtol=1e-6, atol=1e-7)


def test_in_process_rounds_make_no_message_bytes_yet_count_them(tmp_path, monkeypatch):
    # Prepare: count every HeldArray whose numpy.save bytes are made
    made, held = [], HeldArray.data
    monkeypatch.setattr(HeldArray, "data", property(lambda a: made.append(a.shape) or held.fget(a), held.fset))
    spec = tiny_spec(("mlp32",), samples_per_client=64, transfer_size=96)
    # Execute: peer on the batched engine, targets down and logits up every round
    summary = run_federation(
        BatchedGrid(3, device="cpu"), spec, build_strategy("peer"), RunWriter(tmp_path, {}), standard_hooks(spec)
    )
    # Assert: no bytes made, yet the bytes a serialised reply would weigh are counted (3 rounds of
    # 3 students' 96 x C float32 logits and their .npy header, and as many targets down after round 1)
    assert made == []
    logits = 96 * build_world(spec.world).num_classes * 4
    assert summary["bytes_up"] >= spec.rounds * 3 * logits and summary["bytes_down"] >= (spec.rounds - 1) * 3 * logits


def test_a_bad_message_fails_alone():
    # Prepare: three distill messages; node 1's targets have the wrong shape.
    grid = BatchedGrid(3, device="cpu")
    config = ConfigRecord(
        {
            **WorldSpec(dataset="digits", num_clients=3).to_config(),
            P.CFG_STUDENTS: "mlp32",
            P.CFG_EPOCHS: 1,
            P.CFG_LR: 1e-3,
            P.CFG_BATCH_SIZE: 32,
            P.CFG_ALPHA: 1.0,
            P.CFG_REPLY_LOGITS: True,
        }
    )
    messages = []
    for node in sorted(grid.get_node_ids()):
        content = RecordDict({P.KEY_CONFIG: config})
        if node == sorted(grid.get_node_ids())[1]:
            content[P.KEY_TARGETS] = ArrayRecord({P.ARRAY_LOGITS: Array(np.zeros((3, 3), np.float32))})
        messages.append(Message(content, dst_node_id=node, message_type=P.MSG_DISTILL))
    # Execute
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages)}
    # Assert: one error reply naming the shape; the others carry logits and metrics.
    errors = [r for r in replies.values() if r.has_error()]
    assert len(replies) == 3 and len(errors) == 1 and "shape" in errors[0].error.reason
    assert all(P.KEY_LOGITS in r.content for r in replies.values() if not r.has_error())


def test_a_rounds_replies_hold_rows_of_one_array_across_chunks():
    # Prepare: 5 nodes answered 2 at a time (3 chunks), and the same nodes in one chunk.
    spec = WorldSpec(dataset="digits", num_clients=5)
    config = ConfigRecord(
        {**spec.to_config(), P.CFG_STUDENTS: "mlp32", P.CFG_EPOCHS: 1, P.CFG_LR: 1e-3, P.CFG_BATCH_SIZE: 32}
    )
    shape, stacks = (len(build_world(spec).transfer_x), build_world(spec).num_classes), {}
    for chunk in (2, 0):
        grid = BatchedGrid(5, device="cpu", chunk=chunk)
        messages = [
            Message(RecordDict({P.KEY_CONFIG: config}), dst_node_id=n, message_type=P.MSG_QUERY_LOGITS)
            for n in sorted(grid.get_node_ids())
        ]
        # Execute: the server decodes each reply's logits and stacks them in node order.
        replies = sorted(grid.send_and_receive(messages), key=lambda r: r.metadata.src_node_id)
        received = [decode_logits(r.content[P.KEY_LOGITS], shape) for r in replies]
        stacks[chunk] = (stack_rows(received), received)
    # Assert: one view over the five rows (no copy), with the values one chunk gives.
    stack, received = stacks[2]
    assert all(np.shares_memory(stack, r) for r in received)
    np.testing.assert_allclose(stack, stacks[0][0], rtol=1e-6, atol=1e-6)


def test_cpu_clients_do_not_see_the_gpu():
    # Ray hides GPUs from num_gpus=0 actors only when this is on (a client trains where its resources say).
    assert QUIET_ENV["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"


# --- engine parity, end to end ------------------------------------------------------
# Each rule's world: heterogeneous students where the rule allows them; FD without a transfer set.
CASES = {
    rule: (
        (("mlp64",), {})
        if rule in ("fedavg", "feddf")
        else (("mlp32", "cnn"), {"public_frac": 0.0} if rule == "fd" else {})
    )
    for rule in RULES
}
CASES["peer-mlp32"] = (("mlp32",), {})
CASES["peer-dp"] = (("mlp32", "cnn"), {})  # example-level DP: DP-SGD's per-example gradients and noise
CASES["fedavg-dp"] = (("mlp64",), {})
CASES["peer_sum-votes"] = (("mlp32", "cnn"), {})  # client-level DP, noisy votes with the noise shared out


def case(name):
    students, world = CASES[name]
    rule = name.split("-")[0]
    strategy = build_strategy(
        rule, **{k: v for k, v in dict(teacher_epochs=3, teacher_members=2).items() if k in rule_settings(rule)}
    )
    spec = tiny_spec(students, **world)
    if name.endswith("-dp"):
        spec = dataclasses.replace(spec, privacy=PrivacySpec(epsilon=4.0, unit="example"))
    if name.endswith("-votes"):
        spec = dataclasses.replace(spec, privacy=PrivacySpec(epsilon=8.0, release="votes", noise="distributed"))
    return spec, strategy


@pytest.fixture(scope="module")
def flower_runs(tmp_path_factory):
    """Every case in Flower's engine, in one simulation (one Ray start): the ServerApp runs
    the cases one after another on the same 3 nodes, and each node's student starts afresh
    in round 1 as it would in a run of its own."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from peerkd.student import client_app as real

    root = tmp_path_factory.mktemp("flower")
    server, clients = ServerApp(), ClientApp()

    @server.main()
    def main(grid, context):
        for name in CASES:
            spec, strategy = case(name)
            run_federation(grid, spec, strategy, RunWriter(root / name, {"rule": name}), standard_hooks(spec))

    def fresh_in_round_one(handler):
        def handle(msg, context):
            if int(msg.content[P.KEY_CONFIG][P.CFG_ROUND]) == 1:
                for key in list(context.state.keys()):
                    del context.state[key]
            return handler(msg, context)

        return handle

    clients.train()(fresh_in_round_one(real.train))
    clients.train("distill")(fresh_in_round_one(real.distill))
    clients.train("digest")(fresh_in_round_one(real.digest))
    clients.train("fd")(fresh_in_round_one(real.class_distill))
    clients.train("proto")(fresh_in_round_one(real.prototype_distill))
    clients.query("logits")(fresh_in_round_one(real.query_logits))
    clients.evaluate()(fresh_in_round_one(real.evaluate_student))
    run_simulation(
        server_app=server,
        client_app=clients,
        num_supernodes=3,
        backend_config={
            "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
    )
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_batched_engine_gives_flower_engine_numbers(name, flower_runs, tmp_path):
    # Prepare: the Flower engine's run of this case.
    flower = json.loads((flower_runs / name / "summary.json").read_text())
    # Execute
    spec, strategy = case(name)
    store = "host" if name == "peer" else "auto"  # weights kept in host memory give the same numbers
    batched = run_batched(spec, strategy, tmp_path / name, {"rule": name}, device="cpu", store=store)
    # Assert: accuracy within 0.005 (client by client), the same bytes and rejections, and
    # the same training losses in every client's every round.
    assert abs(batched["acc_mean"] - flower["acc_mean"]) <= 0.005
    for a, b in zip(batched["per_client"], flower["per_client"]):
        assert (a["client"], a["arch"]) == (b["client"], b["arch"]) and abs(a["acc"] - b["acc"]) <= 0.005
    assert (batched["bytes_up"], batched["bytes_down"]) == (flower["bytes_up"], flower["bytes_down"])
    assert batched["rejected_replies"] == flower["rejected_replies"] == 0
    rows = {
        eng: {(r["round"], r["client"]): r for r in read_jsonl(d / name / "metrics.jsonl") if r["type"] == "client"}
        for eng, d in (("batched", tmp_path), ("flower", flower_runs))
    }
    assert rows["batched"].keys() == rows["flower"].keys() and len(rows["flower"]) == 6
    for key, r in rows["flower"].items():
        assert (rows["batched"][key]["bytes_up"], rows["batched"][key]["bytes_down"]) == (
            r["bytes_up"],
            r["bytes_down"],
        )
        if r["train_loss"] is not None:
            assert rows["batched"][key]["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4)
    assert (batched["engine"], batched["device"], batched["chunk"]) == ("batched", "cpu", 0)
    assert batched["store"] == ("host" if name == "peer" else "device")
    # every round row says where its time went; the batched engine's is mostly vmapped compute
    for r in (r for r in read_jsonl(tmp_path / name / "metrics.jsonl") if r["type"] == "round"):
        assert all(r[f"time_{s}_s"] >= 0 for s in clock.SECTIONS) and r["time_compute_s"] > 0
    assert batched["peak_rss_mb"] > 0 and batched["peak_gpu_mb"] is None
    if name.endswith(("-dp", "-votes")):  # the same steps or releases accounted on both engines, within the budget
        assert 0 < batched["dp_epsilon_spent"] == flower["dp_epsilon_spent"] <= (4.0 if name.endswith("-dp") else 8.0)
