"""A naive Azure ML entry script: the yardstick of ``cxr-node bench``'s baseline phase.

Written as a data scientist writes a scoring service first, from the Azure ML and
torchxrayvision examples: pydicom reads the request body, ``pixel_array`` decodes it, the
modality LUT and a MONOCHROME1 inversion make it a display image, then torchxrayvision's own
normalize, ``XRayCenterCrop`` and ``XRayResizer`` (as in training) and one eager PyTorch
forward per request. Nothing of the node is used (the point is what one would have without
it). Run by ``azmlinfsrv --entry_script`` with ``WORKER_COUNT=1``; the model is
``$AZUREML_MODEL_DIR/model.pt``, the same weights file the node loads (a whole module saved
with ``torch.save``).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pydicom
import torch
import torchvision
import torchxrayvision as xrv
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from pydicom.pixels import apply_modality_lut

model: Any = None
device = "cpu"
transform: Any = None


def init() -> None:
    """Load the model once per worker."""
    global model, device, transform
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.pt")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.load(path, map_location=device, weights_only=False)
    model.eval()
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(),
                                                xrv.datasets.XRayResizer(224)])


def _image(body: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(body))
    pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    maxval = float(2 ** int(ds.BitsStored) - 1)
    pixels = np.clip(pixels - min(0.0, float(pixels.min())), 0, maxval)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = maxval - pixels
    img = xrv.datasets.normalize(pixels, maxval, reshape=True)
    return transform(img)


@rawhttp
def run(request: AMLRequest) -> Any:
    """``POST`` one DICOM radiograph (the raw body): its probability per label."""
    if request.method != "POST":
        return {"error": "POST a DICOM image"}
    img = _image(request.get_data())
    x = torch.from_numpy(img).unsqueeze(0).to(device)
    with torch.no_grad():
        out = model(x)
    if not (getattr(model, "apply_sigmoid", False) or getattr(model, "op_threshs", None)
            is not None):
        out = torch.sigmoid(out)
    probabilities = out[0].cpu().numpy().tolist()
    labels = list(getattr(model, "pathologies", None) or [])
    if len(labels) != len(probabilities):
        labels = [f"output {i}" for i in range(len(probabilities))]
    return {"probabilities": dict(zip(labels, probabilities, strict=True))}
