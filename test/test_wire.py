"""The serialized fast paths (liquid_control.ros.wire) against rclpy's own (de)serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from liquid_control.core.adapters import MessageRejected, ObservationAssembler  # noqa: E402
from liquid_control.core.spec import (  # noqa: E402
    OBSERVATION_TYPES,
    ActionElement,
    InterfaceSpec,
    ObservationElement,
)
from liquid_control.ros.messages import message_class  # noqa: E402
from liquid_control.ros.wire import (  # noqa: E402
    Malformed,
    SerializedTemplate,
    TemplateUnsupported,
    decoder_for,
)

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)


def same(a, b) -> bool:
    """Field-by-field equality of an rclpy message and a decoded namespace (NaN equals NaN)."""
    if hasattr(a, "get_fields_and_field_types"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.get_fields_and_field_types())
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, (int, float, bool)) and not isinstance(b, (list, np.ndarray)):
        return (a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    a_list, b_list = list(a), list(b)
    return len(a_list) == len(b_list) and all(
        same(x, y) for x, y in zip(a_list, b_list, strict=True)
    )


@st.composite
def messages(draw, msg_type: str):
    cls = message_class(msg_type)
    msg = cls()
    if hasattr(msg, "header"):
        msg.header.stamp.sec = draw(st.integers(-(2**31), 2**31 - 1))
        msg.header.stamp.nanosec = draw(st.integers(0, 2**32 - 1))
        msg.header.frame_id = draw(names)
    if msg_type == "sensor_msgs/JointState":
        n = draw(st.integers(0, 8))
        msg.name = draw(st.lists(names, min_size=n, max_size=n))
        for f in ("position", "velocity", "effort"):
            msg.__setattr__(f, draw(st.lists(floats, max_size=8)))
    elif msg_type == "sensor_msgs/Imu":
        msg.orientation.w = draw(floats)
        msg.angular_velocity.z = draw(floats)
        msg.linear_acceleration.x = draw(floats)
        msg.orientation_covariance = draw(st.lists(floats, min_size=9, max_size=9))
    elif msg_type == "sensor_msgs/LaserScan":
        f32 = st.floats(width=32, allow_nan=True)
        msg.range_max = draw(f32)
        msg.angle_min = draw(f32)
        msg.ranges = draw(st.lists(f32, max_size=40))
        msg.intensities = draw(st.lists(f32, max_size=5))
    elif msg_type == "nav_msgs/Odometry":
        msg.child_frame_id = draw(names)
        msg.pose.pose.position.y = draw(floats)
        msg.twist.twist.angular.z = draw(floats)
        msg.pose.covariance = draw(st.lists(floats, min_size=36, max_size=36))
    elif msg_type == "geometry_msgs/Twist":
        msg.linear.x, msg.angular.z = draw(floats), draw(floats)
    elif msg_type == "geometry_msgs/PoseStamped":
        msg.pose.position.x, msg.pose.position.z = draw(floats), draw(floats)
        msg.pose.orientation.y, msg.pose.orientation.w = draw(floats), draw(floats)
    else:
        dims = draw(st.lists(st.tuples(names, st.integers(0, 2**32 - 1)), max_size=3))
        dim_cls = message_class("std_msgs/MultiArrayDimension")
        msg.layout.dim = [dim_cls(label=lab, size=s, stride=s) for lab, s in dims]
        msg.layout.data_offset = draw(st.integers(0, 2**32 - 1))
        msg.data = draw(st.lists(floats, max_size=20))
    return msg


@pytest.mark.parametrize("msg_type", OBSERVATION_TYPES)
def test_every_input_type_decodes_exactly_as_rclpy(msg_type: str) -> None:
    decode = decoder_for(message_class(msg_type))
    assert decode is not None

    @settings(max_examples=60, deadline=None)
    @given(messages(msg_type))
    def check(msg) -> None:
        buf = serialize_message(msg)
        assert same(deserialize_message(buf, type(msg)), decode(buf))

    check()


def test_the_readers_give_the_same_observation_from_bytes_and_from_messages() -> None:
    obs = [
        ObservationElement("q1", "/joint_states", "sensor_msgs/JointState", "position", key="j1"),
        ObservationElement("v0", "/joint_states", "sensor_msgs/JointState", "velocity", key="j0"),
        ObservationElement("scan0", "/scan", "sensor_msgs/LaserScan", "ranges", index=0, sectors=3),
        ObservationElement("scan2", "/scan", "sensor_msgs/LaserScan", "ranges", index=2, sectors=3),
    ]
    act = [ActionElement("u", "/cmd", "std_msgs/Float64MultiArray", "data", index=0)]
    spec = InterfaceSpec("r", obs, act, 50.0)
    js = message_class("sensor_msgs/JointState")(
        name=["j0", "j1"], position=[0.5, -1.5], velocity=[2.0, 3.0]
    )
    scan = message_class("sensor_msgs/LaserScan")(range_max=5.0, ranges=[1.0, 9.0, 2.0, 0.5])
    by_msg, by_bytes = ObservationAssembler(spec), ObservationAssembler(spec)
    for topic, msg in (("/joint_states", js), ("/scan", scan)):
        by_msg.update(topic, msg)
        by_bytes.update(topic, decoder_for(type(msg))(serialize_message(msg)))
    np.testing.assert_array_equal(by_msg.raw(), by_bytes.raw())
    np.testing.assert_array_equal(by_bytes.raw(), [-1.5, 2.0, 1.0, 0.5])
    # a rejection is the same too: a JointState whose velocity is shorter than its names
    bad = message_class("sensor_msgs/JointState")(name=["j0", "j1"], position=[0.0, 0.0])
    with pytest.raises(MessageRejected, match="wrong_length"):
        by_bytes.update("/joint_states", decoder_for(type(bad))(serialize_message(bad)))


@settings(max_examples=100, deadline=None)
@given(messages("geometry_msgs/PoseStamped"))
def test_a_pose_goal_reads_the_same_from_bytes_and_from_the_message(msg) -> None:
    """A goal position from a PoseStamped: the same values, or the same rejection, whether read
    from rclpy's message or from the decoded bytes."""
    pose = "geometry_msgs/PoseStamped"
    obs = [
        ObservationElement(name, "/goal_pose", pose, f"pose.{f}")
        for name, f in (("gx", "position.x"), ("gz", "position.z"), ("qw", "orientation.w"))
    ]
    act = [ActionElement("u", "/cmd", "std_msgs/Float64MultiArray", "data", index=0)]
    spec = InterfaceSpec("arm", obs, act, 100.0)
    outcomes = []
    for m in (msg, decoder_for(type(msg))(serialize_message(msg))):
        asm = ObservationAssembler(spec)
        try:
            asm.update("/goal_pose", m)
            outcomes.append(asm.raw().tobytes())
        except MessageRejected as exc:
            outcomes.append(exc.reason)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:10], "past the end"),
        (lambda b: b[:-40], "past the end|does not fit"),
        (lambda b: b[:12] + b"\xff\xff\xff\x7f" + b[16:], "past the end|NUL"),  # frame_id length
        (lambda b: b[:2], "shorter than the CDR header"),
    ],
)
def test_truncated_or_corrupt_bytes_raise_malformed(mutate, match) -> None:
    cls = message_class("sensor_msgs/JointState")
    buf = serialize_message(cls(name=["a", "b"], position=[1.0, 2.0], velocity=[3.0, 4.0]))
    bad = mutate(bytes(buf))
    with pytest.raises(Malformed, match=match):
        decoder_for(cls)(bad)


