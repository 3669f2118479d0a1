"""The explanation contract: shapes, grids, parameters, errors, side effects and outputs.

These use the small untrained DenseNet of ``conftest``; whether the maps are *right* is
checked on a trained disc detector in ``test_explain_faithful.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from conftest import small_densenet

import dicom_io
from domain import HeatMap
from explain import (
    METHODS,
    ExplainError,
    default_layer,
    explain,
    explain_batch,
    explain_labels,
    method_name,
    write_outputs,
)
from explain.sanity import cheap_checks, similarity
from explain.shap_maps import blurred_background
from explain.target import target_for
from inference import LoadedModel, ModelCard, Predictor, load_model
from inference.export import export_onnx, export_torchscript

SHAP_FAST = {"nsamples": 4, "blur_sigmas": (8.0, 16.0)}


@pytest.fixture(scope="module")
def cr_scored(cr_path, loaded_model):
    """The NEMA CR (MONOCHROME1, 1955 x 1841: the crop cuts rows) through the model."""
    return Predictor(loaded_model)([dicom_io.load(cr_path)])[0]


def _probability_model(bias: float = 0.0) -> LoadedModel:
    """A 26-output torchxrayvision DenseNet that outputs op_norm-ed probabilities."""
    module = small_densenet(num_classes=26, seed=3)
    module.op_threshs = torch.full((26,), 0.4)
    with torch.no_grad():
        module.classifier.bias[5] += bias
    card = ModelCard(name="p", version="1", labels=tuple(f"L{i}" for i in range(26)),
                     thresholds=(0.5,) * 26, output="probabilities")
    return LoadedModel(card=card, sha256="0" * 64, backend="torch", source="mem", module=module)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "ggcam", "gbp"])
def test_medcam_map_is_on_the_source_grid(loaded_model, cr_scored, method):
    heatmap = explain(loaded_model, cr_scored, method=method)
    g = cr_scored.geometry
    assert heatmap.values.shape == (1955, 1841) and heatmap.values.dtype == np.float32
    assert g.top == 57 and g.left == 0 and g.side == 1841
    assert not heatmap.signed and heatmap.method == method
    assert heatmap.values.min() >= 0 and math.isclose(float(heatmap.values.max()), 1, abs_tol=1e-5)
    assert not heatmap.values[:g.top].any() and not heatmap.values[g.top + g.side:].any()
    assert heatmap.label == cr_scored.prediction.default_label()
    assert heatmap.params["label_index"] == loaded_model.card.labels.index(heatmap.label)
    assert heatmap.params["crop"] == {"top": 57, "left": 0, "side": 1841}
    assert heatmap.params["library"] == ("medcam" if method != "gradcam" else
                                         "cxr-node (torch hooks)")
    if method != "gbp":
        assert heatmap.params["layer"] == "features.norm5"
    assert set(heatmap.sanity) == {"finite", "not_constant"}
    assert not heatmap.suppressed, heatmap.suppressed_reason
    peak = heatmap.peak
    assert g.top <= peak["row"] < g.top + g.side
    json.dumps(heatmap.summary())  # result.json takes it as it is


def test_shap_map_is_signed_and_records_its_parameters(loaded_model, cr_scored):
    label = loaded_model.card.labels[7]
    heatmap = explain(loaded_model, cr_scored, label, "shap", **SHAP_FAST)
    assert heatmap.signed and heatmap.label == label and heatmap.method == "shap"
    assert heatmap.values.shape == (1955, 1841) and heatmap.values.dtype == np.float32
    assert math.isclose(float(np.abs(heatmap.values).max()), 1.0, abs_tol=1e-5)
    assert heatmap.values.min() < 0 < heatmap.values.max()
    p = heatmap.params
    assert p["explainer"] == "shap.GradientExplainer" and p["nsamples"] == 4
    assert p["background"] == "blur" and p["blur_sigmas"] == [8.0, 16.0]
    assert p["output"] == "logit" and p["label_index"] == 7
    assert heatmap.peak == {"row": int(np.argmax(heatmap.values) // 1841),
                            "column": int(np.argmax(heatmap.values) % 1841)}
    json.dumps(heatmap.summary())


def test_shap_is_reproducible_and_takes_image_backgrounds(loaded_model, cr_scored):
    a = explain(loaded_model, cr_scored, "Effusion", "shap", **SHAP_FAST)
    b = explain(loaded_model, cr_scored, "Effusion", "shap", **SHAP_FAST)
    np.testing.assert_array_equal(a.values, b.values)
    state = np.random.get_state()
    background = blurred_background(cr_scored.model_input, (4.0,))
    background = np.concatenate([background, np.zeros_like(background)])
    c = explain(loaded_model, cr_scored, "Effusion", "shap", background=background, nsamples=4)
    assert c.params["background"] == "images" and c.params["background_count"] == 2
    assert not np.array_equal(a.values, c.values)
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global RNG untouched


def test_method_names_and_medcam_aliases():
    assert set(METHODS) == {"gradcam", "gradcampp", "shap", "gbp", "ggcam"}
    assert method_name("gcam") == "gradcam" and method_name("GCAMPP") == "gradcampp"
    assert method_name("ggcam") == "ggcam"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "lime"}, "'lime'"),
    ({"method": "none"}, "'none'"),
    ({"label": "Unicorn"}, "'Unicorn'"),
    ({"layer": "features.norm9"}, "'features.norm9'"),
    ({"method": "gradcam", "nsamples": 3}, "nsamples"),
    ({"method": "shap", "layer": "features.norm5"}, "layer"),
    ({"method": "shap", "nsamples": 0}, "nsamples"),
    ({"method": "shap", "background": "noise"}, "'noise'"),
    ({"method": "shap", "background": np.zeros((2, 1, 10, 10))}, "(2, 1, 10, 10)"),
])
def test_wrong_arguments_raise_value_error_naming_them(loaded_model, cr_scored, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        explain(loaded_model, cr_scored, **kwargs)


def test_onnx_model_raises_explain_error(loaded_model, cr_scored, tmp_path):
    onnx_model = load_model(export_onnx(loaded_model, tmp_path / "m.onnx"))
    assert onnx_model.module is None
    with pytest.raises(ExplainError, match="onnx"):
        explain(onnx_model, cr_scored)


def test_torchscript_takes_shap_but_not_medcam(loaded_model, cr_scored, tmp_path):
    scripted = load_model(export_torchscript(loaded_model, tmp_path / "m.ts"))
    with pytest.raises(ExplainError, match="TorchScript"):
        explain(scripted, cr_scored, method="gradcam")
    heatmap = explain(scripted, cr_scored, "Effusion", "shap", **SHAP_FAST)
    reference = explain(loaded_model, cr_scored, "Effusion", "shap", **SHAP_FAST)
    assert similarity(heatmap.values[::8, ::8], reference.values[::8, ::8]) > 0.95


def test_predicting_module_is_untouched_and_explainers_are_cached(loaded_model, cr_scored):
    module = loaded_model.module
    before = loaded_model.probabilities(cr_scored.model_input[None])
    grads = [p.requires_grad for p in module.parameters()]
    explain(loaded_model, cr_scored, method="gradcampp")
    target = target_for(module)
    wrapped = target.cache[("medcam", "gcampp", "features.norm5")]
    explain(loaded_model, cr_scored, method="gradcam", sanity=True)
    explain(loaded_model, cr_scored, method="gradcampp")
    explain(loaded_model, cr_scored, "Effusion", "shap", **SHAP_FAST)
    assert target_for(module) is target
    assert target.cache[("medcam", "gcampp", "features.norm5")] is wrapped
    assert target.net is not module and not hasattr(module, "medcam_dict")
    assert not any(m._forward_hooks or m._backward_hooks for m in module.modules())
    assert [p.requires_grad for p in module.parameters()] == grads
    assert all(p.grad is None for p in module.parameters())
    np.testing.assert_array_equal(loaded_model.probabilities(cr_scored.model_input[None]), before)


def test_probabilities_are_explained_through_their_logits(cr_path):
    """op_norm-ed outputs saturate at 1.0; the explanation copy drops sigmoid and op_norm."""
    model = _probability_model(bias=60.0)
    scored = Predictor(model)([dicom_io.load(cr_path)])[0]
    assert scored.prediction.probability("L5") == 1.0  # sigmoid saturated: zero gradient
    heatmap = explain(model, scored)
    assert heatmap.label == "L5" and heatmap.params["output"] == "logit"
    assert not heatmap.suppressed, heatmap.suppressed_reason
    assert model.module.op_threshs is not None  # the predicting module keeps its outputs
    assert model.probabilities(scored.model_input[None])[0, 5] == 1.0


def test_a_map_that_cannot_vary_is_suppressed_with_the_reason(loaded_model, cr_scored):
    module = small_densenet(num_classes=26, seed=1)
    with torch.no_grad():
        module.classifier.weight[4] = 0  # label 4 ignores the image: its gradient is 0
    model = replace(loaded_model, module=module)
    label = model.card.labels[4]
    heatmap = explain(model, cr_scored, label, "gradcam")
    assert heatmap.suppressed and not heatmap.sanity["not_constant"]["passed"]
    assert "constant" in heatmap.suppressed_reason
    assert heatmap.summary()["peak"] is None and heatmap.summary()["suppressed"]
    shap = explain(model, cr_scored, label, "shap", **SHAP_FAST)
    assert shap.suppressed and "constant" in shap.suppressed_reason


def test_cheap_checks():
    ok = cheap_checks(np.random.default_rng(0).random((8, 8)))
    assert all(c["passed"] for c in ok.values())
    flat = cheap_checks(np.full((8, 8), 0.25, np.float32))
    assert not flat["not_constant"]["passed"] and "0.25" in flat["not_constant"]["detail"]
    broken = np.ones((8, 8))
    broken[2, 3] = np.nan
    assert not cheap_checks(broken)["finite"]["passed"]
    assert "1 of 64" in cheap_checks(broken)["finite"]["detail"]


def test_default_layer():
    assert default_layer(small_densenet()) == "features.norm5"
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    assert default_layer(cnn) == "2"
    with pytest.raises(ExplainError, match="Conv2d"):
        default_layer(torch.nn.Linear(3, 3))


def test_explain_batch_and_named_layer(loaded_model, cr_path):
    images = [dicom_io.load(cr_path)]
    rows = images[0].pixels[:900, :1200]  # a landscape crop: the crop cuts columns
    images.append(replace(images[0], pixels=np.ascontiguousarray(rows)))
    scored = Predictor(loaded_model)(images)
    maps = explain_batch(loaded_model, scored, ["Effusion", None], "gradcam",
                         layer="features.denseblock3")
    assert [m.values.shape for m in maps] == [(1955, 1841), (900, 1200)]
    assert maps[0].label == "Effusion" and maps[1].label == scored[1].prediction.default_label()
    assert maps[1].params["crop"] == {"top": 0, "left": 150, "side": 900}
    assert not maps[1].values[:, :150].any() and not maps[1].values[:, 1050:].any()
    assert maps[0].params["layer"] == "features.denseblock3"
    assert maps[0].params["feature_shape"] == [14, 14]
    with pytest.raises(ValueError, match="1 labels for 2 images"):
        explain_batch(loaded_model, scored, ["Effusion"])


def test_write_outputs(loaded_model, cr_scored, tmp_path):
    heatmap = explain(loaded_model, cr_scored)
    paths = write_outputs(heatmap, cr_scored.image, tmp_path)
    assert [p.name for p in paths] == ["heatmap.npy", "heatmap.png"]
    np.testing.assert_array_equal(np.load(paths[0]), heatmap.values)
    assert np.load(paths[0]).dtype == np.float32
    png = cv2.imread(str(paths[1]))
    assert png.shape == (1955, 1841, 3)
    small = write_outputs(heatmap, cr_scored.image, tmp_path / "small", max_side=500)
    assert cv2.imread(str(small[1])).shape == (500, 471, 3)
    assert np.load(small[0]).shape == (1955, 1841)  # the map itself is never downscaled
    suppressed = HeatMap(np.zeros((1955, 1841), np.float32), "x", "gradcam", suppressed=True,
                         suppressed_reason="not_constant: map is constant")
    assert write_outputs(suppressed, cr_scored.image, tmp_path / "none") == []
    audit = write_outputs(suppressed, cr_scored.image, tmp_path / "audit", include_suppressed=True)
    assert [p.name for p in audit] == ["heatmap.npy"]


def test_medcam_picks_the_layer_when_asked(loaded_model, cr_scored):
    heatmap = explain(loaded_model, cr_scored, method="gcampp", layer="auto")
    assert heatmap.method == "gradcampp" and heatmap.params["backend"] == "gcampp"
    assert heatmap.params["layer"].startswith("auto:features")
    assert not heatmap.suppressed, heatmap.suppressed_reason


def test_grad_cam_needs_a_named_layer(loaded_model, cr_scored):
    with pytest.raises(ValueError, match="layer 'auto' is medcam's choice"):
        explain(loaded_model, cr_scored, method="gradcam", layer="auto")


def test_several_labels_share_one_forward_pass(loaded_model, cr_scored):
    """``explain_labels`` gives each label the map ``explain`` gives it alone."""
    labels = ["Effusion", "Nodule", loaded_model.card.labels[0]]
    together = explain_labels(loaded_model, cr_scored, labels, "gradcam")
    assert [h.label for h in together] == labels
    for heatmap in together:
        alone = explain(loaded_model, cr_scored, heatmap.label, "gradcam")
        np.testing.assert_allclose(heatmap.values, alone.values, atol=1e-6)
    assert not np.allclose(together[0].values, together[1].values)


def test_the_positive_findings_are_explained_most_probable_first() -> None:
    from domain import Finding, Prediction

    p = Prediction((Finding("A", 0.6, 0.5), Finding("B", 0.9, 0.5), Finding("C", 0.4, 0.5),
                    Finding("D", 0.7, 0.5)))
    assert p.labels_to_explain(3) == ["B", "D", "A"]
    assert p.labels_to_explain(2) == ["B", "D"] and p.default_label() == "B"
    none = Prediction((Finding("A", 0.3, 0.5), Finding("B", 0.45, 0.5)))
    assert none.labels_to_explain(3) == ["B"] == [none.default_label()]  # the top one's map
    assert p.labels_to_explain(0) == ["B"]
