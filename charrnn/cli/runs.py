"""Run-level commands: `runs` (what runs there are), `info` (one run in detail), `curves`
and `plot` (a run's learning curves, as text or as a picture)."""

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from charrnn.cli.common import (
    LN2,
    RunArg,
    RunsDir,
    Table,
    err,
    fail,
    fmt_loss,
    out,
)
from charrnn.errors import CharRNNError


def runs(
    runs_dir: RunsDir = Path("checkpoints"),
    check: Annotated[
        bool, typer.Option("--check", help="Load every checkpoint and report damaged ones (exit 1 if any).")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON array of the runs for scripts, nothing else on stdout."),
    ] = False,
) -> None:
    """List runs, most recent first, with their disk usage."""
    from charrnn.rundir import checkpoint_files, disk_usage, last_written, list_runs

    found = list_runs(runs_dir)
    if as_json:
        typer.echo(json.dumps([run_record(r) for r in found], indent=2))
        return
    if not found:
        err.print(f"no runs in '{runs_dir}' yet: train one with `charrnn train shakespeare`.")
        return
    if check:
        from charrnn.checkpoint import build_model, load_checkpoint

        damaged = 0
        for r in found:
            for path in checkpoint_files(r):
                try:
                    ckpt = load_checkpoint(path)
                    build_model(ckpt)
                    if ckpt.nonfinite:
                        raise CharRNNError(f"non-finite weights in {', '.join(ckpt.nonfinite[:3])}")
                    out.print(f"ok       {path}", highlight=False, markup=False)
                except (CharRNNError, OSError) as exc:
                    damaged += 1
                    out.print(f"DAMAGED  {path}: {exc}", highlight=False, markup=False)
        if damaged:
            fail(f"{damaged} damaged checkpoint(s): resume from a good one or delete them.")
        return
    table = Table()
    for col in ("name", "model", "size", "steps", "best val bpc", "disk", "when"):
        table.add_column(col)
    for r in found:
        config, damage = _read_config(r.config)
        m = config.get("model") if isinstance(config.get("model"), dict) else {}
        summary = _summary(r)
        kind = m.get("model") if isinstance(m.get("model"), str) else "?"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last_written(r)))
        table.add_row(
            r.dir.name,
            kind + (f" ({damage})" if damage else ""),
            f"{_plain(m.get('num_layers'))}x{_plain(m.get('hidden_size'))}",
            str(summary["step"]),
            fmt_loss(summary["best_val"] / LN2),
            f"{disk_usage(r) / 1e6:.1f} MB",
            when,
        )
    out.print(table)


def run_record(run: Any) -> dict:
    """What `runs --json` prints for one run; unknown fields (a damaged config.json) are null.
    best_val is in nats/char; last_written is seconds since the epoch."""
    from charrnn.rundir import last_written

    config, _ = _read_config(run.config)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    corpus = config.get("corpus") if isinstance(config.get("corpus"), dict) else {}
    summary = _summary(run)

    def whole(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return {
        "name": run.dir.name,
        "path": str(run.dir),
        "step": summary["step"],
        "best_val": summary["best_val"] if math.isfinite(summary["best_val"]) else None,
        "model": model.get("model") if isinstance(model.get("model"), str) else None,
        "num_layers": whole(model.get("num_layers")),
        "hidden_size": whole(model.get("hidden_size")),
        "corpus": corpus.get("path") if isinstance(corpus.get("path"), str) else None,
        # what was given on the command line: several files, folders or globs for one corpus
        "sources": corpus.get("sources") if isinstance(corpus.get("sources"), list) else None,
        "last_written": last_written(run),
    }


def _read_config(path: Path) -> tuple[dict, str]:
    """A run's config.json as a dict, and what is wrong with it ('' when nothing)."""
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}, "no config.json"
    except (OSError, ValueError):
        return {}, "config.json damaged"
    return (config, "") if isinstance(config, dict) else ({}, "config.json damaged")


