"""The budget planner, presets, locked dropout, weight drop, early stopping, bf16 autocast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, make_text

import charrnn.training.loop as training
from charrnn.cli import app
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.corpus import prepare
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN, SequenceDropout
from charrnn.rundir import RunPaths, read_metrics
from charrnn.training.loop import Trainer
from charrnn.training.plan import (
    EVAL_SHARE,
    MIN_SEQ,
    MIN_STEPS,
    SHAPE,
    SHORT_BUDGET_S,
    SHORT_MIN_STEPS,
    count_lstm_params,
    plan_run,
)

CPU = torch.device("cpu")


def flops_device(macs_per_s: float):
    """A fake probe: speed inversely proportional to the work per character."""
    calls: list[int] = []

    def measure(cfg: ModelConfig, batch_size: int, seq_len: int, device: torch.device, precision: str) -> float:
        calls.append(cfg.hidden_size)
        params = count_lstm_params(cfg.vocab_size, cfg.num_layers, cfg.hidden_size, cfg.embed_size)
        return macs_per_s / (6 * params)

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


@pytest.fixture(autouse=True)
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans do not depend on the test machine's CPU: no bf16 unless a test says so."""
    monkeypatch.setattr("charrnn.training.plan.bf16_supported", lambda device: False)


def test_count_lstm_params_matches_the_model() -> None:
    cfg = ModelConfig(vocab_size=65, num_layers=2, hidden_size=48, embed_size=16)
    assert count_lstm_params(65, 2, 48, 16) == sum(p.numel() for p in CharRNN(cfg).parameters())


def test_a_longer_budget_or_a_faster_device_gets_a_larger_model() -> None:
    args = dict(vocab_size=65, train_chars=1_000_000, val_chars=111_000, device=CPU)
    short = plan_run({}, budget=100, measure=flops_device(100e9), **args)
    long = plan_run({}, budget=600, measure=flops_device(100e9), **args)
    fast = plan_run({}, budget=100, measure=flops_device(2000e9), **args)
    sizes = [p.model["hidden_size"] for p in (short, long, fast)]
    assert sizes[0] < sizes[1] and sizes[0] < sizes[2]
    for plan, budget in ((short, 100), (long, 600), (fast, 100)):  # each sees enough text in its budget:
        seen = plan.chars_per_s * budget  # a character per parameter, or four passes over the text
        assert seen >= count_lstm_params(65, 2, plan.model["hidden_size"], 64) or seen >= 4 * 1_000_000
    assert short.model["dropout"] == 0.0  # a few epochs: under-fitted, no dropout
    assert "val_chars" not in long.train  # tiny-shakespeare's val split is scored whole


def test_enough_passes_over_a_small_corpus_buy_a_larger_model_on_a_cpu() -> None:
    # 2x512 would see the 1M-character text 12 times, 2x768 about 5 times: the larger wins,
    # though it sees fewer characters than it has parameters.
    plan = plan_run({}, 65, 1_000_000, 111_000, CPU, budget=600, measure=flops_device(4e11))
    assert plan.model["hidden_size"] == 768
    assert 4 * 1_000_000 <= plan.chars_per_s * 600 < count_lstm_params(65, 2, 768, 64)
    assert 1024 not in plan.probe  # 2x1024 could not see the text four times: not probed


def test_bptt_length_doubles_with_the_budget_while_enough_updates_remain() -> None:
    args = dict(vocab_size=65, train_chars=1_000_000, val_chars=111_000, device=CPU)
    chosen = []
    for budget in (100, 600, 3600, 36000):
        plan = plan_run({"hidden_size": 512}, budget=budget, measure=flops_device(100e9), **args)
        seq, batch = plan.train["seq_len"], plan.train["batch_size"]
        steps = plan.chars_per_s * budget * (1 - EVAL_SHARE) / (batch * seq)
        least = SHORT_MIN_STEPS if budget < SHORT_BUDGET_S else MIN_STEPS
        assert seq == MIN_SEQ or steps >= least  # longer context only with updates to spare
        assert seq == SHAPE["cpu"][1] or steps / 2 < least  # and the longest that keeps them
        chosen.append(seq)
    assert chosen == [32, 64, 64, 64]  # 64: the CPU shape's longest


