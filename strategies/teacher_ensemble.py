"""Ensemble teacher: teacher-guided distillation from the averaged logits of several
teachers (different seeds) trained on the server split — ensembles give better-calibrated
soft labels than one teacher (Hinton et al. 2015, §3; FedDF's fusion uses the same idea)."""

from __future__ import annotations

from strategies.teacher import TeacherDistillation


class EnsembleTeacher(TeacherDistillation):
    """Average of ``members`` server-trained teachers' logits."""

    name = "teacher_ensemble"

    def __init__(self, alpha: float = 1.0, temperature: float = 4.0, model: str = "auto", epochs: int = 30, members: int = 3):
        super().__init__(alpha, temperature, model, epochs)
        self.n_members = members

    def members(self) -> int:
        return self.n_members
