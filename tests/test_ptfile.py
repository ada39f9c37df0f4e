"""Untrusted checkpoints: whatever a file holds, loading costs at most what its declared tensors
need and ends in a result or one CharRNNError (`error: ...`, exit 1), never a traceback."""

from __future__ import annotations

import collections
import copy
import dataclasses
import io
import math
import os
import pickle
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charrnn.checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from charrnn.cli import app
from charrnn.config import MODELS, ModelConfig, SampleConfig, TrainConfig, from_dict
from charrnn.data.vocab import Vocab, build_vocab
from charrnn.errors import CharRNNError
from charrnn.limits import TooLargeError, check_memory, parameter_count
from charrnn.models.charrnn import CharRNN, count_parameters
from charrnn.sample import numpy_engine as npsample

VOCAB = build_vocab("abcdefgh \n")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def real_checkpoint(path: Path, kind: str = "lstm", layers: int = 1, hidden: int = 8) -> Checkpoint:
    """What the trainer writes: weights, AdamW moments after a step, carried state, RNG, progress."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(VOCAB), model=kind, num_layers=layers, hidden_size=hidden)
    model = CharRNN(cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    logits, state = model(torch.randint(0, len(VOCAB), (2, 5)), model.init_state(2))
    logits.sum().backward()
    optimizer.step()
    progress = {
        "step": 1,
        "epoch": 0,
        "cursor": 1,
        "elapsed": 0.5,
        "best_val": math.inf,
        "last_val": 2.0,
        "skipped": 0,
        "lr_scale": 1.0,
        "spent": 0.1,
    }
    corpus = {"path": "/tmp/c.txt", "sha256": "0" * 64, "encoding": "utf-8", "chars": 100}
    ckpt = Checkpoint(
        cfg,
        TrainConfig(),
        VOCAB,
        model.state_dict(),
        optimizer.state_dict(),
        progress,
        tuple(s.detach() for s in state),
        {"torch": torch.get_rng_state()},
        corpus,
    )
    save_checkpoint(ckpt, path)
    return ckpt


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.pt"
    real_checkpoint(path)
    return path


def assert_only_charrnn_errors(path: Path) -> None:
    """Each reader gives a result or a CharRNNError; any other exception fails the test."""
    try:
        build_model(load_checkpoint(path))
    except CharRNNError:
        pass
    try:
        npsample.load(path)  # None: the torch path decides
    except CharRNNError:
        pass


# --------------------------------------------------------------------------------------
# Malformed payloads and damaged bytes


def _tensor(kind: str) -> torch.Tensor:
    return {
        "int": torch.arange(6),
        "f64": torch.ones(2, 3, dtype=torch.float64),
        "nan": torch.full((2, 3), math.nan),
        "scalar": torch.tensor(1.0),
        "empty": torch.zeros(0, 8),
        "bytes": torch.zeros(7, dtype=torch.uint8),
        "wide": torch.zeros(10, 9),
    }[kind]


WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 10**6, 2**20, 2**62, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(-2, 2), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2),
    st.sampled_from(["int", "f64", "nan", "scalar", "empty", "bytes", "wide"]).map(_tensor),
    st.lists(st.sampled_from(["nan", "wide", "f64"]).map(_tensor), max_size=3),
)


def _paths(payload: dict) -> list[tuple]:
    """Every key of the payload two levels deep, and the items of `hidden`."""
    paths: list[tuple] = []
    for key, value in payload.items():
        paths.append((key,))
        if isinstance(value, dict):
            paths += [(key, k) for k in value]
        if isinstance(value, (list, tuple)):
            paths += [(key, i) for i in range(len(value))]
    return paths


@pytest.fixture(scope="module")
def base_payload(good: Path) -> dict:
    return torch.load(good, weights_only=True)


def _mutate(payload: dict, path: tuple, how: str, value: Any) -> dict:
    payload = copy.deepcopy(payload)
    *parents, last = path
    holder = payload
    for key in parents:
        holder[key] = list(holder[key]) if isinstance(holder[key], tuple) else holder[key]
        holder = holder[key]
    if how == "delete":
        del holder[last]
    elif how == "extra" and isinstance(holder, dict):
        holder[f"extra_{last}"] = value
    elif how == "rename" and isinstance(holder, dict):  # a key of any text: control characters too
        holder[f"{last}\n{value!r:.5}\x1e"] = holder.pop(last)
    else:
        holder[last] = value
    return payload


mutations = st.tuples(
    st.integers(0, 10**6), st.sampled_from(["replace", "replace", "delete", "extra", "rename"]), WEIRD
)


@FUZZ
@given(mutation=mutations)
def test_malformed_payloads_raise_only_charrnn_errors(tmp_path_factory, base_payload: dict, mutation) -> None:
    index, how, value = mutation
    paths = _paths(base_payload)
    path = tmp_path_factory.mktemp("payload") / "bad.pt"
    torch.save(_mutate(base_payload, paths[index % len(paths)], how, value), path)
    assert_only_charrnn_errors(path)


@FUZZ
@given(
    cut=st.integers(0, 10**6),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
    in_pickle=st.booleans(),
)
def test_damaged_bytes_raise_only_charrnn_errors(
    tmp_path_factory, good: Path, cut: int, flips, in_pickle: bool
) -> None:
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
        start, size = info.header_offset + 30 + len(info.filename), info.compress_size
    for pos, xor in flips:  # half the time inside data.pkl, where the unpickler meets them
        at = start + pos % size if in_pickle else pos % len(raw)
        raw[at] ^= xor
    if not flips:
        raw = raw[: cut % len(raw)]
    path = tmp_path_factory.mktemp("bytes") / "bad.pt"
    path.write_bytes(bytes(raw))
    assert_only_charrnn_errors(path)


CLI_FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@CLI_FUZZ
@given(mutation=mutations, command=st.sampled_from(["sample", "info", "eval"]))
def test_malformed_checkpoints_on_the_command_line_end_in_one_error_line(
    tmp_path_factory, base_payload: dict, mutation, command: str
) -> None:
    index, how, value = mutation
    paths = _paths(base_payload)
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "bad.pt"
    torch.save(_mutate(base_payload, paths[index % len(paths)], how, value), path)
    (folder / "text.txt").write_text("abc abc\n")
    args = {
        "sample": ["sample", str(path), "--length", "5", "--seed", "1"],
        "info": ["info", str(path)],
        "eval": ["eval", str(path), str(folder / "text.txt")],
    }[command]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(folder / "runs")])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --------------------------------------------------------------------------------------
# Files crafted by hand: storages that lie about their size


class _Storage:
    def __init__(self, key: str, numel: int, data: bytes = b"", zeros: int = 0, kind: str = "FloatStorage") -> None:
        self.key, self.numel, self.data, self.zeros, self.kind = key, numel, data, zeros, kind


class _Record:
    """Pickles as torch.save pickles a tensor: _rebuild_tensor_v2(storage, offset, shape, stride, ...)."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
        return None


