"""The inspection commands in bf16 and int8: close to fp32, chosen only where they apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import charrnn
import charrnn.neurons.precision as precision
from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import build_vocab
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN
from charrnn.neurons.activations import Recorder, activation_kinds, encode_text, run_text
from charrnn.neurons.features import compute_feature
from charrnn.neurons.precision import STEP_MIN_HIDDEN, resolve_precision
from charrnn.neurons.unitstats import UnitScan
from charrnn.sample.step_base import int8_engine

TEXT = 'He said, "come here." She did not.\nThey left at noon; "why?" asked the old man.\n\n' * 40
LOWERED = ["bf16"] + (["int8"] if int8_engine() else [])


def wide_model(vocab: int, kind: str = "lstm", hidden: int = STEP_MIN_HIDDEN) -> CharRNN:
    """A random model with recurrent weights scaled up, so its states move as a trained one's do."""
    torch.manual_seed(5)
    model = CharRNN(ModelConfig(vocab_size=vocab, model=kind, num_layers=2, hidden_size=hidden)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight_hh" in name or "weight_ih" in name:
                p.mul_(4.0)
    return model


def record(model: CharRNN, ids: np.ndarray, how: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every activation over ids and each unit's correlation with inside-quotes, in precision `how`."""
    kinds = activation_kinds(model)
    every = Recorder(kinds, 2, len(ids))
    scan = UnitScan(kinds, 2, compute_feature(TEXT, "inside-quotes")[:, None])
    run_text(model, ids, [every, scan], chunk_len=64, streams=2, precision=how)
    return every.values, {k: v[..., 0] for k, v in scan.correlations(0).items()}


@pytest.mark.parametrize("how", LOWERED)
def test_lowered_precision_activations_and_correlations_stay_close_to_fp32(how: str) -> None:
    vocab = build_vocab(TEXT)
    _, ids = encode_text(TEXT, vocab)
    model = wide_model(len(vocab))
    exact, exact_r = record(model, ids, "fp32")
    got, got_r = record(model, ids, how)
    for kind, want in exact.items():
        diff = np.abs(got[kind] - want)
        scale = max(1.0, float(np.abs(want).max()))  # cells are not bounded by 1
        assert diff.mean() < 0.01 * scale, (kind, diff.mean())
        assert diff.max() < 0.25 * scale, (kind, diff.max())
        np.testing.assert_allclose(got_r[kind], exact_r[kind], atol=0.02, err_msg=kind)
    best = [max(exact_r, key=lambda k: np.abs(exact_r[k]).max())]
    assert np.argmax(np.abs(got_r[best[0]])) == np.argmax(np.abs(exact_r[best[0]]))  # the same best unit


def test_auto_lowers_only_wide_lstms_and_prefers_bf16_with_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision(wide_model(9, hidden=16), "auto") == "fp32"
    assert resolve_precision(wide_model(9, kind="gru"), "auto") == "fp32"
    assert resolve_precision(wide_model(9, kind="peephole-lstm"), "auto") == "fp32"
    wide = wide_model(9)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert resolve_precision(wide, "auto") == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_precision(wide, "auto") == ("int8" if int8_engine() else "fp32")
    assert resolve_precision(wide, "fp32") == "fp32"


@pytest.mark.parametrize(
    ("kind", "hidden", "asked"), [("lstm", 16, "int8"), ("gru", 256, "bf16"), ("lstm", 256, "fp16")]
)
def test_a_precision_that_does_not_apply_is_refused(kind: str, hidden: int, asked: str) -> None:
    with pytest.raises(CharRNNError, match="fp32"):
        resolve_precision(wide_model(9, kind=kind, hidden=hidden), asked)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("precision")
    (root / "book.txt").write_text(TEXT, encoding="utf-8")
    vocab = build_vocab(TEXT)
    paths = []
    for hidden in (16, STEP_MIN_HIDDEN):
        model = wide_model(len(vocab), hidden=hidden)
        path = root / f"h{hidden}.pt"
        save_checkpoint(Checkpoint(model.cfg, TrainConfig(), vocab, model.state_dict()), path)
        paths.append(path)
    return paths[0], paths[1], root / "book.txt"


def test_commands_say_when_activations_are_not_exact_and_fp32_gives_the_exact_ranking(
    runs: tuple[Path, Path, Path],
) -> None:
    _, wide, book = runs
    runner = CliRunner()
    base = ["cells", str(wide), str(book), "--top", "3", "--no-color", "--excerpt", "0"]
    exact = runner.invoke(app, [*base, "--precision", "fp32"])
    assert exact.exit_code == 0, exact.output
    assert "precision" not in exact.stderr
    lowered = runner.invoke(app, [*base, "--precision", "bf16"])
    assert lowered.exit_code == 0, lowered.output
    assert "bf16 products (--precision fp32: exact)" in lowered.stderr
    first = [line.split("\t")[1:3] for line in exact.stdout.splitlines()[1:2]]
    assert [line.split("\t")[1:3] for line in lowered.stdout.splitlines()[1:2]] == first  # the same best layer and unit
    for command in (["gates", str(wide), str(book)], ["inspect", str(wide), "--file", str(book), "--unit", "3"]):
        result = runner.invoke(app, [*command, "--precision", "bf16", "--no-color"])
        assert result.exit_code == 0, result.output
        assert "bf16 products" in result.stderr


def test_a_lowered_precision_on_a_narrow_model_is_one_error_line(runs: tuple[Path, Path, Path]) -> None:
    narrow, _, book = runs
    result = CliRunner().invoke(app, ["gates", str(narrow), str(book), "--precision", "int8"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "use fp32 or auto" in lines[0], result.stderr


def test_the_python_api_takes_the_same_precisions(runs: tuple[Path, Path, Path]) -> None:
    narrow, wide, _ = runs
    model = charrnn.load(wide)
    exact = model.activations(TEXT[:400])
    lowered = model.activations(TEXT[:400], precision="bf16")
    assert set(lowered) == set(exact)
    np.testing.assert_allclose(lowered["hidden"], exact["hidden"], atol=0.05)
    with pytest.raises(CharRNNError, match="use fp32 or auto"):
        charrnn.load(narrow).activations(TEXT[:400], precision="int8")
