"""`Policy`: a trained LTC with its interface spec, loaded from a policy file (numpy only).

    policy = Policy.load("policies/cartpole_ltc19.lcp")
    policy.reset()
    action = policy.step(observation, dt=0.02)   # robot units in, robot units out

`step` normalises the raw observation with the spec's mean/std, advances the LTC by the elapsed
time `dt` (seconds; the LTC integrates irregular sampling), and maps the motor neurons' outputs to
actions with the spec's scale/offset, clipped to the limits.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
from typing import Any

import numpy as np

from .. import __version__
from . import native
from .ltc import PARAM_NAMES, POSITIVE_PARAMS, LTCCell, param_shapes
from .policy_file import PolicyFileError, read_policy_file, write_policy_file
from .spec import InterfaceSpec, SpecError
from .wiring import Wiring, WiringError

MAX_ODE_UNFOLDS = 64  # ncps uses 6; more is slower and no more accurate at control rates
EPSILON_RANGE = (1e-12, 1e-2)  # keeps the solver's denominator > 0 without biasing it
TIME_UNIT_RANGE_S = (1e-6, 3600.0)
STATE_TOLERANCE = 1e-6  # relative: rounding of the fused step, far below any corruption
MODEL_FIELDS = ("type", "ode_unfolds", "epsilon", "time_unit_s", "input_mapping", "output_mapping")


class Policy:
    """A deployable LTC policy (keeps its hidden state between `step` calls)."""

    def __init__(
        self,
        wiring: Wiring,
        params: dict[str, np.ndarray],
        spec: InterfaceSpec,
        ode_unfolds: int = 6,
        epsilon: float = 1e-8,
        time_unit_s: float | None = None,
        provenance: dict[str, Any] | None = None,
        content_hash: str | None = None,
    ) -> None:
        check_params(wiring, params)
        if spec.obs_dim != wiring.input_dim:
            raise SpecError(
                f"spec has {spec.obs_dim} observations but the wiring has {wiring.input_dim} sensory inputs"
            )
        if spec.action_dim != wiring.output_dim:
            raise SpecError(
                f"spec has {spec.action_dim} actions but the wiring has {wiring.output_dim} motor neurons"
            )
        if (
            isinstance(ode_unfolds, bool)
            or not isinstance(ode_unfolds, int)
            or not 1 <= ode_unfolds <= MAX_ODE_UNFOLDS
        ):
            raise ValueError(
                f"model.ode_unfolds: expected an integer from 1 to {MAX_ODE_UNFOLDS}, "
                f"got {ode_unfolds!r:.40}"
            )
        epsilon = _number("model.epsilon", epsilon, *EPSILON_RANGE)
        if time_unit_s is not None:
            time_unit_s = _number("model.time_unit_s", time_unit_s, *TIME_UNIT_RANGE_S)
        self.wiring = wiring
        self.params = {k: np.asarray(params[k]) for k in PARAM_NAMES}
        self.spec = spec
        self.ode_unfolds = ode_unfolds
        self.epsilon = float(epsilon)
        # One LTC time unit in seconds: by default one nominal control period, so a step at the
        # nominal rate integrates elapsed = 1.0 (the `ncps` convention) and jitter scales it.
        self.time_unit_s = float(time_unit_s) if time_unit_s else spec.control_period_s
        self.provenance = dict(provenance or {})
        self.content_hash = content_hash
        self.path: str | None = None
        self._cell = LTCCell(wiring, self.params, ode_unfolds, self.epsilon)
        self._mean, self._inv_std = spec.obs_mean, 1.0 / spec.obs_std
        self._scale, self._offset = spec.action_scale, spec.action_offset
        self._low, self._high = spec.action_low, spec.action_high
        self.state_low, self.state_high = state_bounds(wiring, self.params)
        self.state = self._cell.zero_state()
        self._init_native()

    # -- copies: the compiled twin is rebuilt, never copied ---------------------------------------
    def __deepcopy__(self, memo: dict) -> Policy:
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key != "_net":
                setattr(new, key, copy.deepcopy(value, memo))
        new._init_native()
        return new

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_net"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_native()

    # -- running ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero the hidden state (start of an episode, or after stale inputs)."""
        self.state = self._cell.zero_state()

    def step(
        self, observation: np.ndarray, dt: float | None = None, clip: bool = True
    ) -> np.ndarray:
        """One control step: raw observation (robot units) -> action (robot units, clipped).

        Args:
            observation: (obs_dim,) in the spec's order and units.
            dt: elapsed time since the previous step in seconds; None = the nominal period.
            clip: clip to the action limits (False: the scaled output as the network gives it,
                for the safety core's out-of-domain check, which clips afterwards).
        """
        elapsed = self._elapsed(dt)
        net = self._net
        if net is not None:  # the compiled core: normalise, step, scale and clip in one call
            obs = observation
            if obs.__class__ is not np.ndarray or obs.shape != self._obs_shape:
                obs = self._checked_shape(observation)
            state = self.state
            action = np.empty(self._m)
            try:
                net.step(obs, state, elapsed, action, clip)
            except TypeError:  # not float64, not contiguous, or a state that is not writable
                obs = np.ascontiguousarray(obs, np.float64)
                self.state = state = np.array(state, np.float64)
                net.step(obs, state, elapsed, action, clip)
            return action
        obs = self._checked_shape(observation)
        if not np.isfinite(obs).all():
            raise ValueError(
                f"observation: NaN or Inf at {np.flatnonzero(~np.isfinite(obs)).tolist()}"
            )
        u, self.state = self._cell.step((obs - self._mean) * self._inv_std, self.state, elapsed)
        action = self._offset + self._scale * u
        return np.clip(action, self._low, self._high) if clip else action

    def _checked_shape(self, observation: Any) -> np.ndarray:
        obs = np.asarray(observation, np.float64)
        if obs.shape != self._obs_shape:
            raise ValueError(f"observation: expected shape ({self.spec.obs_dim},), got {obs.shape}")
        return obs

    def _elapsed(self, dt: float | None) -> float:
        """`dt` seconds in LTC time units (None: the nominal period)."""
        if dt is None:
            return self._nominal_elapsed
        if not (isinstance(dt, (int, float, np.floating)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt: expected a finite number of seconds > 0, got {dt!r}")
        return dt / self.time_unit_s

    def _init_native(self) -> None:
        """The compiled twin of the cell and the affine maps (None without the extension)."""
        self._obs_shape = (self.spec.obs_dim,)
        self._m = self.spec.action_dim
        period = self.spec.control_period_s
        self._nominal_elapsed = 1.0 if self.time_unit_s == period else period / self.time_unit_s
        self._net = native.network(
            self._cell.synapses,
            {
                "mean": self._mean,
                "inv_std": self._inv_std,
                "scale": self._scale,
                "offset": self._offset,
                "low": self._low,
                "high": self._high,
            },
            self._cell.units,
            self._cell.ode_unfolds,
            self._cell.epsilon,
        )

    @property
    def native(self) -> bool:
        """Whether `step` runs on the compiled core."""
        return self._net is not None

    def rollout(self, observations: np.ndarray, dt: np.ndarray | float | None = None) -> np.ndarray:
        """`step` over a sequence: observations (T, obs_dim), dt (T,) seconds, a scalar or None
        (nominal); returns the actions (T, action_dim), state carried from and left in `state`.
        Runs in one call on the compiled core (the interpreter lock released meanwhile)."""
        obs = np.ascontiguousarray(observations, np.float64)
        if obs.ndim != 2 or obs.shape[1] != self.spec.obs_dim:
            raise ValueError(
                f"observations: expected shape (T, {self.spec.obs_dim}), got {obs.shape}"
            )
        T = obs.shape[0]
        if dt is None or np.ndim(dt) == 0:
            elapsed = np.full(T, self._elapsed(None if dt is None else float(dt)))
        else:
            dts = np.asarray(dt, np.float64)
            if dts.shape != (T,) or not (np.isfinite(dts).all() and (dts > 0).all()):
                raise ValueError(f"dt: expected {T} finite numbers of seconds > 0")
            elapsed = dts / self.time_unit_s
        if not np.isfinite(obs).all():
            raise ValueError("observations: NaN or Inf")
        if self._net is None:
            return np.array(
                [self.step(o, e * self.time_unit_s) for o, e in zip(obs, elapsed, strict=True)]
            ).reshape(T, self._m)
        actions = np.empty((T, self._m))
        self.state = np.array(self.state, np.float64)
        self._net.rollout(obs, elapsed, self.state, actions, None)
        return actions

    def network_step(self, x: np.ndarray, elapsed: float = 1.0) -> np.ndarray:
        """Step on already-normalised input, returning raw motor outputs (for tests and export)."""
        u, self.state = self._cell.step(np.asarray(x, np.float64), self.state, elapsed)
        return u

    # -- handing over to another process ----------------------------------------------------
    AFFINE = ("_mean", "_inv_std", "_scale", "_offset", "_low", "_high")

    def runtime(self) -> dict[str, np.ndarray]:
        """Everything `step` reads, as arrays (the cell's precomputed arrays, the spec's affine maps
        and limits, the time unit): `from_runtime` rebuilds a stepping policy from it in tens of
        microseconds, with no file parsing or validation (those ran where `runtime` was called)."""
        out = {f"cell.{k}": v for k, v in self._cell.runtime().items()}
        out.update({name[1:]: np.array(getattr(self, name), np.float64) for name in self.AFFINE})
        out["time_unit_s"] = np.array(self.time_unit_s)
        out["state_low"], out["state_high"] = self.state_low.copy(), self.state_high.copy()
        return out

    @classmethod
    def from_runtime(
        cls, spec: InterfaceSpec, arrays: dict[str, np.ndarray], content_hash: str | None = None
    ) -> Policy:
        """A policy that steps like the one whose `runtime()` gave `arrays`. `spec` gives the
        channel layout (the affine maps and limits come from `arrays`); `wiring`, `params` and
        `provenance` are not carried (None / empty): such a policy runs, it is not saved."""
        policy = cls.__new__(cls)
        policy._cell = LTCCell.from_runtime(
            {k[5:]: v for k, v in arrays.items() if k.startswith("cell.")}
        )
        for name in cls.AFFINE:
            value = np.array(arrays[name[1:]], np.float64)
            size = spec.obs_dim if name in ("_mean", "_inv_std") else spec.action_dim
            if value.shape != (size,):
                raise ValueError(
                    f"policy runtime {name[1:]}: expected ({size},), got {value.shape}"
                )
            setattr(policy, name, value)
        if policy._cell._xs.size != spec.obs_dim + 1 or policy._cell._m != spec.action_dim:
            raise ValueError("policy runtime: the cell does not fit the spec's dimensions")
        policy.wiring, policy.params, policy.spec = None, {}, spec  # type: ignore[assignment]
        policy.ode_unfolds, policy.epsilon = policy._cell.ode_unfolds, policy._cell.epsilon
        policy.time_unit_s = float(arrays["time_unit_s"])
        policy.state_low = np.array(arrays["state_low"], np.float64)
        policy.state_high = np.array(arrays["state_high"], np.float64)
        if policy.state_low.shape != (policy._cell.units,) or policy.state_high.shape != (
            policy._cell.units,
        ):
            raise ValueError("policy runtime: state bounds do not fit the cell")
        policy.provenance, policy.content_hash, policy.path = {}, content_hash, None
        policy.state = policy._cell.zero_state()
        policy._init_native()
        return policy

    # -- files -----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The JSON metadata the policy file stores (model, wiring, spec, provenance)."""
        return {
            "model": {
                "type": "LTC",
                "ode_unfolds": self.ode_unfolds,
                "epsilon": self.epsilon,
                "time_unit_s": self.time_unit_s,
                "input_mapping": "affine",
                "output_mapping": "affine",
            },
            "wiring": self.wiring.to_dict(),
            "spec": self.spec.to_dict(),
            "provenance": self.provenance,
        }

    def save(self, path: str | os.PathLike, dtype: str = "float32") -> str:
        """Write the policy file atomically; returns its content hash."""
        prov = dict(self.provenance)
        prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        prov.setdefault("project_version", __version__)
        self.provenance = prov
        tensors = {k: np.asarray(v, dtype) for k, v in self.params.items()}
        self.content_hash = write_policy_file(path, self.metadata(), tensors)
        return self.content_hash

    @classmethod
    def load(cls, path: str | os.PathLike) -> Policy:
        """Load and validate a policy file.

        Every malformed file raises one `PolicyFileError` naming the field and what was expected:
        the file itself (`read_policy_file`: format, hash, tensors), the model settings (bounded
        `ode_unfolds`, `epsilon`, `time_unit_s`), the wiring, the interface spec, the weights, and
        finally one step on the normaliser's mean observation, which must give a finite action and
        a hidden state inside its bounds. Nothing else escapes: an unexpected exception from the
        checks themselves becomes a PolicyFileError too (the node must never crash on a file)."""
        try:
            return cls._load(path)
        except PolicyFileError:
            raise
        except Exception as exc:  # noqa: BLE001 (last resort: any file content ends in a refusal)
            raise PolicyFileError(
                path, f"invalid content ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None

    @classmethod
    def _load(cls, path: str | os.PathLike) -> Policy:
        meta, tensors = read_policy_file(path)
        model = meta.get("model")
        if not isinstance(model, dict) or model.get("type") != "LTC":
            raise PolicyFileError(
                path, f"model: expected {{'type': 'LTC', ...}}, got {model!r:.80}"
            )
        unknown = sorted(set(model) - set(MODEL_FIELDS))
        if unknown:
            raise PolicyFileError(
                path, f"model: unknown fields {unknown}; expected some of {list(MODEL_FIELDS)}"
            )
        for key in ("input_mapping", "output_mapping"):
            if model.get(key, "affine") != "affine":
                raise PolicyFileError(
                    path, f"model.{key}: expected 'affine', got {model.get(key)!r:.40}"
                )
        provenance = meta.get("provenance", {})
        if not isinstance(provenance, dict):
            raise PolicyFileError(path, f"provenance: expected a mapping, got {provenance!r:.80}")
        try:
            wiring = Wiring.from_dict(meta.get("wiring"))
        except WiringError as exc:
            raise PolicyFileError(path, f"wiring: {exc}") from None
        try:
            spec = InterfaceSpec.from_dict(meta.get("spec"))
        except SpecError as exc:
            raise PolicyFileError(path, f"interface spec: {exc}") from None
        try:
            policy = cls(
                wiring,
                tensors,
                spec,
                ode_unfolds=model.get("ode_unfolds", 6),
                epsilon=model.get("epsilon", 1e-8),
                time_unit_s=model.get("time_unit_s"),
                provenance=provenance,
                content_hash=meta.get("content_hash"),
            )
        except (ValueError, TypeError) as exc:
            raise PolicyFileError(path, str(exc)) from None
        policy.path = str(path)
        policy.check_steps_finite(path)
        return policy

    def check_steps_finite(self, path: str | os.PathLike = "policy") -> None:
        """One nominal step on the normaliser's mean observation must give a finite action and a
        hidden state within `state_low`/`state_high` (PolicyFileError otherwise); state reset."""
        with np.errstate(all="ignore"):
            action = self.step(self.spec.obs_mean)
        state = self.state
        self.reset()
        if not np.isfinite(action).all() or not np.isfinite(state).all():
            raise PolicyFileError(
                path,
                "one step on the mean observation gives a non-finite action "
                f"{np.round(action, 6).tolist()} (weights out of any usable range)",
            )
        if not self.state_ok(state):
            raise PolicyFileError(path, "one step leaves the hidden state outside its bounds")

    def state_ok(self, state: np.ndarray | None = None) -> bool:
        """Whether a hidden state lies inside the box the LTC solver keeps it in (see
        `state_bounds`); False means corruption (or a bug), never a legitimate state."""
        v = self.state if state is None else state
        tol = STATE_TOLERANCE * (1.0 + np.maximum(np.abs(self.state_low), np.abs(self.state_high)))
        return bool(np.all(v >= self.state_low - tol) and np.all(v <= self.state_high + tol))

    # -- description -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Sizes, rates, robot, hash and provenance, for `inspect` and reports."""
        return {
            "wiring": self.wiring.summary(),
            "ode_unfolds": self.ode_unfolds,
            "control_rate_hz": self.spec.control_rate_hz,
            "time_unit_s": self.time_unit_s,
            "robot": self.spec.robot,
            "observations": self.spec.obs_dim,
            "actions": self.spec.action_dim,
            "content_hash": self.content_hash,
            "provenance": self.provenance,
        }


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number from {lo:g} to {hi:g}, got {value!r:.40}")
    try:
        v = float(value)
    except OverflowError:  # an integer beyond float range
        v = math.inf
    if not lo <= v <= hi:  # NaN fails too
        raise ValueError(f"{name}: expected a number from {lo:g} to {hi:g}, got {v!r}")
    return v


def state_bounds(wiring: Wiring, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The box every neuron's potential stays in, whatever the inputs and elapsed times.

    Each fused semi-implicit step (`ltc.py`) sets v_j to (sum_k c_k x_k) / (sum_k c_k + eps) with
    weights c_k >= 0 (cm/h, gleak, w*s) over x_k in {v_j, vleak_j, erev_ij of its synapses}: a
    weighted mean shrunk towards 0 (the LTC paper's state-stability result). From v = 0, v_j so
    stays within [min(0, vleak_j, erev_.j), max(0, vleak_j, erev_.j)]; a state outside can only
    come from corruption. Returns (low, high), each (units,)."""
    vleak = np.asarray(params["vleak"], np.float64)
    lo, hi = np.minimum(vleak, 0.0), np.maximum(vleak, 0.0)
    for adj, erev in (
        (wiring.adjacency, params["erev"]),
        (wiring.sensory_adjacency, params["sensory_erev"]),
    ):
        present = np.asarray(adj) != 0
        e = np.asarray(erev, np.float64)
        lo = np.minimum(lo, np.where(present, e, np.inf).min(axis=0))
        hi = np.maximum(hi, np.where(present, e, -np.inf).max(axis=0))
    return lo, hi


def check_params(wiring: Wiring, params: dict[str, np.ndarray]) -> None:
    """Every LTC parameter present, with the wiring's shapes, finite, conductances >= 0."""
    shapes = param_shapes(wiring)
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"weights: missing tensors {missing}")
    extra = sorted(set(params) - set(PARAM_NAMES))
    if extra:
        raise ValueError(f"weights: unexpected tensors {extra}; expected {list(PARAM_NAMES)}")
    for name in PARAM_NAMES:
        arr = np.asarray(params[name])
        if arr.shape != shapes[name]:
            raise ValueError(
                f"weights: tensor {name!r} has shape {list(arr.shape)}, the wiring needs {list(shapes[name])}"
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"weights: tensor {name!r} has {int(bad.sum())} NaN/Inf values")
        if name in POSITIVE_PARAMS and (arr < 0).any():
            raise ValueError(
                f"weights: tensor {name!r} has negative values (min {arr.min():.3g}); conductances and capacitances must be >= 0"
            )
