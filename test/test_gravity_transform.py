"""The gravity_x|y|z transforms: an orientation quaternion read as the unit gravity direction in the
body frame (message_types.gravity_in_body), through the spec, the adapters and the wire decoder."""

import math

import mujoco
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liquid_control.core.adapters import MessageRejected, ObservationAssembler, message_from_fields
from liquid_control.core.message_types import MESSAGE_TYPES, ElementInvalid, check_field_paths
from liquid_control.core.spec import ActionElement as A
from liquid_control.core.spec import InterfaceSpec, SpecError
from liquid_control.core.spec import ObservationElement as O

ACTIONS = [A("a", "/cmd", "std_msgs/Float64MultiArray", "data", index=0)]


def imu_spec() -> InterfaceSpec:
    """Gravity components between plain Imu fields, so each reads its own slots."""
    return InterfaceSpec(
        "t",
        [
            O("wx", "/imu", "sensor_msgs/Imu", "angular_velocity.x"),
            O("gz", "/imu", "sensor_msgs/Imu", "orientation", transform="gravity_z"),
            O("gx", "/imu", "sensor_msgs/Imu", "orientation", transform="gravity_x"),
            O("wz_sin", "/imu", "sensor_msgs/Imu", "angular_velocity.z", transform="sin"),
            O("gy", "/imu", "sensor_msgs/Imu", "orientation", transform="gravity_y"),
        ],
        ACTIONS,
        50.0,
    )


def imu(q_xyzw, wx=0.1, wz=0.3):
    return message_from_fields(
        {
            "orientation": dict(zip("xyzw", (float(v) for v in q_xyzw), strict=True)),
            "angular_velocity": {"x": wx, "y": 0.0, "z": wz},
        }
    )


def read(q_xyzw) -> np.ndarray:
    """(gx, gy, gz) as the assembler reads them."""
    asm = ObservationAssembler(imu_spec())
    asm.update("/imu", imu(q_xyzw))
    raw = asm.raw()
    return raw[[2, 4, 1]]


def rotation_gravity(q_xyzw) -> np.ndarray:
    """R(q)^T (0, 0, -1) with R built by MuJoCo from the normalised quaternion."""
    q = np.asarray(q_xyzw, np.float64)
    wxyz = np.array([q[3], q[0], q[1], q[2]]) / np.linalg.norm(q)
    r = np.zeros(9)
    mujoco.mju_quat2Mat(r, wxyz)
    return r.reshape(3, 3).T @ np.array([0.0, 0.0, -1.0])


def axis_quat(axis, angle) -> np.ndarray:
    """(x, y, z, w) of a rotation by `angle` about a unit `axis`."""
    s = math.sin(angle / 2)
    return np.array([axis[0] * s, axis[1] * s, axis[2] * s, math.cos(angle / 2)])


quaternions = (
    st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=4, max_size=4)
    .map(np.array)
    .filter(lambda q: np.linalg.norm(q) > 0.1)
    .map(lambda q: q / np.linalg.norm(q))
)


@settings(max_examples=200, deadline=None)
@given(quaternions)
def test_gravity_is_a_unit_vector_for_any_unit_quaternion(q):
    assert np.linalg.norm(read(q)) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(quaternions, st.floats(0.97, 1.03))
