"""What the model says about one image: a probability and a threshold per label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    label: str
    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": round(float(self.probability), 6),
            "threshold": round(float(self.threshold), 6),
            "positive": self.positive,
        }


@dataclass(frozen=True)
class Prediction:
    """Per-label probabilities of one image, in the card's label order."""

    findings: tuple[Finding, ...]

    @property
    def positives(self) -> list[Finding]:
        return [f for f in self.findings if f.positive]

    def top(self, n: int = 3) -> list[Finding]:
        return sorted(self.findings, key=lambda f: -f.probability)[:n]

    def probability(self, label: str) -> float:
        for f in self.findings:
            if f.label == label:
                return f.probability
        raise KeyError(label)

    def labels_to_explain(self, most: int = 1) -> list[str]:
        """The positive findings to explain, most probable first, at most ``most``; when none
        is positive (or ``most`` is 0), the most probable finding alone."""
        positives = sorted(self.positives, key=lambda f: -f.probability)[:max(most, 0)]
        return [f.label for f in positives] or [self.top(1)[0].label]

    def default_label(self) -> str:
        """The label to explain by default: the most probable positive, else the top one."""
        return self.labels_to_explain(1)[0]
