"""Beam search (charrnn.sample.beam): `charrnn sample --beam N`, Model.generate(beam=N)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, saved_model

import charrnn
from charrnn.cli import app
from charrnn.config import SampleConfig
from charrnn.errors import CharRNNError
from charrnn.sample import open_sampler
from charrnn.sample.beam import beam_search, log_softmax

ENGINES = ["numpy", "torch"]


def continuation_logprob(sampler, prime: str, text: str) -> float:
    """Total log-probability (nats) the model gives `text` after `prime`."""
    logits, streams = sampler.open_streams(prime, 1)
    total = 0.0
    for i in sampler.vocab.encode(text):
        total += float(log_softmax(logits)[0, i])
        logits = streams.step(np.array([i]))
    return total


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_beam_writes_what_greedy_sampling_writes(tmp_path: Path, engine: str, kind: str) -> None:
    _, path = saved_model(tmp_path, kind)
    sampler = open_sampler(path, engine)
    for prime, stop in [("abc", ""), ("h", "a"), ("", "")]:
        greedy = sampler.generate(prime, SampleConfig(length=60, temperature=0, stop=stop))
        assert sampler.generate(prime, SampleConfig(length=60, beam=1, stop=stop)) == greedy


@pytest.mark.parametrize("engine", ENGINES)
def test_beam_continuation_is_at_least_as_likely_as_greedy(tmp_path: Path, engine: str) -> None:
    _, path = saved_model(tmp_path, "lstm")
    sampler = open_sampler(path, engine)
    gains = []
    for prime in ["abc", "hg", "e"]:
        greedy = sampler.generate(prime, SampleConfig(length=40, temperature=0))
        logits, streams = sampler.open_streams(prime, 1)
        found = beam_search(logits, streams, sampler.vocab, SampleConfig(length=40, beam=5), lambda _p: None)
        assert len(found.text) == len(greedy) == 40
        # The score it reports is the model's log-probability of the text it returns.
        assert found.logprob == pytest.approx(continuation_logprob(sampler, prime, found.text), abs=1e-4)
        gains.append(found.logprob - continuation_logprob(sampler, prime, greedy))
    assert min(gains) >= -1e-6
    assert max(gains) > 0.01  # and on some prime it finds a likelier text than greedy


def test_beam_is_deterministic_and_the_same_on_both_engines(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path, "gru")
    cfg = SampleConfig(length=50, beam=4, seed=1, temperature=1.5)
    texts = {open_sampler(path, e).generate("ab", cfg) for e in ENGINES}
    texts.add(open_sampler(path, "numpy").generate("ab", SampleConfig(length=50, beam=4, seed=2)))
    assert len(texts) == 1


def test_beam_ends_at_stop_and_length_norm_favours_longer_endings(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path, "lstm")
    sampler = open_sampler(path, "numpy")
    raw = sampler.generate("abc", SampleConfig(length=60, beam=4, stop="a"))
    normed = sampler.generate("abc", SampleConfig(length=60, beam=4, stop="a", length_norm=1.0))
    assert raw.endswith("a") and "a" not in raw[:-1]
    assert len(normed) > len(raw)
    # Neither ends past the first stop it writes.
    assert normed.find("a") in (-1, len(normed) - 1)


def test_streamed_beam_pieces_join_to_the_generated_text(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path, "lstm")
    model = charrnn.load(path, engine="numpy")
    whole = model.generate("abc", length=50, beam=3)
    pieces = list(model.stream("abc", length=50, beam=3))
    assert "".join(pieces) == whole
    assert len(pieces) > 1  # agreed characters come out before the search ends


def test_cli_beam_prints_the_prime_and_the_api_text(tmp_path: Path, runner) -> None:
    _, path = saved_model(tmp_path, "lstm")
    result = runner.invoke(app, ["sample", str(path), "--beam", "3", "-n", "40", "--prime", "abc"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "abc" + charrnn.load(path).generate("abc", length=40, beam=3) + "\n"


def test_cli_beam_refuses_several_samples_and_bad_values(tmp_path: Path, runner) -> None:
    _, path = saved_model(tmp_path, "lstm")
    result = runner.invoke(app, ["sample", str(path), "--beam", "2", "--num-samples", "3"])
    one_line_error(result, "--num-samples")
    assert runner.invoke(app, ["sample", str(path), "--beam", "-1"]).exit_code == 2
    assert runner.invoke(app, ["sample", str(path), "--beam", "2", "--length-norm", "-0.5"]).exit_code == 2
    with pytest.raises(CharRNNError):
        charrnn.load(path).generate(beam=2000)
