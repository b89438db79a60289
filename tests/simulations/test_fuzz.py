"""Property-based tests (hypothesis): replies, user files and configs that nobody wrote by hand.

- Replies: records of any kind, dtype, shape and byte content into ``screen_reply`` never
  raise; the answer is a rejection with a one-line reason, or an accepted reply that the
  rule can aggregate.
- User files: random bytes, CSV text in several encodings, .npz arrays of any shape and dtype:
  ``load_dataset`` / ``build_world`` give a valid world or one ConfigError.
- Configs: random ``peerkd run`` overrides exit 0 (``--check``: valid) or 2 with one line.
- Results folders: random bytes, cuts, changed bytes and values of another type in each file a
  finished run writes (summary.json, config.yaml, metrics.jsonl, provenance.json): the run is read
  or skipped for one named file; ``peerkd report`` writes a report or one error line; a sweep run
  again finishes the run (kept or redone) or refuses in one line. Never a traceback.

All in-process, seeded (``derandomize``), with bounded example counts so the file runs in
about a minute. ``pytest --hypothesis-show-statistics tests/simulations/test_fuzz.py`` reports the counts.
"""

from __future__ import annotations

import io
import itertools
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from peerkd.errors import ConfigError
from peerkd.round.contract import ServerContext
from peerkd.round.screening import screen_reply
from peerkd.wire import protocol as P
from peerkd.wire.codec import encode_logits
from peerkd.world.build import WorldSpec, build_world

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
WORLD = build_world(WorldSpec(dataset="digits", num_clients=3, seed=0))
SHAPE = (len(WORLD.transfer_x), WORLD.num_classes)
FUZZ_RULES = ("peer", "fedavg", "fd", "wml", "dsfl", "teacher")


@cache
def rule(name: str):
    """A rule set up on the digits world (once per rule: setup trains teachers)."""
    from strategies import build_strategy, rule_settings

    quick = {k: v for k, v in {"teacher_epochs": 1, "server_epochs": 1}.items() if k in rule_settings(name)}
    s = build_strategy(name, **quick)
    s.setup(ServerContext(WORLD, ("mlp64",), 0, torch.device("cpu"), 1, 1e-3, 32))
    return s


def _identity() -> None:
    """Messages can be built outside a run once Flower's task identity is set."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


# --- replies ----------------------------------------------------------------------------

GOOD = {P.METRIC_PARTITION: 1, P.METRIC_NUM_EXAMPLES: 10, P.METRIC_TEST_ACC: 0.5, P.METRIC_TEST_LOSS: 1.2}
DTYPES = ["float32", "float16", "float64", "int64", "int8", "bool", "<U2", "|S3", "object", "complex64", "nonsense", ""]


def _npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-5, 5), max_size=3),
    st.lists(st.floats(allow_nan=True), max_size=3),
)
shapes = st.one_of(
    st.just(SHAPE),
    st.just((SHAPE[1], SHAPE[1])),
    st.just((SHAPE[1],)),
    st.lists(st.integers(0, 12), max_size=3).map(tuple),
    st.just((10**9, 10**9)),
)


@st.composite
def arrays(draw, like=None):
    """A Flower Array: a declared dtype and shape (often those of the array ``like`` it replaces),
    and bytes that may or may not match them."""
    from flwr.app import Array

    dtype, shape = draw(st.sampled_from(DTYPES)), draw(shapes)
    if like is not None and draw(st.booleans()):
        dtype = like.dtype
    if like is not None and draw(st.integers(0, 2)):
        shape = tuple(like.shape)
    kind = draw(st.sampled_from(["match", "random", "text", "truncated", "other", "strings"]))
    small = not shape or max(shape) < 10**6
    size = int(np.prod(shape)) if small else 4
    if kind in ("match", "truncated"):
        try:
            values = np.asarray(draw(st.lists(st.floats(width=32), min_size=size, max_size=size)), np.float32)
            data = _npy(values.astype(dtype).reshape(shape))
        except (TypeError, ValueError):
            data = b""
        data = data[: len(data) // 2] if kind == "truncated" else data
    elif kind == "random":
        data = draw(st.binary(max_size=256))
    elif kind == "text":
        data = draw(st.text(max_size=64)).encode("utf-8")
    elif kind == "strings":
        data = _npy(np.full(shape if small else (2,), "ab"))
    else:
        data = _npy(np.zeros(draw(st.sampled_from([(2, 2), SHAPE, (SHAPE[0],)])), np.float64))
    return Array(dtype=dtype, shape=tuple(shape), stype=draw(st.sampled_from(["numpy.ndarray", "torch"])), data=data)


@st.composite
def records(draw):
    """A record of any of Flower's three kinds, with fuzzed contents."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    kind = draw(st.sampled_from(["arrays", "logits", "config", "metrics"]))
    if kind == "logits":  # well-formed bytes, any values (NaN, huge)
        values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=4))
        return encode_logits(np.resize(np.asarray(values, np.float32), SHAPE))
    if kind == "arrays":
        names = draw(st.lists(st.sampled_from([P.ARRAY_LOGITS, P.ARRAY_COUNTS, P.ARRAY_MASK, "x"]), max_size=3))
        return ArrayRecord({n: draw(arrays()) for n in names})
    if kind == "config":
        return ConfigRecord({"arch": draw(st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=8)))})
    return MetricRecord({"arch": draw(numbers)})


