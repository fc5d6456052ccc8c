"""The policy file: round trip, atomic writes, and a clear typed error for every bad file."""

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from policy_factory import joint_spec, make_policy

from liquid_control.core.policy import Policy
from liquid_control.core.policy_file import (
    FORMAT_VERSION,
    PolicyFileError,
    read_policy_file,
    write_policy_file,
)


@pytest.fixture
def saved(tmp_path):
    policy = make_policy(seed=3)
    path = tmp_path / "p.lcp"
    policy.save(path)
    return policy, path


def rollout(policy, steps=50, seed=0):
    rng = np.random.default_rng(seed)
    policy.reset()
    return np.array(
        [
            policy.step(rng.normal(0, 1, policy.spec.obs_dim), dt=float(rng.uniform(0.01, 0.03)))
            for _ in range(steps)
        ]
    )


def test_saved_policy_loads_with_same_outputs_spec_and_provenance(saved):
    policy, path = saved
    loaded = Policy.load(path)
    np.testing.assert_allclose(
        rollout(loaded),
        rollout(
            Policy(
                policy.wiring,
                {k: v.astype(np.float32) for k, v in policy.params.items()},
                policy.spec,
            )
        ),
        atol=1e-12,
    )
    assert loaded.spec == policy.spec
    assert loaded.wiring == policy.wiring
    assert loaded.content_hash == policy.content_hash and loaded.content_hash.startswith("sha256:")
    assert loaded.provenance["task"] == "test" and loaded.provenance["project_version"]
    assert loaded.ode_unfolds == 6 and loaded.path == str(path)


def test_outputs_are_clipped_to_the_action_limits_and_scaled(saved):
    _, path = saved
    p = Policy.load(path)
    a = rollout(p, 200)
    assert a.min() >= -3.0 and a.max() <= 3.0
    p.reset()
    u = p.network_step(p.spec.normalize(np.ones(p.spec.obs_dim)))
    p.reset()
    np.testing.assert_allclose(p.step(np.ones(p.spec.obs_dim)), np.clip(2.0 * u, -3, 3))


def test_reset_restores_the_initial_state(saved):
    p = Policy.load(saved[1])
    first = rollout(p, 10)
    assert np.abs(p.state).max() > 0
    again = rollout(p, 10)  # rollout() resets first
    np.testing.assert_array_equal(first, again)


def test_step_refuses_bad_observations_and_dt(saved):
    p = Policy.load(saved[1])
    with pytest.raises(ValueError, match=r"observation: expected shape \(6,\), got \(5,\)"):
        p.step(np.zeros(5))
    with pytest.raises(ValueError, match="NaN or Inf at \\[2\\]"):
        p.step(np.array([0, 0, np.nan, 0, 0, 0.0]))
    for bad in (0.0, -0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="dt: expected a finite number of seconds > 0"):
            p.step(np.zeros(6), dt=bad)


def test_same_content_gives_same_hash_and_any_change_a_different_one(tmp_path):
    a = make_policy(seed=1)
    a.provenance["created"] = "fixed"
    h1 = a.save(tmp_path / "a.lcp")
    h2 = a.save(tmp_path / "b.lcp")
    assert h1 == h2
    a.params["gleak"] = a.params["gleak"] * 1.01
    assert a.save(tmp_path / "c.lcp") != h1


def test_save_is_atomic_a_failed_write_keeps_the_old_file(saved, monkeypatch):
    policy, path = saved
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        make_policy(seed=9).save(path)
    assert path.read_bytes() == before
    assert [f.name for f in path.parent.iterdir()] == ["p.lcp"], "temp file left behind"


def test_file_is_standard_safetensors(saved):
    st = pytest.importorskip("safetensors.numpy")
    policy, path = saved
    tensors = st.load_file(str(path))
    assert set(tensors) == set(policy.params)
    np.testing.assert_allclose(tensors["w"], policy.params["w"].astype(np.float32))


