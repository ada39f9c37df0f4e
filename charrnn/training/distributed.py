"""Data-parallel training: one process per rank, started by torchrun, joined by DDP.

`--batch-size` is the GLOBAL number of streams B. With N ranks, rank r carries the
streams [r*B/N, (r+1)*B/N) of the single-process layout (see batching.py) and
their hidden state, so the union over ranks is exactly the single-process batch:

    single process, B = 8:  | s0 s1 s2 s3 s4 s5 s6 s7 |     hidden (L, 8, H)
    N = 4 ranks:            | s0 s1 | s2 s3 | s4 s5 | s6 s7 |
                              rank 0  rank 1  rank 2  rank 3  hidden (L, 2, H) each

Each rank's loss is the mean over its B/N streams; DistributedDataParallel
averages gradients over ranks, so with equal shards the gradient is the one of
the global mean loss, and every rank clips the same global norm.

Rank 0 alone evaluates, logs and writes checkpoints (same format as a single
process, the hidden state gathered from all ranks); the other ranks take part
in the collectives and wait. Every decision that could differ between ranks
(stop on a signal, the clock of a time budget, the loss that decides whether a
step is skipped, the validation result) is agreed through a collective, so no
rank waits for one that has already left.

`Dist()` is the single-process context: every helper is then a no-op.

The file stays whole: every collective here must be called by all ranks in the same
order, which is easiest to check when they sit together.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from charrnn.errors import CharRNNError

if TYPE_CHECKING:  # torch is imported where it is used, so `charrnn train --nproc N` execs torchrun at once
    import torch

R = TypeVar("R")
State = tuple["torch.Tensor", ...]

DEFAULT_TIMEOUT = 1800.0  # seconds a collective may wait for the slowest rank (torch's default)
_RANK_SEED_STRIDE = 1_000_003  # per-rank dropout seeds: seed + rank * stride


@dataclass(frozen=True)
class DistConfig:
    nproc: int = 0  # processes to start on this machine via torchrun; 0 = do not relaunch
    timeout: float = DEFAULT_TIMEOUT  # seconds before a collective gives up on a silent rank

    def __post_init__(self) -> None:
        if self.nproc < 0:
            raise CharRNNError("--nproc must be 1 or more (or 0: one process, no torchrun).")
        if not self.timeout > 0:
            raise CharRNNError("--dist-timeout must be a positive number of seconds.")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size, device. `Dist()` is one process alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # set when a process group is on
    enabled: bool = False  # a process group is initialized (also for a world of one)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- devices and the model -----------------------------------------------------------
    def pick_device(self, name: str) -> torch.device:
        """The training device: this rank's, or the usual choice for one process."""
        from charrnn.device import pick_device

        return self.device if self.device is not None else pick_device(name)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around `model` (parameters broadcast from rank 0); itself alone."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        assert self.device is not None
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def seed_dropout(self, seed: int) -> None:
        """Give each rank its own dropout stream (identical masks on every rank would correlate them)."""
        if self.world_size > 1:
            import torch

            torch.manual_seed(seed + self.rank * _RANK_SEED_STRIDE)

    # -- streams and hidden state --------------------------------------------------------
    def streams(self, batch_size: int) -> tuple[int, int]:
        """This rank's streams [lo, hi) of a global batch. Raises CharRNNError if B % N != 0."""
        if batch_size % self.world_size:
            raise CharRNNError(
                f"--batch-size {batch_size} does not split evenly over {self.world_size} processes: "
                f"it is the global number of streams, use a multiple of {self.world_size}."
            )
        per_rank = batch_size // self.world_size
        return self.rank * per_rank, (self.rank + 1) * per_rank

    def shard(self, batcher: Any) -> Any:
        """This rank's view of a StreamBatcher (the batcher itself in one process)."""
        if self.world_size == 1:
            return batcher
        return ShardedBatcher(batcher, *self.streams(batcher.batch_size))

    def shard_state(self, state: State) -> State:
        """Full hidden state, each (L, B, H) -> this rank's streams, each (L, B/N, H)."""
        if self.world_size == 1:
            return state
        lo, hi = self.streams(state[0].shape[1])
        return tuple(s[:, lo:hi].contiguous() for s in state)

    def gather_state(self, state: State) -> State:
        """Inverse of shard_state: every rank's (L, B/N, H) pieces -> (L, B, H). Collective."""
        if not self.enabled:
            return state
        import torch
        import torch.distributed as dist

        full = []
        for s in state:
            parts = [torch.empty_like(s) for _ in range(self.world_size)]
            dist.all_gather(parts, s.contiguous())
            full.append(torch.cat(parts, dim=1))
        return tuple(full)

    def gather_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        """RNG states for a checkpoint: rank 0's at the top level (what one process reads)
        and every rank's under "ranks" (so a resume with the same N is exact). Collective."""
        if not self.enabled:
            return rng
        import torch.distributed as dist

        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, rng)
        return {**every[0], "ranks": every}

    def rank_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        """This rank's RNG state from a checkpoint's `rng`, written by any number of ranks.

        Without a state of its own (a checkpoint of fewer ranks), rank r > 0 gets {} and keeps
        the dropout stream `seed_dropout` gave it, so ranks never share one.
        """
        ranks = rng.get("ranks")
        if self.world_size > 1:
            if isinstance(ranks, list) and len(ranks) == self.world_size:
                return ranks[self.rank]
            if self.rank > 0:
                return {}
        return {k: v for k, v in rng.items() if k != "ranks"}

    # -- agreement -----------------------------------------------------------------------
    def agreed(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        """A stop poll that is true on every rank as soon as it is true on any. Collective per call."""
        if not self.enabled:
            return should_stop
        return lambda: bool(self.agree_max(float(bool(should_stop())))[0])

    def agree_max(self, *values: float) -> tuple[float, ...]:
        """The maximum of each value over ranks (e.g. the slowest rank's clock). Collective."""
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(t.tolist())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a scalar over ranks: with equal shards, the global batch's mean loss. Collective."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = value.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def from_main(self, fn: Callable[..., R], *args: Any) -> R:
        """fn(*args) run on rank 0 alone; its (picklable) result reaches every rank. Collective.

        When fn raises on rank 0 the other ranks raise CharRNNError naming the failure.
        """
        if not self.enabled:
            return fn(*args)
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = ("ok", fn(*args))
            except Exception as exc:  # noqa: BLE001  tell the others before raising: they are waiting
                error = exc
                outcome = ("error", _describe(exc))
        outcome = self._broadcast(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise CharRNNError(f"rank 0 failed: {outcome[1]}")
        return outcome[1]

    def main_first(self, fn: Callable[..., R]) -> Callable[..., R]:
        """fn wrapped so rank 0 runs it before the others (prepare a corpus cache once, then map it)."""
        if not self.enabled:
            return fn

        def wrapper(*args: Any, **kwargs: Any) -> R:
            if self.is_main:
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    self._broadcast(("error", _describe(exc)))
                    raise
                self._broadcast(("ok", None))
                return result
            status, message = self._broadcast(("ok", None))
            if status == "error":
                raise CharRNNError(f"rank 0 failed: {message}")
            return fn(*args, **kwargs)

        return wrapper

    def _broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group (after a last barrier, so no rank is still sending)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class ShardedBatcher:
    """Rows [lo, hi) of a StreamBatcher's batches: the streams of one rank.

    Same steps_per_epoch and stream layout as the wrapped batcher; `batch_size`
    is the number of local streams hi - lo.
    """

    def __init__(self, batcher: Any, lo: int, hi: int) -> None:
        import numpy as np

        self.full = batcher
        self.tokens, self.seq_len = batcher.tokens, batcher.seq_len
        self.stream_len, self.steps_per_epoch = batcher.stream_len, batcher.steps_per_epoch
        self.batch_size = hi - lo
        # (b, T+1) index grid of step 0 for streams lo..hi-1, as in StreamBatcher
        starts = np.arange(lo, hi, dtype=np.int64)[:, None] * self.stream_len
        self._grid = starts + np.arange(self.seq_len + 1, dtype=np.int64)[None, :]

    def batch(self, step: int) -> tuple[Any, Any]:
        """Inputs and targets of this rank's streams at step `step`, each (B/N, T) int64 arrays."""
        assert 0 <= step < self.steps_per_epoch
        rows = self.tokens[self._grid + step * self.seq_len].astype("int64")
        return rows[:, :-1], rows[:, 1:]


# -- process group ----------------------------------------------------------------------
def launched_by_torchrun(environ: Mapping[str, str]) -> bool:
    """torchrun (and SLURM set-ups that mimic it) export RANK and WORLD_SIZE to each worker."""
    return "RANK" in environ and "WORLD_SIZE" in environ


def init_from_env(device: str, timeout: float, environ: Mapping[str, str]) -> Dist:
    """Join the process group described by torchrun's variables, or return `Dist()` without them.

    Backend: NCCL on CUDA (device cuda:LOCAL_RANK), gloo on the CPU. Raises
    CharRNNError for a device that cannot be shared (mps), too few GPUs, or a
    rendezvous that fails.
    """
    if not launched_by_torchrun(environ):
        return Dist()
    import torch
    import torch.distributed as dist

    from charrnn.device import pick_device

    if not dist.is_available():
        raise CharRNNError("this torch build has no torch.distributed: train with one process.")
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise CharRNNError("RANK, WORLD_SIZE and LOCAL_RANK must be integers: start with torchrun.")
    kind = pick_device(device).type
    if kind == "mps":
        raise CharRNNError("distributed training runs on cpu or cuda, not mps: pass --device cpu.")
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CharRNNError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "start at most one process per GPU (--nproc-per-node)."
            )
        dev, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(dev)
    else:
        dev, backend = torch.device("cpu"), "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout), rank=rank, world_size=world)
    except (ValueError, RuntimeError) as exc:
        raise CharRNNError(
            f"could not join the process group as rank {rank} of {world} ({_describe(exc)}): "
            "check the torchrun rendezvous flags and that the nodes reach each other."
        )
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev, enabled=True)


