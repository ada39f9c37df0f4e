"""Budget-aware defaults: the model and training settings for a time budget.

Given the time budget, the corpus size and the device, `plan_run` picks the
settings a user did not give on the command line:

- precision: on a CPU with bf16 matrix instructions one size is
  timed in fp32 and in bf16 autocast, and bf16 is used where it is clearly faster;
- kind: the LSTM, or `VARIANT_KIND` on a CPU training in fp32 for a longer budget;
- size: a few training steps of growing 2-layer models of that kind are timed on the device
  (the probe, a few seconds); the largest size that still sees at least
  `CHARS_PER_PARAM` training characters per parameter within the budget wins
  (on a CPU, also one that sees the whole train split `EPOCHS_ENOUGH` times and
  at least `MIN_CHARS_PER_PARAM` characters per parameter),
  capped at `PARAMS_PER_TRAIN_CHAR` parameters per character of the train split
  so that a tiny corpus does not get a huge model;
- BPTT length: the longest of 32, 64 (on a GPU also 128, 256) that leaves about
  `MIN_STEPS` optimizer steps in the budget (`SHORT_MIN_STEPS` for a short CPU budget);
- dropout and weight drop: from the number of passes over the data the budget
  allows (none while the model is under-fitted, up to 0.5 when it sees the text
  dozens of times), with early stopping as a guard;
- validation: the number of validations (and, for a huge corpus, the length of
  the scored prefix of the val split) so that validating costs a few percent of
  the budget.

The constants below were calibrated on tiny-shakespeare on CPUs and GPUs with
benchmarks/quality.py; the runs behind each are in benchmarks/RESULTS.md, "Planner
calibration". Every choice is reported and a flag given by the user always wins.

The file stays whole: the probe, the size rule and the schedule rules are one decision,
each tuned against the others (benchmarks/RESULTS.md, "Planner calibration").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig
from charrnn.limits import parameter_count
from charrnn.training.loop import bf16_supported

# Named fixed sizes for `--preset`: model and batch settings (dropout stays automatic).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"num_layers": 2, "hidden_size": 128, "embed_size": 64, "batch_size": 32, "seq_len": 100},
    "small": {"num_layers": 2, "hidden_size": 256, "embed_size": 64, "batch_size": 32, "seq_len": 100},
    "medium": {"num_layers": 2, "hidden_size": 512, "embed_size": 64, "batch_size": 32, "seq_len": 100},
    "large": {"num_layers": 2, "hidden_size": 1024, "embed_size": 0, "batch_size": 128, "seq_len": 256},
    "xl": {"num_layers": 3, "hidden_size": 1536, "embed_size": 0, "batch_size": 128, "seq_len": 256},
}
# Size ladders probed, smallest first, and the batch shape used with them.
LADDER = {"cpu": (128, 256, 384, 512, 768, 1024), "gpu": (256, 512, 768, 1024, 1536, 2048)}
# On a CPU the longest BPTT length is 64: T=128 lost to T=64 even with as many updates
# (see benchmarks/RESULTS.md, "Planner calibration", BPTT length).
SHAPE = {"cpu": (32, 64), "gpu": (128, 256)}  # (batch_size, longest seq_len)
# bf16 autocast on a CPU with bf16 matrix instructions (oneDNN) is chosen when the probe finds
# it at least this much faster than fp32; elsewhere torch emulates bf16 and it is slower. Those
# matrix units want taller products, so bf16 on a CPU plans twice the batch (see
# benchmarks/RESULTS.md, "Planner calibration", bf16 batch).
BF16_MIN_GAIN = 1.2
BF16_CPU_BATCH = 64
# Truncated-BPTT length: the longest of MIN_SEQ, 2 x MIN_SEQ, 4 x MIN_SEQ ... (up to the
# shape's longest) that still leaves the budget about MIN_STEPS optimizer steps. Both the
# context a gradient sees and the number of updates count, and about 900 steps was where the
# longer length stopped paying (see benchmarks/RESULTS.md, "Planner calibration", BPTT length).
# A short CPU budget trains a small model for two passes or so, where updates count more than
# context: T=64 with 786-890 steps lost to T=32 at 100 s on both CPU classes, so budgets under
# SHORT_BUDGET_S need SHORT_MIN_STEPS for the longer length.
MIN_STEPS = 900
# The kind: the fused LSTM, except on a CPU training in fp32 for VARIANT_MIN_BUDGET_S or more,
# where the layer-normalised LSTM learns enough more per step to pay for its slower one: at 10
# minutes on the AVX2 EPYC it reached 1.4094-1.4129 against 1.437 for the LSTM of the same size;
# at 100 s they tie and the LSTM samples faster (see benchmarks/RESULTS.md, "LSTM variants").
# Not measured with bf16 autocast, so CPUs that plan bf16 keep the LSTM.
VARIANT_KIND = "ln-lstm"
VARIANT_MIN_BUDGET_S = 300
SHORT_BUDGET_S = 300
SHORT_MIN_STEPS = 1800
MIN_SEQ = 32
# Peak learning rate at a reference size (hidden, batch); it scales as 1/sqrt(hidden) and
# batch^(1/4). The CPU reference is the best of a learning-rate sweep (see
# benchmarks/RESULTS.md, "Planner calibration", learning rate).
LR = {"cpu": (5e-3, 256, 32), "gpu": (2e-3, 1024, 128)}
# Embedding width. On a CPU a narrow one saves a fifth of a 2x512 step's arithmetic (the
# first layer's input is a lookup of rank <= vocab anyway); on a GPU that costs nothing,
# while dropout on a narrow embedding hides the input character and costs quality there
# (see benchmarks/RESULTS.md, "Planner calibration", embedding width).
EMBED = {"cpu": 64, "gpu": 0}  # 0 = hidden size
CHARS_PER_PARAM = 1.0  # training characters per parameter the budget must allow ...
# ... or, for a small corpus on a fast machine, this many passes over the train split: past
# them a larger model beats more passes of a smaller one. Not below half a character per
# parameter, though: the probe's few steps flatter large models, which then train slower than
# probed and end worse (see benchmarks/RESULTS.md, "Planner calibration", passes).
EPOCHS_ENOUGH = 3.0
MIN_CHARS_PER_PARAM = 0.5
PARAMS_PER_TRAIN_CHAR = 20.0  # largest model per character of the train split
FALLBACK_HIDDEN = 512  # size when the budget is not a time (epochs or steps)
EVAL_SHARE = 0.06  # share of the budget spent validating, at most
EVAL_MAX_SHARE_EACH = 0.05  # one validation at most this share; longer val splits are cut
PROBE_SHARE = 0.05  # the probe stops once it has used this share of the budget
# Dropout by exposure = expected passes x parameters per training character: none up to
# DROPOUT_FREE_EXPOSURE (an under-fitted model only loses from it), rising to 0.5 at
# DROPOUT_FULL_EXPOSURE (see benchmarks/RESULTS.md, "Planner calibration", dropout).
DROPOUT_FREE_EXPOSURE = 6.0
DROPOUT_FULL_EXPOSURE = 550.0
PATIENCE = 3  # validations without a new best before stopping early
# Recurrent weight drop is available (--weight-drop) but not planned: on short GPU budgets it
# cost quality against locked dropout alone (see benchmarks/RESULTS.md, "Planner calibration",
# weight drop).
WEIGHT_DROP = 0.0


@dataclass
class Plan:
    """What the planner chose (only settings the user left open) and why."""

    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    probe: dict[int, float] = field(default_factory=dict)  # hidden size -> measured train chars/s
    probe_seconds: float = 0.0
    chars_per_s: float = 0.0  # expected training speed of the chosen size
    expected_epochs: float = 0.0
    eval_estimate: float = 0.0  # expected seconds of one validation
    bf16_gain: float = 1.0  # measured training speed of bf16 over fp32 where bf16 was chosen on a CPU
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "train": self.train,
            "probe_chars_per_s": self.probe,
            "probe_seconds": round(self.probe_seconds, 2),
            "expected_chars_per_s": round(self.chars_per_s),
            "expected_epochs": round(self.expected_epochs, 2),
            "notes": self.notes,
        }


def count_lstm_params(vocab: int, layers: int, hidden: int, embed: int) -> int:
    """Parameters of embedding -> `layers` x LSTM(hidden) -> linear head (limits.parameter_count)."""
    cfg = ModelConfig(vocab_size=vocab, model="lstm", num_layers=layers, hidden_size=hidden, embed_size=embed)
    return parameter_count(cfg)


def measure_train_speed(
    cfg: ModelConfig, batch_size: int, seq_len: int, device: torch.device, precision: str = "fp32", steps: int = 2
) -> float:
    """Training characters per second of `cfg` on `device`: one warm-up step, then
    `steps` timed steps (forward, backward, clip, AdamW) on random tokens."""
    from charrnn.models.charrnn import CharRNN

    model = CharRNN(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=device)
    state = model.init_state(batch_size, device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            logits, _ = model(x[:, :-1], state)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch_size * seq_len / (time.perf_counter() - t0)


def plan_run(
    given: dict[str, Any],
    vocab_size: int,
    train_chars: int,
    val_chars: int,
    device: torch.device,
    budget: float,
    epochs: float = 0.0,
    measure: Callable[..., float] = measure_train_speed,
) -> Plan:
    """Choose the settings missing from `given` (CLI options the user set, by field name).

    budget: seconds (0 when the run stops by epochs or steps: no probe then).
    `measure(cfg, batch_size, seq_len, device, precision)` returns train chars/s (injectable for tests).
    """
    plan = Plan()
    kind = "gpu" if device.type == "cuda" else "cpu"
    model_kind = given.get("model", "lstm")
    layers = given.get("num_layers", 2)
    embed = given.get("embed_size", EMBED[kind])
    batch, seq = given.get("batch_size", SHAPE[kind][0]), given.get("seq_len", SHAPE[kind][1])

    def config(hidden: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size, model=model_kind, num_layers=layers, hidden_size=hidden, embed_size=embed
        )

    precision = given.get("precision") or _precision_for(device)
    if kind == "cpu" and "precision" not in given and budget and bf16_supported(device):
        precision = _probe_cpu_precision(
            plan, config(given.get("hidden_size", LADDER["cpu"][1])), batch, device, measure
        )
    if "model" not in given and kind == "cpu" and precision == "fp32" and budget >= VARIANT_MIN_BUDGET_S:
        model_kind = VARIANT_KIND
    if kind == "cpu" and precision == "bf16" and "batch_size" not in given:
        batch = BF16_CPU_BATCH
    # A short corpus shortens the streams: keep at least ~20 steps per epoch.
    if "batch_size" not in given:
        while batch > 1 and train_chars // batch < seq * 20:
            batch //= 2
    if "seq_len" not in given:
        seq = min(seq, max(train_chars // batch - 1, 1))
    if (train_chars - 1) // batch < seq:
        from charrnn.data.batching import StreamBatcher

        StreamBatcher(torch.zeros(train_chars).numpy(), batch, seq)  # raises the error that says what fits

    if "hidden_size" in given:
        hidden = given["hidden_size"]
        if budget:
            t0 = time.perf_counter()
            plan.probe[hidden] = measure(config(hidden), batch, seq, device, precision)
            plan.probe_seconds += time.perf_counter() - t0
    elif budget:
        hidden = _probe_size(plan, config, batch, seq, device, precision, budget, train_chars, measure)
    else:
        hidden = FALLBACK_HIDDEN

    plan.chars_per_s = plan.probe.get(hidden, 0.0)
    seen = plan.chars_per_s * budget * (1 - EVAL_SHARE) - plan.chars_per_s * plan.probe_seconds
    plan.expected_epochs = epochs or max(seen, 0.0) / max(train_chars, 1)
    params = parameter_count(config(hidden))
    dropout = _dropout_for(plan.expected_epochs, params / max(train_chars, 1))
    if "seq_len" not in given and budget and plan.chars_per_s:
        longest, seq = seq, MIN_SEQ
        min_steps = SHORT_MIN_STEPS if kind == "cpu" and budget < SHORT_BUDGET_S else MIN_STEPS
        while 2 * seq <= longest and seen / (batch * 2 * seq) >= min_steps:
            seq *= 2
        seq = min(seq, longest)
    base_lr, base_hidden, base_batch = LR[kind]
    lr = base_lr * math.sqrt(base_hidden / hidden) * (batch / base_batch) ** 0.25
    weight_drop = WEIGHT_DROP if model_kind in ("lstm", "gru", "rnn") else 0.0
    chosen_model = {
        "model": model_kind,
        "num_layers": layers,
        "hidden_size": hidden,
        "embed_size": embed,
        "dropout": round(dropout, 3),
        "weight_drop": round(weight_drop, 3),
    }
    chosen_train = {
        "batch_size": batch,
        "seq_len": seq,
        "lr": float(f"{min(max(lr, 5e-4), 8e-3):.2g}"),
        "patience": PATIENCE,
        "precision": precision,
    }
    if budget and plan.chars_per_s:
        _plan_validation(plan, chosen_train, budget, val_chars)
    plan.model = {k: v for k, v in chosen_model.items() if k not in given}
    plan.train = {k: v for k, v in chosen_train.items() if k not in given}
    return plan


def _probe_size(
    plan: Plan,
    config: Callable[[int], ModelConfig],
    batch: int,
    seq: int,
    device: torch.device,
    precision: str,
    budget: float,
    train_chars: int,
    measure: Callable[..., float],
) -> int:
    """Time rungs of the ladder; keep the largest size the budget and the corpus carry.

    A CPU is probed smallest first (a large model's step takes seconds there); a GPU
    largest first, from the biggest size the corpus allows, since small models are
    launch-bound on it and their speed says little about large ones.
    """
    kind = "gpu" if device.type == "cuda" else "cpu"
    allowed = []
    for hidden in LADDER[kind]:
        params = parameter_count(config(hidden))
        if allowed and params > PARAMS_PER_TRAIN_CHAR * train_chars:
            plan.notes.append(
                f"{hidden} units and more skipped: {params / 1e6:.1f}M parameters for "
                f"{train_chars / 1e6:.2f}M training characters"
            )
            break
        allowed.append((hidden, params))
    t0 = time.perf_counter()
    t_first = 0.0  # when the first rung was done: its time includes one-time kernel and CUDA start-up
    chosen = allowed[0][0]
    for hidden, params in reversed(allowed) if kind == "gpu" else allowed:
        rate = measure(config(hidden), batch, seq, device, precision)
        plan.probe[hidden] = rate
        t_first = t_first or time.perf_counter()
        seen = rate * budget
        fits = seen >= CHARS_PER_PARAM * params
        if kind == "gpu":  # the passes rule is calibrated on CPUs only; a GPU sees the text dozens of times
            chosen = hidden
            if fits or time.perf_counter() - t_first > PROBE_SHARE * budget:
                break
            continue
        fits = fits or (seen >= EPOCHS_ENOUGH * train_chars and seen >= MIN_CHARS_PER_PARAM * params)
        if not fits and hidden != allowed[0][0]:
            break  # this size would see too little text in the budget
        chosen = hidden
        # The next rung has about twice the parameters at about half the speed: skip
        # probing it when that cannot pass, or when the probe has used its share.
        next_fits = seen >= 4 * CHARS_PER_PARAM * params or (
            seen >= 2 * EPOCHS_ENOUGH * train_chars and seen >= 4 * MIN_CHARS_PER_PARAM * params
        )
        if not next_fits or time.perf_counter() - t_first > PROBE_SHARE * budget:
            break
    plan.probe_seconds += time.perf_counter() - t0
    return chosen


def _probe_cpu_precision(
    plan: Plan, cfg: ModelConfig, batch: int, device: torch.device, measure: Callable[..., float]
) -> str:
    """bf16 or fp32 for a CPU with bf16 instructions: whichever trains `cfg` faster, with
    bf16 needing a clear margin (its gain depends on the CPU's matrix units)."""
    t0 = time.perf_counter()
    rates = {p: measure(cfg, batch, MIN_SEQ, device, p) for p in ("fp32", "bf16")}
    plan.probe_seconds += time.perf_counter() - t0
    gain = rates["bf16"] / max(rates["fp32"], 1e-9)
    chosen = "bf16" if gain >= BF16_MIN_GAIN else "fp32"
    if chosen == "bf16":
        plan.bf16_gain = gain
    plan.notes.append(
        f"bf16 autocast {'chosen' if chosen == 'bf16' else 'not used'}: "
        f"{gain:.2f}x the fp32 training speed on this CPU ({cfg.hidden_size} units, "
        f"{rates['fp32']:,.0f} vs {rates['bf16']:,.0f} chars/s)"
    )
    return chosen


def _dropout_for(epochs: float, params_per_char: float) -> float:
    """Dropout against over-fitting, which needs both many passes over the text and a
    model large for it. Their product (the exposure) sets it: none up to
    `DROPOUT_FREE_EXPOSURE`, then rising with its logarithm to 0.5 at `DROPOUT_FULL_EXPOSURE`."""
    exposure = epochs * params_per_char
    if exposure <= DROPOUT_FREE_EXPOSURE:
        return 0.0
    rise = math.log(exposure / DROPOUT_FREE_EXPOSURE) / math.log(DROPOUT_FULL_EXPOSURE / DROPOUT_FREE_EXPOSURE)
    return 0.5 * min(rise, 1.0)


def _precision_for(device: torch.device) -> str:
    """bf16 autocast on GPUs that run it natively: faster than fp32 there (see
    benchmarks/RESULTS.md, "Planner calibration", GPU precision)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _plan_validation(plan: Plan, train: dict[str, Any], budget: float, val_chars: int) -> None:
    """Validation cadence and length so validating stays a few percent of the budget."""
    # Validation runs in fp32, forward only, 32 streams: about twice the fp32 training rate
    # (see benchmarks/RESULTS.md, "Planner calibration", validation rate).
    eval_rate = 2.0 * plan.chars_per_s / plan.bf16_gain
    scored = val_chars
    longest = int(EVAL_MAX_SHARE_EACH * budget * eval_rate)
    if val_chars > longest:
        scored = max(longest, 10_000)
        train["val_chars"] = scored
        plan.notes.append(f"validation scores the first {scored:,} of {val_chars:,} val characters")
    plan.eval_estimate = scored / eval_rate + 0.05
    train["evals"] = int(min(max(EVAL_SHARE * budget / plan.eval_estimate, 2), 20))
