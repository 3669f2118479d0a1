"""Errors raised by :mod:`dicom_io`.

Every error carries a short machine-readable ``code`` (stable, used in logs, DICOM failure
comments and HTTP bodies) and a human-readable ``reason``. Neither ever contains patient data.
"""

from __future__ import annotations


class DicomIOError(Exception):
    """Base class of every error raised by :mod:`dicom_io`."""

    code: str = "dicom-io-error"

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class DeclinedError(DicomIOError):
    """A valid DICOM object that this model must not be run on (wrong modality, lateral view...).

    The node stores such an object as *skipped*; it is not a transfer failure.
    """


class InvalidInputError(DicomIOError):
    """Input that is not a readable image: not DICOM, or a header that lies about its pixels."""


class ResultBuildError(DicomIOError):
    """A result object (SR, secondary capture, parametric map) could not be built."""
