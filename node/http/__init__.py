"""The HTTP front: scoring, DICOMweb STOW-RS and operations, on the node's core."""

from node.http.main import create_app

__all__ = ["create_app"]
