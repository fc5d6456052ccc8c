"""The shipped policies (policies/manifest.json) load, reach their stated minimum return on a short
evaluation through the numpy deploy runtime (the demo over DDS: test_demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the training stack (the train extra) is not installed")

from liquid_control.core.policy import Policy
from liquid_control.robots import robot_of_env
from liquid_control.train.config import EnvConfig
from liquid_control.train.evaluate import run_episodes
from liquid_control.train.rollout import PolicyAgent

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "policies" / "manifest.json").read_text())


def test_manifest_lists_the_two_own_robots() -> None:
    envs = {entry["env"] for entry in MANIFEST.values()}
    assert {"LiquidControl/CartPoleSwingUp-v0", "LiquidControl/RoverLane-v0"} <= envs


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_shipped_policy_loads_as_an_ncp_of_its_stated_size(name: str) -> None:
    policy = Policy.load(ROOT / "policies" / name)
    assert policy.wiring.units == MANIFEST[name].get("units", 19)
    assert policy.wiring.recipe.get("kind") == "AutoNCP"
    assert set(policy.wiring.layers) == {"inter", "command", "motor"}
    assert policy.provenance.get("env") == MANIFEST[name]["env"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_shipped_policy_reaches_its_stated_minimum_return(name: str) -> None:
    entry = MANIFEST[name]
    robot = robot_of_env(entry["env"])
    if robot is not None and robot.requires is not None:
        pytest.importorskip(robot.requires[0], reason=f"the {robot.requires[1]} extra")
    policy = Policy.load(ROOT / "policies" / name)
    returns = run_episodes(
        PolicyAgent(policy), EnvConfig(id=entry["env"]), entry["test_episodes"], seed=500
    )
    assert np.mean(returns) >= entry["min_return"], (name, returns)
