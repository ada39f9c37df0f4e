"""`train --split 90/5/5`: train, validation and test parts, contiguous in that order; the
test part never reaches training, the run records the split, and `eval RUN --split test`
(and `Model.evaluate_split`) scores exactly that slice of the run's own corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN, make_text, one_line_error

import charrnn
from charrnn.cli import app
from charrnn.config import TrainConfig, parse_split, split_val_frac
from charrnn.data.corpus import prepare, split_parts
from charrnn.errors import CharRNNError


@pytest.mark.parametrize("n", [20, 1000, 20_001, 99_999, 10**8])
def test_the_three_parts_are_contiguous_with_the_stated_sizes(n: int) -> None:
    tokens = np.arange(n, dtype=np.int64) if n < 10**6 else np.broadcast_to(np.int64(0), (n,))
    train, val, test = split_parts(
        tokens, split_val_frac("90/5/5"), TrainConfig(split="90/5/5", val_frac=5 / 95).test_frac
    )
    assert len(train) + len(val) + len(test) == n
    assert abs(len(train) - 0.90 * n) <= 1 and abs(len(val) - 0.05 * n) <= 1 and abs(len(test) - 0.05 * n) <= 1
    if n < 10**6:  # in order, nothing skipped, nothing shared
        assert np.array_equal(np.concatenate([train, val, test]), tokens)


def test_bad_splits_and_a_disagreeing_val_frac_are_errors() -> None:
    assert parse_split("90/5/5") == (90.0, 5.0, 5.0) and parse_split("80/20/0")[2] == 0.0
    for bad in ("90/5", "80/30/5", "90/5/5/0", "a/b/c", "0/50/50", "95/-5/10", "nan/5/5", ""):
        with pytest.raises(CharRNNError, match="--split"):
            parse_split(bad)
    assert split_val_frac("90/5/5", 0.05) == pytest.approx(5 / 95)
    with pytest.raises(CharRNNError, match="disagree"):
        split_val_frac("90/5/5", 0.1)
    with pytest.raises(CharRNNError, match="does not match"):
        TrainConfig(split="90/5/5", val_frac=0.1)  # a checkpoint cannot carry an inconsistent pair


@pytest.mark.parametrize(
    "args, words",
    [
        (["--split", "90/5"], "--split"),
        (["--split", "80/30/5"], "sums to 115"),
        (["--split", "90/5/5", "--val-frac", "0.2"], "disagree"),
    ],
)
def test_bad_split_options_are_one_error_line(runner, corpus: Path, args: list[str], words: str) -> None:
    one_line_error(runner.invoke(app, ["train", str(corpus), *args, "--max-steps", "2", *TINY_TRAIN]), words)


def test_the_test_part_never_reaches_training_and_eval_split_test_scores_exactly_it(
    runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charrnn.training import loop

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20_001), encoding="utf-8")
    seen = {}
    original = loop.Trainer.__init__

    def spy(self, mcfg, cfg, data, *args, **kwargs):  # what training is handed
        seen["tokens"], seen["cfg"] = np.asarray(data.tokens), cfg
        original(self, mcfg, cfg, data, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "__init__", spy)
    result = runner.invoke(
        app,
        [
            "train",
            str(corpus),
            "--name",
            "s",
            "--split",
            "90/5/5",
            "--val-frac",
            "0.05",
            "--max-steps",
            "20",
            *TINY_TRAIN,
        ],
    )
    assert result.exit_code == 0, result.output
    tokens = np.asarray(prepare(corpus, tmp_path / "data").tokens)
    train, val, test = split_parts(tokens, 5 / 95, 0.05)
    assert np.array_equal(seen["tokens"], np.concatenate([train, val]))  # the test part is not there
    assert seen["cfg"].test_frac == 0.05
    config = json.loads((tmp_path / "checkpoints" / "s" / "config.json").read_text())
    assert config["train"]["split"] == "90/5/5" and config["corpus"]["chars"] == len(tokens)

    # eval --split test == eval of a file holding exactly that slice; --split val likewise.
    vocab = charrnn.load("s", runs_dir=tmp_path / "checkpoints").vocab
    for part, ids in (("test", test), ("val", val)):
        (tmp_path / f"{part}.txt").write_text(vocab.decode(ids), encoding="utf-8")
        by_split = json.loads(runner.invoke(app, ["eval", "s", "--split", part, "--json"]).stdout)
        by_file = json.loads(runner.invoke(app, ["eval", "s", f"{part}.txt", "--json"]).stdout)
        assert by_split["chars"] == by_file["chars"] == len(ids)
        assert by_split["bits_per_char"] == pytest.approx(by_file["bits_per_char"], abs=1e-9)
    shown = runner.invoke(app, ["eval", "s", "--split", "test"])
    assert shown.exit_code == 0 and "bits/char" in shown.stdout and f"{len(test):,}" in shown.stdout

    # The Python API scores the same slice.
    model = charrnn.load("s", runs_dir=tmp_path / "checkpoints")
    nats = model.evaluate_split("test", data_dir=tmp_path / "data")
    expected = json.loads(runner.invoke(app, ["eval", "s", "--split", "test", "--json"]).stdout)["nats_per_char"]
    assert nats == pytest.approx(expected, abs=1e-9)

    # Resume keeps the split (the test part stays out) and refuses a new one.
    seen.clear()
    resumed = runner.invoke(app, ["train", "--resume", "s", "--max-steps", "22", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert seen["cfg"].split == "90/5/5" and len(seen["tokens"]) == len(train) + len(val)
    one_line_error(
        runner.invoke(app, ["train", "--resume", "s", "--split", "80/10/10", "--max-steps", "24"]), "--split"
    )

    # The corpus changed since: the split cannot be rebuilt, one error line.
    corpus.write_text(make_text(20_001, seed=5), encoding="utf-8")
    one_line_error(runner.invoke(app, ["eval", "s", "--split", "test"]), "not the text")


def test_eval_split_test_needs_a_run_with_a_test_part(runner, trained: str) -> None:
    one_line_error(runner.invoke(app, ["eval", trained, "--split", "test"]), "no test split")
    one_line_error(runner.invoke(app, ["eval", trained]), "--split")
    val = runner.invoke(app, ["eval", trained, "--split", "val", "--json"])  # a two-part run still has its val part
    assert val.exit_code == 0 and json.loads(val.stdout)["chars"] > 1000, val.output


def test_the_api_trains_with_a_split_and_a_cap(tmp_path: Path, corpus: Path) -> None:
    done = charrnn.train(
        corpus,
        name="api",
        runs_dir=tmp_path / "runs",
        data_dir=tmp_path / "data",
        split="90/5/5",
        max_vocab=12,
        max_steps=10,
        hidden_size=16,
        num_layers=1,
        batch_size=4,
        seq_len=16,
        device="cpu",
    )
    assert done.train_config.split == "90/5/5" and done.train_config.test_frac == 0.05
    model = charrnn.load("api", runs_dir=tmp_path / "runs")
    assert model.vocab.max_vocab == 12 and len(model.vocab) == 13
    assert 0 < model.evaluate_split("test", data_dir=tmp_path / "data") < 10
