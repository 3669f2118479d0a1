"""Grad-CAM (Selvaraju et al. 2017) with PyTorch's public hooks, several labels per forward pass.

The feature map is the explained layer's output **as the layers above read it**: a forward
hook hands the rest of the network a tensor of our own and keeps it; the channel weights are
the spatial mean of the label's logit gradient with respect to that same tensor, after the
forward pass. Where the network changes the layer's output in place (torchxrayvision's and
torchvision's DenseNet apply ``F.relu(..., inplace=True)`` to ``features.norm5``), activations
and gradients are thus both of the rectified map, and for a DenseNet (global average pooling,
then one linear layer) the map equals CAM (Zhou et al. 2016) exactly: each position's share of
the label's logit.

Why not medcam's ``gcam``: medcam keeps the hooked output by reference (so it sees the in-place
ReLU's result) but takes its gradient through a tensor hook registered *before* that ReLU, i.e.
the gradient of the map before rectification. Pairing the two is neither Grad-CAM of the raw
map nor of the rectified one; on a DenseNet121 nodule detector its peak sat a 7 x 7 cell away
from the plain Grad-CAM's in 13 of 20 images (issue #15). ``tests/test_explain_cam.py``
compares this module with a textbook hook-based Grad-CAM and with CAM.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from explain.errors import ExplainError
from explain.target import Target, default_layer

logger = logging.getLogger(__name__)


def _resize(model_grid: np.ndarray, size: int) -> np.ndarray:
    """Pixel-centre aligned bilinear up-sampling (torch's ``align_corners=False``)."""
    import cv2

    if model_grid.shape == (size, size):
        return model_grid
    return cv2.resize(model_grid, (size, size), interpolation=cv2.INTER_LINEAR)


def _forward_keeping(target: Target, x: torch.Tensor, layer: str) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """``(logits, feature map)``: one forward pass whose graph starts at ``layer``.

    The hook returns a tensor of ours (detached, so nothing below the layer is differentiated:
    the copy's parameters are frozen anyway) that the layers above then read, and keeps it.
    """
    module = target.layer_module(layer)
    kept: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ExplainError(f"layer {layer!r} gives {type(output).__name__}"
                               f"{tuple(getattr(output, 'shape', ()))}; Grad-CAM needs a "
                               "(N, C, H, W) feature map")
        fed = output.detach().requires_grad_(True).clone()
        kept.append(fed)
        return fed

    handle = module.register_forward_hook(keep, prepend=True)
    try:
        logits = target.module(x)
    finally:
        handle.remove()
    if not kept:
        raise ExplainError(f"layer {layer!r} was not run by the forward pass")
    return logits, kept[-1]


def gradcam_maps(target: Target, batch: np.ndarray, indices: Sequence[int], *,
                 layer: str | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Grad-CAM maps ``(size, size)`` float32 in ``[0, 1]`` of outputs ``indices`` of one image.

    ``batch`` is one model input ``(1, 1, size, size)``. One forward pass serves every label;
    each label costs one backward pass from its logit to the layer (for a DenseNet: the
    pooling and the classifier). Each map is scaled to a maximum of 1 after up-sampling; a map
    whose weighted sum is nowhere positive is all zeros (the "not constant" sanity check then
    says so). Returns the maps and their parameters.
    """
    if target.scripted:
        raise ExplainError("the model is TorchScript, which takes no module hooks; Grad-CAM "
                           "needs the eager PyTorch checkpoint (.pt); SHAP works")
    if not indices:
        raise ValueError("no output index to explain")
    size = int(batch.shape[-1])
    with target.lock:
        layer = default_layer(target.net) if layer is None else layer
        x = target.tensor(batch)
        maps = []
        try:
            with torch.inference_mode(False), torch.enable_grad():
                logits, features = _forward_keeping(target, x, layer)
                for n, index in enumerate(indices):
                    (grads,) = torch.autograd.grad(logits[0, int(index)], features,
                                                   retain_graph=n < len(indices) - 1)
                    weights = grads.mean(dim=(2, 3), keepdim=True)
                    cam = torch.relu((weights * features.detach()).sum(dim=1))[0]
                    maps.append(cam.numpy().astype(np.float32, copy=False))
        except RuntimeError as e:
            raise ExplainError(f"Grad-CAM at layer {layer!r} failed: {e}") from e
    feature_shape = [int(s) for s in maps[0].shape]
    out = []
    for cam in maps:
        cam = np.ascontiguousarray(_resize(cam, size), dtype=np.float32)
        peak = float(cam.max())
        out.append(cam / np.float32(peak) if peak > 0 else np.zeros_like(cam))
    params = {
        "backend": "gradcam",
        "library": "cxr-node (torch hooks)",
        "layer": layer,
        "feature_shape": feature_shape,
        "upsampling": "bilinear",
        "output": target.output,
    }
    return out, params
