"""Shared fixtures: small generated corpora, a CLI runner in a temporary folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, make_text
from typer.testing import CliRunner

# numba keeps compiled kernels beside charrnn/sample/numpy_int8.py; the tests keep theirs in a temporary folder.
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="charrnn-numba-"))
torch.set_num_threads(1)  # tiny models: one thread is fastest and keeps CI steady


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


@pytest.fixture
def trained(runner: CliRunner, corpus: Path) -> str:
    """A 1x32 LSTM run named 'tiny', trained 30 steps on the generated corpus."""
    from charrnn.cli import app

    result = runner.invoke(app, ["train", str(corpus), "--name", "tiny", "--max-steps", "30", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    return "tiny"
