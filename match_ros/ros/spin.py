"""Running a node as a process: init, spin, clean shutdown on Ctrl-C or external shutdown; the worker thread
behind each node's drop-oldest slot; publishing the node's diagnostics."""
from __future__ import annotations

import threading
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


def start_worker(target: Callable, name: str) -> threading.Thread:
    """A daemon thread running ``target`` (the node's loop over its LatestSlot), started."""
    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    return worker


def stop_worker(slot, worker: threading.Thread, timeout_s: float) -> None:
    """Close the slot (the worker loop ends at its next get) and wait up to ``timeout_s`` for the thread."""
    slot.close()
    if worker.is_alive():
        worker.join(timeout=timeout_s)


def publish_diagnostics(node, publisher, status) -> None:
    """Publish one DiagnosticStatus in a DiagnosticArray stamped with the node's clock."""
    from diagnostic_msgs.msg import DiagnosticArray

    msg = DiagnosticArray(status=[status])
    msg.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(msg)