def write_pt(path: Path, payload: Any, storages: list[_Storage], names: tuple[str, ...] = ()) -> Path:
    """A torch zip archive; a storage with `zeros` is that many zero bytes, deflated (cheap to
    write: 1 GiB takes about a second and 5 MB)."""
    pkl = io.BytesIO()
    _Pickler(pkl, protocol=2).dump(payload)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pkl.getvalue())
        z.writestr(zipfile.ZipInfo("archive/byteorder"), b"little")
        for s in storages:
            if s.zeros:
                with z.open(f"archive/data/{s.key}", "w", force_zip64=True) as f:
                    chunk = bytes(1 << 24)
                    for done in range(0, s.zeros, len(chunk)):
                        f.write(chunk[: s.zeros - done])
            else:
                z.writestr(zipfile.ZipInfo(f"archive/data/{s.key}"), s.data)
        for name in names:
            z.writestr(zipfile.ZipInfo(name), b"x")
        z.writestr(zipfile.ZipInfo("archive/version"), b"3\n")
    return path


def crafted_payload(model: dict[str, _Record], cfg: ModelConfig) -> dict:
    return {
        "format": 1,
        "model_config": dataclasses.asdict(cfg),
        "train_config": dataclasses.asdict(TrainConfig()),
        "vocab": VOCAB.to_dict(),
        "model": model,
    }


