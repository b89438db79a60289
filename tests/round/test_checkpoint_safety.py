"""A results folder cannot run code, and a damaged checkpoint is one line: pickle bombs planted as
each checkpoint file are never executed, damaged or forged files are refused (``CheckpointError``,
naming ``resume`` and how to start over), and no source loads with pickle."""

import json
import pickle
import random
import re
import shutil
from pathlib import Path

import pytest
import torch

from peerkd.batched import BatchedEngine
from peerkd.errors import RunInterrupted
from peerkd.round.checkpoint import CHECKPOINT_DIR, SERVER_FILE, Checkpoint, CheckpointError, load_client
from peerkd.round.contract import ServerContext
from peerkd.round.hook import RoundHook
from peerkd.round.run import run_on
from peerkd.round.spec import RunSpec
from peerkd.world.build import WorldSpec, build_world
from simulations.cli import main
from strategies import build_strategy

SPEC = RunSpec(world=WorldSpec(dataset="digits", num_clients=3, seed=0), rounds=2, epochs=1, students=("mlp32",))
RUN = ["run", "strategy=peer", "data=digits", "num_clients=3", "rounds=2", "train.epochs=1", "seed=0"]
RUN += ["students=[mlp32]", "engine.name=batched", "engine.device=cpu"]
REPO = Path(__file__).parents[2]


class Bomb:
    """Unpickled, it creates ``marker``: what a crafted checkpoint would do with the user's account."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class StopBeforeRound2(RoundHook):
    def select(self, server_round, node_ids, client_of):
        if server_round > 1:
            raise RunInterrupted("stopped before round 2")
        return node_ids


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A run directory whose checkpoint holds round 1 of a peer run (batched engine)."""
    out = tmp_path_factory.mktemp("made") / "run"
    with pytest.raises(RuntimeError, match="without writing"):
        run_on(BatchedEngine(3, device="cpu"), SPEC, build_strategy("peer"), out, {}, hooks=[StopBeforeRound2()])
    return out


@pytest.fixture
def run_dir(checkpointed, tmp_path) -> Path:
    """A copy of ``checkpointed`` to damage."""
    return Path(shutil.copytree(checkpointed, tmp_path / "run"))


def server_json(out: Path) -> dict:
    return json.loads((out / CHECKPOINT_DIR / SERVER_FILE).read_text())


def rewrite(out: Path, change) -> None:
    """Apply ``change`` to server.json's document and write it back."""
    doc = server_json(out)
    change(doc)
    (out / CHECKPOINT_DIR / SERVER_FILE).write_text(json.dumps(doc))


def tensor_file(out: Path) -> Path:
    return out / CHECKPOINT_DIR / server_json(out)["tensors"]["file"]


def plant_tensor_file(out: Path, write) -> None:
    """Replace the tensor file by what ``write(path)`` writes, with its true SHA-256 in server.json."""
    import hashlib

    path = tensor_file(out)
    write(path)
    rewrite(out, lambda d: d["tensors"].update(sha256=hashlib.sha256(path.read_bytes()).hexdigest()))


def refusal(action) -> str:
    """The message of the CheckpointError ``action()`` raises, checked to be one line naming resume."""
    with pytest.raises(CheckpointError) as err:
        action()
    message = str(err.value)
    assert err.value.field == "resume" and "\n" not in message and "resume=false" in message, message
    return message


def test_the_bomb_is_live(tmp_path):
    # The bombs below are real: loaded the unsafe way, each creates its marker.
    pickle.loads(pickle.dumps(Bomb(tmp_path / "raw")))
    torch.save(Bomb(tmp_path / "zip"), tmp_path / "bomb.pt")
    torch.load(tmp_path / "bomb.pt", weights_only=False)
    assert (tmp_path / "raw").exists() and (tmp_path / "zip").exists()


def _bomb_as_server_json(out, marker):
    (out / CHECKPOINT_DIR / SERVER_FILE).write_bytes(pickle.dumps(Bomb(marker)))


def _bomb_as_tensor_file(out, marker):
    plant_tensor_file(out, lambda path: torch.save(Bomb(marker), path))


def _bomb_as_raw_tensor_file(out, marker):
    plant_tensor_file(out, lambda path: path.write_bytes(pickle.dumps(Bomb(marker))))


def _bomb_as_old_server_pkl(out, marker):
    (out / CHECKPOINT_DIR / SERVER_FILE).unlink()
    (out / CHECKPOINT_DIR / "server.pkl").write_bytes(pickle.dumps(Bomb(marker)))


@pytest.mark.parametrize(
    "plant, says",
    [
        (_bomb_as_server_json, "server.json is not JSON"),
        (_bomb_as_tensor_file, "it was not unpickled"),
        (_bomb_as_raw_tensor_file, "it was not unpickled"),
        (_bomb_as_old_server_pkl, "server.pkl: it is a pickle written by an older peerkd"),
    ],
)
def test_a_pickle_bomb_in_a_checkpoint_is_never_executed(plant, says, run_dir, tmp_path):
    # Prepare
    marker = tmp_path / "pwned"
    plant(run_dir, marker)
    # Execute / Assert: refused in one line; the bomb's code never ran.
    message = refusal(Checkpoint(run_dir, "batched").read)
    assert not marker.exists()
    assert str(run_dir / CHECKPOINT_DIR) in message and says in message