def test_a_huge_sequence_count_is_refused_before_any_allocation() -> None:
    cls = message_class("std_msgs/Float64MultiArray")
    buf = bytearray(serialize_message(cls(data=[1.0])))
    # layout: dim count (4) @4, data_offset @8, data count @12
    buf[12:16] = (2**31).to_bytes(4, "little")
    with pytest.raises(Malformed, match="does not fit"):
        decoder_for(cls)(bytes(buf))


@pytest.mark.parametrize(
    "msg_type, fill, n",
    [
        ("std_msgs/Float64MultiArray", lambda m, v: setattr(m, "data", v.tolist()), 6),
        (
            "geometry_msgs/Twist",
            lambda m, v: (setattr(m.linear, "x", v[0]), setattr(m.angular, "z", v[1])),
            2,
        ),
    ],
)
def test_templates_serialize_exactly_what_the_message_path_does(msg_type, fill, n) -> None:
    cls = message_class(msg_type)
    template = SerializedTemplate(cls(), fill, n)
    rng = np.random.default_rng(0)
    for _ in range(50):
        values = rng.normal(size=n) * 10.0 ** rng.integers(-5, 5)
        expected = cls()
        fill(expected, values)
        assert deserialize_message(template.serialize(values), cls) == expected


def test_a_message_whose_values_are_not_float64_fields_has_no_template() -> None:
    cls = message_class("sensor_msgs/LaserScan")  # float32 ranges
    with pytest.raises(TemplateUnsupported):
        SerializedTemplate(cls(), lambda m, v: setattr(m, "ranges", v.tolist()), 3)
