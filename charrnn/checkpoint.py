"""One checkpoint file: weights, configs, vocab, optimizer and progress, format version.

Files are written atomically (temp file in the same folder, fsync, rename) and
read only with `torch.load(weights_only=True)`, so loading never runs code.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from charrnn.config import FORMAT_VERSION, ModelConfig, TrainConfig, from_dict
from charrnn.errors import CharRNNError
from charrnn.files import atomic_write
from charrnn.model import CharRNN
from charrnn.vocab import Vocab

__all__ = ["FORMAT_VERSION", "Checkpoint", "atomic_write", "build_model", "load_checkpoint", "save_checkpoint"]


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
    """Read a checkpoint on the CPU. Raises CharRNNError for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise CharRNNError(f"checkpoint '{path}' does not exist.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CharRNNError(
            f"refused to load '{path}': it holds objects other than tensors and plain data "
            f"({str(exc).splitlines()[0][:120]}); only load checkpoints written by charrnn."
        )
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CharRNNError(
            f"cannot read checkpoint '{path}': the file is truncated or corrupt ({type(exc).__name__})."
        )
    if not isinstance(data, dict) or "format" not in data:
        raise CharRNNError(f"'{path}' is not a charrnn checkpoint.")
    version = data["format"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CharRNNError(
            f"checkpoint '{path}' has format {version}, newer than this charrnn reads "
            f"({FORMAT_VERSION}): upgrade charrnn."
        )
    try:
        hidden = data.get("hidden")
        ckpt = Checkpoint(
            model_config=from_dict(ModelConfig, data["model_config"], version),
            train_config=from_dict(TrainConfig, data["train_config"], version),
            vocab=Vocab.from_dict(data["vocab"]),
            model_state=data["model"],
            optimizer_state=data.get("optimizer"),
            progress=data.get("progress") or {},
            hidden=tuple(hidden) if hidden is not None else None,
            rng=data.get("rng") or {},
            corpus=data.get("corpus") or {},
            path=path,
        )
    except KeyError as exc:
        raise CharRNNError(f"checkpoint '{path}' (format {version}) lacks {exc}: it is damaged.")
    if len(ckpt.vocab) != ckpt.model_config.vocab_size:
        raise CharRNNError(
            f"checkpoint '{path}' is inconsistent: its vocabulary has {len(ckpt.vocab)} symbols "
            f"but its model config says vocab_size={ckpt.model_config.vocab_size}."
        )
    return ckpt


def build_model(ckpt: Checkpoint) -> CharRNN:
    """The model of `ckpt` with its weights, in eval mode on the CPU.

    Raises CharRNNError naming the first tensor whose name or shape does not
    match the stored config.
    """
    model = CharRNN(ckpt.model_config)
    expected = model.state_dict()
    where = ckpt.path or "checkpoint"
    for name in sorted(set(expected) | set(ckpt.model_state)):
        if name not in ckpt.model_state:
            raise CharRNNError(f"{where} does not match its config: tensor '{name}' is missing.")
        if name not in expected:
            raise CharRNNError(f"{where} does not match its config: unexpected tensor '{name}'.")
        got, want = ckpt.model_state[name], expected[name]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CharRNNError(
                f"{where} does not match its config: '{name}' has shape {shape}, "
                f"the config ({ckpt.model_config.model}, vocab {ckpt.model_config.vocab_size}, "
                f"hidden {ckpt.model_config.hidden_size}) needs {tuple(want.shape)}."
            )
    model.load_state_dict(ckpt.model_state)
    model.eval()
    return model
