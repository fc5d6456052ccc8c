"""Small valid policies for tests (random weights, a chosen interface spec)."""

from __future__ import annotations

from liquid_control.core.ltc import init_params
from liquid_control.core.policy import Policy
from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement
from liquid_control.core.wiring import AutoNCP


def joint_spec(
    n_joints: int = 3, n_actions: int = 1, rate_hz: float = 50.0, robot: str = "arm"
) -> InterfaceSpec:
    """JointState positions and velocities in, Float64MultiArray efforts out."""
    obs = []
    for i in range(n_joints):
        obs.append(
            ObservationElement(
                f"j{i}_pos",
                "joint_states",
                "sensor_msgs/JointState",
                "position",
                key=f"joint{i}",
                unit="rad",
            )
        )
        obs.append(
            ObservationElement(
                f"j{i}_vel",
                "joint_states",
                "sensor_msgs/JointState",
                "velocity",
                key=f"joint{i}",
                unit="rad/s",
                std=2.0,
            )
        )
    act = [
        ActionElement(
            f"effort{j}",
            "commands",
            "std_msgs/Float64MultiArray",
            "data",
            index=j,
            unit="N m",
            scale=2.0,
            low=-3.0,
            high=3.0,
        )
        for j in range(n_actions)
    ]
    return InterfaceSpec(robot, obs, act, rate_hz)


def make_policy(spec: InterfaceSpec | None = None, seed: int = 0, units: int = 19) -> Policy:
    spec = spec or joint_spec()
    wiring = AutoNCP(units, spec.action_dim, seed=seed).build(spec.obs_dim)
    return Policy(
        wiring, init_params(wiring, seed), spec, provenance={"task": "test", "seed": seed}
    )
