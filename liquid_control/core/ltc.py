"""Liquid Time-Constant network, numpy runtime (the deploy path: no torch).

Neuron model of Hasani et al., "Liquid Time-Constant Networks" (AAAI 2021, arXiv 2006.04439), as
parameterised by Neural Circuit Policies. Each neuron j has a potential v_j with

    cm_j dv_j/dt = gleak_j (vleak_j - v_j) + sum_i w_ij sigmoid(sigma_ij (v_i - mu_ij)) (erev_ij - v_j)

(i runs over neurons and sensory inputs). The fused semi-implicit Euler step (paper eq. 3) with
step h = elapsed / ode_unfolds, unrolled `ode_unfolds` times per control step, is

    v_j <- (cm_j/h v_j + gleak_j vleak_j + sum_i w_ij s_ij erev_ij)
           / (cm_j/h + gleak_j + sum_i w_ij s_ij + eps),     s_ij = sigmoid(sigma_ij (v_i - mu_ij)).

The sensory terms depend on the input only, so they are computed once per control step. Inputs pass
an affine map (input_w, input_b) first; outputs are the first `output_dim` (motor) neurons' states
through an affine map (output_w, output_b). These are the numerics of `ncps.torch.LTCCell`.

Parameters here are the *effective* (physical) values: conductances w, sensory_w, gleak and
capacitances cm are >= 0, as the policy file stores them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from .wiring import Wiring

PARAM_NAMES = (
    "gleak",
    "vleak",
    "cm",
    "w",
    "sigma",
    "mu",
    "erev",
    "sensory_w",
    "sensory_sigma",
    "sensory_mu",
    "sensory_erev",
    "input_w",
    "input_b",
    "output_w",
    "output_b",
)
POSITIVE_PARAMS = ("gleak", "cm", "w", "sensory_w")


def param_shapes(wiring: Wiring) -> dict[str, tuple[int, ...]]:
    """Shape of every LTC parameter for a wiring."""
    n, s, m = wiring.units, wiring.input_dim, wiring.output_dim
    return {
        "gleak": (n,),
        "vleak": (n,),
        "cm": (n,),
        "w": (n, n),
        "sigma": (n, n),
        "mu": (n, n),
        "erev": (n, n),
        "sensory_w": (s, n),
        "sensory_sigma": (s, n),
        "sensory_mu": (s, n),
        "sensory_erev": (s, n),
        "input_w": (s,),
        "input_b": (s,),
        "output_w": (m,),
        "output_b": (m,),
    }


def init_params(wiring: Wiring, seed: int = 0) -> dict[str, np.ndarray]:
    """Random initial parameters in the ranges `ncps` uses (erev = wiring polarity)."""
    rng = np.random.default_rng(seed)
    shapes = param_shapes(wiring)

    def uniform(name: str, lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, shapes[name])

    return {
        "gleak": uniform("gleak", 0.001, 1.0),
        "vleak": uniform("vleak", -0.2, 0.2),
        "cm": uniform("cm", 0.4, 0.6),
        "w": uniform("w", 0.001, 1.0),
        "sigma": uniform("sigma", 3.0, 8.0),
        "mu": uniform("mu", 0.3, 0.8),
        "erev": wiring.adjacency.astype(np.float64),
        "sensory_w": uniform("sensory_w", 0.001, 1.0),
        "sensory_sigma": uniform("sensory_sigma", 3.0, 8.0),
        "sensory_mu": uniform("sensory_mu", 0.3, 0.8),
        "sensory_erev": wiring.sensory_adjacency.astype(np.float64),
        "input_w": np.ones(shapes["input_w"]),
        "input_b": np.zeros(shapes["input_b"]),
        "output_w": np.ones(shapes["output_w"]),
        "output_b": np.zeros(shapes["output_b"]),
    }


@dataclass
class LTCCell:
    """Precomputed LTC step for one wiring and parameter set (float64, one sample).

    `step(x, v, elapsed)` advances the state `v` (units,) by `elapsed` time units with input `x`
    (input_dim,) and returns ``(output, new_state)``.

    Speed: numpy costs ~1-2 us per call whatever the size at 19 neurons, so the step is written as
    few calls over the existing synapses only. With sigmoid(z) = (1 + tanh(z/2)) / 2, every unfold is

        t = tanh([v, 1] @ G)          # one entry per synapse: sigma/2 (v_src - mu)
        [num, den] = [t, v, 1] @ M    # M holds w*erev/2, w/2, diag(cm/h) and the constant terms
        v = num / den

    four numpy calls, with M's diagonal and constant row refreshed once per control step.
    """

    wiring: Wiring
    params: dict[str, np.ndarray]
    ode_unfolds: int = 6
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        p = {k: np.asarray(v, np.float64) for k, v in self.params.items()}
        n = self.wiring.units
        src, dst = np.nonzero(self.wiring.adjacency)
        ssrc, sdst = np.nonzero(self.wiring.sensory_adjacency)
        k = src.size

        def tanh_arguments(rows: int, src, sigma, mu) -> np.ndarray:
            g = np.zeros((rows + 1, src.size))
            g[src, np.arange(src.size)] = 0.5 * sigma
            g[rows, :] = -0.5 * sigma * mu
            return g

        def synapse_sums(dst, w, erev) -> np.ndarray:
            out = np.zeros((dst.size, 2 * n))
            out[np.arange(dst.size), dst] = 0.5 * w * erev
            out[np.arange(dst.size), n + dst] = 0.5 * w
            return out

        def constant_half(dst, w, erev) -> tuple[np.ndarray, np.ndarray]:
            return np.bincount(dst, 0.5 * w * erev, n), np.bincount(dst, 0.5 * w, n)

        w, e = p["w"][src, dst], p["erev"][src, dst]
        sw, se = p["sensory_w"][ssrc, sdst], p["sensory_erev"][ssrc, sdst]
        self._G = tanh_arguments(n, src, p["sigma"][src, dst], p["mu"][src, dst])
        self._Gs = tanh_arguments(
            self.wiring.input_dim, ssrc, p["sensory_sigma"][ssrc, sdst], p["sensory_mu"][ssrc, sdst]
        )
        self._M = np.zeros((k + n + 1, 2 * n))
        self._M[:k] = synapse_sums(dst, w, e)
        self._Ms = synapse_sums(sdst, sw, se)
        half_num, half_den = constant_half(dst, w, e)
        shalf_num, shalf_den = constant_half(sdst, sw, se)
        const_num = p["gleak"] * p["vleak"] + half_num + shalf_num
        const_den = p["gleak"] + half_den + shalf_den + self.epsilon
        self._cm_unfolds = p["cm"] * self.ode_unfolds
        # Fold the input affine map into the sensory tanh arguments: [x, 1] @ Gs.
        gs = self._Gs
        gs[-1] += p["input_b"] @ gs[:-1]
        gs[:-1] *= p["input_w"][:, None]
        self._const = np.concatenate([const_num, const_den])
        self._out_w, self._out_b = p["output_w"], p["output_b"]
        # The same network as synapse lists, for the compiled core (liquid_control.core.native).
        self._synapses = {
            "src": src.astype(np.int64),
            "dst": dst.astype(np.int64),
            "wn": w * e,
            "wd": w.copy(),
            "sigma": p["sigma"][src, dst],
            "mu": p["mu"][src, dst],
            "ssrc": ssrc.astype(np.int64),
            "sdst": sdst.astype(np.int64),
            "swn": sw * se,
            "swd": sw.copy(),
            "ssigma": p["sensory_sigma"][ssrc, sdst],
            "smu": p["sensory_mu"][ssrc, sdst],
            "glvl": p["gleak"] * p["vleak"],
            "gleak": p["gleak"].copy(),
            "cm": p["cm"].copy(),
            "input_w": p["input_w"].copy(),
            "input_b": p["input_b"].copy(),
            "output_w": p["output_w"].copy(),
            "output_b": p["output_b"].copy(),
        }
        self._init_buffers()

    # The precomputed arrays `step` reads: all a process needs to run the cell (see `runtime`).
    RUNTIME = ("_G", "_Gs", "_M", "_Ms", "_const", "_cm_unfolds", "_out_w", "_out_b")

    def runtime(self) -> dict[str, np.ndarray]:
        """The precomputed arrays (copies), from which `from_runtime` rebuilds the cell in tens of
        microseconds (the policy node hands a swapped policy to its control process this way)."""
        out = {name[1:]: getattr(self, name).copy() for name in self.RUNTIME}
        out["ode_unfolds"] = np.array(self.ode_unfolds)
        out["epsilon"] = np.array(self.epsilon)
        out.update({f"syn.{k}": v.astype(np.float64) for k, v in self._synapses.items()})
        return out

    @classmethod
    def from_runtime(cls, arrays: dict[str, np.ndarray]) -> LTCCell:
        """The cell whose `runtime()` gave `arrays` (no wiring or parameters attached)."""
        cell = cls.__new__(cls)
        cell.wiring, cell.params = None, None  # type: ignore[assignment]
        cell.ode_unfolds = int(arrays["ode_unfolds"])
        cell.epsilon = float(arrays["epsilon"])
        for name in cls.RUNTIME:
            setattr(cell, name, np.array(arrays[name[1:]], np.float64))
        cell._synapses = {
            k[4:]: np.array(v, np.int64 if k[4:] in ("src", "dst", "ssrc", "sdst") else np.float64)
            for k, v in arrays.items()
            if k.startswith("syn.")
        }
        n2 = cell._const.size
        if n2 % 2 or cell._M.shape[1] != n2 or cell._Ms.shape[1] != n2:
            raise ValueError(f"LTC runtime arrays: inconsistent shapes {cell._M.shape}, {n2}")
        cell._init_buffers()
        return cell

    def _init_buffers(self) -> None:
        n, m = self._const.size // 2, self._out_w.size
        k = self._M.shape[0] - n - 1
        self._diag = (np.arange(k, k + n), np.arange(n))
        self._k, self._n, self._m = k, n, m
        # Work buffers and their views, made once: the step allocates almost nothing.
        self._u = np.zeros(k + n + 1)  # [t, v, 1]
        self._u[-1] = 1.0
        self._t, self._v, self._v1 = self._u[:k], self._u[k : k + n], self._u[k:]
        self._nd = np.zeros(2 * n)
        self._num, self._den = self._nd[:n], self._nd[n:]
        self._xs = np.ones(self._Gs.shape[0])  # [x, 1]
        self._x = self._xs[:-1]
        self._last_row, self._last_row_den = self._M[-1], self._M[-1, n:]

    def __deepcopy__(self, memo: dict) -> LTCCell:
        # The work buffers are views into each other; a field-by-field copy would break that
        # sharing (and step would read stale buffers), so a copy is rebuilt from the parameters.
        if self.params is None:  # a cell rebuilt from runtime arrays: rebuild it the same way
            return LTCCell.from_runtime(self.runtime())
        return LTCCell(
            self.wiring, copy.deepcopy(self.params, memo), self.ode_unfolds, self.epsilon
        )

    @property
    def synapses(self) -> dict[str, np.ndarray]:
        """The network as synapse lists (src, dst, wn = w erev, wd = w, sigma, mu; the same for
        the sensory synapses; per-neuron glvl = gleak vleak, gleak, cm; the affine maps)."""
        return self._synapses

    @property
    def units(self) -> int:
        """Number of neurons."""
        return self._n

    def zero_state(self) -> np.ndarray:
        """The resting hidden state, (units,) zeros."""
        return np.zeros(self.units)

    def step(
        self, x: np.ndarray, v: np.ndarray, elapsed: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Advance `v` by `elapsed` time units with input `x`; returns (motor outputs, new state)."""
        self._x[:] = x
        sensory = np.dot(np.tanh(np.dot(self._xs, self._Gs)), self._Ms)  # once per step
        cm_t = self._cm_unfolds / elapsed  # cm / h with h = elapsed / ode_unfolds
        M = self._M
        M[self._diag] = cm_t
        np.add(self._const, sensory, out=self._last_row)
        self._last_row_den += cm_t
        u, t, vv, v1, G, nd = self._u, self._t, self._v, self._v1, self._G, self._nd
        vv[:] = v
        for _ in range(self.ode_unfolds):
            np.dot(v1, G, out=t)
            np.tanh(t, out=t)
            np.dot(u, M, out=nd)
            np.divide(self._num, self._den, out=vv)
        v = vv.copy()
        return v[: self._m] * self._out_w + self._out_b, v
