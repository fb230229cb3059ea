"""Labelled examples and how many of them a backend got right, and labelled examples both backends
answered: what the accuracy gates read. Apart from ``controller.analysis`` so that
``controller.cascade_window`` (which analysis imports) can count its lanes' labels in them too."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Labels:
    """Labelled examples, and how many of them the backend got right."""

    total: float = 0.0
    correct: float = 0.0


@dataclass(frozen=True)
class PairedLabels:
    """Labelled examples that both backends answered (one live, one on shadow traffic), by which
    was right: the order of ``gateway.metric_names.PAIRED_OUTCOMES``."""

    both_correct: float = 0.0
    teacher_only: float = 0.0
    student_only: float = 0.0
    both_wrong: float = 0.0

    @property
    def total(self) -> float:
        return self.both_correct + self.teacher_only + self.student_only + self.both_wrong
