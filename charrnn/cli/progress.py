"""Training progress on stderr: a bar on a terminal, plain lines elsewhere.

On a terminal, a tqdm bar counts steps (runs that stop by steps or epochs) or percent of the
time budget, with an ETA; once the loop is over, the final validation shows as its own phase.
Elsewhere (a log file, a pipe), one line per validation and no carriage returns:

    step 1,200  val 1.4821 nats/char (2.138 bits/char)  elapsed 63.2s
"""

import sys
import time
from typing import Any, TextIO

from charrnn.cli.common import err


class TrainProgress:
    """Renders the training loop's events (charrnn.training.loop) for a person watching."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty()
        self.bar: Any = None
        self.by_time = False  # the bar counts percent of the time budget, not steps
        self.budget = 0.0
        self.total_steps = 0
        self.postfix: dict[str, str] = {}
        self.eval_seconds = 0.0  # wall seconds of the last validation (for when the final one starts)
        self.last_train_wall = time.perf_counter()
        self.final = False

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self._start(event)
        elif kind == "train":
            self.last_train_wall = time.perf_counter()
            if self.bar is not None:
                self._advance(event)
        elif kind == "eval":
            self.eval_seconds = time.perf_counter() - self.last_train_wall
            if self.bar is not None:
                self.postfix["val"] = f"{event['val_loss']:.3f}"
                self.bar.set_postfix(self.postfix, refresh=True)
            else:
                print(
                    f"step {event['step']:,}  val {event['val_loss']:.4f} nats/char "
                    f"({event['val_bpc']:.3f} bits/char)  elapsed {event['time']:.1f}s",
                    file=self.stream,
                    flush=True,
                )
        elif kind == "validate" and event.get("final") and self.bar is not None and not self.final:
            self.final = True  # the loop is over: the bar is full, the final validation runs
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.set_description("final validation")
        elif kind == "end":
            if self.bar is not None and event["status"] == "done":
                self.bar.update(self.bar.total - self.bar.n)
            self.close()

    def _start(self, event: dict) -> None:
        err.print(f"run started on {event['device']}, {event['steps_per_epoch']} steps/epoch", highlight=False)
        self.total_steps, self.budget = event["total_steps"], event["time_budget"]
        if not self.terminal:
            return
        from tqdm import tqdm

        self.by_time = not self.total_steps
        if self.by_time:
            self.bar = tqdm(
                total=100,
                unit="%",
                file=self.stream,
                dynamic_ncols=True,
                initial=min(100.0 * event["time"] / self.budget, 100.0),
                bar_format="{desc}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
            )
        else:
            self.bar = tqdm(
                total=self.total_steps, unit="step", file=self.stream, dynamic_ncols=True, initial=event["step"]
            )
        self.bar.set_description("training")

    def _advance(self, event: dict) -> None:
        bar = self.bar
        if self.by_time:
            target = min(100.0 * event["time"] / self.budget, 100.0)
            # The loop stops once a validation no longer fits in the budget (loop._finished).
            done = event["time"] + self.eval_seconds >= self.budget
        else:
            target = event["step"]
            done = event["step"] >= self.total_steps
        if done:
            target = bar.total
        bar.update(target - bar.n)
        self.postfix.update(loss=f"{event['train_loss']:.3f}", cps=f"{event['chars_per_s']:,.0f}")
        bar.set_postfix(self.postfix, refresh=False)
        if done and not self.final:
            self.final = True
            bar.set_description("final validation")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
