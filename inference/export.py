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


def onnx_cache_path(model: LoadedModel, cache_dir: str | Path) -> Path:
    """Where :func:`enable_onnx_fast_path` keeps ``model``'s export (by weights hash)."""
    return Path(cache_dir) / f"{model.sha256}.onnx"


def enable_onnx_fast_path(model: LoadedModel, cache_dir: str | Path,
                          tolerance: float = PARITY_TOLERANCE,
                          subject: LoadedModel | None = None) -> bool:
    """Predict with ONNX Runtime when the exported model agrees within ``tolerance``.

    The export is cached in ``cache_dir`` under the weights' sha256. The eager module stays
    for explanations. Returns whether the fast path is on; when the export fails or
    disagrees, the model keeps predicting with PyTorch and the log says why.

    ``subject``: a copy of ``model`` (its own module) to export and check instead, so that
    this can run in a background thread while ``model`` predicts and explains (explanations
    hook into the module). The session is switched on only after it passed the check.
    """
    from inference.factory import _onnx_session

    if model.backend != "torch" or model.module is None or model.session is not None:
        return model.session is not None
    subject = subject or model
    if subject.sha256 != model.sha256 or subject.module is None:
        raise ValueError("subject must be a copy of the model (same weights, a module)")
    path = onnx_cache_path(model, cache_dir)
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".onnx.part")
            export_onnx(subject, tmp)
            tmp.with_name(tmp.name + ".card.json").unlink(missing_ok=True)
            tmp.replace(path)
        session = _onnx_session(path)
    except Exception as e:
        logger.warning("ONNX export failed (%s); predicting with PyTorch", e)
        return False
    x = _example(model, 4).numpy()
    reference = subject.probabilities(x)
    name = session.get_inputs()[0].name
    candidate = model.to_probabilities(np.asarray(session.run(None, {name: x})[0]))
    difference = float(np.max(np.abs(candidate - reference)))
    if difference > tolerance:
        logger.warning("ONNX Runtime differs from PyTorch by %.2g (> %.0e); predicting with "
                       "PyTorch", difference, tolerance)
        return False
    model._input_name = name
    model.session = session
    model.backend = "torch+onnxruntime"
    logger.info("prediction by ONNX Runtime (max difference %.1e from PyTorch)", difference)
    return True
