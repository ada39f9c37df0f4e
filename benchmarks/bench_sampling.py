"""Sampling throughput: the naive one-step module call against charrnn's fast step.

For each kind (2x512 by default) and each stream count, every method runs the
same sampling loop -- step, softmax with temperature, multinomial draw on the
CPU, feed the draw back -- and reports characters per second (streams x steps
per second). Methods:

    naive   model(x[:, None], state): torch's nn.LSTM/GRU/RNN, one step per call
    cell    a bare hand-written step: embedding, then torch.{lstm,gru,rnn_tanh}_cell
            per layer (two addmm each, torch's own pointwise code)
    fp32 / bf16 / int8   charrnn.fastpath.build_stepper(model, weights)

Methods alternate in short chunks, in an order reversed every round, so bursts
of load from other processes hit them alike; figures are medians over rounds
and each ratio is the median of per-round ratios. On the CPU with one stream, a
256 MB tensor copy runs in every round too: the memory-bound limit is that
round's copy bandwidth (bytes read + written per second) over the fp32 fast
step's weight bytes (the first layer's input weights are a table lookup there).
Weights that stay in the last-level cache can beat it.

    python benchmarks/bench_sampling.py --json sampling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from charrnn.config import ModelConfig
from charrnn.fastpath import available_weight_modes, build_stepper
from charrnn.model import CharRNN, State

StepFn = Callable[[Tensor, State], tuple[Tensor, State]]
TEMPERATURE = 0.8


def make_loop(step: StepFn, model: CharRNN, streams: int) -> Callable[[int], None]:
    """A closure running n sampling steps, carrying symbols and state between calls."""
    gen = torch.Generator().manual_seed(0)
    device = model.head.weight.device
    x = torch.zeros(streams, dtype=torch.long)
    state = model.init_state(streams)

    def run(n: int) -> None:
        nonlocal x, state
        with torch.inference_mode():
            for _ in range(n):
                logits, state = step(x.to(device), state)
                # Draw on the CPU with a CPU generator, as charrnn's sampler does.
                probs = torch.softmax(logits.float().cpu() / TEMPERATURE, dim=-1)
                x = torch.multinomial(probs, 1, generator=gen)[:, 0]

    return run


def naive_step(model: CharRNN) -> StepFn:
    def step(x: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = model(x[:, None], state)  # (B, 1, V): torch's module, one step
        return logits[:, 0], state

    return step


def cell_step(model: CharRNN) -> StepFn:
    """The bare addmm step: torch's *_cell function per layer on the module's weights."""
    kind = model.cfg.model
    cells: dict[str, Callable[..., Any]] = {
        "lstm": torch.lstm_cell,
        "gru": torch.gru_cell,
        "rnn": torch.rnn_tanh_cell,
    }
    cell = cells[kind]
    weights = [
        tuple(
            getattr(layer, n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        )
        for layer in model.stack.layers  # type: ignore[union-attr]
    ]

    def step(x: Tensor, state: State) -> tuple[Tensor, State]:
        inp = model.embed(x)  # (B, E)
        new: list[list[Tensor]] = [[] for _ in state]
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            if kind == "lstm":
                h, c = cell(inp, (state[0][i], state[1][i]), w_ih, w_hh, b_ih, b_hh)
                new[1].append(c)
            else:
                h = cell(inp, state[0][i], w_ih, w_hh, b_ih, b_hh)
            new[0].append(h)
            inp = h
        return model.head(inp), tuple(torch.stack(parts) for parts in new)

    return step


def copy_loop(mbytes: int = 256) -> tuple[Callable[[int], None], int]:
    """A closure copying a large tensor n times, and the bytes one copy moves."""
    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)

    def run(n: int) -> None:
        for _ in range(n):
            dst.copy_(src)

    return run, 2 * src.numel() * 4


def bench_case(model: CharRNN, streams: int, rounds: int, chunk_s: float) -> dict:
    """Figures for one model and stream count: medians, best rounds, per-round ratios."""
    device = model.head.weight.device
    loops = {
        "naive": make_loop(naive_step(model), model, streams),
        "cell": make_loop(cell_step(model), model, streams),
    }
    if device.type == "cuda":  # the graph-free fast step too, to show what the graph adds
        loops["fp32-eager"] = make_loop(build_stepper(model, "fp32").step, model, streams)
    for mode in ("fp32", "bf16", "int8"):
        if mode in available_weight_modes(device):
            stepper = build_stepper(model, mode, cuda_graph=device.type == "cuda")
            loops[mode] = make_loop(stepper.step, model, streams)
    work = dict.fromkeys(loops, streams)  # characters per loop step
    fp32_bytes = build_stepper(model, "fp32").weight_bytes()
    if streams == 1 and device.type == "cpu":
        loops["copy"], work["copy"] = copy_loop()

    steps = {}
    for name, run in loops.items():  # warm up, then size each chunk to about chunk_s
        run(2)
        start = time.perf_counter()
        run(2)
        steps[name] = max(1, round(chunk_s / ((time.perf_counter() - start) / 2)))
    rates: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            loops[name](steps[name])
            rates[name].append(work[name] * steps[name] / (time.perf_counter() - start))

    if "copy" in rates:  # the memory-bound limit, in characters per second, round by round
        rates["memory_bound"] = [bw / fp32_bytes for bw in rates.pop("copy")]
    methods = [m for m in rates if m != "memory_bound"]
    pairs = [(m, "naive") for m in methods[1:]] + [
        (m, "fp32") for m in methods if m not in ("naive", "fp32")
    ]
    if "memory_bound" in rates:
        pairs.append(("fp32", "memory_bound"))
    return {
        "fp32_weight_bytes": fp32_bytes,
        "chars_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "best_round": {k: max(v) for k, v in rates.items()},
        "ratios": {
            f"{a}/{b}": statistics.median(x / y for x, y in zip(rates[a], rates[b]))
            for a, b in pairs
        },
    }


def format_row(row: dict) -> str:
    rates, ratios = row["chars_per_s"], row["ratios"]
    cells = [f"naive {rates['naive']:7,.0f}"]
    for name in (k for k in rates if k not in ("naive", "memory_bound")):
        cells.append(f"{name} {rates[name]:7,.0f} ({ratios[name + '/naive']:4.1f}x)")
    text = f"{row['kind']:4s} B={row['streams']:<3d} t={row['threads']}  " + "  ".join(cells)
    if "memory_bound" in rates:
        text += (
            f" | mem-bound {rates['memory_bound']:,.0f}: fp32 {ratios['fp32/memory_bound']:.2f}x"
        )
    if "int8/fp32" in ratios:
        text += f" | int8/fp32 {ratios['int8/fp32']:.2f}x"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="lstm,gru,rnn")
    parser.add_argument("--streams", default="1,64", help="stream counts, comma-separated")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--chunk-s", type=float, default=0.03, help="seconds per method per round")
    parser.add_argument(
        "--threads", default="1", help="torch thread counts, comma-separated; 0 = default"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32

    results = []
    default_threads = torch.get_num_threads()
    for threads in (int(t) or default_threads for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for kind in args.kinds.split(","):
            torch.manual_seed(0)
            cfg = ModelConfig(
                vocab_size=args.vocab, model=kind, num_layers=args.layers, hidden_size=args.hidden
            )
            model = CharRNN(cfg).to(args.device).eval()
            for streams in (int(s) for s in args.streams.split(",")):
                case = bench_case(model, streams, args.rounds, args.chunk_s)
                row = {"kind": kind, "streams": streams, "threads": threads, **case}
                results.append(row)
                print(format_row(row), flush=True)

    if args.json:
        report = {
            "benchmark": "sampling",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__,
            "model": f"{args.layers}x{args.hidden}, vocab {args.vocab}",
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
