"""Global descriptor: offline MobileNetV2 weights loaded strictly, GeM descriptor contract, determinism."""
import cv2
import numpy as np
import pytest
import torch

from match_ros.core.models import mobilenet
from match_ros.core.models.mobilenet import MobileNetV2, default_weights_path, load_mobilenet_v2
from match_ros.core.relocalization.global_desc import GlobalDescriptor
from match_ros.sim import load_photos


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # predictable run time on a busy runner (conftest)


@pytest.fixture(scope="module")
def desc():
    return GlobalDescriptor()


@pytest.fixture(scope="module")
def photos():
    return load_photos(names=("baboon", "fruits", "building", "board"))


def test_shape_dtype_unit_norm(desc, photos):
    for img in photos.values():
        d = desc(img)
        assert d.shape == (1280,) and d.dtype == np.float32
        assert abs(np.linalg.norm(d) - 1.0) < 1e-5
        assert np.all(d >= 0)  # GeM of ReLU6 features
    gray = cv2.cvtColor(photos["board"], cv2.COLOR_RGB2GRAY)
    assert desc(gray).shape == (1280,)
    assert desc.dim == 1280


def test_invalid_input_raises(desc):
    with pytest.raises(ValueError):
        desc(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        desc(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError):
        GlobalDescriptor({"no_such_key": 1})
    with pytest.raises(ValueError):
        GlobalDescriptor({"layer": 19})


def test_same_image_identical_and_deterministic(desc, photos):
    img = photos["fruits"]
    a, b = desc(img), desc(img.copy())
    assert np.array_equal(a, b)
    other = GlobalDescriptor()  # a second instance gives the same bits
    assert np.array_equal(a, other(img))
    assert desc.identity == other.identity


def test_descriptor_discriminates(desc, photos):
    """The same photo under a photometric change is closer than any other photo."""
    names = list(photos)
    base = np.stack([desc(photos[n]) for n in names])
    for i, n in enumerate(names):
        changed = np.clip(255.0 * 1.2 * (photos[n] / 255.0) ** 0.8, 0, 255).astype(np.uint8)
        sims = base @ desc(changed)
        assert int(np.argmax(sims)) == i, (n, sims)
        assert sims[i] > 0.9


def test_weights_load_strict_and_classify(photos):
    """Own definition has exactly torchvision's keys; with the ImageNet head it classifies a baboon as one."""
    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    own = set(MobileNetV2(18).state_dict()) | {"classifier.1.weight", "classifier.1.bias"}
    assert own == set(state)
    model = load_mobilenet_v2()
    x = GlobalDescriptor({"short_side": 224}).backbone.preprocess(photos["baboon"])
    with torch.no_grad():
        logits = model(x).mean(dim=(2, 3)) @ state["classifier.1.weight"].t() + state["classifier.1.bias"]
    assert int(logits.argmax()) == 372  # ImageNet class 372: baboon


def test_checkpoint_with_wrong_keys_rejected(tmp_path):
    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    missing = dict(state)
    missing.pop("features.5.conv.1.0.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing"):
        load_mobilenet_v2(tmp_path / "missing.pth")
    extra = dict(state, **{"features.19.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected"):
        load_mobilenet_v2(tmp_path / "extra.pth")


def test_missing_weights_file_not_found(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        GlobalDescriptor({"weights": str(tmp_path / "nope.pth")})
    monkeypatch.setattr(mobilenet, "WEIGHTS_FILE", "no_such_file.pth")
    with pytest.raises(FileNotFoundError, match="no_such_file.pth"):
        GlobalDescriptor()
    monkeypatch.setattr(mobilenet, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(FileNotFoundError, match="not installed"):
        default_weights_path()


def test_intermediate_layer_and_identity(photos):
    d17 = GlobalDescriptor({"layer": 17, "short_side": 192})
    v = d17(photos["building"])
    assert v.shape == (320,) and abs(np.linalg.norm(v) - 1) < 1e-5
    assert d17.identity != GlobalDescriptor().identity
    assert "layer=17" in d17.identity and "dim=320" in d17.identity
