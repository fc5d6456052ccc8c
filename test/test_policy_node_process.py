"""The policy node's two processes fail safe: whichever dies, the robot is told.

- The node's process killed (SIGKILL, no chance to clean up): its control process sees the pipe
  close, publishes the safe action once, stops commanding and exits.
- The control process killed or stopped: the node's watchdog publishes the safe action itself,
  reports it (~/is_safe true, the cause in /diagnostics) and replaces the process.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time

import numpy as np
import pytest
from ros_harness import (
    Harness,
    NodeProcess,
    diagnostic_values,
    save_test_policy,
    write_params_file,
)
from sensor_msgs.msg import JointState
from test_policy_node import SAFE, Sensors, joint_spec

from liquid_control.ros.messages import LATCHED_QOS, SENSOR_QOS

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

NODE = "/process_policy"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by a dead parent's init) counts as gone
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(tmp_path, h):
    path = tmp_path / "p.lcp"
    save_test_policy(path, joint_spec(), seed=0)
    params = {
        "policy_path": str(path),
        "safe_action": "spec",
        "sensor_timeout_s": 0.3,
        "estop_required_at_start": False,
    }
    node = NodeProcess(
        "liquid_control.ros.policy_node", params=params, name=NODE[1:], log_dir=tmp_path
    )
    sensors = Sensors()
    cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray", 1000)
    diag = h.subscribe("/diagnostics", "diagnostic_msgs/DiagnosticArray")
    is_safe = h.subscribe(f"{NODE}/is_safe", "std_msgs/Bool", LATCHED_QOS)
    h.publish_periodically("/joint_states", sensors.make, 100.0, SENSOR_QOS)
    h.wait_for(
        lambda: len(cmd) >= 5 and not np.allclose(cmd.last.data, SAFE), 30.0, "commands", node
    )

    def loop_pid():
        for m in diag.since(time.monotonic() - 5.0):
            v = diagnostic_values(m, NODE[1:])
            if v and v.get("control_process", "").startswith("pid "):
                return int(v["control_process"].split()[1])
        return None

    pid = h.wait_for(loop_pid, 10.0, "the control process pid in diagnostics", node)
    return node, cmd, diag, is_safe, pid


def test_a_killed_node_leaves_the_safe_action_and_no_commander(tmp_path):
    with Harness("process_harness_1") as h:
        node, cmd, _, _, loop_pid = start(tmp_path, h)
        try:
            t_kill = time.monotonic()
            os.kill(node.proc.pid, signal.SIGKILL)
            h.wait_for(lambda: not alive(loop_pid), 10.0, "the control process to exit")
            after = [list(m.data) for m in cmd.since(t_kill)]
            assert after and np.allclose(after[-1], SAFE), after[-3:]
            n = len(cmd)
            time.sleep(0.5)
            assert len(cmd) == n, "something still commands after both processes are gone"
        finally:
            node.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_a_dead_or_stopped_control_process_gets_the_safe_action_and_is_replaced(tmp_path, sig):
    """Finding 2(d)/(e): SIGSTOP left 6 s without commands, SIGKILL no safe command and no
    restart. Now the node's watchdog publishes the safe action itself within
    watchdog_timeout_s (0.5 s here), reports it, kills a stopped process, starts a new one and
    the policy commands again."""
    with Harness(f"process_harness_{int(sig)}") as h:
        node, cmd, diag, is_safe, loop_pid = start(tmp_path, h)
        try:
            h.wait_for(lambda: is_safe.last is not None and not is_safe.last.data, 5.0, "unsafe")
            t_cause = time.monotonic()
            os.kill(loop_pid, sig)

            def first_safe():
                return next(
                    (t for t, m in cmd.timed_since(t_cause) if np.allclose(m.data, SAFE)), None
                )

            t_safe = h.wait_for(first_safe, 5.0, "the safe action from the node", node)
            # watchdog_timeout_s 0.5 s + the watchdog's 20 ms poll + DDS, generous for CI
            assert t_safe - t_cause < 0.5 + 0.5, f"safe action {t_safe - t_cause:.3f} s after"
            h.wait_for(lambda: is_safe.last.data, 5.0, "~/is_safe true", node)

            def replaced():
                for m in diag.since(t_cause):
                    v = diagnostic_values(m, NODE[1:])
                    if v and v["control_process"] not in ("none", f"pid {loop_pid}"):
                        if int(v["control_restarts_last_60s"]) >= 1:
                            return v
                return None

            v = h.wait_for(replaced, 10.0, "a new control process in diagnostics", node)
            cause = "exited" if sig == signal.SIGKILL else "stopped"
            assert cause in v["last_stall"], v["last_stall"]
            assert not alive(loop_pid), "the stopped process was not killed"
            h.wait_for(
                lambda: not np.allclose(cmd.last.data, SAFE) and not is_safe.last.data,
                15.0,
                "the policy commanding again",
                node,
            )
            assert f"watchdog: control process {cause}" in node.log()
            assert node.running, "the node itself stays up"
        finally:
            if sig == signal.SIGSTOP:
                try:
                    os.kill(loop_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            node.stop()


def test_the_control_process_logs_at_the_nodes_log_level(tmp_path):
    """`--ros-args --log-level error`: the control process's warnings are silenced too (it is
    started without the node's arguments), while what it does is still counted."""
    path = tmp_path / "p.lcp"
    save_test_policy(path, joint_spec(), seed=0)
    params = write_params_file(tmp_path / "params.yaml", {"policy_path": str(path)})
    argv = [sys.executable, "-m", "liquid_control.ros.policy_node", "--ros-args"]
    argv += ["--params-file", str(params), "-r", "__node:=quiet_policy", "--log-level", "error"]
    with Harness("process_harness_3") as h:
        node = NodeProcess(argv=argv, log_dir=tmp_path)
        try:
            sensors = Sensors()
            cmd = h.subscribe("/cmd", "std_msgs/Float64MultiArray", 1000)
            diag = h.subscribe("/diagnostics", "diagnostic_msgs/DiagnosticArray")
            h.publish_periodically("/joint_states", sensors.make, 100.0, SENSOR_QOS)
            h.wait_for(lambda: len(cmd) >= 5, 30.0, "commands", node)
            bad = JointState(name=["j1", "j0"], position=[1.0, math.nan], velocity=[0.0, 0.0])
            for _ in range(5):
                h.publish("/joint_states", bad, SENSOR_QOS)
                time.sleep(0.03)

            def rejected():
                for m in diag.since(time.monotonic() - 2.0):
                    v = diagnostic_values(m, "quiet_policy")
                    if v and int(v.get("rejected_non_finite", 0)) >= 3:
                        return v
                return None

            h.wait_for(rejected, 10.0, "rejected_non_finite in diagnostics", node)
            log = node.log()
            assert "rejected a message" not in log, log[-2000:]
            assert "every input has arrived" not in log  # the node's own info line, also silenced
        finally:
            node.stop()
