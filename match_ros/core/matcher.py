"""The one extractor+matcher interface every backend implements.

A backend extracts features once per image (keyframes are extracted once and
cached by the caller) and matches a reference feature set against a query one.
Backends are registered by name and built with ``build_matcher(name, conf)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch

from .types import Features, Matches

_REGISTRY: dict[str, Callable[..., "Matcher"]] = {}


def register(name: str):
    """Class decorator: make a Matcher buildable by ``build_matcher(name, ...)``."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"matcher '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


class Matcher(ABC):
    """Extract local features from images and match two feature sets.

    Subclasses declare ``default_conf`` (flat dict, one comment per entry) and
    receive ``conf`` merged over it.
    """

    name: str = "?"
    default_conf: dict = {}

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        unknown = set(conf or {}) - set(self.default_conf)
        if unknown:
            raise ValueError(f"{self.name}: unknown configuration keys {sorted(unknown)}; "
                             f"known: {sorted(self.default_conf)}")
        self.conf = {**self.default_conf, **(conf or {})}
        self.device = torch.device(device)

    @abstractmethod
    def extract(self, image: np.ndarray) -> Features:
        """image: [H x W] or [H x W x 3] uint8 RGB -> Features on self.device."""

    @abstractmethod
    def match(self, ref: Features, query: Features) -> Matches:
        """Match reference features to query features."""


def available_matchers() -> list[str]:
    from . import backends  # noqa: F401  (registers the built-in backends)

    return sorted(_REGISTRY)


def build_matcher(name: str, conf: dict | None = None, device: torch.device | str = "cpu") -> Matcher:
    """Build a registered backend; unknown names raise ValueError listing the choices."""
    names = available_matchers()
    if name not in _REGISTRY:
        raise ValueError(f"unknown matcher '{name}', available: {names}")
    return _REGISTRY[name](conf, device=device)
