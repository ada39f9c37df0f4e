"""Sampling throughput: the naive one-step model call against charrnn's fast step.

For each kind (2x512 by default) and each stream count, every method runs the
same sampling loop -- step, then charrnn's own draw (`charrnn.sample.draw.draw`,
temperature 0.8, on the CPU), feed the draw back -- and reports characters per
second (streams x steps per second). `--draw none` leaves the draw out, to time
the steps alone. Methods:

    naive   model(x[:, None], state): one step through the model's own forward
            (torch's nn.LSTM/GRU/RNN for the fused kinds, the TorchScript loop of
            charrnn.models.custom for the others)
    fp32 / bf16 / int8   charrnn.sample.fast_step.build_stepper(model, weights)
    numpy   charrnn.sample.numpy_engine: the torch-free step `charrnn sample` uses on the CPU
            (lstm/gru/rnn), with its own draw; one BLAS thread, as there
            (OPENBLAS_NUM_THREADS), whatever --threads says
    numpy-int8   the same step with int8 weights (charrnn.sample.numpy_int8's compiled
            product, one thread): what `charrnn sample --weights int8` runs
    limit   the fp32 fast step's matmuls alone, on its very weights: the table
            gather, one matmul per linear of the step and the head, with no
            nonlinearity, no state update and nothing else. No fp32 step that
            reads these weights once can run faster than this.

Methods alternate in short chunks, in an order reversed every round, so bursts
of load from other processes hit them alike; figures are medians over rounds
and each ratio is the median of per-round ratios. On the CPU with one stream, a
256 MB tensor copy runs in every round too: `dram` is that round's copy
bandwidth (bytes read + written per second) over the fp32 step's weight bytes,
the rate if every weight came from memory (weights partly kept in the
last-level cache can beat it).

    python benchmarks/bench_sampling.py --json sampling.json

`--samples 1,8,64` measures `charrnn sample --num-samples N` instead: N samples of
`--sample-length` characters drawn as one batch (the engines' `generate_many`, what
Sampler.generate_samples runs) against the same N drawn one after another (`generate`
with seeds seed..seed+N-1, what the command did before), on the NumPy and torch fp32
engines, whole path (prime, step, draw, stop check). Characters per second (N x length
over the time), medians of interleaved rounds; the batch must write the same texts.

    python benchmarks/bench_sampling.py --kinds lstm --samples 1,8,64 --json many.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `charrnn sample` sets it for its NumPy engine

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from charrnn.config import FUSED_MODELS, ModelConfig, SampleConfig
from charrnn.models.charrnn import CharRNN, State
from charrnn.sample import draw as draw_mod
from charrnn.sample import numpy_engine as npsample
from charrnn.sample import numpy_int8 as npint8
from charrnn.sample.fast_step import build_stepper
from charrnn.sample.step_base import FastStepper, available_weight_modes

StepFn = Callable[[Tensor, State], tuple[Tensor, State]]
TEMPERATURE = 0.8
KINDS = "lstm,gru,rnn,peephole-lstm,gf-rnn,gf-gru,gf-lstm"


def make_loop(step: StepFn, model: CharRNN, streams: int, draw: bool) -> Callable[[int], None]:
    """A closure running n sampling steps, carrying symbols and state between calls."""
    rng = np.random.default_rng(0)
    cfg = SampleConfig(temperature=TEMPERATURE)
    device = model.head.weight.device
    x = torch.zeros(streams, dtype=torch.long)
    state = model.init_state(streams)

    def run(n: int) -> None:
        nonlocal x, state
        with torch.inference_mode():
            for _ in range(n):
                logits, state = step(x.to(device), state)
                if draw:  # charrnn's draw, as sampling.generate makes it
                    x = torch.from_numpy(draw_mod.draw(logits.float().cpu().numpy(), cfg, rng))

    return run


def numpy_loop(model: CharRNN, streams: int, draw: bool, weights: str = "fp32") -> Callable[[int], None]:
    """As make_loop, on charrnn.sample.numpy_engine's step and draw (the model's weights as arrays)."""
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    net = npsample.make_net(model.cfg, arrays, weights)
    rng = np.random.default_rng(0)
    cfg = SampleConfig(temperature=TEMPERATURE)
    x = np.zeros(streams, np.int64)
    state = net.zero_state(streams)

    def run(n: int) -> None:
        nonlocal x, state
        for _ in range(n):
            logits, state = net.step(x, state)
            if draw:
                x = draw_mod.draw(logits, cfg, rng)

    return run


def naive_step(model: CharRNN) -> StepFn:
    def step(x: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = model(x[:, None], state)  # (B, 1, V): the model's forward, one step
        return logits[:, 0], state

    return step


def limit_step(stepper: FastStepper) -> StepFn:
    """The fp32 step's unavoidable work: table gather, every matmul on its weights, the head."""
    inputs: dict[int, list[Tensor]] = {}

    def step(x: Tensor, state: State) -> tuple[Tensor, State]:
        xs = inputs.get(x.shape[0])
        if xs is None:  # one fixed input per linear, of its width
            xs = inputs[x.shape[0]] = [
                torch.full((x.shape[0], lin.weight_t.shape[0]), 0.01, device=x.device) for lin in stepper.lins
            ]
        stepper.table.index_select(0, x)
        for lin, inp in zip(stepper.lins, xs):
            lin(inp)
        return stepper.head(xs[0][:, : stepper.hidden]), state

    return step


