"""Managed (lifecycle) or plain: one node class for both, chosen by the ``lifecycle`` parameter.

``ManagedNode`` is an rclpy ``LifecycleNode`` whose lifecycle services exist only with ``lifecycle: true``:

- plain (the default): the node configures and activates itself at start, as before;
- managed: it starts unconfigured with every parameter declared (``ros2 param set`` works), and a lifecycle
  manager (nav2's ``lifecycle_manager``, ``ros2 lifecycle set``) drives it: **configure** loads the models and
  maps and creates publishers and services, **activate** starts the camera subscriptions, TF and diagnostics,
  **deactivate** stops them, **cleanup** releases what configure made (the worker thread, models, maps),
  **shutdown** does what is left of both.

A subclass implements ``configure`` / ``activate`` / ``deactivate`` / ``cleanup`` (the last two optional) and calls
``start()`` at the end of its ``__init__``. Publishers, subscriptions, services and timers created in configure
and activate are recorded and destroyed by cleanup and deactivate, so a subclass only releases its own objects.
A failing configure or activate is logged with its reason and leaves the node where it was (FAILURE).
"""
from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

from match_ros.core.config import Param
from match_ros.ros.params import declare

managed_spec = {
    "lifecycle": Param(False, "Managed node: start unconfigured and follow lifecycle transitions (configure loads "
                       "models and maps, activate starts the subscriptions, TF and diagnostics); false: configure "
                       "and activate at start", read_only=True),
}

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def _entities(node: Node) -> set:
    return {*node.publishers, *node.subscriptions, *node.services, *node.timers, *node.clients}


class ManagedNode(LifecycleNode):
    def __init__(self, node_name: str, **kwargs):
        Node.__init__(self, node_name, **kwargs)
        self.managed = declare(self, managed_spec)["lifecycle"]
        LifecycleNodeMixin.__init__(self, enable_communication_interface=self.managed)
        self.configured = self.active = False
        self._made: dict = {"configure": set(), "activate": set()}

    # ------------------------------------------------------------ what a node implements
    def configure(self) -> None:
        raise NotImplementedError

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        """Stop what activate started beyond ROS entities (those are destroyed here anyway)."""

    def cleanup(self) -> int:
        """Release what configure made beyond ROS entities; returns an exit status for ``shutdown``."""
        return 0

    # ------------------------------------------------------------ start and run_node's shutdown
    def start(self) -> None:
        """End of the subclass's __init__: a plain node configures and activates itself now."""
        if self.managed:
            self.get_logger().info("managed node: unconfigured, waiting for a lifecycle manager")
            return
        if self.trigger_configure() != SUCCESS or self.trigger_activate() != SUCCESS:
            raise RuntimeError(f"{self.get_name()} could not start (see the log above)")

    def shutdown(self) -> int:
        """run_node's exit path: deactivate and clean up whatever is still up; the cleanup's exit status."""
        status = 0
        if self.active:
            self._leave("activate", self.deactivate)
            self.active = False
        if self.configured:
            status = self._leave("configure", self.cleanup) or 0
            self.configured = False
        return status

    # ------------------------------------------------------------ lifecycle callbacks
    def _enter(self, step: str, fn) -> TransitionCallbackReturn:
        before = _entities(self)
        try:
            fn()
        except Exception as e:  # a missing map, a model that does not load: say why, stay where we were
            self.get_logger().error(f"{step} failed: {e}")
            self._destroy(_entities(self) - before)
            return FAILURE
        self._made[step] = _entities(self) - before
        return SUCCESS

    def _leave(self, step: str, fn):
        try:
            return fn()
        finally:
            self._destroy(self._made[step])
            self._made[step] = set()

    def _destroy(self, entities: set) -> None:
        for e in entities:
            for kind, destroy in (("publishers", self.destroy_publisher), ("subscriptions", self.destroy_subscription),
                                  ("services", self.destroy_service), ("timers", self.destroy_timer),
                                  ("clients", self.destroy_client)):
                if e in set(getattr(self, kind)):
                    destroy(e)
                    break

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._enter("configure", self.configure)
        self.configured = result == SUCCESS
        return result

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._enter("activate", self.activate)
        self.active = result == SUCCESS
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._leave("activate", self.deactivate)
        self.active = False
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._leave("configure", self.cleanup)
        self.configured = False
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shutdown()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shutdown()
        return SUCCESS
