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


# --------------------------------------------------------------------------------------------
# The C safety core (csrc/safety.h), with the Python core's interface
# --------------------------------------------------------------------------------------------
# reason bits of _cltc.SafetyCore (csrc/safety.h) -> the Python core's reason text
REASON_BITS = (
    (1 << 0, "waiting for inputs"),
    (1 << 1, "stale"),
    (1 << 2, "estop state unknown"),
    (1 << 3, "estop"),
    (1 << 4, "disabled"),
    (1 << 5, "clock jumped back"),
    (1 << 6, "clock gap"),
    (1 << 7, "no tick"),
    (1 << 8, "latched"),
    (1 << 9, "non-finite policy output"),
)
_SAFE_MODES = {"zero": 0, "hold": 1, "spec": 2}


def config_tuple(config: Any) -> tuple:
    """A `SafetyConfig` as `_cltc.SafetyCore` takes it."""
    return (
        float(config.sensor_timeout_s),
        int(config.resume_after_fresh_samples),
        _SAFE_MODES[config.safe_action],
        bool(config.reset_on_resume),
        float(config.max_action_rate),
        float(config.blend_s),
        float(config.max_dt_s),
        bool(config.use_measured_dt),
        float(config.watchdog_timeout_s),
    )


def space_tuple(space: Any) -> tuple:
    """An `ActionSpace` as `_cltc.SafetyCore` takes it."""

    def f64(a: Any) -> np.ndarray:
        return np.ascontiguousarray(a, np.float64)

    return (
        f64(space.low),
        f64(space.high),
        f64(space.zero),
        None if space.spec_safe is None else f64(space.spec_safe),
        f64(space.position),
        np.ascontiguousarray(space.feedback, np.int64),
        f64(space.action_domain[0]),
        f64(space.action_domain[1]),
        f64(space.observation_domain[0]),
        f64(space.observation_domain[1]),
    )


def latch_text(space: Any, kind: int, i: int, value: float) -> str:
    """The C core's latch (kind, index, value) worded as the Python core words it."""
    if kind == 0:
        return ""
    if kind == 1:
        lo, hi = space.observation_domain
        return (
            f"observation {space.observation_names[i]!r} = {value:.6g} is outside its "
            f"domain [{lo[i]:g}, {hi[i]:g}]"
        )
    if kind == 2:
        return "hidden state outside the bounds the LTC solver keeps it in (corruption)"
    lo, hi = space.action_domain
    return (
        f"action {space.action_names[i]!r} = {value:.6g} is outside its domain "
        f"[{lo[i]:g}, {hi[i]:g}]"
    )


def reason_category(reason: str) -> str:
    """The cause of a Python reason text, as `REASON_BITS` names it ("stale: /a" -> "stale")."""
    for _bit, text in REASON_BITS:
        if reason.startswith(text):
            return text
    return "other"


def reason_texts(bits: int, stale: list[str] | None = None) -> tuple[str, ...]:
    """The C core's reason bits as the Python core's reason texts (`stale`: the stale topics,
    for the text that names them)."""
    out = []
    for bit, text in REASON_BITS:
        if bits & bit:
            out.append(f"stale: {', '.join(stale)}" if text == "stale" and stale else text)
    return tuple(out)


