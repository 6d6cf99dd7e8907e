"""Build a map live: `ros2 launch match_ros build_map.launch.py map_path:=/maps/lab.db`.

The map_builder node takes images with their camera pose in map_frame from TF (a SLAM system, motion capture),
optionally depth, and saves the map on ~/save_map, every autosave_period_s and at shutdown (Ctrl-C is safe).
Arguments: map_path, params_file, namespace, matcher, map_frame, image / camera_info / depth topics,
image_transport, use_depth, use_sim_time. Every other parameter comes from params_file.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("match_ros")
    a = LaunchConfiguration
    args = [
        DeclareLaunchArgument("map_path", description="where to save the map"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "map_builder.yaml"),
                              description="YAML file with map_builder parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("matcher", default_value="xfeat_lighterglue", description="local features of the map"),
        DeclareLaunchArgument("map_frame", default_value="map", description="frame of the camera poses"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (use_depth)"),
        DeclareLaunchArgument("use_depth", default_value="false", description="3D points from depth"),
        DeclareLaunchArgument("image_transport", default_value="raw", description="raw or compressed"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package="match_ros",
        executable="map_builder",
        name="map_builder",
        namespace=a("namespace"),
        output="screen",
        # the map must be saved before launch's SIGTERM (5 s after Ctrl-C) and SIGKILL (5 s later) arrive
        sigterm_timeout="15", sigkill_timeout="15",
        parameters=[a("params_file"), {
            "map_path": a("map_path"), "matcher": a("matcher"), "map_frame": a("map_frame"),
            "image_transport": a("image_transport"),
            "use_depth": ParameterValue(a("use_depth"), value_type=bool),
            "use_sim_time": ParameterValue(a("use_sim_time"), value_type=bool)}],
        remappings=[("image", a("image")), ("image/compressed", [a("image"), "/compressed"]),
                    ("camera_info", a("camera_info")), ("depth", a("depth"))],
    )
    return LaunchDescription(args + [node])
