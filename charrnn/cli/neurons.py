"""Commands that look inside a trained network: inspect, cells, gates, view, curves, plot.

`register(app, wrap)` adds them to the main Typer app. torch (through
charrnn.neurons.activations) is imported inside the commands, so `charrnn --help`
stays fast. Coloured output needs a terminal; with a pipe, NO_COLOR or
--no-color the commands print tab-separated tables instead.
"""

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from charrnn.errors import CharRNNError
from charrnn.lazy import lazy_callable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text
else:
    Console = lazy_callable("rich.console", "Console")
    Text = lazy_callable("rich.text", "Text")
escape = lazy_callable("rich.markup", "escape")
Table = lazy_callable("rich.table", "Table")

RunArg = Annotated[
    str | None,
    typer.Argument(help="Run name, run folder or .pt checkpoint; default: the latest run."),
]
RunReq = Annotated[str, typer.Argument(help="Run name, run folder or .pt checkpoint.")]
FileArg = Annotated[Path, typer.Argument(help="Text file to run through the model (UTF-8).")]
RunsDirOpt = Annotated[
    Path,
    typer.Option("--runs-dir", help="Folder holding run folders.", envvar="CHARRNN_RUNS_DIR"),
]
NoColorOpt = Annotated[
    bool,
    typer.Option(
        "--no-color",
        help="Print plain tab-separated tables (also when NO_COLOR is set or output is not a terminal).",
    ),
]
UnknownOpt = Annotated[
    str, typer.Option("--unknown", help="Characters outside the vocabulary: error or skip.")
]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        help="Parallel streams over long files (each at least 10k characters, from a zero state).",
    ),
]
ExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export", help="Also save every layer's activations per character to this .npz."
    ),
]
KindHelp = "Activation kind: cell, hidden, input, forget, output (LSTM); reset, update (GRU); feedback (gated-feedback)."


def _console(no_color: bool) -> tuple[Console, bool]:
    """The stdout console and whether to print plain tables instead of colours."""
    console = Console(highlight=False, soft_wrap=True)
    return console, no_color or console.no_color or not console.is_terminal


def _resolve(run: str | None, runs_dir: Path) -> Path:
    from charrnn.runs import resolve_checkpoint

    return resolve_checkpoint(run, runs_dir)


def _load(run: str | None, runs_dir: Path) -> tuple[Any, Any, Path]:
    from charrnn.checkpoint import build_model, load_checkpoint

    path = _resolve(run, runs_dir)
    ckpt = load_checkpoint(path)
    return ckpt, build_model(ckpt), path


def _read_file(path: Path, byte_level: bool) -> str:
    """The text of `path` as training reads it (a byte-order mark dropped; bytes as U+0000..U+00FF)."""
    from charrnn.data.corpus import read_text

    return read_text(path, "bytes" if byte_level else "utf-8")


def _read_text(text: str | None, file: Path | None, byte_level: bool) -> str:
    if text is not None and file is not None:
        raise CharRNNError("give the text either with --text or with --file, not both.")
    if file is not None:
        return _read_file(file, byte_level)
    if text is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise CharRNNError("no text: give one with --text, --file or on standard input.")
        text = sys.stdin.read()
    return text.encode("utf-8").decode("latin-1") if byte_level else text


def _shown(ch: str) -> str:
    return {"\n": "↵", "\t": "→", "\r": "␍"}.get(ch, ch if ch.isprintable() else "·")


def _escaped(ch: str) -> str:
    """A character as one tab-separated field."""
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}.get(ch, ch)


def _scale(kind: str, values: Any) -> float:
    """The value drawn at full colour: 1 for gates and hidden, else the 90th percentile of |v|.

    A percentile rather than the peak, so that one extreme cell value does not
    wash out the rest; larger values saturate.
    """
    import numpy as np

    from charrnn.neurons.activations import BOUNDED_KINDS

    if kind in BOUNDED_KINDS or len(values) == 0:
        return 1.0
    scale = float(np.percentile(np.abs(values), 90)) or float(np.abs(values).max())
    return scale if scale > 0 else 1.0


def _style(t: float) -> str:
    from charrnn.neurons.viewer import diverging_rgb

    r, g, b = diverging_rgb(t)
    return f"{'white' if abs(t) > 0.6 else 'black'} on rgb({r},{g},{b})"


