"""The policy node's control process: ``python -m liquid_control.ros.control_process``.

Started by `LoopProcess` (loop_process.py) with the file descriptors of its request pipe, its
event pipe and the shared memory (timing figures, heartbeat, last command). It configures a
`ControlLoop` from the first request, then serves requests until the node's pipe closes or it
asks to quit; the loop is stopped safely on the way out (the safe action is published once if it
was commanding), however the node went away.

    python -m liquid_control.ros.control_process <request fd> <event fd> <shared memory fd>

``LIQUID_CONTROL_GIL_LOAD=N`` in the environment (for benchmarks/ros_loop.py) starts N Python
threads that keep the interpreter lock busy, to measure which control tick depends on it.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys

import numpy as np
from rclpy.signals import SignalHandlerOptions

from .control_loop import ControlLoop
from .protocol import Ev, Op, Pipe, ProtocolError, event_header, parse_request


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(
            "usage: python -m liquid_control.ros.control_process <request fd> <event fd> "
            "<shared memory fd>",
            file=sys.stderr,
        )
        return 2
    # The node coordinates shutdown: Ctrl-C in a terminal reaches the whole process group, and the
    # node's deactivation (safe action) must come first. SIGTERM ends the process safely.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Short interpreter-lock slices: the control thread never waits long for the other threads.
    sys.setswitchinterval(5e-5)
    _gil_load(int(os.environ.get("LIQUID_CONTROL_GIL_LOAD", "0") or 0))
    pipe = Pipe(int(argv[0]), int(argv[1]))
    shared_fd = int(argv[2])
    shared = mmap.mmap(shared_fd, os.fstat(shared_fd).st_size)
    first = pipe.receive()
    if first is None:
        return 0
    import rclpy

    header, arrays = first
    try:
        request = parse_request(header, arrays)
        if request.op is not Op.CONFIGURE:
            raise ProtocolError(f"the first request must be 'configure', got {request.op.value!r}")
    except ProtocolError as exc:
        pipe.send(event_header(Ev.REPLY, id=header.get("id"), error=str(exc)))
        return 1
    # rclpy's own handlers would shut the context down under a running loop on Ctrl-C.
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    loop = None
    try:
        try:
            loop = ControlLoop(
                request.fields["config"], arrays, pipe, np.frombuffer(shared, np.float64)
            )
        except Exception as exc:  # noqa: BLE001 (reported to the node, which fails configure)
            pipe.send(event_header(Ev.REPLY, id=request.id, error=f"{type(exc).__name__}: {exc}"))
            return 1
        pipe.send(event_header(Ev.REPLY, id=request.id))
        while (frame := pipe.receive()) is not None and loop.handle(*frame):
            pass
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if loop is not None:
            loop.shutdown()
        rclpy.try_shutdown()
        pipe.close()
    return 0


def _gil_load(threads: int) -> None:
    """Benchmark option: `threads` daemon threads running pure-Python loops."""
    import threading

    def spin() -> None:
        x = 0
        while True:
            for k in range(10_000):
                x ^= k

    for _ in range(max(0, threads)):
        threading.Thread(target=spin, name="gil_load", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
