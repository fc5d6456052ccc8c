"""The compiled LTC core (`_cltc.c`), with the numpy/torch paths as the fallback and reference.

The extension is built by setuptools (`pip install`, `colcon build`). Where it was not built (no
compiler) or is switched off (``LIQUID_CONTROL_NATIVE=0`` in the environment), `available()` is
False, `load()` returns None, and everything runs on the numpy runtime and the torch kernel; the
first `load()` then warns once, saying why. Both paths compute the same equations and are tested
against each other (test_native.py).

    from liquid_control.core import native
    net = native.network(cell, affine)      # a `_cltc.Net`, or None without the extension
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import numpy as np

ENV_SWITCH = "LIQUID_CONTROL_NATIVE"
_module: Any = None
_why_not = ""
_loaded = False


def load() -> Any:
    """The extension module, or None (with one warning per process saying why)."""
    global _module, _why_not, _loaded
    if _loaded:
        return _module
    _loaded = True
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        _why_not = f"switched off ({ENV_SWITCH}=0)"
    else:
        try:
            _module = importlib.import_module("liquid_control.core._cltc")
        except ImportError as exc:
            _why_not = f"not built ({exc})"
    if _module is None:
        warnings.warn(
            f"liquid_control: the compiled LTC core is {_why_not}; using the numpy runtime and "
            "the torch kernel (slower, same results)",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module


def available() -> bool:
    """Whether the compiled core is in use."""
    return load() is not None


def why_not() -> str:
    """'' when the compiled core is in use, else why not."""
    load()
    return _why_not


def network(
    synapses: dict[str, np.ndarray],
    affine: dict[str, np.ndarray],
    n: int,
    unfolds: int,
    epsilon: float,
) -> Any:
    """A compiled network (`_cltc.Net`) for an LTC cell's `synapses` and a policy's maps
    (`affine`: mean, inv_std, scale, offset, low, high), or None without the extension."""
    module = load()
    if module is None:
        return None
    arrays = {
        k: np.ascontiguousarray(v, np.int64 if k in ("src", "dst", "ssrc", "sdst") else np.float64)
        for k, v in {**synapses, **affine}.items()
    }
    return module.Net(
        int(n),
        int(arrays["output_w"].size),
        int(arrays["input_w"].size),
        int(unfolds),
        float(epsilon),
        arrays,
    )
