"""Deploying peerkd on real Flower nodes (SuperLink + SuperNodes). Work in progress."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``peerkd-deploy``."""
    print("peerkd-deploy: not implemented yet", file=sys.stderr)
    return 2
