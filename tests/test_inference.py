"""Model loading in every supported format, the model card, and multi-label prediction."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchxrayvision as xrv
from conftest import small_densenet

import dicom_io
from domain import SourceImage
from inference import (
    PADCHEST_LABELS,
    ModelCardError,
    ModelLoadError,
    Predictor,
    Preprocessing,
    load_model,
    pre_process,
)
from inference.export import export_onnx, export_torchscript


@pytest.fixture(scope="module")
def cr_input(cr_path: Path) -> np.ndarray:
    image = dicom_io.load(cr_path)
    x, _ = pre_process(image.pixels, image.maxval, Preprocessing())
    return x[None]


@pytest.fixture(scope="module")
def batch(cr_input: np.ndarray) -> np.ndarray:
    """The real radiograph plus flipped and shifted copies: a batch of distinct inputs."""
    x = cr_input[0]
    return np.stack([x, x[:, ::-1, :], x[:, :, ::-1], np.roll(x, 17, axis=1)]).astype(np.float32)


def test_whole_model_loads_with_padchest_card_and_hash(whole_model_path: Path) -> None:
    model = load_model(whole_model_path)
    assert model.backend == "torch"
    assert model.card.labels == PADCHEST_LABELS
    assert model.card.output == "logits"
    digest = hashlib.sha256(whole_model_path.read_bytes()).hexdigest()
    assert model.sha256 == digest
    assert model.info == {"name": whole_model_path.stem, "version": f"sha256:{digest[:12]}",
                          "sha256": digest, "backend": "torch"}


def test_probabilities_are_independent_sigmoids(loaded_model, batch: np.ndarray) -> None:
    with torch.no_grad():
        logits = loaded_model.module(torch.from_numpy(batch)).numpy()
    probs = loaded_model.probabilities(batch)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)
    # not a softmax: rows do not sum to one, several labels can be likely at once
    assert not np.allclose(probs.sum(axis=1), 1.0, atol=1e-2)
    assert probs.shape == (len(batch), 26)
    assert 0.05 < probs.mean() < 0.95  # the test model is not saturated


@pytest.mark.parametrize("fmt", ["state_dict", "wrapped_state_dict", "torchscript", "onnx"])
def test_every_format_gives_the_same_outputs(
    fmt: str, tmp_path: Path, loaded_model, batch: np.ndarray
) -> None:
    module = loaded_model.module
    if fmt == "state_dict":
        path = tmp_path / "weights.pth"
        torch.save(module.state_dict(), path)
    elif fmt == "wrapped_state_dict":
        path = tmp_path / "checkpoint.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v
                                               for k, v in module.state_dict().items()}}, path)
    elif fmt == "torchscript":
        path = export_torchscript(loaded_model, tmp_path / "model.ts")
    else:
        path = export_onnx(loaded_model, tmp_path / "model.onnx")
    other = load_model(path)
    assert other.backend == {"torchscript": "torchscript", "onnx": "onnx"}.get(fmt, "torch")
    assert other.card.labels == loaded_model.card.labels
    tolerance = 1e-4 if fmt in ("torchscript", "onnx") else 1e-6
    np.testing.assert_allclose(other.probabilities(batch), loaded_model.probabilities(batch),
                               atol=tolerance)
    assert other.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_card_beside_weights_sets_labels_thresholds_version(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(small_densenet(num_classes=3), path)
    card = {"name": "CXR triage", "version": "2.1.0", "labels": ["Effusion", "Mass", "Nodule"],
            "thresholds": {"Effusion": 0.3, "Mass": 0.7}, "intended_use": "test"}
    (tmp_path / "model.pt.card.json").write_text(json.dumps(card))
    model = load_model(path)
    assert (model.card.name, model.card.version) == ("CXR triage", "2.1.0")
    assert model.card.thresholds == (0.3, 0.7, 0.5)
    scored = Predictor(model)([SourceImage("x.png", np.full((64, 80), 90, np.uint8), 255)])
    assert [f.threshold for f in scored[0].prediction.findings] == [0.3, 0.7, 0.5]


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"name": "m", "version": "1", "labels": ["a", "b"]}, "2 labels, the model gives 3"),
        ({"name": "m", "version": "1", "labels": ["a", "b", "c"], "thresholds": [0.5, 1.5, 0.5]},
         "threshold 1.5 of 'b'"),
        ({"name": "m", "labels": ["a", "b", "c"]}, "misses ['version']"),
        ({"name": "m", "version": "1", "labels": ["a", "b", "c"], "colour": "red"},
         "unknown model card fields: ['colour']"),
        ({"name": "m", "version": "1", "labels": ["a", "b", "c"],
          "preprocessing": {"resize": "bicubic"}}, "preprocessing.resize 'bicubic'"),
    ],
)
def test_bad_card_is_refused_naming_the_value(card: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(small_densenet(num_classes=3), path)
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_model(path)


def test_unlabelled_model_without_card_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(small_densenet(num_classes=5), path)
    with pytest.raises(ModelCardError, match="5 outputs and names no labels"):
        load_model(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint at all", "not a"),
        (None, "holds a list"),
    ],
)
def test_broken_weights_file_is_a_load_error(content, message: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_unknown_model_name_says_what_is_accepted() -> None:
    with pytest.raises(ModelLoadError, match="neither a file nor torchxrayvision named weights"):
        load_model("densenet121-res999-nowhere")


def test_named_weights_without_network_name_the_file_flag(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"could not be downloaded.*--model FILE"):
        load_model("densenet121-res224-pc", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # no empty or partial file left in the cache


def test_named_weights_load_through_torchxrayvision_cache(tmp_path: Path, batch) -> None:
    """A file in torchxrayvision's cache, under the name its download would use, loads offline."""
    url = xrv.models.model_urls["densenet121-res224-pc"]["weights_url"]
    torch.manual_seed(1)
    trained = xrv.models.DenseNet(num_classes=18, in_channels=1, weights=None)
    torch.save(trained, tmp_path / os.path.basename(url))
    model = load_model("densenet121-res224-pc", cache_dir=tmp_path)
    assert model.card.output == "probabilities"  # sigmoid + op_norm calibration inside xrv
    reported = [label for _, label, _ in model.card.reported]
    assert reported == [x for x in xrv.models.model_urls["pc"]["labels"] if x]
    assert all(t == 0.5 for _, _, t in model.card.reported)  # op_norm maps op points to 0.5
    assert model.sha256 == hashlib.sha256((tmp_path / os.path.basename(url)).read_bytes()
                                          ).hexdigest()
    probs = Predictor(model)([SourceImage("a.png", np.full((300, 256), 100, np.uint8),
                                                   255)])[0].prediction
    assert {f.label for f in probs.findings} == set(reported)


