"""The training loop: truncated BPTT over contiguous streams, AdamW, warm-up + cosine,
gradient clipping, periodic validation and checkpoints, exact resume.

Progress is reported through `on_event(dict)`; nothing here prints. The file stays whole
around `Trainer`, one state machine (step, validate, save, roll back, resume) whose state
would otherwise be shared across modules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from charrnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batching import StreamBatcher
from charrnn.data.corpus import Prepared, split
from charrnn.device import bf16_supported, check_precision  # noqa: F401  (re-exported)
from charrnn.errors import CharRNNError
from charrnn.files import atomic_write_text, file_identity, link_or_copy, os_error
from charrnn.limits import check_memory, model_nbytes_for_training, parameter_count
from charrnn.models.charrnn import CharRNN, detach_state
from charrnn.rundir import RunLock, RunPaths, append_event, keep_events_until
from charrnn.training.distributed import Dist
from charrnn.training.evaluate import VAL_CHUNK, evaluate
from charrnn.training.logs import EventSinks

BAD_STEPS_BEFORE_ROLLBACK = 3  # consecutive non-finite steps before rolling back

Event = dict[str, Any]


@dataclass
class TrainResult:
    status: str  # "done" | "interrupted"
    reason: str  # what ended it: "steps", "time", "epochs", "patience" or "signal"
    step: int
    epoch: int
    best_val: float
    last_val: float
    elapsed: float  # seconds of training, summed over resumes
    chars_per_s: float
    skipped: int
    run: RunPaths


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Linear warm-up over the first `warmup` of the run, then cosine down to min_lr_ratio."""
    if cfg.warmup > 0 and progress < cfg.warmup:
        return cfg.lr * max(progress / cfg.warmup, 1e-3)
    span = max(1.0 - cfg.warmup, 1e-9)
    q = min(max((progress - cfg.warmup) / span, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * q)))


def _rng_state(device: torch.device) -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng_state(rng: dict[str, Any], device: torch.device) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


