"""nemf_dense (the NeMF-style matching field, ``core.models.nemf``) against exact ground truth. CPU.

- PatchMatch's answer against the exhaustive search it avoids (the same field, every cell tried);
- sub-pixel accuracy on a real photo shifted by a known fractional offset;
- dense mode on Middlebury aloe (rectified stereo with ground-truth disparity): share within 1 px and count;
- the grid-descriptor fallback for features without the field maps.
"""
import cv2
import numpy as np
import pytest
import torch

from match_ros.core.features.matcher import build_matcher
from match_ros.core.features.types import Features
from match_ros.core.models import nemf
from match_ros.evaluation.eval_pairs import aloe_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def matcher(test_device):
    return build_matcher("nemf_dense", device=test_device)


@pytest.fixture(scope="module")
def graf_feats(matcher, graf_pair):
    im1, im3, _ = graf_pair
    return matcher.extract(im1), matcher.extract(im3)


def test_patchmatch_finds_what_exhaustive_search_finds(matcher, graf_feats):
    """graf1 -> graf3 on the coarse field: PatchMatch's best cell equals the exhaustive argmax for most points
    (measured 89.4 %), and its similarity is never above the exhaustive maximum."""
    f1, f3 = graf_feats
    a, b = f1.extra["nemf"], f3.extra["nemf"]
    size = f1.image_size
    with torch.inference_mode():
        p, grid = nemf.grid_points(size, 8, f1.device)
        d0 = nemf.sample(a["coarse"], p[None], size)[0]
        gen = torch.Generator(device=f1.device).manual_seed(0)
        q, sim = nemf.patchmatch(d0, grid, p, b["coarse"], f3.image_size, generator=gen)
        table = b["coarse"][0].flatten(1)  # [C x cells]
        full = d0 @ table
        best, arg = full.max(1)
    found = nemf._cell_index(q, f3.image_size, tuple(b["coarse"].shape[-2:]))
    agree = float((found == arg).float().mean())
    assert (sim <= best + 1e-4).all()
    assert agree >= 0.85, f"PatchMatch found the exhaustive best cell for {agree:.1%} of the points"


def test_subpixel_shift_of_a_real_photo(test_device, graf_pair):
    """graf1 and graf1 shifted by (3.3, -1.6) px (bilinear warp): median error of the field's refined matches
    (no Lucas-Kanade) <= 0.3 px and >= 70 % within 0.5 px (measured: 0.19 px, 81.6 %)."""
    im = graf_pair[0]
    shift = np.array([3.3, -1.6])
    moved = cv2.warpAffine(im, np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float64), (im.shape[1], im.shape[0]),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    matcher = build_matcher("nemf_dense", {"photometric_window": 0}, test_device)  # the field alone
    fa, fb = matcher.extract(im), matcher.extract(moved)
    m = matcher.match(fa, fb)
    pa, pb = m.points(fa, fb)
    inner = (pa[:, 0] > 16) & (pa[:, 1] > 16) & (pa[:, 0] < im.shape[1] - 16) & (pa[:, 1] < im.shape[0] - 16)
    err = np.linalg.norm(pb[inner] - (pa[inner] + shift), axis=1)
    assert inner.sum() >= 1000
    assert np.median(err) <= 0.3 and (err <= 0.5).mean() >= 0.70, (np.median(err), (err <= 0.5).mean())


@pytest.mark.slow  # over 1.5 s on 2 cores: the quick tier stays under a minute
@pytest.mark.parametrize("normalise, floor", [(False, 0.93), (True, 0.92)])
def test_dense_mode_on_aloe(normalise, floor, test_device, data_dir):
    """Dense mode (every grid point, Lucas-Kanade last step on plain / contrast-normalised images) on aloe
    (1282 x 1110 rectified stereo): matches with ground truth and the share within 1 px of the ground-truth
    disparity (measured: plain 6879, 95.4 %; normalised (the default) 7267, 94.6 %)."""
    conf = {"max_matches": 0, "photometric_normalise": normalise}
    r = aloe_metrics(build_matcher("nemf_dense", conf, test_device), data_dir)
    assert r["with_gt"] >= 5000, r
    assert r["within_1px"] >= floor, r


def test_features_without_maps_fall_back_to_grid_descriptors(matcher, graf_feats, graf_pair):
    """Features rebuilt from keypoints + descriptors alone (as from a stored map) still match: mutual NN on the
    grid descriptors, grid-precise positions, most within 8 px of the ground-truth homography."""
    f1, f3 = graf_feats
    bare1 = Features(f1.keypoints, f1.descriptors, f1.scores, f1.image_size)
    bare3 = Features(f3.keypoints, f3.descriptors, f3.scores, f3.image_size)
    m = matcher.match(bare1, bare3)
    assert m.points_query is None and len(m) >= 200
    p1, p3 = m.points(bare1, bare3)
    err = np.linalg.norm(cv2.perspectiveTransform(p1[None], graf_pair[2])[0] - p3, axis=1)
    assert np.median(err) <= 8.0


def test_bad_configuration_and_checkpoint_kind(tmp_path):
    from match_ros.core.models.checkpoint import save_checkpoint

    with pytest.raises(ValueError, match="grid_stride"):
        build_matcher("nemf_dense", {"grid_stride": 1})
    other = tmp_path / "coam.pt"
    save_checkpoint(other, "coam", {}, {})
    with pytest.raises(ValueError, match="'coam' model"):
        build_matcher("nemf_dense", {"model_weights": str(other)})
