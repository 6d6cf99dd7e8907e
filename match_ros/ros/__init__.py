"""ROS 2 glue: message conversions, parameters, QoS, TF. Nodes live in match_ros.nodes."""
