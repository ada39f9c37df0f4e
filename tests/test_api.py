"""The Python API (charrnn.load, runs, train): the README's example, and agreement with the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import charrnn
from charrnn.cli import app
from charrnn.errors import CharRNNError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The ```python block of the README's "Python API" section."""
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_example_runs_on_a_trained_run(runner, trained: str, capsys) -> None:
    code = readme_example()
    assert 'charrnn.load("shakespeare")' in code
    exec(compile(code.replace('"shakespeare"', repr(trained)), "README.md", "exec"), {})  # noqa: S102 - the documented example, as written
    printed = capsys.readouterr().out
    assert "nats/char, 1x32 lstm" in printed and f"{trained} 30 " in printed


def test_import_charrnn_loads_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, charrnn, charrnn.sample\n"
        "assert callable(charrnn.load) and charrnn.__version__\n"
        "print(sorted(m for m in ('torch', 'numpy', 'numba') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_generate_with_a_seed_writes_what_the_sample_command_writes(runner, trained: str) -> None:
    model = charrnn.load(trained)
    assert model.engine == "numpy" and model.config.hidden_size == 32
    for prime in ("", "The "):
        cli = runner.invoke(app, ["sample", trained, "--seed", "5", "--length", "80", "--prime", prime])
        assert cli.exit_code == 0, cli.output
        assert cli.stdout == prime + model.generate(prime, length=80, seed=5) + "\n"
    on_torch = charrnn.load(trained, engine="torch")
    assert on_torch.engine == "torch" and on_torch.generate("The ", length=80, seed=5) == model.generate(
        "The ", length=80, seed=5
    )


def test_stream_pieces_join_to_the_generated_text(runner, trained: str) -> None:
    model = charrnn.load(trained)
    pieces = list(model.stream("The ", length=120, seed=3, temperature=1.0))
    assert len(pieces) > 1 and "".join(pieces) == model.generate("The ", length=120, seed=3, temperature=1.0)
    first = next(iter(model.stream(length=10_000, seed=3)))  # leaving early stops the drawing
    assert len(first) >= 1


def test_stream_and_generate_refuse_characters_outside_the_vocabulary(runner, trained: str) -> None:
    model = charrnn.load(trained)
    with pytest.raises(CharRNNError, match="'✓'"):
        model.stream("✓")
    with pytest.raises(CharRNNError, match="'✓'"):
        model.generate("✓")


def test_score_equals_the_eval_command(runner, trained: str, corpus: Path) -> None:
    result = runner.invoke(app, ["eval", trained, str(corpus), "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    text = corpus.read_text(encoding="utf-8")
    assert charrnn.load(trained).score(text) == pytest.approx(cli["nats_per_char"], abs=1e-6)


def test_activations_give_every_kind_per_layer_and_character(runner, trained: str) -> None:
    acts = charrnn.load(trained).activations("The cat sat.")
    assert {"hidden", "cell"} <= set(acts)
    assert acts["hidden"].shape == (1, len("The cat sat."), 32)
    assert abs(acts["hidden"]).max() <= 1.0


def test_runs_names_each_run_with_its_step(runner, trained: str) -> None:
    (info,) = charrnn.runs()
    assert info.name == trained and info.path == Path("checkpoints") / trained and info.step == 30
    assert info.best_val is None or math.isfinite(info.best_val)
    assert charrnn.runs("nowhere") == []


def test_train_trains_a_run_that_load_opens(runner, corpus: Path) -> None:
    pytest.importorskip("charrnn.training.setup", reason="charrnn.training.setup.train_run is not there yet")
    events = []
    done = charrnn.train(
        str(corpus),
        name="fitted",
        max_steps=12,
        hidden_size=16,
        num_layers=1,
        batch_size=4,
        seq_len=16,
        on_event=events.append,
    )
    assert done.path == Path("checkpoints") / "fitted" and events
    assert [r.name for r in charrnn.runs()] == ["fitted"]
    assert len(charrnn.load("fitted").generate(length=20, seed=0)) == 20
