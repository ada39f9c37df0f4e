"""`charrnn runs --json`: one JSON array describing the runs, for scripts."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from charrnn.cli import app


def test_runs_json_prints_one_array_describing_each_run(runner: CliRunner, trained: str, corpus) -> None:
    result = runner.invoke(app, ["runs", "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)  # nothing but the array on stdout
    assert [r["name"] for r in runs] == [trained]
    run = runs[0]
    assert run["step"] == 30
    assert run["model"] == "lstm"
    assert (run["num_layers"], run["hidden_size"]) == (1, 32)
    assert run["corpus"] and run["corpus"].endswith("tiny.txt")
    assert run["path"].endswith(trained)
    assert run["last_written"] > 0
    assert run["best_val"] is None or run["best_val"] > 0


def test_runs_json_with_no_runs_prints_an_empty_array(runner: CliRunner) -> None:
    result = runner.invoke(app, ["runs", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def _jsonl_values(run_dir, key: str) -> dict[int, float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e[key] for e in events if key in e}


def test_csv_and_tensorboard_logs_hold_the_same_steps_and_values_as_metrics_jsonl(
    runner: CliRunner, corpus, tmp_path
) -> None:
    import csv

    from helpers import TINY_TRAIN
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["train", str(corpus), "--name", "logged", "--max-steps", "20", "--log-every", "5", *TINY_TRAIN]
    result = runner.invoke(app, [*args, "--log", "csv", "--log", "tensorboard", "--evals", "2"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "checkpoints" / "logged"
    train, val = _jsonl_values(run_dir, "train_loss"), _jsonl_values(run_dir, "val_loss")
    assert sorted(train) == [5, 10, 15, 20] and val

    rows = list(csv.DictReader((run_dir / "metrics.csv").open(encoding="utf-8")))
    assert {int(r["step"]): float(r["train_loss"]) for r in rows if r["train_loss"]} == train
    assert {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]} == val

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tb_train = {s.step: s.value for s in acc.Scalars("loss/train")}
    tb_val = {s.step: s.value for s in acc.Scalars("loss/val")}
    assert tb_train.keys() == train.keys() and tb_val.keys() == val.keys()
    assert all(abs(tb_train[k] - train[k]) < 1e-5 for k in train)  # TensorBoard stores float32
    assert all(abs(tb_val[k] - val[k]) < 1e-5 for k in val)

    # Resume appends to the CSV: the first session's rows stay, the new steps follow.
    result = runner.invoke(app, ["train", "--resume", "logged", "--max-steps", "30", "--quiet"])
    assert result.exit_code == 0, result.output
    steps = [int(r["step"]) for r in csv.DictReader((run_dir / "metrics.csv").open(encoding="utf-8"))]
    assert steps[: len(rows)] == [int(r["step"]) for r in rows] and max(steps) == 30
    assert sorted(_jsonl_values(run_dir, "train_loss")) == [5, 10, 15, 20, 25, 30]


def test_tensorboard_log_without_the_package_is_one_error_line_with_the_pip_command(
    runner: CliRunner, corpus, monkeypatch
) -> None:
    import sys

    from helpers import TINY_TRAIN, one_line_error

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as when not installed
    result = runner.invoke(app, ["train", str(corpus), "--max-steps", "5", "--log", "tensorboard", *TINY_TRAIN])
    one_line_error(result, "pip install 'charrnn[tensorboard]'")


def test_an_unknown_log_kind_is_a_usage_error(runner: CliRunner, corpus) -> None:
    result = runner.invoke(app, ["train", str(corpus), "--max-steps", "5", "--log", "wandb"])
    assert result.exit_code == 2
