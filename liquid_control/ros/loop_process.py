"""The node's handle on its control process: start it, talk to it, watch it, end it.

`LoopProcess` starts ``python -m liquid_control.ros.control_process`` with two pipes (requests
in, events out; `protocol`) and one block of shared memory holding the loop's timing figures
(`LoopStats`), its heartbeat (`Heartbeat`) and the last command it published, which the node's
watchdog reads without asking the process anything. `request` waits for the reply (raising LoopProcessError with the process's
error or a timeout); `send` does not wait. `on_event(Event)` is called from a reader thread for
every event, and with ``Ev.EXIT`` when the process is gone. A reply that nobody waits for (its
request timed out) is passed to `on_orphan` (the node logs it), never dropped.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .protocol import Ev, Event, Op, Pipe, ProtocolError, parse_event, request_header
from .stats import Heartbeat, LoopStats


class LoopProcessError(RuntimeError):
    """The control process did not answer, answered with an error, or is gone."""


class LoopProcess:
    """The node's end of one control process (see the module docstring)."""

    def __init__(
        self,
        on_event: Callable[[Event], None],
        period_s: float,
        action_dim: int,
        on_orphan: Callable[[str], None] | None = None,
    ) -> None:
        # shared memory: timing figures, heartbeat, the last published command
        size = (LoopStats.size() + Heartbeat.SIZE + action_dim) * 8
        shared_fd = os.memfd_create("liquid_control_loop")
        os.ftruncate(shared_fd, size)
        self._shared = mmap.mmap(shared_fd, size)
        view = np.frombuffer(self._shared, np.float64)
        self.stats = LoopStats(period_s, storage=view[: LoopStats.size()])
        at = LoopStats.size() + Heartbeat.SIZE
        self.heartbeat = Heartbeat(view[LoopStats.size() : at])
        self.last_command = view[at:]  # written by the control process at every publish
        req_r, req_w = os.pipe()
        ev_r, ev_w = os.pipe()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "liquid_control.ros.control_process",
                    *map(str, (req_r, ev_w, shared_fd)),
                ],
                pass_fds=(req_r, ev_w, shared_fd),
                env=env,
            )
        finally:
            for fd in (req_r, ev_w, shared_fd):
                os.close(fd)
        self._pipe = Pipe(ev_r, req_w)
        self._on_event = on_event
        self._on_orphan = on_orphan or (lambda text: print(text, file=sys.stderr))
        self._next_id = 0
        self._waiting: dict[int, list[Any]] = {}  # id -> [threading.Event, reply]
        self._lock = threading.Lock()
        self._closing = False
        self.exit_code: int | None = None
        self._reader = threading.Thread(
            target=self._read, name="control_process_events", daemon=True
        )
        self._reader.start()

    # -- state -------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stopped(self) -> bool:
        """Whether the process is stopped (SIGSTOP, or traced by a debugger)."""
        try:
            with open(f"/proc/{self._proc.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state in ("T", "t")

    # -- talking -----------------------------------------------------------------------------
    def send(self, op: Op, arrays: dict[str, np.ndarray] | None = None, **fields: Any) -> None:
        try:
            self._pipe.send(request_header(op, **fields), arrays)
        except OSError as exc:
            raise LoopProcessError(f"control process is gone ({exc})") from None

    def request(
        self,
        op: Op,
        timeout_s: float = 5.0,
        arrays: dict[str, np.ndarray] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            slot = self._waiting[ident] = [threading.Event(), None]
        try:
            self.send(op, arrays, id=ident, **fields)
            if not slot[0].wait(timeout_s):
                raise LoopProcessError(
                    f"control process did not answer {op.value!r} in {timeout_s} s"
                )
        finally:
            with self._lock:
                self._waiting.pop(ident, None)
        reply = slot[1]
        if reply is None:
            raise LoopProcessError(f"control process exited before answering {op.value!r}")
        if reply.get("error"):
            raise LoopProcessError(f"control process: {op.value} failed: {reply['error']}")
        return reply

    def _read(self) -> None:
        while True:
            try:
                frame = self._pipe.receive()
            except (OSError, ValueError) as exc:
                if not self._closing:
                    self._on_orphan(f"control process: unreadable frame ({exc}); closing")
                frame = None
            if frame is None:
                break
            try:
                event = parse_event(frame[0])
            except ProtocolError as exc:
                self._on_orphan(f"control process sent a message outside the protocol: {exc}")
                continue
            if event.ev is Ev.REPLY:
                with self._lock:
                    slot = self._waiting.get(event.fields["id"])
                if slot is not None:
                    slot[1] = event.fields
                    slot[0].set()
                elif event.fields.get("error"):
                    self._on_orphan(
                        f"control process: a request nobody waits for any more failed: "
                        f"{event.fields['error']}"
                    )
            else:
                self._event(event)
        self.exit_code = self._proc.wait()
        with self._lock:
            for slot in self._waiting.values():
                slot[0].set()
        if not self._closing:
            self._event(Event(Ev.EXIT, {"code": self.exit_code}))

    def _event(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception as exc:  # noqa: BLE001 (e.g. a publisher destroyed meanwhile by cleanup)
            if not self._closing:  # this thread must go on: it delivers the replies
                self._on_orphan(f"control process event {event.ev.value!r}: {exc!r}")

    # -- ending ------------------------------------------------------------------------------
    def signal_kill(self) -> None:
        """SIGKILL now, without waiting (works on a stopped process too): from here on the
        process can never command again. Its exit is not reported as an event."""
        self._closing = True
        try:
            self._proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """`signal_kill`, then wait for the process and release the pipes."""
        self.signal_kill()
        self.close(timeout_s=2.0)

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the process to stop (it publishes the safe action if it was commanding) and wait."""
        self._closing = True
        if self.alive():
            try:
                self.send(Op.QUIT)
            except LoopProcessError:
                pass
        self._pipe.close_write()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout_s)
        self._pipe.close()
