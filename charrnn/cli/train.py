"""The `prepare` and `train` commands: options -> configs -> the training library -> progress and a summary."""

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from charrnn.cli.common import (
    LN2,
    DataDir,
    Device,
    Encoding,
    Quiet,
    RunsDir,
    Table,
    fmt_loss,
    err,
    out,
)
from charrnn.errors import CharRNNError


def prepare(
    corpus: Annotated[str, typer.Argument(help="Text file, or a built-in name: shakespeare.")],
    encoding: Encoding = "utf-8",
    data_dir: DataDir = Path("data"),
    corpus_url: Annotated[Optional[str], typer.Option(help="Download URL for a built-in corpus (mirrors, tests).", envvar="CHARRNN_SHAKESPEARE_URL")] = None,
) -> None:
    """Encode a corpus once into the token cache (train does this itself)."""
    from charrnn.data.corpus import prepare as prepare_corpus
    from charrnn.data.corpus import resolve_corpus

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
    from charrnn.data.corpus import prepare as prepare_corpus
    from charrnn.data.corpus import resolve_corpus
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

    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.corpus import split
    from charrnn.train.plan import PRESETS, plan_run

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
                      fmt_loss(result.best_val), fmt_loss(result.best_val / LN2), f"{result.chars_per_s:,.0f}",
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

