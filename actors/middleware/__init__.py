"""dramatiq middleware of MiniFlow, one per module."""

from .rejections import Rejections
from .signing import Signing
from .tracing import Tracing, TracingInstrument

__all__ = ["Rejections", "Signing", "Tracing", "TracingInstrument"]
