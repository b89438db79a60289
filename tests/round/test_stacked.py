"""Stacked rounds (``peerkd.round.stacked``): the batched engine's rounds as arrays give the rows,
bytes, rejections and students that the same rounds through Messages give."""

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from peerkd.batched import BatchedGrid
from peerkd.batched import grid as grid_module
from peerkd.hooks.faults import FaultSpec
from peerkd.hooks.privacy import PrivacySpec
from peerkd.hooks.standard import standard_hooks
from peerkd.round import loop
from peerkd.round.contract import ServerContext
from peerkd.round.loop import run_federation
from peerkd.round.results import RunWriter, read_jsonl
from peerkd.round.spec import RunSpec
from peerkd.round.stacked import StackedReplies, screen_stacked
from peerkd.wire import protocol as P
from peerkd.wire.codec import Codec
from peerkd.world.build import WorldSpec, build_world
from strategies import build_strategy, rule_settings

TIMES = ("round_s", "wall_s", "setup_s", "train_s")  # the clock's: never equal from run to run


def spec_of(students=("mlp32",), clients=4, **changes) -> RunSpec:
    world = WorldSpec(dataset="digits", num_clients=clients, seed=0, samples_per_client=40, transfer_size=64)
    return RunSpec(world=world, rounds=3, epochs=1, students=students, **changes)


def rule_of(name: str):
    quick = {k: v for k, v in {"teacher_epochs": 2, "teacher_members": 2}.items() if k in rule_settings(name)}
    return build_strategy(name, **quick)


def run_both(tmp_path, name: str, spec: RunSpec, chunk: int = 0):
    """``name`` on ``spec`` through Messages and as stacked rounds: each run's rows, with the
    round rows' own fields (not the clock's), and both grids."""
    out = {}
    for stacked in (False, True):
        grid = BatchedGrid(spec.world.num_clients, device="cpu", chunk=chunk, stacked=stacked)
        where = tmp_path / f"{name}-{stacked}"
        run_federation(grid, spec, rule_of(name), RunWriter(where, {}), standard_hooks(spec))
        rows = [
            {k: v for k, v in r.items() if k not in TIMES and not k.startswith("time_")}
            for r in read_jsonl(where / "metrics.jsonl")
        ]
        out[stacked] = (rows, grid, [r.get("time_messages_s") for r in read_jsonl(where / "metrics.jsonl")])
    return out


@pytest.mark.parametrize(
    "name, students",
    [
        ("peer", ("mlp32",)),
        ("peer", ("mlp32", "cnn")),
        ("local", ("mlp64",)),
        ("teacher", ("mlp32", "mlp64")),
        ("fedmd", ("mlp32", "cnn")),
        ("dsfl", ("mlp32",)),
        ("wml", ("mlp32", "mlp64")),
        ("peer_sum", ("mlp32",)),
        ("peer_sum", ("mlp32", "cnn")),
        ("fd", ("mlp32", "cnn")),
        ("fedproto", ("mlp32", "mlp64")),
        ("fedtgp", ("mlp32",)),
    ],
)
def test_a_stacked_run_writes_what_the_message_run_writes(name, students, tmp_path, monkeypatch):
    # Prepare: note every stacked round
    stacked_rounds = []
    real = loop._stacked_exchange
    monkeypatch.setattr(loop, "_stacked_exchange", lambda *a: stacked_rounds.append(a[5]) or real(*a))
    # Execute: the rule with the agreement measure on (logits asked of every rule), chunks of 3
    spec = spec_of(students, measure_agreement=True)
    runs = run_both(tmp_path, name, spec, chunk=3)
    assert stacked_rounds == list(range(1, spec.rounds + 1))  # the stacked run's rounds, all of them
    # Assert: every row equal (accuracy, losses, bytes up and down, agreement, rejections) ...
    messages, stacked = runs[False][0], runs[True][0]
    assert len(stacked) == len(messages) == 1 + spec.rounds * (spec.world.num_clients + 1)
    assert stacked == messages
    assert all(r["bytes_up"] + r["bytes_measure"] > 0 for r in stacked if r["type"] == "client")  # logits counted
    # ... and the same students at the end
    world = build_world(spec.world)
    for arch in set(students):
        clients = [c for c in range(spec.world.num_clients) if students[c % len(students)] == arch]
        a, b = (runs[k][1].store.load(arch, world, clients) for k in (False, True))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_stacked_round_builds_no_message_per_node(tmp_path, monkeypatch):
    # Prepare: count the replies the batched grid builds
    built = []
    real = grid_module.reply
    monkeypatch.setattr(grid_module, "reply", lambda *a: built.append(a) or real(*a))
    spec = spec_of(measure_agreement=False)
    # Execute
    runs = run_both(tmp_path, "peer", spec)
    # Assert: the Message run built one reply per node and round (and per node for the warm-up
    # evaluation, which both runs send as Messages); the stacked run only the warm-up's
    n = spec.world.num_clients
    assert len(built) == n * (spec.rounds + 1) + n
    assert runs[True][0] == runs[False][0]


