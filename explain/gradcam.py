"""Grad-CAM++ and the guided methods through M3d-CAM (``medcam.inject``).

The node's Grad-CAM is its own (:mod:`explain.cam` says why: medcam's ``gcam`` pairs a map
that torchxrayvision rectifies in place with the gradient before that). ``gcam`` stays
reachable here for comparison (the faithfulness tests measure how far it is off); Grad-CAM++
(``gcampp``) and Guided Grad-CAM (``ggcam``) read the same hooks, so they share that pairing.

medcam wraps a model so that calling it computes an attention map for a label. It is injected
once per (model copy, backend, layer) and kept; calls are serialised on the copy's lock.

Workarounds for medcam 0.1.x, all on our side (site-packages untouched):

* ``inject`` makes a *shallow* copy and registers hooks on the shared submodules, so it is
  given our private copy of the network (:mod:`explain.target`), never the predicting module.
* Its first call runs a "test run" with label ``"best"``, which refuses batches larger than
  one: we run it ourselves on one blank image right after injection.
* Grad-CAM++ (``gcampp``) indexes the logits with ``squeeze()``, which breaks for batches
  larger than one and for single-output models: images go one at a time, and the copy pads a
  single output to two (:class:`explain.target._Logits`).
* Gradients: the copy's parameters are frozen and a forward hook makes the graph start at the
  explained layer (``gcam``/``gcampp``), so only the layers above it are differentiated;
  guided backpropagation (``gbp``, ``ggcam``) asks for the input's gradient itself.
* medcam's maps are min-max normalised per image; a map whose values are all equal comes back
  as zeros, which the "not constant" sanity check then reports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import torch

from explain.errors import ExplainError
from explain.target import Target, default_layer

logger = logging.getLogger(__name__)

#: medcam backends by their medcam name.
BACKENDS = ("gcam", "gcampp", "gbp", "ggcam")
#: Backends that read a layer (guided backpropagation works on the input).
LAYER_BACKENDS = ("gcam", "gcampp", "ggcam")


def _inject(target: Target, backend: str, layer: str) -> Any:
    """The medcam-injected wrapper of ``target`` for ``backend`` and ``layer`` (cached)."""
    key = ("medcam", backend, layer)
    wrapped = target.cache.get(key)
    if wrapped is not None:
        return wrapped
    from medcam import medcam

    if backend in LAYER_BACKENDS and layer != "auto":
        target.ensure_entry(layer)
    medcam_layer = layer if layer == "auto" else f"net.{layer}"
    try:
        wrapped = medcam.inject(target.module, backend=backend, layer=medcam_layer,
                                label=None, retain_graph=False, replace=False)
        size = target.cache.get("input_size", 224)
        blank = torch.zeros((1, 1, size, size), device=target.device)
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):  # medcam prints its warnings
            warnings.filterwarnings("ignore", "Using a non-full backward hook")
            wrapped.test_run(_input(blank, backend, layer), internal=True)
    except (RuntimeError, ValueError, AttributeError) as e:
        raise ExplainError(f"medcam {backend} could not attach to layer {layer!r}: {e}") from e
    target.cache[key] = wrapped
    logger.debug("medcam %s injected at %s", backend, layer)
    return wrapped


def _input(batch: torch.Tensor, backend: str, layer: str) -> torch.Tensor:
    # With layer "auto" medcam may pick any layer: let the gradient reach them all.
    if layer == "auto" and backend in LAYER_BACKENDS:
        return batch.detach().clone().requires_grad_(True)
    return batch


def resolve_layer(target: Target, backend: str, layer: str | None) -> str:
    """The layer name used: ``layer``, else the architecture's default; checked to exist."""
    if backend not in LAYER_BACKENDS:
        return "input"
    if layer is None:
        return default_layer(target.net)
    if layer != "auto":
        target.layer_module(layer)
    return layer


def _resize(attention: np.ndarray, size: int) -> np.ndarray:
    import cv2

    attention = np.nan_to_num(np.asarray(attention, dtype=np.float32), nan=0.0)
    if attention.shape == (size, size):
        return attention
    # Pixel-centre aligned bilinear (as torch's align_corners=False).
    return cv2.resize(attention, (size, size), interpolation=cv2.INTER_LINEAR)


def gradcam_map(target: Target, batch: np.ndarray, index: int, *, backend: str = "gcam",
                layer: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """An attention map ``(size, size)`` float32 in ``[0, 1]`` for output ``index``.

    ``batch`` is one model input ``(1, 1, size, size)``. Returns the map on the model grid and
    the parameters that made it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"medcam backend {backend!r}: use one of {BACKENDS}")
    if target.scripted:
        raise ExplainError("the model is TorchScript, which takes no module hooks; medcam "
                           f"({backend}) needs the eager PyTorch checkpoint (.pt); SHAP works")
    size = int(batch.shape[-1])
    with target.lock:
        target.cache.setdefault("input_size", size)
        layer = resolve_layer(target, backend, layer)
        wrapped = _inject(target, backend, layer)
        x = _input(target.tensor(batch), backend, layer)
        try:
            with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
                # Guided backpropagation uses module backward hooks of the old kind; they act
                # on nn.ReLU modules (one autograd node each), where they are right.
                warnings.filterwarnings("ignore", "Using a non-full backward hook")
                wrapped(x, label=int(index))
        except (RuntimeError, ValueError) as e:
            raise ExplainError(f"medcam {backend} failed: {e}") from e
        attention = wrapped.get_attention_map()
        chosen = wrapped.medcam_dict.get("current_layer")
    if attention is None:
        raise ExplainError(f"medcam {backend} returned no attention map for layer {layer!r}")
    attention = np.asarray(attention)[0, 0]
    params = {
        "backend": backend,
        "library": "medcam",
        "layer": layer if layer != "auto" else f"auto:{str(chosen).removeprefix('net.')}",
        "feature_shape": [int(s) for s in attention.shape],
        "upsampling": "bilinear",
        "output": target.output,
    }
    return _resize(attention, size), params
