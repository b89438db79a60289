"""Checkpoint pieces with numbers a reader can check: the typed encoding, client files, metrics
trimming, node renaming, the batched students' snapshot, the participation summary."""

import json
import random
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch

from peerkd import clock
from peerkd.batched.store import StudentStore
from peerkd.hooks.participation import participation
from peerkd.round import checkpoint
from peerkd.round.checkpoint import (
    ModuleWeights,
    decode,
    encode,
    load_client,
    materialize,
    prune_client_files,
    rekey_nodes,
    rng_state,
    save_client,
    set_rng_state,
)
from peerkd.round.results import RunWriter, read_jsonl
from peerkd.world.build import WorldSpec, build_world


def through_files(value, tmp_path):
    """``value`` encoded, written as JSON and a weights-only tensor file, read back and decoded."""
    tensors = {}
    doc = json.dumps(encode(value, "v", tensors))
    torch.save(materialize(tensors), tmp_path / "t.pt")
    return decode(json.loads(doc), "v", torch.load(tmp_path / "t.pt", weights_only=True))


def test_encode_writes_plain_json_with_types_and_tensors_by_name():
    # Execute
    tensors = {}
    out = encode({"shape": (180, 10), 1001: np.array([0.5, 1.5], dtype=np.float32), "seen": {7}}, "rule", tensors)
    # Assert: tuple, set and int keys are tagged; the array is a tensor named by its path.
    assert out == {
        "dict": [
            ["shape", {"tuple": [180, 10]}],
            [1001, {"ndarray": "rule.1001", "dtype": "float32"}],
            ["seen", {"set": [7]}],
        ]
    }
    assert tensors["rule.1001"].tolist() == [0.5, 1.5]


def test_arrays_of_one_shape_by_key_are_stored_as_one_stack(tmp_path):
    # Prepare: a rule's logits by node (thousands in a fleet), and a dict that must stay per value
    logits = {1000 + i: np.full((3, 2), i, dtype=np.float32) for i in range(4)}
    mixed = {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}
    # Execute
    tensors = {}
    out = encode(logits, "rule.logits", tensors)
    back = through_files({"logits": logits, "mixed": mixed}, tmp_path)
    # Assert: one (4, 3, 2) tensor and the keys; back as a dict of equal arrays
    assert out == {"stacked": [1000, 1001, 1002, 1003], "ndarray": "rule.logits.stacked", "dtype": "float32"}
    assert materialize(tensors)["rule.logits.stacked"].shape == (4, 3, 2)
    assert list(back["logits"]) == list(logits) and all(np.array_equal(back["logits"][k], v) for k, v in logits.items())
    assert set(back["mixed"]) == {"a", "b"} and back["mixed"]["b"].shape == (3,)


def test_a_stack_is_made_in_last_rounds_array_when_it_fits():
    # Prepare: two rounds of logits by node of one shape, then of another
    rounds = [{n: np.full((3, 2), r * 10 + n, np.float32) for n in range(4)} for r in range(2)]
    other = {n: np.zeros((5, 2), np.float32) for n in range(4)}
    buffers = {}
    # Execute
    made = []
    for value in (*rounds, other):
        tensors = {}
        encode(value, "rule.logits", tensors)
        stacked = materialize(tensors, buffers)["rule.logits.stacked"]
        made.append((stacked[:, 0, 0].tolist(), tuple(stacked.shape), buffers["rule.logits.stacked"]))
    # Assert: each round's values (read before the next write); round 2 in round 1's array, the new shape anew
    assert [m[0] for m in made[:2]] == [[0, 1, 2, 3], [10, 11, 12, 13]]
    assert made[1][2] is made[0][2] and made[2][2] is not made[0][2] and made[2][1] == (4, 5, 2)


