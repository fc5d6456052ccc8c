"""torch side: the LTC module for BPTT training, ncps interop (imports torch; not on the deploy path)."""

from .ltc import LTC

__all__ = ["LTC"]
