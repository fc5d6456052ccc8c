"""Robot logs as data: rosbag2 bags (MCAP and sqlite3, read without ROS) turned into
(observation, action, dt) datasets by the same message table and interface spec the policy node
uses, and the offline replay of a policy against a bag.

numpy and `rosbags` only (the ``bags`` extra); training on a dataset (``liquid-control imitate``)
lives in `liquid_control.train`.
"""
