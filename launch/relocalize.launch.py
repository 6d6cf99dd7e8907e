"""Visual relocalization against a map: `ros2 launch match_ros relocalize.launch.py map_path:=/maps/lab.db`.

Arguments: params_file (default: the installed config/relocalizer.yaml), map_path,
image / camera_info topic remaps, use_sim_time (for replayed bags).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("match_ros"), "config", "relocalizer.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML file with relocalizer parameters"),
        DeclareLaunchArgument("map_path", description="map file built by build_map.launch.py or match_ros_build_map"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package="match_ros",
        executable="relocalizer",
        name="relocalizer",
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"map_path": LaunchConfiguration("map_path"),
                     "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        remappings=[("image", LaunchConfiguration("image")),
                    ("camera_info", LaunchConfiguration("camera_info"))],
    )
    return LaunchDescription(args + [node])
