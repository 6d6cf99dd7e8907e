"""Our trained matchers (CoAM-style, OmniGlue-style): model contracts on tiny random-weight models, training
pairs and labels against exact ground truth, one training step, checkpoints, and accuracy floors of the
shipped weights on real pairs with ground truth. CPU only."""
import json
import math

import numpy as np
import pytest
import torch

from match_ros.core.models import checkpoint
from match_ros.training import pairs
from match_ros.core.models.coam import CoAMNet, coam_loss, mutual_matches
from match_ros.core.models.omniglue import OmniGlueNet, assignment_loss, guided_masks, match_from_assignment
from match_ros.core.features.matcher import build_matcher
from match_ros.evaluation.eval_pairs import aloe_metrics, default_data_dir, graf_metrics, motorcycle_metrics
from match_ros.training.train import build_model, lighterglue_state, make_sample, pair_loss

TINY = {"omniglue": {"dim": 16, "n_layers": 2, "num_heads": 2, "guide_dim": 8, "input_dim": 12},
        "coam": {"dim": 16, "n_layers": 1, "num_heads": 2, "input_dim": 12}}


def _random_inputs(m, n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    k0, k1 = torch.rand(1, m, 2, generator=g) * 2 - 1, torch.rand(1, n, 2, generator=g) * 2 - 1
    d0 = torch.nn.functional.normalize(torch.randn(1, m, c["input_dim"], generator=g), dim=-1)
    d1 = torch.nn.functional.normalize(torch.randn(1, n, c["input_dim"], generator=g), dim=-1)
    g0 = torch.nn.functional.normalize(torch.randn(1, m, c.get("guide_dim", 4), generator=g), dim=-1)
    g1 = torch.nn.functional.normalize(torch.randn(1, n, c.get("guide_dim", 4), generator=g), dim=-1)
    return k0, d0, g0, k1, d1, g1


def test_guided_masks_keep_the_most_similar_half():
    g0 = torch.nn.functional.normalize(torch.randn(1, 7, 5), dim=-1)
    g1 = torch.nn.functional.normalize(torch.randn(1, 9, 5), dim=-1)
    a01, a10 = guided_masks(g0, g1, 0.5)
    assert a01.shape == (1, 7, 9) and a10.shape == (1, 9, 7)
    assert (a01.sum(-1) == math.ceil(0.5 * 9)).all() and (a10.sum(-1) == math.ceil(0.5 * 7)).all()
    sim = (g0 @ g1.transpose(1, 2))[0]
    for i in range(7):  # every allowed candidate is at least as similar as every excluded one
        assert sim[i][a01[0, i]].min() >= sim[i][~a01[0, i]].max()


def test_omniglue_shapes_assignment_and_permutation_equivariance():
    c = TINY["omniglue"]
    net = OmniGlueNet(c).eval()
    k0, d0, g0, k1, d1, g1 = _random_inputs(11, 13, c)
    with torch.no_grad():
        la = net(k0, d0, g0, k1, d1, g1)
        per_layer = net(k0, d0, g0, k1, d1, g1, all_layers=True)
        perm = torch.randperm(13)
        la_p = net(k0, d0, g0, k1[:, perm], d1[:, perm], g1[:, perm])
    assert la.shape == (1, 12, 14) and len(per_layer) == 2
    assert torch.allclose(per_layer[-1], la)
    p = la[0].exp()
    assert (p[:-1, :-1].sum(1) <= 1 + 1e-4).all()  # each keypoint: at most one unit of match probability
    # reordering image 1's keypoints reorders the assignment columns and nothing else
    assert torch.allclose(la_p[0][:-1, :-1], la[0][:-1, perm], atol=1e-4)
    assert torch.allclose(la_p[0][:-1, -1], la[0][:-1, -1], atol=1e-4)
    idx, conf = match_from_assignment(la[0], 0.0)
    assert idx.shape[1] == 2 and len(idx) == len(conf) and len(set(idx[:, 1].tolist())) == len(idx)


def test_omniglue_positions_only_steer_attention():
    """Position-guided attention: positions enter only as a rotary encoding of the self-attention queries and
    keys (relative), never added to the tokens. So shifting all keypoints of an image by any offset changes
    nothing, while moving keypoints relative to each other does.

    In a random model the positions change the log-assignment by only a few 1e-3 (over seeds 0-19: 2e-3 to
    2e-2), so the weights are seeded (it failed once on a clean machine whose test order left another random
    state: 1e-3 apart) and the moved effect is compared with the shifted one, which is float rounding (~1e-6)."""
    c = TINY["omniglue"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = OmniGlueNet(c).eval()
    k0, d0, g0, k1, d1, g1 = _random_inputs(9, 10, c)
    with torch.no_grad():
        net.posenc.Wr.weight.mul_(10.0)  # higher frequencies: position differences matter in a random model
        la = net(k0, d0, g0, k1, d1, g1)
        shifted = net(k0 + torch.tensor([0.3, -0.2]), d0, g0, k1 + torch.tensor([-0.5, 0.1]), d1, g1)
        moved = net(k0 * 1.5, d0, g0, k1, d1, g1)
    shift_effect, move_effect = (shifted - la).abs().max().item(), (moved - la).abs().max().item()
    assert shift_effect < 1e-4
    assert move_effect > 2e-3 and move_effect > 100 * shift_effect


def test_coam_starts_as_xfeat_mnn_and_keeps_unit_descriptors():
    c = TINY["coam"]
    net = CoAMNet(c).eval()
    _, d0, _, _, d1, _ = _random_inputs(10, 12, c)
    with torch.no_grad():
        c0, c1, z0, z1 = net(d0, d1)
    # zero-initialised output projection: the untrained model leaves the descriptors unchanged
    assert torch.allclose(c0, d0, atol=1e-6) and torch.allclose(c1, d1, atol=1e-6)
    assert z0.shape == (1, 10) and z1.shape == (1, 12)
    with torch.no_grad():
        net.out_proj.weight.normal_()
        c0, c1, _, _ = net(d0, d1)
    assert torch.allclose(c0.norm(dim=-1), torch.ones(1, 10), atol=1e-5)
    idx, sim, dist = mutual_matches(c0[0], c1[0], z0[0], z1[0], 0.0)
    assert ((dist >= 0) & (dist <= 1)).all() and (sim >= 0).all()
    rank = (dist * sim).numpy()
    assert (np.diff(rank) <= 1e-6).all()  # best first


@pytest.fixture(scope="module")
def photo():
    from match_ros.sim import load_photos

    return load_photos(names=("building",))["building"]


def test_homography_pair_labels_agree_with_ground_truth(photo):
    pair = pairs.homography_pair(photo, np.random.default_rng(3), {"size": (320, 240)})
    assert pair.image0.shape == pair.image1.shape == (240, 320, 3)
    # the transfer is exact: image-0 pixels land on the same photo content in image 1
    x = build_matcher("xfeat_mnn", {"max_keypoints": 256})
    f0, f1 = x.extract(pair.image0), x.extract(pair.image1)
    k0, k1 = f0.keypoints.numpy(), f1.keypoints.numpy()
    l0, l1 = pairs.match_labels(k0, k1, pair)
    pos = np.nonzero(l0 >= 0)[0]
    assert len(pos) > 30
    q, ok = pair.transfer01(k0[pos])
    assert ok.all() and np.linalg.norm(q - k1[l0[pos]], axis=1).max() < 3.0
    assert (l1[l0[pos]] == pos).all()  # symmetric
    # a point carried there and back returns to itself
    back, ok_b = pair.transfer10(q)
    assert np.abs(back[ok_b] - k0[pos][ok_b]).max() < 1e-6
    # XFeat's own nearest neighbours agree with most positive labels (the labels are learnable)
    sim = f0.descriptors @ f1.descriptors.t()
    nn = sim.argmax(1).numpy()
    assert np.mean(nn[pos] == l0[pos]) > 0.5


def test_rendered_pair_labels_respect_depth_and_pose():
    from match_ros.sim import make_sequence
    from match_ros.sim.scene import Camera

    cam = Camera().scaled(0.5)
    seq = make_sequence("room", n_frames=20, seed=1, camera=cam)
    pair = pairs.rendered_pair(seq[0], seq[4], cam.K)
    x = build_matcher("xfeat_mnn", {"max_keypoints": 300})
    f0, f1 = x.extract(pair.image0), x.extract(pair.image1)
    l0, _ = pairs.match_labels(f0.keypoints.numpy(), f1.keypoints.numpy(), pair)
    assert (l0 >= 0).sum() > 30 and (l0 == pairs.UNMATCHED).sum() > 0
    # XFeat+MNN's matches: the ones that are right by the exact transfer carry the label of the keypoint they
    # matched, and none that the labels call unmatched is right
    m = x.match(f0, f1)
    q, ok = pair.transfer01(m.points(f0, f1)[0])
    right = ok & (np.linalg.norm(q - m.points(f0, f1)[1], axis=1) < 3.0)
    label = l0[m.indices[:, 0]]
    assert right.sum() > 50 and (label[right] == m.indices[right, 1]).mean() > 0.95
    assert not right[label == pairs.UNMATCHED].any()


def test_hard_pairs_changed_day_photo_and_cross_day_rendered():
    """The hard training data: a photo pair whose second view has a changed day's light (darker on average, same
    geometry: the exact transfer is unchanged), and rendered pairs across a mapping and a changed-day run whose
    depth transfer puts XFeat's correct matches where the ground truth says."""
    from match_ros.sim import load_photos
    from match_ros.training.train import default_config, training_pairs

    photo = load_photos(names=("building",))["building"]
    plain = pairs.homography_pair(photo, np.random.default_rng(3), {"size": (320, 240)})
    hard = pairs.homography_pair(photo, np.random.default_rng(3), {"size": (320, 240), "changed_day": 1.0})
    pts = np.random.default_rng(0).uniform([0, 0], [319, 239], (200, 2))
    assert np.allclose(plain.transfer01(pts)[0], hard.transfer01(pts)[0])
    assert (plain.image0 == hard.image0).all() and hard.image1.mean() < plain.image1.mean()
    data = {**default_config["data"], "homography_pairs": 0, "rendered_pairs": 0, "cross_day_pairs": 4,
            "rendered_scenes": ["room"]}
    cross = list(training_pairs(data, "train"))
    assert len(cross) == 4 and all(p.source.startswith("room-changed-day:") for p in cross)
    x = build_matcher("xfeat_mnn", {"max_keypoints": 512})
    right = 0
    for pair in cross:
        f0, f1 = x.extract(pair.image0), x.extract(pair.image1)
        m = x.match(f0, f1)
        p0, p1 = m.points(f0, f1)
        q, ok = pair.transfer01(p0)
        right += int((ok & (np.linalg.norm(q - p1, axis=1) < 3.0)).sum())
    assert right >= 40, right


@pytest.fixture(scope="module")
def sample(photo):
    """One training sample built as match_ros_train builds them (real XFeat + guidance features)."""
    from match_ros.core.models.guidance import Guidance

    pair = pairs.homography_pair(photo, np.random.default_rng(5), {"size": (320, 240)})
    return make_sample(pair, build_matcher("xfeat_mnn", {"max_keypoints": 200}), Guidance())


@pytest.mark.parametrize("kind", ["omniglue", "coam"])
def test_one_training_step_reduces_the_loss(kind, sample):
    torch.manual_seed(0)
    net = build_model(kind, {"n_layers": 2} if kind == "omniglue" else {"n_layers": 1})
    left_new = net.init_from_lighterglue(lighterglue_state())
    assert left_new and all(("guide_proj" in n) or ("out_proj" in n) or ("distinct" in n) or ("log_inv_temp" in n)
                            for n in left_new)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    before = pair_loss(net, kind, sample)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = pair_loss(net, kind, sample)
    assert torch.isfinite(before) and float(after) < float(before.detach())


def test_losses_prefer_the_ground_truth_assignment():
    labels0, labels1 = torch.tensor([1, -1, 0]), torch.tensor([2, 0, -1])
    good = torch.full((4, 4), -9.0)
    good[0, 1] = good[2, 0] = good[1, -1] = good[-1, 2] = -0.01
    bad = good.flip(1)
    assert float(assignment_loss(good, labels0, labels1)) < 0.05 < float(assignment_loss(bad, labels0, labels1))
    net = CoAMNet({**TINY["coam"], "input_dim": 3})
    e = torch.eye(3)[None]
    loss, parts = coam_loss(net, e, e[:, [1, 0, 2]], torch.zeros(1, 3), torch.zeros(1, 3),
                            torch.tensor([1, 0, 2]), torch.tensor([1, 0, 2]))
    loss_w, _ = coam_loss(net, e, e, torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([1, 0, 2]),
                          torch.tensor([1, 0, 2]))
    assert float(loss.detach()) < float(loss_w.detach()) and set(parts) == {"desc", "distinct"}


@pytest.mark.parametrize("kind, name", [("coam", "coam_xfeat"), ("omniglue", "omniglue_xfeat")])
def test_checkpoint_round_trip_and_errors(kind, name, tmp_path, sample):
    net = build_model(kind, {"n_layers": 1})
    path = tmp_path / f"{kind}.pt"
    checkpoint.save_checkpoint(path, kind, net.conf, net.state_dict())
    assert not (tmp_path / f"{kind}.pt.tmp").exists()
    m = build_matcher(name, {"model_weights": str(path), "max_keypoints": 256})
    assert all(torch.equal(a, b) for a, b in zip(m.model.state_dict().values(), net.state_dict().values()))
    other = "omniglue" if kind == "coam" else "coam"
    with pytest.raises(ValueError, match=f"holds a '{kind}' model"):
        checkpoint.load_checkpoint(path, other)
    with pytest.raises(FileNotFoundError, match="match_ros_train"):
        build_matcher(name, {"model_weights": str(tmp_path / "missing.pt")})
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a match_ros"):
        build_matcher(name, {"model_weights": str(tmp_path / "foreign.pt")})


def test_omniglue_rejects_features_of_another_extractor(graf_pair):
    m = build_matcher("omniglue_xfeat", {"max_keypoints": 128})
    x = build_matcher("xfeat_mnn", {"max_keypoints": 128})
    f = x.extract(graf_pair[0])
    with pytest.raises(ValueError, match="XFeat | guidance"):
        m.match(f, f)


# Accuracy floors of the shipped checkpoints at the default configuration (1024 keypoints), below the
# figures of the README's `match_ros_eval_pairs` run:
#   backend          graf correct  graf corner err  aloe within 1 px  motorcycle within 1 px
#   coam_xfeat          45.5 %        2.64 px           44.4 %             39.0 %   (hard-pair checkpoint)
#   omniglue_xfeat      66.0 %        2.27 px           47.4 %             42.8 %   (hard-pair checkpoint)
FLOORS = {
    "coam_xfeat": {"graf_correct": 0.38, "graf_corner": 5.0, "aloe": 0.35, "motorcycle": 0.30},
    "omniglue_xfeat": {"graf_correct": 0.55, "graf_corner": 5.0, "aloe": 0.38, "motorcycle": 0.35},
}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_weights_accuracy_floors(name):
    data = default_data_dir()
    m = build_matcher(name)
    g, a, mc = graf_metrics(m, data), aloe_metrics(m, data), motorcycle_metrics(m, data)
    f = FLOORS[name]
    assert g["correct"] >= f["graf_correct"] and g["corner_err_px"] <= f["graf_corner"], g
    assert a["within_1px"] >= f["aloe"] and a["matches"] > 100, a
    assert mc["within_1px"] >= f["motorcycle"] and mc["matches"] > 100, mc


@pytest.mark.parametrize("name", sorted(checkpoint.SHIPPED))
def test_shipped_weights_record_how_they_were_made(name):
    path = checkpoint.shipped_path(name)
    record = json.loads(path.with_suffix(".json").read_text())
    import hashlib

    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["command"].startswith("match_ros_train --config config/train/")
    assert record["kind"] == name and record["data"]["train_pairs"] > 0
    assert "facade" not in record["config"]["data"].get("rendered_scenes", [])  # held out for evaluation


def test_shipped_weights_found_from_any_working_directory(tmp_path):
    """As a console script sees the package (not from the repository root): the generated interfaces also
    live in a ``match_ros`` folder, and the checkpoints must still be found."""
    import subprocess
    import sys

    code = ("from match_ros.core.features.matcher import build_matcher; "
            "print(build_matcher('coam_xfeat', {'max_keypoints': 64}).conf['max_keypoints'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "64", out.stderr[-2000:]
