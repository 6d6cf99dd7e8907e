"""The launch files in the nav2 manner: every parameter comes from the user's params_file, a launch argument overrides
only when given. ``launch`` / ``launch_ros`` are not installable here (ROS2_FROM_PIP.md), so each launch file runs
with small stand-ins for the few launch classes it uses (they record what the file asks for), its OpaqueFunction is
evaluated with the user's arguments, and the parameter list of each Node is read back as ROS 2 reads it: an rclpy
node (in process, on the test's domain) started with the same --params-file sequence launch_ros passes (a dict
becomes a temporary file with a ``/**`` entry) declares the node's parameters from its spec."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from match_ros.ros import launch_params
from match_ros.ros.launch_params import NODE_ARGUMENTS, node_parameters, overrides

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = {"keyframe_matcher": "match_ros.nodes.keyframe_matcher", "map_builder": "match_ros.nodes.map_builder",
                "relocalizer": "match_ros.nodes.relocalizer", "visual_odometry": "match_ros.nodes.visual_odometry"}
LAUNCH_FILES = {"keyframe_matching.launch.py": ("params_file",), "build_map.launch.py": ("params_file",),
                "relocalize.launch.py": ("params_file",),
                "odometry_relocalize.launch.py": ("odometry_params", "relocalizer_params")}
# the node's parameter file entry is keyed by its plain name, as in the shipped files
FILE_KEYS = {"keyframe_matching.launch.py": {"params_file": "keyframe_matcher"},
             "build_map.launch.py": {"params_file": "map_builder"},
             "relocalize.launch.py": {"params_file": "relocalizer"},
             "odometry_relocalize.launch.py": {"odometry_params": "visual_odometry",
                                               "relocalizer_params": "relocalizer"}}


# ------------------------------------------------------------------------------------------- launch stand-ins
class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _DeclareLaunchArgument(_Recorded):
    def __init__(self, name, default_value=None, description=""):
        super().__init__(name, default_value=default_value, description=description)
        self.name, self.default_value = name, default_value


class _OpaqueFunction(_Recorded):
    def __init__(self, function):
        super().__init__(function=function)
        self.function = function


class _LaunchDescription(list):
    pass


@pytest.fixture()
def evaluate_launch_file(monkeypatch):
    """evaluate(file, **arguments) -> [Node kwargs]: the launch file's description with the arguments the user
    gives on the command line (the rest take their declared defaults)."""
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    module("launch", LaunchDescription=_LaunchDescription)
    module("launch.actions", DeclareLaunchArgument=_DeclareLaunchArgument, OpaqueFunction=_OpaqueFunction)
    module("launch_ros")
    module("launch_ros.actions", Node=type("Node", (_Recorded,), {}))
    module("ament_index_python")
    module("ament_index_python.packages", get_package_share_directory=lambda package: str(REPO))

    def evaluate(file_name: str, **given) -> list:
        spec = importlib.util.spec_from_file_location(file_name.replace(".", "_"), REPO / "launch" / file_name)
        launch_file = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(launch_file)
        description = launch_file.generate_launch_description()
        declared = {a.name: a.default_value for a in description if isinstance(a, _DeclareLaunchArgument)}
        unknown = set(given) - set(declared)
        assert not unknown, f"{file_name} declares no argument {unknown}"
        missing = [name for name, default in declared.items() if default is None and name not in given]
        assert not missing, f"{file_name}: arguments without default {missing}"
        context = types.SimpleNamespace(launch_configurations={**declared, **given})
        nodes = []
        for action in description:
            if isinstance(action, _OpaqueFunction):
                nodes += [n.kwargs for n in action.function(context)]
        return nodes

    return evaluate


# ------------------------------------------------------------------------------------------- ROS 2 read-back
def _ros_args(parameters: list, tmp_path: Path) -> list:
    """The --ros-args launch_ros gives a node for parameters=[file, {dict}, ...] (in order: later wins)."""
    import yaml

    args = ["--ros-args"]
    for i, item in enumerate(parameters):
        if isinstance(item, dict):
            path = tmp_path / f"launch_params_{i}.yaml"
            path.write_text(yaml.safe_dump({"/**": {"ros__parameters": item}}))
            item = str(path)
        args += ["--params-file", str(item)]
    return args


def _read_back(node_kwargs: dict, tmp_path: Path) -> dict:
    """The node's parameter values as the node declares them from its spec, started as launch_ros starts it."""
    import importlib

    import rclpy

    from match_ros.ros.params import declare

    name = node_kwargs["name"]
    groups = importlib.import_module(NODE_MODULES[name]).parameter_groups()
    ctx = rclpy.Context()
    rclpy.init(args=_ros_args(node_kwargs["parameters"], tmp_path), context=ctx)
    node = rclpy.create_node(name, namespace=node_kwargs["namespace"], context=ctx)
    try:
        values = declare(node, groups[""])
        values["use_sim_time"] = node.get_parameter("use_sim_time").value
        values["fully_qualified_name"] = node.get_fully_qualified_name()
        return values
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def _user_files(file_name: str, tmp_path: Path, namespace_key: str = "") -> dict:
    """A user's parameter file per params argument: every parameter argument of the node set to a value unlike
    its default (matcher sift, frames user_*, compressed, use_sim_time true, torch_threads 1)."""
    import yaml

    files = {}
    for argument, node in FILE_KEYS[file_name].items():
        values = {"matcher": "sift", "image_transport": "compressed", "use_sim_time": True, "use_depth": True,
                  "torch_threads": 1, "map_path": str(tmp_path / "user.db"), "lifecycle": True}
        for a in NODE_ARGUMENTS[node]:
            if a.name.endswith("_frame"):
                values[a.name] = f"user_{a.name}"
        values = {a.name: values[a.name] for a in NODE_ARGUMENTS[node]}
        key = f"{namespace_key}/{node}" if namespace_key else node
        path = tmp_path / f"user_{node}.yaml"
        path.write_text(yaml.safe_dump({key: {"ros__parameters": values}}))
        files[argument] = (str(path), values)
    return files


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("file_name", sorted(LAUNCH_FILES))
def test_user_yaml_values_win_unless_an_argument_is_given(file_name, evaluate_launch_file, tmp_path):
    files = _user_files(file_name, tmp_path)
    paths = {argument: path for argument, (path, _) in files.items()}
    expected = {FILE_KEYS[file_name][argument]: values for argument, (_, values) in files.items()}

    # no argument given: every value is the user's, none replaced by a launch default
    nodes = evaluate_launch_file(file_name, **paths)
    assert sorted(n["name"] for n in nodes) == sorted(expected)
    for n in nodes:
        got = _read_back(n, tmp_path)
        assert {k: got[k] for k in expected[n["name"]]} == expected[n["name"]], n["name"]
        assert got["matcher"] == "sift"

    # given arguments win over the file (for every node of the file that has the parameter)
    nodes = evaluate_launch_file(file_name, **paths, matcher="orb_teblid", image_transport="raw",
                                 use_sim_time="false")
    for n in nodes:
        got = _read_back(n, tmp_path)
        assert (got["matcher"], got["image_transport"], got["use_sim_time"]) == ("orb_teblid", "raw", False)
        frames = [k for k in expected[n["name"]] if k.endswith("_frame")]
        assert frames and all(got[k] == f"user_{k}" for k in frames)  # not given: still the user's


