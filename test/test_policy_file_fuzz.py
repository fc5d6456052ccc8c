"""Crafted policy files (valid content hash, malformed content) never escape as anything but a
`PolicyFileError`, and a file that loads steps to finite actions. The same mutations run 100k
times in `test/fuzz_policy_files.py` (by hand; counts in the README)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_factory import joint_spec, make_policy
from policy_fuzz import base_policy, mutated_file, outcome, write_raw

from liquid_control.core.policy import Policy
from liquid_control.core.policy_file import PolicyFileError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "base.lcp"
    make_policy(joint_spec(3, 2), seed=1).save(path)
    return base_policy(path)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_mutated_file_loads_or_is_refused_with_a_policy_file_error(base, tmp_path, seed):
    path = tmp_path / f"m{seed}.lcp"
    what = mutated_file(*base, random.Random(seed), path)
    result = outcome(path)
    assert not result.startswith("ESCAPED"), f"{what}: {result}"
    assert "invalid content" not in result, f"{what}: caught only by the last resort: {result}"


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m["wiring"]["adjacency"][0].__setitem__(1, 2**70), "wiring.adjacency[0][1]"),
        (lambda m: m["wiring"]["adjacency"][0].__setitem__(1, 1.0), "expected -1, 0 or +1"),
        (lambda m: m["spec"].update(observations=3), "spec.observations: expected a list"),
        (lambda m: m["spec"].update(extra=[1, 2]), "spec.extra: expected a mapping"),
        (lambda m: m["wiring"].update(layers=[["motor"]] * 19), "wiring.layers"),
        (lambda m: m["model"].update(epsilon=-1e-8), "model.epsilon"),
        (lambda m: m["model"].update(time_unit_s=-0.02), "model.time_unit_s"),
        (lambda m: m["model"].update(ode_unfolds=True), "model.ode_unfolds"),
        (lambda m: m["model"].update(ode_unfolds=100000), "model.ode_unfolds"),
        (lambda m: m["spec"].update(control_rate_hz=1e308), "spec.control_rate_hz"),
        (lambda m: m["spec"]["observations"][0].update(key=5), "(j0_pos).key: expected a string"),
        (lambda m: m["spec"]["observations"][0].update(index=True), "index: expected an integer"),
        (lambda m: m.update(provenance=[1]), "provenance: expected a mapping"),
    ],
)
def test_each_crafted_field_is_named_in_the_refusal(base, tmp_path, edit, words):
    meta, tensors = base
    import copy

    meta = copy.deepcopy(meta)
    edit(meta)
    path = tmp_path / "crafted.lcp"
    write_raw(path, meta, tensors)
    with pytest.raises(PolicyFileError) as info:
        Policy.load(path)
    assert words in str(info.value)
    assert str(path) in str(info.value) and str(info.value).count(str(path)) == 1


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_tokens_are_refused(base, tmp_path, token):
    from liquid_control.core.policy_file import canonical_json

    meta, tensors = base
    meta = {**meta, "model": {**meta["model"], "epsilon": "@"}}
    path = tmp_path / "token.lcp"
    write_raw(path, meta, tensors, canonical_json(meta).replace('"@"', token))
    with pytest.raises(PolicyFileError, match=f"{token} is not a number JSON allows"):
        Policy.load(path)


def test_a_fifo_or_device_is_refused_without_blocking(tmp_path):
    import os
    import time

    fifo = tmp_path / "pipe.lcp"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(PolicyFileError, match="FIFO"):
        Policy.load(fifo)
    with pytest.raises(PolicyFileError, match="character device"):
        Policy.load("/dev/zero")
    assert time.monotonic() - t0 < 1.0