class NativeSafetyCore:
    """`liquid_control.core.safety.SafetyCore` decided by the C core (same constructor, methods
    and `Command`s). The compiled control tick runs the C core directly; this class exists so
    that both cores run the same arbitrary sequences in the tests (test_native_safety.py), which
    keeps the C copy from drifting. Reason texts name the cause as the Python core's do (without
    its details, such as which topic is stale)."""

    def __init__(self, config: Any, space: Any, policy: Any, period_s: float) -> None:
        module = load()
        if module is None:
            raise RuntimeError(f"the compiled core is {why_not()}")
        self.config, self.space, self.policy, self.period_s = config, space, policy, period_s
        self._c = module.SafetyCore(config_tuple(config), space_tuple(space), float(period_s))
        self._topics: dict[str, int] = {}
        self._out = np.zeros(np.asarray(space.low).size)
        self._last: np.ndarray | None = None
        self._times: tuple[float, float] | None = None
        self._latch: tuple[tuple, str] = ((0, 0, 0.0), "")

    def set_policy(self, policy: Any, space: Any) -> None:
        """A swap (see `SafetyCore.set_policy`)."""
        self._c.set_space(space_tuple(space))
        self.policy, self.space = policy, space
        if self._last is not None:
            self._last = np.clip(self._last, space.low, space.high)

    def set_config(self, config: Any) -> None:
        """New settings from the next tick on."""
        self._c.set_config(config_tuple(config))
        self.config = config

    def restart(self) -> None:
        """Activation (see `SafetyCore.restart`)."""
        self._c.restart()
        self._last = None
        self._times = None

    @property
    def latched(self) -> str:
        """The latch's cause ('' when not latched), worded as the Python core words it (with
        the limits in force when it latched)."""
        latch = self._c.latch
        if latch[0] == 0:
            self._latch = (latch, "")
        elif latch != self._latch[0]:
            self._latch = (latch, self._latch_text(*latch))
        return self._latch[1]

    def _latch_text(self, kind: int, i: int, value: float) -> str:
        return latch_text(self.space, kind, i, value)

    @property
    def last_command(self) -> np.ndarray | None:
        """The last published command (None before the first)."""
        return None if self._last is None else self._last.copy()

    def safe_action(self) -> np.ndarray:
        """The safe action now."""
        out = np.zeros_like(self._out)
        self._c.safe_action(out)
        return out

    def tick(self, inp: Any) -> Any:
        """One tick's command (`SafetyCore.tick`)."""
        from .safety import Command

        index = self._topics
        for topic in inp.inputs:
            index.setdefault(topic, len(index))
        received = np.zeros(len(index))
        counts = np.zeros(len(index), np.int64)
        given = np.zeros(len(index), bool)
        for topic, sample in inp.inputs.items():
            k = index[topic]
            given[k] = True
            received[k] = np.nan if sample.received_s is None else sample.received_s
            counts[k] = sample.count
        if not given.all():
            raise ValueError("NativeSafetyCore: every tick must give the same input topics")
        latch_before = self.latched
        estop = -1 if inp.estop is None else int(bool(inp.estop))
        raw = None if inp.raw is None else np.ascontiguousarray(inp.raw, np.float64)
        decided = self._c.decide(
            float(inp.now_s), float(inp.wall_s), received, counts, raw, estop,
            bool(inp.enabled), bool(inp.reset_requested),
        )  # fmt: skip
        raw_action, state_ok = None, True
        if decided is not None:
            dt, reset = decided
            if reset:
                self.policy.reset()
            with np.errstate(all="ignore"):
                raw_action = np.asarray(self.policy.step(raw, dt, clip=False), np.float64)
            if raw_action.shape != self._out.shape:
                raw_action = np.full(self._out.shape, np.nan)
            if np.isfinite(raw_action).all():
                state_ok = bool(self.policy.state_ok())
        out = np.zeros_like(self._out)
        publish, commanding, reasons, events, dt, steps, reset_policy = self._c.finish(
            raw_action, state_ok, out
        )
        if reset_policy:
            self.policy.reset()
        self.latched  # noqa: B018 (words a new latch with the limits of this tick)
        texts = self._events(events, latch_before, inp)
        if not publish:
            return Command(None, False, ("waiting for inputs",), events=texts)
        self._last = out.copy()
        words = tuple(
            f"latched: {self.latched}" if text == "latched" else text
            for bit, text in REASON_BITS
            if reasons & bit
        )
        return Command(
            out, bool(commanding), words, None if np.isnan(dt) else dt, int(steps),
            raw_action, texts,
        )  # fmt: skip

    def _events(self, events: int, latch_before: str, inp: Any) -> tuple[str, ...]:
        times, self._times = self._times, (float(inp.now_s), float(inp.wall_s))
        texts = []
        if events & 1:
            texts.append(f"latch cleared by a reset request (was: {latch_before})")
        if events & 2 and times is not None:
            period, gap = inp.now_s - times[0], inp.wall_s - times[1]
            if period < 0:
                texts.append(f"clock jumped back by {-period:.3f} s: hidden state reset")
            elif period > self.config.max_dt_s:
                texts.append(
                    f"clock gap of {period:.3f} s (max_dt_s {self.config.max_dt_s:g}): hidden "
                    "state reset"
                )
            else:
                texts.append(f"no tick for {gap:.3f} s of wall time: hidden state reset")
        return tuple(texts)
