"""Every rule through a checkpoint, on the batched engine and a tiny world: the state saved after
round 1 reads back equal to the rule's own, and the run resumed from it ends exactly as the
uninterrupted run (same accuracies, bytes and rule state after round 2)."""

import random

import numpy as np
import pytest
import torch

from peerkd.batched import BatchedEngine
from peerkd.errors import RunInterrupted
from peerkd.round.checkpoint import Checkpoint, ModuleWeights
from peerkd.round.hook import RoundHook
from peerkd.round.run import run_on
from peerkd.round.spec import RunSpec
from peerkd.wire.grid_io import send_and_receive
from peerkd.world.build import WorldSpec
from strategies import RULES, build_strategy

SPEC = RunSpec(world=WorldSpec(dataset="digits", num_clients=3, seed=0), rounds=2, epochs=1, students=("mlp32",))
SETTINGS = {  # every rule, its slow parts cut short (a 1-epoch teacher, 1 digest epoch)
    "local": {},
    "fedavg": {},
    "feddf": {"server_epochs": 1},
    "teacher": {"teacher_epochs": 1},
    "teacher_ensemble": {"teacher_epochs": 1, "teacher_members": 2},
    "teacher_pool": {"teacher_epochs": 1},
    "oracle": {"teacher_epochs": 1},
    "peer": {},
    "peer_sum": {},
    "wml": {},
    "fd": {},
    "fedproto": {},
    "fedtgp": {"server_epochs": 5},
    "dsfl": {"digest_epochs": 1},
    "fedmd": {"digest_epochs": 1},
}


@pytest.fixture(autouse=True)
def replies_in_send_order(monkeypatch):
    """The loop's replies in the order their messages were sent. It gets them in the set order of
    their message ids, which changes from run to run and, with it, the rules' float sums in the
    last bit: two uninterrupted fedavg runs then differ by 3e-8 (grid_io.send_and_receive)."""
    from peerkd.round import loop

    def ordered(grid, messages, *args, **kwargs):
        replies, sent = send_and_receive(grid, messages, *args, **kwargs)
        order = {mid: i for i, mid in enumerate(sent)}
        return sorted(replies, key=lambda r: order.get(r.metadata.reply_to_message_id, len(order))), sent

    monkeypatch.setattr(loop, "send_and_receive", ordered)


class StopAfter(RoundHook):
    """Stops the run before round ``last + 1`` (its checkpoint holds round ``last``)."""

    def __init__(self, last: int):
        self.last = last

    def select(self, server_round, node_ids, client_of):
        if server_round > self.last:
            raise RunInterrupted(f"stopped before round {server_round}")
        return node_ids


def same(a, b) -> bool:
    """Equal values of equal types, arrays and tensors element by element."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):  # ModuleWeights too
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def test_every_rule_is_covered():
    assert set(SETTINGS) == set(RULES)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_rule_resumed_from_its_checkpoint_ends_as_the_uninterrupted_run(name, tmp_path):
    # Prepare: the uninterrupted 2-round run; the same run stopped before round 2.
    engine = BatchedEngine(3, device="cpu")
    whole_rule, cut_rule, resumed_rule = (build_strategy(name, **SETTINGS[name]) for _ in range(3))
    random.seed(0)  # Flower's FedAvg orders the sampled nodes with the global RNG, which no run seeds
    whole = run_on(engine, SPEC, whole_rule, tmp_path / "whole", {})
    random.seed(0)
    with pytest.raises(RuntimeError, match="without writing"):
        run_on(engine, SPEC, cut_rule, tmp_path / "cut", {}, hooks=[StopAfter(1)])
    # Execute: read the checkpoint back, then resume the run with a rule built afresh.
    saved = Checkpoint(tmp_path / "cut", "batched").read()
    resumed = run_on(engine, SPEC, resumed_rule, tmp_path / "cut", {}, resume=True)
    # Assert: round 1's state reads back as the rule held it; the resumed run ends as the whole one.
    assert saved.state.round == 1 and saved.rule == name
    assert same(saved.rule_state, cut_rule.state_dict())
    scores = [[(c["acc"], c["loss"]) for c in run["per_client"]] for run in (resumed, whole)]
    assert scores[0] == scores[1]
    assert (resumed["bytes_up"], resumed["bytes_down"]) == (whole["bytes_up"], whole["bytes_down"])
    assert same(resumed_rule.state_dict(), whole_rule.state_dict())
    modules = any(isinstance(v, ModuleWeights) for v in whole_rule.state_dict().values())
    assert modules == (name in ("fedavg", "feddf", "fedtgp"))
