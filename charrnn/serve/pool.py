"""The models a server generates with: a bounded pool of loaded `charrnn.api.Model`s per
weights kind, the admission limit, and the checks a request passes before it is queued.

No web framework here (charrnn.serve.app is the HTTP side), so the pool is tested and used
without one:

    requests --admit--> waiting (at most `queue`) --> running (at most `workers` threads)
                 \\--> Busy (HTTP 503) when workers + queue are already taken

Each running generation holds one Model of its weights kind for its whole length: a
Sampler steps under a lock (its engines keep scratch buffers), so parallel generations need
a Model each. Up to `workers` Models per weights kind are loaded, each on first need; with
`workers` threads, a thread that wants one always finds a free one or room to load one.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from charrnn.api import Model, load
from charrnn.config import DeviceName, Engine, SampleConfig, Weights, printable
from charrnn.errors import CharRNNError

T = TypeVar("T")


@dataclass(frozen=True)
class ServeConfig:
    """How much one server takes on; `charrnn serve`'s options of the same names."""

    workers: int = 2  # generations that run at once, each on its own loaded model
    queue: int = 8  # requests that may wait for a worker; beyond them: HTTP 503
    max_length: int = 5000  # new characters one request may ask for
    max_prime: int = 10_000  # characters of prime one request may send
    engine: Engine = "auto"  # as `charrnn sample --engine`
    device: DeviceName = "cpu"

    def __post_init__(self) -> None:
        for name, low in (("workers", 1), ("queue", 0), ("max_length", 1), ("max_prime", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**31:
                raise CharRNNError(f"--{name.replace('_', '-')} must be an integer from {low} below 2**31.")


@dataclass(frozen=True)
class Request:
    """One generation, checked: what `Model.generate` takes, the seed always set."""

    prime: str = ""
    length: int = 500
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: str = ""
    weights: Weights = "fp32"

    def generate_args(self) -> dict[str, Any]:
        args = asdict(self)
        del args["weights"]
        return args


class RequestError(CharRNNError):
    """A request the server refuses: HTTP `status`, the JSON `field` at fault."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.status = field, status


class Busy(CharRNNError):
    """Every worker is busy and the queue is full: try again after `retry_after` seconds."""

    retry_after = 1


class ModelPool:
    """The checkpoint at `path`, loaded up to `cfg.workers` times per weights kind.

    `submit(weights, job)` runs `job(model)` on a worker thread with a Model of its own and
    returns a concurrent Future; it raises Busy when workers + queue are already taken."""

    def __init__(self, path: Path, cfg: ServeConfig, default: Weights = "fp32") -> None:
        self.path, self.cfg = path, cfg
        self._lock = threading.Lock()
        self._free: dict[str, queue.SimpleQueue[Model]] = {}
        self._loaded: dict[str, int] = {}
        self._engines: dict[str, str] = {}
        self._admitted = 0
        self._threads = concurrent.futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="charrnn-serve")
        # One model now: a bad file fails at start, and the vocabulary checks requests.
        with self._model(default) as model:
            self.vocab, self.config = model.vocab, model.config
        self.best_val = best_val(path)

    def check(
        self,
        prime: str = "",
        length: int | None = None,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str = "",
        weights: Weights = "fp32",
    ) -> Request:
        """The request as it will run: no length = 500 or the server's limit if lower, no
        seed = a fresh one (named in the answer). Raises RequestError naming the field: over a
        limit, a bad value, unknown characters."""
        if length is None:
            length = min(500, self.cfg.max_length)
        if length > self.cfg.max_length:
            raise RequestError("length", f"length must be at most {self.cfg.max_length} (this server's limit).")
        if len(prime) > self.cfg.max_prime:
            raise RequestError("prime", f"prime must be at most {self.cfg.max_prime} characters (this server's limit).")
        # A capped vocabulary (--max-vocab) reads a prime's other characters as its unknown
        # symbol, as `charrnn sample` does; a stop string must be writable, so it is always checked.
        capped = self.vocab.unknown_id is not None
        for field, text in (("prime", prime), ("stop", stop)):
            unknown = [] if capped and field == "prime" else self.vocab.missing(text)
            if unknown:
                shown = printable(", ".join(repr(c) for c in unknown[:20]))
                raise RequestError(field, f"{field} has {len(unknown)} character(s) outside the vocabulary: {shown}.")
        if seed is None:
            seed = secrets.randbelow(2**63)
        try:
            SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p, length=length, seed=seed, stop=stop)
        except CharRNNError as exc:  # the limits of `charrnn sample`, named as its options are
            raise RequestError("settings", str(exc)) from None
        return Request(prime, length, temperature, top_k, top_p, seed, stop, weights)

    def submit(self, weights: str, job: Callable[[Model], T]) -> concurrent.futures.Future[T]:
        """Run `job(model)` on a worker thread. Raises Busy when the queue is full."""
        with self._lock:
            if self._admitted >= self.cfg.workers + self.cfg.queue:
                raise Busy(f"all {self.cfg.workers} workers are busy and {self.cfg.queue} requests wait: retry later.")
            self._admitted += 1

        def run() -> T:
            with self._model(weights) as model:
                return job(model)

        future = self._threads.submit(run)
        future.add_done_callback(self._leave)  # also when cancelled before it ran
        return future

    def generate(self, request: Request, emit: Callable[[str], bool] | None = None) -> Callable[[Model], dict]:
        """The job for `submit` that answers `request`: {text, settings, characters,
        seconds}. With `emit`, each piece is passed to it as drawn; it returns False to stop."""

        def job(model: Model) -> dict:
            start = time.perf_counter()
            if emit is None:
                text = model.generate(**request.generate_args())
            else:
                pieces = []
                with closing(model.stream(**request.generate_args())) as stream:  # closing stops the drawing
                    for piece in stream:
                        pieces.append(piece)
                        if not emit(piece):
                            break
                text = "".join(pieces)
            return {
                "text": text,
                "settings": asdict(request),
                "characters": len(text),
                "seconds": round(time.perf_counter() - start, 6),
                "engine": model.engine,
            }

        return job

    def info(self) -> dict[str, Any]:
        """What /info answers: the model, its best validation loss, the engines, the limits."""
        with self._lock:
            engines = dict(self._engines)
        return {
            "path": str(self.path),
            "model": self.config.model,
            "num_layers": self.config.num_layers,
            "hidden_size": self.config.hidden_size,
            "vocab_size": self.config.vocab_size,
            "best_val": self.best_val,
            "best_val_bpc": None if self.best_val is None else self.best_val / math.log(2),
            "engine": engines.get("fp32") or next(iter(engines.values())),
            "engines": engines,
            "settings": asdict(self.cfg),
        }

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        with self._lock:
            return self._admitted

    def close(self) -> None:
        """Stop taking work; generations already running finish on their threads."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _leave(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self._admitted -= 1

    @contextmanager
    def _model(self, weights: str) -> Iterator[Model]:
        """A Model of `weights` for this thread alone: a free one, or a new one while fewer
        than `workers` are loaded, or the next one given back."""
        with self._lock:
            free = self._free.setdefault(weights, queue.SimpleQueue())
            load_new = free.empty() and self._loaded.get(weights, 0) < self.cfg.workers
            if load_new:
                self._loaded[weights] = self._loaded.get(weights, 0) + 1
        if load_new:
            try:
                model = load(self.path, self.cfg.device, weights, self.cfg.engine)  # type: ignore[arg-type]
            except BaseException:
                with self._lock:
                    self._loaded[weights] -= 1
                raise
            with self._lock:
                self._engines[weights] = model.engine
        else:
            model = free.get()
        try:
            yield model
        finally:
            free.put(model)


def best_val(path: Path) -> float | None:
    """The best validation loss (nats/char) recorded for the checkpoint at `path`: from its
    run's metrics.jsonl, else from the file itself; None when neither says."""
    from charrnn.rundir import RunPaths, number, read_metrics

    run = RunPaths(path.parent)
    if run.metrics.is_file():
        losses = [number(e, "val_loss", math.inf) for e in read_metrics(run) if e.get("event") == "eval"]
        best = min(losses, default=math.inf)
        return best if math.isfinite(best) else None
    try:
        value = _stored_best_val(path)
    except Exception:  # noqa: BLE001 - a label only: a file that does not say has none
        return None
    return float(value) if isinstance(value, (int, float, str)) and math.isfinite(float(value)) else None


def _stored_best_val(path: Path) -> Any:
    """best_val as a .pt checkpoint's progress or a safetensors file's metadata holds it."""
    from charrnn.exporting.safetensors_io import MAX_HEADER, is_safetensors

    with open(path, "rb") as f:
        if is_safetensors(path):
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if size <= MAX_HEADER else {}
            return (header.get("__metadata__") or {}).get("best_val")
        from charrnn.ptfile import open_archive

        return (open_archive(f, str(path)).payload.get("progress") or {}).get("best_val")