def test_batched_prediction_equals_one_by_one(loaded_model, cr_path: Path) -> None:
    image = dicom_io.load(cr_path)
    flipped = SourceImage("flip", np.ascontiguousarray(image.pixels[:, ::-1]), 65535)
    small = SourceImage("small", image.pixels[::4, ::4].copy(), 65535)
    images = [image, flipped, small] * 3
    together = Predictor(loaded_model, batch_size=4)(images)
    alone = Predictor(loaded_model, batch_size=1)(images)
    assert [s.image.name for s in together] == [im.name for im in images]
    for a, b in zip(together, alone, strict=True):
        for fa, fb in zip(a.prediction.findings, b.prediction.findings, strict=True):
            assert fa.label == fb.label
            assert fa.probability == pytest.approx(fb.probability, abs=1e-5)


def test_positives_and_top_three_follow_thresholds(loaded_model, cr_path: Path) -> None:
    scored = Predictor(loaded_model)([dicom_io.load(cr_path)])[0]
    prediction = scored.prediction
    assert [f.positive for f in prediction.findings] == [
        f.probability >= f.threshold for f in prediction.findings]
    top = [f.probability for f in prediction.top(3)]
    assert top == sorted((f.probability for f in prediction.findings), reverse=True)[:3]
    result = scored.result(loaded_model)
    assert result["top_three_labels"] == [f.label for f in prediction.top(3)]
    assert result["source"]["sop_instance_uid"] == scored.image.sop_uid
    assert result["model"]["sha256"] == loaded_model.sha256
    expected = max(prediction.positives or prediction.findings, key=lambda f: f.probability)
    assert prediction.default_label() == expected.label


