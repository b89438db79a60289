"""Prototype maths on hand-made embeddings (FedProto, FedTGP) and the features the rules read."""

import math

import numpy as np
import pytest
import torch

from peerkd.student.models import build_model
from peerkd.student.prototypes import (
    embedding_width,
    head_of,
    projection,
    prototype_loss,
    weighted_prototypes,
    with_features,
)
from strategies.fedtgp import adaptive_margin, tgp_loss


def test_prototype_loss_by_hand():
    # Row 0: (1, 1) vs (0, 1): squared distance 1, mean over 2 dims 0.5; row 1 has no prototype.
    e = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [5.0, 5.0]])
    assert prototype_loss(e, t, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
    # Both rows: (0.5 + 25) / 2 = 12.75; weights of a shard's repeated rows weigh them so.
    assert prototype_loss(e, t, torch.tensor([1.0, 1.0])).item() == pytest.approx(12.75)
    assert prototype_loss(e, t, torch.tensor([3.0, 1.0])).item() == pytest.approx((1.5 + 25) / 4)
    assert prototype_loss(e, t, torch.zeros(2)).item() == 0.0


def test_weighted_prototypes_by_hand():
    # Class 0: (0, 0) from 1 sample and (3, 6) from 2: (2, 4). Class 1: held by nobody.
    means = torch.tensor([[[0.0, 0.0], [9.0, 9.0]], [[3.0, 6.0], [7.0, 7.0]]])
    counts = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    protos, valid = weighted_prototypes(means, counts)
    torch.testing.assert_close(protos, torch.tensor([[2.0, 4.0], [0.0, 0.0]]))
    assert valid.tolist() == [True, False]


def test_tgp_loss_and_margin_by_hand():
    # P = [[0], [2]], p = [0] of class 0: distances (0, 2); CE of logits (0, -2) = log(1 + e^-2).
    g, p, y = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0]]), torch.tensor([0])
    assert tgp_loss(g, p, y, 0.0).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # A margin of 1 adds 1 to the true class's distance: logits (-1, -2): log(1 + e^-1).
    assert tgp_loss(g, p, y, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # δ: the largest distance between held classes' centres (3-4-5 triangle), capped.
    centres = torch.tensor([[0.0, 0.0], [3.0, 4.0], [100.0, 100.0]])
    assert adaptive_margin(centres, torch.tensor([True, True, False]), 100.0) == pytest.approx(5.0)
    assert adaptive_margin(centres, torch.tensor([True, True, False]), 2.0) == 2.0
    assert adaptive_margin(centres, torch.tensor([True, False, False]), 2.0) == 0.0


def test_projection_is_the_identity_or_keeps_norms():
    torch.testing.assert_close(projection(4, 4), torch.eye(4))
    up = projection(3, 8)  # orthonormal rows: |x R| = |x|
    torch.testing.assert_close(up @ up.T, torch.eye(3), atol=1e-5, rtol=0)
    down = projection(8, 3)  # orthonormal columns
    torch.testing.assert_close(down.T @ down, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(projection(3, 8), up)  # the same for every student of a width


@pytest.mark.parametrize(("name", "shape"), [("mlp64", (1, 8, 8)), ("cnn", (1, 8, 8)), ("tlm", (32,))])
def test_features_are_what_the_head_reads(name, shape):
    model = build_model(name, shape, 10 if len(shape) == 3 else 28, seed=0)
    x = torch.randn(4, *shape) if len(shape) == 3 else torch.randint(0, 28, (4, *shape))
    feats, out = with_features(model, lambda: model(x))
    torch.testing.assert_close(head_of(model)(feats), out)
    assert feats.shape[-1] == embedding_width(model)
    assert not head_of(model)._forward_hooks  # the hook is gone after the call
    np.testing.assert_array_equal(out.detach().numpy(), model(x).detach().numpy())