@pytest.mark.parametrize(
    "changes",
    [{"codec": Codec("fp16")}, {"privacy": PrivacySpec(epsilon=8.0)}, {"faults": FaultSpec(crash_prob=0.3)}],
    ids=["codec", "privacy", "faults"],
)
def test_rounds_go_through_messages_where_something_reads_them(changes, tmp_path, monkeypatch):
    # Prepare: note every stacked round
    stacked = []
    real = loop._stacked_exchange
    monkeypatch.setattr(loop, "_stacked_exchange", lambda *a: stacked.append(a[5]) or real(*a))
    spec = spec_of(**changes)
    # Execute
    run_federation(BatchedGrid(4, device="cpu"), spec, rule_of("peer"), RunWriter(tmp_path, {}), standard_hooks(spec))
    # Assert: none (a codec other than fp32, a privacy hook, a faulty grid); the default run has them
    assert stacked == []
    run_federation(
        BatchedGrid(4, device="cpu"),
        spec_of(),
        rule_of("peer"),
        RunWriter(tmp_path / "plain", {}),
        standard_hooks(spec_of()),
    )
    assert stacked == [1, 2, 3]


@pytest.mark.parametrize("chunk, failed", [(2, [1002, 1003]), (0, [1000, 1001, 1002, 1003])])
def test_a_failing_cohort_is_rejected_as_its_error_replies_are(chunk, failed, tmp_path, monkeypatch):
    # Prepare: the cohort holding client 2 raises in round 2 (chunks of 2: clients 2 and 3 fail
    # together; one chunk: every client, and round 3 has no peer logits to send)
    from peerkd.batched.cohort import Cohort

    train = Cohort.train

    def failing(self, w, *args, **kwargs):
        if 2 in self.clients and self.params.round == 2:
            raise RuntimeError("out of memory in round 2")
        return train(self, w, *args, **kwargs)

    monkeypatch.setattr(Cohort, "train", failing)
    # Execute
    runs = run_both(tmp_path, "peer", spec_of(measure_agreement=False), chunk=chunk)
    # Assert: the same rows, a rejection with the client's error for each, and the run went on
    messages, stacked = runs[False][0], runs[True][0]
    assert stacked == messages
    round_2 = next(r for r in stacked if r["type"] == "round" and r["round"] == 2)
    assert round_2["rejected"] == len(failed) and round_2["replies"] == 4 - len(failed)
    assert [r["node_id"] for r in round_2["rejections"]] == failed
    assert next(r for r in stacked if r["type"] == "round" and r["round"] == 3)["replies"] == 4
    assert round_2["rejections"][0]["reason"].endswith("RuntimeError'>:<'out of memory in round 2'>")


# --- screening as arrays ---------------------------------------------------------------------


def replies(n=4, logits=True):
    world = build_world(WorldSpec(dataset="digits", num_clients=n, seed=0, transfer_size=8))
    metrics = {
        P.METRIC_PARTITION: np.arange(n),
        P.METRIC_NUM_EXAMPLES: np.full(n, 10),
        P.METRIC_TEST_ACC: np.full(n, 0.5),
        P.METRIC_TEST_LOSS: np.full(n, 1.25),
        P.METRIC_TRAIN_LOSS: np.full(n, 0.75),
        P.METRIC_TRAIN_S: np.full(n, 0.01),
    }
    rows = np.zeros((n, len(world.transfer_x), world.num_classes), np.float32) if logits else None
    return world, StackedReplies(np.arange(n) + 1000, ["mlp32"] * n, metrics, rows, 100)


def peer_rule(world):
    rule = build_strategy("peer")
    rule.setup(ServerContext(world, ("mlp32",), 0, torch.device("cpu"), 1, 1e-3, 32))
    return rule


def test_screening_as_arrays_rejects_what_screen_reply_rejects_with_its_reasons(flower_identity):
    # Prepare: row 0 good; 1: accuracy 1.5; 2: a NaN logit; 3: row 0's partition id again; node 1009 failed
    world, got = replies()
    got.metrics[P.METRIC_TEST_ACC][1] = 1.5
    got.logits[2, 3, 1] = np.nan
    got.metrics[P.METRIC_PARTITION][3] = 0
    got.failed[1009] = "<class 'RuntimeError'>:<'boom'>"
    # Execute
    keep, rejected = screen_stacked(got, peer_rule(world), num_clients=4)
    # Assert: the Message path's reasons, word for word
    assert keep.tolist() == [True, False, False, False]
    assert rejected == [
        (1009, "client error: <class 'RuntimeError'>:<'boom'>"),
        (1001, "test-acc 1.5 outside [0, 1]"),
        (1002, "logits contain NaN or infinity"),
        (1003, "duplicate partition-id 0"),
    ]


