"""Visual relocalization against a map: `ros2 launch match_ros relocalize.launch.py map_path:=/maps/lab.db`.

Every parameter comes from params_file (default: the installed config/relocalizer.yaml; under a namespace its
relative entries apply to the namespaced node). The arguments map_path, matcher, map_frame / odom_frame /
base_frame, image_transport, use_sim_time (bag replay) and torch_threads override their parameter only when
given. Further arguments: namespace and the image / camera_info topics.
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
        executable="relocalizer",
        name="relocalizer",
        namespace=given["namespace"],
        output="screen",
        parameters=node_parameters("relocalizer", given["params_file"], given),
        remappings=[("image", image), ("image/compressed", image + "/compressed"),
                    ("camera_info", given["camera_info"])],
    )]


def generate_launch_description():
    share = get_package_share_directory("match_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "relocalizer.yaml"),
                              description="YAML file with relocalizer parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
    ] + [DeclareLaunchArgument(a.name, default_value=NOT_GIVEN, description=a.description)
         for a in parameter_arguments("relocalizer")]
    args += [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, text, default in RVIZ_ARGUMENTS]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