def small_model(cfg: ModelConfig) -> tuple[dict[str, _Record], list[_Storage]]:
    """Records and storages of CharRNN(cfg)'s weights, one storage each, as torch.save writes them."""
    model, storages = {}, []
    for i, (name, t) in enumerate(CharRNN(cfg).state_dict().items()):
        t = t.contiguous()
        storage = _Storage(str(i), t.numel(), t.numpy().tobytes())
        storages.append(storage)
        model[name] = _Record(storage, 0, tuple(t.shape), tuple(t.stride()))
    return model, storages


SMALL = ModelConfig(vocab_size=len(VOCAB), num_layers=1, hidden_size=8)


def test_a_hand_written_archive_loads_as_torch_saves_it(tmp_path: Path) -> None:
    """The crafting helper writes what torch reads, so the refusals below are about the lies."""
    model, storages = small_model(SMALL)
    path = write_pt(tmp_path / "ok.pt", crafted_payload(model, SMALL), storages)
    build_model(load_checkpoint(path))
    assert npsample.load(path) is not None


@pytest.mark.parametrize("lie", ["outside", "stride0", "twice", "missing", "case", "global", "unused"])
def test_storage_records_that_torch_save_never_writes_are_refused(tmp_path: Path, lie: str) -> None:
    model, storages = small_model(SMALL)
    names: tuple[str, ...] = ()
    head = storages[-1]  # head.bias: 10 floats
    if lie == "outside":
        model["head.bias"] = _Record(head, 5, (10,), (1,))
    elif lie == "stride0":  # 10**12 elements viewing one float: each reader would expand it
        model["head.bias"] = _Record(head, 0, (10**6, 10**6), (0, 0))
    elif lie == "twice":
        model["extra"] = _Record(_Storage(head.key, 10**9), 0, (10,), (1,))
    elif lie == "missing":
        storages.pop()
    elif lie == "case":  # torch finds members regardless of case: two names for one member
        names = (f"archive/DATA/{head.key}",)
    elif lie == "unused":  # a storage no tensor uses may hold nothing
        storages.append(_Storage("99", 1000, bytes(4000)))
        model["x"] = _Record(storages[-1], 0, (0,), (1,))
    payload: Any = crafted_payload(model, SMALL)
    if lie == "global":
        payload["corpus"] = collections.Counter("abc")  # any class but OrderedDict
    path = write_pt(tmp_path / "bad.pt", payload, storages, names)
    with pytest.raises(CharRNNError):
        load_checkpoint(path)
    try:
        assert npsample.load(path) is None
    except TooLargeError:
        pass


def test_a_storage_shared_by_two_tensors_is_allowed(tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=len(VOCAB), num_layers=1, hidden_size=len(VOCAB), model="rnn")
    model, storages = small_model(cfg)
    both = _Storage("tied", 2 * len(VOCAB) ** 2, np.zeros(2 * len(VOCAB) ** 2, np.float32).tobytes())
    storages.append(both)
    model["embed.weight"] = _Record(both, 0, (10, 10), (10, 1))
    model["head.weight"] = _Record(both, 100, (10, 10), (1, 10))  # the second half, transposed
    build_model(load_checkpoint(write_pt(tmp_path / "tied.pt", crafted_payload(model, cfg), storages)))


