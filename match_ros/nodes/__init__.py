"""The ROS 2 nodes, one module each (``python -m match_ros.nodes.<name>``, ``ros2 run match_ros <name>``).

Importing this package sets GNU OpenMP's spin count for the node process before torch loads libgomp (unless the
environment already sets one). After each parallel operation libgomp's threads spin 300,000 times before they
sleep; beside another busy process the spinning thread holds a core that the other thread of the team waits for.
keyframe_matcher with xfeat_lighterglue on 2 cores (``match_ros_bench``), idle / beside one busy process:
300,000 spins 12.0 / 1.2 Hz, 10,000 spins 11.9 / 4.0 Hz (the setting), 3,000 spins 10.6 / 5.7 Hz.
"""
import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
