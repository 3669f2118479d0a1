"""Export a loaded PyTorch model to TorchScript or ONNX, with its card, checked for parity."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inference.errors import InferenceError
from inference.factory import LoadedModel, load_model

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


def export_onnx_isolated(model: LoadedModel, path: str | Path, *,
                         cache_dir: str | Path | None = None, timeout: float = 900) -> Path:
    """Export ``model`` to ONNX at ``path`` in a child process (``python -m inference.export``).

    The child loads the weights again from ``model.source`` with ``model``'s card and refuses
    them unless their sha256 is ``model``'s. What the export allocates (tracing, the graph,
    some 150 MB for a DenseNet121 that glibc keeps in the heap afterwards) and any crash of
    the exporter stay out of the calling process. Raises :class:`InferenceError` with the
    child's last line when it fails.
    """
    path = Path(path)
    card = path.with_name(path.name + ".input-card.json")
    card.write_text(json.dumps(model.card.to_dict()), encoding="utf-8")
    cmd = [sys.executable, "-m", "inference.export", str(model.source), str(path),
           "--sha256", model.sha256, "--card", str(card)]
    if cache_dir is not None:
        cmd += ["--weights-cache", str(cache_dir)]
    # One thread: the node serves on the cores meanwhile.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise InferenceError(f"the ONNX export took over {timeout:.0f} s") from e
    finally:
        card.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise InferenceError(f"the ONNX export process exited with {done.returncode}: "
                             f"{lines[-1] if lines else 'no message'}")
    return path


def enable_onnx_fast_path(model: LoadedModel, cache_dir: str | Path,
                          tolerance: float = PARITY_TOLERANCE,
                          exporter: Callable[[LoadedModel, Path], object] | None = None
                          ) -> bool:
    """Predict with ONNX Runtime when the exported model agrees within ``tolerance``.

    The export is cached in ``cache_dir`` under the weights' sha256. The eager module stays
    for explanations. Returns whether the fast path is on; when the export fails or
    disagrees, the model keeps predicting with PyTorch and the log says why.

    ``exporter(model, path)`` writes the export (default :func:`export_onnx`, in this
    process; the node passes :func:`export_onnx_isolated` and calls this from a background
    thread while ``model`` predicts: the check's PyTorch forward takes the model's lock like
    any other). The session is switched on only after it passed the check.
    """
    from inference.factory import _onnx_session

    if model.backend != "torch" or model.module is None or model.session is not None:
        return model.session is not None
    path = onnx_cache_path(model, cache_dir)
    # Its own name: an export left running by a node that stopped never shares a file with
    # the next one (only the finished file is renamed into place).
    tmp = path.with_suffix(f".onnx.{os.getpid()}-{threading.get_ident()}.part")
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            (exporter or export_onnx)(model, tmp)
            tmp.replace(path)
        session = _onnx_session(path)
    except Exception as e:
        logger.warning("ONNX export failed (%s); predicting with PyTorch", e)
        return False
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".card.json").unlink(missing_ok=True)
    x = _example(model, 4).numpy()
    reference = model.probabilities(x)
    name = session.get_inputs()[0].name
    # One image per run, as the node runs it (``session_batch``): the session's memory arena
    # keeps, for the life of the process, what its largest run needed.
    candidate = model.to_probabilities(np.concatenate(
        [np.asarray(session.run(None, {name: x[i:i + 1]})[0]) for i in range(len(x))]))
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


def main(argv: list[str] | None = None) -> int:
    """``python -m inference.export MODEL OUT``: the child of :func:`export_onnx_isolated`."""
    parser = argparse.ArgumentParser(prog="python -m inference.export",
                                     description="Export a PyTorch model to ONNX.")
    parser.add_argument("model", help="weights file or torchxrayvision named weights")
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--sha256", help="refuse weights with another sha256")
    parser.add_argument("--card", help="model card (default: beside the weights)")
    parser.add_argument("--weights-cache", help="torchxrayvision's weights cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        model = load_model(args.model, card=args.card, cache_dir=args.weights_cache)
        if args.sha256 and model.sha256 != args.sha256:
            raise InferenceError(f"{args.model} now has sha256 {model.sha256[:12]}, not "
                                 f"{args.sha256[:12]}: the weights changed since they were "
                                 "loaded")
        export_onnx(model, args.out)
    except InferenceError as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the exporter's own failure: one line for the parent's log
        print(f"export: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
