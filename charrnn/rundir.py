"""Run folders under the runs directory: names, the lock, listing, resolving a checkpoint,
and the one reader and writer of metrics.jsonl.

A run folder holds last.pt, best.pt, kept step-N.pt, config.json, metrics.jsonl and
.lock. Whoever trains a run holds its lock (`RunLock`) before reading anything of it;
every file is replaced atomically or appended through a no-follow descriptor
(charrnn.files), and a folder whose files are links is refused. The file stays whole: the
lock, the folder checks and the metrics writer guard the same files and are read together.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError
from charrnn.files import atomic_write, check_not_linked, open_nofollow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True)
class RunPaths:
    dir: Path

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.dir / "config.json"


def check_run_name(name: str) -> str:
    """A run name is one plain path component: letters, digits, '.', '_', '+', '-'."""
    if not _NAME.match(name) or name in (".", ".."):
        raise CharRNNError(
            f"invalid run name {name!r}: use letters, digits, '.', '_', '+' and '-' "
            "(at most 128, no '/' or leading '.'), e.g. --name shakespeare-2x512."
        )
    return name


def default_run_name(corpus: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", Path(corpus).stem or "run").lstrip(".-") or "run"
    return f"{stem[:80]}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_paths(runs_dir: Path, name: str) -> RunPaths:
    return RunPaths(Path(runs_dir) / check_run_name(name))


def checkpoint_files(run: RunPaths) -> list[Path]:
    """last.pt, best.pt and the kept periodic step-*.pt files of a run."""
    found = [p for p in (run.last, run.best) if p.is_file()]
    return found + sorted(run.dir.glob("step-*.pt"))


def run_files(run: RunPaths) -> list[Path]:
    """Every file charrnn writes in a run folder that is there now."""
    names = [run.last, run.best, run.metrics, run.config, run.dir / ".lock"]
    return [p for p in names if os.path.lexists(p)] + sorted(run.dir.glob("step-*.pt"))


def check_run_files(run: RunPaths) -> None:
    """Refuse a run folder whose files are symbolic links or special files (CharRNNError)."""
    for path in run_files(run):
        check_not_linked(path)


def disk_usage(run: RunPaths) -> int:
    total = 0
    for p in run.dir.iterdir():
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:  # a dangling link, or a file removed meanwhile
            continue
    return total


def list_runs(runs_dir: Path) -> list[RunPaths]:
    """Runs with a checkpoint, most recently written first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [
        RunPaths(d) for d in root.iterdir() if d.is_dir() and (RunPaths(d).last.is_file() or RunPaths(d).best.is_file())
    ]
    return sorted(runs, key=last_written, reverse=True)


def last_written(run: RunPaths) -> float:
    """When the run's newest checkpoint was written (seconds since the epoch; 0 if none)."""
    times = []
    for p in (run.last, run.best):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)


def resolve_checkpoint(arg: str | None, runs_dir: Path, prefer: str = "best") -> Path:
    """A run name, a run folder or a .pt file -> the checkpoint file to read.

    `None` picks the most recent run. Within a run, `prefer` ('best' or 'last')
    is used when present, else the other one. Raises CharRNNError.
    """
    if arg is None:
        runs = list_runs(runs_dir)
        if not runs:
            raise CharRNNError(f"no runs in '{runs_dir}' yet: train one first, e.g. `charrnn train shakespeare`.")
        return _pick(runs[0], prefer)
    path = Path(arg)
    if path.is_file():
        return path
    if path.is_dir():
        return _pick(RunPaths(path), prefer)
    if _NAME.match(arg) and (Path(runs_dir) / arg).is_dir():
        return _pick(RunPaths(Path(runs_dir) / arg), prefer)
    names = ", ".join(r.dir.name for r in list_runs(runs_dir)[:5])
    hint = f" (recent runs: {names})" if names else f" (no runs in '{runs_dir}' yet)"
    raise CharRNNError(f"unknown run or checkpoint '{arg}'{hint}: `charrnn runs` lists them.")


def _pick(run: RunPaths, prefer: str) -> Path:
    order = [run.best, run.last] if prefer == "best" else [run.last, run.best]
    for p in order:
        if p.is_file():
            return p
    raise CharRNNError(f"run '{run.dir}' has no checkpoint yet (no last.pt or best.pt).")


# ---------------------------------------------------------------------------------------
# metrics.jsonl: one JSON object per line, appended while training.


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl: JSON objects, one a line, in file order.

    Anything else (a torn last line after a crash, bytes that are not UTF-8, a line
    that is not an object) is skipped: the events that can be read are kept.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def read_metrics(run: RunPaths) -> list[dict[str, Any]]:
    """Events of a run's metrics.jsonl (see `read_events`)."""
    return read_events(run.metrics)


def number(event: dict[str, Any], key: str, default: float = math.nan) -> float:
    """event[key] as a finite float, or `default` when it is missing, not a number or not finite."""
    value = event.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    value = float(value)
    return value if math.isfinite(value) else default


