"""What several test files share: generated texts, the tiny training options, the one-line
error check, saved models and run set-ups. Fixtures live in conftest.py."""

from __future__ import annotations

import random
from pathlib import Path

from charrnn.data.vocab import build_vocab

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"

VOCAB = build_vocab("abcdefgh \n")  # the alphabet of saved_model

TINY_TRAIN = ["--hidden", "32", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--quiet"]


def make_text(n_chars: int = 20_000, seed: int = 0) -> str:
    """A small English-like text with a few non-ASCII characters."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "café", "über", "naïve", "—"]
    lines = []
    while sum(len(line) + 1 for line in lines) < n_chars:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ".")
    return "\n".join(lines)[:n_chars] + "\n"


def one_line_error(result, pattern: str) -> None:
    """A CliRunner result that failed as a user should see it: exit 1, one `error:` line on
    stderr containing `pattern` (case-insensitive), no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert pattern.lower() in lines[0].lower(), lines[0]


def saved_model(tmp_path: Path, kind: str, layers: int = 2, hidden: int = 24, embed: int = 0):
    """An untrained `kind` model over the letters a-h, its weights scaled up like trained
    ones (so gates saturate somewhere), saved as tmp_path/<kind>.pt: (model, path)."""
    import torch

    from charrnn.checkpoint import Checkpoint, save_checkpoint
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.models.charrnn import CharRNN

    torch.manual_seed(7)
    cfg = ModelConfig(vocab_size=len(VOCAB), model=kind, num_layers=layers, hidden_size=hidden, embed_size=embed)
    model = CharRNN(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    path = tmp_path / f"{kind}.pt"
    save_checkpoint(Checkpoint(cfg, TrainConfig(), VOCAB, model.state_dict()), path)
    return model, path


def tiny_setup(tmp_path: Path, corpus: Path, run: Path, resume: bool = False, **train: object):
    """The arguments Trainer takes for a 1x16 LSTM run in `run` on `corpus` (or, with
    resume=True, for continuing it two more steps)."""
    from charrnn.checkpoint import load_checkpoint
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.corpus import prepare
    from charrnn.rundir import RunPaths

    data = prepare(corpus, tmp_path / "data")
    info = {"path": str(corpus), "sha256": data.sha256, "encoding": "utf-8", "chars": len(data.tokens)}
    if resume:
        ckpt = load_checkpoint(run / "last.pt")
        cfg = TrainConfig(**{**ckpt.train_config.__dict__, "max_steps": ckpt.progress["step"] + 2, "time_budget": 0.0})
        return ckpt.model_config, cfg, data, RunPaths(run), info, ckpt
    mcfg = ModelConfig(vocab_size=len(data.vocab), num_layers=1, hidden_size=16)
    cfg = TrainConfig(**{"batch_size": 4, "seq_len": 16, "max_steps": 20, "eval_every": 5, "device": "cpu", **train})
    return mcfg, cfg, data, RunPaths(run), info, None
