"""map_builder never replaces a map it did not write (issue 20: the first autosave replaced a 19-keyframe map of an
earlier run with a 1-keyframe one) unless overwrite_map is true, and a failed final save makes the process exit
non-zero saying where the map could not go. The rules in process (a MapBuilderNode fed rendered frames directly),
the exit status with the node process, a replayed bag and Ctrl-C (slow tier)."""
import hashlib
import signal
import time

import pytest

from match_ros.core.relocalization.mapstore import Map
from match_ros.sim import make_sequence


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def room():
    return make_sequence("room", n_frames=60, seed=0)


@pytest.fixture()
def make_node():
    """make(**parameters) -> a MapBuilderNode (orb_teblid, cpu) in its own context, destroyed after the test."""
    import rclpy

    from match_ros.nodes.map_builder import MapBuilderNode

    made = []

    def make(**parameters):
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        overrides = [rclpy.parameter.Parameter(k, value=v) for k, v in
                     {"matcher": "orb_teblid", "device": "cpu", "torch_threads": 1, **parameters}.items()]
        node = MapBuilderNode(context=ctx, parameter_overrides=overrides)
        made.append((node, ctx))
        return node

    yield make
    for node, ctx in made:
        node.worker.stop(5.0)
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def _add(node, seq, frames) -> None:
    for i in frames:
        f = seq[i]
        node.builder.add_frame(f.rgb, f.T_world_cam, seq.camera.K, f.stamp_ns, f.depth, "camera")


def test_a_map_of_an_earlier_run_is_kept_unless_overwrite_map(room, make_node, tmp_path, capsys):
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.parameter import Parameter

    path = tmp_path / "lab.db"
    # first run: the node writes the map and may replace its own file as the map grows
    first = make_node(map_path=str(path))
    _add(first, room, range(0, 30, 3))
    assert first.save(str(path))[0]
    _add(first, room, range(30, 60, 3))
    ok, text = first.save(str(path))
    assert ok, text
    earlier = len(Map.load(path))
    assert earlier >= 3 and earlier == len(first.builder.map)
    digest = _sha(path)

    # next run at the same map_path: its first (autosave-sized) map does not replace the earlier one
    second = make_node(map_path=str(path))
    _add(second, room, [0])
    assert len(second.builder.map) == 1
    ok, text = second.save(str(path))
    assert not ok and str(path) in text and "overwrite_map" in text and "not written by this node" in text, text
    assert _sha(path) == digest and len(Map.load(path)) == earlier
    level, message, values = second._diagnostic_status()
    assert level == DiagnosticStatus.ERROR and str(path) in message and values["failed_saves"] == 1
    # ~/save_map to that file answers the same way; another path is fine
    ok, _ = second.save(str(tmp_path / "other.db"))
    assert ok and len(Map.load(tmp_path / "other.db")) == 1

    # the final save fails too: exit status 1, and stderr says where the map could not go and why
    assert second.shutdown() == 1
    err = capsys.readouterr().err
    assert f"could not be saved to {path}" in err and "overwrite_map" in err and "1 keyframes" in err, err
    assert _sha(path) == digest

    # overwrite_map true (at run time: `ros2 param set`): the file is replaced
    third = make_node(map_path=str(path))
    _add(third, room, [0])
    assert third.set_parameters([Parameter("overwrite_map", value=True)])[0].successful
    ok, text = third.save(str(path))
    assert ok, text
    assert len(Map.load(path)) == 1 and third.shutdown() == 0


@pytest.mark.slow
def test_a_failed_final_save_exits_non_zero(room, tmp_path):
    """The node process maps a replayed bag with an earlier run's map at map_path: Ctrl-C, the shutdown save is
    refused, the process exits with status 1 after saying where the map could not go; the earlier map is whole."""
    import rclpy

    from match_ros.core.features.matcher import build_matcher, shared_conf
    from match_ros.core.relocalization.global_desc import GlobalDescriptor
    from match_ros.core.relocalization.mapping import MapBuilder
    from match_ros.evaluation.graph import NodeProcess, confine_to_loopback, free_domain_id, spin_until
    from match_ros.tools.bag_play import BagPlayer
    from match_ros.tools.bag_write import write_sequence_bag

    path = tmp_path / "lab.db"
    matcher = build_matcher("orb_teblid", shared_conf("orb_teblid"), "cpu")
    earlier = MapBuilder(matcher, GlobalDescriptor(device="cpu"))
    for i in range(0, 60, 4):
        f = room[i]
        earlier.add_frame(f.rgb, f.T_world_cam, room.camera.K, f.stamp_ns, f.depth)
    earlier.build().save(path, with_vocabulary=False)
    digest, n_earlier = _sha(path), len(Map.load(path))
    bag = tmp_path / "mapping"
    write_sequence_bag(bag, make_sequence("room", n_frames=30, seed=0))

    confine_to_loopback(free_domain_id())
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("map_builder_test", context=ctx)
    player = BagPlayer(node, bag, rate=0.5, topics=["/camera/image_raw", "/camera/camera_info", "/tf"])
    params = {"matcher": "orb_teblid", "use_sim_time": True, "map_path": str(path), "autosave_period_s": 1.0}
    try:
        with NodeProcess("match_ros.nodes.map_builder", params,
                         {"image": "/camera/image_raw", "camera_info": "/camera/camera_info"}) as proc:
            img = player.publishers["/camera/image_raw"]
            assert spin_until(node, lambda: img.get_subscription_count() > 0, 60), proc.log()
            spin_until(node, lambda: False, 1.0)
            player.play()
            # an autosave comes within the node's 5 s autosave tick: refused, logged as an error
            assert spin_until(node, lambda: "autosave: save failed" in proc.log(), 15), proc.log()[-3000:]
            proc.proc.send_signal(signal.SIGINT)
            rc = proc.proc.wait(60)
            time.sleep(0.1)
            log = proc.log()
    finally:
        player.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert rc == 1, (rc, log[-3000:])
    assert "map_path " + str(path) + " exists" in log  # the warning at start
    assert f"could not be saved to {path} and is lost" in log and "overwrite_map" in log, log[-3000:]
    assert _sha(path) == digest and len(Map.load(path)) == n_earlier
