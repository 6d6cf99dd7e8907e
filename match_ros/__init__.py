"""match_ros: image matching and visual relocalization for ROS 2.

``match_ros.core`` is the pure algorithmic core (numpy/torch/OpenCV, no ROS);
``match_ros.ros`` and ``match_ros.nodes`` are the ROS 2 glue; ``match_ros.msg``
holds the generated message classes.
"""
# The generated interfaces (match_ros.msg) may be installed in a different
# folder than this package (pip-wheel environment: rosidl installs them into
# site-packages, pip installs this package editable). Join them into one package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.2.0"
