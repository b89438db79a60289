"""Short retries for message objects that are not there yet (flwr 1.39 waits 1 s, then 2 s, 4 s ...).

A Flower message travels as its metadata first and its objects (the arrays) after: the sender
pushes the message, then each object; the receiver pulls the message, then each object, and
an object not uploaded yet is asked for again after ``PULL_INITIAL_BACKOFF`` = 1 s, doubling
up to 10 s (``flwr.supercore.inflatable.inflatable_utils.pull_objects``). With polls of 0.05 s
a receiver is often that early: an 8-node round measured 1.2–1.4 s of such waits on the
SuperNodes (their pull from the SuperLink) and up to 3.5 s in the ClientApps (their pull
from the SuperNode). ``quick_pulls(module)`` makes ``module``'s ``pull_objects`` ask again
after ``OBJECT_RETRY_S``, doubling up to ``OBJECT_RETRY_CAP_S``; everything else is Flower's.
``PEERKD_QUICK_PULLS=0`` keeps Flower's (the ``flower`` baseline of ``peerkd-deploy bench``).
Upstream this would be a setting for those two defaults.
"""

from __future__ import annotations

import os
from functools import partial
from types import ModuleType

from peerkd.env import QUICK_PULLS_ENV

OBJECT_RETRY_S, OBJECT_RETRY_CAP_S = 0.02, 0.5  # an object not there yet: asked again after, doubling to the cap

__all__ = ["OBJECT_RETRY_CAP_S", "OBJECT_RETRY_S", "quick_pulls", "retry_settings"]


def retry_settings() -> dict[str, float]:
    """The keyword arguments of Flower's ``pull_objects`` (and ``pull_and_inflate_object_from_tree``) for
    the short retry; none (Flower's 1 s) with ``PEERKD_QUICK_PULLS=0``."""
    if os.environ.get(QUICK_PULLS_ENV, "1") == "0":
        return {}
    return {"initial_backoff": OBJECT_RETRY_S, "backoff_cap": OBJECT_RETRY_CAP_S}


def quick_pulls(module: ModuleType) -> None:
    """``module.pull_objects`` (Flower's, imported there) with ``retry_settings``; again, or with
    ``PEERKD_QUICK_PULLS=0``: nothing to do.

    RuntimeError if ``module`` has no Flower ``pull_objects`` (another flwr version).
    """
    from flwr.supercore.inflatable import inflatable_utils

    current = getattr(module, "pull_objects", None)
    if isinstance(current, partial) and current.func is inflatable_utils.pull_objects:
        return
    if current is not inflatable_utils.pull_objects:
        raise RuntimeError(f"{module.__name__} does not pull objects with Flower's pull_objects (flwr 1.39)")
    if settings := retry_settings():
        module.pull_objects = partial(current, **settings)