def test_a_tensor_is_copied_into_last_rounds_copy_when_it_fits():
    # Prepare: a module's weight saved two rounds running, changed in place between, then another shape
    weight, buffers, made = torch.zeros(3, 2), {}, []
    # Execute
    for value in (weight, weight, torch.ones(4)):
        tensors = {}
        encode(value, "rule.w", tensors)
        copied = materialize(tensors, buffers)["rule.w"]
        value.add_(1.0)  # training on: what was copied stays
        made.append((copied.sum().item(), copied))
    # Assert: each round's values as they were; round 2 in round 1's tensor, the new shape anew
    assert [m[0] for m in made] == [0.0, 6.0, 4.0]
    assert made[1][1] is made[0][1] and made[2][1] is not made[0][1] and made[0][1] is not weight


def test_a_stack_with_keys_of_another_number_is_damaged():
    tensors = {"s": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="2 stacked arrays"):
        decode({"stacked": [1, 2, 3], "ndarray": "s", "dtype": "float32"}, "rule.logits", tensors)


def test_client_rows_are_one_table_and_come_back_as_rows(tmp_path):
    # Prepare: clients' last rows (plain values, one set of fields), and dicts that are no table
    rows = {c: {"client": c, "acc": 0.5 + c / 10, "arch": "mlp32", "train_s": None, "ok": c > 1} for c in range(3)}
    other = {1: {"a": 1, "b": 2}, 2: {"b": 2, "a": 1}}  # fields in another order
    nested = {1: {"a": [1]}, 2: {"a": [2]}}
    # Execute
    out = encode(rows, "latest", {})
    back = through_files({"latest": rows, "other": other, "nested": nested, "ids": [3, 1, 2]}, tmp_path)
    # Assert: one list a row under the fields; back as equal dicts (field order kept); the others per row
    assert out == {
        "rows": [0, 1, 2],
        "fields": ["client", "acc", "arch", "train_s", "ok"],
        "values": [[0, 0.5, "mlp32", None, False], [1, 0.6, "mlp32", None, False], [2, 0.7, "mlp32", None, True]],
    }
    assert back["latest"] == rows and [list(r) for r in back["latest"].values()] == [list(r) for r in rows.values()]
    assert "dict" in encode(other, "x", {}) and "dict" in encode(nested, "x", {})
    assert back["other"] == other and back["nested"] == nested and back["ids"] == [3, 1, 2]


@pytest.mark.parametrize(
    "table, says",
    [
        ({"rows": [1, 1], "fields": ["a"], "values": [[1], [2]]}, "a key twice"),
        ({"rows": [1, 2], "fields": ["a"], "values": [[1]]}, "2 row keys for 1 rows"),
        ({"rows": [1, 2], "fields": ["a", "a"], "values": [[1, 1], [2, 2]]}, "not distinct"),
        ({"rows": [1, 2], "fields": ["a"], "values": [[1], [2, 3]]}, "another length"),
        ({"rows": [1, 2], "fields": ["a"], "values": [[1], [{"tensor": "t"}]]}, "what no row holds"),
    ],
)
def test_a_damaged_table_is_refused(table, says):
    with pytest.raises(ValueError, match=says):
        decode(table, "latest", {})


