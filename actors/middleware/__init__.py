"""dramatiq middleware of MiniFlow, one per module."""

from .rejections import Rejections
from .tracing import Tracing, TracingInstrument

__all__ = ["Rejections", "Tracing", "TracingInstrument"]
