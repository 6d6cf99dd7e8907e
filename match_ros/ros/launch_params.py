"""The parameters the launch files give their nodes, in the nav2 manner, without importing ``launch``.

Every parameter value comes from the node's parameter file (launch argument ``params_file``); a launch argument
that names a parameter (``matcher``, the frames, ``image_transport``...) overrides it only when the user gives
it. Such arguments default to "" (not given), and only the given ones are passed after the parameter file (in
ROS 2 a later source wins); an empty string is given as two quotes (``odom_frame:='""'`` on the command line).
The launch files declare their arguments from ``parameter_arguments`` and build each node's ``parameters=`` with
``node_parameters`` at launch time (an ``OpaqueFunction``); the tests evaluate the same functions without a ROS
distro.

With a namespace (``namespace:=robot1``) the entries of the parameter file that are not absolute (``map_builder:``,
as in the shipped files) are read relative to it, as nav2's bring-up does: ROS 2 itself would apply the key
``map_builder`` only to ``/map_builder`` and silently leave ``/robot1/map_builder`` on its defaults. The file is
rewritten for that into a temporary copy.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Mapping

NOT_GIVEN = ""
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class ParameterArgument:
    """A launch argument that overrides the node parameter of the same name when given."""

    name: str
    description: str
    type: type = str  # of the parameter: str, bool, int or float

    def value(self, text: str):
        """The parameter value of the argument's text (ValueError naming the argument when it is not one)."""
        if self.type is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(f"launch argument {self.name}:={text!r} is not true or false")
        if self.type is str and text in ('""', "''"):
            return ""  # given as empty (a plain "" means not given)
        try:
            return self.type(text)
        except ValueError:
            raise ValueError(f"launch argument {self.name}:={text!r} is not a {self.type.__name__}") from None


def _args(*items) -> tuple:
    return tuple(ParameterArgument(*item) for item in items)


_MATCHER = ("matcher", "matching backend (from params_file unless given)")
_TRANSPORT = ("image_transport", "raw or compressed (from params_file unless given)")
_SIM_TIME = ("use_sim_time", "use /clock, for bag replay (false unless given)", bool)
_THREADS = ("torch_threads", "torch intra-op threads (from params_file unless given)", int)
_LIFECYCLE = ("lifecycle", "a managed node, configured and activated through its lifecycle services as nav2's "
              "lifecycle_manager does (from params_file unless given)", bool)

# launch arguments that override a parameter, per node; the names and types are those of the nodes' parameters
# (checked by the tests against the node specs)
NODE_ARGUMENTS = {
    "keyframe_matcher": _args(
        _MATCHER, ("keyframe_frame", "TF frame of the keyframe (from params_file unless given)"),
        ("tracked_frame", "TF frame of the camera (from params_file unless given)"),
        ("use_depth", "metric poses from depth (from params_file unless given)", bool), _TRANSPORT, _SIM_TIME,
        _LIFECYCLE),
    "map_builder": _args(
        ("map_path", "where to save the map (from params_file unless given)"),
        ("matcher", "local features of the map (from params_file unless given)"),
        ("map_frame", "frame of the camera poses (from params_file unless given)"),
        ("use_depth", "3D points from depth (from params_file unless given)", bool), _TRANSPORT, _SIM_TIME,
        _LIFECYCLE),
    "relocalizer": _args(
        ("map_path", "map file built by build_map.launch.py or match_ros_build_map (from params_file unless given)"),
        ("matcher", "matching backend, the one the map was built with (from params_file unless given)"),
        ("map_frame", "map frame, REP 105 (from params_file unless given)"),
        ("odom_frame", "odometry frame, REP 105 (from params_file unless given; none: '\"\"')"),
        ("base_frame", "robot frame whose pose is published (from params_file unless given)"),
        _TRANSPORT, _SIM_TIME, _THREADS, _LIFECYCLE),
    "visual_odometry": _args(
        _MATCHER, ("odom_frame", "odometry frame, REP 105 (from params_file unless given)"),
        ("base_frame", "robot frame, needs base_frame -> camera on TF (from params_file unless given)"),
        _TRANSPORT, _SIM_TIME, _THREADS, _LIFECYCLE),
}


def parameter_arguments(*nodes: str) -> list:
    """The parameter arguments of these nodes, each name once (a launch file with two nodes declares the shared
    ones once and gives them to both)."""
    seen: dict = {}
    for node in nodes:
        for arg in NODE_ARGUMENTS[node]:
            seen.setdefault(arg.name, arg)
    return list(seen.values())