def test_decode_gives_back_values_of_the_same_types(tmp_path):
    # Prepare: every kind of data a checkpoint holds.
    value = {
        "none": None,
        "flags": [True, 3, 0.1, "x"],
        "pair": (2, (3.5, "y")),
        "senders": {1001, 1002},
        1000: {"nested": [1, 2]},
        "key": np.array([[1, 2**32 - 1]], dtype=np.uint32),  # the NumPy RNG's key: no uint32 tensor needed
        "acc": np.float64(0.25),
        "t": torch.tensor([1.5, -2.0]),
        "model": ModuleWeights({"w": torch.ones(2, 2)}),
    }
    # Execute
    back = through_files(value, tmp_path)
    # Assert
    assert back.keys() == value.keys()
    assert back["none"] is None and back["flags"] == [True, 3, 0.1, "x"] and back["pair"] == (2, (3.5, "y"))
    assert back["senders"] == {1001, 1002} and back[1000] == {"nested": [1, 2]}
    assert back["key"].dtype == np.uint32 and back["key"].tolist() == [[1, 2**32 - 1]]
    assert type(back["acc"]) is np.float64 and back["acc"] == 0.25
    assert back["t"].tolist() == [1.5, -2.0]
    assert type(back["model"]) is ModuleWeights and back["model"]["w"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_rng_states_go_through_files_and_draw_the_same_numbers(tmp_path):
    # Prepare: the RNG states through files, then one draw of each.
    state = through_files(rng_state(), tmp_path)
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    # Execute
    set_rng_state(state)
    # Assert
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


@pytest.mark.parametrize(
    "value, named",
    [
        ({"flower": object()}, "rule.flower"),
        ({"logits": {(1, 2): 0.5}}, "rule.logits"),
        ({"rows": Counter({1: 2})}, "rule.rows"),
        ({"labels": np.array(["a", "b"])}, "rule.labels"),
    ],
)
def test_encode_refuses_what_is_not_data_naming_the_attribute(value, named):
    with pytest.raises(TypeError, match=f"^{named}"):
        encode(value, "rule", {})


def test_client_files_load_the_newest_up_to_a_round_and_prune_the_rest(tmp_path):
    # Prepare: client 0 wrote rounds 1, 2, 4; client 1 wrote round 1.
    d = str(tmp_path)
    for client, rnd in [(0, 1), (0, 2), (0, 4), (1, 1)]:
        save_client(d, client, rnd, "mlp32", {"w": torch.full((2,), float(rnd))})
    # Execute / Assert: a resume after round 3 loads client 0's round 2, client 1's round 1.
    arch, weights = load_client(d, 0, 3)
    assert arch == "mlp32" and weights["w"].tolist() == [2.0, 2.0]
    assert load_client(d, 1, 3)[1]["w"].tolist() == [1.0, 1.0]
    assert load_client(d, 2, 3) is None
    # Pruning at round 3 keeps each client's newest file <= 3 and anything later.
    prune_client_files(d, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c0-r2.pt", "c0-r4.pt", "c1-r1.pt"]


def test_keep_rounds_drops_rows_past_the_checkpoint_and_a_torn_line(tmp_path):
    # Prepare: rows of rounds 1-3, a final evaluation, and a torn last line.
    writer = RunWriter(tmp_path, {"rule": "peer"})
    writer.log({"type": "setup"}, *({"type": "round", "round": r} for r in (1, 2, 3)))
    writer.log({"type": "client", "round": 2, "final_evaluation": True})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"type": "round", "rou')
    # Execute: resume after round 2, then log round 3 again.
    resumed = RunWriter(tmp_path, {"rule": "peer"}, resume=True)
    resumed.keep_rounds(2)
    resumed.log({"type": "round", "round": 3, "again": True})
    # Assert
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["type"], r.get("round")) for r in rows] == [("setup", None), ("round", 1), ("round", 2), ("round", 3)]
    assert rows[-1]["again"] is True


class _Rule:
    def __init__(self):
        self.logits = {101: "a", 102: "b"}  # by node id
        self.senders = {101, 102}  # node ids
        self.weights = {0: 0.5, 1: 0.5}  # by client id
        self.name = "peer"


def test_rekey_nodes_renames_node_keyed_state_only():
    rule = _Rule()
    rekey_nodes(rule, {101: 7, 102: None})  # client of node 102 is gone now
    assert rule.logits == {7: "a"} and rule.senders == {7}
    assert rule.weights == {0: 0.5, 1: 0.5}


