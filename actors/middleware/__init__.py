"""dramatiq middleware of MiniFlow, one per module."""

from .rejections import Rejections

__all__ = ["Rejections"]
