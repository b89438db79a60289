"""Shared test setup: Flower and Ray stay offline and quiet."""

import peerkd  # noqa: F401  (sets FLWR_TELEMETRY_ENABLED=0 etc. before anything imports flwr)
