"""Text features right on real books (quotations over paragraphs, curly quotes, apostrophes,
BOM and CRLF), and the streamed inspection equal to the step-by-step computation it replaced."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from typer.testing import CliRunner

import charrnn.neurons.reports as reports
from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import build_vocab
from charrnn.models.charrnn import CharRNN, FusedStack
from charrnn.neurons.activations import Recorder, activation_kinds, iter_chunks, needed_kinds, run_text, step_threads
from charrnn.neurons.feature_rules import FEATURE_RULES
from charrnn.neurons.features import FEATURES, compute_feature
from charrnn.neurons.layers import STEP_MIN_HIDDEN, stack_activations
from charrnn.neurons.unitstats import GateCounts, Moments, UnitScan

DOCS = Path(__file__).resolve().parents[1] / "docs" / "features.md"


def quotes(text: str) -> str:
    """The inside-quotes feature drawn as a string: '^' inside, ' ' outside."""
    return "".join("^" if v else " " for v in compute_feature(text, "inside-quotes"))


# ---- inside-quotes on hand-made texts ------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_quotation_running_into_the_next_paragraph_ends_at_the_blank_line(newline: str) -> None:
    blank = newline * 2
    text = f'He said, "Come here.{blank}"I mean it," he said. Then{blank}he left.'
    got = compute_feature(text, "inside-quotes")
    first = text.index('"')
    brk = text.index(blank) + len(blank) - 1  # the \n that ends the blank line
    second = text.index('"', brk)
    close = text.index('"', second + 1)
    want = np.zeros(len(text))
    want[first:brk] = 1
    want[second:close] = 1
    np.testing.assert_array_equal(got, want)
    assert got[text.index("Then") :].sum() == 0  # a toggle would stay inverted from here on


def test_a_single_newline_inside_a_paragraph_keeps_the_quotation_open() -> None:
    text = 'She said "one\r\ntwo" and left.'
    first, second = text.index('"'), text.rindex('"')
    assert quotes(text) == " " * first + "^" * (second - first) + " " * (len(text) - second)


def test_curly_quotes_nest_and_close_their_own_kind() -> None:
    text = "“Outer ‘inner’ still,” said he. «Oui» non."
    assert quotes(text) == "^^^^^^^^^^^^^^^^^^^^^           ^^^^      "


@pytest.mark.parametrize(
    ("text", "drawn"),
    [
        ("I don't know, O'Brien.", "                      "),
        ("I don’t know.", "             "),
        ("She said, 'I can't.' Then left.", "          ^^^^^^^^^            "),
        ("‘I’m home,’ he said.", "^^^^^^^^^^          "),
        ("The boys’ books.", "                "),
        ("'Hello,' he said.", "^^^^^^^          "),
    ],
)
def test_apostrophes_are_not_quotes(text: str, drawn: str) -> None:
    assert quotes(text) == drawn


def test_straight_quotes_take_their_direction_from_the_characters_around_them() -> None:
    assert quotes('"A" "B" x"y"') == "^^  ^^   ^^ "  # x"y: unclear, so it toggles
    assert quotes('said "no "') == "     ^^^^ "  # a space before the closing mark
    assert quotes('("yes") and "no".') == " ^^^^       ^^^  "


def test_quote_marks_in_an_unclosed_paragraph_do_not_leak_into_the_next() -> None:
    text = "'Tis the season.\n\nAll is well."
    assert quotes(text).endswith(" " * len("\nAll is well."))


def book(paragraphs: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """A novel-like CRLF text with quotations running over paragraphs, and the feature it should have."""
    rng = random.Random(seed)
    words = ["the", "old", "man", "don't", "boys'", "night", "O'Brien", "came", "it's"]
    parts: list[tuple[str, bool]] = []
    open_run = False  # a quotation continued from the paragraph before
    for _ in range(paragraphs):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
        r = rng.random()
        if open_run or r < 0.4:
            parts += [('"', True), (sentence + ",", True)]
            if rng.random() < 0.4:  # runs on: no closing mark, reopened next paragraph
                open_run = True
            else:
                parts += [('"', False), (" he said.", False)]
                open_run = False
        else:
            parts.append((sentence + ".", False))
        parts.append(("\r\n\r\n", False))
    text = "".join(p for p, _ in parts)
    want = np.concatenate([np.full(len(p), inside, dtype=np.float32) for p, inside in parts])
    # The blank line's own \r and first \n are still inside an unclosed quotation; its last \n is not.
    for match in re.finditer("\r\n\r\n", text):
        want[match.start() : match.end() - 1] = want[match.start() - 1]
        want[match.end() - 1] = 0
    return text, want


def test_a_generated_book_with_run_on_quotations_is_right_everywhere() -> None:
    text, want = book(400)
    got = compute_feature(text, "inside-quotes")
    np.testing.assert_array_equal(got, want)
    toggle = np.cumsum([ch == '"' for ch in text]) % 2  # the old rule
    assert abs((toggle != want).mean()) > 0.2  # ...which drifts on this text


# ---- the other features: vectorised rules equal a character loop ---------------------------


def loop_features(text: str) -> dict[str, list[float]]:
    """The documented rules of the other features, one character at a time."""
    out: dict[str, list[float]] = {k: [] for k in ("line-position", "bracket-depth", "inside-word", "word-position")}
    line = depth = pos = 0
    for i, ch in enumerate(text):
        line = 0 if ch == "\n" else line if ch == "\r" else line + 1
        depth = depth + 1 if ch in "([{" else max(depth - 1, 0) if ch in ")]}" else depth
        word = ch.isalnum() or ch == "_"
        if ch in "'’" and 0 < i < len(text) - 1:
            word = all(c.isalnum() or c == "_" for c in (text[i - 1], text[i + 1]))
        pos = pos + 1 if word else 0
        for name, value in (
            ("line-position", line),
            ("bracket-depth", depth),
            ("inside-word", word),
            ("word-position", pos),
        ):
            out[name].append(float(value))
    out["after-newline"] = [float(ch == "\n") for ch in text]
    return out


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab1_ '’\r\n()[]{}é-.\"", max_size=60))
def test_vectorised_features_equal_their_rule_character_by_character(text: str) -> None:
    for name, want in loop_features(text).items():
        assert compute_feature(text, name).tolist() == want, (name, text)
    assert len(compute_feature(text, "inside-quotes")) == len(text)


def test_every_builtin_feature_has_its_rule_in_the_help_and_the_docs() -> None:
    assert list(FEATURE_RULES) == list(FEATURES)
    result = CliRunner().invoke(app, ["cells", "--help"])
    help_text = " ".join(result.output.split())
    docs = DOCS.read_text(encoding="utf-8")
    for name, rule in FEATURE_RULES.items():
        assert f"{name}: {' '.join(rule.split())[:60]}" in help_text
        assert f"## {name}\n" in docs
    assert "paragraph break" in help_text and "apostrophe" in help_text


# ---- books with a BOM and CRLF line ends, through every command -----------------------------


@pytest.fixture(scope="module")
def bom_book(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("bom")
    text, _ = book(40)
    (root / "book.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    vocab = build_vocab(text)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), model="lstm", num_layers=2, hidden_size=8)
    save_checkpoint(Checkpoint(cfg, TrainConfig(), vocab, CharRNN(cfg).state_dict()), root / "best.pt")
    return root / "best.pt", root / "book.txt", text


def test_every_command_reads_a_bom_and_crlf_book_as_training_does(bom_book: tuple[Path, Path, str]) -> None:
    ckpt, path, text = bom_book
    runner = CliRunner()
    assert reports.read_file(path, byte_level=False) == text  # BOM dropped, \r\n kept
    for args in (
        ["cells", ckpt, path, "--feature", "inside-quotes", "--top", "3"],
        ["gates", ckpt, path],
        ["view", ckpt, path, "--out", path.parent / "v.html"],
        ["inspect", ckpt, "--file", path, "--layer", "0", "--unit", "1"],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, (args[0], result.output)
    rows = result.output.splitlines()[1:]  # inspect's rows: one per character, the \r shown as \r
    assert len(rows) == len(text) and rows[0].split("\t")[1] == text[0] and "\\r" in {r.split("\t")[1] for r in rows}
    piped = runner.invoke(app, ["inspect", str(ckpt), "--layer", "0", "--unit", "1"], input=path.read_bytes())
    assert piped.exit_code == 0 and piped.output == result.output  # standard input reads the same


# ---- the streamed computation equals the step-by-step one it replaced ------------------------


def reference_layer(layer: nn.Module, x: Tensor, state: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """The former computation: the cell equations stepped by hand, every kind kept."""
    w_ih, w_hh = cast(Tensor, layer.weight_ih_l0), cast(Tensor, layer.weight_hh_l0)
    b_ih, b_hh = cast(Tensor, layer.bias_ih_l0), cast(Tensor, layer.bias_hh_l0)
    H = w_hh.shape[1]
    h = state[0]
    c = state[1] if isinstance(layer, nn.LSTM) else h
    acts: dict[str, list[Tensor]] = {}
    for t in range(x.shape[1]):
        xw = x[:, t] @ w_ih.T + b_ih
        hw = h @ w_hh.T + b_hh
        if isinstance(layer, nn.LSTM):
            z = xw + hw
            i, f, g, o = (
                z[:, :H].sigmoid(),
                z[:, H : 2 * H].sigmoid(),
                z[:, 2 * H : 3 * H].tanh(),
                z[:, 3 * H :].sigmoid(),
            )
            c = f * c + i * g
            h = o * c.tanh()
            step = {"input": i, "forget": f, "output": o, "cell": c}
        elif isinstance(layer, nn.GRU):
            r = (xw[:, :H] + hw[:, :H]).sigmoid()
            u = (xw[:, H : 2 * H] + hw[:, H : 2 * H]).sigmoid()
            h = (1 - u) * (xw[:, 2 * H :] + r * hw[:, 2 * H :]).tanh() + u * h
            step = {"reset": r, "update": u}
        else:
            h = (xw + hw).tanh()
            step = {}
        for k, v in {**step, "hidden": h}.items():
            acts.setdefault(k, []).append(v)
    return {k: torch.stack(v, 1) for k, v in acts.items()}


def model_of(kind: str, hidden: int = 16, vocab: int = 9) -> CharRNN:
    torch.manual_seed(3)
    return CharRNN(ModelConfig(vocab_size=vocab, model=kind, num_layers=2, hidden_size=hidden)).eval()


@pytest.mark.parametrize(("kind", "hidden"), [("lstm", 16), ("lstm", STEP_MIN_HIDDEN), ("gru", 16), ("rnn", 16)])
def test_activations_equal_the_step_by_step_equations(kind: str, hidden: int) -> None:
    model = model_of(kind, hidden)
    x = model.embed(torch.randint(0, 9, (3, 40)))
    state = tuple(torch.randn_like(s) * 0.5 for s in model.init_state(3))
    with torch.inference_mode():
        _, final, acts = stack_activations(model.stack, x, state)
        layers = cast(FusedStack, model.stack).layers
        first = reference_layer(layers[0], x, tuple(s[0] for s in state))
        second = reference_layer(layers[1], first["hidden"], tuple(s[1] for s in state))
        only_hidden = stack_activations(model.stack, x, state, kinds={"hidden"})[2]
    assert list(only_hidden) == ["hidden"]
    torch.testing.assert_close(only_hidden["hidden"], acts["hidden"], atol=2e-6, rtol=0)
    for k in acts:
        torch.testing.assert_close(acts[k], torch.stack([first[k], second[k]]), atol=2e-6, rtol=0, msg=k)
    torch.testing.assert_close(final[0], acts["hidden"][:, :, -1], atol=2e-6, rtol=0)


def test_streamed_correlations_and_gate_counts_equal_numpy_on_the_recorded_activations() -> None:
    model = model_of("lstm")
    ids = np.random.default_rng(0).integers(0, 9, 3000)
    feature = (np.random.default_rng(1).random(3000) < 0.3).astype(np.float32)
    kinds = activation_kinds(model)
    every, scan, counts = Recorder(kinds, 2, 3000), UnitScan(kinds, 2, feature[:, None]), GateCounts(kinds, 2)
    run_text(model, ids, [every, scan, counts], chunk_len=64, streams=3)
    for k, r in scan.correlations(0).items():
        values = every.values[k]  # (L, N, U)
        for layer in range(2):
            want = [np.corrcoef(values[layer, :, u].astype(np.float64), feature)[0, 1] for u in range(16)]
            np.testing.assert_allclose(r[layer], want, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(scan.variances()[k], values.astype(np.float64).var(axis=1), rtol=1e-4, atol=1e-9)
    left, right = counts.fractions()["forget"]
    np.testing.assert_allclose(left, (every.values["forget"] < 0.1).mean(axis=1))
    np.testing.assert_allclose(right, (every.values["forget"] > 0.9).mean(axis=1))


def test_only_the_kinds_consumers_need_are_computed() -> None:
    model = model_of("lstm")
    kinds = activation_kinds(model)
    assert needed_kinds([UnitScan({"cell": 16}, 2), GateCounts(kinds, 2)]) == {"cell", "input", "forget", "output"}
    assert needed_kinds([object()]) is None  # type: ignore[list-item]
    ids = np.random.default_rng(0).integers(0, 9, 200)
    chunks = list(iter_chunks(model, ids, 64, 2, kinds={"cell"}))
    assert all(list(c.acts) == ["cell"] for c in chunks)
    full = Recorder(kinds, 2, 200)
    run_text(model, ids, [full], chunk_len=64, streams=2)
    cells = np.zeros((2, 200, 16), np.float32)
    for c in chunks:
        cells[:, c.pos] = c.acts["cell"]
    np.testing.assert_allclose(cells, full.values["cell"], atol=1e-6)


def test_inspect_of_a_long_text_reads_it_twice_and_shows_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "ab ba cab, abc. " * 100
    vocab = build_vocab(text)
    model = model_of("lstm", vocab=len(vocab))
    ckpt = Checkpoint(model.cfg, TrainConfig(), vocab, model.state_dict())
    once = reports.inspect_units(ckpt, model, text, top_units=3, predictions=2)
    monkeypatch.setattr(reports, "RECORD_LIMIT", 0)  # as if the text were too long to keep
    twice = reports.inspect_units(ckpt, model, text, top_units=3, predictions=2)
    assert twice.units == once.units and twice.values.shape == (len(text), 3)
    np.testing.assert_allclose(twice.values, once.values, atol=1e-6)
    np.testing.assert_allclose(twice.top_probs, once.top_probs, atol=1e-6)
    assert twice.top_chars == once.top_chars


def test_small_steps_run_on_one_thread_and_the_thread_count_comes_back() -> None:
    assert step_threads(streams=4, hidden_size=64, threads=2) == 1  # a barrier per step costs more
    assert step_threads(streams=16, hidden_size=512, threads=2) == 2
    before = torch.get_num_threads()
    list(iter_chunks(model_of("lstm"), np.arange(50) % 9, 16, 2))
    assert torch.get_num_threads() == before


def test_a_constant_unit_correlates_with_nothing() -> None:
    feature = np.tile([0.0, 1.0, 1.0], 700)[:, None]
    x = np.random.default_rng(0).normal(size=(2100, 3)).astype(np.float32)
    x[:, 1] = np.float32(0.9999546)  # a gate held shut: sigmoid(10) at every step
    moments = Moments(3, 1)
    for lo in range(0, 2100, 512):
        moments.add(x[lo : lo + 512], feature[lo : lo + 512])
    assert moments.correlation()[1, 0] == 0.0 and moments.variance()[1] == 0.0
    want = np.corrcoef(x[:, 0].astype(np.float64), feature[:, 0])[0, 1]
    assert moments.correlation()[0, 0] == pytest.approx(want, abs=1e-6)
