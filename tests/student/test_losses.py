import math

import pytest
import torch

from peerkd.student.losses import distillation_loss, kd_loss

# Target probabilities (3/4, 1/4) against a uniform student:
# KL = 3/4·ln(3/4 / 1/2) + 1/4·ln(1/4 / 1/2) = 0.75·ln 1.5 − 0.25·ln 2
KL_3_1 = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)  # 0.130812


def test_kd_loss_matches_hand_computed_kl_at_t1():
    # Prepare
    student = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([[math.log(3.0), 0.0]])
    # Execute
    loss = kd_loss(student, target, temperature=1.0)
    # Assert
    assert loss.item() == pytest.approx(KL_3_1, abs=1e-6)
    assert KL_3_1 == pytest.approx(0.130812, abs=1e-6)


def test_kd_loss_scales_by_t_squared():
    # At T=2 the target logits (2·ln 3, 0) soften to the same (3/4, 1/4): KL is unchanged, loss is 4·KL.
    student = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([[2 * math.log(3.0), 0.0]])
    assert kd_loss(student, target, temperature=2.0).item() == pytest.approx(4 * KL_3_1, abs=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_averages_over_batch():
    a = torch.tensor([[1.0, -2.0, 0.5]])
    assert kd_loss(a, a.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    # A batch of one matching row and one (3/4, 1/4) row: batchmean gives KL/2.
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert kd_loss(student, target, 1.0).item() == pytest.approx(KL_3_1 / 2, abs=1e-6)


def test_kd_loss_gives_no_gradient_to_targets():
    student = torch.zeros(1, 2, requires_grad=True)
    target = torch.tensor([[1.0, 0.0]], requires_grad=True)
    kd_loss(student, target, 2.0).backward()
    assert target.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_loss_is_ce_plus_alpha_kd():
    # CE of uniform logits on label 0 is ln 2; plus 0.5 · KL_3_1.
    logits = torch.tensor([[0.0, 0.0]])
    labels = torch.tensor([0])
    target = torch.tensor([[math.log(3.0), 0.0]])
    total = distillation_loss(logits, labels, logits, target, alpha=0.5, temperature=1.0)
    assert total.item() == pytest.approx(math.log(2.0) + 0.5 * KL_3_1, abs=1e-6)  # 0.758553


def test_distillation_loss_without_targets_is_plain_ce():
    logits = torch.tensor([[0.0, 0.0]])
    assert distillation_loss(logits, torch.tensor([1]), None, None, 1.0, 4.0).item() == pytest.approx(math.log(2.0))
