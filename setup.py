"""pip install for the pip-wheel ROS 2 environment (console entry points).

On a ROS 2 distro the package is built by colcon through CMakeLists.txt
(ament_cmake + ament_cmake_python), which also generates match_ros/msg.
"""
from setuptools import find_packages, setup

setup(
    name="match_ros",
    version="0.1.0",
    description="Learned and classical image matching and visual relocalization for ROS 2",
    license="Apache-2.0",
    packages=find_packages(include=["match_ros", "match_ros.*"]),
    # the trained checkpoints of coam_xfeat / omniglue_xfeat and the records of how they were made
    package_data={"match_ros": ["weights/*.pt", "weights/*.json"]},
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "match_ros_keyframe_matcher = match_ros.nodes.keyframe_matcher:main",
            "match_ros_relocalizer = match_ros.nodes.relocalizer:main",
            "match_ros_map_builder = match_ros.nodes.map_builder:main",
            "match_ros_build_map = match_ros.tools.build_map:main",
            "match_ros_eval_reloc = match_ros.tools.eval_reloc:main",
            "match_ros_bag_write = match_ros.tools.bag_write:main",
            "match_ros_bag_play = match_ros.tools.bag_play:main",
            "match_ros_render = match_ros.tools.render:main",
            "match_ros_demo = match_ros.tools.demo:main",
            "match_ros_bench = match_ros.tools.bench:main",
            "match_ros_bench_reloc = match_ros.tools.bench_reloc:main",
            "match_ros_eval_pairs = match_ros.tools.eval_pairs:main",
            "match_ros_train = match_ros.tools.train:main",
        ],
    },
)
