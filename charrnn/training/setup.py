"""Setting up a training run: a new run or a resumed one, the planner, presets, task corpora.

`train_run` is the one door to training for the command line and for Python callers:

    new run:  name the run folder -> create it and take its lock (charrnn.rundir.new_run)
              -> prepare the corpus (or generate a task:* corpus) -> plan the open settings
              -> train -> a RunResult. A new run that fails before its first checkpoint
              removes its folder again.
    resume:   resolve the run -> take its lock -> only then read last.pt (a second resume
              waits for the first, then reads the newer checkpoint) -> the same corpus
              (checked by hash) -> train on.

Settings are passed by config field name (`hidden_size=64`, `max_steps=30`, `time_budget="90s"`);
None leaves a setting open for the planner or the config default. Nothing here prints: notes
(a rebuilt cache, the plan) go to `on_note`, progress to `on_event` (charrnn.training.loop).

The file stays whole (about 530 lines): the new-run and resume paths (fine-tuning's start
included) share their checks and the training session, and are meant to be read side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.config import ModelConfig, Preset, TrainConfig, parse_duration
from charrnn.errors import CharRNNError
from charrnn.rundir import RunLock, RunPaths, default_run_name, new_run, resolve_checkpoint, run_paths
from charrnn.training.logs import check_tensorboard

Note = Callable[[str], None]
Event = dict[str, Any]

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
STOPS = ("epochs", "max_steps", "time_budget")  # may change on resume
RUNTIME = ("device", "precision", "eval_every", "log_every", "keep_last", "log")  # may change on resume too
DEFAULT_BUDGET = 600.0  # seconds trained when no stop criterion is given


class Aborted(KeyboardInterrupt):
    """A second stop request ended training at once; `last` is the last checkpoint saved."""

    def __init__(self, last: Path) -> None:
        super().__init__(str(last))
        self.last = last


@dataclass(frozen=True)
class RunResult:
    """A finished (or interrupted) training session."""

    run: RunPaths
    result: Any  # charrnn.training.loop.TrainResult: status, step, best_val, elapsed (training + validation)...
    model_config: ModelConfig
    train_config: TrainConfig
    steps_per_epoch: int
    train_chars_per_s: float  # this session's speed while training (validation and checkpoints excluded)
    wall_seconds: float  # this call from start to end: preparation, probe, training, validation
    plan: dict[str, Any] | None  # what the planner chose and why (None: nothing planned)

    @property
    def path(self) -> Path:
        return self.run.dir

    @property
    def best_val(self) -> float:
        return self.result.best_val


def train_run(
    corpus: str | Path | None = None,
    *,
    name: str | None = None,
    resume: str | None = None,
    init_from: str | None = None,
    preset: Preset | None = None,
    auto: bool = True,
    runs_dir: str | Path = "checkpoints",
    data_dir: str | Path = "data",
    encoding: str = "utf-8",
    corpus_url: str | None = None,
    length_min: int = 1,
    length_max: int = 20,
    task_chars: int = 1_000_000,
    nesting: int = 1,
    curriculum: str = "plain",
    max_vocab: int | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_note: Note | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: Any = None,
    spent: float = 0.0,
    **settings: Any,
) -> RunResult:
    """Train a new run on `corpus` (a file, a built-in name or task:*), or continue `resume`.

    `settings`: ModelConfig and TrainConfig fields (time_budget also as "90s", "10m").
    `auto`: plan the open settings from the budget, a speed probe and the corpus size.
    `max_vocab`: keep the corpus's N most frequent characters, the others become one unknown
    symbol (charrnn.data.vocab.capped_vocab); `split="90/5/5"` (a TrainConfig field) holds out
    the last 5% as a test part that training never reads (`charrnn.training.splits.split_tokens` gives it back).
    `spent`: seconds the caller already waited (counted against a new run's time budget).
    `init_from`: fine-tune: a new run starting from this run's (name, folder or .pt file)
    weights and architecture, its vocabulary extended (charrnn.training.finetune).
    `dist`: charrnn.training.distributed.Dist of this rank (default: one process).
    Raises CharRNNError; `Aborted` when a second stop request ends training at once.
    """
    from charrnn.data.corpus import prepare as prepare_corpus
    from charrnn.data.corpus import resolve_sources
    from charrnn.training.distributed import Dist
    from charrnn.training.loop import check_precision

    t0 = time.perf_counter()
    note: Note = on_note or (lambda text: None)
    dist = dist if dist is not None else Dist()
    unknown = sorted(set(settings) - set(MODEL_FIELDS) - set(TRAIN_FIELDS))
    if unknown:
        raise CharRNNError(f"unknown setting(s) {', '.join(unknown)}: use ModelConfig or TrainConfig field names.")
    given = {k: v for k, v in settings.items() if v is not None}
    stops = {
        "epochs": float(given.pop("epochs", 0.0)),
        "max_steps": int(given.pop("max_steps", 0)),
        "time_budget": _seconds(given.pop("time_budget", 0.0)),
    }
    TrainConfig(**stops)  # a bad stop (epochs=nan) fails before any work
    runtime = {k: given.pop(k) for k in RUNTIME if k in given}
    if not isinstance(runtime.get("log", ""), str):  # log=["csv", "tensorboard"] from the API or the CLI
        runtime["log"] = ",".join(dict.fromkeys(runtime["log"]))
    if "tensorboard" in runtime.get("log", "").split(","):
        check_tensorboard()  # before any work: the missing extra is one error line
    if encoding != "utf-8":
        given["encoding"] = encoding  # refused on resume like any other setting of the run
    if max_vocab is not None:
        given["max_vocab"] = max_vocab  # the same: the checkpoint's vocabulary keeps it
    check_precision(runtime.get("precision", "fp32"), dist.pick_device(runtime.get("device", "auto")))
    # Rank 0 downloads and encodes the corpus first; the other ranks then map its cache.
    resolve, prepare = dist.main_first(resolve_sources), dist.main_first(prepare_corpus)
    runs_dir, data_dir = Path(runs_dir), Path(data_dir)
    session = _Session(dist, on_event, note, should_stop, spent, t0)

    if resume is not None:
        if name is not None:
            raise CharRNNError("give either --resume RUN or --name NAME, not both.")
        if init_from is not None:
            raise CharRNNError(
                "give either --resume RUN or --init-from RUN, not both: a resumed run keeps its weights."
            )
        if given:
            raise CharRNNError(
                f"--resume keeps the run's settings; drop {', '.join('--' + k.replace('_', '-') for k in given)} "
                "(only stop criteria, --device and logging may change)."
            )
        run = _run_of(resolve_checkpoint(resume, runs_dir, prefer="last"))
        # The lock comes before the checkpoint is read: a second resume is refused while the
        # first trains, and one that starts after it reads the newer checkpoint.
        with RunLock(run) if dist.is_main else contextlib.nullcontext():
            return _resume(
                run,
                resolve_checkpoint(resume, runs_dir, prefer="last"),
                corpus,
                stops,
                runtime,
                data_dir,
                corpus_url,
                note,
                prepare,
                resolve,
                session,
            )

    if corpus is None:
        raise CharRNNError("give a corpus to train on, e.g. `charrnn train shakespeare`, or --resume RUN.")
    sources = [str(c) for c in corpus] if isinstance(corpus, (list, tuple)) else [str(corpus)]
    corpus = sources[0] if len(sources) == 1 else sources[0].rstrip("/*") or "corpus"  # names the run
    given.pop("encoding", None)
    task = corpus if corpus.startswith("task:") else None
    cap = given.pop("max_vocab", 0)
    if max_vocab is not None and (isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab < 1):
        raise CharRNNError(f"--max-vocab must be a positive number of characters, not {max_vocab}.")
    if cap and task:
        raise CharRNNError(f"--max-vocab applies to text corpora: {task} has its own fixed alphabet.")
    if given.get("split"):  # the CLI's val_frac is a fraction of the corpus; the config's of the text before the test
        from charrnn.config import split_val_frac

        given["val_frac"] = split_val_frac(given["split"], given.get("val_frac"))
    parent: Any = None
    if init_from is not None:  # read before the new run's folder exists: a bad RUN leaves nothing behind
        from charrnn.training import finetune

        parent = finetune.load_parent(init_from, runs_dir)
        given = finetune.take_architecture(parent, given, preset)
    run = run_paths(runs_dir, name if name is not None else dist.from_main(default_run_name, corpus.replace(":", "-")))
    with new_run(run) if dist.is_main else contextlib.nullcontext():
        if task:
            data = _prepare_task(
                task, length_min, length_max, task_chars, given.get("seed", 1337), data_dir, nesting, curriculum
            )
        else:
            data = prepare(resolve(sources, data_dir, corpus_url), data_dir, encoding, None, cap)
        _notes(data, note)
        if parent is not None:
            data, added = finetune.extend_corpus(
                parent, data, lambda files, vocab: prepare(files, data_dir, encoding, vocab)
            )
            note(finetune.describe_added(parent, added))
        notice = ""
        if not any(stops.values()):
            stops["time_budget"] = DEFAULT_BUDGET
            notice = "no stop criterion given: training for 10m (set --epochs, --max-steps or --time-budget)."
        planned: Any = None
        if auto and not task:
            planned = _plan(given, runtime, preset, data, stops, dist.pick_device(runtime.get("device", "auto")))
            given = {**given, **planned.model, **planned.train}
            if parent is not None:  # the planner saw the parent's sizes as given: it planned only the rest
                planned.notes.append(f"model size and kind from the parent run '{parent.name}'")
        elif preset is not None:
            raise CharRNNError("--preset needs the planner: drop --no-auto (or give the sizes as flags).")
        mcfg = ModelConfig(vocab_size=len(data.vocab), **{k: v for k, v in given.items() if k in MODEL_FIELDS})
        tcfg = TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_FIELDS}, **stops, **runtime)
        info = _corpus_info(data, task, sources)
        if parent is not None:
            info["parent"] = finetune.parent_record(parent, added)
        if planned is not None:
            info["plan"] = planned.summary()
            note(describe_plan(planned, mcfg, tcfg))
        return session.train(
            mcfg,
            tcfg,
            data,
            run,
            info,
            None,
            planned.eval_estimate if planned is not None else 0.0,
            info.get("plan"),
            notice,
            finetune.transplant(parent, mcfg, tcfg.seed) if parent is not None else None,
        )


def process_age() -> float:
    """Seconds since this process started (Linux), else since this module was imported: what a
    command-line user already waited when training begins."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


_IMPORTED_AT = time.perf_counter()


def _seconds(value: float | str) -> float:
    return parse_duration(value) if isinstance(value, str) else float(value)


def _run_of(path: Path) -> RunPaths:
    return run_paths(path.parent.parent, path.parent.name)


def _resume(
    run: RunPaths,
    path: Path,
    corpus: str | Path | None,
    stops: dict,
    runtime: dict,
    data_dir: Path,
    corpus_url: str | None,
    note: Note,
    prepare: Callable,
    resolve: Callable,
    session: _Session,
) -> RunResult:
    """Continue `run` from checkpoint `path`; the caller holds the run's lock."""
    from charrnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    recorded = ckpt.corpus.get("sources")
    source = corpus if corpus is not None else recorded if isinstance(recorded, list) else ckpt.corpus.get("path")
    if not source or not isinstance(source, (str, list, tuple)):
        raise CharRNNError("the run does not record its corpus: pass the corpus file.")
    enc = ckpt.corpus.get("encoding", "utf-8")
    # A task's alphabet and a fine-tuned run's extended vocabulary are not the corpus's own.
    fixed = ckpt.vocab if ckpt.corpus.get("task") or ckpt.corpus.get("parent") else None
    from charrnn.data.corpus import changed_files, file_list

    files = resolve(source, data_dir, corpus_url)
    if isinstance(ckpt.corpus.get("files"), list):  # name what changed before reading it all
        changed = changed_files(ckpt.corpus["files"], file_list(files))
        if changed:
            raise CharRNNError(
                f"the corpus of run '{run.dir.name}' changed ({changed}): restore its files or start a new run."
            )
    data = prepare(files, data_dir, enc if isinstance(enc, str) else "utf-8", fixed, ckpt.vocab.max_vocab)
    _notes(data, note)
    if data.sha256 != ckpt.corpus.get("sha256"):
        raise CharRNNError(
            f"'{data.source}' is not the text run '{run.dir.name}' was trained on (content differs): "
            "pass the original corpus."
        )
    new_stops = stops if any(stops.values()) else {}
    tcfg = dataclasses.replace(ckpt.train_config, **new_stops, **runtime)
    task = ckpt.corpus.get("task")
    return session.train(
        ckpt.model_config,
        tcfg,
        data,
        run,
        _corpus_info(data, task if isinstance(task, str) else None, source if isinstance(source, list) else None)
        | ({"parent": ckpt.corpus["parent"]} if "parent" in ckpt.corpus else {}),
        ckpt,
        0.0,
        None,
    )


@dataclass
class _Session:
    """What one call of train_run trains with: the ranks, the callbacks, the clock."""

    dist: Any
    on_event: Callable[[Event], None] | None
    note: Note
    should_stop: Callable[[], bool] | None
    spent: float
    started: float

    def train(
        self,
        mcfg: ModelConfig,
        tcfg: TrainConfig,
        data: Any,
        run: RunPaths,
        info: dict,
        ckpt: Any,
        eval_estimate: float,
        plan: dict[str, Any] | None,
        notice: str = "",
        init_weights: dict[str, Any] | None = None,
    ) -> RunResult:
        from charrnn.training.distributed import is_peer_failure, peer_failure_message
        from charrnn.training.loop import Trainer

        speed = _TrainSpeed(tcfg.batch_size * tcfg.seq_len)

        def on_event(event: Event) -> None:
            speed.update(event)
            if self.on_event is not None:
                self.on_event(event)

        from charrnn.data.corpus import hold_out

        # The test part (--split) is cut off here: the trainer never holds it.
        trainer = Trainer(
            mcfg,
            tcfg,
            dataclasses.replace(data, tokens=hold_out(data.tokens, tcfg.test_frac)[0]),
            run,
            info,
            resume=ckpt,
            on_event=on_event,
            should_stop=self.should_stop or (lambda: False),
            dist=self.dist,
            spent=self.spent if ckpt is None else 0.0,
            eval_estimate=eval_estimate,
        )
        if init_weights is not None:  # fine-tuning: the parent's weights, before the first checkpoint
            trainer.model.load_state_dict(init_weights)
        if notice:  # once the settings proved trainable
            self.note(notice)
        try:
            result = trainer.run()
        except KeyboardInterrupt:
            raise Aborted(run.last) from None
        except RuntimeError as exc:
            if not (self.dist.enabled and is_peer_failure(exc)):
                raise
            raise CharRNNError(
                peer_failure_message(
                    self.dist,
                    exc,
                    f"the last checkpoint is {run.last}; fix the cause, then train again with --resume {run.dir.name}.",
                )
            )
        self.dist.close()
        return RunResult(
            run,
            result,
            mcfg,
            trainer.cfg,
            trainer.batcher.steps_per_epoch,
            speed.rate(),
            time.perf_counter() - self.started,
            plan,
        )


class _TrainSpeed:
    """Characters per second while training, from the loop's `train` events (whose windows
    leave out validation and checkpoints)."""

    def __init__(self, chars_per_step: int) -> None:
        self.chars_per_step, self.step, self.chars, self.seconds = chars_per_step, 0, 0.0, 0.0

    def update(self, event: Event) -> None:
        if event["event"] == "start":
            self.step = event["step"]
        elif event["event"] == "train":
            chars = (event["step"] - self.step) * self.chars_per_step
            self.step = event["step"]
            if chars > 0 and event["chars_per_s"] > 0:
                self.chars += chars
                self.seconds += chars / event["chars_per_s"]

    def rate(self) -> float:
        return self.chars / self.seconds if self.seconds else 0.0


def _corpus_info(data: Any, task: str | None, sources: list[str] | None = None) -> dict:
    info = {
        "path": str(Path(data.source).resolve()),
        "sha256": data.sha256,
        "encoding": data.encoding,
        "chars": len(data.tokens),
    }
    if task:
        info["task"] = task
    if data.vocab.max_vocab:
        info["max_vocab"] = data.vocab.max_vocab
    if len(data.files) > 1 or (sources and len(sources) > 1):  # several files: what resume checks
        from charrnn.data.corpus import file_list

        info["sources"] = [os.path.abspath(s) for s in sources or []]
        info["files"] = file_list([Path(p) for p, _ in data.files])
    return info


def _notes(data: Any, note: Note) -> None:
    """What preparing the corpus had to repair (a damaged cache rebuilt), one note each."""
    for text in getattr(data, "notes", ()):
        note(text)


def _plan(
    given: dict[str, Any], runtime: dict[str, Any], preset: str | None, data: Any, stops: dict[str, float], device: Any
) -> Any:
    """Fill the settings the caller left open from the budget, a speed probe and the corpus."""
    from charrnn.config import parse_split
    from charrnn.data.corpus import hold_out, split
    from charrnn.training.plan import PRESETS, plan_run

    fixed = {**given, **runtime}
    if preset is not None:
        if preset not in PRESETS:
            raise CharRNNError(f"unknown --preset '{preset}': choose {', '.join(PRESETS)}.")
        fixed = {**PRESETS[preset], **fixed}  # flags win over the preset
    # Bad settings fail before the probe spends any time.
    asked = ModelConfig(vocab_size=len(data.vocab), **{k: v for k, v in fixed.items() if k in MODEL_FIELDS})
    if "hidden_size" in fixed:  # sizes given: refuse what cannot fit before the probe allocates it
        from charrnn.limits import check_memory, model_nbytes_for_training

        check_memory(
            model_nbytes_for_training(asked), f"training a {asked.num_layers}x{asked.hidden_size} {asked.model}"
        )
    TrainConfig(**{k: v for k, v in fixed.items() if k in TRAIN_FIELDS})
    test_frac = parse_split(given["split"])[2] / 100 if given.get("split") else 0.0
    train_tokens, val_tokens = split(hold_out(data.tokens, test_frac)[0], given.get("val_frac", 0.1))
    budget = stops["time_budget"] if not (stops["epochs"] or stops["max_steps"]) else 0.0
    plan = plan_run(fixed, len(data.vocab), len(train_tokens), len(val_tokens), device, budget, stops["epochs"])
    for key, value in fixed.items():  # the preset's sizes come back as chosen settings
        if key not in given and key not in runtime:
            (plan.train if key in ("batch_size", "seq_len") else plan.model)[key] = value
    return plan


def describe_plan(plan: Any, mcfg: ModelConfig, tcfg: TrainConfig) -> str:
    """What the planner chose, and how to override it (a few lines)."""
    size = f"{mcfg.num_layers}x{mcfg.hidden_size} {mcfg.model}"
    lines = [
        (
            f"plan: {size}, embed {mcfg.embedding_size}, batch {tcfg.batch_size} x seq {tcfg.seq_len}, "
            f"lr {tcfg.lr:g}, dropout {mcfg.dropout:g} ({mcfg.dropout_mask}), weight drop {mcfg.weight_drop:g}, "
            f"{tcfg.evals} validations, patience {tcfg.patience}"
        )
    ]
    if plan.probe:
        probe = ", ".join(f"{h}: {r:,.0f}" for h, r in plan.probe.items())
        lines.append(
            f"  probe {plan.probe_seconds:.1f}s, training chars/s by hidden size: {probe}; "
            f"about {plan.expected_epochs:.1f} epochs expected"
        )
    lines += [f"  {text}" for text in plan.notes]
    lines.append("  every setting has its flag; --preset fixes the size; --no-auto plans nothing")
    return "\n".join(lines)


def _prepare_task(
    name: str,
    length_min: int,
    length_max: int,
    chars: int,
    seed: int,
    data_dir: Path,
    nesting: int = 1,
    curriculum: str = "plain",
) -> Any:
    """Generate a task:* corpus once into data_dir/tasks/ and prepare it with the task's alphabet."""
    from charrnn.data.corpus import prepare as prepare_corpus
    from charrnn.data.tasks import generate_task, task_vocab

    vocab = task_vocab(name)
    levels = f"-{nesting}-{curriculum}" if name == "task:execute" else ""  # task:execute's own knobs
    path = Path(data_dir) / "tasks" / f"{name[5:]}-{length_min}-{length_max}-{chars}-{seed}{levels}.txt"
    if not path.is_file():
        from charrnn.checkpoint import atomic_write

        text = generate_task(name, length_min, length_max, chars, seed, nesting, curriculum)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return prepare_corpus(path, data_dir, "utf-8", vocab)
