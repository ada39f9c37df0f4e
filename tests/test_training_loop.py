import math
import random
from pathlib import Path

import pytest
import torch

from charrnn.checkpoint import build_model, load_checkpoint
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.corpus import prepare
from charrnn.models.charrnn import CharRNN
from charrnn.rundir import RunPaths, read_metrics
from charrnn.training.loop import Trainer, lr_at


def parity_text(n_lines: int, bits: int, seed: int) -> str:
    """Lines like '01101=N': the label after '=' says whether the count of 1s is even (Y) or odd (N)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        s = "".join(rng.choice("01") for _ in range(bits))
        lines.append(f"{s}={'Y' if s.count('1') % 2 == 0 else 'N'}")
    return "\n".join(lines) + "\n"


def corpus_info(data) -> dict:
    return {"path": str(data.source), "sha256": data.sha256, "encoding": data.encoding, "chars": len(data.tokens)}


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(lr=1e-2, warmup=0.1, min_lr_ratio=0.1, max_steps=100)
    assert lr_at(cfg, 0.05) == pytest.approx(5e-3)
    assert lr_at(cfg, 0.1) == pytest.approx(1e-2)
    assert lr_at(cfg, 1.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 0.55) == pytest.approx(5.5e-3)


def test_small_lstm_learns_parity(tmp_path: Path) -> None:
    """Memory test: the label depends on every bit of the line, so a model must count to predict it."""
    path = tmp_path / "parity.txt"
    path.write_text(parity_text(3000, 4, seed=0), encoding="utf-8")
    data = prepare(path, tmp_path / "data")
    mcfg = ModelConfig(vocab_size=len(data.vocab), num_layers=1, hidden_size=48)
    tcfg = TrainConfig(batch_size=16, seq_len=35, lr=1e-2, max_steps=700, eval_every=10_000, device="cpu", seed=1)
    run = RunPaths(tmp_path / "run")
    Trainer(mcfg, tcfg, data, run, corpus_info(data)).run()
    model = build_model(load_checkpoint(run.last))
    test = parity_text(300, 4, seed=99).splitlines()
    x = torch.tensor([data.vocab.encode("\n" + line[:5]) for line in test])
    logits, _ = model(x, model.init_state(len(test)))
    guesses = [data.vocab.chars[i] for i in logits[:, -1].argmax(-1).tolist()]
    accuracy = sum(g == line[-1] for g, line in zip(guesses, test)) / len(test)
    assert accuracy >= 0.95, f"parity accuracy {accuracy:.2f} (chance is 0.5)"


def test_resume_equals_uninterrupted_run(tmp_path: Path, corpus: Path) -> None:
    data = prepare(corpus, tmp_path / "data")
    mcfg = ModelConfig(vocab_size=len(data.vocab), num_layers=2, hidden_size=24, dropout=0.2)
    base = dict(batch_size=4, seq_len=16, max_steps=30, eval_every=10, log_every=1, device="cpu", seed=3)
    whole = RunPaths(tmp_path / "whole")
    Trainer(mcfg, TrainConfig(**base), data, whole, corpus_info(data)).run()

    parts = RunPaths(tmp_path / "parts")
    stop_at = {"n": 0}

    def stop_after_12() -> bool:
        stop_at["n"] += 1
        return stop_at["n"] > 12

    first = Trainer(mcfg, TrainConfig(**base), data, parts, corpus_info(data), should_stop=stop_after_12).run()
    assert first.status == "interrupted" and first.step == 12
    resumed = Trainer(mcfg, TrainConfig(**base), data, parts, corpus_info(data), resume=load_checkpoint(parts.last))
    resumed.run()

    a, b = load_checkpoint(whole.last), load_checkpoint(parts.last)
    for name, tensor in a.model_state.items():
        assert torch.equal(tensor, b.model_state[name]), name
    losses = lambda run: {e["step"]: e["train_loss"] for e in read_metrics(run) if e["event"] == "train"}
    assert losses(whole) == losses(parts)
    assert a.progress["best_val"] == b.progress["best_val"]


def test_loss_curve_matches_a_plain_per_step_loop(tmp_path: Path, corpus: Path) -> None:
    """charrnn's loop (fused LSTM, stream batcher, schedule, clipping) against the most
    straightforward one: nn.LSTMCell stepped one character at a time, slices cut by hand."""
    data = prepare(corpus, tmp_path / "data")
    mcfg = ModelConfig(vocab_size=len(data.vocab), num_layers=2, hidden_size=24, embed_size=8)
    steps, B, T, peak, warmup = 40, 4, 16, 3e-3, 0.2
    tcfg = TrainConfig(
        batch_size=B,
        seq_len=T,
        lr=peak,
        warmup=warmup,
        min_lr_ratio=0.1,
        max_steps=steps,
        eval_every=1000,
        log_every=1,
        device="cpu",
        seed=3,
    )
    run = RunPaths(tmp_path / "run")
    Trainer(mcfg, tcfg, data, run, corpus_info(data)).run()
    logged = [e["train_loss"] for e in read_metrics(run) if e["event"] == "train"]

    torch.manual_seed(3)  # the same initial weights as the trainer's
    init = CharRNN(mcfg)
    embed, head = init.embed, init.head
    cells = []
    for layer in init.stack.layers:
        cell = torch.nn.LSTMCell(layer.input_size, layer.hidden_size)
        cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})  # weight_ih_l0 -> weight_ih
        cells.append(cell)
    params = [*embed.parameters(), *(p for c in cells for p in c.parameters()), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=peak, betas=(0.9, 0.99), weight_decay=0.0)
    train = torch.from_numpy(data.tokens[: int(len(data.tokens) * 0.9)].astype("int64"))
    stream = (len(train) - 1) // B
    state = [(torch.zeros(B, 24), torch.zeros(B, 24)) for _ in cells]
    plain = []
    for step in range(steps):
        progress = step / steps
        if progress < warmup:
            lr = peak * progress / warmup
        else:
            lr = peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))))
        for group in opt.param_groups:
            group["lr"] = max(lr, peak * 1e-3)
        rows = torch.stack([train[b * stream + step * T : b * stream + step * T + T + 1] for b in range(B)])
        losses = []
        for t in range(T):
            x = embed(rows[:, t])
            new_state = []
            for cell, (h, c) in zip(cells, state):
                h, c = cell(x, (h, c))
                new_state.append((h, c))
                x = h
            state = new_state
            losses.append(torch.nn.functional.cross_entropy(head(x), rows[:, t + 1]))
        loss = torch.stack(losses).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state = [(h.detach(), c.detach()) for h, c in state]
        plain.append(loss.item())
    assert logged == pytest.approx(plain, rel=1e-4)
    assert plain[-1] < plain[0] - 0.3  # and it learned something
