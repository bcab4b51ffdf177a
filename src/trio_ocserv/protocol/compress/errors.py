"""The one error type every compression codec raises on hostile or broken input."""

from __future__ import annotations


class CompressionError(Exception):
    """A compressed payload could not be decoded (corrupt, truncated, or too large)."""