def _run_limited(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m charrnn ARGS` with 1.5 GB of address space: a reader that inflated the
    member would die of it (MemoryError, a traceback) instead of refusing."""
    limit = int(1.5e9)
    env = {**os.environ, "CHARRNN_RUNS_DIR": str(tmp_path / "runs"), "CHARRNN_DATA_DIR": str(tmp_path / "data")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def inflated(tmp_path_factory) -> dict[str, Path]:
    """Two hostile files: a 320-byte embedding whose member inflates to 256 MiB, and a 1x8192
    LSTM whose records are consistent (its two 1 GiB matrices overlap in one 1.5 GiB storage)
    but need more than the 1.5 GB limit allows. Each is under 10 MB on disk."""
    folder = tmp_path_factory.mktemp("inflated")
    model, storages = small_model(SMALL)
    storages[0].zeros, storages[0].data = 256 << 20, b""  # embed.weight
    lying = write_pt(folder / "lying.pt", crafted_payload(model, SMALL), storages)
    big = ModelConfig(vocab_size=len(VOCAB), num_layers=1, hidden_size=8192)
    H = big.hidden_size
    shared = _Storage("big", 3 * 2**27, zeros=3 << 29)  # 1.5 GiB: weight_ih (4H, H) and weight_hh (4H, H)
    small = [_Storage(str(i), n, bytes(4 * n)) for i, n in enumerate([10 * H, 4 * H, 4 * H, 10 * H, 10])]
    model = {
        "embed.weight": _Record(small[0], 0, (10, H), (H, 1)),
        "stack.layers.0.weight_ih_l0": _Record(shared, 0, (4 * H, H), (H, 1)),
        "stack.layers.0.weight_hh_l0": _Record(shared, 2**27, (4 * H, H), (H, 1)),
        "stack.layers.0.bias_ih_l0": _Record(small[1], 0, (4 * H,), (1,)),
        "stack.layers.0.bias_hh_l0": _Record(small[2], 0, (4 * H,), (1,)),
        "head.weight": _Record(small[3], 0, (10, H), (H, 1)),
        "head.bias": _Record(small[4], 0, (10,), (1,)),
    }
    honest = write_pt(folder / "honest.pt", crafted_payload(model, big), [shared, *small])
    return {"lying": lying, "honest": honest}


@pytest.mark.parametrize("command", ["sample", "info"])
@pytest.mark.parametrize("which,words", [("lying", "where its tensors need"), ("honest", "of memory but")])
def test_an_inflating_checkpoint_is_refused_before_it_is_read(
    tmp_path: Path, inflated: dict[str, Path], command: str, which: str, words: str
) -> None:
    with zipfile.ZipFile(inflated[which]) as z:
        assert max(i.file_size for i in z.infolist()) >= 256 << 20 and inflated[which].stat().st_size < 10 << 20
    proc, seconds = _run_limited([command, str(inflated[which])], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert words in proc.stderr and (" GB" in proc.stderr or " MB" in proc.stderr), proc.stderr
    assert seconds < 15


# --------------------------------------------------------------------------------------
# Sizes from the config, before anything is allocated


@pytest.mark.parametrize("kind", MODELS)
def test_the_parameter_count_from_the_config_matches_the_model(kind: str) -> None:
    for layers, hidden, embed in [(1, 5, 0), (3, 7, 4)]:
        cfg = ModelConfig(vocab_size=11, model=kind, num_layers=layers, hidden_size=hidden, embed_size=embed)
        with torch.device("meta"):
            meta = CharRNN(cfg)
        assert parameter_count(cfg) == count_parameters(meta) == count_parameters(CharRNN(cfg))


def test_a_config_claiming_a_million_units_is_refused_naming_the_size(tmp_path: Path, base_payload: dict) -> None:
    path = tmp_path / "huge.pt"
    stateless = _mutate(base_payload, ("hidden",), "delete", None)  # its (1, 2, 8) state would not fit
    torch.save(_mutate(stateless, ("model_config", "hidden_size"), "replace", 10**6), path)
    start = time.perf_counter()
    with pytest.raises(TooLargeError, match=r"1x1000000 lstm model .* needs \d+\.\d TB of memory"):
        build_model(load_checkpoint(path))
    assert time.perf_counter() - start < 5
    result = CliRunner().invoke(app, ["sample", str(path), "--length", "5", "--seed", "1"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and " TB of memory" in result.stderr
    torch.save(_mutate(base_payload, ("model_config", "num_layers"), "replace", 10**6), path)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "--layers must be in [1, 1024]" in result.stderr


def test_memory_refusals_say_how_much_and_what_to_do() -> None:
    with pytest.raises(CharRNNError, match=r"training needs 1\.0 EB of memory but .* is available: use a smaller"):
        check_memory(10**18, "training")
    check_memory(1, "one byte")


# --------------------------------------------------------------------------------------
# Field types and ranges


@pytest.mark.parametrize(
    "field,value",
    [
        ("hidden_size", "512"),
        ("hidden_size", [512]),
        ("hidden_size", 512.0),
        ("hidden_size", True),
        ("dropout", "0.1"),
        ("dropout", math.nan),
        ("model", 3),
        ("embed_size", None),
    ],
)
def test_config_values_of_the_wrong_type_are_named(field: str, value: Any) -> None:
    with pytest.raises(CharRNNError, match=f"field ModelConfig.{field} must be"):
        from_dict(ModelConfig, {"vocab_size": 5, field: value}, 1)


@pytest.mark.parametrize(
    "settings_",
    [
        {"epochs": math.inf},
        {"epochs": 1e308},
        {"lr": math.inf},
        {"time_budget": math.inf},
        {"grad_clip": math.nan},
        {"max_steps": 2**62},
        {"batch_size": 2**40},
    ],
)
def test_train_settings_must_be_finite_and_sane(settings_: dict) -> None:
    with pytest.raises(CharRNNError):
        TrainConfig(**settings_)


def test_sample_seed_must_fit_numpy() -> None:
    with pytest.raises(CharRNNError, match="--seed"):
        SampleConfig(seed=-1)
    assert SampleConfig(seed=2**63 - 1).seed == 2**63 - 1


@pytest.mark.parametrize(
    "data",
    [
        ["abc"],
        {"chars": ["a", "b"]},
        {"chars": "aab"},
        {"chars": ""},
        {"chars": "ab", "byte_level": 1},
        {"chars": "\u0100", "byte_level": True},
        {"chars": "ab", "more": 1},
    ],
)
def test_a_damaged_vocabulary_is_refused(data: Any) -> None:
    with pytest.raises(CharRNNError, match="vocabulary is damaged"):
        Vocab.from_dict(data)


@pytest.mark.parametrize("kind", MODELS)
def test_checkpoints_charrnn_writes_pass_every_check(tmp_path: Path, kind: str) -> None:
    ckpt = real_checkpoint(tmp_path / "k.pt", kind, layers=2, hidden=6)
    loaded = load_checkpoint(tmp_path / "k.pt")
    assert loaded.nonfinite == [] and loaded.progress == ckpt.progress
    build_model(loaded)


# --------------------------------------------------------------------------------------
# Non-finite weights


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    ckpt = real_checkpoint(path)
    ckpt.model_state["head.bias"][3] = math.inf
    ckpt.model_state["stack.layers.0.weight_hh_l0"][0, 0] = math.nan
    save_checkpoint(ckpt, path)
    return path


def test_non_finite_weights_are_listed_on_load(poisoned: Path) -> None:
    assert load_checkpoint(poisoned).nonfinite == ["stack.layers.0.weight_hh_l0", "head.bias"]
    net, _ = npsample.load(poisoned)
    assert net.nonfinite == ["stack.layers.0.weight_hh_l0", "head.bias"]


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_int8_sampling_of_non_finite_weights_says_what_to_do(poisoned: Path, engine: str) -> None:
    if engine == "numpy":
        pytest.importorskip("numba", reason="int8 on the NumPy engine needs numba")
    result = CliRunner().invoke(
        app, ["sample", str(poisoned), "--weights", "int8", "--engine", engine, "--length", "5"]
    )
    assert result.exit_code == 1 and result.stderr.count("error: ") == 1, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: checkpoint has non-finite weights in stack.layers.0.weight_hh_l0, "
        "head.bias: int8 cannot quantise them; resume from an earlier checkpoint."
    )


def test_fp32_sampling_of_non_finite_weights_still_exits_0(poisoned: Path) -> None:
    for engine in ("numpy", "torch"):
        result = CliRunner().invoke(app, ["sample", str(poisoned), "--engine", engine, "--length", "5", "--seed", "1"])
        assert result.exit_code == 0 and "RuntimeWarning" not in result.stderr, result.output


def test_a_checkpoint_is_checked_and_sampled_without_importing_torch(good: Path) -> None:
    code = (
        "import sys; from charrnn import ptfile\nfrom charrnn.sample import numpy_engine as npsample\n"
        f"f = open({str(good)!r}, 'rb'); a = ptfile.open_archive(f, 'x')\n"
        "print(ptfile.read_fields(a.payload, 'x').model_config.hidden_size, npsample.load(f.name) is not None,"
        " 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["8", "True", "False"], out.stderr
