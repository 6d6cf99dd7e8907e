"""Parameter declaration: each parameter once, with description and constraints."""
from __future__ import annotations

from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node


def declare(node: Node, name: str, default: Any, description: str, *, read_only: bool = False,
            choices: Sequence[str] | None = None, min_value: float | None = None,
            max_value: float | None = None) -> Any:
    """Declare one parameter and return its value; choices and ranges are enforced."""
    text = description
    if choices:
        text += f" One of: {', '.join(choices)}."
    desc = ParameterDescriptor(description=text, read_only=read_only)
    if min_value is not None or max_value is not None:
        lo = -1e300 if min_value is None else min_value
        hi = 1e300 if max_value is None else max_value
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            desc.integer_range = [IntegerRange(from_value=int(max(lo, -2**62)), to_value=int(min(hi, 2**62)), step=0)]
        elif isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    value = node.declare_parameter(name, default, desc).value
    if choices and value not in choices:
        raise ValueError(f"parameter '{name}' = '{value}' is not one of {list(choices)}")
    return value


def declare_group(node: Node, prefix: str, defaults: dict, descriptions: dict) -> dict:
    """Declare ``prefix.key`` for each key of a core default_conf; returns the conf dict."""
    return {key: declare(node, f"{prefix}.{key}", default, descriptions.get(key, key))
            for key, default in defaults.items()}


def conf_comments(source_file: str) -> dict:
    """Inline ``# comments`` of a flat default_conf dict in a module, keyed by entry name.

    Lets nodes reuse the core's documentation as parameter descriptions instead of
    writing it twice.
    """
    import re

    out = {}
    with open(source_file, encoding="utf-8") as f:
        for line in f:
            m = re.match(r'\s*"(\w+)":\s*[^#]*#\s*(.+)$', line)
            if m:
                out.setdefault(m.group(1), m.group(2).strip())
    return out
