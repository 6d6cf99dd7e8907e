"""Helpers for tools and tests that run a real ROS 2 graph on this machine.

DDS discovery is confined to loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)
for this process and every node process it starts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_DOMAIN_ID = 57


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
