"""Load a model from what the user names: a file (format chosen by content) or named weights.

Formats:

* a torchxrayvision (or any ``torch.nn.Module``) checkpoint saved whole with ``torch.save``;
* a state dict (bare, or under ``state_dict`` / ``model``) for a torchxrayvision DenseNet;
* TorchScript (``torch.jit.save``);
* ONNX (``.onnx``), run with ONNX Runtime;
* torchxrayvision named weights such as ``densenet121-res224-pc``, through torchxrayvision's
  own download-and-cache (``~/.torchxrayvision/models_data`` or ``cache_dir``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.card import ModelCard, default_card, find_card, read_card
from inference.errors import ModelLoadError

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torchscript", "onnx")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def configure_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads to the cores present (or ``threads``); return it."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    n = max(1, int(threads))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@dataclass
class LoadedModel:
    """A model ready to run: its card, weights hash and backend.

    ``module`` is the eager PyTorch module (``None`` for ONNX); explanations need it.
    """

    card: ModelCard
    sha256: str
    backend: str
    source: str
    module: torch.nn.Module | None = None
    session: Any = None
    device: str = "cpu"
    _input_name: str = field(default="input", repr=False)
    #: ONNX Runtime: at most this many images per run (``None``: the whole batch at once).
    #: On CPU a larger run is no faster per image, and the session's memory arena keeps,
    #: for the life of the process, the memory of the largest run it has seen.
    session_batch: int | None = None
    #: One forward (or explanation) at a time: each already uses every core
    #: (``configure_threads``); two at once make two thread pools fight over the same cores
    #: and hold two sets of activations. Reentrant, so a holder may call ``raw``.
    compute: threading.RLock = field(default_factory=threading.RLock, repr=False,
                                     compare=False)

    @property
    def info(self) -> dict[str, str]:
        """What every result carries about the model."""
        return {
            "name": self.card.name,
            "version": self.card.version,
            "sha256": self.sha256,
            "backend": self.backend,
        }

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a ``(N, 1, size, size)`` float32 batch; outputs as it gives them."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        session = self.session  # once: a background export may switch it on meanwhile
        if session is not None:
            step = self.session_batch or len(batch) or 1
            with self.compute:
                outs = [np.asarray(session.run(None, {self._input_name: batch[i:i + step]})[0])
                        for i in range(0, max(len(batch), 1), step)]
            return outs[0] if len(outs) == 1 else np.concatenate(outs)
        assert self.module is not None
        with self.compute, torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        return out.float().cpu().numpy()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Independent per-label probabilities ``(N, labels)`` (sigmoid of logits; no softmax)."""
        return self.to_probabilities(self.raw(batch))

    def to_probabilities(self, raw: np.ndarray) -> np.ndarray:
        """The network's outputs as probabilities, as the card says they are."""
        out = np.asarray(raw).astype(np.float64)
        if self.card.output == "logits":
            out = 1.0 / (1.0 + np.exp(-out))
        return out.astype(np.float32)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _densenet_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """torchxrayvision DenseNet constructor arguments that fit ``state``."""
    import re

    blocks: dict[int, int] = {}
    for key in state:
        m = re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.", key)
        if m:
            b, n = int(m.group(1)), int(m.group(2))
            blocks[b] = max(blocks.get(b, 0), n)
    if not blocks:
        raise ModelLoadError("state dict has no dense blocks: not a torchxrayvision DenseNet")
    growth = int(state["features.denseblock1.denselayer1.conv2.weight"].shape[0])
    bottleneck = int(state["features.denseblock1.denselayer1.conv1.weight"].shape[0])
    return {
        "block_config": tuple(blocks[b] for b in sorted(blocks)),
        "growth_rate": growth,
        "num_init_features": int(state["features.conv0.weight"].shape[0]),
        "bn_size": bottleneck // growth,
        "num_classes": int(state["classifier.weight"].shape[0]),
        "in_channels": int(state["features.conv0.weight"].shape[1]),
    }


def _from_state_dict(state: dict[str, Any]) -> torch.nn.Module:
    import torchxrayvision as xrv

    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not isinstance(state.get("classifier.weight"), torch.Tensor):
        raise ModelLoadError(
            "state dict has no 'classifier.weight': not a torchxrayvision DenseNet; "
            "save the whole model with torch.save(model) or export TorchScript/ONNX"
        )
    try:
        module = xrv.models.DenseNet(weights=None, **_densenet_config(state))
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise ModelLoadError(f"state dict does not fit a torchxrayvision DenseNet: {first}") from e
    return module


def _output_kind(module: torch.nn.Module) -> str:
    if getattr(module, "op_threshs", None) is not None or getattr(module, "apply_sigmoid", False):
        return "probabilities"
    return "logits"


