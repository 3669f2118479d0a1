"""Known-answer data for checking explanations: a bright disc on radiograph-like images.

In the spirit of MONAI's ``create_test_image_2d``: :func:`chest_phantom` draws a display image
(``[0, 1]``, white = dense) with a body, two lung fields, ribs, spine and noise;
:func:`add_disc` pastes a bright disc (or a ring, the decoy); :func:`train_disc_detector`
trains a network, in well under a minute on two CPU cores, to say whether a disc is present,
keeping the evidence for its "Disc" logit on the disc. An explanation of that network is right
when its peak lies on the disc (the pointing game), which is what the tests measure.

Test data only (``tests/`` is on ``sys.path``: ``from phantom import ...``); the node does not
ship it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Output labels of the disc detector, in output order.
DISC_LABELS = ("Disc", "No Disc")


def chest_phantom(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """A radiograph-like display image ``(rows, columns)`` float32 in ``[0, 1]``."""
    import cv2

    y, x = np.mgrid[-1:1:rows * 1j, -1:1:columns * 1j].astype(np.float32)
    img = np.full((rows, columns), rng.uniform(0.15, 0.3), np.float32)
    body = ((x / rng.uniform(0.85, 1.0)) ** 2 + ((y - 0.1) / rng.uniform(1.0, 1.2)) ** 2) < 1
    img[body] = rng.uniform(0.55, 0.75)
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        cx, cy = side * rng.uniform(0.38, 0.5), rng.uniform(-0.15, 0.0)
        ax, ay = rng.uniform(0.22, 0.32), rng.uniform(0.5, 0.65)
        lungs += (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1).astype(np.float32)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (y * rng.uniform(4.5, 6.5) + 0.6 * x**2))
    img -= lungs * (rng.uniform(0.3, 0.4) - 0.08 * ribs**4)
    img += 0.12 * np.exp(-(x / rng.uniform(0.08, 0.14)) ** 2) * (y > -0.8)  # spine
    img += 0.2 * np.clip((y - rng.uniform(0.45, 0.6)) * 4, 0, 1) * (np.abs(x) < 0.9)  # diaphragm
    blur = max(1.0, min(rows, columns) / 100)
    img = cv2.GaussianBlur(img, (0, 0), blur)
    low = cv2.GaussianBlur(rng.standard_normal((rows, columns)).astype(np.float32), (0, 0),
                           min(rows, columns) / 12)
    img += 0.6 * low / max(float(np.abs(low).max()), 1e-6) * 0.1
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def add_disc(image: np.ndarray, centre: tuple[float, float], radius: float,
             contrast: float, width: float | None = None) -> np.ndarray:
    """``image`` (float, display scale) plus a soft-edged disc of height ``contrast``.

    With ``width``, a ring of that width instead (the decoy: same edge, hollow inside).
    """
    rows, columns = image.shape
    y, x = np.ogrid[:rows, :columns]
    dist = np.sqrt((y - centre[0]) ** 2 + (x - centre[1]) ** 2)
    shape = np.clip(radius + 0.5 - dist, 0, 1)
    if width is not None:
        shape = shape * np.clip(dist - (radius - width) + 0.5, 0, 1)
    return image + (shape * contrast).astype(image.dtype)


@dataclass(frozen=True)
class Disc:
    """Where a disc was pasted, in the pixel coordinates of the image it was pasted on."""

    row: float
    column: float
    radius: float

    def contains(self, row: float, column: float, tolerance: float = 0.0) -> bool:
        """Whether (row, column) lies within the disc, widened by ``tolerance`` pixels."""
        d2 = (row - self.row) ** 2 + (column - self.column) ** 2
        return bool(d2 <= (self.radius + tolerance) ** 2)


def random_disc(rows: int, columns: int, rng: np.random.Generator, radius: tuple[float, float],
                box: tuple[int, int, int, int] | None = None, *,
                image: np.ndarray | None = None, max_background: float = 0.7,
                tries: int = 30) -> Disc:
    """A disc of random radius lying wholly inside ``box`` (top, left, height, width).

    With ``image`` (display scale ``[0, 1]``), the disc goes where it can be seen: where the
    median of the image around it is at most ``max_background`` (a bright disc pasted on bone
    that is already white would be invisible, and no method could find it).
    """
    top, left, height, width = box or (0, 0, rows, columns)
    r = float(rng.uniform(*radius))
    margin = r + 2
    disc = Disc(0.0, 0.0, r)
    for _ in range(max(1, tries)):
        disc = Disc(float(rng.uniform(top + margin, top + height - margin)),
                    float(rng.uniform(left + margin, left + width - margin)), r)
        if image is None:
            break
        r0, c0, span = int(disc.row), int(disc.column), int(2 * r) + 1
        patch = image[max(r0 - span, 0):r0 + span + 1, max(c0 - span, 0):c0 + span + 1]
        if float(np.median(patch)) <= max_background:
            break
    return disc


def to_model_input(image01: np.ndarray) -> np.ndarray:
    """A display image in ``[0, 1]`` to torchxrayvision's ``[-1024, 1024]`` scale."""
    return ((np.clip(image01, 0, 1) * 2 - 1) * 1024).astype(np.float32)


