"""Teacher-guided distillation from a teacher that saw more data than any client: the ``teacher``
rule with ``teacher_data=pool`` (the server split and every private row no client holds), as
the teacher of Iyer 2024 was pretrained on far more text than its students. Its own name lets
one ``peerkd compare`` or ``sweep`` set it beside the server-split teacher."""

from __future__ import annotations

from strategies.teacher import TeacherDistillation


class PoolTeacher(TeacherDistillation):
    """``teacher`` with ``teacher_data=pool`` by default."""

    name = "teacher_pool"

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 0.0,
        teacher: str = "auto",
        teacher_epochs: int = 30,
        teacher_data: str = "pool",
    ):
        super().__init__(alpha, temperature, teacher, teacher_epochs, teacher_data)
