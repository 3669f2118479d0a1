"""The cxr-node process: command line, DIMSE and HTTP fronts."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version


def version() -> str:
    """This release's version (the installed distribution's), ``"unknown"`` when run from a
    folder that was never installed."""
    try:
        return _distribution_version("cxr-node")
    except PackageNotFoundError:
        return "unknown"