def test_student_store_snapshot_restores_every_student(tmp_path):
    # Prepare: 3 students of two architectures; client 1's weights changed; client 2 sent logits.
    world = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
    store = StudentStore(torch.device("cpu"))
    store.load("mlp32", world, [0, 1])
    weights = store.load("mlp32", world, [1])
    store.save("mlp32", [1], {k: v + 1.0 for k, v in weights.items()})
    store.load("mlp64", world, [2])
    store.sent[2] = np.full((2, 3), 0.5, dtype=np.float32)
    snap = store.snapshot()
    # Execute: a fresh store restored from the snapshot, through a weights-only file.
    torch.save(snap, tmp_path / "s.pt")
    fresh = StudentStore(torch.device("cpu"))
    fresh.restore(torch.load(tmp_path / "s.pt", weights_only=True))
    # Assert: stacked per architecture; the same weights, rows, architectures and sent logits.
    assert {arch: s["clients"] for arch, s in snap["archs"].items()} == {"mlp32": [0, 1], "mlp64": [2]}
    first = next(iter(weights))
    assert torch.equal(snap["archs"]["mlp32"]["weights"][first][1], weights[first][0] + 1.0)
    for arch, clients in (("mlp32", [0, 1]), ("mlp64", [2])):
        a, b = store.load(arch, world, clients), fresh.load(arch, world, clients)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(fresh.sent) == [2] and fresh.sent[2].tolist() == [[0.5] * 3] * 2
    # Assert: without copying, host weights in clients' order are views of the live stacks
    views = store.snapshot(copy=False)["archs"]
    assert torch.equal(views["mlp32"]["weights"][first], snap["archs"]["mlp32"]["weights"][first])
    assert views["mlp32"]["weights"][first].untyped_storage().data_ptr() == store._weights["mlp32"][first].data_ptr()


def test_participation_names_who_took_part():
    # 3 clients, 2 rounds: client 0 answered twice, client 1 once (round 1), client 2 never.
    latest = {0: {"round": 2}, 1: {"round": 1}}
    out = participation(3, 2, latest, Counter({0: 2, 1: 1}))
    assert out == {
        "clients_evaluated": 2,
        "clients_missing": [2],
        "clients_stale": [1],
        "partial_mean": True,
        "replies_per_client": {"0": 2, "1": 1, "2": 0},
    }
    assert json.loads(json.dumps(out)) == out


