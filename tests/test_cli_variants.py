"""mlstm, mogrifier-lstm and ln-lstm through every command a run meets: train, resume, sample
(each engine and weight mode, batches, beam), eval, info, inspect, cells, gates, view,
gradients, export and sampling from the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_text
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.sample.fast_step import available_weight_modes

SMALL = ["--hidden", "16", "--layers", "2", "--batch-size", "4", "--seq-len", "16", "--quiet"]


def ok(runner: CliRunner, *args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


@pytest.mark.parametrize("kind", ["mlstm", "mogrifier-lstm", "ln-lstm"])
def test_every_command_works_with_the_kind(runner: CliRunner, tmp_path: Path, kind: str) -> None:
    quoted = "".join(f'{"x" * (i % 7)} said "no {i}" and went.\n' for i in range(30))
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(5000) + quoted, encoding="utf-8")
    ok(runner, "train", corpus, "--name", "r", "--model", kind, "--max-steps", 6, "--dropout", "0.1", *SMALL)
    ok(runner, "train", "--resume", "r", "--max-steps", 9, "--quiet")
    (run,) = json.loads(ok(runner, "runs", "--json"))
    assert (run["model"], run["step"]) == (kind, 9)
    assert kind in ok(runner, "info", "r")

    text = ok(runner, "sample", "r", "--length", 30, "--seed", 4, "--prime", "The")
    assert text.startswith("The") and len(text.rstrip("\n")) == 33
    assert ok(runner, "sample", "r", "--length", 30, "--seed", 4, "--prime", "The", "--engine", "torch") == text
    for weights in available_weight_modes("cpu"):
        assert len(ok(runner, "sample", "r", "--length", 20, "--weights", weights, "--seed", 1)) >= 20
    many = ok(runner, "sample", "r", "--length", 12, "--seed", 7, "--num-samples", 3, "--temp", "0.9")
    lone = ok(runner, "sample", "r", "--length", 12, "--seed", 8, "--temp", "0.9")
    assert lone.strip("\n") in many
    assert len(ok(runner, "sample", "r", "--length", 10, "--beam", 3)) >= 10

    scores = json.loads(ok(runner, "eval", "r", corpus, "--json"))
    assert 0 < scores["nats_per_char"] < 5
    probe = tmp_path / "probe.txt"
    probe.write_text(quoted, encoding="utf-8")
    table = ok(runner, "inspect", "r", "--text", "the cat", "--layer", 1, "--unit", 2, "--kind", "forget")
    assert table.splitlines()[0] == "pos\tchar\tL1.forget.2" and len(table.splitlines()) == 8
    ranked = [line.split("\t") for line in ok(runner, "cells", "r", probe).splitlines()]
    assert ranked[0] == ["rank", "layer", "unit", "kind", "r"] and len(ranked) == 11
    assert {row[3] for row in ranked[1:]} <= {"input", "forget", "output", "cell", "hidden"}
    assert "forget" in ok(runner, "gates", "r", probe)
    ok(runner, "view", "r", probe, "--out", tmp_path / "v.html")
    assert (tmp_path / "v.html").stat().st_size > 1000
    lags = ok(runner, "gradients", "r", probe, "--max-lag", 5, "--positions", 4).splitlines()
    assert lags[0].split("\t") == ["lag", "layer 0 h", "layer 0 c", "layer 1 h", "layer 1 c"]

    out = tmp_path / "r.safetensors"
    ok(runner, "export", "r", "--out", out)
    assert ok(runner, "sample", out, "--length", 30, "--seed", 4, "--prime", "The") == text
