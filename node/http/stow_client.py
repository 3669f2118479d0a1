"""STOW-RS out: store result objects to a DICOMweb server with dicomweb-client, with the
destination's credentials (``dicomweb_auth``) read for each request."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.outbound import DicomwebAuth, OutboundError

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


def _all_refused(error: Exception) -> Dataset | None:
    """The answer carried by a 409 (every instance refused, PS3.18 10.5.3), whose Failed SOP
    Sequence says why each was; ``None`` for any other error."""
    response = getattr(error, "response", None)
    if response is None or response.status_code != 409:
        return None
    try:
        return Dataset.from_json(response.json())
    except Exception:  # not a DICOM JSON answer: the HTTP error is the reason
        return None


def stow_files(url: str, paths: Sequence[Path], timeout: float = 60,
               auth: DicomwebAuth | None = None) -> list[tuple[Path, str | None]]:
    """Store ``paths`` in one STOW-RS request (authenticated with ``auth``); per file
    ``None`` or why it failed (credentials that cannot be read, a refusal: 401, 403...)."""
    from dicomweb_client.api import DICOMwebClient
    from requests import Session

    datasets, results = read_result_files(paths)
    if not datasets:
        return results
    session = Session()
    if auth is not None:
        try:
            session.auth = auth.http_auth()
        except OutboundError as e:
            return results + [(p, f"STOW-RS to {url}: {e}") for p, _ in datasets]
    client = DICOMwebClient(url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    unlisted: str | None = None  # what an instance the answer does not name gets
    try:
        response = client.store_instances([ds for _, ds in datasets])
    except Exception as e:
        reason = f"STOW-RS to {url} failed: {type(e).__name__}: {str(e)[:200]}"
        response, unlisted = _all_refused(e), reason
        if response is None:
            return results + [(p, reason) for p, _ in datasets]
    failed = {str(item.get("ReferencedSOPInstanceUID", "")):
              int(item.get("FailureReason", 0x0110))
              for item in (response.get("FailedSOPSequence", []) if response else [])}
    for path, ds in datasets:
        code = failed.get(str(ds.SOPInstanceUID))
        results.append((path, unlisted if code is None else
                         f"STOW-RS to {url}: failure reason 0x{code:04X}"))
    return results
