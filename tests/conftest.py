"""Shared fixtures: real radiographs (pydicom-data) and small models the tests make."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torchxrayvision as xrv
from pydicom.data import get_testdata_file

SHARED_CXR14 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr14"


def small_densenet(num_classes: int = 26, seed: int = 0) -> torch.nn.Module:
    """A torchxrayvision DenseNet of the real class, shrunk so tests run in seconds."""
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(
        num_classes=num_classes, in_channels=1, weights=None,
        block_config=(2, 2, 2, 2), growth_rate=8, num_init_features=16,
    )
    with torch.no_grad():  # untrained features are large: keep probabilities off 0 and 1
        model.classifier.weight.mul_(0.01)
    return model.eval()


@pytest.fixture(scope="session")
def cr_path() -> Path:
    """NEMA CR chest radiograph: MONOCHROME1, 15 bits stored, explicit VR little endian."""
    return Path(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="session")
def cr_j2k_lossless_path() -> Path:
    return Path(get_testdata_file("RG1_J2KR.dcm"))


@pytest.fixture(scope="session")
def cr_j2k_lossy_path() -> Path:
    return Path(get_testdata_file("RG1_J2KI.dcm"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def whole_model_path(model_dir: Path) -> Path:
    """A 26-output torchxrayvision DenseNet saved whole with ``torch.save`` (as the seed)."""
    path = model_dir / "pc-densenet-densenet-best.pt"
    torch.save(small_densenet(), path)
    return path


@pytest.fixture(scope="session")
def loaded_model(whole_model_path: Path):
    from inference import load_model

    return load_model(whole_model_path)


@pytest.fixture(scope="session")
def cxr14_dir() -> Path:
    """The shared NIH sample; tests using it skip when ``../shared`` is absent."""
    if not (SHARED_CXR14 / "labels.csv").is_file():
        pytest.skip("../shared/data/cxr14 is not present")
    return SHARED_CXR14


def require_tool(name: str) -> str:
    """Path of a real DICOM tool; missing is a failure in CI (which installs it), else a skip."""
    path = shutil.which(name)
    if path is None and os.environ.get("CI"):
        pytest.fail(f"{name} is not installed although CI should have installed it")
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it)")
    return path


#: Figures the suite reaches (fuzz cases, load held, faults survived), printed at the end.
FIGURES: list[str] = []


def record_figure(text: str) -> None:
    """Keep a line for the end-of-run summary (CI's log), whatever pytest captures."""
    FIGURES.append(text)


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures reached")
        for line in FIGURES:
            terminalreporter.write_line(line)
from postgres_server import postgres  # noqa: E402,F401  (a throwaway PostgreSQL)
from rabbit_cluster import rabbit  # noqa: E402,F401  (a real 3-node RabbitMQ cluster)
