"""Device selection: CUDA automatically when a CUDA build and a GPU are present."""
from __future__ import annotations

import contextlib
from typing import Callable

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


def cpu_model() -> str:
    """The CPU's model name, which speed figures and cached measurements are labelled with: /proc/cpuinfo's
    "model name" (x86), else lscpu's "Model name" (arm64 has no such line there), else what platform says."""
    import platform
    import subprocess
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "?"


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 / AMX); elsewhere bf16 is emulated
    and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(device: torch.device, fp16_cuda: bool, bf16_cpu: bool) -> Callable:
    """A factory of the mixed-precision context a backend runs its networks in: float16 autocast on CUDA
    (``fp16_cuda``), bfloat16 autocast on a CPU with native bf16 (``bf16_cpu``), else no autocast."""
    if device.type == "cuda" and fp16_cuda:
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and bf16_cpu and cpu_has_bf16():
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def git_commit() -> str:
    """The commit of the package's checkout that a figure was measured with, "+dirty" when tracked files differ
    from it; "unknown" for an installed package without its git history."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
