"""The `charrnn` command line: options -> configs -> one library call -> rich output.

Heavy modules (torch, numpy) are imported inside the commands so `--help` is instant.
Every CharRNNError becomes `error: <message>` on stderr and exit status 1.
"""

# No `from __future__ import annotations` here: typer evaluates every string annotation
# again on each start (about 35 ms of `charrnn --help` here).
import contextlib
import functools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from charrnn.errors import CharRNNError
from charrnn.lazy import LazyConsole, lazy_callable

Table = lazy_callable("rich.table", "Table")

app = typer.Typer(
    name="charrnn",
    help="Character-level recurrent language models: train on any text, sample, look inside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs ~0.15 s of start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = LazyConsole()
err = LazyConsole(stderr=True)

LN2 = math.log(2)

# Options shared by several commands, declared once.
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Folder holding run folders.", envvar="CHARRNN_RUNS_DIR")]
DataDir = Annotated[Path, typer.Option("--data-dir", help="Folder for corpora and the prepared-data cache.", envvar="CHARRNN_DATA_DIR")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | mps (auto = cuda when present).")]
Encoding = Annotated[str, typer.Option("--encoding", help="Text codec of the file, or 'bytes' for a byte-level vocabulary.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
RunArg = Annotated[Optional[str], typer.Argument(help="Run name, run folder or .pt file (default: the latest run).", show_default=False)]


def fail(message: str) -> None:
    """Print `error: message` on stderr and exit 1."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The one place where a CharRNNError turns into `error: ...` and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CharRNNError as exc:
            fail(str(exc))
        except OSError as exc:  # a user's path refused: no space, read-only, not a folder...
            from charrnn.files import os_error

            fail(str(os_error(exc)))
        except MemoryError:
            fail("out of memory: use a smaller model (--hidden, --layers) or --batch-size, "
                 "or close other programs.")

    return wrapper


# ---------------------------------------------------------------------------------------
@app.command()
@handle_errors
def prepare(
    corpus: Annotated[str, typer.Argument(help="Text file, or a built-in name: shakespeare.")],
    encoding: Encoding = "utf-8",
    data_dir: DataDir = Path("data"),
    corpus_url: Annotated[Optional[str], typer.Option(help="Download URL for a built-in corpus (mirrors, tests).", envvar="CHARRNN_SHAKESPEARE_URL")] = None,
) -> None:
    """Encode a corpus once into the token cache (train does this itself)."""
    from charrnn.data.corpus import prepare as prepare_corpus, resolve_corpus

    t0 = time.perf_counter()
    data = prepare_corpus(resolve_corpus(corpus, data_dir, corpus_url), data_dir, encoding)
    _print_notes(data, quiet=False)
    table = Table(show_header=False, box=None)
    table.add_row("corpus", str(data.source))
    table.add_row("characters", f"{len(data.tokens):,}")
    table.add_row("vocabulary", f"{len(data.vocab)} symbols ({data.tokens.dtype})")
    table.add_row("sha256", data.sha256)
    table.add_row("seconds", f"{time.perf_counter() - t0:.2f}")
    out.print(table)


# ---------------------------------------------------------------------------------------
_MODEL_OPTIONS = ("model", "num_layers", "hidden_size", "embed_size", "dropout", "dropout_mask", "weight_drop",
                  "batch_size", "seq_len", "lr", "weight_decay", "warmup", "min_lr_ratio", "grad_clip", "val_frac", "val_chars",
                  "val_streams", "evals", "patience", "seed", "encoding")


@app.command()
@handle_errors
def train(
    corpus: Annotated[Optional[str], typer.Argument(help="Text file or built-in name (shakespeare). Optional with --resume.", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (folder under --runs-dir). Default: corpus stem + time.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue this run from its last.pt.")] = None,
    model: Annotated[Optional[str], typer.Option(help="lstm | gru | rnn | peephole-lstm | gf-rnn | gf-gru | gf-lstm.  [default: lstm]")] = None,
    num_layers: Annotated[Optional[int], typer.Option("--layers", "--num-layers", help="Recurrent layers.  [default: 2]")] = None,
    hidden_size: Annotated[Optional[int], typer.Option("--hidden", "--hidden-size", help="Units per layer.  [default: planned; 512 with --no-auto]")] = None,
    embed_size: Annotated[Optional[int], typer.Option("--embed", "--embed-size", help="Embedding size; 0 = same as --hidden.  [default: planned: 64 on CPU, 0 on GPU; 0 with --no-auto]")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout on embedding, between layers, before the head.  [default: planned]")] = None,
    dropout_mask: Annotated[Optional[str], typer.Option(help="locked (one mask per sequence, variational) | per-step.  [default: locked]")] = None,
    weight_drop: Annotated[Optional[float], typer.Option(help="DropConnect on the recurrent weights (lstm, gru, rnn).  [default: planned]")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Fixed size: tiny (2x128) | small (2x256) | medium (2x512) | large (2x1024) | xl (3x1536).")] = None,
    auto: Annotated[bool, typer.Option("--auto/--no-auto", help="Plan unset settings from the budget, a speed probe and the corpus size; --no-auto uses fixed defaults.")] = True,
    batch_size: Annotated[Optional[int], typer.Option(help="B parallel streams.  [default: planned; 32 with --no-auto]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="T characters per truncated-BPTT step.  [default: planned; 100 with --no-auto]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak AdamW learning rate.  [default: planned; 0.002 with --no-auto]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay.  [default: 0]")] = None,
    warmup: Annotated[Optional[float], typer.Option(help="Fraction of the run for linear warm-up.  [default: 0.02]")] = None,
    min_lr_ratio: Annotated[Optional[float], typer.Option(help="The cosine ends at lr x this; 1 = constant after warm-up.  [default: 0.02]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Global gradient-norm clip; 0 = off.  [default: 1]")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many epochs.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.")] = None,
    time_budget: Annotated[Optional[str], typer.Option(help="Stop after this long, e.g. 90s, 10m, 1h30m.  [default: 10m if no other stop is given]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Validate every N steps; 0 = --evals times per run.")] = None,
    evals: Annotated[Optional[int], typer.Option(help="Validations spread over the run.  [default: planned]")] = None,
    val_chars: Annotated[Optional[int], typer.Option(help="Val characters scored per validation; 0 = all.  [default: planned]")] = None,
    val_streams: Annotated[Optional[int], typer.Option(help="Parallel streams when validating; each starts from a zero state.  [default: 32]")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after N validations without a new best; 0 = never.  [default: 3]")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 | bf16 (autocast; weights stay fp32).  [default: planned: bf16 on GPUs, and on CPUs where the probe finds it 1.2x faster (AMX), else fp32]")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Log every N steps.  [default: 10]")] = None,
    keep_last: Annotated[Optional[int], typer.Option(help="Keep the last N periodic step-N.pt checkpoints too.  [default: 0]")] = None,
    val_frac: Annotated[Optional[float], typer.Option(help="Last fraction of the corpus kept for validation.  [default: 0.1]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for weights and dropout.  [default: 1337]")] = None,
    device: Device = "auto",
    encoding: Encoding = "utf-8",
    runs_dir: RunsDir = Path("checkpoints"),
    data_dir: DataDir = Path("data"),
    corpus_url: Annotated[Optional[str], typer.Option(help="Download URL for a built-in corpus.", envvar="CHARRNN_SHAKESPEARE_URL")] = None,
    length_min: Annotated[int, typer.Option(help="task:* corpora: shortest example.")] = 1,
    length_max: Annotated[int, typer.Option(help="task:* corpora: longest example.")] = 20,
    task_chars: Annotated[int, typer.Option(help="task:* corpora: characters generated.")] = 1_000_000,
    nproc: Annotated[int, typer.Option(help="Data-parallel: start N processes on this machine via torchrun (--batch-size stays global).")] = 0,
    dist_timeout: Annotated[float, typer.Option(help="Distributed: seconds a rank waits for a silent one before failing.")] = 1800.0,
    quiet: Quiet = False,
) -> None:
    """Train a model on a text file, a built-in corpus (shakespeare) or a memory task
    (task:parity, task:brackets, task:copy); checkpoints go to RUNS_DIR/NAME/."""
    from charrnn.train.distributed import DistConfig, exec_torchrun, init_from_env

    dcfg = DistConfig(nproc=nproc, timeout=dist_timeout)
    if dcfg.nproc:  # before torch is imported: torchrun starts this command once per rank
        exec_torchrun(dcfg.nproc, sys.argv[1:], os.environ)  # does not return
    import dataclasses

    from charrnn.config import ModelConfig, TrainConfig, parse_duration
    from charrnn.data.corpus import prepare as prepare_corpus, resolve_corpus
    from charrnn.runs import RunLock, default_run_name, new_run, resolve_checkpoint, run_paths

    given = {k: v for k, v in locals().items() if k in _MODEL_OPTIONS and v is not None}
    if encoding == "utf-8":
        given.pop("encoding", None)
    stops = {"epochs": epochs or 0.0, "max_steps": max_steps or 0,
             "time_budget": parse_duration(time_budget) if time_budget else 0.0}
    TrainConfig(**stops)  # a bad stop (--epochs nan) fails before any work
    runtime: dict[str, Any] = {"device": device}
    if precision is not None:
        runtime["precision"] = precision
    for key, value in (("eval_every", eval_every), ("log_every", log_every), ("keep_last", keep_last)):
        if value is not None:
            runtime[key] = value
    dist = init_from_env(device, dcfg.timeout, os.environ)  # one process unless started by torchrun
    from charrnn.train.loop import check_precision

    check_precision(precision or "fp32", dist.pick_device(device))  # before any download, preparation or probe
    # Rank 0 downloads and encodes the corpus first; the other ranks then map its cache.
    resolve_corpus, prepare_corpus = dist.main_first(resolve_corpus), dist.main_first(prepare_corpus)
    if resume is not None:
        if name is not None:
            raise CharRNNError("give either --resume RUN or --name NAME, not both.")
        if given:
            raise CharRNNError(
                f"--resume keeps the run's settings; drop {', '.join('--' + k.replace('_', '-') for k in given)} "
                "(only stop criteria, --device and logging may change)."
            )
        path = resolve_checkpoint(resume, runs_dir, prefer="last")
        run = run_paths(path.parent.parent, path.parent.name)
        # The lock comes before the checkpoint is read: a second resume is refused while the
        # first trains, and one that starts after it reads the newer checkpoint.
        with RunLock(run) if dist.is_main else contextlib.nullcontext():
            _resume_run(run, resolve_checkpoint(resume, runs_dir, prefer="last"), corpus, stops, runtime,
                        data_dir, corpus_url, dist, quiet, prepare_corpus, resolve_corpus)
        return
    if corpus is None:
        raise CharRNNError("give a corpus to train on, e.g. `charrnn train shakespeare`, or --resume RUN.")
    run = run_paths(runs_dir, name if name is not None else dist.from_main(default_run_name, str(corpus).replace(":", "-")))
    with new_run(run) if dist.is_main else contextlib.nullcontext():
        if corpus.startswith("task:"):
            data = _prepare_task(corpus, length_min, length_max, task_chars, given.get("seed", 1337), data_dir)
        else:
            data = prepare_corpus(resolve_corpus(corpus, data_dir, corpus_url), data_dir, encoding)
        _print_notes(data, quiet or not dist.is_main)
        notice = ""
        if not any(stops.values()):
            stops["time_budget"] = 600.0
            notice = "no stop criterion given: training for 10m (set --epochs, --max-steps or --time-budget)."
        planned: Any = None
        if auto and not corpus.startswith("task:"):
            planned = _plan_defaults({**given, **runtime}, preset, data, stops, dist.pick_device(device))
            given = {**given, **planned.model, **planned.train}
        elif preset is not None:
            raise CharRNNError("--preset needs the planner: drop --no-auto (or give the sizes as flags).")
        model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
        mcfg = ModelConfig(vocab_size=len(data.vocab), **{k: v for k, v in given.items() if k in model_fields})
        tcfg = TrainConfig(**{k: v for k, v in given.items() if k not in model_fields and k != "encoding"},
                           **stops, **runtime)
        corpus_info = _corpus_info(data, corpus if corpus.startswith("task:") else None)
        if planned is not None:
            corpus_info["plan"] = planned.summary()
            if not quiet and dist.is_main:
                _print_plan(planned, mcfg, tcfg)
        _run_training(mcfg, tcfg, data, run, corpus_info, None, quiet or not dist.is_main, notice, dist,
                      spent=_process_age(), eval_estimate=planned.eval_estimate if planned is not None else 0.0)


def _resume_run(run: Any, path: Path, corpus: Optional[str], stops: dict, runtime: dict, data_dir: Path,
                corpus_url: Optional[str], dist: Any, quiet: bool, prepare_corpus: Callable,
                resolve_corpus: Callable) -> None:
    """Continue `run` from checkpoint `path`; the caller holds the run's lock."""
    import dataclasses

    from charrnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    source = corpus or ckpt.corpus.get("path")
    if not source or not isinstance(source, str):
        raise CharRNNError("the run does not record its corpus: pass the corpus file.")
    enc = ckpt.corpus.get("encoding", "utf-8")
    fixed = ckpt.vocab if ckpt.corpus.get("task") else None
    data = prepare_corpus(resolve_corpus(source, data_dir, corpus_url), data_dir, enc if isinstance(enc, str) else "utf-8", fixed)
    _print_notes(data, quiet or not dist.is_main)
    if data.sha256 != ckpt.corpus.get("sha256"):
        raise CharRNNError(
            f"'{data.source}' is not the text run '{run.dir.name}' was trained on (content differs): "
            "pass the original corpus."
        )
    new_stops = stops if any(stops.values()) else {}
    tcfg = dataclasses.replace(ckpt.train_config, **new_stops, **runtime)
    task = ckpt.corpus.get("task")
    _run_training(ckpt.model_config, tcfg, data, run, _corpus_info(data, task if isinstance(task, str) else None),
                  ckpt, quiet, "", dist)


def _corpus_info(data: Any, task: Optional[str]) -> dict:
    info = {"path": str(Path(data.source).resolve()), "sha256": data.sha256,
            "encoding": data.encoding, "chars": int(len(data.tokens))}
    if task:
        info["task"] = task
    return info


def _print_notes(data: Any, quiet: bool) -> None:
    """What preparing the corpus had to repair (a damaged cache rebuilt), one line each."""
    if not quiet:
        for note in getattr(data, "notes", ()):
            err.print(note, highlight=False, markup=False, soft_wrap=True)


def _process_age() -> float:
    """Seconds since this process started (Linux), else since this module was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


_IMPORTED_AT = time.perf_counter()


def _plan_defaults(given: dict[str, Any], preset: Optional[str], data: Any, stops: dict[str, float],
                   device: Any) -> Any:
    """Fill the settings the user left open from the budget, a speed probe and the corpus."""
    import dataclasses

    from charrnn.train.plan import PRESETS, plan_run
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.corpus import split

    fixed = dict(given)
    if preset is not None:
        if preset not in PRESETS:
            raise CharRNNError(f"unknown --preset '{preset}': choose {', '.join(PRESETS)}.")
        fixed = {**PRESETS[preset], **given}  # flags win over the preset
    # Bad flags fail before the probe spends any time.
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    asked = ModelConfig(vocab_size=len(data.vocab), **{k: v for k, v in fixed.items() if k in model_fields})
    if "hidden_size" in fixed:  # sizes given as flags: refuse what cannot fit before the probe allocates it
        from charrnn.limits import check_memory, model_nbytes_for_training

        check_memory(model_nbytes_for_training(asked), f"training a {asked.num_layers}x{asked.hidden_size} {asked.model}")
    TrainConfig(**{k: v for k, v in fixed.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    train_tokens, val_tokens = split(data.tokens, given.get("val_frac", 0.1))
    budget = stops["time_budget"] if not (stops["epochs"] or stops["max_steps"]) else 0.0
    plan = plan_run(fixed, len(data.vocab), len(train_tokens), len(val_tokens), device, budget, stops["epochs"])
    for key, value in fixed.items():  # the preset's sizes come back as chosen settings
        if key not in given:
            (plan.train if key in ("batch_size", "seq_len") else plan.model)[key] = value
    return plan


def _print_plan(plan: Any, mcfg: Any, tcfg: Any) -> None:
    """Say what the planner chose, and how to override it."""
    size = f"{mcfg.num_layers}x{mcfg.hidden_size} {mcfg.model}"
    lines = [f"plan: {size}, embed {mcfg.embedding_size}, batch {tcfg.batch_size} x seq {tcfg.seq_len}, "
             f"lr {tcfg.lr:g}, dropout {mcfg.dropout:g} ({mcfg.dropout_mask}), weight drop {mcfg.weight_drop:g}, "
             f"{tcfg.evals} validations, patience {tcfg.patience}"]
    if plan.probe:
        probe = ", ".join(f"{h}: {r:,.0f}" for h, r in plan.probe.items())
        lines.append(f"  probe {plan.probe_seconds:.1f}s, training chars/s by hidden size: {probe}; "
                     f"about {plan.expected_epochs:.1f} epochs expected")
    lines += [f"  {note}" for note in plan.notes]
    lines.append("  every setting has its flag; --preset fixes the size; --no-auto plans nothing")
    err.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def _prepare_task(name: str, length_min: int, length_max: int, chars: int, seed: int, data_dir: Path) -> Any:
    """Generate a task:* corpus once into data_dir/tasks/ and prepare it with the task's alphabet."""
    from charrnn.data.corpus import prepare as prepare_corpus
    from charrnn.data.tasks import generate_task, task_vocab

    vocab = task_vocab(name)
    path = Path(data_dir) / "tasks" / f"{name[5:]}-{length_min}-{length_max}-{chars}-{seed}.txt"
    if not path.is_file():
        from charrnn.checkpoint import atomic_write

        text = generate_task(name, length_min, length_max, chars, seed)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return prepare_corpus(path, data_dir, "utf-8", vocab)


def _run_training(mcfg: Any, tcfg: Any, data: Any, run: Any, corpus_info: dict, ckpt: Any, quiet: bool,
                  notice: str = "", dist: Any = None, spent: float = 0.0, eval_estimate: float = 0.0) -> None:
    from tqdm import tqdm

    from charrnn.train.distributed import Dist, is_peer_failure, peer_failure_message
    from charrnn.train.loop import Trainer

    dist = dist if dist is not None else Dist()
    stop = {"signal": 0}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["signal"] and dist.enabled:  # torchrun and schedulers repeat a signal to every process: one stop
            return
        if stop["signal"]:  # second request: abort at once (checkpoint files are written atomically)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            raise KeyboardInterrupt
        stop["signal"] = signum
        if dist.enabled:  # torchrun signals every rank; rank 0 speaks for all (a second signal is ignored)
            if dist.is_main:
                err.print("\nstopping: saving a checkpoint")
            return
        err.print("\nstopping: saving a checkpoint (press Ctrl-C again to abort without saving)")

    bar: Any = None
    postfix: dict[str, str] = {}

    def on_event(event: dict) -> None:
        nonlocal bar
        if quiet:
            return
        kind = event["event"]
        if kind == "start":
            unit = "step" if event["total_steps"] else "s"
            total = event["total_steps"] or event["time_budget"]
            bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr,
                       initial=event["step"] if unit == "step" else min(event["time"], total))
            err.print(f"run {run.dir}  device {event['device']}  {event['steps_per_epoch']} steps/epoch", highlight=False)
        elif kind == "train" and bar is not None:
            target = event["step"] if bar.unit == "step" else min(event["time"], bar.total)
            bar.update(target - bar.n)
            postfix.update(loss=f"{event['train_loss']:.3f}", cps=f"{event['chars_per_s']:,.0f}")
            bar.set_postfix(postfix, refresh=False)
        elif kind == "eval" and bar is not None:
            postfix["val"] = f"{event['val_loss']:.3f}"
            bar.set_postfix(postfix, refresh=True)
        elif kind == "end" and bar is not None:
            bar.close()

    trainer = Trainer(mcfg, tcfg, data, run, corpus_info, resume=ckpt, on_event=on_event,
                      should_stop=lambda: bool(stop["signal"]), dist=dist, spent=spent,
                      eval_estimate=eval_estimate)
    if notice and not quiet:
        err.print(notice)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        err.print(f"aborted; the last saved checkpoint is {run.last}")
        raise typer.Exit(130)
    except RuntimeError as exc:
        if not (dist.enabled and is_peer_failure(exc)):
            raise
        raise CharRNNError(peer_failure_message(dist, exc, f"the last checkpoint is {run.last}; fix the cause, "
                                                f"then train again with --resume {run.dir.name}."))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if bar is not None:
            bar.close()
    dist.close()
    if not quiet:
        table = Table(title=f"run {run.dir.name}: {result.status}")
        for col in ("steps", "epochs", "best val nats/char", "best val bits/char", "chars/s", "time"):
            table.add_column(col, justify="right")
        table.add_row(f"{result.step:,}", f"{result.step / max(trainer.batcher.steps_per_epoch, 1):.2f}",
                      _fmt(result.best_val), _fmt(result.best_val / LN2), f"{result.chars_per_s:,.0f}",
                      f"{result.elapsed:.1f}s")
        out.print(table)
        if result.skipped:
            err.print(f"{result.skipped} step(s) with a non-finite loss were skipped.")
    if result.status == "interrupted":
        if dist.is_main:
            err.print(f"saved {run.last}; continue with: charrnn train --resume {run.dir.name}")
        raise typer.Exit(130 if stop["signal"] == signal.SIGINT else 143)  # a rank stopped by another's SIGTERM: 143
    if not quiet:
        err.print(f"sample with: charrnn sample {run.dir.name}")


def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "-"


# ---------------------------------------------------------------------------------------
@app.command()
@handle_errors
def sample(
    run: RunArg = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature", help="Softmax temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Keep only the K most likely characters; 0 = all.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: keep the smallest set with this much probability.")] = 1.0,
    length: Annotated[int, typer.Option("--length", "-n", help="New characters per sample.")] = 500,
    prime: Annotated[Optional[str], typer.Option(help="Text to start from (printed first).")] = None,
    prime_file: Annotated[Optional[str], typer.Option(help="Read the prime from a file; '-' = standard input.")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, max=2**63 - 1, help="Seed for repeatable samples.")] = None,
    num_samples: Annotated[int, typer.Option(help="Number of samples, separated by a blank line.")] = 1,
    stop: Annotated[str, typer.Option(help="End a sample once it produces this string; \\n, \\t, \\r and \\\\ are read as newline, tab, return and backslash (--stop '\\n\\n' ends at a blank line).")] = "",
    weights: Annotated[str, typer.Option(help="Weights for sampling: fp32 | bf16 | int8.")] = "fp32",
    engine: Annotated[str, typer.Option(help=(
        "auto | numpy | torch. numpy steps lstm/gru/rnn runs with fp32 or int8 weights on the CPU "
        "without loading torch (first character in under a second); auto uses it when it can."))] = "auto",
    device: Device = "cpu",
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Generate text from a trained run; only the text goes to stdout."""
    import dataclasses

    # One BLAS thread for the NumPy engine's one-row products: OpenBLAS threads spin while
    # they wait, and on a busy CPU (a training run beside it) 600 characters of a 2x384 LSTM
    # took 8.4 s with two threads and 1.3 s with one. Set before NumPy loads; the user's wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from charrnn.config import SampleConfig

    cfg = SampleConfig(temperature=temp, top_k=top_k, top_p=top_p, length=length,
                       num_samples=num_samples, seed=seed, stop=unescape(stop))
    if prime is not None and prime_file is not None:
        raise CharRNNError("give --prime or --prime-file, not both.")
    from charrnn.data.corpus import read_text
    from charrnn.runs import resolve_checkpoint

    _check_engine(engine)
    path = resolve_checkpoint(run, runs_dir)
    if run is None:
        err.print(f"sampling from {path}", highlight=False)
    generate_one, vocab = _numpy_sampler(path, engine, weights, device) or _torch_sampler(path, weights, device)
    text = read_text(prime_file, "bytes" if vocab.byte_level else "utf-8") if prime_file is not None else (prime or "")
    vocab.encode(text)  # reject unknown characters before anything is printed
    if engine == "auto" and generate_one.func.__module__ == "charrnn.sample.numpy_engine":
        from charrnn.sample.numpy_engine import MAX_PRIME

        if len(text) > MAX_PRIME:  # torch reads a long prime in one pass; numpy steps through it
            generate_one, _ = _torch_sampler(path, weights, device)
    writer = _StreamWriter(vocab)
    try:
        for i in range(cfg.num_samples):
            if i:
                writer.write("\n\n")
            writer.write(text)
            generate_one(text, dataclasses.replace(cfg, seed=None if cfg.seed is None else cfg.seed + i), writer.write)
        writer.write("\n")
        writer.flush()
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0)


def _numpy_sampler(path: Path, engine: str, weights: str, device: str) -> tuple[Callable, Any] | None:
    """(generate(prime, cfg, emit), vocab) on charrnn.sample.numpy_engine, or None when torch must serve."""
    loaded = _numpy_net(path, engine, weights, device)
    if loaded is None:
        return None
    from charrnn.sample import numpy_engine as npsample

    net, vocab = loaded
    _warn_nonfinite(getattr(net, "nonfinite", None))
    return functools.partial(npsample.generate, net, vocab), vocab


def _numpy_net(path: Path, engine: str, weights: str, device: str) -> tuple[Any, Any] | None:
    """(NumPy network, vocab) of the checkpoint for --engine numpy, and for auto where the
    NumPy engine runs these weights; None when torch must serve. Raises CharRNNError.
    `engine` has passed _check_engine."""
    if engine == "torch":
        return None
    # numba is imported only when int8 is asked for: fp32 sampling starts without it.
    if device != "cpu" or not (weights == "fp32" or (weights == "int8" and _numba_int8())):
        if engine == "auto":
            return None
        int8 = _numba_int8()
        hint = " (int8 there needs numba: pip install numba)" if weights == "int8" and not int8 else ""
        raise CharRNNError(f"--engine numpy runs {'fp32 and int8' if int8 else 'fp32'} weights on the CPU{hint}: "
                           "change --weights/--device or use --engine torch.")
    from charrnn.sample import numpy_engine as npsample

    loaded = npsample.load(path, weights)
    if loaded is None and engine == "numpy":
        raise CharRNNError(f"--engine numpy cannot read '{path}' (it serves lstm, gru and rnn runs): use --engine torch.")
    return loaded


def _check_engine(engine: str) -> None:
    """Refuses an --engine other than auto, numpy or torch (sample and eval)."""
    if engine not in ("auto", "numpy", "torch"):
        raise CharRNNError(f"unknown --engine '{engine}': choose auto, numpy or torch.")


def _numba_int8() -> bool:
    """Whether the NumPy engine's compiled int8 product can run here (imports numba)."""
    from charrnn.sample import numpy_int8 as npint8

    return npint8.available()


def _torch_sampler(path: Path, weights: str, device: str) -> tuple[Callable, Any]:
    """(generate(prime, cfg, emit), vocab) on the torch model and its fast step."""
    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.device import pick_device
    from charrnn.sample.torch_engine import generate, make_stepper

    ckpt = load_checkpoint(path)
    model = build_model(ckpt).to(pick_device(device))
    stepper = make_stepper(model, weights)  # refuses int8 of non-finite weights: then no warning first
    _warn_nonfinite(ckpt.nonfinite)
    return functools.partial(generate, model, ckpt.vocab, stepper=stepper), ckpt.vocab


def unescape(text: str) -> str:
    """Read \\n, \\t, \\r and \\\\ in an option as newline, tab, return and backslash: a shell
    passes `--stop "\\n\\n"` to charrnn as backslashes. Other characters stay as they are."""
    import re

    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\([ntr\\])", lambda m: table[m.group(1)], text)


def _encodable(ch: str, encoding: str) -> bool:
    try:
        ch.encode(encoding)
        return True
    except UnicodeEncodeError:
        return False


def _warn_nonfinite(names: Any) -> None:
    """Say so when the weights being sampled hold NaN or infinity (the text will be junk)."""
    if names:
        err.print(f"warning: the checkpoint has non-finite weights ({', '.join(names[:3])}): the text will be "
                  "meaningless; resume or sample from an earlier checkpoint.", highlight=False, markup=False,
                  soft_wrap=True)


class _StreamWriter:
    """Writes generated text to stdout, flushing at line ends and at least every 50 ms.

    Where stdout's encoding cannot write some of the model's characters (PYTHONIOENCODING=ascii,
    an old Windows console), they are written as backslash escapes, with one warning."""

    def __init__(self, vocab: Any) -> None:
        self.byte_level = vocab.byte_level
        self.last = time.monotonic()
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        if not self.byte_level:
            try:
                unwritable = [c for c in vocab.chars if not _encodable(c, encoding)]
            except LookupError:
                unwritable = []
            if unwritable and hasattr(sys.stdout, "reconfigure"):
                sys.stdout.reconfigure(errors="backslashreplace")
                err.print(f"warning: standard output ({encoding}) cannot write {len(unwritable)} of the model's "
                          "characters; they are written as backslash escapes (set PYTHONIOENCODING=utf-8 to see "
                          "them).", highlight=False, markup=False, soft_wrap=True)

    def write(self, text: str) -> None:
        if self.byte_level:
            sys.stdout.buffer.write(text.encode("latin-1"))
        else:
            sys.stdout.write(text)
        now = time.monotonic()
        if "\n" in text or now - self.last > 0.05:
            self.flush()
            self.last = now

    def flush(self) -> None:
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------
@app.command("eval")
@handle_errors
def evaluate_cmd(
    run: Annotated[str, typer.Argument(help="Run name, run folder or .pt file.")],
    file: Annotated[str, typer.Argument(help="Text file to score ('-' = standard input), or a task (task:parity).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    lengths: Annotated[str, typer.Option(help="task:* only: example lengths to score, e.g. 10,20,50,100.")] = "5,10,20,50",
    examples: Annotated[int, typer.Option(help="task:* only: examples per length.")] = 500,
    seed: Annotated[int, typer.Option(help="task:* only: seed of the generated examples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Parallel streams while scoring.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Characters per chunk (state is carried across).")] = 256,
    weights: Annotated[str, typer.Option(help="Weights: fp32 | bf16 | int8.")] = "fp32",
    engine: Annotated[str, typer.Option(help=(
        "auto | numpy | torch: the engine `charrnn sample` would use. auto scores int8 on the NumPy "
        "engine's step where it runs (lstm/gru/rnn, numba installed), everything else with torch."))] = "auto",
    device: Device = "auto",
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Score a text: nats/char, bits/char and perplexity."""
    import numpy as np

    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.data.corpus import read_text
    from charrnn.device import pick_device
    from charrnn.runs import resolve_checkpoint, to_json
    from charrnn.train.loop import evaluate

    if batch_size < 1 or seq_len < 1:
        raise CharRNNError("--batch-size and --seq-len must be at least 1.")
    _check_engine(engine)
    path = resolve_checkpoint(run, runs_dir)
    ckpt = load_checkpoint(path)
    if file.startswith("task:"):
        _eval_task(ckpt, path, file, lengths, examples, seed, as_json)
        return
    text = read_text(file, "bytes" if ckpt.vocab.byte_level else "utf-8")
    tokens = np.asarray(ckpt.vocab.encode(text), dtype=np.int64)
    if len(tokens) < 2:
        raise CharRNNError(f"'{file}' has {len(tokens)} character(s): at least 2 are needed to score.")
    # fp32 on auto: torch's batched forward is faster than stepping; int8 on auto: the
    # arithmetic `charrnn sample --weights int8` runs, so its cost is what is measured.
    wants_numpy = engine == "numpy" or (engine == "auto" and weights == "int8")
    loaded = _numpy_net(path, engine, weights, "cpu" if device in ("auto", "cpu") else device) if wants_numpy else None
    if loaded is not None:
        from charrnn.sample import numpy_engine as npsample

        used = f"numpy, {weights}"
        t0 = time.perf_counter()
        nats = npsample.score(loaded[0], tokens, batch_size, seq_len)
    else:
        dev = pick_device(device)
        model = build_model(ckpt).to(dev)
        if weights != "fp32":
            from charrnn.sample.fast_step import quantize_model  # type: ignore[attr-defined]

            model = quantize_model(model, weights)
        used = f"torch, {weights}"
        t0 = time.perf_counter()
        nats = evaluate(model, tokens, batch_size, seq_len, dev)
    result = {"checkpoint": str(path), "file": file, "chars": int(len(tokens)), "weights": weights, "engine": used,
              "nats_per_char": nats, "bits_per_char": nats / LN2, "perplexity": math.exp(nats),
              "seconds": time.perf_counter() - t0}
    if as_json:
        out.print_json(to_json(result))
        return
    table = Table(show_header=False, box=None)
    table.add_row("checkpoint", str(path))
    table.add_row("characters", f"{len(tokens):,}")
    table.add_row("engine", used)
    table.add_row("nats/char", f"{nats:.4f}")
    table.add_row("bits/char", f"{nats / LN2:.4f}")
    table.add_row("perplexity", f"{math.exp(nats):.3f}")
    out.print(table)


def _eval_task(ckpt: Any, path: Path, task: str, lengths: str, examples: int, seed: int, as_json: bool) -> None:
    """Accuracy of the label character per example length, beside the majority-guess baseline."""
    from charrnn.checkpoint import build_model
    from charrnn.runs import to_json
    from charrnn.data.tasks import label_accuracy, majority_baseline

    try:
        sizes = [int(v) for v in lengths.split(",") if v.strip()]
    except ValueError:
        raise CharRNNError(f"--lengths must be comma-separated integers, got '{lengths}'.")
    if not sizes or min(sizes) < 1 or examples < 1:
        raise CharRNNError("--lengths needs positive integers and --examples at least 1.")
    model = build_model(ckpt)
    accuracy = label_accuracy(model, ckpt.vocab, task, sizes, examples, seed)
    chance = majority_baseline(task, sizes, examples, seed)
    if as_json:
        rows = [{"length": n, "accuracy": accuracy[n], "majority": chance[n]} for n in sizes]
        out.print_json(to_json({"checkpoint": str(path), "task": task, "model": ckpt.model_config.model,
                                 "examples": examples, "results": rows}))
        return
    table = Table(title=f"{task}: {ckpt.model_config.model} {ckpt.model_config.num_layers}x{ckpt.model_config.hidden_size}")
    for col in ("length", "accuracy", "majority guess"):
        table.add_column(col, justify="right")
    for n in sizes:
        table.add_row(str(n), f"{accuracy[n]:.3f}", f"{chance[n]:.3f}")
    out.print(table)


# ---------------------------------------------------------------------------------------
@app.command()
@handle_errors
def runs(
    runs_dir: RunsDir = Path("checkpoints"),
    check: Annotated[bool, typer.Option("--check", help="Load every checkpoint and report damaged ones (exit 1 if any).")] = False,
) -> None:
    """List runs, most recent first, with their disk usage."""
    from charrnn.runs import checkpoint_files, disk_usage, last_written, list_runs

    found = list_runs(runs_dir)
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
        table.add_row(r.dir.name, kind + (f" ({damage})" if damage else ""),
                      f"{_plain(m.get('num_layers'))}x{_plain(m.get('hidden_size'))}",
                      str(summary["step"]), _fmt(summary["best_val"] / LN2), f"{disk_usage(r) / 1e6:.1f} MB", when)
    out.print(table)


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
    from charrnn.runs import event_step, number, read_metrics

    step, best = 0, math.inf
    for event in read_metrics(run):
        step = max(step, event_step(event) or 0)
        if event.get("event") == "eval":
            best = min(best, number(event, "val_loss", math.inf))
    return {"step": step, "best_val": best}


@app.command()
@handle_errors
def info(run: RunArg = None, runs_dir: RunsDir = Path("checkpoints")) -> None:
    """Show one run: model, training settings, progress, best validation loss."""
    from rich.markup import escape

    from charrnn.runs import number, resolve_checkpoint

    path = resolve_checkpoint(run, runs_dir, prefer="last")
    ckpt, path, damage = _load_for_info(path)
    params = sum(t.numel() for t in ckpt.model_state.values())
    p = ckpt.progress
    table = Table(show_header=False, title=str(path))
    if damage:
        table.add_row("[red]damaged[/]", escape(damage))
    m = ckpt.model_config
    table.add_row("model", f"{m.model} {m.num_layers}x{m.hidden_size}, embed {m.embedding_size}, dropout {m.dropout}")
    table.add_row("parameters", f"{params:,}")
    table.add_row("vocabulary", f"{len(ckpt.vocab)} {'bytes' if ckpt.vocab.byte_level else 'characters'}")
    t = ckpt.train_config
    table.add_row("training", f"B={t.batch_size} T={t.seq_len} lr={t.lr} clip={t.grad_clip} seed={t.seed}")
    table.add_row("progress", f"step {number(p, 'step', 0):,.0f}, epoch {number(p, 'epoch', 0):.0f}, "
                              f"{number(p, 'elapsed', 0):.1f}s")
    best = number(p, "best_val", math.inf)
    table.add_row("best val", f"{_fmt(best)} nats/char, {_fmt(best / LN2)} bits/char")
    table.add_row("corpus", escape(f"{ckpt.corpus.get('path', '?')} ({ckpt.corpus.get('chars', '?')} chars)"))
    if ckpt.nonfinite:
        table.add_row("[red]weights[/]", escape(f"non-finite values in {', '.join(ckpt.nonfinite[:3])}"))
    out.print(table)
    metrics = path.parent / "metrics.jsonl"
    if metrics.is_file():
        from charrnn.cli.neurons import show_curves

        try:
            show_curves(metrics, out)
        except CharRNNError:  # a run with no losses logged yet has no curves to show
            pass


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


def _register_extensions() -> None:
    try:
        from charrnn.cli.neurons import register
    except ImportError:
        return
    register(app, wrap=handle_errors)


_register_extensions()


def main() -> None:
    app()
