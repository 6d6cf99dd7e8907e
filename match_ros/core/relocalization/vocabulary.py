"""Visual vocabulary over a map's own local descriptors: bag-of-words retrieval (Sivic & Zisserman 2003,
as DBoW / hloc's retrieval by local features) that holds where a whole-image CNN descriptor does not.

A vocabulary of ``k`` words is learnt by k-means (FAISS) from the descriptors of the map's keyframes when the
map is built, so it fits the place and the extractor. An image is then the tf-idf histogram of its words:
term frequency square-rooted (burstiness: a repeated texture must not drown the rest), inverse document
frequency from the keyframes, L2-normalised, so that the inner product is the cosine similarity the FAISS
index wants. Binary descriptors (uint8 packed bits) are clustered as {0, 1} float vectors, whose squared L2
distance is the Hamming distance.

Measured against the MobileNetV2-GeM global descriptor on the changed-day scenes (hit rate of a keyframe
that sees the query's content, docs/relocalization.md): see ``match_ros_eval_reloc --retrieval``.
"""
from __future__ import annotations

import zlib

import faiss
import numpy as np

from match_ros.core.config import merge_conf

default_vocabulary_conf = {
    "num_words": 1024,  # words of a vocabulary (fewer when the map has few descriptors: >= 40 per word)
    "max_train_descriptors": 200000,  # k-means sample size (drawn uniformly from all keyframes)
    "kmeans_iterations": 20,  # Lloyd iterations
    "seed": 1234,  # k-means initialisation and sample: the same map always gets the same vocabulary
}


def descriptor_vectors(descriptors: np.ndarray) -> np.ndarray:
    """[N x D] float descriptors or [N x B] uint8 packed bits -> [N x D'] float32 vectors for L2 k-means."""
    d = np.asarray(descriptors)
    if d.dtype == np.uint8:
        return np.unpackbits(d, axis=1).astype(np.float32)
    if not np.issubdtype(d.dtype, np.floating):
        raise ValueError(f"descriptors must be float or uint8 packed bits, got {d.dtype}")
    return np.ascontiguousarray(d, np.float32)


class Vocabulary:
    """``k`` visual words (centroids [k x D'] float32) with their inverse document frequencies (idf [k]).

    words(descriptors [N x D]) -> [N] int64 word ids; histogram(words) -> [k] float32 unit-norm tf-idf.
    """

    def __init__(self, centroids: np.ndarray, idf: np.ndarray, binary: bool):
        centroids = np.ascontiguousarray(centroids, np.float32)
        idf = np.ascontiguousarray(idf, np.float32).reshape(-1)
        if centroids.ndim != 2 or len(centroids) != len(idf) or len(idf) < 2:
            raise ValueError(f"vocabulary needs [k x D] centroids and [k] idf with k >= 2, got "
                             f"{centroids.shape} and {idf.shape}")
        if not (np.all(np.isfinite(centroids)) and np.all(np.isfinite(idf)) and np.all(idf >= 0)):
            raise ValueError("vocabulary centroids and idf must be finite, idf >= 0")
        self.centroids, self.idf, self.binary = centroids, idf, bool(binary)
        self._index = faiss.IndexFlatL2(centroids.shape[1])
        self._index.add(centroids)

    @property
    def size(self) -> int:
        return len(self.idf)

    @property
    def identity(self) -> str:
        """Names the vocabulary: maps store it, and a BoW vector is only comparable within one vocabulary."""
        crc = zlib.crc32(self.centroids.tobytes(), zlib.crc32(self.idf.tobytes()))
        return f"bow:k={self.size}:dim={self.centroids.shape[1]}:{'binary' if self.binary else 'float'}:{crc:08x}"

    @classmethod
    def train(cls, keyframe_descriptors: list, conf: dict | None = None) -> "Vocabulary":
        """Learn words from a list of [N_i x D] descriptor arrays, one per keyframe (idf counts keyframes)."""
        c = merge_conf(default_vocabulary_conf, conf, "vocabulary")
        arrays = [np.asarray(d) for d in keyframe_descriptors if len(d)]
        if not arrays:
            raise ValueError("no descriptors to learn a vocabulary from")
        binary = arrays[0].dtype == np.uint8
        vectors = [descriptor_vectors(d) for d in arrays]
        all_vec = np.concatenate(vectors)
        rng = np.random.default_rng(int(c["seed"]))
        if len(all_vec) > int(c["max_train_descriptors"]):
            all_vec = all_vec[rng.choice(len(all_vec), int(c["max_train_descriptors"]), replace=False)]
        k = int(min(int(c["num_words"]), max(2, len(all_vec) // 40)))
        km = faiss.Kmeans(all_vec.shape[1], k, niter=int(c["kmeans_iterations"]), seed=int(c["seed"]),
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30, verbose=False)
        km.train(np.ascontiguousarray(all_vec))
        vocab = cls(km.centroids, np.ones(k, np.float32), binary)
        df = np.zeros(k)
        for v in vectors:
            df[np.unique(vocab._assign(v))] += 1
        vocab.idf = np.log((len(vectors) + 1.0) / (df + 1.0)).astype(np.float32)
        return vocab

    def _assign(self, vectors: np.ndarray) -> np.ndarray:
        if not len(vectors):
            return np.zeros(0, np.int64)
        _, idx = self._index.search(np.ascontiguousarray(vectors, np.float32), 1)
        return idx[:, 0].astype(np.int64)

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """[N x D] descriptors of this vocabulary's kind -> [N] int64 nearest word."""
        vec = descriptor_vectors(descriptors)
        if vec.ndim != 2 or (len(vec) and vec.shape[1] != self.centroids.shape[1]):
            raise ValueError(f"descriptors of dimension {vec.shape[-1]} for a vocabulary of dimension "
                             f"{self.centroids.shape[1]}")
        return self._assign(vec)

    def histogram(self, words: np.ndarray) -> np.ndarray:
        """[N] word ids -> [k] float32 unit-norm tf-idf vector (sqrt term frequency); zeros -> uniform."""
        tf = np.bincount(np.asarray(words, np.int64), minlength=self.size).astype(np.float32)
        v = np.sqrt(tf) * self.idf
        n = float(np.linalg.norm(v))
        if n < 1e-12:  # no words (or only words every keyframe has): a valid unit vector matching nothing well
            return np.full(self.size, 1.0 / np.sqrt(self.size), np.float32)
        return (v / n).astype(np.float32)

    def to_arrays(self) -> dict:
        return {"centroids": self.centroids, "idf": self.idf, "binary": np.array([int(self.binary)], np.uint8)}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "Vocabulary":
        return cls(arrays["centroids"], arrays["idf"], bool(int(np.asarray(arrays["binary"]).reshape(-1)[0])))
