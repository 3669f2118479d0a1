"""A stand-in for a GPU model: a tiny torchxrayvision DenseNet that sleeps a fixed time per
forward pass (per batch).

Why: ``cxr-node bench``'s scale phase measures how the throughput of a pool of workers grows
with the number of workers. With a real model on a small CPU machine the workers share the
cores, so two workers are no faster than one; a model that waits (as a process waits for its
GPU) and computes next to nothing makes the model the limit, as it is on a GPU host, and the
figure then shows what the broker, the records and the roles add or take away.

Saved whole (``torch.save`` of the module): the node's loader unpickles it with its class,
which lives here, in the installed package, so every node process can load it. Serve it with
``--no-onnx-fast-path``: an ONNX export traces the network once and drops the sleep, and the
node would then run the exported graph without it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torchxrayvision as xrv

logger = logging.getLogger(__name__)

#: PadChest's label count: the node's default card for a 26-output DenseNet.
OUTPUTS = 26


class SleepyDenseNet(xrv.models.DenseNet):
    """A shrunk torchxrayvision DenseNet (as the tests' ``small_densenet``) whose ``forward``
    first sleeps ``sleep_s`` seconds, once per call, whatever the batch size."""

    def __init__(self, sleep_s: float, num_classes: int = OUTPUTS) -> None:
        super().__init__(num_classes=num_classes, in_channels=1, weights=None,
                         block_config=(2, 2, 2, 2), growth_rate=8, num_init_features=16)
        self.sleep_s = float(sleep_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.sleep_s)  # the simulated accelerator: the caller waits, no CPU used
        return super().forward(x)


def sleepy_model(sleep_s: float, seed: int = 0) -> SleepyDenseNet:
    """The model in eval mode; untrained features are large, so the classifier is scaled
    down to keep probabilities off 0 and 1 (as the tests' small model)."""
    if not sleep_s >= 0:
        raise ValueError(f"sleep_s {sleep_s!r} must be >= 0")
    torch.manual_seed(seed)
    model = SleepyDenseNet(sleep_s)
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)
    return model.eval()


def save_sleepy_model(path: str | Path, sleep_s: float) -> Path:
    """Write the model whole to ``path`` (for ``cxr-node serve --model PATH
    --no-onnx-fast-path``); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sleepy_model(sleep_s), path)
    logger.info("wrote a model sleeping %.3f s per batch to %s", sleep_s, path)
    return path
