"""Interface spec validation and the message <-> vector adapter table (message-shaped namespaces)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liquid_control.core.adapters import (
    ActionWriter,
    MessageRejected,
    ObservationAssembler,
    message_from_fields,
    observe,
)
from liquid_control.core.spec import ActionElement as A
from liquid_control.core.spec import InterfaceSpec, SpecError
from liquid_control.core.spec import ObservationElement as O


def rover_like_spec():
    obs = [
        O(f"laser{i}", "scan", "sensor_msgs/LaserScan", "ranges", index=i, sectors=4, unit="m")
        for i in range(4)
    ]
    obs += [
        O("yaw_rate", "imu", "sensor_msgs/Imu", "angular_velocity.z", unit="rad/s"),
        O("speed", "odom", "nav_msgs/Odometry", "twist.twist.linear.x", unit="m/s"),
        O("goal_v", "goal", "geometry_msgs/Twist", "linear.x", unit="m/s"),
        O("extra", "aux", "std_msgs/Float64MultiArray", "data", index=2),
        O("pole_sin", "js", "sensor_msgs/JointState", "position", key="pole", transform="sin"),
        O("pole_cos", "js", "sensor_msgs/JointState", "position", key="pole", transform="cos"),
        O("cart_v", "js", "sensor_msgs/JointState", "velocity", key="cart"),
    ]
    act = [
        A("v", "cmd_vel", "geometry_msgs/Twist", "linear.x", low=-1, high=1),
        A("w", "cmd_vel", "geometry_msgs/Twist", "angular.z", low=-2, high=2),
        A(
            "f",
            "forward",
            "std_msgs/Float64MultiArray",
            "data",
            index=1,
            scale=10,
            low=-20,
            high=20,
        ),
        A("q", "traj", "trajectory_msgs/JointTrajectory", "positions", key="elbow"),
        A("q2", "traj", "trajectory_msgs/JointTrajectory", "positions", key="wrist"),
    ]
    return InterfaceSpec("rover", obs, act, 20.0)


def messages(ranges=(4.0, 3.0, 2.0, 1.0, 0.5, 5.0, math.inf, 2.5)):
    return {
        "scan": message_from_fields({"ranges": list(ranges), "range_max": 8.0}),
        "imu": message_from_fields({"angular_velocity": {"x": 0, "y": 0, "z": 0.3}}),
        "odom": message_from_fields({"twist": {"twist": {"linear": {"x": 1.5}}}}),
        "goal": message_from_fields({"linear": {"x": 0.7}}),
        "aux": message_from_fields({"data": [9.0, 8.0, 7.0]}),
        "js": message_from_fields(
            {
                "name": ["cart", "pole"],
                "position": [0.1, 0.5],
                "velocity": [2.0, -1.0],
                "effort": [0.0, 0.0],
            }
        ),
    }


def test_every_input_type_is_read_into_its_slots():
    raw = observe(rover_like_spec(), messages())
    # LaserScan: 8 beams in 4 sectors, nearest return per sector, +inf = range_max
    np.testing.assert_allclose(raw[:4], [3.0, 1.0, 0.5, 2.5])
    np.testing.assert_allclose(raw[4:], [0.3, 1.5, 0.7, 7.0, math.sin(0.5), math.cos(0.5), 2.0])


def test_joint_state_is_read_by_name_whatever_the_order():
    spec = rover_like_spec()
    msgs = messages()
    msgs["js"] = message_from_fields(
        {
            "name": ["pole", "extra", "cart"],
            "position": [0.5, 9, 0.1],
            "velocity": [-1.0, 9, 2.0],
            "effort": [0, 0, 0],
        }
    )
    np.testing.assert_allclose(observe(spec, msgs)[-3:], [math.sin(0.5), math.cos(0.5), 2.0])


def test_laser_sectors_do_not_depend_on_the_beam_count():
    spec = rover_like_spec()
    fine = np.repeat([3.0, 1.0, 0.5, 2.5], 90)  # a 360-beam lidar seeing the same scene
    a = observe(
        spec, {**messages(), "scan": message_from_fields({"ranges": list(fine), "range_max": 8.0})}
    )
    np.testing.assert_allclose(a[:4], [3.0, 1.0, 0.5, 2.5])


@pytest.mark.parametrize(
    "topic,fields,reason",
    [
        (
            "js",
            {"name": ["cart"], "position": [0.1], "velocity": [2.0], "effort": [0.0]},
            "missing_joint",
        ),
        (
            "js",
            {"name": ["cart", "pole"], "position": [0.1], "velocity": [2.0, 1.0], "effort": []},
            "wrong_length",
        ),
        (
            "js",
            {
                "name": ["cart", "pole"],
                "position": [0.1, math.nan],
                "velocity": [2.0, 1.0],
                "effort": [],
            },
            "non_finite",
        ),
        ("imu", {"angular_velocity": {"x": 0, "y": 0, "z": math.inf}}, "non_finite"),
        ("odom", {"twist": {"twist": {"linear": {"x": math.nan}}}}, "non_finite"),
        ("aux", {"data": [1.0, 2.0]}, "wrong_length"),
        ("aux", {"data": [1.0, 2.0, -math.inf]}, "non_finite"),
        ("scan", {"ranges": [1.0, math.nan], "range_max": 8.0}, "non_finite"),
        ("scan", {"ranges": [1.0, -math.inf], "range_max": 8.0}, "non_finite"),
        ("scan", {"ranges": [], "range_max": 8.0}, "wrong_length"),
        ("scan", {"ranges": [1.0], "range_max": math.nan}, "non_finite"),
        ("goal", {"angular": {"z": 1.0}}, "malformed"),
    ],
)
def test_bad_messages_are_rejected_whole_and_leave_the_last_good_values(topic, fields, reason):
    spec = rover_like_spec()
    asm = ObservationAssembler(spec)
    for t, m in messages().items():
        asm.update(t, m, 1.0)
    before = asm.raw()
    with pytest.raises(MessageRejected) as err:
        asm.update(topic, message_from_fields(fields), 2.0)
    assert err.value.reason == reason
    np.testing.assert_array_equal(asm.raw(), before)
    assert asm.last_update_s[topic] == 1.0


def test_assembler_tracks_missing_and_stale_topics():
    asm = ObservationAssembler(rover_like_spec())
    assert not asm.ready and set(asm.missing()) == {"scan", "imu", "odom", "goal", "aux", "js"}
    for t, m in messages().items():
        asm.update(t, m, 10.0 if t != "imu" else 9.0)
    assert asm.ready
    assert asm.stale(10.5, 1.0) == ["imu"]
    assert asm.stale(10.5, 2.0) == []
    with pytest.raises(MessageRejected, match="unknown_topic"):
        asm.update("nope", messages()["imu"])


def test_action_writer_fills_every_output_type():
    from types import SimpleNamespace as NS

    spec = rover_like_spec()
    w = ActionWriter(spec)
    a = np.array([0.5, -1.0, 12.0, 0.3, -0.2])
    twist = w.fill(
        "cmd_vel", NS(linear=NS(x=0.0, y=0.0, z=0.0), angular=NS(x=0.0, y=0.0, z=0.0)), a, None
    )
    assert (twist.linear.x, twist.angular.z) == (0.5, -1.0)
    arr = w.fill("forward", NS(data=[]), a, None)
    assert arr.data == [0.0, 12.0]
    traj = w.fill(
        "traj",
        NS(joint_names=[], points=[]),
        a,
        lambda t: NS(positions=[], velocities=[], accelerations=[], effort=[]),
    )
    assert traj.joint_names == ["elbow", "wrist"] and traj.points[0].positions == [0.3, -0.2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=5, max_size=5))
def test_actions_are_scaled_and_clipped_to_limits(u):
    spec = rover_like_spec()
    a = spec.to_physical(np.array(u))
    assert (a >= spec.action_low).all() and (a <= spec.action_high).all()
    inside = np.abs(np.array(u)) < 0.5
    np.testing.assert_allclose(spec.to_network(a)[inside], np.array(u)[inside])


def test_spec_round_trips_through_dict():
    spec = rover_like_spec()
    assert InterfaceSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda d: d["observations"][0].update(msg_type="sensor_msgs/Image"),
            "msg_type: expected one of",
        ),
        (lambda d: d["observations"][8].pop("key"), "JointState elements need the joint name"),
        (lambda d: d["observations"][0].update(index=4), "0 <= index < sectors"),
        (lambda d: d["observations"][0].update(std=-1), "std: expected > 0"),
        (lambda d: d["observations"][0].update(mean="x"), "mean: expected a number"),
        (lambda d: d["observations"][0].update(colour="red"), "unknown fields \\['colour'\\]"),
        (lambda d: d["observations"][1].update(name="laser0"), "duplicate names \\['laser0'\\]"),
        (lambda d: d["actions"][0].update(field="linear.q"), "Twist actions write"),
        (lambda d: d["actions"][3].update(key=None), "JointTrajectory actions need"),
        (
            lambda d: d["actions"][0].update(topic="imu"),
            "topic 'imu' is used with two message types",
        ),
        (lambda d: d.update(control_rate_hz=0), "control_rate_hz: expected > 0"),
        (lambda d: d.update(observations=[]), "at least one element"),
    ],
)
def test_invalid_specs_are_refused_naming_the_field(edit, match):
    d = rover_like_spec().to_dict()
    edit(d)
    with pytest.raises(SpecError, match=match):
        InterfaceSpec.from_dict(d)


def test_compatibility_check_names_the_first_difference():
    spec = rover_like_spec()
    spec.check_compatible(spec.with_normalization(np.ones(spec.obs_dim), 2 * np.ones(spec.obs_dim)))
    d = spec.to_dict()
    d["observations"][8]["key"] = "cart"
    with pytest.raises(
        SpecError, match="observations\\[8\\]: expected 'pole_sin' from js .* key=pole"
    ):
        spec.check_compatible(InterfaceSpec.from_dict(d))
    d = spec.to_dict()
    d["actions"].pop()
    with pytest.raises(SpecError, match="actions: expected 5 elements, the new spec has 4"):
        spec.check_compatible(InterfaceSpec.from_dict(d))


def goal_pose_spec() -> InterfaceSpec:
    """A goal position from a PoseStamped, and its orientation read as the gravity direction in
    the goal's frame."""
    pose = "geometry_msgs/PoseStamped"
    obs = [O(f"goal_{a}", "goal", pose, f"pose.position.{a}", unit="m") for a in "xyz"]
    obs.append(O("goal_down_z", "goal", pose, "pose.orientation", transform="gravity_z"))
    act = [A("u", "cmd", "std_msgs/Float64MultiArray", "data", index=0)]
    return InterfaceSpec("arm", obs, act, 100.0)


