"""Run folders under the runs directory: names, creation, listing, resolving a checkpoint."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError

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


def disk_usage(run: RunPaths) -> int:
    return sum(p.stat().st_size for p in run.dir.iterdir() if p.is_file())


def list_runs(runs_dir: Path) -> list[RunPaths]:
    """Runs with a checkpoint, most recently written first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [RunPaths(d) for d in root.iterdir() if d.is_dir() and (RunPaths(d).last.is_file() or RunPaths(d).best.is_file())]
    return sorted(runs, key=_mtime, reverse=True)


def _mtime(run: RunPaths) -> float:
    return max((p.stat().st_mtime for p in (run.last, run.best) if p.is_file()), default=0.0)


def resolve_checkpoint(arg: str | None, runs_dir: Path, prefer: str = "best") -> Path:
    """A run name, a run folder or a .pt file -> the checkpoint file to read.

    `None` picks the most recent run. Within a run, `prefer` ('best' or 'last')
    is used when present, else the other one. Raises CharRNNError.
    """
    if arg is None:
        runs = list_runs(runs_dir)
        if not runs:
            raise CharRNNError(
                f"no runs in '{runs_dir}' yet: train one first, e.g. `charrnn train shakespeare`."
            )
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


def read_metrics(run: RunPaths) -> list[dict[str, Any]]:
    """Events of a run's metrics.jsonl; a torn last line (crash) is skipped."""
    if not run.metrics.is_file():
        return []
    events = []
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


class RunLock:
    """Exclusive lock on a run folder, held while one process trains it.

    Uses flock(2) on `<run>/.lock`: the kernel drops the lock when its process
    dies, so a lock left by a killed trainer is taken over without a stale-pid
    guess. The file records the holder's pid for the error message.
    """

    def __init__(self, run: RunPaths) -> None:
        self.path = run.dir / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CharRNNError(
                f"run '{self.path.parent.name}' is being trained by pid {holder}: wait for it to finish "
                "or stop it (Ctrl-C saves a checkpoint) before resuming."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        for stale in self.path.parent.glob(".*.tmp"):  # temp files of writes cut short by a crash
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
