"""Relocalization map: posed keyframes with local features, 3D points, visual words and global descriptors.

``Map`` holds the keyframes and what they were built with; ``Map.save`` / ``Map.load`` go through
``mapfile`` (one versioned SQLite file, atomic saves, read-only loads). Retrieval indexes over the keyframes'
bag-of-words vectors (``vocabulary``) and global descriptors are built in memory on first use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from match_ros.core.relocalization.mapfile import DESC_DTYPES, FORMAT_VERSION, MapError, load_map, save_map
from match_ros.core.relocalization.retrieval import RetrievalIndex
from match_ros.core.relocalization.vocabulary import Vocabulary

__all__ = ["DESC_DTYPES", "FORMAT_VERSION", "Map", "MapError", "MapKeyframe", "matcher_identity"]


def matcher_identity(name: str, max_keypoints: int, descriptor_dim: int, descriptor_dtype) -> str:
    """Identity of the local features stored in a map: extractor name, keypoint budget, descriptor format."""
    if str(descriptor_dtype).startswith("torch."):  # torch.uint8 -> "uint8"
        descriptor_dtype = str(descriptor_dtype)[len("torch."):]
    dtype = np.dtype(descriptor_dtype).name
    return f"{name}:max_keypoints={int(max_keypoints)}:desc={int(descriptor_dim)}x{dtype}"


@dataclass
class MapKeyframe:
    """One keyframe of the map.

    T_world_cam: [4 x 4] float64 pose of the camera optical frame in the map frame
    K:           [3 x 3] float64 camera matrix; image_size: (width, height) [px]
    keypoints:   [N x 2] float32 pixels; descriptors: [N x D] float32 or uint8; scores: [N] float32
    points3d:    [N x 3] float32 map-frame points of the keypoints [m], NaN where unknown
    global_desc: [G] float32 unit-norm global descriptor
    words:       [N] int32 visual word of each keypoint in the map's vocabulary, or None before it exists
    """

    id: int
    stamp_ns: int
    T_world_cam: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    points3d: np.ndarray
    global_desc: np.ndarray
    frame_id: str = ""
    words: Optional[np.ndarray] = None

    def __post_init__(self):
        self.id, self.stamp_ns = int(self.id), int(self.stamp_ns)
        self.T_world_cam = np.asarray(self.T_world_cam, np.float64)
        self.K = np.asarray(self.K, np.float64)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.keypoints = np.ascontiguousarray(self.keypoints, np.float32)
        self.descriptors = np.ascontiguousarray(self.descriptors)
        self.scores = np.ascontiguousarray(self.scores, np.float32)
        self.points3d = np.ascontiguousarray(self.points3d, np.float32)
        self.global_desc = np.ascontiguousarray(self.global_desc, np.float32)
        n = len(self.keypoints)
        problems = []
        if self.T_world_cam.shape != (4, 4) or not np.all(np.isfinite(self.T_world_cam)):
            problems.append(f"T_world_cam must be a finite [4 x 4], got {self.T_world_cam.shape}")
        if self.K.shape != (3, 3):
            problems.append(f"K must be [3 x 3], got {self.K.shape}")
        if min(self.image_size) <= 0:
            problems.append(f"image_size must be positive, got {self.image_size}")
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 2:
            problems.append(f"keypoints must be [N x 2], got {self.keypoints.shape}")
        if self.descriptors.ndim != 2 or len(self.descriptors) != n:
            problems.append(f"descriptors must be [{n} x D], got {self.descriptors.shape}")
        if self.descriptors.dtype.name not in DESC_DTYPES:
            problems.append(f"descriptors must be one of {DESC_DTYPES}, got {self.descriptors.dtype}")
        if self.scores.shape != (n,):
            problems.append(f"scores must be [{n}], got {self.scores.shape}")
        if self.points3d.shape != (n, 3):
            problems.append(f"points3d must be [{n} x 3], got {self.points3d.shape}")
        if self.global_desc.ndim != 1:
            problems.append(f"global_desc must be [G], got {self.global_desc.shape}")
        if self.words is not None:
            self.words = np.ascontiguousarray(self.words, np.int32)
            if self.words.shape != (n,):
                problems.append(f"words must be [{n}], got {self.words.shape}")
        if problems:
            raise ValueError(f"keyframe {self.id}: " + "; ".join(problems))

    def features(self, device="cpu"):
        """The stored local features as a ``types.Features`` for Matcher.match (no backend extras)."""
        import torch  # storage itself needs no torch: a map tool or a saver process starts fast

        from match_ros.core.features.types import Features

        t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        return Features(t(self.keypoints), t(self.descriptors), t(self.scores), self.image_size)

    def equals(self, other: "MapKeyframe") -> bool:
        """Bit-exact equality of every field (NaNs in points3d compare equal; words only where both have them)."""
        arrays = ("T_world_cam", "K", "keypoints", "descriptors", "scores", "points3d", "global_desc")
        if self.words is not None and other.words is not None and not np.array_equal(self.words, other.words):
            return False
        return ((self.id, self.stamp_ns, self.image_size, self.frame_id)
                == (other.id, other.stamp_ns, other.image_size, other.frame_id)
                and all(getattr(self, a).dtype == getattr(other, a).dtype
                        and np.array_equal(getattr(self, a), getattr(other, a), equal_nan=True) for a in arrays))


@dataclass(eq=False)
class Map:
    """Keyframes by id (a loaded map lists them in id order) plus what they were built with.

    matcher_identity / global_desc_identity: see ``matcher_identity`` and ``GlobalDescriptor.identity``;
    loading checks them against what the caller will match with.
    """

    matcher_name: str
    matcher_identity: str
    global_desc_identity: str
    matcher_conf: dict = field(default_factory=dict)
    map_frame_id: str = "map"
    created_ns: int = field(default_factory=time.time_ns)
    metadata: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    keyframes: dict = field(default_factory=dict)
    index_conf: Optional[dict] = None
    vocabulary: Optional[Vocabulary] = None
    _index: Optional[RetrievalIndex] = field(default=None, init=False, repr=False)
    _bow_index: Optional[RetrievalIndex] = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.keyframes)

    def __iter__(self) -> Iterator[MapKeyframe]:
        return iter(self.keyframes.values())

    def __getitem__(self, id_: int) -> MapKeyframe:
        return self.keyframes[int(id_)]

    @property
    def global_desc_dim(self) -> Optional[int]:
        return len(next(iter(self)).global_desc) if len(self) else None

    def add_keyframe(self, kf: MapKeyframe) -> None:
        """Add a keyframe; ValueError on a repeated id or a descriptor format unlike the others."""
        if kf.id in self.keyframes:
            raise ValueError(f"keyframe id {kf.id} already in the map")
        if len(self):
            first = next(iter(self))
            fmt = (first.descriptors.shape[1], first.descriptors.dtype)
            if (kf.descriptors.shape[1], kf.descriptors.dtype) != fmt:
                raise ValueError(f"keyframe {kf.id}: descriptors {kf.descriptors.shape[1]}x{kf.descriptors.dtype} "
                                 f"unlike the map's {first.descriptors.shape[1]}x{first.descriptors.dtype}")
            if kf.global_desc.shape != first.global_desc.shape:
                raise ValueError(f"keyframe {kf.id}: global descriptor {kf.global_desc.shape} unlike the map's "
                                 f"{first.global_desc.shape}")
        if self.vocabulary is not None and kf.words is None:
            kf.words = self.vocabulary.words(kf.descriptors).astype(np.int32)
        self.keyframes[kf.id] = kf
        if self._index is not None:
            self._index.add([kf.id], kf.global_desc[None])
        if self._bow_index is not None:
            self._bow_index.add([kf.id], self.vocabulary.histogram(kf.words)[None])

    def remove_keyframe(self, id_: int) -> None:
        del self.keyframes[int(id_)]
        for index in (self._index, self._bow_index):
            if index is not None:
                index.remove([int(id_)])

    # ------------------------------------------------------------------ visual words
    def build_vocabulary(self, conf: dict | None = None) -> Vocabulary:
        """Learn the map's visual vocabulary from its keyframes' descriptors and give every keyframe its words."""
        if not len(self):
            raise ValueError("the map has no keyframes")
        self.vocabulary = Vocabulary.train([kf.descriptors for kf in self], conf)
        for kf in self:
            kf.words = self.vocabulary.words(kf.descriptors).astype(np.int32)
        self._bow_index = None
        return self.vocabulary

    @property
    def bow_index(self) -> RetrievalIndex:
        """Retrieval index over the keyframes' bag-of-words vectors (vocabulary learnt first when missing)."""
        if self._bow_index is None:
            if self.vocabulary is None or any(kf.words is None for kf in self):
                self.build_vocabulary()
            index = RetrievalIndex(self.vocabulary.size, self.index_conf)
            index.add([kf.id for kf in self], np.stack([self.vocabulary.histogram(kf.words) for kf in self]))
            self._bow_index = index
        return self._bow_index

    def retrieve_bow(self, histogram: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """BoW vector [W] of a query (``vocabulary.histogram``) -> (keyframe ids [k], cosine scores [k])."""
        return self.bow_index.search(histogram, k)

    @property
    def index(self) -> RetrievalIndex:
        """Retrieval index over the keyframes' global descriptors (built on first use)."""
        if self._index is None:
            if not len(self):
                raise ValueError("the map has no keyframes")
            index = RetrievalIndex(self.global_desc_dim, self.index_conf)
            index.add([kf.id for kf in self], np.stack([kf.global_desc for kf in self]))
            self._index = index
        return self._index

    def retrieve(self, global_desc: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """global_desc [G] -> (keyframe ids [k], cosine scores [k]), best first."""
        return self.index.search(global_desc, k)

    def equals(self, other: "Map") -> bool:
        """Every field and every keyframe equal (bit-exact arrays)."""
        head = ("matcher_name", "matcher_identity", "global_desc_identity", "matcher_conf", "map_frame_id",
                "created_ns", "metadata", "format_version")
        # the vocabulary and the words are derived from the descriptors: compared only where both maps have them
        vocab = (self.vocabulary is None or other.vocabulary is None
                 or self.vocabulary.identity == other.vocabulary.identity)
        return (vocab and all(getattr(self, a) == getattr(other, a) for a in head)
                and sorted(self.keyframes) == sorted(other.keyframes)
                and all(self[i].equals(other[i]) for i in self.keyframes))

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path, with_vocabulary: bool = True) -> None:
        """Write the map to ``path`` atomically (``mapfile.save_map``), with its vocabulary (learnt first if missing)
        or, ``with_vocabulary=False``, without a new one (quick: a localizer learns it when it loads the map)."""
        if with_vocabulary and len(self) and (self.vocabulary is None or any(kf.words is None for kf in self)):
            self.build_vocabulary()
        save_map(self, path)

    @classmethod
    def load(cls, path: str | Path, expected_matcher_identity: Optional[str] = None,
             expected_global_desc_identity: Optional[str] = None, index_conf: Optional[dict] = None) -> "Map":
        """Read a map saved by ``save``; MapError (a ValueError) names what is wrong with the file."""
        return load_map(path, cls, MapKeyframe, expected_matcher_identity, expected_global_desc_identity, index_conf)
