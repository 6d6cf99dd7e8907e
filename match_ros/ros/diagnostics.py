"""What the nodes tell about themselves: ``ErrorLog`` (errors counted by kind, logged at most every 2 s per kind,
the recent ones kept), ``Diagnostics`` (/diagnostics at 1 Hz with levels that recover, named after the node's
fully qualified name), ``RateMeter`` (rate and latency percentiles), ``log_outcome``, ``steady_clock``.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Callable

import numpy as np


def log_outcome(node, ok: bool, text: str) -> None:
    """Log a success as info and a failure as error (one call site per severity: rclpy refuses to change the
    severity of a call site)."""
    if ok:
        node.get_logger().info(text)
    else:
        node.get_logger().error(text)


class ErrorLog:
    """Errors counted by kind (digits ignored), each kind logged at most every ``period_s``."""

    def __init__(self, node, period_s: float = 2.0, recent_s: float = 10.0):
        self.node, self.period_s, self.recent_s = node, period_s, recent_s
        self.count, self.by_kind, self.last = 0, {}, ""
        self._logged_at: dict = {}
        self._times: deque = deque(maxlen=1000)
        self._lock = threading.Lock()

    def __call__(self, kind: str, text: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            self.last = f"{kind}: {text}"
            self._times.append(now)
            key = kind + re.sub(r"[0-9.]+", "#", text)
            if now - self._logged_at.get(key, -1e9) < self.period_s:
                return
            self._logged_at[key] = now
        self.node.get_logger().error(f"{kind}: {text}")

    def recent(self) -> int:
        """Errors within the last ``recent_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._times if now - t <= self.recent_s)


def steady_clock():
    """A monotonic clock for timers that must run whatever /clock does (diagnostics, autosave)."""
    from rclpy.clock import Clock, ClockType

    return Clock(clock_type=ClockType.STEADY_TIME)


class Diagnostics:
    """/diagnostics at 1 Hz: ``status()`` returns (level, message, values); ERROR/WARN/OK recover by themselves.
    The status is named after the node's fully qualified name (``/robot1/relocalizer: relocalization``), so that
    the same node in two namespaces gives two statuses."""

    def __init__(self, node, name: str, hardware_id: str, status: Callable):
        from diagnostic_msgs.msg import DiagnosticArray

        self.node, self.name, self.hardware_id, self.status = node, name, hardware_id, status
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        node.create_timer(1.0, self.publish, clock=steady_clock())  # on wall time: also when /clock stops

    def publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        level, message, values = self.status()
        st = DiagnosticStatus(name=f"{self.node.get_fully_qualified_name()}: {self.name}",
                              hardware_id=self.hardware_id, level=level, message=message,
                              values=[KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v))
                                      for k, v in values.items()])
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)


class RateMeter:
    """Rate [Hz] and latency percentiles over the last ``window`` events."""

    def __init__(self, window: int = 300):
        self.times: deque = deque(maxlen=window)
        self.latencies_ms: deque = deque(maxlen=window)

    def add(self, latency_ms: float) -> None:
        self.times.append(time.monotonic())
        self.latencies_ms.append(latency_ms)

    def values(self) -> dict:
        t = list(self.times)
        rate = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0
        if time.monotonic() - (t[-1] if t else 0.0) > 5.0:
            rate = 0.0
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"rate_hz": rate, "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p95_ms": float(np.percentile(lat, 95))}
