"""Process runtime of the nodes: ``run_node`` (init, spin, and one shutdown path for Ctrl-C, SIGTERM and external
shutdown that answers waiting service calls and runs the node's ``shutdown()`` (e.g. saving a map) once, ignoring
the second SIGINT ``ros2 launch`` forwards) and the shipped Fast DDS profile (``use_fastdds_profile``).

The rest of what the nodes share lives beside it: ``camera_input`` (subscriptions and input checks), ``worker``
(the processing thread), ``diagnostics`` (errors, /diagnostics, rates), ``matcher_params`` (the matcher's
parameters and warm-up).
"""
from __future__ import annotations

import inspect
import os
import signal
import threading
from pathlib import Path
from typing import Callable, Optional


def fastdds_profile() -> Optional[Path]:
    """The shipped Fast DDS profile (16 MB shared-memory segment), beside this module or in share/match_ros."""
    here = Path(__file__).resolve().parent / "fastdds_shm.xml"
    return here if here.is_file() else None


def use_fastdds_profile() -> Optional[str]:
    """Point Fast DDS at the shipped profile unless the user chose one: FASTRTPS_DEFAULT_PROFILES_FILE for Fast DDS
    2 (Humble, Jazzy: ROS_DISTRO says so), FASTDDS_DEFAULT_PROFILES_FILE for Fast DDS 3 (Kilted and the pip wheels).
    Returns the variable set, or None."""
    profile = fastdds_profile()
    if profile is None or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or os.environ.get(
            "FASTRTPS_DEFAULT_PROFILES_FILE"):
        return None
    name = ("FASTRTPS_DEFAULT_PROFILES_FILE" if os.environ.get("ROS_DISTRO", "") in ("humble", "iron", "jazzy")
            else "FASTDDS_DEFAULT_PROFILES_FILE")
    os.environ[name] = str(profile)
    return name


def _drain_pool(executor, timeout_s: float) -> None:
    """Let the callbacks a MultiThreadedExecutor's thread pool is still running end, and drop the queued ones,
    before ``executor.shutdown``: rclpy's shutdown destroys the executor's guard condition first and its pool after
    (ros2/rclpy#968), so a callback that ends in between fails on the guard ("The following exception was never
    retrieved: cannot use Destroyable because destruction was requested", on most Ctrl-C of an idle relocalizer,
    whose map -> odom timer runs at 20 Hz). Bounded: a callback that does not end within timeout_s is left."""
    pool = getattr(executor, "_executor", None)  # rclpy's ThreadPoolExecutor; absent in single-threaded ones
    if pool is None:
        return
    done = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    done.start()
    done.join(timeout_s)
    # a dropped callback that is a coroutine was created when it was queued (rclpy's Task) and never started:
    # closed here, it does not print "coroutine ... was never awaited" when the interpreter exits
    for task, *_ in list(getattr(executor, "_tasks", [])):
        coroutine = getattr(task, "_handler", None)
        if inspect.iscoroutine(coroutine) and not task.executing() and not task.done():
            coroutine.close()


def run_node(make_node: Callable, *, threads: int = 1, args=None) -> None:
    """Create the node, spin it, and shut down once: the first SIGINT / SIGTERM (or an external shutdown) ends
    the spin, the node's ``shutdown()`` runs (a map save finishes), later signals are ignored meanwhile. A
    ``shutdown()`` that returns a non-zero int (e.g. a final save failed) is the process's exit status. Service
    calls still waiting are answered first (``answer_pending("shutting down")``), so no caller waits for a node
    that is gone, and the executor's threads are free when the interpreter exits (it joins them)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    use_fastdds_profile()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stopping = threading.Event()
    node = executor = None
    status = 0

    def on_signal(signum, _frame):
        if stopping.is_set():
            return  # already shutting down: e.g. the SIGINT `ros2 launch` forwards after the terminal's
        stopping.set()  # the spin loop ends within its 0.2 s step; the shutdown runs there, not in the handler

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        while not stopping.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stopping.set()
        if node is not None and hasattr(node, "answer_pending"):
            node.answer_pending("shutting down")
        if executor is not None:
            _drain_pool(executor, 1.0)
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            try:
                if hasattr(node, "shutdown"):
                    result = node.shutdown()
                    status = result if isinstance(result, int) else 0
            finally:
                node.destroy_node()
        rclpy.try_shutdown()
        # Ignored from here on: a signal that arrives while the interpreter exits (e.g. the second SIGINT ros2
        # launch forwards after a quick save) must not turn a clean exit into death by SIGINT. Python resets
        # handlers written in Python to the default at finalization, but leaves SIG_IGN alone.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    if status:
        raise SystemExit(status)
