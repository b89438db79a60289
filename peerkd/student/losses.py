"""Distillation losses: tensor in, tensor out.

Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": the soft-target KL is
computed at temperature T and multiplied by T² so its gradients keep their scale as T grows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_rows(logits: torch.Tensor) -> torch.Tensor:
    """Logits as rows of one prediction each: ``(B, C)`` as is, a text batch ``(B, L, V)`` as ``(B·L, V)``."""
    return logits.reshape(-1, logits.shape[-1])


def kd_loss(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(target/T) ‖ softmax(student/T)), averaged over the batch (text: over positions).

    Parameters
    ----------
    student_logits, target_logits : torch.Tensor
        Shape ``(B, C)``, or ``(B, L, V)`` for text. Targets carry no gradient.
    temperature : float
        Softening temperature T > 0.
    """
    log_p_student = F.log_softmax(as_rows(student_logits) / temperature, dim=-1)
    log_p_target = F.log_softmax(as_rows(target_logits).detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_target, reduction="batchmean", log_target=True)
    return kl * temperature**2


def distillation_loss(
    private_logits: torch.Tensor,
    labels: torch.Tensor,
    transfer_logits: torch.Tensor | None,
    target_logits: torch.Tensor | None,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """CE on the private batch + α · kd_loss on the transfer batch (CE alone without targets).

    Parameters
    ----------
    private_logits : torch.Tensor
        Student logits on a labelled private batch, ``(B, C)`` (text: ``(B, L, V)``).
    labels : torch.Tensor
        Labels of that batch, ``(B,)`` (text: ``(B, L)``).
    transfer_logits, target_logits : torch.Tensor | None
        Student and target logits on a transfer-set batch, ``(B', C)``.
    alpha : float
        Weight of the distillation term.
    temperature : float
        KD temperature.
    """
    loss = F.cross_entropy(as_rows(private_logits), labels.reshape(-1))
    if target_logits is not None and transfer_logits is not None and alpha > 0:
        loss = loss + alpha * kd_loss(transfer_logits, target_logits, temperature)
    return loss
