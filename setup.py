"""pip install for the pip-wheel ROS 2 environment (console entry points).

On a ROS 2 distro the package is built by colcon through CMakeLists.txt
(ament_cmake + ament_cmake_python), which also generates match_ros/msg.
"""
from pathlib import Path

from setuptools import find_packages, setup


def _executables():
    """(NAME, MODULE:FUNCTION) from scripts/executables.txt, the list CMakeLists.txt installs too."""
    lines = (Path(__file__).parent / "scripts" / "executables.txt").read_text().splitlines()
    return [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="match_ros",
    version="0.2.0",
    description="Learned and classical image matching and visual relocalization for ROS 2",
    license="Apache-2.0",
    packages=find_packages(include=["match_ros", "match_ros.*"]),
    # the trained checkpoints of coam_xfeat / omniglue_xfeat and the records of how they were made;
    # the photos the scene renderer textures its planes with
    package_data={"match_ros": ["weights/*.pt", "weights/*.json", "sim/textures/*", "ros/fastdds_shm.xml"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": [f"match_ros_{name} = {target}" for name, target in _executables()]},
)
