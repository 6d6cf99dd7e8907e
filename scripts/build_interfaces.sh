#!/usr/bin/env bash
# Builds and installs the ROS 2 interfaces into a pip-wheel virtual environment
# (no ROS distro): match_ros/msg always, tf2_msgs/TFMessage only when no real
# tf2_msgs is importable. On a distro use colcon instead (see docs/distro.md).
set -euo pipefail
venv=$(cd "${1:?usage: build_interfaces.sh VENV}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
build="$root/build/interfaces"

cmake_install() {  # src build_dir [cmake args...]
  local src=$1 dir=$2; shift 2
  "$venv/bin/cmake" -S "$src" -B "$dir" -DCMAKE_INSTALL_PREFIX="$venv" -DCMAKE_PREFIX_PATH="$venv" \
    -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF "$@" > "$dir.log" 2>&1 \
    && "$venv/bin/cmake" --build "$dir" -j2 >> "$dir.log" 2>&1 \
    && "$venv/bin/cmake" --install "$dir" >> "$dir.log" 2>&1 \
    || { echo "interface build failed, see $dir.log" >&2; tail -20 "$dir.log" >&2; exit 1; }
}

mkdir -p "$build"
if ! "$py" -c 'import tf2_msgs.msg' 2>/dev/null || [ -f "$site/tf2_msgs/.match_ros_compat" ]; then
  cmake_install "$root/compat/tf2_msgs" "$build/tf2_msgs"
  touch "$site/tf2_msgs/.match_ros_compat"
fi
cmake_install "$root" "$build/match_ros" -DMATCH_ROS_INSTALL_PYTHON=OFF
# rosidl installs an empty match_ros/__init__.py and a match_ros egg-info next
# to the generated msg/. Without them that folder is a namespace portion, so the
# real match_ros package (installed by pip, editable) is the one imported and
# its __init__ adds the generated folder to its __path__ (pkgutil.extend_path);
# and pip does not take the egg-info for an older match_ros to uninstall.
rm -rf "$site/match_ros/__init__.py" "$site"/match_ros-*.egg-info
echo "interfaces installed into $venv"