def test_a_fast_probe_on_the_amd_epyc_keeps_t32_at_100_seconds() -> None:
    # fp32 probe speeds (B=32) of the run that planned T=64 on 2026-12-05: about 890 steps of
    # T=64 reached 1.568, against 1.513 and 1.518 for about 2,000 steps of T=32 in the same hour.
    rates = {128: 57.7e3, 256: 21.3e3, 384: 11e3}
    plan = plan_run(
        {"precision": "fp32"}, 65, 1_003_854, 111_540, CPU, budget=100, measure=lambda cfg, *a: rates[cfg.hidden_size]
    )
    assert (plan.model["hidden_size"], plan.train["seq_len"]) == (256, 32)


def test_the_bptt_lengths_measured_best_on_the_amx_xeon_are_planned() -> None:
    # Probe speeds (bf16, B=64) as measured there on 2026-12-01: at 100 s 2x384 would get about
    # 840 steps of T=64, which reached 1.557 against 1.473 with T=32; at 10 minutes 2x768 gets
    # about 1,700 steps of T=64 (1.410-1.417) and T=128 had reached 1.450.
    rates = {128: 130e3, 256: 63e3, 384: 36.6e3, 512: 22.6e3, 768: 12.3e3, 1024: 6.5e3}
    chosen = {}
    for budget in (100, 600):
        plan = plan_run(
            {"precision": "bf16"},
            65,
            1_003_854,
            111_540,
            CPU,
            budget=budget,
            measure=lambda cfg, *args: rates[cfg.hidden_size],
        )
        chosen[budget] = (plan.model["hidden_size"], plan.train["batch_size"], plan.train["seq_len"])
    assert chosen == {100: (384, 64, 32), 600: (768, 64, 64)}


def test_passes_do_not_buy_a_model_that_would_see_under_half_a_character_per_parameter() -> None:
    # Probe speeds as measured on the AMX Xeon: 2x1024 looked good for 4.8 passes, but that is
    # 0.37 characters per parameter, and it trained at half the probed speed.
    rates = {128: 120e3, 256: 65e3, 384: 34e3, 512: 25e3, 768: 14e3, 1024: 8e3}
    plan = plan_run({}, 65, 1_000_000, 111_000, CPU, budget=600, measure=lambda cfg, *args: rates[cfg.hidden_size])
    assert plan.model["hidden_size"] == 768 and 1024 not in plan.probe


def test_a_tiny_corpus_gets_a_capped_model_and_strong_regularisation() -> None:
    measure = flops_device(2000e9)
    plan = plan_run({}, 65, train_chars=90_000, val_chars=10_000, device=CPU, budget=600, measure=measure)
    params = count_lstm_params(65, 2, plan.model["hidden_size"], 64)
    assert params <= 20 * 90_000
    assert plan.model["dropout"] >= 0.4
    assert plan.train["patience"] >= 1
    assert any("skipped" in note for note in plan.notes)


def test_a_huge_val_split_is_cut_to_fit_the_budget() -> None:
    plan = plan_run(
        {}, 200, train_chars=90_000_000, val_chars=10_000_000, device=CPU, budget=100, measure=flops_device(100e9)
    )
    assert 10_000 <= plan.train["val_chars"] < 10_000_000
    assert plan.eval_estimate <= 0.06 * 100  # one validation stays a few percent of the budget
    assert plan.model["dropout"] == 0.0  # far less than one epoch


def test_given_settings_are_never_replaced_and_not_probed_beyond_need() -> None:
    measure = flops_device(100e9)
    given = {"hidden_size": 96, "dropout": 0.2, "batch_size": 8, "lr": 1e-3}
    plan = plan_run(given, 65, 1_000_000, 111_000, CPU, budget=100, measure=measure)
    assert not set(given) & (set(plan.model) | set(plan.train))
    assert measure.calls == [96]  # type: ignore[attr-defined]


def test_without_a_time_budget_nothing_is_probed() -> None:
    measure = flops_device(100e9)
    plan = plan_run({}, 65, 1_000_000, 111_000, CPU, budget=0, epochs=30, measure=measure)
    assert measure.calls == [] and plan.model["hidden_size"] == 512  # type: ignore[attr-defined]
    assert plan.model["dropout"] > 0  # 30 epochs over the text: regularise


