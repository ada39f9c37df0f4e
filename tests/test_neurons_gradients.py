"""`charrnn gradients`, the gradient panel of `charrnn view`, and the gradient health that
training logs to metrics.jsonl and `charrnn info` shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, one_line_error, saved_model
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.config import CELL_STATE_MODELS, MODELS
from charrnn.neurons.gradients import gradient_norms


def _text(n: int = 400, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("abcdefgh \n"), n))


def _brute_force(model, ids: np.ndarray, t: int, k: int) -> list[np.ndarray]:
    """Per state part, the (L,) norms of d loss(t) / d state(t-k): the model reads ids[0..t-k]
    without gradients, then from a leaf copy of that state the rest in one forward call."""
    tokens = torch.from_numpy(ids)
    with torch.no_grad():
        _, state = model(tokens[: t - k + 1][None], model.init_state(1))
    leaf = tuple(s.clone().requires_grad_(True) for s in state)
    logits, _ = model(tokens[t - k + 1 : t + 1][None], leaf)
    loss = torch.nn.functional.cross_entropy(logits[0, -1:], tokens[t + 1 : t + 2])
    return [g[:, 0].norm(dim=-1).numpy() for g in torch.autograd.grad(loss, leaf)]


@pytest.mark.parametrize("kind", ["lstm", "gf-gru"])
def test_norms_match_a_brute_force_autograd_computation(tmp_path: Path, kind: str) -> None:
    model, _ = saved_model(tmp_path, kind, layers=2, hidden=12)
    ids = np.asarray(np.random.default_rng(1).integers(0, 10, 120), dtype=np.int64)
    report = gradient_norms(model, ids, max_lag=15, positions=6, seed=3, batch_size=4)
    assert report.values.keys() == ({"hidden", "cell"} if kind in CELL_STATE_MODELS else {"hidden"})
    for p in (0, 5):
        t = int(report.positions[p])
        for k in (1, 4, 15):
            for name, want in zip(report.values, _brute_force(model, ids, t, k)):
                np.testing.assert_allclose(report.values[name][p, :, k - 1], want, rtol=1e-4, atol=1e-9)


def test_an_untrained_rnn_with_small_weights_shows_its_gradient_vanish_with_the_lag() -> None:
    from charrnn.config import ModelConfig
    from charrnn.models.charrnn import CharRNN

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=10, model="rnn", num_layers=1, hidden_size=32))
    with torch.no_grad():
        model.stack.layers[0].weight_hh_l0.mul_(0.5)
    ids = np.asarray(np.random.default_rng(0).integers(0, 10, 500), dtype=np.int64)
    curve = gradient_norms(model, ids, max_lag=30, positions=16).mean("hidden")[0]
    assert curve[4] < curve[0] / 10 and curve[29] < curve[0] / 1e6
    assert np.all(np.diff(np.log(curve)) < 0)  # falls at every lag


@pytest.mark.parametrize("kind", MODELS)
def test_every_model_kind_shows_a_table_of_norms_by_lag(tmp_path: Path, runner: CliRunner, kind: str) -> None:
    _, path = saved_model(tmp_path, kind, layers=2, hidden=8)
    (tmp_path / "t.txt").write_text(_text(), encoding="utf-8")
    result = runner.invoke(app, ["gradients", str(path), "t.txt", "--max-lag", "12", "--positions", "5"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    parts = ("h", "c") if kind in CELL_STATE_MODELS else ("h",)
    assert rows[0] == ["lag"] + [f"layer {layer} {p}" for layer in range(2) for p in parts]
    assert [r[0] for r in rows[1:]] == ["1", "2", "5", "10", "12"]
    assert all(float(v) > 0 for r in rows[1:] for v in r[1:])


def test_export_writes_every_lag_layer_and_state_to_csv_and_npz(tmp_path: Path, runner: CliRunner) -> None:
    _, path = saved_model(tmp_path, "lstm", layers=2, hidden=8)
    (tmp_path / "t.txt").write_text(_text(), encoding="utf-8")
    args = ["gradients", str(path), "t.txt", "--max-lag", "20", "--positions", "7"]
    assert runner.invoke(app, [*args, "--export", "g.csv"]).exit_code == 0
    assert runner.invoke(app, [*args, "--export", "out/g.npz"]).exit_code == 0
    lines = (tmp_path / "g.csv").read_text().splitlines()
    assert lines[0] == "state,layer,lag,mean_norm,median_norm" and len(lines) == 1 + 2 * 2 * 20
    with np.load(tmp_path / "out" / "g.npz") as npz:
        assert npz["hidden"].shape == npz["cell"].shape == (7, 2, 20)
        assert npz["hidden_mean"].shape == (2, 20) and npz["lags"].tolist() == list(range(1, 21))
        csv_first = float(lines[1].split(",")[3])
        assert abs(npz["hidden_mean"][0, 0] - csv_first) <= 1e-5 * csv_first  # same draw, same numbers


def test_bad_export_names_and_short_texts_are_one_error_line(tmp_path: Path, runner: CliRunner) -> None:
    _, path = saved_model(tmp_path, "gru", layers=1, hidden=8)
    (tmp_path / "t.txt").write_text(_text(50), encoding="utf-8")
    result = runner.invoke(app, ["gradients", str(path), "t.txt", "--max-lag", "10", "--export", "g.txt"])
    one_line_error(result, ".csv or .npz")
    one_line_error(runner.invoke(app, ["gradients", str(path), "t.txt", "--max-lag", "60"]), "smaller --max-lag")
    assert runner.invoke(app, ["gradients", str(path), "t.txt", "--max-lag", "0"]).exit_code == 2


def test_the_python_api_returns_the_norms_the_command_prints(tmp_path: Path, runner: CliRunner) -> None:
    import charrnn

    _, path = saved_model(tmp_path, "rnn", layers=1, hidden=8)
    (tmp_path / "t.txt").write_text(_text(), encoding="utf-8")
    report = charrnn.load(path).gradients(_text(), max_lag=10, positions=5, seed=2)
    assert report.mean("hidden").shape == (1, 10) and "cell" not in report.values
    result = runner.invoke(app, ["gradients", str(path), "t.txt", "--max-lag", "10", "--positions", "5", "--seed", "2"])
    first = result.stdout.splitlines()[1].split("\t")
    assert first[0] == "1" and float(first[1]) == pytest.approx(report.mean("hidden")[0, 0], rel=1e-3)


def _train(runner: CliRunner, corpus: Path, name: str, clip: str) -> list[dict]:
    args = ["train", str(corpus), "--name", name, "--max-steps", "20", "--log-every", "5", "--grad-clip", clip]
    result = runner.invoke(app, [*args, *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    lines = (Path("checkpoints") / name / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "train"]


def test_training_logs_the_gradient_norm_and_clipped_steps_and_info_shows_the_fraction(
    runner: CliRunner, corpus: Path
) -> None:
    tight = _train(runner, corpus, "tight", "1e-6")
    assert [e["step"] for e in tight] == [5, 10, 15, 20]
    assert all(e["grad_norm"] > 1e-6 and e["clipped"] == e["grad_steps"] == 5 for e in tight)
    loose = _train(runner, corpus, "loose", "1e6")
    assert all(0 < e["grad_norm"] < 1e6 and e["clipped"] == 0 for e in loose)

    shown = runner.invoke(app, ["info", "tight"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "100.0% of 20 steps (clip 1e-06)" in shown.stdout
    assert "grad norm" in shown.stdout
    assert "0.0% of 20 steps (clip 1e+06)" in runner.invoke(app, ["info", "loose"], env={"COLUMNS": "200"}).stdout

    # A run logged before these fields existed: info still works, without the rows.
    metrics = Path("checkpoints/loose/metrics.jsonl")
    old = [{k: v for k, v in e.items() if k not in ("grad_norm", "clipped", "grad_steps")} for e in map(
        json.loads, metrics.read_text().splitlines())]  # fmt: skip
    metrics.write_text("".join(json.dumps(e) + "\n" for e in old))
    shown = runner.invoke(app, ["info", "loose"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "clipped" not in shown.stdout and "best val" in shown.stdout


def test_view_shows_the_norm_by_lag_and_the_training_norm(runner: CliRunner, trained: str, corpus: Path) -> None:
    result = runner.invoke(app, ["view", trained, str(corpus), "--max-chars", "200", "--out", "v.html"])
    assert result.exit_code == 0, result.output
    page = Path("v.html").read_text(encoding="utf-8")
    panel = page[page.index("<h3>Gradients</h3>") :]
    assert "by lag k" in panel and "Training gradient norm" in panel and "clipped" in panel
    assert panel.count("<polyline") == 3  # h and c by lag; the norm by step