def valid_content(name: str) -> dict:
    """The records an honest client sends rule ``name`` (the start of every fuzzed reply)."""
    from flwr.app import ArrayRecord, MetricRecord

    from peerkd.wire.codec import to_array

    rng = np.random.default_rng(0)
    content = {P.KEY_METRICS: MetricRecord(dict(GOOD))}
    c = WORLD.num_classes
    if name == "fedavg":
        content[P.KEY_ARRAYS] = rule(name).arrays
    elif name == "fd":
        means, counts = rng.normal(size=(c, c)).astype(np.float32), np.full(c, 3, np.float32)
        content[P.KEY_LOGITS] = ArrayRecord({P.ARRAY_LOGITS: to_array(means), P.ARRAY_COUNTS: to_array(counts)})
    else:
        content[P.KEY_LOGITS] = encode_logits(rng.normal(size=SHAPE))
    if name == "wml":
        content[P.KEY_PROBE] = encode_logits(rng.normal(size=(len(rule(name).y_server), c)))
    return content


@st.composite
def replies(draw, name: str):
    """An honest reply to rule ``name`` with 0-3 mutations: a metric changed, dropped or added;
    one array inside a record forged; a record replaced by one of another kind; a record added."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    content = valid_content(name)
    metrics = dict(content[P.KEY_METRICS])
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["metric", "drop", "array", "record", "extra"]))
        if what == "metric":
            metrics[draw(st.sampled_from([*GOOD, P.METRIC_TRAIN_LOSS, P.METRIC_TRAIN_S, "secret"]))] = draw(numbers)
        elif what == "drop":
            metrics.pop(draw(st.sampled_from(sorted(GOOD))), None)
        elif what == "array":
            key = draw(st.sampled_from(sorted(k for k in content if k != P.KEY_METRICS)))
            record = content[key]
            target = draw(st.sampled_from(sorted(record.keys()) + ["new"]))
            like = record.get(target) if isinstance(record, ArrayRecord) else None
            content[key] = ArrayRecord({**record, target: draw(arrays(like))})
        else:
            key = draw(st.sampled_from(sorted(content))) if what == "record" else draw(st.sampled_from(RECORD_NAMES))
            content[key] = draw(records())
    if isinstance(content[P.KEY_METRICS], MetricRecord):
        content[P.KEY_METRICS] = MetricRecord(metrics)
    request = Message(RecordDict(), dst_node_id=7, message_type=P.MSG_DISTILL)
    return Message(RecordDict(content), reply_to=request)


RECORD_NAMES = [P.KEY_LOGITS, P.KEY_ARRAYS, P.KEY_PROBE, P.KEY_INFO, "extra"]


@pytest.mark.parametrize("name", FUZZ_RULES)
@FUZZ
@given(data=st.data())
def test_screen_reply_never_raises_and_an_accepted_reply_aggregates(name, data):
    _identity()
    strategy = rule(name)
    try:
        reply = data.draw(replies(name))
    except (TypeError, ValueError):  # a record Flower itself refuses to build: not a reply anyone can send
        reject()
    # Execute
    values, reason = screen_reply(reply, strategy, 3)
    # Assert
    event("accepted" if values is not None else f"rejected: {' '.join(reason.split()[:2])}")
    if values is None:
        assert isinstance(reason, str) and reason and "\n" not in reason and len(reason) < 400
    else:
        assert reason is None and 0 <= values[P.METRIC_PARTITION] < 3
        strategy.aggregate_round(1, [reply])
        strategy.agreement_logits([reply])


# --- user files -------------------------------------------------------------------------

_names = itertools.count()


def _write(tmp: Path, suffix: str, data: bytes) -> str:
    """A fresh file per example (loaders cache by path and mtime)."""
    path = tmp / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    return str(path)


def _check_world_or_config_error(path: str) -> None:
    """The property: a valid dataset and world, or one ConfigError, nothing else."""
    from peerkd.world.data import load_dataset

    try:
        data = load_dataset("file", path)
        world = build_world(WorldSpec(dataset="file", data_path=path, num_clients=2, min_size=1, seed=0))
    except ConfigError as exc:  # one line that names its field
        event(f"refused: {exc.field}")
        assert exc.field and "\n" not in str(exc)
        return
    event("loaded")
    assert data.x.dtype == np.float32 and np.isfinite(data.x).all() and len(data.x) == len(data.y) >= 10
    assert data.y.dtype == np.int64 and data.num_classes >= 2 and set(np.unique(data.y)) <= set(range(data.num_classes))
    assert len(world.splits.test) > 0


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-files")


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".csv", ".npz"]))
def test_random_bytes_are_a_dataset_or_one_config_error(tmp, data, suffix):
    _check_world_or_config_error(_write(tmp, suffix, data))


cells = st.one_of(
    st.integers(-3, 3).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "a", "café", '"q,uoted"', "1e400", "NaN", "\x00"]),
    st.text(max_size=5),
)


@st.composite
def csv_texts(draw):
    """CSV text: a clean table (feature columns and a class column) with 0-3 faults: a repeated
    or missing column name, odd cells, short rows, a continuous label, few rows."""
    width, n = draw(st.integers(1, 4)), draw(st.integers(10, 40))
    header = [f"f{i}" for i in range(width)] + ["label"]
    classes = draw(st.sampled_from([["0", "1"], ["a", "b", "c"], ["1", "2", "3", "4"]]))
    rows = [
        [f"{draw(st.floats(-5, 5)):.3f}" for _ in range(width)] + [draw(st.sampled_from(classes))] for _ in range(n)
    ]
    for _ in range(draw(st.integers(0, 3))):
        fault = draw(st.sampled_from(["header", "cell", "short", "continuous", "few", "bom-like"]))
        r = draw(st.integers(0, len(rows) - 1))
        c = draw(st.integers(0, max(len(rows[r]) - 1, 0)))
        if fault == "header":
            header[c] = draw(st.sampled_from(["f0", "label", "", "lábel", "f 1"]))
        elif fault == "cell" and rows[r]:
            rows[r][c] = draw(cells)
        elif fault == "short":
            rows[r] = rows[r][:-1]
        elif fault == "continuous":
            rows = [row[:-1] + [f"{draw(st.floats(-1, 1)):.4f}"] for row in rows]
        elif fault == "few":
            rows = rows[: draw(st.integers(0, 9))] or [[]]
        else:
            header[0] = "\ufeff" + header[0]
    return "\n".join(",".join(row) for row in [header, *rows])


@FUZZ
@given(text=csv_texts(), encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]))
def test_csv_text_in_any_encoding_is_a_dataset_or_one_config_error(tmp, text, encoding):
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        reject()
    _check_world_or_config_error(_write(tmp, ".csv", data))


@st.composite
def npz_files(draw):
    """An .npz with x (N, D) floats and y class ids, with 0-3 faults: an array missing or extra, any
    shape or dtype, NaN or infinity, too few rows."""
    n, d = draw(st.integers(10, 40)), draw(st.integers(1, 6))
    arrays = {"x": np.arange(n * d, dtype=np.float32).reshape(n, d) % 7, "y": np.arange(n) % draw(st.integers(1, 4))}
    dims = st.lists(st.integers(0, 14), max_size=4).map(tuple)
    dtypes = st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "<U2", "complex64"])
    for _ in range(draw(st.integers(0, 3))):
        key, fault = draw(st.sampled_from(["x", "y", "z"])), draw(st.sampled_from(["shape", "dtype", "drop", "value"]))
        if fault == "drop":
            arrays.pop(key, None)
        elif fault == "shape":
            shape = draw(dims)
            arrays[key] = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) % 3
        elif fault == "dtype" and key in arrays:
            with np.errstate(invalid="ignore"):
                dtype = draw(dtypes)
                arrays[key] = arrays[key].astype(int).astype(dtype) if dtype == "<U2" else arrays[key].astype(dtype)
        elif key in arrays and arrays[key].size:
            arrays[key] = arrays[key].astype(np.float64)
            arrays[key].flat[draw(st.integers(0, arrays[key].size - 1))] = draw(st.sampled_from([np.nan, np.inf, 0.5]))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@FUZZ
@given(data=npz_files())
def test_npz_arrays_of_any_shape_and_dtype_are_a_dataset_or_one_config_error(tmp, data):
    _check_world_or_config_error(_write(tmp, ".npz", data))


# --- configs ----------------------------------------------------------------------------

KEYS = {
    "seed": st.one_of(st.integers(-3, 3), st.sampled_from([2**32 - 1, 2**32, 2**70, -(2**63)])),
    "num_clients": st.sampled_from([-1, 0, 1, 2, 3, 10**6]),
    "rounds": st.sampled_from([-1, 0, 1, 10**9]),
    "train.epochs": st.sampled_from([-1, 0, 1]),
    "train.lr": st.sampled_from(["0", "-1", "nan", "inf", "1e-3", "11"]),
    "train.batch_size": st.sampled_from([-1, 0, 1, 10**12]),
    "data.test_frac": st.sampled_from(["0", "0.002", "0.5", "1", "-0.1", "nan", "null"]),
    "data.public_frac": st.sampled_from(["0", "0.1", "0.9", "nan", "null"]),
    "partition": st.sampled_from(["iid", "dirichlet", "shard", "nope"]),
    "partition.alpha": st.sampled_from(["0", "-1", "0.3", "inf", "nan"]),
    "partition.min_size": st.sampled_from([-1, 0, 1, 10, 10**6]),
    "partition.classes_per_client": st.sampled_from([-1, 0, 1, 2, 11]),
    "students": st.sampled_from(["[mlp32]", "[]", "[nope]", "mlp32", "[mlp32,cnn]"]),
    "strategy": st.sampled_from(["peer", "fedavg", "teacher", "fd", "wml", "nope"]),
    "strategy.alpha": st.sampled_from(["-1", "0.5", "nan", "1000"]),
    "strategy.temperature": st.sampled_from(["0", "4", "-1", "inf"]),
    "participation": st.sampled_from(["0", "0.5", "1", "2", "nan"]),
    "clients_per_round": st.sampled_from([-1, 0, 2, 100]),
    "engine.name": st.sampled_from(["batched", "flower", "nope"]),
    "engine.device": st.sampled_from(["auto", "cpu", "cuda", "tpu"]),
    "engine.chunk": st.sampled_from([-1, 0, 5]),
    "round_timeout": st.sampled_from(["0", "-5", "nan", "1"]),
    "data.transfer": st.sampled_from(["public", "noise", "imbalanced", "mnist1d", "nope"]),
    "data.transfer_size": st.sampled_from([-1, 0, 50, 10**6]),
    "resources.num_cpus": st.sampled_from(["0", "-1", "0.5"]),
    "resources.num_gpus": st.sampled_from(["0", "1", "-1"]),
    "data.standardize": st.sampled_from(["true", "maybe", "0"]),
    "out": st.sampled_from(["/proc/x", "/dev/null", "''", "runs-fuzz/x"]),
    "verbose": st.sampled_from(["false", "3"]),
    "nonsense": st.sampled_from(["1"]),
}
junk = st.text(alphabet=" =,[]{}'\"\\:$%@~+-abc019.\u00e9", max_size=12)


@st.composite
def overrides(draw, keys=None, junk_share=8):
    """Up to 4 ``key=value`` overrides; about one value in ``junk_share`` (0: none) is junk text."""
    chosen = draw(st.lists(st.sampled_from(keys or sorted(KEYS)), unique=True, max_size=4))
    out = [
        f"{k}={draw(junk) if junk_share and not draw(st.integers(0, junk_share - 1)) else draw(KEYS[k])}"
        for k in chosen
    ]
    if junk_share and draw(st.integers(0, 9)) == 0:
        out.append(draw(junk))
    return out


# Keys whose every accepted value still gives a run of seconds (no huge rounds, sizes or epochs).
RUNNABLE = (
    "seed", "partition", "partition.alpha", "students", "strategy", "strategy.alpha", "strategy.temperature",
    "participation", "data.test_frac", "data.public_frac", "engine.chunk", "train.lr",
)  # fmt: skip


@settings(FUZZ, max_examples=4)
@given(args=overrides(RUNNABLE, junk_share=0))
def test_a_config_that_passes_check_runs_to_a_summary(capsys, tmp_path_factory, args):
    from simulations.cli import main

    out = tmp_path_factory.mktemp("fuzz-run") / "run"
    base = ["data=digits", "num_clients=3", "rounds=1", "train.epochs=1", f"out={out}"]
    if main(["run", *base, *args, "--check"]) != 0:
        event("refused by --check")
        return
    # Execute: the same overrides, run for real (batched engine).
    code = main(["run", *base, *args])
    # Assert
    event(f"ran: exit {code}")
    assert code == 0, capsys.readouterr().err
    assert (out / "summary.json").is_file()


@settings(FUZZ, max_examples=120)
@given(args=overrides())
def test_any_run_overrides_exit_0_or_2_with_one_line(capsys, tmp_path_factory, args):
    from simulations.cli import main

    base = ["data=digits", "num_clients=3", "rounds=1", f"out={tmp_path_factory.getbasetemp() / 'fuzz-out'}"]
    # Execute
    code = main(["run", *base, *args, "--check"])
    # Assert
    captured = capsys.readouterr()
    event(f"exit {code}" + (f" {captured.err.split(':')[2].strip()}" if code == 2 else ""))
    if code == 0:
        assert captured.out.splitlines()[-1].startswith("ok: ")
    else:
        err = captured.err.strip()
        assert code == 2 and err.startswith("peerkd: error: ") and "\n" not in err and "Traceback" not in err, err


# --- results folders --------------------------------------------------------------------

RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl", "provenance.json")
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real finished run (seconds), copied for every example."""
    from simulations.cli import main

    out = tmp_path_factory.mktemp("fuzz-made") / "run"
    assert main(["run", "data=digits", "rounds=2", "num_clients=3", f"out={out}"]) == 0
    return out


