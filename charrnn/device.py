"""Device choice (auto/cpu/cuda/mps) and seeding."""

from __future__ import annotations

import torch

from charrnn.errors import CharRNNError


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else MPS when present, else CPU. Raises CharRNNError."""
    if name == "auto":
        if torch.cuda.is_available():
            _allow_tf32()
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharRNNError("--device cuda was asked for but CUDA is not available here: use --device cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CharRNNError("--device mps was asked for but MPS is not available here: use --device cpu.")
    if name not in ("cpu", "cuda", "mps"):
        raise CharRNNError(f"unknown device '{name}': choose auto, cpu, cuda or mps.")
    if name == "cuda":
        _allow_tf32()
    return torch.device(name)


def _allow_tf32() -> None:
    """TF32 tensor cores for fp32 matrix products on CUDA (cuDNN RNNs already use them)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
