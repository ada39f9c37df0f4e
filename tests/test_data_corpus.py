import random

import numpy as np
import pytest

from charrnn.data import corpus as corpus_mod
from charrnn.data.corpus import prepare, read_text, split
from charrnn.data.vocab import Vocab, build_vocab, token_dtype
from charrnn.errors import CharRNNError


def random_unicode(n: int, seed: int) -> str:
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0xA0, 0x24F), (0x3040, 0x30FF), (0x1F300, 0x1F6FF), (0x10000, 0x1000F)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out) + "\n\u0301e\u0301"  # combining accent stays its own symbol


def test_vocab_round_trip_arbitrary_unicode() -> None:
    text = random_unicode(5000, 1)
    vocab = build_vocab(text)
    assert list(vocab.chars) == sorted(set(text))
    assert vocab.decode(vocab.encode(text)) == text
    again = Vocab.from_dict(vocab.to_dict())
    assert again == vocab and again.encode(text) == vocab.encode(text)


def test_vocab_unknown_characters_are_listed() -> None:
    vocab = build_vocab("abc")
    with pytest.raises(CharRNNError, match=r"'x'.*'z'"):
        vocab.encode("abxz")


def test_token_dtype_is_smallest() -> None:
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(70_000) == np.uint32


def test_prepare_encodes_and_caches(tmp_path, monkeypatch) -> None:
    text = random_unicode(3000, 2)
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 97)  # many chunks: multi-byte characters straddle them
    data = prepare(path, tmp_path / "data")
    assert data.vocab.decode(data.tokens.tolist()) == text
    assert isinstance(data.tokens, np.memmap)
    calls = []
    real = corpus_mod._encode_into
    monkeypatch.setattr(corpus_mod, "_encode_into", lambda *a: (calls.append(a), real(*a)))
    prepare(path, tmp_path / "data")
    assert calls == []  # unchanged file: cache reused
    path.write_text(text + "more", encoding="utf-8")
    changed = prepare(path, tmp_path / "data")
    assert len(calls) == 1 and changed.vocab.decode(changed.tokens.tolist()).endswith("more")


def test_prepare_strips_bom(tmp_path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello".encode("utf-8"))
    data = prepare(path, tmp_path / "data")
    assert data.vocab.decode(data.tokens.tolist()) == "hello"


def test_invalid_utf8_names_offset(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 64)
    path = tmp_path / "bad.txt"
    path.write_bytes(("é" * 50).encode() + b"ab\xffcd")
    with pytest.raises(CharRNNError, match=r"offset 102.*--encoding"):
        prepare(path, tmp_path / "data")


def test_other_encodings_and_bytes(tmp_path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("façade naïve".encode("latin-1"))
    data = prepare(path, tmp_path / "data", "latin-1")
    assert data.vocab.decode(data.tokens.tolist()) == "façade naïve"
    raw = prepare(path, tmp_path / "data", "bytes")
    assert raw.vocab.byte_level
    assert bytes(ord(c) for c in raw.vocab.decode(raw.tokens.tolist())) == "façade naïve".encode("latin-1")
    with pytest.raises(CharRNNError, match="unknown encoding"):
        prepare(path, tmp_path / "data", "no-such-codec")


def test_empty_and_missing(tmp_path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CharRNNError, match="empty"):
        prepare(tmp_path / "empty.txt", tmp_path / "data")
    with pytest.raises(CharRNNError, match="does not exist"):
        prepare(tmp_path / "nope.txt", tmp_path / "data")
    with pytest.raises(CharRNNError, match="directory"):
        prepare(tmp_path, tmp_path / "data")
    with pytest.raises(CharRNNError, match="does not exist"):
        read_text(tmp_path / "nope.txt")


def test_split_is_contiguous_tail() -> None:
    tokens = np.arange(1000)
    train, val = split(tokens, 0.1)
    assert len(train) == 900 and train[-1] == 899 and val[0] == 900 and val[-1] == 999
