"""inspect, cells, gates, view, curves and plot through CliRunner on tiny checkpoints.

The analysis behind them (charrnn.neurons.reports) is tested in tests/test_neurons.py."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import Vocab, build_vocab
from charrnn.models.charrnn import CharRNN, FusedStack


def make_dialogue(n_chars: int, seed: int = 0) -> str:
    """Narration with quoted speech, generated (no third-party text).

    Speech and narration use different words and a speech runs over one to
    three sentences, so whether a quote is open predicts the next word after
    '. '. A 1x64 LSTM trained on 300k characters of this for 3 minutes on CPU
    grows a cell with r = 0.70 against inside-quotes on held-out text.
    """
    rng = random.Random(seed)
    names = ["Anna", "Boris", "Clara", "Dmitri", "Elena", "Fyodor", "Galina", "Ivan"]
    verbs = ["said", "asked", "replied", "whispered", "called", "answered"]
    narration = [
        "walked to the window", "looked at the fire", "sat down slowly", "turned away",
        "took the letter", "opened the door", "stood by the table", "closed the eyes",
        "poured the tea", "went out into the garden", "put down the book", "crossed the room",
    ]  # fmt: skip
    speech = [
        "I", "you", "we", "never", "always", "know", "think", "must", "will", "why", "how",
        "cannot", "believe", "tell", "me", "my", "your", "dear", "friend", "please", "yes",
        "no", "really", "want", "go", "stay", "here", "now", "it", "is", "so", "true",
    ]  # fmt: skip

    def sentence() -> str:
        words = " ".join(rng.choice(speech) for _ in range(rng.randint(3, 10)))
        return words[0].upper() + words[1:] + rng.choice(".?!")

    def said() -> str:
        return " ".join(sentence() for _ in range(rng.randint(1, 3)))

    parts: list[str] = []
    while sum(map(len, parts)) < n_chars:
        name, r = rng.choice(names), rng.random()
        if r < 0.4:
            part = f'"{said()}" {rng.choice(verbs)} {name}.'
        elif r < 0.7:
            part = f'{name} {rng.choice(narration)}. "{said()}"'
        else:
            part = f"{name} {rng.choice(narration)}. {rng.choice(names)} {rng.choice(narration)}."
        parts.append(part + ("\n" if rng.random() < 0.3 else " "))
    return "".join(parts)[:n_chars]


DIALOGUE = make_dialogue(1500)
QUOTE_UNIT = 5  # the planted unit of layer 0

runner = CliRunner()


def save(model: CharRNN, vocab: Vocab, folder: Path) -> Path:
    path = folder / "best.pt"
    save_checkpoint(Checkpoint(model.cfg, TrainConfig(), vocab, model.state_dict()), path)
    return path


def quote_model(vocab: Vocab) -> CharRNN:
    """A 2-layer LSTM whose layer-0 unit QUOTE_UNIT flips its cell sign at every '"'.

    Embedding dimension 0 is 1 only for '"'. On a quote the unit's input gate
    opens and its forget gate closes, and the candidate is -sign(h): the cell
    goes to -1 at an opening quote and to +1 at a closing one; elsewhere it holds.
    """
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), model="lstm", num_layers=2, hidden_size=8)).eval()
    H, k = 8, QUOTE_UNIT
    p = dict(cast(FusedStack, model.stack).layers[0].named_parameters())
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
        model.embed.weight[vocab.chars.index('"'), 0] = 1.0
        for gate, w_quote, bias in (
            (0, 20.0, -10.0),
            (1, -20.0, 10.0),
            (2, 0.0, -5.0),
            (3, 0.0, 10.0),
        ):
            row = gate * H + k
            p["weight_ih_l0"][row] = 0.0
            p["weight_ih_l0"][row, 0] = w_quote
            p["weight_hh_l0"][row] = 0.0
            p["bias_ih_l0"][row] = bias
            p["bias_hh_l0"][row] = 0.0
        p["weight_hh_l0"][2 * H + k, k] = -20.0  # candidate = tanh(-20 h - 5)
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    vocab = build_vocab(DIALOGUE)
    paths = {"quote": save(quote_model(vocab), vocab, root / "quote")}
    for kind in ("gru", "rnn"):
        torch.manual_seed(1)
        cfg = ModelConfig(vocab_size=len(vocab), model=kind, num_layers=2, hidden_size=6)
        paths[kind] = save(CharRNN(cfg), vocab, root / kind)
    with open(root / "quote" / "metrics.jsonl", "w") as f:
        for step in range(0, 101, 10):
            f.write(json.dumps({"event": "train", "step": step, "time": step / 4, "train_loss": 3 - step / 60}) + "\n")
            if step % 50 == 0:
                f.write(
                    json.dumps(
                        {
                            "event": "eval",
                            "step": step,
                            "time": step / 4,
                            "val_loss": 3.2 - step / 80,
                        }
                    )
                    + "\n"
                )
        f.write('{"event": "train", "step": 11')  # a line still being written
    (root / "dialogue.txt").write_text(DIALOGUE, encoding="utf-8")
    paths["text"] = root / "dialogue.txt"
    paths["root"] = root
    return paths


def invoke(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args], **kwargs)  # type: ignore[arg-type]


def assert_user_error(result, pattern: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 1 with one line `error: <message>` on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("command", ["inspect", "cells", "gates", "view", "curves", "plot"])
def test_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "--runs-dir" in result.output


def test_importing_the_commands_does_not_import_torch() -> None:
    code = "import sys, charrnn.cli.neurons; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_prints_a_plain_table_when_not_a_terminal(runs: dict[str, Path]) -> None:
    text = 'a "b" c'
    result = invoke(
        "inspect",
        runs["quote"],
        "--text",
        text,
        "--layer",
        0,
        "--unit",
        QUOTE_UNIT,
        "--kind",
        "cell",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"pos\tchar\tL0.cell.{QUOTE_UNIT}"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[1] for r in rows] == list(text)
    values = [float(r[2]) for r in rows]
    assert values[0] == pytest.approx(0, abs=1e-3)  # before the first quote
    assert values[2] < -0.99 and values[3] < -0.99  # inside
    assert values[4] > 0.99 and values[6] > 0.99  # after the closing quote


def test_inspect_predictions_top_units_and_stdin(runs: dict[str, Path]) -> None:
    result = invoke("inspect", runs["gru"], "--top-units", 3, "--predictions", 2, input="hi\nyo")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    head = lines[0].split("\t")
    assert len(head) == 2 + 3 + 4 and all(h.startswith("L") and ".hidden." in h for h in head[2:5])
    assert head[5:] == ["next1", "p1", "next2", "p2"]
    assert [line.split("\t")[1] for line in lines[1:]] == ["h", "i", "\\n", "y", "o"]
    probs = [float(line.split("\t")[6]) for line in lines[1:]]
    assert all(0 < p <= 1 for p in probs)


def test_inspect_colours_with_legend_on_a_terminal(runs: dict[str, Path]) -> None:
    env = {"FORCE_COLOR": "1", "COLORTERM": "truecolor", "NO_COLOR": None, "COLUMNS": "100"}
    args = (
        "inspect",
        runs["quote"],
        "--text",
        'a "b" c',
        "--layer",
        0,
        "--unit",
        QUOTE_UNIT,
        "--predictions",
        1,
    )
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.output
    assert "\x1b[" in result.output and "layer 0 · cell · unit 5" in result.output
    assert "48;2;" in result.output  # true-colour backgrounds
    assert "top 1 next characters" in result.output
    for plain_env in ({**env, "NO_COLOR": "1"}, env):
        extra = () if plain_env is not env else ("--no-color",)
        plain = invoke(*args, *extra, env=plain_env)
        assert plain.exit_code == 0 and "\x1b[" not in plain.output
        assert plain.output.startswith("pos\tchar\tL0.cell.5")


def test_inspect_export(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "acts.npz"
    result = invoke("inspect", runs["rnn"], "--text", "hello", "--export", out)
    assert result.exit_code == 0, result.output
    with np.load(out, allow_pickle=False) as data:
        assert "".join(data["chars"]) == "hello" and data["hidden"].shape == (2, 5, 6)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("--text", "hi", "--layer", 2), "layer 2 is out of range: the model has layers 0-1"),
        (("--text", "hi", "--unit", 6), "unit 6 is out of range: 'hidden' has units 0-5"),
        (
            ("--text", "hi", "--kind", "forget"),
            "no 'forget' activations: choose reset, update, hidden",
        ),
        (("--text", ""), "the text is empty"),
        (
            ("--text", "hi €~"),
            r"2 character\(s\) are not in the model's vocabulary: '~', '€'; pass --unknown skip",
        ),
        (("--text", "hi", "--file", "x.txt"), "either with --text or with --file"),
        (("--file", "missing.txt"), "file 'missing.txt' does not exist"),
    ],
)
def test_inspect_user_errors(runs: dict[str, Path], args: tuple[object, ...], pattern: str) -> None:
    assert_user_error(invoke("inspect", runs["gru"], *args), pattern)


@pytest.mark.parametrize(
    ("command", "args", "choices"),
    [
        ("inspect", ("--text", "hi", "--unknown", "maybe"), "'error', 'skip'"),
        ("inspect", ("--text", "hi", "--kind", "cells"), "'cell', 'hidden', 'input'"),
        ("cells", ("x.txt", "--kind", "gate"), "'cell', 'hidden', 'input'"),
        ("gates", ("x.txt", "--unknown", "drop"), "'error', 'skip'"),
        ("view", ("x.txt", "--unknown", "drop"), "'error', 'skip'"),
    ],
)
def test_a_choice_outside_its_list_is_a_usage_error_listing_the_choices(
    runs: dict[str, Path], command: str, args: tuple[object, ...], choices: str
) -> None:
    result = invoke(command, runs["gru"], *args)
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stderr).split())  # the framed message, unwrapped
    assert result.exit_code == 2 and choices in message, result.output


def test_inspect_unknown_skip(runs: dict[str, Path]) -> None:
    result = invoke("inspect", runs["gru"], "--text", "h€i", "--unknown", "skip")
    assert result.exit_code == 0 and len(result.output.splitlines()) == 3


def test_missing_checkpoint_is_a_user_error(runs: dict[str, Path]) -> None:
    assert_user_error(invoke("inspect", runs["root"] / "nope.pt", "--text", "hi"), "nope")


def test_cells_finds_the_planted_quote_unit_first(runs: dict[str, Path]) -> None:
    result = invoke("cells", runs["quote"], runs["text"], "--feature", "inside-quotes", "--top", 5)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "rank\tlayer\tunit\tkind\tr"
    _, layer, unit, kind, r = lines[1].split("\t")
    assert (layer, unit) == ("0", str(QUOTE_UNIT)) and kind in ("cell", "hidden")
    assert float(r) < -0.9  # the cell is negative inside quotes
    assert len(lines) == 6


def test_cells_regex_feature_kind_filter_excerpt_and_export(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cells.npz"
    env = {"FORCE_COLOR": "1", "COLUMNS": "120"}
    result = invoke(
        "cells",
        runs["quote"],
        runs["text"],
        "--feature",
        "re:[A-Z]",
        "--kind",
        "hidden",
        "--export",
        out,
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "units tracking re:[A-Z]" in result.output and "· hidden · unit" in result.output
    with np.load(out, allow_pickle=False) as data:
        assert data["cell"].shape == (2, len(DIALOGUE), 8) and str(data["text"]) == DIALOGUE


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("--feature", "re:(["), "invalid regular expression '\\(\\[':"),
        (("--feature", "quotes"), "unknown feature 'quotes': choose one of inside-quotes"),
        (("--feature", "re:@"), "feature 're:@' is constant on this text"),
        (("--kind", "update"), "no 'update' activations"),
    ],
)
def test_cells_user_errors(runs: dict[str, Path], args: tuple[object, ...], pattern: str) -> None:
    assert_user_error(invoke("cells", runs["quote"], runs["text"], *args), pattern)


def test_gates_table_and_per_unit(runs: dict[str, Path]) -> None:
    result = invoke("gates", runs["quote"], runs["text"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split("\t")[:5] == ["layer", "gate", "units", "left <0.1", "right >0.9"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [(str(l), g) for l in (0, 1) for g in ("input", "forget", "output")]
    assert all(0 <= float(r[3]) <= 1 and 0 <= float(r[4]) <= 1 for r in rows)
    per_unit = invoke("gates", runs["gru"], runs["text"], "--per-unit")
    assert per_unit.exit_code == 0 and len(per_unit.output.splitlines()) == 1 + 2 * 2 * 6
    coloured = invoke("gates", runs["quote"], runs["text"], env={"FORCE_COLOR": "1", "COLUMNS": "150"})
    assert coloured.exit_code == 0 and "gate saturation over" in coloured.output


def test_gates_on_a_model_without_gates(runs: dict[str, Path]) -> None:
    assert_user_error(invoke("gates", runs["rnn"], runs["text"]), "the rnn model has no gates")


def _chromium() -> str | None:
    names = (
        "chromium",
        "chromium-headless-shell",
        "chromium-browser",
        "google-chrome",
        "headless_shell",
    )
    return next((path for path in map(shutil.which, names) if path), None)


def test_view_writes_a_self_contained_page(runs: dict[str, Path], tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    result = invoke("view", runs["quote"], runs["text"], "--out", page, "--max-chars", 100)
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=|https?://|@import", html)  # nothing loaded from anywhere
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.DOTALL)
    assert match is not None
    data = json.loads(match[1])
    assert data["text"] == DIALOGUE[:100] and set(data["blocks"]) == {
        f"{k}/{l}" for k in ("input", "forget", "output", "cell", "hidden") for l in (0, 1)
    }
    assert data["preds"]["k"] == 5 and len(data["preds"]["chars"]) == 100
    best = next(u for u in data["units"] if u["label"] == "inside-quotes")
    assert (best["layer"], best["unit"]) == (0, QUOTE_UNIT)
    assert data["initial"]["unit"] == QUOTE_UNIT
    assert html.count("<circle") == 3 * 2 * 8  # one dot per gate unit
    assert "<polyline" in html  # learning curves from metrics.jsonl


def test_view_in_a_headless_browser(runs: dict[str, Path], tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine")
    page = tmp_path / "page.html"
    assert invoke("view", runs["quote"], runs["text"], "--out", page, "--max-chars", 120).exit_code == 0
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=900,700",
    ]

    def backgrounds(selection: str) -> list[str]:
        dom = subprocess.run(
            [*flags, "--dump-dom", f"{page.as_uri()}#{selection}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        return re.findall(r'<span data-t="\d+" style="background: (rgb\([^)]*\))', dom)

    def screenshot(selection: str, name: str) -> bytes:
        shot = tmp_path / name
        subprocess.run(
            [*flags, f"--screenshot={shot}", f"{page.as_uri()}#{selection}"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        return shot.read_bytes()

    quote = backgrounds(f"layer=0&kind=cell&unit={QUOTE_UNIT}")
    other = backgrounds("layer=1&kind=forget&unit=2")
    assert len(quote) == len(other) == 120
    assert quote != other
    inside = DIALOGUE.index('"') + 1
    assert quote[0] == "rgb(255, 255, 255)"  # cell 0 before any quote
    assert quote[inside] == "rgb(33, 102, 172)"  # cell -1 inside quotes
    first, second = (
        screenshot(f"layer=0&kind=cell&unit={QUOTE_UNIT}", "a.png"),
        screenshot("layer=1&kind=forget&unit=2", "b.png"),
    )
    assert first.startswith(b"\x89PNG") and first != second


def test_curves_plain_and_plotted(runs: dict[str, Path]) -> None:
    result = invoke("curves", runs["quote"].parent)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "event\tstep\ttime\tloss" and len(lines) == 1 + 11 + 3
    assert lines[-1] == "eval\t100\t25.0\t1.9500"
    pretty = invoke("curves", "quote", "--runs-dir", runs["root"], env={"FORCE_COLOR": "1"})
    assert pretty.exit_code == 0 and "●" in pretty.output and "best val loss 1.9500" in pretty.output


def test_curves_without_metrics(runs: dict[str, Path]) -> None:
    assert_user_error(invoke("curves", runs["gru"]), "metrics.jsonl' does not exist")


def test_plot_writes_a_png_or_asks_for_matplotlib(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "curve.png"
    result = invoke("plot", runs["quote"], "--out", out)
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        assert_user_error(result, "plot needs matplotlib")
        return
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")


def test_commands_on_a_run_trained_by_the_main_cli(tmp_path: Path) -> None:
    """Wiring into `charrnn` and the run layout train writes (run names, metrics.jsonl)."""
    corpus = tmp_path / "dialogue.txt"
    corpus.write_text(make_dialogue(2000, seed=1), encoding="utf-8")
    runs_dir = ["--runs-dir", str(tmp_path / "runs")]
    train = runner.invoke(
        app,
        ["train", str(corpus), "--name", "tiny", "--hidden", "16", "--layers", "1",
         "--batch-size", "4", "--seq-len", "16", "--max-steps", "10", "--eval-every", "5",
         "--data-dir", str(tmp_path / "data"), "--quiet", *runs_dir],
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    text = ["--text", 'Anna said "yes."']
    for args in (
        ["inspect", "tiny", *text, "--predictions", "2"],
        ["inspect", *text, "--kind", "forget", "--top-units", "2"],  # latest run
        ["cells", "tiny", str(corpus), "--feature", "line-position"],
        ["gates", "tiny", str(corpus)],
        ["view", "tiny", str(corpus), "--out", str(tmp_path / "page.html")],
        ["curves", "tiny"],
    ):
        result = runner.invoke(app, [*args, *runs_dir])
        assert result.exit_code == 0, (args, result.output)
    assert "<polyline" in (tmp_path / "page.html").read_text(encoding="utf-8")
    missing = runner.invoke(app, ["inspect", "nope", *text, *runs_dir])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: unknown run")
