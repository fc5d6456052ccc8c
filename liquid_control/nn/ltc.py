"""LTC network as a torch module, for training by backpropagation through time.

Same neuron model and fused semi-implicit solver as `liquid_control.core.ltc` (see the equations
there) and the same parameters as `ncps.torch.LTCCell`. Differences from `ncps.torch.LTC`:

- ``elapsed`` is per sample and per step, shape (B, T), and works for every batch size (ncps
  squeezes ``timespans[:, t]`` to (B,) and broadcasts it against the neuron axis, which is wrong
  for batch > 1).
- The sparsity masks are buffers, not parameters; masked synapses get no gradient.
- Training is fast: the input-dependent sensory terms are computed for the whole sequence at once,
  and the recurrent unfolds run in one autograd node (`_RecurrentUnfold`) with a hand-written
  backward, instead of ~20 dispatched ops per unfold recorded one by one.
- ``to_policy`` / ``from_policy`` convert to and from the numpy runtime's policy file.

Shapes: B batch, T time, S inputs (sensory), N neurons (units), M motor neurons (outputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core import native
from ..core.ltc import PARAM_NAMES, POSITIVE_PARAMS, init_params
from ..core.policy import Policy
from ..core.spec import InterfaceSpec
from ..core.wiring import Wiring


def _inverse_softplus(y: np.ndarray) -> np.ndarray:
    y = np.maximum(np.asarray(y, np.float64), 1e-12)
    return y + np.log(-np.expm1(-y))


class LTC(nn.Module):
    """Liquid time-constant RNN on a sparse wiring.

    Args:
        input_size: number of inputs S (a recipe is built with it; a Wiring must match it).
        wiring: a built `Wiring`, or a recipe with ``build(input_dim)`` (e.g. ``AutoNCP(19, 2)``).
        ode_unfolds: solver unfolds per step (6, as ncps).
        epsilon: added to the solver's denominator.
        implicit_param_constraints: positive parameters (w, sensory_w, cm, gleak) go through a
            softplus (True, the ncps LTC default) or are clipped at 0 by `apply_weight_constraints`
            after each optimiser step (False).
        seed: initialisation seed (same ranges as ncps).
    """

    def __init__(
        self,
        input_size: int,
        wiring: Wiring | Any,
        ode_unfolds: int = 6,
        epsilon: float = 1e-8,
        implicit_param_constraints: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(wiring, Wiring):
            wiring = wiring.build(input_size)
        if wiring.input_dim != input_size:
            raise ValueError(
                f"input_size is {input_size} but the wiring has {wiring.input_dim} sensory inputs"
            )
        self.wiring = wiring
        self.ode_unfolds = int(ode_unfolds)
        self.epsilon = float(epsilon)
        self.implicit_param_constraints = bool(implicit_param_constraints)
        self.register_buffer("sparsity_mask", torch.tensor(wiring.mask, dtype=torch.float32))
        self.register_buffer(
            "sensory_sparsity_mask", torch.tensor(wiring.sensory_mask, dtype=torch.float32)
        )
        src, dst = np.nonzero(wiring.adjacency)
        ssrc, sdst = np.nonzero(wiring.sensory_adjacency)
        for name, idx in (
            ("syn_src", src),
            ("syn_dst", dst),
            ("sensory_src", ssrc),
            ("sensory_dst", sdst),
        ):
            self.register_buffer(name, torch.as_tensor(idx, dtype=torch.long), persistent=False)
        init = init_params(wiring, seed)
        for name in PARAM_NAMES:
            value = init[name]
            if self.implicit_param_constraints and name in POSITIVE_PARAMS:
                value = _inverse_softplus(value)
            self.register_parameter(name, nn.Parameter(torch.tensor(value, dtype=torch.float32)))

    # -- sizes -----------------------------------------------------------------------------
    @property
    def state_size(self) -> int:
        return self.wiring.units

    @property
    def sensory_size(self) -> int:
        return self.wiring.input_dim

    @property
    def motor_size(self) -> int:
        return self.wiring.output_dim

    # -- parameters ------------------------------------------------------------------------
    def _positive(self, p: torch.Tensor) -> torch.Tensor:
        return F.softplus(p) if self.implicit_param_constraints else p

    def effective_params(self) -> dict[str, torch.Tensor]:
        """Physical parameter values (conductances and capacitances >= 0), masked synapses zeroed."""
        p = {name: getattr(self, name) for name in PARAM_NAMES}
        for name in POSITIVE_PARAMS:
            p[name] = self._positive(p[name])
        p["w"] = p["w"] * self.sparsity_mask
        p["sensory_w"] = p["sensory_w"] * self.sensory_sparsity_mask
        return p

    @torch.no_grad()
    def apply_weight_constraints(self) -> None:
        """Clip the positive parameters at 0 (explicit-constraint mode; no-op with softplus)."""
        if not self.implicit_param_constraints:
            for name in POSITIVE_PARAMS:
                getattr(self, name).clamp_(min=0.0)

    # -- running ---------------------------------------------------------------------------
    def _sensory_terms(
        self, p: dict[str, torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sensory numerator and denominator sums, (..., N) each, for inputs x (..., S)."""
        xm = x * p["input_w"] + p["input_b"]
        s = torch.sigmoid(p["sensory_sigma"] * (xm.unsqueeze(-1) - p["sensory_mu"]))  # (..., S, N)
        sw = p["sensory_w"]
        return (s * (sw * p["sensory_erev"])).sum(-2), (s * sw).sum(-2)

    def _elapsed(
        self, elapsed: torch.Tensor | float | None, shape: tuple[int, ...], like: torch.Tensor
    ) -> torch.Tensor:
        if elapsed is None:
            return torch.ones(shape, dtype=like.dtype, device=like.device)
        if isinstance(elapsed, torch.Tensor):  # (as_tensor would be a constant in an ONNX trace)
            e = elapsed.to(dtype=like.dtype, device=like.device)
        else:
            e = torch.as_tensor(elapsed, dtype=like.dtype, device=like.device)
        if e.dim() == 0:
            return e.expand(shape)
        # (while tracing for ONNX the sizes are traced values: the batch axis is dynamic there)
        if not torch.jit.is_tracing() and e.shape != shape:
            raise ValueError(
                f"elapsed: expected shape {tuple(shape)} (one value per sample and step), got {tuple(e.shape)}"
            )
        return e

    def step(
        self,
        x: torch.Tensor,
        h: torch.Tensor | None = None,
        elapsed: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step with plain torch ops (readable reference; ONNX-exportable).

        Args:
            x: (B, S) inputs; h: (B, N) state or None (zeros); elapsed: (B,) or scalar time units.
        Returns:
            (y (B, M), h (B, N)).
        """
        p = self.effective_params()
        if h is None:
            h = x.new_zeros(x.shape[0], self.state_size)
        e = self._elapsed(elapsed, (x.shape[0],), x)
        num_s, den_s = self._sensory_terms(p, x)
        cm_t = p["cm"] * self.ode_unfolds / e.unsqueeze(-1)  # cm / h, h = elapsed / ode_unfolds
        w_erev = p["w"] * p["erev"]
        v = h
        for _ in range(self.ode_unfolds):
            s = torch.sigmoid(p["sigma"] * (v.unsqueeze(-1) - p["mu"]))  # (B, N_src, N_dst)
            num = cm_t * v + p["gleak"] * p["vleak"] + (s * w_erev).sum(1) + num_s
            den = cm_t + p["gleak"] + (s * p["w"]).sum(1) + den_s + self.epsilon
            v = num / den
        return v[:, : self.motor_size] * p["output_w"] + p["output_b"], v

    def forward(
        self,
        x: torch.Tensor,
        h0: torch.Tensor | None = None,
        elapsed: torch.Tensor | float | None = None,
        fused: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a sequence.

        Args:
            x: (B, T, S) inputs.
            h0: (B, N) initial state or None (zeros).
            elapsed: (B, T) elapsed time of every step in LTC time units (1.0 = nominal period),
                a scalar, or None (1.0).
            fused: use the fused recurrent kernel (hand-written backward); False = `step` per step.
        Returns:
            (y (B, T, M), h_T (B, N)).
        """
        if x.dim() != 3 or x.shape[-1] != self.sensory_size:
            raise ValueError(
                f"x: expected shape (batch, time, {self.sensory_size}), got {tuple(x.shape)}"
            )
        B, T, _ = x.shape
        e = self._elapsed(elapsed, (B, T), x)
        h = x.new_zeros(B, self.state_size) if h0 is None else h0
        if not fused:
            ys = []
            for t in range(T):
                y, h = self.step(x[:, t], h, e[:, t])
                ys.append(y)
            return torch.stack(ys, 1), h
        p = self.effective_params()
        num_s, den_s = self._sparse_sensory_terms(p, x)  # (B, T, N): the whole sequence at once
        cm_t = p["cm"] * self.ode_unfolds / e.unsqueeze(-1)
        a = p["gleak"] * p["vleak"] + num_s
        b = cm_t + p["gleak"] + den_s + self.epsilon
        src, dst = self.syn_src, self.syn_dst
        w = p["w"][src, dst]
        unfold = (
            _NativeUnfold if native.available() and x.device.type == "cpu" else _RecurrentUnfold
        )
        V = unfold.apply(
            h,
            cm_t,
            a,
            b,
            w * p["erev"][src, dst],
            w,
            p["sigma"][src, dst],
            p["mu"][src, dst],
            src,
            dst,
            self.ode_unfolds,
        )
        y = V[..., : self.motor_size] * p["output_w"] + p["output_b"]
        return y, V[:, -1]

    def _sparse_sensory_terms(
        self, p: dict[str, torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_sensory_terms` over the existing sensory synapses only: (..., N) each."""
        src, dst = self.sensory_src, self.sensory_dst
        xm = (x * p["input_w"] + p["input_b"])[..., src]  # (..., K_s)
        s = torch.sigmoid(p["sensory_sigma"][src, dst] * (xm - p["sensory_mu"][src, dst]))
        w = p["sensory_w"][src, dst]
        scatter = torch.zeros(src.numel(), 2 * self.state_size, dtype=x.dtype, device=x.device)
        k = torch.arange(src.numel(), device=x.device)
        scatter = scatter.index_put((k, dst), w * p["sensory_erev"][src, dst]).index_put(
            (k, dst + self.state_size), w
        )
        nd = s @ scatter
        return nd[..., : self.state_size], nd[..., self.state_size :]

    # -- conversion ------------------------------------------------------------------------
    @torch.no_grad()
    def numpy_params(self) -> dict[str, np.ndarray]:
        return {
            k: v.detach().cpu().double().numpy().copy() for k, v in self.effective_params().items()
        }

    def to_policy(
        self,
        spec: InterfaceSpec,
        provenance: dict[str, Any] | None = None,
        time_unit_s: float | None = None,
    ) -> Policy:
        """The numpy-runtime policy with these weights and `spec` (normalisation and scaling)."""
        return Policy(
            self.wiring,
            self.numpy_params(),
            spec,
            self.ode_unfolds,
            self.epsilon,
            time_unit_s,
            provenance,
        )

    @classmethod
    def from_policy(cls, policy: Policy, implicit_param_constraints: bool = True) -> LTC:
        """A trainable module with a policy's weights (e.g. to fine-tune a shipped policy)."""
        m = cls(
            policy.wiring.input_dim,
            policy.wiring,
            policy.ode_unfolds,
            policy.epsilon,
            implicit_param_constraints,
        )
        m.load_effective_params(policy.params)
        return m

    @torch.no_grad()
    def load_effective_params(self, params: dict[str, np.ndarray]) -> None:
        for name in PARAM_NAMES:
            value = np.asarray(params[name], np.float64)
            if self.implicit_param_constraints and name in POSITIVE_PARAMS:
                value = _inverse_softplus(value)
            target = getattr(self, name)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{name}: shape {value.shape}, expected {tuple(target.shape)}")
            target.copy_(torch.as_tensor(value, dtype=target.dtype))


class _RecurrentUnfold(torch.autograd.Function):
    """The recurrent part of the solver over a whole sequence, with a hand-written backward.

    Works on the K existing synapses (k: src_k -> dst_k). For each step t and each of U unfolds:
        s_k = sigmoid(sigma_k (v_src_k - mu_k))
        v_j <- (cm_t_j v_j + a_tj + sum_{k: dst_k = j} s_k wn_k) / (b_tj + sum_{k: dst_k = j} s_k wd_k)
    with wn = w * erev, wd = w, a = gleak vleak + sensory numerator, b = cm_t + gleak + sensory
    denominator + eps. Gathers and scatters are matmuls with fixed (N, K) and (K, 2N) matrices.
    Returns the state after every step, (B, T, N). The backward runs the recurrence in reverse
    and reduces the per-synapse gradients once over the whole sequence.
    """

    @staticmethod
    def _matrices(wn, wd, sigma, src, dst, n):
        k = torch.arange(src.numel(), device=src.device)
        gather = torch.zeros(n, src.numel(), dtype=wn.dtype, device=wn.device)
        gather[src, k] = sigma  # v @ gather = sigma_k v_src_k
        scatter = torch.zeros(src.numel(), 2 * n, dtype=wn.dtype, device=wn.device)
        scatter[k, dst] = wn
        scatter[k, dst + n] = wd
        return gather, scatter

    @staticmethod
    def forward(ctx, h0, cm_t, a, b, wn, wd, sigma, mu, src, dst, unfolds: int):  # type: ignore[override]
        B, T, N = a.shape
        K = src.numel()
        gather, scatter = _RecurrentUnfold._matrices(wn, wd, sigma, src, dst, N)
        neg_sigma_mu = -(sigma * mu)
        # V[i] is the state entering unfold i (i = t * U + u); V[T * U] the final state.
        V = h0.new_empty(T * unfolds + 1, B, N)
        S = h0.new_empty(T * unfolds, B, K)
        D = h0.new_empty(T * unfolds, B, N)
        V[0] = h0
        Vs, Ss, Ds = V.unbind(0), S.unbind(0), D.unbind(0)  # views made once, not per unfold
        scatter_num, scatter_den = scatter[:, :N].contiguous(), scatter[:, N:].contiguous()
        i = 0
        for cm_tt, a_t, b_t in zip(cm_t.unbind(1), a.unbind(1), b.unbind(1), strict=True):
            for _ in range(unfolds):
                v = Vs[i]
                s = torch.sigmoid(torch.addmm(neg_sigma_mu, v, gather), out=Ss[i])
                den = torch.addmm(b_t, s, scatter_den, out=Ds[i])
                torch.div(
                    torch.addmm(torch.addcmul(a_t, cm_tt, v), s, scatter_num), den, out=Vs[i + 1]
                )
                i += 1
        out = V[unfolds::unfolds].permute(1, 0, 2)
        ctx.save_for_backward(V, S, D, cm_t, gather, scatter, mu, src, dst)
        ctx.unfolds = unfolds
        return out

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        V, S, D, cm_t, gather, scatter, mu, src, dst = ctx.saved_tensors
        U = ctx.unfolds
        TU, B, N = D.shape
        K = S.shape[-1]
        # dL/dnum and -dL/dden per unfold side by side, so one matmul maps both onto synapses.
        G_nd = D.new_empty(TU, B, 2 * N)
        G_num, G_den = G_nd[..., :N], G_nd[..., N:]
        G_z = torch.empty_like(S)  # dL/dz, z_k = sigma_k (v_src_k - mu_k)
        dS = S * (1 - S)  # sigmoid' for every unfold at once
        scatter_t = torch.cat((scatter[:, :N], -scatter[:, N:]), 1).t().contiguous()  # (2N, K)
        gather_t = gather.t().contiguous()
        gv = torch.zeros_like(V[0])
        Vs, Ds, dSs = V.unbind(0), D.unbind(0), dS.unbind(0)
        Gnd, Gn, Gd, Gz = G_nd.unbind(0), G_num.unbind(0), G_den.unbind(0), G_z.unbind(0)
        cms, g_outs = cm_t.unbind(1), g_out.unbind(1)
        for i in range(TU - 1, -1, -1):
            t, u = divmod(i, U)
            if u == U - 1:
                gv = gv + g_outs[t]
            g_num = torch.div(gv, Ds[i], out=Gn[i])
            torch.mul(g_num, Vs[i + 1], out=Gd[i])
            g_z = torch.mul(Gnd[i] @ scatter_t, dSs[i], out=Gz[i])
            gv = torch.addmm(g_num * cms[t], g_z, gather_t)
        # Reductions over the whole sequence, once, as matmuls over (T*U*B) rows.
        k = torch.arange(K, device=S.device)
        Sf, Zf, Vf = S.reshape(-1, K), G_z.reshape(-1, K), V[:-1].reshape(-1, N)
        g_wn = (Sf.t() @ G_num.reshape(-1, N))[k, dst]
        g_wd = -(Sf.t() @ G_den.reshape(-1, N))[k, dst]
        z_sum = Zf.sum(0)
        g_sigma = (Zf.t() @ Vf)[k, src] - z_sum * mu
        g_mu = -z_sum * gather[src, k]
        T = TU // U
        g_a = G_num.reshape(T, U, B, N).sum(1).permute(1, 0, 2)
        g_b = -G_den.reshape(T, U, B, N).sum(1).permute(1, 0, 2)
        g_cm_t = (G_num * V[:-1]).reshape(T, U, B, N).sum(1).permute(1, 0, 2)
        return gv, g_cm_t, g_a, g_b, g_wn, g_wd, g_sigma, g_mu, None, None, None


class _NativeUnfold(torch.autograd.Function):
    """`_RecurrentUnfold` on the compiled core (`_cltc.c`): the same inputs, outputs and
    gradients. The kernel keeps the batch as its innermost (vector) axis, (T, N, B), so every
    synapse is one vector loop over the samples; it runs float32 or float64 (as the inputs), the
    batch split over torch's intra-op threads. A GPU kernel can take the same signature later."""

    @staticmethod
    def forward(ctx, h0, cm_t, a, b, wn, wd, sigma, mu, src, dst, unfolds: int):  # type: ignore[override]
        B, T, N = a.shape
        K = src.numel()
        dtype = a.dtype

        def lanes(t: torch.Tensor) -> np.ndarray:  # (B, T, N) -> (T, N, B) contiguous
            return t.detach().to(dtype).permute(1, 2, 0).contiguous().numpy()

        def flat(t: torch.Tensor, kind: torch.dtype = dtype) -> np.ndarray:
            return t.detach().to(kind).contiguous().numpy()

        cm_lanes = lanes(cm_t)
        V = torch.empty(T * unfolds + 1, N, B, dtype=dtype)
        D = torch.empty(T * unfolds, N, B, dtype=dtype)
        native.load().unfold_forward(
            B, T, N, K, unfolds,
            flat(h0.t()), cm_lanes, lanes(a), lanes(b),
            flat(wn), flat(wd), flat(sigma), flat(mu),
            flat(src, torch.int64), flat(dst, torch.int64),
            V.numpy(), D.numpy(), torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(V, D, torch.from_numpy(cm_lanes), wn, wd, sigma, mu, src, dst)
        ctx.unfolds = unfolds
        return V[unfolds::unfolds].permute(2, 0, 1)

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        V, D, cm_lanes, wn, wd, sigma, mu, src, dst = ctx.saved_tensors
        U = ctx.unfolds
        TU1, N, B = V.shape
        T = (TU1 - 1) // U
        K = src.numel()
        dtype = V.dtype
        g_h0 = torch.empty(N, B, dtype=dtype)
        g_cm_t, g_a, g_b = (torch.empty(T, N, B, dtype=dtype) for _ in range(3))
        g_params = torch.zeros(4, K, dtype=dtype)

        def flat(t: torch.Tensor, kind: torch.dtype = dtype) -> np.ndarray:
            return t.detach().to(kind).contiguous().numpy()

        native.load().unfold_backward(
            B, T, N, K, U,
            V.numpy(), D.numpy(), cm_lanes.numpy(),
            flat(wn), flat(wd), flat(sigma), flat(mu),
            flat(src, torch.int64), flat(dst, torch.int64),
            flat(g_out.permute(1, 2, 0)),
            g_h0.numpy(), g_cm_t.numpy(), g_a.numpy(), g_b.numpy(), g_params.numpy(),
            torch.get_num_threads(),
        )  # fmt: skip
        g_wn, g_wd, g_sigma, g_mu = g_params.unbind(0)
        back = (g.permute(2, 0, 1) for g in (g_cm_t, g_a, g_b))
        return g_h0.t(), *back, g_wn, g_wd, g_sigma, g_mu, None, None, None