def copy_loop(mbytes: int = 256) -> tuple[Callable[[int], None], int]:
    """A closure copying a large tensor n times, and the bytes one copy moves."""
    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)

    def run(n: int) -> None:
        for _ in range(n):
            dst.copy_(src)

    return run, 2 * src.numel() * 4


def bench_case(model: CharRNN, streams: int, rounds: int, chunk_s: float, draw: bool) -> dict:
    """Figures for one model and stream count: medians, best rounds, per-round ratios."""
    device = model.head.weight.device
    eager = build_stepper(model, "fp32")
    loops = {"naive": make_loop(naive_step(model), model, streams, draw)}
    if device.type == "cuda":  # the graph-free fast step too, to show what the graph adds
        loops["fp32-eager"] = make_loop(eager.step, model, streams, draw)
    for mode in ("fp32", "bf16", "int8"):
        if mode in available_weight_modes(device):
            stepper = build_stepper(model, mode, cuda_graph=device.type == "cuda")
            loops[mode] = make_loop(stepper.step, model, streams, draw)
    if device.type == "cpu" and model.cfg.model in FUSED_MODELS:
        loops["numpy"] = numpy_loop(model, streams, draw)
        if npint8.available():
            loops["numpy-int8"] = numpy_loop(model, streams, draw, "int8")
    if isinstance(eager, FastStepper):
        loops["limit"] = make_loop(limit_step(eager), model, streams, draw)
    work = dict.fromkeys(loops, streams)  # characters per loop step
    fp32_bytes = eager.weight_bytes()
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

    if "copy" in rates:  # every weight from memory, in characters per second, round by round
        rates["dram"] = [bw / fp32_bytes for bw in rates.pop("copy")]
    methods = [m for m in rates if m not in ("naive", "limit", "dram")]
    pairs = [(m, "naive") for m in methods] + [(m, "fp32") for m in methods if m != "fp32"]
    pairs += [("numpy-int8", "numpy")] if "numpy-int8" in rates else []
    pairs += [(m, ref) for m in ("fp32", "numpy") for ref in ("limit", "dram") if ref in rates and m in rates]
    return {
        "fp32_weight_bytes": fp32_bytes,
        "chars_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "best_round": {k: max(v) for k, v in rates.items()},
        "ratios": {f"{a}/{b}": statistics.median(x / y for x, y in zip(rates[a], rates[b])) for a, b in pairs},
    }


