"""int8 weights on the NumPy engine: exact integer kernels, the fused layers, the CLI option."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import saved_model

from charrnn.cli import app
from charrnn.errors import CharRNNError
from charrnn.sample import numpy_engine as npsample
from charrnn.sample import numpy_int8 as npint8
from charrnn.sample import numpy_net

pytestmark = pytest.mark.skipif(not npint8.available(), reason="numba is not installed")


def _dot_products(path: str, xu: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each stream alone, the last four together) through one path's row loops: (B, N), (4, N)."""
    rows1, rows4 = getattr(npint8, f"_dot_rows_{path}"), getattr(npint8, f"_dot_rows4_{path}")
    alone = np.zeros((len(xu), len(q)), np.int32)
    for b in range(len(xu)):
        acc = np.zeros((4, len(q)), np.int32)
        rows1(xu, b, q, 0, len(q), acc)
        alone[b] = acc[0]
    four = np.zeros((4, len(q)), np.int32)
    if len(xu) >= 4:
        rows4(xu, len(xu) - 4, q, 0, len(q), four)
    return alone, four


SHAPES = [(7, 100, 1), (64, 128, 5), (33, 300, 4), (40, 1024, 9)]


@pytest.mark.parametrize("rows,cols,streams", SHAPES)
def test_integer_dot_products_are_exact_on_every_kernel(rows: int, cols: int, streams: int) -> None:
    """Each path the CPU has (one stream or four at a time), and the path the layers call,
    gives the true integer sums."""
    rng = np.random.default_rng(rows)
    dense = npint8.Int8Dense(rng.standard_normal((rows, cols)).astype(np.float32))
    xu = rng.integers(1, 128, (streams, dense.q.shape[1])).astype(np.uint8)
    want = xu.astype(np.int64) @ dense.q.astype(np.int64).T
    for path in npint8.cpu_dot_paths():
        alone, four = _dot_products(path, xu, dense.q)
        np.testing.assert_array_equal(alone, want, err_msg=path)
        if streams >= 4:
            np.testing.assert_array_equal(four, want[streams - 4 :], err_msg=path)
    acc = np.zeros((4, rows), np.int32)
    npint8._dot_rows(xu, 0, dense.q, 0, rows, acc)
    np.testing.assert_array_equal(acc[0], want[0])


@pytest.mark.skipif("vnni" not in npint8.cpu_dot_paths(), reason="this CPU has neither AVX512-VNNI nor AVX-VNNI")
@pytest.mark.parametrize("rows,cols,streams", [*SHAPES, (3, 4000, 6)])
def test_vnni_dot_products_equal_the_avx2_and_plain_ones(rows: int, cols: int, streams: int) -> None:
    """Extreme bytes included (activations 1 and 127, weights -127 and 127)."""
    rng = np.random.default_rng(cols)
    dense = npint8.Int8Dense(rng.standard_normal((rows, cols)).astype(np.float32))
    dense.q[0, :cols] = 127
    xu = rng.integers(1, 128, (streams, dense.q.shape[1])).astype(np.uint8)
    xu[0] = 127
    vnni = _dot_products("vnni", xu, dense.q)
    for other in ("avx2", "plain"):
        for got, want in zip(vnni, _dot_products(other, xu, dense.q)):
            np.testing.assert_array_equal(got, want, err_msg=other)


def test_the_dot_path_falls_back_in_order_and_can_be_named(monkeypatch) -> None:
    monkeypatch.setattr(npint8, "cpu_dot_paths", lambda: ("avx2", "plain"))
    monkeypatch.delenv(npint8.DOT_PATH_ENV, raising=False)
    assert npint8._choose_dot_path() == "avx2"
    for wanted, chosen in [("vnni", "avx2"), ("AVX2", "avx2"), ("plain", "plain"), ("", "avx2")]:
        monkeypatch.setenv(npint8.DOT_PATH_ENV, wanted)
        assert npint8._choose_dot_path() == chosen
    monkeypatch.setenv(npint8.DOT_PATH_ENV, "amx")
    with pytest.raises(CharRNNError, match="CHARRNN_INT8_DOT='amx' is not a dot product path"):
        npint8._choose_dot_path()


def test_sampling_with_a_seed_writes_the_same_text_on_every_dot_path(tmp_path: Path) -> None:
    """One process per path the CPU has (the path is chosen once per process), five streams:
    four through the four-stream loop, one alone."""
    _, path = saved_model(tmp_path, "lstm", 2, hidden=80)
    args = ["sample", str(path), "-n", "120", "--seed", "4", "--num-samples", "5", "--weights", "int8"]
    # `python -m charrnn`, saying first on stderr which path the process took.
    cli = "import sys; from charrnn.sample import numpy_int8; print(numpy_int8.DOT_PATH, file=sys.stderr)"
    cli += "; from charrnn.cli import main; main()"
    texts = {}
    for dot in npint8.cpu_dot_paths():
        env = {**os.environ, npint8.DOT_PATH_ENV: dot, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", cli, *args, "--engine", "numpy"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.split() == [dot]
        texts[dot] = done.stdout
    assert len(set(texts.values())) == 1 and len(texts["plain"]) > 5 * 120, texts


def test_int8_product_is_within_quantization_error() -> None:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((96, 200)) * 0.1).astype(np.float32)
    x = np.tanh(rng.standard_normal((4, 200))).astype(np.float32)
    x[2] = 0.0  # an all-zero row stays exactly zero
    out = npint8.Int8Dense(weight).into(x, np.empty((4, 96), np.float32))
    want = x @ weight.T
    assert np.abs(out - want).max() < 0.02 * np.abs(want).max()
    assert not out[2].any()


