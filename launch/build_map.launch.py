"""Build a map live: `ros2 launch match_ros build_map.launch.py map_path:=/maps/lab.db`.

The map_builder node takes images with their camera pose in map_frame from TF (a SLAM system, motion capture),
optionally depth, and saves the map on ~/save_map, every autosave_period_s and at shutdown (Ctrl-C is safe).
Every parameter comes from params_file (default: the installed config/map_builder.yaml; under a namespace its
relative entries apply to the namespaced node). The arguments map_path, matcher, map_frame, image_transport,
use_depth and use_sim_time override their parameter only when given. Further arguments: namespace and the
image / camera_info / depth topics.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from match_ros.ros.launch_params import NOT_GIVEN, node_parameters, parameter_arguments


def _nodes(context):
    given = context.launch_configurations
    image = given["image"]
    return [Node(
        package="match_ros",
        executable="map_builder",
        name="map_builder",
        namespace=given["namespace"],
        output="screen",
        # the map must be saved before launch's SIGTERM (5 s after Ctrl-C) and SIGKILL (5 s later) arrive
        sigterm_timeout="15", sigkill_timeout="15",
        parameters=node_parameters("map_builder", given["params_file"], given),
        remappings=[("image", image), ("image/compressed", image + "/compressed"),
                    ("camera_info", given["camera_info"]), ("depth", given["depth"])],
    )]


def generate_launch_description():
    share = get_package_share_directory("match_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "map_builder.yaml"),
                              description="YAML file with map_builder parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (use_depth)"),
    ] + [DeclareLaunchArgument(a.name, default_value=NOT_GIVEN, description=a.description)
         for a in parameter_arguments("map_builder")]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