def test_a_pickle_bomb_as_a_client_file_is_never_executed(tmp_path):
    # Prepare: client 0's student file of round 1 is a bomb (torch's zip format).
    marker = tmp_path / "pwned"
    torch.save(Bomb(marker), tmp_path / "c0-r1.pt")
    # Execute / Assert
    message = refusal(lambda: load_client(str(tmp_path), 0, 1))
    assert not marker.exists() and "c0-r1.pt is damaged or holds objects" in message


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    """One bit of the tensor data changed: the zip records carry no CRC, the file's SHA-256 catches it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


DAMAGES = {
    "empty server.json": lambda out: (out / CHECKPOINT_DIR / SERVER_FILE).write_bytes(b""),
    "truncated server.json": lambda out: _truncate(out / CHECKPOINT_DIR / SERVER_FILE),
    "random bytes": lambda out: (out / CHECKPOINT_DIR / SERVER_FILE).write_bytes(random.Random(0).randbytes(4096)),
    "a JSON list": lambda out: (out / CHECKPOINT_DIR / SERVER_FILE).write_text("[]"),
    "another format": lambda out: rewrite(out, lambda d: d.update(format="other")),
    "a newer version": lambda out: rewrite(out, lambda d: d.update(version=3)),
    "a wrong-typed field": lambda out: rewrite(out, lambda d: d.update(latest=[1, 2])),
    "a wrong-typed round": lambda out: rewrite(out, lambda d: d.update(round="1")),
    "an unknown entry": lambda out: rewrite(out, lambda d: d.update(rule={"eval": "print(1)"})),
    "a tensor not in the file": lambda out: rewrite(out, lambda d: d.update(rule={"tensor": "nowhere"})),
    "a tensor file outside": lambda out: rewrite(out, lambda d: d["tensors"].update(file="../../x.pt")),
    "a missing tensor file": lambda out: tensor_file(out).unlink(),
    "a truncated tensor file": lambda out: _truncate(tensor_file(out)),
    "a flipped bit in the tensor file": lambda out: _flip_a_byte(tensor_file(out)),
    "random bytes with their hash": lambda out: plant_tensor_file(
        out, lambda p: p.write_bytes(random.Random(1).randbytes(4096))
    ),
    "a tensor file of another kind": lambda out: plant_tensor_file(out, lambda p: torch.save([1, 2], p)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_refused_in_one_line(damage, run_dir):
    # Prepare
    DAMAGES[damage](run_dir)
    # Execute / Assert
    message = refusal(Checkpoint(run_dir, "batched").read)
    assert message.startswith(f"resume: cannot resume from {run_dir / CHECKPOINT_DIR}")


def test_a_version_1_checkpoint_is_still_read(run_dir):
    # Prepare: the checkpoint as version 1 wrote it: clients' rows as one encoded dict each, no table
    def as_version_1(doc):
        table = doc["latest"]
        assert set(table) == {"rows", "fields", "values"}
        rows = [
            [k, {"dict": [list(p) for p in zip(table["fields"], v)]}] for k, v in zip(table["rows"], table["values"])
        ]
        doc.update(version=1, latest={"dict": rows})

    expected = Checkpoint(run_dir, "batched").read().state.latest
    rewrite(run_dir, as_version_1)
    # Execute
    saved = Checkpoint(run_dir, "batched").read()
    # Assert
    assert saved.state.latest == expected and len(expected) == 3


def context(spec: RunSpec) -> ServerContext:
    return ServerContext(build_world(spec.world), spec.students, spec.world.seed, torch.device("cpu"), 1, 1e-3, 32)


@pytest.mark.parametrize(
    "rule, spec, change, says",
    [
        (build_strategy("wml"), SPEC, None, "rule peer, not wml"),
        (build_strategy("peer", alpha=0.5), SPEC, None, "strategy.alpha: 1.0, now 0.5"),
        (build_strategy("peer"), RunSpec(world=WorldSpec(dataset="digits", num_clients=3, seed=1)), None, "world"),
        (build_strategy("peer"), SPEC, lambda d: d["rule"]["dict"].append(["targets_for", 1]), "rule.targets_for"),
        (build_strategy("peer"), SPEC, lambda d: d["students"]["dict"].clear(), "KeyError"),
    ],
)
def test_a_checkpoint_for_another_rule_world_or_of_forged_state_is_refused(rule, spec, change, says, run_dir):
    # Prepare
    if change:
        rewrite(run_dir, change)
    checkpoint = Checkpoint(run_dir, "batched", restore=lambda students: students["archs"])
    # Execute / Assert
    assert says in refusal(lambda: checkpoint.load(rule, context(spec)))


def test_the_cli_refuses_a_damaged_checkpoint_in_one_line_and_starts_over_with_resume_false(run_dir, capsys):
    # Prepare: a pickle bomb as server.json.
    marker = run_dir / "pwned"
    _bomb_as_server_json(run_dir, marker)
    # Execute: resume (as peerkd run resume=true, and as compare and sweep always do), then start over.
    code = main([*RUN, f"out={run_dir}", "resume=true"])
    err = capsys.readouterr().err.strip().splitlines()
    restarted = main([*RUN, f"out={run_dir}", "resume=false"])
    # Assert: exit 2 with one line, the bomb never ran; resume=false runs from round 1.
    assert code == 2 and len(err) == 1 and not marker.exists()
    assert err[0].startswith("peerkd: error: resume: cannot resume from") and "resume=false" in err[0]
    assert restarted == 0 and (run_dir / "summary.json").is_file()


def test_no_source_loads_with_pickle():
    # Every torch.load is weights-only; nothing imports pickle or lets NumPy unpickle.
    unsafe = re.compile(r"^\s*(import pickle|from pickle)|pickle\.(loads?|Unpickler)\b|allow_pickle\s*=\s*True")
    found = []
    for layer in ("peerkd", "simulations", "strategies"):
        for path in sorted((REPO / layer).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if unsafe.search(line) or ("torch.load(" in line and "weights_only=True" not in line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []
