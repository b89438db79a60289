"""Ensemble teacher: teacher-guided distillation from the averaged logits of several
teachers (different seeds) trained on the server split — ensembles give better-calibrated
soft labels than one teacher (Hinton et al. 2015, §3; FedDF's fusion uses the same idea)."""

from __future__ import annotations

from peerkd.errors import check_range
from strategies.teacher import TeacherDistillation


class EnsembleTeacher(TeacherDistillation):
    """Average of ``members`` server-trained teachers' logits."""

    name = "teacher_ensemble"

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 0.0,
        teacher: str = "auto",
        teacher_epochs: int = 30,
        teacher_members: int = 3,
        teacher_data: str = "server",
    ):
        super().__init__(alpha, temperature, teacher, teacher_epochs, teacher_data)
        self.n_members = int(check_range("strategy.teacher_members", teacher_members, 1))

    def members(self) -> int:
        return self.n_members