def test_gravity_equals_the_rotation_matrix_result_for_any_scaled_unit_quaternion(q, scale):
    np.testing.assert_allclose(read(q * scale), rotation_gravity(q), atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(quaternions, st.floats(-math.pi, math.pi))
def test_gravity_does_not_change_with_yaw(q, yaw):
    # A world-frame yaw applied after the body's orientation: q' = q_yaw * q (Hamilton product).
    z = axis_quat((0, 0, 1), yaw)
    yawed = np.zeros(4)
    mujoco.mju_mulQuat(yawed, np.roll(z, 1), np.roll(q, 1))  # MuJoCo: w, x, y, z
    np.testing.assert_allclose(read(np.roll(yawed, -1)), read(q), atol=1e-9)


def test_upright_reads_straight_down_and_tilts_read_as_documented():
    np.testing.assert_allclose(read([0, 0, 0, 1]), [0, 0, -1], atol=1e-12)
    pitch = 0.3  # nose down: gravity leans towards the nose (+x)
    np.testing.assert_allclose(
        read(axis_quat((0, 1, 0), pitch)), [math.sin(pitch), 0, -math.cos(pitch)], atol=1e-12
    )
    roll = 0.2  # left side up: gravity leans to the right (-y)
    np.testing.assert_allclose(
        read(axis_quat((1, 0, 0), roll)), [0, -math.sin(roll), -math.cos(roll)], atol=1e-12
    )


def test_other_elements_of_the_topic_keep_their_values():
    asm = ObservationAssembler(imu_spec())
    asm.update("/imu", imu([0, 0, 0, 1], wx=0.7, wz=0.5))
    raw = asm.raw()
    assert raw[0] == 0.7 and raw[3] == pytest.approx(math.sin(0.5))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("component", range(4))
def test_a_non_finite_quaternion_is_rejected_like_other_non_finite_values(bad, component):
    q = [0.0, 0.0, 0.0, 1.0]
    q[component] = bad
    with pytest.raises(MessageRejected) as exc:
        read(q)
    assert exc.value.reason == "non_finite"


@pytest.mark.parametrize("q", [[0, 0, 0, 0], [0, 0, 0, 0.5], [0, 0, 0, 1.2]])
def test_a_quaternion_that_is_not_unit_is_rejected_and_never_reads_upright(q):
    with pytest.raises(MessageRejected, match="unit quaternion") as exc:
        read(q)
    assert exc.value.reason == "not_unit_quaternion"


@pytest.mark.parametrize(
    "element",
    [
        O("g", "/js", "sensor_msgs/JointState", "position", key="j", transform="gravity_x"),
        O("g", "/imu", "sensor_msgs/Imu", "angular_velocity", transform="gravity_y"),
        O("g", "/imu", "sensor_msgs/Imu", "orientation.w", transform="gravity_z"),
        O("g", "/t", "geometry_msgs/Twist", "angular", transform="gravity_z"),
        O("g", "/a", "std_msgs/Float64MultiArray", "data", index=0, transform="gravity_x"),
    ],
)
def test_gravity_is_refused_on_a_field_that_is_not_a_quaternion(element):
    with pytest.raises(SpecError, match=r"transform: 'gravity_.' reads a geometry_msgs/Quaternion"):
        InterfaceSpec("t", [element], ACTIONS, 50.0)


def test_gravity_is_accepted_on_odometry_orientation_and_reads_it():
    spec = InterfaceSpec(
        "t",
        [O("gz", "/odom", "nav_msgs/Odometry", "pose.pose.orientation", transform="gravity_z")],
        ACTIONS,
        50.0,
    )
    asm = ObservationAssembler(spec)
    q = axis_quat((1, 0, 0), 0.4)
    asm.update(
        "/odom",
        message_from_fields({"pose": {"pose": {"orientation": dict(zip("xyzw", q, strict=True))}}}),
    )
    assert asm.raw()[0] == pytest.approx(-math.cos(0.4))


def test_the_field_check_asks_the_real_message_for_the_four_components():
    elements = [O("gx", "/imu", "sensor_msgs/Imu", "orientation", transform="gravity_x")]
    paths = [p.path for p in MESSAGE_TYPES["sensor_msgs/Imu"].field_paths(elements)]
    assert paths == ["orientation.x", "orientation.y", "orientation.z", "orientation.w"]
    whole = {"orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}
    check_field_paths(elements, lambda t: message_from_fields(whole))
    no_w = {"orientation": {"x": 0.0, "y": 0.0, "z": 0.0}}
    with pytest.raises(ElementInvalid, match="orientation.w"):
        check_field_paths(elements, lambda t: message_from_fields(no_w))


def test_a_serialized_imu_decodes_to_the_same_gravity():
    pytest.importorskip("rclpy")
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Imu

    from liquid_control.ros.wire import decoder_for

    q = axis_quat(np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5]), 0.7)
    msg = Imu()
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = q.tolist()
    msg.angular_velocity.x, msg.angular_velocity.z = 0.1, 0.3
    decoded, direct = ObservationAssembler(imu_spec()), ObservationAssembler(imu_spec())
    decoded.update("/imu", decoder_for(Imu)(serialize_message(msg)))
    direct.update("/imu", msg)
    np.testing.assert_array_equal(decoded.raw(), direct.raw())
    np.testing.assert_allclose(decoded.raw()[[2, 4, 1]], rotation_gravity(q), atol=1e-12)


def test_the_compiled_reader_declines_gravity_so_the_python_tick_runs():
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import Imu

    from liquid_control.ros.native_tick import reader_description
    from liquid_control.ros.wire import Unsupported

    elements = list(imu_spec().observations)
    with pytest.raises(Unsupported, match="transform 'gravity_z' is not compiled"):
        reader_description(Imu, elements, 65536)
    plain = [e for e in elements if not e.transform.startswith("gravity")]
    assert reader_description(Imu, plain, 65536)[2] == len(plain)
