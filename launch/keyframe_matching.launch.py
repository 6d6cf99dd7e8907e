"""Keyframe matching: `ros2 launch match_ros keyframe_matching.launch.py`.

Arguments: params_file (default: the installed config/keyframe_matcher.yaml),
image / camera_info / depth topic remaps, use_sim_time (for replayed bags).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("match_ros"), "config", "keyframe_matcher.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML file with keyframe_matcher parameters"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (use_depth)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package="match_ros",
        executable="keyframe_matcher",
        name="keyframe_matcher",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        remappings=[("image", LaunchConfiguration("image")),
                    ("camera_info", LaunchConfiguration("camera_info")),
                    ("depth", LaunchConfiguration("depth"))],
    )
    return LaunchDescription(args + [node])
