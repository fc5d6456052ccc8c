"""The LTC solver: equations, numpy/torch agreement, fused kernel vs autograd, ncps equivalence."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training stack (the train extra) is not installed")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from liquid_control.core.ltc import LTCCell, init_params  # noqa: E402
from liquid_control.core.wiring import NCP, AutoNCP, FullyConnected, Random  # noqa: E402
from liquid_control.nn import LTC, from_ncps  # noqa: E402


def direct_step(p, mask, smask, x, v, elapsed, unfolds=6, eps=1e-8):
    """The fused semi-implicit step written out neuron by neuron (Hasani et al. eq. 3)."""
    n, S = v.size, x.size
    x = x * p["input_w"] + p["input_b"]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    h = elapsed / unfolds
    for _ in range(unfolds):
        new = np.empty(n)
        for j in range(n):
            num = p["cm"][j] / h * v[j] + p["gleak"][j] * p["vleak"][j]
            den = p["cm"][j] / h + p["gleak"][j]
            for i in range(n):
                if mask[i, j]:
                    g = p["w"][i, j] * sig(p["sigma"][i, j] * (v[i] - p["mu"][i, j]))
                    num += g * p["erev"][i, j]
                    den += g
            for i in range(S):
                if smask[i, j]:
                    g = p["sensory_w"][i, j] * sig(
                        p["sensory_sigma"][i, j] * (x[i] - p["sensory_mu"][i, j])
                    )
                    num += g * p["sensory_erev"][i, j]
                    den += g
            new[j] = num / (den + eps)
        v = new
    m = len(p["output_w"])
    return v[:m] * p["output_w"] + p["output_b"], v


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 5.0), st.integers(1, 8))
def test_numpy_step_equals_the_equations_evaluated_directly(seed, elapsed, unfolds):
    rng = np.random.default_rng(seed)
    w = AutoNCP(12, 2, seed=seed).build(4)
    p = init_params(w, seed)
    p["input_w"] = rng.normal(1, 0.3, 4)
    p["input_b"] = rng.normal(0, 0.3, 4)
    cell = LTCCell(w, p, ode_unfolds=unfolds)
    v = rng.normal(0, 0.5, 12)
    x = rng.normal(0, 1, 4)
    y1, v1 = cell.step(x, v, elapsed)
    y2, v2 = direct_step(p, w.mask, w.sensory_mask, x, v, elapsed, unfolds)
    np.testing.assert_allclose(v1, v2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "recipe", [AutoNCP(19, 2, seed=3), FullyConnected(8, 2, seed=1), Random(10, 3, 0.5, seed=2)]
)
def test_numpy_runtime_agrees_with_torch_over_1000_steps_with_random_dt(recipe):
    torch.manual_seed(0)
    m = LTC(6, recipe, seed=4).double()
    with torch.no_grad():  # move away from the init values so every parameter matters
        for prm in m.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    cell = LTCCell(m.wiring, m.numpy_params())
    rng = np.random.default_rng(1)
    T = 1000
    x = rng.normal(0, 1, (T, 6))
    dt = rng.uniform(0.2, 3.0, T)
    with torch.no_grad():
        y_torch, h_torch = m(torch.tensor(x)[None], None, torch.tensor(dt)[None])
    v = cell.zero_state()
    ys = []
    for t in range(T):
        y, v = cell.step(x[t], v, dt[t])
        ys.append(y)
    np.testing.assert_allclose(np.array(ys), y_torch[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(v, h_torch[0].numpy(), atol=1e-5)


def test_fused_kernel_matches_autograd_values_and_gradients():
    torch.manual_seed(0)
    m = LTC(5, AutoNCP(14, 3, seed=2), seed=1).double()
    x = torch.randn(4, 9, 5, dtype=torch.float64)
    e = torch.rand(4, 9, dtype=torch.float64) * 2 + 0.1
    h0 = (0.3 * torch.randn(4, 14, dtype=torch.float64)).requires_grad_()
    g = torch.randn(4, 9, 3, dtype=torch.float64)
    outs = {}
    for fused in (True, False):
        y, h = m(x, h0, e, fused=fused)
        loss = (y * g).sum() + h.square().sum()
        grads = torch.autograd.grad(loss, [h0, *m.parameters()])
        outs[fused] = (y.detach(), h.detach(), grads)
    torch.testing.assert_close(outs[True][0], outs[False][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outs[True][1], outs[False][1], rtol=1e-10, atol=1e-12)
    names = ["h0"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, outs[True][2], outs[False][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")
        assert b.abs().max() > 0, f"{name} has no gradient at all"


def test_fused_kernel_passes_gradcheck():
    torch.manual_seed(1)
    m = LTC(3, AutoNCP(8, 1, seed=1), ode_unfolds=3).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    e = (torch.rand(2, 4, dtype=torch.float64) + 0.5).requires_grad_()
    h0 = (0.2 * torch.randn(2, 8, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, c, b)[0], (x, e, h0))


def test_masked_synapses_get_no_gradient():
    m = LTC(4, AutoNCP(12, 2, seed=0))
    y, _ = m(torch.randn(3, 5, 4), None, torch.rand(3, 5) + 0.5)
    y.square().sum().backward()
    mask = m.sparsity_mask.bool()
    smask = m.sensory_sparsity_mask.bool()
    for name in ("w", "sigma", "mu", "erev"):
        assert getattr(m, name).grad[~mask].abs().max() == 0, name
        assert getattr(m, name).grad[mask].abs().max() > 0, name
    for name in ("sensory_w", "sensory_sigma", "sensory_mu", "sensory_erev"):
        assert getattr(m, name).grad[~smask].abs().max() == 0, name
    assert not any("mask" in n for n, _ in m.named_parameters())


def test_per_sample_elapsed_times_work_for_batch_larger_than_one():
    # The reference library breaks here (timespans[:, t].squeeze() broadcasts against neurons).
    torch.manual_seed(0)
    m = LTC(3, AutoNCP(10, 2, seed=1))
    x = torch.randn(5, 7, 3)
    e = torch.rand(5, 7) * 3 + 0.1
    y, h = m(x, None, e)
    for b in range(5):
        yb, hb = m(x[b : b + 1], None, e[b : b + 1])
        torch.testing.assert_close(y[b], yb[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h[b], hb[0], rtol=1e-5, atol=1e-6)


def test_elapsed_time_changes_the_dynamics():
    m = LTC(3, AutoNCP(10, 2, seed=1))
    x = torch.randn(1, 20, 3)
    y1, _ = m(x, None, torch.full((1, 20), 0.5))
    y2, _ = m(x, None, torch.full((1, 20), 2.0))
    assert (y1 - y2).abs().max() > 1e-3


def test_bad_shapes_are_refused_with_the_expected_shape():
    m = LTC(3, AutoNCP(10, 2, seed=1))
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, time, 3\)"):
        m(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"elapsed: expected shape \(2, 5\)"):
        m(torch.randn(2, 5, 3), None, torch.ones(2))
    with pytest.raises(ValueError, match="input_size is 4 but the wiring has 3"):
        LTC(4, AutoNCP(10, 2).build(3))


wirings = st.sampled_from(["auto", "ncp", "full", "random"])


@settings(max_examples=12, deadline=None)
@given(wirings, st.integers(0, 1000), st.booleans(), st.integers(2, 30))
def test_from_ncps_reproduces_ncps_outputs_with_timespans(kind, seed, implicit, steps):
    ncps_torch = pytest.importorskip("ncps.torch")
    import ncps.wirings as nw

    torch.manual_seed(seed)
    wiring = {
        "auto": lambda: nw.AutoNCP(12, 2, seed=seed),
        "ncp": lambda: nw.NCP(4, 3, 2, 2, 2, 3, 2, seed=seed),
        "full": lambda: nw.FullyConnected(6, 2, erev_init_seed=seed),
        "random": lambda: nw.Random(7, 3, 0.5, random_seed=seed),
    }[kind]()
    theirs = ncps_torch.LTC(4, wiring, implicit_param_constraints=implicit)
    with torch.no_grad():  # a "trained" module: parameters away from their init values
        for prm in theirs.parameters():
            if prm.requires_grad:
                prm.add_(0.1 * torch.randn_like(prm))
    ours = from_ncps(theirs)
    x = torch.randn(1, steps, 4)
    ts = torch.rand(1, steps, 1) * 2 + 0.2
    with torch.no_grad():
        y_ref, h_ref = theirs(x, timespans=ts)
        y, h = ours(x, None, ts[..., 0])
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    # and the numpy runtime of the converted module agrees too
    cell = LTCCell(ours.wiring, ours.numpy_params())
    v = cell.zero_state()
    for t in range(steps):
        yt, v = cell.step(x[0, t].double().numpy(), v, float(ts[0, t, 0]))
    np.testing.assert_allclose(yt, y_ref[0, -1].numpy(), atol=1e-5)


def test_from_ncps_refuses_mixed_memory():
    ncps_torch = pytest.importorskip("ncps.torch")
    with pytest.raises(ValueError, match="mixed_memory"):
        from_ncps(ncps_torch.LTC(3, 8, mixed_memory=True))


def test_policy_round_trip_through_torch_keeps_outputs():
    from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement

    spec = InterfaceSpec(
        "toy",
        [
            ObservationElement(f"x{i}", "obs", "std_msgs/Float64MultiArray", "data", index=i)
            for i in range(4)
        ],
        [
            ActionElement(f"a{j}", "cmd", "std_msgs/Float64MultiArray", "data", index=j)
            for j in range(2)
        ],
        50.0,
    )
    m = LTC(4, NCP(4, 3, 2, 2, 2, 2, 2, seed=1), seed=3)
    policy = m.to_policy(spec)
    back = LTC.from_policy(policy)
    x = torch.randn(2, 6, 4)
    torch.testing.assert_close(m(x)[0], back(x)[0], rtol=1e-5, atol=1e-6)