def _coloured(text: str, values: Any, scale: float) -> Text:
    out = Text()
    for ch, v in zip(text, values):
        out.append(_shown(ch), style=_style(float(v) / scale))
        if ch == "\n":
            out.append("\n")
    return out


def _legend(title: str, scale: float) -> Text:
    out = Text(f"{title}   {-scale:+.2f} ")
    for i in range(11):
        out.append("  ", style=_style(-1 + i / 5))
    out.append(f" {scale:+.2f}")
    return out


def inspect_cmd(
    run: RunArg = None,
    text: Annotated[
        str | None, typer.Option("--text", help="Text to run through the model.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read the text from this file.")
    ] = None,
    layer: Annotated[
        int | None, typer.Option("--layer", help="Layer, 0 = first; default: the last.")
    ] = None,
    unit: Annotated[
        int | None,
        typer.Option("--unit", help="Unit in the layer; default: the one with most variance."),
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help=KindHelp + " Default: cell, else hidden.")
    ] = None,
    top_units: Annotated[
        int,
        typer.Option(
            "--top-units", min=0, help="Show the K units with the largest variance on this text."
        ),
    ] = 0,
    predictions: Annotated[
        int,
        typer.Option(
            "--predictions", min=0, help="Show the K most likely next characters per position."
        ),
    ] = 0,
    no_color: NoColorOpt = False,
    export: ExportOpt = None,
    unknown: UnknownOpt = "error",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Print a text coloured by one unit's activation (or the K most varying units)."""
    from charrnn.neurons.activations import (
        Recorder,
        activation_kinds,
        check_selection,
        encode_text,
        run_text,
        write_npz,
    )
    from charrnn.neurons.unitstats import rank_units

    ckpt, model, _ = _load(run, runs_dir)
    raw = _read_text(text, file, ckpt.vocab.byte_level)
    kinds = activation_kinds(model)
    num_layers = ckpt.model_config.num_layers
    kind = kind or ("cell" if "cell" in kinds else "hidden")
    check_selection(kinds, num_layers, num_layers - 1 if layer is None else layer, kind, unit or 0)
    shown, ids = encode_text(raw, ckpt.vocab, unknown)
    recorder = Recorder(kinds, num_layers, len(ids), top_k=predictions)
    run_text(model, ids, [recorder])

    values = recorder.values[kind]  # (L, N, U)
    variance = {kind: values.var(axis=1)}
    if top_units:  # across all layers unless --layer names one
        units = [
            (s.layer, s.unit) for s in rank_units(variance, top_units, by_abs=False, layer=layer)
        ]
    else:
        layer = num_layers - 1 if layer is None else layer
        if unit is None:
            unit = rank_units(variance, 1, by_abs=False, layer=layer)[0].unit
        units = [(layer, unit)]

    console, plain = _console(no_color)
    top_chars = (
        [[ckpt.vocab.chars[i] for i in row] for row in recorder.top_ids] if predictions else []
    )
    if plain:
        head = ["pos", "char"] + [f"L{l}.{kind}.{u}" for l, u in units]
        head += [f"{name}{k + 1}" for k in range(predictions) for name in ("next", "p")]
        typer.echo("\t".join(head))
        for t, ch in enumerate(shown):
            row = [str(t), _escaped(ch)] + [f"{values[l, t, u]:.4f}" for l, u in units]
            for k in range(predictions):
                row += [_escaped(top_chars[t][k]), f"{recorder.top_probs[t, k]:.4f}"]
            typer.echo("\t".join(row))
    else:
        for l, u in units:
            scale = _scale(kind, values[l, :, u])
            console.print(_legend(f"layer {l} · {kind} · unit {u}", scale))
            console.print(_coloured(shown, values[l, :, u], scale))
            console.print()
        if predictions:
            table = Table("pos", "char", f"top {predictions} next characters", box=None)
            for t, ch in enumerate(shown):
                guesses = "  ".join(
                    f"{_shown(c)} {p:.2f}" for c, p in zip(top_chars[t], recorder.top_probs[t])
                )
                table.add_row(str(t), _shown(ch), guesses)
            console.print(table)
    if export is not None:
        write_npz(export, shown, ckpt.vocab, ckpt.model_config.model, recorder)
        Console(stderr=True).print(f"wrote activations of {len(shown)} characters to {export}")


def _progress(total: int, what: str) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    return tqdm(
        total=total,
        unit="char",
        unit_scale=True,
        desc=what,
        leave=False,
        disable=not sys.stderr.isatty(),
    )


