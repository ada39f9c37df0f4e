"""Many samples at once: `charrnn sample --num-samples N`, Model.generate_many, one batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import saved_model

import charrnn
import charrnn.sample
from charrnn.cli import app
from charrnn.config import SampleConfig
from charrnn.sample import open_sampler
from charrnn.sample.numpy_net import NumpyNet

ENGINES = ["numpy", "torch"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 4, "stop": "a"},
        {"temperature": 1.2, "top_p": 0.8, "stop": "\n"},
    ],
)
def test_each_sample_of_a_batch_is_what_a_single_run_with_its_seed_writes(
    tmp_path: Path, engine: str, options: dict
) -> None:
    _, path = saved_model(tmp_path, "lstm")
    sampler = open_sampler(path, engine)
    cfg = SampleConfig(length=80, seed=40, num_samples=6, **options)
    many = sampler.generate_samples("abc", cfg)
    alone = [sampler.generate("abc", SampleConfig(length=80, seed=40 + i, **options)) for i in range(6)]
    assert many == alone
    assert len(set(many)) > 1  # each sample its own seed


def test_samples_are_stepped_together_not_one_after_another(tmp_path: Path, monkeypatch) -> None:
    _, path = saved_model(tmp_path, "gru")
    sizes: list[int] = []
    step = NumpyNet.step
    monkeypatch.setattr(NumpyNet, "step", lambda self, x, state: (sizes.append(len(x)), step(self, x, state))[1])
    texts = open_sampler(path, "numpy").generate_samples("ab", SampleConfig(length=30, seed=1, num_samples=8))
    assert len(texts) == 8 and all(len(t) == 30 for t in texts)
    assert len(sizes) <= 30 + 3  # the prime ("\nab") once, then one step per character
    assert max(sizes) == 8


def test_more_samples_than_one_batch_run_in_turns_with_their_own_seeds(tmp_path: Path, monkeypatch) -> None:
    _, path = saved_model(tmp_path, "rnn")
    monkeypatch.setattr(charrnn.sample, "MAX_BATCH", 3)
    sampler = open_sampler(path, "numpy")
    seen: dict[int, str] = {}
    emit = lambda i, ch: seen.__setitem__(i, seen.get(i, "") + ch)  # noqa: E731
    many = sampler.generate_samples("", SampleConfig(length=25, seed=9, num_samples=7), emit)
    assert many == [sampler.generate("", SampleConfig(length=25, seed=9 + i)) for i in range(7)]
    assert [seen[i] for i in range(7)] == many


def test_generate_many_returns_what_generate_writes_for_each_seed(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path, "lstm")
    model = charrnn.load(path, engine="torch")
    many = model.generate_many(4, "ab", length=30, seed=3, temperature=1.0)
    assert many == [model.generate("ab", length=30, seed=3 + i, temperature=1.0) for i in range(4)]
    assert len(model.generate_many(3, length=10)) == 3  # no seed: each its own fresh one


def test_cli_num_samples_prints_each_seeds_text_separated_by_blank_lines(tmp_path: Path, runner) -> None:
    _, path = saved_model(tmp_path, "lstm")
    args = ["sample", str(path), "-n", "30", "--prime", "ab", "--temp", "1"]
    result = runner.invoke(app, [*args, "--seed", "5", "--num-samples", "3"])
    assert result.exit_code == 0, result.output
    singles = [runner.invoke(app, [*args, "--seed", str(5 + i)]).stdout[:-1] for i in range(3)]
    assert result.stdout == "\n\n".join(singles) + "\n"
