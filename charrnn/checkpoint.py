"""One checkpoint file: weights, configs, vocab, optimizer and progress, format version.

Files are written atomically (temp file in the same folder, fsync, rename) and
read only with `torch.load(weights_only=True)`, so loading never runs code, after
charrnn.ptfile has checked what the file may cost and every field's type.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from charrnn.config import FORMAT_VERSION, ModelConfig, TrainConfig, printable
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.exporting.safetensors_io import is_safetensors, read_model
from charrnn.files import atomic_write
from charrnn.limits import TooLargeError, check_memory, model_nbytes
from charrnn.models.charrnn import CharRNN
from charrnn.ptfile import open_archive, read_fields

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "atomic_write",
    "build_model",
    "load_checkpoint",
    "nonfinite_tensors",
    "save_checkpoint",
]


@dataclass
class Checkpoint:
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocab
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    # step, epoch, cursor, elapsed, best_val, ... (plain numbers only)
    progress: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[torch.Tensor, ...] | None = None  # carried training state, each (L, B, H)
    rng: dict[str, Any] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)  # name, sha256, encoding
    path: Path | None = None
    nonfinite: list[str] = field(default_factory=list)  # model tensors holding NaN or inf (set on load)


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    """Write `ckpt` to `path` atomically: a crash leaves the old file or the new one."""
    payload = {
        "format": FORMAT_VERSION,
        "model_config": dataclasses.asdict(ckpt.model_config),
        "train_config": dataclasses.asdict(ckpt.train_config),
        "vocab": ckpt.vocab.to_dict(),
        "model": {k: v.detach().cpu() for k, v in ckpt.model_state.items()},
        "optimizer": _to_cpu(ckpt.optimizer_state),
        "progress": dict(ckpt.progress),
        "hidden": _to_cpu(list(ckpt.hidden)) if ckpt.hidden is not None else None,
        "rng": _to_cpu(ckpt.rng),
        "corpus": dict(ckpt.corpus),
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint on the CPU. Raises CharRNNError, and only that, for anything unusable.

    The file is checked without torch first (charrnn.ptfile: what each member may cost,
    every field's type), then read by `torch.load(weights_only=True)` from the same open
    file. `Checkpoint.nonfinite` names the model tensors holding NaN or infinity.
    """
    path = Path(path)
    if not path.is_file():
        raise CharRNNError(f"checkpoint '{path}' does not exist.")
    if is_safetensors(path):
        return _load_safetensors(path)
    try:
        with open(path, "rb") as f:
            fields = read_fields(open_archive(f, str(path)).payload, str(path))
            f.seek(0)
            data = torch.load(f, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CharRNNError(
            f"cannot read checkpoint '{path}': {exc.strerror or exc}; check the file and its permissions."
        )
    except pickle.UnpicklingError as exc:
        raise CharRNNError(
            f"refused to load '{path}': it holds objects other than tensors and plain data "
            f"({(str(exc).splitlines() or [''])[0][:120]}); only load checkpoints written by charrnn."
        )
    except CharRNNError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        if isinstance(exc, MemoryError) or "alloc" in str(exc).lower():
            raise TooLargeError(
                f"reading checkpoint '{path}' ran out of memory: free some, or load it on a larger machine."
            )
        raise CharRNNError(f"cannot read checkpoint '{path}': the file is truncated or corrupt ({type(exc).__name__}).")
    # read_fields checked this payload's structure on the same bytes; torch.load built it again.
    try:
        state = dict(data["model"])
        hidden = data.get("hidden")
        rng = data.get("rng") or {}
        if not all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in state.values()):
            raise TypeError("model tensors")
        if "torch" in rng and rng["torch"].numel() != torch.get_rng_state().numel():
            raise ValueError("rng.torch")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CharRNNError(f"checkpoint '{path}' is damaged ({exc}): resume from another checkpoint.")
    return Checkpoint(
        model_config=fields.model_config,
        train_config=fields.train_config,
        vocab=fields.vocab,
        model_state=state,
        optimizer_state=data.get("optimizer"),
        progress=data.get("progress") or {},
        hidden=tuple(hidden) if hidden is not None else None,
        rng=rng,
        corpus=data.get("corpus") or {},
        path=path,
        nonfinite=nonfinite_tensors(state),
    )


def _load_safetensors(path: Path) -> Checkpoint:
    """A weights-only checkpoint from a safetensors model (charrnn.exporting.safetensors_io): no
    optimizer, default training settings; build_model checks the tensors against the config."""
    cfg, arrays, vocab, meta = read_model(path)
    state = {name: torch.from_numpy(a) for name, a in arrays.items()}
    progress: dict[str, Any] = {}
    for key, kind in (("best_val", float), ("step", int)):
        try:
            if key in meta:
                progress[key] = kind(meta[key])
        except ValueError:
            pass  # a label only: an unreadable one is left out
    return Checkpoint(
        model_config=cfg,
        train_config=TrainConfig(),
        vocab=vocab,
        model_state=state,
        progress=progress,
        corpus={"exported_from": meta["run"]} if meta.get("run") else {},
        path=path,
        nonfinite=nonfinite_tensors(state),
    )


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors in `state` holding NaN or infinity, in order."""
    return [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def build_model(ckpt: Checkpoint) -> CharRNN:
    """The model of `ckpt` with its weights, in eval mode on the CPU.

    Refuses (CharRNNError) a model larger than the memory available, before allocating it,
    and names the first tensor whose name or shape does not match the stored config.
    """
    cfg = ckpt.model_config
    where = ckpt.path or "checkpoint"
    check_memory(
        model_nbytes(cfg),
        f"the {cfg.num_layers}x{cfg.hidden_size} {cfg.model} model of {where}",
        "load it on a machine with more memory, or free some.",
    )
    with torch.device("meta"):  # shapes without allocating
        expected = CharRNN(cfg).state_dict()
    for name in sorted(set(expected) | set(ckpt.model_state)):
        if name not in ckpt.model_state:
            raise CharRNNError(f"{where} does not match its config: tensor '{name}' is missing.")
        if name not in expected:
            raise CharRNNError(f"{where} does not match its config: unexpected tensor '{printable(name)[:60]}'.")
        got, want = ckpt.model_state[name], expected[name]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CharRNNError(
                f"{where} does not match its config: '{name}' has shape {shape}, "
                f"the config ({cfg.model}, vocab {cfg.vocab_size}, "
                f"hidden {cfg.hidden_size}) needs {tuple(want.shape)}."
            )
    try:
        model = CharRNN(cfg)
    except (MemoryError, RuntimeError):  # torch's CPU allocator raises RuntimeError
        raise TooLargeError(f"the model of {where} did not fit in memory: free some, or load it on a larger machine.")
    try:
        model.load_state_dict(ckpt.model_state)
    except (RuntimeError, TypeError) as exc:
        raise CharRNNError(f"{where} does not match its config ({(str(exc).splitlines() or [''])[0][:120]}).")
    model.eval()
    return model
