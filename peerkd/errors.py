"""Errors a user can fix: each names the field, what was given and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable


class RunInterrupted(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM) before its last round; it wrote no summary."""


class ConfigError(ValueError):
    """A bad setting or input, reported as one line: ``field: problem``.

    Parameters
    ----------
    field : str
        The config key or input the problem is in (``data.path``, ``partition.alpha``).
    problem : str
        What is wrong, in words.
    allowed : Iterable[str] | str | None
        The allowed values (listed) or range (a phrase), appended to the message.
    """

    def __init__(self, field: str, problem: str, allowed: Iterable[str] | str | None = None):
        self.field = field
        allowed_txt = allowed if allowed is None or isinstance(allowed, str) else ", ".join(sorted(allowed))
        self._parts = (field, problem, allowed_txt)
        super().__init__(f"{field}: {problem}" + ("" if allowed_txt is None else f" (allowed: {allowed_txt})"))

    def __reduce__(self):  # picklable, so that an error in a worker process reaches the parent intact
        return type(self), self._parts


def check_choice(field: str, value: str, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ConfigError naming ``field``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(field, f"unknown value {value!r}", allowed)
    return value


def check_range(
    field: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` if it lies in the interval, else raise ConfigError naming ``field``."""
    ok = True
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else _bound(low)
        hi = "inf" if high is None else _bound(high)
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(field, f"{value!r} is out of range", interval)
    return value


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"  # an int exactly: 2**20 is 1048576, not 1.04858e+06