def bench_many(model: CharRNN, counts: list[int], rounds: int, length: int) -> list[dict]:
    """Figures for `--samples`: per engine and sample count, batched against one after another."""
    from charrnn.data.vocab import Vocab
    from charrnn.sample import torch_engine

    chars = "\n" + "".join(chr(c) for c in range(32, 32 + model.cfg.vocab_size - 1))
    vocab = Vocab(tuple(chars))
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    net = npsample.make_net(model.cfg, arrays)
    stepper = build_stepper(model, "fp32")
    engines = {
        "numpy": (
            lambda cfg, seeds: npsample.generate_many(net, vocab, "THE ", cfg, seeds, lambda i, c: None),
            lambda cfg: npsample.generate(net, vocab, "THE ", cfg, lambda c: None),
        ),
        "torch": (
            lambda cfg, seeds: torch_engine.generate_many(model, vocab, "THE ", cfg, seeds, lambda i, c: None, stepper),
            lambda cfg: torch_engine.generate(model, vocab, "THE ", cfg, lambda c: None, stepper=stepper),
        ),
    }
    cfg = SampleConfig(temperature=TEMPERATURE, length=length)
    rows = []
    for engine, (batched, single) in engines.items():
        for n in counts:
            seeds = list(range(n))
            runs = {
                "batched": lambda: batched(cfg, seeds),
                "one_by_one": lambda: [
                    single(SampleConfig(temperature=TEMPERATURE, length=length, seed=s)) for s in seeds
                ],
            }
            texts = {name: run() for name, run in runs.items()}  # warm-up, and the same texts
            rates: dict[str, list[float]] = {name: [] for name in runs}
            for i in range(rounds):
                for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
                    start = time.perf_counter()
                    runs[name]()
                    rates[name].append(n * length / (time.perf_counter() - start))
            row = {
                "engine": engine,
                "samples": n,
                "same_texts": texts["batched"] == texts["one_by_one"],
                "chars_per_s": {k: statistics.median(v) for k, v in rates.items()},
                "ratio": statistics.median(a / b for a, b in zip(rates["batched"], rates["one_by_one"])),
            }
            rows.append(row)
            med = row["chars_per_s"]
            print(
                f"{model.cfg.model:5s} {engine:6s} N={n:<4d} batched {med['batched']:9,.0f}  one by one "
                f"{med['one_by_one']:8,.0f} chars/s  {row['ratio']:5.2f}x  same texts: {row['same_texts']}",
                flush=True,
            )
    return rows


def format_row(row: dict) -> str:
    rates, ratios = row["chars_per_s"], row["ratios"]
    cells = [f"naive {rates['naive']:8,.0f}"]
    for name in (k for k in rates if k not in ("naive", "limit", "dram")):
        cells.append(f"{name} {rates[name]:8,.0f} ({ratios[name + '/naive']:5.1f}x)")
    text = f"{row['kind']:13s} B={row['streams']:<3d} t={row['threads']}  " + "  ".join(cells)
    for ref in ("limit", "dram"):
        if ref in rates:
            text += f" | {ref} {rates[ref]:,.0f}: " + ", ".join(
                f"{m} {ratios[f'{m}/{ref}']:.2f}x" for m in ("fp32", "numpy") if f"{m}/{ref}" in ratios
            )
    for pair in ("int8/fp32", "numpy-int8/fp32", "numpy-int8/numpy"):
        if pair in ratios:
            text += f" | {pair} {ratios[pair]:.2f}x"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=KINDS)
    parser.add_argument("--streams", default="1,64", help="stream counts, comma-separated")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--chunk-s", type=float, default=0.03, help="seconds per method per round")
    parser.add_argument("--threads", default="1", help="torch thread counts, comma-separated; 0 = default")
    parser.add_argument(
        "--draw",
        choices=["sampler", "none"],
        default="sampler",
        help="sampler: charrnn's draw after each step; none: steps alone",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--samples", default="", help="sample counts (e.g. 1,8,64): batched --num-samples instead")
    parser.add_argument("--sample-length", type=int, default=40, help="characters per sample, with --samples")
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
            cfg = ModelConfig(vocab_size=args.vocab, model=kind, num_layers=args.layers, hidden_size=args.hidden)
            model = CharRNN(cfg).to(args.device).eval()
            if args.samples:
                counts = [int(n) for n in args.samples.split(",")]
                for row in bench_many(model, counts, args.rounds, args.sample_length):
                    results.append({"kind": kind, "threads": threads, **row})
                continue
            for streams in (int(s) for s in args.streams.split(",")):
                case = bench_case(model, streams, args.rounds, args.chunk_s, args.draw == "sampler")
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
            "draw": args.draw,
            "samples": args.samples and f"{args.samples} samples of {args.sample_length} characters",
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
