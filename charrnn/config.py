"""Every setting of a run, as frozen dataclasses with units and validation.

The CLI builds these from its options; checkpoints store them with `asdict` and
rebuild them with `from_dict`, which rejects missing or unknown keys.
The file stays whole: each setting's field, its choices and the check of its value
(a split's parts included) are read together, and checkpoints rebuild them here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from charrnn.errors import CharRNNError

# Version of the checkpoint layout (charrnn.checkpoint); readers refuse newer ones.
FORMAT_VERSION = 1

# Every set of choices, declared once: the config fields and the command-line options use these
# types (typer lists them in help, completes them and refuses others as usage errors), and the
# tuples below are read off them.
ModelKind = Literal[
    "lstm", "gru", "rnn", "peephole-lstm", "gf-rnn", "gf-gru", "gf-lstm", "mlstm", "mogrifier-lstm", "ln-lstm"
]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DropoutMask = Literal["locked", "per-step"]  # locked: one mask per sequence (variational)
Precision = Literal["fp32", "bf16"]
Weights = Literal["fp32", "bf16", "int8"]  # the weights sampling and scoring compute with
Engine = Literal["auto", "numpy", "torch"]  # which code steps the network when sampling
Preset = Literal["tiny", "small", "medium", "large", "xl"]  # fixed sizes, see charrnn.training.plan.PRESETS
Unknown = Literal["error", "skip"]  # characters outside a model's vocabulary, when inspecting
# Activations the neuron commands read: LSTM kinds, GRU gates, gated-feedback weights.
UnitKind = Literal["cell", "hidden", "input", "forget", "output", "reset", "update", "feedback"]

MODELS: tuple[str, ...] = get_args(ModelKind)
# Recurrent kinds that use torch's cuDNN/oneDNN modules.
FUSED_MODELS = MODELS[:3]
# Kinds whose state is (h, c) rather than (h,).
CELL_STATE_MODELS = ("lstm", "peephole-lstm", "gf-lstm", "mlstm", "mogrifier-lstm", "ln-lstm")
DEVICES: tuple[str, ...] = get_args(DeviceName)
DROPOUT_MASKS: tuple[str, ...] = get_args(DropoutMask)
PRECISIONS: tuple[str, ...] = get_args(Precision)
# Bounds that keep sizes and step counts in machine integers; a real run is far inside them.
MAX_VOCAB = 0x110000  # Unicode code points
MAX_LAYERS = 1024
MAX_WIDTH = 2**20  # hidden_size, embed_size, batch_size, seq_len
MAX_COUNT = 2**63  # any other integer setting (steps, characters, seeds): an int64
MAX_EPOCHS = 1e6
MAX_SECONDS = 1e9  # time budget (about 32 years)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CharRNNError(message)


def _check_finite(cfg: Any) -> None:
    """Every float setting of `cfg` is finite and every int setting below MAX_COUNT in size:
    `--lr inf` or `--max-steps 10**30` are one error, not an overflow deep inside training."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, float):
            _check(math.isfinite(value), f"{flag} must be a finite number, not {value}.")
        elif isinstance(value, int) and not isinstance(value, bool):
            _check(abs(value) < MAX_COUNT, f"{flag} must be below 2**63.")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # number of distinct symbols (characters or bytes)
    model: ModelKind = "lstm"
    num_layers: int = 2  # stacked recurrent layers
    hidden_size: int = 512  # units per recurrent layer
    embed_size: int = 0  # embedding width; 0 means equal to hidden_size
    dropout: float = 0.0  # on the embedding, between layers and before the head
    dropout_mask: DropoutMask = (
        "locked"  # locked: one mask per sequence (variational); per-step: a fresh mask each step
    )
    weight_drop: float = 0.0  # DropConnect on the recurrent (hidden-to-hidden) weights, fused kinds only

    def __post_init__(self) -> None:
        _check_finite(self)
        _check(self.model in MODELS, f"unknown model '{self.model}': choose one of {', '.join(MODELS)}.")
        _check(self.vocab_size >= 1, "the vocabulary is empty: the corpus has no characters.")
        _check(
            self.vocab_size <= MAX_VOCAB, f"vocab_size {self.vocab_size} exceeds the {MAX_VOCAB:,} Unicode code points."
        )
        _check(1 <= self.num_layers <= MAX_LAYERS, f"--layers must be in [1, {MAX_LAYERS}].")
        _check(1 <= self.hidden_size <= MAX_WIDTH, f"--hidden must be in [1, {MAX_WIDTH:,}].")
        _check(0 <= self.embed_size <= MAX_WIDTH, f"--embed must be 0 (same as --hidden) or at most {MAX_WIDTH:,}.")
        _check(0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1).")
        _check(
            self.dropout_mask in DROPOUT_MASKS,
            f"unknown --dropout-mask '{self.dropout_mask}': choose {' or '.join(DROPOUT_MASKS)}.",
        )
        _check(0.0 <= self.weight_drop < 1.0, "--weight-drop must be in [0, 1).")
        _check(
            self.weight_drop == 0 or self.model in FUSED_MODELS,
            f"--weight-drop works with {', '.join(FUSED_MODELS)}; '{self.model}' has no fused recurrent weights to drop.",
        )

    @property
    def embedding_size(self) -> int:
        return self.embed_size or self.hidden_size

    @property
    def state_size(self) -> int:
        """Number of state tensors per layer: 2 (h, c) for LSTM kinds, else 1 (h)."""
        return 2 if self.model in CELL_STATE_MODELS else 1


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # B parallel contiguous streams
    seq_len: int = 100  # T characters per truncated-BPTT step
    lr: float = 2e-3  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: float = 0.02  # fraction of the run spent warming up linearly
    min_lr_ratio: float = 0.02  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    epochs: float = 0.0  # stop after this many passes over the train split; 0 = unset
    max_steps: int = 0  # stop after this many steps; 0 = unset
    time_budget: float = 0.0  # stop after this many seconds of training; 0 = unset
    eval_every: int = 0  # steps between validations; 0 = `evals` spread over the run
    evals: int = 10  # validations per run when eval_every is 0 (the last one at the end)
    patience: int = 0  # early stop after this many validations without a new best; 0 = never
    precision: Precision = "fp32"  # fp32 | bf16 (autocast matrix products; the weights stay fp32)
    log_every: int = 10  # steps between progress/metrics events
    keep_last: int = 0  # periodic step-N.pt checkpoints kept besides last.pt and best.pt
    val_frac: float = 0.1  # last fraction of the text before the test part (all of it without one) used for validation
    # "train/val/test" percentages of the corpus, contiguous in that order, e.g. "90/5/5"; the
    # test part is never trained on or validated (`charrnn eval RUN --split test`). "" = no test part.
    split: str = ""
    val_chars: int = 2_000_000  # characters of the val split scored per evaluation; 0 = all
    # Streams the val split is cut into. Each starts from a zero state and pays for it: a 2x768
    # scored 1.4459 nats/char as one stream, 1.4484 as 32, 1.4506 as 64 (tiny-shakespeare).
    val_streams: int = 32
    seed: int = 1337  # seeds weights, dropout and the stream layout
    device: DeviceName = "auto"  # auto = cuda when present
    # Extra event logs beside metrics.jsonl, comma-separated LogKind names ("csv,tensorboard");
    # a string, not a tuple, so that checkpoints store it like every other setting.
    log: str = ""

    def __post_init__(self) -> None:
        _check_finite(self)
        for kind in filter(None, self.log.split(",")):
            _check(kind in typing.get_args(LogKind), f"unknown --log '{kind}': choose csv or tensorboard.")
        _check(1 <= self.batch_size <= MAX_WIDTH, f"--batch-size must be in [1, {MAX_WIDTH:,}].")
        _check(1 <= self.seq_len <= MAX_WIDTH, f"--seq-len must be in [1, {MAX_WIDTH:,}].")
        _check(self.lr > 0, "--lr must be positive.")
        _check(self.weight_decay >= 0, "--weight-decay must be 0 or positive.")
        _check(0.0 <= self.warmup < 1.0, "--warmup must be a fraction in [0, 1).")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "--min-lr-ratio must be in [0, 1].")
        _check(self.grad_clip >= 0, "--grad-clip must be 0 (off) or positive.")
        _check(0 <= self.epochs <= MAX_EPOCHS, f"--epochs must be positive and at most {MAX_EPOCHS:,.0f}.")
        _check(0 <= self.max_steps < 2**62, "--max-steps must be positive and below 2**62.")
        _check(
            0 <= self.time_budget <= MAX_SECONDS,
            f"--time-budget must be positive and at most {MAX_SECONDS:,.0f} seconds.",
        )
        _check(self.eval_every >= 0, "--eval-every must be 0 (auto) or positive.")
        _check(self.evals >= 1, "--evals must be at least 1.")
        _check(self.patience >= 0, "--patience must be 0 (off) or positive.")
        _check(
            self.precision in PRECISIONS, f"unknown --precision '{self.precision}': choose {' or '.join(PRECISIONS)}."
        )
        _check(self.log_every >= 1, "--log-every must be at least 1.")
        _check(self.keep_last >= 0, "--keep-last must be 0 (none) or positive.")
        _check(0.0 < self.val_frac < 1.0, "--val-frac must be in (0, 1).")
        if self.split:
            train, val, _ = parse_split(self.split)
            _check(
                abs(self.val_frac - val / (train + val)) < 1e-9,
                f"val_frac {self.val_frac} does not match --split {self.split}: it must be {val / (train + val)}.",
            )
        _check(self.val_chars >= 0, "--val-chars must be 0 (all) or positive.")
        _check(self.val_streams >= 1, "--val-streams must be at least 1.")
        _check(self.seed >= 0, "--seed must be 0 or positive.")
        _check(self.device in DEVICES, f"unknown device '{self.device}': choose {', '.join(DEVICES)}.")

    @property
    def test_frac(self) -> float:
        """The fraction of the corpus held out at its end for testing (0 without --split)."""
        return parse_split(self.split)[2] / 100 if self.split else 0.0


