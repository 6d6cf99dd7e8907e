"""Typed configuration, declared once: each setting with its default, unit, range and description.

A component declares a spec, ``{name: Param(default, description, unit=..., min=..., max=...)}``; everything
else derives from it: the defaults (``defaults``), the checked configuration a component runs with
(``make_conf``: unknown keys, wrong types, NaN, out-of-range values are a ValueError naming the setting), the
ROS 2 parameters of the nodes with their descriptors (``match_ros.ros.params``), the shipped YAML files and the
command-line defaults of the tools. ``merge_conf`` does the same for the flat ``default_conf`` dicts of the
matcher backends (unknown keys refused, defaults merged once).
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Param:
    """One setting. The default's type is the setting's type (an int is accepted for a float).

    unit: "m", "deg", "px", "s", "Hz", ... ("" for none); min / max: inclusive bounds of numbers;
    choices: the allowed strings; read_only: a running node cannot change it (it needs a restart).
    """

    default: Any
    description: str
    unit: str = ""
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[tuple] = None
    read_only: bool = False

    @property
    def text(self) -> str:
        """The description with unit, range and choices, as a parameter descriptor shows it."""
        parts = [self.description.rstrip(".") + "."]
        if self.unit:
            parts.append(f"Unit: {self.unit}.")
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            parts.append(f"Range: [{lo}, {hi}].")
        if self.choices:
            parts.append(f"One of: {', '.join(self.choices)}.")
        if self.read_only:
            parts.append("Read-only while running.")
        return " ".join(parts)

    @property
    def bool_text(self) -> bool:
        """A text setting whose choices include "true" and "false" (e.g. auto / true / false): YAML booleans count."""
        return isinstance(self.default, str) and bool(self.choices) and {"true", "false"} <= set(self.choices)

    def check(self, name: str, value: Any) -> Any:
        """The value, converted to the setting's type; ValueError saying what is wrong."""
        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        elif kind is str:
            if isinstance(value, bool) and self.bool_text:
                value = "true" if value else "false"  # a YAML true / false for a true / false / auto setting
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
            if self.choices and value not in self.choices:
                raise ValueError(f"{name} must be one of {list(self.choices)}, got {value!r}")
        if kind in (int, float):
            if self.min is not None and value < self.min:
                raise ValueError(f"{name} = {value} is below its minimum {self.min:g}{self.unit and ' ' + self.unit}")
            if self.max is not None and value > self.max:
                raise ValueError(f"{name} = {value} is above its maximum {self.max:g}{self.unit and ' ' + self.unit}")
        return value


def defaults(spec: dict) -> dict:
    """{name: default} of a spec."""
    return {k: p.default for k, p in spec.items()}


def make_conf(spec: dict, conf: Optional[dict], owner: str) -> dict:
    """Defaults overridden by ``conf``, every value checked; ValueError for unknown keys or bad values."""
    conf = dict(conf or {})
    unknown = set(conf) - set(spec)
    if unknown:
        raise ValueError(f"{owner}: unknown configuration keys {sorted(unknown)}; known: {sorted(spec)}")
    return {k: p.check(k, conf[k]) if k in conf else p.default for k, p in spec.items()}


def merge_conf(default_conf: dict, conf: Optional[dict], owner: str) -> dict:
    """A flat ``default_conf`` dict overridden by ``conf``; ValueError for unknown keys."""
    unknown = set(conf or {}) - set(default_conf)
    if unknown:
        raise ValueError(f"{owner}: unknown configuration keys {sorted(unknown)}; known: {sorted(default_conf)}")
    return {**default_conf, **(conf or {})}


def parse_overrides(items) -> dict:
    """Command-line ``KEY=VALUE`` items -> {key: value}, values parsed as Python literals (else kept as text)."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got '{item}'")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a plain string
    return out
