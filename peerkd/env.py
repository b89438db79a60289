"""Environment every peerkd entry point sets before Flower or Ray start: nothing phones home,
and a simulated client sees a GPU only when its resources give it one."""

from __future__ import annotations

import os
import warnings

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # "1": Ray hides every GPU (CUDA_VISIBLE_DEVICES="") from an actor with num_gpus=0, so a
    # client trains on CUDA only when client resources give it a GPU. "0" (set here before)
    # left GPUs visible, and every "CPU" client of a GPU machine picked CUDA. Ray >= 2.50
    # plans to make "0" its default, so the value is pinned, not left to the default.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    # One line for log lines repeated by many actors.
    "RAY_DEDUP_LOGS": "1",
}

# Deployment timing (``peerkd-deploy bench``): a ClientApp appends one JSON line per message to
# $PEERKD_TIMING_LOG; a warm ClientApp sets $PEERKD_TASK_T0 (epoch s) when it takes a task.
TIMING_ENV = "PEERKD_TIMING_LOG"
TASK_T0_ENV = "PEERKD_TASK_T0"
QUICK_PULLS_ENV = "PEERKD_QUICK_PULLS"  # "0": Flower's 1 s first retry for a message object not there yet

# ray.init's FutureWarning about that default changing: the value above is deliberate.
_RAY_ACCEL_TIP = "Tip: In future versions of Ray, Ray will no longer override accelerator"


# "0": NumPy asks for no huge pages. On the 2-core VM a fresh 400 MB array (a round's logits at 10,000
# students) took 1.9-3.6 s to write with NumPy's huge-page advice (its default on Linux) and 0.17-0.23 s
# without: each huge page is faulted in and zeroed whole. Set before NumPy is imported by a child
# process (a Ray actor, a spawned bench variant); an exported value, "1" included, is kept.
HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def set_memory_env() -> None:
    """NumPy's huge-page advice off for this process and its children, unless the user set
    ``NUMPY_MADVISE_HUGEPAGE``."""
    if os.environ.setdefault(HUGEPAGE_ENV, "0") != "0":
        return
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    set_advice = getattr(multiarray, "_set_madvise_hugepage", None)
    if set_advice is not None:  # NumPy read the variable when it was imported, maybe before this
        set_advice(False)


def set_quiet_env() -> None:
    """Set the no-telemetry variables, keeping any value the user already exported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message=_RAY_ACCEL_TIP, category=FutureWarning)