def _swap(draw, name: str, text: bytes) -> bytes:
    """One value of the file swapped for one of another type (or a key dropped); metrics: in one line."""
    import json

    import yaml

    if name == "metrics.jsonl":
        lines = text.splitlines()
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = _swap(draw, "line.json", lines[i]) if draw(st.booleans()) else draw(st.binary(max_size=40))
        return b"\n".join(lines) + b"\n"
    tree = yaml.safe_load(text) if name == "config.yaml" else json.loads(text)
    node = tree
    while isinstance(node[key := draw(st.sampled_from(sorted(node)))], dict) and node[key] and draw(st.booleans()):
        node = node[key]
    if draw(st.integers(0, 5)):
        node[key] = draw(values)
    else:
        del node[key]
    return yaml.safe_dump(tree).encode() if name == "config.yaml" else json.dumps(tree).encode()


@st.composite
def damaged(draw, name: str, original: bytes) -> bytes:
    """``original`` (the file ``name`` of a finished run) damaged: random bytes, cut short, one byte
    changed, a value of another type, or the whole file one value of another type."""
    import json

    how = draw(st.sampled_from(["bytes", "truncate", "byte", "swap", "swap", "document"]))
    event(f"{name}: {how}")
    if how == "bytes":
        return draw(st.binary(max_size=512))
    if how == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if how == "byte":
        i = draw(st.integers(0, len(original) - 1))
        return original[:i] + bytes([draw(st.integers(0, 255))]) + original[i + 1 :]
    if how == "document":
        return json.dumps(draw(values)).encode()
    return _swap(draw, name, original)


