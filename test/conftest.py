"""Test-wide setup: every pytest process talks ROS 2 only to itself.

A distinct ROS_DOMAIN_ID per test process (node processes started by tests inherit it) and
discovery limited to localhost keep concurrent test runs from hearing each other.
"""

import os

os.environ["ROS_DOMAIN_ID"] = os.environ.get("LIQUID_TEST_DOMAIN_ID") or str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
