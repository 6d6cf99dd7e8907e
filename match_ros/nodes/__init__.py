"""The ROS 2 nodes, one module each (``python -m match_ros.nodes.<name>``, ``ros2 run match_ros <name>``).

Importing this package sets two thread settings of the node process before numpy and torch load their libraries
(unless the environment already sets them):

- GNU OpenMP's spin count (torch). After each parallel operation libgomp's threads spin 300,000 times before they
  sleep; beside another busy process the spinning thread holds a core that the other thread of the team waits
  for. keyframe_matcher with xfeat_lighterglue on 2 cores (``match_ros_bench``), idle / beside one busy process:
  300,000 spins 12.0 / 1.2 Hz, 10,000 spins 11.9 / 4.0 Hz (the setting), 3,000 spins 10.6 / 5.7 Hz.
- One OpenBLAS thread (numpy). The nodes' numpy work is geometry on small matrices (minimal solvers, scoring of
  a few hundred matches), which OpenBLAS would split over threads that then spin and take the cores from the
  torch threads and the middleware: keyframe_matcher with orb_teblid at 30 Hz, 24.5 Hz (54 of 300 frames dropped)
  with OpenBLAS's default of one thread per core, 30.0 Hz (none dropped) with one.
"""
import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