def test_shipped_files_and_arguments_give_the_node_its_parameters(evaluate_launch_file, tmp_path):
    """Without params_file the installed configuration applies; a frame argument and a bool argument reach the node
    with their parameter's type."""
    nodes = evaluate_launch_file("keyframe_matching.launch.py", tracked_frame="cam_9", use_depth="true")
    got = _read_back(nodes[0], tmp_path)
    assert (got["matcher"], got["tracked_frame"], got["use_depth"]) == ("xfeat_lighterglue", "cam_9", True)
    assert got["keyframe_frame"] == "match_ros_keyframe" and got["use_sim_time"] is False
    nodes = evaluate_launch_file("build_map.launch.py", map_path="/maps/lab.db", map_frame="123")
    got = _read_back(nodes[0], tmp_path)
    assert (got["map_path"], got["map_frame"], got["autosave_period_s"]) == ("/maps/lab.db", "123", 60.0)


@pytest.mark.parametrize("key_style", ["relative", "absolute"])
def test_under_a_namespace_the_users_file_still_applies(key_style, evaluate_launch_file, tmp_path):
    """namespace:=robot1 with a file keyed `relocalizer:` (as the shipped ones; ROS 2 alone would apply it only to
    /relocalizer) or keyed `/robot1/relocalizer:`: the node /robot1/relocalizer gets the user's values."""
    files = _user_files("relocalize.launch.py", tmp_path, "/robot1" if key_style == "absolute" else "")
    path, values = files["params_file"]
    nodes = evaluate_launch_file("relocalize.launch.py", params_file=path, namespace="robot1", base_frame="arm")
    got = _read_back(nodes[0], tmp_path)
    assert got["fully_qualified_name"] == "/robot1/relocalizer"
    assert (got["matcher"], got["map_frame"], got["odom_frame"], got["base_frame"]) == (
        "sift", "user_map_frame", "user_odom_frame", "arm")
    # an empty string given explicitly (odom_frame:='""' on the command line: publish map -> base_frame)
    nodes = evaluate_launch_file("relocalize.launch.py", params_file=path, namespace="robot1", odom_frame='""')
    assert _read_back(nodes[0], tmp_path)["odom_frame"] == ""


