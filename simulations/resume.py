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

log = logging.getLogger("peerkd")


def prepare(out_dir: str | Path, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """With ``resume``: the summary of a run already finished in ``out_dir`` (nothing to run), else
    None after checking that a checkpoint there was made with ``config``'s settings. Without
    ``resume``: None, and any checkpoint there is removed (the run starts from round 1).

    Raises
    ------
    ConfigError
        ``out_dir`` holds a run made with other settings (one line naming the first difference).
    CheckpointError
        Its checkpoint does not parse or verify (a ``ConfigError``: one line, how to start over).
    """
    import yaml

    out = Path(out_dir)
    checkpoint = Checkpoint(out, engine="")
    if not resume:
        checkpoint.clear()
        return None
    stored = out / CONFIG_FILE
    if (out / SUMMARY_FILE).is_file() or checkpoint.exists():
        old = yaml.safe_load(stored.read_text()) if stored.is_file() else {}
        if change := config_change(old or {}, config):
            raise ConfigError(
                "resume",
                f"{out} holds a run made with other settings ({change})",
                "the settings it was made with, or resume=false to start it over",
            )
    if (out / SUMMARY_FILE).is_file():
        log.info("%s is finished already; nothing to resume", out)
        return json.loads((out / SUMMARY_FILE).read_text())
    if checkpoint.exists():
        checkpoint.read()  # a damaged checkpoint is refused here, in one line, before any engine starts
    else:
        log.info("no checkpoint in %s: starting from round 1", out)
    return None


def config_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting that changes results and differs between two run configs, as
    ``key: old, now new``; None if they agree. Keys only one side has (settings added to
    peerkd since) are not compared."""
    a, b = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
    for key in sorted(set(a) & set(b)):
        if a[key] != b[key] and not key.startswith(RUN_SETTINGS):
            return f"{key}: {a[key]!r}, now {b[key]!r}"
    return None
