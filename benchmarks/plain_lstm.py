"""A plain truncated-BPTT LSTM language model in bare PyTorch, the baseline of REFERENCE.md.

Nothing from charrnn is imported: this is the recipe a reader would write from the
description (embedding as wide as the hidden layer, nn.LSTM, dropout on the embedding
output, between layers and before the head, AdamW, cosine from the peak to 10% over the
run, grad-norm clip 1.0, B contiguous streams, validation over the whole val split with
carried state). Run it beside `charrnn train` to tell the recipe from the tool.

    python benchmarks/plain_lstm.py ../shared/corpora/tinyshakespeare.txt --hidden 512 --steps 300
    python benchmarks/plain_lstm.py CORPUS --time-budget 600 --evals 6 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.lstm(self.drop(self.embed(x)), state)
        return self.head(self.drop(out)), state


def streams(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    n = (len(tokens) - 1) // batch
    return torch.stack([tokens[b * n : (b + 1) * n + 1] for b in range(batch)])  # (B, n+1)


@torch.no_grad()
def validate(net: Net, val: torch.Tensor, streams_n: int, chunk: int) -> float:
    net.eval()
    rows = streams(val, streams_n)
    total, count, state = 0.0, 0, None
    for at in range(0, rows.shape[1] - 1, chunk):
        x, y = rows[:, at : at + chunk], rows[:, at + 1 : at + chunk + 1]
        x = x[:, : y.shape[1]]
        logits, state = net(x, state)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    net.train()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.01, help="torch's AdamW default")
    ap.add_argument("--steps", type=int, default=0, help="stop after N steps (the cosine spans them)")
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds (the cosine spans them)")
    ap.add_argument("--evals", type=int, default=4)
    ap.add_argument("--val-streams", type=int, default=32)
    ap.add_argument("--bf16", action="store_true", help="autocast to bf16 (CPUs with AMX, GPUs)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--beta2", type=float, default=0.999, help="AdamW's second beta (charrnn: 0.99)")
    ap.add_argument(
        "--forget-bias",
        type=float,
        default=None,
        help="start every forget-gate bias at this value (default: torch's uniform init)",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    if not (args.steps or args.time_budget):
        ap.error("give --steps or --time-budget")

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    text = open(args.corpus, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(tokens) * 0.9)
    train, val = tokens[:cut], tokens[cut:]
    rows = streams(train, args.batch_size)
    steps_per_epoch = (rows.shape[1] - 1) // args.seq_len

    net = Net(len(chars), args.hidden, args.layers, args.dropout)
    if args.forget_bias is not None:
        h = args.hidden
        with torch.no_grad():
            for l in range(args.layers):
                getattr(net.lstm, f"bias_ih_l{l}")[h : 2 * h].fill_(args.forget_bias)
                getattr(net.lstm, f"bias_hh_l{l}")[h : 2 * h].zero_()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, args.beta2))
    evals, state, step, cursor = [], None, 0, 0
    clock0 = time.perf_counter()

    def progress() -> float:
        parts = [step / args.steps] if args.steps else []
        if args.time_budget:
            parts.append((time.perf_counter() - start) / args.time_budget)
        return min(max(parts), 1.0)

    next_eval = 1
    while progress() < 1.0:
        if cursor >= steps_per_epoch:
            cursor, state = 0, None
        at = cursor * args.seq_len
        x, y = rows[:, at : at + args.seq_len], rows[:, at + 1 : at + args.seq_len + 1]
        lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress())))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
            logits, state = net(x, state)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        state = tuple(s.detach().float() for s in state)  # truncated BPTT; autocast returns bf16
        step += 1
        cursor += 1
        if progress() >= next_eval / args.evals or progress() >= 1.0:
            v = validate(net, val, args.val_streams, 256)
            evals.append(
                {
                    "step": step,
                    "time": round(time.perf_counter() - start, 1),
                    "epochs": round(step / steps_per_epoch, 2),
                    "val": round(v, 4),
                }
            )
            print(json.dumps(evals[-1]), flush=True)
            next_eval += 1
    result = {
        "args": vars(args),
        "steps": step,
        "train_s": round(time.perf_counter() - clock0, 1),
        "chars_per_s": round(step * args.batch_size * args.seq_len / (time.perf_counter() - clock0)),
        "best_val": min(e["val"] for e in evals),
        "evals": evals,
    }
    print(json.dumps({k: result[k] for k in ("steps", "train_s", "chars_per_s", "best_val")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