def _module_labels(module: torch.nn.Module, n_outputs: int) -> list[str] | None:
    labels = getattr(module, "targets", None) or getattr(module, "pathologies", None)
    if labels is not None and len(labels) == n_outputs and any(labels):
        return [str(x) for x in labels]
    return None


def _probe_outputs(model: LoadedModel, size: int) -> int:
    out = model.raw(np.zeros((1, 1, size, size), dtype=np.float32))
    if out.ndim != 2 or out.shape[0] != 1:
        raise ModelLoadError(f"model output has shape {out.shape}; expected (batch, labels)")
    return int(out.shape[1])


def _load_torch_file(path: Path) -> torch.nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        # A model saved whole is a pickle of its classes: only load files you trust.
        logger.info("%s is a whole pickled model; loading it with its classes", path.name)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ModelLoadError(f"{path.name} is not a loadable PyTorch checkpoint: {e}") from e
    except Exception as e:
        raise ModelLoadError(f"{path.name} is not a PyTorch checkpoint: {e}") from e
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict):
        return _from_state_dict(obj)
    raise ModelLoadError(f"{path.name} holds a {type(obj).__name__}, not a model or state dict")


def _named_weights(name: str, cache_dir: str | Path | None) -> tuple[torch.nn.Module, Path]:
    import torchxrayvision as xrv

    url = xrv.models.model_urls[name]["weights_url"]
    folder = Path(cache_dir).expanduser() if cache_dir else Path(xrv.utils.get_cache_dir())
    local = folder / os.path.basename(url)
    try:
        module = xrv.models.get_model(name, cache_dir=str(folder) + os.sep)
    except Exception as e:
        if not local.is_file() or local.stat().st_size == 0:
            local.unlink(missing_ok=True)
            raise ModelLoadError(
                f"named weights {name!r} are not in the cache ({local}) and could not be "
                f"downloaded ({type(e).__name__}); this machine may have no network. Copy the "
                f"file there, or pass the weights file itself with --model FILE"
            ) from e
        raise ModelLoadError(f"named weights {name!r} failed to load from {local}: {e}") from e
    return module, local


def load_model(
    spec: str | Path,
    *,
    card: str | Path | ModelCard | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> LoadedModel:
    """Load ``spec`` (a file, or torchxrayvision named weights) with its card.

    The card is ``card`` if given, else one found beside the weights, else built from the
    checkpoint (:func:`inference.card.default_card`). The weights' sha256 is computed here.
    """
    import torchxrayvision as xrv

    path = Path(spec).expanduser()
    named = not path.exists() and str(spec) in xrv.models.model_urls
    if not path.exists() and not named:
        raise ModelLoadError(
            f"model {str(spec)!r} is neither a file nor torchxrayvision named weights "
            f"(e.g. densenet121-res224-pc)"
        )
    if named:
        module, weights_file = _named_weights(str(spec), cache_dir)
        backend, session = "torch", None
    else:
        weights_file = path
        if path.suffix.lower() == ".onnx":
            backend, module, session = "onnx", None, _onnx_session(path)
        elif _is_torchscript(path):
            backend, session = "torchscript", None
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:
                raise ModelLoadError(f"{path.name} is not loadable TorchScript: {e}") from e
        else:
            backend, session = "torch", None
            module = _load_torch_file(path)
    sha = sha256_file(weights_file)
    if module is not None:
        module.eval().to(device)
    if isinstance(card, str | Path):
        card = read_card(card)
    elif card is None and not named:
        card = find_card(path)
    model = LoadedModel(
        card=card or default_card("pending", "pending", 1, labels=["x"]),
        sha256=sha, backend=backend, source=str(spec), module=module, session=session,
        device=device,
    )
    if session is not None:
        model._input_name = session.get_inputs()[0].name
    size = card.preprocessing.size if card else 224
    n_outputs = _probe_outputs(model, size)
    if card is None:
        name = f"torchxrayvision {spec}" if named else path.stem
        output = _output_kind(module) if backend == "torch" else "logits"
        labels = _module_labels(module, n_outputs) if module is not None else None
        thresholds = None
        if named:
            # op_norm calibrates every output so that its operating point maps to 0.5.
            thresholds = [0.5] * n_outputs
        card = default_card(name, f"sha256:{sha[:12]}", n_outputs, labels, output, thresholds)
    if len(card.labels) != n_outputs:
        raise ModelLoadError(
            f"model card names {len(card.labels)} labels, the model gives {n_outputs} outputs"
        )
    model.card = card
    logger.info("model %s %s (%s, sha256 %s) loaded", card.name, card.version, backend, sha[:12])
    return model


def _onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as configured, not reset
    # ONNX Runtime's pool spins between runs by default: CPU the node's decoding needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelLoadError(f"{path.name} is not a loadable ONNX model: {e}") from e
