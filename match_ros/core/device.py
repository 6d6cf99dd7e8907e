"""Device selection: CUDA automatically when a CUDA build and a GPU are present."""
from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' or 'cuda:N' without a GPU is an error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but torch.cuda.is_available() is False "
                             f"(torch {torch.__version__}); use 'auto' or 'cpu'")
        return torch.device(name)
    raise ValueError(f"unknown device '{name}', expected one of {DEVICE_CHOICES} or 'cuda:N'")
