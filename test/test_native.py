"""The compiled LTC core (`_cltc.c`) against the numpy runtime and the torch kernel: the robot
step, the rollout and batch entry points, the training kernel's outputs and gradients, its
errors, and the fallback when the extension is switched off."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_factory import joint_spec, make_policy

from liquid_control.core import native
from liquid_control.core.policy import Policy

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"the compiled core is not in use ({native.why_not()})"
)
REPO = Path(__file__).resolve().parents[1]


def numpy_twin(policy: Policy) -> Policy:
    twin = copy.deepcopy(policy)
    twin._net = None  # the numpy runtime, same weights
    return twin


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    joints=st.integers(1, 6),
    actions=st.integers(1, 3),
    units=st.integers(8, 40),
)
def test_the_robot_step_equals_the_numpy_runtime(seed, joints, actions, units):
    actions = min(actions, units - 3)
    policy = make_policy(joint_spec(joints, actions), seed=seed, units=units)
    assert policy.native
    twin = numpy_twin(policy)
    rng = np.random.default_rng(seed)
    for k in range(60):
        obs = rng.normal(0, 5, policy.spec.obs_dim)
        dt = None if k % 7 == 0 else float(rng.uniform(1e-4, 0.2))
        clip = k % 5 != 0
        np.testing.assert_allclose(policy.step(obs, dt, clip), twin.step(obs, dt, clip), atol=1e-12)
        np.testing.assert_allclose(policy.state, twin.state, atol=1e-12)


def test_rollout_and_batch_equal_step_by_step():
    policy = make_policy(joint_spec(3, 2), seed=4)
    rng = np.random.default_rng(1)
    obs = rng.normal(0, 2, (50, policy.spec.obs_dim))
    dts = rng.uniform(0.01, 0.03, 50)
    stepped = numpy_twin(policy)
    want = np.array([stepped.step(o, d) for o, d in zip(obs, dts, strict=True)])
    np.testing.assert_allclose(policy.rollout(obs, dts), want, atol=1e-12)
    np.testing.assert_allclose(policy.state, stepped.state, atol=1e-12)
    # independent samples in one call
    states = np.zeros((8, policy._cell.units))
    actions = np.empty((8, policy.spec.action_dim))
    policy._net.step_batch(obs[:8], states, np.ones(8), actions)
    for i in range(8):
        single = numpy_twin(policy)
        single.reset()
        np.testing.assert_allclose(actions[i], single.step(obs[i]), atol=1e-12)


def test_bad_inputs_are_refused_by_the_compiled_step():
    policy = make_policy(joint_spec(2, 1), seed=0)
    with pytest.raises(ValueError, match=r"observation: NaN or Inf at \[1\]"):
        policy.step(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="observation: expected shape"):
        policy.step(np.zeros(3))
    with pytest.raises(ValueError, match="dt: expected a finite number"):
        policy.step(np.zeros(4), dt=-0.1)
    with pytest.raises(ValueError, match="elapsed"):
        policy._net.step(np.zeros(4), policy.state, 0.0, np.zeros(1), True)
    with pytest.raises(ValueError, match="state: expected 19 items, got 3"):
        policy._net.step(np.zeros(4), np.zeros(3), 1.0, np.zeros(1), True)
    # a list, float32 or a non-contiguous view still work (converted)
    a = policy.step([0.1, 0.2, 0.3, 0.4])
    b = policy.step(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    assert np.isfinite(a).all() and np.isfinite(b).all()


def test_copies_and_pickles_rebuild_the_compiled_twin(tmp_path):
    policy = make_policy(joint_spec(2, 1), seed=2)
    policy.save(tmp_path / "p.lcp")
    loaded = Policy.load(tmp_path / "p.lcp")
    for other in (copy.deepcopy(loaded), pickle.loads(pickle.dumps(loaded))):
        assert other.native and other._net is not loaded._net
        obs = np.arange(4.0)
        np.testing.assert_array_equal(other.step(obs), loaded.step(obs))
        loaded.reset()
    runtime = Policy.from_runtime(loaded.spec, loaded.runtime())
    assert runtime.native
    twin = numpy_twin(runtime)
    np.testing.assert_allclose(runtime.step(np.arange(4.0)), twin.step(np.arange(4.0)), atol=1e-12)


def test_the_training_kernel_equals_the_torch_kernel_and_passes_gradcheck():
    torch = pytest.importorskip("torch", reason="the training stack is not installed")
    import liquid_control.nn.ltc as ltc_module
    from liquid_control.core.wiring import AutoNCP
    from liquid_control.nn import LTC

    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        model = LTC(8, AutoNCP(19, 2, seed=1)).to(dtype)
        x = torch.randn(37, 9, 8, dtype=dtype)
        elapsed = torch.rand(37, 9, dtype=dtype) + 0.5

        def run(use_native: bool, model=model, x=x, elapsed=elapsed):
            ltc_module.native.available = (lambda: True) if use_native else (lambda: False)
            try:
                model.zero_grad()
                y, h = model(x, None, elapsed)
                (y.square().sum() + h.sum()).backward()
                return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
            finally:
                ltc_module.native.available = native.available

        y_c, g_c = run(True)
        y_t, g_t = run(False)
        torch.testing.assert_close(y_c, y_t, rtol=tol, atol=tol)
        for name in g_t:
            scale = float(g_t[name].abs().max()) + 1e-30
            assert float((g_c[name] - g_t[name]).abs().max()) <= tol * scale, name

    model = LTC(8, AutoNCP(19, 2, seed=1))
    src, dst = model.syn_src, model.syn_dst
    B, T, N, K, d = 3, 3, 19, src.numel(), torch.float64
    inputs = (
        torch.randn(B, N, dtype=d),
        torch.rand(B, T, N, dtype=d) + 1,
        torch.randn(B, T, N, dtype=d),
        torch.rand(B, T, N, dtype=d) + 3,
        torch.randn(K, dtype=d),
        torch.rand(K, dtype=d),
        torch.rand(K, dtype=d) * 3 + 1,
        torch.rand(K, dtype=d),
    )
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(
        lambda *t: ltc_module._NativeUnfold.apply(*t, src, dst, 6), inputs
    )


def test_everything_falls_back_to_numpy_when_the_extension_is_off():
    """LIQUID_CONTROL_NATIVE=0: one warning, numpy and torch paths, the same results; the policy
    and safety tests pass on the fallback too."""
    env = {**os.environ, native.ENV_SWITCH: "0"}
    code = (
        "import warnings, numpy as np\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from liquid_control.core import native\n"
        "    print(native.available(), native.available(), len(w), 'switched off' in str(w[0].message))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False", "1", "True"], out.stdout + out.stderr
    tests = ["test/test_policy_file.py", "test/test_safety_core.py", "test/test_ltc_numerics.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:]