class _InterruptedFile:
    """``f`` whose first large write is cut by Ctrl-C, as a SIGINT landing inside torch.save."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        if len(data) > 64:
            raise KeyboardInterrupt
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def test_a_ctrl_c_inside_torch_save_stays_a_ctrl_c_and_leaves_no_file(tmp_path):
    # Prepare: torch.save's zip writer turns an exception in write() into its own RuntimeError on closing.
    target = tmp_path / "round.pt"
    # Execute / Assert: the stop arrives as KeyboardInterrupt (exit 130 upstream), not a RuntimeError.
    with pytest.raises(KeyboardInterrupt):
        checkpoint._write_atomic(target, lambda f: torch.save({"w": torch.zeros(100)}, _InterruptedFile(f)))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


class _SavedRule:
    """What a checkpoint reads of a rule: its name and state."""

    name = "peer"

    def __init__(self):
        self.logits = {1000 + i: np.full((3, 2), i, dtype=np.float32) for i in range(3)}
        self.weights = torch.zeros(2, 2)

    def state_dict(self):
        return {"logits": self.logits, "weights": self.weights}


def _state(rule, rnd=1):
    return checkpoint.RunState(rnd, rule, {}, {0: {"acc": 0.5}}, Counter(), Counter({0: 1}), {1000: 0}, 1.0, "batched")


def test_a_background_save_writes_the_state_as_it_was_when_saved(tmp_path):
    # Prepare: a rule whose arrays and module weights change in place right after the save returns
    rule, ck = _SavedRule(), checkpoint.Checkpoint(tmp_path, "batched")
    # Execute
    ck.save(_state(rule), background=True)
    rule.logits[1000] += 7.0
    rule.weights += 1.0
    saved = ck.read()  # waits for the write
    # Assert: the values of the moment of saving, a verified file, one round
    assert saved.state.round == 1 and saved.rule == "peer"
    assert [a.tolist() for a in saved.rule_state["logits"].values()] == [[[i] * 2] * 3 for i in range(3)]
    assert saved.rule_state["weights"].tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_a_background_write_records_its_cpu_time_on_the_clock(tmp_path):
    # Prepare
    rule, ck = _SavedRule(), checkpoint.Checkpoint(tmp_path, "batched")
    clock.take()
    # Execute
    ck.save(_state(rule), background=True)
    ck.wait()
    # Assert: the writer's CPU seconds, under their own name, once
    spent = clock.take()
    assert spent[checkpoint.BACKGROUND_CPU] > 0.0 and spent["io"] == 0.0
    assert checkpoint.BACKGROUND_CPU not in clock.take()


def test_the_tensor_file_skips_torchs_crc_and_leaves_torchs_switch_as_it_was(tmp_path):
    # Prepare
    rule, ck = _SavedRule(), checkpoint.Checkpoint(tmp_path, "batched")
    # Execute
    ck.save(_state(rule), background=True)
    saved = ck.read()
    # Assert: records without a CRC (the SHA-256 in server.json covers them), read back whole;
    # torch's own saves still get theirs.
    with zipfile.ZipFile(ck.dir / "server-r1.pt") as z:
        data = [info for info in z.infolist() if "/data/" in info.filename]
    assert data and all(info.CRC == 0 for info in data)
    assert [a.tolist() for a in saved.rule_state["logits"].values()] == [[[i] * 2] * 3 for i in range(3)]
    torch.save({"w": torch.ones(3)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as z:
        assert all(info.CRC != 0 for info in z.infolist() if "/data/" in info.filename)


def test_a_failed_background_write_is_raised_by_the_next_save_and_only_logged_by_close(tmp_path, caplog, monkeypatch):
    # Prepare: round 2's and round 4's tensor files meet a full disk
    rule, ck, write = _SavedRule(), checkpoint.Checkpoint(tmp_path, "batched"), checkpoint._write_atomic

    def full_disk(path, what, reuse=None, direct=False):
        if path.name in ("server-r2.pt", "server-r4.pt"):
            raise OSError(28, "No space left on device")
        write(path, what, reuse, direct)

    monkeypatch.setattr(checkpoint, "_write_atomic", full_disk)
    ck.save(_state(rule), background=True)
    # Execute / Assert: round 2's error comes out of the next save, once; round 1 stays the checkpoint
    ck.save(_state(rule, 2), background=True)
    with pytest.raises(OSError, match="No space"):
        ck.save(_state(rule, 3), background=True)
    assert ck.read().state.round == 1
    ck.save(_state(rule, 3), background=True)
    assert ck.read().state.round == 3
    # a run ending on another error: close logs round 4's failure instead of raising over it
    ck.save(_state(rule, 4), background=True)
    ck.close()
    assert "were not written" in caplog.text and ck.read().state.round == 3


def test_a_tensor_file_is_written_over_the_one_named_before_last(tmp_path):
    # Prepare: a rule whose arrays change every round
    rule, ck = _SavedRule(), checkpoint.Checkpoint(tmp_path, "batched")
    inodes = {}
    # Execute: five rounds saved in the background, each read back
    for rnd in range(1, 6):
        rule.logits[1000] += 1.0
        ck.save(_state(rule, rnd), background=True)
        saved = ck.read()
        files = sorted(p.name for p in ck.dir.glob("server-r*.pt"))
        inodes[rnd] = (ck.dir / f"server-r{rnd}.pt").stat().st_ino
        # Assert: the round's values, verified; on disk this round's file and at most the one before
        assert saved.state.round == rnd and saved.rule_state["logits"][1000].tolist() == [[rnd] * 2] * 3
        assert files == [f"server-r{r}.pt" for r in range(max(1, rnd - 1), rnd + 1)]
    # Assert: from round 3 on, each round's file is round (r - 2)'s, written over
    assert inodes[3] == inodes[1] and inodes[4] == inodes[2] and inodes[5] == inodes[3] != inodes[4]
