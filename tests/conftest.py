"""Shared test setup: Flower and Ray stay offline and quiet; the per-client reference of batched training."""

import pytest

import peerkd  # noqa: F401  (sets FLWR_TELEMETRY_ENABLED=0 etc. before anything imports flwr)


@pytest.fixture
def flower_identity():
    """Messages can be built outside a run once Flower's task identity is set (as
    run_simulation does); strategy unit tests build real request and reply Messages."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture
def train_alone():
    """The reference a batched cohort's round must equal: ``train_alone(world, models, round_,
    targets=None, sample_targets=None, **settings)`` trains model i on its own with ``train_model``
    on client i's private split, with the seed it gets in round ``round_`` (``round_seed(0, i,
    round_)``) and the round's shared transfer order, its own ``targets[i]`` / ``sample_targets[i]``
    and the shared ``settings``, and returns the losses."""
    from peerkd.student.training import round_seed, shared_transfer_seed, train_model

    def train(world, models, round_, targets=None, sample_targets=None, **settings):
        none = [None] * len(models)
        targets = none if targets is None else targets
        sample_targets = none if sample_targets is None else sample_targets
        return [
            train_model(
                m,
                *world.private(i),
                seed=round_seed(0, i, round_),
                transfer_seed=shared_transfer_seed(0, round_),
                targets=targets[i],
                sample_targets=sample_targets[i],
                **settings,
            )
            for i, m in enumerate(models)
        ]

    return train
