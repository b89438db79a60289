"""Shared test setup: Flower and Ray stay offline and quiet."""

import pytest

import peerkd  # noqa: F401  (sets FLWR_TELEMETRY_ENABLED=0 etc. before anything imports flwr)


@pytest.fixture
def flower_identity():
    """Messages can be built outside a run once Flower's task identity is set (as
    run_simulation does); strategy unit tests build real request and reply Messages."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
