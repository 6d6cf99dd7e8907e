"""Visual odometry and relocalization together, no wheel odometry needed:
`ros2 launch match_ros odometry_relocalize.launch.py map_path:=/maps/lab.db`.

visual_odometry publishes odom -> base_frame from an RGB-D camera (image, camera_info, depth), the relocalizer
publishes map -> odom from its fixes against the map: map -> odom -> base_frame (REP 105). Without a
base_frame -> camera transform on TF, set base_frame to the camera's frame (both nodes then use it).

Arguments: map_path, odometry_params / relocalizer_params (default: the installed config files), namespace,
matcher, map_frame / odom_frame / base_frame, image / camera_info / depth topics, image_transport,
use_sim_time (bag replay), torch_threads (per node; default: half the cores each, since two inference nodes
with a thread per core each oversubscribe the CPU: on 2 cores 13 instead of 71 odometry messages from a 90-frame
bag at 0.2x).
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
        DeclareLaunchArgument("odometry_params", default_value=os.path.join(share, "config", "visual_odometry.yaml"),
                              description="YAML file with visual_odometry parameters"),
        DeclareLaunchArgument("relocalizer_params", default_value=os.path.join(share, "config", "relocalizer.yaml"),
                              description="YAML file with relocalizer parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the nodes and their topics"),
        DeclareLaunchArgument("matcher", default_value="xfeat_lighterglue",
                              description="matching backend of both nodes; the relocalizer's must be the map's"),
        DeclareLaunchArgument("map_frame", default_value="map", description="map frame (REP 105)"),
        DeclareLaunchArgument("odom_frame", default_value="odom", description="odometry frame (REP 105)"),
        DeclareLaunchArgument("base_frame", default_value="base_link",
                              description="robot frame (needs base_frame -> camera on TF; else the camera frame)"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (aligned with image)"),
        DeclareLaunchArgument("image_transport", default_value="raw", description="raw or compressed"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("torch_threads", default_value=str(max(1, (os.cpu_count() or 2) // 2)),
                              description="torch intra-op threads of each node (they share the cores)"),
    ]
    sim_time = ParameterValue(a("use_sim_time"), value_type=bool)
    threads = ParameterValue(a("torch_threads"), value_type=int)
    camera = [("image", a("image")), ("image/compressed", [a("image"), "/compressed"]),
              ("camera_info", a("camera_info"))]
    odometry = Node(
        package="match_ros", executable="visual_odometry", name="visual_odometry", namespace=a("namespace"),
        output="screen",
        parameters=[a("odometry_params"), {
            "matcher": a("matcher"), "odom_frame": a("odom_frame"), "base_frame": a("base_frame"),
            "image_transport": a("image_transport"), "use_sim_time": sim_time, "torch_threads": threads}],
        remappings=camera + [("depth", a("depth"))],
    )
    relocalizer = Node(
        package="match_ros", executable="relocalizer", name="relocalizer", namespace=a("namespace"), output="screen",
        parameters=[a("relocalizer_params"), {
            "map_path": a("map_path"), "matcher": a("matcher"), "map_frame": a("map_frame"),
            "odom_frame": a("odom_frame"), "base_frame": a("base_frame"), "image_transport": a("image_transport"),
            "use_sim_time": sim_time, "torch_threads": threads}],
        remappings=camera,
    )
    return LaunchDescription(args + [odometry, relocalizer])
