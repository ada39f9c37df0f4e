"""What the neuron commands compute, apart from how they draw it. The file stays whole: the four
reports share the text reading, selection checks and scales.

One function per command turns a loaded checkpoint and a text into a report:
`inspect_units` (one unit, or the K most varying, position by position),
`scan_cells` (every unit ranked against a text feature), `count_gates` (gate
saturation) and `build_page` (the data of the HTML viewer). The `*_rows`
functions lay a report out as tab-separated rows, the plain output of the
commands; `colour_scale` is the value a coloured rendering draws at full colour.
charrnn.cli.neurons only renders these.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from charrnn.checkpoint import Checkpoint
from charrnn.config import UnitKind, Unknown
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN
from charrnn.neurons.activations import (
    BOUNDED_KINDS,
    Consumer,
    Recorder,
    activation_kinds,
    check_selection,
    encode_text,
    plan_streams,
    run_text,
    write_npz,
)
from charrnn.neurons.precision import resolve_precision
from charrnn.neurons.unitstats import GateCounts, UnitRecorder, UnitScan, UnitScore, rank_units, summarise_gates

if TYPE_CHECKING:
    from charrnn.neurons.viewer import PageData

# progress(characters just done, characters in all): called after each chunk of the text.
Progress = Callable[[int, int], None]

GATE_HEAD = [
    "layer",
    "gate",
    "units",
    "left <0.1",
    "right >0.9",
    "mostly left",
    "mostly right",
    "rarely saturated",
]


def read_input(text: str | None, file: Path | None, byte_level: bool, stdin: TextIO | None) -> str:
    """The text to inspect: `text`, else the file's text as training reads it, else `stdin`
    (standard input itself is read as training reads a file: a BOM dropped, CRLF kept).

    A byte-level model reads the UTF-8 bytes of `text` and stdin as U+0000..U+00FF.
    Raises CharRNNError when both or neither are given (stdin a terminal counts as neither).
    """
    from charrnn.data.corpus import read_text

    if text is not None and file is not None:
        raise CharRNNError("give the text either with --text or with --file, not both.")
    if file is not None:
        return read_text(file, "bytes" if byte_level else "utf-8")
    if text is None:
        if stdin is None or stdin.isatty():
            raise CharRNNError("no text: give one with --text, --file or on standard input.")
        if stdin is sys.stdin:  # the process's own input: its bytes, decoded as a file's (CRLF kept)
            return read_text("-", "bytes" if byte_level else "utf-8")
        text = stdin.read()
    return text.encode("utf-8").decode("latin-1") if byte_level else text


def read_file(file: Path, byte_level: bool) -> str:
    """The text of `file` as training reads it (a byte-order mark dropped; bytes as U+0000..U+00FF)."""
    from charrnn.data.corpus import read_text

    return read_text(file, "bytes" if byte_level else "utf-8")


def colour_scale(kind: str, values: np.ndarray) -> float:
    """The value drawn at full colour: 1 for gates and hidden, else the 90th percentile of |v|.

    A percentile rather than the peak, so that one extreme cell value does not
    wash out the rest; larger values saturate.
    """
    if kind in BOUNDED_KINDS or len(values) == 0:
        return 1.0
    scale = float(np.percentile(np.abs(values), 90)) or float(np.abs(values).max())
    return scale if scale > 0 else 1.0


def escape_field(ch: str) -> str:
    """A character as one tab-separated field."""
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}.get(ch, ch)


def _run(
    model: CharRNN,
    ids: np.ndarray,
    consumers: list[Consumer],
    batch_size: int,
    progress: Progress | None,
    streams: int | None = None,
    total: int | None = None,
    precision: str = "fp32",
) -> None:
    """One pass over ids; progress(step, total) with total the characters of all passes.

    `precision`: fp32, bf16, int8 or auto (charrnn.neurons.precision.resolve_precision).
    """
    n = len(ids)
    total = n if total is None else total
    run_text(
        model, ids, consumers,
        streams=plan_streams(n, batch_size) if streams is None else streams,
        progress=None if progress is None else lambda step: progress(step, total),
        precision=resolve_precision(model, precision),
    )  # fmt: skip


# inspect keeps one kind's every unit in memory (to pick the most varying afterwards) only up to
# this many bytes; beyond it (about 65k characters of a 2x512 model) it reads the text twice:
# once for the variances, once for the chosen units.
RECORD_LIMIT = 256 * 2**20


@dataclass
class InspectReport:
    text: str  # the characters kept (N)
    kind: str
    units: list[tuple[int, int]]  # (layer, unit) shown, in order
    values: np.ndarray  # (N, K) activations of `kind`, one column per shown unit
    top_chars: list[list[str]]  # (N, K) most likely next characters
    top_probs: np.ndarray  # (N, K) their probabilities


def inspect_units(
    ckpt: Checkpoint,
    model: CharRNN,
    raw: str,
    layer: int | None = None,
    unit: int | None = None,
    kind: UnitKind | None = None,
    top_units: int = 0,
    predictions: int = 0,
    unknown: Unknown = "error",
    batch_size: int = 16,
    export: Path | None = None,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> InspectReport:
    """One unit's activation over `raw` (by default the last layer's most varying unit), or the
    `top_units` most varying units (of every layer unless `layer` names one).

    `kind` defaults to cell where the model has one, else hidden. A text of 20k characters
    or more runs as up to batch_size parallel streams (see plan_streams); choosing the most
    varying units of a text too long to keep (RECORD_LIMIT) reads it twice. With
    `export`, every kind's activations of the whole text go to that .npz (built in
    memory-mapped files beside it). Raises CharRNNError for a layer, kind or unit the model
    lacks, and for characters outside the vocabulary.
    """
    all_kinds = activation_kinds(model)
    num_layers = ckpt.model_config.num_layers
    kind = kind or ("cell" if "cell" in all_kinds else "hidden")
    check_selection(all_kinds, num_layers, num_layers - 1 if layer is None else layer, kind, unit or 0)
    text, ids = encode_text(raw, ckpt.vocab, unknown)
    n, width = len(ids), all_kinds[kind]
    preds = Recorder({}, num_layers, n, top_k=predictions)
    consumers: list[Consumer] = [preds] if predictions else []
    scratch = Path(export).resolve().parent if export is not None else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".charrnn-export-", dir=scratch) as tmp:
        full = Recorder(all_kinds, num_layers, n, directory=Path(tmp)) if export is not None else None
        consumers += [full] if full is not None else []
        if unit is not None and not top_units:
            units = [(num_layers - 1 if layer is None else layer, unit)]
            chosen = UnitRecorder(kind, units, n)
            _run(model, ids, consumers + [chosen], batch_size, progress, precision=precision)
            values = chosen.values
        else:
            scan = UnitScan({kind: width}, num_layers)  # variances only
            kept = full
            if kept is None and n * num_layers * width * 4 <= RECORD_LIMIT:
                kept = Recorder({kind: width}, num_layers, n)
                consumers.append(kept)
            total = n if kept is not None else 2 * n
            _run(
                model,
                ids,
                [scan] + (consumers if kept is not None else []),
                batch_size,
                progress,
                total=total,
                precision=precision,
            )
            if not top_units:  # the most varying unit of the last (or the chosen) layer
                layer = num_layers - 1 if layer is None else layer
            ranked = rank_units(scan.variances(), top_units or 1, by_abs=False, layer=layer)
            units = [(s.layer, s.unit) for s in ranked]
            if kept is not None:
                values = np.stack([kept.values[kind][l, :, u] for l, u in units], axis=1)
            else:  # a long text: read it again for the chosen units only
                chosen = UnitRecorder(kind, units, n)
                _run(model, ids, consumers + [chosen], batch_size, progress, total=total, precision=precision)
                values = chosen.values
        if full is not None and export is not None:
            write_npz(export, text, ckpt.vocab, ckpt.model_config.model, full)
    top_chars = [[ckpt.vocab.chars[i] for i in row] for row in preds.top_ids] if predictions else []
    return InspectReport(text, kind, units, values, top_chars, preds.top_probs)


def inspect_rows(report: InspectReport) -> list[list[str]]:
    """Header and one row per position: pos, char, each unit's value, then (next, p) pairs."""
    k = len(report.top_chars[0]) if report.top_chars else 0
    head = ["pos", "char"] + [f"L{l}.{report.kind}.{u}" for l, u in report.units]
    head += [f"{name}{i + 1}" for i in range(k) for name in ("next", "p")]
    rows = [head]
    for t, ch in enumerate(report.text):
        row = [str(t), escape_field(ch)] + [f"{v:.4f}" for v in report.values[t]]
        for i in range(k):
            row += [escape_field(report.top_chars[t][i]), f"{report.top_probs[t, i]:.4f}"]
        rows.append(row)
    return rows


