"""Fine-tuning (`charrnn train NEW.txt --init-from RUN`, charrnn.train(init_from=...)): a new
run from a parent's weights, its vocabulary extended, the parent recorded and never written."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from helpers import make_text, one_line_error
from typer.testing import CliRunner

import charrnn
from charrnn.cli import app
from charrnn.rundir import read_events

# The same small model and settings for every run here; --no-auto so nothing is planned.
SMALL = {"hidden_size": 32, "num_layers": 1, "embed_size": 16, "batch_size": 8, "seq_len": 32, "lr": 0.01}
SETTINGS = {**SMALL, "auto": False, "device": "cpu", "eval_every": 10, "seed": 3}
FLAGS = ["--no-auto", "--device", "cpu", "--batch-size", "8", "--seq-len", "32", "--quiet"]
NEW_CHARS = "!?ijquz"  # in the child text, not in the parent's


def child_text(n_chars: int = 12_000, seed: int = 5) -> str:
    """Another style than make_text: lower case, other words, lines ending in ! or ?."""
    rng = random.Random(seed)
    words = ["the", "dog", "ran", "to", "a", "mat", "and", "jazz", "quiz", "fizz", "cat", "sat"]
    lines = []
    while sum(len(line) + 1 for line in lines) < n_chars:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) + rng.choice("!?"))
    return "\n".join(lines)[:n_chars] + "\n"


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with runs/parent trained 200 steps on make_text, and child.txt beside it."""
    root = tmp_path_factory.mktemp("finetune")
    (root / "parent.txt").write_text(make_text(20_000, seed=1), encoding="utf-8")
    (root / "child.txt").write_text(child_text(), encoding="utf-8")
    charrnn.train(root / "parent.txt", name="parent", max_steps=200, **_dirs(root), **SETTINGS)
    return root


