"""The watchdog's decision (pure code): is the control loop stalled, why, and what to do.

The policy node's process runs a watchdog thread on the wall clock (never on sim time, never on
the executor) that reads the control process's heartbeat from shared memory: the wall time of its
last completed tick, and of the last time its control thread showed life at all (it also beats
while it waits for a /clock that does not come). `Watchdog.check` turns that into a `Verdict`:

- the control process exited -> stalled, publish the safe action, replace the process;
- it is stopped (SIGSTOP, a debugger) or its control thread has not shown life for
  `timeout_s` (hung: a tick that never ends) -> stalled, publish the safe action, replace it
  (the node kills it first, so it can never command again);
- its thread is alive but no tick completed for `timeout_s` (the node clock does not advance:
  /clock stopped or paused) while its last tick published the policy's output -> stalled,
  publish the safe action; no replacement (the process is fine; it resumes with one safe tick
  and a reset hidden state when the clock moves again). If its last tick published the safe
  action, or nothing yet (a simulation that has not started), no motion command is standing:
  that is not a stall.

While stalled, the safe action is published again every `repeat_s`, so a controller with a
command timeout of its own keeps receiving it. Times are seconds on one monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopHealth:
    """What the node knows of its control process at `now_s`.

    `since_s`: when the loop was (re)activated (the reference before its first tick);
    `last_tick_s` / `alive_s`: the heartbeat (None: none since activation)."""

    now_s: float
    since_s: float
    last_tick_s: float | None
    alive_s: float | None
    process_running: bool
    process_stopped: bool = False
    exit_code: int | None = None
    commanding: bool = True  # the last tick published the policy's output


@dataclass(frozen=True)
class Verdict:
    """What the watchdog decided at one check."""

    stalled: bool
    cause: str = ""
    publish_safe: bool = False  # publish the safe action now
    replace_process: bool = False  # kill the control process (if any) and start a new one
    stalled_for_s: float = 0.0


@dataclass
class Watchdog:
    """Stall detection over `LoopHealth` samples (see the module docstring)."""

    timeout_s: float
    repeat_s: float = 0.1
    _stalled_since: float | None = None
    _last_safe_s: float | None = None

    def reset(self) -> None:
        """A new activation or a new control process: forget the previous stall."""
        self._stalled_since = self._last_safe_s = None

    @property
    def stalled(self) -> bool:
        """Whether the last check found a stall."""
        return self._stalled_since is not None

    def check(self, h: LoopHealth) -> Verdict:
        """The verdict for the loop's health now."""
        cause, replace = self._cause(h)
        if not cause:
            self._stalled_since = self._last_safe_s = None
            return Verdict(False)
        if self._stalled_since is None:
            self._stalled_since = h.now_s
        due = self._last_safe_s is None or h.now_s - self._last_safe_s >= self.repeat_s
        if due:
            self._last_safe_s = h.now_s
        return Verdict(True, cause, due, replace, h.now_s - self._stalled_since)

    def _cause(self, h: LoopHealth) -> tuple[str, bool]:
        if not h.process_running:
            code = "" if h.exit_code is None else f" (exit code {h.exit_code})"
            return f"control process exited{code}", True
        if h.process_stopped:
            return "control process stopped (SIGSTOP or a debugger): not ticking", True
        alive = h.since_s if h.alive_s is None else max(h.alive_s, h.since_s)
        if h.now_s - alive > self.timeout_s:
            return (
                f"control process not responding for {h.now_s - alive:.2f} s (hung)",
                True,
            )
        tick = h.since_s if h.last_tick_s is None else max(h.last_tick_s, h.since_s)
        if h.commanding and h.now_s - tick > self.timeout_s:
            return (
                f"no tick for {h.now_s - tick:.2f} s: the node clock does not advance "
                "(/clock stopped or paused?)",
                False,
            )
        return "", False
