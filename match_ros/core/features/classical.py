"""Classical OpenCV features, matched with mutual nearest neighbours in torch (``nn.py``).

- ``sift``:       cv2.SIFT, optionally RootSIFT descriptors, L2 mutual NN + Lowe ratio.
- ``orb_teblid``: cv2.ORB keypoints + TEBLID binary descriptors (opencv-contrib ``xfeatures2d``),
                  Hamming mutual NN.

Keypoints, scores and descriptors are stored as torch tensors on ``self.device``; extraction itself runs on
the CPU in OpenCV.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from match_ros.core.features.matcher import Matcher
from match_ros.core.features.types import Features, Matches, to_gray
from match_ros.core.features.nn import match_features


def _contrast(conf: dict) -> tuple:
    """(OpenCV CLAHE with 8 x 8 tiles, or None when ``clahe_clip`` is 0; the keypoint count under which a frame is
    equalised: ``clahe_min_keypoints``, at most half of ``max_keypoints``, so that a small budget does not
    equalise every frame)."""
    clip = float(conf["clahe_clip"])
    if clip < 0:
        raise ValueError(f"clahe_clip must be >= 0, got {clip}")
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8)) if clip > 0 else None
    return clahe, min(int(conf["clahe_min_keypoints"]), int(conf["max_keypoints"]) // 2)


def _detect(image: np.ndarray, clahe, min_keypoints: int, detect) -> tuple:
    """(grey image, keypoints, descriptors) of ``detect(grey)`` on the image, or on its local-contrast equalised
    grey (``clahe``; dim, blurred frames: FAST and the DoG find corners again) when ``clahe`` is set and the plain
    image gave fewer than ``min_keypoints`` (0: equalise every image)."""
    gray = to_gray(image)
    if clahe is None:
        return (gray,) + tuple(detect(gray))
    if min_keypoints > 0:
        kps, desc = detect(gray)
        if len(kps) >= min_keypoints:
            return gray, kps, desc
    gray = clahe.apply(gray)
    return (gray,) + tuple(detect(gray))


def _features_from_cv(keypoints, descriptors: np.ndarray | None, desc_dim: int, desc_dtype: torch.dtype,
                      image: np.ndarray, device: torch.device, max_keypoints: int) -> Features:
    """OpenCV keypoints + [N x D] descriptors -> Features (best ``max_keypoints`` by response)."""
    h, w = image.shape[:2]
    if descriptors is None or len(keypoints) == 0:
        empty = torch.zeros((0, 2), dtype=torch.float32, device=device)
        return Features(empty, torch.zeros((0, desc_dim), dtype=desc_dtype, device=device),
                        torch.zeros(0, dtype=torch.float32, device=device), (w, h),
                        {"scales": torch.zeros(0, device=device), "oris": torch.zeros(0, device=device)})
    xy = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    response = np.array([k.response for k in keypoints], dtype=np.float32)
    size = np.array([k.size for k in keypoints], dtype=np.float32)
    angle = np.array([k.angle for k in keypoints], dtype=np.float32)
    # OpenCV may keep ties beyond nfeatures: keep the strongest max_keypoints (stable order)
    order = np.argsort(-response, kind="stable")[:max_keypoints]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return Features(t(xy[order]), t(descriptors[order]), t(response[order]), (w, h),
                    {"scales": t(size[order]), "oris": t(np.deg2rad(angle[order]).astype(np.float32))})


class SiftMatcher(Matcher):
    """SIFT (cv2.SIFT_create) + mutual NN on L2 distance of unit-norm (Root)SIFT descriptors.

    Features.descriptors: [N x 128] float32, unit L2 norm. Features.extra: scales [N] (keypoint diameter, px),
    oris [N] (radians).
    """

    name = "sift"
    default_conf = {
        "max_keypoints": 2048,  # keep at most this many keypoints (strongest response)
        "n_octave_layers": 3,  # layers per octave (Lowe: 3)
        "contrast_threshold": 0.04,  # lower finds more (weaker) keypoints
        "edge_threshold": 10.0,  # higher keeps more edge-like keypoints
        "sigma": 1.6,  # Gaussian blur of octave 0
        "precise_upscale": True,  # OpenCV enable_precise_upscale: unbiased 2x upscale of the first octave
        "root_sift": True,  # RootSIFT: L1-normalise, sqrt (Arandjelovic & Zisserman 2012)
        "ratio_test": 0.85,  # Lowe ratio threshold on both sides, None disables
        "min_score": 0.0,  # minimum similarity score (cosine of the descriptors) of a match
        # off for SIFT: the equalised frames raised its global recall by 8-9 points on tune seeds and added a wrong
        # pose on tune seed 124 (a photo the map holds twice); orb_teblid's: none (docs/relocalization.md)
        "clahe_clip": 0.0,  # CLAHE clip limit, 8 x 8 tiles (0: off)
        "clahe_min_keypoints": 200,  # ... when the plain image gives fewer (at most max_keypoints / 2; 0: always)
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        c = self.conf
        if int(c["max_keypoints"]) <= 0:
            raise ValueError(f"sift: max_keypoints must be > 0, got {c['max_keypoints']}")
        self._sift = cv2.SIFT_create(int(c["max_keypoints"]), int(c["n_octave_layers"]),
                                     float(c["contrast_threshold"]), float(c["edge_threshold"]), float(c["sigma"]),
                                     bool(c["precise_upscale"]))
        self._clahe, self._clahe_below = _contrast(c)

    def extract(self, image: np.ndarray) -> Features:
        """image: [H x W] or [H x W x 3] uint8 RGB -> Features on self.device."""
        gray, kps, desc = _detect(image, self._clahe, self._clahe_below,
                                  lambda g: self._sift.detectAndCompute(g, None))
        if desc is not None:
            desc = desc.astype(np.float32)
            if self.conf["root_sift"]:
                desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-12))
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return _features_from_cv(kps, desc, 128, torch.float32, gray, self.device, int(self.conf["max_keypoints"]))

    def match(self, ref: Features, query: Features) -> Matches:
        """Mutual NN (L2) with ratio test; scores = cosine similarity, distinctiveness = 1 - ratio."""
        return match_features(ref, query, "l2", self.conf["ratio_test"], float(self.conf["min_score"]))


class OrbTeblidMatcher(Matcher):
    """ORB keypoints (cv2.ORB_create) + TEBLID binary descriptors + mutual NN on Hamming distance.

    Features.descriptors: [N x 32] (256 bits) or [N x 64] (512 bits) uint8 packed bits.
    Features.extra: scales [N] (patch diameter, px), oris [N] (radians).
    """

    name = "orb_teblid"
    default_conf = {
        "max_keypoints": 1024,  # ORB nfeatures: at most this many keypoints
        "scale_factor": 1.2,  # ORB pyramid decimation ratio
        "n_levels": 8,  # ORB pyramid levels
        "fast_threshold": 20,  # FAST threshold; lower finds keypoints in low-contrast regions
        "edge_threshold": 31,  # border without keypoints, px (~ patch size)
        "teblid_scale": 1.0,  # TEBLID sampling window scale: 1.0 for ORB keypoints (OpenCV docs)
        "teblid_bits": 256,  # descriptor length: 256 or 512
        "ratio_test": None,  # Lowe ratio threshold on both sides, None disables
        "min_score": 0.0,  # minimum similarity 1 - 2 hamming / n_bits of a match
        # a dim or blurred frame (a changed day) is extracted again after contrast-limited adaptive histogram
        # equalisation (docs/relocalization.md: global recall on tune seeds +11 points, none wrong)
        "clahe_clip": 2.0,  # CLAHE clip limit, 8 x 8 tiles (0: off)
        "clahe_min_keypoints": 200,  # ... when the plain image gives fewer (at most max_keypoints / 2; 0: always)
    }

    def __init__(self, conf: dict | None = None, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        c = self.conf
        if int(c["max_keypoints"]) <= 0:
            raise ValueError(f"orb_teblid: max_keypoints must be > 0, got {c['max_keypoints']}")
        bits = {256: cv2.xfeatures2d.TEBLID_SIZE_256_BITS, 512: cv2.xfeatures2d.TEBLID_SIZE_512_BITS}
        if int(c["teblid_bits"]) not in bits:
            raise ValueError(f"orb_teblid: teblid_bits must be 256 or 512, got {c['teblid_bits']}")
        self._orb = cv2.ORB_create(nfeatures=int(c["max_keypoints"]), scaleFactor=float(c["scale_factor"]),
                                   nlevels=int(c["n_levels"]), edgeThreshold=int(c["edge_threshold"]),
                                   fastThreshold=int(c["fast_threshold"]))
        self._teblid = cv2.xfeatures2d.TEBLID_create(float(c["teblid_scale"]), bits[int(c["teblid_bits"])])
        self._desc_bytes = int(c["teblid_bits"]) // 8
        self._clahe, self._clahe_below = _contrast(c)

    def extract(self, image: np.ndarray) -> Features:
        """image: [H x W] or [H x W x 3] uint8 RGB -> Features on self.device."""
        gray, kps, desc = _detect(image, self._clahe, self._clahe_below, self._orb_teblid)
        return _features_from_cv(kps, desc, self._desc_bytes, torch.uint8, gray, self.device,
                                 int(self.conf["max_keypoints"]))

    def _orb_teblid(self, gray: np.ndarray) -> tuple:
        kps = self._orb.detect(gray, None)
        # compute() may drop keypoints (image border): use the keypoints it returns
        return self._teblid.compute(gray, kps) if len(kps) else ((), None)

    def match(self, ref: Features, query: Features) -> Matches:
        """Mutual NN (Hamming) with optional ratio test; scores = 1 - 2 hamming / n_bits clamped at 0."""
        return match_features(ref, query, "hamming", self.conf["ratio_test"], float(self.conf["min_score"]))