def _dirs(root: Path) -> dict:
    return {"runs_dir": root / "runs", "data_dir": root / "data"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _first_step_below(run: Path, target: float) -> int:
    for event in read_events(run / "metrics.jsonl"):
        if event["event"] == "eval" and event["val_loss"] <= target:
            return event["step"]
    return 10**9


def test_fine_tuning_reaches_the_target_loss_in_fewer_steps_than_training_from_scratch(parent: Path) -> None:
    runs = {}
    for name, extra in (("scratch", {}), ("fine", {"init_from": "parent"})):
        runs[name] = charrnn.train(parent / "child.txt", name=name, max_steps=60, **_dirs(parent), **SETTINGS, **extra)
    assert runs["fine"].model_config.hidden_size == runs["scratch"].model_config.hidden_size == 32
    # Measured with seed 3: scratch first validates under 1.3 nats/char at step 50, the
    # fine-tuned run at step 20 (seeds 4 and 11: 40 vs 30, 50 vs 30).
    scratch, fine = (_first_step_below(runs[n].path, 1.3) for n in ("scratch", "fine"))
    assert scratch < 10**9 and fine <= scratch - 10, (fine, scratch)
    assert runs["fine"].best_val < runs["scratch"].best_val


def test_fine_tuning_adds_the_new_characters_records_the_parent_and_leaves_it_untouched(
    parent: Path, runner: CliRunner
) -> None:
    before = _snapshot(parent / "runs" / "parent")
    dirs = ["--runs-dir", str(parent / "runs"), "--data-dir", str(parent / "data")]
    result = runner.invoke(
        app,
        ["train", str(parent / "child.txt"), "--init-from", "parent", "--name", "child", "--max-steps", "20"]
        + dirs
        + FLAGS[:-1],
    )
    assert result.exit_code == 0, result.output
    reports = [line for line in result.stderr.splitlines() if "new character(s)" in line]
    assert len(reports) == 1 and "fine-tuning from 'parent': 7 new character(s)" in reports[0], result.stderr

    from charrnn.checkpoint import load_checkpoint

    parent_ckpt = load_checkpoint(parent / "runs" / "parent" / "best.pt")
    child = load_checkpoint(parent / "runs" / "child" / "last.pt")
    old = parent_ckpt.vocab.chars
    assert child.vocab.chars == old + tuple(sorted(NEW_CHARS))  # the parent's, then the new ones
    assert child.model_config.hidden_size == 32 and child.model_config.vocab_size == len(old) + 7
    config = json.loads((parent / "runs" / "child" / "config.json").read_text())
    record = config["corpus"]["parent"]
    assert record["name"] == "parent" and record["step"] == 200 and record["added"] == 7
    assert record["best_val"] == pytest.approx(parent_ckpt.progress["best_val"])
    import hashlib

    assert record["sha256"] == hashlib.sha256((parent / "runs" / "parent" / "best.pt").read_bytes()).hexdigest()
    assert _snapshot(parent / "runs" / "parent") == before  # the parent is only read

    info = runner.invoke(app, ["info", "child"] + dirs[:2])
    assert info.exit_code == 0 and "parent" in info.stdout and "7 character(s) added" in info.stdout, info.output
    # Resuming a fine-tuned run continues it with its extended vocabulary.
    resumed = runner.invoke(app, ["train", "--resume", "child", "--max-steps", "30", "--quiet"] + dirs)
    assert resumed.exit_code == 0, resumed.output
    again = load_checkpoint(parent / "runs" / "child" / "last.pt")
    assert again.progress["step"] == 30 and again.vocab == child.vocab
    assert again.corpus["parent"] == record


def test_a_fine_tuned_model_starts_as_its_parent_and_rarely_draws_new_characters(parent: Path) -> None:
    from charrnn.checkpoint import load_checkpoint
    from charrnn.data.vocab import build_vocab
    from charrnn.models.charrnn import CharRNN
    from charrnn.training import finetune

    dad = finetune.load_parent("parent", parent / "runs")
    vocab = finetune.extend_vocab(dad.checkpoint.vocab, build_vocab(child_text()))
    cfg = dataclasses.replace(dad.checkpoint.model_config, vocab_size=len(vocab))
    child, old = CharRNN(cfg).eval(), CharRNN(dad.checkpoint.model_config).eval()
    child.load_state_dict(finetune.transplant(dad, cfg, seed=0))
    old.load_state_dict(load_checkpoint(dad.path).model_state)
    ids = torch.tensor([vocab.encode(make_text(2_000, seed=9))])
    with torch.no_grad():
        p_child = child(ids, child.init_state(1))[0].softmax(-1)
        p_old = old(ids, old.init_state(1))[0].softmax(-1)
    v = len(dad.checkpoint.vocab)
    assert p_child[..., v:].sum(-1).max() < 0.02  # the new characters: rarely drawn until learned
    # The known characters keep their parent's odds relative to each other.
    torch.testing.assert_close(p_child[..., :v] / p_child[..., :v].sum(-1, keepdim=True), p_old, atol=1e-5, rtol=1e-4)


def test_a_missing_or_damaged_init_from_run_is_one_error_line(parent: Path, runner: CliRunner) -> None:
    dirs = ["--runs-dir", str(parent / "runs"), "--data-dir", str(parent / "data")]
    child = str(parent / "child.txt")
    missing = runner.invoke(app, ["train", child, "--init-from", "nope", "--name", "x", "--max-steps", "5"] + dirs)
    one_line_error(missing, "--init-from: unknown run or checkpoint 'nope'")
    damaged = parent / "damaged.pt"
    damaged.write_bytes((parent / "runs" / "parent" / "best.pt").read_bytes()[:3000])
    result = runner.invoke(app, ["train", child, "--init-from", str(damaged), "--name", "x", "--max-steps", "5"] + dirs)
    one_line_error(result, "--init-from")
    assert not (parent / "runs" / "x").exists()  # a refused start leaves no run folder


def test_an_option_that_contradicts_the_parent_architecture_is_one_error_line(parent: Path, runner: CliRunner) -> None:
    dirs = ["--runs-dir", str(parent / "runs"), "--data-dir", str(parent / "data")]
    base = ["train", str(parent / "child.txt"), "--init-from", "parent", "--max-steps", "5"] + dirs
    one_line_error(runner.invoke(app, base + ["--hidden", "64"]), "--hidden 64 contradicts the parent run 'parent'")
    one_line_error(runner.invoke(app, base + ["--model", "gru"]), "--model")
    one_line_error(runner.invoke(app, base + ["--preset", "tiny"]), "--preset")
    one_line_error(runner.invoke(app, ["train", "--resume", "parent", "--init-from", "parent"] + dirs), "--init-from")
    ok = runner.invoke(app, base + ["--hidden", "32", "--layers", "1", "--embed", "16", "--name", "same"] + FLAGS)
    assert ok.exit_code == 0, ok.output  # options equal to the parent's are fine


def test_the_time_budget_planner_keeps_the_parent_architecture(parent: Path) -> None:
    notes: list[str] = []
    done = charrnn.train(
        parent / "child.txt",
        name="planned",
        init_from="parent",
        time_budget="2s",
        device="cpu",
        on_note=notes.append,
        **_dirs(parent),
    )
    m = done.model_config
    assert (m.model, m.num_layers, m.hidden_size, m.embed_size) == ("lstm", 1, 32, 16)
    assert done.plan is not None and not {"num_layers", "hidden_size", "embed_size"} & set(done.plan["model"])
    assert "lr" in done.plan["train"]  # what is still free is planned
    assert any("from the parent run 'parent'" in n for n in notes)
