"""ROS 2 side (rclpy, no torch): the policy node, the MuJoCo sim node and the message table.

- `policy_node`: managed node running an LTC policy at a fixed rate behind a safety layer (the
  decisions are `liquid_control.core.safety`'s), with the watchdog and the estop memory.
- `settings`: every parameter of the policy node, declared once.
- `control_loop`: the loop of the node's control process (inputs, safety core, commands);
  `control_process`: that process's main; `loop_process`: the node's handle on it;
  `protocol`: the typed requests and events between the two, framed over pipes.
- `wire`: CDR decoding of input messages and pre-serialized command messages for the loop.
- `native_tick`: the compiled control tick's preparation (decode programs, templates, the
  policy's compiled network) and its event relay; `_ctick.c` is the tick itself (C, built per
  ROS install against its rcl headers).
- `sim_node`: a MuJoCo robot behind the same topics, publishing /clock.
- `messages`: "pkg/Type" -> rclpy message class, and the QoS of inputs, commands and latched state.
- `stats`: control-loop timing statistics (period error, compute time, missed ticks).

Outside this package only the console-script entry points and the demo (`liquid_control.demo`)
import it.
"""