def test_train_prints_and_records_the_plan(runner, corpus: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            str(corpus),
            "--time-budget",
            "4s",
            "--name",
            "p",
            "--preset",
            "tiny",
            "--batch-size",
            "4",
            "--seq-len",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "plan: 2x128 lstm" in result.output and "probe" in result.output
    info = json.loads(Path("checkpoints/p/config.json").read_text())
    assert info["model"]["hidden_size"] == 128 and info["model"]["embed_size"] == 64
    assert info["train"]["batch_size"] == 4 and info["train"]["patience"] == 3
    assert 128 in {int(k) for k in info["corpus"]["plan"]["probe_chars_per_s"]}


def test_bad_preset_and_weight_drop_on_a_custom_kind_are_one_line_errors(runner, corpus: Path) -> None:
    for args, words in (
        (["--preset", "tiny", "--no-auto"], "--preset needs the planner"),
        (["--model", "gf-rnn", "--weight-drop", "0.3"], "--weight-drop works with"),
    ):
        result = runner.invoke(app, ["train", str(corpus), "--max-steps", "1", *TINY_TRAIN, *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.count("error:") == 1 and words in result.output, result.output
    # A value outside a fixed set of choices is a usage error (exit 2) naming the valid ones.
    for args, choice in (
        (["--preset", "huge"], "tiny"),
        (["--dropout-mask", "zigzag"], "per-step"),
        (["--precision", "fp8"], "bf16"),
    ):
        result = runner.invoke(app, ["train", str(corpus), "--max-steps", "1", *TINY_TRAIN, *args])
        assert result.exit_code == 2, (args, result.output)
        assert args[0] in result.output and choice in result.output, result.output
    with pytest.raises(CharRNNError):  # the config refuses it too, not only the CLI
        ModelConfig(vocab_size=5, model="gf-gru", weight_drop=0.1)


def test_locked_dropout_keeps_one_mask_for_the_whole_sequence() -> None:
    x = torch.ones(4, 50, 32)
    locked = SequenceDropout(0.5, "locked").train()(x)
    assert torch.equal(locked, locked[:, :1].expand_as(locked))  # same mask at every step
    assert 0.3 < (locked == 0).float().mean() < 0.7
    per_step = SequenceDropout(0.5, "per-step").train()(x)
    assert not torch.equal(per_step, per_step[:, :1].expand_as(per_step))
    assert torch.equal(SequenceDropout(0.5).eval()(x), x)


def test_weight_drop_masks_recurrent_weights_in_training_only() -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=10, num_layers=2, hidden_size=16, weight_drop=0.5))
    x = torch.randint(0, 10, (3, 7))
    logits, _ = model(x, model.init_state(3))
    logits.sum().backward()
    grad = model.stack.layers[0].weight_hh_l0.grad
    assert 0.35 < (grad == 0).float().mean() < 0.65  # dropped weights get no gradient
    model.eval()
    a, _ = model(x, model.init_state(3))
    b, _ = model(x, model.init_state(3))
    assert torch.equal(a, b)


def _trainer(tmp_path: Path, **train: object) -> Trainer:
    path = tmp_path / "c.txt"
    path.write_text(make_text(6000), encoding="utf-8")
    data = prepare(path, tmp_path / "data")
    mcfg = ModelConfig(vocab_size=len(data.vocab), num_layers=1, hidden_size=16)
    tcfg = TrainConfig(batch_size=4, seq_len=16, **train)
    info = {"path": str(path), "sha256": data.sha256, "encoding": "utf-8", "chars": len(data.tokens)}
    return Trainer(mcfg, tcfg, data, RunPaths(tmp_path / "runs" / "r"), info)


def test_patience_stops_the_run_when_validation_stops_improving(tmp_path: Path, monkeypatch) -> None:
    losses = iter([2.0, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4])
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: next(losses))
    result = _trainer(tmp_path, max_steps=100, evals=10, patience=2).run()
    assert (result.status, result.reason) == ("done", "patience")
    assert result.step == 40 and result.best_val == 1.5  # validations at steps 10, 20 (best), 30, 40
    events = [e["event"] for e in read_metrics(result.run)]
    assert events[-2:] == ["early_stop", "end"]
    assert load_best_step(result.run) == 20


def load_best_step(run: RunPaths) -> int:
    from charrnn.checkpoint import load_checkpoint

    return int(load_checkpoint(run.best).progress["step"])


