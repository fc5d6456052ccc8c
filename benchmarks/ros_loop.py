"""Policy node control loop over real DDS: rate, period error, compute time, latency, swaps.

    .venv/bin/python benchmarks/ros_loop.py                      # 100, 500, 1000 Hz, 30 s each
    .venv/bin/python benchmarks/ros_loop.py --duration 5 --rates 1000 --realtime-priority 80
    .venv/bin/python benchmarks/ros_loop.py --rates 1000 --realtime-priority 80 --tick compiled \
        python --gil-load 0 2 --stalls 0       # the compiled and the Python tick, with and
                                               # without 2 threads hammering the GIL

For each rate and each `realtime_priority` of the node (default: 0 = normal scheduling, and 80 =
SCHED_FIFO control thread, where the kernel allows it; the last lines say what each run got) the
policy node (its own process) runs a 6-joint LTC policy (AutoNCP 19 units, 12 inputs, 6 actions)
with JointState published at the control rate by another process, twice: without swaps, then with
a `policy_path` swap every `--swap-period` seconds (alternating two valid files). Printed per run:

- achieved rate, period error |period - 1/rate| p50/p99/max, compute time per tick p50/p99 and
  missed ticks: the node's own figures since activation (its /diagnostics `total_*` values,
  histogram percentiles within 1 %);
- sensor -> command latency p50/p99: from publishing a JointState to receiving the node's
  ~/observation message of the first tick that used it (published right after the command, in
  the same tick). The publisher writes its send time (CLOCK_MONOTONIC, shared by processes) into
  a joint position, so the observation carries it;
- swaps: accepted/requested and the mean duration of the parameter call (load + checks);
- node_cpu / loop_cpu: CPU time used per second of the run, in % of one core, by the node's
  process (parameters, swaps, diagnostics) and by its control process (the loop);
- then, per rate and priority, `--stalls` stalls of the control process (SIGSTOP and SIGKILL in
  turn): the time from the signal to the first safe command a subscriber receives (published by
  the node's watchdog, which then replaces the process), median and worst.

`--tick compiled python` runs each case with the compiled tick (``compiled_tick: true``, the
default where it is built) and with the Python tick; `--gil-load N` starts N Python threads in the
control process that keep the interpreter lock busy (pure-Python loops; the control process's
``LIQUID_CONTROL_GIL_LOAD`` option, for this benchmark), to show which tick depends on the lock.

The node runs with `debug: true` (for the latency), which adds one publish per tick that is not
counted in its compute time. All three processes share the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))

os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

JOINTS = [f"joint_{i}" for i in range(6)]
NODE = "/bench_policy"


def make_spec(rate_hz: float):
    from liquid_control.core import ActionElement, InterfaceSpec, ObservationElement

    obs = [
        ObservationElement(f"{j}_{f}", "/joint_states", "sensor_msgs/JointState", f, key=j, std=1e3)
        for j in JOINTS
        for f in ("position", "velocity")
    ]
    act = [
        ActionElement(
            f"{j}_cmd",
            "/forward_controller/commands",
            "std_msgs/Float64MultiArray",
            "data",
            index=i,
        )
        for i, j in enumerate(JOINTS)
    ]
    return InterfaceSpec("bench_arm", obs, act, rate_hz)


def run_sensors(rate_hz: float, t_base: float) -> None:
    """Publish JointState at `rate_hz` from a plain loop on absolute deadlines (as a driver thread
    would; an rclpy timer costs this process about half a core at 1 kHz in executor dispatch);
    joint_0's position is the send time - t_base (s)."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from liquid_control.ros.messages import SENSOR_QOS

    rclpy.init()
    node = Node("bench_sensors")
    pub = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
    msg = JointState(name=JOINTS, position=[0.0] * 6, velocity=[0.0] * 6)
    position = [0.0] * 6
    period = 1.0 / rate_hz
    deadline = time.monotonic()
    try:
        while rclpy.ok():
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                deadline -= delay  # late: restart the grid rather than burst
            position[0] = time.monotonic() - t_base
            msg.position = position
            pub.publish(msg)
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 (SIGINT from the benchmark)
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the policy node's control process)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def run_case(
    rate: float,
    files: list[Path],
    duration: float,
    swap_period: float | None,
    log_dir: Path,
    priority: int = 0,
    tick: str = "compiled",
    gil_load: int = 0,
) -> dict:
    from ros_harness import Harness, NodeProcess, diagnostic_values

    from liquid_control.ros.messages import SENSOR_QOS

    t_base = time.monotonic()
    params = {
        "policy_path": str(files[0]),
        "autostart": False,
        "debug": True,
        "sensor_timeout_s": 0.5,
        "control_rate_hz": rate,
        "realtime_priority": priority,
        "estop_required_at_start": False,  # (no estop in the benchmark)
        "compiled_tick": tick == "compiled",
    }
    sensors = NodeProcess(
        argv=[sys.executable, __file__, "--sensors", str(rate), "--t-base", repr(t_base)],
        log_dir=log_dir,
    )
    node = NodeProcess(
        "liquid_control.ros.policy_node",
        params=params,
        name=NODE[1:],
        log_dir=log_dir,
        env={"LIQUID_CONTROL_GIL_LOAD": str(gil_load)},
    )
    h = Harness("bench_harness")
    try:
        # Best effort, keep last 5: a harness that falls behind drops rows instead of queueing
        # them, so its own lag does not pile up in the latency figures.
        debug = h.subscribe(f"{NODE}/observation", "std_msgs/Float64MultiArray", SENSOR_QOS)
        diag = h.subscribe("/diagnostics", "diagnostic_msgs/DiagnosticArray")
        assert h.change_state(NODE, "configure", 30.0), node.tail()
        time.sleep(1.0)  # discovery between the sensor process and the node
        assert h.change_state(NODE, "activate", 30.0), node.tail()
        h.wait_for(lambda: len(debug) > 10, 30.0, "ticks", node)
        time.sleep(0.5)
        (loop_pid,) = child_pids(node.proc.pid)
        t_start, cpu_start = time.monotonic(), cpu_seconds(node.proc.pid)
        loop_cpu_start = cpu_seconds(loop_pid)
        swaps, swap_ok, swap_s = 0, 0, []
        if swap_period:
            k = 1
            while time.monotonic() - t_start < duration:
                t = time.monotonic()
                (result,) = h.set_parameters(NODE, {"policy_path": str(files[k % 2])})
                swap_s.append(time.monotonic() - t)
                swaps += 1
                swap_ok += bool(result.successful)
                k += 1
                time.sleep(max(0.0, swap_period - (time.monotonic() - t)))
        else:
            time.sleep(duration)
        t_end, cpu_end = time.monotonic(), cpu_seconds(node.proc.pid)
        loop_cpu_end = cpu_seconds(loop_pid)
        assert h.change_state(NODE, "deactivate", 30.0), node.tail()
        t_deact = time.monotonic()

        def totals():
            for m in diag.since(t_deact + 0.05):
                v = diagnostic_values(m, NODE[1:])
                if v and v["state"] == "inactive":
                    return v
            return None

        d = h.wait_for(totals, 10.0, "diagnostics after the run", node)
        lat = []
        for t, m in debug.timed_since(t_start):
            if t > t_end:
                break
            obs_start = sum(dim.size for dim in m.layout.dim[:3])
            lat.append(t - (t_base + m.data[obs_start]))
        lat = np.array(lat)
        return {
            "rate": rate,
            "prio": priority,
            "tick": d.get("control_tick", "?").split(" ")[0],
            "gil": gil_load,
            "thread": d.get("control_thread", "?"),
            "swap": bool(swap_period),
            "achieved": float(d["total_achieved_rate_hz"]),
            "pe50": float(d["total_period_error_p50_ms"]),
            "pe99": float(d["total_period_error_p99_ms"]),
            "pemax": float(d["total_period_error_max_ms"]),
            "c50": float(d["total_compute_p50_us"]),
            "c99": float(d["total_compute_p99_us"]),
            "lat50": float(np.percentile(lat, 50) * 1e3) if lat.size else float("nan"),
            "lat99": float(np.percentile(lat, 99) * 1e3) if lat.size else float("nan"),
            "ticks": int(float(d["total_ticks"])),
            "missed": int(float(d["total_missed_ticks"])),
            "missed_swap": int(float(d["total_missed_ticks_during_swaps"])),
            "swaps": f"{swap_ok}/{swaps}" if swap_period else "-",
            "cpu": 100.0 * (cpu_end - cpu_start) / (t_end - t_start),
            "loop_cpu": 100.0 * (loop_cpu_end - loop_cpu_start) / (t_end - t_start),
            "swap_ms": 1e3 * float(np.mean(swap_s)) if swap_s else float("nan"),
        }
    finally:
        h.close()
        node.stop()
        sensors.stop()