@dataclass(frozen=True)
class SampleConfig:
    temperature: float = 0.8  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely characters; 0 = all
    top_p: float = 1.0  # nucleus: smallest set with this much probability
    length: int = 500  # new characters per sample
    num_samples: int = 1
    seed: int | None = None  # None = a fresh random seed
    stop: str = ""  # stop a sample once it ends with this string
    beam: int = 0  # beam search over this many beams (each holds its text: at most 1,024); 0 = draw
    length_norm: float = 0.0  # beam score = log-probability / length**length_norm

    def __post_init__(self) -> None:
        _check_finite(self)
        _check(
            math.isfinite(self.temperature) and self.temperature >= 0, "--temp must be 0 (greedy) or a positive number."
        )
        _check(self.seed is None or 0 <= self.seed < 2**63, "--seed must be 0 or positive and below 2**63.")
        _check(self.top_k >= 0, "--top-k must be 0 (off) or positive.")
        _check(0.0 < self.top_p <= 1.0, "--top-p must be in (0, 1].")
        _check(self.length >= 0, "--length must be 0 or positive.")
        _check(self.num_samples >= 1, "--num-samples must be at least 1.")
        _check(0 <= self.beam <= 1024, "--beam must be 0 (off) or a number of beams up to 1,024.")
        _check(self.length_norm >= 0, "--length-norm must be 0 (off) or positive.")
        _check(self.beam == 0 or self.num_samples == 1, "--beam writes one text: drop --num-samples or --beam.")


