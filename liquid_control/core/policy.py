"""`Policy`: a trained LTC with its interface spec, loaded from a policy file (numpy only).

    policy = Policy.load("policies/cartpole_ltc19.lcp")
    policy.reset()
    action = policy.step(observation, dt=0.02)   # robot units in, robot units out

`step` normalises the raw observation with the spec's mean/std, advances the LTC by the elapsed
time `dt` (seconds; the LTC integrates irregular sampling), and maps the motor neurons' outputs to
actions with the spec's scale/offset, clipped to the limits.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from typing import Any

import numpy as np

from .. import __version__
from .ltc import PARAM_NAMES, POSITIVE_PARAMS, LTCCell, param_shapes
from .policy_file import PolicyFileError, read_policy_file, write_policy_file
from .spec import InterfaceSpec, SpecError
from .wiring import Wiring, WiringError


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
        if not isinstance(ode_unfolds, int) or ode_unfolds < 1:
            raise ValueError(f"ode_unfolds: expected an integer >= 1, got {ode_unfolds!r}")
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
        self.state = self._cell.zero_state()

    # -- running ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero the hidden state (start of an episode, or after stale inputs)."""
        self.state = self._cell.zero_state()

    def step(self, observation: np.ndarray, dt: float | None = None) -> np.ndarray:
        """One control step: raw observation (robot units) -> action (robot units, clipped).

        Args:
            observation: (obs_dim,) in the spec's order and units.
            dt: elapsed time since the previous step in seconds; None = the nominal period.
        """
        obs = np.asarray(observation, np.float64)
        if obs.shape != (self.spec.obs_dim,):
            raise ValueError(f"observation: expected shape ({self.spec.obs_dim},), got {obs.shape}")
        if not np.isfinite(obs).all():
            raise ValueError(
                f"observation: NaN or Inf at {np.flatnonzero(~np.isfinite(obs)).tolist()}"
            )
        if dt is None:
            elapsed = (
                1.0
                if self.time_unit_s == self.spec.control_period_s
                else self.spec.control_period_s / self.time_unit_s
            )
        else:
            if not (isinstance(dt, (int, float, np.floating)) and math.isfinite(dt) and dt > 0):
                raise ValueError(f"dt: expected a finite number of seconds > 0, got {dt!r}")
            elapsed = dt / self.time_unit_s
        u, self.state = self._cell.step((obs - self._mean) * self._inv_std, self.state, elapsed)
        return np.clip(self._offset + self._scale * u, self._low, self._high)

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
        policy.ode_unfolds, policy.epsilon = policy._cell.ode_unfolds, float("nan")
        policy.time_unit_s = float(arrays["time_unit_s"])
        policy.provenance, policy.content_hash, policy.path = {}, content_hash, None
        policy.state = policy._cell.zero_state()
        return policy

    # -- files -----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
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
        """Load and validate a policy file (raises PolicyFileError naming the problem)."""
        meta, tensors = read_policy_file(path)
        model = meta.get("model")
        if not isinstance(model, dict) or model.get("type") != "LTC":
            raise PolicyFileError(path, f"model: expected {{'type': 'LTC', ...}}, got {model!r}")
        for key in ("input_mapping", "output_mapping"):
            if model.get(key, "affine") != "affine":
                raise PolicyFileError(
                    path, f"model.{key}: expected 'affine', got {model.get(key)!r}"
                )
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
                provenance=meta.get("provenance"),
                content_hash=meta.get("content_hash"),
            )
        except (ValueError, TypeError) as exc:
            raise PolicyFileError(path, str(exc)) from None
        policy.path = str(path)
        return policy

    # -- description -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
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