def is_peer_failure(exc: BaseException) -> bool:
    """True for errors that mean another rank died or went silent (closed socket, timeout)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        mark in text
        for mark in ("gloo/transport", "Connection closed by peer", "Connection reset by peer", "Timed out waiting")
    )


def peer_failure_message(dist: Dist, exc: BaseException, resume_hint: str) -> str:
    return (
        f"rank {dist.rank} of {dist.world_size} stopped: another process died or stopped answering "
        f"({_describe(exc)}); {resume_hint}"
    )


def _describe(exc: BaseException) -> str:
    """First line of an error, without gloo's source location, at most 200 characters."""
    import re

    lines = str(exc).strip().splitlines() or [""]
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", lines[0])
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, CharRNNError) else text


# -- relaunch ---------------------------------------------------------------------------
def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m charrnn ARGV`, ARGV without --nproc."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "charrnn",
        *rest,
    ]


def exec_torchrun(nproc: int, argv: list[str], environ: Mapping[str, str]) -> None:
    """Replace this process by torchrun starting `nproc` copies of this command on this machine.

    Signals and the exit status are then torchrun's: Ctrl-C or SIGTERM stops
    every rank after one checkpoint. Raises CharRNNError when already under torchrun.
    """
    if launched_by_torchrun(environ):
        raise CharRNNError("--nproc starts torchrun itself: drop it when launching with torchrun.")
    cmd = torchrun_command(nproc, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
