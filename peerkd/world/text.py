"""Text worlds: character tokens, a synthetic language with a known entropy rate, user text files.

A text sample is a window of ``SEQ_LEN + 1`` characters of one document: the input is its first
``SEQ_LEN`` token ids, the label its last ``SEQ_LEN`` (the next token at every position), so
a model's output is ``(N, SEQ_LEN, V)`` and the exchange sees ``N·SEQ_LEN`` rows of V logits.
Every window also carries its *source* (the style of the synthetic language, or the label a
text file gives a line), which stratifies the splits and drives the non-IID partition
(Dirichlet over sources).

``synthtext`` (built in, no download): documents from S = 4 styles, each an order-1 Markov
chain over 28 characters (a–z, space, full stop). A style's transition row mixes a sparse
row shared by all styles (3 successors), a sparse style-specific row (3 successors) and 3%
of uniform noise, so every chain is ergodic and its entropy rate
``H_s = Σ_a π_s(a) H(P_s(·|a))`` is exact. A document's style is drawn uniformly and its
first character from the style's stationary distribution π_s; nothing in the text names the
style, so the best possible predictor (Bayes over styles, ``bayes_cross_entropy``) has a
per-token cross-entropy slightly above the style-known rate near a window's start. That
exact Bayes cross-entropy on the held-out windows is the floor of any model's test loss
(perplexity floor ``exp`` of it).
"""

from __future__ import annotations

import codecs
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peerkd.errors import ConfigError

log = logging.getLogger("peerkd")

SEQ_LEN = 32  # tokens per window: short enough for tiny models on a 2-core machine
TEXT_SIZE = 4_000  # synthtext windows when no size is given
ALPHABET = "abcdefghijklmnopqrstuvwxyz ."
NUM_STYLES = 4
SUPPORT = 3  # successors per character, in the shared and in each style's own row
NOISE = 0.03  # uniform share of every transition row: ergodic chains, bounded loss
SOURCE_SEED = 0  # the language itself is fixed; world seeds only draw documents from it
TEXT_SUFFIX = ".txt"
# Byte-order marks and what they announce; UTF-32 LE's mark begins with UTF-16 LE's, so it is tested first.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
TEXT_ALLOWED = "text in UTF-8, Latin-1, or UTF-16/32 with a byte-order mark"