def _plain(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def _summary(run: Any) -> dict:
    """Step and best val of a run from its metrics (no torch needed); damaged events are skipped."""
    from charrnn.rundir import event_step, number, read_metrics

    step, best = 0, math.inf
    for event in read_metrics(run):
        step = max(step, event_step(event) or 0)
        if event.get("event") == "eval":
            best = min(best, number(event, "val_loss", math.inf))
    return {"step": step, "best_val": best}


def info(run: RunArg = None, runs_dir: RunsDir = Path("checkpoints")) -> None:
    """Show one run: model, training settings, progress, best validation loss."""
    from rich.markup import escape

    from charrnn.limits import parameter_count
    from charrnn.rundir import number, resolve_checkpoint

    path = resolve_checkpoint(run, runs_dir, prefer="last")
    ckpt, path, damage = _load_for_info(path)
    p = ckpt.progress
    table = Table(show_header=False, title=str(path))
    if damage:
        table.add_row("[red]damaged[/]", escape(damage))
    m = ckpt.model_config
    table.add_row("model", f"{m.model} {m.num_layers}x{m.hidden_size}, embed {m.embedding_size}, dropout {m.dropout}")
    table.add_row("parameters", f"{parameter_count(m):,}")
    cap = ckpt.vocab.max_vocab
    capped = f" (--max-vocab {cap}: the {cap} most frequent, the others as U+FFFD)" if cap else ""
    table.add_row("vocabulary", f"{len(ckpt.vocab)} {'bytes' if ckpt.vocab.byte_level else 'characters'}{capped}")
    best = number(p, "best_val", math.inf)
    if ckpt.optimizer_state is None and path.suffix == ".safetensors":  # weights only: no training record
        source = ckpt.corpus.get("exported_from")
        step = f" at step {number(p, 'step', 0):,.0f}" if "step" in p else ""
        table.add_row("file", escape(f"weights only, exported from run '{source}'{step}" if source else "weights only"))
    else:
        t = ckpt.train_config
        table.add_row("training", f"B={t.batch_size} T={t.seq_len} lr={t.lr} clip={t.grad_clip} seed={t.seed}")
        if t.split:
            table.add_row("split", f"train/val/test {t.split} (charrnn eval RUN --split test)")
        table.add_row(
            "progress",
            f"step {number(p, 'step', 0):,.0f}, epoch {number(p, 'epoch', 0):.0f}, {number(p, 'elapsed', 0):.1f}s",
        )
    table.add_row("best val", f"{fmt_loss(best)} nats/char, {fmt_loss(best / LN2)} bits/char")
    if "exported_from" not in ckpt.corpus:
        table.add_row("corpus", escape(f"{ckpt.corpus.get('path', '?')} ({ckpt.corpus.get('chars', '?')} chars)"))
    if isinstance(ckpt.corpus.get("parent"), dict):  # a fine-tuned run (train --init-from)
        table.add_row("parent", escape(_describe_parent(ckpt.corpus["parent"])))
    if ckpt.nonfinite:
        table.add_row("[red]weights[/]", escape(f"non-finite values in {', '.join(ckpt.nonfinite[:3])}"))
    from charrnn.cli.gradients import health_rows
    from charrnn.rundir import grad_health, read_events

    for key, value in health_rows(grad_health(read_events(path.parent / "metrics.jsonl")), ckpt.train_config):
        table.add_row(key, value)  # the gradient norm and the clipped steps while training
    out.print(table)
    metrics = path.parent / "metrics.jsonl"
    if metrics.is_file():
        try:
            show_curves(metrics, out)
        except CharRNNError:  # a run with no losses logged yet has no curves to show
            pass


def _describe_parent(parent: dict) -> str:
    """The run a fine-tuned run started from: name, step, best val, checkpoint hash, characters added."""
    step, best, sha, added = (parent.get(k) for k in ("step", "best_val", "sha256", "added"))
    parts = [f"run '{parent.get('name', '?')}'" + (f" at step {step:,}" if isinstance(step, int) else "")]
    if isinstance(best, (int, float)):
        parts.append(f"best val {fmt_loss(best)} nats/char")
    if isinstance(sha, str):
        parts.append(f"sha256 {sha[:16]}")
    if isinstance(added, int):
        parts.append(f"{added} character(s) added")
    return ", ".join(parts) + (f" ({parent['path']})" if isinstance(parent.get("path"), str) else "")


def _load_for_info(path: Path) -> tuple[Any, Path, str]:
    """The checkpoint to describe: `path`, or the run's other checkpoint when `path` is damaged
    (then the third item says what is wrong with `path`). Raises CharRNNError when none loads."""
    from charrnn.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path), path, ""
    except CharRNNError as exc:
        other = path.with_name("best.pt" if path.name == "last.pt" else "last.pt")
        if path.name not in ("last.pt", "best.pt") or not other.is_file():
            raise
        try:
            return load_checkpoint(other), other, f"{path.name}: {exc}"
        except CharRNNError:
            raise exc from None


