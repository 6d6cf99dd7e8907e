"""Helpers for tools and tests that run a real ROS 2 graph on this machine.

DDS discovery is confined to loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)
for this process and every node process it starts.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_DOMAIN_ID = 57
# ids whose DDS ports (7400 + 250 id + offset) stay below Linux's ephemeral port range (ROS 2's advice: 0-101);
# 57 and 58 are the Makefile's and CI's defaults
TEST_DOMAIN_IDS = (60, 101)
_held_domains: dict = {}  # domain id -> open lock file, held for the life of this process


def _domain_ports_free(domain_id: int) -> bool:
    """True when no DDS participant on this machine listens on the domain's discovery ports (RTPS port mapping:
    multicast discovery 7400 + 250 d, first participant's unicast discovery 7410 + 250 d)."""
    for port in (7400 + 250 * domain_id, 7410 + 250 * domain_id):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_domain_id(first: int = TEST_DOMAIN_IDS[0], last: int = TEST_DOMAIN_IDS[1]) -> int:
    """A ROS_DOMAIN_ID no other graph on this machine uses: reserved for this process (a lock file in the
    temporary folder, held until it exits, so concurrent test runs and tools never share one) and with its DDS
    discovery ports unused (a graph started by anyone else). Each call returns another id."""
    span = last - first + 1
    start = os.getpid() % span  # concurrent processes start their search at different ids
    for k in range(span):
        domain_id = first + (start + k) % span
        if domain_id in _held_domains:
            continue
        lock = open(Path(tempfile.gettempdir()) / f"match_ros_dds_domain_{domain_id}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        if _domain_ports_free(domain_id):
            _held_domains[domain_id] = lock
            return domain_id
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    raise RuntimeError(f"no free ROS_DOMAIN_ID in {first}-{last} on this machine")


def confine_to_loopback(domain_id: int | None = None) -> dict:
    """Set the DDS environment of this process (call before rclpy.init); returns it."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    else:
        os.environ.setdefault("ROS_DOMAIN_ID", str(DEFAULT_DOMAIN_ID))
    return {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")}


class NodeProcess:
    """A node in its own process: ``python -m module --ros-args ...``, output to a log file.

    params: {name: value}; remaps: {from: to}; preexec: called in the child before the node starts (e.g. resource
    limits). Used as a context manager; on exit the process gets SIGINT (clean shutdown), then SIGKILL if it does
    not exit.
    """

    def __init__(self, module: str, params: dict | None = None, remaps: dict | None = None,
                 name: str | None = None, log_path: str | Path | None = None, preexec=None):
        args = [sys.executable, "-m", module, "--ros-args"]
        for k, v in (params or {}).items():
            args += ["-p", f"{k}:={_param_text(v)}"]
        for k, v in (remaps or {}).items():
            args += ["-r", f"{k}:={v}"]
        if name:
            args += ["-r", f"__node:={name}"]
        self.args, self.preexec = args, preexec
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="match_ros_", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "NodeProcess":
        confine_to_loopback()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                     preexec_fn=self.preexec)
        return self

    def __exit__(self, *exc):
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _param_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v == "":
        return "''"  # YAML empty string; a bare 'name:=' does not parse
    return str(v)


def spin_until(node, predicate: Callable[[], bool], timeout: float, executor=None) -> bool:
    """Spin ``node`` until predicate() is true or timeout [s] passes; returns predicate().

    Without an executor a temporary one is made in the node's own context.
    """
    from rclpy.executors import SingleThreadedExecutor

    own = executor is None
    if own:
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            executor.spin_once(timeout_sec=0.05)
        return predicate()
    finally:
        if own:
            executor.remove_node(node)
            executor.shutdown()


def wait_for_subscribers(node, publishers: Sequence, timeout: float = 20.0) -> bool:
    """Wait (spinning) until every publisher has at least one matched subscription."""
    return spin_until(node, lambda: all(p.get_subscription_count() > 0 for p in publishers), timeout)
