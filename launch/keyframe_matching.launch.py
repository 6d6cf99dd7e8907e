"""Keyframe matching: `ros2 launch match_ros keyframe_matching.launch.py image:=/camera/image_raw`.

Arguments: params_file (default: the installed config/keyframe_matcher.yaml), namespace, matcher,
keyframe_frame / tracked_frame, image / camera_info / depth topics, image_transport, use_depth, use_sim_time.
Every other parameter comes from params_file.
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
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "keyframe_matcher.yaml"),
                              description="YAML file with keyframe_matcher parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("matcher", default_value="xfeat_lighterglue", description="matching backend"),
        DeclareLaunchArgument("keyframe_frame", default_value="match_ros_keyframe",
                              description="TF frame of the keyframe"),
        DeclareLaunchArgument("tracked_frame", default_value="match_ros_camera", description="TF frame of the camera"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (use_depth)"),
        DeclareLaunchArgument("use_depth", default_value="false", description="metric poses from depth"),
        DeclareLaunchArgument("image_transport", default_value="raw", description="raw or compressed"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package="match_ros",
        executable="keyframe_matcher",
        name="keyframe_matcher",
        namespace=a("namespace"),
        output="screen",
        parameters=[a("params_file"), {
            "matcher": a("matcher"), "keyframe_frame": a("keyframe_frame"), "tracked_frame": a("tracked_frame"),
            "image_transport": a("image_transport"),
            "use_depth": ParameterValue(a("use_depth"), value_type=bool),
            "use_sim_time": ParameterValue(a("use_sim_time"), value_type=bool)}],
        remappings=[("image", a("image")), ("image/compressed", [a("image"), "/compressed"]),
                    ("camera_info", a("camera_info")), ("depth", a("depth"))],
    )
    return LaunchDescription(args + [node])
