"""TF broadcasting with tf2_ros when installed, else a plain /tf publisher.

The pip-wheel environment has no tf2_ros; its tf2_msgs/TFMessage has the same
type hash as a distro's, so the fallback interoperates with real TF listeners.
"""
from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile


class TfBroadcaster:
    """``sendTransform(list_of_TransformStamped)`` on /tf. Takes the node (no subclassing)."""

    def __init__(self, node: Node):
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            TransformBroadcaster = None
        if TransformBroadcaster is not None:
            self._impl = TransformBroadcaster(node)
            self._pub = None
        else:
            from tf2_msgs.msg import TFMessage

            self._impl = None
            self._msg_type = TFMessage
            self._pub = node.create_publisher(
                TFMessage, "/tf", QoSProfile(depth=100, history=QoSHistoryPolicy.KEEP_LAST,
                                             durability=QoSDurabilityPolicy.VOLATILE))

    def send(self, transforms) -> None:
        transforms = list(transforms)
        if self._impl is not None:
            self._impl.sendTransform(transforms)
        else:
            self._pub.publish(self._msg_type(transforms=transforms))
