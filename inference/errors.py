"""Errors raised by :mod:`inference`."""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of every error raised by :mod:`inference`."""


class ModelLoadError(InferenceError):
    """The model or its card could not be loaded; the message says what to do."""


class ModelCardError(ModelLoadError):
    """A model card is missing a field or has a wrong value."""
