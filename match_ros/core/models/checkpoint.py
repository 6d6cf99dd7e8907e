"""Checkpoints of our trained matchers: one ``.pt`` (format tag, model kind and configuration, weights) with a
``.json`` beside it recording how it was made (configuration, command line, data, losses)."""
from __future__ import annotations

from pathlib import Path

import torch

FORMAT = "match_ros.learned/1"
SHIPPED = {"coam": "coam_xfeat.pt", "omniglue": "omniglue_xfeat.pt", "nemf": "nemf_dense.pt",
           "a2net": "a2net_align.pt"}


def shipped_path(kind: str) -> Path:
    """The checkpoint shipped inside the installed package (``match_ros/weights``).

    Located from this file, not with importlib.resources: ``match_ros`` spans two folders in the pip-wheel
    environment (this package and the generated interfaces, joined by pkgutil.extend_path), and
    ``importlib.resources.files`` may answer with the interfaces' folder."""
    return Path(__file__).resolve().parents[2] / "weights" / SHIPPED[kind]


def save_checkpoint(path: str | Path, kind: str, model_conf: dict, state_dict: dict) -> None:
    """Write atomically (temporary file + rename): a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "kind": kind, "model_conf": dict(model_conf),
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path | None, kind: str) -> tuple[dict, dict]:
    """(model_conf, state_dict) of a ``kind`` checkpoint; ``path`` None: the shipped one.
    FileNotFoundError / ValueError with what to do when it is missing or of another kind."""
    path = Path(path).expanduser() if path else shipped_path(kind)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint not found: {path} (train one with "
                                f"`match_ros_train --config config/train/{SHIPPED[kind][:-3]}.yaml`)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a match_ros learned-matcher checkpoint (format {FORMAT})")
    if ckpt.get("kind") != kind:
        raise ValueError(f"{path} holds a '{ckpt.get('kind')}' model, expected '{kind}'")
    return ckpt["model_conf"], ckpt["state_dict"]
