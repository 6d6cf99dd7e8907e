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
    from match_ros.ros.diagnostics import Diagnostics

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


def crafted_png(width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG of width x height black pixels, about 1/1000 of its decoded size (2.3 MB for
    40000 x 20000 = 2.4 GB), written in a fraction of a second: its pixel data (every row's filter byte and pixels
    are 0) is one deflate segment of zeros, flushed so that it stands alone, repeated."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    total = height * (1 + 3 * width)  # bytes of the filtered image data
    block = 1 << 20
    n, rest = divmod(total, block)
    z = zlib.compressobj(9)
    first = z.compress(bytes(block)) + z.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    repeat = z.compress(bytes(block)) + z.flush(zlib.Z_FULL_FLUSH)  # the same for every further block of zeros
    tail = z.compress(bytes(rest)) + z.flush()
    adler = ((total % 65521) << 16) | 1  # Adler-32 of `total` zero bytes
    data = first + repeat * (n - 1) + tail[:-4] + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bit, truecolour
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_image_sizes_are_read_from_png_and_jpeg_headers():
    import cv2

    from match_ros.ros import codec

    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    assert codec.compressed_image_size(cv2.imencode(".png", image)[1]) == (53, 37, "png")
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):  # baseline (SOF0) and progressive (SOF2)
        jpeg = cv2.imencode(".jpg", image, params)[1].tobytes()
        assert codec.compressed_image_size(jpeg) == (53, 37, "jpeg")
    # an APP1 segment holding a thumbnail's own frame header comes first: skipped by its length
    thumbnail = cv2.imencode(".jpg", image[:8, :8])[1].tobytes()
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    assert codec.compressed_image_size(jpeg[:2] + app1 + jpeg[2:]) == (53, 37, "jpeg")
    assert codec.compressed_image_size(crafted_png(40000, 20000)[:33]) == (40000, 20000, "png")
    for data, why in ((b"GIF89a....", "not a JPEG or PNG"), (jpeg[:2] + b"\x00\x01", "corrupt"),
                      (jpeg[:20], "without a frame header"), (b"\x89PNG\r\n\x1a\n", "IHDR")):
        with pytest.raises(codec.ConversionError, match=why):
            codec.compressed_image_size(data)


# Runs in its own process, so that its peak RSS starts from a small baseline (this test process may have peaked
# higher already): a real node's camera input on image_transport compressed gets the crafted PNG, then a normal
# one; prints the peak RSS growth while handling the crafted one, the error it logged and the frames handed on.
_HANDLE_PNG = r"""
import resource, sys
import cv2, numpy as np, rclpy
from sensor_msgs.msg import CompressedImage
from match_ros.core.config import defaults
from match_ros.ros.camera_input import CameraInput, camera_input_spec
from match_ros.ros.diagnostics import ErrorLog
sys.path.insert(0, sys.argv[1])
from test_runtime_names_and_bounds import crafted_png

rclpy.init()
node = rclpy.create_node("keyframe_matcher")
frames, errors = [], ErrorLog(node)
camera = CameraInput(node, {**defaults(camera_input_spec), "image_transport": "compressed"}, frames.append, errors)
png = crafted_png(40000, 20000)
msg = CompressedImage(format="rgb8; png compressed bgr8", data=png)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
camera._on_image(msg)
grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
normal = cv2.imencode(".png", np.zeros((480, 640, 3), np.uint8))[1].tobytes()
camera._on_image(CompressedImage(format="png", data=normal))
print(len(png), grown_kb, len(frames), frames[0][2].shape if frames else None)
print(errors.last)
node.destroy_node()
rclpy.shutdown()
"""


def test_a_small_png_of_huge_dimensions_is_refused_before_decoding(tmp_path):
    """Issue 20: a 2.5 MB PNG of 40000 x 20000 px (2.4 GB decoded) drove keyframe_matcher to 5.5 GB. Refused by
    its header's size (max_input_pixels), the node's peak memory grows < 300 MB (measured: 0 MB), the error log says
    why, and the next, normal, compressed image is decoded."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from match_ros.evaluation.graph import free_domain_id

    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(free_domain_id()))
    r = subprocess.run([sys.executable, "-c", _HANDLE_PNG, str(Path(__file__).parent)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    numbers, error = r.stdout.splitlines()[-2:]
    size, grown_kb, n_frames, shape = numbers.split(" ", 3)
    assert 2_000_000 < int(size) < 3_000_000  # the 2.5 MB PNG
    assert int(grown_kb) < 300 * 1024, f"peak RSS grew {int(grown_kb) / 1024:.0f} MB"
    assert error.startswith("image: PNG image of 40000x20000 = 800.0 Mpx (by its header") and \
        "refused before decoding" in error and "max_input_pixels" in error, error
    assert n_frames == "1" and shape == "(480, 640, 3)"
