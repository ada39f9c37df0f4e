"""The torch-free sampling path: same network as the torch step, same draw rules, safe reading."""

import dataclasses
import math
import pickle
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import VOCAB, saved_model

from charrnn import ptfile
from charrnn.cli import app
from charrnn.config import SampleConfig
from charrnn.sample import numpy_engine as npsample
from charrnn.sample.draw import draw
from charrnn.sample.fast_step import ModelStepper, build_stepper
from charrnn.sample.torch_engine import generate


@pytest.mark.parametrize(
    "kind,layers,embed", [("lstm", 2, 0), ("lstm", 3, 8), ("gru", 2, 0), ("gru", 1, 8), ("rnn", 2, 5)]
)
def test_numpy_step_matches_the_model(tmp_path: Path, kind: str, layers: int, embed: int) -> None:
    model, path = saved_model(tmp_path, kind, layers, embed=embed)
    net, vocab = npsample.load(path)
    assert vocab == VOCAB
    x = torch.randint(0, len(VOCAB), (3, 40))
    with torch.no_grad():
        want, _ = model(x, model.init_state(3))
    state = net.zero_state(3)
    for t in range(x.shape[1]):
        logits, state = net.step(x[:, t].numpy(), state)
        np.testing.assert_allclose(logits, want[:, t].numpy(), rtol=0, atol=2e-5)


def test_numpy_step_matches_the_torch_fast_step_with_carried_state(tmp_path: Path) -> None:
    model, path = saved_model(tmp_path, "lstm")
    net, _ = npsample.load(path)
    stepper = build_stepper(model, "fp32")
    state_t, state_n = model.init_state(1), net.zero_state(1)
    for i in [3, 1, 4, 1, 5, 9, 2, 6, 5, 3] * 3:
        got, state_n = net.step(np.array([i]), state_n)
        want, state_t = stepper.step(torch.tensor([i]), state_t)
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(np.stack([s[1] for s in state_n]), state_t[1].numpy(), atol=2e-5)


def test_draw_follows_temperature_top_k_and_top_p() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    rng = np.random.default_rng(0)
    assert draw(logits, SampleConfig(temperature=0), rng)[0] == 0
    assert {int(draw(logits, SampleConfig(top_k=1), rng)[0]) for _ in range(50)} == {0}
    assert {int(draw(logits, SampleConfig(temperature=1.0, top_k=2), rng)[0]) for _ in range(300)} == {0, 1}
    # top_p 0.7: 0.5 and 0.3 are kept (the mass before 0.3 is 0.5 < 0.7), the rest dropped.
    assert {int(draw(logits, SampleConfig(temperature=1.0, top_p=0.7), rng)[0]) for _ in range(300)} == {0, 1}
    n = 20_000
    many = np.repeat(logits, n, 0)  # one row per draw: the batched draw
    counts = Counter(draw(many, SampleConfig(temperature=1.0), rng).tolist())
    for i, p in enumerate([0.5, 0.3, 0.15, 0.05]):
        assert abs(counts[i] / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    # Temperature 0.5 squares the odds: p ~ [25, 9, 2.25, 0.25] / 36.5.
    counts = Counter(draw(many, SampleConfig(temperature=0.5), rng).tolist())
    assert abs(counts[0] / n - 25 / 36.5) < 0.015


def test_load_declines_what_it_cannot_serve(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path, "gf-gru", hidden=8)
    assert npsample.load(path) is None  # another kind: the torch path serves it
    _, good = saved_model(tmp_path, "lstm")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(good.read_bytes()[:3000])
    assert npsample.load(truncated) is None
    assert npsample.load(tmp_path / "missing.pt") is None


def test_tensor_records_outside_their_storage_are_refused(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path, "lstm")
    with open(path, "rb") as f:
        archive = ptfile.open_archive(f, str(path))
        ref = archive.payload["model"]["head.bias"]  # 10 floats in a storage of its own
        assert npsample.read_array(archive, ref).shape == (len(VOCAB),)
        for bad in (dataclasses.replace(ref, stride=(-1,)), dataclasses.replace(ref, offset=5)):
            with pytest.raises(ValueError):
                npsample.read_array(archive, bad)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_reader_never_runs_code_from_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"format": 1, "model": _Exploit(marker)}))
    assert npsample.load(path) is None
    assert not marker.exists()