def test_two_nodes_share_the_cores_unless_the_file_or_an_argument_says_otherwise(evaluate_launch_file, tmp_path):
    import os

    half = max(1, (os.cpu_count() or 2) // 2)
    nodes = evaluate_launch_file("odometry_relocalize.launch.py", map_path="/maps/lab.db")
    assert [_read_back(n, tmp_path)["torch_threads"] for n in nodes] == [half, half]  # shipped files: 0
    files = _user_files("odometry_relocalize.launch.py", tmp_path)  # torch_threads: 1 in both
    paths = {argument: path for argument, (path, _) in files.items()}
    nodes = evaluate_launch_file("odometry_relocalize.launch.py", **paths)
    assert [_read_back(n, tmp_path)["torch_threads"] for n in nodes] == [1, 1]
    nodes = evaluate_launch_file("odometry_relocalize.launch.py", **paths, torch_threads="3")
    assert [_read_back(n, tmp_path)["torch_threads"] for n in nodes] == [3, 3]


def test_one_params_file_for_both_nodes(evaluate_launch_file, tmp_path):
    """odometry_relocalize takes one file with a section per node (params_file:=, as nav2's bring-up), instead of
    the two per-node files; a distro check found params_file:= silently ignored there before."""
    import yaml

    files = _user_files("odometry_relocalize.launch.py", tmp_path)
    both = {}
    for path, _ in files.values():
        both.update(yaml.safe_load(Path(path).read_text()))
    one = tmp_path / "both.yaml"
    one.write_text(yaml.safe_dump(both))
    nodes = evaluate_launch_file("odometry_relocalize.launch.py", params_file=str(one), lifecycle="false")
    for n in nodes:
        got = _read_back(n, tmp_path)
        expected = files["odometry_params" if n["name"] == "visual_odometry" else "relocalizer_params"][1]
        assert {k: got[k] for k in expected if k != "lifecycle"} == {k: v for k, v in expected.items()
                                                                     if k != "lifecycle"}, n["name"]
        assert got["lifecycle"] is False  # the argument, given, wins over the file's true


def test_parameter_arguments_are_parameters_of_their_node_with_its_type():
    import importlib

    from match_ros.core.config import Param

    for node, arguments in NODE_ARGUMENTS.items():
        spec = importlib.import_module(NODE_MODULES[node]).parameter_groups()[""]
        spec["use_sim_time"] = Param(False, "rclpy's own")
        for a in arguments:
            assert a.name in spec, f"{node} has no parameter {a.name}"
            assert type(spec[a.name].default) is a.type, f"{node}.{a.name}"


def test_argument_text_to_parameter_values():
    given = {"matcher": "", "use_depth": "True", "image_transport": "compressed", "keyframe_frame": "007"}
    assert overrides("keyframe_matcher", given) == {"use_depth": True, "image_transport": "compressed",
                                                    "keyframe_frame": "007"}
    with pytest.raises(ValueError, match="use_depth:='maybe' is not true or false"):
        overrides("keyframe_matcher", {"use_depth": "maybe"})
    with pytest.raises(ValueError, match="torch_threads:='two' is not a int"):
        overrides("visual_odometry", {"torch_threads": "two"})
    assert node_parameters("map_builder", "/x.yaml", {"namespace": ""}) == ["/x.yaml"]


def test_namespaced_copy_keeps_rcl_types(tmp_path):
    """The rewritten copy reads back with the types ROS 2 reads from the original (1e-3 is a double there, a string
    for YAML 1.1), wildcards and absolute entries untouched."""
    src = tmp_path / "p.yaml"
    src.write_text("map_builder:\n  ros__parameters:\n    tf_timeout_s: 1e-1\n    map_frame: '12'\n"
                   "    mapping:\n      min_overlap: 0.5\n/**:\n  ros__parameters:\n    use_sim_time: true\n")
    copy = launch_params.namespaced_params_file(str(src), "/robot1/")
    assert launch_params.file_parameters(copy, "/robot1/map_builder") == {
        "tf_timeout_s": 0.1, "map_frame": "12", "mapping.min_overlap": 0.5, "use_sim_time": True}
    assert launch_params.file_parameters(copy, "/map_builder") == {"use_sim_time": True}
    assert launch_params.file_parameters(str(src), "/map_builder")["tf_timeout_s"] == 0.1


@pytest.mark.parametrize("file_name", ["relocalize.launch.py", "keyframe_matching.launch.py",
                                       "odometry_relocalize.launch.py"])
def test_rviz_argument_starts_rviz_with_the_package_configuration(file_name, evaluate_launch_file, tmp_path):
    nodes = evaluate_launch_file(file_name)
    assert "rviz2" not in [n.get("package") for n in nodes]  # off unless asked
    nodes = evaluate_launch_file(file_name, rviz="true")
    rviz = [n for n in nodes if n.get("package") == "rviz2"]
    assert len(rviz) == 1 and rviz[0]["arguments"] == ["-d", str(REPO / "config" / "match_ros.rviz")]
    own = tmp_path / "mine.rviz"
    nodes = evaluate_launch_file(file_name, rviz="True", rviz_config=str(own))
    assert [n["arguments"] for n in nodes if n.get("package") == "rviz2"] == [["-d", str(own)]]
    with pytest.raises(ValueError, match="rviz"):
        evaluate_launch_file(file_name, rviz="maybe")


def test_rviz_configuration_shows_the_nodes_outputs():
    """The shipped .rviz subscribes to what the nodes publish, the map displays with transient local durability
    (the relocalizer latches them), in the map frame."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "match_ros.rviz").read_text())
    displays = {d["Topic"]["Value"]: d for d in config["Visualization Manager"]["Displays"] if "Topic" in d}
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "map"
    for topic in ("/relocalizer/map_points", "/relocalizer/map_keyframes"):
        assert displays[topic]["Topic"]["Durability Policy"] == "Transient Local"
    for topic in ("/relocalizer/pose", "/relocalizer/debug_image", "/keyframe_matcher/debug_image",
                  "/visual_odometry/odom"):
        assert topic in displays
