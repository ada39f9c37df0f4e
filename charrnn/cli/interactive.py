"""`charrnn sample --interactive`: a prompt loop in a terminal.

Each line typed is a prime; its continuation streams as `charrnn sample --prime` would write it
(the sample options apply; with --seed S the turns use S, S+1, ..., else a fresh seed each).
An empty line, `:q` or Ctrl-D quits; Ctrl-C stops a continuation (or clears the prompt).

Pick mode (`:pick` toggles it, `--pick` starts in it) goes one character at a time: it lists
the k most likely next characters (k = --top-k, else 5) with the probabilities the draw uses,
and the user types a number to take one, Enter to take the drawn one, or `.`/`:done` to end.
Accepting every draw writes the same text as the stream for that seed.
"""

import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Any, Optional

from charrnn.cli.common import err
from charrnn.errors import CharRNNError

QUIT = (":q", ":quit")
DONE = (".", ":done")
PICKS = 5  # candidates listed in pick mode without --top-k
TAIL = 60  # characters of the text so far shown in pick mode
HELP = (
    "Type a prime and press Enter. An empty line, :q or Ctrl-D quits; Ctrl-C stops a continuation; "
    ":pick turns pick mode (one character at a time) on or off."
)
VISIBLE = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(ch: str) -> str:
    """A character as a pick list shows it: space as ␣, newline and tab as \\n and \\t, other
    control characters as escapes."""
    if ch in VISIBLE:
        return VISIBLE[ch]
    return ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")


def run_loop(
    run: Optional[str],
    runs_dir: Path,
    cfg: Any,
    engine: str,
    weights: str,
    device: str,
    pick: bool,
    prime: Optional[str],
    prime_file: Optional[str],
) -> None:
    """The prompt loop of `charrnn sample --interactive` with the command's options.
    Raises CharRNNError before the first prompt when it cannot run."""
    if prime is not None or prime_file is not None:
        raise CharRNNError("--interactive reads each prime at its prompt: drop --prime and --prime-file.")
    if cfg.num_samples != 1:
        raise CharRNNError("--interactive writes one continuation per prime: drop --num-samples.")
    if getattr(cfg, "beam", 0):  # the loop draws character by character; beam search ranks whole texts
        raise CharRNNError("--interactive draws one character at a time: drop --beam.")
    if not sys.stdin.isatty():
        raise CharRNNError(
            "--interactive needs a terminal and standard input is not one: use --prime or --prime-file to sample "
            "from a script."
        )
    from charrnn.rundir import resolve_checkpoint
    from charrnn.sample.interactive import open_stepper

    path = resolve_checkpoint(run, runs_dir)
    stepper = open_stepper(path, engine, weights, device)  # type: ignore[arg-type]
    if stepper.nonfinite:
        err.print("warning: the checkpoint has non-finite weights: the text will be meaningless.", markup=False)
    try:
        import readline  # noqa: F401 - line editing and history at the prompt, where the platform has it
    except ImportError:
        pass
    if not stepper.vocab.byte_level and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a character the terminal cannot show
    if run is None:
        err.print(f"sampling from {path}", highlight=False)
    Loop(stepper, cfg, pick).run()


class Loop:
    """The prompt, its commands and one turn per prime."""

    def __init__(self, stepper: Any, cfg: Any, pick: bool) -> None:
        self.stepper = stepper
        self.cfg = cfg
        self.pick = pick
        self.seeds = itertools.count(cfg.seed) if cfg.seed is not None else None
        say(HELP + "\n")

    def run(self) -> None:
        while True:
            try:
                line = input("pick> " if self.pick else "prime> ")
            except EOFError:  # Ctrl-D
                say("\n")
                return
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt
                say("\n")
                continue
            if line == "" or line in QUIT:
                return
            if line == ":pick":
                self.pick = not self.pick
                say(f"pick mode {'on' if self.pick else 'off'}\n")
                continue
            try:
                self.turn(line)
            except KeyboardInterrupt:  # Ctrl-C: this continuation ends, the loop goes on
                say("\n[stopped]\n")
            except CharRNNError as exc:  # a prime with unknown characters: say so, ask again
                err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)

    def turn(self, prime: str) -> None:
        import numpy as np

        seed = next(self.seeds) if self.seeds is not None else None
        cfg = dataclasses.replace(self.cfg, seed=seed)
        self.stepper.vocab.encode(prime)  # unknown characters: an error before anything is shown
        if self.pick:
            self.pick_turn(prime, cfg, np.random.default_rng(seed))
        else:
            write = Writer(self.stepper.vocab.byte_level)
            write(prime)
            self.stepper.generate(prime, cfg, write)
            write("\n")

    def pick_turn(self, prime: str, cfg: Any, rng: Any) -> None:
        """One character at a time: list, draw once, let the user take a candidate or the draw."""
        from charrnn.sample.draw import StopTail

        stepper, k = self.stepper, cfg.top_k or PICKS
        stepper.start(prime)
        stop = StopTail(cfg.stop)
        for _ in range(cfg.length):
            shown = stepper.candidates(k, cfg.temperature, cfg.top_k, cfg.top_p)
            drawn = stepper.draw(cfg, rng)  # one draw per character, whatever is taken
            for i, (ch, p) in enumerate(shown, 1):
                say(f"  {i}  {visible(ch):<4} {p:.3f}\n")
            ch = ask(shown, drawn)
            if ch is None:
                break
            stepper.feed(ch)
            tail = "".join(visible(c) if c in "\n\t\r" else c for c in stepper.text[-TAIL:])
            say(f"» {tail}\n")
            if stop.reached(ch):
                break
        Writer(stepper.vocab.byte_level)(stepper.text + "\n")


def ask(shown: list, drawn: str) -> Optional[str]:
    """The character the user takes: candidate n for "n", the drawn one for Enter; None for
    `.`, `:done`, Ctrl-D or Ctrl-C (the continuation ends)."""
    prompt = f"1-{len(shown)} takes one, Enter takes {visible(drawn)}, . ends> "
    while True:
        try:
            answer = input(prompt).strip()
        except (EOFError, KeyboardInterrupt):
            say("\n")
            return None
        if answer == "":
            return drawn
        if answer in DONE:
            return None
        if answer.isdigit() and 1 <= int(answer) <= len(shown):
            return shown[int(answer) - 1][0]
        say(f"type a number from 1 to {len(shown)}, press Enter, or type . to end\n")


def say(text: str) -> None:
    """Interface text (lists, notes) on stdout, shown at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


class Writer:
    """Generated text on stdout, each piece shown as it comes (byte-level models write bytes)."""

    def __init__(self, byte_level: bool) -> None:
        self.byte_level = byte_level

    def __call__(self, text: str) -> None:
        if self.byte_level:
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("latin-1"))
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