def test_every_path_writes_the_same_characters_for_a_seed(runner, trained: str) -> None:
    outs = {}
    for engine in ("numpy", "torch", "auto"):
        args = ["sample", trained, "-n", "200", "--seed", "4", "--prime", "The", "--temp", "1.0", "--engine", engine]
        first, second = runner.invoke(app, args), runner.invoke(app, args)
        assert first.exit_code == 0, first.output
        assert first.stdout == second.stdout and first.stdout.startswith("The")  # a seed repeats
        assert len(first.stdout) == len("The") + 200 + 1
        outs[engine] = first.stdout
    assert outs["numpy"] == outs["torch"] == outs["auto"]
    other = runner.invoke(app, ["sample", trained, "-n", "200", "--seed", "5", "--prime", "The", "--temp", "1.0"])
    assert other.stdout != outs["numpy"]  # and the seed matters
    stop = runner.invoke(app, ["sample", trained, "-n", "400", "--seed", "1", "--stop", "a", "--engine", "numpy"])
    assert stop.stdout.rstrip("\n").endswith("a") and len(stop.stdout) < 400


def test_the_straightforward_path_draws_the_same(tmp_path: Path) -> None:
    """The model's own forward one step at a time, the torch fast step and the NumPy engine."""
    model, path = saved_model(tmp_path, "gru")
    net, vocab = npsample.load(path)
    cfg = SampleConfig(length=300, seed=11, temperature=1.0, top_k=6)
    texts = {
        "forward": generate(model, vocab, "ab", cfg, lambda c: None, ModelStepper(model)),
        "fast": generate(model, vocab, "ab", cfg, lambda c: None, build_stepper(model, "fp32")),
        "numpy": npsample.generate(net, vocab, "ab", cfg, lambda c: None),
    }
    assert len(set(texts.values())) == 1 and len(texts["numpy"]) == 300


def test_numpy_engine_refuses_what_it_cannot_run(runner, trained: str) -> None:
    result = runner.invoke(app, ["sample", trained, "--engine", "numpy", "--weights", "bf16"])
    assert result.exit_code == 1 and result.stderr.startswith("error: --engine numpy runs fp32 and int8 weights")
    result = runner.invoke(app, ["sample", trained, "--engine", "fast"])
    assert result.exit_code == 2 and "'auto', 'numpy', 'torch'" in result.output  # a usage error


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_sample_does_not_import_torch(runner, trained: str, weights: str) -> None:
    if weights == "int8":
        pytest.importorskip("numba", reason="int8 on the NumPy engine needs numba")
    code = (
        "import sys; from charrnn.cli import main\n"
        f"sys.argv = ['charrnn', 'sample', '-n', '20', '--seed', '3', '--weights', '{weights}']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('numba' in sys.modules, 'torch' in sys.modules, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # torch never loads; numba only for int8 (it adds 0.4 s to the start)
    assert proc.stderr.strip().endswith(f"{weights == 'int8'} False"), proc.stderr
    assert len(proc.stdout) == 20 + 1  # 20 characters and the closing newline


def test_a_long_prime_goes_to_torch(runner, trained: str, monkeypatch) -> None:
    from charrnn.rundir import resolve_checkpoint
    from charrnn.sample import open_sampler

    path = resolve_checkpoint(trained, Path("checkpoints"))
    args = ["sample", trained, "-n", "30", "--seed", "9", "--prime", "The cat"]
    short = runner.invoke(app, args)
    assert short.exit_code == 0 and open_sampler(path, prime_len=7).engine == "numpy"  # the NumPy engine serves
    monkeypatch.setattr(npsample, "MAX_PRIME", 3)
    assert open_sampler(path, prime_len=7).engine == "torch"  # longer than MAX_PRIME: torch reads it
    assert open_sampler(path, engine="numpy", prime_len=7).engine == "numpy"  # unless numpy is asked for
    long = runner.invoke(app, args)
    assert long.exit_code == 0 and long.stdout == short.stdout
    sampler = open_sampler(path)  # prime unknown when opened: torch reads it at generate
    text = sampler.generate("The cat", SampleConfig(length=5, seed=1))
    assert text == open_sampler(path, engine="torch").generate("The cat", SampleConfig(length=5, seed=1))
    assert sampler.engine == "numpy"  # the shared sampler is not switched: short primes stay on numpy


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_one_sampler_shared_by_threads_gives_each_call_its_own_text(trained: str, engine: str) -> None:
    """A server shares one Sampler: eight threads with eight seeds each get what a lone call gets."""
    from concurrent.futures import ThreadPoolExecutor

    from charrnn.rundir import resolve_checkpoint
    from charrnn.sample import open_sampler

    sampler = open_sampler(resolve_checkpoint(trained, Path("checkpoints")), engine=engine)
    alone = [sampler.generate("The ", SampleConfig(length=60, seed=s)) for s in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda s: sampler.generate("The ", SampleConfig(length=60, seed=s)), range(8)))
    assert together == alone and len(set(alone)) > 1