def _damage_copy(data, run: Path, root: Path) -> tuple[Path, list[str]]:
    """A copy of ``run`` at ``root/x`` with one or two of its files damaged; the copy and those files' names."""
    import shutil

    shutil.copytree(run, root / "x")
    names = data.draw(st.lists(st.sampled_from(RUN_FILES), min_size=1, max_size=2, unique=True))
    for name in names:
        path = root / "x" / name
        path.write_bytes(data.draw(damaged(name, path.read_bytes())))
    return root / "x", names


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_a_damaged_run_is_read_or_skipped_with_one_reason(finished_run, tmp_path_factory, data):
    from simulations.plots import report_figures
    from simulations.report import report_markdown
    from simulations.report_io import DamagedRun, load_run

    x, names = _damage_copy(data, finished_run, tmp_path_factory.mktemp("fuzz-results"))
    # Execute: read the run as `peerkd report` does.
    try:
        run = load_run(x)
    except DamagedRun as exc:
        # Assert: skipped for one of the damaged files, in one line that names the run and the file.
        event(f"skipped: {exc.file}")
        assert exc.file in names and str(exc).startswith(f"{x}: {exc.file}") and "\n" not in str(exc)
        return
    # Assert: what was read makes the report's text and figures (damaged lines and provenance left out).
    event("read")
    report_markdown([run])
    report_figures([run])


