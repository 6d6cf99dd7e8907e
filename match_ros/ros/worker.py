"""``Worker``: the newest frame only (drop-oldest slot) handed to one processing thread, so the executor never
waits; ``Worker.call`` runs set-up work (model building, warm-up, map loading) in that same thread: every torch
computation of a node happens in one thread (see ``Worker.call``).
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # the builtin TimeoutError only from Python 3.11
from typing import Callable

from match_ros.ros.diagnostics import ErrorLog
from match_ros.ros.latest import LatestSlot


class Worker:
    """One processing thread fed by a drop-oldest slot: ``put`` never blocks, ``process(item)`` runs in order;
    an exception in ``process`` is counted by ``errors`` and the thread goes on."""

    def __init__(self, process: Callable, errors: ErrorLog, name: str):
        self.slot: LatestSlot = LatestSlot()
        self.process, self.errors = process, errors
        self.busy = False
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        self.slot.put(item)

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` run in the worker thread (between frames); returns its result or raises its
        exception here. Inline when called from the worker itself or after stop(). The caller waits for the frame
        in progress, so it must not hold a lock that ``process`` takes (let ``fn`` take it).

        Why: PyTorch's CPU wheels use GNU OpenMP, which gives every thread that runs a parallel operation its own
        thread pool. A model built or warmed up in the executor thread and then run in the worker left two pools
        on 2 cores and made XFeat+LighterGlue 1.7x slower per frame (75 -> 127 ms, measured); so a node builds,
        warms up and feeds its models through this one thread.
        """
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return fn(*args, **kwargs)
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        self.slot.wake()
        while True:
            try:
                return future.result(timeout=0.5)
            except FutureTimeout:
                if not self._thread.is_alive():  # the worker ended before taking it: run it here
                    self._run_calls()

    def _run_calls(self) -> None:
        while True:
            try:
                future, fn, args, kwargs = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # handed to the caller, which raises it
                future.set_exception(e)

    def _run(self) -> None:
        while not self.slot.closed:
            self._run_calls()
            item = self.slot.get(timeout=0.5)
            self._run_calls()
            if item is None:
                continue
            self.busy = True
            try:
                self.process(item)
            except Exception as e:  # a bad frame must never stop the node
                self.errors("processing", f"frame skipped: {e!r}")
            finally:
                self.busy = False
        self._run_calls()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
