"""Build a map live: `ros2 launch match_ros build_map.launch.py map_path:=/maps/lab.db`.

The map_builder node takes images with their camera pose in map_frame from TF
(e.g. a SLAM system or motion capture), optionally depth, and saves the map on
~/save_map and at shutdown.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("match_ros"), "config", "map_builder.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML file with map_builder parameters"),
        DeclareLaunchArgument("map_path", description="where to save the map"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (use_depth)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package="match_ros",
        executable="map_builder",
        name="map_builder",
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"map_path": LaunchConfiguration("map_path"),
                     "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        remappings=[("image", LaunchConfiguration("image")),
                    ("camera_info", LaunchConfiguration("camera_info")),
                    ("depth", LaunchConfiguration("depth"))],
    )
    return LaunchDescription(args + [node])
