"""Keyframe matching: `ros2 launch match_ros keyframe_matching.launch.py image:=/camera/image_raw`.

Every parameter comes from params_file (default: the installed config/keyframe_matcher.yaml; under a namespace its
relative entries apply to the namespaced node). The arguments matcher, keyframe_frame / tracked_frame,
image_transport, use_depth and use_sim_time override their parameter only when given. Further arguments: namespace
and the image / camera_info / depth topics.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from match_ros.ros.launch_params import (NOT_GIVEN, RVIZ_ARGUMENTS, node_parameters, parameter_arguments,
                                         rviz_node)


def _nodes(context):
    given = context.launch_configurations
    image = given["image"]
    rviz = rviz_node(given, get_package_share_directory("match_ros"))
    return ([Node(**rviz)] if rviz else []) + [Node(
        package="match_ros",
        executable="keyframe_matcher",
        name="keyframe_matcher",
        namespace=given["namespace"],
        output="screen",
        parameters=node_parameters("keyframe_matcher", given["params_file"], given),
        remappings=[("image", image), ("image/compressed", image + "/compressed"),
                    ("camera_info", given["camera_info"]), ("depth", given["depth"])],
    )]


def generate_launch_description():
    share = get_package_share_directory("match_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "keyframe_matcher.yaml"),
                              description="YAML file with keyframe_matcher parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (use_depth)"),
    ] + [DeclareLaunchArgument(a.name, default_value=NOT_GIVEN, description=a.description)
         for a in parameter_arguments("keyframe_matcher")]
    args += [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, text, default in RVIZ_ARGUMENTS]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