def overrides(node: str, configurations: Mapping[str, str]) -> dict:
    """{parameter: value} of the node's parameter arguments the user gave (those not "")."""
    return {a.name: a.value(configurations[a.name]) for a in NODE_ARGUMENTS[node]
            if configurations.get(a.name, NOT_GIVEN) != NOT_GIVEN}


def node_parameters(node: str, params_file: str, configurations: Mapping[str, str], nodes_sharing_cores: int = 1):
    """``parameters=`` of a launch_ros Node: the parameter file (rewritten for ``configurations['namespace']``,
    see the module docstring), then the given arguments.

    nodes_sharing_cores > 1 (two inference nodes in one launch file): where neither the torch_threads argument
    nor the parameter file sets torch_threads (0: torch's default, a thread per core, which two nodes
    oversubscribe), each node gets its share of the cores.
    """
    namespace = configurations.get("namespace", "").strip("/")
    if namespace:
        params_file = namespaced_params_file(params_file, namespace)
    given = overrides(node, configurations)
    if nodes_sharing_cores > 1 and "torch_threads" not in given:
        fqn = f"/{namespace}/{node}" if namespace else f"/{node}"
        if not file_parameters(params_file, fqn).get("torch_threads"):
            given["torch_threads"] = max(1, (os.cpu_count() or 2) // nodes_sharing_cores)
    return [params_file] + ([given] if given else [])


RVIZ_ARGUMENTS = (("rviz", "start rviz2 with the package's display configuration (true / false)", "false"),
                  ("rviz_config", "rviz2 configuration file", "config/match_ros.rviz"))


def rviz_node(configurations: Mapping[str, str], share: str) -> dict | None:
    """``launch_ros`` Node keyword arguments of rviz2 with ``rviz_config`` (relative: in the package's share
    folder) when the launch argument ``rviz`` is true; None otherwise (ValueError for a value not true / false)."""
    text = configurations.get("rviz", "false").lower()
    if text not in _TRUE + _FALSE:
        raise ValueError(f"launch argument rviz:={text!r} is not true or false")
    if text in _FALSE:
        return None
    config = configurations.get("rviz_config") or RVIZ_ARGUMENTS[1][2]
    config = config if os.path.isabs(config) else os.path.join(share, config)
    return {"package": "rviz2", "executable": "rviz2", "name": "rviz2", "arguments": ["-d", config],
            "output": "screen"}


# ---------------------------------------------------------------------------------------------------- YAML
def _loader():
    """PyYAML's safe loader, plus the floats ROS 2's parser reads that YAML 1.1 leaves as text (1e-3, 5E+6)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def _read(params_file: str) -> dict:
    import yaml

    with open(params_file) as f:
        data = yaml.load(f, Loader=_loader()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{params_file}: not a ROS 2 parameter file (no node names at the top)")
    return data


def namespaced_params_file(params_file: str, namespace: str) -> str:
    """A temporary copy of the parameter file whose relative entries (``map_builder:``, ``robot/map_builder:``)
    lie under ``/namespace``; absolute ones (``/**:``, ``/robot1/map_builder:``) stay as they are."""
    import yaml

    data = _read(params_file)
    namespace = namespace.strip("/")
    rewritten = {(key if str(key).startswith("/") else f"/{namespace}/{key}"): value for key, value in data.items()}
    fd, path = tempfile.mkstemp(prefix="match_ros_params_", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(f"# {params_file} for namespace /{namespace} (match_ros.ros.launch_params)\n")
        yaml.safe_dump(rewritten, f, default_flow_style=False, sort_keys=False)
    return path


def _matches(pattern: str, fqn: str) -> bool:
    """A parameter file's node key (with ROS 2's wildcards: * one name, ** any number) against a node's name."""
    pattern = "/" + pattern.strip("/")
    regex = "".join("(/.*)?" if part == "**" else "/" + re.escape(part).replace(r"\*", "[^/]*")
                    for part in pattern.strip("/").split("/"))
    return re.fullmatch(regex, fqn) is not None


def file_parameters(params_file: str, fqn: str) -> dict:
    """{name: value} the parameter file gives the node ``fqn`` ("/namespace/name"), nested names joined with
    ".", later entries winning."""
    out: dict = {}

    def flatten(d: dict, prefix: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                flatten(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    def walk(d: dict, path: str) -> None:
        for key, value in d.items():
            if key == "ros__parameters":
                if _matches(path, fqn) and isinstance(value, dict):
                    flatten(value)
            elif isinstance(value, dict):
                walk(value, f"{path}/{str(key).strip('/')}")

    walk(_read(params_file), "")
    return out