@dataclass(frozen=True)
class CharTokenizer:
    """Characters to token ids and back, over a fixed, sorted alphabet."""

    alphabet: str

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of ``text``; ValueError naming a character outside the alphabet."""
        index = {c: i for i, c in enumerate(self.alphabet)}
        try:
            return np.array([index[c] for c in text], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the alphabet") from exc

    def decode(self, ids: np.ndarray) -> str:
        """The text of token ids ``ids``."""
        return "".join(self.alphabet[int(i)] for i in np.asarray(ids).reshape(-1))


@dataclass(frozen=True)
class MarkovSource:
    """S order-1 Markov chains over V tokens: ``trans[s, a, b] = P_s(b | a)``, ``start[s] = π_s``."""

    trans: np.ndarray  # (S, V, V) float64, rows sum to 1
    start: np.ndarray  # (S, V) stationary distributions

    @property
    def num_styles(self) -> int:
        return self.trans.shape[0]

    def entropy_rates(self) -> np.ndarray:
        """Each style's entropy rate in nats per token: ``Σ_a π_s(a) H(P_s(·|a))``."""
        row_h = -(self.trans * np.log(np.clip(self.trans, 1e-300, None))).sum(axis=-1)  # (S, V)
        return (self.start * row_h).sum(axis=-1)

    def sample(self, styles: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
        """``(len(styles), length)`` token ids, one document per style id in ``styles``."""
        n, v = len(styles), self.trans.shape[-1]
        out = np.empty((n, length), dtype=np.int64)
        out[:, 0] = _draw(self.start[styles], rng)
        cum = np.cumsum(self.trans, axis=-1)
        for t in range(1, length):
            u = rng.random(n)[:, None]
            out[:, t] = np.minimum((u > cum[styles, out[:, t - 1]]).sum(axis=-1), v - 1)
        return out


def _draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of ``probs`` (rows are distributions)."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((u > np.cumsum(probs, axis=-1)).sum(axis=-1), probs.shape[-1] - 1)


def stationary(trans: np.ndarray) -> np.ndarray:
    """The stationary distribution of each chain in ``trans`` (``(S, V, V)`` -> ``(S, V)``): the
    left eigenvector of eigenvalue 1, normalised (unique: the chains are ergodic)."""
    out = []
    for p in trans:
        vals, vecs = np.linalg.eig(p.T)
        v = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
        out.append(v / v.sum())
    return np.array(out)


def markov_source(
    vocab: int = len(ALPHABET), styles: int = NUM_STYLES, support: int = SUPPORT, noise: float = NOISE, seed: int = 0
) -> MarkovSource:
    """The synthetic language: per style, ``(1 - noise)·(shared + own)/2 + noise/V`` rows,
    ``shared`` and ``own`` each Dirichlet(1) weights on ``support`` random successors."""
    rng = np.random.default_rng(seed)
    shared = _sparse_rows(vocab, support, rng)
    trans = np.stack(
        [(1 - noise) * (shared + _sparse_rows(vocab, support, rng)) / 2 + noise / vocab for _ in range(styles)]
    )
    return MarkovSource(trans, stationary(trans))


def _sparse_rows(vocab: int, support: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.zeros((vocab, vocab))
    for a in range(vocab):
        rows[a, rng.choice(vocab, support, replace=False)] = rng.dirichlet(np.ones(support))
    return rows


def bayes_cross_entropy(source: MarkovSource, windows: np.ndarray, prior: np.ndarray | None = None) -> float:
    """Mean cross-entropy (nats per predicted token) of the Bayes-optimal predictor on ``windows``.

    For window ``t_0..t_L`` it predicts ``t_k`` (k ≥ 1) with ``Σ_s p(s | t_0..t_{k-1}) P_s(t_k | t_{k-1})``,
    the style posterior starting from ``prior`` (uniform by default) times ``π_s(t_0)``. No
    model that sees only the window can do better on average: this is the test text's floor.

    Parameters
    ----------
    source : MarkovSource
        The language the windows were drawn from.
    windows : np.ndarray
        ``(N, L + 1)`` token ids.
    prior : np.ndarray | None
        ``(S,)`` probabilities of the styles.
    """
    s = source.num_styles
    prior = np.full(s, 1.0 / s) if prior is None else np.asarray(prior, dtype=np.float64)
    log_post = np.log(prior)[None] + np.log(source.start[:, windows[:, 0]]).T  # (N, S)
    total = 0.0
    for k in range(1, windows.shape[1]):
        step = np.log(source.trans[:, windows[:, k - 1], windows[:, k]]).T  # (N, S): log P_s(t_k | t_{k-1})
        post = log_post - log_post.max(axis=1, keepdims=True)
        post = np.exp(post) / np.exp(post).sum(axis=1, keepdims=True)
        total -= np.log((post * np.exp(step)).sum(axis=1)).sum()
        log_post = log_post + step
    return float(total / (len(windows) * (windows.shape[1] - 1)))


@functools.lru_cache(maxsize=1)
def builtin_source() -> MarkovSource:
    """The ``synthtext`` language (fixed: ``SOURCE_SEED``)."""
    return markov_source(seed=SOURCE_SEED)


def synth_windows(size: int, seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """``size`` windows of ``seq_len + 1`` tokens of ``synthtext`` (styles uniform, fixed draw:
    the world seed shuffles the splits, as for the other built-ins) and each window's style."""
    rng = np.random.default_rng(SOURCE_SEED)
    styles = rng.integers(0, NUM_STYLES, size)
    return builtin_source().sample(styles, seq_len + 1, rng), styles


def windows_to_samples(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (all but the last token) and next-token labels (all but the first) of ``windows``."""
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def read_text_file(path: Path, seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray, str, tuple[str, ...]]:
    """Windows of a user text file, each window's source id, the alphabet and the source names.

    One document per line, or one stream. A line ``source<TAB>text`` names its source (style,
    author, topic); lines without a tab share the source ``""``. Each source's documents are
    joined with newlines and cut into consecutive windows of ``seq_len + 1`` characters that
    overlap by one (every character is predicted once); the alphabet is the file's sorted
    characters (newline included, tab excluded). The bytes are decoded by ``decode_text``'s rule.
    """
    text = decode_text(path.read_bytes(), str(path))
    docs: dict[str, list[str]] = {}
    for line in text.splitlines():
        source, _, body = line.partition("\t") if "\t" in line else ("", "", line)
        if body.strip():
            docs.setdefault(source, []).append(body)
    alphabet = "".join(sorted({c for lines in docs.values() for c in "\n".join(lines)} | {"\n"}))
    tok = CharTokenizer(alphabet)
    windows, groups = [], []
    for g, lines in enumerate(docs.values()):
        ids = tok.encode("\n".join(lines) + "\n")
        n = (len(ids) - 1) // seq_len
        if n:
            idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None]
            windows.append(ids[idx])
            groups.append(np.full(n, g, dtype=np.int64))
    if not windows or sum(len(w) for w in windows) < 10:
        raise ConfigError("data.path", f"{str(path)!r} holds fewer than 10 windows of {seq_len + 1} characters")
    return np.concatenate(windows), np.concatenate(groups), alphabet, tuple(docs)


def decode_text(raw: bytes, name: str) -> str:
    """A text file's characters, by one rule: the encoding its byte-order mark names (UTF-8,
    UTF-16, UTF-32); else, if it holds a NUL byte (UTF-16 without a mark, a binary file), a
    refusal; else UTF-8; else Latin-1, where every byte is one character (a cp1252 file's curly
    quotes become control characters, consistently), with a warning."""
    for bom, encoding in BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as exc:
                problem = f"{name!r} has a {encoding} byte-order mark, but byte {exc.start} is not {encoding}"
                raise ConfigError("data.path", problem, TEXT_ALLOWED) from None
    if (nul := raw.find(b"\0")) >= 0:
        problem = f"{name!r} holds a NUL byte (offset {nul}) and no byte-order mark: UTF-16/32 without one, or not text"
        raise ConfigError("data.path", problem, TEXT_ALLOWED)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("data.path: %r is not UTF-8 (no byte-order mark); read as Latin-1, one character per byte", name)
        return raw.decode("latin-1")


def text_summary(name: str, test_x: np.ndarray, test_y: np.ndarray, per_client: list[dict]) -> dict:
    """A text run's summary fields: each client's perplexity ``exp(test loss)`` (added to its row
    in ``per_client``), their mean and worst (highest), and for ``synthtext`` the test text's floor
    (``bayes_cross_entropy``) in nats per token and as a perplexity."""
    ppls = []
    for row in per_client:
        row["ppl"] = None if row.get("loss") is None else math.exp(row["loss"])
        ppls.append(row["ppl"])
    known = [p for p in ppls if p is not None]
    out = {"ppl_mean": float(np.mean(known)) if known else None, "ppl_worst": max(known) if known else None}
    if name == "synthtext":
        floor = bayes_cross_entropy(builtin_source(), np.concatenate([test_x[:, :1], test_y], axis=1))
        out.update({"floor_nats": floor, "floor_ppl": math.exp(floor)})
    return out
