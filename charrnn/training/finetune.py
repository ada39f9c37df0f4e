"""Fine-tuning: a new run that starts from another run's weights (`train NEW.txt --init-from RUN`).

The parent is only read. The child takes the parent's architecture (every ModelConfig field
except the vocabulary size and the regularisation settings in `FREE_FIELDS`), its vocabulary
extended by the characters of the new corpus it lacks, and its weights with rows added for
those characters; optimizer, schedule and step count start fresh.

    parent vocab  a b c ... z          new corpus symbols  a b é z !
    child vocab   a b c ... z é !      (the parent's, then the new ones in code-point order)

Rows for the new characters (V = vocabulary, E = embedding width, H = hidden size):
    embed.weight (V, E): the mean of the parent's rows plus a little noise. The recurrent
        layers then see an input of the scale and direction they were trained on (an average
        character) instead of a random vector far from every trained row; the noise keeps two
        new characters apart so they can learn different meanings.
    head.weight (V, H): zero, and head.bias (V): `NEW_BIAS_BELOW` under the parent's lowest
        bias. The new characters' logits start constant and low, so the child samples them
        no more often than the parent's rarest character until training has learned where
        they belong; the zero rows still get full gradients from the first step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charrnn.checkpoint import Checkpoint, load_checkpoint
from charrnn.config import ModelConfig
from charrnn.data.corpus import Prepared, file_sha256
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN
from charrnn.rundir import resolve_checkpoint

# ModelConfig fields a child may set for itself: they regularise training and shape no
# weight. Every other field (kind, layers, sizes, and any added later) is architecture,
# taken from the parent.
FREE_FIELDS = ("dropout", "dropout_mask", "weight_drop")
# The option that sets a field, where it is not --field-name.
FLAGS = {"num_layers": "--layers", "hidden_size": "--hidden", "embed_size": "--embed"}
NEW_EMBED_NOISE = 0.1  # std of the noise on new input rows, as a fraction of the rows' own std
NEW_BIAS_BELOW = 2.0  # nats under the parent's lowest output bias for a new character


@dataclass(frozen=True)
class Parent:
    """The run a fine-tuning starts from: its checkpoint and how to name it."""

    checkpoint: Checkpoint
    path: Path  # the checkpoint file read
    name: str  # the run folder's name, or the file's name when it is not in a run folder
    sha256: str  # of the checkpoint file


def load_parent(init_from: str, runs_dir: Path) -> Parent:
    """The best checkpoint of run `init_from` (name, folder or file), checked loadable and
    finite. Raises CharRNNError (one line, naming --init-from)."""
    try:
        path = resolve_checkpoint(str(init_from), Path(runs_dir), prefer="best")
        sha = file_sha256(path)
        ckpt = load_checkpoint(path)
        with torch.device("meta"):  # the tensors must be those of the stored config
            expected = CharRNN(ckpt.model_config).state_dict()
        for key, want in expected.items():
            got = ckpt.model_state.get(key)
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                raise CharRNNError(f"checkpoint '{path}' does not match its config at tensor '{key}'.")
    except CharRNNError as exc:
        raise CharRNNError(f"--init-from: {exc}") from None
    if ckpt.nonfinite:
        raise CharRNNError(
            f"--init-from: checkpoint '{path}' has non-finite weights ({', '.join(ckpt.nonfinite[:3])}): "
            "start from another checkpoint of that run."
        )
    in_run = path.suffix == ".pt" and (path.parent / "config.json").is_file()
    return Parent(ckpt, path.resolve(), path.parent.name if in_run else path.name, sha)


def take_architecture(parent: Parent, given: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """`given` with the parent's architecture fields set. A given value that differs from the
    parent's is an error naming its option: the weights fix it."""
    if preset is not None:
        raise CharRNNError("--preset sets the model size, which --init-from takes from the parent run: drop --preset.")
    cfg = parent.checkpoint.model_config
    arch = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(ModelConfig)
        if f.name != "vocab_size" and f.name not in FREE_FIELDS
    }
    for key, value in arch.items():
        asked = given.get(key)
        if key == "embed_size" and asked is not None:  # 0 means "same as --hidden"
            same = (asked or cfg.hidden_size) == cfg.embedding_size
        else:
            same = asked is None or asked == value
        if not same:
            flag = FLAGS.get(key, "--" + key.replace("_", "-"))
            raise CharRNNError(
                f"{flag} {asked} contradicts the parent run '{parent.name}' ({flag} {value}): "
                f"--init-from takes the architecture from it; drop {flag}."
            )
    return {**given, **arch}


