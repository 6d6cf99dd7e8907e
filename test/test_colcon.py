"""The package as a ROS 2 distro user builds it: `colcon build` of the checkout in a fresh workspace (the Python
package, executables, launch and config installed: MATCH_ROS_INSTALL_PYTHON=ON), then the installed executables
run from `source install/setup.bash`: a tool answers, and the installed relocalizer node joins a real graph
(domain 82) and reports on /diagnostics. Message wheels of the pip environment stand in for the distro's."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts processes or builds a workspace (slow tier)

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def _copy_sources(dest: Path) -> None:
    """The checkout's tracked and new (not ignored) files, as `git clone` would give them."""
    if (REPO / ".git").exists():
        files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                               capture_output=True, check=True).stdout.decode().split("\0")
        for f in filter(None, files):
            if (REPO / f).is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, dest / f)
    else:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".venv", "build", "install", "log", "__pycache__"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    if shutil.which("colcon", path=str(VENV / "bin")) is None:
        pytest.fail("colcon is not installed in the environment (requirements.txt installs it)")
    ws = tmp_path_factory.mktemp("colcon_ws")
    _copy_sources(ws / "src" / "match_ros")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
               MAKEFLAGS="-j2")
    build = subprocess.run([str(VENV / "bin" / "colcon"), "build", "--packages-select", "match_ros",
                            "--event-handlers", "console_cohesion-", "--cmake-args", "-DBUILD_TESTING=OFF",
                            f"-DPython3_EXECUTABLE={sys.executable}"], cwd=ws, env=env, capture_output=True,
                           text=True, timeout=900)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    return ws, env


def _in_workspace(ws: Path, env: dict, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source install/setup.bash && {command}"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_colcon_installs_package_executables_launch_and_config(workspace):
    ws, env = workspace
    prefix = ws / "install" / "match_ros"
    names = [line.split()[0] for line in (REPO / "scripts" / "executables.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for name in names:
        assert os.access(prefix / "lib" / "match_ros" / name, os.X_OK), name
        assert os.access(prefix / "bin" / f"match_ros_{name}", os.X_OK), name
    for f in ("launch/relocalize.launch.py", "launch/build_map.launch.py", "launch/keyframe_matching.launch.py",
              "config/relocalizer.yaml", "config/map_builder.yaml", "config/keyframe_matcher.yaml"):
        assert (prefix / "share" / "match_ros" / f).is_file(), f
    # the installed package (with its generated messages) is the one imported, not the source checkout's
    r = _in_workspace(ws, env, "cd / && python -c 'import match_ros, match_ros.msg, match_ros.srv; "
                               "from match_ros.nodes import relocalizer; print(match_ros.__file__)'")
    assert r.returncode == 0 and str(prefix) in r.stdout, r.stdout + r.stderr
    r = _in_workspace(ws, env, "match_ros_build_map --help")
    assert r.returncode == 0 and "build a relocalization map" in r.stdout, r.stderr[-2000:]


def test_installed_node_runs_in_a_ros_graph(workspace):
    ws, env = workspace
    from match_ros.evaluation.graph import confine_to_loopback, free_domain_id, spin_until

    domain = free_domain_id()
    env = dict(env, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain))
    confine_to_loopback(domain)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("colcon_test", context=ctx)
    diags = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    proc = subprocess.Popen(["bash", "-c", "source install/setup.bash && exec install/match_ros/lib/match_ros/"
                             "relocalizer --ros-args -p matcher:=orb_teblid"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert spin_until(node, lambda: any(s.name == "/relocalizer: relocalization" for d in diags
                                            for s in d.status), 90), "the installed relocalizer never reported"
        status = next(s for d in diags for s in d.status if s.name == "/relocalizer: relocalization")
        assert status.message == "no map loaded" and status.hardware_id == "orb_teblid"
    finally:
        os.killpg(proc.pid, 2)  # Ctrl-C
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 0, out[-2000:]
