"""STOW-RS out: store result objects to a DICOMweb server with dicomweb-client."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)


def read_result_files(paths: Sequence[Path]
                      ) -> tuple[list[tuple[Path, Dataset]], list[tuple[Path, str | None]]]:
    """Result files to send: (path, dataset) of those readable, (path, reason) of the rest."""
    datasets: list[tuple[Path, Dataset]] = []
    failures: list[tuple[Path, str | None]] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
            datasets.append((path, ds))
        except Exception as e:
            failures.append((path, f"result file unreadable: {type(e).__name__}"))
    return datasets, failures


def stow_files(url: str, paths: Sequence[Path], timeout: float = 60,
               token: str | None = None) -> list[tuple[Path, str | None]]:
    """Store ``paths`` in one STOW-RS request; per file ``None`` or why it failed."""
    from dicomweb_client.api import DICOMwebClient
    from requests import Session

    datasets, results = read_result_files(paths)
    if not datasets:
        return results
    session = Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(url, session=session)
    client.set_http_retry_params(retry=False)
    try:
        response = client.store_instances([ds for _, ds in datasets])
    except Exception as e:
        reason = f"STOW-RS to {url} failed: {type(e).__name__}: {str(e)[:200]}"
        return results + [(p, reason) for p, _ in datasets]
    failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0x0110))
              for item in (response.get("FailedSOPSequence", []) if response else [])}
    for path, ds in datasets:
        code = failed.get(str(ds.SOPInstanceUID))
        results.append((path, None if code is None else
                         f"STOW-RS to {url}: failure reason 0x{code:04X}"))
    return results
