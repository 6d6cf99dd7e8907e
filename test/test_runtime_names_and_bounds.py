"""Node runtime, in process: /diagnostics statuses carry the node's fully qualified name (two robots' relocalizers
give two statuses), and compressed images are bounded by their header's size before they are decoded (a small
PNG of huge dimensions is refused at almost no memory cost)."""
import numpy as np
import pytest


@pytest.fixture()
def context():
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def test_diagnostics_are_named_after_the_fully_qualified_node_name(context):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    from match_ros.evaluation.graph import spin_until
    from match_ros.ros.runtime import Diagnostics

    robots = [rclpy.create_node("relocalizer", namespace=ns, context=context) for ns in ("robot1", "robot2")]
    plain = rclpy.create_node("relocalizer", context=context)
    listener = rclpy.create_node("diagnostics_listener", context=context)
    received = []
    listener.create_subscription(DiagnosticArray, "/diagnostics", received.append, 10)
    diagnostics = [Diagnostics(n, "relocalization", "orb_teblid", lambda: (0, "ok", {"frames": 3, "rate_hz": 1.25}))
                   for n in robots + [plain]]
    executor = SingleThreadedExecutor(context=context)
    for n in robots + [plain, listener]:
        executor.add_node(n)
    try:
        assert spin_until(listener, lambda: all(d.pub.get_subscription_count() > 0 for d in diagnostics), 10,
                          executor)
        names = {"/robot1/relocalizer: relocalization", "/robot2/relocalizer: relocalization",
                 "/relocalizer: relocalization"}

        def got():
            return {s.name for m in received for s in m.status}

        for d in diagnostics:
            d.publish()
        assert spin_until(listener, lambda: got() >= names, 10, executor), got()
        status = next(s for m in received for s in m.status if s.name.startswith("/robot2/"))
        assert status.hardware_id == "orb_teblid" and status.message == "ok"
        assert {kv.key: kv.value for kv in status.values} == {"frames": "3", "rate_hz": "1.25"}
    finally:
        executor.shutdown()
        for n in robots + [plain, listener]:
            n.destroy_node()