def disc_batch(n: int, rng: np.random.Generator, backgrounds: Sequence[np.ndarray], *,
               crop: int | None = None, radius: tuple[float, float] = (5, 10),
               contrast: tuple[float, float] = (0.25, 0.45),
               decoys: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` model inputs ``(n, 1, crop, crop)``, targets ``(n, 2)`` and disc masks (as x).

    Every other image has a disc.
    Each image is a random ``crop`` x ``crop`` window (default: all) of one of ``backgrounds``
    (display images in ``[0, 1]``, all the same square size: phantoms or real radiographs),
    randomly flipped, with brightness and noise jitter. With probability ``decoys`` an image
    (with or without a disc) also gets a bright ring: the network must then look at the disc's
    inside, not only at a bright edge.
    """
    full = int(backgrounds[0].shape[0])
    size = crop or full
    x = np.empty((n, 1, size, size), np.float32)
    y = np.zeros((n, 2), np.float32)
    masks = np.zeros_like(x)
    for i in range(n):
        img = backgrounds[int(rng.integers(len(backgrounds)))]
        top, left = (int(v) for v in rng.integers(0, full - size + 1, 2))
        img = img[top:top + size, left:left + size]
        img = img[:, ::-1] if rng.uniform() < 0.5 else img
        img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)
        img = img + rng.normal(0, 0.01, img.shape)
        if rng.uniform() < decoys:
            ring = random_disc(size, size, rng, radius)
            img = add_disc(img, (ring.row, ring.column), ring.radius, rng.uniform(*contrast),
                           width=rng.uniform(2, 4))
        has_disc = i % 2 == 0
        if has_disc:
            disc = random_disc(size, size, rng, radius, image=img)
            img = add_disc(img, (disc.row, disc.column), disc.radius, rng.uniform(*contrast))
            masks[i, 0] = add_disc(masks[i, 0], (disc.row, disc.column), disc.radius, 1.0)
        y[i] = (1.0, 0.0) if has_disc else (0.0, 1.0)
        x[i, 0] = to_model_input(img)
    return x, y, masks


def _localisation_loss(model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss): the disc logit's evidence must come from the disc, and only from it.

    For a DenseNet (``features`` then ReLU, average pooling and ``classifier``) the disc logit
    is the mean over positions of the evidence map ``w . relu(features)``. Two terms: where
    there is a disc, the spatial softmax of the evidence is pulled onto the disc mask
    (cross-entropy); everywhere off the disc, the evidence should be flat (its variance), so
    that anatomy moves the logit neither way. The network is still a classifier; this decides
    *what* it looks at, which makes the right answer for an explanation known.
    """
    features = torch.relu(model.features(x))
    logits = model.classifier(features.mean(dim=(2, 3)))
    evidence = torch.einsum("nchw,c->nhw", features, model.classifier.weight[0]).flatten(1)
    target = torch.nn.functional.adaptive_avg_pool2d(masks, features.shape[2:]).flatten(1)
    outside = (target <= 0).float()
    mean_out = (evidence * outside).sum(1, keepdim=True) / outside.sum(1, keepdim=True)
    flat = (((evidence - mean_out) ** 2) * outside).sum(1) / outside.sum(1)
    loss = 0.1 * flat.mean()
    positive = y[:, 0] > 0
    if positive.any():
        t = target[positive] / target[positive].sum(1, keepdim=True).clamp_min(1e-6)
        loss = loss - (t * torch.log_softmax(evidence[positive], dim=1)).sum(1).mean()
    return logits, loss


def train_disc_detector(model: torch.nn.Module, *, steps: int = 1000, full_steps: int = 25,
                        crop: int = 64, batch_size: int = 16, lr: float = 3e-3,
                        seed: int = 0, size: int = 224, phantoms: int = 48,
                        radius: tuple[float, float] = (5, 10), localise: float = 1.0,
                        backgrounds: Sequence[np.ndarray] = ()) -> torch.nn.Module:
    """Train ``model`` (2 logits: :data:`DISC_LABELS`) to find discs; returns it in eval mode.

    ``steps`` on ``crop`` x ``crop`` windows (discs keep their pixel size, and the network is
    convolutional, so this is much cheaper than training on whole images), then ``full_steps``
    on whole ``size`` x ``size`` images to settle the output scale. Backgrounds: ``phantoms``
    chest phantoms plus ``backgrounds`` (e.g. real radiographs as display images in ``[0, 1]``,
    ``size`` x ``size``). ``localise`` weighs :func:`_localisation_loss` (0: plain
    classification; needs a model with ``features`` and ``classifier``, as a DenseNet has).
    Seeded: the same ``seed``, ``model`` initialisation and thread count give the same weights.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = [chest_phantom(size, size, rng) for _ in range(phantoms)] + list(backgrounds)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for step in range(steps + full_steps):
        if step == steps:
            for group in optimiser.param_groups:
                group["lr"] = lr / 3
        x, y, masks = (torch.from_numpy(a) for a in disc_batch(
            batch_size, rng, pool, crop=crop if step < steps else None, radius=radius))
        optimiser.zero_grad()
        if localise > 0:
            logits, where = _localisation_loss(model, x, masks, y)
            loss = loss_fn(logits, y) + localise * where
        else:
            loss = loss_fn(model(x), y)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps + full_steps - 1:
            logger.info("disc detector step %d loss %.4f", step, float(loss.detach()))
    return model.eval()