def test_fitted_tanh_and_sigmoid() -> None:
    v = np.linspace(-30, 30, 200_001).astype(np.float32)
    tanh = np.array([npint8._tanh(t) for t in v[::50]])
    assert np.abs(tanh - np.tanh(v[::50].astype(np.float64))).max() < 1e-5
    sig = np.array([npint8._sigmoid(t) for t in v[::50]])
    assert np.abs(sig - 1 / (1 + np.exp(-v[::50].astype(np.float64)))).max() < 1e-5


class _UnfusedInt8(numpy_net.NumpyNet):
    """The fp32 engine's NumPy gates on int8 products: what Int8Net's compiled layers fuse."""

    product = npint8.Int8Dense


@pytest.mark.parametrize(
    "kind,layers,embed", [("lstm", 2, 0), ("lstm", 3, 8), ("gru", 2, 0), ("gru", 1, 8), ("rnn", 2, 5)]
)
def test_fused_layers_match_numpy_gates_on_the_same_products(
    tmp_path: Path, kind: str, layers: int, embed: int
) -> None:
    """Step by step from one state: the compiled layers agree with NumPy's gates on the same
    int8 products up to the tanh fit (1e-5), except where that nudge moves a 7-bit rounding
    of the next product's input; and with fp32 up to int8's own error."""
    model, path = saved_model(tmp_path, kind, layers, embed=embed)
    net, _ = npsample.load(path, "int8")
    assert isinstance(net, npint8.Int8Net)
    fp32, _ = npsample.load(path)
    unfused = _UnfusedInt8(net.cfg, {k: v.detach().numpy() for k, v in model.state_dict().items()})
    rng = np.random.default_rng(3)
    state = net.zero_state(3)
    agree = []
    for _ in range(40):
        x = rng.integers(0, net.cfg.vocab_size, 3)
        fused, next_state = net.step(x, state)
        same_products, _ = unfused.step(x, state)
        exact, _ = fp32.step(x, state)
        scale = np.abs(exact).max()
        agree.append(np.abs(fused - same_products) < 1e-4)
        assert np.abs(fused - same_products).max() < 0.05 * scale
        assert np.abs(fused - exact).max() < 0.05 * scale
        state = next_state
    assert np.mean(agree) > 0.9


def test_sample_int8_repeats_for_a_seed_and_eval_measures_its_cost(runner, corpus: Path, trained: str) -> None:
    args = ["sample", trained, "-n", "300", "--seed", "9", "--weights", "int8", "--prime", "The"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout and len(first.stdout) == len("The") + 300 + 1
    on_torch = runner.invoke(app, [*args, "--engine", "torch"])  # fbgemm's int8: another valid draw
    assert on_torch.exit_code == 0 and len(on_torch.stdout) == len(first.stdout)

    scores = {}
    for weights in ("fp32", "int8"):
        result = runner.invoke(app, ["eval", trained, str(corpus), "--json", "--weights", weights])
        assert result.exit_code == 0, result.output
        scores[weights] = json.loads(result.stdout)
    assert scores["int8"]["engine"] == "numpy, int8" and scores["fp32"]["engine"] == "torch, fp32"
    assert abs(scores["int8"]["nats_per_char"] - scores["fp32"]["nats_per_char"]) < 0.02
    numpy_fp32 = json.loads(runner.invoke(app, ["eval", trained, str(corpus), "--json", "--engine", "numpy"]).stdout)
    assert numpy_fp32["nats_per_char"] == pytest.approx(scores["fp32"]["nats_per_char"], abs=1e-4)


def test_without_numba_int8_falls_back_to_torch_or_says_what_runs(runner, trained: str, monkeypatch) -> None:
    monkeypatch.setattr(npint8, "available", lambda: False)
    result = runner.invoke(app, ["sample", trained, "-n", "50", "--seed", "1", "--weights", "int8"])
    assert result.exit_code == 0 and len(result.stdout) == 51  # torch's int8 kernel serves
    result = runner.invoke(app, ["sample", trained, "--engine", "numpy", "--weights", "int8"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --engine numpy runs fp32 weights on the CPU (int8 there needs numba")
    assert len(result.stderr.strip().splitlines()) == 1
