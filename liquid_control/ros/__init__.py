"""ROS 2 side (rclpy, no torch): the policy node, the MuJoCo sim node and the message table.

- `policy_node`: managed node running an LTC policy at a fixed rate behind a safety layer.
- `messages`: "pkg/Type" -> rclpy message class, and the QoS of inputs, commands and latched state.
- `stats`: control-loop timing statistics (period error, compute time, missed ticks).

Nothing outside this package imports it except the console-script entry points.
"""
