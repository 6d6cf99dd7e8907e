"""match_ros_bag_play: replay a rosbag2 bag (sqlite3 or mcap) with rclpy, without deserialising it.

Messages are read with the ``rosbags`` library and published as the recorded CDR bytes
(rclpy's Publisher.publish(bytes)), at the recorded log-time spacing divided by --rate.
Before the messages of each new log time, /clock (rosgraph_msgs/msg/Clock) carries that
time, so nodes with use_sim_time follow the bag.

QoS: every topic reliable (or best effort) with keep-last depth 10 (options); /tf_static
reliable + transient local. DDS: like the nodes, the player uses the shipped Fast DDS profile (16 MB
shared-memory segment: best-effort subscribers such as the nodes' sensor_data inputs get every image)
unless FASTDDS_DEFAULT_PROFILES_FILE / FASTRTPS_DEFAULT_PROFILES_FILE is set; keep discovery on this
machine with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and pick the graph with ROS_DOMAIN_ID.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from match_ros.tools.bagio import BagError, open_reader

TRANSIENT_LOCAL_TOPICS = ("/tf_static",)


def resolve_message_class(type_name: str):
    """'pkg/msg/Name' (or 'pkg/Name') -> the rclpy message class; BagError when not importable."""
    parts = type_name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise BagError(f"bad message type name '{type_name}'")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError):
        raise BagError(f"message type {type_name} is not installed (cannot import {parts[0]}.{parts[1]})") from None


@dataclass
class PlayStats:
    """What one play() published: messages per topic, /clock messages, passes over the bag."""

    counts: dict = field(default_factory=dict)
    clock_count: int = 0
    passes: int = 0
    wall_s: float = 0.0


class BagPlayer:
    """Publishes a bag's messages on ``node`` (the caller owns the node and its spinning).

    bag_path: rosbag2 folder or .db3/.mcap file; topics: subset to play (default all whose type is
    installed; asking for a missing topic or type is a BagError). play() blocks; start() runs it in
    a thread, stop() ends it early. Publishing needs no executor spinning.
    """

    def __init__(self, node, bag_path, *, rate: float = 1.0, clock: bool = True, loop: bool = False,
                 reliable: bool = True, depth: int = 10, topics: Optional[list] = None, clock_topic: str = "/clock"):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        if rate <= 0:
            raise ValueError("rate must be > 0")
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.node, self.rate, self.loop = node, float(rate), loop
        self._reader = open_reader(bag_path)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        recorded = {c.topic: c.msgtype for c in self._reader.connections}
        if topics is not None:
            missing = sorted(set(topics) - set(recorded))
            if missing:
                self.close()
                raise BagError(f"topics not in the bag: {missing} (bag has {sorted(recorded)})")
        self.publishers, self.skipped = {}, {}
        for topic, msgtype in sorted(recorded.items()):
            if topics is not None and topic not in topics:
                continue
            try:
                cls = resolve_message_class(msgtype)
            except BagError as exc:
                if topics is not None:
                    self.close()
                    raise
                self.skipped[topic] = str(exc)
                node.get_logger().warning(f"not playing {topic}: {exc}")
                continue
            latched = topic in TRANSIENT_LOCAL_TOPICS
            profile = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=max(depth, 100) if latched else depth,
                reliability=ReliabilityPolicy.RELIABLE if reliable or latched else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
            self.publishers[topic] = node.create_publisher(cls, topic, profile)
        if not self.publishers:
            self.close()
            raise BagError(f"no playable topic in the bag (skipped: {self.skipped})")
        self._conns = [c for c in self._reader.connections if c.topic in self.publishers]
        self._clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            self._clock_pub = node.create_publisher(Clock, clock_topic, QoSProfile(depth=10))

    @property
    def topics(self) -> dict:
        """{topic: message type} of the topics this player publishes."""
        return {c.topic: c.msgtype for c in self._conns}

    def wait_for_subscribers(self, timeout_s: float, topics: Optional[list] = None) -> bool:
        """Wait until each of ``topics`` (default: all played; the clock topic may be named) has a subscriber.

        Returns False on timeout. ValueError for a topic this player does not publish.
        """
        known = dict(self.publishers)
        if self._clock_pub is not None:
            known[self._clock_pub.topic_name] = self._clock_pub
        unknown = sorted(set(topics or []) - set(known))
        if unknown:
            raise ValueError(f"not published by this player: {unknown}")
        pubs = [known[t] for t in (topics or list(self.publishers))]
        deadline = time.monotonic() + timeout_s
        while not all(p.get_subscription_count() > 0 for p in pubs):
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            time.sleep(0.02)
        return True

    def _messages(self):
        """The bag's (connection, log time, raw) in time order; a broken bag raises BagError."""
        it = self._reader.messages(connections=self._conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - storage errors of a damaged file
                text = str(exc).splitlines()[0] if str(exc) else repr(exc)
                raise BagError(f"bag unreadable while playing: {text}") from None
            yield item

    def play(self, progress=None) -> PlayStats:
        """Publish the bag (again and again with loop) until done or stop(); returns what was sent.

        progress: optional callable(n) told after each published message (e.g. tqdm.update).
        """
        stats = PlayStats(counts={t: 0 for t in self.publishers})
        start = time.monotonic()
        while not self._stop.is_set():
            t0 = wall0 = last_clock = None
            for conn, t, raw in self._messages():
                if t0 is None:
                    t0, wall0 = t, time.monotonic()
                delay = wall0 + (t - t0) / 1e9 / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                if self._stop.is_set():
                    break
                if self._clock_pub is not None and t != last_clock:
                    msg = self._clock_cls()
                    msg.clock.sec, msg.clock.nanosec = t // 1_000_000_000, t % 1_000_000_000
                    self._clock_pub.publish(msg)
                    stats.clock_count += 1
                    last_clock = t
                self.publishers[conn.topic].publish(bytes(raw))
                stats.counts[conn.topic] += 1
                if progress is not None:
                    progress(1)
            else:
                stats.passes += 1
            if not self.loop:
                break
        stats.wall_s = time.monotonic() - start
        return stats

    def start(self) -> threading.Thread:
        """Run play() in a daemon thread; its PlayStats end up in self.stats."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("already playing")
        self._stop.clear()
        self.stats: Optional[PlayStats] = None

        def run():
            self.stats = self.play()

        self._thread = threading.Thread(target=run, name="bag_player", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask play() to end and wait for the thread started by start()."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Stop, destroy the publishers and close the bag."""
        self.stop()
        for pub in list(getattr(self, "publishers", {}).values()) + [getattr(self, "_clock_pub", None)]:
            if pub is not None:
                self.node.destroy_publisher(pub)
        self.publishers = {}
        self._clock_pub = None
        self._reader.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="match_ros_bag_play", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", help="rosbag2 folder, or a .db3 / .mcap file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default: 1.0)")
    parser.add_argument("--clock", action=argparse.BooleanOptionalAction, default=True,
                        help="publish /clock (rosgraph_msgs/Clock) from the bag's log times (default: on)")
    parser.add_argument("--loop", action="store_true", help="play the bag again and again until Ctrl-C")
    parser.add_argument("--qos-reliability", choices=("reliable", "best_effort"), default="reliable",
                        help="reliability of the played topics (default: reliable; /tf_static stays reliable)")
    parser.add_argument("--qos-depth", type=int, default=10, help="keep-last depth of the played topics (default: 10)")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                        help="play only these topics (default: every topic whose message type is installed)")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SEC",
                        help="wait up to SEC seconds for a subscriber on --wait-topic before playing (default: 0)")
    parser.add_argument("--wait-topic", default="/camera/image_raw",
                        help="topic whose subscriber --wait-for-subscribers waits for (default: /camera/image_raw)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar of published messages")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.qos_depth < 1 or args.wait_for_subscribers < 0:
        parser.error("need --rate > 0, --qos-depth >= 1, --wait-for-subscribers >= 0")
    try:  # check the bag before starting ROS, so user errors cost nothing
        open_reader(args.bag).close()
    except BagError as exc:
        print(f"match_ros_bag_play: error: {exc}", file=sys.stderr)
        return 2

    import rclpy
    from rclpy.node import Node

    from match_ros.ros.runtime import use_fastdds_profile

    use_fastdds_profile()  # before rclpy.init: the participant reads it when it is created
    rclpy.init()
    node = Node("match_ros_bag_play")
    player = None
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, clock=args.clock, loop=args.loop,
                           reliable=args.qos_reliability == "reliable", depth=args.qos_depth, topics=args.topics)
        if args.wait_for_subscribers > 0:
            if args.wait_topic not in player.publishers:
                raise BagError(f"--wait-topic {args.wait_topic} is not played (playing {sorted(player.publishers)})")
            if not player.wait_for_subscribers(args.wait_for_subscribers, [args.wait_topic]):
                node.get_logger().warning(f"no subscriber on {args.wait_topic} after {args.wait_for_subscribers} s;"
                                          " playing anyway")
        from tqdm import tqdm

        with tqdm(desc="play", unit="msg", disable=not args.progress) as bar:
            stats = player.play(progress=bar.update)
        node.get_logger().info(f"published {sum(stats.counts.values())} messages, {stats.clock_count} clock, "
                               f"{stats.wall_s:.1f} s")
        return 0
    except BagError as exc:
        print(f"match_ros_bag_play: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if player is not None:
            player.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