def test_files_written_by_the_safetensors_library_are_read(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    policy = make_policy(seed=2)
    meta = {
        **policy.metadata(),
        "format": "liquid_control.policy",
        "format_version": FORMAT_VERSION,
    }
    tensors = {k: v.astype(np.float64) for k, v in policy.params.items()}
    from liquid_control.core.policy_file import canonical_json, content_hash

    meta["content_hash"] = content_hash(meta, tensors)
    st.save_file(
        tensors, str(tmp_path / "lib.lcp"), metadata={"liquid_control": canonical_json(meta)}
    )
    loaded = Policy.load(tmp_path / "lib.lcp")
    np.testing.assert_array_equal(loaded.params["mu"], policy.params["mu"])


# ---- every bad file gets PolicyFileError naming the problem -------------------------------


def _rewrite(path: Path, meta_edit=None, tensor_edit=None):
    meta, tensors = read_policy_file(path)
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    write_policy_file(path, meta, tensors)  # recomputes the hash: only the edit is wrong


@pytest.mark.parametrize("cut", [0, 4, 8, 100, -1, -200])
def test_truncated_files_are_refused(saved, cut):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(PolicyFileError, match="truncated|corrupt"):
        Policy.load(path)


def test_a_flipped_weight_byte_is_detected_by_the_hash(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PolicyFileError, match="content hash mismatch"):
        Policy.load(path)


def test_an_edited_metadata_field_is_detected_by_the_hash(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"control_rate_hz\\":50.0', b'\\"control_rate_hz\\":90.0'))
    assert path.read_bytes() != data
    with pytest.raises(PolicyFileError, match="content hash mismatch"):
        Policy.load(path)


def test_wrong_format_version_is_refused(saved):
    _, path = saved
    meta, tensors = read_policy_file(path)
    meta["format_version"] = 99
    from liquid_control.core.policy_file import METADATA_KEY, canonical_json

    st = pytest.importorskip("safetensors.numpy")
    st.save_file(tensors, str(path), metadata={METADATA_KEY: canonical_json(meta)})
    with pytest.raises(
        PolicyFileError, match="format_version is 99; this liquid_control reads version 1"
    ):
        Policy.load(path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda t: t.update(w=np.zeros((3, 3), np.float32)),
            "tensor 'w' has shape \\[3, 3\\], the wiring needs \\[19, 19\\]",
        ),
        (lambda t: t["sigma"].__setitem__((0, 0), np.nan), "tensor 'sigma' has 1 NaN/Inf"),
        (lambda t: t["vleak"].__setitem__(0, np.inf), "tensor 'vleak' has 1 NaN/Inf"),
        (lambda t: t["cm"].__setitem__(0, -1.0), "tensor 'cm' has negative values"),
        (lambda t: t.pop("mu"), "missing tensors \\['mu'\\]"),
        (lambda t: t.update(extra=np.zeros(2, np.float32)), "unexpected tensors \\['extra'\\]"),
    ],
)
def test_bad_weights_are_refused(saved, edit, match):
    _, path = saved
    _rewrite(path, tensor_edit=edit)
    with pytest.raises(PolicyFileError, match=match):
        Policy.load(path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["spec"].pop("actions"), "interface spec: spec: missing field 'actions'"),
        (lambda m: m["spec"]["observations"][0].update(std=0), "std: expected > 0"),
        (
            lambda m: m["spec"]["observations"].pop(),
            "spec has 5 observations but the wiring has 6 sensory inputs",
        ),
        (
            lambda m: m["wiring"].update(units=3),
            "wiring: wiring.adjacency: expected 3 rows of 3 entries, got 19 rows",
        ),
        (lambda m: m["model"].update(type="LSTM"), "model: expected \\{'type': 'LTC'"),
        (
            lambda m: m["model"].update(ode_unfolds=0),
            "ode_unfolds: expected an integer from 1 to 64, got 0",
        ),
        (lambda m: m["spec"]["actions"][0].update(low=5.0), "low \\(5.0\\) must be <= high"),
    ],
)
def test_bad_metadata_is_refused(saved, edit, match):
    _, path = saved
    _rewrite(path, meta_edit=edit)
    with pytest.raises(PolicyFileError, match=match):
        Policy.load(path)


def test_pickle_files_are_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.lcp"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(PolicyFileError, match="pickle; policy files are never unpickled"):
        Policy.load(path)
    assert not marker.exists()


def test_torch_checkpoints_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(PolicyFileError, match="zip archive \\(torch.save checkpoint\\?\\)"):
        Policy.load(path)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "truncated: 0 bytes"),
        (struct.pack("<Q", 10**12) + b"{}", "header length"),
        (struct.pack("<Q", 4) + b"nope", "corrupt header: not JSON"),
        (struct.pack("<Q", 2) + b"[]", "expected a JSON object"),
        (struct.pack("<Q", 2) + b"{}", "not a liquid_control policy"),
        (b"\x00" * 7, "truncated: 7 bytes"),
    ],
)
def test_garbage_files_are_refused(tmp_path, content, match):
    path = tmp_path / "bad.lcp"
    path.write_bytes(content)
    with pytest.raises(PolicyFileError, match=match):
        Policy.load(path)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(PolicyFileError, match="no such file"):
        Policy.load(tmp_path / "nope.lcp")
    with pytest.raises(PolicyFileError, match="is a folder"):
        Policy.load(tmp_path)


def test_a_safetensors_file_of_someone_else_is_refused(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file(
        {"w": np.zeros(3, np.float32)},
        str(tmp_path / "x.safetensors"),
        metadata={"other": json.dumps({})},
    )
    with pytest.raises(PolicyFileError, match="not a liquid_control policy"):
        Policy.load(tmp_path / "x.safetensors")


def test_deploy_path_runs_without_torch(saved):
    """A robot has numpy (and rclpy), not torch: loading and stepping must not import it."""
    _, path = saved
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from liquid_control.core import Policy\n"
        f"p = Policy.load({str(path)!r})\n"
        "print(p.step(np.zeros(p.spec.obs_dim), dt=0.02))\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_no_project_code_unpickles_files():
    root = Path(__file__).resolve().parents[1] / "liquid_control"
    offenders = []
    for f in root.rglob("*.py"):
        text = f.read_text()
        for needle in ("pickle.load", "torch.load(", "allow_pickle=True", "cloudpickle"):
            for line in text.splitlines():
                if needle in line and not line.strip().startswith("#"):
                    offenders.append(f"{f.relative_to(root.parent)}: {line.strip()}")
    assert not offenders, offenders


def test_spec_with_joint_names_round_trips(tmp_path):
    spec = joint_spec(2, 2)
    p = make_policy(spec)
    p.save(tmp_path / "x.lcp")
    assert Policy.load(tmp_path / "x.lcp").spec.to_dict() == spec.to_dict()


def test_a_deep_copied_policy_steps_like_the_original(saved):
    import copy

    p = Policy.load(saved[1])
    q = copy.deepcopy(p)
    np.testing.assert_array_equal(rollout(p), rollout(q))


def test_saved_files_get_the_usual_permissions(saved):
    _, path = saved
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
