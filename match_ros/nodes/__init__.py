"""The ROS 2 nodes, one module each (``python -m match_ros.nodes.<name>``, ``ros2 run match_ros <name>``).

Their process's thread settings (OpenMP spin count, one OpenBLAS thread) are set by ``match_ros`` itself, for every
entry point alike (see its docstring).
"""
