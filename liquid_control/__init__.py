"""liquid_control: Liquid Time-Constant neural circuit policies for ROS 2 robots."""

__version__ = "0.1.0"