def extend_vocab(parent: Vocab, corpus: Vocab) -> Vocab:
    """The parent's vocabulary followed by the corpus's symbols it lacks, in the corpus's order."""
    known = set(parent.chars)
    return Vocab(parent.chars + tuple(c for c in corpus.chars if c not in known), parent.byte_level)


def extend_corpus(
    parent: Parent, data: Prepared, prepare: Callable[[list[Path], Vocab], Prepared]
) -> tuple[Prepared, list[str]]:
    """`data` encoded with the parent's vocabulary extended by its new symbols (through
    `prepare(files, vocab)`), and the symbols added."""
    vocab = parent.checkpoint.vocab
    if vocab.byte_level != data.vocab.byte_level:
        kinds = ("bytes", "characters") if vocab.byte_level else ("characters", "bytes")
        raise CharRNNError(
            f"the parent run '{parent.name}' reads {kinds[0]} and this corpus is read as {kinds[1]}: "
            f"{'add' if vocab.byte_level else 'drop'} --encoding bytes."
        )
    extended = extend_vocab(vocab, data.vocab)
    added = list(extended.chars[len(vocab) :])
    if extended == data.vocab:
        return data, added
    return prepare([Path(p) for p, _ in data.files] or [data.source], extended), added


def transplant(parent: Parent, cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """The child's initial weights: the parent's, with rows for the new characters (module
    docstring). `cfg` is the child's config; the noise is drawn from `seed`, so every rank
    and every repeat builds the same weights."""
    old = parent.checkpoint.model_state
    old_vocab = len(parent.checkpoint.vocab)
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        expected = CharRNN(cfg).state_dict()
    weights: dict[str, torch.Tensor] = {}
    for key, want in expected.items():
        have = old[key].detach().float()
        if have.shape == want.shape:
            weights[key] = have.clone()
            continue
        added = want.shape[0] - old_vocab
        if have.shape[0] != old_vocab or have.shape[1:] != want.shape[1:] or added <= 0:
            raise CharRNNError(f"cannot fine-tune '{parent.name}': its tensor '{key}' has shape {tuple(have.shape)}.")
        if key == "embed.weight":  # (V, E)
            noise = torch.randn((added, have.shape[1]), generator=gen) * have.std(0, correction=0) * NEW_EMBED_NOISE
            rows = have.mean(0) + noise
        elif key == "head.weight":  # (V, H)
            rows = torch.zeros((added, have.shape[1]))
        elif key == "head.bias":  # (V,)
            rows = torch.full((added,), float(have.min()) - NEW_BIAS_BELOW)
        else:
            raise CharRNNError(f"cannot fine-tune '{parent.name}': no rule to extend tensor '{key}'.")
        weights[key] = torch.cat([have, rows], 0)
    return weights


def parent_record(parent: Parent, added: list[str]) -> dict[str, Any]:
    """What the child's config.json and checkpoints keep of the parent (plain values only)."""
    progress = parent.checkpoint.progress
    best = progress.get("best_val")
    step = progress.get("step")
    return {
        "name": parent.name,
        "path": str(parent.path),
        "step": int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None,
        "best_val": float(best) if isinstance(best, (int, float)) and math.isfinite(best) else None,
        "sha256": parent.sha256,
        "vocab_size": len(parent.checkpoint.vocab),
        "added_chars": "".join(added),
        "added": len(added),
    }


def describe_added(parent: Parent, added: list[str]) -> str:
    """The one line that reports the characters added to the parent's vocabulary."""
    size = len(parent.checkpoint.vocab)
    if not added:
        return f"fine-tuning from '{parent.name}': 0 new characters, its vocabulary of {size} covers the corpus."
    shown = ", ".join(repr(c) for c in added[:20]) + (f" and {len(added) - 20} more" if len(added) > 20 else "")
    return f"fine-tuning from '{parent.name}': {len(added)} new character(s) added to its vocabulary of {size}: {shown}"
