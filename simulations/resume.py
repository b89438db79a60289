"""Resuming a run in its results directory (``resume=true``; sweeps always resume).

A run checkpoints after every round (``peerkd.round.checkpoint``). ``prepare`` decides, before
a run starts, whether it continues from its checkpoint or starts afresh, and refuses to
continue a run made with other settings: ``config_change`` names the first difference (a
sweep asks it too, before it skips a finished run).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from peerkd.errors import ConfigError
from peerkd.round.checkpoint import Checkpoint
from peerkd.round.results import CONFIG_FILE, SUMMARY_FILE
from simulations.report import RUN_SETTINGS, flatten
from simulations.report_io import read_summary

log = logging.getLogger("peerkd")


def prepare(
    out_dir: str | Path, config: dict[str, Any], resume: bool, overwrite: bool = False
) -> dict[str, Any] | None:
    """With ``resume``: the summary of a run already finished in ``out_dir`` (nothing to run), else
    None after checking that a checkpoint there was made with ``config``'s settings. Without
    ``resume``: None, and any checkpoint there is removed (the run starts from round 1); a finished
    run there made with other settings is refused unless ``overwrite``.

    Raises
    ------
    ConfigError
        ``out_dir`` holds a run made with other settings (one line naming the first difference).
    CheckpointError
        Its checkpoint does not parse or verify (a ``ConfigError``: one line, how to start over).
    """
    out = Path(out_dir)
    checkpoint = Checkpoint(out, engine="")
    if not resume:
        if not overwrite and (out / SUMMARY_FILE).is_file() and (change := stored_change(out, config)):
            raise ConfigError(
                "overwrite",
                f"{out} holds a finished run made with other settings ({change})",
                "overwrite=true to replace it, or another out=",
            )
        checkpoint.clear()
        return None
    finished = (out / SUMMARY_FILE).is_file()
    if finished or checkpoint.exists():
        if change := stored_change(out, config):
            again = "resume=false overwrite=true to replace it" if finished else "resume=false to start it over"
            raise ConfigError(
                "resume",
                f"{out} holds a run made with other settings ({change})",
                f"the settings it was made with, or {again}",
            )
    if (out / SUMMARY_FILE).is_file():
        log.info("%s is finished already; nothing to resume", out)
        return read_summary(out)  # a damaged summary.json is one line (DamagedRun), not a traceback
    if checkpoint.exists():
        checkpoint.read()  # a damaged checkpoint is refused here, in one line, before any engine starts
    else:
        log.info("no checkpoint in %s: starting from round 1", out)
    return None


def stored_change(out_dir: Path, config: dict[str, Any]) -> str | None:
    """``config_change`` from the settings stored in ``out_dir``; a missing or unreadable
    config.yaml is a change too (those settings are unknown)."""
    import yaml

    try:
        old = yaml.safe_load((out_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return f"its {CONFIG_FILE} cannot be read: {getattr(exc, 'strerror', None) or type(exc).__name__}"
    if not isinstance(old, dict):
        return f"its {CONFIG_FILE} holds no settings"
    return config_change(old, config)


def config_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting that changes results and differs between two run configs, as
    ``key: old, now new``; None if they agree. Keys only one side has (settings added to
    peerkd since) are not compared."""
    a, b = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
    for key in sorted(set(a) & set(b)):
        if a[key] != b[key] and not key.startswith(RUN_SETTINGS):
            return f"{key}: {a[key]!r}, now {b[key]!r}"
    return None
