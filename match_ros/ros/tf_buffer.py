"""TF buffer and listener: look up T_target_source at a stamp through the frame tree.

Convention (as everywhere in match_ros): ``T_a_b`` is a 4x4 float64 transform
mapping points in frame b into frame a. A TF message with header.frame_id=p and
child_frame_id=c carries T_p_c. Stamps are integer nanoseconds; 0 means "latest
common time" of the edges involved, as in tf2.

TfBuffer is pure python + numpy (no rclpy) and unit-testable. TfListener takes a
node, fills a buffer from /tf and /tf_static and uses tf2_ros underneath when it
is importable (a real ROS 2 distro). Both raise TfLookupError for transforms that
are not (yet) available.
"""
from __future__ import annotations

import bisect
import threading
import time

import numpy as np

from match_ros.core.geometry.transforms import invert, matrix_from_quaternion, quaternion_from_matrix


class TfLookupError(LookupError):
    """A transform is not available: unknown frame, frames not connected, or extrapolation."""


def _clean(frame: str) -> str:
    if not isinstance(frame, str) or not frame.strip("/"):
        raise ValueError(f"invalid frame id {frame!r}")
    return frame.lstrip("/")  # tf2 ignores a leading slash


def _sec(ns: int) -> str:
    return f"{ns / 1e9:.9f} s"


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (x, y, z, w), shortest arc, a in [0, 1]."""
    if float(np.dot(q0, q1)) < 0.0:
        q1 = -q1
    th = 2.0 * np.arctan2(np.linalg.norm(q1 - q0), np.linalg.norm(q1 + q0))  # angle between q0, q1; stable
    if th < 1e-9:  # (nearly) equal: lerp is exact to double precision
        q = q0 + a * (q1 - q0)
    else:
        q = (np.sin((1.0 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)
    return q / np.linalg.norm(q)


STALE_IN_A_ROW = 3  # samples of an edge older than its cache window that mean time jumped back


class _Edge:
    """Time-ordered samples of T_parent_child for one child frame."""

    __slots__ = ("parent", "static", "stamps", "quats", "trans", "stale")

    def __init__(self, parent: str, static: bool):
        self.parent, self.static = parent, static
        self.stamps: list[int] = []
        self.quats: list[np.ndarray] = []
        self.trans: list[np.ndarray] = []
        self.stale: list = []  # samples in a row older than the cache keeps

    def insert(self, stamp_ns: int, q: np.ndarray, t: np.ndarray, cache_ns: int) -> bool:
        """Add a sample; True when it showed that time jumped back (the history before it was discarded)."""
        if self.static:
            self.stamps, self.quats, self.trans = [0], [q], [t]
            return False
        if self.stamps and stamp_ns < self.stamps[-1] - cache_ns:
            # older than the cache keeps: one such sample is dropped, as tf2 does; STALE_IN_A_ROW of them mean that
            # time jumped back (a bag played again, /clock reset), where tf2_ros clears its buffer: so do we
            self.stale.append((stamp_ns, q, t))
            if len(self.stale) < STALE_IN_A_ROW:
                return False
            samples, self.stale = sorted(self.stale, key=lambda x: x[0]), []
            self.stamps, self.quats, self.trans = ([x[i] for x in samples] for i in range(3))
            return True
        self.stale = []
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            self.quats[i], self.trans[i] = q, t  # same stamp: the newer message wins
        else:
            self.stamps.insert(i, stamp_ns)
            self.quats.insert(i, q)
            self.trans.insert(i, t)
        k = bisect.bisect_left(self.stamps, self.stamps[-1] - cache_ns)
        if k:
            del self.stamps[:k], self.quats[:k], self.trans[:k]

    def at(self, stamp_ns: int | None, tol_ns: int, child: str, what: str) -> np.ndarray:
        """T_parent_child at stamp_ns (None: any time, only for static edges)."""
        if self.static or stamp_ns is None:
            i0 = i1 = len(self.stamps) - 1
            a = 0.0
        else:
            first, last = self.stamps[0], self.stamps[-1]
            edge = f"'{self.parent}' -> '{child}'"
            if stamp_ns < first - tol_ns:
                raise TfLookupError(
                    f"extrapolation into the past: requested time {_sec(stamp_ns)} is {_sec(first - stamp_ns)} "
                    f"before the earliest data for {edge} ({_sec(first)}) {what}")
            if stamp_ns > last + tol_ns:
                raise TfLookupError(
                    f"extrapolation into the future: requested time {_sec(stamp_ns)} is {_sec(stamp_ns - last)} "
                    f"after the latest data for {edge} ({_sec(last)}) {what}")
            stamp_ns = min(max(stamp_ns, first), last)  # within tolerance: hold the end sample
            i1 = bisect.bisect_left(self.stamps, stamp_ns)
            if self.stamps[i1] == stamp_ns:
                i0, a = i1, 0.0
            else:
                i0 = i1 - 1
                a = (stamp_ns - self.stamps[i0]) / (self.stamps[i1] - self.stamps[i0])
        T = np.eye(4)
        T[:3, :3] = matrix_from_quaternion(_slerp(self.quats[i0], self.quats[i1], a) if i0 != i1
                                           else self.quats[i0])
        T[:3, 3] = (1.0 - a) * self.trans[i0] + a * self.trans[i1]
        return T


def wait_for(lookup, timeout_s: float):
    """lookup() until it stops raising TfLookupError, for up to timeout_s [s] of wall time (small sleeps, no
    spinning: the subscriptions that feed the buffer run in other threads); then its TfLookupError."""
    deadline = time.monotonic() + max(0.0, float(timeout_s))
    while True:
        try:
            return lookup()
        except TfLookupError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(0.01, left))


class TfBuffer:
    """Transforms per (parent, child) edge in time-ordered buffers, looked up through the tree.

    cache_time_s: dynamic samples older than (newest sample of that edge - cache_time_s)
                  are dropped; static transforms are kept forever and valid at any time.
    tolerance_s:  a lookup up to this far outside an edge's data uses the end sample
                  instead of raising an extrapolation error.
    Each child frame has one parent; a transform naming a new parent re-parents the
    child and discards its old history. Thread-safe (one lock).
    """

    def __init__(self, cache_time_s: float = 10.0, tolerance_s: float = 0.001):
        if not cache_time_s > 0 or not tolerance_s >= 0:
            raise ValueError(f"need cache_time_s > 0 and tolerance_s >= 0, got {cache_time_s}, {tolerance_s}")
        self._cache_ns = int(round(cache_time_s * 1e9))
        self._tol_ns = int(round(tolerance_s * 1e9))
        self._edges: dict[str, _Edge] = {}  # child frame -> edge to its parent
        self._lock = threading.Lock()
        self.jumps = 0  # edges restarted because time jumped back

    def set_transform(self, parent: str, child: str, stamp_ns: int, T_parent_child: np.ndarray,
                      static: bool = False) -> None:
        """Add T_parent_child [4 x 4] (maps points in child to parent) at stamp_ns [ns]."""
        parent, child = _clean(parent), _clean(child)
        if parent == child:
            raise ValueError(f"frame '{child}' cannot be its own parent")
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0:
            raise ValueError(f"negative stamp {stamp_ns}")
        T = np.asarray(T_parent_child, np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"T_{parent}_{child} must be a finite 4x4 matrix, got shape {T.shape}")
        R = T[:3, :3]
        if np.abs(R.T @ R - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0:
            raise ValueError(f"T_{parent}_{child} has no rotation in its upper-left 3x3")
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static)
            if edge.insert(stamp_ns, quaternion_from_matrix(R), T[:3, 3].copy(), self._cache_ns):
                self.jumps += 1

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int = 0) -> np.ndarray:
        """T_target_source [4 x 4] at stamp_ns (0: latest common time). Raises TfLookupError."""
        target, source = _clean(target_frame), _clean(source_frame)
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0:
            raise ValueError(f"negative stamp {stamp_ns}")
        what = f"(looking up '{target}' <- '{source}')"
        with self._lock:
            for f in (target, source):
                if f not in self._edges and not any(e.parent == f for e in self._edges.values()):
                    raise TfLookupError(f"unknown frame '{f}' {what}; known frames: {self._frames()}")
            if target == source:
                return np.eye(4)
            up_s, up_t = self._chain(source), self._chain(target)
            if up_s[-1] != up_t[-1]:
                raise TfLookupError(
                    f"frames not connected: '{source}' is in the tree rooted at '{up_s[-1]}', "
                    f"'{target}' in the tree rooted at '{up_t[-1]}' {what}")
            on_t = set(up_t)
            common = next(f for f in up_s if f in on_t)
            path_s, path_t = up_s[:up_s.index(common)], up_t[:up_t.index(common)]
            if stamp_ns == 0:
                newest = [self._edges[f].stamps[-1] for f in path_s + path_t if not self._edges[f].static]
                stamp = min(newest) if newest else None
            else:
                stamp = stamp_ns
            T_common_source, T_common_target = np.eye(4), np.eye(4)
            for f in path_s:
                T_common_source = self._edges[f].at(stamp, self._tol_ns, f, what) @ T_common_source
            for f in path_t:
                T_common_target = self._edges[f].at(stamp, self._tol_ns, f, what) @ T_common_target
        return invert(T_common_target) @ T_common_source

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int = 0) -> bool:
        try:
            self.lookup(target_frame, source_frame, stamp_ns)
        except TfLookupError:
            return False
        return True

    def frames(self) -> list[str]:
        with self._lock:
            return self._frames()

    def clear(self) -> None:
        with self._lock:
            self._edges.clear()

    def _frames(self) -> list[str]:
        return sorted(set(self._edges) | {e.parent for e in self._edges.values()})

    def _chain(self, frame: str) -> list[str]:
        """[frame, parent, grandparent, ..., root]."""
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
            if len(chain) > len(self._edges) + 1:
                raise TfLookupError(f"the frame tree has a loop through '{frame}': {' -> '.join(chain[:8])} ...")
        return chain


class TfListener:
    """Fills a TF buffer from /tf and /tf_static of ``node`` (not subclassed, not spun here).

    The subscriptions get their own MutuallyExclusiveCallbackGroup, so with a
    MultiThreadedExecutor TF keeps arriving while another callback waits in lookup().
    When tf2_ros is importable, tf2_ros.Buffer + TransformListener do the work,
    ``buffer`` is None and tolerance_s is not applied; the API and TfLookupError stay the same.
    """

    def __init__(self, node, cache_time_s: float = 10.0, tolerance_s: float = 0.001):
        try:
            import tf2_ros
        except ImportError:
            tf2_ros = None
        self._node = node
        self._subs = []
        if tf2_ros is not None:
            # ---- real-distro branch (tf2_ros installed). Not exercised in the pip environment. ----
            from rclpy.duration import Duration

            self._tf2 = tf2_ros
            self._tf2_buffer = tf2_ros.Buffer(cache_time=Duration(nanoseconds=int(cache_time_s * 1e9)), node=node)
            # tf2_ros puts its /tf and /tf_static subscriptions in a callback group of their own
            self._tf2_listener = tf2_ros.TransformListener(self._tf2_buffer, node, spin_thread=False)
            self.buffer = None
            return
        # ---- pip-wheel branch: own TfBuffer fed by plain subscriptions ----
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        from match_ros.ros.conversions import stamp_to_ns, transform_to_matrix

        self._tf2 = None
        self._to_ns, self._to_matrix = stamp_to_ns, transform_to_matrix
        self.buffer = TfBuffer(cache_time_s, tolerance_s)
        self.callback_group = MutuallyExclusiveCallbackGroup()

        def qos(durability):
            return QoSProfile(depth=100, history=QoSHistoryPolicy.KEEP_LAST,
                              reliability=QoSReliabilityPolicy.RELIABLE, durability=durability)

        self._subs = [
            node.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False),
                                     qos(QoSDurabilityPolicy.VOLATILE), callback_group=self.callback_group),
            node.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True),
                                     qos(QoSDurabilityPolicy.TRANSIENT_LOCAL), callback_group=self.callback_group),
        ]

    def _on_tf(self, msg, static: bool) -> None:
        jumps = self.buffer.jumps
        for ts in msg.transforms:
            try:
                self.buffer.set_transform(ts.header.frame_id, ts.child_frame_id, self._to_ns(ts.header.stamp),
                                          self._to_matrix(ts.transform), static=static)
            except ValueError as e:
                self._node.get_logger().warning(f"ignoring transform: {e}", throttle_duration_sec=5.0)
        if self.buffer.jumps > jumps:
            self._node.get_logger().warning("/tf stamps jumped back in time: the transforms before the jump were "
                                            "discarded (as tf2_ros clears its buffer)", throttle_duration_sec=5.0)

    def _lookup_now(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        if self._tf2 is None:
            return self.buffer.lookup(target, source, stamp_ns)
        # ---- real-distro branch ----
        from rclpy.time import Time

        from match_ros.ros.conversions import transform_to_matrix

        try:
            ts = self._tf2_buffer.lookup_transform_core(
                target, source, Time(nanoseconds=int(stamp_ns), clock_type=self._node.get_clock().clock_type))
        except self._tf2.TransformException as e:
            raise TfLookupError(f"{type(e).__name__}: {e}") from e
        return transform_to_matrix(ts.transform)

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int = 0, timeout_s: float = 0.0) -> np.ndarray:
        """T_target_source [4 x 4] at stamp_ns (0: latest), waiting up to timeout_s [s] (wall time).

        Sleeps in small steps and never spins the node: its executor must run elsewhere
        (another thread, or a MultiThreadedExecutor). Raises TfLookupError on timeout.
        """
        return wait_for(lambda: self._lookup_now(target_frame, source_frame, stamp_ns), timeout_s)

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int = 0) -> bool:
        try:
            self._lookup_now(target_frame, source_frame, stamp_ns)
        except TfLookupError:
            return False
        return True

    def destroy(self) -> None:
        """Remove the subscriptions (the node itself stays)."""
        if self._tf2 is not None:
            self._tf2_listener.unregister()
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []
