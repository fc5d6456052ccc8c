"""The pieces between the policy node and its control process, without ROS traffic: the frame
codec of the pipes, the policy handed over as runtime arrays, and the timing figures in shared
storage."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from liquid_control.core import ActionElement, AutoNCP, InterfaceSpec, ObservationElement, Policy
from liquid_control.core.ltc import init_params
from liquid_control.ros.protocol import FRAME, Pipe, decode, encode
from liquid_control.ros.stats import LoopStats


@pytest.fixture
def spec6() -> InterfaceSpec:
    joints = [f"j{i}" for i in range(3)]
    obs = [
        ObservationElement(f"{j}_{f}", "/joint_states", "sensor_msgs/JointState", f, key=j, std=2.0)
        for j in joints
        for f in ("position", "velocity")
    ]
    act = [
        ActionElement(f"{j}_cmd", "/cmd", "std_msgs/Float64MultiArray", "data", index=i, scale=0.5)
        for i, j in enumerate(joints)
    ]
    return InterfaceSpec("arm", obs, act, 100.0)


def body(frame: bytes) -> bytes:
    (n,) = FRAME.unpack_from(frame, 0)
    assert len(frame) == FRAME.size + n
    return frame[FRAME.size :]


@settings(max_examples=60, deadline=None)
@given(
    header=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k != "arrays"),
        st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
        max_size=5,
    ),
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=6),
        hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
        max_size=4,
    ),
)
def test_frames_carry_the_header_and_arrays_exactly(header, arrays):
    got_header, got_arrays = decode(body(encode(header, arrays)))
    assert got_header == header
    assert set(got_arrays) == set(arrays)
    for name, value in arrays.items():
        assert got_arrays[name].shape == value.shape
        np.testing.assert_array_equal(got_arrays[name], value)


@pytest.mark.parametrize(
    "frame_body",
    [
        b"",
        b"\x05\x00\x00\x00{bad",
        FRAME.pack(2) + b"{}",  # no array layout
        FRAME.pack(36) + b'{"arrays": {"x": [[4], 0]}, "op": 1}' + b"\x00" * 8,  # too short
    ],
)
def test_a_bad_frame_is_a_value_error(frame_body):
    with pytest.raises(ValueError, match="frame"):
        decode(frame_body)


def test_pipe_round_trip_and_end_of_file():
    r1, w1 = os.pipe()
    pipe = Pipe(r1, w1)
    pipe.send({"op": "swap", "id": 3}, {"w": np.arange(6.0).reshape(2, 3)})
    header, arrays = pipe.receive()
    assert header == {"op": "swap", "id": 3}
    np.testing.assert_array_equal(arrays["w"], np.arange(6.0).reshape(2, 3))
    os.close(w1)
    assert pipe.receive() is None
    os.close(r1)


def test_a_policy_rebuilt_from_its_runtime_arrays_steps_identically(spec6):
    wiring = AutoNCP(19, spec6.action_dim, seed=2).build(spec6.obs_dim)
    policy = Policy(wiring, init_params(wiring, seed=5), spec6)
    arrays = {k: np.array(v) for k, v in policy.runtime().items()}
    twin = Policy.from_runtime(spec6, arrays, content_hash="sha256:x")
    rng = np.random.default_rng(0)
    for k in range(40):
        obs = rng.normal(size=spec6.obs_dim) * 3.0
        dt = None if k % 3 else 0.013 * (1 + k % 5)
        np.testing.assert_array_equal(policy.step(obs, dt), twin.step(obs, dt))
    twin.reset()
    assert not twin.state.any()


def test_runtime_arrays_that_do_not_fit_the_spec_are_refused(spec6):
    wiring = AutoNCP(19, spec6.action_dim, seed=2).build(spec6.obs_dim)
    arrays = Policy(wiring, init_params(wiring), spec6).runtime()
    arrays["mean"] = np.zeros(spec6.obs_dim + 1)
    with pytest.raises(ValueError, match="mean"):
        Policy.from_runtime(spec6, arrays)


def test_stats_written_in_shared_storage_are_read_by_a_second_view():
    storage = np.zeros(LoopStats.size())
    writer = LoopStats(0.001, storage=storage)
    reader = LoopStats(0.001, storage=storage)
    writer.record(None, 50e-6)
    for _ in range(99):
        writer.record(0.001, 60e-6)
    writer.record(0.0031, 70e-6, swapping=True)  # two missed ticks, during a swap
    window = reader.window_summary()
    assert window["window_ticks"] == 101
    assert window["compute_max_us"] == pytest.approx(70.0)
    total = reader.total_summary()
    assert (total["ticks"], total["missed_ticks"], total["missed_ticks_during_swaps"]) == (
        101,
        2,
        2,
    )
    assert reader.window_summary()["window_ticks"] == 0  # the reader's window moved on
    writer.clear()  # a new activation: the reader sees the new samples only
    writer.record(None, 40e-6)
    assert reader.window_summary()["window_ticks"] == 1
    with pytest.raises(ValueError, match="storage"):
        LoopStats(0.001, storage=np.zeros(10))


def test_the_protocol_refuses_unknown_operations_and_missing_fields():
    from liquid_control.ros.protocol import (
        Ev,
        Op,
        ProtocolError,
        event_header,
        parse_event,
        parse_request,
        request_header,
    )

    assert parse_request(request_header(Op.SET, values={"debug": True}), {}).op is Op.SET
    with pytest.raises(ProtocolError, match="unknown op 'explode'"):
        parse_request({"op": "explode"}, {})
    with pytest.raises(ProtocolError, match="lacks \\['values'\\]"):
        parse_request({"op": "set"}, {})
    with pytest.raises(ProtocolError, match="needs \\['policy'\\]"):
        request_header(Op.SWAP)
    assert parse_event(event_header(Ev.IS_SAFE, safe=True)).fields == {"safe": True}
    with pytest.raises(ProtocolError, match="unknown ev"):
        parse_event({"ev": "surprise"})


@pytest.mark.ros
def test_a_reply_nobody_waits_for_is_reported(tmp_path):
    """An error reply whose request timed out is passed on (the node logs it), never dropped."""
    import threading

    from liquid_control.ros.loop_process import LoopProcess
    from liquid_control.ros.protocol import Op

    orphans, done = [], threading.Event()

    def orphan(text):
        orphans.append(text)
        done.set()

    loop = LoopProcess(lambda e: None, 0.02, 2, orphan)
    try:
        # a control process answers a request before configure with an error; nobody waits
        loop.send(Op.STATS, id=999)
        assert done.wait(10.0), "no orphan reported"
        assert "nobody waits" in orphans[0] and "configure" in orphans[0]
    finally:
        loop.kill()
