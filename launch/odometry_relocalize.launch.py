"""Visual odometry and relocalization together, no wheel odometry needed:
`ros2 launch match_ros odometry_relocalize.launch.py map_path:=/maps/lab.db`.

visual_odometry publishes odom -> base_frame from an RGB-D camera (image, camera_info, depth), the relocalizer
publishes map -> odom from its fixes against the map: map -> odom -> base_frame (REP 105). Without a
base_frame -> camera transform on TF, set base_frame to the camera's frame (both nodes then use it).

Every parameter comes from params_file (one YAML file with a section per node, as nav2's bring-up takes it) or, when
it is not given, from odometry_params / relocalizer_params (default: the installed config files); under a namespace
their relative entries apply to the namespaced nodes. The arguments map_path, matcher, map_frame /
odom_frame / base_frame, image_transport, use_sim_time (bag replay) and torch_threads override their parameter
(of both nodes where both have it) only when given. Further arguments: namespace and the image / camera_info /
depth topics. torch_threads set nowhere (or 0 in the files): half the cores each, since two inference nodes with a
thread per core each oversubscribe the CPU (on 2 cores 13 instead of 71 odometry messages from a 90-frame bag at
0.2x).
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
    camera = [("image", image), ("image/compressed", image + "/compressed"), ("camera_info", given["camera_info"])]
    odometry = Node(
        package="match_ros", executable="visual_odometry", name="visual_odometry", namespace=given["namespace"],
        output="screen",
        parameters=node_parameters("visual_odometry", given["params_file"] or given["odometry_params"], given,
                                   nodes_sharing_cores=2),
        remappings=camera + [("depth", given["depth"])],
    )
    relocalizer = Node(
        package="match_ros", executable="relocalizer", name="relocalizer", namespace=given["namespace"],
        output="screen",
        parameters=node_parameters("relocalizer", given["params_file"] or given["relocalizer_params"], given,
                                   nodes_sharing_cores=2),
        # visual_odometry's messages say where it lost track and restarted (its covariance jumps): no prior across
        remappings=camera + [("odometry", "visual_odometry/odom")],
    )
    rviz = rviz_node(given, get_package_share_directory("match_ros"))
    return [odometry, relocalizer] + ([Node(**rviz)] if rviz else [])


def generate_launch_description():
    share = get_package_share_directory("match_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=NOT_GIVEN,
                              description="one YAML file with the parameters of both nodes (replaces odometry_params "
                                          "and relocalizer_params when given)"),
        DeclareLaunchArgument("odometry_params", default_value=os.path.join(share, "config", "visual_odometry.yaml"),
                              description="YAML file with visual_odometry parameters"),
        DeclareLaunchArgument("relocalizer_params", default_value=os.path.join(share, "config", "relocalizer.yaml"),
                              description="YAML file with relocalizer parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the nodes and their topics"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="camera_info topic"),
        DeclareLaunchArgument("depth", default_value="/camera/depth", description="depth topic (aligned with image)"),
    ] + [DeclareLaunchArgument(a.name, default_value=NOT_GIVEN, description=a.description)
         for a in parameter_arguments("visual_odometry", "relocalizer")]
    args += [DeclareLaunchArgument(name, default_value=default, description=text)
             for name, text, default in RVIZ_ARGUMENTS]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