def test_screening_class_tables_rejects_what_fd_s_check_rejects_with_its_reasons(flower_identity):
    # Prepare: FD's replies, (C, C) class means and (C,) counts; row 1 a negative count, row 2 a NaN mean
    world, got = replies(logits=False)
    c = world.num_classes
    got = dataclasses.replace(got, logits=np.zeros((4, c, c), np.float32), counts=np.ones((4, c), np.float32))
    got.counts[1, 3] = -1.0
    got.logits[2, 0, 0] = np.nan
    fd = rule_of("fd")
    fd.setup(ServerContext(world, ("mlp32",), 0, torch.device("cpu"), 1, 1e-3, 32))
    # Execute
    keep, rejected = screen_stacked(got, fd, num_clients=4)
    # Assert: the Message path's reasons (the rows rebuilt as FD's records); the rest kept and aggregated
    assert keep.tolist() == [True, False, False, True]
    assert rejected == [(1001, "negative class counts"), (1002, "logits contain NaN or infinity")]
    fd.aggregate_stacked(2, got.take(keep))
    assert sorted(fd.means) == [1000, 1003] and fd.counts[1003].tolist() == [1.0] * c


def test_screening_as_arrays_passes_good_rows_without_looking_at_each(flower_identity, monkeypatch):
    # Prepare: every row good; a row looked at one by one would build its records
    world, got = replies(n=6)
    monkeypatch.setattr(StackedReplies, "content", lambda self, i: pytest.fail(f"row {i} looked at alone"))
    # Execute
    keep, rejected = screen_stacked(got, peer_rule(world), num_clients=6)
    # Assert
    assert keep.all() and rejected == []
    assert got.take(keep) is got


def test_taking_rows_keeps_them_in_order():
    _, got = replies(n=4)
    got.logits[:] = np.arange(4)[:, None, None]
    kept = got.take(np.array([True, False, True, True]))
    assert kept.nodes.tolist() == [1000, 1002, 1003] and kept.logits[:, 0, 0].tolist() == [0, 2, 3]
    assert kept.metrics[P.METRIC_PARTITION].tolist() == [0, 2, 3] and kept.archs == ["mlp32"] * 3
    assert kept.values(1) == {
        "partition-id": 2,
        "num-examples": 10,
        "test-acc": 0.5,
        "test-loss": 1.25,
        "train-loss": 0.75,
        "train-s": 0.01,
    }


# --- the rules' stacked targets ----------------------------------------------------------------


def sent_by(nodes, logits):
    """Replies of ``nodes`` carrying ``logits`` (and made-up metrics)."""
    _, replies_ = replies(n=len(nodes))
    return dataclasses.replace(replies_, nodes=np.array(nodes), logits=logits)


def set_up(name, n=4):
    world = build_world(WorldSpec(dataset="digits", num_clients=n, seed=0, transfer_size=8))
    rule = rule_of(name)
    rule.setup(ServerContext(world, ("mlp32",), 0, torch.device("cpu"), 1, 1e-3, 32, False))
    return world, rule


def test_peer_targets_stay_one_array_and_equal_the_per_node_targets(flower_identity):
    # Prepare: four senders' logits, as rows of one array (a stacked round's replies)
    world, rule = set_up("peer")
    logits = np.random.default_rng(0).normal(size=(4, len(world.transfer_x), world.num_classes)).astype(np.float32)
    rule.aggregate_stacked(1, sent_by([11, 12, 13, 14], logits))
    # Execute
    targets, has, size = rule.stacked_targets([11, 12, 13, 14])
    # Assert: each row the mean of the other three; no copy of the rule's own stack; the bytes of one target
    assert has.all() and targets.base is not None
    np.testing.assert_allclose(targets[1], (logits[0] + logits[2] + logits[3]) / 3, rtol=1e-5, atol=1e-7)
    per_node = rule.targets_for([11, 12, 13, 14])
    assert not targets.flags.owndata and all(np.array_equal(targets[k], per_node[n]) for k, n in enumerate(per_node))
    assert size == 128 + 4 * targets[0].size  # the .npy header and the float32 values


