"""Text measures for a language-model world: perplexities against the floor and chance
(``peerkd.world.text.text_summary``) in the summary."""

from __future__ import annotations

from typing import Any

import numpy as np

from peerkd.round.hook import RoundHook, RunRecord
from peerkd.world.text import text_summary


class TextHook(RoundHook):
    """Adds ``text_summary`` of the test split (``test_x``, ``test_y``) of world ``name``."""

    def __init__(self, name: str, test_x: np.ndarray, test_y: np.ndarray):
        self.name, self.test_x, self.test_y = name, test_x, test_y

    def summary(self, record: RunRecord, per_client: list[dict[str, Any]]) -> dict[str, Any]:
        return text_summary(self.name, self.test_x, self.test_y, per_client)