def cells_cmd(
    run: RunReq,
    file: FileArg,
    feature: Annotated[
        str,
        typer.Option(
            "--feature",
            help="inside-quotes, line-position, bracket-depth, inside-word, word-position, "
            "after-newline, or re:PATTERN (1 inside a match).",
        ),
    ] = "inside-quotes",
    top: Annotated[int, typer.Option("--top", min=1, help="Units to list.")] = 10,
    kind: Annotated[
        str | None, typer.Option("--kind", help=KindHelp + " Default: all kinds.")
    ] = None,
    excerpt: Annotated[
        int, typer.Option("--excerpt", min=0, help="Characters of the coloured excerpt.")
    ] = 400,
    batch_size: BatchSizeOpt = 16,
    no_color: NoColorOpt = False,
    export: ExportOpt = None,
    unknown: UnknownOpt = "error",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Rank every unit of every layer by how well it tracks a feature of the text (Pearson r)."""
    import numpy as np

    from charrnn.neurons.activations import (
        Recorder,
        activation_kinds,
        encode_text,
        plan_streams,
        run_text,
        write_npz,
    )
    from charrnn.neurons.features import compute_feature
    from charrnn.neurons.unitstats import UnitScan, rank_units

    ckpt, model, _ = _load(run, runs_dir)
    raw = _read_file(file, ckpt.vocab.byte_level)
    all_kinds = activation_kinds(model)
    if kind is not None and kind not in all_kinds:
        raise CharRNNError(
            f"this model has no '{kind}' activations: choose {', '.join(all_kinds)}."
        )
    kinds = {kind: all_kinds[kind]} if kind else all_kinds
    num_layers = ckpt.model_config.num_layers
    text, ids = encode_text(raw, ckpt.vocab, unknown)
    values = compute_feature(text, feature)
    if np.ptp(values) == 0:
        raise CharRNNError(
            f"feature '{feature}' is constant on this text, so nothing can track it."
        )
    n = len(text)
    changes = np.flatnonzero(values != values[0])
    start = max(0, min(int(changes[0]) - excerpt // 4, n - excerpt))
    window = Recorder(kinds, num_layers, min(n, start + excerpt), start=start)
    scan = UnitScan(kinds, num_layers, values[:, None])
    consumers: list[Any] = [scan, window]
    # An export of a long file is built in memory-mapped .npy files beside its target.
    scratch = Path(export).resolve().parent if export is not None else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".charrnn-export-", dir=scratch) as tmp:
        full = Recorder(all_kinds, num_layers, n, directory=Path(tmp)) if export else None
        if full is not None:
            consumers.append(full)
        with _progress(n, "cells") as bar:
            run_text(
                model, ids, consumers, streams=plan_streams(n, batch_size), progress=bar.update
            )
        if full is not None and export is not None:
            write_npz(export, text, ckpt.vocab, ckpt.model_config.model, full)
            Console(stderr=True).print(f"wrote activations of {n} characters to {export}")

    scores = rank_units(scan.correlations(0), top)
    console, plain = _console(no_color)
    if plain:
        typer.echo("rank\tlayer\tunit\tkind\tr")
        for i, s in enumerate(scores, 1):
            typer.echo(f"{i}\t{s.layer}\t{s.unit}\t{s.kind}\t{s.value:+.4f}")
        return
    table = Table(
        "rank", "layer", "unit", "kind", "r", title=f"units tracking {feature} ({n} characters)"
    )
    for i, s in enumerate(scores, 1):
        table.add_row(str(i), str(s.layer), str(s.unit), s.kind, f"{s.value:+.3f}")
    console.print(table)
    if excerpt and scores:
        best = scores[0]
        unit_values = window.values[best.kind][best.layer, :, best.unit]
        scale = _scale(best.kind, unit_values)
        console.print(_legend(f"layer {best.layer} · {best.kind} · unit {best.unit}", scale))
        console.print(_coloured(text[start : start + len(unit_values)], unit_values, scale))


def gates_cmd(
    run: RunReq,
    file: FileArg,
    per_unit: Annotated[
        bool, typer.Option("--per-unit", help="List every gate unit's fractions.")
    ] = False,
    batch_size: BatchSizeOpt = 16,
    no_color: NoColorOpt = False,
    unknown: UnknownOpt = "error",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Gate saturation: how often each gate is left- (< 0.1) or right-saturated (> 0.9)."""
    from charrnn.neurons.activations import activation_kinds, encode_text, plan_streams, run_text
    from charrnn.neurons.unitstats import GateCounts, summarise_gates

    ckpt, model, _ = _load(run, runs_dir)
    raw = _read_file(file, ckpt.vocab.byte_level)
    kinds = activation_kinds(model)
    counts = GateCounts(kinds, ckpt.model_config.num_layers)
    if not counts.gates:
        raise CharRNNError(
            f"the {ckpt.model_config.model} model has no gates: use an lstm, gru or gated kind."
        )
    text, ids = encode_text(raw, ckpt.vocab, unknown)
    with _progress(len(ids), "gates") as bar:
        run_text(
            model, ids, [counts], streams=plan_streams(len(ids), batch_size), progress=bar.update
        )
    console, plain = _console(no_color)
    if per_unit:
        typer.echo("layer\tgate\tunit\tleft\tright")
        for gate, (left, right) in counts.fractions().items():
            for l in range(left.shape[0]):
                for u in range(left.shape[1]):
                    typer.echo(f"{l}\t{gate}\t{u}\t{left[l, u]:.4f}\t{right[l, u]:.4f}")
        return
    rows = summarise_gates(counts)
    head = [
        "layer",
        "gate",
        "units",
        "left <0.1",
        "right >0.9",
        "mostly left",
        "mostly right",
        "rarely saturated",
    ]
    cells = [
        [
            str(r.layer),
            r.kind,
            str(r.units),
            f"{r.left_mean:.3f}",
            f"{r.right_mean:.3f}",
            str(r.mostly_left),
            str(r.mostly_right),
            str(r.rarely),
        ]
        for r in rows
    ]
    if plain:
        typer.echo("\t".join(head))
        for row in cells:
            typer.echo("\t".join(row))
        return
    table = Table(
        *head, title=f"gate saturation over {len(text)} characters (mean fraction of time per unit)"
    )
    for row in cells:
        table.add_row(*row)
    console.print(table)
    console.print(
        "'mostly': saturated more than half the time; 'rarely': less than 10%. Scatter: charrnn view."
    )


def view_cmd(
    run: RunReq,
    file: FileArg,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("view.html"),
    max_chars: Annotated[
        int, typer.Option("--max-chars", min=1, help="Characters shown (and embedded) in the page.")
    ] = 1000,
    predictions: Annotated[
        int, typer.Option("--predictions", min=0, help="Next-character guesses per position.")
    ] = 5,
    top: Annotated[int, typer.Option("--top", min=1, help="Units listed per feature.")] = 5,
    batch_size: BatchSizeOpt = 16,
    unknown: UnknownOpt = "error",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Write one self-contained HTML page to explore units, predictions, gates and curves."""
    from charrnn.curves import read_curves
    from charrnn.neurons.activations import (
        Recorder,
        activation_kinds,
        encode_text,
        plan_streams,
        run_text,
    )
    from charrnn.neurons.features import FEATURES, compute_features
    from charrnn.neurons.unitstats import GateCounts, UnitScan, rank_units
    from charrnn.neurons.viewer import PageData, write_page

    ckpt, model, ckpt_path = _load(run, runs_dir)
    raw = _read_file(file, ckpt.vocab.byte_level)
    kinds = activation_kinds(model)
    num_layers = ckpt.model_config.num_layers
    text, ids = encode_text(raw, ckpt.vocab, unknown)
    n, shown = len(text), min(len(text), max_chars)
    names = list(FEATURES)
    scan = UnitScan(kinds, num_layers, compute_features(text, names))
    counts = GateCounts(kinds, num_layers)
    recorder = Recorder(kinds, num_layers, shown, top_k=predictions)
    streams = min(plan_streams(n, batch_size), max(1, n // shown))  # shown text in one stream
    with _progress(n, "view") as bar:
        run_text(model, ids, [scan, counts, recorder], streams=streams, progress=bar.update)

    rankings = {
        name: rank_units(scan.correlations(i), top)
        for i, name in enumerate(names)
        if not scan.feature_is_constant(i)
    }
    variances = scan.variances()
    rankings["variance"] = [
        s for k in kinds for s in rank_units({k: variances[k]}, 2, by_abs=False)
    ]
    first = next(iter(rankings.values()))[0]
    try:
        curves = read_curves(ckpt_path.parent / "metrics.jsonl")
    except CharRNNError:
        curves = None
    cfg = ckpt.model_config
    data = PageData(
        title=f"{ckpt_path.parent.name} · {cfg.model} {cfg.num_layers}×{cfg.hidden_size} · {file.name}",
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
    write_page(out, data)
    size = out.stat().st_size / 1024
    Console(stderr=True).print(f"wrote {out} ({size:.0f} KiB, {shown} of {n} characters shown)")


def _run_folder(run: str | None, runs_dir: Path) -> Path:
    for candidate in [Path(run), runs_dir / run] if run else []:
        if candidate.is_dir():
            return candidate
    return _resolve(run, runs_dir).parent


def curves_cmd(
    run: RunArg = None,
    width: Annotated[int, typer.Option("--width", min=10, help="Plot width in characters.")] = 60,
    height: Annotated[int, typer.Option("--height", min=3, help="Plot height in lines.")] = 12,
    no_color: NoColorOpt = False,
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Show a run's train and validation loss curves from its metrics.jsonl."""
    console, plain = _console(no_color)
    show_curves(_run_folder(run, runs_dir) / "metrics.jsonl", console, plain, width, height)


def show_curves(
    path: Path, console: Console, plain: bool = False, width: int = 60, height: int = 12
) -> None:
    """Print the curves of a metrics.jsonl: a text plot and a summary, or a TSV when plain.

    Raises CharRNNError when the file is missing or holds no losses.
    """
    import math

    from charrnn.curves import read_curves, text_plot

    curves = read_curves(path)
    if plain:
        typer.echo("event\tstep\ttime\tloss")
        for event, series in (("train", curves.train), ("eval", curves.val)):
            for p in series:
                typer.echo(f"{event}\t{p.step}\t{p.time:.1f}\t{p.loss:.4f}")
        if curves.skipped:
            typer.echo(f"{curves.skipped} damaged line(s) of {path} skipped", err=True)
        return
    console.print(
        f"[bold]{escape(str(path))}[/]  [dim]· train[/]  [red]● validation[/]  (nats/char)"
    )
    for line in text_plot(curves, width, height):
        console.print(_plot_line(line))
    best, last = curves.best_val, (curves.train[-1] if curves.train else None)
    if last:
        console.print(f"last train loss {last.loss:.4f} at step {last.step} ({last.time:.0f} s)")
    if best:
        console.print(
            f"best val loss {best.loss:.4f} ({best.loss / math.log(2):.3f} bits/char) at step {best.step},"
            f" {len(curves.val)} evaluations"
        )
    if curves.skipped:
        console.print(f"[yellow]{curves.skipped} damaged line(s) of {escape(str(path))} skipped[/]")


def _plot_line(line: str) -> Text:
    out = Text()
    for ch in line:
        out.append(ch, style="red" if ch == "●" else "dim" if ch == "·" else "")
    return out


def plot_cmd(
    run: RunArg = None,
    out: Annotated[
        Path, typer.Option("--out", help="Picture to write (.png, .svg or .pdf).")
    ] = Path("curve.png"),
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Draw a run's train and validation loss curves to a picture (needs matplotlib)."""
    from charrnn.curves import read_curves

    curves = read_curves(_run_folder(run, runs_dir) / "metrics.jsonl")
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CharRNNError("plot needs matplotlib: pip install 'charrnn[plot]' (or matplotlib).")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if curves.train:
        ax.plot(
            [p.step for p in curves.train],
            [p.loss for p in curves.train],
            lw=1,
            alpha=0.6,
            label="train",
        )
    if curves.val:
        ax.plot(
            [p.step for p in curves.val],
            [p.loss for p in curves.val],
            "o-",
            lw=2,
            ms=3,
            label="validation",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise CharRNNError(f"cannot write '{out}': {exc}.")
    finally:
        plt.close(fig)
    Console(stderr=True).print(f"wrote {out}")


COMMANDS: dict[str, Callable[..., None]] = {}  # filled below: name -> command function


def register(app: typer.Typer, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Add inspect, cells, gates, view, curves and plot to `app`.

    `wrap` is the app's one error handler (charrnn.cli.handle_errors), which maps
    CharRNNError to `error: ...` and exit 1.
    """
    for name, command in COMMANDS.items():
        app.command(name)(wrap(command))


COMMANDS.update(
    inspect=inspect_cmd,
    cells=cells_cmd,
    gates=gates_cmd,
    view=view_cmd,
    curves=curves_cmd,
    plot=plot_cmd,
)
