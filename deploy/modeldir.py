"""Which weights and model card an Azure model folder (``AZUREML_MODEL_DIR``) holds.

The rule, shared by ``deploy/score.py`` (at ``init()``) and ``deploy/aci.py`` (before a deploy):

1. ``CXR_NODE_MODEL_FILE`` set: that file, relative to the model folder (or absolute).
2. Otherwise the one file with a weights suffix (:data:`WEIGHTS_SUFFIXES`) found in the model
   folder or in its immediate subfolders (Azure ML puts a model registered from a folder
   into ``AZUREML_MODEL_DIR/<folder>/``). None, or more than one: :class:`ModelDirError`
   naming what was found and asking for ``CXR_NODE_MODEL_FILE``.

The card: ``CXR_NODE_MODEL_CARD`` (relative to the model folder, or absolute) if set; else the
first card beside the weights, as :func:`inference.card.card_candidates` lists them; else
``model_card.json`` / ``model_card.yaml`` at the top of the model folder; else none (the
loader then builds a card from the checkpoint).

Standard library only, so the deploy CLI does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: File name endings taken as model weights (the formats :func:`inference.load_model` reads).
WEIGHTS_SUFFIXES = (".pt", ".pth", ".ckpt", ".ts", ".torchscript", ".onnx")
MODEL_FILE_ENV = "CXR_NODE_MODEL_FILE"
MODEL_CARD_ENV = "CXR_NODE_MODEL_CARD"
ROOT_CARDS = ("model_card.json", "model_card.yaml")


class ModelDirError(Exception):
    """The model folder does not name exactly one weights file (or a named file is missing)."""


def _named(model_dir: Path, value: str, what: str, env: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = model_dir / path
    if not path.is_file():
        raise ModelDirError(f"{env}={value!r}: {what} {path} does not exist")
    return path


def weights_candidates(model_dir: Path) -> list[Path]:
    """Files with a weights suffix in ``model_dir`` and its immediate subfolders, sorted."""
    found: list[Path] = []
    for entry in sorted(model_dir.iterdir()):
        if entry.is_dir():
            found += [p for p in sorted(entry.iterdir()) if _is_weights(p)]
        elif _is_weights(entry):
            found.append(entry)
    return found


def _is_weights(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(WEIGHTS_SUFFIXES)


def find_weights(model_dir: str | Path, env: Mapping[str, str] | None = None) -> Path:
    """The weights file of ``model_dir`` by the rule in this module's docstring."""
    env = os.environ if env is None else env
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model folder {model_dir} does not exist or is not a folder")
    if env.get(MODEL_FILE_ENV):
        return _named(model_dir, env[MODEL_FILE_ENV], "weights file", MODEL_FILE_ENV)
    found = weights_candidates(model_dir)
    if len(found) == 1:
        return found[0]
    rel = [str(p.relative_to(model_dir)) for p in found]
    if not found:
        listing = sorted(str(p.relative_to(model_dir)) for p in model_dir.iterdir())[:20]
        raise ModelDirError(
            f"no weights file ({', '.join(WEIGHTS_SUFFIXES)}) in {model_dir} or its "
            f"subfolders (it holds {listing or 'nothing'}); set {MODEL_FILE_ENV} to the file, "
            "relative to the model folder"
        )
    raise ModelDirError(
        f"{len(found)} weights files in {model_dir}: {rel}; set {MODEL_FILE_ENV} to the one "
        "to serve, relative to the model folder"
    )


def card_candidates(weights: Path) -> list[Path]:
    """Cards beside ``weights``, first match wins (same list as the loader's)."""
    return [
        weights.with_name(weights.name + ".card.json"),
        weights.with_name(weights.name + ".card.yaml"),
        weights.with_suffix(".card.json"),
        weights.with_suffix(".card.yaml"),
        weights.parent / "model_card.json",
        weights.parent / "model_card.yaml",
    ]


def find_card(model_dir: str | Path, weights: Path,
              env: Mapping[str, str] | None = None) -> Path | None:
    """The model card for ``weights`` by the rule in this module's docstring, or ``None``."""
    env = os.environ if env is None else env
    model_dir = Path(model_dir)
    if env.get(MODEL_CARD_ENV):
        return _named(model_dir, env[MODEL_CARD_ENV], "model card", MODEL_CARD_ENV)
    for candidate in [*card_candidates(weights), *(model_dir / n for n in ROOT_CARDS)]:
        if candidate.is_file():
            return candidate
    return None