@pytest.mark.parametrize("gain, expected, batch", [(2.0, "bf16", 64), (1.05, "fp32", 32)])
def test_cpu_bf16_is_planned_only_where_the_probe_finds_it_faster(
    monkeypatch: pytest.MonkeyPatch, gain: float, expected: str, batch: int
) -> None:
    monkeypatch.setattr("charrnn.training.plan.bf16_supported", lambda device: True)
    fp32 = flops_device(100e9)
    seen: list[str] = []

    def measure(cfg: ModelConfig, batch_size: int, seq_len: int, device: torch.device, precision: str) -> float:
        seen.append(precision)
        return fp32(cfg, batch_size, seq_len, device, precision) * (gain if precision == "bf16" else 1.0)

    plan = plan_run({}, 65, 1_000_000, 111_000, CPU, budget=600, measure=measure)
    assert plan.train["precision"] == expected and plan.train["batch_size"] == batch
    assert seen[:2] == ["fp32", "bf16"] and set(seen[2:]) == {expected}  # the ladder runs in the chosen one
    assert any(
        note.startswith(f"bf16 autocast {'chosen' if expected == 'bf16' else 'not used'}") for note in plan.notes
    )
    given = plan_run({"precision": "fp32"}, 65, 1_000_000, 111_000, CPU, budget=600, measure=measure)
    assert "precision" not in given.train and given.train["batch_size"] == 32  # a given precision is not probed


def test_bf16_autocast_trains_where_supported_and_is_refused_elsewhere(tmp_path: Path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if training.bf16_supported(torch.device(device)):
        trainer = _trainer(tmp_path, max_steps=6, precision="bf16", device=device)
        result = trainer.run()
        assert result.step == 6 and result.best_val < 10
        assert all(h.dtype == torch.float32 for h in trainer.state)  # carried state stays fp32
    else:
        with pytest.raises(CharRNNError, match="needs a CUDA device or a CPU with bf16"):
            _trainer(tmp_path, max_steps=6, precision="bf16", device=device)


def test_validation_cuts_the_val_split_into_val_streams(tmp_path: Path, monkeypatch) -> None:
    streams: list[int] = []
    real = training.evaluate
    monkeypatch.setattr(
        training, "evaluate", lambda model, tokens, b, *a: streams.append(b) or real(model, tokens, b, *a)
    )
    _trainer(tmp_path, max_steps=4, val_streams=3).run()
    assert streams and set(streams) == {3}  # not the training batch (4)
    with pytest.raises(CharRNNError, match="--val-streams"):
        TrainConfig(val_streams=0)


def _small_run_inputs(tmp_path: Path):
    """Prepared data, a 1x16 model config and the corpus info for a Trainer."""
    path = tmp_path / "c.txt"
    path.write_text(make_text(6000), encoding="utf-8")
    data = prepare(path, tmp_path / "data")
    mcfg = ModelConfig(vocab_size=len(data.vocab), num_layers=1, hidden_size=16)
    info = {"path": str(path), "sha256": data.sha256, "encoding": "utf-8", "chars": len(data.tokens)}
    return data, mcfg, info


def test_budget_counts_time_already_spent(tmp_path: Path) -> None:
    data, mcfg, info = _small_run_inputs(tmp_path)
    trainer = Trainer(
        mcfg,
        TrainConfig(batch_size=4, seq_len=16, time_budget=3.0),
        data,
        RunPaths(tmp_path / "runs" / "r"),
        info,
        spent=2.5,
    )
    result = trainer.run()
    assert result.reason == "time" and result.elapsed < 3.5


def test_time_spent_before_training_does_not_eat_the_warm_up(tmp_path: Path) -> None:
    data, mcfg, info = _small_run_inputs(tmp_path)
    cfg = TrainConfig(batch_size=4, seq_len=16, time_budget=4.0, lr=1e-2, warmup=0.25, log_every=1)
    run = RunPaths(tmp_path / "runs" / "r")
    Trainer(mcfg, cfg, data, run, info, spent=2.0).run()  # half the budget gone before step 1
    lrs = [e["lr"] for e in read_metrics(run) if e["event"] == "train"]
    assert lrs[0] < 0.1 * cfg.lr  # the warm-up starts from the bottom all the same
    assert max(lrs) > 0.9 * cfg.lr and lrs[-1] < 0.2 * cfg.lr  # and the cosine still ends in time


def test_a_cpu_training_in_fp32_for_minutes_plans_the_layer_normalised_lstm() -> None:
    # At 10 minutes on the AVX2 EPYC ln-lstm beat the LSTM of the same size (1.412 vs 1.437);
    # at 100 s they tied and the LSTM samples faster; bf16 was not measured.
    args = dict(vocab_size=65, train_chars=1_000_000, val_chars=111_000, device=CPU, measure=flops_device(100e9))
    assert plan_run({"precision": "fp32"}, budget=600, **args).model["model"] == "ln-lstm"
    assert plan_run({"precision": "fp32"}, budget=100, **args).model["model"] == "lstm"
    assert plan_run({"precision": "bf16"}, budget=600, **args).model["model"] == "lstm"
    assert "model" not in plan_run({"precision": "fp32", "model": "gru"}, budget=600, **args).model
