"""Data contracts shared by extractors, matchers, geometry and nodes.

Images entering the core are numpy uint8 arrays, ``[H x W]`` (mono) or
``[H x W x 3]`` (RGB). Pixel coordinates are OpenCV's: x = column, y = row,
(0, 0) the centre of the top-left pixel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass
class Features:
    """Local features of one image.

    keypoints:   [N x 2] float32 (x, y) in pixels of the original image
    descriptors: [N x D] (float32 for learned/SIFT, uint8 packed bits for binary descriptors)
    scores:      [N] float32 detection scores (higher is better)
    image_size:  (width, height) of the image the features come from
    extra:       backend-specific tensors (e.g. SIFT scales/orientations)
    """

    keypoints: torch.Tensor
    descriptors: torch.Tensor
    scores: torch.Tensor
    image_size: tuple[int, int]
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.keypoints.shape[0]
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 2:
            raise ValueError(f"keypoints must be [N x 2], got {tuple(self.keypoints.shape)}")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != n:
            raise ValueError(f"descriptors must be [N x D] with N={n}, got {tuple(self.descriptors.shape)}")
        if self.scores.shape != (n,):
            raise ValueError(f"scores must be [N] with N={n}, got {tuple(self.scores.shape)}")

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def device(self) -> torch.device:
        return self.keypoints.device


@dataclass
class Matches:
    """Matches between a reference (index 0) and a query (index 1) feature set.

    indices:         [M x 2] int64, (index into reference keypoints, index into query keypoints)
    scores:          [M] float32 confidence in [0, 1]
    distinctiveness: [M] float32 in [0, 1], or None when the matcher has no such score
    points_query:    [M x 2] float32 sub-pixel query positions, or None. Set by matchers that place a match in
                     the query between its keypoints (dense matching, matching on a pre-warped query); indices[:, 1]
                     is then the query keypoint nearest to that position, and ``points()`` returns these positions.
    """

    indices: np.ndarray
    scores: np.ndarray
    distinctiveness: Optional[np.ndarray] = None
    points_query: Optional[np.ndarray] = None

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.scores.shape[0] != self.indices.shape[0]:
            raise ValueError(f"{self.indices.shape[0]} index pairs but {self.scores.shape[0]} scores")
        if self.distinctiveness is not None:
            self.distinctiveness = np.asarray(self.distinctiveness, dtype=np.float32).reshape(-1)
            if self.distinctiveness.shape[0] != self.indices.shape[0]:
                raise ValueError("distinctiveness must have one value per match")
        if self.points_query is not None:
            self.points_query = np.asarray(self.points_query, dtype=np.float32).reshape(-1, 2)
            if self.points_query.shape[0] != self.indices.shape[0]:
                raise ValueError("points_query must have one position per match")

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @staticmethod
    def empty() -> "Matches":
        return Matches(np.zeros((0, 2), np.int64), np.zeros((0,), np.float32))

    def points(self, ref: Features, query: Features) -> tuple[np.ndarray, np.ndarray]:
        """Matched pixel coordinates: ([M x 2] in reference, [M x 2] in query), float64."""
        kr = ref.keypoints.detach().cpu().numpy().astype(np.float64)
        return kr[self.indices[:, 0]], self.query_points(query)

    def query_points(self, query: Features) -> np.ndarray:
        """[M x 2] float64 query pixel of every match: ``points_query`` when the matcher set it, else its keypoint."""
        if self.points_query is not None:
            return self.points_query.astype(np.float64)
        return query.keypoints.detach().cpu().numpy().astype(np.float64)[self.indices[:, 1]]


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an image for the core; returns it unchanged. Raises ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be [H x W] or [H x W x 3], got {image.shape}")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise ValueError(f"image too small for matching: {image.shape[1]}x{image.shape[0]}")
    return image


def to_gray(image: np.ndarray) -> np.ndarray:
    """[H x W x 3] RGB or [H x W] -> [H x W] uint8."""
    import cv2

    image = check_image(image)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
