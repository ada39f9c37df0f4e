"""Device choice (auto/cpu/cuda/mps), what a device can do (bf16), and seeding."""

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


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 autocast has native kernels: CUDA, or a CPU whose oneDNN has a bf16
    path (AVX-512 BF16 or AMX). Elsewhere torch emulates it, slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def check_precision(precision: str, device: torch.device) -> bool:
    """True when training autocasts to bf16; raises CharRNNError where it cannot."""
    if precision == "bf16" and not bf16_supported(device):
        raise CharRNNError(
            f"--precision bf16 needs a CUDA device or a CPU with bf16 instructions (AVX-512 BF16 or AMX); "
            f"this {device.type} has none: use --precision fp32 here."
        )
    return precision == "bf16"
