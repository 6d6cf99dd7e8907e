"""match_ros: image matching and visual relocalization for ROS 2.

``match_ros.core`` is the pure algorithmic core (numpy/torch/OpenCV, no ROS);
``match_ros.ros`` and ``match_ros.nodes`` are the ROS 2 glue; ``match_ros.msg``
holds the generated message classes.

Importing the package sets the thread settings of the process before numpy and torch load their libraries (unless
the environment already sets them), so every entry point (nodes, tools, benchmarks, tests) runs with the same ones:

- GNU OpenMP's spin count (torch). After each parallel operation libgomp's threads spin 300,000 times before they
  sleep; beside another busy process the spinning thread holds a core that the other thread of the team waits
  for. keyframe_matcher with xfeat_lighterglue on 2 cores (``match_ros_bench``), idle / beside one busy process:
  300,000 spins 12.0 / 1.2 Hz, 10,000 spins 11.9 / 4.0 Hz (the setting), 3,000 spins 10.6 / 5.7 Hz.
- One OpenBLAS thread (numpy). The package's numpy work is geometry on small matrices (minimal solvers, scoring
  of a few hundred matches), which OpenBLAS would split over threads that then spin and take the cores from the
  torch threads and the middleware: keyframe_matcher with orb_teblid at 30 Hz, 24.5 Hz (54 of 300 frames dropped)
  with OpenBLAS's default of one thread per core, 30.0 Hz (none dropped) with one.
"""
import os as _os

_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The generated interfaces (match_ros.msg) may be installed in a different
# folder than this package (pip-wheel environment: rosidl installs them into
# site-packages, pip installs this package editable). Join them into one package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.2.0"
