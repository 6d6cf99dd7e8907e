"""The one extractor+matcher interface every backend implements.

A backend extracts features once per image (keyframes are extracted once and
cached by the caller) and matches a reference feature set against a query one.
``BACKENDS`` names every backend and where it lives; ``build_matcher(name, conf)``
imports only the one asked for (third-party model code loads on demand).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import numpy as np
import torch

from match_ros.core.config import merge_conf
from match_ros.core.features import DEFAULT_MATCHER, DEFAULT_MAX_KEYPOINTS  # noqa: F401 (re-exported)
from match_ros.core.features.types import Features, Matches

# name -> "module:Class"; the class's ``name`` attribute is the same name
BACKENDS = {
    "sift": "match_ros.core.features.classical:SiftMatcher",
    "orb_teblid": "match_ros.core.features.classical:OrbTeblidMatcher",
    "xfeat_mnn": "match_ros.core.features.xfeat:XFeatMNN",
    "xfeat_lighterglue": "match_ros.core.features.xfeat:XFeatLighterGlue",
    "coam_xfeat": "match_ros.core.features.learned:CoAMXFeat",
    "omniglue_xfeat": "match_ros.core.features.learned:OmniGlueXFeat",
    "a2net_align": "match_ros.core.features.align:A2NetAlignMatcher",
    "nemf_dense": "match_ros.core.features.dense:NeMFDense",
}


class Matcher(ABC):
    """Extract local features from images and match two feature sets.

    Subclasses declare ``default_conf`` (flat dict, one comment per entry) and
    receive ``conf`` merged over it.
    """

    name: str = "?"
    default_conf: dict = {}
    # False for backends that match on the images themselves (a pre-warp, a dense field): their matches come from
    # raw pixels, and undistorted keypoints would not be where the image shows them (``check_distortion``)
    keypoint_geometry: bool = True

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        self.conf = merge_conf(self.default_conf, conf, self.name)
        self.device = torch.device(device)

    @abstractmethod
    def extract(self, image: np.ndarray) -> Features:
        """image: [H x W] or [H x W x 3] uint8 RGB -> Features on self.device."""

    @abstractmethod
    def match(self, ref: Features, query: Features) -> Matches:
        """Match reference features to query features."""

    def match_fast(self, ref: Features, query: Features) -> Matches:
        """A cheaper matching where a robust estimator checks every match anyway (visual odometry's window of
        earlier keyframes): ``match`` unless the backend has a cheaper one (a learned matcher's descriptors by
        mutual nearest neighbours)."""
        return self.match(ref, query)

    def check_distortion(self, distortion) -> None:
        """ValueError when this backend cannot work with a distorted image (``keypoint_geometry`` False) and
        ``distortion`` (a ``camera.Distortion`` or None) is not the identity."""
        if not self.keypoint_geometry and distortion is not None and not distortion.is_identity:
            raise ValueError(f"{self.name} matches on the images themselves, so their {distortion.model} distortion "
                             "cannot be undone on its keypoints: feed rectified images (image_proc's image_rect, "
                             "with its camera_info), or use a keypoint backend")

    def undistort(self, feats: Features, K, distortion) -> Features:
        """``feats`` (extracted from a distorted image with calibration K) with undistorted keypoints
        (``camera.undistort_features``); the same object without distortion. ValueError from ``check_distortion``.
        Backends with per-image state computed from keypoint positions recompute it here."""
        from match_ros.core.geometry.camera import undistort_features

        self.check_distortion(distortion)
        return undistort_features(feats, K, distortion)


def check_distortion(matcher, distortion) -> None:
    """``matcher.check_distortion(distortion)`` when there is a distortion (None or zero coefficients: nothing is
    asked of the matcher, so objects with only extract / match serve as before)."""
    if distortion is not None and not distortion.is_identity and hasattr(matcher, "check_distortion"):
        matcher.check_distortion(distortion)


def undistort(matcher, feats: Features, K, distortion) -> Features:
    """``matcher.undistort(feats, K, distortion)`` (``Matcher.undistort``) when there is a distortion, else
    ``feats`` itself."""
    if distortion is None or distortion.is_identity:
        return feats
    if hasattr(matcher, "undistort"):
        return matcher.undistort(feats, K, distortion)
    from match_ros.core.geometry.camera import undistort_features

    return undistort_features(feats, K, distortion)


def available_matchers() -> list[str]:
    return sorted(BACKENDS)


def matcher_class(name: str) -> type["Matcher"]:
    """The backend class of ``name``; ValueError listing the choices for an unknown name."""
    if name not in BACKENDS:
        raise ValueError(f"unknown matcher '{name}', available: {available_matchers()}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def shared_conf(name: str, **values) -> dict:
    """The entries of ``values`` that backend ``name`` has (settings every node or tool offers for all backends,
    such as max_keypoints or cpu_bf16, which a dense backend without keypoints does not take)."""
    known = matcher_class(name).default_conf
    return {k: v for k, v in values.items() if k in known}


def build_matcher(name: str, conf: dict | None = None, device: torch.device | str = "cpu") -> Matcher:
    """Build a backend by name; unknown names raise ValueError listing the choices."""
    return matcher_class(name)(conf, device=device)