def run_stalls(
    rate: float,
    policy: Path,
    stalls: int,
    log_dir: Path,
    priority: int,
    watchdog_timeout_s: float,
) -> dict:
    """Stall the control process `stalls` times (SIGSTOP and SIGKILL in turn) while it commands;
    the time from the signal to the first safe command (all zeros) that reaches a subscriber,
    published by the node's watchdog. Each time the watchdog replaces the process and the policy
    commands again before the next stall."""
    import signal

    from ros_harness import Harness, NodeProcess

    from liquid_control.ros.messages import SENSOR_QOS  # noqa: F401 (rclpy loaded for the harness)

    t_base = time.monotonic()
    params = {
        "policy_path": str(policy),
        "control_rate_hz": rate,
        "realtime_priority": priority,
        "estop_required_at_start": False,
        "watchdog_timeout_s": watchdog_timeout_s,
        "max_control_restarts": stalls + 1,
    }
    sensors = NodeProcess(
        argv=[sys.executable, __file__, "--sensors", str(rate), "--t-base", repr(t_base)],
        log_dir=log_dir,
    )
    node = NodeProcess(
        "liquid_control.ros.policy_node", params=params, name=NODE[1:], log_dir=log_dir
    )
    h = Harness("bench_stall_harness")
    topic = "/forward_controller/commands"
    try:
        cmd = h.subscribe(topic, "std_msgs/Float64MultiArray", 1000)

        def policy_commanding() -> bool:
            return cmd.last is not None and any(cmd.last.data)

        delays, causes = [], []
        for k in range(stalls):
            h.wait_for(policy_commanding, 60.0, "policy commands", node)
            time.sleep(0.5)
            (pid,) = child_pids(node.proc.pid)
            sig = signal.SIGSTOP if k % 2 == 0 else signal.SIGKILL
            t_cause = time.monotonic()
            os.kill(pid, sig)

            def first_safe(t0: float = t_cause) -> float | None:
                return next((t for t, m in cmd.timed_since(t0) if not any(m.data)), None)

            t_safe = h.wait_for(first_safe, 10.0, "the safe action", node)
            delays.append(t_safe - t_cause)
            causes.append(sig.name)
            if sig == signal.SIGSTOP:  # the watchdog kills it; make sure in any case
                h.wait_for(lambda p=pid: not Path(f"/proc/{p}").exists(), 10.0, "kill", node)
        d = np.array(delays) * 1e3
        return {
            "rate": rate,
            "stalls": stalls,
            "median_ms": float(np.median(d)),
            "worst_ms": float(d.max()),
            "by_cause": {
                c: float(max(x for x, cc in zip(d, causes, strict=True) if cc == c))
                for c in set(causes)
            },
        }
    finally:
        h.close()
        node.stop()
        sensors.stop()


