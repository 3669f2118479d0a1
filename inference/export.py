"""Export a loaded PyTorch model to TorchScript or ONNX, with its card, checked for parity."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from inference.errors import InferenceError
from inference.factory import LoadedModel

logger = logging.getLogger(__name__)

#: Largest probability difference an exported model may show against the eager one.
PARITY_TOLERANCE = 1e-4


def _write_card(model: LoadedModel, path: Path) -> None:
    card = model.card.to_dict()
    card["description"] = (card.get("description") or "") + (
        f" Exported from {Path(model.source).name} (sha256 {model.sha256})."
    ).strip()
    path.with_name(path.name + ".card.json").write_text(json.dumps(card, indent=2))


def _example(model: LoadedModel, n: int = 2) -> torch.Tensor:
    size = model.card.preprocessing.size
    g = torch.Generator().manual_seed(0)
    return (torch.rand((n, 1, size, size), generator=g) * 2048 - 1024).float()


def export_torchscript(model: LoadedModel, path: str | Path) -> Path:
    """Trace the eager module to TorchScript at ``path`` (card beside it)."""
    if model.module is None or model.backend != "torch":
        raise InferenceError(
            f"TorchScript export needs an eager PyTorch model, not {model.backend}"
        )
    path = Path(path)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.module, _example(model), check_trace=False)
    traced.save(str(path))
    _write_card(model, path)
    return path


def export_onnx(model: LoadedModel, path: str | Path, opset: int = 17) -> Path:
    """Export the eager module to ONNX (dynamic batch) at ``path`` (card beside it)."""
    if model.module is None or model.backend != "torch":
        raise InferenceError(f"ONNX export needs an eager PyTorch model, not {model.backend}")
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.module, (_example(model),), str(path), input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    _write_card(model, path)
    return path


def parity(reference: LoadedModel, other: LoadedModel, n: int = 4) -> float:
    """Largest absolute probability difference between two models on the same inputs."""
    x = _example(reference, n).numpy()
    return float(np.max(np.abs(reference.probabilities(x) - other.probabilities(x))))
