"""Training throughput of every recurrent kind against the fused nn.LSTM, in one run.

One step = forward, cross-entropy, backward, AdamW update on random tokens. Kinds are
timed round-robin (one step of each kind per round) so that load from other processes
hits them alike; the figure per kind is the median over rounds, after one warm-up step
(timed separately: it includes TorchScript's first-call cost).

    python benchmarks/bench_recurrent.py                    # 2x512, B=64, T=100, CPU
    python benchmarks/bench_recurrent.py --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch

from charrnn.config import MODELS, ModelConfig
from charrnn.models.charrnn import CharRNN, count_parameters

# Minimum throughput relative to the fused LSTM on a CPU: issue 8's kinds, and issue 25's LSTM
# variants (each step does more arithmetic than the LSTM's: mlstm 1.25x the recurrent products,
# the mogrifier's five modulating products besides an input product it cannot batch over T).
TARGETS = {
    "peephole-lstm": 0.5,
    "gf-rnn": 0.35,
    "gf-gru": 0.35,
    "gf-lstm": 0.35,
    "mlstm": 0.5,
    "mogrifier-lstm": 0.3,
    "ln-lstm": 0.55,
}


def make_step(kind: str, args: argparse.Namespace, device: torch.device):  # type: ignore[no-untyped-def]
    """A closure running one training step of a fresh model of `kind`; returns it and the model."""
    cfg = ModelConfig(vocab_size=args.vocab, model=kind, num_layers=args.layers, hidden_size=args.hidden)
    model = CharRNN(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), device=device)
    y = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), device=device)

    def step() -> float:
        t0 = time.perf_counter()
        logits, _ = model(x, model.init_state(args.batch_size, device))  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(MODELS), help="comma-separated model kinds")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per kind")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kinds = args.kinds.split(",")
    if "lstm" not in kinds:
        kinds.insert(0, "lstm")  # the reference
    torch.manual_seed(0)

    steps, first, params = {}, {}, {}
    for kind in kinds:
        steps[kind], model = make_step(kind, args, device)
        params[kind] = count_parameters(model)
        first[kind] = steps[kind]()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            times[kind].append(steps[kind]())

    chars = args.batch_size * args.seq_len
    ref = chars / statistics.median(times["lstm"])
    rows = []
    print(
        f"{args.layers}x{args.hidden}, B={args.batch_size}, T={args.seq_len}, device={device}, "
        f"threads={torch.get_num_threads()}, torch {torch.__version__}, {date.today()}"
    )
    print(f"{'kind':<14}{'params':>10}{'first s':>9}{'step s':>9}{'chars/s':>10}{'x lstm':>8}{'target':>8}")
    for kind in kinds:
        step_s = statistics.median(times[kind])
        rate = chars / step_s
        target = TARGETS.get(kind)
        rows.append(
            {
                "kind": kind,
                "params": params[kind],
                "first_step_s": first[kind],
                "step_s": step_s,
                "step_s_all": times[kind],
                "chars_per_s": rate,
                "ratio_vs_lstm": rate / ref,
                "target": target,
                "meets_target": None if target is None else rate / ref >= target,
            }
        )
        mark = "" if target is None else (f"{target:.2f}" + (" ok" if rate / ref >= target else " MISS"))
        print(f"{kind:<14}{params[kind]:>10}{first[kind]:>9.2f}{step_s:>9.3f}{rate:>10.0f}{rate / ref:>8.2f}{mark:>8}")
    result = {
        "date": str(date.today()),
        "machine": platform.processor() or platform.machine(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "layers": args.layers,
        "hidden": args.hidden,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "results": rows,
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
