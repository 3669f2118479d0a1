"""The model card: what the model is, what it predicts, and how its input is prepared.

A card is a JSON or YAML file beside the weights (``<weights>.card.json``,
``<weights>.card.yaml``, or ``model_card.json`` / ``model_card.yaml`` in the same folder).
Without one, a card is built from what the checkpoint says (see :func:`default_card`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import ModelCardError

logger = logging.getLogger(__name__)

#: The 26 PadChest labels of the seed checkpoint, in output order.
PADCHEST_LABELS: tuple[str, ...] = (
    "Air Trapping", "Aortic Atheromatosis", "Aortic Elongation", "Atelectasis",
    "Bronchiectasis", "Cardiomegaly", "Consolidation", "Costophrenic Angle Blunting", "Edema",
    "Effusion", "Emphysema", "Fibrosis", "Flattened Diaphragm", "Fracture", "Granuloma",
    "Hemidiaphragm Elevation", "Hernia", "Hilar Enlargement", "Infiltration", "Mass", "Nodule",
    "Pleural_Thickening", "Pneumonia", "Pneumothorax", "Scoliosis", "Tuberculosis",
)  # fmt: skip

OUTPUT_KINDS = ("logits", "probabilities")
RESIZE_ENGINES = ("skimage", "skimage-reference", "cv2")
DEFAULT_INTENDED_USE = (
    "Research use only. Triage aid for frontal (PA/AP) adult chest radiographs; "
    "not for diagnostic use. Findings must be confirmed by a radiologist."
)


@dataclass(frozen=True)
class Preprocessing:
    """torchxrayvision preprocessing: scale to [-scale, scale], centre crop, resize to size."""

    scale: float = 1024.0
    crop: str = "center"
    size: int = 224
    resize: str = "skimage"

    def __post_init__(self) -> None:
        if self.crop != "center":
            raise ModelCardError(f"preprocessing.crop {self.crop!r}: only 'center' is supported")
        if self.resize not in RESIZE_ENGINES:
            raise ModelCardError(
                f"preprocessing.resize {self.resize!r}: use one of {RESIZE_ENGINES}"
            )
        if not isinstance(self.size, int) or not 16 <= self.size <= 2048:
            raise ModelCardError(
                f"preprocessing.size {self.size!r} must be an int in [16, 2048]"
            )


@dataclass(frozen=True)
class ModelCard:
    """Name, version, labels (output order), operating thresholds and preprocessing.

    A label that is the empty string marks an output the model has but does not report
    (torchxrayvision's named weights have such outputs).
    """

    name: str
    version: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    output: str = "logits"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    intended_use: str = DEFAULT_INTENDED_USE
    manufacturer: str = "cxr-node"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ModelCardError(f"name {self.name!r} must be a non-empty string")
        if not self.version or not isinstance(self.version, str):
            raise ModelCardError(f"version {self.version!r} must be a non-empty string")
        if not self.labels or not any(self.labels):
            raise ModelCardError("labels must name at least one output")
        if len(self.thresholds) != len(self.labels):
            raise ModelCardError(
                f"{len(self.thresholds)} thresholds for {len(self.labels)} labels"
            )
        for label, t in zip(self.labels, self.thresholds, strict=True):
            if label and not (isinstance(t, float | int) and 0.0 < t < 1.0):
                raise ModelCardError(f"threshold {t!r} of {label!r} must be in (0, 1)")
        if self.output not in OUTPUT_KINDS:
            raise ModelCardError(f"output {self.output!r}: use one of {OUTPUT_KINDS}")

    @property
    def reported(self) -> list[tuple[int, str, float]]:
        """(output index, label, threshold) of every reported output."""
        return [(i, lab, t) for i, (lab, t) in enumerate(zip(self.labels, self.thresholds,
                                                              strict=True)) if lab]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["thresholds"] = [float(t) for t in self.thresholds]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise ModelCardError(f"a model card is a mapping, not {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ModelCardError(f"unknown model card fields: {sorted(unknown)}")
        missing = {"name", "version", "labels"} - set(data)
        if missing:
            raise ModelCardError(f"model card misses {sorted(missing)}")
        data = dict(data)
        labels = tuple(str(x) for x in data["labels"])
        thresholds = data.get("thresholds", 0.5)
        if isinstance(thresholds, dict):
            unknown_labels = set(thresholds) - set(labels)
            if unknown_labels:
                raise ModelCardError(f"thresholds for unknown labels {sorted(unknown_labels)}")
            thresholds = [float(thresholds.get(lab, 0.5)) for lab in labels]
        elif isinstance(thresholds, int | float):
            thresholds = [float(thresholds)] * len(labels)
        data["labels"] = labels
        data["thresholds"] = tuple(float(t) for t in thresholds)
        data["version"] = str(data["version"])
        pre = data.get("preprocessing") or {}
        if not isinstance(pre, dict):
            raise ModelCardError("preprocessing must be a mapping")
        try:
            data["preprocessing"] = Preprocessing(**pre)
        except TypeError as e:
            raise ModelCardError(f"preprocessing: {e}") from e
        return cls(**data)


def card_candidates(weights: Path) -> list[Path]:
    """Where a card for ``weights`` is looked for, first match wins."""
    return [
        weights.with_name(weights.name + ".card.json"),
        weights.with_name(weights.name + ".card.yaml"),
        weights.with_suffix(".card.json"),
        weights.with_suffix(".card.yaml"),
        weights.parent / "model_card.json",
        weights.parent / "model_card.yaml",
    ]


def read_card(path: str | Path) -> ModelCard:
    """Read a JSON or YAML model card."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ModelCardError(f"cannot read model card {path}: {e.strerror}") from e
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ModelCardError(f"model card {path} is not valid {path.suffix[1:]}: {e}") from e
    try:
        return ModelCard.from_dict(data)
    except ModelCardError as e:
        raise ModelCardError(f"model card {path}: {e}") from e


def find_card(weights: Path) -> ModelCard | None:
    for candidate in card_candidates(weights):
        if candidate.is_file():
            logger.info("model card: %s", candidate)
            return read_card(candidate)
    return None


def default_card(
    name: str,
    version: str,
    n_outputs: int,
    labels: list[str] | None = None,
    output: str = "logits",
    thresholds: list[float] | None = None,
) -> ModelCard:
    """The card for a checkpoint that comes without one.

    Labels: those the checkpoint names (``labels``), else the 26 PadChest labels for a
    26-output model; anything else needs a card. Thresholds default to 0.5.
    """
    if labels is None or len(labels) != n_outputs:
        if n_outputs != len(PADCHEST_LABELS):
            raise ModelCardError(
                f"the model has {n_outputs} outputs and names no labels; put a model card "
                "beside the weights (<weights>.card.json) or pass --card"
            )
        labels = list(PADCHEST_LABELS)
    if thresholds is None:
        thresholds = [0.5] * n_outputs
    thresholds = [0.5 if (t is None or math.isnan(t)) else float(t) for t in thresholds]
    return ModelCard(name=name, version=version, labels=tuple(labels),
                     thresholds=tuple(thresholds), output=output)
