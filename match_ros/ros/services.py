"""What the nodes' services share: calls that wait for the worker, and where map files may go.

- ``PendingCalls``: a service call that needs the next camera frame (``~/relocalize``) waits in its own executor
  thread for an ``Answer``; the worker answers every waiting call after its query, a call whose own timeout passes
  is answered with the timeout, and ``close`` answers all that still wait (Ctrl-C: "shutting down") so that a
  caller never waits for a node that is gone. Calls beyond ``max_waiting`` are refused at once ("busy").
- ``MapFolder``: map paths from parameters and service requests. Relative paths are resolved in ``map_directory``;
  folders are created inside it only, never elsewhere unless ``create_directories`` allows it.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from match_ros.core.config import Param


@dataclass
class Answer:
    """What a waiting service call returns: success, message, and the result (e.g. a PoseWithCovarianceStamped)."""
    success: bool = False
    message: str = ""
    result: Any = None
    count: int = 0


class _Call:
    __slots__ = ("done", "answer")

    def __init__(self):
        self.done, self.answer = threading.Event(), None


class PendingCalls:
    """Service calls waiting for the worker (thread-safe). The node's executor needs a thread per waiting call
    (``max_waiting`` of them beside those for its other callbacks) and the service a reentrant callback group:
    each call waits in its own callback, so one call's wait never delays another's answer. (rclpy's coroutine
    callbacks would not need the threads, but its executor re-runs a waiting coroutine in a busy loop.)"""

    def __init__(self, max_waiting: int = 12):
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        self._in_callbacks = 0
        self._idle = threading.Condition(self._lock)
        self.closed_message = ""

    def open(self) -> None:
        """Take calls (again, after ``close``)."""
        with self._lock:
            self.closed_message = ""

    def wait(self, timeout_s: float, timeout_message: str) -> Answer:
        """Called in the service callback: block until the worker answers, the timeout passes or ``close``."""
        call = _Call()
        with self._lock:
            if self.closed_message:
                return Answer(False, self.closed_message)
            if len(self._waiting) >= self.max_waiting:
                return Answer(False, f"busy: {len(self._waiting)} calls already wait for the next image (at most "
                                     f"{self.max_waiting}); try again")
            self._waiting.append(call)
            self._in_callbacks += 1
        try:
            answered = call.done.wait(timeout_s)
            with self._lock:
                if call in self._waiting:
                    self._waiting.remove(call)
                if answered or call.answer is not None:
                    return call.answer
                return Answer(False, timeout_message)
        finally:
            with self._lock:
                self._in_callbacks -= 1
                self._idle.notify_all()

    def take(self) -> list:
        """The calls waiting now (the worker answers them after its query with ``answer``)."""
        with self._lock:
            taken, self._waiting = self._waiting, []
        return taken

    def answer(self, calls: list, answer: Answer) -> None:
        with self._lock:
            for call in calls:
                if call.answer is None:
                    call.answer = answer
                call.done.set()

    def close(self, message: str = "shutting down", wait_s: float = 1.0) -> int:
        """Answer every waiting call with ``message``, refuse new ones, and wait up to wait_s for the callbacks
        to return (so their responses are sent before the node goes). Returns how many were answered."""
        with self._lock:
            self.closed_message = message
            taken, self._waiting = self._waiting, []
            for call in taken:
                call.answer = Answer(False, message)
                call.done.set()
            self._idle.wait_for(lambda: self._in_callbacks == 0, timeout=wait_s)
        return len(taken)


def ros_home() -> Path:
    """ROS_HOME, or ~/.ros (where ROS 2 keeps logs)."""
    return Path(os.environ.get("ROS_HOME") or Path.home() / ".ros").expanduser()


map_folder_spec = {
    "map_directory": Param("", "Folder for map files: relative map paths (parameter and service requests) are "
                           "resolved here and folders are created only inside it (empty: $ROS_HOME/match_ros/maps, "
                           "ROS_HOME defaulting to ~/.ros)"),
    "create_directories": Param(False, "Let saves create missing folders outside map_directory"),
}


class MapFolder:
    """Map paths as the user meant them: ``resolve`` for loading, ``for_save`` also checks the folder."""

    def __init__(self, conf: dict):
        self.conf = conf

    @property
    def directory(self) -> Path:
        d = self.conf.get("map_directory") or ""
        return Path(d).expanduser().absolute() if d else ros_home() / "match_ros" / "maps"

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.directory / p

    def for_save(self, path: str) -> Path:
        """The absolute path to save to; its folder created when it is inside map_directory (or
        create_directories). OSError naming the folder otherwise."""
        target = self.resolve(path)
        folder = target.parent
        if not folder.exists():
            inside = folder == self.directory or self.directory in folder.parents
            if not (inside or self.conf.get("create_directories")):
                raise FileNotFoundError(f"folder {folder} does not exist (outside map_directory {self.directory}; "
                                        "create it, or set create_directories: true)")
            folder.mkdir(parents=True, exist_ok=True)
        return target