@settings(FUZZ, max_examples=8)  # each renders its plots: seconds
@given(data=st.data())
def test_report_of_a_damaged_folder_is_a_report_or_one_line(finished_run, tmp_path_factory, capsys, data):
    import shutil

    from simulations.cli import main

    root = tmp_path_factory.mktemp("fuzz-report")
    x, _ = _damage_copy(data, finished_run, root)
    if data.draw(st.booleans()):
        shutil.copytree(finished_run, root / "good")
    # Execute
    code = main(["report", str(root)])
    # Assert: a report (the damaged run in it or listed as skipped), or one error line; never a traceback.
    err = capsys.readouterr().err.strip().splitlines()
    event(f"exit {code}")
    if code == 0:
        md = (root / "report.md").read_text()
        assert f"- `{x}`: " in md or f"**{1 + (root / 'good').exists()} finished runs**" in md
        assert all(line.startswith("peerkd: warning: ") for line in err)
    else:
        assert code == 2 and err[-1].startswith("peerkd: error: dir: every finished run") and len(err) == 2


SWEEP = ["sweep", "data=digits", "rounds=2", "num_clients=3", "rules=[peer]", "seeds=[0]", "report=false"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """One real finished sweep of one run (seconds), copied for every example."""
    from simulations.cli import main

    out = tmp_path_factory.mktemp("fuzz-made") / "sweep"
    assert main([*SWEEP, f"out={out}"]) == 0
    return out


@settings(FUZZ, max_examples=3)  # each may redo the run: seconds
@given(data=st.data())
def test_a_sweep_relaunched_on_damaged_files_finishes_or_says_why_in_one_line(
    finished_sweep, tmp_path_factory, capsys, data
):
    import shutil

    from simulations.cli import main
    from simulations.report_io import read_summary

    out = tmp_path_factory.mktemp("fuzz-sweep") / "sweep"
    shutil.copytree(finished_sweep, out)
    run, _ = _damage_copy(data, out / "peer-seed0", out / "damaged")
    shutil.rmtree(out / "peer-seed0")
    run.rename(out / "peer-seed0")
    if data.draw(st.booleans()):
        (out / "sweep.json").write_bytes(data.draw(damaged("sweep.json", (out / "sweep.json").read_bytes())))
    # Execute: the same command again.
    code = main([*SWEEP, f"out={out}"])
    # Assert: the run finished (kept, or redone), or refused in one line (a config.yaml that reads as other settings).
    captured = capsys.readouterr()
    event(f"exit {code}")
    if code == 0:
        assert "1 runs (" in captured.out and read_summary(out / "peer-seed0")["strategy"] == "peer"
    else:
        err = captured.err.strip().splitlines()[-1]
        assert code == 2 and err.startswith("peerkd: error: out: ") and "other settings" in err, captured.err