def event_step(event: dict[str, Any]) -> int | None:
    """The step an event belongs to, or None for a damaged one."""
    step = number(event, "step")
    return int(step) if math.isfinite(step) and step >= 0 else None


@dataclass
class GradHealth:
    """The training gradient norm (before clipping) at the logged steps, and the clipped steps."""

    steps: list[int]
    norms: list[float]
    clipped: int  # steps the clip scaled down, of
    counted: int  # the steps of the train events that log both counts

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.counted if self.counted else 0.0


def grad_health(events: list[dict[str, Any]]) -> GradHealth | None:
    """The gradient health logged by train events, or None when none logged it (older runs)."""
    health = GradHealth([], [], 0, 0)
    for event in events:
        step, norm = event_step(event), number(event, "grad_norm")
        if event.get("event") != "train" or step is None:
            continue
        if math.isfinite(norm):
            health.steps.append(step)
            health.norms.append(norm)
        clipped, counted = number(event, "clipped"), number(event, "grad_steps")
        if 0 <= clipped <= counted:
            health.clipped += int(clipped)
            health.counted += int(counted)
    return health if health.norms or health.counted else None


def to_json(event: dict[str, Any]) -> str:
    """One line of valid JSON: non-finite numbers (an infinite best loss before the first
    validation) are written as null, which every JSON reader accepts."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(event), allow_nan=False)


def append_event(run: RunPaths, event: dict[str, Any]) -> None:
    """Append one event to metrics.jsonl, never through a link (the caller holds the lock)."""
    fd = open_nofollow(run.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(to_json(event) + "\n")


def keep_events_until(run: RunPaths, step: int) -> None:
    """On resume, forget events logged after the checkpoint's step (they will happen again).

    The file is rewritten atomically: a kill leaves the old history or the new one. Lines
    that cannot be read are dropped with the events after the checkpoint.
    """
    if not os.path.lexists(run.metrics):
        return
    kept = [to_json(e) for e in read_metrics(run) if (s := event_step(e)) is not None and s <= step]
    atomic_write(run.metrics, lambda f: f.write("".join(line + "\n" for line in kept).encode("utf-8")))


# ---------------------------------------------------------------------------------------
# The lock: one trainer per run, taken before anything of the run is read.

_HELD: dict[Path, int] = {}  # run folders this process holds the lock of -> nesting depth


class RunLock:
    """Exclusive lock on a run folder, held while one process trains it.

    Uses flock(2) on `<run>/.lock`: the kernel drops the lock when its process
    dies, so a lock left by a killed trainer is taken over without a stale-pid
    guess. The file records the holder's pid for the error message. Taking it
    again in the same process nests (the command line takes it before loading the
    checkpoint; the trainer takes it again around its loop).
    """

    def __init__(self, run: RunPaths) -> None:
        self.run = run
        self.path = run.dir / ".lock"
        self.fd: int | None = None
        self.key = Path(os.path.abspath(run.dir))

    def __enter__(self) -> RunLock:
        import fcntl

        if self.key in _HELD:
            _HELD[self.key] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CharRNNError(
                f"run '{self.path.parent.name}' is being trained by pid {holder}: wait for it to finish "
                "or stop it (Ctrl-C saves a checkpoint) before resuming."
            )
        try:
            check_run_files(self.run)
        except CharRNNError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _HELD[self.key] = 1
        for stale in self.path.parent.glob(".*.tmp"):  # temp files of writes cut short by a crash
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        depth = _HELD.get(self.key, 0)
        if depth > 1:
            _HELD[self.key] = depth - 1
            return
        _HELD.pop(self.key, None)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def has_checkpoint(run: RunPaths) -> bool:
    return run.last.is_file() or run.best.is_file()


def _refuse_existing(run: RunPaths) -> None:
    leftovers = {".lock", "config.json", "metrics.jsonl"}
    if run.dir.is_dir() and (has_checkpoint(run) or any(p.name not in leftovers for p in run.dir.iterdir())):
        raise CharRNNError(
            f"run '{run.dir}' already exists: pick another --name or continue it with --resume {run.dir.name}."
        )


@contextmanager
def new_run(run: RunPaths) -> Iterator[RunLock]:
    """Create run folder `run` and hold its lock for the block.

    Refuses a folder that already holds a run. A folder left by a new run that failed
    before its first checkpoint (only the lock, a config, a start event) is taken over.
    If the block fails before a checkpoint is written, the folder is removed again, so
    the name stays free.
    """
    if os.path.lexists(run.dir) and not run.dir.is_dir():
        raise CharRNNError(f"'{run.dir}' exists and is not a folder: pick another --name.")
    _refuse_existing(run)
    run.dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run) as lock:  # from here on no other charrnn process changes the folder
        _refuse_existing(run)
        run.metrics.unlink(missing_ok=True)  # a failed earlier start's: this run logs anew
        run.config.unlink(missing_ok=True)
        try:
            yield lock
        except BaseException:
            if not has_checkpoint(run) and not os.path.islink(run.dir):
                shutil.rmtree(run.dir, ignore_errors=True)
            raise
