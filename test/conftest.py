"""Test-wide setup: every pytest process talks ROS 2 only to itself.

Each pytest process takes a ROS_DOMAIN_ID nobody else on this machine holds (an exclusive lock on
a file per domain, kept for the life of the process) and limits discovery to localhost, so
concurrent test runs never hear each other. Node processes started by tests inherit it.
"""

import fcntl
import gc
import os
import tempfile

import pytest

_DOMAIN_LOCK = None


def _claim_ros_domain() -> int:
    global _DOMAIN_LOCK
    start = os.getpid() % 100
    for k in range(101):  # domains 1..101 are valid for every DDS vendor on Linux
        domain = 1 + (start + k) % 101
        f = open(
            os.path.join(tempfile.gettempdir(), f"liquid_control_ros_domain_{domain}.lock"), "w"
        )
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _DOMAIN_LOCK = f
        return domain
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..101 on this machine")


os.environ["ROS_DOMAIN_ID"] = os.environ.get("LIQUID_TEST_DOMAIN_ID") or str(_claim_ros_domain())
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture(autouse=True, scope="module")
def _frozen_heap():
    """What earlier test modules left on this process's heap (torch modules, hypothesis data,
    recorded messages) moves out of the garbage collector's reach before each module, so a full
    collection here stays short: a harness that pauses for hundreds of ms stops publishing the
    sensor stream the node under test is judged on."""
    gc.collect()
    gc.freeze()
    yield
