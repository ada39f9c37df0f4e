"""`train --max-vocab N`: the vocabulary keeps the corpus's N most frequent characters and
one unknown symbol (U+FFFD) stands for the others, in the cache, the checkpoint, `info`,
sampling (never written), primes and `eval` (scored as the unknown symbol)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN, one_line_error

from charrnn.cli import app
from charrnn.config import SampleConfig
from charrnn.data.corpus import prepare
from charrnn.data.vocab import UNKNOWN, Vocab, capped_vocab
from charrnn.errors import CharRNNError
from charrnn.sample.draw import draw_text

RARE = "QXZJKVWYé—ü"  # each rare, together about a fifth of the text


def rare_text(n_chars: int = 12_000, seed: int = 0) -> str:
    """Common letters and a newline, plus many rare characters that are frequent as a group."""
    rng = random.Random(seed)
    out = []
    while len(out) < n_chars:
        out.append(rng.choice(RARE) if rng.random() < 0.2 else rng.choice("aaabbcc \n"))
    return "".join(out)


def test_the_cap_keeps_the_most_frequent_characters_and_maps_the_rest_to_one_symbol(tmp_path: Path) -> None:
    text = "a" * 50 + "c" * 40 + "b" * 40 + "d" * 5 + "é" * 3 + UNKNOWN * 100 + "\n"
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    data = prepare(path, tmp_path / "data", max_vocab=2)
    # b and c tie at 40: the lower code point stays; U+FFFD's own 100 take no place.
    assert data.vocab.chars == ("a", "b", UNKNOWN)
    assert data.vocab.max_vocab == 2 and data.vocab.unknown_id == 2
    expected = "".join(c if c in "ab" else UNKNOWN for c in text)
    assert data.vocab.decode(np.asarray(data.tokens)) == expected
    # Another cap is another cache folder; no cap is the corpus's own vocabulary.
    assert prepare(path, tmp_path / "data", max_vocab=4).vocab.chars == ("a", "b", "c", "d", UNKNOWN)
    full = prepare(path, tmp_path / "data").vocab
    assert full.chars == tuple(sorted(set(text))) and full.max_vocab == 0 and full.unknown_id is None
    assert len([p for p in (tmp_path / "data" / "cache").iterdir() if not p.name.startswith(".")]) == 3


def test_a_capped_vocabulary_encodes_outside_characters_as_the_unknown_symbol() -> None:
    counts = np.zeros(0x110000, dtype=np.int64)
    for ch, n in {"x": 9, "y": 7, "z": 1}.items():
        counts[ord(ch)] = n
    vocab = capped_vocab(counts, 2)
    assert vocab.encode("xyz!") == [0, 1, 2, 2]
    with pytest.raises(CharRNNError, match="not in the model's vocabulary"):
        Vocab(("x", "y")).encode("xyz")  # without a cap, still an error
    with pytest.raises(CharRNNError, match="--max-vocab"):
        capped_vocab(counts, 0)


def test_the_cap_round_trips_through_to_dict_and_old_vocabularies_still_load() -> None:
    vocab = Vocab(("a", "b", UNKNOWN), False, 2)
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    old = Vocab.from_dict({"chars": "ab", "byte_level": False})
    assert old.max_vocab == 0 and old.unknown_id is None and "max_vocab" not in old.to_dict()
    assert Vocab.from_dict({"chars": "ab" + UNKNOWN, "byte_level": True, "max_vocab": 2}).unknown_id == 2
    for damaged in (
        {"chars": "abc", "max_vocab": 2},
        {"chars": "ab" + UNKNOWN, "max_vocab": 1},
        {"chars": "a", "max_vocab": -1},
    ):
        with pytest.raises(CharRNNError, match="damaged"):
            Vocab.from_dict({"byte_level": False, **damaged})


def test_sampling_never_draws_the_unknown_symbol_even_when_it_is_the_likeliest() -> None:
    vocab = Vocab(("a", "b", UNKNOWN), False, 2)
    logits = np.array([[0.0, 0.5, 8.0]], dtype=np.float32)  # U+FFFD would win 99.9% of draws
    text = draw_text(
        logits, lambda ids: logits, vocab, SampleConfig(temperature=1.5, length=2000, seed=3), lambda c: None
    )
    assert len(text) == 2000 and UNKNOWN not in text and set(text) == {"a", "b"}
    assert logits[0, 2] == 8.0  # the engine's logits are not changed
    greedy = draw_text(logits, lambda ids: logits, vocab, SampleConfig(temperature=0, length=5), lambda c: None)
    assert greedy == "bbbbb"


def test_a_capped_run_round_trips_samples_and_scores_with_the_unknown_symbol(runner, tmp_path: Path) -> None:
    from charrnn.checkpoint import load_checkpoint

    corpus = tmp_path / "rare.txt"
    corpus.write_text(rare_text(), encoding="utf-8")
    result = runner.invoke(
        app, ["train", str(corpus), "--name", "cap", "--max-vocab", "4", "--max-steps", "40", *TINY_TRAIN]
    )
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "cap" / "last.pt")
    assert len(ckpt.vocab) == 5 and {"a", "b", "c", UNKNOWN} <= set(ckpt.vocab.chars)
    assert ckpt.vocab.max_vocab == 4 and ckpt.model_config.vocab_size == 5 and ckpt.corpus["max_vocab"] == 4
    info = runner.invoke(app, ["info", "cap"])
    assert info.exit_code == 0 and "--max-vocab 4" in info.stdout, info.output

    # The unknown symbol is likely after training (a fifth of the text), yet no engine writes it;
    # a prime with characters outside the vocabulary reads them as the unknown symbol.
    for engine in ("numpy", "torch"):
        sample = runner.invoke(
            app,
            ["sample", "cap", "--engine", engine, "--length", "1500", "--temp", "1.2", "--seed", "1", "--prime", "QZé"],
        )
        assert sample.exit_code == 0, sample.output
        drawn = sample.stdout[len("QZé") :]
        assert UNKNOWN not in drawn and len(drawn.strip()) > 1000
    beam = runner.invoke(app, ["sample", "cap", "--beam", "4", "--length", "200", "--prime", "ab"])
    assert beam.exit_code == 0 and UNKNOWN not in beam.stdout and len(beam.stdout.strip()) > 100, beam.output

    # eval scores characters outside the vocabulary as the unknown symbol.
    text = "abc QXZ\nab" * 20
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    mapped = "".join(c if c in ckpt.vocab.chars else UNKNOWN for c in text)
    (tmp_path / "m.txt").write_text(mapped, encoding="utf-8")
    scores = []
    for name in ("t.txt", "m.txt"):
        ev = runner.invoke(app, ["eval", "cap", name, "--json"])
        assert ev.exit_code == 0, ev.output
        scores.append(json.loads(ev.stdout))
    assert scores[0]["chars"] == len(text) and scores[0]["bits_per_char"] == pytest.approx(scores[1]["bits_per_char"])

    # The NumPy engine reads the cap from a safetensors export too.
    export = runner.invoke(app, ["export", "cap", "--out", str(tmp_path / "cap.safetensors")])
    assert export.exit_code == 0, export.output
    from charrnn.sample.numpy_engine import load

    _, vocab = load(tmp_path / "cap.safetensors")
    assert vocab == ckpt.vocab

    # Resume keeps the cap and refuses to change it.
    resumed = runner.invoke(app, ["train", "--resume", "cap", "--max-steps", "42", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(tmp_path / "checkpoints" / "cap" / "last.pt").vocab == ckpt.vocab
    one_line_error(
        runner.invoke(app, ["train", "--resume", "cap", "--max-vocab", "9", "--max-steps", "44"]), "--max-vocab"
    )


def test_a_cap_below_one_or_on_a_task_is_one_error_line(runner, corpus: Path) -> None:
    one_line_error(
        runner.invoke(app, ["train", str(corpus), "--max-vocab", "0", "--max-steps", "2", *TINY_TRAIN]), "--max-vocab"
    )
    one_line_error(
        runner.invoke(app, ["train", "task:parity", "--max-vocab", "3", "--max-steps", "2", *TINY_TRAIN]),
        "fixed alphabet",
    )
