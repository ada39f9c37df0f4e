"""Fuzzing with hypothesis: odd corpora, odd text and odd options end in output or `error:`, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.corpus import prepare
from charrnn.data.vocab import build_vocab
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(raw=st.binary(max_size=300), encoding=st.sampled_from(["utf-8", "latin-1", "bytes", "utf-16", "cp1252"]))
def test_arbitrary_bytes_as_corpus(tmp_path_factory, raw: bytes, encoding: str) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "c.txt"
    path.write_bytes(raw)
    try:
        data = prepare(path, folder / "data", encoding)
    except CharRNNError:
        return
    assert len(data.tokens) >= 1 and int(data.tokens.max()) < len(data.vocab)


@FAST
@given(text=st.text(min_size=1, max_size=200))
def test_arbitrary_unicode_round_trips(text: str) -> None:
    vocab = build_vocab(text)
    assert vocab.decode(vocab.encode(text)) == text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    vocab = build_vocab("abcdefghijklmnopqrstuvwxyz ,.\n'ABC")
    cfg = ModelConfig(vocab_size=len(vocab), num_layers=1, hidden_size=8)
    torch.manual_seed(0)
    ckpt = Checkpoint(cfg, TrainConfig(), vocab, CharRNN(cfg).state_dict())
    save_checkpoint(ckpt, runs / "r" / "best.pt")
    return runs


@FAST
@given(
    temp=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)),
    top_k=st.integers(-5, 100),
    top_p=st.floats(allow_nan=True, allow_infinity=True),
    length=st.integers(-3, 30),
    prime=st.text(max_size=20),
)
def test_arbitrary_sample_options(
    run_dir: Path, temp: float, top_k: int, top_p: float, length: int, prime: str
) -> None:
    args = [
        "sample",
        "r",
        "--runs-dir",
        str(run_dir),
        "--temp",
        repr(temp),
        "--top-k",
        str(top_k),
        "--top-p",
        repr(top_p),
        "--length",
        str(length),
        "--seed",
        "1",
    ]
    if "\x00" not in prime:
        args += ["--prime", prime]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 1:
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