@dataclass
class CellsReport:
    text: str  # the characters kept
    feature: str
    scores: list[UnitScore]  # best first, by |r|
    start: int  # text position of the excerpt
    excerpt: np.ndarray  # (M,) the best unit's values from `start` on; empty with no scores


def scan_cells(
    ckpt: Checkpoint,
    model: CharRNN,
    raw: str,
    feature: str = "inside-quotes",
    top: int = 10,
    kind: UnitKind | None = None,
    excerpt: int = 400,
    batch_size: int = 16,
    unknown: Unknown = "error",
    export: Path | None = None,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> CellsReport:
    """Rank the units of every layer (of `kind`, or of every kind) by Pearson r with `feature`.

    The excerpt starts a little before the feature first changes. With `export`, every kind's
    activations of the whole text go to that .npz, built in memory-mapped files beside it so a
    long file never sits in memory. Raises CharRNNError for a kind the model lacks or a
    feature that is constant on the text.
    """
    from charrnn.neurons.features import compute_feature

    all_kinds = activation_kinds(model)
    if kind is not None and kind not in all_kinds:
        raise CharRNNError(f"this model has no '{kind}' activations: choose {', '.join(all_kinds)}.")
    kinds = {kind: all_kinds[kind]} if kind else all_kinds
    num_layers = ckpt.model_config.num_layers
    text, ids = encode_text(raw, ckpt.vocab, unknown)
    values = compute_feature(text, feature)
    if np.ptp(values) == 0:
        raise CharRNNError(f"feature '{feature}' is constant on this text, so nothing can track it.")
    n = len(text)
    changes = np.flatnonzero(values != values[0])
    start = max(0, min(int(changes[0]) - excerpt // 4, n - excerpt))
    window = Recorder(kinds, num_layers, min(n, start + excerpt), start=start)
    scan = UnitScan(kinds, num_layers, values[:, None])
    consumers: list[Consumer] = [scan, window]
    scratch = Path(export).resolve().parent if export is not None else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".charrnn-export-", dir=scratch) as tmp:
        full = Recorder(all_kinds, num_layers, n, directory=Path(tmp)) if export else None
        _run(model, ids, consumers + ([full] if full is not None else []), batch_size, progress, precision=precision)
        if full is not None and export is not None:
            write_npz(export, text, ckpt.vocab, ckpt.model_config.model, full)
    scores = rank_units(scan.correlations(0), top)
    best = window.values[scores[0].kind][scores[0].layer, :, scores[0].unit] if scores else np.zeros(0)
    return CellsReport(text, feature, scores, start, best)


def cells_rows(scores: list[UnitScore]) -> list[list[str]]:
    """Header and one row per unit: rank, layer, unit, kind, r."""
    rows = [["rank", "layer", "unit", "kind", "r"]]
    rows += [[str(i), str(s.layer), str(s.unit), s.kind, f"{s.value:+.4f}"] for i, s in enumerate(scores, 1)]
    return rows


def count_gates(
    ckpt: Checkpoint,
    model: CharRNN,
    raw: str,
    batch_size: int = 16,
    unknown: Unknown = "error",
    progress: Progress | None = None,
    precision: str = "fp32",
) -> tuple[GateCounts, int]:
    """How often each gate unit is saturated over `raw`, and the characters read.

    Raises CharRNNError for a model without gates (rnn, gf-rnn has only feedback gates).
    """
    counts = GateCounts(activation_kinds(model), ckpt.model_config.num_layers)
    if not counts.gates:
        raise CharRNNError(f"the {ckpt.model_config.model} model has no gates: use an lstm, gru or gated kind.")
    _, ids = encode_text(raw, ckpt.vocab, unknown)
    _run(model, ids, [counts], batch_size, progress, precision=precision)
    return counts, len(ids)


def gate_rows(counts: GateCounts) -> list[list[str]]:
    """One row per layer and gate under GATE_HEAD: mean saturated fractions and unit counts."""
    return [
        [str(r.layer), r.kind, str(r.units), f"{r.left_mean:.3f}", f"{r.right_mean:.3f}",
         str(r.mostly_left), str(r.mostly_right), str(r.rarely)]
        for r in summarise_gates(counts)
    ]  # fmt: skip


def gate_unit_rows(counts: GateCounts) -> list[list[str]]:
    """Header and one row per gate unit: layer, gate, unit, left and right fractions."""
    rows = [["layer", "gate", "unit", "left", "right"]]
    for gate, (left, right) in counts.fractions().items():
        for l in range(left.shape[0]):
            for u in range(left.shape[1]):
                rows.append([str(l), gate, str(u), f"{left[l, u]:.4f}", f"{right[l, u]:.4f}"])
    return rows


def build_page(
    ckpt: Checkpoint,
    model: CharRNN,
    run_dir: Path,
    raw: str,
    title: str,
    max_chars: int = 1000,
    predictions: int = 5,
    top: int = 5,
    batch_size: int = 16,
    unknown: Unknown = "error",
    progress: Progress | None = None,
    precision: str = "fp32",
) -> tuple[PageData, int]:
    """The viewer's data over `raw`: the first `max_chars` characters with every activation and
    prediction, the `top` units per feature (and the two most varying per kind), gate
    saturation, and the run's curves when `run_dir` holds a readable metrics.jsonl.

    Returns (PageData, characters read).
    """
    from charrnn.curves import read_curves
    from charrnn.neurons.features import FEATURES, compute_features
    from charrnn.neurons.viewer import PageData

    kinds = activation_kinds(model)
    num_layers = ckpt.model_config.num_layers
    text, ids = encode_text(raw, ckpt.vocab, unknown)
    n, shown = len(text), min(len(text), max_chars)
    names = list(FEATURES)
    scan = UnitScan(kinds, num_layers, compute_features(text, names))
    counts = GateCounts(kinds, num_layers)
    recorder = Recorder(kinds, num_layers, shown, top_k=predictions)
    streams = min(plan_streams(n, batch_size), max(1, n // shown))  # the shown text in one stream
    _run(model, ids, [scan, counts, recorder], batch_size, progress, streams=streams, precision=precision)
    rankings = {
        name: rank_units(scan.correlations(i), top) for i, name in enumerate(names) if not scan.feature_is_constant(i)
    }
    variances = scan.variances()
    rankings["variance"] = [s for k in kinds for s in rank_units({k: variances[k]}, 2, by_abs=False)]
    first = next(iter(rankings.values()))[0]
    try:
        curves = read_curves(run_dir / "metrics.jsonl")
    except CharRNNError:  # no metrics (a lone .pt file, or nothing logged yet): a page without curves
        curves = None
    page = PageData(
        title=title,
        text=text[:shown],
        num_layers=num_layers,
        kinds=kinds,
        values=recorder.values,
        top_chars=["".join(ckpt.vocab.chars[i] for i in row) for row in recorder.top_ids],
        top_probs=recorder.top_probs if predictions else None,
        rankings=rankings,
        gates=counts.fractions(),
        curves=curves,
        initial=(first.layer, first.kind, first.unit),
    )
    return page, n
