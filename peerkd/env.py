"""Environment every peerkd entry point sets before Flower or Ray start: nothing phones home."""

from __future__ import annotations

import os

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray >= 2.50 warns on every actor start unless this is set; we never set num_gpus=0
    # expecting Ray to hide GPUs, so the new behaviour is what we want.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    # Ray would otherwise ship the working directory to each actor.
    "RAY_DEDUP_LOGS": "1",
}


def set_quiet_env() -> None:
    """Set the no-telemetry variables, keeping any value the user already exported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
