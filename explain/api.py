"""One contract for every method: ``explain(model, scored, label, method) -> HeatMap``.

``explain_labels`` explains several labels of one image; Grad-CAM serves them all from one
forward pass (:mod:`explain.cam`), the other methods one label at a time.

The map is made on the model grid, checked (:mod:`explain.sanity`), normalised and put back on
the source image's pixel grid by undoing the centre crop and resize
(:meth:`inference.preprocess.Geometry.to_source`). ``predict``, the node and HTTP all call this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from domain import HeatMap
from explain.cam import gradcam_maps
from explain.errors import ExplainError
from explain.gradcam import gradcam_map
from explain.sanity import Randomisation, cheap_checks, randomisation_check, verdict
from explain.shap_maps import shap_map
from explain.target import Target, randomised_target, target_for
from inference.factory import LoadedModel
from inference.predict import Scored
from inference.preprocess import Geometry

logger = logging.getLogger(__name__)

#: Public method names and the backend each one runs: Grad-CAM is the project's own
#: (:mod:`explain.cam`, which says why), the others medcam's backends, or SHAP.
BACKENDS: dict[str, str] = {
    "gradcam": "gradcam",
    "gradcampp": "gcampp",
    "gbp": "gbp",
    "ggcam": "ggcam",
    "shap": "shap",
}
METHODS: tuple[str, ...] = tuple(BACKENDS)
#: medcam's own names are accepted too.
ALIASES: dict[str, str] = {"gcam": "gradcam", "gcampp": "gradcampp"}
#: Methods whose maps are signed (in [-1, 1]); the others are in [0, 1].
SIGNED_METHODS = frozenset({"shap"})
#: Keyword parameters each method takes (besides ``layer`` for the medcam methods).
METHOD_PARAMS: dict[str, frozenset[str]] = {
    **{m: frozenset() for m in ("gradcam", "gradcampp", "gbp", "ggcam")},
    "shap": frozenset({"background", "blur_sigmas", "nsamples", "batch_size", "rseed",
                       "local_smoothing", "smooth"}),
}


def method_name(method: str) -> str:
    """The public name of ``method`` (medcam aliases resolved); ValueError if unknown."""
    name = ALIASES.get(str(method).lower(), str(method).lower())
    if name not in BACKENDS:
        raise ValueError(f"explanation method {method!r} is unknown; use one of "
                         f"{', '.join(METHODS)} (or medcam's {', '.join(ALIASES)})")
    return name


def label_index(model: LoadedModel, label: str) -> int:
    """Output index of a reported ``label``; ValueError naming it if the model has none."""
    for i, name, _ in model.card.reported:
        if name == label:
            return i
    known = [name for _, name, _ in model.card.reported]
    shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
    raise ValueError(f"label {label!r} is not one of the model's labels ({shown})")


def model_target(model: LoadedModel) -> Target:
    """The cached explanation copy of ``model``; ExplainError when there is no eager module."""
    if model.module is None:
        raise ExplainError(
            f"model {model.card.name!r} runs on the {model.backend} backend, which has no "
            "PyTorch module to take gradients from; explanations need the PyTorch checkpoint "
            "(.pt) of the same weights"
        )
    return target_for(model.module, model.card.output, model.device)


def _model_maps(target: Target, batch: np.ndarray, indices: Sequence[int], method: str,
                layer: str | None, params: dict[str, Any]
                ) -> tuple[list[np.ndarray], dict[str, Any]]:
    if method == "gradcam":
        return gradcam_maps(target, batch, indices, layer=layer)
    maps, used = [], {}
    for index in indices:
        if method == "shap":
            model_map, used = shap_map(target, batch, index, **params)
        else:
            model_map, used = gradcam_map(target, batch, index, backend=BACKENDS[method],
                                          layer=layer)
        maps.append(model_map)
    return maps, used


def normalise(model_map: np.ndarray, signed: bool) -> np.ndarray:
    """Scale to ``[0, 1]`` (by the maximum) or, if ``signed``, to ``[-1, 1]`` (by max |value|)."""
    return _normalise_in_place(np.array(model_map, dtype=np.float32, copy=True), signed)


def _normalise_in_place(m: np.ndarray, signed: bool) -> np.ndarray:
    np.nan_to_num(m, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if not signed:
        np.clip(m, 0.0, None, out=m)
    peak = max(float(m.max()), -float(m.min())) if m.size else 0.0
    if peak > 0:
        m /= np.float32(peak)
    return m


def source_map(geometry: Geometry, model_map: np.ndarray, signed: bool) -> np.ndarray:
    """``model_map`` normalised, on the source grid, normalised there so that its maximum (or
    max |value|) is exactly 1; 0 where the crop cut the image. One full-size array is made:
    the crop square is scaled before it is placed (the zeros around it change no maximum)."""
    square = geometry.to_crop(normalise(model_map, signed))
    return geometry.place(_normalise_in_place(square, signed))


def explain(
    model: LoadedModel,
    scored: Scored,
    label: str | None = None,
    method: str = "gradcam",
    *,
    layer: str | None = None,
    sanity: bool | Randomisation = False,
    **params: Any,
) -> HeatMap:
    """Explain ``label`` (default: the most probable positive finding, else the top label).

    Args:
        model: the loaded model (eager PyTorch; ONNX raises :class:`ExplainError`).
        scored: the image as :class:`inference.Predictor` scored it.
        label: a label of the model card.
        method: one of :data:`METHODS` (medcam names ``gcam``/``gcampp`` also accepted).
        layer: Grad-CAM layer (default: ``features.norm5`` for a DenseNet, see
            :func:`explain.target.default_layer`; ``"auto"`` lets medcam choose, for its
            methods).
        sanity: also run the model-randomisation check (``True`` or its settings).
        **params: method parameters (SHAP: ``nsamples``, ``background``, ``blur_sigmas``,
            ``batch_size``, ``rseed``, ``local_smoothing``, ``smooth``).

    Returns:
        A :class:`HeatMap` on the source grid; ``suppressed`` (with the reason) when a sanity
        check failed.
    """
    label = scored.prediction.default_label() if label is None else label
    return explain_labels(model, scored, [label], method, layer=layer, sanity=sanity,
                          **params)[0]


def explain_labels(
    model: LoadedModel,
    scored: Scored,
    labels: Sequence[str],
    method: str = "gradcam",
    *,
    layer: str | None = None,
    sanity: bool | Randomisation = False,
    **params: Any,
) -> list[HeatMap]:
    """:func:`explain` for each of ``labels`` of one image, in their order.

    Grad-CAM computes every label's map from one forward pass (and the randomisation check's
    maps from one more); SHAP and medcam's methods explain one label at a time.
    """
    name = method_name(method)
    unknown = sorted(set(params) - METHOD_PARAMS[name])
    if unknown:
        raise ValueError(f"parameters {unknown} do not apply to method {name!r}"
                         + (f"; it takes {sorted(METHOD_PARAMS[name])}"
                            if METHOD_PARAMS[name] else ""))
    if layer is not None and name in ("shap", "gbp"):
        raise ValueError(f"layer {layer!r} does not apply to method {name!r}")
    if layer == "auto" and name == "gradcam":
        raise ValueError("layer 'auto' is medcam's choice; Grad-CAM needs a named layer "
                         "(default: the architecture's last feature map)")
    if not labels:
        raise ValueError("no label to explain")
    indices = [label_index(model, label) for label in labels]
    size = model.card.preprocessing.size
    batch = np.asarray(scored.model_input, dtype=np.float32).reshape(1, 1, size, size)
    target = model_target(model)
    started = time.perf_counter()
    model_maps, used = _model_maps(target, batch, indices, name, layer, params)
    random_maps: list[np.ndarray | None] = [None] * len(indices)
    config = layers = None
    if sanity:
        config = sanity if isinstance(sanity, Randomisation) else Randomisation()
        random_target, layers = randomised_target(target, config.n_layers, config.seed)
        layer_used = used.get("layer") if name != "shap" else None
        layer_used = None if layer_used in (None, "input") else layer_used
        if layer_used and layer_used.startswith("auto:"):
            layer_used = "auto"
        random_maps = list(_model_maps(random_target, batch, indices, name, layer_used,
                                       params)[0])
    heatmaps = [
        _heatmap(scored, label, index, name, model_map, used, random_map, config, layers, size)
        for label, index, model_map, random_map in zip(labels, indices, model_maps,
                                                       random_maps, strict=True)
    ]
    logger.debug("%s of %d label(s) for %s in %.2f s", name, len(labels), scored.image.name,
                 time.perf_counter() - started)
    return heatmaps


def _heatmap(scored: Scored, label: str, index: int, name: str, model_map: np.ndarray,
             used: dict[str, Any], random_map: np.ndarray | None,
             config: Randomisation | None, layers: list[str] | None, size: int) -> HeatMap:
    """One label's checked map, put on the source grid."""
    checks = cheap_checks(model_map)
    if random_map is not None and config is not None:
        checks["randomisation"] = randomisation_check(model_map, random_map, config, layers)
    suppressed, reason = verdict(checks)
    signed = name in SIGNED_METHODS
    geometry = scored.geometry
    heatmap = HeatMap(
        values=source_map(geometry, model_map, signed),
        label=label,
        method=name,
        params={
            **used,
            "label_index": index,
            "probability": round(float(scored.prediction.probability(label)), 6),
            "model_size": size,
            "crop": {"top": geometry.top, "left": geometry.left, "side": geometry.side},
            "source_grid": "bilinear from the model grid; 0 outside the centre crop",
        },
        signed=signed,
        sanity=checks,
        suppressed=suppressed,
        suppressed_reason=reason,
    )
    if suppressed:
        logger.warning("%s map of %r for %s suppressed: %s", name, label, scored.image.name,
                       reason)
    return heatmap


def explain_batch(
    model: LoadedModel,
    scored: Sequence[Scored],
    labels: Sequence[str | None] | None = None,
    method: str = "gradcam",
    **kwargs: Any,
) -> list[HeatMap]:
    """:func:`explain` for several images (one at a time: medcam's Grad-CAM++ needs that)."""
    labels = [None] * len(scored) if labels is None else list(labels)
    if len(labels) != len(scored):
        raise ValueError(f"{len(labels)} labels for {len(scored)} images")
    return [explain(model, s, lab, method, **kwargs) for s, lab in zip(scored, labels,
                                                                        strict=True)]
