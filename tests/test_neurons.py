"""Activations, features, online statistics, gate counts, export and the reports the neuron
commands render (charrnn.neurons.reports), at tiny sizes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from charrnn.checkpoint import Checkpoint
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import build_vocab
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN, FusedStack
from charrnn.neurons.activations import (
    Chunk,
    Recorder,
    activation_kinds,
    check_selection,
    encode_text,
    iter_chunks,
    plan_streams,
    run_text,
    stack_activations,
    write_npz,
)
from charrnn.neurons.features import FEATURES, compute_feature, compute_features
from charrnn.neurons.reports import (
    GATE_HEAD,
    cells_rows,
    colour_scale,
    count_gates,
    gate_rows,
    gate_unit_rows,
    inspect_rows,
    inspect_units,
    read_input,
    scan_cells,
)
from charrnn.neurons.unitstats import GateCounts, Moments, UnitScan, rank_units, summarise_gates

KINDS = {
    "lstm": ["input", "forget", "output", "cell", "hidden"],
    "gru": ["reset", "update", "hidden"],
    "rnn": ["hidden"],
}


def tiny_model(kind: str, vocab_size: int = 7, layers: int = 2, hidden: int = 8, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, model=kind, num_layers=layers, hidden_size=hidden, embed_size=5)
    return CharRNN(cfg).eval()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_recomputed_fused_activations_match_the_fused_forward(kind: str) -> None:
    model = tiny_model(kind)
    x = model.embed(torch.randint(0, 7, (3, 12)))
    state = tuple(torch.randn_like(s) for s in model.init_state(3))
    with torch.no_grad():
        out, final = model.stack(x, state)
        out2, final2, acts = stack_activations(model.stack, x, state)
    assert list(acts) == KINDS[kind]
    assert all(a.shape == (2, 3, 12, 8) for a in acts.values())
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(acts["hidden"][-1], out, atol=1e-5, rtol=0)
    for a, b in zip(final2, final):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    if kind == "lstm":  # the last step's cell state is the fused module's c
        torch.testing.assert_close(acts["cell"][:, :, -1], final[1], atol=1e-5, rtol=0)
        gates = torch.cat([acts[k] for k in ("input", "forget", "output")])
        assert gates.min() >= 0 and gates.max() <= 1


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_chunked_stream_equals_one_forward(kind: str) -> None:
    model = tiny_model(kind)
    ids = np.random.default_rng(0).integers(0, 7, 50)
    recorder = Recorder(activation_kinds(model), 2, 50, top_k=3)
    run_text(model, ids, [recorder], chunk_len=7)  # state carried over 8 chunks
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids)[None], model.init_state(1))
        out, _ = model.stack(model.embed(torch.from_numpy(ids)[None]), model.init_state(1))
    np.testing.assert_allclose(recorder.values["hidden"][-1], out[0].numpy(), atol=1e-5)
    top = torch.topk(torch.softmax(logits[0], -1), 3)
    np.testing.assert_array_equal(recorder.top_ids, top.indices.numpy())
    np.testing.assert_allclose(recorder.top_probs, top.values.numpy(), atol=1e-6)


def first_layer_weights(model: CharRNN) -> dict[str, np.ndarray]:
    layer = cast(FusedStack, model.stack).layers[0]
    return {name: p.detach().numpy() for name, p in layer.named_parameters()}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_lstm_gates_equal_a_hand_computation_for_two_steps() -> None:
    model = tiny_model("lstm", vocab_size=3, layers=1, hidden=2)
    p = first_layer_weights(model)
    w_ih, w_hh, b = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]
    emb = model.embed.weight.detach().numpy()
    ids = np.array([2, 0])
    recorder = Recorder(activation_kinds(model), 1, 2)
    run_text(model, ids, [recorder])
    h, c = np.zeros(2), np.zeros(2)
    for t, i in enumerate(ids):
        z = w_ih @ emb[i] + w_hh @ h + b
        gi, gf, gg, go = _sigmoid(z[0:2]), _sigmoid(z[2:4]), np.tanh(z[4:6]), _sigmoid(z[6:8])
        c = gf * c + gi * gg
        h = go * np.tanh(c)
        for name, want in (
            ("input", gi),
            ("forget", gf),
            ("output", go),
            ("cell", c),
            ("hidden", h),
        ):
            np.testing.assert_allclose(recorder.values[name][0, t], want, atol=1e-6, err_msg=f"{name} step {t}")


def test_gru_gates_equal_a_hand_computation_for_two_steps() -> None:
    model = tiny_model("gru", vocab_size=3, layers=1, hidden=2)
    p = first_layer_weights(model)
    w_ih, w_hh, b_ih, b_hh = (p[n] for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
    emb = model.embed.weight.detach().numpy()
    ids = np.array([1, 2])
    recorder = Recorder(activation_kinds(model), 1, 2)
    run_text(model, ids, [recorder])
    h = np.zeros(2)
    for t, i in enumerate(ids):
        xi, hh = w_ih @ emb[i] + b_ih, w_hh @ h + b_hh
        r = _sigmoid(xi[0:2] + hh[0:2])
        u = _sigmoid(xi[2:4] + hh[2:4])
        n = np.tanh(xi[4:6] + r * hh[4:6])
        h = (1 - u) * n + u * h
        for name, want in (("reset", r), ("update", u), ("hidden", h)):
            np.testing.assert_allclose(recorder.values[name][0, t], want, atol=1e-6, err_msg=f"{name} step {t}")


def test_streams_cover_every_position_once() -> None:
    model = tiny_model("rnn")
    ids = np.random.default_rng(1).integers(0, 7, 101)
    positions = np.concatenate([c.pos for c in iter_chunks(model, ids, chunk_len=8, streams=4)])
    assert sorted(positions.tolist()) == list(range(101))
    assert plan_streams(5_000, 16) == 1  # short texts keep the exact single pass
    assert plan_streams(100_000, 16) == 10
    assert plan_streams(10_000_000, 16) == 16


def test_features_on_hand_made_strings() -> None:
    text = 'a "b c" (x[y])\nhi'
    f = {name: compute_feature(text, name).tolist() for name in FEATURES}
    #                         a  sp "  b  sp c  "  sp (  x  [  y  ]  )  \n h  i
    assert f["inside-quotes"] == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert f["line-position"] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 1, 2]
    assert f["bracket-depth"] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 1, 0, 0, 0, 0]
    assert f["inside-word"] == [1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1]
    assert f["word-position"] == [1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 2]
    assert f["after-newline"] == [0] * 14 + [1, 0, 0]
    assert compute_feature("“ab” c", "inside-quotes").tolist() == [1, 1, 1, 0, 0, 0]
    assert compute_feature(")(", "bracket-depth").tolist() == [0, 1]
    assert compute_feature("ab12c3", "re:[0-9]+").tolist() == [0, 0, 1, 1, 0, 1]
    assert compute_features("ab", ["inside-word", "re:b"]).tolist() == [[1, 0], [1, 1]]


def test_feature_errors() -> None:
    with pytest.raises(CharRNNError, match="invalid regular expression"):
        compute_feature("abc", "re:a(")
    with pytest.raises(CharRNNError, match="unknown feature 'quotes'"):
        compute_feature("abc", "quotes")
    with pytest.raises(CharRNNError, match="needs a pattern"):
        compute_feature("abc", "re:")


def test_online_correlation_equals_numpy_corrcoef() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 6)) + 100.0  # a large mean tests the centred merge
    y = np.stack([x[:, 2] * 0.5 + rng.normal(size=1000), rng.integers(0, 2, 1000)], 1)
    x[:, 4] = 3.0  # a constant (dead) unit
    moments = Moments(6, 2)
    for lo, hi in ((0, 1), (1, 300), (300, 301), (301, 1000)):  # uneven chunks
        moments.add(x[lo:hi], y[lo:hi])
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(np.concatenate([x, y], 1), rowvar=False)[:6, 6:]
    full[4] = 0.0
    np.testing.assert_allclose(moments.correlation(), full, atol=1e-10)
    np.testing.assert_allclose(moments.variance(), x.var(0), rtol=1e-9, atol=1e-12)


def test_ranking_picks_a_planted_unit() -> None:
    model = tiny_model("lstm", hidden=16)
    ids = np.random.default_rng(2).integers(0, 7, 400)
    recorder = Recorder(activation_kinds(model), 2, 400)
    run_text(model, ids, [recorder])
    unit = recorder.values["cell"][1, :, 11]
    noise = np.random.default_rng(3).normal(scale=0.05 * unit.std(), size=400)
    planted = -unit + noise  # a feature that one unit tracks
    scan = UnitScan(activation_kinds(model), 2, planted[:, None])
    run_text(model, ids, [scan], chunk_len=64)
    best = rank_units(scan.correlations(0), 3)
    assert (best[0].layer, best[0].unit, best[0].kind) == (1, 11, "cell")
    assert best[0].value < -0.99
    assert abs(best[0].value) >= abs(best[1].value) >= abs(best[2].value)


def test_gate_counts_on_a_hand_made_chunk() -> None:
    counts = GateCounts({"forget": 2, "hidden": 2}, num_layers=1)
    forget = np.array([[[0.05, 0.95], [0.5, 0.95], [0.05, 0.2], [0.95, 0.5]]], np.float32)  # (1, 4, 2)
    counts.add(Chunk(pos=np.arange(4), acts={"forget": forget, "hidden": forget}, logits=np.zeros((4, 3))))
    left, right = counts.fractions()["forget"]
    np.testing.assert_allclose(left, [[0.5, 0.0]])
    np.testing.assert_allclose(right, [[0.25, 0.5]])
    assert list(counts.fractions()) == ["forget"]
    (row,) = summarise_gates(counts)
    assert (row.layer, row.kind, row.units, row.mostly_left, row.mostly_right) == (
        0,
        "forget",
        2,
        0,
        0,
    )
    assert row.left_mean == pytest.approx(0.25) and row.right_mean == pytest.approx(0.375)


def test_gate_fractions_of_a_model_are_fractions() -> None:
    model = tiny_model("lstm")
    counts = GateCounts(activation_kinds(model), 2)
    run_text(model, np.random.default_rng(0).integers(0, 7, 300), [counts], streams=3)
    assert counts.n == 300 and counts.gates == ["input", "forget", "output"]
    for left, right in counts.fractions().values():
        assert left.shape == (2, 8)
        assert (left >= 0).all() and (right >= 0).all() and (left + right <= 1).all()


@pytest.mark.parametrize("on_disk", [False, True])
def test_export_npz_contents(tmp_path: Path, on_disk: bool) -> None:
    text = "ab ba\ncab"
    vocab = build_vocab(text)
    model = tiny_model("gru", vocab_size=len(vocab))
    _, ids = encode_text(text, vocab)
    recorder = Recorder(activation_kinds(model), 2, len(text), top_k=2, directory=tmp_path if on_disk else None)
    run_text(model, ids, [recorder], chunk_len=4)
    write_npz(tmp_path / "out" / "acts.npz", text, vocab, "gru", recorder)
    with np.load(tmp_path / "out" / "acts.npz", allow_pickle=False) as data:
        assert set(data.files) == {
            "text",
            "chars",
            "vocab",
            "model",
            "start",
            "reset",
            "update",
            "hidden",
            "top_chars",
            "top_probs",
        }
        assert str(data["text"]) == text and "".join(data["chars"]) == text
        assert "".join(data["vocab"]) == "".join(vocab.chars) and str(data["model"]) == "gru"
        assert data["hidden"].shape == (2, len(text), 8) and data["hidden"].dtype == np.float32
        np.testing.assert_array_equal(data["hidden"], recorder.values["hidden"])
        assert data["top_chars"].shape == (len(text), 2) and set("".join(data["top_chars"].ravel())) <= set(text)
        assert (np.diff(data["top_probs"], axis=1) <= 0).all()


def test_encode_text_unknown_and_empty() -> None:
    vocab = build_vocab("abc ")
    with pytest.raises(CharRNNError, match=r"2 character\(s\).*'x', 'z'.*--unknown skip"):
        encode_text("a x z", vocab)
    assert encode_text("a x z", vocab, unknown="skip")[0] == "a  "
    with pytest.raises(CharRNNError, match="empty"):
        encode_text("", vocab)
    with pytest.raises(CharRNNError, match="empty"):
        encode_text("xyz", vocab, unknown="skip")


def test_check_selection_errors() -> None:
    kinds = {"reset": 8, "update": 8, "hidden": 8}
    check_selection(kinds, 2, 1, "hidden", 7)
    with pytest.raises(CharRNNError, match="no 'forget' activations: choose reset, update, hidden"):
        check_selection(kinds, 2, 0, "forget", 0)
    with pytest.raises(CharRNNError, match="layer 2 is out of range"):
        check_selection(kinds, 2, 2, "hidden", 0)
    with pytest.raises(CharRNNError, match="unit 8 is out of range"):
        check_selection(kinds, 2, 0, "hidden", 8)


@pytest.mark.parametrize(
    ("kind", "kinds"),
    [
        ("peephole-lstm", ["input", "forget", "output", "cell", "hidden"]),
        ("mogrifier-lstm", ["input", "forget", "output", "cell", "hidden"]),
        ("gf-gru", ["reset", "update", "hidden", "feedback"]),
    ],
)
def test_stacks_that_report_their_own_activations(kind: str, kinds: list[str]) -> None:
    pytest.importorskip("charrnn.models.custom")
    model = tiny_model(kind)
    found = activation_kinds(model)
    assert sorted(found) == sorted(kinds)
    if "feedback" in found:
        assert found["feedback"] == 2  # one gate per source layer
    ids = np.random.default_rng(0).integers(0, 7, 40)
    recorder, counts = Recorder(found, 2, 40), GateCounts(found, 2)
    run_text(model, ids, [recorder, counts], chunk_len=16)
    with torch.no_grad():
        out, _ = model.stack(model.embed(torch.from_numpy(ids)[None]), model.init_state(1))
    np.testing.assert_allclose(recorder.values["hidden"][-1], out[0].numpy(), atol=1e-5)
    assert all(((f >= 0) & (f <= 1)).all() for pair in counts.fractions().values() for f in pair)


def tiny_checkpoint(kind: str, text: str) -> tuple[Checkpoint, CharRNN]:
    vocab = build_vocab(text)
    model = tiny_model(kind, vocab_size=len(vocab))
    return Checkpoint(model.cfg, TrainConfig(), vocab, model.state_dict()), model


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_read_input_takes_text_file_or_stdin(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("from a file", encoding="utf-8")
    assert read_input("é", None, False, None) == "é"
    assert read_input("é", None, True, None) == "\xc3\xa9"  # a byte-level model reads UTF-8 bytes
    assert read_input(None, path, False, None) == "from a file"
    assert read_input(None, None, False, _Stdin("piped")) == "piped"
    with pytest.raises(CharRNNError, match="either with --text or with --file"):
        read_input("a", path, False, None)
    with pytest.raises(CharRNNError, match="no text"):
        read_input(None, None, False, None)


def test_colour_scale_is_one_for_bounded_kinds_and_a_percentile_for_cells() -> None:
    values = np.linspace(-10, 10, 101)
    assert colour_scale("hidden", values) == colour_scale("forget", values) == 1.0
    assert colour_scale("cell", values) == pytest.approx(9.0)
    assert colour_scale("cell", np.zeros(5)) == colour_scale("cell", np.zeros(0)) == 1.0


def test_inspect_report_and_its_rows() -> None:
    text = "ab\tba\nab"
    ckpt, model = tiny_checkpoint("lstm", text)
    report = inspect_units(ckpt, model, text, layer=0, unit=3, predictions=2)
    assert report.kind == "cell" and report.units == [(0, 3)] and report.text == text
    rows = inspect_rows(report)
    assert rows[0] == ["pos", "char", "L0.cell.3", "next1", "p1", "next2", "p2"]
    assert [r[1] for r in rows[1:]] == ["a", "b", "\\t", "b", "a", "\\n", "a", "b"]
    every = Recorder(activation_kinds(model), 2, len(text))
    run_text(model, encode_text(text, ckpt.vocab)[1], [every])
    assert report.values.shape == (len(text), 1)
    np.testing.assert_allclose(report.values[:, 0], every.values["cell"][0, :, 3], atol=1e-6)
    assert float(rows[1][2]) == pytest.approx(float(report.values[0, 0]), abs=1e-4)
    top = inspect_units(ckpt, model, text, kind="hidden", top_units=3)
    variance = every.values["hidden"].var(axis=1)  # (L, U)
    assert [variance[l, u] for l, u in top.units] == sorted(variance.ravel(), reverse=True)[:3]
    np.testing.assert_allclose(
        top.values, np.stack([every.values["hidden"][l, :, u] for l, u in top.units], 1), atol=1e-5
    )
    with pytest.raises(CharRNNError, match="no 'reset' activations"):
        inspect_units(ckpt, model, text, kind="reset")


def test_cells_report_ranks_and_exports(tmp_path: Path) -> None:
    text = 'say "hi there" and "bye now" ' * 20
    ckpt, model = tiny_checkpoint("gru", text)
    report = scan_cells(ckpt, model, text, top=4, kind="hidden", excerpt=30, export=tmp_path / "a.npz")
    assert len(report.scores) == 4 and all(s.kind == "hidden" for s in report.scores)
    assert [abs(s.value) for s in report.scores] == sorted((abs(s.value) for s in report.scores), reverse=True)
    assert len(report.excerpt) == 30 and report.start <= text.index('"')
    assert cells_rows(report.scores)[0] == ["rank", "layer", "unit", "kind", "r"]
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        assert data["reset"].shape == (2, len(text), 8)
    with pytest.raises(CharRNNError, match="constant"):
        scan_cells(ckpt, model, "say hi and bye", feature="inside-quotes")


def test_gate_reports_have_a_row_per_layer_and_gate() -> None:
    text = "abc cab bca " * 10
    ckpt, model = tiny_checkpoint("gru", text)
    counts, n = count_gates(ckpt, model, text)
    assert n == len(text)
    assert [(r[0], r[1]) for r in gate_rows(counts)] == [(l, g) for l in "01" for g in ("reset", "update")]
    assert all(len(r) == len(GATE_HEAD) for r in gate_rows(counts))
    assert len(gate_unit_rows(counts)) == 1 + 2 * 2 * 8
    rnn, rnn_model = tiny_checkpoint("rnn", text)
    with pytest.raises(CharRNNError, match="the rnn model has no gates"):
        count_gates(rnn, rnn_model, text)
