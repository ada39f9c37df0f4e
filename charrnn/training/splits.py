"""The held-out parts of a run's corpus, cut again as training cut them: what
`charrnn eval RUN --split val|test` and `Model.evaluate_split` score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError


def split_tokens(path: Path, part: str, data_dir: str | Path = "data", corpus: Any = None) -> Any:
    """The ids of part "val" or "test" of the corpus the run of checkpoint `path` trained on,
    cut as training cut it (charrnn.data.corpus.split_parts), read through the data cache
    (`corpus` overrides the recorded files). Raises CharRNNError when the run has no such
    part or its corpus is gone or changed."""
    from charrnn.checkpoint import load_checkpoint
    from charrnn.data.corpus import prepare, resolve_sources, split_parts

    if part not in ("val", "test"):
        raise CharRNNError(f"unknown --split '{part}': choose val or test.")
    ckpt = load_checkpoint(path)
    cfg, info = ckpt.train_config, ckpt.corpus
    if part == "test" and not cfg.test_frac:
        raise CharRNNError(f"run '{path.parent.name}' has no test split: train with --split 90/5/5 to hold one out.")
    if info.get("task") or "exported_from" in info:
        raise CharRNNError(f"'{path}' records no text corpus to split: score a text file instead.")
    recorded = info.get("sources")
    source = corpus if corpus is not None else recorded if isinstance(recorded, list) else info.get("path")
    if not source or not isinstance(source, (str, list, tuple)):
        raise CharRNNError("the run does not record its corpus: pass the corpus file.")
    enc = info.get("encoding", "utf-8")
    data = prepare(
        resolve_sources(source, Path(data_dir)),
        Path(data_dir),
        enc if isinstance(enc, str) else "utf-8",
        None,
        ckpt.vocab.max_vocab,
    )
    if data.sha256 != info.get("sha256") or data.vocab != ckpt.vocab:
        raise CharRNNError(
            f"'{data.source}' is not the text run '{path.parent.name}' was trained on (content differs): "
            "restore the corpus to score its split."
        )
    _, val, test = split_parts(data.tokens, cfg.val_frac, cfg.test_frac)
    return test if part == "test" else val
