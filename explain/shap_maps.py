"""SHAP attributions with ``shap.GradientExplainer`` (expected gradients).

Why GradientExplainer and not DeepExplainer: DeepExplainer (DeepLIFT rescale rules) hooks
``nn.Module`` non-linearities and cannot see functional ones; torchxrayvision's DenseNet calls
``F.relu`` (in place) and ``F.adaptive_avg_pool2d`` in ``forward`` and concatenates feature maps
in every dense layer, so DeepExplainer's attributions would be silently wrong (its additivity
check fails). GradientExplainer only needs gradients with respect to the input, so it works for
any differentiable network, and its cost is set directly by ``nsamples`` (forward + backward
passes, in batches of ``batch_size``).

Expected gradients: ``phi = E[(x - x') * grad f(x' + t (x - x'))]`` over background images ``x'``
and ``t ~ U(0, 1)``. The default background is a few Gaussian-blurred copies of the input (made
on the model grid, sigmas in model pixels): what the image looks like without its small
structures, so the attribution says which local detail raised the label's logit.

One explainer is built per (model copy, output) and kept; each call swaps its background.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from explain.errors import ExplainError
from explain.target import Target

logger = logging.getLogger(__name__)

DEFAULT_NSAMPLES = 16
DEFAULT_SIGMAS = (8.0, 16.0, 32.0)
DEFAULT_BATCH = 8
DEFAULT_SMOOTH = 2.0


class _Select(torch.nn.Module):
    """One output column of ``module``: SHAP then differentiates only that label."""

    def __init__(self, module: torch.nn.Module, index: int) -> None:
        super().__init__()
        self.module = module
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)[:, self.index:self.index + 1]


def blurred_background(model_input: np.ndarray,
                       sigmas: Sequence[float] = DEFAULT_SIGMAS) -> np.ndarray:
    """Blurred copies ``(len(sigmas), 1, size, size)`` of one model input ``(1, size, size)``."""
    import cv2

    if not sigmas or any(float(s) <= 0 for s in sigmas):
        raise ValueError(f"blur_sigmas {tuple(sigmas)!r} must be positive numbers")
    image = np.asarray(model_input, dtype=np.float32).reshape(model_input.shape[-2:])
    return np.stack([
        cv2.GaussianBlur(image, (0, 0), float(s), borderType=cv2.BORDER_REFLECT)[None]
        for s in sigmas
    ]).astype(np.float32)


def _explainer(target: Target, index: int, background: torch.Tensor, batch_size: int,
               local_smoothing: float) -> Any:
    """The cached GradientExplainer of output ``index``, its background set to ``background``."""
    key = ("shap", index)
    explainer = target.cache.get(key)
    # shap has no setter for the background: reuse the cached explainer (no new forward pass)
    # where its inner explainer has the known fields, else make a new one.
    inner = getattr(explainer, "explainer", None)
    if inner is not None and hasattr(inner, "data") and hasattr(inner, "model_inputs"):
        inner.data = [background]
        inner.model_inputs = [background]
        inner.batch_size = batch_size
        inner.local_smoothing = local_smoothing
        return explainer
    with warnings.catch_warnings():  # shap's plotting colours, set up on import
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    explainer = shap.GradientExplainer(_Select(target.module, index).eval(), background,
                                       batch_size=batch_size, local_smoothing=local_smoothing)
    target.cache[key] = explainer
    return explainer


def shap_map(target: Target, batch: np.ndarray, index: int, *,
             background: str | np.ndarray = "blur",
             blur_sigmas: Sequence[float] = DEFAULT_SIGMAS,
             nsamples: int = DEFAULT_NSAMPLES, batch_size: int = DEFAULT_BATCH,
             rseed: int = 0, local_smoothing: float = 0.0,
             smooth: float = DEFAULT_SMOOTH) -> tuple[np.ndarray, dict[str, Any]]:
    """Signed SHAP values ``(size, size)`` float32 of output ``index`` for one model input.

    ``background`` is ``"blur"`` (blurred copies of the input, ``blur_sigmas`` in model pixels)
    or model inputs ``(K, 1, size, size)`` (e.g. preprocessed normal radiographs).
    ``nsamples`` bounds the cost: that many forward and backward passes. ``smooth`` (Gaussian
    sigma in model pixels, 0 for none) damps the pixel noise of the Monte-Carlo estimate, so that
    the map's peak is not one noisy pixel.
    """
    import cv2

    if int(nsamples) < 1:
        raise ValueError(f"nsamples {nsamples!r} must be >= 1")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size {batch_size!r} must be >= 1")
    if float(smooth) < 0:
        raise ValueError(f"smooth {smooth!r} must be >= 0")
    size = int(batch.shape[-1])
    if isinstance(background, str):
        if background != "blur":
            raise ValueError(f"background {background!r}: use 'blur' or an array of model inputs")
        bg = blurred_background(batch[0], blur_sigmas)
        described: dict[str, Any] = {"background": "blur",
                                     "blur_sigmas": [float(s) for s in blur_sigmas]}
    else:
        bg = np.asarray(background, dtype=np.float32)
        if bg.ndim == 3:
            bg = bg[:, None]
        if bg.ndim != 4 or bg.shape[1:] != (1, size, size) or len(bg) == 0:
            raise ValueError(f"background shape {bg.shape}; expected (K, 1, {size}, {size})")
        described = {"background": "images", "background_count": len(bg)}
    with target.lock:
        x = target.tensor(batch)
        state = np.random.get_state()  # shap reseeds numpy's global generator
        try:
            with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
                # shap zeroes parameter gradients; a traced module's are not leaves.
                warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not")
                explainer = _explainer(target, index, target.tensor(bg), int(batch_size),
                                       float(local_smoothing))
                values = explainer.shap_values(x, nsamples=int(nsamples), rseed=int(rseed))
        except (RuntimeError, ValueError, AssertionError) as e:
            raise ExplainError(f"SHAP GradientExplainer failed: {e}") from e
        finally:
            np.random.set_state(state)
    values = np.asarray(values, dtype=np.float32).reshape(size, size)
    if smooth > 0:
        values = cv2.GaussianBlur(values, (0, 0), float(smooth), borderType=cv2.BORDER_REFLECT)
    params = {
        "explainer": "shap.GradientExplainer",
        "nsamples": int(nsamples),
        "batch_size": int(batch_size),
        "rseed": int(rseed),
        "local_smoothing": float(local_smoothing),
        "smooth": float(smooth),
        **described,
        "output": target.output,
    }
    return values, params