def test_onnx_fast_path_predicts_the_same_and_keeps_the_module(
    tmp_path: Path, whole_model_path: Path, batch: np.ndarray
) -> None:
    from inference.export import enable_onnx_fast_path

    eager = load_model(whole_model_path)
    fast = load_model(whole_model_path)
    assert enable_onnx_fast_path(fast, tmp_path)
    assert fast.backend == "torch+onnxruntime" and fast.session is not None
    assert fast.module is not None  # explanations still need it
    assert fast.sha256 == eager.sha256
    np.testing.assert_allclose(fast.probabilities(batch), eager.probabilities(batch), atol=1e-4)
    assert (tmp_path / f"{eager.sha256}.onnx").is_file()
    again = load_model(whole_model_path)
    assert enable_onnx_fast_path(again, tmp_path)  # the cached export is reused
    # The node runs a batch in runs of ``session_batch`` images: the same answers, in order.
    whole = again.probabilities(batch)
    for step in (1, 2, len(batch) + 1):
        again.session_batch = step
        np.testing.assert_allclose(again.probabilities(batch), whole, atol=1e-6)


@pytest.mark.system  # the export's child process (python -m inference.export)
def test_onnx_export_in_a_child_process_enables_the_fast_path(
    tmp_path: Path, whole_model_path: Path, batch: np.ndarray
) -> None:
    """The node's background export: a child process loads the same weights and exports;
    this process checks parity and predicts with ONNX Runtime, its heap untouched."""
    from inference.export import enable_onnx_fast_path, export_onnx_isolated

    eager = load_model(whole_model_path)
    fast = load_model(whole_model_path)
    assert enable_onnx_fast_path(fast, tmp_path, exporter=export_onnx_isolated)
    assert fast.backend == "torch+onnxruntime"
    np.testing.assert_allclose(fast.probabilities(batch), eager.probabilities(batch), atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{eager.sha256}.onnx"]


@pytest.mark.system  # the export's child process (python -m inference.export)
def test_onnx_export_child_refuses_weights_that_changed(
    tmp_path: Path, whole_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Weights replaced on disk after loading: the child's sha256 differs, nothing is cached
    and the model keeps predicting with PyTorch; the log says why. (One child process: each
    costs seconds of imports.)"""
    import dataclasses

    from inference.export import enable_onnx_fast_path, export_onnx_isolated

    stale = dataclasses.replace(load_model(whole_model_path), sha256="1" * 64)
    with caplog.at_level(logging.WARNING, logger="inference.export"):
        assert not enable_onnx_fast_path(stale, tmp_path / "cache", exporter=export_onnx_isolated)
    assert "weights changed since they were loaded" in caplog.text
    assert stale.session is None and stale.backend == "torch"
    assert list((tmp_path / "cache").iterdir()) == []  # nor the card handed to the child


def test_onnx_export_that_fails_midway_leaves_nothing_in_the_cache(
    tmp_path: Path, whole_model_path: Path
) -> None:
    """A half-written export is never renamed into the cache nor left beside it."""
    from inference.export import enable_onnx_fast_path

    def half_then_fail(model, path: Path) -> None:
        Path(path).write_bytes(b"\x08\x07 not a whole model")
        Path(f"{path}.card.json").write_text("{}")
        raise RuntimeError("exporter crashed")

    model = load_model(whole_model_path)
    assert not enable_onnx_fast_path(model, tmp_path, exporter=half_then_fail)
    assert model.session is None and list(tmp_path.iterdir()) == []
    assert enable_onnx_fast_path(model, tmp_path)  # the next try exports from scratch
    assert [p.name for p in tmp_path.iterdir()] == [f"{model.sha256}.onnx"]


def test_onnx_fast_path_refuses_a_model_that_disagrees(tmp_path: Path,
                                                       whole_model_path: Path) -> None:
    from inference.export import enable_onnx_fast_path

    model = load_model(whole_model_path)
    assert not enable_onnx_fast_path(model, tmp_path, tolerance=-1.0)  # nothing can pass
    assert model.session is None and model.backend == "torch"