T = TypeVar("T")


def from_dict(cls: type[T], data: Any, version: int) -> T:
    """Rebuild a config dataclass stored by `asdict`. Unknown or missing keys and values of the
    wrong type are errors: a checkpoint is untrusted input."""
    name = cls.__name__
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise CharRNNError(f"checkpoint (format {version}) has a damaged {name}: it is not a table of settings.")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise CharRNNError(
            f"checkpoint (format {version}) has unknown {name} keys {unknown[:10]}: "
            "it was written by another charrnn version."
        )
    hints = typing.get_type_hints(cls)
    values = {
        key: _typed(value, hints[key], f"checkpoint (format {version}) field {name}.{key}")
        for key, value in data.items()
    }
    try:
        return cls(**values)
    except TypeError as exc:
        raise CharRNNError(f"checkpoint (format {version}) has an incomplete {name}: {exc}.")
    except CharRNNError as exc:  # the message quotes the file's value: keep it on one line
        raise CharRNNError(f"checkpoint (format {version}) has an invalid {name}: {printable(str(exc))}")


def printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped (\\n, \\x1e): an error
    message quoting a file's content stays one line on the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against a field's type: int (not bool), float (int or float, finite),
    str, bool, or X | None. Raises CharRNNError naming `where`."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if typing.get_origin(kind) is Literal and isinstance(value, str):
            return value  # which strings are valid is __post_init__'s check, with its message
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) or abs(value) < 2**1000:
                number = float(value)
                if math.isfinite(number):
                    return number
            raise CharRNNError(f"{where} must be a finite number, not {value!r:.40}.")
        if kind is str and isinstance(value, str):
            return value
    wanted = " or ".join(
        "a string"
        if typing.get_origin(k) is Literal
        else {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(
            k, str(k)
        )
        for k in options
    )
    raise CharRNNError(f"{where} must be {wanted}, not {type(value).__name__} {value!r:.40}.")


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """'90s', '10m', '1h30m', '45' (seconds) -> seconds. Raises CharRNNError."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or not match or not any(match.groups()):
        raise CharRNNError(f"cannot read duration '{text}': use e.g. 90s, 10m or 1h30m.")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise CharRNNError(f"duration '{text}' must be positive.")
    return total


ExportFormat = Literal["safetensors", "onnx", "torchscript"]  # what `charrnn export` writes


# task:execute training lines: all at the given level, or half at random easier levels
Curriculum = Literal["plain", "mixed"]


# Event logs `train --log` writes beside metrics.jsonl (charrnn/training/logs.py)
LogKind = Literal["csv", "tensorboard"]


# The parts of a run's corpus `charrnn eval RUN --split` scores (see TrainConfig.split)
SplitPart = Literal["val", "test"]


def parse_split(text: str) -> tuple[float, float, float]:
    """'90/5/5' -> (90.0, 5.0, 5.0): train, validation and test percentages, each finite, train
    and validation positive, test 0 or positive, summing to 100. Raises CharRNNError."""
    usage = "use train/val/test percentages that sum to 100, e.g. --split 90/5/5"
    parts = text.split("/")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        values = ()
    if len(parts) != 3 or len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise CharRNNError(f"cannot read --split '{text}': {usage}.")
    train, val, test = values
    if train <= 0 or val <= 0 or test < 0:
        raise CharRNNError(f"--split {text}: train and val must be positive and test 0 or positive; {usage}.")
    if abs(train + val + test - 100) > 1e-6:
        raise CharRNNError(f"--split {text} sums to {train + val + test:g}, not 100; {usage}.")
    return train, val, test


def split_val_frac(split: str, val_frac: float | None = None) -> float:
    """TrainConfig.val_frac for `split`: the validation share of the text before the test part.
    `val_frac`, when given, is a fraction of the whole corpus and must agree with the split."""
    train, val, _ = parse_split(split)
    if val_frac is not None and abs(val_frac - val / 100) > 1e-9:
        raise CharRNNError(
            f"--val-frac {val_frac:g} and --split {split} disagree (validation is {val / 100:g} of the corpus): "
            "give one of them."
        )
    return val / (train + val)
