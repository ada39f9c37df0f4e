"""Shared fixtures: small generated corpora, a CLI runner in a temporary folder."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

# numba keeps compiled kernels beside charrnn/sample/numpy_int8.py; the tests keep theirs in a temporary folder.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="charrnn-numba-"))
torch.set_num_threads(1)  # tiny models: one thread is fastest and keeps CI steady

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def make_text(n_chars: int = 20_000, seed: int = 0) -> str:
    """A small English-like text with a few non-ASCII characters."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "café", "über", "naïve", "—"]
    lines = []
    while sum(len(line) + 1 for line in lines) < n_chars:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + ".")
    return "\n".join(lines)[:n_chars] + "\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner whose working folder is tmp_path (so checkpoints/ and data/ land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARRNN_RUNS_DIR", raising=False)
    monkeypatch.delenv("CHARRNN_DATA_DIR", raising=False)
    monkeypatch.delenv("CHARRNN_SHAKESPEARE_URL", raising=False)
    return CliRunner()


TINY_TRAIN = ["--hidden", "32", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--quiet"]


@pytest.fixture
def trained(runner: CliRunner, corpus: Path) -> str:
    """A 1x32 LSTM run named 'tiny', trained 30 steps on the generated corpus."""
    from charrnn.cli import app

    result = runner.invoke(app, ["train", str(corpus), "--name", "tiny", "--max-steps", "30", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    return "tiny"
