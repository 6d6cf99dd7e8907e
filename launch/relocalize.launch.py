"""Visual relocalization against a map: `ros2 launch match_ros relocalize.launch.py map_path:=/maps/lab.db`.

Arguments: map_path, params_file (default: the installed config/relocalizer.yaml), namespace, matcher,
map_frame / odom_frame / base_frame, image / camera_info topics, image_transport (raw or compressed),
use_sim_time (bag replay). Every other parameter comes from params_file.
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
        DeclareLaunchArgument("map_path", description="map file built by build_map.launch.py or match_ros_build_map"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "relocalizer.yaml"),
                              description="YAML file with relocalizer parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("matcher", default_value="xfeat_lighterglue",
                              description="matching backend; the one the map was built with"),
        DeclareLaunchArgument("map_frame", default_value="map", description="map frame (REP 105)"),
        DeclareLaunchArgument("odom_frame", default_value="odom", description="odometry frame; '' for none"),
        DeclareLaunchArgument("base_frame", default_value="base_link",
                              description="robot frame whose pose is published"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("image_transport", default_value="raw", description="raw or compressed"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package="match_ros",
        executable="relocalizer",
        name="relocalizer",
        namespace=a("namespace"),
        output="screen",
        parameters=[a("params_file"), {
            "map_path": a("map_path"), "matcher": a("matcher"), "map_frame": a("map_frame"),
            "odom_frame": a("odom_frame"), "base_frame": a("base_frame"), "image_transport": a("image_transport"),
            "use_sim_time": ParameterValue(a("use_sim_time"), value_type=bool)}],
        remappings=[("image", a("image")), ("image/compressed", [a("image"), "/compressed"]),
                    ("camera_info", a("camera_info"))],
    )
    return LaunchDescription(args + [node])