def test_peer_writes_each_stacked_round_s_means_into_last_round_s_array(flower_identity):
    # Prepare: two rounds of four senders' logits.
    world, rule = set_up("peer")
    rng = np.random.default_rng(1)
    shape = (4, len(world.transfer_x), world.num_classes)
    first, second = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
    # Execute: the targets of the round after each.
    rule.aggregate_stacked(1, sent_by([11, 12, 13, 14], first))
    t1 = rule.stacked_targets([11, 12, 13, 14])[0].copy()
    held = rule.means
    rule.aggregate_stacked(2, sent_by([11, 12, 13, 14], second))
    t2 = rule.stacked_targets([11, 12, 13, 14])[0]
    # Assert: the same array both times, each time that round's leave-one-out means; the Message path's
    # targets are arrays of their own; the array is no state a checkpoint keeps.
    assert rule.means is held and np.shares_memory(t2, held)
    np.testing.assert_allclose(t1[0], first[1:].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t2[0], second[1:].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.shares_memory(rule.targets_for([11])[11], held)
    assert "means" not in rule.state_dict()


def test_a_newcomer_gets_everyone_s_mean_and_round_one_sends_nothing(flower_identity):
    world, rule = set_up("peer")
    assert rule.stacked_targets([11, 12]) == (None, pytest.approx(np.array([False, False])), 0)
    rule.aggregate_stacked(1, sent_by([11, 12], np.stack([np.zeros((8, 10)), np.ones((8, 10))]).astype(np.float32)))
    targets, has, _ = rule.stacked_targets([11, 12, 13])
    assert has.tolist() == [True, True, True]
    assert targets[0].mean() == 1.0 and targets[1].mean() == 0.0 and targets[2].mean() == 0.5


def test_one_teacher_target_is_viewed_not_copied(flower_identity):
    world, rule = set_up("teacher")
    targets, has, _ = rule.stacked_targets([11, 12, 13])
    assert has.all() and targets.shape[0] == 3 and targets.strides[0] == 0


def test_local_sends_no_targets_and_rules_without_a_stacked_form_say_so(flower_identity):
    _, local = set_up("local")
    targets, has, size = local.stacked_targets([11, 12])
    assert targets is None and not has.any() and size == 0
    config = ConfigRecord({"round": 1})
    assert local.stacked_round(config)[0] == P.MSG_TRAIN
    for name in ("fedavg", "feddf"):
        assert rule_of(name).stacked_round(config) is None, name
    assert set_up("fd")[1].stacked_round(config)[0] == P.MSG_CLASS_DISTILL
    assert {set_up(n)[1].stacked_round(config)[0] for n in ("fedproto", "fedtgp")} == {P.MSG_PROTO}


def test_the_grid_offers_stacked_rounds_only_for_what_it_answers_as_arrays():
    grid = BatchedGrid(2, device="cpu")
    base = {**WorldSpec(dataset="digits", num_clients=2).to_config(), P.CFG_STUDENTS: "mlp32", P.CFG_EPOCHS: 1,
            P.CFG_LR: 1e-3, P.CFG_BATCH_SIZE: 32}  # fmt: skip
    assert grid.stacks(P.MSG_DISTILL, ConfigRecord(base)) and grid.stacks(P.MSG_TRAIN, ConfigRecord(base))
    assert grid.stacks(P.MSG_DIGEST, ConfigRecord(base)) and grid.stacks(P.MSG_CLASS_DISTILL, ConfigRecord(base))
    assert grid.stacks(P.MSG_PROTO, ConfigRecord(base)) and not grid.stacks(P.MSG_QUERY_LOGITS, ConfigRecord(base))
    for change in ({P.CFG_REPLY_LOGITS: True}, {P.CFG_REPLY_PROBE: True}):  # class tables and rows besides: Messages
        assert not grid.stacks(P.MSG_CLASS_DISTILL, ConfigRecord({**base, **change})), change
    assert grid.stacks(P.MSG_DISTILL, ConfigRecord({**base, P.CFG_KEEP_SENT: True}))  # peer_sum: sums
    for change in ({P.CFG_CODEC: "int8"}, {P.CFG_DP_NOISE: 1.0}):
        assert not grid.stacks(P.MSG_DISTILL, ConfigRecord({**base, **change})), change
    assert grid.stacks(P.MSG_DISTILL, ConfigRecord({**base, P.CFG_REPLY_PROBE: True, P.CFG_REPLY_PROBS: True}))
    assert not BatchedGrid(2, device="cpu", stacked=False).stacks(P.MSG_DISTILL, ConfigRecord(base))


@pytest.mark.parametrize("name", ["peer", "peer_sum"])  # peer_sum: a node not among last round's senders
def test_a_spec_change_keeps_both_paths_equal_under_partial_participation(name, tmp_path):
    spec = dataclasses.replace(spec_of(clients=5, measure_agreement=False), clients_per_round=3, rounds=4)
    runs = run_both(tmp_path, name, spec)
    assert runs[True][0] == runs[False][0]