NoColor = Annotated[
    bool,
    typer.Option(
        "--no-color", help="Print a plain tab-separated table (also when NO_COLOR is set or output is not a terminal)."
    ),
]


def _run_folder(run: str | None, runs_dir: Path) -> Path:
    """The folder of `run`: a folder given as is, a run name, or the folder of its checkpoint."""
    from charrnn.rundir import resolve_checkpoint

    for candidate in [Path(run), runs_dir / run] if run else []:
        if candidate.is_dir():
            return candidate
    return resolve_checkpoint(run, runs_dir).parent


def curves_cmd(
    run: RunArg = None,
    width: Annotated[int, typer.Option("--width", min=10, help="Plot width in characters.")] = 60,
    height: Annotated[int, typer.Option("--height", min=3, help="Plot height in lines.")] = 12,
    no_color: NoColor = False,
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Show a run's train and validation loss curves from its metrics.jsonl."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    plain = no_color or console.no_color or not console.is_terminal
    show_curves(_run_folder(run, runs_dir) / "metrics.jsonl", console, plain, width, height)


def show_curves(path: Path, console: Any, plain: bool = False, width: int = 60, height: int = 12) -> None:
    """Print the curves of a metrics.jsonl: a text plot and a summary, or a TSV when plain.

    Raises CharRNNError when the file is missing or holds no losses.
    """
    from rich.markup import escape
    from rich.text import Text

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
    console.print(f"[bold]{escape(str(path))}[/]  [dim]· train[/]  [red]● validation[/]  (nats/char)")
    for line in text_plot(curves, width, height):
        drawn = Text()
        for ch in line:
            drawn.append(ch, style="red" if ch == "●" else "dim" if ch == "·" else "")
        console.print(drawn)
    best, last = curves.best_val, (curves.train[-1] if curves.train else None)
    if last:
        console.print(f"last train loss {last.loss:.4f} at step {last.step} ({last.time:.0f} s)")
    if best:
        console.print(
            f"best val loss {best.loss:.4f} ({best.loss / LN2:.3f} bits/char) at step {best.step},"
            f" {len(curves.val)} evaluations"
        )
    if curves.skipped:
        console.print(f"[yellow]{curves.skipped} damaged line(s) of {escape(str(path))} skipped[/]")


def plot_cmd(
    run: RunArg = None,
    out_file: Annotated[Path, typer.Option("--out", help="Picture to write (.png, .svg or .pdf).")] = Path("curve.png"),
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Draw a run's train and validation loss curves to a picture (needs matplotlib)."""
    from charrnn.curves import plot_curves, read_curves

    plot_curves(read_curves(_run_folder(run, runs_dir) / "metrics.jsonl"), out_file)
    err.print(f"wrote {out_file}", markup=False, highlight=False)