def floor(rates: list[float], priorities: list[int], seconds: float = 10.0) -> None:
    """The machine's floor, measured now: a bare periodic C thread (clock_nanosleep to absolute
    deadlines, nothing else) at each rate and priority. No loop can beat its period error and
    missed ticks on this machine; on a VM they come from the hypervisor, not from the code."""
    from liquid_control.ros.native_tick import tick_module

    module, why = tick_module()
    if module is None:
        print(f"# (no floor measurement: the compiled tick is {why})")
        return
    print("# the floor: a bare periodic C thread, no ROS, same machine, just now")
    for rate in rates:
        for priority in priorities:
            try:
                periods = np.array(module.bare_loop(1.0 / rate, int(seconds * rate), priority))
            except PermissionError as exc:
                print(f"# {rate:7.0f} Hz prio {priority:2d}: {exc}")
                continue
            err = np.abs(periods - 1.0 / rate) * 1e3
            late = periods[periods > 1.5 / rate]
            missed = int(np.sum(np.round(late * rate) - 1))
            print(
                f"# {rate:7.0f} Hz prio {priority:2d}: period error p50 {np.percentile(err, 50):.3f} "
                f"p99 {np.percentile(err, 99):.3f} max {err.max():.2f} ms, {missed} missed in "
                f"{periods.size + 1} ticks"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0, 1000.0])
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    ap.add_argument("--swap-period", type=float, default=1.0, help="seconds between swaps")
    ap.add_argument(
        "--realtime-priority",
        type=int,
        nargs="+",
        default=[0, 80],
        help="the node's realtime_priority values to run (0 = normal scheduling)",
    )
    ap.add_argument(
        "--stalls",
        type=int,
        default=10,
        help="control-process stalls (SIGSTOP / SIGKILL in turn) per rate and priority, timed "
        "from the signal to the first safe command (0 = none)",
    )
    ap.add_argument(
        "--watchdog-timeout",
        type=float,
        default=0.0,
        help="the node's watchdog_timeout_s during the stall runs (0 = its default)",
    )
    ap.add_argument(
        "--only-stalls", action="store_true", help="skip the timing runs, time the stalls only"
    )
    ap.add_argument(
        "--tick",
        nargs="+",
        choices=("compiled", "python"),
        default=["compiled", "python"],
        help="the control ticks to run (compiled_tick true / false)",
    )
    ap.add_argument(
        "--gil-load",
        type=int,
        nargs="+",
        default=[0],
        help="Python threads hammering the interpreter lock in the control process (0 = none)",
    )
    ap.add_argument("--sensors", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--t-base", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sensors:
        run_sensors(args.sensors, args.t_base)
        return

    from liquid_control.core import AutoNCP, Policy
    from liquid_control.core.ltc import init_params

    tmp = Path(tempfile.mkdtemp(prefix="ros_loop_"))
    print(
        f"# policy node loop benchmark: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, "
        f"{args.duration:g} s per run, swap every {args.swap_period:g} s"
    )
    print(
        f"{'rate_hz':>7} {'prio':>4} {'tick':>8} {'gil':>3} {'swaps':>6} {'achieved':>8} {'perr_p50':>8} {'perr_p99':>8} {'perr_max':>8} "
        f"{'comp_p50':>8} {'comp_p99':>8} {'lat_p50':>7} {'lat_p99':>7} {'ticks':>6} {'missed':>6} "
        f"{'m_swap':>6} {'swap_ms':>7} {'node_cpu':>8} {'loop_cpu':>8}"
    )
    print(
        f"{'':>7} {'':>4} {'':>8} {'':>3} {'':>6} {'Hz':>8} {'ms':>8} {'ms':>8} {'ms':>8} {'us':>8} {'us':>8} {'ms':>7} "
        f"{'ms':>7} {'':>6} {'':>6} {'':>6} {'ms':>7} {'%core':>8} {'%core':>8}"
    )
    threads: dict[int, str] = {}
    for rate in args.rates:
        spec = make_spec(rate)
        files = []
        for seed in (0, 1):
            wiring = AutoNCP(19, len(JOINTS), seed=seed).build(spec.obs_dim)
            path = tmp / f"policy_{int(rate)}_{seed}.lcp"
            Policy(wiring, init_params(wiring, seed=seed), spec).save(path)
            files.append(path)
        cases = [
            (priority, tick, gil, swap)
            for priority in ([] if args.only_stalls else args.realtime_priority)
            for tick in args.tick
            for gil in args.gil_load
            for swap in (None, args.swap_period)
        ]
        for priority, tick, gil, swap in cases:
            r = run_case(rate, files, args.duration, swap, tmp / "logs", priority, tick, gil)
            threads[priority] = r["thread"]
            print(
                f"{r['rate']:7.0f} {r['prio']:4d} {r['tick']:>8} {r['gil']:3d} "
                f"{r['swaps']:>6} {r['achieved']:8.1f} "
                f"{r['pe50']:8.3f} {r['pe99']:8.3f} {r['pemax']:8.2f} {r['c50']:8.0f} "
                f"{r['c99']:8.0f} {r['lat50']:7.2f} {r['lat99']:7.2f} {r['ticks']:6d} "
                f"{r['missed']:6d} {r['missed_swap'] if r['swap'] else '-':>6} "
                f"{r['swap_ms']:7.1f} {r['cpu']:8.0f} {r['loop_cpu']:8.0f}",
                flush=True,
            )
    for priority, thread in threads.items():
        print(f"# prio {priority}: control thread {thread}")
    floor(args.rates, args.realtime_priority)
    if args.stalls:
        print(
            "# stall -> first safe command (the node's watchdog; watchdog_timeout_s "
            f"{args.watchdog_timeout or 'default: max(0.5 s, 5 periods)'}):"
        )
        print(
            f"{'rate_hz':>7} {'prio':>4} {'stalls':>6} {'median':>8} {'worst':>8}  by cause (worst)"
        )
        print(f"{'':>7} {'':>4} {'':>6} {'ms':>8} {'ms':>8}")
        for rate in args.rates:
            policy = tmp / f"policy_{int(rate)}_0.lcp"
            for priority in args.realtime_priority:
                s = run_stalls(
                    rate, policy, args.stalls, tmp / "logs", priority, args.watchdog_timeout
                )
                causes = ", ".join(f"{c} {v:.0f} ms" for c, v in sorted(s["by_cause"].items()))
                print(
                    f"{s['rate']:7.0f} {priority:4d} {s['stalls']:6d} {s['median_ms']:8.1f} "
                    f"{s['worst_ms']:8.1f}  {causes}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
