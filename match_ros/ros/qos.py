"""QoS profiles used by the nodes."""
from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy,
                       qos_profile_sensor_data)

IMAGE_QOS_CHOICES = ("sensor_data", "reliable")


def image_qos(name: str) -> QoSProfile:
    """'sensor_data' (best effort, keep last 5) or 'reliable' (keep last 5)."""
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=5,
                          reliability=QoSReliabilityPolicy.RELIABLE,
                          durability=QoSDurabilityPolicy.VOLATILE)
    raise ValueError(f"unknown image QoS '{name}', expected one of {IMAGE_QOS_CHOICES}")
