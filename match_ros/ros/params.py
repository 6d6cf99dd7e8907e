"""ROS 2 parameters from the typed configuration (``match_ros.core.config``): declared once, changed safely.

``declare(node, spec, prefix)`` declares every setting of a spec with its descriptor (description with unit,
range and choices; integer / floating-point ranges; read-only) and returns the checked values; a bad value at
start-up is a ``ParameterError`` naming the parameter and what is wrong. ``ParameterUpdates`` answers
``ros2 param set``: a change is checked against the spec and then applied by the node, or refused with the
reason (read-only, out of range, wrong type, or what the node says) — never "successful" and ignored.
``config_yaml`` writes a node's parameter file from its specs (the shipped ``config/*.yaml`` are generated:
``python -m match_ros.ros.params --write config``, checked by the tests).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

from match_ros.core.config import Param


class ParameterError(ValueError):
    """A parameter value that cannot be used; the text names the parameter."""


def _descriptor(name: str, p: Param):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    desc = ParameterDescriptor(name=name, description=p.text, read_only=p.read_only)
    if p.choices:
        desc.additional_constraints = f"one of: {', '.join(p.choices)}"
    if isinstance(p.default, bool) or (p.min is None and p.max is None):
        return desc
    lo = -1e300 if p.min is None else p.min
    hi = 1e300 if p.max is None else p.max
    if isinstance(p.default, int):
        desc.integer_range = [IntegerRange(from_value=int(max(lo, -2**62)), to_value=int(min(hi, 2**62)), step=0)]
    elif isinstance(p.default, float):
        desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def declare(node, spec: dict, prefix: str = "") -> dict:
    """Declare ``prefix.name`` (or ``name``) for each setting; returns {name: checked value}."""
    out = {}
    for key, p in spec.items():
        name = f"{prefix}.{key}" if prefix else key
        try:
            value = node.declare_parameter(name, p.default, _descriptor(name, p)).value
        except Exception as e:  # rclpy: type mismatch or out of the descriptor's range
            raise ParameterError(f"parameter '{name}': {e}") from None
        try:
            out[key] = p.check(name, value)
        except ValueError as e:
            raise ParameterError(f"parameter {e}") from None
    return out


class ParameterUpdates:
    """Runtime changes of declared parameters: checked, then applied by ``apply`` or refused with a reason.

    groups: {prefix: spec} ("" for the node's own settings). apply(changes) gets {prefix: {name: value}} of the
    accepted changes and returns "" when it applied them, or the reason it refuses them (nothing changes then).
    Parameters outside the groups (use_sim_time, QoS overrides) are left to rclpy.
    """

    def __init__(self, node, groups: dict, apply: Callable[[dict], str]):
        self.node, self.groups, self.apply = node, groups, apply
        node.add_on_set_parameters_callback(self._on_set)

    def _lookup(self, name: str) -> Optional[tuple]:
        prefix, _, key = name.rpartition(".")
        spec = self.groups.get(prefix)
        return (prefix, key, spec[key]) if spec is not None and key in spec else None

    def _on_set(self, params):
        from rcl_interfaces.msg import SetParametersResult

        changes: dict = {}
        for prm in params:
            found = self._lookup(prm.name)
            if found is None:
                continue
            prefix, key, spec = found
            if spec.read_only:
                return SetParametersResult(successful=False,
                                           reason=f"{prm.name} is read-only while the node runs: restart it")
            try:
                changes.setdefault(prefix, {})[key] = spec.check(prm.name, prm.value)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
        if not changes:
            return SetParametersResult(successful=True)
        reason = self.apply(changes)
        return SetParametersResult(successful=not reason, reason=reason or "applied")


def _yaml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"' if v == "" or any(c in v for c in ":#{}[],&*!|>'%@`") else v
    return repr(v)


def config_yaml(node_name: str, groups: dict, header: str) -> str:
    """The ``node_name: ros__parameters:`` YAML of a node's specs ({prefix: spec}), one comment per setting."""
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()]
    lines += [f"{node_name}:", "  ros__parameters:"]
    for prefix, spec in groups.items():
        indent = "    "
        if prefix:
            lines.append(f"    {prefix}:")
            indent = "      "
        for key, p in spec.items():
            lines.append(f"{indent}{key}: {_yaml_value(p.default)}  # {p.text}")
    return "\n".join(lines) + "\n"


def shipped_configs() -> dict:
    """{file name: YAML text} of the nodes' parameter files."""
    from match_ros.nodes import keyframe_matcher, map_builder, relocalizer, visual_odometry

    header = ("{0}\nParameters with their defaults, generated from the parameter specs by\n"
              "`python -m match_ros.ros.params --write config`: a copy of this file configures a robot\n"
              "(launch argument params_file); `ros2 param describe` shows the same descriptions.")
    return {f"{m.NODE_NAME}.yaml": config_yaml(m.NODE_NAME, m.parameter_groups(),
                                               header.format(m.__doc__.split("\n")[0]))
            for m in (keyframe_matcher, relocalizer, map_builder, visual_odometry)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write or check the nodes' parameter files (config/*.yaml).")
    ap.add_argument("--write", metavar="DIR", help="write the files into DIR")
    ap.add_argument("--check", metavar="DIR", help="exit 1 when a file in DIR differs from the specs")
    args = ap.parse_args(argv)
    bad = 0
    for name, text in shipped_configs().items():
        if args.write:
            (Path(args.write) / name).write_text(text)
        if args.check and (Path(args.check) / name).read_text() != text:
            print(f"{Path(args.check) / name} differs from the parameter specs", file=sys.stderr)
            bad = 1
        if not (args.write or args.check):
            print(f"--- {name}\n{text}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