class Trainer:
    """One training run: build or restore, then `run()` until a stop criterion or a stop request."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data: Prepared,
        run: RunPaths,
        corpus_info: dict[str, Any],
        resume: Checkpoint | None = None,
        on_event: Callable[[Event], None] = lambda e: None,
        should_stop: Callable[[], bool] = lambda: False,
        dist: Dist | None = None,
        spent: float = 0.0,
        eval_estimate: float = 0.0,
    ) -> None:
        """`spent`: seconds the user already waited for this run (corpus preparation, the
        speed probe); a fresh run counts them against its time budget. `eval_estimate`:
        expected seconds of one validation, kept free at the end of a time budget until
        a real validation has been timed."""
        self.eval_estimate = eval_estimate
        if not (train_cfg.epochs or train_cfg.max_steps or train_cfg.time_budget):
            raise CharRNNError("no stop criterion: give --epochs, --max-steps or --time-budget.")
        self.dist = dist if dist is not None else Dist()  # ranks under torchrun; Dist() = one process
        self.mcfg, self.cfg, self.run_paths = model_cfg, train_cfg, run
        self.on_event, self.should_stop = on_event, self.dist.agreed(should_stop)
        self.sinks = EventSinks(None)  # metrics.csv, TensorBoard: opened by run() on rank 0
        self.vocab = data.vocab
        self.corpus_info = corpus_info
        self.device = self.dist.pick_device(train_cfg.device)
        train_tokens, val_tokens = split(data.tokens, train_cfg.val_frac)
        if len(val_tokens) < 2:
            raise CharRNNError(
                f"the validation split has {len(val_tokens)} characters: use a longer corpus or a larger --val-frac."
            )
        self.val_tokens = val_tokens[: train_cfg.val_chars] if train_cfg.val_chars else val_tokens
        # This rank's streams of the global batch (all of them in one process).
        self.batcher = self.dist.shard(StreamBatcher(train_tokens, train_cfg.batch_size, train_cfg.seq_len))
        self.total_steps = 0
        if train_cfg.max_steps:
            self.total_steps = train_cfg.max_steps
        if train_cfg.epochs:
            by_epochs = math.ceil(train_cfg.epochs * self.batcher.steps_per_epoch)
            self.total_steps = min(self.total_steps or by_epochs, by_epochs)

        check_memory(
            model_nbytes_for_training(model_cfg),
            f"training a {model_cfg.num_layers}x{model_cfg.hidden_size} {model_cfg.model}",
        )
        torch.manual_seed(train_cfg.seed)
        self.model = CharRNN(model_cfg).to(self.device)
        self.net = self.dist.wrap(self.model)  # trains through DDP when distributed; self.model otherwise
        self.dist.seed_dropout(train_cfg.seed)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=train_cfg.lr,
            betas=(0.9, 0.99),
        )
        self.step = self.epoch = self.cursor = self.skipped = 0
        self.elapsed = 0.0
        self.lr_scale = 1.0  # halved by each rollback after divergence
        self.rolled_back = False  # a rollback happened since the last good checkpoint
        self.best_val = self.last_val = math.inf
        self.stale_evals = 0  # validations since the last new best
        self.last_eval_step = -1
        self.autocast = check_precision(train_cfg.precision, self.device)
        self.state = self.model.init_state(self.batcher.batch_size, self.device)
        self.spent = 0.0  # of elapsed, the seconds before the first step (preparation, the probe)
        self.resumed = resume is not None
        # The last.pt this trainer continues from (None: there is none): a save that finds another
        # file there refuses, so no second trainer's older state can overwrite newer training.
        self.last_written = file_identity(run.last) if self.resumed else None
        if resume is not None:
            self._restore(resume)
        else:
            self.elapsed = self.spent = spent

    # -- state ---------------------------------------------------------------------------
    def _restore(self, ckpt: Checkpoint) -> None:
        try:
            self._restore_state(ckpt)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            raise CharRNNError(
                f"checkpoint '{ckpt.path}' cannot be resumed: its training state is damaged ({detail}); "
                "resume from another checkpoint of the run (best.pt or a kept step-N.pt)."
            ) from None

    def _restore_state(self, ckpt: Checkpoint) -> None:
        self.model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        p = ckpt.progress
        self.step, self.epoch, self.cursor = int(p["step"]), int(p["epoch"]), int(p["cursor"])
        self.elapsed = float(p["elapsed"])
        self.skipped = int(p.get("skipped", 0))
        self.lr_scale = float(p.get("lr_scale", 1.0))
        self.best_val = float(p.get("best_val", math.inf))
        self.last_val = float(p.get("last_val", math.inf))
        self.stale_evals = int(p.get("stale_evals", 0))
        self.spent = float(p.get("spent", 0.0))
        # The carried streams' state, when it fits this model and batch (else the streams start at zero).
        zero = self.model.init_state(self.cfg.batch_size, torch.device("cpu"))
        if ckpt.hidden is not None and [tuple(h.shape) for h in ckpt.hidden] == [tuple(z.shape) for z in zero]:
            self.state = self.dist.shard_state(tuple(h.to(self.device) for h in ckpt.hidden))
        _set_rng_state(self.dist.rank_rng(ckpt.rng), self.device)

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            model_config=self.mcfg,
            train_config=self.cfg,
            vocab=self.vocab,
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            progress={
                "step": self.step,
                "epoch": self.epoch,
                "cursor": self.cursor,
                "elapsed": self.elapsed,
                "best_val": self.best_val,
                "last_val": self.last_val,
                "stale_evals": self.stale_evals,
                "skipped": self.skipped,
                "lr_scale": self.lr_scale,
                "spent": self.spent,
                "steps_per_epoch": self.batcher.steps_per_epoch,
                "total_steps": self.total_steps,
            },
            hidden=self.dist.gather_state(detach_state(self.state)),  # all ranks' streams: (L, B, H)
            rng=self.dist.gather_rng(_rng_state(self.device)),
            corpus=self.corpus_info,
        )

    def save(self, best: bool = False) -> None:
        """Write last.pt (and best.pt, and a kept step-N.pt) atomically.

        Raises CharRNNError when the disk refuses; the previous files stay intact.
        """
        run = self.run_paths
        ckpt = self.checkpoint()  # on every rank: gathering the hidden state is collective
        if not self.dist.is_main:
            self.rolled_back = False
            return
        if file_identity(run.last) != self.last_written:
            raise CharRNNError(
                f"'{run.last}' was written by another process while this one trained from an older "
                f"checkpoint: not overwriting the newer training; see `charrnn info {run.dir.name}`."
            )
        try:
            save_checkpoint(ckpt, run.last)
            self.last_written = file_identity(run.last)
            if best:
                link_or_copy(run.last, run.best)
            if self.cfg.keep_last:
                link_or_copy(run.last, run.dir / f"step-{self.step:08d}.pt")
                for old in sorted(run.dir.glob("step-*.pt"))[: -self.cfg.keep_last]:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            raise CharRNNError(
                f"could not write a checkpoint in '{run.dir}' ({exc.strerror or exc}): the previous "
                f"checkpoint is intact; free disk space or fix permissions, then "
                f"`charrnn train --resume {run.dir.name}`."
            )
        self.rolled_back = False
        self._emit({"event": "checkpoint", "path": str(run.last), "best": best})

    def _roll_back(self, bad_in_row: int) -> None:
        """Divergence: reload last.pt with half the learning rate, once per good checkpoint."""
        if self.rolled_back or not self.run_paths.last.is_file():
            raise CharRNNError(
                f"training diverged: {bad_in_row} steps in a row had a non-finite loss or gradient, "
                f"also after rolling back with a lower learning rate; lower --lr or raise the "
                f"stability (--grad-clip) and start again."
            )
        scale, skipped, elapsed = self.lr_scale * 0.5, self.skipped, self.elapsed
        self._restore(load_checkpoint(self.run_paths.last))
        self.lr_scale, self.skipped, self.elapsed = scale, skipped, elapsed
        self.rolled_back = True
        self._emit({"event": "rollback", "step": self.step, "lr_scale": self.lr_scale})

    def write_config(self) -> None:
        if not self.dist.is_main:
            return
        self.run_paths.dir.mkdir(parents=True, exist_ok=True)
        info = {
            "model": dataclasses.asdict(self.mcfg),
            "train": dataclasses.asdict(self.cfg),
            "corpus": self.corpus_info,
            "parameters": parameter_count(self.mcfg),
            "steps_per_epoch": self.batcher.steps_per_epoch,
            "device": str(self.device),
        }
        atomic_write_text(self.run_paths.config, json.dumps(info, indent=2) + "\n")

    def _emit(self, event: Event) -> None:
        if not self.dist.is_main:  # rank 0 alone logs
            return
        event = {"time": round(self.elapsed, 3), **event}
        if event["event"] in ("train", "eval", "start", "end", "skip", "rollback", "early_stop"):
            append_event(self.run_paths, event)
            self.sinks.write(event)
        self.on_event(event)

    # -- loop ----------------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the run done, by steps or by time, whichever is further."""
        parts = []
        if self.total_steps:
            parts.append(self.step / self.total_steps)
        if self.cfg.time_budget:
            parts.append(self.elapsed / self.cfg.time_budget)
        return min(max(parts), 1.0)

    def lr_progress(self) -> float:
        """Progress of the learning-rate schedule: like `progress`, but over the training part of
        a time budget, so that the seconds spent before the first step (corpus preparation, the
        speed probe: 1-2% of 10 minutes, 4% of 100 s) do not eat the warm-up (a 2% warm-up
        after a 9 s probe was over in a handful of steps)."""
        progress = self.progress()
        if not (self.cfg.time_budget and self.spent):
            return progress
        start = min(self.spent / self.cfg.time_budget, 0.5)
        return min(max((progress - start) / (1.0 - start), 0.0), 1.0)

    def _validate(self) -> float:
        # Rank 0 scores the whole model; every rank gets the result, so best/stop decisions agree.
        val = self.dist.from_main(evaluate, self.model, self.val_tokens, self.cfg.val_streams, VAL_CHUNK, self.device)
        improved = val < self.best_val
        self.last_val = val
        self.last_eval_step = self.step
        if improved:
            self.best_val = val
        self.stale_evals = 0 if improved else self.stale_evals + 1
        self._emit(
            {
                "event": "eval",
                "step": self.step,
                "epoch": self.epoch,
                "val_loss": val,
                "val_bpc": val / math.log(2),
                "best_val": self.best_val,
                "stale": self.stale_evals,
            }
        )
        self.save(best=improved)
        return val

    def run(self) -> TrainResult:
        """Train until a stop criterion or a stop request; holds the run's lock throughout."""
        if not self.dist.is_main:
            return self._run()  # rank 0 owns the run folder: lock, config, metrics, checkpoints
        self.run_paths.dir.mkdir(parents=True, exist_ok=True)
        try:
            with RunLock(self.run_paths):
                keep_events_until(self.run_paths, self.step)
                with EventSinks(self.run_paths.dir, self.cfg.log, self.step) as self.sinks:
                    return self._run()
        except OSError as exc:  # metrics or config refused by the disk; checkpoints say so themselves
            raise os_error(exc, f"training run '{self.run_paths.dir.name}'") from None

    def _run(self) -> TrainResult:
        cfg = self.cfg
        self.write_config()
        self._emit(
            {
                "event": "start",
                "step": self.step,
                "total_steps": self.total_steps,
                "time_budget": cfg.time_budget,
                "device": str(self.device),
                "steps_per_epoch": self.batcher.steps_per_epoch,
            }
        )
        if self.step == 0 and not self.run_paths.last.is_file():
            self.save()  # a loadable last.pt from the first moment, and a point to roll back to
        self.model.train()
        params = [p for p in self.model.parameters()]
        chars_per_step = cfg.batch_size * cfg.seq_len
        eval_cost = self.eval_estimate  # seconds the last validation took, reserved at the end of a time budget
        next_eval = self._next_eval_mark()
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_start, bad_in_row = 0, time.perf_counter(), 0
        # Gradient health: the norm before clipping of the last good step, and how many of the
        # window's steps the clip scaled down (summed over train events: the exact fraction).
        window_clipped, last_norm = 0, math.nan
        status, reason = "done", ""
        clock = time.perf_counter()
        while not (reason := self._finished(eval_cost)):
            if self.should_stop():
                status, reason = "interrupted", "signal"
                break
            if self.cursor >= self.batcher.steps_per_epoch:  # epoch wraps: streams restart at their heads
                self.cursor = 0
                self.epoch += 1
                self.state = self.model.init_state(self.batcher.batch_size, self.device)
            x, y = self.batcher.batch(self.cursor)
            xb = torch.from_numpy(x).to(self.device, non_blocking=True)
            yb = torch.from_numpy(y).to(self.device, non_blocking=True)
            lr = lr_at(cfg, self.lr_progress()) * self.lr_scale
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                logits, new_state = self.net(xb, self.state)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss = self.dist.mean(loss.detach())  # the global batch's loss: every rank skips or steps alike
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            else:
                grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            norm = grad_norm.item()
            if not (math.isfinite(loss.item()) and math.isfinite(norm)):
                # Never let a non-finite step reach the weights; keep the previous state.
                self.skipped += 1
                bad_in_row += 1
                self.optimizer.zero_grad(set_to_none=True)
                self._emit({"event": "skip", "step": self.step, "skipped": self.skipped})
                if bad_in_row >= BAD_STEPS_BEFORE_ROLLBACK:
                    self._roll_back(bad_in_row)
                    bad_in_row = 0
                    clock = time.perf_counter()
                    continue
            else:
                bad_in_row = 0
                self.optimizer.step()
                self.state = detach_state(new_state, torch.float32)  # autocast returns bf16 states
                window_loss += loss.detach()
                window_steps += 1
                window_clipped += int(0 < cfg.grad_clip < norm)
                last_norm = norm
            self.step += 1
            self.cursor += 1
            now = time.perf_counter()
            self.elapsed += now - clock
            clock = now
            if cfg.time_budget:  # then progress, lr, eval marks and the stop read the clock: one clock for all ranks
                (self.elapsed,) = self.dist.agree_max(self.elapsed)
            if self.step % cfg.log_every == 0 and window_steps:
                rate = window_steps * chars_per_step / max(now - window_start, 1e-9)
                self._emit(
                    {
                        "event": "train",
                        "step": self.step,
                        "epoch": self.epoch,
                        "train_loss": window_loss.item() / window_steps,
                        "lr": lr,
                        "chars_per_s": rate,
                        "progress": self.progress(),
                        "grad_norm": last_norm,  # of the last good step, before clipping
                        "clipped": window_clipped,  # steps since the last train event the clip scaled
                        "grad_steps": window_steps,  # good steps since the last train event
                    }
                )
                window_loss.zero_()
                window_steps, window_start, window_clipped = 0, time.perf_counter(), 0
            if self._due(next_eval):
                t0 = time.perf_counter()
                self._validate()
                eval_cost = time.perf_counter() - t0
                next_eval = self._next_eval_mark()
                clock = time.perf_counter()
                self.elapsed += clock - t0
                if cfg.time_budget:
                    self.elapsed, eval_cost = self.dist.agree_max(self.elapsed, eval_cost)
                window_start = clock
                if cfg.patience and self.stale_evals >= cfg.patience:
                    reason = "patience"  # every rank saw the same val: they stop together
                    self._emit(
                        {"event": "early_stop", "step": self.step, "best_val": self.best_val, "stale": self.stale_evals}
                    )
                    break
        if status == "done" or self.step > 0:
            t0 = time.perf_counter()
            if status == "done" and self.last_eval_step != self.step:
                self._emit({"event": "validate", "step": self.step, "final": True})  # for progress displays
                self._validate()
            elif status != "done":
                self.save()
            self.elapsed += time.perf_counter() - t0
        rate = self.step * chars_per_step / max(self.elapsed, 1e-9)
        self._emit({"event": "end", "status": status, "reason": reason, "step": self.step, "best_val": self.best_val})
        self.net = self.model  # drop DDP before the process group: a reducer freed after it can deadlock gloo
        return TrainResult(
            status,
            reason,
            self.step,
            self.epoch,
            self.best_val,
            self.last_val,
            self.elapsed,
            rate,
            self.skipped,
            self.run_paths,
        )

    def _finished(self, eval_cost: float) -> str:
        """Why the run is over ("" while it is not)."""
        if self.total_steps and self.step >= self.total_steps:
            return "epochs" if self.cfg.epochs and not self.cfg.max_steps else "steps"
        if self.cfg.time_budget and self.elapsed + eval_cost >= self.cfg.time_budget:
            return "time"
        return ""

    def _next_eval_mark(self) -> float:
        """Next step (with --eval-every) or next progress fraction at which to validate."""
        if self.cfg.eval_every:
            return float((self.step // self.cfg.eval_every + 1) * self.cfg.eval_every)
        n = self.cfg.evals
        return (math.floor(self.progress() * n + 1e-9) + 1) / n

    def _due(self, mark: float) -> bool:
        if self.cfg.eval_every:
            return self.step >= mark
        return self.progress() >= mark and self.progress() < 1.0