def pose_fields(position, orientation) -> dict:
    return {
        "header": {"frame_id": "panda_link0", "stamp": {"sec": 0, "nanosec": 0}},
        "pose": {
            "position": dict(zip("xyz", position, strict=True)),
            "orientation": dict(zip("xyzw", orientation, strict=True)),
        },
    }


numbers = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(numbers, min_size=3, max_size=3),
    st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
        lambda q: abs(sum(x * x for x in q) - 1.0) < 0.5
    ),
    st.sampled_from([0.0, math.nan]),
)
def test_a_pose_goal_reads_its_position_and_rejects_what_is_not_finite(position, q, unread):
    """The values read are the position exactly (and the orientation's gravity), or the message
    is rejected as non_finite exactly when a value read is not finite."""
    n = math.sqrt(sum(x * x for x in q))
    orientation = [x / n for x in q]
    asm = ObservationAssembler(goal_pose_spec())
    msg = message_from_fields(pose_fields(position, orientation))
    msg.header.stamp.nanosec = unread  # a field no element reads: never checked
    if all(math.isfinite(v) for v in position):
        asm.update("goal", msg)
        raw = asm.raw()
        assert raw[:3].tolist() == position
        x, y = orientation[0], orientation[1]
        assert raw[3] == pytest.approx(2 * (x * x + y * y) - 1, abs=1e-9)
    else:
        with pytest.raises(MessageRejected) as err:
            asm.update("goal", msg)
        assert err.value.reason == "non_finite"
        assert not asm.ready


def test_a_pose_goal_without_a_unit_orientation_is_rejected_only_if_the_orientation_is_read():
    zeros = message_from_fields(pose_fields([0.4, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(MessageRejected, match="not_unit_quaternion"):
        ObservationAssembler(goal_pose_spec()).update("goal", zeros)
    position_only = InterfaceSpec.from_dict(
        {
            **goal_pose_spec().to_dict(),
            "observations": goal_pose_spec().to_dict()["observations"][:3],
        }
    )
    asm = ObservationAssembler(position_only)
    asm.update("goal", zeros)
    assert asm.raw().tolist() == [0.4, 0.0, 0.3]
