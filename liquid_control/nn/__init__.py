"""torch side: the LTC module for BPTT training and ncps interop (not on the deploy path)."""

from .ltc import LTC
from .ncps_interop import from_ncps

__all__ = ["LTC", "from_ncps"]
