"""Running a node as a process: init, spin, clean shutdown on Ctrl-C or external shutdown."""
from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor


def run_node(make_node: Callable, *, threads: int = 1, args=None) -> None:
    """Create the node, spin it (several threads when it serves services while working), and
    destroy it at the end; nodes stop their worker threads in destroy_node."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
